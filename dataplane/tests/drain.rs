//! Shutdown as Kubernetes drives it: SIGTERM, readiness fails at once, new
//! connections are still served for the drain delay (while endpoints and
//! kube-proxy catch up), then the listeners close and in-flight requests
//! finish.

mod support;

use std::time::Duration;

use http::StatusCode;
use sluice_dataplane::Dataplane;
use support::*;

#[tokio::test]
async fn readiness_fails_at_once_and_new_connections_are_served_during_the_drain_delay() {
    let b = Backend::start("b").await;
    let mut opts = options(one_pool(b.addr));
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

#[tokio::test]
async fn idle_keep_alive_connections_close_at_once_and_do_not_hold_the_shutdown() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let b = Backend::start("b").await;
    let mut opts = options(one_pool(b.addr));
    // Far longer than the test waits: only closing the idle connections
    // lets the shutdown end in time.
    opts.grace_period = Duration::from_secs(60);
    let dp = Dataplane::start(opts).await.expect("starts");
    // Served, then left open by the client (keep-alive).
    let mut idle = Vec::new();
    for _ in 0..3 {
        let mut stream = tokio::net::TcpStream::connect(dp.http_addr())
            .await
            .expect("connect");
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        let mut answer = Vec::new();
        let mut chunk = [0u8; 1024];
        while !answer.ends_with(b"\r\n\r\nb") {
            let n = tokio::time::timeout(WAIT, stream.read(&mut chunk))
                .await
                .expect("an answer in time")
                .expect("read");
            assert!(n > 0, "closed before the answer");
            answer.extend_from_slice(&chunk[..n]);
        }
        assert!(answer.starts_with(b"HTTP/1.1 200"));
        idle.push(stream);
    }
    tokio::time::timeout(WAIT, dp.shutdown())
        .await
        .expect("the shutdown does not wait for idle connections");
    for mut stream in idle {
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(WAIT, stream.read_to_end(&mut rest)).await;
        assert!(closed.is_ok(), "an idle connection was closed");
        assert!(rest.is_empty(), "nothing more was sent on it");
    }
}
