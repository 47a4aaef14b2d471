//! What the Gateway API watchers send to the index: one change of a
//! GatewayClass, Gateway, HTTPRoute, ReferenceGrant or Namespace. The
//! watchers themselves are started by the crate's wiring
//! (`gateway_watch.rs`).

use k8s_openapi::api::core::v1::Namespace;
use sluice_crds::gateway::gatewayclasses::GatewayClass;
use sluice_crds::gateway::gateways::Gateway;
use sluice_crds::gateway::httproutes::HttpRoute as HTTPRoute;
use sluice_crds::gateway::referencegrants::ReferenceGrant;

use crate::key::Key;

/// One change of a Gateway API object (or a Namespace's labels).
#[derive(Debug)]
pub enum GatewayChange {
    /// A GatewayClass was added or modified.
    Class(Box<GatewayClass>),
    /// A GatewayClass was deleted.
    ClassDeleted(Key),
    /// Relisted: all GatewayClasses.
    AllClasses(Vec<GatewayClass>),
    /// A Gateway was added or modified.
    Gateway(Box<Gateway>),
    /// A Gateway was deleted.
    GatewayDeleted(Key),
    /// Relisted: all Gateways.
    AllGateways(Vec<Gateway>),
    /// An HTTPRoute was added or modified.
    Route(Box<HTTPRoute>),
    /// An HTTPRoute was deleted.
    RouteDeleted(Key),
    /// Relisted: all HTTPRoutes.
    AllRoutes(Vec<HTTPRoute>),
    /// A ReferenceGrant was added or modified.
    Grant(Box<ReferenceGrant>),
    /// A ReferenceGrant was deleted.
    GrantDeleted(Key),
    /// Relisted: all ReferenceGrants.
    AllGrants(Vec<ReferenceGrant>),
    /// A Namespace was added or modified.
    Namespace(Box<Namespace>),
    /// A Namespace was deleted.
    NamespaceDeleted(Key),
    /// Relisted: all Namespaces.
    AllNamespaces(Vec<Namespace>),
}
