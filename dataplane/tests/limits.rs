//! Circuit breaker limits and rate limits, as a client sees them: which
//! requests pass, which get a fast 503 or 429, and what those say.

#[path = "support/resilience.rs"]
mod resilience;
mod support;

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use resilience::{Blackhole, client_from};
use sluice_dataplane::{Dataplane, Source};
use support::*;

fn header(got: &Got, name: &str) -> String {
    got.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

/// Sends `n` GETs at once; the answers in order.
async fn burst(http: &HttpClient, dp: &Dataplane, host: &str, n: usize) -> Vec<Got> {
    let all = (0..n).map(|_| proxy_get(http, dp, host, "/"));
    futures::future::join_all(all).await
}

#[tokio::test]
async fn over_max_requests_a_request_gets_503_at_once_and_the_held_ones_complete() {
    let b = Backend::start("b").await;
    let dp = start(Source::Static(table(&format!(
        "pools:\n  - name: p\n    circuitBreaker: {{maxRequests: 2}}\n    endpoints: [{{address: {}}}]\n",
        b.addr
    ))))
    .await;
    let http = client();
    let held: Vec<_> = (0..2)
        .map(|_| {
            let (http, addr) = (http.clone(), dp.http_addr());
            tokio::spawn(async move { send(&http, get(addr, "x", "/gate")).await })
        })
        .collect();
    b.gate.arrival().await;
    b.gate.arrival().await;

    let got = proxy_get(&http, &dp, "x", "/").await;
    assert_eq!(got.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(got.error, "overflow");
    assert_eq!(header(&got, "x-sluice-overflow"), "max-requests");
    assert_eq!(
        got.text(),
        "pool \"p\": circuit breaker maxRequests reached\n"
    );

    b.gate.open();
    for h in held {
        let got = h.await.expect("task");
        assert_eq!((got.status, got.text().as_str()), (StatusCode::OK, "b"));
    }
    let got = proxy_get(&http, &dp, "x", "/").await;
    assert_eq!(got.status, StatusCode::OK, "room again once they finished");
}

#[tokio::test]
async fn over_max_connections_a_request_needing_a_new_connection_gets_503() {
    let b = Backend::start("b").await;
    let dp = start(Source::Static(table(&format!(
        "pools:\n  - name: p\n    circuitBreaker: {{maxConnections: 1}}\n    endpoints: [{{address: {}}}]\n",
        b.addr
    ))))
    .await;
    let http = client();
    let addr = dp.http_addr();
    let held = {
        let http = http.clone();
        tokio::spawn(async move { send(&http, get(addr, "x", "/gate")).await })
    };
    b.gate.arrival().await;
    let got = proxy_get(&http, &dp, "x", "/").await;
    assert_eq!(
        (got.status, got.error.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "overflow")
    );
    assert_eq!(header(&got, "x-sluice-overflow"), "max-connections");
    assert_eq!(
        got.text(),
        "pool \"p\": circuit breaker maxConnections reached\n"
    );
    b.gate.open();
    assert_eq!(held.await.expect("task").status, StatusCode::OK);
    // One request at a time reuses the one connection.
    for _ in 0..5 {
        let got = proxy_get(&http, &dp, "x", "/").await;
        assert_eq!(got.status, StatusCode::OK, "{}", got.text());
    }
    assert_eq!(b.connections.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn over_max_pending_requests_a_request_waiting_to_connect_gets_503() {
    let Some(hole) = Blackhole::start().await else {
        eprintln!("skipped: no connect on loopback ever hung here");
        return;
    };
    let dp = start(Source::Static(table(&format!(
        "pools:\n  - name: p\n    circuitBreaker: {{maxPendingRequests: 1}}\n    timeouts: {{connect: 8s}}\n    endpoints: [{{address: {}}}]\n",
        hole.addr
    ))))
    .await;
    let http = client();
    let addr = dp.http_addr();
    // The first request hangs in connect, holding the one pending place.
    let first = {
        let http = http.clone();
        tokio::spawn(async move { http.request(get(addr, "x", "/")).await })
    };
    let mut refused = None;
    eventually("a second request is refused", async || {
        let fut = http.request(get(addr, "x", "/"));
        if let Ok(Ok(resp)) = tokio::time::timeout(Duration::from_millis(300), fut).await {
            refused = Some((
                resp.status(),
                resp.headers()
                    .get("x-sluice-overflow")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string(),
            ));
            return true;
        }
        false
    })
    .await;
    assert_eq!(
        refused,
        Some((
            StatusCode::SERVICE_UNAVAILABLE,
            "max-pending-requests".to_string()
        ))
    );
    first.abort();
}

fn assert_rate_limited(got: &Got) {
    assert_eq!(got.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(got.error, "rate-limited");
    let after: u64 = header(got, "retry-after").parse().expect("Retry-After");
    assert!(after >= 1, "Retry-After {after}");
}

/// Of `n` requests sent at once at `rps` with `burst`, how many may pass:
/// the burst plus what refilled while they were sent.
fn allowed(burst: usize, rps: usize, elapsed: Duration) -> usize {
    burst + (elapsed.as_secs_f64() * rps as f64).ceil() as usize
}

/// Sends 20 requests at once to a pool limited to 5 per second by
/// `rate_limit` (YAML): between 5 and what refilled meanwhile pass, the
/// others get 429 with `Retry-After`. Returns the dataplane and how many
/// were refused.
async fn burst_against(rate_limit: &str) -> (Dataplane, HttpClient, usize) {
    let b = Backend::start("b").await;
    let dp = start(Source::Static(table(&format!(
        "pools:\n  - name: rl\n    rateLimit: {rate_limit}\n    endpoints: [{{address: {}}}]\n",
        b.addr
    ))))
    .await;
    let http = client();
    let t0 = Instant::now();
    let answers = burst(&http, &dp, "x", 20).await;
    let elapsed = t0.elapsed();
    let passed = answers
        .iter()
        .filter(|g| g.status == StatusCode::OK)
        .count();
    assert!(
        passed >= 5 && passed <= allowed(5, 5, elapsed),
        "{passed} passed in {elapsed:?}"
    );
    for got in answers.iter().filter(|g| g.status != StatusCode::OK) {
        assert_rate_limited(got);
    }
    (dp, http, 20 - passed)
}

#[tokio::test]
async fn token_bucket_passes_the_burst_and_refuses_the_rest_with_retry_after() {
    let (dp, http, refused) = burst_against("{requestsPerSecond: 5, burst: 5}").await;
    let metrics = admin_get(&http, &dp, "/metrics").await.text();
    let line = format!("sluice_ratelimited_total{{pool=\"rl\"}} {refused}");
    assert!(metrics.contains(&line), "{line} not in\n{metrics}");
    let line = format!("sluice_requests_total{{pool=\"rl\",code=\"429\"}} {refused}");
    assert!(metrics.contains(&line), "{line} not in\n{metrics}");
}

#[tokio::test]
async fn sliding_window_passes_the_limit_per_second() {
    burst_against("{requestsPerSecond: 5, algorithm: SlidingWindow}").await;
}

#[tokio::test]
async fn source_ips_have_their_own_buckets() {
    let b = Backend::start("b").await;
    let dp = start(Source::Static(table(&format!(
        "pools:\n  - name: rl\n    rateLimit: {{requestsPerSecond: 1, burst: 3, key: SourceIP}}\n    endpoints: [{{address: {}}}]\n",
        b.addr
    ))))
    .await;
    let one = client_from(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)));
    let two = client_from(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)));
    for http in [&one, &two] {
        let t0 = Instant::now();
        let answers = burst(http, &dp, "x", 8).await;
        let passed = answers
            .iter()
            .filter(|g| g.status == StatusCode::OK)
            .count();
        assert!(
            passed >= 3 && passed <= allowed(3, 1, t0.elapsed()),
            "{passed} passed"
        );
    }
}

#[tokio::test]
async fn header_values_have_their_own_buckets_and_requests_without_share_one() {
    let b = Backend::start("b").await;
    let dp = start(Source::Static(table(&format!(
        "pools:\n  - name: rl\n    rateLimit: {{requestsPerSecond: 1, burst: 3, key: Header, header: X-Api-Key}}\n    endpoints: [{{address: {}}}]\n",
        b.addr
    ))))
    .await;
    let http = client();
    let with_key = |key: Option<&'static str>| {
        let mut req = Request::get(format!("http://{}/", dp.http_addr())).header("host", "x");
        if let Some(k) = key {
            req = req.header("x-api-key", k);
        }
        req.body(Full::new(Bytes::new())).expect("request")
    };
    for key in [Some("alice"), Some("bob"), None] {
        let t0 = Instant::now();
        let answers = futures::future::join_all((0..8).map(|_| send(&http, with_key(key)))).await;
        let passed = answers
            .iter()
            .filter(|g| g.status == StatusCode::OK)
            .count();
        assert!(
            passed >= 3 && passed <= allowed(3, 1, t0.elapsed()),
            "{key:?}: {passed} passed"
        );
    }
}

/// An idle upstream connection is closed once it has waited `timeouts.idle`,
/// even when no request comes to find it expired (its place in
/// `maxConnections` is freed too).
#[tokio::test]
async fn an_idle_upstream_connection_is_closed_after_the_idle_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    // One connection: answer one request, then wait for the proxy to close it.
    let closed = tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.expect("accept");
        let mut buf = vec![0u8; 4096];
        let n = conn.read(&mut buf).await.expect("request");
        assert!(n > 0);
        conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            .await
            .expect("answer");
        // EOF (0 bytes) is the proxy closing its idle connection.
        let n = tokio::time::timeout(WAIT, conn.read(&mut buf)).await;
        n.ok().and_then(Result::ok)
    });
    let dp = start(Source::Static(table(&format!(
        "pools:\n  - name: p\n    timeouts: {{idle: 200ms}}\n    endpoints: [{{address: {addr}}}]\n"
    ))))
    .await;
    let got = proxy_get(&client(), &dp, "x", "/").await;
    assert_eq!(got.status, StatusCode::OK);
    let read = closed.await.expect("backend task");
    assert_eq!(
        read,
        Some(0),
        "the idle connection was not closed within {WAIT:?}"
    );
}
