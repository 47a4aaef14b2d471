//! Which listeners an HTTPRoute attaches to (parentRefs with `sectionName`
//! and `port`, `allowedRoutes`, hostnames), and the route it becomes.

use std::collections::{BTreeMap, BTreeSet};

use kube::ResourceExt;
use sluice_crds::gateway::gateways::GatewayListenersAllowedRoutes;
use sluice_crds::gateway::httproutes::{HttpRoute as HTTPRoute, HttpRouteParentRefs};
use sluice_protocol::policy::Tls;
use sluice_protocol::route::Host;
use sluice_protocol::{HttpRoute, Listener};

use super::rules::{self, Translated};
use super::{GROUP, Output, ParentState, Pools, Verdict, World};
use crate::key::Key;
use crate::route::Lookup;

/// Attaches every route, fills in `attachedRoutes`, route status and the
/// table's routes.
pub fn routes(world: &World, lookup: &impl Lookup, pools: &impl Pools, out: &mut Output) {
    // Age rank: creation time, then namespace/name.
    let mut ranked: Vec<(&Key, &HTTPRoute)> = world.routes.iter().collect();
    ranked.sort_by_key(|(k, r)| {
        (
            r.metadata
                .creation_timestamp
                .as_ref()
                .map_or(i64::MAX, |t| t.0.as_second()),
            (*k).clone(),
        )
    });
    for (rank, (key, route)) in ranked.into_iter().enumerate() {
        let parents = route.spec.parent_refs.clone().unwrap_or_default();
        let mut states = Vec::new();
        // Hosts served on the HTTP listener, and on the HTTPS listener
        // per certificate.
        let mut http_hosts: Option<BTreeSet<String>> = None;
        let mut https_hosts: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
        let mut accepted_any = false;
        // Listeners this route attached to: counted once each, however
        // many parentRefs lead there.
        let mut counted: BTreeSet<(Key, usize)> = BTreeSet::new();
        let translated = rules::translate(key, route, world, lookup, pools);
        if let Ok(t) = &translated {
            out.watched.services.extend(t.services.iter().cloned());
        }
        for parent in &parents {
            let Some(attached) = attach(key, route, parent, world, out) else {
                continue;
            };
            let mut conditions = Vec::new();
            match (&attached, &translated) {
                (Err(v), _) => conditions.push(v.clone()),
                (Ok(_), Err(unsupported)) => conditions.push(unsupported.clone()),
                (Ok(listeners), Ok(_)) => {
                    conditions.push(Verdict::new(
                        "Accepted",
                        true,
                        "Accepted",
                        "the route is attached",
                    ));
                    accepted_any = true;
                    let gw = gateway_key(key, parent);
                    if let Some(state) = out.gateways.get_mut(&gw) {
                        for (i, h) in listeners {
                            let l = &mut state.listeners[*i];
                            if counted.insert((gw.clone(), *i)) {
                                l.attached_routes += 1;
                            }
                            match &l.certificate {
                                Some(cert) => https_hosts
                                    .entry(cert.clone())
                                    .or_default()
                                    .extend(h.iter().cloned()),
                                None => {
                                    http_hosts.get_or_insert_default().extend(h.iter().cloned())
                                }
                            }
                        }
                    }
                }
            }
            conditions.push(match &translated {
                Ok(t) => t.resolved.clone(),
                Err(_) => Verdict::new(
                    "ResolvedRefs",
                    true,
                    "ResolvedRefs",
                    "not examined: the route is not accepted",
                ),
            });
            states.push(ParentState {
                parent_ref: serde_json::to_value(parent).unwrap_or_default(),
                conditions,
            });
        }
        if states.is_empty() {
            continue;
        }
        out.routes.insert(key.clone(), states);
        if let (
            true,
            Ok(Translated {
                rules,
                named_pools,
                service_pools,
                ..
            }),
        ) = (accepted_any, translated)
        {
            let name = format!("{}/{}", key.0, key.1);
            let mut pieces: Vec<(String, Listener, BTreeSet<String>, Option<Tls>)> = Vec::new();
            if let Some(hosts) = http_hosts {
                pieces.push((name.clone(), Listener::Http, hosts, None));
            }
            for (i, ((certificate, private_key), hosts)) in https_hosts.into_iter().enumerate() {
                let tls = Tls {
                    certificate: Some(certificate),
                    private_key: Some(private_key),
                    ..Tls::default()
                };
                let piece = if i == 0 {
                    format!("{name}#https")
                } else {
                    format!("{name}#https-{i}")
                };
                pieces.push((piece, Listener::Https, hosts, Some(tls)));
            }
            for (name, listener, hosts, tls) in pieces {
                let parsed: Vec<Host> = hosts
                    .iter()
                    .filter_map(|h| Host::try_from(h.clone()).ok())
                    .collect();
                if parsed.len() != hosts.len() {
                    // Not expected (the CRD checks hostnames); never widen
                    // a route to every host because one did not parse.
                    continue;
                }
                out.http_routes.push(HttpRoute {
                    name,
                    hosts: if hosts.contains("*") { vec![] } else { parsed },
                    order: rank as u64,
                    rules: rules.clone(),
                    listeners: vec![listener],
                    tls,
                });
            }
            out.named_pools.extend(named_pools);
            for pool in service_pools {
                if !out.pools.iter().any(|p| p.name == pool.name) {
                    out.pools.push(pool);
                }
            }
        }
    }
}

fn gateway_key(route: &Key, parent: &HttpRouteParentRefs) -> Key {
    (
        parent.namespace.clone().unwrap_or_else(|| route.0.clone()),
        parent.name.clone(),
    )
}

/// `None`: not a parent of ours (no status entry). `Err`: ours, not
/// attached, and why. `Ok`: the listeners attached to (by index) with the
/// hostnames the route serves through each (`*` for any).
#[allow(clippy::type_complexity)]
fn attach(
    key: &Key,
    route: &HTTPRoute,
    parent: &HttpRouteParentRefs,
    world: &World,
    out: &Output,
) -> Option<Result<Vec<(usize, BTreeSet<String>)>, Verdict>> {
    if parent.group.as_deref().unwrap_or(GROUP) != GROUP
        || parent.kind.as_deref().unwrap_or("Gateway") != "Gateway"
    {
        return None;
    }
    let gw_key = gateway_key(key, parent);
    let state = out.gateways.get(&gw_key)?;
    let gw = world.gateways.get(&gw_key)?;
    let not = |reason, message: String| Some(Err(Verdict::new("Accepted", false, reason, message)));
    let candidates: Vec<usize> = gw
        .spec
        .listeners
        .iter()
        .enumerate()
        .filter(|(_, l)| parent.section_name.as_deref().is_none_or(|s| s == l.name))
        .filter(|(_, l)| parent.port.is_none_or(|p| p == l.port))
        .map(|(i, _)| i)
        .collect();
    if candidates.is_empty() {
        return not(
            "NoMatchingParent",
            format!(
                "Gateway {}/{} has no listener{}{}",
                gw_key.0,
                gw_key.1,
                parent
                    .section_name
                    .as_ref()
                    .map(|s| format!(" named {s}"))
                    .unwrap_or_default(),
                parent
                    .port
                    .map(|p| format!(" on port {p}"))
                    .unwrap_or_default(),
            ),
        );
    }
    let allowed: Vec<usize> = candidates
        .into_iter()
        .filter(|i| state.listeners[*i].usable)
        .filter(|i| {
            allows(
                gw.spec.listeners[*i].allowed_routes.as_ref(),
                &gw_key.0,
                &key.0,
                world,
            )
        })
        .filter(|i| {
            state.listeners[*i]
                .supported_kinds
                .iter()
                .any(|(g, k)| g == GROUP && k == "HTTPRoute")
        })
        .collect();
    if allowed.is_empty() {
        return not(
            "NotAllowedByListeners",
            format!(
                "no listener of Gateway {}/{} allows this route",
                gw_key.0, gw_key.1
            ),
        );
    }
    let route_hosts = route.spec.hostnames.clone().unwrap_or_default();
    let mut attached = Vec::new();
    for i in allowed {
        let found = intersect(&route_hosts, state.listeners[i].hostname.as_deref());
        if !found.is_empty() {
            attached.push((i, found));
        }
    }
    if attached.is_empty() {
        return not(
            "NoMatchingListenerHostname",
            format!(
                "no hostname of the route matches a listener of Gateway {}/{}",
                gw_key.0, gw_key.1
            ),
        );
    }
    Some(Ok(attached))
}

/// Whether `allowedRoutes.namespaces` lets a route of `route_ns` attach to
/// a listener of a Gateway in `gw_ns` (`Same` by default).
pub fn allows(
    allowed: Option<&GatewayListenersAllowedRoutes>,
    gw_ns: &str,
    route_ns: &str,
    world: &World,
) -> bool {
    let ns = allowed.and_then(|a| a.namespaces.as_ref());
    let from = ns
        .and_then(|n| n.from.as_ref())
        .and_then(|f| serde_json::to_value(f).ok())
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| "Same".into());
    match from.as_str() {
        "All" => true,
        "Same" => gw_ns == route_ns,
        "Selector" => {
            let Some(selector) = ns.and_then(|n| n.selector.as_ref()) else {
                return false;
            };
            let empty = BTreeMap::new();
            let labels = world.namespaces.get(route_ns).unwrap_or(&empty);
            let labels_ok = selector
                .match_labels
                .iter()
                .flatten()
                .all(|(k, v)| labels.get(k) == Some(v));
            let exprs_ok = selector.match_expressions.iter().flatten().all(|e| {
                let values = e.values.clone().unwrap_or_default();
                let value = labels.get(&e.key);
                match e.operator.as_str() {
                    "In" => value.is_some_and(|v| values.contains(v)),
                    "NotIn" => value.is_none_or(|v| !values.contains(v)),
                    "Exists" => value.is_some(),
                    "DoesNotExist" => value.is_none(),
                    _ => false,
                }
            });
            labels_ok && exprs_ok
        }
        _ => false,
    }
}

/// The hostnames a route with `route` hostnames serves through a listener
/// with `listener` hostname: the spec's intersection (a wildcard matches
/// one or more labels). `*` stands for any host.
pub fn intersect(route: &[String], listener: Option<&str>) -> BTreeSet<String> {
    let lower = |s: &str| s.to_ascii_lowercase();
    match (route.is_empty(), listener) {
        (true, None) => ["*".to_string()].into(),
        (true, Some(l)) => [lower(l)].into(),
        (false, None) => route.iter().map(|h| lower(h)).collect(),
        (false, Some(l)) => {
            let l = lower(l);
            route
                .iter()
                .map(|h| lower(h))
                .filter_map(|h| {
                    if h == l || covers(&l, &h) {
                        Some(h)
                    } else if covers(&h, &l) {
                        Some(l.clone())
                    } else {
                        None
                    }
                })
                .collect()
        }
    }
}

/// Whether wildcard `pattern` (`*.suffix`) matches `host`, a name or a
/// narrower wildcard.
fn covers(pattern: &str, host: &str) -> bool {
    let Some(suffix) = pattern.strip_prefix('*') else {
        return false;
    };
    let host = host.strip_prefix('*').unwrap_or(host);
    host.len() > suffix.len() && host.ends_with(suffix)
}

/// The route's namespace and name, for messages.
pub fn name_of(route: &HTTPRoute) -> String {
    format!(
        "{}/{}",
        route.namespace().unwrap_or_default(),
        route.name_any()
    )
}
