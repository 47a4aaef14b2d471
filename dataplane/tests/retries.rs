//! Retries and timeouts with failing loopback endpoints: what the client
//! sees, and how many tries the endpoints saw.

#[path = "support/resilience.rs"]
mod resilience;
mod support;

use std::time::Instant;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use resilience::{Blackhole, Fault, Faulty};
use sluice_dataplane::Source;
use support::*;

/// Outlier detection off, so a failing endpoint keeps being tried and
/// only retries stand between it and the client.
const NO_EJECTION: &str = "outlierDetection: {consecutiveFailures: 0}";

fn attempts(got: &Got) -> String {
    got.headers
        .get("x-sluice-attempts")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("1")
        .to_string()
}

fn post(addr: std::net::SocketAddr, body: &'static str) -> Request<Full<Bytes>> {
    Request::post(format!("http://{addr}/"))
        .header("host", "x")
        .body(Full::new(Bytes::from(body)))
        .expect("request")
}

#[tokio::test]
async fn a_dead_endpoint_among_live_ones_costs_no_failed_get() {
    let live = [
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
        Backend::start("d").await,
    ];
    let dead = closed_port().await;
    let eps: Vec<String> = live
        .iter()
        .map(|b| b.addr.to_string())
        .chain([dead.to_string()])
        .map(|a| format!("{{address: {a}}}"))
        .collect();
    // Default retries (2 attempts on ConnectFailure) alone: no ejection.
    let dp = start(Source::Static(table(&format!(
        "pools:\n  - name: p\n    {NO_EJECTION}\n    endpoints: [{}]\n",
        eps.join(", ")
    ))))
    .await;
    let http = client();
    let mut retried = 0;
    for _ in 0..300 {
        let got = proxy_get(&http, &dp, "x", "/").await;
        assert_eq!(got.status, StatusCode::OK, "{}", got.text());
        if attempts(&got) == "2" {
            retried += 1;
        }
    }
    assert!(
        retried >= 30,
        "{retried}: the dead endpoint kept being met first"
    );
}

#[tokio::test]
async fn a_503_is_retried_elsewhere_for_get_and_bodiless_post_but_not_for_post_with_a_body() {
    let bad = Faulty::start("bad", Fault::Status(503)).await;
    let good = Backend::start("good").await;
    let dp = start(Source::Static(table(&format!(
        "pools:\n  - name: p\n    {NO_EJECTION}\n    retries: {{attempts: 1, retryOn: [GatewayError]}}\n    endpoints: [{{address: {}}}, {{address: {}}}]\n",
        bad.addr, good.addr
    ))))
    .await;
    let http = client();
    for _ in 0..10 {
        let got = proxy_get(&http, &dp, "x", "/").await;
        assert_eq!((got.status, got.backend.as_str()), (StatusCode::OK, "good"));
        let got = send(&http, post(dp.http_addr(), "")).await;
        assert_eq!((got.status, got.backend.as_str()), (StatusCode::OK, "good"));
    }
    assert!(bad.hits() > 0, "the bad endpoint was tried");

    let before = bad.hits();
    let mut refused = 0;
    for _ in 0..10 {
        let got = send(&http, post(dp.http_addr(), "order=1")).await;
        if got.status == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(
                (got.backend.as_str(), attempts(&got).as_str()),
                ("bad", "1")
            );
            refused += 1;
        } else {
            assert_eq!((got.status, got.backend.as_str()), (StatusCode::OK, "good"));
        }
    }
    assert!(refused > 0, "some POSTs met the bad endpoint");
    assert_eq!(bad.hits() - before, refused, "and each got its 503");
}

#[tokio::test]
async fn tries_are_bounded_by_attempts_and_by_the_endpoints_left() {
    let bad = [
        Faulty::start("x", Fault::Status(502)).await,
        Faulty::start("y", Fault::Status(503)).await,
        Faulty::start("z", Fault::Status(504)).await,
    ];
    let eps: Vec<String> = bad
        .iter()
        .map(|b| format!("{{address: {}}}", b.addr))
        .collect();
    let eps = eps.join(", ");
    let dp = start(Source::Static(table(&format!(
        "pools:
  - {{name: two, hosts: [two], {NO_EJECTION}, retries: {{attempts: 1, retryOn: [GatewayError]}}, endpoints: [{eps}]}}
"
    ))))
    .await;
    let http = client();
    let hits = || bad.iter().map(Faulty::hits).sum::<usize>();
    for _ in 0..10 {
        let got = proxy_get(&http, &dp, "two", "/").await;
        assert!(got.status.is_server_error(), "{}", got.status);
        assert_eq!(attempts(&got), "2");
        assert_eq!(got.error, "", "the endpoint's own answer is passed on");
    }
    assert_eq!(hits(), 20, "1 + attempts tries each");

    let dp = start(Source::Static(table(&format!(
        "pools:
  - {{name: many, hosts: [many], {NO_EJECTION}, retries: {{attempts: 5, retryOn: [GatewayError]}}, endpoints: [{eps}]}}
"
    ))))
    .await;
    for _ in 0..10 {
        let got = proxy_get(&http, &dp, "many", "/").await;
        assert!(got.status.is_server_error(), "{}", got.status);
        assert_eq!(attempts(&got), "3", "no endpoint is tried twice");
    }
    assert_eq!(hits(), 20 + 30);
}

#[tokio::test]
async fn a_hung_endpoint_is_abandoned_after_the_per_try_timeout() {
    let hung = Faulty::start("hung", Fault::Hang).await;
    let good = Backend::start("good").await;
    let dp = start(Source::Static(table(&format!(
        "pools:\n  - name: p\n    retries: {{attempts: 1, perTryTimeout: 200ms, retryOn: [GatewayError]}}\n    endpoints: [{{address: {}}}, {{address: {}}}]\n",
        hung.addr, good.addr
    ))))
    .await;
    let http = client();
    for _ in 0..6 {
        let got = proxy_get(&http, &dp, "x", "/").await;
        assert_eq!((got.status, got.backend.as_str()), (StatusCode::OK, "good"));
    }
    assert!(hung.hits() > 0, "the hung endpoint was tried");
}

#[tokio::test]
async fn no_response_within_the_request_timeout_is_504() {
    let hung = Faulty::start("hung", Fault::Hang).await;
    let dp = start(Source::Static(table(&format!(
        "pools:\n  - name: p\n    timeouts: {{request: 300ms}}\n    endpoints: [{{address: {}}}]\n",
        hung.addr
    ))))
    .await;
    let got = proxy_get(&client(), &dp, "x", "/").await;
    assert_eq!(
        (got.status, got.error.as_str()),
        (StatusCode::GATEWAY_TIMEOUT, "timeout")
    );
    assert_eq!(got.text(), "pool \"p\" gave no response within 300ms\n");
}

#[tokio::test]
async fn a_connect_that_hangs_times_out_and_the_next_endpoint_answers() {
    let Some(hole) = Blackhole::start().await else {
        eprintln!("skipped: no connect on loopback ever hung here");
        return;
    };
    let good = Backend::start("good").await;
    let dp = start(Source::Static(table(&format!(
        "pools:
  - {{name: alone, hosts: [alone], timeouts: {{connect: 200ms}}, endpoints: [{{address: {hole}}}]}}
  - {{name: pair, hosts: [pair], timeouts: {{connect: 200ms}}, endpoints: [{{address: {hole}}}, {{address: {good}}}]}}
",
        hole = hole.addr,
        good = good.addr
    ))))
    .await;
    let http = client();
    let got = proxy_get(&http, &dp, "alone", "/").await;
    assert_eq!(
        (got.status, got.error.as_str()),
        (StatusCode::GATEWAY_TIMEOUT, "timeout")
    );
    assert!(got.text().contains("connect timed out"), "{}", got.text());
    for _ in 0..4 {
        let got = proxy_get(&http, &dp, "pair", "/").await;
        assert_eq!((got.status, got.backend.as_str()), (StatusCode::OK, "good"));
    }
}

#[tokio::test]
async fn the_retry_budget_bounds_retries_when_everything_fails() {
    let bad = [
        Faulty::start("x", Fault::Status(503)).await,
        Faulty::start("y", Fault::Status(503)).await,
        Faulty::start("z", Fault::Status(503)).await,
    ];
    let eps: Vec<String> = bad
        .iter()
        .map(|b| format!("{{address: {}}}", b.addr))
        .collect();
    let dp = start(Source::Static(table(&format!(
        "pools:\n  - name: p\n    {NO_EJECTION}\n    retries: {{attempts: 2, retryOn: [GatewayError], budgetPercent: 0}}\n    endpoints: [{}]\n",
        eps.join(", ")
    ))))
    .await;
    let http = client();
    let t0 = Instant::now();
    for _ in 0..200 {
        let got = proxy_get(&http, &dp, "x", "/").await;
        assert_eq!(got.status, StatusCode::SERVICE_UNAVAILABLE);
    }
    let retries = bad.iter().map(Faulty::hits).sum::<usize>() - 200;
    // The floor: 10 retries a second over a 10 s window, i.e. 100 while
    // the test runs within one window; each further second lets 10 more.
    let ceiling = 100 + 10 * t0.elapsed().as_secs() as usize + 10;
    assert!(
        (100..=ceiling).contains(&retries),
        "{retries} retries, budget floor 100 (ceiling {ceiling}); 400 without a budget"
    );
}

#[tokio::test]
async fn a_response_body_that_goes_silent_is_cut_after_the_idle_timeout() {
    let b = Backend::start("b").await;
    let dp = start(Source::Static(table(&format!(
        "pools:\n  - name: p\n    timeouts: {{idle: 300ms}}\n    endpoints: [{{address: {}}}]\n",
        b.addr
    ))))
    .await;
    let http = client();
    let resp = tokio::time::timeout(WAIT, http.request(get(dp.http_addr(), "x", "/stream")))
        .await
        .expect("head in time")
        .expect("head");
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let first = tokio::time::timeout(WAIT, body.frame())
        .await
        .expect("first frame in time")
        .expect("a frame")
        .expect("data");
    assert_eq!(first.into_data().expect("data"), "first\n");
    // The gate stays shut: the body goes silent and Sluice cuts it.
    let rest = tokio::time::timeout(WAIT, body.collect())
        .await
        .expect("the body ended in time");
    assert!(
        rest.is_err(),
        "the cut body ends in an error, not a clean end"
    );
}

#[tokio::test]
async fn a_post_whose_endpoint_refused_the_connection_is_sent_whole_to_another() {
    let dead = closed_port().await;
    let good = Backend::start("good").await;
    // Default retries: ConnectFailure, any method.
    let dp = start(Source::Static(table(&format!(
        "pools:\n  - name: p\n    endpoints: [{{address: {dead}}}, {{address: {}}}]\n",
        good.addr
    ))))
    .await;
    let http = client();
    for i in 0..6 {
        let body = format!("order={i}");
        let req = Request::post(format!("http://{}/echo", dp.http_addr()))
            .header("host", "x")
            .body(Full::new(Bytes::from(body.clone())))
            .expect("request");
        let got = send(&http, req).await;
        assert_eq!((got.status, got.backend.as_str()), (StatusCode::OK, "good"));
        assert_eq!(got.text(), body, "the body arrived whole");
    }
}

#[tokio::test]
async fn a_reset_is_retried_for_get_but_not_once_a_post_body_was_sent() {
    let broken = garbage_backend().await;
    let good = Backend::start("good").await;
    let dp = start(Source::Static(table(&format!(
        "pools:\n  - name: p\n    {NO_EJECTION}\n    retries: {{attempts: 1, retryOn: [Reset]}}\n    endpoints: [{{address: {broken}}}, {{address: {}}}]\n",
        good.addr
    ))))
    .await;
    let http = client();
    let mut retried = 0;
    for _ in 0..6 {
        let got = proxy_get(&http, &dp, "x", "/").await;
        assert_eq!((got.status, got.backend.as_str()), (StatusCode::OK, "good"));
        retried += usize::from(attempts(&got) == "2");
    }
    assert!(retried > 0, "the broken endpoint was tried");
    let mut failed = 0;
    for _ in 0..6 {
        let got = send(&http, post(dp.http_addr(), "order=1")).await;
        if got.status == StatusCode::BAD_GATEWAY {
            assert_eq!(got.error, "upstream-failed");
            failed += 1;
        } else {
            assert_eq!(got.backend, "good");
        }
    }
    assert!(failed > 0, "a sent POST is not retried after a reset");
}

/// A client whose request bodies are fed by the test, frame by frame.
type StreamClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::StreamBody<fed::Frames>,
>;

/// The frames of a request body, from a channel the test holds.
mod fed {
    use bytes::Bytes;
    use hyper::body::Frame;
    use std::convert::Infallible;

    /// Frames as the test sends them; the body ends when the sender drops.
    pub type Frames = futures::stream::BoxStream<'static, Result<Frame<Bytes>, Infallible>>;

    /// A sender and the body it feeds.
    pub fn channel() -> (tokio::sync::mpsc::Sender<Bytes>, Frames) {
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
        let frames = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|b| (Ok(Frame::data(b)), rx))
        });
        (tx, Box::pin(frames))
    }
}

/// `POST /count` with a body fed from the returned sender.
async fn upload(
    dp: &sluice_dataplane::Dataplane,
) -> (
    tokio::sync::mpsc::Sender<Bytes>,
    tokio::task::JoinHandle<(StatusCode, String, String)>,
) {
    let http: StreamClient =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let (tx, frames) = fed::channel();
    let req = Request::post(format!("http://{}/count", dp.http_addr()))
        .header("host", "x")
        .body(http_body_util::StreamBody::new(frames))
        .expect("request");
    let answer = tokio::spawn(async move {
        let resp = http.request(req).await.expect("a response");
        let status = resp.status();
        let error = resp
            .headers()
            .get("x-sluice-error")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        (status, error, String::from_utf8_lossy(&body).into_owned())
    });
    (tx, answer)
}

#[tokio::test]
async fn an_upload_that_keeps_sending_is_not_cut_by_the_request_timeout() {
    let b = Backend::start("b").await;
    let dp = start(Source::Static(table(&format!(
        "pools:\n  - name: p\n    timeouts: {{request: 300ms, idle: 300ms}}\n    endpoints: [{{address: {}}}]\n",
        b.addr
    ))))
    .await;
    let (tx, answer) = upload(&dp).await;
    // Twelve bytes, one every 100 ms: 1.2 s in all, four request
    // timeouts, never 300 ms of silence.
    for _ in 0..12 {
        tx.send(Bytes::from_static(b"x")).await.expect("body open");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    drop(tx);
    let (status, error, body) = tokio::time::timeout(WAIT, answer)
        .await
        .expect("answered in time")
        .expect("client task");
    assert_eq!(
        (status, error.as_str(), body.as_str()),
        (StatusCode::OK, "", "12")
    );
}

#[tokio::test]
async fn an_upload_that_stalls_is_cut_after_the_idle_timeout_as_the_clients_fault() {
    let b = Backend::start("b").await;
    let dp = start(Source::Static(table(&format!(
        "pools:\n  - name: p\n    timeouts: {{request: 10s, idle: 300ms}}\n    endpoints: [{{address: {}}}]\n",
        b.addr
    ))))
    .await;
    let (tx, answer) = upload(&dp).await;
    tx.send(Bytes::from_static(b"x")).await.expect("body open");
    // The sender stays open and silent.
    let (status, error, body) = tokio::time::timeout(WAIT, answer)
        .await
        .expect("answered in time")
        .expect("client task");
    drop(tx);
    assert_eq!(
        (status, error.as_str()),
        (StatusCode::REQUEST_TIMEOUT, "client-timeout"),
        "{body}"
    );
    let metrics = admin_get(&client(), &dp, "/metrics").await.text();
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("sluice_upstream_requests_total") && l.contains("code=\"0\"")),
        "not held against the endpoint:\n{metrics}"
    );
}
