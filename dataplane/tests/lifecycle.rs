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
