//! The closed autoscaling loop on loopback, shared by the autoscale tests
//! and benchmark: the API-server fake, a [`Cluster`] running Deployment
//! `web` behind Service `web`, BackendPool `web`, the controller and two
//! dataplanes following it. Traffic through the dataplanes is reported to
//! the controller, which patches the Deployment's `/scale`; the cluster
//! starts or stops backends and publishes their EndpointSlices; the
//! dataplanes route to them. The ScalingTrigger is left to the caller, to
//! create once its starting point is in place.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::Empty;
use serde_json::{Value, json};
use sluice_controller::{Auth, Controller, Options};
use sluice_dataplane::{Dataplane, Source};

use crate::apiserver::{Collection, FakeApiServer};
use crate::client::{Answer, HttpClient};
use crate::cluster::{Cluster, Workload, deployments};
use crate::dataplane::loopback;
use crate::wait::until;

/// The namespace everything lives in.
pub const NS: &str = "shop";
/// The pool's host.
pub const HOST: &str = "web.example.com";
/// How long a request held for activation may take to answer here: the
/// default activation timeout is 30 s, and a cold start in a debug build
/// on a busy machine is far above the usual client bound of 5 s.
pub const HELD_REQUEST_LIMIT: Duration = Duration::from_secs(40);

/// The ScalingTrigger collection.
pub fn triggers() -> Collection {
    Collection::of("sluice.io/v1alpha1", "ScalingTrigger")
}

/// ScalingTrigger `web` on Deployment `web`, driven by pool `web`, with
/// one RequestsPerSecond target per replica, minReplicas 1 and
/// maxReplicas 10; the fields of `spec` are set over those.
pub fn trigger(target_rps: f64, spec: Value) -> Value {
    let mut t = json!({
        "apiVersion": "sluice.io/v1alpha1", "kind": "ScalingTrigger",
        "metadata": {"name": "web", "namespace": NS},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
            "poolRef": {"name": "web"},
            "minReplicas": 1,
            "maxReplicas": 10,
            "metrics": [{"type": "RequestsPerSecond", "averageValue": target_rps}],
        },
    });
    if let (Some(base), Some(extra)) = (t["spec"].as_object_mut(), spec.as_object()) {
        for (k, v) in extra {
            base.insert(k.clone(), v.clone());
        }
    }
    t
}

/// `behavior` that scales up at once and down after `stabilization`
/// seconds, all the way in one step.
pub fn behavior(stabilization: u32) -> Value {
    json!({
        "scaleUp": {"stabilizationWindowSeconds": 0},
        "scaleDown": {
            "stabilizationWindowSeconds": stabilization,
            "policies": [{"type": "Percent", "value": 100, "periodSeconds": 5}],
        },
    })
}

/// The running loop, minus the trigger.
pub struct Loop {
    /// The API-server fake.
    pub api: FakeApiServer,
    /// Deployment `web`'s replicas, made real.
    pub cluster: Cluster,
    /// The controller, `--auth none` on loopback.
    pub controller: Controller,
    /// Two dataplanes following the controller.
    pub dataplanes: Vec<Dataplane>,
    /// A keep-alive client for checks.
    pub http: HttpClient,
}

impl Loop {
    /// Starts everything; `workload` should name Deployment `web`, Service
    /// `web` and port `http` in [`NS`], as [`Loop::workload`] does.
    pub async fn start(workload: Workload) -> anyhow::Result<Self> {
        Self::start_on(FakeApiServer::start().await?, workload, Self::options()).await
    }

    /// The controller's options in [`Loop::start`]: loopback listeners on
    /// port 0, `--auth none`, status re-examined every 200 ms.
    pub fn options() -> Options {
        Options {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            auth: Auth::None,
            status_interval: Duration::from_millis(200),
            ..Options::default()
        }
    }

    /// [`Loop::start`] on an API server the caller started (with its own
    /// registered kinds, or objects such as a Lease already in place) and
    /// with the controller's `options` (see [`Loop::options`]).
    pub async fn start_on(
        api: FakeApiServer,
        workload: Workload,
        options: Options,
    ) -> anyhow::Result<Self> {
        let cluster = Cluster::start(&api, workload).await?;
        api.apply(json!({
            "apiVersion": "sluice.io/v1alpha1", "kind": "BackendPool",
            "metadata": {"name": "web", "namespace": NS},
            "spec": {"hosts": [HOST], "pathPrefix": "/", "backends": [{"service": "web", "port": "http"}]},
        }))?;
        let controller = Controller::start(api.client()?, options).await?;
        let url = format!("http://{}", controller.stream_addr());
        let mut dataplanes = Vec::new();
        for i in 0..2 {
            let source = Source::Controller {
                url: url.clone(),
                token_file: None,
                ca_file: None,
            };
            dataplanes.push(Dataplane::start(loopback(source, &format!("dp-{i}"))).await?);
        }
        Ok(Self {
            api,
            cluster,
            controller,
            dataplanes,
            http: HttpClient::new(),
        })
    }

    /// Deployment `web` behind Service `web`, port `http`, in [`NS`].
    pub fn workload() -> Workload {
        Workload::new(NS, "web", "web", "http")
    }

    /// The dataplanes' HTTP addresses, where load goes.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.dataplanes.iter().map(Dataplane::http_addr).collect()
    }

    /// Which replicas answer `n` requests through dataplane `dp`; any
    /// answer but 200 is an error.
    pub async fn answers(&self, dp: usize, n: usize) -> anyhow::Result<BTreeMap<String, usize>> {
        self.http
            .tally(self.dataplanes[dp].http_addr(), HOST, n)
            .await
    }

    /// Waits until `n` requests through each dataplane are answered by a
    /// set of replicas satisfying `done`; returns every replica that answered.
    pub async fn wait_for_answers(
        &self,
        what: &str,
        n: usize,
        limit: Duration,
        done: impl Fn(&BTreeSet<String>) -> bool,
    ) -> anyhow::Result<BTreeSet<String>> {
        until(limit, what, || async {
            let mut all = BTreeSet::new();
            for dp in 0..self.dataplanes.len() {
                let seen: BTreeSet<String> = self.answers(dp, n).await.ok()?.into_keys().collect();
                if !done(&seen) {
                    return None;
                }
                all.extend(seen);
            }
            Some(all)
        })
        .await
    }

    /// Waits until both dataplanes reach every ready replica of the
    /// cluster, and only those.
    pub async fn wait_for_ready_replicas(&self) -> anyhow::Result<()> {
        let want: BTreeSet<String> = self.cluster.replicas().ready.into_keys().collect();
        let what = format!("traffic to {want:?}");
        self.wait_for_answers(&what, want.len() * 3, Duration::from_secs(20), |seen| {
            *seen == want
        })
        .await?;
        Ok(())
    }

    /// The Deployment's `spec.replicas` as the API server holds it (-1: gone).
    pub fn spec_replicas(&self) -> i64 {
        self.api
            .get(&deployments(), NS, "web")
            .and_then(|d| d["spec"]["replicas"].as_i64())
            .unwrap_or(-1)
    }

    /// The trigger's status (`null` before the controller wrote one).
    pub fn trigger_status(&self) -> Value {
        self.api
            .get(&triggers(), NS, "web")
            .map(|t| t["status"].clone())
            .unwrap_or(Value::Null)
    }

    /// Waits until the trigger's status says the target has `replicas`:
    /// the controller has taken the trigger up.
    pub async fn wait_for_trigger(&self, replicas: i64, limit: Duration) -> anyhow::Result<Value> {
        let what = format!("the trigger's status with currentReplicas {replicas}");
        until(limit, &what, || async {
            let s = self.trigger_status();
            (s["currentReplicas"] == replicas).then_some(s)
        })
        .await
    }

    /// Waits until the Deployment's `spec.replicas` satisfies `done`.
    pub async fn wait_for_replicas(
        &self,
        what: &str,
        limit: Duration,
        done: impl Fn(i64) -> bool,
    ) -> anyhow::Result<i64> {
        let replicas = |d: &Value| d["spec"]["replicas"].as_i64().unwrap_or(1);
        let d = self
            .api
            .wait_for(&deployments(), NS, "web", |d| done(replicas(d)), limit)
            .await
            .map_err(|e| {
                anyhow::anyhow!("{what}: {e}; trigger status {}", self.trigger_status())
            })?;
        Ok(replicas(&d))
    }

    /// Waits until every dataplane's route for the pool carries `activation`.
    pub async fn wait_for_activation(&self, limit: Duration) -> anyhow::Result<()> {
        for dp in &self.dataplanes {
            until(limit, "activation on the pool's route", || async {
                let a = self
                    .http
                    .get(dp.admin_addr(), "localhost", "/debug/routes")
                    .await
                    .ok()?;
                let routes: Value = serde_json::from_str(&a.body).ok()?;
                routes["pools"]
                    .as_array()?
                    .iter()
                    .find(|p| p["name"] == format!("{NS}/web"))
                    .filter(|p| p["activation"].is_object())
                    .map(|_| ())
            })
            .await?;
        }
        Ok(())
    }

    /// Events the controller recorded about the trigger with `reason`.
    pub fn events(&self, reason: &str) -> Vec<Value> {
        self.api
            .list(&Collection::of("events.k8s.io/v1", "Event"))
            .into_iter()
            .filter(|e| {
                e["reason"] == reason
                    && e["regarding"]["kind"] == "ScalingTrigger"
                    && e["regarding"]["name"] == "web"
            })
            .collect()
    }

    /// Stops everything, dataplanes first.
    pub async fn stop(self) {
        for dp in self.dataplanes {
            dp.shutdown().await;
        }
        self.controller.shutdown().await;
        self.cluster.shutdown().await;
        self.api.shutdown().await;
    }
}

/// A condition of a status as `(status, reason)`.
pub fn condition(status: &Value, type_: &str) -> Option<(String, String)> {
    status["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .map(|c| {
            (
                c["status"].as_str().unwrap_or_default().to_string(),
                c["reason"].as_str().unwrap_or_default().to_string(),
            )
        })
}

/// `GET /` for the pool through `addr` on a fresh connection, waiting up
/// to [`HELD_REQUEST_LIMIT`], as long as activation may hold it.
pub async fn get_held(addr: SocketAddr) -> anyhow::Result<Answer> {
    let req = http::Request::get(format!("http://{addr}/"))
        .header(http::header::HOST, HOST)
        .body(Empty::new())?;
    HttpClient::new()
        .send_within(req, HELD_REQUEST_LIMIT)
        .await
        .map_err(|e| anyhow::anyhow!("the held request: {e}"))
}
