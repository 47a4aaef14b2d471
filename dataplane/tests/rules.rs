//! Routes with rules: matches and their precedence, filters, weighted
//! backends, rule timeouts, 404 and 500, routes by stream delta and in the
//! standalone file — against real loopback backends.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use sluice_dataplane::{Dataplane, Source};
use sluice_protocol::{Delta, RouteEvent, RouteFile, RouteTable, Snapshot};
use support::*;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A backend that answers with its name (`x-backend`) and, in the body,
/// the request it saw: `METHOD target` on the first line, then its headers
/// sorted, one per line. Every request line is kept in `seen`.
struct Echo {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Echo {
    async fn start(name: &'static str) -> Echo {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let log = Arc::clone(&log);
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let log = Arc::clone(&log);
                        async move {
                            let line = format!("{} {}", req.method(), req.uri());
                            log.lock().expect("lock").push(line.clone());
                            let mut lines: Vec<String> = req
                                .headers()
                                .iter()
                                .map(|(k, v)| format!("{k}: {}", v.to_str().unwrap_or("?")))
                                .collect();
                            lines.sort();
                            let body = format!("{line}\n{}\n", lines.join("\n"));
                            let resp = Response::builder()
                                .header("x-backend", name)
                                .header("x-from-backend", "1")
                                .body(Full::new(Bytes::from(body)))
                                .expect("response");
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Echo { addr, seen, task }
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().expect("lock").clone()
    }
}

fn routes(yaml: &str) -> RouteTable {
    let file = RouteFile::from_yaml(yaml).expect("test yaml is valid");
    RouteTable::from_parts(1, file.pools, file.routes)
}

/// Pools `a`, `b`, `c` (route backends only) over the three echoes, then
/// `routes`.
fn three_pools(a: &Echo, b: &Echo, c: &Echo, routes: &str) -> String {
    format!(
        "pools:\n  - {{name: a, backendOnly: true, endpoints: [{{address: {}}}]}}\n  - {{name: b, backendOnly: true, endpoints: [{{address: {}}}]}}\n  - {{name: c, backendOnly: true, endpoints: [{{address: {}}}]}}\nroutes:\n{routes}",
        a.addr, b.addr, c.addr
    )
}

async fn echoes() -> (Echo, Echo, Echo) {
    (
        Echo::start("a").await,
        Echo::start("b").await,
        Echo::start("c").await,
    )
}

fn request(dp: &Dataplane, method: &str, host: &str, target: &str) -> http::request::Builder {
    Request::builder()
        .method(method)
        .uri(format!("http://{}{target}", dp.http_addr()))
        .header("host", host)
}

fn empty(b: http::request::Builder) -> Request<Full<Bytes>> {
    b.body(Full::new(Bytes::new())).expect("request")
}

#[tokio::test]
async fn each_match_type_and_the_precedence_between_rules_pick_the_backend() {
    let (a, b, c) = echoes().await;
    let yaml = three_pools(
        &a,
        &b,
        &c,
        r#"
  - name: newer
    order: 2
    hosts: [shop.test]
    rules:
      - matches: [{path: {value: /}}]
        backends: [{pool: a}]
      - matches: [{path: {value: /api}}]
        backends: [{pool: c}]
  - name: older
    order: 1
    hosts: [shop.test]
    rules:
      - matches: [{path: {value: /api}}]
        backends: [{pool: b}]
      - matches: [{path: {type: Exact, value: /api/login}}]
        backends: [{pool: c}]
      - matches: [{path: {type: RegularExpression, value: "/item/[0-9]+"}}]
        backends: [{pool: c}]
      - matches: [{path: {value: /api/v2}, method: POST}]
        backends: [{pool: c}]
      - matches: [{path: {value: /api/v2}, headers: [{name: x-canary, value: "true"}]}]
        backends: [{pool: a}]
      - matches: [{path: {value: /api/v2}, headers: [{name: x-canary, value: "true"}, {type: RegularExpression, name: x-user, value: "vip-.*"}]}]
        backends: [{pool: c}]
      - matches: [{path: {value: /api/v2}, queryParams: [{name: beta, value: "1"}]}]
        backends: [{pool: c}]
"#,
    );
    let dp = start(Source::Static(routes(&yaml))).await;
    let http = client();
    let go = async |method: &str, target: &str, headers: &[(&str, &str)]| {
        let mut req = request(&dp, method, "shop.test", target);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        send(&http, empty(req)).await.backend
    };
    // Exact beats the longer prefix; the regex matches whole paths only.
    assert_eq!(go("GET", "/api/login", &[]).await, "c");
    assert_eq!(go("GET", "/api/login/x", &[]).await, "b");
    assert_eq!(go("GET", "/item/42", &[]).await, "c");
    assert_eq!(go("GET", "/item/42x", &[]).await, "a");
    // Equal `/api` prefixes: the older route (lower order) wins.
    assert_eq!(go("GET", "/api/x", &[]).await, "b");
    // Segment-wise prefixes: `/apix` is not under `/api`.
    assert_eq!(go("GET", "/apix", &[]).await, "a");
    // Method, then the number of header matches, then query matches.
    assert_eq!(go("POST", "/api/v2", &[("x-canary", "true")]).await, "c");
    assert_eq!(go("GET", "/api/v2", &[("x-canary", "true")]).await, "a");
    let vip = [("x-canary", "true"), ("x-user", "vip-1")];
    assert_eq!(go("GET", "/api/v2", &vip).await, "c");
    assert_eq!(go("GET", "/api/v2?beta=1", &[]).await, "c");
    assert_eq!(go("GET", "/api/v2?beta=2", &[]).await, "b");
    // No rule for another host: 404.
    let other = send(&http, empty(request(&dp, "GET", "other.test", "/"))).await;
    assert_eq!(other.status, StatusCode::NOT_FOUND);
    assert_eq!(other.error, "no-route");
    dp.shutdown().await;
}

#[tokio::test]
async fn header_modifiers_and_rewrites_change_what_each_side_sees() {
    let (a, b, c) = echoes().await;
    let yaml = three_pools(
        &a,
        &b,
        &c,
        r#"
  - name: r
    hosts: [shop.test]
    rules:
      - matches: [{path: {value: /old}}]
        filters:
          - type: RequestHeaderModifier
            requestHeaderModifier:
              set: [{name: x-set, value: by-rule}]
              add: [{name: x-add, value: added}]
              remove: [x-secret]
          - type: ResponseHeaderModifier
            responseHeaderModifier:
              add: [{name: x-resp, value: "1"}]
              remove: [x-from-backend]
          - type: URLRewrite
            urlRewrite:
              hostname: internal.test
              path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}
        backends: [{pool: a}]
      - matches: [{path: {type: Exact, value: /whole}}]
        filters:
          - type: URLRewrite
            urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: /replaced}}
        backends: [{pool: b}]
"#,
    );
    let dp = start(Source::Static(routes(&yaml))).await;
    let http = client();
    let req = request(&dp, "GET", "shop.test", "/old/page?q=1")
        .header("x-set", "by-client")
        .header("x-add", "mine")
        .header("x-secret", "s3cret");
    let got = send(&http, empty(req)).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.backend, "a");
    let body = got.text();
    let mut lines = body.lines();
    assert_eq!(lines.next(), Some("GET /new/page?q=1"), "{body}");
    let headers: Vec<&str> = lines.collect();
    for want in [
        "x-set: by-rule",
        "x-add: mine",
        "x-add: added",
        "host: internal.test",
        "x-forwarded-host: shop.test",
    ] {
        assert!(headers.contains(&want), "{want:?} in {body}");
    }
    assert!(
        !body.contains("s3cret") && !body.contains("by-client"),
        "{body}"
    );
    assert_eq!(got.headers["x-resp"], "1");
    assert!(!got.headers.contains_key("x-from-backend"));

    let got = send(&http, empty(request(&dp, "GET", "shop.test", "/old"))).await;
    assert!(got.text().starts_with("GET /new\n"), "{}", got.text());
    let got = send(&http, empty(request(&dp, "GET", "shop.test", "/whole?x=y"))).await;
    assert_eq!(got.backend, "b");
    assert!(
        got.text().starts_with("GET /replaced?x=y\n"),
        "{}",
        got.text()
    );
    dp.shutdown().await;
}

#[tokio::test]
async fn redirects_answer_with_the_spec_location_and_status() {
    let (a, b, c) = echoes().await;
    let yaml = three_pools(
        &a,
        &b,
        &c,
        r#"
  - name: r
    hosts: [shop.test]
    rules:
      - matches: [{path: {value: /secure}}]
        filters: [{type: RequestRedirect, requestRedirect: {scheme: https, statusCode: 301}}]
      - matches: [{path: {value: /moved}}]
        filters:
          - type: RequestRedirect
            requestRedirect: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /here}}
      - matches: [{path: {value: /away}}]
        filters:
          - type: RequestRedirect
            requestRedirect: {hostname: other.test, port: 8080, statusCode: 308, path: {type: ReplaceFullPath, replaceFullPath: /x}}
      - matches: [{path: {value: /see}}]
        filters: [{type: RequestRedirect, requestRedirect: {statusCode: 303}}]
      - matches: [{path: {value: /temp}}]
        filters: [{type: RequestRedirect, requestRedirect: {scheme: http, statusCode: 307}}]
"#,
    );
    let dp = start(Source::Static(routes(&yaml))).await;
    let http = client();
    let cases = [
        (
            "shop.test",
            "/secure/a?b=c",
            301,
            "https://shop.test/secure/a?b=c",
        ),
        (
            "shop.test:8000",
            "/moved/x",
            302,
            "http://shop.test:8000/here/x",
        ),
        ("shop.test", "/away/y", 308, "http://other.test:8080/x"),
        ("shop.test:81", "/see", 303, "http://shop.test:81/see"),
        ("shop.test:81", "/temp", 307, "http://shop.test/temp"),
    ];
    for (host, target, status, location) in cases {
        let got = send(&http, empty(request(&dp, "GET", host, target))).await;
        assert_eq!(got.status.as_u16(), status, "{host}{target}");
        assert_eq!(got.headers["location"], location, "{host}{target}");
        assert_eq!(got.backend, "", "no backend answers a redirect");
    }
    assert!(a.seen().is_empty() && b.seen().is_empty() && c.seen().is_empty());
    dp.shutdown().await;
}

#[tokio::test]
async fn weights_split_traffic_and_invalid_backends_answer_500() {
    let (a, b, c) = echoes().await;
    let yaml = three_pools(
        &a,
        &b,
        &c,
        r#"
  - name: r
    rules:
      - matches: [{path: {value: /split}}]
        backends: [{pool: a, weight: 3}, {pool: b, weight: 1}, {pool: c, weight: 0}]
      - matches: [{path: {value: /gone}}]
        backends: [{pool: not-in-the-table}]
      - matches: [{path: {value: /zero}}]
        backends: [{pool: a, weight: 0}]
      - matches: [{path: {value: /none}}]
        filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: a, value: b}]}}]
"#,
    );
    let dp = start(Source::Static(routes(&yaml))).await;
    let http = client();
    let mut counts = std::collections::BTreeMap::new();
    for _ in 0..400 {
        let got = proxy_get(&http, &dp, "any.test", "/split").await;
        *counts.entry(got.backend).or_insert(0u32) += 1;
    }
    let (na, nb) = (counts.get("a").copied(), counts.get("b").copied());
    assert!(na.is_some_and(|n| (240..=360).contains(&n)), "{counts:?}");
    assert_eq!(
        na.unwrap_or(0) + nb.unwrap_or(0),
        400,
        "weight 0 gets none: {counts:?}"
    );
    for (path, reason) in [
        ("/gone", "invalid-backend"),
        ("/zero", "no-backend"),
        ("/none", "no-backend"),
    ] {
        let got = proxy_get(&http, &dp, "any.test", path).await;
        assert_eq!(got.status, StatusCode::INTERNAL_SERVER_ERROR, "{path}");
        assert_eq!(got.error, reason, "{path}");
    }
    dp.shutdown().await;
}

#[tokio::test]
async fn mirrors_get_a_copy_of_bodiless_requests_only() {
    let (a, b, c) = echoes().await;
    let yaml = three_pools(
        &a,
        &b,
        &c,
        r#"
  - name: r
    rules:
      - filters: [{type: RequestMirror, requestMirror: {pool: b}}]
        backends: [{pool: a}]
"#,
    );
    let dp = start(Source::Static(routes(&yaml))).await;
    let http = client();
    let post = request(&dp, "POST", "any.test", "/with-body")
        .body(Full::new(Bytes::from_static(b"payload")))
        .expect("request");
    assert_eq!(send(&http, post).await.backend, "a");
    let got = proxy_get(&http, &dp, "any.test", "/copied?x=1").await;
    assert_eq!(got.backend, "a", "the client gets the primary's answer");
    eventually("the mirror to receive the copy", async || {
        !b.seen().is_empty()
    })
    .await;
    assert_eq!(
        b.seen(),
        ["GET /copied?x=1"],
        "the request with a body is not copied"
    );
    assert_eq!(a.seen(), ["POST /with-body", "GET /copied?x=1"]);
    dp.shutdown().await;
}

#[tokio::test]
async fn rule_timeouts_cut_a_slow_backend_with_504() {
    let slow = Backend::start("slow").await;
    let yaml = format!(
        r#"
pools:
  - {{name: slow, backendOnly: true, endpoints: [{{address: {}}}]}}
routes:
  - name: r
    rules:
      - matches: [{{path: {{value: /gate}}, headers: [{{name: x-limit, value: request}}]}}]
        backends: [{{pool: slow}}]
        timeouts: {{request: 200ms}}
      - matches: [{{path: {{value: /gate}}, headers: [{{name: x-limit, value: backend}}]}}]
        backends: [{{pool: slow}}]
        timeouts: {{backendRequest: 200ms}}
"#,
        slow.addr
    );
    let dp = start(Source::Static(routes(&yaml))).await;
    let http = client();
    for limit in ["request", "backend"] {
        let req = request(&dp, "GET", "any.test", "/gate").header("x-limit", limit);
        let got = send(&http, empty(req)).await;
        assert_eq!(got.status, StatusCode::GATEWAY_TIMEOUT, "{limit}");
        assert_eq!(got.error, "timeout", "{limit}");
    }
    slow.gate.open();
    dp.shutdown().await;
}

#[tokio::test]
async fn a_pool_with_hosts_is_still_its_own_route_beside_rules() {
    let (a, b, c) = echoes().await;
    let yaml = format!(
        "pools:\n  - {{name: site, hosts: [shop.test], endpoints: [{{address: {}}}]}}\n  - {{name: beta, backendOnly: true, endpoints: [{{address: {}}}]}}\nroutes:\n  - name: canary\n    hosts: [shop.test]\n    rules:\n      - matches: [{{headers: [{{name: x-beta, value: \"1\"}}]}}]\n        backends: [{{pool: beta}}]\n",
        a.addr, b.addr
    );
    drop(c);
    let dp = start(Source::Static(routes(&yaml))).await;
    let http = client();
    assert_eq!(proxy_get(&http, &dp, "shop.test", "/x").await.backend, "a");
    let req = request(&dp, "GET", "shop.test", "/x").header("x-beta", "1");
    assert_eq!(send(&http, empty(req)).await.backend, "b");
    dp.shutdown().await;
}

#[tokio::test]
async fn a_route_change_arrives_as_a_stream_delta() {
    let (a, b, c) = echoes().await;
    let mut ctl = FakeController::start().await;
    let mut opts = options(Source::Controller {
        url: ctl.url(),
        token_file: None,
        ca_file: None,
    });
    opts.grace_period = Duration::from_secs(1);
    let dp = Dataplane::start(opts).await.expect("starts");
    let http = client();
    let file = RouteFile::from_yaml(&three_pools(
        &a,
        &b,
        &c,
        "  - {name: r, rules: [{backends: [{pool: a}]}]}\n",
    ))
    .expect("yaml");
    let stream = ctl.next_stream().await;
    stream
        .send(RouteEvent::Snapshot(Snapshot {
            version: 1,
            pools: file.pools.clone(),
            routes: file.routes.clone(),
        }))
        .await;
    eventually("version 1", async || dp.route_version() == 1).await;
    assert_eq!(proxy_get(&http, &dp, "x", "/").await.backend, "a");

    let mut changed = file.routes[0].clone();
    changed.rules[0].backends[0].pool = "c".into();
    stream
        .send(RouteEvent::Delta(Delta {
            version: 2,
            base: 1,
            route_upserts: vec![changed],
            ..Delta::default()
        }))
        .await;
    eventually("version 2", async || dp.route_version() == 2).await;
    assert_eq!(proxy_get(&http, &dp, "x", "/").await.backend, "c");
    let routes: serde_json::Value =
        serde_json::from_slice(&admin_get(&http, &dp, "/debug/routes").await.body).expect("json");
    assert_eq!(routes["routes"][0]["rules"][0]["backends"][0]["pool"], "c");

    stream
        .send(RouteEvent::Delta(Delta {
            version: 3,
            base: 2,
            route_removes: vec!["r".into()],
            ..Delta::default()
        }))
        .await;
    eventually("version 3", async || dp.route_version() == 3).await;
    let got = proxy_get(&http, &dp, "x", "/").await;
    assert_eq!(
        got.status,
        StatusCode::NOT_FOUND,
        "backend-only pools route nothing"
    );
    dp.shutdown().await;
}

#[tokio::test]
async fn the_standalone_file_takes_rules_and_a_bad_rule_keeps_the_old_table() {
    let (a, b, c) = echoes().await;
    let path = temp_dir("rules").join("sluice.yaml");
    let good = three_pools(
        &a,
        &b,
        &c,
        "  - name: r\n    rules:\n      - matches: [{path: {type: RegularExpression, value: \"/v[0-9]+\"}}]\n        backends: [{pool: b}]\n",
    );
    std::fs::write(&path, &good).expect("write");
    let dp = start(Source::File(path.clone())).await;
    let http = client();
    assert_eq!(proxy_get(&http, &dp, "x", "/v2").await.backend, "b");

    std::fs::write(&path, good.replace("/v[0-9]+", "/v[0-9+")).expect("write");
    let mut routes = serde_json::Value::Null;
    eventually("the error to show in /debug/routes", async || {
        let got = admin_get(&http, &dp, "/debug/routes").await;
        routes = serde_json::from_slice(&got.body).expect("json");
        routes["lastError"].is_string()
    })
    .await;
    let error = routes["lastError"].as_str().unwrap_or_default();
    assert!(
        error.contains("sluice.yaml")
            && error.contains("line 8")
            && error.contains("invalid regular expression"),
        "the error names the file, line and what is wrong: {error}"
    );
    assert_eq!(proxy_get(&http, &dp, "x", "/v2").await.backend, "b");

    // Routes alone (no pool with hosts) are not an empty file.
    std::fs::write(&path, good.replace("pool: b", "pool: c")).expect("write");
    eventually("the new rule to serve", async || {
        proxy_get(&http, &dp, "x", "/v2").await.backend == "c"
    })
    .await;
    dp.shutdown().await;
}
