use super::*;
use crate::file::RouteFile;
use crate::table::{Delta, RouteEvent, RouteTable};

const EXAMPLE: &str = r#"
pools:
  - {name: v1, backendOnly: true, endpoints: [{address: 127.0.0.1:9001}]}
  - {name: v2, backendOnly: true, endpoints: [{address: 127.0.0.1:9002}]}
routes:
  - name: shop
    hosts: [shop.example.com]
    order: 3
    rules:
      - matches:
          - path: {type: Exact, value: /cart}
            method: POST
            headers:
              - {name: x-canary, value: "yes"}
              - {type: RegularExpression, name: x-user, value: "[a-z]+"}
            queryParams:
              - {name: debug, value: "1"}
        filters:
          - type: RequestHeaderModifier
            requestHeaderModifier:
              set: [{name: x-set, value: a}]
              add: [{name: x-add, value: b}]
              remove: [x-drop]
          - type: URLRewrite
            urlRewrite:
              hostname: internal.example.com
              path: {type: ReplaceFullPath, replaceFullPath: /basket}
          - type: RequestMirror
            requestMirror: {pool: v2}
        backends:
          - {pool: v1, weight: 90}
          - {pool: v2, weight: 10}
        timeouts: {request: 5s, backendRequest: 1s}
      - matches:
          - path: {type: PathPrefix, value: /old}
        filters:
          - type: RequestRedirect
            requestRedirect:
              scheme: https
              path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}
              statusCode: 301
"#;

fn err(yaml: &str) -> String {
    RouteFile::from_yaml(yaml).expect_err("refused").to_string()
}

#[test]
fn parses_every_part_of_a_rule() {
    let file = RouteFile::from_yaml(EXAMPLE).expect("example parses");
    assert!(file.pools[0].backend_only);
    let route = &file.routes[0];
    assert_eq!(route.order, 3);
    let rule = &route.rules[0];
    let m = &rule.matches[0];
    assert_eq!(m.path, Some(PathMatch::Exact("/cart".into())));
    assert_eq!(m.method, Some(Method::Post));
    assert!(!m.headers[0].regex && m.headers[1].regex);
    assert_eq!(m.query_params[0].name, "debug");
    assert_eq!(rule.backends[0].weight, 90);
    assert!(matches!(
        &rule.filters[1],
        Filter::UrlRewrite(UrlRewrite { path: Some(PathModifier::ReplaceFullPath(p)), .. }) if p == "/basket"
    ));
    let Filter::RequestRedirect(r) = &route.rules[1].filters[0] else {
        panic!("a redirect");
    };
    assert_eq!(r.status_code.get(), 301);
    assert_eq!(r.scheme, Some(Scheme::Https));
    let timeouts = rule.timeouts.as_ref().expect("timeouts");
    assert_eq!(timeouts.backend_request, Some(Duration::from_secs(1)));
}

#[test]
fn routes_round_trip_through_a_stream_snapshot() {
    let file = RouteFile::from_yaml(EXAMPLE).expect("example parses");
    let table = RouteTable::from_parts(4, file.pools, file.routes);
    let ev = RouteEvent::Snapshot(table.snapshot());
    let back = RouteEvent::from_sse(ev.name(), &ev.to_json()).expect("parses");
    assert_eq!(back, ev);
    let mut applied = RouteTable::default();
    applied.apply(back).expect("applies");
    assert_eq!(applied, table);
}

#[test]
fn a_delta_carries_route_changes_and_a_bad_one_changes_nothing() {
    let file = RouteFile::from_yaml(EXAMPLE).expect("example parses");
    let old = RouteTable::from_parts(1, file.pools.clone(), file.routes.clone());
    let mut changed = file.routes[0].clone();
    changed.rules[0].backends[0].weight = 50;
    changed.name = "shop2".into();
    let new = RouteTable::from_parts(2, file.pools, vec![changed.clone()]);
    let delta = old.diff(&new);
    assert_eq!(delta.route_upserts, vec![changed]);
    assert_eq!(delta.route_removes, vec!["shop".to_string()]);
    assert!(delta.upserts.is_empty() && delta.removes.is_empty());
    let json = RouteEvent::Delta(delta.clone()).to_json();
    assert!(json.contains("\"routeUpserts\""), "{json}");
    let mut t = old.clone();
    t.apply(RouteEvent::Delta(delta)).expect("applies");
    assert_eq!(t, new);

    // A rule that redirects and also has backends is refused whole.
    let mut bad = new.routes["shop2"].clone();
    bad.rules[1].backends.push(Backend {
        pool: "v1".into(),
        weight: 1,
    });
    let before = t.clone();
    let e = t
        .apply(RouteEvent::Delta(Delta {
            version: 3,
            base: 2,
            route_upserts: vec![bad],
            removes: vec!["v1".into()],
            ..Delta::default()
        }))
        .expect_err("refused");
    assert!(e.to_string().contains("takes no backends"), "{e}");
    assert_eq!(t, before);
}

#[test]
fn a_table_without_routes_serializes_as_before() {
    let json = r#"{"version":1,"pools":[{"name":"a","pathPrefix":"/","algorithm":"RoundRobin","endpoints":[]}]}"#;
    let ev = RouteEvent::from_sse("snapshot", json).expect("old snapshot parses");
    assert_eq!(ev.to_json(), json);
    let delta = r#"{"version":2,"base":1,"upserts":[],"removes":["a"]}"#;
    let ev = RouteEvent::from_sse("delta", delta).expect("old delta parses");
    assert_eq!(ev.to_json(), delta);
}

#[test]
fn values_are_refused_with_their_line() {
    let e = err(&EXAMPLE.replace("\"[a-z]+\"", "\"[a-z\""));
    assert!(
        e.contains("invalid regular expression") && e.contains("line 15"),
        "{e}"
    );
    let e = err(&EXAMPLE.replace("statusCode: 301", "statusCode: 200"));
    assert!(
        e.contains("200 is not a redirect") && e.contains("line 41"),
        "{e}"
    );
    let e = err(&EXAMPLE.replace("value: /cart", "value: cart"));
    assert!(
        e.contains("must start with '/'") && e.contains("line 11"),
        "{e}"
    );
    let e = err(&EXAMPLE.replace("method: POST", "method: FETCH"));
    assert!(e.contains("FETCH") && e.contains("line 12"), "{e}");
    let e = err(&EXAMPLE.replace("name: x-canary", "name: \"x canary\""));
    assert!(e.contains("not a valid header"), "{e}");
    let e = err(&EXAMPLE.replace("requestMirror: {pool: v2}", "urlRewrite: {}"));
    assert!(e.contains("needs `requestMirror`"), "{e}");
    let e = err(&EXAMPLE.replace("weight: 90", "wieght: 90"));
    assert!(e.contains("wieght"), "{e}");
}

#[test]
fn rules_that_do_not_fit_together_are_refused() {
    let e = err(&EXAMPLE.replace("type: PathPrefix, value: /old", "type: Exact, value: /old"));
    assert!(e.contains("ReplacePrefixMatch needs every match"), "{e}");
    assert!(e.contains("route \"shop\": rules[1]"), "{e}");
    let e = err(&EXAMPLE.replace("backendRequest: 1s", "backendRequest: 10s"));
    assert!(e.contains("longer than request"), "{e}");
    let twice = EXAMPLE.replace("x-user", "X-Canary");
    assert!(err(&twice).contains("listed twice"));
    let e = err(&EXAMPLE.replace(
        "{name: v1, backendOnly: true,",
        "{name: v1, backendOnly: true, hosts: [a.b],",
    ));
    assert!(e.contains("backendOnly"), "{e}");
    let e = err(&format!("{EXAMPLE}  - name: shop\n    rules: [{{}}]\n"));
    assert!(e.contains("\"shop\" is used by more than one route"), "{e}");
    let e = err("routes:\n  - {name: empty, rules: []}\n");
    assert!(e.contains("at least one rule"), "{e}");
}

#[test]
fn regexes_match_whole_values_and_huge_ones_are_refused() {
    let re = compile("/a+").expect("compiles");
    assert!(re.is_match("/aaa"));
    assert!(!re.is_match("/aaab") && !re.is_match("x/a"));
    let e = compile("(a{1000}){1000}").expect_err("too big");
    assert!(e.contains("invalid regular expression"), "{e}");
    assert!(compile(&"a".repeat(MAX_PATTERN_LEN + 1)).is_err());
}

#[test]
fn listeners_and_a_route_certificate_are_checked() {
    let file = RouteFile::from_yaml(
        "routes:\n  - name: r\n    listeners: [https]\n    tls: {certificate: CERT, privateKey: KEY}\n    rules: [{backends: [{pool: p}]}]\n",
    )
    .expect("valid");
    let route = &file.routes[0];
    assert!(route.serves(Listener::Https) && !route.serves(Listener::Http));
    let both = RouteFile::from_yaml("routes:\n  - name: r\n    rules: [{backends: [{pool: p}]}]\n")
        .expect("valid");
    assert!(both.routes[0].serves(Listener::Http) && both.routes[0].serves(Listener::Https));

    let e = err(
        "routes:\n  - name: r\n    listeners: [http]\n    tls: {certificate: CERT, privateKey: KEY}\n    rules: [{backends: [{pool: p}]}]\n",
    );
    assert!(e.contains("not served on the https listener"), "{e}");
    let e = err(
        "routes:\n  - name: r\n    tls: {certificate: CERT, privateKey: KEY, clientCA: CA}\n    rules: [{backends: [{pool: p}]}]\n",
    );
    assert!(e.contains("client CAs belong to pools"), "{e}");
    let e =
        err("routes:\n  - name: r\n    listeners: [ftp]\n    rules: [{backends: [{pool: p}]}]\n");
    assert!(e.contains("ftp"), "{e}");
}
