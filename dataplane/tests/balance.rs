//! Endpoint selection through the proxy, with real loopback backends:
//! weights per algorithm, slow endpoints under the load-aware algorithms,
//! consistent hashing across a table update, cookie session affinity.

mod support;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use sluice_dataplane::{Dataplane, Source};
use support::*;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A backend that answers its name after `delay`.
struct Slow {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Slow {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn slow_backend(name: &'static str, delay: Duration) -> Slow {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = service_fn(move |_req: Request<Incoming>| async move {
                    tokio::time::sleep(delay).await;
                    let resp = Response::builder()
                        .header("x-backend", name)
                        .body(Full::new(Bytes::from(name)))
                        .expect("response");
                    Ok::<_, Infallible>(resp)
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Slow { addr, task }
}

/// One pool `p` over `endpoints` (`(address, weight)`), with `extra` YAML
/// lines (indented by four spaces) for its policies.
fn pool_yaml(algorithm: &str, endpoints: &[(SocketAddr, u32)], extra: &str) -> String {
    let mut yaml =
        format!("pools:\n  - name: p\n    algorithm: {algorithm}\n{extra}    endpoints:\n");
    for (addr, weight) in endpoints {
        yaml.push_str(&format!("      - {{address: {addr}, weight: {weight}}}\n"));
    }
    yaml
}

/// `GET /` on the proxy with extra headers; who answered.
async fn get_with(client: &HttpClient, dp: &Dataplane, headers: &[(&str, &str)]) -> Got {
    let mut req = Request::get(format!("http://{}/", dp.http_addr())).header("host", "x");
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let got = send(client, req.body(Full::new(Bytes::new())).expect("request")).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text());
    got
}

/// `total` requests over `clients` concurrent keep-alive clients; request
/// `i` carries `x-user: user-i`. Returns the count per backend.
async fn spread(dp: &Dataplane, total: usize, clients: usize) -> BTreeMap<String, usize> {
    let addr = dp.http_addr();
    let mut tasks = Vec::new();
    for c in 0..clients {
        tasks.push(tokio::spawn(async move {
            let client = client();
            let mut seen: BTreeMap<String, usize> = BTreeMap::new();
            for i in (c..total).step_by(clients) {
                let req = Request::get(format!("http://{addr}/"))
                    .header("host", "x")
                    .header("x-user", format!("user-{i}"))
                    .body(Full::new(Bytes::new()))
                    .expect("request");
                let got = send(&client, req).await;
                assert_eq!(got.status, StatusCode::OK, "{}", got.text());
                *seen.entry(got.backend).or_default() += 1;
            }
            seen
        }));
    }
    let mut seen = BTreeMap::new();
    for t in tasks {
        for (k, v) in t.await.expect("client task") {
            *seen.entry(k).or_default() += v;
        }
    }
    seen
}

fn percent(seen: &BTreeMap<String, usize>, name: &str) -> f64 {
    let total: usize = seen.values().sum();
    seen.get(name).copied().unwrap_or(0) as f64 * 100.0 / total as f64
}

async fn three_backends() -> (Backend, Backend, Backend) {
    (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    )
}

/// Weights 3:2:1 give 50/33/17 % within 2 points over `total` requests
/// from `clients` concurrent clients (request i carries `x-user: user-i`).
async fn weights_hold(algorithm: &str, total: usize, clients: usize) {
    let (a, b, c) = three_backends().await;
    let eps = [(a.addr, 3), (b.addr, 2), (c.addr, 1)];
    let extra = if algorithm == "RingHash" || algorithm == "Maglev" {
        "    hashKey: {header: x-user}\n"
    } else {
        ""
    };
    let dp = start(Source::Static(table(&pool_yaml(algorithm, &eps, extra)))).await;
    let seen = spread(&dp, total, clients).await;
    assert_eq!(seen.values().sum::<usize>(), total);
    for (name, want) in [("a", 50.0), ("b", 33.33), ("c", 16.67)] {
        let got = percent(&seen, name);
        assert!(
            (got - want).abs() <= 2.0,
            "{algorithm}: {name} got {got:.2}% (want {want}%): {seen:?}"
        );
    }
    dp.shutdown().await;
}

// The smooth rotation is exact. The random algorithms get 12,000 requests
// so that 2 points is 4.4 standard deviations of sampling noise (0.46
// points at p = 0.5) rather than 3.1 at 6,000; RingHash gets 24,000 since
// its ring adds its own imbalance (about 0.45 points at 4,096 points per
// weight unit).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_3_2_1_hold_for_weighted_round_robin() {
    weights_hold("WeightedRoundRobin", 6_000, 1).await;
}

/// Sequential requests: with equal (zero) load the weighted first draw of
/// the two wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_3_2_1_hold_for_least_request() {
    weights_hold("LeastRequest", 12_000, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_3_2_1_hold_for_random() {
    weights_hold("Random", 12_000, 4).await;
}

/// Weight groups split exactly; the latency comparison runs within a group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_3_2_1_hold_for_peak_ewma() {
    weights_hold("PeakEwma", 12_000, 4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_3_2_1_hold_for_ring_hash() {
    weights_hold("RingHash", 24_000, 4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_3_2_1_hold_for_maglev() {
    weights_hold("Maglev", 12_000, 4).await;
}

/// One backend answers after 40 ms, two at once: with 8 concurrent
/// clients, LeastRequest and PeakEwma give it far less than its fair third.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_endpoint_gets_less_traffic_under_least_request_and_peak_ewma() {
    let slow = slow_backend("slow", Duration::from_millis(40)).await;
    let (fast1, fast2) = (Backend::start("f1").await, Backend::start("f2").await);
    let eps = [(slow.addr, 1), (fast1.addr, 1), (fast2.addr, 1)];
    for algorithm in ["LeastRequest", "PeakEwma"] {
        let dp = start(Source::Static(table(&pool_yaml(algorithm, &eps, "")))).await;
        let seen = spread(&dp, 1_200, 8).await;
        let got = percent(&seen, "slow");
        assert!(got < 20.0, "{algorithm}: slow got {got:.1}%: {seen:?}");
        dp.shutdown().await;
    }
}

async fn write(path: &Path, yaml: &str) {
    tokio::fs::write(path, yaml).await.expect("write table");
}

/// Waits until the dataplane serves a table newer than `version`.
async fn reloaded(dp: &Dataplane, version: u64) {
    eventually("the table reloads", async || dp.route_version() > version).await;
}

/// The same key reaches the same backend every time; when one backend is
/// removed by a table update, the keys of the others stay where they were
/// (all of them on RingHash, nearly all on Maglev).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hashing_keeps_keys_on_their_backend_across_a_removal() {
    const NAMES: [&str; 5] = ["h0", "h1", "h2", "h3", "h4"];
    let mut backends = Vec::new();
    for name in NAMES {
        backends.push(Backend::start(name).await);
    }
    let eps: Vec<(SocketAddr, u32)> = backends.iter().map(|b| (b.addr, 1)).collect();
    let client = client();
    for (algorithm, max_moved_percent) in [("RingHash", 0.0), ("Maglev", 5.0)] {
        let dir = temp_dir("hash");
        let path = dir.join("pools.yaml");
        let extra = "    hashKey: {header: x-user}\n";
        write(&path, &pool_yaml(algorithm, &eps, extra)).await;
        let dp = start(Source::File(path.clone())).await;
        let keys: Vec<String> = (0..300).map(|i| format!("user-{i}")).collect();
        let mut before = Vec::new();
        for key in &keys {
            let first = get_with(&client, &dp, &[("x-user", key)]).await.backend;
            for _ in 0..2 {
                let again = get_with(&client, &dp, &[("x-user", key)]).await.backend;
                assert_eq!(again, first, "{algorithm}: {key} moved without a change");
            }
            before.push(first);
        }
        // Remove h2.
        let version = dp.route_version();
        write(
            &path,
            &pool_yaml(algorithm, &[eps[0], eps[1], eps[3], eps[4]], extra),
        )
        .await;
        reloaded(&dp, version).await;
        let mut moved = 0;
        for (key, was) in keys.iter().zip(&before) {
            let now = get_with(&client, &dp, &[("x-user", key)]).await.backend;
            assert_ne!(now, "h2");
            if was != "h2" && now != *was {
                moved += 1;
            }
        }
        let stayed_on_others = before.iter().filter(|b| *b != "h2").count();
        let moved_percent = moved as f64 * 100.0 / stayed_on_others as f64;
        assert!(
            moved_percent <= max_moved_percent,
            "{algorithm}: {moved} of {stayed_on_others} keys of the other backends moved"
        );
        dp.shutdown().await;
    }
}

/// A request without the hash header still gets an answer (a random pick).
#[tokio::test]
async fn a_request_without_the_hash_key_still_gets_an_endpoint() {
    let (a, b, c) = three_backends().await;
    let eps = [(a.addr, 1), (b.addr, 1), (c.addr, 1)];
    let yaml = pool_yaml("Maglev", &eps, "    hashKey: {cookie: session}\n");
    let dp = start(Source::Static(table(&yaml))).await;
    let client = client();
    let mut seen = BTreeMap::<String, usize>::new();
    for _ in 0..60 {
        *seen
            .entry(get_with(&client, &dp, &[]).await.backend)
            .or_default() += 1;
    }
    assert_eq!(seen.len(), 3, "random picks reach every backend: {seen:?}");
}

fn cookie_pair(got: &Got) -> Option<String> {
    let set = got.headers.get("set-cookie")?.to_str().ok()?;
    Some(set.split(';').next()?.to_string())
}

/// The first response sets the cookie; requests carrying it stick to that
/// backend; once the backend is removed they go elsewhere and get a new
/// cookie, which sticks in turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_affinity_sticks_until_the_endpoint_leaves() {
    let (a, b, c) = three_backends().await;
    let backends = [&a, &b, &c];
    let eps: Vec<(SocketAddr, u32)> = backends.iter().map(|b| (b.addr, 1)).collect();
    let extra = "    sessionAffinity: {cookieName: stick, ttl: 1h}\n";
    let dir = temp_dir("affinity");
    let path = dir.join("pools.yaml");
    write(&path, &pool_yaml("RoundRobin", &eps, extra)).await;
    let dp = start(Source::File(path.clone())).await;
    let client = client();

    let first = get_with(&client, &dp, &[]).await;
    let set = first.headers.get("set-cookie").expect("a cookie is set");
    let set = set.to_str().expect("ascii");
    assert!(set.starts_with("stick="), "{set}");
    assert!(set.contains("; Path=/") && set.contains("; HttpOnly") && set.contains("Max-Age=3600"));
    assert!(
        !set.contains("127.0.0.1"),
        "the cookie does not show the address: {set}"
    );
    let pair = cookie_pair(&first).expect("pair");
    let sticky = first.backend.clone();
    for _ in 0..100 {
        let got = get_with(&client, &dp, &[("cookie", &pair)]).await;
        assert_eq!(got.backend, sticky, "round robin would have moved on");
        assert!(got.headers.get("set-cookie").is_none());
    }
    // Without the cookie, round robin goes on (and sets cookies).
    let other = get_with(&client, &dp, &[]).await;
    assert!(other.headers.get("set-cookie").is_some());

    // Remove the sticky backend.
    let version = dp.route_version();
    let kept: Vec<(SocketAddr, u32)> = backends
        .iter()
        .filter(|b| b.name != sticky)
        .map(|b| (b.addr, 1))
        .collect();
    write(&path, &pool_yaml("RoundRobin", &kept, extra)).await;
    reloaded(&dp, version).await;
    let moved = get_with(&client, &dp, &[("cookie", &pair)]).await;
    assert_ne!(moved.backend, sticky);
    let new_pair = cookie_pair(&moved).expect("a new cookie");
    assert_ne!(new_pair, pair);
    for _ in 0..20 {
        let got = get_with(&client, &dp, &[("cookie", &new_pair)]).await;
        assert_eq!(got.backend, moved.backend);
    }
    dp.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// The retry helper's entry point: a pick that avoids endpoints already
/// tried, and says when there is none left.
#[tokio::test]
async fn pick_excluding_avoids_tried_endpoints() {
    use sluice_dataplane::balance::PickRequest;
    use sluice_dataplane::endpoint::Registry;
    use sluice_dataplane::metrics::Metrics;
    use sluice_dataplane::table::Table;

    let addrs: Vec<SocketAddr> = (1..=3)
        .map(|p| SocketAddr::from(([127, 0, 0, 1], p)))
        .collect();
    for algorithm in [
        "RoundRobin",
        "LeastRequest",
        "Random",
        "PeakEwma",
        "RingHash",
        "Maglev",
    ] {
        let eps: Vec<(SocketAddr, u32)> = addrs.iter().map(|a| (*a, 1)).collect();
        let routes = table(&pool_yaml(algorithm, &eps, ""));
        let t = Table::build(
            &routes,
            &Table::default(),
            &Metrics::new(),
            &Registry::default(),
        );
        let pool = Arc::clone(t.pool("p").expect("pool"));
        let req = PickRequest {
            hash: Some(42),
            sticky: None,
        };
        for _ in 0..50 {
            let first = pool.pick(&req).expect("pick").addr;
            let second = pool.pick_excluding(&req, &[first]).expect("another").addr;
            assert_ne!(second, first, "{algorithm}");
            let third = pool
                .pick_excluding(&req, &[first, second])
                .expect("the last")
                .addr;
            assert!(third != first && third != second, "{algorithm}");
            assert!(pool.pick_excluding(&req, &addrs).is_none(), "{algorithm}");
        }
    }
}
