//! The per-second report to the controller: the ack (or nack) of the route
//! version, and each pool's traffic in the last window.
//!
//! Delivery keeps every count and counts nothing twice. Reports go out in
//! order. A report whose post failed is retried unchanged, with its `seq`:
//! if only the answer was lost, the controller sees that `seq` again and
//! ignores it. Windows that close meanwhile are folded into one report
//! queued behind it, which has never been sent, so folding cannot double
//! count. At most two reports wait, however long the controller is away;
//! failures are logged at debug level and retried on the next tick.
//!
//! A pool that starts holding requests for activation (scale from zero)
//! closes the window early, so the controller hears of the demand at once
//! rather than up to a tick later. An early report is an ordinary window
//! (shorter, with its own `seq`), queued like any other; there is at most
//! one per [`EARLY_GAP`], so a stream of new demand cannot make the
//! reporter spin.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, header};
use http_body_util::Full;
use sluice_protocol::{REPORTS_PATH, Report};
use tokio::sync::watch;

use crate::control::stream::{ControllerClient, ControllerConn, RESPONSE_TIMEOUT, http_client};
use crate::front::listener::stopped;
use crate::state::State;

/// How often a report is sent.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// Least time between a report and an early one (sent for new demand).
pub const EARLY_GAP: Duration = Duration::from_millis(100);

/// Posts a report every `interval` until `stop`.
pub async fn run(
    conn: ControllerConn,
    state: Arc<State>,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let client = http_client::<Full<Bytes>>(&conn);
    let url = format!("{}{REPORTS_PATH}", conn.base);
    let mut queue: VecDeque<Report> = VecDeque::new();
    let mut seq = 0u64;
    let mut window_start = Instant::now();
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = stopped(&mut stop) => return,
            _ = ticks.tick() => {}
            _ = state.activation.demanded() => {
                // Early, but not sooner than EARLY_GAP after the last one.
                tokio::select! {
                    _ = stopped(&mut stop) => return,
                    _ = ticks.tick() => {}
                    _ = tokio::time::sleep_until(last + EARLY_GAP) => {}
                }
            }
        }
        last = tokio::time::Instant::now();
        let now = Instant::now();
        let report = Report {
            dataplane: conn.name.clone(),
            applied_version: state.version(),
            rejected: state.rejected(),
            window_ms: now.duration_since(window_start).as_millis() as u64,
            seq: 0,
            pools: state.metrics.windows.drain(),
        };
        window_start = now;
        enqueue(&mut queue, report, &mut seq);
        while let Some(report) = queue.front() {
            match post(&client, &url, &conn, report).await {
                Ok(()) => {
                    queue.pop_front();
                }
                Err(e) => {
                    tracing::debug!(error = %e, seq = report.seq, "report not delivered; will retry");
                    break;
                }
            }
        }
    }
}

/// Queues a new window: behind the front report (which may have reached
/// the controller) it is folded into the one waiting report, which has not.
fn enqueue(queue: &mut VecDeque<Report>, mut report: Report, seq: &mut u64) {
    match queue.len() {
        0 | 1 => {
            *seq += 1;
            report.seq = *seq;
            queue.push_back(report);
        }
        _ => {
            if let Some(waiting) = queue.back_mut() {
                fold(waiting, report);
            }
        }
    }
}

/// Adds the newer window to `into`: counts and latencies add up, the window
/// grows, and levels (version, refusal, in-flight) take the newer value.
pub fn fold(into: &mut Report, newer: Report) {
    into.applied_version = newer.applied_version;
    into.rejected = newer.rejected;
    into.window_ms += newer.window_ms;
    for (name, pool) in newer.pools {
        let acc = into.pools.entry(name).or_default();
        acc.requests += pool.requests;
        acc.errors += pool.errors;
        acc.in_flight = pool.in_flight;
        acc.pending = pool.pending;
        if acc.latency.bounds_ms == pool.latency.bounds_ms {
            for (a, b) in acc.latency.counts.iter_mut().zip(&pool.latency.counts) {
                *a += b;
            }
            acc.latency.sum_ms += pool.latency.sum_ms;
        }
    }
}

async fn post(
    client: &ControllerClient<Full<Bytes>>,
    url: &str,
    conn: &ControllerConn,
    report: &Report,
) -> Result<(), String> {
    let body = serde_json::to_vec(report).map_err(|e| e.to_string())?;
    let mut req = Request::post(url).header(header::CONTENT_TYPE, "application/json");
    if let Some(auth) = conn.authorization().await? {
        req = req.header(header::AUTHORIZATION, auth);
    }
    let req = req
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(RESPONSE_TIMEOUT, client.request(req))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(format!("controller answered {}", resp.status()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_protocol::{PoolReport, Rejected};

    fn window(version: u64, requests: u64, in_flight: u64) -> Report {
        let mut pool = PoolReport {
            requests,
            errors: 1,
            in_flight,
            ..Default::default()
        };
        pool.latency.observe(3.0);
        Report {
            dataplane: "dp".into(),
            applied_version: version,
            window_ms: 1000,
            pools: [("ns/web".to_string(), pool)].into(),
            ..Default::default()
        }
    }

    #[test]
    fn undelivered_windows_fold_behind_the_one_being_retried() {
        let mut queue = VecDeque::new();
        let mut seq = 0;
        enqueue(&mut queue, window(1, 10, 0), &mut seq);
        enqueue(&mut queue, window(1, 20, 0), &mut seq);
        let mut third = window(2, 30, 4);
        third.rejected = Some(Rejected {
            version: 3,
            error: "bad base".into(),
        });
        enqueue(&mut queue, third, &mut seq);
        enqueue(&mut queue, window(2, 40, 5), &mut seq);
        assert_eq!(queue.len(), 2);
        let (front, back) = (&queue[0], &queue[1]);
        assert_eq!((front.seq, front.pools["ns/web"].requests), (1, 10));
        assert_eq!(back.seq, 2);
        assert_eq!(back.window_ms, 3000);
        assert_eq!(back.applied_version, 2);
        assert_eq!(back.rejected, None, "levels take the newest value");
        let web = &back.pools["ns/web"];
        assert_eq!((web.requests, web.errors, web.in_flight), (90, 3, 5));
        assert_eq!(web.latency.count(), 3);
    }
}
