//! The versioned route table and the two stream events that change it.
//!
//! A dataplane holds one [`RouteTable`]; a `snapshot` replaces it, a `delta`
//! applies on top of exactly the version it was computed from. Anything else
//! is refused whole, so a table is never half-applied.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::http_route::{HttpRoute, validate_routes};
use crate::route::{PoolRoute, RouteError, validate_pools};

/// Every pool at one version.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    /// The controller's table version.
    pub version: u64,
    /// All pools.
    pub pools: Vec<PoolRoute>,
    /// All routes (absent from the JSON when there are none, so a table of
    /// pools alone reads as it always did).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<HttpRoute>,
}

/// The change from version `base` to version `version`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Delta {
    /// The version after the change.
    pub version: u64,
    /// The version the change applies to.
    pub base: u64,
    /// Pools added or changed, whole.
    #[serde(default)]
    pub upserts: Vec<PoolRoute>,
    /// Names of pools removed.
    #[serde(default)]
    pub removes: Vec<String>,
    /// Routes added or changed, whole.
    #[serde(
        default,
        rename = "routeUpserts",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub route_upserts: Vec<HttpRoute>,
    /// Names of routes removed.
    #[serde(
        default,
        rename = "routeRemoves",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub route_removes: Vec<String>,
}

/// One event of the route stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteEvent {
    /// A full table.
    Snapshot(Snapshot),
    /// An incremental change.
    Delta(Delta),
}

impl RouteEvent {
    /// The SSE event name.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Snapshot(_) => crate::EVENT_SNAPSHOT,
            Self::Delta(_) => crate::EVENT_DELTA,
        }
    }

    /// The version the table has after this event.
    pub fn version(&self) -> u64 {
        match self {
            Self::Snapshot(s) => s.version,
            Self::Delta(d) => d.version,
        }
    }

    /// The JSON payload (one line, as SSE `data:` needs).
    pub fn to_json(&self) -> String {
        let encoded = match self {
            Self::Snapshot(s) => serde_json::to_string(s),
            Self::Delta(d) => serde_json::to_string(d),
        };
        // Serializing plain structs with string keys cannot fail.
        encoded.unwrap_or_default()
    }

    /// Parses an SSE message by event name.
    pub fn from_sse(event: &str, data: &str) -> Result<Self, ApplyError> {
        match event {
            crate::EVENT_SNAPSHOT => serde_json::from_str(data)
                .map(Self::Snapshot)
                .map_err(|e| ApplyError::Malformed(format!("snapshot: {e}"))),
            crate::EVENT_DELTA => serde_json::from_str(data)
                .map(Self::Delta)
                .map_err(|e| ApplyError::Malformed(format!("delta: {e}"))),
            other => Err(ApplyError::Malformed(format!("unknown event {other:?}"))),
        }
    }
}

/// Why an event was not applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The delta was computed from another version than the one held.
    #[error("delta from version {base} does not apply to version {have}")]
    BaseMismatch { have: u64, base: u64 },
    /// The event did not parse.
    #[error("malformed event: {0}")]
    Malformed(String),
    /// The resulting table is invalid.
    #[error("invalid table: {0}")]
    Invalid(#[from] RouteError),
}

/// A versioned set of pools and routes, each keyed by name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteTable {
    /// Version of the last applied event; 0 before any.
    pub version: u64,
    /// Pools by name.
    pub pools: BTreeMap<String, PoolRoute>,
    /// Routes by name.
    pub routes: BTreeMap<String, HttpRoute>,
}

impl RouteTable {
    /// A table at `version` holding `pools` (names assumed unique, as
    /// [`crate::RouteFile::from_yaml`] guarantees).
    pub fn from_pools(version: u64, pools: Vec<PoolRoute>) -> Self {
        Self::from_parts(version, pools, Vec::new())
    }

    /// A table at `version` holding `pools` and `routes` (names assumed
    /// unique within each, as [`crate::RouteFile::from_yaml`] guarantees).
    pub fn from_parts(version: u64, pools: Vec<PoolRoute>, routes: Vec<HttpRoute>) -> Self {
        Self {
            version,
            pools: pools.into_iter().map(|p| (p.name.clone(), p)).collect(),
            routes: routes.into_iter().map(|r| (r.name.clone(), r)).collect(),
        }
    }

    /// Applies an event, or leaves the table untouched and says why.
    pub fn apply(&mut self, event: RouteEvent) -> Result<(), ApplyError> {
        match event {
            RouteEvent::Snapshot(s) => {
                validate_pools(&s.pools)?;
                validate_routes(&s.routes)?;
                *self = Self::from_parts(s.version, s.pools, s.routes);
            }
            RouteEvent::Delta(d) => {
                if d.base != self.version {
                    return Err(ApplyError::BaseMismatch {
                        have: self.version,
                        base: d.base,
                    });
                }
                validate_pools(&d.upserts)?;
                validate_routes(&d.route_upserts)?;
                // Everything that can refuse the delta was checked above:
                // change the table in place, at the cost of what changed.
                for name in &d.removes {
                    self.pools.remove(name);
                }
                for pool in d.upserts {
                    self.pools.insert(pool.name.clone(), pool);
                }
                for name in &d.route_removes {
                    self.routes.remove(name);
                }
                for route in d.route_upserts {
                    self.routes.insert(route.name.clone(), route);
                }
                self.version = d.version;
            }
        }
        Ok(())
    }

    /// The full table as a snapshot event.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            version: self.version,
            pools: self.pools.values().cloned().collect(),
            routes: self.routes.values().cloned().collect(),
        }
    }

    /// The delta that turns `self` into `newer`.
    pub fn diff(&self, newer: &RouteTable) -> Delta {
        let upserts = newer
            .pools
            .iter()
            .filter(|(name, pool)| self.pools.get(*name) != Some(pool))
            .map(|(_, pool)| pool.clone())
            .collect();
        let removes = self
            .pools
            .keys()
            .filter(|name| !newer.pools.contains_key(*name))
            .cloned()
            .collect();
        Delta {
            version: newer.version,
            base: self.version,
            upserts,
            removes,
            route_upserts: newer
                .routes
                .iter()
                .filter(|(name, route)| self.routes.get(*name) != Some(route))
                .map(|(_, route)| route.clone())
                .collect(),
            route_removes: self
                .routes
                .keys()
                .filter(|name| !newer.routes.contains_key(*name))
                .cloned()
                .collect(),
        }
    }

    /// Names of pools that differ between the two tables.
    pub fn changed_names(&self, newer: &RouteTable) -> BTreeSet<String> {
        let d = self.diff(newer);
        d.upserts
            .into_iter()
            .map(|p| p.name)
            .chain(d.removes)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::Endpoint;
    use proptest::prelude::*;
    use std::net::SocketAddr;

    fn pool(name: &str, ports: &[u16]) -> PoolRoute {
        PoolRoute {
            name: name.to_string(),
            hosts: vec![],
            path_prefix: Default::default(),
            algorithm: Default::default(),
            endpoints: ports
                .iter()
                .map(|p| Endpoint::new(SocketAddr::from(([127, 0, 0, 1], *p))))
                .collect(),
            ..Default::default()
        }
    }

    fn table(version: u64, pools: &[(String, Vec<u16>)]) -> RouteTable {
        RouteTable {
            version,
            pools: pools.iter().map(|(n, p)| (n.clone(), pool(n, p))).collect(),
            ..RouteTable::default()
        }
    }

    #[test]
    fn a_delta_on_the_wrong_base_is_refused_and_changes_nothing() {
        let mut t = table(5, &[("a".into(), vec![1])]);
        let before = t.clone();
        let err = t
            .apply(RouteEvent::Delta(Delta {
                version: 7,
                base: 6,
                upserts: vec![],
                removes: vec!["a".into()],
                ..Delta::default()
            }))
            .expect_err("wrong base");
        assert!(matches!(err, ApplyError::BaseMismatch { have: 5, base: 6 }));
        assert_eq!(t, before);
    }

    #[test]
    fn an_invalid_delta_is_refused_and_changes_nothing() {
        let mut t = table(5, &[("a".into(), vec![1])]);
        let before = t.clone();
        // Removes "a" and upserts a pool listing one endpoint twice.
        let err = t
            .apply(RouteEvent::Delta(Delta {
                version: 6,
                base: 5,
                upserts: vec![pool("b", &[2, 2])],
                removes: vec!["a".into()],
                ..Delta::default()
            }))
            .expect_err("duplicate endpoint");
        assert!(err.to_string().contains("more than once"), "{err}");
        assert_eq!(t, before);
    }

    #[test]
    fn events_round_trip_through_json() {
        let t = table(3, &[("ns/a".into(), vec![1, 2])]);
        let ev = RouteEvent::Snapshot(t.snapshot());
        let back = RouteEvent::from_sse(ev.name(), &ev.to_json()).expect("parses");
        assert_eq!(back, ev);
        assert!(!ev.to_json().contains('\n'));
    }

    fn arb_table() -> impl Strategy<Value = Vec<(String, Vec<u16>)>> {
        prop::collection::btree_map("[a-e]", prop::collection::btree_set(1u16..20, 0..4), 0..5)
            .prop_map(|m| {
                m.into_iter()
                    .map(|(k, v)| (k, v.into_iter().collect()))
                    .collect()
            })
    }

    proptest! {
        #[test]
        fn diff_then_apply_reaches_the_newer_table(a in arb_table(), b in arb_table()) {
            let old = table(10, &a);
            let new = table(11, &b);
            let mut applied = old.clone();
            applied.apply(RouteEvent::Delta(old.diff(&new))).expect("delta applies");
            prop_assert_eq!(applied, new);
        }
    }
}
