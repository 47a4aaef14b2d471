//! The dataplane with real loopback backends: what comes back, from whom.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use sluice_dataplane::{Dataplane, Options, Source};
use sluice_protocol::{RouteFile, RouteTable};
use tokio::net::TcpListener;

/// A backend named `name`: `/echo` streams the request body back, `/headers`
/// lists the request headers, `/slow` answers after 300 ms, `/chunked`
/// streams 64 chunks; everything else answers its name.
async fn backend(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| async move {
                    let path = req.uri().path().to_string();
                    let resp = Response::builder().header("x-backend", name);
                    let body: http_body_util::combinators::BoxBody<Bytes, hyper::Error> =
                        match path.as_str() {
                            "/echo" => req.into_body().boxed(),
                            "/headers" => {
                                let mut lines: Vec<String> = req
                                    .headers()
                                    .iter()
                                    .map(|(k, v)| format!("{k}: {}", v.to_str().unwrap_or("")))
                                    .collect();
                                lines.sort();
                                Full::new(Bytes::from(lines.join("\n")))
                                    .map_err(|e| match e {})
                                    .boxed()
                            }
                            "/slow" => {
                                tokio::time::sleep(Duration::from_millis(300)).await;
                                Full::new(Bytes::from("slow done"))
                                    .map_err(|e| match e {})
                                    .boxed()
                            }
                            "/chunked" => {
                                let chunks = futures::stream::iter((0..64u8).map(|i| {
                                    Ok::<_, hyper::Error>(Frame::data(Bytes::from(vec![i; 1024])))
                                }));
                                StreamBody::new(chunks).boxed()
                            }
                            _ => Full::new(Bytes::from(name)).map_err(|e| match e {}).boxed(),
                        };
                    Ok::<_, Infallible>(resp.body(body).expect("response"))
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

fn table(yaml: &str) -> RouteTable {
    let file = RouteFile::from_yaml(yaml).expect("test yaml is valid");
    RouteTable::from_pools(1, file.pools)
}

async fn start(source: Source) -> Dataplane {
    Dataplane::start(Options {
        source,
        name: "test".into(),
        http: "127.0.0.1:0".parse().expect("addr"),
        admin: "127.0.0.1:0".parse().expect("addr"),
        state_dir: None,
        grace_period: Duration::from_secs(5),
    })
    .await
    .expect("dataplane starts")
}

struct Got {
    status: u16,
    backend: String,
    error: String,
    body: Bytes,
}

async fn send(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    req: Request<Full<Bytes>>,
) -> Got {
    let fut = async {
        let resp = client.request(req).await.expect("request completes");
        let status = resp.status().as_u16();
        let header = |n: &str| {
            resp.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        let (backend, error) = (header("x-backend"), header("x-sluice-error"));
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        Got {
            status,
            backend,
            error,
            body,
        }
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .expect("answered within 10 s")
}

fn client() -> Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

fn get(dp: &Dataplane, host: &str, path: &str) -> Request<Full<Bytes>> {
    Request::get(format!("http://{}{path}", dp.http_addr()))
        .header("host", host)
        .body(Full::new(Bytes::new()))
        .expect("request")
}

#[tokio::test]
async fn weights_3_2_1_split_600_requests_300_200_100() {
    let (a, b, c) = (backend("a").await, backend("b").await, backend("c").await);
    let dp = start(Source::Static(table(&format!(
        "pools:\n  - name: w\n    algorithm: WeightedRoundRobin\n    endpoints:\n      - {{address: {a}, weight: 3}}\n      - {{address: {b}, weight: 2}}\n      - {{address: {c}}}\n"
    ))))
    .await;
    let http = client();
    let mut seen: BTreeMap<String, u32> = BTreeMap::new();
    for _ in 0..600 {
        let got = send(&http, get(&dp, "any", "/")).await;
        assert_eq!(got.status, 200);
        *seen.entry(got.backend).or_default() += 1;
    }
    assert_eq!(
        seen,
        BTreeMap::from([("a".into(), 300), ("b".into(), 200), ("c".into(), 100)])
    );
}

#[tokio::test]
async fn host_and_longest_prefix_pick_the_pool() {
    let (api, web, any) = (
        backend("api").await,
        backend("web").await,
        backend("any").await,
    );
    let dp = start(Source::Static(table(&format!(
        "pools:
  - {{name: api, hosts: [api.example.com], pathPrefix: /v1, endpoints: [{{address: {api}}}]}}
  - {{name: web, hosts: ['*.example.com'], endpoints: [{{address: {web}}}]}}
  - {{name: any, hosts: ['*'], pathPrefix: /static, endpoints: [{{address: {any}}}]}}
"
    ))))
    .await;
    let http = client();
    for (host, path, want) in [
        ("api.example.com", "/v1/users", "api"),
        ("API.example.com:8080", "/v1", "api"),
        ("api.example.com", "/v2", "web"),
        ("shop.example.com", "/", "web"),
        ("elsewhere.org", "/static/app.js", "any"),
    ] {
        let got = send(&http, get(&dp, host, path)).await;
        assert_eq!(
            (got.status, got.backend.as_str()),
            (200, want),
            "{host}{path}"
        );
    }
    let got = send(&http, get(&dp, "elsewhere.org", "/")).await;
    assert_eq!((got.status, got.error.as_str()), (404, "no-route"));
    assert_eq!(
        got.body,
        Bytes::from("no pool matches host \"elsewhere.org\" path \"/\"\n")
    );
}

#[tokio::test]
async fn no_endpoints_is_503_and_a_dead_endpoint_is_502() {
    // A port that was bound and released: nothing listens there.
    let dead = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind")
        .local_addr()
        .expect("addr");
    let dp = start(Source::Static(table(&format!(
        "pools:
  - {{name: empty, hosts: [empty.test], endpoints: []}}
  - {{name: notready, hosts: [notready.test], endpoints: [{{address: 127.0.0.1:9, ready: false}}]}}
  - {{name: dead, hosts: [dead.test], endpoints: [{{address: {dead}}}]}}
"
    ))))
    .await;
    let http = client();
    for host in ["empty.test", "notready.test"] {
        let got = send(&http, get(&dp, host, "/")).await;
        assert_eq!(
            (got.status, got.error.as_str()),
            (503, "no-endpoints"),
            "{host}"
        );
        assert!(String::from_utf8_lossy(&got.body).contains("has no ready endpoints"));
    }
    let got = send(&http, get(&dp, "dead.test", "/")).await;
    assert_eq!((got.status, got.error.as_str()), (502, "upstream-failed"));
    let body = String::from_utf8_lossy(&got.body).to_string();
    assert!(
        body.starts_with(&format!("endpoint {dead} failed:")) && body.contains("refused"),
        "{body}"
    );
}

#[tokio::test]
async fn hop_by_hop_headers_are_stripped_and_forwarding_headers_set() {
    let b = backend("b").await;
    let dp = start(Source::Static(table(&format!(
        "pools:\n  - {{name: p, endpoints: [{{address: {b}}}]}}\n"
    ))))
    .await;
    let req = Request::get(format!("http://{}/headers", dp.http_addr()))
        .header("host", "shop.example.com")
        .header("connection", "x-secret")
        .header("x-secret", "do-not-forward")
        .header("proxy-authorization", "Basic abc")
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-kept", "yes")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let got = send(&client(), req).await;
    let seen = String::from_utf8_lossy(&got.body).to_string();
    let lines: Vec<&str> = seen.lines().collect();
    assert!(lines.contains(&"host: shop.example.com"), "{seen}");
    assert!(
        lines.contains(&"x-forwarded-for: 203.0.113.9, 127.0.0.1"),
        "{seen}"
    );
    assert!(lines.contains(&"x-forwarded-proto: http"), "{seen}");
    assert!(
        lines.contains(&"x-forwarded-host: shop.example.com"),
        "{seen}"
    );
    assert!(lines.contains(&"x-kept: yes"), "{seen}");
    assert!(
        !seen.contains("x-secret") && !seen.contains("proxy-authorization"),
        "{seen}"
    );
}

#[tokio::test]
async fn large_bodies_stream_both_ways_intact() {
    let b = backend("b").await;
    let dp = start(Source::Static(table(&format!(
        "pools:\n  - {{name: p, endpoints: [{{address: {b}}}]}}\n"
    ))))
    .await;
    let http = client();
    let payload: Vec<u8> = (0..8 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let req = Request::post(format!("http://{}/echo", dp.http_addr()))
        .header("host", "x")
        .body(Full::new(Bytes::from(payload.clone())))
        .expect("request");
    let got = send(&http, req).await;
    assert_eq!(got.status, 200);
    assert!(
        got.body == payload,
        "echoed body differs ({} bytes back)",
        got.body.len()
    );
    let got = send(&http, get(&dp, "x", "/chunked")).await;
    let want: Vec<u8> = (0..64u8).flat_map(|i| vec![i; 1024]).collect();
    assert!(got.body == want);
}

#[tokio::test]
async fn a_changed_file_is_followed_and_a_broken_one_keeps_the_old_table() {
    let (a, b) = (backend("a").await, backend("b").await);
    let dir = std::env::temp_dir().join(format!("sluice-file-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("sluice.yaml");
    let pools = |addr: SocketAddr| {
        format!("pools:\n  - name: web\n    endpoints:\n      - {{address: {addr}}}\n")
    };
    std::fs::write(&path, pools(a)).expect("write");
    let dp = start(Source::File(path.clone())).await;
    let http = client();
    assert_eq!(send(&http, get(&dp, "x", "/")).await.backend, "a");

    std::fs::write(&path, pools(b)).expect("write");
    let mut followed = false;
    for _ in 0..100 {
        if send(&http, get(&dp, "x", "/")).await.backend == "b" {
            followed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(followed, "the proxy never followed the new file");
    assert_eq!(dp.route_version(), 2);

    std::fs::write(
        &path,
        "pools:\n  - name: web\n    endpoints:\n      - {address: not-an-address}\n",
    )
    .expect("write");
    let admin = format!("http://{}/debug/routes", dp.admin_addr());
    let mut reported = String::new();
    for _ in 0..100 {
        let got = send(
            &http,
            Request::get(&admin)
                .body(Full::new(Bytes::new()))
                .expect("req"),
        )
        .await;
        reported = String::from_utf8_lossy(&got.body).to_string();
        if reported.contains("not-an-address") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        reported.contains("line 4"),
        "error should name the line: {reported}"
    );
    assert_eq!(
        send(&http, get(&dp, "x", "/")).await.backend,
        "b",
        "old table must keep serving"
    );
    assert_eq!(dp.route_version(), 2);
}

#[tokio::test]
async fn admin_reports_health_readiness_and_metrics() {
    let b = backend("b").await;
    let dp = start(Source::Static(table(&format!(
        "pools:\n  - {{name: web, endpoints: [{{address: {b}}}]}}\n"
    ))))
    .await;
    let http = client();
    send(&http, get(&dp, "x", "/")).await;
    let admin = |p: &str| {
        Request::get(format!("http://{}{p}", dp.admin_addr()))
            .body(Full::new(Bytes::new()))
            .expect("req")
    };
    assert_eq!(send(&http, admin("/healthz")).await.status, 200);
    assert_eq!(send(&http, admin("/readyz")).await.status, 200);
    let metrics = String::from_utf8_lossy(&send(&http, admin("/metrics")).await.body).to_string();
    assert!(
        metrics.contains("sluice_requests_total{pool=\"web\",code=\"200\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("sluice_route_version 1"), "{metrics}");
}

#[tokio::test]
async fn shutdown_lets_an_in_flight_request_finish() {
    let b = backend("b").await;
    let dp = start(Source::Static(table(&format!(
        "pools:\n  - {{name: p, endpoints: [{{address: {b}}}]}}\n"
    ))))
    .await;
    let http = client();
    let req = get(&dp, "x", "/slow");
    let in_flight = tokio::spawn(async move { send(&http, req).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    tokio::time::timeout(Duration::from_secs(10), dp.shutdown())
        .await
        .expect("shutdown completes");
    let got = in_flight.await.expect("task");
    assert_eq!((got.status, &got.body[..]), (200, &b"slow done"[..]));
}
