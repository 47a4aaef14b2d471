//! High availability: two controllers elect a leader with a Lease in the
//! API-server fake. Only the leader is ready, serves dataplanes and writes
//! status; when it goes, the follower takes over and dataplanes — reaching
//! the controllers through a Service stand-in that routes to the ready
//! replica — resync from it without a failed request.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use sluice_controller::{Auth, Controller, LeaseConfig, Options};
use sluice_dataplane::{Dataplane, Source};
use sluice_tests::apiserver::{Collection, FakeApiServer};
use sluice_tests::backend::Backend;
use sluice_tests::client::HttpClient;
use sluice_tests::dataplane::loopback;
use sluice_tests::load::Load;
use sluice_tests::service::{Replica, ServiceProxy};
use sluice_tests::wait::until;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const NS: &str = "shop";
const HOST: &str = "web.example.com";
const TOKEN: &str = "leader-token-1";
const LEASE_NS: &str = "sluice-system";
const LEASE_NAME: &str = "sluice-controller";
const WAIT: Duration = Duration::from_secs(10);

fn slice(backend: &Backend) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {
            "name": format!("web-{}", backend.name), "namespace": NS,
            "labels": {"kubernetes.io/service-name": "web"},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": backend.addr.port(), "protocol": "TCP"}],
        "endpoints": [{"addresses": [backend.addr.ip().to_string()], "conditions": {"ready": true}}],
    })
}

fn pool(hosts: &[&str]) -> Value {
    json!({
        "apiVersion": "sluice.io/v1alpha1", "kind": "BackendPool",
        "metadata": {"name": "web", "namespace": NS},
        "spec": {"hosts": hosts, "pathPrefix": "/", "backends": [{"service": "web", "port": "http"}]},
    })
}

fn leases() -> Collection {
    Collection::new("coordination.k8s.io/v1", "leases")
}

/// Timings of one election.
#[derive(Clone, Copy)]
struct Timing {
    lease: Duration,
    renew: Duration,
    retry: Duration,
}

/// Short enough for a test; the order (retry < renew < lease) is client-go's.
const FAST: Timing = Timing {
    lease: Duration::from_secs(1),
    renew: Duration::from_millis(600),
    retry: Duration::from_millis(200),
};

/// Two controller replicas, `ctl-0` and `ctl-1`, against one API server.
struct Cluster {
    api: FakeApiServer,
    controllers: Vec<Option<Controller>>,
    backends: BTreeMap<String, Backend>,
    http: HttpClient,
    token_file: PathBuf,
}

impl Cluster {
    async fn start(backends: &[&str], timing: Timing) -> anyhow::Result<Self> {
        let api = FakeApiServer::start().await?;
        api.apply(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": NS},
            "spec": {"ports": [{"name": "http", "port": 80}]},
        }))?;
        let mut started = BTreeMap::new();
        for name in backends {
            let b = Backend::start(name).await?;
            api.apply(slice(&b))?;
            started.insert(name.to_string(), b);
        }
        api.apply(pool(&[HOST]))?;

        let dir = std::env::temp_dir().join(format!("sluice-leader-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let token_file = dir.join(format!("token-{}", unique()));
        std::fs::write(&token_file, format!("{TOKEN}\n"))?;

        let mut controllers = Vec::new();
        for i in 0..2 {
            controllers.push(Some(start_controller(&api, i, &token_file, timing).await?));
        }
        Ok(Self {
            api,
            controllers,
            backends: started,
            http: HttpClient::new(),
            token_file,
        })
    }

    fn controller(&self, i: usize) -> &Controller {
        self.controllers[i]
            .as_ref()
            .expect("the controller is running")
    }

    async fn readyz(&self, i: usize) -> Option<(u16, String)> {
        let c = self.controllers[i].as_ref()?;
        let a = self
            .http
            .get(c.admin_addr(), "localhost", "/readyz")
            .await
            .ok()?;
        Some((a.status, a.body))
    }

    /// Waits until exactly one running controller is ready, and returns it.
    async fn wait_for_one_leader(&self) -> anyhow::Result<usize> {
        until(WAIT, "exactly one ready controller", || async {
            let mut ready = Vec::new();
            for i in 0..self.controllers.len() {
                if self.readyz(i).await.is_some_and(|(s, _)| s == 200) {
                    ready.push(i);
                }
            }
            (ready.len() == 1).then(|| ready[0])
        })
        .await
    }

    fn lease(&self) -> Value {
        self.api
            .get(&leases(), LEASE_NS, LEASE_NAME)
            .map(|l| l["spec"].clone())
            .unwrap_or(Value::Null)
    }

    fn pool_status(&self) -> Value {
        self.api
            .get(
                &Collection::of("sluice.io/v1alpha1", "BackendPool"),
                NS,
                "web",
            )
            .map(|p| p["status"].clone())
            .unwrap_or(Value::Null)
    }

    async fn dataplane(&self, url: String, name: &str) -> anyhow::Result<Dataplane> {
        Ok(Dataplane::start(loopback(
            Source::Controller {
                url,
                token_file: Some(self.token_file.clone()),
                ca_file: None,
            },
            name,
        ))
        .await?)
    }

    /// Waits until every dataplane sends traffic to exactly `expected`.
    async fn wait_for_backends(
        &self,
        dataplanes: &[Dataplane],
        expected: &[&str],
    ) -> anyhow::Result<()> {
        let want: BTreeSet<String> = expected.iter().map(|s| s.to_string()).collect();
        until(WAIT, &format!("traffic to {want:?}"), || async {
            for dp in dataplanes {
                let mut seen = BTreeSet::new();
                for _ in 0..expected.len() * 2 {
                    let a = self.http.get(dp.http_addr(), HOST, "/").await.ok()?;
                    seen.insert(a.backend?);
                }
                if seen != want {
                    return None;
                }
            }
            Some(())
        })
        .await
    }
}

async fn start_controller(
    api: &FakeApiServer,
    i: usize,
    token_file: &Path,
    timing: Timing,
) -> anyhow::Result<Controller> {
    let identity = format!("ctl-{i}");
    Ok(Controller::start(
        api.client()?,
        Options {
            listen: "127.0.0.1:0".parse()?,
            admin: "127.0.0.1:0".parse()?,
            auth: Auth::Static(token_file.to_path_buf()),
            status_interval: Duration::from_millis(200),
            instance: identity.clone(),
            lease: Some(LeaseConfig {
                lease_duration: timing.lease,
                renew_deadline: timing.renew,
                retry_period: timing.retry,
                ..LeaseConfig::new(LEASE_NS, LEASE_NAME, identity)
            }),
            takeover_settle: Duration::from_millis(300),
            ..Options::default()
        },
    )
    .await?)
}

fn unique() -> u64 {
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// The raw response head and body of `GET path` (header names lower-cased).
async fn raw_get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let mut conn = tokio::net::TcpStream::connect(addr).await?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: controller\r\nAuthorization: Bearer {TOKEN}\r\nAccept: text/event-stream\r\nConnection: close\r\n\r\n"
    );
    conn.write_all(req.as_bytes()).await?;
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), conn.read_to_string(&mut out)).await??;
    Ok(out.to_lowercase())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_controller_leads_the_other_refuses_dataplanes_and_a_released_lease_passes_at_once()
-> anyhow::Result<()> {
    // A lease far longer than the wait below: a takeover within the wait
    // can only come from the leader releasing it.
    let slow = Timing {
        lease: Duration::from_secs(60),
        renew: Duration::from_secs(40),
        retry: Duration::from_millis(200),
    };
    let mut cluster = Cluster::start(&["backend-1"], slow).await?;
    let leader = cluster.wait_for_one_leader().await?;
    let follower = 1 - leader;

    // The Lease names the leader; the follower says why it is not ready.
    assert_eq!(cluster.lease()["holderIdentity"], format!("ctl-{leader}"));
    assert_eq!(cluster.lease()["leaseTransitions"], 0);
    assert!(cluster.controller(leader).is_leader());
    assert!(!cluster.controller(follower).is_leader());
    until(WAIT, "the follower's caches to sync", || async {
        let (status, body) = cluster.readyz(follower).await?;
        (status == 503 && body == "not leader\n").then_some(())
    })
    .await?;

    // The follower refuses the stream and reports, asking to retry soon.
    let follower_stream = cluster.controller(follower).stream_addr();
    for path in ["/v1/routes?dataplane=dp-x", "/v1/reports"] {
        let resp = raw_get(follower_stream, path).await?;
        assert!(resp.starts_with("http/1.1 503"), "{path}: {resp}");
        assert!(resp.contains("retry-after: 1\r\n"), "{path}: {resp}");
        assert!(resp.contains("not the leader"), "{path}: {resp}");
    }

    // The metric says who leads.
    for (i, want) in [(leader, 1), (follower, 0)] {
        let metrics = cluster
            .http
            .get(cluster.controller(i).admin_addr(), "localhost", "/metrics")
            .await?;
        assert!(
            metrics.body.contains(&format!("sluice_leader {want}\n")),
            "ctl-{i}: {}",
            metrics.body
        );
    }

    // The leader serves a dataplane.
    let dp = cluster
        .dataplane(
            format!("http://{}", cluster.controller(leader).stream_addr()),
            "dp-0",
        )
        .await?;
    cluster
        .wait_for_backends(std::slice::from_ref(&dp), &["backend-1"])
        .await?;

    // A graceful stop releases the lease: the follower leads long before
    // the 60 s lease could have expired.
    if let Some(c) = cluster.controllers[leader].take() {
        c.shutdown().await;
    }
    let now_leader = cluster.wait_for_one_leader().await?;
    assert_eq!(now_leader, follower);
    let lease = cluster.lease();
    assert_eq!(lease["holderIdentity"], format!("ctl-{follower}"));
    assert_eq!(lease["leaseTransitions"], 1);
    assert!(cluster.controller(follower).is_leader());

    dp.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_is_replaced_within_the_lease_and_no_request_fails() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(&["backend-1", "backend-2"], FAST).await?;
    let leader = cluster.wait_for_one_leader().await?;
    let follower = 1 - leader;
    let replicas = (0..2)
        .map(|i| Replica {
            serve: cluster.controller(i).stream_addr(),
            admin: cluster.controller(i).admin_addr(),
        })
        .collect();
    let service = ServiceProxy::start(replicas).await?;
    let mut dataplanes = Vec::new();
    for i in 0..2 {
        dataplanes.push(
            cluster
                .dataplane(format!("http://{}", service.addr()), &format!("dp-{i}"))
                .await?,
        );
    }
    cluster
        .wait_for_backends(&dataplanes, &["backend-1", "backend-2"])
        .await?;
    until(
        WAIT,
        "status from the leader, both dataplanes synced",
        || async { (cluster.pool_status()["dataplanes"]["synced"] == 2).then_some(()) },
    )
    .await?;

    // Steady load through both dataplanes for the whole failover.
    let addrs: Vec<_> = dataplanes.iter().map(|d| d.http_addr()).collect();
    let load = Load::start(&cluster.http, &addrs, HOST);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The leader dies without releasing the lease.
    if let Some(c) = cluster.controllers[leader].take() {
        c.kill().await;
    }
    assert_eq!(cluster.lease()["holderIdentity"], format!("ctl-{leader}"));

    // The follower takes over once the lease expires and becomes ready;
    // the Service now sends the dataplanes to it.
    assert_eq!(cluster.wait_for_one_leader().await?, follower);
    let lease = cluster.lease();
    assert_eq!(lease["holderIdentity"], format!("ctl-{follower}"));
    assert_eq!(lease["leaseTransitions"], 1);

    // The dataplanes resync from the new leader: a new backend reaches them.
    let b3 = Backend::start("backend-3").await?;
    cluster.api.apply(slice(&b3))?;
    cluster.backends.insert("backend-3".into(), b3);
    cluster
        .wait_for_backends(&dataplanes, &["backend-1", "backend-2", "backend-3"])
        .await?;

    // The new leader writes status: a spec change is observed, and both
    // dataplanes are counted as synced again.
    cluster.api.apply(pool(&[HOST, "www.example.com"]))?;
    let status = until(
        WAIT,
        "status of generation 2 from the new leader",
        || async {
            let s = cluster.pool_status();
            (s["observedGeneration"] == 2 && s["dataplanes"]["synced"] == 2).then_some(s)
        },
    )
    .await?;
    assert_eq!(status["endpoints"], json!({"ready": 3, "total": 3}));

    let (ok, failed) = load.finish().await?;
    println!("{ok} requests served across the failover, {failed} failed");
    assert_eq!(failed, 0);
    assert!(ok > 100, "too little load to mean anything: {ok}");

    for dp in dataplanes {
        dp.shutdown().await;
    }
    service.shutdown().await;
    Ok(())
}
