//! The translation, fed objects as a user writes them (JSON), read back as
//! the status and table a user would check.

use std::collections::BTreeSet;

use serde_json::{Value, json};
use sluice_protocol::Listener;
use sluice_protocol::http_route::{Filter, PathMatch};

use super::*;
use crate::route::tests::{CRT, Fixture, KEY, service, slice, tls_secret};

/// The BackendPools that exist.
#[derive(Default)]
struct Existing(BTreeSet<Key>);

impl Pools for Existing {
    fn pool_exists(&self, key: &Key) -> bool {
        self.0.contains(key)
    }
}

fn obj<T: serde::de::DeserializeOwned>(
    kind: &str,
    ns: Option<&str>,
    name: &str,
    created: i64,
    spec: Value,
) -> T {
    let version = if kind == "ReferenceGrant" {
        "v1beta1"
    } else {
        "v1"
    };
    let mut metadata = json!({"name": name, "generation": 2,
        "creationTimestamp": format!("2026-01-01T00:{:02}:{:02}Z", created / 60, created % 60)});
    if let Some(ns) = ns {
        metadata["namespace"] = json!(ns);
    }
    serde_json::from_value(json!({
        "apiVersion": format!("gateway.networking.k8s.io/{version}"),
        "kind": kind,
        "metadata": metadata,
        "spec": spec,
    }))
    .unwrap_or_else(|e| panic!("{kind} {name}: {e}"))
}

/// A world with the `sluice` class, the Service `app/web` (port 80 →
/// 10.0.0.1:8080) and the Services `app/v1`, `app/v2`.
struct Setup {
    world: World,
    fx: Fixture,
    pools: Existing,
}

impl Setup {
    fn new() -> Self {
        let mut world = World::default();
        world.classes.insert(
            "sluice".into(),
            obj(
                "GatewayClass",
                None,
                "sluice",
                0,
                json!({"controllerName": CONTROLLER_NAME}),
            ),
        );
        world.classes.insert(
            "other".into(),
            obj(
                "GatewayClass",
                None,
                "other",
                0,
                json!({"controllerName": "example.com/other"}),
            ),
        );
        let mut fx = Fixture::default();
        for (name, ip) in [("web", "10.0.0.1"), ("v1", "10.0.1.1"), ("v2", "10.0.2.1")] {
            fx.services.insert(
                ("app".into(), name.into()),
                service("app", name, &[("http", 80)]),
            );
            fx.slices.push(slice(
                "app",
                &format!("{name}-1"),
                name,
                "http",
                8080,
                &[(ip, true, false)],
            ));
        }
        Self {
            world,
            fx,
            pools: Existing::default(),
        }
    }

    /// A valid TLS Secret `ns/name` in the cluster.
    fn tls_secret(&mut self, ns: &str, name: &str) {
        self.fx
            .secrets
            .insert((ns.into(), name.into()), tls_secret(ns, name, CRT, KEY));
    }

    fn gateway(&mut self, ns: &str, name: &str, listeners: Value) {
        self.world.gateways.insert(
            (ns.into(), name.into()),
            obj(
                "Gateway",
                Some(ns),
                name,
                0,
                json!({"gatewayClassName": "sluice", "listeners": listeners}),
            ),
        );
    }

    fn route(&mut self, ns: &str, name: &str, created: i64, spec: Value) {
        self.world.routes.insert(
            (ns.into(), name.into()),
            obj("HTTPRoute", Some(ns), name, created, spec),
        );
    }

    fn run(&self) -> Output {
        translate(&self.world, &Config::default(), &self.fx, &self.pools)
    }
}

fn http(name: &str, hostname: Option<&str>) -> Value {
    let mut l = json!({"name": name, "protocol": "HTTP", "port": 80});
    if let Some(h) = hostname {
        l["hostname"] = json!(h);
    }
    l
}

fn cond<'a>(vs: &'a [Verdict], t: &str) -> (bool, &'a str) {
    let v = vs
        .iter()
        .find(|v| v.type_ == t)
        .unwrap_or_else(|| panic!("no {t} in {vs:?}"));
    (v.ok, v.reason)
}

fn parent(out: &Output, ns: &str, name: &str) -> Vec<Verdict> {
    out.routes[&(ns.to_string(), name.to_string())][0]
        .conditions
        .clone()
}

fn hosts(out: &Output, name: &str) -> Vec<String> {
    out.http_routes
        .iter()
        .find(|r| r.name == name)
        .unwrap_or_else(|| panic!("no route {name}"))
        .hosts
        .iter()
        .map(|h| h.as_str().to_string())
        .collect()
}

#[test]
fn only_our_class_is_accepted_and_lists_what_works() {
    let mut s = Setup::new();
    s.gateway("infra", "gw", json!([http("web", None)]));
    s.world.gateways.insert(
        ("infra".into(), "theirs".into()),
        obj(
            "Gateway",
            Some("infra"),
            "theirs",
            0,
            json!({"gatewayClassName": "other", "listeners": [http("web", None)]}),
        ),
    );
    let out = s.run();
    assert_eq!(out.classes.keys().collect::<Vec<_>>(), ["sluice"]);
    assert_eq!(cond(&out.classes["sluice"], "Accepted"), (true, "Accepted"));
    assert_eq!(
        out.gateways
            .keys()
            .map(|k| k.1.as_str())
            .collect::<Vec<_>>(),
        ["gw"]
    );
    let mut sorted = SUPPORTED_FEATURES.to_vec();
    sorted.sort();
    assert_eq!(
        sorted, SUPPORTED_FEATURES,
        "the spec asks for ascending order"
    );
}

#[test]
fn listeners_off_the_fleets_ports_or_protocols_are_refused() {
    let mut s = Setup::new();
    s.gateway(
        "infra",
        "gw",
        json!([
            http("ok", None),
            {"name": "odd-port", "protocol": "HTTP", "port": 8080},
            {"name": "tcp", "protocol": "TCP", "port": 80},
            {"name": "tls-missing", "protocol": "HTTPS", "port": 443, "hostname": "a.example.com",
             "tls": {"certificateRefs": [{"name": "nope"}]}},
            {"name": "bad-kind", "protocol": "HTTP", "port": 80, "hostname": "k.example.com",
             "allowedRoutes": {"kinds": [{"kind": "TCPRoute"}]}},
        ]),
    );
    let out = s.run();
    let gw = &out.gateways[&("infra".to_string(), "gw".to_string())];
    let l = |i: usize| &gw.listeners[i].conditions;
    assert_eq!(cond(l(0), "Accepted"), (true, "Accepted"));
    assert_eq!(cond(l(0), "Programmed"), (true, "Programmed"));
    assert_eq!(cond(l(1), "Accepted"), (false, "PortUnavailable"));
    assert_eq!(cond(l(2), "Accepted"), (false, "UnsupportedProtocol"));
    assert_eq!(cond(l(3), "ResolvedRefs"), (false, "InvalidCertificateRef"));
    assert_eq!(cond(l(3), "Programmed"), (false, "Invalid"));
    assert_eq!(cond(l(4), "ResolvedRefs"), (false, "InvalidRouteKinds"));
    assert!(gw.listeners[4].supported_kinds.is_empty());
    assert_eq!(
        cond(&gw.conditions, "Accepted"),
        (true, "ListenersNotValid")
    );
}

#[test]
fn a_certificate_in_another_namespace_needs_a_reference_grant() {
    let mut s = Setup::new();
    s.tls_secret("certs", "shop");
    s.gateway(
        "infra",
        "gw",
        json!([{"name": "https", "protocol": "HTTPS", "port": 443,
                "tls": {"certificateRefs": [{"name": "shop", "namespace": "certs"}]}}]),
    );
    let out = s.run();
    let l = &out.gateways[&("infra".to_string(), "gw".to_string())].listeners[0];
    assert_eq!(
        cond(&l.conditions, "ResolvedRefs"),
        (false, "RefNotPermitted")
    );
    assert!(l.certificate.is_none());

    s.world.grants.insert(
        ("certs".into(), "g".into()),
        obj(
            "ReferenceGrant",
            Some("certs"),
            "g",
            0,
            json!({
                "from": [{"group": GROUP, "kind": "Gateway", "namespace": "infra"}],
                "to": [{"group": "", "kind": "Secret"}],
            }),
        ),
    );
    let out = s.run();
    let l = &out.gateways[&("infra".to_string(), "gw".to_string())].listeners[0];
    assert_eq!(cond(&l.conditions, "ResolvedRefs"), (true, "ResolvedRefs"));
    assert_eq!(l.certificate.as_ref().map(|c| c.0.as_str()), Some(CRT));
}

#[test]
fn hostnames_intersect_as_the_spec_says() {
    let i = |r: &[&str], l: Option<&str>| {
        attach::intersect(&r.iter().map(|s| s.to_string()).collect::<Vec<_>>(), l)
            .into_iter()
            .collect::<Vec<_>>()
    };
    assert_eq!(i(&[], None), ["*"]);
    assert_eq!(i(&[], Some("*.example.com")), ["*.example.com"]);
    assert_eq!(i(&["a.example.com"], None), ["a.example.com"]);
    assert_eq!(
        i(&["A.example.com", "b.other.com"], Some("*.example.com")),
        ["a.example.com"]
    );
    assert_eq!(
        i(&["*.example.com"], Some("a.example.com")),
        ["a.example.com"]
    );
    assert_eq!(
        i(&["*.b.example.com"], Some("*.example.com")),
        ["*.b.example.com"]
    );
    assert_eq!(
        i(&["x.deep.example.com"], Some("*.example.com")),
        ["x.deep.example.com"]
    );
    assert!(i(&["example.com"], Some("*.example.com")).is_empty());
    assert!(i(&["a.other.com"], Some("a.example.com")).is_empty());
}

#[test]
fn a_route_attaches_by_section_name_and_port_and_counts_on_its_listener() {
    let mut s = Setup::new();
    s.gateway(
        "app",
        "gw",
        json!([
            http("a", Some("a.example.com")),
            http("b", Some("b.example.com"))
        ]),
    );
    let backend = json!([{"backendRefs": [{"name": "web", "port": 80}]}]);
    s.route(
        "app",
        "to-b",
        1,
        json!({"parentRefs": [{"name": "gw", "sectionName": "b"}], "rules": backend}),
    );
    s.route(
        "app",
        "by-port",
        2,
        json!({"parentRefs": [{"name": "gw", "port": 80}], "rules": backend}),
    );
    s.route(
        "app",
        "no-such",
        3,
        json!({"parentRefs": [{"name": "gw", "sectionName": "c"}], "rules": backend}),
    );
    s.route(
        "app",
        "wrong-host",
        4,
        json!({"parentRefs": [{"name": "gw"}], "hostnames": ["c.example.com"], "rules": backend}),
    );
    s.route(
        "app",
        "elsewhere",
        5,
        json!({"parentRefs": [{"name": "gw", "namespace": "other"}], "rules": backend}),
    );
    let out = s.run();
    assert_eq!(
        cond(&parent(&out, "app", "to-b"), "Accepted"),
        (true, "Accepted")
    );
    assert_eq!(hosts(&out, "app/to-b"), ["b.example.com"]);
    assert_eq!(
        hosts(&out, "app/by-port"),
        ["a.example.com", "b.example.com"]
    );
    assert_eq!(
        cond(&parent(&out, "app", "no-such"), "Accepted"),
        (false, "NoMatchingParent")
    );
    assert_eq!(
        cond(&parent(&out, "app", "wrong-host"), "Accepted"),
        (false, "NoMatchingListenerHostname")
    );
    assert!(
        !out.routes
            .contains_key(&("app".to_string(), "elsewhere".to_string())),
        "no status for a Gateway we do not know"
    );
    let gw = &out.gateways[&("app".to_string(), "gw".to_string())];
    assert_eq!(
        gw.listeners
            .iter()
            .map(|l| l.attached_routes)
            .collect::<Vec<_>>(),
        [1, 2]
    );
    // Age rank: older routes first.
    let orders: Vec<(String, u64)> = out
        .http_routes
        .iter()
        .map(|r| (r.name.clone(), r.order))
        .collect();
    assert_eq!(
        orders,
        [("app/to-b".to_string(), 0), ("app/by-port".to_string(), 1)]
    );
}

#[test]
fn allowed_routes_same_all_and_selector() {
    let mut s = Setup::new();
    s.world.namespaces.insert(
        "team-a".into(),
        [("team".to_string(), "a".to_string())].into(),
    );
    s.world.namespaces.insert(
        "team-b".into(),
        [("team".to_string(), "b".to_string())].into(),
    );
    s.gateway(
        "infra",
        "gw",
        json!([
            http("same", Some("same.example.com")),
            {"name": "all", "protocol": "HTTP", "port": 80, "hostname": "all.example.com",
             "allowedRoutes": {"namespaces": {"from": "All"}}},
            {"name": "sel", "protocol": "HTTP", "port": 80, "hostname": "sel.example.com",
             "allowedRoutes": {"namespaces": {"from": "Selector", "selector": {"matchLabels": {"team": "a"}}}}},
        ]),
    );
    for ns in ["infra", "team-a", "team-b"] {
        s.fx.services.insert(
            (ns.into(), "web".into()),
            service(ns, "web", &[("http", 80)]),
        );
        s.route(
            ns,
            "r",
            1,
            json!({"parentRefs": [{"name": "gw", "namespace": "infra"}],
            "rules": [{"backendRefs": [{"name": "web", "port": 80}]}]}),
        );
    }
    let out = s.run();
    assert_eq!(
        hosts(&out, "infra/r"),
        ["all.example.com", "same.example.com"]
    );
    assert_eq!(
        hosts(&out, "team-a/r"),
        ["all.example.com", "sel.example.com"]
    );
    assert_eq!(hosts(&out, "team-b/r"), ["all.example.com"]);

    let gw = s
        .world
        .gateways
        .get_mut(&("infra".into(), "gw".into()))
        .expect("gw");
    gw.spec.listeners.truncate(1);
    let out = s.run();
    assert_eq!(
        cond(&parent(&out, "team-b", "r"), "Accepted"),
        (false, "NotAllowedByListeners")
    );
    assert!(out.http_routes.iter().all(|r| r.name != "team-b/r"));
}

#[test]
fn weighted_backends_become_service_pools_and_invalid_ones_keep_their_share() {
    let mut s = Setup::new();
    s.gateway("app", "gw", json!([http("web", None)]));
    s.route(
        "app",
        "canary",
        1,
        json!({"parentRefs": [{"name": "gw"}], "rules": [{
            "matches": [{"path": {"type": "PathPrefix", "value": "/api"}, "headers": [{"name": "x-env", "value": "canary"}]}],
            "filters": [{"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "x-via", "value": "sluice"}]}}],
            "backendRefs": [
                {"name": "v1", "port": 80, "weight": 90},
                {"name": "v2", "port": 80, "weight": 10},
                {"name": "gone", "port": 80, "weight": 5},
            ],
            "timeouts": {"request": "10s", "backendRequest": "2s"},
        }]}),
    );
    let out = s.run();
    let rule = &out.http_routes[0].rules[0];
    let backends: Vec<(&str, u32)> = rule
        .backends
        .iter()
        .map(|b| (b.pool.as_str(), b.weight))
        .collect();
    assert_eq!(
        backends[..2],
        [("service:app/v1:80", 90), ("service:app/v2:80", 10)]
    );
    assert_eq!(
        backends[2].1, 5,
        "the missing Service's share is kept, so it is answered 500"
    );
    assert!(
        out.pools.iter().all(|p| p.name != backends[2].0),
        "and no pool carries it"
    );
    assert_eq!(
        rule.matches[0].path,
        Some(PathMatch::PathPrefix("/api".into()))
    );
    assert!(matches!(rule.filters[0], Filter::RequestHeaderModifier(_)));
    assert_eq!(
        rule.timeouts
            .as_ref()
            .and_then(|t| t.request.map(|d| d.to_string()))
            .as_deref(),
        Some("10s")
    );
    let pools: Vec<(&str, bool, Vec<String>)> = out
        .pools
        .iter()
        .map(|p| {
            (
                p.name.as_str(),
                p.backend_only,
                p.endpoints.iter().map(|e| e.address.to_string()).collect(),
            )
        })
        .collect();
    assert_eq!(
        pools,
        [
            ("service:app/v1:80", true, vec!["10.0.1.1:8080".to_string()]),
            ("service:app/v2:80", true, vec!["10.0.2.1:8080".to_string()]),
        ]
    );
    let p = parent(&out, "app", "canary");
    assert_eq!(cond(&p, "Accepted"), (true, "Accepted"));
    assert_eq!(cond(&p, "ResolvedRefs"), (false, "BackendNotFound"));
}

#[test]
fn cross_namespace_backends_need_a_grant_and_wrong_kinds_are_invalid() {
    let mut s = Setup::new();
    s.gateway(
        "edge",
        "gw",
        json!([{"name": "web", "protocol": "HTTP", "port": 80,
        "allowedRoutes": {"namespaces": {"from": "All"}}}]),
    );
    s.route(
        "edge",
        "r",
        1,
        json!({"parentRefs": [{"name": "gw"}], "rules": [
            {"backendRefs": [{"name": "web", "namespace": "app", "port": 80}]},
            {"matches": [{"path": {"type": "Exact", "value": "/k"}}],
             "backendRefs": [{"group": "example.com", "kind": "Bucket", "name": "b"}]},
        ]}),
    );
    let out = s.run();
    let p = parent(&out, "edge", "r");
    assert_eq!(cond(&p, "ResolvedRefs"), (false, "RefNotPermitted"));
    assert!(
        p.iter()
            .any(|v| v.message.contains("InvalidKind") || v.message.contains("example.com/Bucket"))
    );
    assert!(out.pools.is_empty());

    s.world.grants.insert(
        ("app".into(), "g".into()),
        obj(
            "ReferenceGrant",
            Some("app"),
            "g",
            0,
            json!({
                "from": [{"group": GROUP, "kind": "HTTPRoute", "namespace": "edge"}],
                "to": [{"group": "", "kind": "Service", "name": "web"}],
            }),
        ),
    );
    let out = s.run();
    assert_eq!(
        out.pools
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>(),
        ["service:app/web:80"]
    );
    assert_eq!(
        cond(&parent(&out, "edge", "r"), "ResolvedRefs"),
        (false, "InvalidKind")
    );
}

#[test]
fn a_backend_pool_ref_names_the_pool_and_unsupported_fields_are_refused() {
    let mut s = Setup::new();
    s.pools.0.insert(("app".into(), "checkout".into()));
    s.gateway("app", "gw", json!([http("web", None)]));
    s.route(
        "app",
        "r",
        1,
        json!({"parentRefs": [{"name": "gw"}], "rules": [
            {"backendRefs": [{"group": "sluice.io", "kind": "BackendPool", "name": "checkout"}]},
        ]}),
    );
    s.route(
        "app",
        "cors",
        2,
        json!({"parentRefs": [{"name": "gw"}], "rules": [
            {"filters": [{"type": "CORS", "cors": {"allowOrigins": ["https://a.example.com"]}}],
             "backendRefs": [{"name": "web", "port": 80}]},
        ]}),
    );
    let out = s.run();
    let r = out
        .http_routes
        .iter()
        .find(|r| r.name == "app/r")
        .expect("route");
    assert_eq!(r.rules[0].backends[0].pool, "app/checkout");
    assert!(
        out.named_pools
            .contains(&("app".to_string(), "checkout".to_string()))
    );
    let p = parent(&out, "app", "cors");
    assert_eq!(cond(&p, "Accepted"), (false, "UnsupportedValue"));
    assert!(p[0].message.contains("filters[0]"), "{}", p[0].message);
    assert!(
        out.http_routes.iter().all(|r| r.name != "app/cors"),
        "not published at all"
    );
}

#[test]
fn a_route_on_both_listeners_becomes_one_route_per_listener_with_the_certificate() {
    let mut s = Setup::new();
    s.tls_secret("app", "cert");
    s.gateway(
        "app",
        "gw",
        json!([
            http("http", Some("shop.example.com")),
            {"name": "https", "protocol": "HTTPS", "port": 443, "hostname": "shop.example.com",
             "tls": {"certificateRefs": [{"name": "cert"}]}},
        ]),
    );
    s.route("app", "redirect", 1, json!({"parentRefs": [{"name": "gw", "sectionName": "http"}],
        "rules": [{"filters": [{"type": "RequestRedirect", "requestRedirect": {"scheme": "https", "statusCode": 301}}]}]}));
    s.route(
        "app",
        "shop",
        2,
        json!({"parentRefs": [{"name": "gw", "sectionName": "https"}],
        "rules": [{"backendRefs": [{"name": "web", "port": 80}]}]}),
    );
    let out = s.run();
    let summary: Vec<(String, Vec<Listener>, Vec<String>, bool)> = out
        .http_routes
        .iter()
        .map(|r| {
            (
                r.name.clone(),
                r.listeners.clone(),
                r.hosts.iter().map(|h| h.as_str().to_string()).collect(),
                r.tls.as_ref().and_then(|t| t.certificate.as_deref()) == Some(CRT),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (
                "app/redirect".to_string(),
                vec![Listener::Http],
                vec!["shop.example.com".to_string()],
                false
            ),
            (
                "app/shop#https".to_string(),
                vec![Listener::Https],
                vec!["shop.example.com".to_string()],
                true
            ),
        ]
    );
    let redirect = &out.http_routes[0].rules[0];
    assert!(
        matches!(&redirect.filters[0], Filter::RequestRedirect(r) if r.status_code.get() == 301)
    );
}

#[test]
fn gateway_fields_sluice_lacks_are_refused_not_ignored() {
    let mut s = Setup::new();
    s.tls_secret("infra", "cert");
    s.world.gateways.insert(
        ("infra".into(), "gw".into()),
        obj("Gateway", Some("infra"), "gw", 0, json!({"gatewayClassName": "sluice",
            "infrastructure": {"labels": {"team": "a"}},
            "listeners": [{"name": "https", "protocol": "HTTPS", "port": 443,
                "tls": {"certificateRefs": [{"name": "cert"}], "options": {"example.com/cipher": "x"}}}]})),
    );
    s.route(
        "infra",
        "r",
        1,
        json!({"parentRefs": [{"name": "gw"}],
        "rules": [{"backendRefs": [{"name": "web", "port": 80}]}]}),
    );
    s.fx.services.insert(
        ("infra".into(), "web".into()),
        service("infra", "web", &[("http", 80)]),
    );
    let out = s.run();
    assert_eq!(
        cond(&parent(&out, "infra", "r"), "Accepted"),
        (false, "NotAllowedByListeners")
    );
    assert!(
        out.http_routes.is_empty(),
        "nothing is served through a Gateway that is not accepted"
    );
    let gw = &out.gateways[&("infra".to_string(), "gw".to_string())];
    assert_eq!(
        cond(&gw.conditions, "Accepted"),
        (false, "UnsupportedValue")
    );
    assert!(gw.conditions[0].message.contains("infrastructure"));
    assert_eq!(
        cond(&gw.listeners[0].conditions, "Accepted"),
        (false, "UnsupportedValue")
    );
}

#[test]
fn a_route_counts_once_on_a_listener_however_many_parent_refs_lead_there() {
    let mut s = Setup::new();
    s.gateway("app", "gw", json!([http("web", None)]));
    s.route(
        "app",
        "twice",
        1,
        json!({
        "parentRefs": [{"name": "gw"}, {"name": "gw", "sectionName": "web"}],
        "rules": [{"backendRefs": [{"name": "web", "port": 80}]}]}),
    );
    let out = s.run();
    assert_eq!(
        out.gateways[&("app".to_string(), "gw".to_string())].listeners[0].attached_routes,
        1
    );
    assert_eq!(
        out.routes[&("app".to_string(), "twice".to_string())].len(),
        2,
        "a status entry per parentRef"
    );
}

#[test]
fn a_service_port_of_another_app_protocol_is_unsupported() {
    let mut s = Setup::new();
    let mut svc = service("app", "grpc", &[("h2c", 50051)]);
    if let Some(ports) = svc.spec.as_mut().and_then(|sp| sp.ports.as_mut()) {
        ports[0].app_protocol = Some("kubernetes.io/h2c".into());
    }
    s.fx.services.insert(("app".into(), "grpc".into()), svc);
    s.gateway("app", "gw", json!([http("web", None)]));
    s.route(
        "app",
        "r",
        1,
        json!({"parentRefs": [{"name": "gw"}],
        "rules": [{"backendRefs": [{"name": "grpc", "port": 50051}]}]}),
    );
    let out = s.run();
    let p = parent(&out, "app", "r");
    assert_eq!(cond(&p, "ResolvedRefs"), (false, "UnsupportedProtocol"));
    assert!(out.pools.is_empty());
}

#[test]
fn a_listener_with_some_invalid_route_kinds_still_serves_http_routes() {
    let mut s = Setup::new();
    s.gateway(
        "app",
        "gw",
        json!([{"name": "mixed", "protocol": "HTTP", "port": 80,
        "allowedRoutes": {"kinds": [{"kind": "InvalidRoute"}, {"kind": "HTTPRoute"}]}}]),
    );
    s.route(
        "app",
        "r",
        1,
        json!({"parentRefs": [{"name": "gw"}],
        "rules": [{"backendRefs": [{"name": "web", "port": 80}]}]}),
    );
    let out = s.run();
    let l = &out.gateways[&("app".to_string(), "gw".to_string())].listeners[0];
    assert_eq!(
        cond(&l.conditions, "ResolvedRefs"),
        (false, "InvalidRouteKinds")
    );
    assert_eq!(cond(&l.conditions, "Programmed"), (true, "Programmed"));
    assert_eq!(
        l.supported_kinds,
        [(GROUP.to_string(), "HTTPRoute".to_string())]
    );
    assert_eq!(l.attached_routes, 1);
    assert_eq!(
        cond(&parent(&out, "app", "r"), "Accepted"),
        (true, "Accepted")
    );
}

#[test]
fn nothing_attaches_to_a_gateway_that_is_not_accepted() {
    let mut s = Setup::new();
    s.world.gateways.insert(
        ("app".into(), "gw".into()),
        obj(
            "Gateway",
            Some("app"),
            "gw",
            0,
            json!({"gatewayClassName": "sluice",
            "addresses": [{"type": "IPAddress", "value": "192.0.2.1"}],
            "listeners": [http("web", None)]}),
        ),
    );
    s.route(
        "app",
        "r",
        1,
        json!({"parentRefs": [{"name": "gw"}],
        "rules": [{"backendRefs": [{"name": "web", "port": 80}]}]}),
    );
    let out = s.run();
    let gw = &out.gateways[&("app".to_string(), "gw".to_string())];
    assert_eq!(
        cond(&gw.conditions, "Accepted"),
        (false, "UnsupportedAddress")
    );
    assert_eq!(
        cond(&gw.listeners[0].conditions, "Programmed"),
        (false, "Invalid")
    );
    assert_eq!(
        cond(&parent(&out, "app", "r"), "Accepted"),
        (false, "NotAllowedByListeners")
    );
    assert!(out.http_routes.is_empty());
}
