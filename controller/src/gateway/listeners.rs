//! A Gateway's listeners: which are accepted on the fleet's ports, their
//! certificates, the route kinds they take and their conflicts.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Service;
use sluice_crds::gateway::gateways::{Gateway, GatewayListeners};

use super::{Config, GROUP, GatewayState, ListenerState, Verdict, World};
use crate::key::Key;
use crate::route::{Lookup, certificate_of};

/// The listener's protocol as this controller serves it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Served {
    Http,
    Https,
}

/// The Gateway's status, apart from `Programmed` (the writer adds it).
pub fn gateway_state(
    key: &Key,
    gw: &Gateway,
    world: &World,
    config: &Config,
    lookup: &impl Lookup,
) -> GatewayState {
    let mut listeners: Vec<ListenerState> = gw
        .spec
        .listeners
        .iter()
        .map(|l| listener(key, l, world, config, lookup))
        .collect();
    conflicts(&mut listeners);
    for l in &mut listeners {
        // Route kinds partly invalid: the listener still serves the kinds
        // it supports (ResolvedRefs stays False to say so).
        let kinds_left = !l.supported_kinds.is_empty();
        let ok = l.conditions.iter().all(|c| {
            c.ok == (c.type_ != "Conflicted") || (c.reason == "InvalidRouteKinds" && kinds_left)
        });
        l.usable = ok;
        l.conditions.push(if ok {
            Verdict::new(
                "Programmed",
                true,
                "Programmed",
                "served by the Sluice dataplanes",
            )
        } else {
            Verdict::new("Programmed", false, "Invalid", "the listener is not valid")
        });
    }
    let addresses = config
        .dataplane_service
        .as_ref()
        .and_then(|(ns, name)| lookup.service(ns, name))
        .map(addresses_of)
        .unwrap_or_default();
    let mut conditions = Vec::new();
    if let Some(field) = unsupported(gw) {
        conditions.push(Verdict::new(
            "Accepted",
            false,
            "UnsupportedValue",
            format!("spec.{field}: not supported by Sluice"),
        ));
    } else if gw.spec.addresses.as_ref().is_some_and(|a| !a.is_empty()) {
        conditions.push(Verdict::new(
            "Accepted",
            false,
            "UnsupportedAddress",
            "spec.addresses: the Gateway's addresses are those of the dataplane Service; none can be requested",
        ));
    } else if listeners.iter().all(|l| l.usable) {
        conditions.push(Verdict::new(
            "Accepted",
            true,
            "Accepted",
            "the Gateway is served by the Sluice dataplanes",
        ));
    } else {
        let bad: Vec<&str> = listeners
            .iter()
            .filter(|l| !l.usable)
            .map(|l| l.name.as_str())
            .collect();
        conditions.push(Verdict::new(
            "Accepted",
            true,
            "ListenersNotValid",
            format!("listeners not valid: {}", bad.join(", ")),
        ));
    }
    if !conditions[0].ok {
        // Routes attach to no listener of a Gateway that is not accepted.
        for l in &mut listeners {
            l.usable = false;
            if let Some(p) = l.conditions.iter_mut().find(|c| c.type_ == "Programmed") {
                *p = Verdict::new(
                    "Programmed",
                    false,
                    "Invalid",
                    "the Gateway is not accepted",
                );
            }
        }
    }
    GatewayState {
        conditions,
        listeners,
        addresses,
    }
}

/// The first Gateway field set that Sluice does not implement: ListenerSets
/// (`allowedListeners` other than `None`), `infrastructure` (Sluice
/// creates no per-Gateway resources to label) and Gateway-level `tls`.
fn unsupported(gw: &Gateway) -> Option<&'static str> {
    use sluice_crds::gateway::gateways::GatewayAllowedListenersNamespacesFrom as From;
    let listener_sets = gw
        .spec
        .allowed_listeners
        .as_ref()
        .and_then(|a| a.namespaces.as_ref())
        .and_then(|n| n.from.as_ref())
        .is_some_and(|f| *f != From::None);
    if listener_sets {
        Some("allowedListeners")
    } else if gw.spec.infrastructure.is_some() {
        Some("infrastructure")
    } else if gw.spec.tls.is_some() {
        Some("tls")
    } else {
        None
    }
}

/// LoadBalancer ingress IPs and hostnames, else the clusterIPs.
pub fn addresses_of(svc: &Service) -> Vec<(String, String)> {
    let ingress = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref());
    let mut out: Vec<(String, String)> = ingress
        .into_iter()
        .flatten()
        .flat_map(|i| {
            let ip = i.ip.clone().map(|v| ("IPAddress".to_string(), v));
            let host = i.hostname.clone().map(|v| ("Hostname".to_string(), v));
            ip.into_iter().chain(host)
        })
        .collect();
    if out.is_empty() {
        let spec = svc.spec.as_ref();
        let ips = spec
            .and_then(|s| s.cluster_ips.clone())
            .or_else(|| spec.and_then(|s| s.cluster_ip.clone()).map(|ip| vec![ip]))
            .unwrap_or_default();
        out = ips
            .into_iter()
            .filter(|ip| !ip.is_empty() && ip != "None")
            .map(|ip| ("IPAddress".to_string(), ip))
            .collect();
    }
    out
}

fn listener(
    key: &Key,
    l: &GatewayListeners,
    world: &World,
    config: &Config,
    lookup: &impl Lookup,
) -> ListenerState {
    let mut state = ListenerState {
        name: l.name.clone(),
        protocol: l.protocol.clone(),
        hostname: l.hostname.clone(),
        usable: false,
        supported_kinds: Vec::new(),
        attached_routes: 0,
        conditions: Vec::new(),
        certificate: None,
    };
    let port = u16::try_from(l.port).unwrap_or(0);
    let served = match l.protocol.as_str() {
        "HTTP" => Some(Served::Http),
        "HTTPS" => Some(Served::Https),
        _ => None,
    };
    let accepted = match served {
        None => Verdict::new(
            "Accepted",
            false,
            "UnsupportedProtocol",
            format!(
                "protocol {}: Sluice serves HTTP and HTTPS listeners",
                l.protocol
            ),
        ),
        Some(Served::Http) if port != config.http_port => Verdict::new(
            "Accepted",
            false,
            "PortUnavailable",
            format!(
                "port {}: HTTP is served on the dataplane Service's port {}",
                l.port, config.http_port
            ),
        ),
        Some(Served::Https) if port != config.https_port => Verdict::new(
            "Accepted",
            false,
            "PortUnavailable",
            format!(
                "port {}: HTTPS is served on the dataplane Service's port {}",
                l.port, config.https_port
            ),
        ),
        Some(Served::Https)
            if l.tls
                .as_ref()
                .and_then(|t| t.mode.as_ref())
                .is_some_and(|m| {
                    serde_json::to_value(m)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .as_deref()
                        != Some("Terminate")
                }) =>
        {
            Verdict::new(
                "Accepted",
                false,
                "UnsupportedProtocol",
                "tls.mode: only Terminate is supported",
            )
        }
        Some(Served::Https)
            if l.tls
                .as_ref()
                .and_then(|t| t.options.as_ref())
                .is_some_and(|o| !o.is_empty()) =>
        {
            Verdict::new(
                "Accepted",
                false,
                "UnsupportedValue",
                "tls.options: no implementation-specific TLS options are supported",
            )
        }
        Some(Served::Http) if l.tls.is_some() => Verdict::new(
            "Accepted",
            false,
            "UnsupportedProtocol",
            "tls: an HTTP listener takes no tls",
        ),
        Some(_) => Verdict::new("Accepted", true, "Accepted", "the listener is served"),
    };
    state.conditions.push(accepted);

    // Route kinds.
    let mut resolved: Option<Verdict> = None;
    let kinds = l.allowed_routes.as_ref().and_then(|a| a.kinds.as_ref());
    match kinds {
        None => state
            .supported_kinds
            .push((GROUP.into(), "HTTPRoute".into())),
        Some(kinds) => {
            let mut invalid = Vec::new();
            for k in kinds {
                let group = k.group.clone().unwrap_or_else(|| GROUP.into());
                if group == GROUP && k.kind == "HTTPRoute" {
                    if !state
                        .supported_kinds
                        .contains(&(group.clone(), k.kind.clone()))
                    {
                        state.supported_kinds.push((group, k.kind.clone()));
                    }
                } else {
                    invalid.push(format!("{group}/{}", k.kind));
                }
            }
            if !invalid.is_empty() {
                resolved = Some(Verdict::new(
                    "ResolvedRefs",
                    false,
                    "InvalidRouteKinds",
                    format!("allowedRoutes.kinds: not supported: {}", invalid.join(", ")),
                ));
            }
        }
    }

    // Certificates.
    if served == Some(Served::Https) && resolved.is_none() {
        match certificate(key, l, world, lookup) {
            Ok(pair) => state.certificate = Some(pair),
            Err(v) => resolved = Some(v),
        }
    }
    state.conditions.push(resolved.unwrap_or_else(|| {
        Verdict::new(
            "ResolvedRefs",
            true,
            "ResolvedRefs",
            "every reference resolved",
        )
    }));
    state
}

/// The first certificateRef, resolved (Sluice serves one certificate per
/// listener; further refs are refused rather than ignored).
fn certificate(
    key: &Key,
    l: &GatewayListeners,
    world: &World,
    lookup: &impl Lookup,
) -> Result<(String, String), Verdict> {
    let invalid = |m: String| Verdict::new("ResolvedRefs", false, "InvalidCertificateRef", m);
    let refs = l
        .tls
        .as_ref()
        .and_then(|t| t.certificate_refs.as_ref())
        .filter(|r| !r.is_empty())
        .ok_or_else(|| {
            invalid("tls.certificateRefs: an HTTPS listener needs a certificate".into())
        })?;
    if refs.len() > 1 {
        return Err(invalid(
            "tls.certificateRefs: Sluice serves one certificate per listener".into(),
        ));
    }
    let r = &refs[0];
    let group = r.group.as_deref().unwrap_or("");
    let kind = r.kind.as_deref().unwrap_or("Secret");
    if !group.is_empty() || kind != "Secret" {
        return Err(invalid(format!(
            "tls.certificateRefs[0]: {group}/{kind} is not a Secret"
        )));
    }
    let ns = r.namespace.clone().unwrap_or_else(|| key.0.clone());
    if ns != key.0 && !world.granted(GROUP, "Gateway", &key.0, "", "Secret", (&ns, &r.name)) {
        return Err(Verdict::new(
            "ResolvedRefs",
            false,
            "RefNotPermitted",
            format!(
                "tls.certificateRefs[0]: no ReferenceGrant in {ns} lets Gateways of {} use Secret {ns}/{}",
                key.0, r.name
            ),
        ));
    }
    certificate_of(&ns, &r.name, "tls.certificateRefs[0]", lookup).map_err(|u| invalid(u.message))
}

/// Listeners of one Gateway sharing a port: a different protocol is a
/// `ProtocolConflict`, the same hostname a `HostnameConflict`.
fn conflicts(listeners: &mut [ListenerState]) {
    let mut seen: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, l) in listeners.iter().enumerate() {
        if l.conditions.first().is_some_and(|c| c.ok) {
            let host = l.hostname.clone().unwrap_or_default();
            seen.entry(format!("{}|{}", l.protocol, host))
                .or_default()
                .push(i);
        }
    }
    let mut conflicted = vec![false; listeners.len()];
    for idx in seen.values().filter(|v| v.len() > 1) {
        for &i in idx {
            conflicted[i] = true;
        }
    }
    for (l, c) in listeners.iter_mut().zip(conflicted) {
        l.conditions.push(if c {
            Verdict::new(
                "Conflicted",
                true,
                "HostnameConflict",
                "another listener of this Gateway has the same protocol and hostname",
            )
        } else {
            Verdict::new("Conflicted", false, "NoConflicts", "no conflict")
        });
    }
}
