//! Gateway API: GatewayClasses, Gateways, HTTPRoutes and ReferenceGrants
//! turned into the same table BackendPools feed — `HttpRoute`s and
//! backend-only pools — and into the status each object should have.
//!
//! How Sluice implements it (the user-facing contract, also in
//! `docs/gateway-api.md`):
//! - The class: a GatewayClass whose `controllerName` is
//!   [`CONTROLLER_NAME`] is accepted; [`SUPPORTED_FEATURES`] is what works.
//! - One fleet: every Gateway of the class is served by the one dataplane
//!   fleet. A listener of protocol `HTTP` is the dataplanes' HTTP listener
//!   and must use the port [`Config::http_port`] (the dataplane Service's
//!   HTTP port); `HTTPS` is their HTTPS listener on [`Config::https_port`].
//!   Another port is `PortUnavailable`, another protocol (or TLS
//!   `Passthrough`) `UnsupportedProtocol`.
//! - Routes: each accepted HTTPRoute becomes one `HttpRoute` per listener
//!   kind — `namespace/name` on the HTTP listener, `namespace/name#https`
//!   (with the listener's certificate) on the HTTPS one — whose hosts are
//!   the route's hostnames intersected with those of the listeners it
//!   attached to, and whose `order` is its age rank (creation time, then
//!   namespace/name), the spec's tie-break.
//! - Backends: a Service port becomes a backend-only pool named
//!   `service:<namespace>/<name>:<port>` (a name no BackendPool can have)
//!   with endpoints from its EndpointSlices and every policy at its
//!   default. `group: sluice.io, kind: BackendPool` names that pool with
//!   all its policies; a BackendPool without `hosts` that a route names is
//!   published backend-only, so it does not catch every host. A backend
//!   that does not resolve keeps its weight and points at no pool, so its
//!   share of requests is answered 500.
//! - Anything the route asks for that Sluice does not do (a filter type,
//!   per-backend filters, mirror fractions...) makes
//!   the route `Accepted=False, UnsupportedValue` naming the field: it is
//!   never dropped silently.
//!
//! The computation is pure ([`translate`]); [`status`] writes what it
//! decided. [`watch`] starts the watchers when the CRDs are installed.

pub mod attach;
pub mod listeners;
pub mod rules;
pub mod status;
pub mod watch;

use std::collections::{BTreeMap, BTreeSet};

use kube::ResourceExt;
use sluice_crds::gateway::gatewayclasses::GatewayClass;
use sluice_crds::gateway::gateways::Gateway;
use sluice_crds::gateway::httproutes::HttpRoute as HTTPRoute;
use sluice_crds::gateway::referencegrants::ReferenceGrant;
use sluice_protocol::{HttpRoute, PoolRoute};

use self::watch::GatewayChange;
use crate::key::Key;
use crate::route::Lookup;

fn key_of<K: ResourceExt>(obj: &K) -> Key {
    (obj.namespace().unwrap_or_default(), obj.name_any())
}

/// The `controllerName` of GatewayClasses this controller serves.
pub const CONTROLLER_NAME: &str = "sluice.io/gateway-controller";

/// The API group of Gateway API objects.
pub const GROUP: &str = "gateway.networking.k8s.io";

/// Features that work, as Gateway API v1.5 names them, sorted (the spec
/// asks for `status.supportedFeatures` in ascending order).
pub const SUPPORTED_FEATURES: [&str; 14] = [
    "Gateway",
    "HTTPRoute",
    "HTTPRouteBackendTimeout",
    "HTTPRouteHostRewrite",
    "HTTPRouteMethodMatching",
    "HTTPRoutePathRedirect",
    "HTTPRoutePathRewrite",
    "HTTPRoutePortRedirect",
    "HTTPRouteQueryParamMatching",
    "HTTPRouteRequestMirror",
    "HTTPRouteRequestTimeout",
    "HTTPRouteResponseHeaderModification",
    "HTTPRouteSchemeRedirect",
    "ReferenceGrant",
];

/// What the flags say about the dataplane fleet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The dataplane Service's port for plain HTTP.
    pub http_port: u16,
    /// The dataplane Service's port for HTTPS.
    pub https_port: u16,
    /// The dataplane Service, for `status.addresses`.
    pub dataplane_service: Option<Key>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            http_port: 80,
            https_port: 443,
            dataplane_service: None,
        }
    }
}

/// One condition as decided, before it gets its times.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// `Accepted`, `ResolvedRefs`...
    pub type_: &'static str,
    /// `True` or `False`.
    pub ok: bool,
    /// The spec's reason.
    pub reason: &'static str,
    /// What a user reads.
    pub message: String,
}

impl Verdict {
    /// A condition of `type_`.
    pub fn new(
        type_: &'static str,
        ok: bool,
        reason: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            type_,
            ok,
            reason,
            message: message.into(),
        }
    }
}

/// The Gateway API objects the controller knows.
#[derive(Debug, Default)]
pub struct World {
    /// GatewayClasses by name (any controller's: a Gateway names one).
    pub classes: BTreeMap<String, GatewayClass>,
    /// Gateways.
    pub gateways: BTreeMap<Key, Gateway>,
    /// HTTPRoutes.
    pub routes: BTreeMap<Key, HTTPRoute>,
    /// ReferenceGrants.
    pub grants: BTreeMap<Key, ReferenceGrant>,
    /// Namespace labels, for `allowedRoutes.namespaces.selector`.
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
}

impl World {
    /// Whether there is anything to translate.
    pub fn is_empty(&self) -> bool {
        self.classes.is_empty() && self.gateways.is_empty() && self.routes.is_empty()
    }

    /// Records one change.
    pub fn apply(&mut self, change: GatewayChange) {
        fn all<K: ResourceExt>(map: &mut BTreeMap<Key, K>, objs: Vec<K>) {
            *map = objs.into_iter().map(|o| (key_of(&o), o)).collect();
        }
        match change {
            GatewayChange::Class(c) => {
                self.classes.insert(c.name_any(), *c);
            }
            GatewayChange::ClassDeleted((_, name)) => {
                self.classes.remove(&name);
            }
            GatewayChange::AllClasses(cs) => {
                self.classes = cs.into_iter().map(|c| (c.name_any(), c)).collect();
            }
            GatewayChange::Gateway(g) => {
                self.gateways.insert(key_of(&*g), *g);
            }
            GatewayChange::GatewayDeleted(k) => {
                self.gateways.remove(&k);
            }
            GatewayChange::AllGateways(gs) => all(&mut self.gateways, gs),
            GatewayChange::Route(r) => {
                self.routes.insert(key_of(&*r), *r);
            }
            GatewayChange::RouteDeleted(k) => {
                self.routes.remove(&k);
            }
            GatewayChange::AllRoutes(rs) => all(&mut self.routes, rs),
            GatewayChange::Grant(g) => {
                self.grants.insert(key_of(&*g), *g);
            }
            GatewayChange::GrantDeleted(k) => {
                self.grants.remove(&k);
            }
            GatewayChange::AllGrants(gs) => all(&mut self.grants, gs),
            GatewayChange::Namespace(ns) => {
                self.namespaces.insert(ns.name_any(), ns.labels().clone());
            }
            GatewayChange::NamespaceDeleted((_, name)) => {
                self.namespaces.remove(&name);
            }
            GatewayChange::AllNamespaces(nss) => {
                self.namespaces = nss
                    .into_iter()
                    .map(|n| (n.name_any(), n.labels().clone()))
                    .collect();
            }
        }
    }

    /// Whether a ReferenceGrant in `to.0` lets `from_kind` objects of
    /// namespace `from_ns` refer to the `to_group`/`to_kind` object named
    /// `to.1`.
    pub fn granted(
        &self,
        from_group: &str,
        from_kind: &str,
        from_ns: &str,
        to_group: &str,
        to_kind: &str,
        to: (&str, &str),
    ) -> bool {
        self.grants
            .iter()
            .filter(|((ns, _), _)| ns == to.0)
            .any(|(_, g)| {
                g.spec
                    .from
                    .iter()
                    .any(|f| f.group == from_group && f.kind == from_kind && f.namespace == from_ns)
                    && g.spec.to.iter().any(|t| {
                        t.group == to_group
                            && t.kind == to_kind
                            && t.name.as_deref().is_none_or(|n| n == to.1)
                    })
            })
    }
}

/// A listener's state, as the Gateway's status shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerState {
    /// The listener's name.
    pub name: String,
    /// `HTTP` or `HTTPS` when accepted.
    pub protocol: String,
    /// Its hostname, if any.
    pub hostname: Option<String>,
    /// Whether routes may attach (Accepted, not Conflicted).
    pub usable: bool,
    /// Route kinds it takes (group, kind).
    pub supported_kinds: Vec<(String, String)>,
    /// Routes attached.
    pub attached_routes: i32,
    /// Accepted, ResolvedRefs, Conflicted, Programmed.
    pub conditions: Vec<Verdict>,
    /// The certificate (PEM chain, key) of an HTTPS listener.
    pub certificate: Option<(String, String)>,
}

/// What a Gateway's status should say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayState {
    /// Accepted (and Programmed, filled in by the writer).
    pub conditions: Vec<Verdict>,
    /// Per listener, in spec order.
    pub listeners: Vec<ListenerState>,
    /// Addresses (type, value).
    pub addresses: Vec<(String, String)>,
}

/// What one parent entry of an HTTPRoute's status should say.
#[derive(Clone, Debug, PartialEq)]
pub struct ParentState {
    /// The parentRef as written (JSON, so it is echoed back unchanged).
    pub parent_ref: serde_json::Value,
    /// Accepted, ResolvedRefs.
    pub conditions: Vec<Verdict>,
}

/// Everything decided in one pass.
#[derive(Debug, Default)]
pub struct Output {
    /// Classes of ours: their conditions.
    pub classes: BTreeMap<String, Vec<Verdict>>,
    /// Gateways of our classes.
    pub gateways: BTreeMap<Key, GatewayState>,
    /// Routes with at least one parent of ours.
    pub routes: BTreeMap<Key, Vec<ParentState>>,
    /// The table's routes.
    pub http_routes: Vec<HttpRoute>,
    /// Backend-only pools of Services.
    pub pools: Vec<PoolRoute>,
    /// BackendPools named by accepted routes.
    pub named_pools: BTreeSet<Key>,
    /// Services and TLS Secrets the translation read (found or not): only
    /// a change to one of them, or to a Gateway API object or a pool's
    /// existence, can change the outcome.
    pub watched: Watched,
}

/// What the last translation depends on besides Gateway API objects.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Watched {
    /// Services (the dataplane Service, every Service a route names).
    pub services: BTreeSet<Key>,
    /// TLS Secrets of listeners' certificateRefs.
    pub secrets: BTreeSet<Key>,
}

/// What a route can point at besides Services: the BackendPools that
/// exist and have a valid route.
pub trait Pools {
    /// Whether BackendPool `namespace/name` exists.
    fn pool_exists(&self, key: &Key) -> bool;
}

/// Decides everything: class, Gateway and route status, the table's
/// routes and the Service pools.
pub fn translate(
    world: &World,
    config: &Config,
    lookup: &impl Lookup,
    pools: &impl Pools,
) -> Output {
    let mut out = Output::default();
    for (name, class) in &world.classes {
        if class.spec.controller_name != CONTROLLER_NAME {
            continue;
        }
        let verdict = match &class.spec.parameters_ref {
            Some(_) => Verdict::new(
                "Accepted",
                false,
                "InvalidParameters",
                "spec.parametersRef: this class takes no parameters",
            ),
            None => Verdict::new(
                "Accepted",
                true,
                "Accepted",
                "the class is served by Sluice",
            ),
        };
        out.classes.insert(name.clone(), vec![verdict]);
    }
    for (key, gw) in &world.gateways {
        if !out.classes.contains_key(&gw.spec.gateway_class_name) {
            continue;
        }
        out.gateways.insert(
            key.clone(),
            listeners::gateway_state(key, gw, world, config, lookup),
        );
        for l in &gw.spec.listeners {
            let refs = l.tls.as_ref().and_then(|t| t.certificate_refs.as_ref());
            for r in refs.into_iter().flatten() {
                let ns = r.namespace.clone().unwrap_or_else(|| key.0.clone());
                out.watched.secrets.insert((ns, r.name.clone()));
            }
        }
    }
    out.watched
        .services
        .extend(config.dataplane_service.clone());
    attach::routes(world, lookup, pools, &mut out);
    out
}

#[cfg(test)]
mod doc_examples;
#[cfg(test)]
mod tests;
