//! Scale from zero: a pool with `activation` and no endpoints holds its
//! requests, reports the demand at once, and releases them in order when a
//! table gives it endpoints; a full queue, a timeout and a shutdown answer
//! 503 with the reason.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use sluice_dataplane::control::report::INTERVAL;
use sluice_dataplane::{Dataplane, Options, Source};
use sluice_protocol::policy::Activation;
use sluice_protocol::{Delta, Endpoint, PoolRoute, RouteEvent, Snapshot};
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The pool under test: catch-all, with `activation`.
fn pool(endpoints: &[SocketAddr], max_pending: u32, timeout: Duration) -> PoolRoute {
    PoolRoute {
        endpoints: endpoints.iter().copied().map(Endpoint::new).collect(),
        activation: Some(Activation {
            max_pending,
            timeout: sluice_protocol::Duration(timeout),
        }),
        ..PoolRoute::new("ns/p")
    }
}

fn snapshot(pools: Vec<PoolRoute>) -> RouteEvent {
    RouteEvent::Snapshot(Snapshot {
        version: 1,
        pools,
        ..Default::default()
    })
}

fn delta(version: u64, upserts: Vec<PoolRoute>) -> RouteEvent {
    RouteEvent::Delta(Delta {
        version,
        base: version - 1,
        upserts,
        removes: vec![],
        ..Default::default()
    })
}

fn cluster(url: String) -> Options {
    let mut opts = options(Source::Controller {
        url,
        token_file: None,
        ca_file: None,
    });
    opts.grace_period = Duration::from_secs(5);
    opts
}

/// A dataplane following `ctl`, serving version 1 with `first` as its
/// only pool, reporting every `report_interval`.
async fn serving(
    ctl: &mut FakeController,
    first: PoolRoute,
    report_interval: Duration,
) -> (Dataplane, StreamConn) {
    let mut opts = cluster(ctl.url());
    opts.report_interval = report_interval;
    let dp = Dataplane::start(opts).await.expect("starts");
    let stream = ctl.next_stream().await;
    stream.send(snapshot(vec![first])).await;
    eventually("version 1", async || dp.route_version() == 1).await;
    (dp, stream)
}

/// `pending` of pool `ns/p` in `/debug/pools`.
async fn pending(http: &HttpClient, dp: &Dataplane) -> u64 {
    let got = admin_get(http, dp, "/debug/pools").await;
    let pools: serde_json::Value = serde_json::from_slice(&got.body).expect("json");
    pools["pools"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == "ns/p"))
        .and_then(|p| p["pending"].as_u64())
        .expect("pool ns/p with pending")
}

async fn wait_pending(http: &HttpClient, dp: &Dataplane, n: u64) {
    eventually(&format!("{n} requests held"), async || {
        pending(http, dp).await == n
    })
    .await;
}

/// Sends `GET path` to the dataplane in the background.
fn spawn_get(http: &HttpClient, dp: &Dataplane, path: &str) -> JoinHandle<Got> {
    let (http, req) = (http.clone(), get(dp.http_addr(), "x", path));
    tokio::spawn(async move { send(&http, req).await })
}

/// A backend that answers `rec` and records the path of every request,
/// in the order they arrive.
struct Recorder {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Recorder {
    async fn start() -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let log = Arc::clone(&log);
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        log.lock().expect("lock").push(req.uri().path().to_string());
                        let resp = Response::builder()
                            .header("x-backend", "rec")
                            .body(Full::new(Bytes::from_static(b"rec")))
                            .expect("response");
                        async move { Ok::<_, Infallible>(resp) }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Recorder { addr, seen, task }
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().expect("lock").clone()
    }
}

fn metric(text: &str, line_start: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(line_start))
        .and_then(|v| v.trim().parse().ok())
}

// On one thread (tokio's test default) the backend's order is the
// dataplane's dispatch order; on many, two neighbours' connections can
// overtake each other (see `sluice_dataplane::activation`).
#[tokio::test]
async fn held_requests_are_released_in_arrival_order_when_endpoints_appear() {
    let rec = Recorder::start().await;
    let mut ctl = FakeController::start().await;
    let long = Duration::from_secs(30);
    let (dp, stream) = serving(&mut ctl, pool(&[], 10, long), INTERVAL).await;
    let http = client();

    let mut held = Vec::new();
    for i in 0..5 {
        held.push(spawn_get(&http, &dp, &format!("/{i}")));
        wait_pending(&http, &dp, i + 1).await;
    }
    assert!(rec.seen().is_empty());

    stream
        .send(delta(2, vec![pool(&[rec.addr], 10, long)]))
        .await;
    for h in held {
        let got = h.await.expect("request task");
        assert_eq!((got.status, got.backend.as_str()), (StatusCode::OK, "rec"));
    }
    assert_eq!(rec.seen(), ["/0", "/1", "/2", "/3", "/4"]);
    assert_eq!(pending(&http, &dp).await, 0);
    // Once it has endpoints the pool serves at once.
    assert_eq!(proxy_get(&http, &dp, "x", "/5").await.backend, "rec");
    dp.shutdown().await;
}

#[tokio::test]
async fn a_request_held_past_the_timeout_gets_503_with_the_reason() {
    let mut ctl = FakeController::start().await;
    // An endpoint that is not ready counts as none.
    let mut first = pool(&[closed_port().await], 10, Duration::from_millis(300));
    first.endpoints[0].ready = false;
    let (dp, _stream) = serving(&mut ctl, first, INTERVAL).await;
    let http = client();

    let got = proxy_get(&http, &dp, "x", "/").await;
    assert_eq!(got.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(got.error, "activation-timeout");
    assert!(
        got.text()
            .contains("had no ready endpoints within the activation timeout 300ms"),
        "{}",
        got.text()
    );
    assert_eq!(pending(&http, &dp).await, 0);
    let text = admin_get(&http, &dp, "/metrics").await.text();
    let line = "sluice_requests_total{pool=\"ns/p\",code=\"503\"} ";
    assert_eq!(metric(&text, line), Some(1), "{text}");
    dp.shutdown().await;
}

#[tokio::test]
async fn a_full_queue_refuses_at_once_while_the_held_ones_are_served_later() {
    let rec = Recorder::start().await;
    let mut ctl = FakeController::start().await;
    let long = Duration::from_secs(30);
    let (dp, stream) = serving(&mut ctl, pool(&[], 2, long), INTERVAL).await;
    let http = client();

    let first = spawn_get(&http, &dp, "/first");
    wait_pending(&http, &dp, 1).await;
    let second = spawn_get(&http, &dp, "/second");
    wait_pending(&http, &dp, 2).await;

    let third = proxy_get(&http, &dp, "x", "/third").await;
    assert_eq!(third.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(third.error, "activation-overflow");
    assert!(
        third.text().contains("already holds 2 requests"),
        "{}",
        third.text()
    );
    assert_eq!(pending(&http, &dp).await, 2, "the first two are still held");

    stream
        .send(delta(2, vec![pool(&[rec.addr], 2, long)]))
        .await;
    for h in [first, second] {
        let got = h.await.expect("request task");
        assert_eq!((got.status, got.backend.as_str()), (StatusCode::OK, "rec"));
    }
    assert_eq!(rec.seen(), ["/first", "/second"]);
    dp.shutdown().await;
}

#[tokio::test]
async fn a_client_that_hangs_up_while_held_frees_its_place() {
    let rec = Recorder::start().await;
    let mut ctl = FakeController::start().await;
    let long = Duration::from_secs(30);
    let (dp, stream) = serving(&mut ctl, pool(&[], 1, long), INTERVAL).await;
    let http = client();

    let mut gone = TcpStream::connect(dp.http_addr()).await.expect("connect");
    gone.write_all(b"GET /gone HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("write");
    wait_pending(&http, &dp, 1).await;
    drop(gone);
    wait_pending(&http, &dp, 0).await;

    let next = spawn_get(&http, &dp, "/next");
    wait_pending(&http, &dp, 1).await;
    stream
        .send(delta(2, vec![pool(&[rec.addr], 1, long)]))
        .await;
    let got = next.await.expect("request task");
    assert_eq!((got.status, got.backend.as_str()), (StatusCode::OK, "rec"));
    assert_eq!(
        rec.seen(),
        ["/next"],
        "the request that hung up was not sent"
    );
    dp.shutdown().await;
}

#[tokio::test]
async fn new_demand_is_reported_at_once_not_at_the_next_tick() {
    let rec = Recorder::start().await;
    let mut ctl = FakeController::start().await;
    let long = Duration::from_secs(30);
    // No tick within the test: only an early report can arrive.
    let hour = Duration::from_secs(3600);
    let (dp, stream) = serving(&mut ctl, pool(&[], 10, long), hour).await;
    let http = client();

    let held = spawn_get(&http, &dp, "/");
    eventually("a report with the held request", async || {
        ctl.reports()
            .iter()
            .any(|r| r.pools.get("ns/p").is_some_and(|p| p.pending >= 1))
    })
    .await;
    let reports = ctl.reports();
    assert_eq!(reports.len(), 1, "one early report: {reports:?}");
    assert_eq!((reports[0].seq, reports[0].applied_version), (1, 1));

    stream
        .send(delta(2, vec![pool(&[rec.addr], 10, long)]))
        .await;
    let got = held.await.expect("request task");
    assert_eq!((got.status, got.backend.as_str()), (StatusCode::OK, "rec"));
    dp.shutdown().await;
}

#[tokio::test]
async fn shutdown_answers_held_requests_and_pools_without_activation_refuse_at_once() {
    let mut ctl = FakeController::start().await;
    let long = Duration::from_secs(30);
    let (dp, stream) = serving(&mut ctl, pool(&[], 10, long), INTERVAL).await;
    let http = client();

    let held = spawn_get(&http, &dp, "/");
    wait_pending(&http, &dp, 1).await;
    dp.shutdown().await;
    let got = held.await.expect("request task");
    assert_eq!(got.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(got.error, "activation-shutdown");
    drop(stream);

    // Without activation, no endpoints is a 503 at once, as before.
    let mut ctl = FakeController::start().await;
    let plain = PoolRoute::new("ns/p");
    let (dp, _stream) = serving(&mut ctl, plain, INTERVAL).await;
    let got = proxy_get(&http, &dp, "x", "/").await;
    assert_eq!(got.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(got.error, "no-endpoints");
    dp.shutdown().await;
}
