//! Writes `BackendPool` status and Events, only when something changed.
//!
//! [`desired_status`] is pure: pool state + dataplane acks → status. The
//! writer compares it with what the API server holds and patches (server-side
//! apply on the status subresource) only on a difference; each condition
//! transition a user would want to see becomes an Event.
//!
//! # What `Programmed` means
//!
//! `Programmed=True`: at least one dataplane is connected, and every
//! connected dataplane serves the pool's route — its newest version, or a
//! version that was replaced less than the ack deadline ago
//! (`--ack-deadline`, [`DEFAULT_ACK_DEADLINE`]). Dataplanes acknowledge in
//! their reports, once a second, so an ordinary route change (an endpoint
//! added or gone) leaves the condition True while the acks come in, and
//! endpoint churn does not make it flap. `status.dataplanes.synced` counts
//! the dataplanes that serve the route in this sense.
//!
//! `Programmed=False` with reason `Pending`: a connected dataplane has not
//! applied the version that was current one ack deadline ago — it is stuck
//! or refusing tables — or has never had the pool (a new pool, or a
//! dataplane that just connected, until its first ack). `NoDataplanes`: none
//! is connected. `Invalid`/`Conflicted`: the pool has no route to serve.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, Resource};
use sluice_crds::{BackendPool, BackendPoolStatus, DataplaneCounts};
use tokio::sync::{Notify, watch};

use crate::api_errors::Causes;
use crate::conditions::{FIELD_MANAGER, condition};
use crate::dataplanes::{Dataplane, Dataplanes};
use crate::index::{Index, Key, PoolState};
use crate::recorder::{Event, EventType, Recorder};

/// How long a dataplane may take to acknowledge a route change before the
/// pool stops counting as `Programmed`: five report intervals.
pub const DEFAULT_ACK_DEADLINE: Duration = Duration::from_secs(5);

/// The status the pool should have now. `required` is the oldest version
/// of the pool's route a dataplane may have applied and still serve it
/// ([`crate::pool_versions::PoolVersions::required`]; the newest version
/// when `None`). `previous` supplies the transition times of conditions
/// whose status did not change.
pub fn desired_status(
    state: &PoolState,
    dataplanes: &[Dataplane],
    required: Option<u64>,
    previous: Option<&BackendPoolStatus>,
    now: Timestamp,
) -> BackendPoolStatus {
    let generation = state.pool.metadata.generation;
    let before = previous.map_or(&[][..], |s| &s.conditions[..]);
    let cond = |type_: &str, ok: bool, reason: &str, message: String| {
        condition(before, type_, ok, reason, message, generation, now)
    };

    let accepted = match (&state.invalid, &state.conflict) {
        (Some(invalid), _) => cond("Accepted", false, "InvalidSpec", invalid.0.clone()),
        (None, Some(conflict)) => cond("Accepted", false, "Conflicted", conflict.clone()),
        (None, None) => cond("Accepted", true, "Accepted", "the pool is valid".into()),
    };
    let resolved = match state.unresolved.first() {
        None => cond(
            "ResolvedRefs",
            true,
            "ResolvedRefs",
            "every backend resolved".into(),
        ),
        Some(first) => cond(
            "ResolvedRefs",
            false,
            first.reason,
            state
                .unresolved
                .iter()
                .map(|u| u.message.as_str())
                .collect::<Vec<_>>()
                .join("; "),
        ),
    };
    let total = dataplanes.len() as u32;
    let required = state
        .route_version
        .map(|v| required.map_or(v, |r| r.min(v)));
    let synced = match required {
        Some(r) => dataplanes.iter().filter(|d| d.applied_version >= r).count() as u32,
        None => 0,
    };
    let programmed = match (state.route_version, total) {
        (None, _) if state.conflict.is_some() => cond(
            "Programmed",
            false,
            "Conflicted",
            "an older pool serves the same host and path prefix".into(),
        ),
        (None, _) => cond(
            "Programmed",
            false,
            "Invalid",
            "the pool has no valid route".into(),
        ),
        (Some(_), 0) => cond(
            "Programmed",
            false,
            "NoDataplanes",
            "no dataplane is connected".into(),
        ),
        (Some(_), t) if synced < t => cond(
            "Programmed",
            false,
            "Pending",
            format!(
                "{synced} of {t} dataplanes serve route version {} or newer",
                required.unwrap_or_default()
            ),
        ),
        (Some(_), t) => cond(
            "Programmed",
            true,
            "Programmed",
            format!("{t} dataplanes serve the route"),
        ),
    };
    BackendPoolStatus {
        observed_generation: generation,
        conditions: vec![accepted, resolved, programmed],
        endpoints: Some(state.endpoints),
        dataplanes: Some(DataplaneCounts { synced, total }),
        route_version: state.route_version,
    }
}

/// Conditions of `new` whose status or reason differs from `old`.
pub fn changed<'a>(old: &[Condition], new: &'a [Condition]) -> impl Iterator<Item = &'a Condition> {
    new.iter().filter(|c| {
        let before = old.iter().find(|o| o.type_ == c.type_);
        before.is_none_or(|b| b.status != c.status || b.reason != c.reason)
    })
}

/// Conditions of `new` whose status or reason differs from `old`, skipping
/// `Programmed/Pending`, which every new pool and every newly connected
/// dataplane passes through.
pub fn transitions<'a>(
    old: Option<&BackendPoolStatus>,
    new: &'a BackendPoolStatus,
) -> Vec<&'a Condition> {
    let old = old.map_or(&[][..], |s| &s.conditions[..]);
    changed(old, &new.conditions)
        .filter(|c| !(c.type_ == "Programmed" && c.reason == "Pending"))
        .collect()
}

/// What the writer needs.
pub struct StatusWriter {
    /// API client.
    pub client: Client,
    /// Pool state.
    pub index: Arc<Mutex<Index>>,
    /// Dataplane acks.
    pub dataplanes: Arc<Dataplanes>,
    /// Event recorder.
    pub recorder: Recorder,
    /// Woken after each published batch.
    pub wake: Arc<Notify>,
    /// How often acks are re-examined without a wake-up.
    pub interval: Duration,
    /// How long a dataplane may take to acknowledge a route change.
    pub ack_deadline: Duration,
    /// Only the leader writes.
    pub leader: watch::Receiver<bool>,
    /// How long after gaining leadership the first write waits.
    pub takeover_settle: Duration,
}

/// A write we made, to avoid repeating it before the watch shows it back.
struct Written {
    status: BackendPoolStatus,
    at: Instant,
}

/// How long a write is trusted to show up in the watch before it is redone.
const WRITE_SETTLE: Duration = Duration::from_secs(5);

/// First wait after a failed status write; doubles per failure up to
/// [`RETRY_MAX`], so an API server in trouble is not hammered.
const RETRY_START: Duration = Duration::from_secs(1);
/// Longest wait between tries of a failing status write.
const RETRY_MAX: Duration = Duration::from_secs(60);

/// The wait after the `failures`-th failure in a row (1-based).
fn retry_after(failures: u32) -> Duration {
    RETRY_START
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(RETRY_MAX)
}

impl StatusWriter {
    /// Runs until `stop` turns true.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut written: BTreeMap<Key, Written> = BTreeMap::new();
        // Pools whose last write failed: failures in a row, and when to retry.
        let mut failing: BTreeMap<Key, (u32, Instant)> = BTreeMap::new();
        let mut leader = self.leader.clone();
        // A replica leading from the start (no election) writes at once.
        let mut settle = match *leader.borrow_and_update() {
            true => Duration::ZERO,
            false => self.takeover_settle,
        };
        let mut leading_since = leader.borrow().then(Instant::now);
        loop {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(self.interval) => {}
                Ok(()) = leader.changed() => {}
            }
            match (*leader.borrow_and_update(), leading_since) {
                (false, _) => {
                    // What we wrote may be overwritten by the next leader.
                    leading_since = None;
                    settle = self.takeover_settle;
                    written.clear();
                    failing.clear();
                    continue;
                }
                (true, None) => {
                    leading_since = Some(Instant::now());
                    continue;
                }
                (true, Some(since)) if since.elapsed() < settle => continue,
                (true, Some(_)) => {}
            }
            let present = self.dataplanes.present();
            let now = Timestamp::now();
            let work: Vec<(Key, Arc<BackendPool>, BackendPoolStatus)> = {
                let index = self.index.lock().unwrap_or_else(|p| p.into_inner());
                written.retain(|k, _| index.pool(k).is_some());
                failing.retain(|k, _| index.pool(k).is_some());
                index
                    .pools()
                    .filter_map(|(key, state)| {
                        let current = state.pool.status.as_ref();
                        let required = state.versions.required(Instant::now(), self.ack_deadline);
                        let desired = desired_status(state, &present, required, current, now);
                        if current == Some(&desired) {
                            written.remove(key);
                            return None;
                        }
                        let recent = written
                            .get(key)
                            .is_some_and(|w| w.status == desired && w.at.elapsed() < WRITE_SETTLE);
                        let backing_off = failing
                            .get(key)
                            .is_some_and(|(_, retry_at)| Instant::now() < *retry_at);
                        (!recent && !backing_off)
                            .then(|| (key.clone(), Arc::clone(&state.pool), desired))
                    })
                    .collect()
            };
            for (key, pool, desired) in work {
                // Leadership lost mid-batch: stop writing at once.
                if !*leader.borrow() {
                    break;
                }
                if !self.write(&key, &pool, &desired).await {
                    let failures = failing.get(&key).map_or(1, |(n, _)| n + 1);
                    let wait = retry_after(failures);
                    tracing::warn!(pool = %format!("{}/{}", key.0, key.1), failures, retry_in = ?wait, "status write failed; backing off");
                    failing.insert(key, (failures, Instant::now() + wait));
                } else {
                    failing.remove(&key);
                    written.insert(
                        key,
                        Written {
                            status: desired,
                            at: Instant::now(),
                        },
                    );
                }
            }
        }
    }

    async fn write(&self, key: &Key, pool: &BackendPool, desired: &BackendPoolStatus) -> bool {
        let api: Api<BackendPool> = Api::namespaced(self.client.clone(), &key.0);
        let patch = serde_json::json!({
            "apiVersion": "sluice.io/v1alpha1",
            "kind": "BackendPool",
            "status": desired,
        });
        let params = PatchParams::apply(FIELD_MANAGER).force();
        if let Err(e) = api
            .patch_status(&key.1, &params, &Patch::Apply(&patch))
            .await
        {
            tracing::warn!(pool = %format!("{}/{}", key.0, key.1), error = %Causes(&e), "status write failed");
            return false;
        }
        let reference = pool.object_ref(&());
        for c in transitions(pool.status.as_ref(), desired) {
            let event = Event {
                type_: if c.status == "True" {
                    EventType::Normal
                } else {
                    EventType::Warning
                },
                reason: c.reason.clone(),
                action: format!("Set{}", c.type_),
                note: c.message.clone(),
            };
            if let Err(e) = self.recorder.publish(&event, &reference).await {
                tracing::warn!(error = %Causes(&e), "event not recorded");
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::{InvalidSpec, Unresolved};
    use kube::api::ObjectMeta;
    use sluice_crds::EndpointCounts;

    fn state(route_version: Option<u64>) -> PoolState {
        let spec =
            serde_json::from_value(serde_json::json!({"backends": [{"address": "192.0.2.1:80"}]}))
                .unwrap();
        PoolState {
            pool: Arc::new(BackendPool {
                metadata: ObjectMeta {
                    name: Some("p".into()),
                    namespace: Some("ns".into()),
                    generation: Some(4),
                    ..Default::default()
                },
                spec,
                status: None,
            }),
            invalid: None,
            unresolved: vec![],
            endpoints: EndpointCounts { ready: 1, total: 2 },
            route: None,
            route_version,
            versions: Default::default(),
            conflict: None,
        }
    }

    fn dp(name: &str, applied: u64) -> Dataplane {
        Dataplane {
            name: name.into(),
            applied_version: applied,
            rejected: None,
            streams: 1,
        }
    }

    fn reason<'a>(s: &'a BackendPoolStatus, t: &str) -> (&'a str, &'a str) {
        let c = s
            .conditions
            .iter()
            .find(|c| c.type_ == t)
            .expect("condition present");
        (c.status.as_str(), c.reason.as_str())
    }

    #[test]
    fn programmed_follows_the_dataplane_acks() {
        let now = Timestamp::now();
        // Version 10 is newest and 9 was replaced too long ago: b is behind.
        let st = desired_status(
            &state(Some(10)),
            &[dp("a", 10), dp("b", 9)],
            Some(10),
            None,
            now,
        );
        assert_eq!(reason(&st, "Programmed"), ("False", "Pending"));
        assert_eq!(
            st.dataplanes,
            Some(DataplaneCounts {
                synced: 1,
                total: 2
            })
        );
        assert_eq!(st.observed_generation, Some(4));
        let st = desired_status(
            &state(Some(10)),
            &[dp("a", 10), dp("b", 11)],
            Some(10),
            Some(&st),
            now,
        );
        assert_eq!(reason(&st, "Programmed"), ("True", "Programmed"));
        let st = desired_status(&state(Some(10)), &[], Some(10), None, now);
        assert_eq!(reason(&st, "Programmed"), ("False", "NoDataplanes"));
    }

    #[test]
    fn a_dataplane_a_moment_behind_still_serves_the_pool() {
        let now = Timestamp::now();
        // Version 9 was replaced by 12 less than a deadline ago.
        let st = desired_status(
            &state(Some(12)),
            &[dp("a", 12), dp("b", 9)],
            Some(9),
            None,
            now,
        );
        assert_eq!(reason(&st, "Programmed"), ("True", "Programmed"));
        assert_eq!(st.dataplanes.map(|d| d.synced), Some(2));
        assert_eq!(st.route_version, Some(12));
        // One that never had the pool does not.
        let st = desired_status(
            &state(Some(12)),
            &[dp("a", 12), dp("b", 0)],
            Some(9),
            None,
            now,
        );
        assert_eq!(reason(&st, "Programmed"), ("False", "Pending"));
    }

    #[test]
    fn failures_become_false_conditions_with_reasons_and_transition_events() {
        let mut s = state(Some(3));
        s.unresolved = vec![Unresolved {
            reason: "BackendNotFound",
            message: "Service ns/x not found".into(),
        }];
        s.invalid = Some(InvalidSpec("spec.hosts: bad".into()));
        let first = desired_status(&s, &[dp("a", 3)], Some(3), None, Timestamp::now());
        assert_eq!(reason(&first, "Accepted"), ("False", "InvalidSpec"));
        assert_eq!(reason(&first, "ResolvedRefs"), ("False", "BackendNotFound"));
        assert_eq!(transitions(None, &first).len(), 3);
        // Same state later: same status (transition times kept), no events.
        let again = desired_status(&s, &[dp("a", 3)], Some(3), Some(&first), Timestamp::now());
        assert_eq!(again, first);
        assert!(transitions(Some(&first), &again).is_empty());
    }

    #[test]
    fn failed_writes_back_off_exponentially_to_a_minute() {
        let waits: Vec<u64> = (1..=9).map(|n| retry_after(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(retry_after(u32::MAX), RETRY_MAX);
    }
}
