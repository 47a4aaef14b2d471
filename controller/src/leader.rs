//! Leader election with a `coordination.k8s.io/v1` Lease, the way client-go's
//! `leaderelection` package does it.
//!
//! Why our own: kube-rs has no elector; `kubert` (linkerd's, which has one)
//! is pinned to kube 1.x, and `kube-lease-manager` decides expiry by comparing
//! the remote `renewTime` with the local wall clock, which breaks under clock
//! skew between nodes. client-go never trusts a remote clock: a lease counts as
//! expired when its record has not *changed* for `leaseDurationSeconds` of the
//! local monotonic clock. That rule, the optimistic-concurrency write and the
//! release on shutdown fit in the small state machine below ([`Election`],
//! pure and unit-tested) and one loop around it ([`run`]).
//!
//! Timing (client-go's defaults): the leader renews every `retry_period`; if no
//! renewal succeeds within `renew_deadline` of the last one it steps down, which
//! is before any follower can see the lease expire (`lease_duration`, counted
//! from when the follower last saw the record change). Followers retry every
//! `retry_period` plus up to 20 % jitter.

use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::api_errors::{Causes, Outage, Report};

/// Where and how to hold the lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseConfig {
    /// Namespace of the Lease (the controller's own).
    pub namespace: String,
    /// Name of the Lease, shared by every replica.
    pub name: String,
    /// This replica's name in `holderIdentity` (the pod name).
    pub identity: String,
    /// How long a lease stays valid without renewal; the longest a crashed
    /// leader leaves the cluster without one.
    pub lease_duration: Duration,
    /// How long a leader keeps trying to renew before it steps down.
    pub renew_deadline: Duration,
    /// Interval between attempts (renewals and acquisitions).
    pub retry_period: Duration,
}

impl LeaseConfig {
    /// client-go's defaults: 15 s lease, 10 s renew deadline, 2 s retry period.
    pub fn new(
        namespace: impl Into<String>,
        name: impl Into<String>,
        identity: impl Into<String>,
    ) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }

    /// A leader must give up before a follower may take over, and must get
    /// more than one try at renewing: `retry_period < renew_deadline < lease_duration`.
    pub fn validate(&self) -> Result<(), String> {
        if self.identity.is_empty() {
            return Err("the leader-election identity (--name) must not be empty".into());
        }
        if !(self.retry_period < self.renew_deadline && self.renew_deadline < self.lease_duration) {
            return Err(format!(
                "leader election needs retry period < renew deadline < lease duration (got {:?}, {:?}, {:?})",
                self.retry_period, self.renew_deadline, self.lease_duration
            ));
        }
        Ok(())
    }
}

/// What to do after reading the lease.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// There is no Lease yet: create it with this record.
    Create(LeaseSpec),
    /// Write this record over the one read (a renewal or a takeover), with
    /// the resourceVersion read, so a concurrent writer makes it fail.
    Write(LeaseSpec),
    /// Another replica holds a lease that has not expired.
    Follow {
        /// Its identity.
        holder: String,
    },
}

/// The elector's memory between attempts: the last record seen and when,
/// on the local monotonic clock, it was first seen.
#[derive(Clone, Debug)]
pub struct Election {
    identity: String,
    lease_duration: Duration,
    observed: Option<(LeaseSpec, Instant)>,
}

impl Election {
    /// An election for `identity`, holding leases for `lease_duration`.
    pub fn new(identity: impl Into<String>, lease_duration: Duration) -> Self {
        Self {
            identity: identity.into(),
            lease_duration,
            observed: None,
        }
    }

    /// Decides from the record read at `now` (`None`: no Lease object).
    /// `wall` is the same moment on the wall clock, written into the record
    /// for people to read; expiry never depends on it.
    pub fn step(&mut self, current: Option<&LeaseSpec>, now: Instant, wall: Timestamp) -> Step {
        let Some(current) = current else {
            return Step::Create(self.record(None, wall));
        };
        if self
            .observed
            .as_ref()
            .is_none_or(|(seen, _)| seen != current)
        {
            self.observed = Some((current.clone(), now));
        }
        if let Some(holder) = holder(current)
            && holder != self.identity
        {
            let lasts = current
                .lease_duration_seconds
                .filter(|s| *s > 0)
                .map_or(self.lease_duration, |s| Duration::from_secs(s as u64));
            let seen_at = self.observed.as_ref().map_or(now, |(_, at)| *at);
            if now < seen_at + lasts {
                return Step::Follow {
                    holder: holder.to_string(),
                };
            }
        }
        Step::Write(self.record(Some(current), wall))
    }

    /// Remembers a record this replica wrote, so that its own write does not
    /// count as a change that restarts the expiry clock.
    pub fn written(&mut self, record: LeaseSpec, now: Instant) {
        self.observed = Some((record, now));
    }

    /// The record that gives up a lease this replica holds, so a follower
    /// takes over at its next attempt instead of waiting for expiry;
    /// `None` when the lease is not ours.
    pub fn release(&self, current: &LeaseSpec, wall: Timestamp) -> Option<LeaseSpec> {
        (holder(current) == Some(self.identity.as_str())).then(|| LeaseSpec {
            holder_identity: None,
            lease_duration_seconds: Some(1),
            acquire_time: Some(MicroTime(wall)),
            renew_time: Some(MicroTime(wall)),
            ..current.clone()
        })
    }

    /// Our record: a renewal keeps the acquire time and transition count, a
    /// takeover (from anyone else, or from nobody) counts one transition.
    fn record(&self, current: Option<&LeaseSpec>, wall: Timestamp) -> LeaseSpec {
        let ours = current.is_some_and(|c| holder(c) == Some(self.identity.as_str()));
        let transitions = current.and_then(|c| c.lease_transitions).unwrap_or(0);
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(whole_seconds(self.lease_duration)),
            acquire_time: match (ours, current) {
                (true, Some(c)) => c.acquire_time.clone(),
                _ => Some(MicroTime(wall)),
            },
            renew_time: Some(MicroTime(wall)),
            lease_transitions: Some(match (ours, current) {
                (true, _) => transitions,
                (false, Some(_)) => transitions + 1,
                (false, None) => 0,
            }),
            ..current.cloned().unwrap_or_default()
        }
    }
}

/// The holder, when there is one (client-go writes `""` on release).
fn holder(spec: &LeaseSpec) -> Option<&str> {
    spec.holder_identity.as_deref().filter(|h| !h.is_empty())
}

/// `leaseDurationSeconds` is whole seconds: round up, at least one.
fn whole_seconds(d: Duration) -> i32 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    i32::try_from(secs.max(1)).unwrap_or(i32::MAX)
}

/// How one attempt ended.
enum Outcome {
    Leading,
    Following(Option<String>),
}

/// Campaigns for and holds the lease until `stop` turns true, publishing
/// whether this replica leads on `leader`. On stop a leader first stops
/// acting (publishes `false`), then releases the lease.
pub async fn run(
    api: Api<Lease>,
    config: LeaseConfig,
    leader: Arc<watch::Sender<bool>>,
    on_lead: impl Fn() + Send,
    mut stop: watch::Receiver<bool>,
) {
    let mut election = Election::new(config.identity.clone(), config.lease_duration);
    let mut renewed: Option<Instant> = None;
    let mut last_holder: Option<String> = None;
    let mut outage = Outage::default();
    let lease = format!("{}/{}", config.namespace, config.name);
    loop {
        let leading = *leader.borrow();
        // A leader's attempt may not outlast its renew deadline.
        let deadline = match (leading, renewed) {
            (true, Some(at)) => at + config.renew_deadline,
            _ => Instant::now() + config.renew_deadline,
        };
        let attempt = tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            a = tokio::time::timeout_at(deadline, attempt(&api, &config.name, &mut election)) => a,
        };
        if let Ok(Ok(_)) = &attempt
            && let Some(after) = outage.succeeded(Instant::now().into_std())
        {
            tracing::info!(%lease, ?after, "lease attempts work again");
        }
        match attempt {
            Ok(Ok(Outcome::Leading)) => {
                renewed = Some(Instant::now());
                if !leading {
                    tracing::info!(%lease, identity = %config.identity, "became the leader");
                    // Before anything is served as the leader.
                    on_lead();
                    leader.send_replace(true);
                }
            }
            Ok(Ok(Outcome::Following(holder))) => {
                if leading {
                    tracing::warn!(%lease, ?holder, "lost the lease; stepping down");
                    leader.send_replace(false);
                } else if holder != last_holder {
                    tracing::info!(%lease, ?holder, "following");
                }
                last_holder = holder;
            }
            Ok(Err(e)) => match outage.failed(Instant::now().into_std()) {
                Report::Started => {
                    tracing::warn!(%lease, error = %Causes(&e), "lease attempt failed");
                }
                Report::Continuing {
                    failing_for,
                    unlogged,
                } => {
                    tracing::warn!(%lease, error = %Causes(&e), ?failing_for, unlogged, "lease attempts still failing");
                }
                Report::Quiet => {
                    tracing::debug!(%lease, error = %Causes(&e), "lease attempt failed")
                }
            },
            Err(_) => tracing::warn!(%lease, "lease attempt timed out"),
        }
        if *leader.borrow() && renewed.is_none_or(|at| at.elapsed() >= config.renew_deadline) {
            tracing::warn!(%lease, deadline = ?config.renew_deadline, "could not renew the lease in time; stepping down");
            leader.send_replace(false);
        }
        let wait = if *leader.borrow() {
            config.retry_period
        } else {
            config.retry_period + jitter(config.retry_period / 5)
        };
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            _ = tokio::time::sleep(wait) => {}
        }
    }
    if leader.send_replace(false) {
        let released = tokio::time::timeout(
            config.renew_deadline,
            release(&api, &config.name, &election),
        );
        match released.await {
            Ok(Ok(())) => tracing::info!(%lease, "released the lease"),
            Ok(Err(e)) => {
                tracing::warn!(%lease, error = %Causes(&e), "could not release the lease; it expires on its own")
            }
            Err(_) => {
                tracing::warn!(%lease, "releasing the lease timed out; it expires on its own")
            }
        }
    }
}

/// One read-decide-write round.
async fn attempt(
    api: &Api<Lease>,
    name: &str,
    election: &mut Election,
) -> Result<Outcome, kube::Error> {
    let lease = api.get_opt(name).await?;
    let spec = lease.as_ref().map(|l| l.spec.clone().unwrap_or_default());
    let step = election.step(spec.as_ref(), Instant::now(), Timestamp::now());
    let written = match step {
        Step::Follow { holder } => return Ok(Outcome::Following(Some(holder))),
        Step::Create(record) => {
            let new = Lease {
                metadata: ObjectMeta {
                    name: Some(name.to_string()),
                    ..ObjectMeta::default()
                },
                spec: Some(record.clone()),
            };
            api.create(&PostParams::default(), &new)
                .await
                .map(|_| record)
        }
        Step::Write(record) => {
            // `lease` is Some here: Write follows a read that found one. Its
            // metadata carries the resourceVersion that makes this a
            // compare-and-swap.
            let mut new = lease.unwrap_or_default();
            new.spec = Some(record.clone());
            api.replace(name, &PostParams::default(), &new)
                .await
                .map(|_| record)
        }
    };
    match written {
        Ok(record) => {
            election.written(record, Instant::now());
            Ok(Outcome::Leading)
        }
        // Someone else wrote first (create or replace): they lead.
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(Outcome::Following(None)),
        Err(e) => Err(e),
    }
}

async fn release(api: &Api<Lease>, name: &str, election: &Election) -> Result<(), kube::Error> {
    let Some(mut lease) = api.get_opt(name).await? else {
        return Ok(());
    };
    let current = lease.spec.clone().unwrap_or_default();
    if let Some(record) = election.release(&current, Timestamp::now()) {
        lease.spec = Some(record);
        api.replace(name, &PostParams::default(), &lease).await?;
    }
    Ok(())
}

/// A random delay in `[0, max)`, so replicas do not retry in lockstep.
fn jitter(max: Duration) -> Duration {
    let max_ms = max.as_millis().max(1) as u64;
    Duration::from_millis(std::collections::hash_map::RandomState::new().hash_one(max_ms) % max_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(15);

    fn wall(secs: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + secs).expect("a valid timestamp")
    }

    fn held_by(who: &str, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(who.into()),
            lease_duration_seconds: Some(15),
            acquire_time: Some(MicroTime(wall(0))),
            renew_time: Some(MicroTime(wall(0))),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn no_lease_is_created_holding_it() {
        let mut e = Election::new("a", LEASE);
        let Step::Create(r) = e.step(None, Instant::now(), wall(5)) else {
            panic!("expected a create");
        };
        assert_eq!(r.holder_identity.as_deref(), Some("a"));
        assert_eq!(r.lease_duration_seconds, Some(15));
        assert_eq!(r.lease_transitions, Some(0));
        assert_eq!(r.acquire_time, Some(MicroTime(wall(5))));
        assert_eq!(r.renew_time, Some(MicroTime(wall(5))));
    }

    #[test]
    fn an_empty_lease_is_taken_at_once() {
        let mut e = Election::new("a", LEASE);
        let empty = LeaseSpec {
            lease_transitions: Some(4),
            ..LeaseSpec::default()
        };
        let Step::Write(r) = e.step(Some(&empty), Instant::now(), wall(1)) else {
            panic!("expected a write");
        };
        assert_eq!(r.holder_identity.as_deref(), Some("a"));
        assert_eq!(r.lease_transitions, Some(5));
    }

    #[test]
    fn the_holder_renews_keeping_acquire_time_and_transitions() {
        let mut e = Election::new("a", LEASE);
        let Step::Write(r) = e.step(Some(&held_by("a", 3)), Instant::now(), wall(9)) else {
            panic!("expected a renewal");
        };
        assert_eq!(r.lease_transitions, Some(3));
        assert_eq!(r.acquire_time, Some(MicroTime(wall(0))));
        assert_eq!(r.renew_time, Some(MicroTime(wall(9))));
    }

    #[test]
    fn an_unexpired_lease_is_not_stolen_whatever_the_remote_clock_says() {
        let mut e = Election::new("b", LEASE);
        let t0 = Instant::now();
        // renewTime is far in the past by the wall clock: irrelevant.
        let other = held_by("a", 0);
        let follow = Step::Follow { holder: "a".into() };
        assert_eq!(e.step(Some(&other), t0, wall(3600)), follow);
        assert_eq!(
            e.step(Some(&other), t0 + Duration::from_secs(14), wall(3614)),
            follow
        );
    }

    #[test]
    fn a_renewal_restarts_the_expiry_clock() {
        let mut e = Election::new("b", LEASE);
        let t0 = Instant::now();
        assert!(matches!(
            e.step(Some(&held_by("a", 0)), t0, wall(0)),
            Step::Follow { .. }
        ));
        let renewed = LeaseSpec {
            renew_time: Some(MicroTime(wall(10))),
            ..held_by("a", 0)
        };
        let t10 = t0 + Duration::from_secs(10);
        assert!(matches!(
            e.step(Some(&renewed), t10, wall(10)),
            Step::Follow { .. }
        ));
        // 16 s after the first sighting but only 6 s after the renewal.
        assert!(matches!(
            e.step(Some(&renewed), t0 + Duration::from_secs(16), wall(16)),
            Step::Follow { .. }
        ));
        assert!(matches!(
            e.step(Some(&renewed), t10 + LEASE, wall(25)),
            Step::Write(_)
        ));
    }

    #[test]
    fn an_expired_lease_is_taken_over_and_the_transition_counted() {
        let mut e = Election::new("b", LEASE);
        let t0 = Instant::now();
        let other = held_by("a", 2);
        assert!(matches!(
            e.step(Some(&other), t0, wall(0)),
            Step::Follow { .. }
        ));
        let Step::Write(r) = e.step(Some(&other), t0 + LEASE, wall(15)) else {
            panic!("expected a takeover");
        };
        assert_eq!(r.holder_identity.as_deref(), Some("b"));
        assert_eq!(r.lease_transitions, Some(3));
        assert_eq!(r.acquire_time, Some(MicroTime(wall(15))));
    }

    #[test]
    fn the_lease_duration_of_the_record_decides_expiry() {
        let mut e = Election::new("b", LEASE);
        let t0 = Instant::now();
        let short = LeaseSpec {
            lease_duration_seconds: Some(1),
            ..held_by("a", 0)
        };
        assert!(matches!(
            e.step(Some(&short), t0, wall(0)),
            Step::Follow { .. }
        ));
        assert!(matches!(
            e.step(Some(&short), t0 + Duration::from_secs(1), wall(1)),
            Step::Write(_)
        ));
    }

    #[test]
    fn our_own_write_does_not_restart_a_followers_clock() {
        // After a write, the next read returns what we wrote: no change.
        let mut e = Election::new("a", LEASE);
        let t0 = Instant::now();
        let Step::Create(r) = e.step(None, t0, wall(0)) else {
            panic!("expected a create");
        };
        e.written(r.clone(), t0);
        assert!(matches!(
            e.step(Some(&r), t0 + Duration::from_secs(2), wall(2)),
            Step::Write(_)
        ));
    }

    #[test]
    fn release_empties_our_lease_and_leaves_others_alone() {
        let e = Election::new("a", LEASE);
        let released = e
            .release(&held_by("a", 3), wall(7))
            .expect("ours to release");
        assert_eq!(released.holder_identity, None);
        assert_eq!(released.lease_transitions, Some(3));
        assert_eq!(released.lease_duration_seconds, Some(1));
        assert_eq!(e.release(&held_by("b", 3), wall(7)), None);

        // A released lease is free for anyone, at once.
        let mut b = Election::new("b", LEASE);
        let Step::Write(r) = b.step(Some(&released), Instant::now(), wall(8)) else {
            panic!("expected a takeover of the released lease");
        };
        assert_eq!(r.holder_identity.as_deref(), Some("b"));
        assert_eq!(r.lease_transitions, Some(4));
    }

    #[test]
    fn durations_are_checked_and_rounded_up() {
        let mut c = LeaseConfig::new("ns", "lease", "a");
        assert!(c.validate().is_ok());
        c.renew_deadline = c.lease_duration;
        assert!(c.validate().is_err());
        assert_eq!(whole_seconds(Duration::from_millis(1500)), 2);
        assert_eq!(whole_seconds(Duration::from_millis(300)), 1);
        assert_eq!(whole_seconds(Duration::from_secs(15)), 15);
    }
}
