//! What an operator sees: the admin endpoints, and a shutdown that lets
//! in-flight requests finish.

mod support;

use std::time::Duration;

use http::StatusCode;
use sluice_dataplane::{Dataplane, Source};
use support::*;

#[tokio::test]
async fn admin_reports_health_readiness_routes_and_metrics() {
    let b = Backend::start("b").await;
    let dp = start(Source::Static(table(&format!(
        "pools:\n  - {{name: web, hosts: [shop.example.com], endpoints: [{{address: {}}}]}}\n",
        b.addr
    ))))
    .await;
    let http = client();
    for _ in 0..3 {
        assert_eq!(
            proxy_get(&http, &dp, "shop.example.com", "/").await.backend,
            "b"
        );
    }
    let got = admin_get(&http, &dp, "/healthz").await;
    assert_eq!((got.status, got.text().as_str()), (StatusCode::OK, "ok\n"));
    assert_eq!(
        admin_get(&http, &dp, "/readyz").await.status,
        StatusCode::OK
    );

    let got = admin_get(&http, &dp, "/debug/routes").await;
    let routes: serde_json::Value = serde_json::from_slice(&got.body).expect("json");
    assert_eq!(routes["version"], 1);
    assert_eq!(routes["pools"][0]["name"], "web");
    assert_eq!(routes["pools"][0]["hosts"][0], "shop.example.com");

    let got = admin_get(&http, &dp, "/metrics").await;
    let content_type = got
        .headers
        .get("content-type")
        .map(|v| v.as_bytes().to_vec());
    assert_eq!(
        content_type.as_deref(),
        Some(&b"application/openmetrics-text; version=1.0.0; charset=utf-8"[..])
    );
    let metrics = got.text();
    for want in [
        "sluice_requests_total{pool=\"web\",code=\"200\"} 3".to_string(),
        format!(
            "sluice_upstream_requests_total{{pool=\"web\",endpoint=\"{}\",code=\"200\"}} 3",
            b.addr
        ),
        "sluice_request_duration_seconds_count{pool=\"web\"} 3".to_string(),
        "sluice_route_version 1".to_string(),
    ] {
        assert!(metrics.contains(&want), "{want} missing from\n{metrics}");
    }
    eventually("in-flight back to 0 once the bodies ended", async || {
        admin_get(&http, &dp, "/metrics")
            .await
            .text()
            .contains("sluice_inflight_requests{pool=\"web\"} 0")
    })
    .await;
    assert_eq!(
        admin_get(&http, &dp, "/nope").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn shutdown_lets_an_in_flight_request_finish() {
    let b = Backend::start("b").await;
    let mut opts = options(one_pool(b.addr));
    // Far longer than the test needs: the request is held by the gate, not
    // by the clock.
    opts.grace_period = Duration::from_secs(60);
    let dp = Dataplane::start(opts).await.expect("starts");
    let (http_addr, admin_addr) = (dp.http_addr(), dp.admin_addr());
    let http = client();
    let in_flight = {
        let http = http.clone();
        tokio::spawn(async move { send(&http, get(http_addr, "x", "/gate")).await })
    };
    b.gate.arrival().await;

    let shutdown = tokio::spawn(dp.shutdown());
    // Shutdown has begun: new connections are refused...
    eventually("the listeners to close", async || {
        tokio::net::TcpStream::connect(http_addr).await.is_err()
            && tokio::net::TcpStream::connect(admin_addr).await.is_err()
    })
    .await;
    // ...while the request in flight still gets its answer.
    support::in_flight_answered_then_stopped(&b, in_flight, shutdown).await;
}

/// Connections opened at once on each listener while the dataplane accepts
/// none: more than the 128 that tokio's default backlog would queue.
const BURST: usize = 300;

#[test]
fn a_burst_of_connections_waits_in_every_listeners_backlog() {
    // The dataplane runs on a single-threaded runtime of its own, whose
    // thread is then held: nothing accepts, so every connection must wait
    // in the kernel's queue of the listener, whose length is the backlog.
    let (addrs_tx, addrs) = std::sync::mpsc::channel();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let server = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let mut opts = options(one_pool("127.0.0.1:9".parse().expect("addr")));
            opts.https = Some("127.0.0.1:0".parse().expect("addr"));
            let dp = Dataplane::start(opts).await.expect("dataplane starts");
            let https = dp.https_addr().expect("an HTTPS listener");
            addrs_tx
                .send([dp.http_addr(), https, dp.admin_addr()])
                .expect("addresses sent");
            // Blocks the runtime: no accept runs until the test is done.
            let _ = released.recv_timeout(WAIT * 3);
            dp.shutdown().await;
        });
    });
    let addrs = addrs.recv_timeout(WAIT).expect("the dataplane started");
    for addr in addrs {
        let mut queued = Vec::with_capacity(BURST);
        for _ in 0..BURST {
            // A connection past a full queue has its SYN dropped and would
            // wait for retries: bounded here, and counted as not queued.
            match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                Ok(s) => queued.push(s),
                Err(_) => break,
            }
        }
        assert_eq!(
            queued.len(),
            BURST,
            "connections queued on {addr} before the first was refused"
        );
    }
    release.send(()).expect("released");
    server.join().expect("the dataplane stopped");
}
