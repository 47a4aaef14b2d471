//! Cluster mode against a scripted controller: snapshots and deltas,
//! resuming with `Last-Event-ID`, refusals and resync, reports, and serving
//! on while the controller is away.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use http::StatusCode;
use sluice_dataplane::{Dataplane, Options, Source};
use sluice_protocol::{Delta, Endpoint, PoolRoute, RouteEvent, Snapshot};
use support::*;

fn pool(addr: SocketAddr) -> PoolRoute {
    PoolRoute {
        name: "ns/p".into(),
        hosts: vec![],
        path_prefix: Default::default(),
        algorithm: Default::default(),
        endpoints: vec![Endpoint::new(addr)],
        ..Default::default()
    }
}

fn snapshot(version: u64, pools: Vec<PoolRoute>) -> RouteEvent {
    RouteEvent::Snapshot(Snapshot {
        version,
        pools,
        ..Default::default()
    })
}

fn delta(version: u64, base: u64, upserts: Vec<PoolRoute>) -> RouteEvent {
    RouteEvent::Delta(Delta {
        version,
        base,
        upserts,
        removes: vec![],
        ..Default::default()
    })
}

fn cluster(url: String, token_file: Option<std::path::PathBuf>) -> Options {
    let mut opts = options(Source::Controller {
        url,
        token_file,
        ca_file: None,
    });
    opts.grace_period = Duration::from_secs(1);
    opts
}

#[tokio::test]
async fn the_dataplane_follows_snapshots_and_deltas_and_resumes_where_it_was() {
    let (a, b, c) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    );
    let mut ctl = FakeController::start().await;
    let token = temp_dir("token").join("token");
    std::fs::write(&token, "first-token\n").expect("write");
    let dp = Dataplane::start(cluster(ctl.url(), Some(token.clone())))
        .await
        .expect("starts");
    let http = client();

    let stream = ctl.next_stream().await;
    assert_eq!(stream.last_event_id, None, "no table yet: no Last-Event-ID");
    assert_eq!(stream.authorization.as_deref(), Some("Bearer first-token"));
    assert_eq!(stream.query, "dataplane=dp-test");
    stream.send(snapshot(1, vec![pool(a.addr)])).await;
    eventually("version 1", async || dp.route_version() == 1).await;
    assert_eq!(proxy_get(&http, &dp, "x", "/").await.backend, "a");

    stream.send_raw(": keepalive\n\n").await;
    stream.send(delta(2, 1, vec![pool(b.addr)])).await;
    eventually("version 2", async || dp.route_version() == 2).await;
    assert_eq!(proxy_get(&http, &dp, "x", "/").await.backend, "b");
    let routes: serde_json::Value =
        serde_json::from_slice(&admin_get(&http, &dp, "/debug/routes").await.body).expect("json");
    assert_eq!(routes["version"], 2);
    assert_eq!(routes["pools"][0]["name"], "ns/p");
    assert_eq!(
        routes["pools"][0]["endpoints"][0]["address"],
        b.addr.to_string()
    );

    eventually(
        "a report acking version 2 with the pool's traffic",
        async || {
            ctl.reports().iter().any(|r| {
                r.dataplane == "dp-test"
                    && r.applied_version == 2
                    && r.pools.get("ns/p").is_some_and(|p| p.requests > 0)
            })
        },
    )
    .await;

    // The stream drops; the dataplane resumes from version 2 with the
    // rotated token.
    std::fs::write(&token, "second-token\n").expect("write");
    drop(stream);
    let stream = ctl.next_stream().await;
    assert_eq!(stream.last_event_id.as_deref(), Some("2"));
    assert_eq!(stream.authorization.as_deref(), Some("Bearer second-token"));
    stream.send(delta(3, 2, vec![pool(c.addr)])).await;
    eventually("version 3", async || dp.route_version() == 3).await;
    assert_eq!(proxy_get(&http, &dp, "x", "/").await.backend, "c");

    // The controller goes away: the dataplane keeps serving version 3.
    let addr = ctl.addr;
    drop(stream);
    drop(ctl);
    for _ in 0..5 {
        let got = proxy_get(&http, &dp, "x", "/").await;
        assert_eq!((got.status, got.backend.as_str()), (StatusCode::OK, "c"));
    }
    assert_eq!(
        admin_get(&http, &dp, "/readyz").await.status,
        StatusCode::OK
    );

    // It comes back on the same address; the dataplane reconnects and resumes.
    let mut ctl = FakeController::start_on(addr).await;
    let stream = ctl.next_stream().await;
    assert_eq!(stream.last_event_id.as_deref(), Some("3"));
    stream.send(delta(4, 3, vec![pool(a.addr)])).await;
    eventually("version 4", async || dp.route_version() == 4).await;
    assert_eq!(proxy_get(&http, &dp, "x", "/").await.backend, "a");
    dp.shutdown().await;
}

#[tokio::test]
async fn a_refused_delta_is_reported_and_answered_with_a_fresh_snapshot() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let mut ctl = FakeController::start().await;
    let dp = Dataplane::start(cluster(ctl.url(), None))
        .await
        .expect("starts");
    let http = client();

    let stream = ctl.next_stream().await;
    assert_eq!(stream.authorization, None);
    stream.send(snapshot(10, vec![pool(a.addr)])).await;
    // Computed from a version the dataplane never had.
    stream.send(delta(11, 99, vec![pool(b.addr)])).await;

    // It reconnects without Last-Event-ID, which asks for a snapshot, and
    // serves version 10 meanwhile.
    let resync = ctl.next_stream().await;
    assert_eq!(resync.last_event_id, None);
    assert_eq!(dp.route_version(), 10);
    assert_eq!(proxy_get(&http, &dp, "x", "/").await.backend, "a");
    let routes: serde_json::Value =
        serde_json::from_slice(&admin_get(&http, &dp, "/debug/routes").await.body).expect("json");
    assert_eq!(routes["rejected"]["version"], 11, "{routes}");

    resync.send(snapshot(20, vec![pool(b.addr)])).await;
    eventually("version 20", async || dp.route_version() == 20).await;
    assert_eq!(proxy_get(&http, &dp, "x", "/").await.backend, "b");
    eventually(
        "a report with the refusal and the new version",
        async || {
            ctl.reports().iter().any(|r| {
                r.applied_version == 20
                    && r.rejected
                        .as_ref()
                        .is_some_and(|j| j.version == 11 && j.error.contains("99"))
            })
        },
    )
    .await;

    // An event that does not even parse is refused the same way.
    resync
        .send_raw("id: 21\nevent: delta\ndata: {not json\n\n")
        .await;
    let again = ctl.next_stream().await;
    assert_eq!(again.last_event_id, None);
    assert_eq!(dp.route_version(), 20);
    dp.shutdown().await;
}

#[tokio::test]
async fn readiness_waits_for_the_first_table() {
    let a = Backend::start("a").await;
    let mut ctl = FakeController::start().await;
    let dp = Dataplane::start(cluster(ctl.url(), None))
        .await
        .expect("starts");
    let http = client();
    let stream = ctl.next_stream().await;
    let got = admin_get(&http, &dp, "/readyz").await;
    assert_eq!(got.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(got.text().contains("no route table"), "{}", got.text());
    assert_eq!(
        admin_get(&http, &dp, "/healthz").await.status,
        StatusCode::OK
    );
    let got = proxy_get(&http, &dp, "x", "/").await;
    assert_eq!(
        (got.status, got.error.as_str()),
        (StatusCode::NOT_FOUND, "no-route")
    );

    stream.send(snapshot(1, vec![pool(a.addr)])).await;
    eventually("ready", async || {
        admin_get(&http, &dp, "/readyz").await.status == StatusCode::OK
    })
    .await;
    dp.shutdown().await;
}

#[tokio::test]
async fn a_restart_serves_the_persisted_table_while_the_controller_is_away() {
    let a = Backend::start("a").await;
    let dir = temp_dir("state");
    let mut ctl = FakeController::start().await;
    let mut opts = cluster(ctl.url(), None);
    opts.state_dir = Some(dir.clone());
    let dp = Dataplane::start(opts).await.expect("starts");
    let stream = ctl.next_stream().await;
    stream.send(snapshot(7, vec![pool(a.addr)])).await;
    eventually("version 7", async || dp.route_version() == 7).await;
    dp.shutdown().await;
    drop(stream);
    drop(ctl);

    let mut opts = cluster(format!("http://{}", closed_port().await), None);
    opts.state_dir = Some(dir);
    let dp = Dataplane::start(opts).await.expect("starts");
    assert_eq!(dp.route_version(), 7, "serving from the first instant");
    let http = client();
    assert_eq!(proxy_get(&http, &dp, "x", "/").await.backend, "a");
    assert_eq!(
        admin_get(&http, &dp, "/readyz").await.status,
        StatusCode::OK
    );
    dp.shutdown().await;
}
