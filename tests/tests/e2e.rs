//! End to end: API-server fake + controller + two dataplanes + real
//! backends, all on loopback. Assertions are what a user checks: which
//! backend answered, status codes, what the API server holds.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sluice_controller::{Auth, Controller, Options, TlsFiles};
use sluice_dataplane::{Dataplane, Source};
use sluice_tests::apiserver::{Collection, FakeApiServer};
use sluice_tests::backend::Backend;
use sluice_tests::client::HttpClient;
use sluice_tests::closed_loop::condition;
use sluice_tests::dataplane::loopback;
use sluice_tests::load::Load;
use sluice_tests::status_log::StatusLog;
use sluice_tests::wait::until;

const NS: &str = "shop";
const HOST: &str = "web.example.com";
const TOKEN: &str = "e2e-token-1";

fn service(name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"ports": [{"name": "http", "port": 80}]},
    })
}

/// One slice per backend: all backends listen on 127.0.0.1 with their own
/// port, which Kubernetes expresses as slices with different port numbers.
fn slice(service: &str, backend: &Backend) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {
            "name": format!("{service}-{}", backend.name), "namespace": NS,
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": backend.addr.port(), "protocol": "TCP"}],
        "endpoints": [{"addresses": [backend.addr.ip().to_string()], "conditions": {"ready": true}}],
    })
}

fn pool(name: &str, host: &str, service: &str) -> Value {
    json!({
        "apiVersion": "sluice.io/v1alpha1", "kind": "BackendPool",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"hosts": [host], "pathPrefix": "/", "backends": [{"service": service, "port": "http"}]},
    })
}

fn slices() -> Collection {
    Collection::of("discovery.k8s.io/v1", "EndpointSlice")
}

fn pools() -> Collection {
    Collection::of("sluice.io/v1alpha1", "BackendPool")
}

struct Env {
    api: FakeApiServer,
    controller: Option<Controller>,
    stream_addr: SocketAddr,
    dataplanes: Vec<Dataplane>,
    /// Kept alive for the test's duration.
    _backends: BTreeMap<String, Backend>,
    http: HttpClient,
    token_file: PathBuf,
}

impl Env {
    /// Fake API server with a Service, slices for `names` and a pool, the
    /// controller, and two dataplanes following it.
    async fn start(names: &[&str]) -> anyhow::Result<Self> {
        Self::start_with(names, false).await
    }

    /// The same, with the stream served over TLS (the test CA in
    /// `tests/testdata`) when `tls` is set.
    async fn start_with(names: &[&str], tls: bool) -> anyhow::Result<Self> {
        let api = FakeApiServer::start().await?;
        let mut backends = BTreeMap::new();
        for name in names {
            backends.insert(name.to_string(), Backend::start(name).await?);
        }
        api.apply(service("web"))?;
        for b in backends.values() {
            api.apply(slice("web", b))?;
        }
        api.apply(pool("web", HOST, "web"))?;

        let dir =
            std::env::temp_dir().join(format!("sluice-e2e-{}-{}", std::process::id(), unique()));
        std::fs::create_dir_all(&dir)?;
        let token_file = dir.join("token");
        std::fs::write(&token_file, format!("{TOKEN}\n"))?;

        let testdata = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata");
        let tls_files = tls.then(|| TlsFiles {
            cert: testdata.join("stream.crt"),
            key: testdata.join("stream.key"),
        });
        let controller =
            start_controller(&api, "127.0.0.1:0".parse()?, &token_file, tls_files).await?;
        let stream_addr = controller.stream_addr();
        let (scheme, ca_file) = match tls {
            true => ("https", Some(testdata.join("ca.crt"))),
            false => ("http", None),
        };
        let mut dataplanes = Vec::new();
        for i in 0..2 {
            dataplanes.push(
                Dataplane::start(loopback(
                    Source::Controller {
                        url: format!("{scheme}://{stream_addr}"),
                        token_file: Some(token_file.clone()),
                        ca_file: ca_file.clone(),
                    },
                    &format!("dp-{i}"),
                ))
                .await?,
            );
        }
        Ok(Self {
            api,
            controller: Some(controller),
            stream_addr,
            dataplanes,
            _backends: backends,
            http: HttpClient::new(),
            token_file,
        })
    }

    /// Which backends answer `n` requests through dataplane `dp`.
    async fn answers(&self, dp: usize, n: usize) -> anyhow::Result<BTreeMap<String, usize>> {
        self.http
            .tally(self.dataplanes[dp].http_addr(), HOST, n)
            .await
    }

    /// Waits until both dataplanes send traffic to exactly `expected`.
    async fn wait_for_backends(&self, expected: &[&str]) -> anyhow::Result<Duration> {
        let start = Instant::now();
        let want: BTreeSet<String> = expected.iter().map(|s| s.to_string()).collect();
        until(
            Duration::from_secs(10),
            &format!("traffic to {want:?}"),
            || async {
                for dp in 0..self.dataplanes.len() {
                    let got: BTreeSet<String> = self
                        .answers(dp, expected.len() * 2)
                        .await
                        .ok()?
                        .into_keys()
                        .collect();
                    if got != want {
                        return None;
                    }
                }
                Some(())
            },
        )
        .await?;
        Ok(start.elapsed())
    }

    fn pool_status(&self) -> Value {
        self.api
            .get(&pools(), NS, "web")
            .map(|p| p["status"].clone())
            .unwrap_or(Value::Null)
    }
}

async fn start_controller(
    api: &FakeApiServer,
    listen: SocketAddr,
    token_file: &std::path::Path,
    tls: Option<TlsFiles>,
) -> anyhow::Result<Controller> {
    Ok(Controller::start(
        api.client()?,
        Options {
            listen,
            admin: "127.0.0.1:0".parse()?,
            auth: Auth::Static(token_file.to_path_buf()),
            status_interval: Duration::from_millis(200),
            tls,
            ..Options::default()
        },
    )
    .await?)
}

fn unique() -> u64 {
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_dataplanes_reach_every_backend_and_follow_slice_changes() -> anyhow::Result<()> {
    let env = Env::start(&["backend-1", "backend-2", "backend-3"]).await?;
    env.wait_for_backends(&["backend-1", "backend-2", "backend-3"])
        .await?;

    // Round robin: 30 requests through each dataplane, 10 per backend.
    for dp in 0..2 {
        let seen = env.answers(dp, 30).await?;
        assert_eq!(
            seen.values().copied().collect::<Vec<_>>(),
            vec![10, 10, 10],
            "dataplane {dp}: {seen:?}"
        );
    }

    // The API server holds what the controller observed and did.
    let status = until(
        Duration::from_secs(10),
        "pool status with both dataplanes synced",
        || async {
            let s = env.pool_status();
            (s["dataplanes"]["synced"] == 2
                && condition(&s, "Programmed") == Some(("True".into(), "Programmed".into())))
            .then_some(s)
        },
    )
    .await?;
    assert_eq!(
        condition(&status, "Accepted"),
        Some(("True".into(), "Accepted".into()))
    );
    assert_eq!(
        condition(&status, "ResolvedRefs"),
        Some(("True".into(), "ResolvedRefs".into()))
    );
    assert_eq!(status["endpoints"], json!({"ready": 3, "total": 3}));
    assert_eq!(status["observedGeneration"], 1);

    // Churn: backend-1's slice goes, backend-4's arrives; traffic follows.
    let b4 = Backend::start("backend-4").await?;
    env.api.apply(slice("web", &b4))?;
    env.api.delete(&slices(), NS, "web-backend-1");
    let took = env
        .wait_for_backends(&["backend-2", "backend-3", "backend-4"])
        .await?;
    println!("traffic followed the slice change in {took:?}");

    // A host no pool claims.
    let a = env
        .http
        .get(env.dataplanes[0].http_addr(), "other.example.org", "/")
        .await?;
    assert_eq!(a.status, 404);
    assert!(a.body.contains("other.example.org"), "{}", a.body);
    drop(b4);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_restart_costs_no_request_and_dataplanes_resync() -> anyhow::Result<()> {
    let mut env = Env::start(&["backend-1", "backend-2"]).await?;
    env.wait_for_backends(&["backend-1", "backend-2"]).await?;

    // Steady load through both dataplanes for the whole restart.
    let addrs: Vec<_> = env.dataplanes.iter().map(|d| d.http_addr()).collect();
    let load = Load::start(&env.http, &addrs, HOST);

    tokio::time::sleep(Duration::from_millis(300)).await;
    if let Some(c) = env.controller.take() {
        c.shutdown().await;
    }
    // The controller is away: the dataplanes keep serving their last table.
    let served_before = load.served();
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        load.served() > served_before,
        "no traffic served while the controller was down"
    );

    // A new controller on the same address; the dataplanes reconnect and
    // take a change made after the restart.
    env.controller =
        Some(start_controller(&env.api, env.stream_addr, &env.token_file, None).await?);
    let b3 = Backend::start("backend-3").await?;
    env.api.apply(slice("web", &b3))?;
    env.wait_for_backends(&["backend-1", "backend-2", "backend-3"])
        .await?;

    let (ok, failed) = load.finish().await?;
    println!("{ok} requests served across the restart, {failed} failed");
    assert_eq!(failed, 0);
    assert!(ok > 100, "too little load to mean anything: {ok}");
    drop(b3);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_service_is_a_false_condition_with_an_event() -> anyhow::Result<()> {
    let env = Env::start(&["backend-1"]).await?;
    env.api
        .apply(pool("broken", "broken.example.com", "does-not-exist"))?;
    let status = until(
        Duration::from_secs(10),
        "ResolvedRefs=False on the broken pool",
        || async {
            let s = env.api.get(&pools(), NS, "broken")?["status"].clone();
            (condition(&s, "ResolvedRefs")?.0 == "False").then_some(s)
        },
    )
    .await?;
    assert_eq!(
        condition(&status, "ResolvedRefs"),
        Some(("False".into(), "BackendNotFound".into()))
    );
    let msg = status["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "ResolvedRefs"))
        .map(|c| c["message"].clone());
    assert!(msg.is_some_and(|m| {
        m.as_str()
            .is_some_and(|m| m.contains("Service shop/does-not-exist not found"))
    }));

    let events = Collection::of("events.k8s.io/v1", "Event");
    let event = until(
        Duration::from_secs(10),
        "a BackendNotFound Event",
        || async {
            env.api
                .list(&events)
                .into_iter()
                .find(|e| e["reason"] == "BackendNotFound" && e["regarding"]["name"] == "broken")
        },
    )
    .await?;
    assert_eq!(event["type"], "Warning");
    // The good pool is untouched; the broken one answers 503 with a reason.
    assert_eq!(
        env.answers(0, 2).await?.keys().collect::<Vec<_>>(),
        vec!["backend-1"]
    );
    let a = env
        .http
        .get(env.dataplanes[0].http_addr(), "broken.example.com", "/")
        .await?;
    assert_eq!(a.status, 503);
    assert!(a.body.contains("has no ready endpoints"), "{}", a.body);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_claiming_a_served_host_is_conflicted_and_takes_no_traffic() -> anyhow::Result<()> {
    let env = Env::start(&["backend-1"]).await?;
    // A newer pool for the same host and prefix, pointing somewhere else.
    env.api.apply(pool("zz-copy", HOST, "does-not-exist"))?;
    let status = until(
        Duration::from_secs(10),
        "Accepted=False on the newer pool",
        || async {
            let s = env.api.get(&pools(), NS, "zz-copy")?["status"].clone();
            (condition(&s, "Accepted")?.0 == "False").then_some(s)
        },
    )
    .await?;
    assert_eq!(
        condition(&status, "Accepted"),
        Some(("False".into(), "Conflicted".into()))
    );
    let events = Collection::of("events.k8s.io/v1", "Event");
    until(Duration::from_secs(10), "a Conflicted Event", || async {
        env.api
            .list(&events)
            .into_iter()
            .find(|e| e["reason"] == "Conflicted" && e["regarding"]["name"] == "zz-copy")
    })
    .await?;
    // The older pool keeps serving; the winner's status stays Accepted.
    assert_eq!(
        env.answers(0, 4).await?.keys().collect::<Vec<_>>(),
        vec!["backend-1"]
    );
    let winner = env
        .api
        .get(&pools(), NS, "web")
        .map(|p| p["status"].clone());
    assert_eq!(
        winner
            .as_ref()
            .and_then(|s| condition(s, "Accepted"))
            .map(|c| c.0),
        Some("True".into())
    );
    // The winner goes: the other pool takes over the host (and, with no
    // such Service, answers 503 rather than the old backend).
    env.api.delete(&pools(), NS, "web");
    until(
        Duration::from_secs(10),
        "the newer pool to take over",
        || async {
            let a = env
                .http
                .get(env.dataplanes[0].http_addr(), HOST, "/")
                .await
                .ok()?;
            (a.status == 503).then_some(())
        },
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokenreview_lets_in_only_the_dataplane_service_account() -> anyhow::Result<()> {
    let api = FakeApiServer::start().await?;
    let dp_user = "system:serviceaccount:sluice-system:sluice-dataplane";
    api.add_token("good", dp_user, &["sluice"]);
    api.add_token(
        "other-sa",
        "system:serviceaccount:default:default",
        &["sluice"],
    );
    api.add_token(
        "other-audience",
        dp_user,
        &["https://kubernetes.default.svc"],
    );
    let controller = Controller::start(
        api.client()?,
        Options {
            listen: "127.0.0.1:0".parse()?,
            admin: "127.0.0.1:0".parse()?,
            auth: "tokenreview:sluice-system/sluice-dataplane"
                .parse()
                .map_err(anyhow::Error::msg)?,
            ..Options::default()
        },
    )
    .await?;
    let http = HttpClient::new();
    let post = |token: Option<&str>| {
        let mut req =
            http::Request::post(format!("http://{}/v1/reports", controller.stream_addr()));
        if let Some(t) = token {
            req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        req.body(http_body_util::Empty::<bytes::Bytes>::new())
    };
    // Let in, the empty report is then refused as a bad request.
    assert_eq!(http.send(post(Some("good"))?).await?.status, 400);
    assert_eq!(http.send(post(Some("good"))?).await?.status, 400);
    let forbidden = http.send(post(Some("other-sa"))?).await?;
    assert_eq!(forbidden.status, 403);
    assert!(
        forbidden
            .body
            .contains("system:serviceaccount:default:default"),
        "{}",
        forbidden.body
    );
    assert_eq!(http.send(post(Some("other-audience"))?).await?.status, 401);
    assert_eq!(http.send(post(Some("forged"))?).await?.status, 401);
    assert_eq!(http.send(post(None)?).await?.status, 401);
    // One review per token: the second "good" request was answered from the cache.
    let reviews = api
        .request_log()
        .iter()
        .filter(|r| r.method == "POST" && r.path.contains("tokenreviews"))
        .count();
    assert_eq!(reviews, 4);
    controller.shutdown().await;
    Ok(())
}

/// Reads from `conn` until `done` holds for what came so far, or `limit`
/// passes; returns what came and whether the peer closed.
async fn read_until(
    conn: &mut tokio::net::TcpStream,
    seen: &mut String,
    limit: Duration,
    done: impl Fn(&str, bool) -> bool,
) -> anyhow::Result<bool> {
    use tokio::io::AsyncReadExt;
    let deadline = tokio::time::Instant::now() + limit;
    let mut buf = [0u8; 4096];
    loop {
        let n = match tokio::time::timeout_at(deadline, conn.read(&mut buf)).await {
            Ok(read) => read?,
            Err(_) => anyhow::bail!("timed out after {limit:?}; the stream so far: {seen}"),
        };
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        if done(seen, n == 0) {
            return Ok(n == 0);
        }
        anyhow::ensure!(n > 0, "the stream ended early: {seen}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_loses_new_requests_and_its_open_stream_within_the_recheck_interval()
-> anyhow::Result<()> {
    use tokio::io::AsyncWriteExt;
    const RECHECK: Duration = Duration::from_secs(1);
    let api = FakeApiServer::start().await?;
    let dp_user = "system:serviceaccount:sluice-system:sluice-dataplane";
    // Two tokens of the same ServiceAccount (two pods): one posts reports,
    // the other holds a stream, so neither check learns from the other.
    api.add_token("good", dp_user, &["sluice"]);
    api.add_token("streaming", dp_user, &["sluice"]);
    let controller = Controller::start(
        api.client()?,
        Options {
            listen: "127.0.0.1:0".parse()?,
            admin: "127.0.0.1:0".parse()?,
            auth: "tokenreview:sluice-system/sluice-dataplane"
                .parse()
                .map_err(anyhow::Error::msg)?,
            token_recheck: RECHECK,
            ..Options::default()
        },
    )
    .await?;
    let http = HttpClient::new();
    let post = || {
        http::Request::post(format!("http://{}/v1/reports", controller.stream_addr()))
            .header(http::header::AUTHORIZATION, "Bearer good")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
    };
    // Accepted: the empty report is then refused as a bad request.
    assert_eq!(http.send(post()?).await?.status, 400);

    // A stream opened with the token gets its first table.
    let mut conn = tokio::net::TcpStream::connect(controller.stream_addr()).await?;
    let req = "GET /v1/routes?dataplane=dp-revoked HTTP/1.1\r\nHost: controller\r\nAuthorization: Bearer streaming\r\nAccept: text/event-stream\r\nConnection: close\r\n\r\n";
    conn.write_all(req.as_bytes()).await?;
    let mut seen = String::new();
    read_until(&mut conn, &mut seen, Duration::from_secs(10), |s, _| {
        s.contains("event: ")
    })
    .await?;
    assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");
    // It stays open across several recheck intervals while the token holds.
    let held = read_until(&mut conn, &mut seen, 3 * RECHECK, |_, closed| closed).await;
    assert!(held.is_err(), "the stream stayed open: {seen}");

    // The ServiceAccount goes: the API server no longer vouches for its tokens.
    api.revoke_token("good");
    api.revoke_token("streaming");
    // New requests are refused once the cached acceptance runs out...
    until(
        Duration::from_secs(10),
        "a 401 for the revoked token",
        || async { (http.send(post().ok()?).await.ok()?.status == 401).then_some(()) },
    )
    .await?;
    // ...and the open stream ends (generous bound: the recheck interval
    // plus a busy machine; nothing here measures how fast).
    let closed = read_until(
        &mut conn,
        &mut seen,
        Duration::from_secs(10),
        |_, closed| closed,
    )
    .await?;
    assert!(closed, "{seen}");
    controller.shutdown().await;
    api.shutdown().await;
    Ok(())
}

/// `POST /v1/reports` by hand, as a dataplane named `name` that applied
/// `version`; returns the status line.
async fn post_report(addr: SocketAddr, name: &str, version: u64) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body =
        json!({"dataplane": name, "appliedVersion": version, "windowMs": 1000, "seq": version})
            .to_string();
    let req = format!(
        "POST /v1/reports HTTP/1.1\r\nHost: controller\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut conn = tokio::net::TcpStream::connect(addr).await?;
    conn.write_all(req.as_bytes()).await?;
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), conn.read_to_string(&mut out)).await??;
    Ok(out.lines().next().unwrap_or_default().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn programmed_stays_true_through_endpoint_churn_and_turns_false_when_a_dataplane_stops_acking()
-> anyhow::Result<()> {
    use tokio::io::AsyncWriteExt;
    let env = Env::start(&["backend-1", "backend-2"]).await?;
    env.wait_for_backends(&["backend-1", "backend-2"]).await?;
    let programmed = |s: &Value| {
        s["dataplanes"]["synced"] == 2
            && condition(s, "Programmed") == Some(("True".into(), "Programmed".into()))
    };
    until(Duration::from_secs(10), "Programmed=True", || async {
        programmed(&env.pool_status()).then_some(())
    })
    .await?;

    // Every status the API server stores from now on.
    let log = StatusLog::start(env.api.client()?, NS, "web");
    // Churn: backend-2's slice goes and comes back every 100 ms for 3 s.
    let extra = slice("web", &env._backends["backend-2"]);
    for i in 0..30 {
        if i % 2 == 0 {
            env.api.delete(&slices(), NS, "web-backend-2");
        } else {
            env.api.apply(extra.clone())?;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    env.api.apply(extra)?;
    env.wait_for_backends(&["backend-1", "backend-2"]).await?;
    let last = env
        .api
        .get(&pools(), NS, "web")
        .map(|p| p["status"]["routeVersion"].clone());
    until(
        Duration::from_secs(10),
        "the churn's last status",
        || async {
            let seen = log.seen();
            let newest = seen.last()?;
            (Some(&newest.status["routeVersion"]) == last.as_ref()).then_some(())
        },
    )
    .await?;
    let seen = log.seen();
    let versions: BTreeSet<String> = seen
        .iter()
        .map(|s| s.status["routeVersion"].to_string())
        .collect();
    // The churn was written: several route versions went through status.
    assert!(versions.len() >= 5, "{versions:?}");
    for s in &seen {
        assert!(
            programmed(&s.status),
            "stored at resourceVersion {}: {}",
            s.resource_version,
            s.status
        );
    }

    // A third dataplane acks once, then stops acking while it keeps its stream.
    let mut conn = tokio::net::TcpStream::connect(env.stream_addr).await?;
    let req = format!(
        "GET /v1/routes?dataplane=dp-silent HTTP/1.1\r\nHost: controller\r\nAuthorization: Bearer {TOKEN}\r\nAccept: text/event-stream\r\nConnection: close\r\n\r\n"
    );
    conn.write_all(req.as_bytes()).await?;
    let mut stream = String::new();
    read_until(&mut conn, &mut stream, Duration::from_secs(10), |s, _| {
        s.contains("event: ")
    })
    .await?;
    let version: u64 = stream
        .lines()
        .find_map(|l| l.strip_prefix("id: "))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no event id in {stream}"))?;
    assert_eq!(
        post_report(env.stream_addr, "dp-silent", version).await?,
        "HTTP/1.1 204 No Content"
    );
    until(
        Duration::from_secs(10),
        "Programmed=True with three dataplanes",
        || async {
            let s = env.pool_status();
            (s["dataplanes"]["synced"] == 3
                && condition(&s, "Programmed") == Some(("True".into(), "Programmed".into())))
            .then_some(())
        },
    )
    .await?;
    // The route changes; dp-silent never applies it. Past the ack deadline
    // (5 s) the pool is no longer Programmed.
    env.api.delete(&slices(), NS, "web-backend-2");
    let status = until(
        Duration::from_secs(30),
        "Programmed=False (Pending)",
        || async {
            let s = env.pool_status();
            (condition(&s, "Programmed") == Some(("False".into(), "Pending".into()))).then_some(s)
        },
    )
    .await?;
    assert_eq!(status["dataplanes"]["synced"], 2, "{status}");
    assert_eq!(status["dataplanes"]["total"], 3, "{status}");
    drop(conn);
    Ok(())
}

/// Log output kept in memory, for what a test says was logged.
#[derive(Clone, Default)]
struct LogBuffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl LogBuffer {
    fn text(&self) -> String {
        let bytes = self.0.lock().unwrap_or_else(|p| p.into_inner());
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A current-thread runtime: every task the controller spawns runs on
/// this thread, under the log subscriber set here for this test alone.
#[tokio::test]
async fn a_tls_failure_towards_the_api_server_is_logged_with_its_cause() -> anyhow::Result<()> {
    let logs = LogBuffer::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_env_filter("info,sluice_controller=debug")
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    // An "API server" whose certificate the controller's client does not
    // trust: it is signed by the test CA, which the client is not given.
    let testdata = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata");
    let (config, _) = sluice_controller::tls::server_config(&TlsFiles {
        cert: testdata.join("stream.crt"),
        key: testdata.join("stream.key"),
    })?;
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _ = acceptor.accept(tcp).await;
            });
        }
    });
    let client = kube::Client::try_from(kube::Config::new(format!("https://{addr}").parse()?))?;
    let controller = Controller::start(
        client,
        Options {
            listen: "127.0.0.1:0".parse()?,
            admin: "127.0.0.1:0".parse()?,
            ..Options::default()
        },
    )
    .await?;
    let line = until(
        Duration::from_secs(20),
        "a warning about the failing watches",
        || async {
            logs.text()
                .lines()
                .find(|l| l.contains("WARN") && l.contains("watch failed"))
                .map(str::to_string)
        },
    )
    .await?;
    assert!(
        line.contains("invalid peer certificate") && line.contains("UnknownIssuer"),
        "{line}"
    );
    // The watch retries with backoff; the retries that follow soon after
    // are logged at debug only, not as more warnings.
    let pool_watch = |l: &&str| l.contains("watch failed") && l.contains("kind=\"BackendPool\"");
    until(
        Duration::from_secs(20),
        "two retries of the pool watch",
        || async {
            let text = logs.text();
            let retries = text
                .lines()
                .filter(pool_watch)
                .filter(|l| l.contains("DEBUG"))
                .count();
            (retries >= 2).then_some(())
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}: {}", logs.text()))?;
    let text = logs.text();
    let warnings: Vec<&str> = text
        .lines()
        .filter(pool_watch)
        .filter(|l| l.contains("WARN"))
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    controller.shutdown().await;
    server.abort();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_note_again_is_counted_and_a_different_note_is_an_event_of_its_own()
-> anyhow::Result<()> {
    use sluice_controller::recorder::{Event, EventType, Recorder};
    let api = FakeApiServer::start().await?;
    let recorder = Recorder::new(api.client()?, "sluice-controller", "ctl-0");
    let regarding = k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some("sluice.io/v1alpha1".into()),
        kind: Some("ScalingTrigger".into()),
        namespace: Some(NS.into()),
        name: Some("web".into()),
        uid: Some("uid-1".into()),
        ..Default::default()
    };
    let event = |note: &str| Event {
        type_: EventType::Warning,
        reason: "FailedRescale".into(),
        action: "Scale".into(),
        note: note.into(),
    };
    let forbidden = event("New size: 3; reason: from 1 to 3 because x; error: forbidden");
    for _ in 0..3 {
        recorder.publish(&forbidden, &regarding).await?;
    }
    recorder
        .publish(&event(&"a very long error ".repeat(200)), &regarding)
        .await?;
    let mut events = api.list(&Collection::of("events.k8s.io/v1", "Event"));
    events.sort_by_key(|e| e["eventTime"].as_str().map(str::to_string));
    let seen: Vec<(String, Value)> = events
        .iter()
        .map(|e| {
            (
                e["note"].as_str().unwrap_or_default().to_string(),
                e["series"]["count"].clone(),
            )
        })
        .collect();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0], (forbidden.note.clone(), json!(3)));
    // Cut to what the API server accepts (it refuses notes over 1024 bytes).
    assert!(
        seen[1].0.len() <= 1024 && seen[1].0.ends_with('…'),
        "{}",
        seen[1].0.len()
    );
    assert_eq!(seen[1].1, Value::Null);
    api.shutdown().await;
    Ok(())
}

const TEST_CRT: &str = include_str!("../../controller/src/testdata/tls.crt");
const TEST_KEY: &str = include_str!("../../controller/src/testdata/tls.key");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_secret_reaches_the_dataplanes_and_a_missing_one_is_a_reason() -> anyhow::Result<()> {
    let env = Env::start(&["backend-1"]).await?;
    let mut tls_pool = pool("shop", "shop.example.com", "web");
    tls_pool["spec"]["tls"] = json!({"secretName": "shop-tls"});
    env.api.apply(tls_pool)?;
    until(
        Duration::from_secs(10),
        "ResolvedRefs=False/SecretNotFound",
        || async {
            let s = env.api.get(&pools(), NS, "shop")?["status"].clone();
            (condition(&s, "ResolvedRefs")? == ("False".into(), "SecretNotFound".into()))
                .then_some(())
        },
    )
    .await?;

    let secret = k8s_openapi::api::core::v1::Secret {
        metadata: kube::api::ObjectMeta {
            name: Some("shop-tls".into()),
            namespace: Some(NS.into()),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(
            [
                (
                    "tls.crt".to_string(),
                    k8s_openapi::ByteString(TEST_CRT.into()),
                ),
                (
                    "tls.key".to_string(),
                    k8s_openapi::ByteString(TEST_KEY.into()),
                ),
            ]
            .into(),
        ),
        ..Default::default()
    };
    let mut secret = serde_json::to_value(secret)?;
    secret["apiVersion"] = json!("v1");
    secret["kind"] = json!("Secret");
    env.api.apply(secret)?;
    until(Duration::from_secs(10), "ResolvedRefs=True", || async {
        let s = env.api.get(&pools(), NS, "shop")?["status"].clone();
        (condition(&s, "ResolvedRefs")?.0 == "True").then_some(())
    })
    .await?;
    // Every dataplane holds the certificate; its admin port shows it
    // without the key.
    let first_line = TEST_CRT.lines().nth(1).unwrap_or_default().to_string();
    for dp in &env.dataplanes {
        let routes = until(
            Duration::from_secs(10),
            "the certificate on the dataplane",
            || async {
                let a = env
                    .http
                    .get(dp.admin_addr(), "admin", "/debug/routes")
                    .await
                    .ok()?;
                a.body.contains(&first_line).then_some(a.body)
            },
        )
        .await?;
        let key_line = TEST_KEY.lines().nth(1).unwrap_or_default();
        assert!(!routes.contains(key_line), "the key leaked: {routes}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_the_stream_carries_routes_and_plain_http_is_refused() -> anyhow::Result<()> {
    let env = Env::start_with(&["backend-1", "backend-2"], true).await?;
    env.wait_for_backends(&["backend-1", "backend-2"]).await?;
    // A client that speaks plain HTTP to the TLS port gets no route stream.
    let plain = env
        .http
        .get(env.stream_addr, "controller", "/v1/routes")
        .await;
    assert!(plain.is_err() || plain.is_ok_and(|a| a.status != 200));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_algorithm_and_a_missing_port_are_conditions_with_events() -> anyhow::Result<()>
{
    let env = Env::start(&["backend-1"]).await?;
    // The API server's schema would refuse this value; a newer CRD (or this
    // fake, which has no schema) lets it through to the controller.
    let mut odd = pool("odd", "odd.example.com", "web");
    odd["spec"]["algorithm"] = json!("Fastest");
    env.api.apply(odd)?;
    let mut portless = pool("portless", "portless.example.com", "web");
    portless["spec"]["backends"][0]["port"] = json!("grpc");
    env.api.apply(portless)?;

    let events = Collection::of("events.k8s.io/v1", "Event");
    for (name, type_, reason) in [
        ("odd", "Accepted", "InvalidSpec"),
        ("portless", "ResolvedRefs", "PortNotFound"),
    ] {
        until(Duration::from_secs(10), "the condition", || async {
            let s = env.api.get(&pools(), NS, name)?["status"].clone();
            (condition(&s, type_)? == ("False".into(), reason.into())).then_some(())
        })
        .await?;
        until(Duration::from_secs(10), "the Event", || async {
            env.api
                .list(&events)
                .into_iter()
                .find(|e| e["reason"] == reason && e["regarding"]["name"] == name)
        })
        .await?;
    }
    // The other pools' watch was not broken: the good pool still serves and
    // follows changes.
    let b2 = Backend::start("backend-2").await?;
    env.api.apply(slice("web", &b2))?;
    env.wait_for_backends(&["backend-1", "backend-2"]).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_refuses_dataplanes_without_the_token() -> anyhow::Result<()> {
    let env = Env::start(&["backend-1"]).await?;
    let http = HttpClient::new();
    let a = http
        .get(
            env.stream_addr,
            "controller",
            "/v1/routes?dataplane=intruder",
        )
        .await?;
    assert_eq!(a.status, 401);
    assert!(a.body.contains("missing bearer token"), "{}", a.body);
    Ok(())
}
