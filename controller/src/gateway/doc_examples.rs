//! The Gateway API guide's examples (`examples/gateway/`, shown verbatim in
//! `docs/gateway-api.md` and `docs/migrate-ingress-nginx.md`) read by the
//! controller as a user applies them: CI has kube-apiserver validate their
//! schema (`charts/lint.py`); these tests check that the controller accepts
//! them and serves what the guide says they serve, so a change to either
//! side that makes the guide untrue fails here.

use serde_json::{Value, json};
use sluice_protocol::Listener;

use super::*;
use crate::route::tests::{CRT, Fixture, KEY, service, slice, tls_secret};

const GATEWAY: &str = include_str!("../../../examples/gateway/gateway.yaml");
const TLS_CROSS_NAMESPACE: &str =
    include_str!("../../../examples/gateway/tls-cross-namespace.yaml");
const FIRST_ROUTE: &str = include_str!("../../../examples/gateway/first-route.yaml");
const CANARY_WEIGHT: &str = include_str!("../../../examples/gateway/canary-weight.yaml");
const CANARY_HEADER: &str = include_str!("../../../examples/gateway/canary-header.yaml");
const HTTPS_REDIRECT: &str = include_str!("../../../examples/gateway/https-redirect.yaml");
const POOL_BACKEND: &str = include_str!("../../../examples/gateway/pool-backend.yaml");
const FROM_INGRESS_NGINX: &str = include_str!("../../../examples/gateway/from-ingress-nginx.yaml");

/// Every example that holds routes, by file name.
const ROUTE_FILES: [(&str, &str); 6] = [
    ("first-route.yaml", FIRST_ROUTE),
    ("canary-weight.yaml", CANARY_WEIGHT),
    ("canary-header.yaml", CANARY_HEADER),
    ("https-redirect.yaml", HTTPS_REDIRECT),
    ("pool-backend.yaml", POOL_BACKEND),
    ("from-ingress-nginx.yaml", FROM_INGRESS_NGINX),
];

/// The BackendPools the examples create (their own validity is the
/// BackendPool path's business, tested in `route.rs`).
struct ExamplePools;

impl Pools for ExamplePools {
    fn pool_exists(&self, key: &Key) -> bool {
        key.0 == "shop" && (key.1 == "api" || key.1 == "shop-api")
    }
}

/// The cluster the guide assumes: the `sluice` class (from the chart),
/// namespaces `shop` and `sluice-system`, Services `web`, `web-canary` and
/// `api` on port 80 in `shop`, and the two certificates' Secrets.
struct Cluster {
    world: World,
    fx: Fixture,
}

impl Cluster {
    fn new() -> Self {
        let mut world = World::default();
        world.classes.insert(
            "sluice".into(),
            object(json!({
                "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
                "metadata": {"name": "sluice"},
                "spec": {"controllerName": CONTROLLER_NAME},
            })),
        );
        for ns in ["shop", "sluice-system"] {
            world.namespaces.insert(
                ns.into(),
                [("kubernetes.io/metadata.name".to_string(), ns.to_string())].into(),
            );
        }
        let mut fx = Fixture::default();
        for (i, name) in ["web", "web-canary", "api"].into_iter().enumerate() {
            fx.services.insert(
                ("shop".into(), name.into()),
                service("shop", name, &[("http", 80)]),
            );
            let ip = format!("10.0.{i}.1");
            fx.slices.push(slice(
                "shop",
                &format!("{name}-1"),
                name,
                "http",
                8080,
                &[(&ip, true, false)],
            ));
        }
        for (ns, name) in [("sluice-system", "example-com-tls"), ("shop", "shop-tls")] {
            fx.secrets
                .insert((ns.into(), name.into()), tls_secret(ns, name, CRT, KEY));
        }
        Self { world, fx }
    }

    /// Applies an example file's Gateway API objects, in file order (each
    /// one created a second after the previous one).
    fn apply(&mut self, text: &str) {
        let docs: Vec<Value> = serde_saphyr::from_multiple(text)
            .unwrap_or_else(|e| panic!("an example does not parse: {e}"));
        for mut doc in docs {
            let n = self.world.gateways.len() + self.world.routes.len() + self.world.grants.len();
            doc["metadata"]["generation"] = json!(1);
            doc["metadata"]["creationTimestamp"] = json!(format!("2026-01-01T00:00:{n:02}Z"));
            let key = (
                doc["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                doc["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            );
            match doc["kind"].as_str() {
                Some("Gateway") => {
                    self.world.gateways.insert(key, object(doc));
                }
                Some("HTTPRoute") => {
                    self.world.routes.insert(key, object(doc));
                }
                Some("ReferenceGrant") => {
                    self.world.grants.insert(key, object(doc));
                }
                Some("BackendPool" | "ScalingTrigger") => {}
                other => panic!("an example holds a {other:?}"),
            }
        }
    }

    /// The guide's two Gateways and `text`'s objects.
    fn with(text: &str) -> Self {
        let mut c = Self::new();
        c.apply(GATEWAY);
        c.apply(TLS_CROSS_NAMESPACE);
        c.apply(text);
        c
    }

    fn run(&self) -> Output {
        translate(&self.world, &Config::default(), &self.fx, &ExamplePools)
    }
}

fn object<T: serde::de::DeserializeOwned>(doc: Value) -> T {
    serde_json::from_value(doc.clone()).unwrap_or_else(|e| panic!("{doc}: {e}"))
}

fn verdict<'a>(vs: &'a [Verdict], t: &str) -> &'a Verdict {
    vs.iter()
        .find(|v| v.type_ == t)
        .unwrap_or_else(|| panic!("no {t} in {vs:?}"))
}

fn route<'a>(out: &'a Output, name: &str) -> &'a HttpRoute {
    out.http_routes
        .iter()
        .find(|r| r.name == name)
        .unwrap_or_else(|| {
            let names: Vec<&str> = out.http_routes.iter().map(|r| r.name.as_str()).collect();
            panic!("no published route {name} among {names:?}")
        })
}

fn hosts(r: &HttpRoute) -> Vec<&str> {
    r.hosts.iter().map(|h| h.as_str()).collect()
}

#[test]
fn every_example_is_accepted_with_every_reference_resolved() {
    for (file, text) in ROUTE_FILES {
        let out = Cluster::with(text).run();
        for (key, gw) in &out.gateways {
            let accepted = verdict(&gw.conditions, "Accepted");
            assert!(accepted.ok, "{file}: Gateway {key:?}: {accepted:?}");
            for l in &gw.listeners {
                for c in &l.conditions {
                    assert_eq!(
                        c.ok,
                        c.type_ != "Conflicted",
                        "{file}: {key:?} listener {}: {c:?}",
                        l.name
                    );
                }
            }
        }
        let mut routes = 0;
        for (key, parents) in &out.routes {
            for p in parents {
                for t in ["Accepted", "ResolvedRefs"] {
                    let v = verdict(&p.conditions, t);
                    assert!(
                        v.ok,
                        "{file}: HTTPRoute {key:?} parent {}: {v:?}",
                        p.parent_ref
                    );
                }
            }
            routes += 1;
        }
        assert!(routes > 0, "{file}: no route of ours");
    }
}

#[test]
fn the_first_route_serves_its_host_on_both_listeners() {
    let out = Cluster::with(FIRST_ROUTE).run();
    let http = route(&out, "shop/web");
    assert_eq!(http.listeners, [Listener::Http]);
    assert_eq!(hosts(http), ["shop.example.com"]);
    let https = route(&out, "shop/web#https");
    assert_eq!(https.listeners, [Listener::Https]);
    assert_eq!(hosts(https), ["shop.example.com"]);
    assert!(
        https.tls.is_some(),
        "the HTTPS piece carries the listener's certificate"
    );
    assert_eq!(http.rules[0].backends[0].pool, "service:shop/web:80");
}

#[test]
fn the_canary_examples_split_by_weight_and_by_header() {
    let out = Cluster::with(CANARY_WEIGHT).run();
    let backends: Vec<(&str, u32)> = route(&out, "shop/web").rules[0]
        .backends
        .iter()
        .map(|b| (b.pool.as_str(), b.weight))
        .collect();
    assert_eq!(
        backends,
        [
            ("service:shop/web:80", 90),
            ("service:shop/web-canary:80", 10)
        ]
    );

    let out = Cluster::with(CANARY_HEADER).run();
    let rules = &route(&out, "shop/web").rules;
    assert_eq!(
        rules[0].matches[0].headers[0].name.to_ascii_lowercase(),
        "x-canary"
    );
    assert_eq!(rules[0].backends[0].pool, "service:shop/web-canary:80");
    assert_eq!(rules[1].backends[0].pool, "service:shop/web:80");
}

#[test]
fn the_redirect_is_served_on_http_only_and_the_application_on_https_only() {
    let out = Cluster::with(HTTPS_REDIRECT).run();
    let names: BTreeSet<&str> = out
        .http_routes
        .iter()
        .filter(|r| r.name.starts_with("shop/"))
        .map(|r| r.name.as_str())
        .collect();
    assert_eq!(
        names,
        BTreeSet::from(["shop/web-redirect", "shop/web#https"])
    );
    assert_eq!(route(&out, "shop/web-redirect").listeners, [Listener::Http]);
    assert_eq!(route(&out, "shop/web#https").listeners, [Listener::Https]);
}

#[test]
fn the_certificate_in_the_application_namespace_needs_the_reference_grant() {
    let out = Cluster::with(FIRST_ROUTE).run();
    let shop = &out.gateways[&("sluice-system".to_string(), "shop".to_string())];
    assert!(verdict(&shop.listeners[0].conditions, "ResolvedRefs").ok);
    assert!(shop.listeners[0].certificate.is_some());

    let mut c = Cluster::with(FIRST_ROUTE);
    c.world.grants.clear();
    let out = c.run();
    let shop = &out.gateways[&("sluice-system".to_string(), "shop".to_string())];
    let resolved = verdict(&shop.listeners[0].conditions, "ResolvedRefs");
    assert_eq!((resolved.ok, resolved.reason), (false, "RefNotPermitted"));
    assert!(shop.listeners[0].certificate.is_none());
}

#[test]
fn a_route_to_a_backend_pool_names_the_pool_and_makes_it_backend_only() {
    let out = Cluster::with(POOL_BACKEND).run();
    let api = route(&out, "shop/api");
    assert_eq!(api.rules[0].backends[0].pool, "shop/api");
    assert!(
        out.named_pools
            .contains(&("shop".to_string(), "api".to_string()))
    );

    let out = Cluster::with(FROM_INGRESS_NGINX).run();
    assert_eq!(
        route(&out, "shop/shop#https").rules[0].backends[0].pool,
        "shop/shop-api"
    );
    assert_eq!(
        route(&out, "shop/shop-redirect").listeners,
        [Listener::Http]
    );
    assert!(
        out.http_routes.iter().all(|r| r.name != "shop/shop"),
        "the translated Ingress is served on HTTPS only"
    );
}

#[test]
fn the_example_backend_pools_resolve_with_their_policies() {
    for (file, text) in [
        ("pool-backend.yaml", POOL_BACKEND),
        ("from-ingress-nginx.yaml", FROM_INGRESS_NGINX),
    ] {
        let docs: Vec<Value> = serde_saphyr::from_multiple(text)
            .unwrap_or_else(|e| panic!("{file} does not parse: {e}"));
        let pools: Vec<&Value> = docs.iter().filter(|d| d["kind"] == "BackendPool").collect();
        assert_eq!(pools.len(), 1, "{file}");
        let spec: sluice_crds::BackendPoolSpec = object(pools[0]["spec"].clone());
        let name = pools[0]["metadata"]["name"].as_str().unwrap_or_default();
        let resolved = crate::route::compute("shop", name, &spec, &Cluster::new().fx)
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(
            resolved.unresolved.is_empty(),
            "{file}: {:?}",
            resolved.unresolved
        );
        assert_eq!(resolved.route.endpoints.len(), 1, "{file}");
    }
}
