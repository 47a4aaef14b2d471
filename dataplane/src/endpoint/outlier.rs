//! Passive outlier detection: endpoints that fail live traffic are ejected
//! for a while, as Envoy's consecutive-5xx detector does.
//!
//! The proxy reports every attempt's outcome ([`crate::endpoint::Endpoint`]'s
//! `record_success` / `record_failure`). After `consecutiveFailures` failures
//! in a row the endpoint is ejected for `baseEjectionTime` × the number of
//! times it was ejected (capped at [`MAX_EJECTION_TIME`](crate::health::ejection::MAX_EJECTION_TIME) or the base, if
//! longer), unless that would eject more than `maxEjectionPercent` of the
//! pool — one endpoint may always be ejected. When the time is up a tokio
//! timer puts the endpoint back in the balancer on probation (half-open):
//! its first result decides — a success clears it, a failure ejects it again
//! at once, for longer. The ejection count decays by one per
//! `baseEjectionTime` spent back in service, so an endpoint that misbehaved
//! long ago starts over with short ejections (Envoy decays it by one per
//! detection interval; we have no interval, the base time plays its part).
//!
//! The success path costs two relaxed atomic loads; locks are taken only on
//! failures that reach the threshold, on probation results and on
//! transitions. The state lives in the `Endpoint` and the pool's
//! `KeptPool`, so it survives table updates.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, Weak};
use std::time::{Duration, Instant};

use sluice_protocol::OutlierDetection;

use crate::endpoint::Endpoint;
use crate::health::ejection::{decayed, ejection_time, lock, max_times, may_eject};

/// Outlier detection settings and members of one pool; kept in its
/// `KeptPool`, refreshed by every build of the pool.
#[derive(Debug, Default)]
pub struct PoolOutlier {
    /// Consecutive failures that eject; 0 = detection off. Read on every
    /// failure, so an atomic rather than under the lock.
    threshold: AtomicU32,
    /// Serializes ejection decisions of the pool's endpoints, so two
    /// endpoints failing at once cannot both pass the percentage cap.
    inner: Mutex<PoolOutlierInner>,
}

#[derive(Debug, Default)]
struct PoolOutlierInner {
    base: Duration,
    max_percent: u32,
    members: Vec<Weak<Endpoint>>,
}

impl PoolOutlier {
    /// Takes the settings and endpoints of a newly built pool.
    pub fn configure(&self, config: &OutlierDetection, members: &[std::sync::Arc<Endpoint>]) {
        let mut inner = lock(&self.inner);
        inner.base = config.base_ejection_time.get();
        inner.max_percent = config.max_ejection_percent.get();
        inner.members = members.iter().map(std::sync::Arc::downgrade).collect();
        self.threshold
            .store(config.consecutive_failures, Ordering::Relaxed);
    }
}
/// The request path's success report: cheap unless the endpoint is on
/// probation or had failures.
pub fn record_success(ep: &Endpoint) {
    let o = &ep.health.outlier;
    if o.failures.load(Ordering::Relaxed) != 0 {
        o.failures.store(0, Ordering::Relaxed);
    }
    if o.probation.load(Ordering::Relaxed) && o.probation.swap(false, Ordering::AcqRel) {
        tracing::info!(pool = %pool_name(ep), endpoint = %ep.addr, "endpoint passed its trial after ejection");
    }
}

/// The request path's failure report: counts, and ejects at the threshold
/// or on a failed trial.
pub fn record_failure(ep: &std::sync::Arc<Endpoint>) {
    record(ep, false);
}

/// The endpoint refused a connection: nothing listens there any more (it
/// was killed, or is restarting). With detection on it is ejected at once,
/// within `maxEjectionPercent`, rather than after `consecutiveFailures`:
/// every request meeting it until then would pay a failed connect, and
/// under load they come faster than any threshold is reached.
pub fn record_refused(ep: &std::sync::Arc<Endpoint>) {
    record(ep, true);
}

fn record(ep: &std::sync::Arc<Endpoint>, at_once: bool) {
    let o = &ep.health.outlier;
    let threshold = ep.pool.outlier.threshold.load(Ordering::Relaxed);
    if threshold == 0 {
        return;
    }
    // Bounded by the threshold: past it, the count says nothing more (an
    // endpoint the percentage cap keeps in service would otherwise count
    // for ever).
    let failures = o
        .failures
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |f| {
            Some(f.saturating_add(1).min(threshold))
        })
        .map_or(threshold, |f| f.saturating_add(1).min(threshold));
    let trial_failed = o.probation.load(Ordering::Relaxed);
    if failures < threshold && !trial_failed && !at_once {
        return;
    }
    let pool = lock(&ep.pool.outlier.inner);
    if o.is_ejected() {
        // A late result of a request sent before the ejection.
        return;
    }
    let others_ejected = pool
        .members
        .iter()
        .filter_map(Weak::upgrade)
        .filter(|m| !std::ptr::eq(m.as_ref(), ep.as_ref()) && m.health.outlier.is_ejected())
        .count();
    if !may_eject(others_ejected, pool.members.len(), pool.max_percent) {
        return;
    }
    let now = Instant::now();
    let mut history = lock(&o.history);
    let clean = history
        .returned_at
        .map_or(Duration::ZERO, |r| now.saturating_duration_since(r));
    history.times_ejected = decayed(history.times_ejected, clean, pool.base)
        .saturating_add(1)
        .min(max_times(pool.base));
    let duration = ejection_time(pool.base, history.times_ejected);
    history.until = Some(now + duration);
    o.failures.store(0, Ordering::Relaxed);
    o.probation.store(false, Ordering::Relaxed);
    o.ejected.store(true, Ordering::Release);
    let times = history.times_ejected;
    drop(history);
    drop(pool);
    tracing::info!(
        pool = %pool_name(ep),
        endpoint = %ep.addr,
        failures,
        trial_failed,
        times_ejected = times,
        seconds = duration.as_secs_f64(),
        "endpoint ejected"
    );
    ep.availability_changed();
    let weak = std::sync::Arc::downgrade(ep);
    // Without a runtime (unit tests) nothing brings it back; the request
    // path always runs inside one.
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(async move {
            tokio::time::sleep(duration).await;
            if let Some(ep) = weak.upgrade() {
                return_to_service(&ep);
            }
        });
    }
}

/// Ends an ejection: the endpoint takes traffic again, on probation.
fn return_to_service(ep: &Endpoint) {
    let o = &ep.health.outlier;
    {
        let mut history = lock(&o.history);
        history.until = None;
        history.returned_at = Some(Instant::now());
        o.failures.store(0, Ordering::Relaxed);
        o.probation.store(true, Ordering::Relaxed);
        o.ejected.store(false, Ordering::Release);
    }
    tracing::info!(pool = %pool_name(ep), endpoint = %ep.addr, "ejection over, endpoint on trial");
    ep.availability_changed();
}

fn pool_name(ep: &Endpoint) -> &str {
    ep.health.pool_name()
}

#[cfg(test)]
mod state_tests {
    use super::*;
    use crate::endpoint::Registry;
    use crate::metrics::Metrics;
    use crate::table::{PickRequest, Table};
    use sluice_protocol::{RouteFile, RouteTable};

    fn table(yaml: &str) -> Table {
        let file = RouteFile::from_yaml(yaml).expect("valid");
        let routes = RouteTable::from_pools(1, file.pools);
        Table::build(
            &routes,
            &Table::default(),
            &Metrics::new(),
            &Registry::default(),
        )
    }

    const TWO: &str = "pools:\n  - name: p\n    outlierDetection: {consecutiveFailures: 2, baseEjectionTime: 10s, maxEjectionPercent: 50}\n    endpoints: [{address: 127.0.0.1:1}, {address: 127.0.0.1:2}]\n";

    #[test]
    fn consecutive_failures_eject_within_the_percentage_cap() {
        let t = table(TWO);
        let pool = t.pool("p").expect("pool");
        let (a, b) = (&pool.endpoints[0], &pool.endpoints[1]);
        a.record_failure();
        a.record_success();
        a.record_failure();
        assert!(a.is_available(), "a success broke the run");
        a.record_failure();
        assert!(!a.is_available());
        assert_eq!(a.health.outlier.view().times_ejected, 1);
        for _ in 0..4 {
            assert_eq!(
                pool.pick(&PickRequest::default()).map(|e| e.addr.port()),
                Some(2)
            );
        }
        b.record_failure();
        b.record_failure();
        b.record_failure();
        assert!(b.is_available(), "50 % of two: only one may be ejected");
        assert!(!pool.in_panic());
    }

    #[test]
    fn a_failed_trial_ejects_again_at_once_for_longer_and_a_passed_one_clears() {
        let t = table(TWO);
        let pool = t.pool("p").expect("pool");
        let a = &pool.endpoints[0];
        a.record_failure();
        a.record_failure();
        return_to_service(a);
        assert!(a.is_available() && a.health.outlier.view().probation);
        a.record_failure();
        let view = a.health.outlier.view();
        assert!(view.ejected);
        assert_eq!(view.times_ejected, 2);
        assert!(view.remaining.is_some_and(|r| r > Duration::from_secs(10)));
        return_to_service(a);
        a.record_status(200);
        let view = a.health.outlier.view();
        assert!(!view.probation && !view.ejected);
        a.record_status(503);
        assert!(
            a.is_available(),
            "one failure after a passed trial does not eject"
        );
    }

    #[test]
    fn a_refused_connection_ejects_at_once_and_counts_stay_bounded() {
        let t = table(TWO);
        let pool = t.pool("p").expect("pool");
        let (a, b) = (&pool.endpoints[0], &pool.endpoints[1]);
        record_refused(a);
        assert!(!a.is_available(), "ejected on the first refusal");
        record_refused(b);
        assert!(b.is_available(), "within maxEjectionPercent");
        for _ in 0..1_000 {
            b.record_failure();
        }
        assert_eq!(b.health.outlier.view().consecutive_failures, 2);
        for _ in 0..1_000 {
            return_to_service(a);
            a.record_failure();
        }
        let base = Duration::from_secs(10);
        assert_eq!(a.health.outlier.view().times_ejected, max_times(base));
    }

    #[test]
    fn zero_failures_turns_detection_off() {
        let t = table(
            "pools:\n  - name: p\n    outlierDetection: {consecutiveFailures: 0}\n    endpoints: [{address: 127.0.0.1:1}]\n",
        );
        let a = &t.pool("p").expect("pool").endpoints[0];
        for _ in 0..100 {
            a.record_failure();
        }
        assert!(a.is_available());
    }

    #[test]
    fn the_ejection_rebuilds_the_balancer_and_requests_never_do() {
        let t = table(&TWO.replace("127.0.0.1:2}]", "127.0.0.1:2}]\n    algorithm: Maglev"));
        let pool = t.pool("p").expect("pool");
        assert_eq!(pool.route.algorithm, sluice_protocol::Algorithm::Maglev);
        assert_eq!(pool.selector_builds(), 1, "built with the table");
        let a = &pool.endpoints[0];
        a.record_failure();
        a.record_failure();
        assert!(!a.is_available());
        assert_eq!(pool.selector_builds(), 2, "rebuilt by the ejection");
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for k in 0..1_000u64 {
                        let req = PickRequest {
                            hash: Some(crate::balance::hash::key(&k.to_le_bytes())),
                            sticky: None,
                        };
                        let pick = pool.pick(&req).map(|e| e.addr.port());
                        assert_eq!(pick, Some(2), "the ejected endpoint takes no key");
                    }
                });
            }
        });
        assert_eq!(pool.selector_builds(), 2, "4,000 picks built nothing");
        return_to_service(a);
        assert_eq!(pool.selector_builds(), 3, "rebuilt by the return");
        let ports: std::collections::HashSet<_> = (0..200u64)
            .filter_map(|k| {
                let hash = Some(crate::balance::hash::key(&k.to_le_bytes()));
                pool.pick(&PickRequest { hash, sticky: None })
                    .map(|e| e.addr.port())
            })
            .collect();
        assert_eq!(ports.len(), 2, "both endpoints take keys again");
        assert_eq!(pool.selector_builds(), 3);
    }

    #[test]
    fn a_lone_ejected_endpoint_puts_the_pool_in_panic() {
        let t = table(
            "pools:\n  - name: p\n    outlierDetection: {consecutiveFailures: 1}\n    endpoints: [{address: 127.0.0.1:1}]\n",
        );
        let pool = t.pool("p").expect("pool");
        pool.endpoints[0].record_failure();
        assert!(!pool.endpoints[0].is_available());
        assert_eq!(
            pool.pick(&PickRequest::default()).map(|e| e.addr.port()),
            Some(1)
        );
        assert!(pool.in_panic());
    }
}
