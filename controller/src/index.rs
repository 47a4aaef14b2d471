//! Turns watch events into routes: a plain state machine, no I/O.
//!
//! The index holds the pools, Services and EndpointSlices it was told about,
//! and which pools each Service feeds. Each change marks only the pools it can
//! affect as dirty; [`Index::recompute`] rebuilds just those and returns the
//! batch of route changes for the store. It is tested by feeding objects in
//! and reading routes out — no API server involved.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;
use sluice_crds::{BackendPool, EndpointCounts, ScalingTrigger};
use sluice_protocol::route::PathPrefix;
use sluice_protocol::{Activation, HttpRoute, PoolRoute};

use crate::gateway::watch::GatewayChange;
use crate::gateway::{self, Config, Output, Pools, World};
use crate::pool_versions::PoolVersions;
use crate::route::{self, InvalidSpec, Lookup, SERVICE_NAME_LABEL, TLS_REASONS, Unresolved};

pub use crate::key::Key;

fn key_of<K: ResourceExt>(obj: &K) -> Key {
    (obj.namespace().unwrap_or_default(), obj.name_any())
}

/// The host + prefix pairs a spec claims (none when they do not parse: the
/// spec is invalid and claims nothing).
fn claims(spec: &sluice_crds::BackendPoolSpec) -> Vec<Claim> {
    let Ok(prefix) = PathPrefix::try_from(spec.path_prefix.clone()) else {
        return vec![];
    };
    let hosts: Vec<String> = if spec.hosts.is_empty() {
        vec!["*".into()]
    } else {
        spec.hosts.iter().map(|h| h.to_ascii_lowercase()).collect()
    };
    let mut claims: Vec<Claim> = hosts
        .into_iter()
        .map(|h| (h, prefix.as_str().to_string()))
        .collect();
    claims.sort();
    claims.dedup();
    claims
}

/// What the controller knows about one pool, for its status.
#[derive(Clone, Debug, PartialEq)]
pub struct PoolState {
    /// The pool object as last seen.
    pub pool: Arc<BackendPool>,
    /// Why the spec was refused, if it was.
    pub invalid: Option<InvalidSpec>,
    /// References that did not resolve.
    pub unresolved: Vec<Unresolved>,
    /// Endpoint counts.
    pub endpoints: EndpointCounts,
    /// The route being served (the last good one when the spec turned invalid).
    pub route: Option<PoolRoute>,
    /// Why the pool lost a host + path prefix to an older pool, if it did.
    pub conflict: Option<String>,
    /// Version of the store that carries `route`.
    pub route_version: Option<u64>,
    /// When recent versions of `route` were published (for `Programmed`).
    pub versions: PoolVersions,
}

/// One change seen by a watcher.
#[derive(Debug)]
pub enum Change {
    /// A pool was added or modified.
    Pool(Box<BackendPool>),
    /// A pool was deleted.
    PoolDeleted(Key),
    /// A Service was added or modified.
    Service(Box<Service>),
    /// A Service was deleted.
    ServiceDeleted(Key),
    /// A slice was added or modified.
    Slice(Box<EndpointSlice>),
    /// A slice was deleted.
    SliceDeleted(Key),
    /// A watcher relisted: these are now all the pools.
    AllPools(Vec<BackendPool>),
    /// A watcher relisted: these are now all the Services.
    AllServices(Vec<Service>),
    /// A watcher relisted: these are now all the slices.
    AllSlices(Vec<EndpointSlice>),
    /// A TLS Secret was added or modified.
    Secret(Box<Secret>),
    /// A TLS Secret was deleted.
    SecretDeleted(Key),
    /// A watcher relisted: these are now all the TLS Secrets.
    AllSecrets(Vec<Secret>),
    /// A ScalingTrigger was added or modified.
    Trigger(Box<ScalingTrigger>),
    /// A ScalingTrigger was deleted.
    TriggerDeleted(Key),
    /// A watcher relisted: these are now all the ScalingTriggers.
    AllTriggers(Vec<ScalingTrigger>),
    /// A Gateway API object (or a Namespace) changed.
    Gateway(Box<GatewayChange>),
}

/// The route changes of one batch.
#[derive(Debug, Default, PartialEq)]
pub struct Batch {
    /// Routes to add or replace.
    pub upserts: Vec<PoolRoute>,
    /// Route names to remove.
    pub removes: Vec<String>,
    /// Pools whose status may have changed (dirty pools still present).
    pub touched: Vec<Key>,
    /// HTTPRoutes' routes to add or replace.
    pub route_upserts: Vec<HttpRoute>,
    /// Route names to remove.
    pub route_removes: Vec<String>,
}

/// The index itself.
#[derive(Debug, Default)]
pub struct Index {
    pools: BTreeMap<Key, PoolState>,
    services: BTreeMap<Key, Service>,
    slices: BTreeMap<Key, EndpointSlice>,
    /// Service key → keys of its slices.
    slices_by_service: BTreeMap<Key, BTreeSet<Key>>,
    /// Service key → pools that reference it.
    pools_by_service: BTreeMap<Key, BTreeSet<Key>>,
    /// TLS Secrets referenced or not (a pool may reference one later).
    secrets: BTreeMap<Key, Secret>,
    /// Secret key → pools that reference it.
    pools_by_secret: BTreeMap<Key, BTreeSet<Key>>,
    dirty: BTreeSet<Key>,
    deleted: BTreeSet<Key>,
    /// Host + path prefix → the pools claiming it, oldest first.
    claims: BTreeMap<Claim, BTreeSet<Seniority>>,
    /// Pool → its seniority and claims.
    claims_of: BTreeMap<Key, (Seniority, Vec<Claim>)>,
    /// ScalingTriggers, for the autoscaler and for `activation`.
    triggers: BTreeMap<Key, Arc<ScalingTrigger>>,
    /// Gateway API objects.
    gateway: World,
    /// The flags that shape the Gateway translation.
    gateway_config: Config,
    /// The last Gateway translation.
    gateway_out: Output,
    /// Whether the Gateway translation must run again.
    gateway_dirty: bool,
}

/// `(host, path prefix)`; a pool without hosts claims `*`.
type Claim = (String, String);

/// Creation time (seconds; pools without one count as newest), then
/// `namespace/name`: oldest first, ties broken by name, as Gateway API does.
type Seniority = (i64, Key);

impl Lookup for Index {
    fn service(&self, namespace: &str, name: &str) -> Option<&Service> {
        self.services
            .get(&(namespace.to_string(), name.to_string()))
    }

    fn slices(&self, namespace: &str, service: &str) -> Vec<&EndpointSlice> {
        self.slices_by_service
            .get(&(namespace.to_string(), service.to_string()))
            .into_iter()
            .flatten()
            .filter_map(|k| self.slices.get(k))
            .collect()
    }

    fn secret(&self, namespace: &str, name: &str) -> Option<&Secret> {
        self.secrets.get(&(namespace.to_string(), name.to_string()))
    }
}

impl Pools for Index {
    fn pool_exists(&self, key: &Key) -> bool {
        self.pools.contains_key(key)
    }
}

impl Index {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty index translating Gateways with `config`.
    pub fn with_gateway_config(config: Config) -> Self {
        Self {
            gateway_config: config,
            ..Self::default()
        }
    }

    /// The Gateway API objects and their last translation, for the
    /// status writer.
    pub fn gateway(&self) -> (&World, &Output) {
        (&self.gateway, &self.gateway_out)
    }

    /// State of every pool, for the status writer.
    pub fn pools(&self) -> impl Iterator<Item = (&Key, &PoolState)> {
        self.pools.iter()
    }

    /// State of one pool.
    pub fn pool(&self, key: &Key) -> Option<&PoolState> {
        self.pools.get(key)
    }

    /// Every ScalingTrigger, for the autoscaler.
    pub fn triggers(&self) -> impl Iterator<Item = (&Key, &Arc<ScalingTrigger>)> {
        self.triggers.iter()
    }

    /// Whether a pool's route holds requests while it has no endpoints: a
    /// ScalingTrigger driven by the pool may scale its target to zero.
    fn activation(&self, pool: &Key) -> Option<Activation> {
        self.triggers
            .iter()
            .any(|((ns, _), t)| {
                *ns == pool.0 && t.spec.pool_ref.name == pool.1 && t.spec.min_replicas == 0
            })
            .then(Activation::default)
    }

    fn upsert_trigger(&mut self, trigger: ScalingTrigger) {
        let key = key_of(&trigger);
        let trigger = Arc::new(trigger);
        if let Some(old) = self.triggers.insert(key.clone(), Arc::clone(&trigger))
            && old.spec == trigger.spec
        {
            return;
        }
        self.mark_trigger_pools(&key.0, &trigger);
    }

    fn delete_trigger(&mut self, key: &Key) {
        if let Some(old) = self.triggers.remove(key) {
            self.mark_trigger_pools(&key.0, &old);
        }
    }

    /// Marks the pool a trigger drives (its `activation` may change). A
    /// trigger that moved to another pool is marked through its old spec
    /// by the caller passing the old object too.
    fn mark_trigger_pools(&mut self, namespace: &str, trigger: &ScalingTrigger) {
        let pool = (namespace.to_string(), trigger.spec.pool_ref.name.clone());
        if self.pools.contains_key(&pool) {
            self.dirty.insert(pool);
        }
    }

    /// Records a change and marks the pools it affects.
    pub fn apply(&mut self, change: Change) {
        self.gateway_dirty |= self.feeds_gateway(&change);
        match change {
            Change::Gateway(change) => self.gateway.apply(*change),
            Change::Pool(pool) => self.upsert_pool(*pool),
            Change::PoolDeleted(key) => self.delete_pool(key),
            Change::Service(svc) => {
                let key = key_of(&*svc);
                self.services.insert(key.clone(), *svc);
                self.mark_service(&key);
            }
            Change::ServiceDeleted(key) => {
                self.services.remove(&key);
                self.mark_service(&key);
            }
            Change::Slice(slice) => self.upsert_slice(*slice),
            Change::SliceDeleted(key) => self.delete_slice(&key),
            Change::AllPools(pools) => {
                let keep: BTreeSet<Key> = pools.iter().map(key_of).collect();
                let gone: Vec<Key> = self
                    .pools
                    .keys()
                    .filter(|k| !keep.contains(*k))
                    .cloned()
                    .collect();
                gone.into_iter().for_each(|k| self.delete_pool(k));
                pools.into_iter().for_each(|p| self.upsert_pool(p));
            }
            Change::AllServices(services) => {
                let old: Vec<Key> = self.services.keys().cloned().collect();
                self.services = services.into_iter().map(|s| (key_of(&s), s)).collect();
                let new: Vec<Key> = self.services.keys().cloned().collect();
                old.iter().chain(&new).for_each(|k| self.mark_service(k));
            }
            Change::AllSlices(slices) => {
                let old: Vec<Key> = self.slices.keys().cloned().collect();
                old.iter().for_each(|k| self.delete_slice(k));
                slices.into_iter().for_each(|s| self.upsert_slice(s));
            }
            Change::Secret(secret) => {
                let key = key_of(&*secret);
                if self.secrets.get(&key) != Some(&*secret) {
                    self.secrets.insert(key.clone(), *secret);
                    self.mark_secret(&key);
                }
            }
            Change::SecretDeleted(key) => {
                self.secrets.remove(&key);
                self.mark_secret(&key);
            }
            Change::Trigger(trigger) => {
                let key = key_of(&*trigger);
                if let Some(old) = self.triggers.get(&key).cloned()
                    && old.spec != trigger.spec
                {
                    // The old pool loses this trigger if `poolRef` moved.
                    self.mark_trigger_pools(&key.0, &old);
                }
                self.upsert_trigger(*trigger);
            }
            Change::TriggerDeleted(key) => self.delete_trigger(&key),
            Change::AllTriggers(triggers) => {
                let keep: BTreeSet<Key> = triggers.iter().map(key_of).collect();
                let gone: Vec<Key> = self
                    .triggers
                    .keys()
                    .filter(|k| !keep.contains(*k))
                    .cloned()
                    .collect();
                gone.iter().for_each(|k| self.delete_trigger(k));
                for trigger in triggers {
                    self.apply(Change::Trigger(Box::new(trigger)));
                }
            }
            Change::AllSecrets(secrets) => {
                let new: BTreeMap<Key, Secret> =
                    secrets.into_iter().map(|s| (key_of(&s), s)).collect();
                let changed: Vec<Key> = self
                    .secrets
                    .keys()
                    .chain(new.keys())
                    .filter(|k| self.secrets.get(*k) != new.get(*k))
                    .cloned()
                    .collect();
                self.secrets = new;
                changed.iter().for_each(|k| self.mark_secret(k));
            }
        }
    }

    /// Whether `change` can change the Gateway translation: any Gateway
    /// API change; otherwise, while there are Gateway API objects, a change
    /// to a Service or Secret it read, to a pool's existence, or a relist.
    fn feeds_gateway(&self, change: &Change) -> bool {
        if matches!(change, Change::Gateway(_)) {
            return true;
        }
        if self.gateway.is_empty() {
            return false;
        }
        let watched = &self.gateway_out.watched;
        match change {
            Change::Service(svc) => watched.services.contains(&key_of(&**svc)),
            Change::ServiceDeleted(key) => watched.services.contains(key),
            Change::Slice(slice) => slice.labels().get(SERVICE_NAME_LABEL).is_some_and(|svc| {
                watched
                    .services
                    .contains(&(key_of(&**slice).0, svc.clone()))
            }),
            Change::SliceDeleted(key) => self
                .slices
                .get(key)
                .and_then(|s| s.labels().get(SERVICE_NAME_LABEL))
                .is_some_and(|svc| watched.services.contains(&(key.0.clone(), svc.clone()))),
            Change::Secret(secret) => watched.secrets.contains(&key_of(&**secret)),
            Change::SecretDeleted(key) => watched.secrets.contains(key),
            Change::Pool(pool) => !self.pools.contains_key(&key_of(&**pool)),
            Change::PoolDeleted(_)
            | Change::AllPools(_)
            | Change::AllServices(_)
            | Change::AllSlices(_)
            | Change::AllSecrets(_) => true,
            Change::Trigger(_) | Change::TriggerDeleted(_) | Change::AllTriggers(_) => false,
            Change::Gateway(_) => true,
        }
    }

    fn upsert_pool(&mut self, pool: BackendPool) {
        let key = key_of(&pool);
        let pool = Arc::new(pool);
        self.deleted.remove(&key);
        let created = pool
            .metadata
            .creation_timestamp
            .as_ref()
            .map_or(i64::MAX, |t| t.0.as_second());
        let claims = claims(&pool.spec);
        match self.pools.get_mut(&key) {
            // Status-only updates (our own writes) change nothing routable.
            Some(state) if state.pool.spec == pool.spec => {
                state.pool = pool;
                return;
            }
            Some(state) => state.pool = pool,
            None => {
                self.pools.insert(
                    key.clone(),
                    PoolState {
                        pool,
                        invalid: None,
                        unresolved: vec![],
                        endpoints: EndpointCounts::default(),
                        route: None,
                        route_version: None,
                        versions: PoolVersions::default(),
                        conflict: None,
                    },
                );
            }
        }
        self.set_claims(&key, Some(((created, key.clone()), claims)));
        self.dirty.insert(key);
    }

    /// Replaces the claims of `key`, marking every pool that shares an old
    /// or new claim: which of them wins may have changed.
    fn set_claims(&mut self, key: &Key, new: Option<(Seniority, Vec<Claim>)>) {
        if self.claims_of.get(key) == new.as_ref() {
            return;
        }
        let mut touched: Vec<Claim> = Vec::new();
        if let Some((seniority, old)) = self.claims_of.remove(key) {
            for claim in old {
                if let Some(set) = self.claims.get_mut(&claim) {
                    set.remove(&seniority);
                    if set.is_empty() {
                        self.claims.remove(&claim);
                    }
                }
                touched.push(claim);
            }
        }
        if let Some((seniority, claims)) = new {
            for claim in &claims {
                self.claims
                    .entry(claim.clone())
                    .or_default()
                    .insert(seniority.clone());
                touched.push(claim.clone());
            }
            self.claims_of.insert(key.clone(), (seniority, claims));
        }
        for claim in touched {
            if let Some(set) = self.claims.get(&claim) {
                self.dirty.extend(
                    set.iter()
                        .map(|(_, k)| k.clone())
                        .filter(|k| self.pools.contains_key(k)),
                );
            }
        }
    }

    /// The first claim of `key` that an older pool holds, as a message.
    fn conflict(&self, key: &Key) -> Option<String> {
        let (_, claims) = self.claims_of.get(key)?;
        claims.iter().find_map(|claim| {
            let (_, winner) = self.claims.get(claim)?.first()?;
            (winner != key).then(|| {
                format!(
                    "host {:?} with path prefix {:?} is already served by BackendPool {}/{}, which is older",
                    claim.0, claim.1, winner.0, winner.1
                )
            })
        })
    }

    fn delete_pool(&mut self, key: Key) {
        if self.pools.remove(&key).is_some() {
            self.deleted.insert(key.clone());
        }
        self.set_claims(&key, None);
        self.dirty.remove(&key);
        for pools in self.pools_by_service.values_mut() {
            pools.remove(&key);
        }
        for pools in self.pools_by_secret.values_mut() {
            pools.remove(&key);
        }
    }

    fn upsert_slice(&mut self, slice: EndpointSlice) {
        let key = key_of(&slice);
        self.delete_slice(&key);
        if let Some(svc) = slice.labels().get(SERVICE_NAME_LABEL) {
            let svc_key = (key.0.clone(), svc.clone());
            self.slices_by_service
                .entry(svc_key.clone())
                .or_default()
                .insert(key.clone());
            self.mark_service(&svc_key);
        }
        self.slices.insert(key, slice);
    }

    fn delete_slice(&mut self, key: &Key) {
        let Some(old) = self.slices.remove(key) else {
            return;
        };
        if let Some(svc) = old.labels().get(SERVICE_NAME_LABEL) {
            let svc_key = (key.0.clone(), svc.clone());
            if let Some(set) = self.slices_by_service.get_mut(&svc_key) {
                set.remove(key);
                if set.is_empty() {
                    self.slices_by_service.remove(&svc_key);
                }
            }
            self.mark_service(&svc_key);
        }
    }

    fn mark_secret(&mut self, secret: &Key) {
        if let Some(pools) = self.pools_by_secret.get(secret) {
            self.dirty.extend(pools.iter().cloned());
        }
    }

    fn mark_service(&mut self, svc: &Key) {
        if let Some(pools) = self.pools_by_service.get(svc) {
            self.dirty.extend(pools.iter().cloned());
        }
    }

    /// Whether changes are waiting for [`Index::recompute`].
    pub fn has_pending(&self) -> bool {
        !self.dirty.is_empty() || !self.deleted.is_empty() || self.gateway_dirty
    }

    /// Runs the Gateway translation; returns its table changes and marks
    /// the BackendPools whose backend-only state may have changed.
    fn recompute_gateway(&mut self, batch: &mut Batch) {
        if !std::mem::take(&mut self.gateway_dirty) {
            return;
        }
        let out = gateway::translate(&self.gateway, &self.gateway_config, self, self);
        let old = std::mem::replace(&mut self.gateway_out, out);
        let new = &self.gateway_out;
        batch.route_removes.extend(
            old.http_routes
                .iter()
                .filter(|r| !new.http_routes.iter().any(|n| n.name == r.name))
                .map(|r| r.name.clone()),
        );
        batch.route_upserts.extend(
            new.http_routes
                .iter()
                .filter(|r| !old.http_routes.contains(r))
                .cloned(),
        );
        batch.removes.extend(
            old.pools
                .iter()
                .filter(|p| !new.pools.iter().any(|n| n.name == p.name))
                .map(|p| p.name.clone()),
        );
        batch
            .upserts
            .extend(new.pools.iter().filter(|p| !old.pools.contains(p)).cloned());
        let flipped: Vec<Key> = old
            .named_pools
            .symmetric_difference(&new.named_pools)
            .filter(|k| self.pools.contains_key(*k))
            .cloned()
            .collect();
        self.dirty.extend(flipped);
    }

    /// Rebuilds the routes of dirty pools; returns the batch for the store.
    pub fn recompute(&mut self) -> Batch {
        let mut batch = Batch {
            removes: self
                .deleted
                .iter()
                .map(|(ns, n)| format!("{ns}/{n}"))
                .collect(),
            ..Default::default()
        };
        self.deleted.clear();
        self.recompute_gateway(&mut batch);
        let dirty = std::mem::take(&mut self.dirty);
        for key in dirty {
            let Some(state) = self.pools.get(&key) else {
                continue;
            };
            let pool = Arc::clone(&state.pool);
            // Re-register which Services this pool depends on.
            for pools in self.pools_by_service.values_mut() {
                pools.remove(&key);
            }
            for svc in pool.spec.backends.iter().filter_map(|b| b.service.clone()) {
                self.pools_by_service
                    .entry((key.0.clone(), svc))
                    .or_default()
                    .insert(key.clone());
            }
            for pools in self.pools_by_secret.values_mut() {
                pools.remove(&key);
            }
            if let Some(tls) = &pool.spec.tls {
                self.pools_by_secret
                    .entry((key.0.clone(), tls.secret_name.clone()))
                    .or_default()
                    .insert(key.clone());
            }
            // A pool without hosts that routes name is only their backend:
            // it must not catch every host.
            let backend_only =
                pool.spec.hosts.is_empty() && self.gateway_out.named_pools.contains(&key);
            let conflict = self.conflict(&key).filter(|_| !backend_only);
            let activation = self.activation(&key);
            let outcome = route::compute(&key.0, &key.1, &pool.spec, self);
            let Some(state) = self.pools.get_mut(&key) else {
                continue;
            };
            if let Some(conflict) = conflict {
                // The older pool keeps the traffic; this one is withdrawn.
                state.conflict = Some(conflict);
                state.invalid = outcome.err();
                if let Some(route) = state.route.take() {
                    batch.removes.push(route.name);
                }
                state.route_version = None;
                state.versions.clear();
                batch.touched.push(key);
                continue;
            }
            state.conflict = None;
            match outcome {
                Ok(mut resolved) => {
                    // A Secret that went missing or bad does not take the
                    // certificate away: the last good one keeps serving.
                    let tls_broken = resolved
                        .unresolved
                        .iter()
                        .any(|u| TLS_REASONS.contains(&u.reason));
                    if tls_broken && resolved.route.tls.is_none() {
                        resolved.route.tls = state.route.as_ref().and_then(|r| r.tls.clone());
                    }
                    resolved.route.activation = activation;
                    if backend_only {
                        resolved.route.backend_only = true;
                        resolved.route.path_prefix = PathPrefix::default();
                    }
                    state.invalid = None;
                    state.unresolved = resolved.unresolved;
                    state.endpoints = resolved.endpoints;
                    batch.upserts.push(resolved.route.clone());
                    state.route = Some(resolved.route);
                }
                // Keep serving the last good route; the status says why the
                // new spec was refused.
                Err(invalid) => state.invalid = Some(invalid),
            }
            batch.touched.push(key);
        }
        self.pools_by_service.retain(|_, pools| !pools.is_empty());
        self.pools_by_secret.retain(|_, pools| !pools.is_empty());
        batch
    }

    /// Records the store version that now carries each pool's route,
    /// published at `now`. Only the pools of the batch (`touched`) can have
    /// moved: the others keep the version they had, so this costs the
    /// batch, not the table.
    pub fn set_route_versions(
        &mut self,
        touched: &[Key],
        version_of: impl Fn(&str) -> Option<u64>,
        now: Instant,
    ) {
        for key in touched {
            if let Some(state) = self.pools.get_mut(key)
                && let Some(route) = &state.route
            {
                state.route_version = version_of(&route.name);
                match state.route_version {
                    Some(v) => state.versions.record(v, now),
                    None => state.versions.clear(),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::tests::{service, slice};
    use kube::api::ObjectMeta;
    use sluice_crds::BackendPoolSpec;

    fn pool(ns: &str, name: &str, backends: serde_json::Value) -> BackendPool {
        // Each pool serves its own host, so that pools do not conflict.
        let spec: BackendPoolSpec = serde_json::from_value(serde_json::json!({
            "hosts": [format!("{name}.example.com")],
            "backends": backends,
        }))
        .expect("spec");
        BackendPool {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(name.into()),
                generation: Some(1),
                ..Default::default()
            },
            spec,
            status: None,
        }
    }

    fn ports(batch: &Batch) -> Vec<(String, Vec<String>)> {
        batch
            .upserts
            .iter()
            .map(|r| {
                (
                    r.name.clone(),
                    r.endpoints.iter().map(|e| e.address.to_string()).collect(),
                )
            })
            .collect()
    }

    #[test]
    fn a_slice_change_recomputes_only_the_pools_it_feeds() {
        let mut ix = Index::new();
        ix.apply(Change::Service(Box::new(service(
            "ns",
            "a",
            &[("http", 80)],
        ))));
        ix.apply(Change::Service(Box::new(service(
            "ns",
            "b",
            &[("http", 80)],
        ))));
        ix.apply(Change::Pool(Box::new(pool(
            "ns",
            "pa",
            serde_json::json!([{"service": "a", "port": "http"}]),
        ))));
        ix.apply(Change::Pool(Box::new(pool(
            "ns",
            "pb",
            serde_json::json!([{"service": "b", "port": "http"}]),
        ))));
        let first = ix.recompute();
        assert_eq!(first.upserts.len(), 2);
        assert!(first.upserts.iter().all(|r| r.endpoints.is_empty()));

        ix.apply(Change::Slice(Box::new(slice(
            "ns",
            "a-1",
            "a",
            "http",
            8080,
            &[("10.0.0.1", true, false)],
        ))));
        let batch = ix.recompute();
        assert_eq!(
            ports(&batch),
            vec![("ns/pa".to_string(), vec!["10.0.0.1:8080".to_string()])]
        );
        assert!(!ix.has_pending());
    }

    #[test]
    fn deleting_a_pool_removes_its_route_and_a_relist_drops_vanished_slices() {
        let mut ix = Index::new();
        ix.apply(Change::Service(Box::new(service(
            "ns",
            "a",
            &[("http", 80)],
        ))));
        ix.apply(Change::Slice(Box::new(slice(
            "ns",
            "a-1",
            "a",
            "http",
            8080,
            &[("10.0.0.1", true, false)],
        ))));
        ix.apply(Change::Pool(Box::new(pool(
            "ns",
            "pa",
            serde_json::json!([{"service": "a", "port": "http"}]),
        ))));
        ix.recompute();

        ix.apply(Change::AllSlices(vec![slice(
            "ns",
            "a-2",
            "a",
            "http",
            8080,
            &[("10.0.0.2", true, false)],
        )]));
        assert_eq!(
            ports(&ix.recompute()),
            vec![("ns/pa".to_string(), vec!["10.0.0.2:8080".to_string()])]
        );

        ix.apply(Change::PoolDeleted(("ns".into(), "pa".into())));
        let batch = ix.recompute();
        assert_eq!(batch.removes, vec!["ns/pa".to_string()]);
        assert!(batch.upserts.is_empty());
    }

    #[test]
    fn an_invalid_spec_keeps_the_last_good_route() {
        let mut ix = Index::new();
        ix.apply(Change::Pool(Box::new(pool(
            "ns",
            "p",
            serde_json::json!([{"address": "192.0.2.1:80"}]),
        ))));
        assert_eq!(ix.recompute().upserts.len(), 1);
        let mut bad = pool("ns", "p", serde_json::json!([{"address": "192.0.2.1:80"}]));
        bad.spec.path_prefix = "nope".into();
        ix.apply(Change::Pool(Box::new(bad)));
        let batch = ix.recompute();
        assert!(batch.upserts.is_empty());
        let state = ix.pool(&("ns".into(), "p".into())).expect("pool known");
        assert!(state.invalid.is_some());
        assert_eq!(state.route.as_ref().map(|r| r.endpoints.len()), Some(1));
    }

    fn claiming(name: &str, created: i64, hosts: &[&str]) -> BackendPool {
        let mut p = pool("ns", name, serde_json::json!([{"address": "192.0.2.1:80"}]));
        p.spec.hosts = hosts.iter().map(|h| h.to_string()).collect();
        p.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::from_second(created).expect("timestamp"),
        ));
        p
    }

    #[test]
    fn the_older_pool_wins_a_host_and_prefix_and_the_loser_takes_over_when_it_goes() {
        let mut ix = Index::new();
        ix.apply(Change::Pool(Box::new(claiming(
            "young",
            2000,
            &["a.example.com"],
        ))));
        ix.apply(Change::Pool(Box::new(claiming(
            "old",
            1000,
            &["A.example.com", "b.example.com"],
        ))));
        ix.apply(Change::Pool(Box::new(claiming(
            "other",
            3000,
            &["c.example.com"],
        ))));
        let batch = ix.recompute();
        let mut names: Vec<_> = batch.upserts.iter().map(|r| r.name.as_str()).collect();
        names.sort();
        assert_eq!(names, ["ns/old", "ns/other"]);
        let young = ix.pool(&("ns".into(), "young".into())).expect("known");
        let why = young.conflict.as_deref().expect("conflicted");
        assert!(
            why.contains("ns/old") && why.contains("a.example.com"),
            "{why}"
        );
        assert!(young.route.is_none());

        // The winner leaves: the loser is routed, and nothing else recomputed.
        ix.apply(Change::PoolDeleted(("ns".into(), "old".into())));
        let batch = ix.recompute();
        assert_eq!(batch.removes, ["ns/old"]);
        let names: Vec<_> = batch.upserts.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["ns/young"]);
        assert!(
            ix.pool(&("ns".into(), "young".into()))
                .expect("known")
                .conflict
                .is_none()
        );

        // A newer pool claiming the same pair loses, and a route it had is withdrawn.
        ix.apply(Change::Pool(Box::new(claiming(
            "other",
            3000,
            &["a.example.com"],
        ))));
        let batch = ix.recompute();
        assert_eq!(batch.removes, ["ns/other"]);
        assert!(batch.upserts.iter().all(|r| r.name != "ns/other"));
    }

    #[test]
    fn a_renewed_secret_reaches_the_route_and_a_deleted_one_keeps_the_last_certificate() {
        use crate::route::tests::{CRT, KEY, tls_secret};
        let mut ix = Index::new();
        let mut p = pool("ns", "p", serde_json::json!([{"address": "192.0.2.1:80"}]));
        p.spec.tls = Some(sluice_crds::TlsRef {
            secret_name: "p-tls".into(),
        });
        ix.apply(Change::Pool(Box::new(p)));
        ix.apply(Change::AllSecrets(vec![tls_secret(
            "ns", "p-tls", CRT, KEY,
        )]));
        let batch = ix.recompute();
        let pem = |b: &Batch| {
            b.upserts[0]
                .tls
                .as_ref()
                .and_then(|t| t.certificate.clone())
        };
        assert_eq!(pem(&batch).as_deref(), Some(CRT));

        // Renewal: same key, the chain doubled (any change will do).
        let renewed = format!("{CRT}{CRT}");
        ix.apply(Change::Secret(Box::new(tls_secret(
            "ns", "p-tls", &renewed, KEY,
        ))));
        let batch = ix.recompute();
        assert_eq!(pem(&batch), Some(renewed.clone()));

        ix.apply(Change::SecretDeleted(("ns".into(), "p-tls".into())));
        let batch = ix.recompute();
        assert_eq!(
            pem(&batch),
            Some(renewed),
            "the last good certificate stays"
        );
        let state = ix.pool(&("ns".into(), "p".into())).expect("known");
        assert_eq!(state.unresolved[0].reason, "SecretNotFound");

        // An unrelated Secret changes nothing.
        ix.apply(Change::Secret(Box::new(tls_secret(
            "ns", "other", CRT, KEY,
        ))));
        assert!(!ix.has_pending());
    }

    #[test]
    fn a_hostless_pool_named_by_an_http_route_is_published_backend_only() {
        use crate::gateway::watch::GatewayChange;
        let mut ix = Index::new();
        let mut p = pool(
            "ns",
            "checkout",
            serde_json::json!([{"address": "192.0.2.1:80"}]),
        );
        p.spec.hosts.clear();
        p.spec.path_prefix = "/shop".into();
        ix.apply(Change::Pool(Box::new(p)));
        let batch = ix.recompute();
        assert!(
            !batch.upserts[0].backend_only,
            "alone, a pool without hosts catches every host"
        );

        let class = serde_json::from_value(serde_json::json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
            "metadata": {"name": "sluice"}, "spec": {"controllerName": crate::gateway::CONTROLLER_NAME},
        }))
        .expect("class");
        let gateway = serde_json::from_value(serde_json::json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": "gw", "namespace": "ns"},
            "spec": {"gatewayClassName": "sluice", "listeners": [{"name": "web", "protocol": "HTTP", "port": 80}]},
        }))
        .expect("gateway");
        let route = serde_json::from_value(serde_json::json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": "r", "namespace": "ns"},
            "spec": {"parentRefs": [{"name": "gw"}], "rules": [
                {"backendRefs": [{"group": "sluice.io", "kind": "BackendPool", "name": "checkout"}]}]},
        }))
        .expect("route");
        ix.apply(Change::Gateway(Box::new(GatewayChange::Class(Box::new(
            class,
        )))));
        ix.apply(Change::Gateway(Box::new(GatewayChange::Gateway(Box::new(
            gateway,
        )))));
        ix.apply(Change::Gateway(Box::new(GatewayChange::Route(Box::new(
            route,
        )))));
        let batch = ix.recompute();
        assert_eq!(batch.route_upserts.len(), 1);
        assert_eq!(
            batch.route_upserts[0].rules[0].backends[0].pool,
            "ns/checkout"
        );
        let pool = batch
            .upserts
            .iter()
            .find(|p| p.name == "ns/checkout")
            .expect("pool republished");
        assert!(pool.backend_only);
        assert_eq!(
            pool.path_prefix.as_str(),
            "/",
            "its own prefix is not a route any more"
        );
        assert!(sluice_protocol::route::validate_pools(std::slice::from_ref(pool)).is_ok());

        ix.apply(Change::Gateway(Box::new(GatewayChange::RouteDeleted((
            "ns".into(),
            "r".into(),
        )))));
        let batch = ix.recompute();
        assert_eq!(batch.route_removes, ["ns/r"]);
        let pool = batch
            .upserts
            .iter()
            .find(|p| p.name == "ns/checkout")
            .expect("pool republished");
        assert!(
            !pool.backend_only,
            "no route names it: it is its own route again"
        );
    }

    #[test]
    fn only_changes_the_gateway_translation_read_run_it_again() {
        use crate::gateway::watch::GatewayChange;
        let mut ix = Index::new();
        for svc in ["web", "unrelated"] {
            ix.apply(Change::Service(Box::new(service(
                "ns",
                svc,
                &[("http", 80)],
            ))));
        }
        let objects = serde_json::json!([
            {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
             "metadata": {"name": "sluice"}, "spec": {"controllerName": crate::gateway::CONTROLLER_NAME}},
            {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
             "metadata": {"name": "gw", "namespace": "ns"},
             "spec": {"gatewayClassName": "sluice", "listeners": [{"name": "web", "protocol": "HTTP", "port": 80}]}},
            {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
             "metadata": {"name": "r", "namespace": "ns"},
             "spec": {"parentRefs": [{"name": "gw"}], "rules": [{"backendRefs": [{"name": "web", "port": 80}]}]}},
        ]);
        ix.apply(Change::Gateway(Box::new(GatewayChange::Class(Box::new(
            serde_json::from_value(objects[0].clone()).expect("class"),
        )))));
        ix.apply(Change::Gateway(Box::new(GatewayChange::Gateway(Box::new(
            serde_json::from_value(objects[1].clone()).expect("gateway"),
        )))));
        ix.apply(Change::Gateway(Box::new(GatewayChange::Route(Box::new(
            serde_json::from_value(objects[2].clone()).expect("route"),
        )))));
        let batch = ix.recompute();
        let pool = batch
            .upserts
            .iter()
            .find(|p| p.name == "service:ns/web:80")
            .expect("service pool");
        assert!(pool.endpoints.is_empty());

        // A slice of a Service no route names: nothing to redo.
        ix.apply(Change::Slice(Box::new(slice(
            "ns",
            "u-1",
            "unrelated",
            "http",
            8080,
            &[("10.0.9.9", true, false)],
        ))));
        assert!(!ix.has_pending(), "an unrelated slice reruns nothing");

        // A slice of the route's Service: its pool gets the endpoint.
        ix.apply(Change::Slice(Box::new(slice(
            "ns",
            "web-1",
            "web",
            "http",
            8080,
            &[("10.0.0.1", true, false)],
        ))));
        assert!(ix.has_pending());
        let batch = ix.recompute();
        let addrs: Vec<String> = batch
            .upserts
            .iter()
            .filter(|p| p.name == "service:ns/web:80")
            .flat_map(|p| p.endpoints.iter().map(|e| e.address.to_string()))
            .collect();
        assert_eq!(addrs, ["10.0.0.1:8080"]);
        assert!(
            batch.route_upserts.is_empty(),
            "the route itself did not change"
        );
    }

    fn trigger(ns: &str, name: &str, pool: &str, min: i32) -> ScalingTrigger {
        let spec = serde_json::from_value(serde_json::json!({
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "poolRef": {"name": pool}, "minReplicas": min, "maxReplicas": 5,
        }))
        .expect("spec");
        let mut t = ScalingTrigger::new(name, spec);
        t.metadata.namespace = Some(ns.into());
        t
    }

    #[test]
    fn a_trigger_that_may_scale_to_zero_marks_its_pool_for_activation() {
        let mut ix = Index::new();
        ix.apply(Change::Pool(Box::new(pool(
            "ns",
            "web",
            serde_json::json!([{"address": "192.0.2.1:80"}]),
        ))));
        let first = ix.recompute();
        assert_eq!(first.upserts[0].activation, None);

        ix.apply(Change::Trigger(Box::new(trigger("ns", "t", "web", 0))));
        let batch = ix.recompute();
        assert_eq!(batch.upserts.len(), 1);
        assert_eq!(batch.upserts[0].activation, Some(Activation::default()));
        assert_eq!(ix.triggers().count(), 1);

        // A status-only update (our own write) changes nothing.
        let mut same = trigger("ns", "t", "web", 0);
        same.status = Some(Default::default());
        ix.apply(Change::Trigger(Box::new(same)));
        assert!(!ix.has_pending());

        // minReplicas back to 1, or a trigger in another namespace: no activation.
        ix.apply(Change::Trigger(Box::new(trigger("ns", "t", "web", 1))));
        ix.apply(Change::Trigger(Box::new(trigger("other", "t", "web", 0))));
        let batch = ix.recompute();
        assert_eq!(batch.upserts[0].activation, None);

        // Moving the trigger to another pool releases the first one.
        ix.apply(Change::Trigger(Box::new(trigger("ns", "t", "web", 0))));
        assert_eq!(
            ix.recompute().upserts[0].activation,
            Some(Activation::default())
        );
        ix.apply(Change::Trigger(Box::new(trigger("ns", "t", "api", 0))));
        assert_eq!(ix.recompute().upserts[0].activation, None);

        ix.apply(Change::Trigger(Box::new(trigger("ns", "t", "web", 0))));
        ix.recompute();
        ix.apply(Change::AllTriggers(vec![]));
        assert_eq!(ix.recompute().upserts[0].activation, None);
        assert_eq!(ix.triggers().count(), 0);
    }
}
