//! The autoscaler's loop: once a second (and at once when a dataplane
//! holds requests for a pool at zero), for every ScalingTrigger, the leader
//! reads the target's `/scale`, measures the pool's reported traffic,
//! [`decide`]s, patches `/scale` when the count changes, and writes status,
//! Events and metrics. The decisions themselves are pure
//! ([`crate::autoscale`]); this module is the I/O around them.
//!
//! Status is written when anything but `currentMetrics` changed, and
//! `currentMetrics` alone at most every [`METRICS_REFRESH`] (HPA's sync
//! period), so a busy pool does not write its trigger every second.

pub mod status;
pub mod target;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, Resource};
use sluice_crds::{ScalingTrigger, ScalingTriggerStatus};
use tokio::sync::{Notify, watch};

use crate::api_errors::Causes;
use crate::autoscale::{self, History, Spec, decide};
use crate::conditions::FIELD_MANAGER;
use crate::index::{Index, Key};
use crate::metrics::{LimitLabels, Metrics, ScaleLabels, TriggerLabel};
use crate::recorder::{Event, EventType, Recorder};
use crate::status::changed;
use crate::traffic::Traffic;
use status::{Outcome, desired_status, differs_beyond_metrics};
use target::Targets;

/// How often `currentMetrics` alone is refreshed in status.
pub const METRICS_REFRESH: Duration = Duration::from_secs(15);

/// Shortest time between two passes, however often demand wakes the loop.
const MIN_GAP: Duration = Duration::from_millis(100);

/// How long a write is trusted to show up in the watch before it is redone.
const WRITE_SETTLE: Duration = Duration::from_secs(5);

/// What the autoscaler needs.
pub struct Scaler {
    /// API client.
    pub client: Client,
    /// Triggers and pools.
    pub index: Arc<Mutex<Index>>,
    /// Reported traffic.
    pub traffic: Arc<Traffic>,
    /// Event recorder.
    pub recorder: Recorder,
    /// Controller metrics.
    pub metrics: Arc<Metrics>,
    /// Only the leader scales.
    pub leader: watch::Receiver<bool>,
    /// Woken when a dataplane reports held requests.
    pub demand: Arc<Notify>,
    /// Time between passes.
    pub interval: Duration,
}

/// What the leader remembers per trigger.
#[derive(Default)]
struct Memory {
    uid: Option<String>,
    history: History,
    last_scale: Option<Time>,
    written: Option<(ScalingTriggerStatus, Instant)>,
}

fn label(key: &Key) -> String {
    format!("{}/{}", key.0, key.1)
}

impl Scaler {
    /// Runs until `stop` turns true.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut memory: BTreeMap<Key, Memory> = BTreeMap::new();
        let mut targets = Targets::new(self.client.clone());
        let mut leader = self.leader.clone();
        let mut last_pass = Instant::now();
        loop {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                _ = self.demand.notified() => {}
                _ = tokio::time::sleep(self.interval) => {}
                Ok(()) = leader.changed() => {}
            }
            if !*leader.borrow_and_update() {
                // A new leader starts from scratch, as HPA does after a restart.
                memory.clear();
                continue;
            }
            let gap = last_pass.elapsed();
            if gap < MIN_GAP {
                tokio::time::sleep(MIN_GAP - gap).await;
            }
            last_pass = Instant::now();
            let work: Vec<(Key, Arc<ScalingTrigger>, Option<i32>)> = {
                let index = self.index.lock().unwrap_or_else(|p| p.into_inner());
                index
                    .triggers()
                    .map(|(key, t)| {
                        let pool = (key.0.clone(), t.spec.pool_ref.name.clone());
                        let ready = index
                            .pool(&pool)
                            .map(|p| i32::try_from(p.endpoints.ready).unwrap_or(i32::MAX));
                        (key.clone(), Arc::clone(t), ready)
                    })
                    .collect()
            };
            memory.retain(|key, _| {
                let keep = work.iter().any(|(k, _, _)| k == key);
                if !keep {
                    self.metrics.desired_replicas.remove(&TriggerLabel {
                        trigger: label(key),
                    });
                    for limit in autoscale::Limit::ALL {
                        self.metrics.scaling_limited.remove(&LimitLabels {
                            trigger: label(key),
                            reason: limit.reason().into(),
                        });
                    }
                }
                keep
            });
            // What each pool's triggers need kept of its traffic.
            let mut windows: BTreeMap<String, Duration> = BTreeMap::new();
            for (key, trigger, ready) in work {
                if !*leader.borrow() {
                    break;
                }
                let mem = memory.entry(key.clone()).or_default();
                if mem.uid != trigger.metadata.uid {
                    *mem = Memory {
                        uid: trigger.metadata.uid.clone(),
                        ..Memory::default()
                    };
                }
                if let Some((pool, window)) =
                    self.pass(&key, &trigger, ready, mem, &mut targets).await
                {
                    let kept = windows.entry(pool).or_default();
                    *kept = (*kept).max(window);
                }
            }
            self.traffic.keep(&windows, Instant::now());
        }
    }

    /// One trigger, one pass. Returns the pool and the window whose
    /// traffic the trigger reads (none while its spec is invalid).
    async fn pass(
        &self,
        key: &Key,
        trigger: &ScalingTrigger,
        ready: Option<i32>,
        mem: &mut Memory,
        targets: &mut Targets,
    ) -> Option<(String, Duration)> {
        let now = Timestamp::now();
        let spec = match Spec::from_crd(&trigger.spec) {
            Ok(spec) => spec,
            Err(e) => {
                let outcome = Outcome::InvalidSpec(e.to_string());
                self.write_status(key, trigger, &outcome, mem, now).await;
                return None;
            }
        };
        let pool = format!("{}/{}", key.0, trigger.spec.pool_ref.name);
        let watched = Some((pool.clone(), spec.window));
        let target = &trigger.spec.scale_target_ref;
        let scale = match targets.get(&key.0, target).await {
            Ok(scale) => scale,
            Err(e) => {
                self.write_status(key, trigger, &Outcome::NoScale(e), mem, now)
                    .await;
                return watched;
            }
        };
        let at = Instant::now();
        let stable = self.traffic.measure(&pool, spec.window, at);
        let burst = self
            .traffic
            .measure(&pool, autoscale::observe::burst_window(spec.window), at);
        let observation = autoscale::observe::observation(
            &spec.targets,
            scale.spec,
            ready.unwrap_or(0),
            &stable,
            &burst,
        );
        let decision = decide(&spec, now, &observation, &mut mem.history);
        let trigger_label = TriggerLabel {
            trigger: label(key),
        };
        self.metrics
            .desired_replicas
            .get_or_create(&trigger_label)
            .set(i64::from(decision.desired));
        for limit in autoscale::Limit::ALL {
            self.metrics
                .scaling_limited
                .get_or_create(&LimitLabels {
                    trigger: label(key),
                    reason: limit.reason().into(),
                })
                .set(i64::from(decision.limited == Some(limit)));
        }
        let mut update_error = None;
        if decision.changed() {
            match targets.set(&key.0, target, decision.desired).await {
                Ok(()) => {
                    mem.history
                        .record_scale(&spec, now, decision.current, decision.desired);
                    mem.last_scale = Some(Time(now));
                    if let Some(direction) = decision.direction() {
                        self.metrics
                            .scale_decisions
                            .get_or_create(&ScaleLabels {
                                trigger: label(key),
                                direction: direction.into(),
                            })
                            .inc();
                    }
                    tracing::info!(trigger = %label(key), from = decision.current, to = decision.desired, reason = %decision.reason, "scaled");
                    self.event(
                        trigger,
                        EventType::Normal,
                        "SuccessfulRescale",
                        format!(
                            "New size: {}; reason: {}",
                            decision.desired,
                            decision.message()
                        ),
                    )
                    .await;
                }
                Err(e) => {
                    tracing::warn!(trigger = %label(key), error = %e, "scale patch failed");
                    self.event(
                        trigger,
                        EventType::Warning,
                        "FailedRescale",
                        format!(
                            "New size: {}; reason: {}; error: {e}",
                            decision.desired,
                            decision.message()
                        ),
                    )
                    .await;
                    update_error = Some(e);
                }
            }
        }
        let outcome = Outcome::Decided {
            decision: &decision,
            pool_found: ready.is_some(),
            update_error,
        };
        self.write_status(key, trigger, &outcome, mem, now).await;
        watched
    }

    async fn write_status(
        &self,
        key: &Key,
        trigger: &ScalingTrigger,
        outcome: &Outcome<'_>,
        mem: &mut Memory,
        now: Timestamp,
    ) {
        let desired = desired_status(trigger, outcome, mem.last_scale.clone(), now);
        let held = trigger.status.as_ref();
        let due = match (held, &mem.written) {
            (Some(held), _) if *held == desired => false,
            // Our last write has not come back through the watch yet.
            (_, Some((written, at))) if at.elapsed() < WRITE_SETTLE && *written == desired => false,
            (Some(held), Some((_, at))) if !differs_beyond_metrics(held, &desired) => {
                at.elapsed() >= METRICS_REFRESH
            }
            _ => true,
        };
        if !due {
            return;
        }
        let api: Api<ScalingTrigger> = Api::namespaced(self.client.clone(), &key.0);
        let patch = serde_json::json!({
            "apiVersion": "sluice.io/v1alpha1",
            "kind": "ScalingTrigger",
            "status": desired,
        });
        let params = PatchParams::apply(FIELD_MANAGER).force();
        if let Err(e) = api
            .patch_status(&key.1, &params, &Patch::Apply(&patch))
            .await
        {
            tracing::warn!(trigger = %label(key), error = %Causes(&e), "status write failed");
            return;
        }
        let before = held.map_or(&[][..], |s| &s.conditions[..]);
        let written_before = mem.written.as_ref().map(|(s, _)| &s.conditions[..]);
        // One Warning per distinct problem (an invalid spec turns two
        // conditions False with the same reason and message).
        let mut warned: Vec<(&str, &str)> = Vec::new();
        for c in changed(written_before.unwrap_or(before), &desired.conditions) {
            let problem = (c.reason.as_str(), c.message.as_str());
            if c.status == "False" && c.type_ != "ScalingLimited" && !warned.contains(&problem) {
                warned.push(problem);
                self.event(trigger, EventType::Warning, &c.reason, c.message.clone())
                    .await;
            }
        }
        mem.written = Some((desired, Instant::now()));
    }

    async fn event(&self, trigger: &ScalingTrigger, type_: EventType, reason: &str, note: String) {
        let event = Event {
            type_,
            reason: reason.to_string(),
            action: "Scale".into(),
            note,
        };
        if let Err(e) = self
            .recorder
            .publish(&event, &trigger.object_ref(&()))
            .await
        {
            tracing::warn!(error = %Causes(&e), "event not recorded");
        }
    }
}
