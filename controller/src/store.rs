//! The versioned route table the stream serves.
//!
//! Instead of a queue of deltas per subscriber, the store remembers, for each
//! pool and each route, the version at which it last changed (and, for
//! removed ones, a bounded set of tombstones). Any subscriber can then be brought from any
//! recent version to the current one with a single coalesced delta, and a
//! subscriber that fell too far behind gets a snapshot. Memory is bounded by
//! the table size plus [`MAX_TOMBSTONES`], whatever the number of changes or
//! of slow readers.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use sluice_protocol::{Delta, HttpRoute, PoolRoute, RouteEvent, Snapshot};
use tokio::sync::watch;

/// Removed pools (and, apart, removed routes) remembered for deltas; older
/// bases get a snapshot.
pub const MAX_TOMBSTONES: usize = 4096;

/// The route table, shared by the index (writer) and the stream (readers).
#[derive(Debug)]
pub struct RouteStore {
    inner: Mutex<Inner>,
    version_tx: watch::Sender<u64>,
}

#[derive(Debug)]
struct Inner {
    version: u64,
    /// First version this process produced; a resume from an older version
    /// (another controller's) always gets a snapshot.
    first: u64,
    /// Deltas can be built from any base at or after this version.
    horizon: u64,
    pools: Keyed<PoolRoute>,
    routes: Keyed<HttpRoute>,
}

/// Named entries with the version of their last change, and tombstones.
#[derive(Debug)]
struct Keyed<T> {
    live: BTreeMap<String, (Arc<T>, u64)>,
    tombstones: BTreeMap<String, u64>,
}

impl<T> Default for Keyed<T> {
    fn default() -> Self {
        Self {
            live: BTreeMap::new(),
            tombstones: BTreeMap::new(),
        }
    }
}

/// What names an entry of the table.
trait Named: PartialEq + Clone {
    fn name(&self) -> &str;
}

impl Named for PoolRoute {
    fn name(&self) -> &str {
        &self.name
    }
}

impl Named for HttpRoute {
    fn name(&self) -> &str {
        &self.name
    }
}

impl<T: Named> Keyed<T> {
    /// Applies changes as version `next`; whether anything changed.
    fn change(&mut self, upserts: Vec<T>, removes: Vec<String>, next: u64) -> bool {
        let mut changed = false;
        for name in removes {
            if self.live.remove(&name).is_some() {
                self.tombstones.insert(name, next);
                changed = true;
            }
        }
        for item in upserts {
            if self.live.get(item.name()).is_some_and(|(r, _)| **r == item) {
                continue;
            }
            self.tombstones.remove(item.name());
            self.live
                .insert(item.name().to_string(), (Arc::new(item), next));
            changed = true;
        }
        changed
    }

    /// Drops the oldest tombstones beyond [`MAX_TOMBSTONES`]; returns the
    /// newest version dropped (deltas from before it are unknown).
    fn trim(&mut self) -> u64 {
        let mut horizon = 0;
        while self.tombstones.len() > MAX_TOMBSTONES {
            let oldest = self
                .tombstones
                .iter()
                .min_by_key(|(_, v)| **v)
                .map(|(n, v)| (n.clone(), *v));
            if let Some((name, v)) = oldest {
                self.tombstones.remove(&name);
                horizon = horizon.max(v);
            }
        }
        horizon
    }

    fn all(&self) -> Vec<T> {
        self.live.values().map(|(r, _)| T::clone(r)).collect()
    }

    fn since(&self, base: u64) -> (Vec<T>, Vec<String>) {
        let upserts = self
            .live
            .values()
            .filter(|(_, v)| *v > base)
            .map(|(r, _)| T::clone(r))
            .collect();
        let removes = self
            .tombstones
            .iter()
            .filter(|(_, v)| **v > base)
            .map(|(n, _)| n.clone())
            .collect();
        (upserts, removes)
    }
}

impl RouteStore {
    /// An empty store whose versions start at `first` (use a clock value so
    /// that a restarted controller never reuses its predecessor's versions).
    pub fn new(first: u64) -> Self {
        let (version_tx, _) = watch::channel(first);
        Self {
            inner: Mutex::new(Inner {
                version: first,
                first,
                horizon: first,
                pools: Keyed::default(),
                routes: Keyed::default(),
            }),
            version_tx,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps half-updated in
        // a way that matters more than stopping the controller would.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The current version.
    pub fn version(&self) -> u64 {
        self.lock().version
    }

    /// Notified with the new version after every change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version_tx.subscribe()
    }

    /// Applies one batch of pool changes as one new version. Upserts equal
    /// to what is stored and removes of absent pools are ignored; when
    /// nothing is left the version does not move. Returns the version
    /// holding the batch.
    pub fn publish(&self, upserts: Vec<PoolRoute>, removes: Vec<String>) -> u64 {
        self.publish_with_routes(upserts, removes, Vec::new(), Vec::new())
    }

    /// [`RouteStore::publish`] for pools and routes together: one version,
    /// so a dataplane never sees a route without the pool change that came
    /// with it.
    pub fn publish_with_routes(
        &self,
        upserts: Vec<PoolRoute>,
        removes: Vec<String>,
        route_upserts: Vec<HttpRoute>,
        route_removes: Vec<String>,
    ) -> u64 {
        let mut inner = self.lock();
        let next = inner.version + 1;
        let pools = inner.pools.change(upserts, removes, next);
        let routes = inner.routes.change(route_upserts, route_removes, next);
        if !pools && !routes {
            return inner.version;
        }
        let dropped = inner.pools.trim().max(inner.routes.trim());
        inner.horizon = inner.horizon.max(dropped);
        inner.version = next;
        drop(inner);
        self.version_tx.send_replace(next);
        next
    }

    /// This replica became the leader: its versions jump past `now` (the
    /// clock in microseconds, beyond any version the previous leader could
    /// have handed out) and every older base gets a snapshot. A follower's
    /// store counted its own versions from its start, and a dataplane
    /// resuming from the old leader's numbers must never be taken for one
    /// of ours.
    pub fn lead(&self, now: u64) {
        let mut inner = self.lock();
        let v = inner.version.max(now) + 1;
        inner.version = v;
        inner.first = v;
        inner.horizon = v;
        drop(inner);
        self.version_tx.send_replace(v);
    }

    /// The version at which `name` last changed, if it is in the table.
    pub fn pool_version(&self, name: &str) -> Option<u64> {
        self.lock().pools.live.get(name).map(|(_, v)| *v)
    }

    /// What a subscriber at `base` needs to reach the current version:
    /// nothing, one delta, or a snapshot (no base, unknown base, or too old).
    pub fn event_since(&self, base: Option<u64>) -> Option<RouteEvent> {
        let inner = self.lock();
        let version = inner.version;
        match base {
            Some(b) if b == version => None,
            Some(b) if b >= inner.horizon && b >= inner.first && b < version => {
                let (upserts, removes) = inner.pools.since(b);
                let (route_upserts, route_removes) = inner.routes.since(b);
                Some(RouteEvent::Delta(Delta {
                    version,
                    base: b,
                    upserts,
                    removes,
                    route_upserts,
                    route_removes,
                }))
            }
            _ => Some(RouteEvent::Snapshot(Snapshot {
                version,
                pools: inner.pools.all(),
                routes: inner.routes.all(),
            })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use sluice_protocol::{Endpoint, RouteTable};
    use std::net::SocketAddr;

    fn route(name: &str, port: u16) -> PoolRoute {
        PoolRoute {
            name: name.into(),
            hosts: vec![],
            path_prefix: Default::default(),
            algorithm: Default::default(),
            endpoints: vec![Endpoint::new(SocketAddr::from(([10, 0, 0, 1], port)))],
            ..Default::default()
        }
    }

    #[test]
    fn unchanged_upserts_do_not_bump_the_version() {
        let s = RouteStore::new(100);
        assert_eq!(s.publish(vec![route("a", 1)], vec![]), 101);
        assert_eq!(s.publish(vec![route("a", 1)], vec![]), 101);
        assert_eq!(s.publish(vec![], vec!["missing".into()]), 101);
        assert_eq!(s.publish(vec![route("a", 2)], vec![]), 102);
    }

    #[test]
    fn resumes_get_deltas_unknown_bases_get_snapshots() {
        let s = RouteStore::new(100);
        s.publish(vec![route("a", 1), route("b", 1)], vec![]);
        s.publish(vec![route("b", 2)], vec!["a".into()]);
        assert!(s.event_since(Some(102)).is_none());
        match s.event_since(Some(101)) {
            Some(RouteEvent::Delta(d)) => {
                assert_eq!((d.base, d.version), (101, 102));
                assert_eq!(d.upserts, vec![route("b", 2)]);
                assert_eq!(d.removes, vec!["a".to_string()]);
            }
            other => panic!("expected a delta, got {other:?}"),
        }
        // Versions from before this process, from the future, or none at all.
        for base in [None, Some(7), Some(500)] {
            assert!(
                matches!(s.event_since(base), Some(RouteEvent::Snapshot(_))),
                "{base:?}"
            );
        }
    }

    #[test]
    fn tombstones_are_bounded_and_old_bases_fall_back_to_snapshots() {
        let s = RouteStore::new(0);
        for i in 0..(MAX_TOMBSTONES + 10) {
            let name = format!("p{i}");
            s.publish(vec![route(&name, 1)], vec![]);
            s.publish(vec![], vec![name]);
        }
        assert!(matches!(
            s.event_since(Some(1)),
            Some(RouteEvent::Snapshot(_))
        ));
        assert!(matches!(
            s.event_since(Some(s.version() - 1)),
            Some(RouteEvent::Delta(_))
        ));
    }

    proptest! {
        /// Whatever version a subscriber is at, the event it gets brings it to
        /// exactly the current table.
        #[test]
        fn any_subscriber_converges(ops in prop::collection::vec((0u8..4, 0u16..3, any::<bool>()), 1..40), at in 0usize..40) {
            let s = RouteStore::new(1000);
            let mut seen: Vec<RouteTable> = vec![RouteTable { version: 1000, ..Default::default() }];
            let mut current = RouteTable { version: 1000, ..Default::default() };
            for (pool, port, remove) in ops {
                let name = format!("p{pool}");
                let v = if remove {
                    s.publish(vec![], vec![name.clone()])
                } else {
                    s.publish(vec![route(&name, port)], vec![])
                };
                if remove { current.pools.remove(&name); } else { current.pools.insert(name.clone(), route(&name, port)); }
                current.version = v;
                seen.push(current.clone());
            }
            let mut subscriber = seen[at % seen.len()].clone();
            if let Some(ev) = s.event_since(Some(subscriber.version)) {
                subscriber.apply(ev).expect("event applies");
            }
            prop_assert_eq!(subscriber, current);
        }
    }

    fn http_route(name: &str, pool: u16) -> HttpRoute {
        HttpRoute {
            name: name.into(),
            rules: vec![sluice_protocol::Rule {
                backends: vec![sluice_protocol::Backend {
                    pool: format!("p{pool}"),
                    weight: 1,
                }],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    proptest! {
        /// The same, with routes changing beside pools.
        #[test]
        fn any_subscriber_converges_on_pools_and_routes(ops in prop::collection::vec((0u8..3, 0u16..3, any::<bool>(), any::<bool>()), 1..40), at in 0usize..40) {
            let s = RouteStore::new(1000);
            let mut current = RouteTable { version: 1000, ..Default::default() };
            let mut seen = vec![current.clone()];
            for (n, port, remove, is_route) in ops {
                let name = format!("n{n}");
                let v = match (is_route, remove) {
                    (false, false) => {
                        current.pools.insert(name.clone(), route(&name, port));
                        s.publish(vec![route(&name, port)], vec![])
                    }
                    (false, true) => {
                        current.pools.remove(&name);
                        s.publish(vec![], vec![name])
                    }
                    (true, false) => {
                        current.routes.insert(name.clone(), http_route(&name, port));
                        s.publish_with_routes(vec![], vec![], vec![http_route(&name, port)], vec![])
                    }
                    (true, true) => {
                        current.routes.remove(&name);
                        s.publish_with_routes(vec![], vec![], vec![], vec![name])
                    }
                };
                current.version = v;
                seen.push(current.clone());
            }
            let mut subscriber = seen[at % seen.len()].clone();
            if let Some(ev) = s.event_since(Some(subscriber.version)) {
                subscriber.apply(ev).expect("event applies");
            }
            prop_assert_eq!(subscriber, current);
        }
    }

    #[test]
    fn a_route_change_resumes_as_a_delta_of_routes() {
        let s = RouteStore::new(100);
        let v1 = s.publish_with_routes(
            vec![route("a", 1)],
            vec![],
            vec![http_route("r", 1)],
            vec![],
        );
        let v2 = s.publish_with_routes(vec![], vec![], vec![http_route("r", 2)], vec![]);
        assert_eq!(
            s.publish_with_routes(vec![], vec![], vec![http_route("r", 2)], vec![]),
            v2
        );
        match s.event_since(Some(v1)) {
            Some(RouteEvent::Delta(d)) => {
                assert!(d.upserts.is_empty() && d.removes.is_empty());
                assert_eq!(d.route_upserts, vec![http_route("r", 2)]);
            }
            other => panic!("expected a delta, got {other:?}"),
        }
        s.publish_with_routes(vec![], vec![], vec![], vec!["r".into()]);
        match s.event_since(Some(v2)) {
            Some(RouteEvent::Delta(d)) => assert_eq!(d.route_removes, vec!["r".to_string()]),
            other => panic!("expected a delta, got {other:?}"),
        }
        match s.event_since(None) {
            Some(RouteEvent::Snapshot(snap)) => {
                assert_eq!(snap.pools.len(), 1);
                assert!(snap.routes.is_empty());
            }
            other => panic!("expected a snapshot, got {other:?}"),
        }
    }

    #[test]
    fn a_new_leader_never_takes_an_old_leaders_version_for_its_own() {
        // Two replicas started a microsecond apart and saw the same changes.
        let old = RouteStore::new(1_000);
        let new = RouteStore::new(1_001);
        for p in 0..5u16 {
            old.publish(vec![route("a", p)], vec![]);
            new.publish(vec![route("a", p)], vec![]);
        }
        let resumed_from = old.publish(vec![route("b", 1)], vec![]);
        // Without the jump, the follower knows a version with that number.
        assert!(matches!(
            new.event_since(Some(resumed_from)),
            Some(RouteEvent::Delta(_)) | None
        ));
        new.lead(2_000_000);
        assert!(new.version() > 2_000_000);
        assert!(matches!(
            new.event_since(Some(resumed_from)),
            Some(RouteEvent::Snapshot(_))
        ));
        // Its own later versions resume with deltas as usual.
        let since = new.version();
        new.publish(vec![route("c", 1)], vec![]);
        assert!(matches!(
            new.event_since(Some(since)),
            Some(RouteEvent::Delta(_))
        ));
    }
}
