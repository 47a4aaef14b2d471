//! The per-second report to the controller: ack of the applied version and
//! the traffic of the last window.
//!
//! A report that fails to post is retried, unchanged and with its sequence
//! number, before newer ones (so the controller can drop a duplicate when
//! only the answer was lost). At most [`MAX_PENDING`] wait; older ones are
//! dropped, bounding memory while the controller is away.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, header};
use http_body_util::Full;
use sluice_protocol::{REPORTS_PATH, Report};
use tokio::sync::watch;

use crate::state::State;
use crate::stream::{ControllerConn, http_client};

/// Reports kept while the controller does not answer.
pub const MAX_PENDING: usize = 10;

/// Posts a report every `interval` until `stop`.
pub async fn run(
    conn: ControllerConn,
    state: Arc<State>,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let client = http_client::<Full<Bytes>>();
    let url = format!("{}{REPORTS_PATH}", conn.base);
    let mut pending: VecDeque<Report> = VecDeque::new();
    let mut seq = 0u64;
    let mut window_start = Instant::now();
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(interval) => {}
        }
        seq += 1;
        let now = Instant::now();
        pending.push_back(Report {
            dataplane: conn.name.clone(),
            applied_version: state.version(),
            rejected: state.rejected(),
            window_ms: now.duration_since(window_start).as_millis() as u64,
            seq,
            pools: state.stats.drain(),
        });
        window_start = now;
        if pending.len() > MAX_PENDING {
            pending.pop_front();
            tracing::warn!("controller unreachable; dropped the oldest unsent report");
        }
        while let Some(report) = pending.front() {
            match post(&client, &url, &conn, report).await {
                Ok(()) => {
                    pending.pop_front();
                }
                Err(e) => {
                    tracing::debug!(error = %e, "report not delivered; will retry");
                    break;
                }
            }
        }
    }
}

async fn post(
    client: &hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Full<Bytes>,
    >,
    url: &str,
    conn: &ControllerConn,
    report: &Report,
) -> Result<(), String> {
    let body = serde_json::to_vec(report).map_err(|e| e.to_string())?;
    let mut req = Request::post(url).header(header::CONTENT_TYPE, "application/json");
    if let Some(auth) = conn.authorization()? {
        req = req.header(header::AUTHORIZATION, auth);
    }
    let req = req
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(Duration::from_secs(2), client.request(req))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(format!("controller answered {}", resp.status()))
    }
}
