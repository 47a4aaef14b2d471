//! Shutdown as Kubernetes drives it: SIGTERM, readiness fails at once, new
//! connections are still served for the drain delay (while endpoints and
//! kube-proxy catch up), then the listeners close and in-flight requests
//! finish.

mod support;

use std::time::Duration;

use http::StatusCode;
use sluice_dataplane::{Dataplane, Source};
use support::*;

#[tokio::test]
async fn readiness_fails_at_once_and_new_connections_are_served_during_the_drain_delay() {
    let b = Backend::start("b").await;
    let mut opts = options(Source::Static(table(&format!(
        "pools:\n  - {{name: p, endpoints: [{{address: {}}}]}}\n",
        b.addr
    ))));
    // Long enough for the checks below to run inside it on a loaded machine;
    // the test waits for its end only once.
    opts.drain_delay = Duration::from_secs(3);
    opts.grace_period = Duration::from_secs(60);
    let dp = Dataplane::start(opts).await.expect("starts");
    let (http_addr, admin_addr) = (dp.http_addr(), dp.admin_addr());
    let http = client();
    assert_eq!(
        admin_get(&http, &dp, "/readyz").await.status,
        StatusCode::OK
    );
    let in_flight = {
        let http = http.clone();
        tokio::spawn(async move { send(&http, get(http_addr, "x", "/gate")).await })
    };
    b.gate.arrival().await;

    let shutdown = tokio::spawn(dp.shutdown());
    let admin = client();
    eventually("readiness to fail", async || {
        send(&admin, get(admin_addr, "admin", "/readyz"))
            .await
            .status
            == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    // A client that has not heard yet opens a new connection: still served.
    let late = send(&client(), get(http_addr, "x", "/")).await;
    assert_eq!((late.status, late.backend.as_str()), (StatusCode::OK, "b"));

    // After the delay the listeners close...
    eventually("the listeners to close", async || {
        tokio::net::TcpStream::connect(http_addr).await.is_err()
    })
    .await;
    // ...and the request in flight still gets its answer, then it stops.
    support::in_flight_answered_then_stopped(&b, in_flight, shutdown).await;
}
