//! An HTTPRoute's rules as the protocol's rules: matches and filters
//! (read as JSON: the protocol writes them in Gateway API's own shape and
//! refuses unknown fields), and backendRefs resolved to pools.

use std::collections::BTreeSet;

use serde_json::{Map, Value};
use sluice_crds::BackendPoolSpec;
use sluice_crds::gateway::httproutes::HttpRoute as HTTPRoute;
use sluice_protocol::PoolRoute;
use sluice_protocol::http_route::{Backend, Filter, RouteMatch, Rule, RuleTimeouts};

use super::{GROUP, Pools, Verdict, World};
use crate::key::Key;
use crate::route::{self, Lookup};

/// The API group of BackendPools.
pub const SLUICE_GROUP: &str = "sluice.io";

/// Fields of a rule Sluice acts on; any other one set makes the route
/// `UnsupportedValue`.
const RULE_FIELDS: [&str; 5] = ["name", "matches", "filters", "backendRefs", "timeouts"];
/// Fields of a backendRef Sluice acts on.
const BACKEND_FIELDS: [&str; 6] = ["group", "kind", "name", "namespace", "port", "weight"];

/// A route's rules, translated.
#[derive(Debug)]
pub struct Translated {
    /// The protocol's rules.
    pub rules: Vec<Rule>,
    /// `ResolvedRefs`.
    pub resolved: Verdict,
    /// BackendPools named.
    pub named_pools: BTreeSet<Key>,
    /// Pools of the Services named.
    pub service_pools: Vec<PoolRoute>,
    /// Every Service named, resolved or not: a change to one of them
    /// (or its slices) may change the route.
    pub services: BTreeSet<Key>,
}

/// A reference that did not resolve: its reason and message.
type Unresolved = (&'static str, String);

/// The name of the backend-only pool of a Service port.
pub fn service_pool_name(namespace: &str, name: &str, port: i32) -> String {
    format!("service:{namespace}/{name}:{port}")
}

/// Translates `route`'s rules; `Err` is `Accepted=False, UnsupportedValue`.
pub fn translate(
    key: &Key,
    route: &HTTPRoute,
    world: &World,
    lookup: &impl Lookup,
    pools: &impl Pools,
) -> Result<Translated, Verdict> {
    let unsupported = |m: String| Verdict::new("Accepted", false, "UnsupportedValue", m);
    let spec = serde_json::to_value(&route.spec).map_err(|e| unsupported(e.to_string()))?;
    let raw_rules = spec
        .get("rules")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut out = Translated {
        rules: Vec::new(),
        resolved: Verdict::new(
            "ResolvedRefs",
            true,
            "ResolvedRefs",
            "every backend resolved",
        ),
        named_pools: BTreeSet::new(),
        service_pools: Vec::new(),
        services: BTreeSet::new(),
    };
    let mut problems: Vec<Unresolved> = Vec::new();
    if raw_rules.is_empty() {
        // The API server defaults one rule; a route without is answered 404.
        return Err(unsupported(
            "spec.rules: a route needs at least one rule".into(),
        ));
    }
    for (i, raw) in raw_rules.iter().enumerate() {
        let at = format!("spec.rules[{i}]");
        let obj = raw.as_object().cloned().unwrap_or_default();
        only(&obj, &RULE_FIELDS, &at).map_err(unsupported)?;
        let matches: Vec<RouteMatch> = read(&obj, "matches", &at).map_err(unsupported)?;
        let timeouts: Option<RuleTimeouts> = read(&obj, "timeouts", &at).map_err(unsupported)?;
        let mut filters = Vec::new();
        for (j, f) in obj
            .get("filters")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let at = format!("{at}.filters[{j}]");
            filters.push(
                filter(key, f, &at, world, lookup, pools, &mut out, &mut problems)
                    .map_err(unsupported)?,
            );
        }
        let mut backends = Vec::new();
        for (j, b) in obj
            .get("backendRefs")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let at = format!("{at}.backendRefs[{j}]");
            let b = b.as_object().cloned().unwrap_or_default();
            only(&b, &BACKEND_FIELDS, &at).map_err(unsupported)?;
            if b.get("filters")
                .and_then(Value::as_array)
                .is_some_and(|f| !f.is_empty())
            {
                return Err(unsupported(format!(
                    "{at}.filters: filters per backend are not supported"
                )));
            }
            let weight = b.get("weight").and_then(Value::as_u64).unwrap_or(1);
            let weight = u32::try_from(weight).unwrap_or(u32::MAX);
            let pool = match backend(key, &b, &at, world, lookup, pools, &mut out) {
                Ok(pool) => pool,
                Err(problem) => {
                    problems.push(problem);
                    // No pool of this name: its share is answered 500.
                    format!("unresolved:{}/{}/{at}", key.0, key.1)
                }
            };
            backends.push(Backend { pool, weight });
        }
        out.rules.push(Rule {
            matches,
            filters,
            backends,
            timeouts,
        });
    }
    // What the dataplane checks across fields (a redirect without
    // backends, ReplacePrefixMatch with a PathPrefix, timeouts in order).
    let probe = sluice_protocol::HttpRoute {
        name: format!("{}/{}", key.0, key.1),
        hosts: vec![],
        order: 0,
        rules: out.rules.clone(),
        ..Default::default()
    };
    sluice_protocol::http_route::validate_routes(std::slice::from_ref(&probe))
        .map_err(|e| unsupported(e.to_string()))?;
    if let Some((reason, _)) = problems.first() {
        out.resolved = Verdict::new(
            "ResolvedRefs",
            false,
            reason,
            problems
                .iter()
                .map(|(_, m)| m.as_str())
                .collect::<Vec<_>>()
                .join("; "),
        );
    }
    Ok(out)
}

/// Refuses fields of `obj` outside `known` that are set.
fn only(obj: &Map<String, Value>, known: &[&str], at: &str) -> Result<(), String> {
    match obj
        .iter()
        .find(|(k, v)| !known.contains(&k.as_str()) && !v.is_null())
    {
        Some((k, _)) => Err(format!("{at}.{k}: not supported by Sluice")),
        None => Ok(()),
    }
}

/// Reads `field` of `obj` as the protocol's type (absent: its default).
fn read<T: serde::de::DeserializeOwned + Default>(
    obj: &Map<String, Value>,
    field: &str,
    at: &str,
) -> Result<T, String> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(T::default()),
        Some(v) => serde_json::from_value(v.clone()).map_err(|e| format!("{at}.{field}: {e}")),
    }
}

#[allow(clippy::too_many_arguments)]
fn filter(
    key: &Key,
    f: &Value,
    at: &str,
    world: &World,
    lookup: &impl Lookup,
    pools: &impl Pools,
    out: &mut Translated,
    problems: &mut Vec<Unresolved>,
) -> Result<Filter, String> {
    let kind = f.get("type").and_then(Value::as_str).unwrap_or_default();
    if kind != "RequestMirror" {
        return serde_json::from_value(f.clone()).map_err(|e| format!("{at}: {e}"));
    }
    let mirror = f
        .get("requestMirror")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    only(&mirror, &["backendRef"], &format!("{at}.requestMirror"))?;
    let b = mirror
        .get("backendRef")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let at = format!("{at}.requestMirror.backendRef");
    only(&b, &BACKEND_FIELDS, &at)?;
    let pool = backend(key, &b, &at, world, lookup, pools, out).unwrap_or_else(|problem| {
        problems.push(problem);
        format!("unresolved:{}/{}/{at}", key.0, key.1)
    });
    serde_json::from_value(
        serde_json::json!({"type": "RequestMirror", "requestMirror": {"pool": pool}}),
    )
    .map_err(|e| format!("{at}: {e}"))
}

/// Resolves one backendRef to a pool name.
fn backend(
    key: &Key,
    b: &Map<String, Value>,
    at: &str,
    world: &World,
    lookup: &impl Lookup,
    pools: &impl Pools,
    out: &mut Translated,
) -> Result<String, Unresolved> {
    let s = |f: &str| b.get(f).and_then(Value::as_str).map(str::to_string);
    let group = s("group").unwrap_or_default();
    let kind = s("kind").unwrap_or_else(|| "Service".into());
    let name = s("name").unwrap_or_default();
    let ns = s("namespace").unwrap_or_else(|| key.0.clone());
    let port = b.get("port").and_then(Value::as_i64);
    let target = match (group.as_str(), kind.as_str()) {
        ("", "Service") => {
            out.services.insert((ns.clone(), name.clone()));
            "Service"
        }
        (SLUICE_GROUP, "BackendPool") => "BackendPool",
        _ => {
            return Err((
                "InvalidKind",
                format!("{at}: {group}/{kind} is not a Service or a sluice.io BackendPool"),
            ));
        }
    };
    if ns != key.0 && !world.granted(GROUP, "HTTPRoute", &key.0, &group, target, (&ns, &name)) {
        return Err((
            "RefNotPermitted",
            format!(
                "{at}: no ReferenceGrant in {ns} lets HTTPRoutes of {} use {target} {ns}/{name}",
                key.0
            ),
        ));
    }
    if target == "BackendPool" {
        let pool = (ns.clone(), name.clone());
        if !pools.pool_exists(&pool) {
            return Err((
                "BackendNotFound",
                format!("{at}: BackendPool {ns}/{name} not found"),
            ));
        }
        if port.is_some() {
            return Err((
                "BackendNotFound",
                format!("{at}.port: a BackendPool brings its own ports; leave port out"),
            ));
        }
        out.named_pools.insert(pool);
        return Ok(format!("{ns}/{name}"));
    }
    let Some(port) = port.and_then(|p| i32::try_from(p).ok()) else {
        return Err((
            "BackendNotFound",
            format!("{at}.port: a Service backend needs a port"),
        ));
    };
    let spec: BackendPoolSpec = serde_json::from_value(serde_json::json!({
        "backends": [{"service": name, "port": port}],
    }))
    .map_err(|e| ("BackendNotFound", format!("{at}: {e}")))?;
    // The dataplane speaks plain HTTP/1.1 to endpoints (WebSocket upgrades
    // included): a port declaring another protocol cannot be served.
    let app_protocol = lookup
        .service(&ns, &name)
        .and_then(|s| s.spec.as_ref())
        .and_then(|s| s.ports.as_ref())
        .and_then(|ps| ps.iter().find(|p| p.port == port))
        .and_then(|p| p.app_protocol.clone());
    if let Some(proto) = app_protocol
        && !matches!(
            proto.to_ascii_lowercase().as_str(),
            "http" | "kubernetes.io/ws"
        )
    {
        return Err((
            "UnsupportedProtocol",
            format!(
                "{at}: Service {ns}/{name} port {port} has appProtocol {proto}; Sluice speaks HTTP/1.1 to endpoints"
            ),
        ));
    }
    let pool_name = service_pool_name(&ns, &name, port);
    let resolved = route::compute(&ns, &name, &spec, lookup)
        .map_err(|e| ("BackendNotFound", format!("{at}: {e}")))?;
    if let Some(u) = resolved.unresolved.first() {
        return Err((
            "BackendNotFound",
            format!("{at}: {}", u.message.replace("spec.backends[0]: ", "")),
        ));
    }
    let mut pool = resolved.route;
    pool.name = pool_name.clone();
    pool.backend_only = true;
    if !out.service_pools.iter().any(|p| p.name == pool_name) {
        out.service_pools.push(pool);
    }
    Ok(pool_name)
}
