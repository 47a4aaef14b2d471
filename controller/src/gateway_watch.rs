//! Starts the Gateway API watchers once the CRDs are installed.
//!
//! Gateway API is optional: the controller asks the API server for
//! GatewayClasses every [`PROBE_INTERVAL`]; while the CRDs are missing it
//! logs that once and serves BackendPools alone. When they appear the
//! watchers start (GatewayClasses, Gateways, HTTPRoutes, ReferenceGrants
//! and Namespaces, whose labels `allowedRoutes` selects on), without a
//! restart.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::ListParams;
use kube::runtime::watcher;
use kube::{Api, Client};
use sluice_crds::gateway::gatewayclasses::GatewayClass;
use sluice_crds::gateway::gateways::Gateway;
use sluice_crds::gateway::httproutes::HttpRoute as HTTPRoute;
use sluice_crds::gateway::referencegrants::ReferenceGrant;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::admin::Synced;
use crate::api_errors::Causes;
use crate::gateway::watch::GatewayChange;
use crate::index::Change;

/// How often the controller looks for the Gateway API CRDs while they are
/// missing.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(30);

/// Waits for the CRDs, then runs the watchers until the channel closes.
pub async fn run(client: Client, tx: mpsc::Sender<(&'static str, Change)>, synced: Arc<Synced>) {
    let classes: Api<GatewayClass> = Api::all(client.clone());
    let mut logged = false;
    loop {
        match classes.list_metadata(&ListParams::default().limit(1)).await {
            Ok(_) => break,
            Err(kube::Error::Api(e)) if e.code == 404 => {
                if !logged {
                    tracing::info!(
                        "Gateway API CRDs not installed: serving BackendPools only (checking again every {}s)",
                        PROBE_INTERVAL.as_secs()
                    );
                    logged = true;
                }
            }
            Err(e) => tracing::debug!(error = %Causes(&e), "Gateway API probe failed"),
        }
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
    tracing::info!(
        "Gateway API CRDs found: watching GatewayClasses, Gateways, HTTPRoutes, ReferenceGrants"
    );
    let mut tasks = JoinSet::new();
    macro_rules! spawn_watch {
        ($k:ty, $name:literal, $one:ident, $gone:ident, $all:ident) => {
            tasks.spawn(crate::kind_watch::watch_kind::<$k>(
                Api::all(client.clone()),
                $name,
                watcher::Config::default(),
                tx.clone(),
                |o| Change::Gateway(Box::new(GatewayChange::$one(Box::new(o)))),
                |k| Change::Gateway(Box::new(GatewayChange::$gone(k))),
                |all| Change::Gateway(Box::new(GatewayChange::$all(all))),
                Arc::clone(&synced),
                |s| &s.gateway,
            ));
        };
    }
    spawn_watch!(
        GatewayClass,
        "GatewayClass",
        Class,
        ClassDeleted,
        AllClasses
    );
    spawn_watch!(Gateway, "Gateway", Gateway, GatewayDeleted, AllGateways);
    spawn_watch!(HTTPRoute, "HTTPRoute", Route, RouteDeleted, AllRoutes);
    spawn_watch!(
        ReferenceGrant,
        "ReferenceGrant",
        Grant,
        GrantDeleted,
        AllGrants
    );
    spawn_watch!(
        Namespace,
        "Namespace",
        Namespace,
        NamespaceDeleted,
        AllNamespaces
    );
    drop(tx);
    while tasks.join_next().await.is_some() {}
}
