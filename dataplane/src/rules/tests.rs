use http::{HeaderMap, HeaderValue, Method};
use sluice_protocol::{RouteFile, RouteTable};

use super::{RequestView, Target};
use crate::endpoint::Registry;
use crate::metrics::Metrics;
use crate::table::Table;

fn table(yaml: &str) -> Table {
    let file = RouteFile::from_yaml(yaml).expect("valid");
    let routes = RouteTable::from_parts(1, file.pools, file.routes);
    Table::build(
        &routes,
        &Table::default(),
        &Metrics::new(),
        &Registry::default(),
    )
}

/// What `host` + `target` (path and query) with `headers` selects: the
/// pool's name, or the rule's.
fn pick(t: &Table, method: Method, host: &str, target: &str, headers: &[(&str, &str)]) -> String {
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        map.append(
            http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
            HeaderValue::from_str(v).expect("value"),
        );
    }
    let view = RequestView {
        path,
        query,
        method: &method,
        headers: &map,
    };
    match t.select(host, &view, false).map(|m| m.target) {
        None => "-".into(),
        Some(Target::Pool(i)) => t.pool_at(*i).expect("pool").route.name.clone(),
        Some(Target::Rule(a)) => a.name.clone(),
    }
}

const POOLS: &str = r#"
pools:
  - {name: a, backendOnly: true}
  - {name: b, backendOnly: true}
  - {name: c, backendOnly: true}
"#;

fn with_routes(routes: &str) -> Table {
    table(&format!("{POOLS}routes:\n{routes}"))
}

#[test]
fn each_match_type_selects_its_requests() {
    let t = with_routes(
        r#"
  - name: r
    hosts: [x.test]
    rules:
      - matches: [{path: {type: Exact, value: /exact}}]
        backends: [{pool: a}]
      - matches: [{path: {type: RegularExpression, value: "/re/[0-9]+"}}]
        backends: [{pool: b}]
      - matches: [{path: {type: PathPrefix, value: /pre}}]
        backends: [{pool: c}]
      - matches: [{path: {value: /h}, headers: [{name: X-Env, value: canary}]}]
        backends: [{pool: a}]
      - matches: [{path: {value: /h}, headers: [{type: RegularExpression, name: x-user, value: "u[0-9]"}]}]
        backends: [{pool: b}]
      - matches: [{path: {value: /q}, queryParams: [{name: v, value: "2"}]}]
        backends: [{pool: a}]
      - matches: [{path: {value: /q}, queryParams: [{type: RegularExpression, name: v, value: "[3-4]"}]}]
        backends: [{pool: b}]
      - matches: [{path: {value: /m}, method: POST}]
        backends: [{pool: a}]
"#,
    );
    let get = |target: &str, h: &[(&str, &str)]| pick(&t, Method::GET, "x.test", target, h);
    assert_eq!(get("/exact", &[]), "a");
    assert_eq!(get("/exact/more", &[]), "-");
    assert_eq!(get("/re/12", &[]), "b");
    assert_eq!(get("/re/12x", &[]), "-", "regexes match the whole path");
    assert_eq!(get("/pre", &[]), "c");
    assert_eq!(get("/pre/x", &[]), "c");
    assert_eq!(get("/prefix", &[]), "-", "prefixes match whole segments");
    assert_eq!(get("/h", &[("x-env", "canary")]), "a");
    assert_eq!(get("/h", &[("x-env", "Canary")]), "-", "values are exact");
    assert_eq!(get("/h", &[("x-user", "u7")]), "b");
    assert_eq!(get("/h", &[]), "-");
    assert_eq!(get("/q?a=1&v=2", &[]), "a");
    assert_eq!(get("/q?v=4", &[]), "b");
    assert_eq!(get("/q?v=5", &[]), "-");
    assert_eq!(pick(&t, Method::POST, "x.test", "/m", &[]), "a");
    assert_eq!(get("/m", &[]), "-");
    assert_eq!(get("/exact", &[]).as_str(), "a");
    assert_eq!(pick(&t, Method::GET, "y.test", "/exact", &[]), "-");
}

#[test]
fn precedence_follows_gateway_api() {
    let t = with_routes(
        r#"
  - name: newer
    order: 2
    hosts: [x.test]
    rules:
      - matches: [{path: {value: /}}]
        backends: [{pool: a}]
      - matches: [{path: {value: /api}}]
        backends: [{pool: a}]
        filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: r, value: newer-api}]}}]
  - name: older
    order: 1
    hosts: [x.test]
    rules:
      - matches: [{path: {value: /api}}]
        backends: [{pool: b}]
        filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: r, value: older-api}]}}]
      - matches: [{path: {type: Exact, value: /api/v1}}]
        backends: [{pool: c}]
      - matches: [{path: {value: /api/v1}}]
        backends: [{pool: b}]
      - matches: [{path: {value: /api/v1}, method: GET}]
        backends: [{pool: c}]
        timeouts: {request: 1s}
      - matches: [{path: {value: /api/v1}, method: GET, headers: [{name: a, value: "1"}]}]
        backends: [{pool: a}]
        timeouts: {request: 2s}
      - matches: [{path: {value: /api/v1}, method: GET, headers: [{name: a, value: "1"}], queryParams: [{name: q, value: "1"}]}]
        backends: [{pool: b}]
        timeouts: {request: 3s}
"#,
    );
    let get = |target: &str, h: &[(&str, &str)]| pick(&t, Method::GET, "x.test", target, h);
    // Exact beats any prefix.
    assert_eq!(get("/api/v1", &[("a", "1")]), "c");
    // Longest prefix, then method, then more headers, then more query params.
    assert_eq!(pick(&t, Method::PUT, "x.test", "/api/v1/x", &[]), "b");
    assert_eq!(get("/api/v1/x", &[]), "route \"older\" rules[3]");
    assert_eq!(get("/api/v1/x", &[("a", "1")]), "route \"older\" rules[4]");
    assert_eq!(
        get("/api/v1/x?q=1", &[("a", "1")]),
        "route \"older\" rules[5]"
    );
    // Equal matches: the route with the lower order (the older one) wins.
    assert_eq!(get("/api/x", &[]), "route \"older\" rules[0]");
    assert_eq!(get("/other", &[]), "a");
}

#[test]
fn pools_and_routes_share_one_precedence_and_tiers_fall_through() {
    let t = table(
        r#"
pools:
  - {name: site, hosts: [x.test], pathPrefix: /}
  - {name: wild, hosts: ["*.test"], pathPrefix: /}
  - {name: api, backendOnly: true}
routes:
  - name: r
    hosts: [x.test]
    rules:
      - matches: [{path: {value: /api}, headers: [{name: v, value: "2"}]}]
        backends: [{pool: api}]
"#,
    );
    assert_eq!(
        pick(&t, Method::GET, "x.test", "/api/x", &[("v", "2")]),
        "api"
    );
    assert_eq!(pick(&t, Method::GET, "x.test", "/api/x", &[]), "site");
    assert_eq!(
        pick(&t, Method::GET, "y.test", "/api/x", &[("v", "2")]),
        "wild"
    );
    // A backend-only pool has no route of its own, not even a catch-all.
    assert_eq!(pick(&t, Method::GET, "other.org", "/", &[]), "-");
}

#[test]
fn a_rule_that_only_forwards_compiles_to_its_pool_and_weights_split() {
    let t = with_routes(
        r#"
  - name: r
    rules:
      - matches: [{path: {value: /one}}]
        backends: [{pool: a}]
      - matches: [{path: {value: /split}}]
        backends: [{pool: a, weight: 3}, {pool: b, weight: 1}, {pool: c, weight: 0}]
      - matches: [{path: {value: /missing}}]
        backends: [{pool: nowhere}]
"#,
    );
    assert_eq!(pick(&t, Method::GET, "any", "/one", &[]), "a");
    let view_of = |path| {
        let headers = Box::leak(Box::new(HeaderMap::new()));
        RequestView {
            path,
            query: None,
            method: &Method::GET,
            headers,
        }
    };
    let Some(Target::Rule(split)) = t.select("any", &view_of("/split"), false).map(|m| m.target)
    else {
        panic!("a weighted rule");
    };
    let mut counts = [0u32; 3];
    for _ in 0..4000 {
        let b = split.pick().expect("a backend");
        counts[["a", "b", "c"]
            .iter()
            .position(|n| *n == b.name)
            .expect("known")] += 1;
    }
    assert_eq!(counts[2], 0, "weight 0 gets nothing");
    assert!((2700..3300).contains(&counts[0]), "{counts:?}");
    let Some(Target::Rule(missing)) = t
        .select("any", &view_of("/missing"), false)
        .map(|m| m.target)
    else {
        panic!("a rule whose pool is missing is kept, to answer 500");
    };
    assert_eq!(missing.pick().map(|b| b.pool), Some(None));
}
