//! Gateway API behaviours on the real control plane, as upstream's
//! GATEWAY-HTTP conformance tests check them (read to learn the
//! behaviours; these are our own): the v1.5.1 standard CRDs and the chart
//! with its GatewayClass on one control plane with a node stand-in, then
//! Gateways and HTTPRoutes applied with kubectl, requests sent through the
//! dataplane pods, and what came back (status, which pod in which
//! namespace answered, the request it saw, response headers) and the
//! status the API server holds checked. docs/gateway-conformance.md maps
//! each upstream test onto the scenario here that covers it.
//!
//! Its own runner, not libtest's: starting a control plane and installing
//! the chart costs tens of seconds, so one serves every scenario; each
//! scenario works in namespaces and host names of its own, so they run at
//! once. Arguments choose scenarios as libtest's do (name filters,
//! `--skip`, `--exact`, `--ignored`); `--list` lists them. Exit status 1
//! when one failed.

mod filters;
mod listeners;
mod matching;
mod refs;
mod scale;
mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::FutureExt;
use http_body_util::Empty;
use serde_json::Value;
use sluice_tests::client::{Answer, HttpClient};
use sluice_tests::kube::{Cluster, app, controlplane::ControlPlane, gateway};

/// The longest one scenario may take, waits included.
const SCENARIO_LIMIT: Duration = Duration::from_secs(240);
/// How long a route change may take to show in answers or status.
pub const SETTLE: Duration = Duration::from_secs(60);

/// What every scenario gets: the cluster with the chart installed, an
/// admin client, the dataplane pods' HTTP listeners.
pub struct Env {
    cluster: Cluster,
    /// An admin client of the API server.
    pub client: kube::Client,
    /// The dataplane pods' HTTP listeners (`<pod IP>:8080`).
    pub dataplanes: Vec<SocketAddr>,
    /// A keep-alive client.
    pub http: HttpClient,
}

impl Env {
    /// The control plane.
    pub fn cp(&self) -> &ControlPlane {
        &self.cluster.cp
    }

    /// Applies `yaml` with `kubectl apply --server-side`.
    pub fn apply(&self, file: &str, yaml: &str) -> anyhow::Result<()> {
        gateway::apply(self.cp(), file, yaml)
    }

    /// `method http://<dataplane>/<path>` with `Host: host` and `headers`,
    /// through the first dataplane.
    pub async fn send(
        &self,
        method: &str,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<Answer> {
        self.send_via(self.dataplanes[0], method, host, path, headers)
            .await
    }

    /// As [`Env::send`], through the dataplane at `addr`.
    pub async fn send_via(
        &self,
        addr: SocketAddr,
        method: &str,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<Answer> {
        let mut req = http::Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"))
            .header(http::header::HOST, host);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.http.send(req.body(Empty::<Bytes>::new())?).await
    }

    /// `GET` of `path` for `host`, sent until the answer satisfies `ok`
    /// (routes take a moment to reach the dataplanes); the answer.
    pub async fn until(
        &self,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
        ok: impl Fn(&Answer) -> bool,
    ) -> anyhow::Result<Answer> {
        let what = format!("GET {host}{path} {headers:?}");
        gateway::until_answer(&what, SETTLE, || self.send("GET", host, path, headers), ok).await
    }

    /// Waits until `GET host path` is answered by echo backend `backend`
    /// (the pod's name starts with it) in namespace `ns`; what it saw.
    pub async fn answered_by(
        &self,
        host: &str,
        path: &str,
        ns: &str,
        backend: &str,
    ) -> anyhow::Result<Value> {
        let a = self.until(host, path, &[], |a| by(a, ns, backend)).await?;
        gateway::echoed(&a)
    }

    /// Object `kind` `ns/name` once `check` holds (see [`gateway::wait_for`]).
    pub async fn status(
        &self,
        kind: &str,
        ns: &str,
        name: &str,
        what: &str,
        check: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        gateway::wait_for(&self.client, kind, ns, name, what, SETTLE, check).await
    }
}

/// Whether `a` is a 200 from a pod of echo backend `backend` in `ns`.
pub fn by(a: &Answer, ns: &str, backend: &str) -> bool {
    a.status == 200
        && gateway::echoed(a).is_ok_and(|e| {
            e["namespace"] == ns
                && e["pod"]
                    .as_str()
                    .is_some_and(|p| p.starts_with(&format!("{backend}-")))
        })
}

/// Which echo backend answered (the pod name up to its ReplicaSet hash),
/// for tallies and messages; `status <n>` when none did.
pub fn backend_of(a: &Answer) -> String {
    if a.status != 200 {
        return format!("status {}", a.status);
    }
    let pod = a.backend.clone().unwrap_or_default();
    // <deployment>-<replicaset hash>-<pod suffix>
    let mut parts: Vec<&str> = pod.rsplitn(3, '-').collect();
    parts.pop().map(str::to_string).unwrap_or(pod)
}

/// A Gateway `name` of class `sluice` in `ns` with one HTTP listener
/// `http` on port 80 for routes of its own namespace.
pub fn http_gateway(ns: &str, name: &str) -> String {
    format!(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: {name}, namespace: {ns}}}
spec:
  gatewayClassName: {class}
  listeners:
    - {{name: http, port: 80, protocol: HTTP, allowedRoutes: {{namespaces: {{from: Same}}}}}}
"#,
        class = gateway::CLASS
    )
}

type Scenario = fn(Arc<Env>) -> Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

macro_rules! scenarios {
    ($($path:path),* $(,)?) => {
        vec![$((stringify!($path), (|env| Box::pin($path(env))) as Scenario)),*]
    };
}

fn all() -> Vec<(&'static str, Scenario)> {
    scenarios![
        listeners::the_gateway_class_is_accepted_with_the_features_that_work,
        listeners::a_route_in_the_gateways_namespace_reaches_its_backend,
        listeners::listeners_sluice_cannot_serve_say_why,
        listeners::hostnames_intersect_with_the_listeners,
        refs::routes_attach_from_the_namespaces_a_listener_allows,
        refs::a_backend_in_another_namespace_needs_a_reference_grant,
        refs::invalid_backends_and_parents_are_reported_and_answered_500,
        matching::paths_headers_queries_and_methods_pick_the_rule,
        matching::across_routes_the_more_specific_match_wins,
        filters::header_modifiers_change_request_and_response,
        filters::redirects_and_rewrites,
        filters::a_mirror_gets_a_copy_and_timeouts_answer_504,
        filters::weights_split_requests_between_backends,
        tls::an_https_listener_serves_its_certificate_by_sni,
        scale::a_backend_pool_on_a_route_scales_from_zero,
    ]
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // libtest's arguments that choose tests: name filters, `--skip NAME`,
    // `--exact`; `--ignored` asks for ignored tests only, and none is.
    let mut filters: Vec<&str> = Vec::new();
    let mut skips: Vec<&str> = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--skip" => skips.extend(it.next().map(String::as_str)),
            a if a.starts_with('-') => {}
            a => filters.push(a),
        }
    }
    let exact = args.iter().any(|a| a == "--exact");
    let ignored_only = args.iter().any(|a| a == "--ignored");
    let chosen: Vec<_> = all()
        .into_iter()
        .filter(|_| !ignored_only)
        .filter(|(name, _)| {
            filters.is_empty()
                || filters
                    .iter()
                    .any(|f| if exact { name == f } else { name.contains(f) })
        })
        .filter(|(name, _)| !skips.iter().any(|s| name.contains(s)))
        .collect();
    if args.iter().any(|a| a == "--list") {
        for (name, _) in &chosen {
            println!("{name}: test");
        }
        return ExitCode::SUCCESS;
    }
    if chosen.is_empty() {
        println!("running 0 tests");
        return ExitCode::SUCCESS;
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(chosen)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("real_gateway: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Starts the cluster, runs `chosen` at once against it, prints each
/// result; whether all passed. The cluster stops when the last scenario
/// let go of it.
async fn run(chosen: Vec<(&'static str, Scenario)>) -> anyhow::Result<bool> {
    if let Err(e) = gateway::crd_dir() {
        if sluice_tests::kube::host::skip_requested() {
            println!("running 0 tests (skipped: {e})");
            return Ok(true);
        }
        return Err(e);
    }
    let Some(cluster) = Cluster::start().await? else {
        println!(
            "running 0 tests (skipped: {})",
            sluice_tests::kube::host::SKIP_VAR
        );
        return Ok(true);
    };
    let start = Instant::now();
    if let Err(e) = gateway::install(&cluster.cp).await {
        return Err(cluster.cp.explain(e));
    }
    let client = cluster.cp.client().await?;
    let dataplanes: Vec<SocketAddr> = app::dataplanes(&client)
        .await?
        .into_iter()
        .map(|(_, a)| a)
        .collect();
    anyhow::ensure!(dataplanes.len() == 2, "two dataplanes: {dataplanes:?}");
    let env = Arc::new(Env {
        cluster,
        client,
        dataplanes,
        http: HttpClient::new(),
    });
    let n = chosen.len();
    println!("running {n} test{}", if n == 1 { "" } else { "s" });
    let mut tasks = tokio::task::JoinSet::new();
    for (name, scenario) in chosen {
        let env = Arc::clone(&env);
        tasks.spawn(async move {
            let begun = Instant::now();
            let run = AssertUnwindSafe(scenario(env)).catch_unwind();
            let result = match tokio::time::timeout(SCENARIO_LIMIT, run).await {
                Ok(Ok(result)) => result,
                Ok(Err(panic)) => Err(anyhow::anyhow!("panicked: {}", panic_text(&*panic))),
                Err(_) => Err(anyhow::anyhow!("did not end within {SCENARIO_LIMIT:?}")),
            };
            (name, begun.elapsed(), result)
        });
    }
    let mut failed = Vec::new();
    let mut passed = 0;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((name, took, Ok(()))) => {
                passed += 1;
                println!("test {name} ... ok ({took:.1?})");
            }
            Ok((name, took, Err(e))) => {
                println!("test {name} ... FAILED ({took:.1?})");
                failed.push(format!("---- {name} ----\n{e:#}"));
            }
            Err(e) => {
                println!("test <a scenario's task> ... FAILED");
                failed.push(format!("---- a scenario's task ----\n{e}"));
            }
        }
    }
    for f in &failed {
        println!("\n{f}");
    }
    println!(
        "\ntest result: {}. {passed} passed; {} failed; finished in {:.1?}",
        if failed.is_empty() { "ok" } else { "FAILED" },
        failed.len(),
        start.elapsed()
    );
    Ok(failed.is_empty())
}

/// A panic's message (what `assert!` said).
fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "(no message)".into())
}
