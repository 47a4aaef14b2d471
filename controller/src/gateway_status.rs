//! Writes GatewayClass, Gateway and HTTPRoute status, only when it
//! differs from what the API server holds, and an Event for every
//! condition that turns False.
//!
//! GatewayClass and Gateway status belong to this controller alone
//! (server-side apply). An HTTPRoute's `status.parents` is shared with the
//! controllers of its other parents: the writer keeps their entries as
//! they are, replaces only those whose `controllerName` is ours, and
//! writes with the object's `resourceVersion`, so a concurrent write by
//! another controller makes ours fail and be redone on the next pass.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::{Value, json};
use sluice_crds::gateway::gatewayclasses::GatewayClass;
use sluice_crds::gateway::gateways::Gateway;
use sluice_crds::gateway::httproutes::HttpRoute as HTTPRoute;
use tokio::sync::{Notify, watch};

use crate::api_errors::Causes;
use crate::conditions::FIELD_MANAGER;
use crate::dataplanes::Dataplanes;
use crate::gateway::status::{
    class_status, differs, gateway_status, has_ours, new_failures, route_parents,
};
use crate::index::Index;
use crate::recorder::{Event, EventType, Recorder};

/// What the writer needs.
pub struct GatewayStatusWriter {
    /// API client.
    pub client: Client,
    /// The index holding the Gateway API objects and the last translation.
    pub index: Arc<Mutex<Index>>,
    /// Connected dataplanes (for `Programmed`).
    pub dataplanes: Arc<Dataplanes>,
    /// Events.
    pub recorder: Recorder,
    /// Woken after each published batch.
    pub wake: Arc<Notify>,
    /// How often status is re-examined without a wake-up.
    pub interval: Duration,
    /// Only the leader writes.
    pub leader: watch::Receiver<bool>,
}

/// One write to make.
enum Work {
    Class(Arc<GatewayClass>, Value),
    Gateway(Arc<Gateway>, Value),
    Route(Arc<HTTPRoute>, Value),
}

/// How long a write is trusted to show up in the watch before it is redone.
const WRITE_SETTLE: Duration = Duration::from_secs(5);

impl GatewayStatusWriter {
    /// Runs until `stop` turns true.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut written: BTreeMap<String, (Value, Instant)> = BTreeMap::new();
        loop {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(self.interval) => {}
            }
            if !*self.leader.borrow() {
                written.clear();
                continue;
            }
            let dataplanes = self.dataplanes.present().len();
            let now = Timestamp::now();
            let work: Vec<(String, Work)> = {
                let index = self.index.lock().unwrap_or_else(|p| p.into_inner());
                let (world, out) = index.gateway();
                let mut work = Vec::new();
                for (name, verdicts) in &out.classes {
                    if let Some(c) = world.classes.get(name) {
                        let desired = class_status(c, verdicts, now);
                        if differs(c.status.as_ref(), &desired) {
                            work.push((
                                format!("class/{name}"),
                                Work::Class(Arc::new(c.clone()), desired),
                            ));
                        }
                    }
                }
                for (key, state) in &out.gateways {
                    if let Some(g) = world.gateways.get(key) {
                        let desired = gateway_status(g, state, dataplanes, now);
                        if differs(g.status.as_ref(), &desired) {
                            work.push((
                                format!("gateway/{}/{}", key.0, key.1),
                                Work::Gateway(Arc::new(g.clone()), desired),
                            ));
                        }
                    }
                }
                for (key, r) in &world.routes {
                    // A route that no longer has a parent of ours loses
                    // the entries we wrote; other routes are not touched.
                    let parents = out.routes.get(key).map_or(&[][..], Vec::as_slice);
                    if parents.is_empty() && !has_ours(r) {
                        continue;
                    }
                    {
                        let desired = json!({"parents": route_parents(r, parents, now)});
                        if differs(r.status.as_ref(), &desired) {
                            work.push((
                                format!("route/{}/{}", key.0, key.1),
                                Work::Route(Arc::new(r.clone()), desired),
                            ));
                        }
                    }
                }
                work
            };
            for (id, w) in work {
                if !*self.leader.borrow() {
                    break;
                }
                let desired = match &w {
                    Work::Class(_, d) | Work::Gateway(_, d) | Work::Route(_, d) => d.clone(),
                };
                if written
                    .get(&id)
                    .is_some_and(|(d, at)| *d == desired && at.elapsed() < WRITE_SETTLE)
                {
                    continue;
                }
                if self.write(&w).await {
                    written.insert(id, (desired, Instant::now()));
                }
            }
        }
    }

    async fn write(&self, work: &Work) -> bool {
        let apply = PatchParams::apply(FIELD_MANAGER).force();
        let (result, reference, current, desired) = match work {
            Work::Class(c, desired) => {
                let api: Api<GatewayClass> = Api::all(self.client.clone());
                let patch = json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass", "status": desired});
                let r = api
                    .patch_status(&c.name_any(), &apply, &Patch::Apply(&patch))
                    .await
                    .map(|_| ());
                (
                    r,
                    c.object_ref(&()),
                    serde_json::to_value(&c.status).unwrap_or_default(),
                    desired,
                )
            }
            Work::Gateway(g, desired) => {
                let api: Api<Gateway> =
                    Api::namespaced(self.client.clone(), &g.namespace().unwrap_or_default());
                let patch = json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "status": desired});
                let r = api
                    .patch_status(&g.name_any(), &apply, &Patch::Apply(&patch))
                    .await
                    .map(|_| ());
                (
                    r,
                    g.object_ref(&()),
                    serde_json::to_value(&g.status).unwrap_or_default(),
                    desired,
                )
            }
            Work::Route(r, desired) => {
                let api: Api<HTTPRoute> =
                    Api::namespaced(self.client.clone(), &r.namespace().unwrap_or_default());
                let patch = json!({
                    "metadata": {"resourceVersion": r.resource_version()},
                    "status": desired,
                });
                let res = api
                    .patch_status(
                        &r.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(&patch),
                    )
                    .await
                    .map(|_| ());
                (
                    res,
                    r.object_ref(&()),
                    serde_json::to_value(&r.status).unwrap_or_default(),
                    desired,
                )
            }
        };
        if let Err(e) = result {
            tracing::warn!(object = ?reference.name, kind = ?reference.kind, error = %Causes(&e), "Gateway API status write failed");
            return false;
        }
        for (type_, reason, note) in new_failures(&current, desired) {
            let event = Event {
                type_: EventType::Warning,
                reason,
                action: format!("Set{type_}"),
                note,
            };
            if let Err(e) = self.recorder.publish(&event, &reference).await {
                tracing::warn!(error = %Causes(&e), "event not recorded");
            }
        }
        true
    }
}
