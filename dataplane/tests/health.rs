//! Endpoint health: active checks take a failing endpoint out and bring it
//! back, outlier detection ejects endpoints that fail live traffic (within
//! `maxEjectionPercent`) and lets them back on trial, a pool with no healthy
//! endpoint still tries them all (panic mode), and all of it survives table
//! updates. Seen through which backend answers, `/debug/pools` and
//! `sluice_endpoint_healthy`.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::Value;
use sluice_dataplane::{Dataplane, Source};
use support::*;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A backend whose answers the test sets: `/healthz` answers `health`,
/// every other path `status` with its name (body and `x-backend`). It
/// remembers the `Host` and `User-Agent` of the last health check.
struct Switch {
    addr: SocketAddr,
    health: Arc<AtomicU16>,
    status: Arc<AtomicU16>,
    last_check: Arc<Mutex<Option<(String, String)>>>,
    task: JoinHandle<()>,
}

impl Drop for Switch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Switch {
    async fn start(name: &'static str) -> Switch {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let health = Arc::new(AtomicU16::new(200));
        let status = Arc::new(AtomicU16::new(200));
        let last_check = Arc::new(Mutex::new(None));
        let (h, s, l) = (health.clone(), status.clone(), last_check.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (h, s, l) = (h.clone(), s.clone(), l.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let header = |n: &str| {
                            req.headers()
                                .get(n)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_string()
                        };
                        let code = if req.uri().path() == "/healthz" {
                            *l.lock().expect("lock") = Some((header("host"), header("user-agent")));
                            h.load(Ordering::SeqCst)
                        } else {
                            s.load(Ordering::SeqCst)
                        };
                        let resp = Response::builder()
                            .status(StatusCode::from_u16(code).unwrap_or(StatusCode::OK))
                            .header("x-backend", name)
                            .body(Full::new(Bytes::from(name)))
                            .expect("response");
                        async move { Ok::<_, Infallible>(resp) }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Switch {
            addr,
            health,
            status,
            last_check,
            task,
        }
    }

    fn set_health(&self, code: u16) {
        self.health.store(code, Ordering::SeqCst);
    }

    fn set_status(&self, code: u16) {
        self.status.store(code, Ordering::SeqCst);
    }
}

/// One pool `web` for host `web.test` over `addrs`, with `policies` (YAML
/// lines indented for the pool).
fn web(policies: &str, addrs: &[SocketAddr]) -> String {
    let mut yaml = format!(
        "pools:\n  - name: web\n    hosts: [web.test, \"*.web.test\"]\n{policies}    endpoints:\n"
    );
    for addr in addrs {
        yaml.push_str(&format!("      - {{address: {addr}}}\n"));
    }
    yaml
}

const CHECKS: &str = "    healthCheck: {path: /healthz, interval: 50ms, timeout: 1s, healthyThreshold: 2, unhealthyThreshold: 2}\n";

/// Who answered each of `n` requests: the backend's name, or `sluice-<code>`
/// when Sluice answered itself.
async fn who(http: &HttpClient, dp: &Dataplane, n: usize) -> Vec<String> {
    let mut answers = Vec::with_capacity(n);
    for _ in 0..n {
        let got = proxy_get(http, dp, "web.test", "/").await;
        answers.push(if got.backend.is_empty() {
            format!("sluice-{}", got.status.as_u16())
        } else {
            got.backend
        });
    }
    answers
}

async fn pools(http: &HttpClient, dp: &Dataplane) -> Value {
    let got = admin_get(http, dp, "/debug/pools").await;
    assert_eq!(got.status, StatusCode::OK);
    serde_json::from_slice(&got.body).expect("/debug/pools is JSON")
}

/// The `/debug/pools` entry of endpoint `addr` of pool `web`.
async fn endpoint(http: &HttpClient, dp: &Dataplane, addr: SocketAddr) -> Value {
    let pools = pools(http, dp).await;
    let web = pools["pools"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == "web"))
        .cloned()
        .unwrap_or(Value::Null);
    web["endpoints"]
        .as_array()
        .and_then(|e| e.iter().find(|e| e["address"] == addr.to_string()))
        .cloned()
        .unwrap_or(Value::Null)
}

async fn panic_mode(http: &HttpClient, dp: &Dataplane) -> bool {
    let pools = pools(http, dp).await;
    pools["pools"][0]["panic"] == true
}

/// `sluice_endpoint_healthy` of `addr` in pool `web`, if exposed.
async fn healthy_metric(http: &HttpClient, dp: &Dataplane, addr: SocketAddr) -> Option<String> {
    let text = admin_get(http, dp, "/metrics").await.text();
    let prefix = format!("sluice_endpoint_healthy{{pool=\"web\",endpoint=\"{addr}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(str::to_string)
}

#[tokio::test]
async fn an_endpoint_failing_its_health_checks_is_taken_out_and_brought_back() {
    let (a, b, c) = (
        Switch::start("a").await,
        Switch::start("b").await,
        Switch::start("c").await,
    );
    let yaml = web(CHECKS, &[a.addr, b.addr, c.addr]);
    let dp = start(Source::Static(table(&yaml))).await;
    let http = client();

    eventually("b to be checked", async || {
        b.last_check.lock().expect("lock").is_some()
    })
    .await;
    let (host, agent) = b
        .last_check
        .lock()
        .expect("lock")
        .clone()
        .unwrap_or_default();
    assert_eq!(host, "web.test", "checks use the pool's first exact host");
    assert_eq!(agent, "sluice-health-check");
    let ep = endpoint(&http, &dp, b.addr).await;
    assert_eq!(ep["healthy"], true, "{ep}");
    assert_eq!(ep["available"], true, "{ep}");
    assert_eq!(ep["ejected"], false, "{ep}");
    assert_eq!(ep["weight"], 1, "{ep}");
    assert_eq!(ep["consecutiveFailures"], 0, "{ep}");
    assert_eq!(ep["inFlight"], 0, "{ep}");
    assert!(ep["ewmaMs"].as_f64().is_some_and(|ms| ms >= 0.0), "{ep}");
    let pools = pools(&http, &dp).await;
    assert_eq!(pools["pools"][0]["panic"], false, "{pools}");
    assert_eq!(pools["pools"][0]["inFlight"], 0, "{pools}");
    assert_eq!(
        healthy_metric(&http, &dp, b.addr).await.as_deref(),
        Some("1")
    );

    b.set_health(503);
    eventually("b to fail its checks", async || {
        endpoint(&http, &dp, b.addr).await["healthy"] == false
    })
    .await;
    let answers = who(&http, &dp, 30).await;
    assert!(
        answers.iter().all(|w| w == "a" || w == "c"),
        "an unhealthy endpoint takes no traffic: {answers:?}"
    );
    assert!(answers.contains(&"a".into()) && answers.contains(&"c".into()));
    assert_eq!(
        healthy_metric(&http, &dp, b.addr).await.as_deref(),
        Some("0")
    );
    assert_eq!(
        healthy_metric(&http, &dp, a.addr).await.as_deref(),
        Some("1")
    );

    b.set_health(200);
    eventually("b to take traffic again", async || {
        who(&http, &dp, 3).await.contains(&"b".into())
    })
    .await;
    assert_eq!(endpoint(&http, &dp, b.addr).await["healthy"], true);
    assert_eq!(
        healthy_metric(&http, &dp, b.addr).await.as_deref(),
        Some("1")
    );
    dp.shutdown().await;
}

#[tokio::test]
async fn outlier_detection_ejects_an_endpoint_that_fails_and_takes_it_back_after_a_while() {
    let (a, bad) = (Switch::start("a").await, Switch::start("bad").await);
    bad.set_status(503);
    let policy = "    outlierDetection: {consecutiveFailures: 3, baseEjectionTime: 2s}\n";
    let dp = start(Source::Static(table(&web(policy, &[a.addr, bad.addr])))).await;
    let http = client();

    let mut failures = 0;
    eventually("bad to be ejected", async || {
        failures += who(&http, &dp, 1)
            .await
            .iter()
            .filter(|w| *w == "bad")
            .count();
        endpoint(&http, &dp, bad.addr).await["ejected"] == true
    })
    .await;
    assert_eq!(failures, 3, "ejected at the third failure in a row");
    let ep = endpoint(&http, &dp, bad.addr).await;
    assert_eq!(ep["timesEjected"], 1, "{ep}");
    assert_eq!(ep["available"], false, "{ep}");
    assert!(
        ep["ejectionRemainingMs"]
            .as_u64()
            .is_some_and(|ms| ms <= 2000),
        "{ep}"
    );
    let answers = who(&http, &dp, 10).await;
    assert!(answers.iter().all(|w| w == "a"), "{answers:?}");
    assert_eq!(
        healthy_metric(&http, &dp, bad.addr).await.as_deref(),
        Some("0")
    );

    bad.set_status(200);
    eventually("bad to be back after its ejection", async || {
        who(&http, &dp, 2).await.contains(&"bad".into())
    })
    .await;
    let ep = endpoint(&http, &dp, bad.addr).await;
    assert_eq!(ep["ejected"], false, "{ep}");
    assert_eq!(ep["onTrial"], false, "the trial passed: {ep}");
    assert_eq!(
        healthy_metric(&http, &dp, bad.addr).await.as_deref(),
        Some("1")
    );
    dp.shutdown().await;
}

#[tokio::test]
async fn an_endpoint_that_fails_its_trial_is_ejected_again_at_once_for_longer() {
    let (a, bad) = (Switch::start("a").await, Switch::start("bad").await);
    bad.set_status(503);
    let policy = "    outlierDetection: {consecutiveFailures: 2, baseEjectionTime: 200ms}\n";
    let dp = start(Source::Static(table(&web(policy, &[a.addr, bad.addr])))).await;
    let http = client();

    eventually("bad to be ejected twice", async || {
        who(&http, &dp, 1).await;
        let ep = endpoint(&http, &dp, bad.addr).await;
        ep["timesEjected"] == 2 && ep["ejected"] == true
    })
    .await;
    let ep = endpoint(&http, &dp, bad.addr).await;
    assert!(
        ep["ejectionRemainingMs"]
            .as_u64()
            .is_some_and(|ms| ms <= 400),
        "the second ejection lasts twice the base: {ep}"
    );
    dp.shutdown().await;
}

#[tokio::test]
async fn max_ejection_percent_keeps_half_the_pool_in_service() {
    let bad = Switch::start("bad").await;
    bad.set_status(503);
    let closed = closed_port().await;
    let policy = "    outlierDetection: {consecutiveFailures: 2, baseEjectionTime: 60s, maxEjectionPercent: 50}\n";
    let dp = start(Source::Static(table(&web(policy, &[bad.addr, closed])))).await;
    let http = client();

    let answers = who(&http, &dp, 20).await;
    assert!(
        answers.iter().all(|w| w == "bad" || w == "sluice-502"),
        "{answers:?}"
    );
    let ejected = [
        endpoint(&http, &dp, bad.addr).await["ejected"] == true,
        endpoint(&http, &dp, closed).await["ejected"] == true,
    ];
    assert_eq!(
        ejected.iter().filter(|e| **e).count(),
        1,
        "50 % of two endpoints: one ejected"
    );
    let kept = if ejected[0] { "sluice-502" } else { "bad" };
    let answers = who(&http, &dp, 10).await;
    assert!(answers.iter().all(|w| w == kept), "{kept}: {answers:?}");
    assert!(!panic_mode(&http, &dp).await);
    let metrics = [
        healthy_metric(&http, &dp, bad.addr).await,
        healthy_metric(&http, &dp, closed).await,
    ];
    let mut metrics: Vec<_> = metrics.into_iter().flatten().collect();
    metrics.sort();
    assert_eq!(metrics, ["0", "1"]);
    dp.shutdown().await;
}

#[tokio::test]
async fn a_pool_with_no_healthy_endpoint_still_tries_them_all() {
    let (a, b) = (Switch::start("a").await, Switch::start("b").await);
    a.set_health(503);
    b.set_health(503);
    let dp = start(Source::Static(table(&web(CHECKS, &[a.addr, b.addr])))).await;
    let http = client();

    eventually("both to fail their checks", async || {
        endpoint(&http, &dp, a.addr).await["healthy"] == false
            && endpoint(&http, &dp, b.addr).await["healthy"] == false
    })
    .await;
    assert!(
        panic_mode(&http, &dp).await,
        "/debug/pools shows panic mode"
    );
    let answers = who(&http, &dp, 10).await;
    assert!(
        answers.contains(&"a".into()) && answers.contains(&"b".into()),
        "panic mode spreads traffic over every endpoint: {answers:?}"
    );
    assert!(answers.iter().all(|w| w == "a" || w == "b"), "{answers:?}");
    assert_eq!(
        healthy_metric(&http, &dp, a.addr).await.as_deref(),
        Some("0")
    );
    assert_eq!(
        healthy_metric(&http, &dp, b.addr).await.as_deref(),
        Some("0")
    );

    a.set_health(200);
    eventually("panic mode to end with a healthy", async || {
        !panic_mode(&http, &dp).await
    })
    .await;
    let answers = who(&http, &dp, 10).await;
    assert!(answers.iter().all(|w| w == "a"), "{answers:?}");
    dp.shutdown().await;
}

#[tokio::test]
async fn health_and_ejections_survive_an_unrelated_table_update() {
    let (a, bad, sick, c) = (
        Switch::start("a").await,
        Switch::start("bad").await,
        Switch::start("sick").await,
        Switch::start("c").await,
    );
    bad.set_status(503);
    sick.set_health(503);
    let policies = format!(
        "{CHECKS}    outlierDetection: {{consecutiveFailures: 2, baseEjectionTime: 60s}}\n"
    );
    let path = temp_dir("health").join("sluice.yaml");
    std::fs::write(&path, web(&policies, &[a.addr, bad.addr, sick.addr])).expect("write");
    let dp = start(Source::File(path.clone())).await;
    let http = client();

    eventually("bad ejected and sick unhealthy", async || {
        who(&http, &dp, 1).await;
        endpoint(&http, &dp, bad.addr).await["ejected"] == true
            && endpoint(&http, &dp, sick.addr).await["healthy"] == false
    })
    .await;

    std::fs::write(
        &path,
        web(&policies, &[a.addr, bad.addr, sick.addr, c.addr]),
    )
    .expect("write");
    eventually("c to take traffic", async || {
        who(&http, &dp, 2).await.contains(&"c".into())
    })
    .await;
    let answers = who(&http, &dp, 12).await;
    assert!(
        answers.iter().all(|w| w == "a" || w == "c"),
        "the update kept bad ejected and sick unhealthy: {answers:?}"
    );
    let ep = endpoint(&http, &dp, bad.addr).await;
    assert_eq!(
        (&ep["ejected"], &ep["timesEjected"]),
        (&true.into(), &1.into()),
        "{ep}"
    );
    assert_eq!(endpoint(&http, &dp, sick.addr).await["healthy"], false);
    assert_eq!(
        healthy_metric(&http, &dp, c.addr).await.as_deref(),
        Some("1")
    );

    // An endpoint that leaves the pool leaves the metrics too.
    std::fs::write(&path, web(&policies, &[a.addr, bad.addr, sick.addr])).expect("write");
    eventually("c's series to go", async || {
        healthy_metric(&http, &dp, c.addr).await.is_none()
    })
    .await;
    assert_eq!(
        healthy_metric(&http, &dp, bad.addr).await.as_deref(),
        Some("0")
    );
    dp.shutdown().await;
}

#[tokio::test]
async fn dropping_the_health_check_puts_an_unhealthy_endpoint_back() {
    let (a, sick) = (Switch::start("a").await, Switch::start("sick").await);
    sick.set_health(503);
    let path = temp_dir("health-off").join("sluice.yaml");
    std::fs::write(&path, web(CHECKS, &[a.addr, sick.addr])).expect("write");
    let dp = start(Source::File(path.clone())).await;
    let http = client();
    eventually("sick to fail its checks", async || {
        endpoint(&http, &dp, sick.addr).await["healthy"] == false
    })
    .await;
    assert!(who(&http, &dp, 6).await.iter().all(|w| w == "a"));

    std::fs::write(&path, web("", &[a.addr, sick.addr])).expect("write");
    eventually("sick to take traffic without checks", async || {
        who(&http, &dp, 2).await.contains(&"sick".into())
    })
    .await;
    let pools = pools(&http, &dp).await;
    assert_eq!(pools["pools"][0]["healthChecked"], false, "{pools}");
    dp.shutdown().await;
}
