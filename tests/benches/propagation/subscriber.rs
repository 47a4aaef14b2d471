//! A simulated dataplane: follows `GET /v1/routes` like the real one
//! (`sluice_dataplane::control::stream::follow`), with the same SSE decoder and the
//! same `RouteTable::apply`, but without listeners or a proxy. It acks the
//! applied version with a report every second, as the real one does, and
//! records when it first held everything the current [`Expect`] asks for.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use sluice_protocol::{REPORTS_PATH, ROUTES_PATH, RouteEvent, RouteTable, sse};
use tokio::sync::watch;

use crate::world::{ExpectCell, Progress};

/// What one subscriber has done, read by the driver.
#[derive(Debug, Default)]
pub struct Seen {
    /// `seq` of the last expectation fully met.
    pub seq: AtomicU64,
    /// When it was met, in nanoseconds after the benchmark's epoch.
    pub at_nanos: AtomicU64,
    /// Version of the table held.
    pub version: AtomicU64,
    /// Snapshots applied.
    pub snapshots: AtomicU64,
    /// Deltas applied.
    pub deltas: AtomicU64,
    /// Bytes of SSE received.
    pub bytes: AtomicU64,
    /// Time spent parsing and applying deltas, in nanoseconds.
    pub delta_nanos: AtomicU64,
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Everything the subscribers share.
#[derive(Debug)]
pub struct Shared {
    /// The controller's stream address.
    pub controller: SocketAddr,
    /// What to look for.
    pub expect: Arc<ExpectCell>,
    /// Time zero of the benchmark.
    pub epoch: Instant,
}

/// Follows the stream as dataplane `name` until `stop`; reconnects (with
/// `Last-Event-ID`) when the stream ends.
pub async fn follow(
    name: String,
    shared: Arc<Shared>,
    seen: Arc<Seen>,
    stop: watch::Receiver<bool>,
) {
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    tokio::spawn(report_every_second(
        client.clone(),
        name.clone(),
        Arc::clone(&shared),
        Arc::clone(&seen),
        stop.clone(),
    ));
    let mut table = RouteTable::default();
    let mut progress = Progress::default();
    while !*stop.borrow() {
        let result = stream_once(&client, &name, &shared, &seen, &mut table, &mut progress).await;
        if let Err(e) = result
            && !*stop.borrow()
        {
            eprintln!("{name}: stream ended: {e}; reconnecting");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn stream_once(
    client: &HttpClient,
    name: &str,
    shared: &Shared,
    seen: &Seen,
    table: &mut RouteTable,
    progress: &mut Progress,
) -> anyhow::Result<()> {
    let mut req = http::Request::get(format!(
        "http://{}{ROUTES_PATH}?dataplane={name}",
        shared.controller
    ))
    .header(http::header::ACCEPT, "text/event-stream");
    if table.version != 0 {
        req = req.header("last-event-id", table.version.to_string());
    }
    let resp = client.request(req.body(Full::new(Bytes::new()))?).await?;
    anyhow::ensure!(resp.status().is_success(), "status {}", resp.status());
    let mut body = resp.into_body();
    let mut decoder = sse::Decoder::new();
    while let Some(frame) = body.frame().await {
        let Ok(chunk) = frame?.into_data() else {
            continue;
        };
        seen.bytes.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        for msg in decoder.push(&chunk)? {
            let started = Instant::now();
            let event = RouteEvent::from_sse(&msg.event, &msg.data)?;
            let changed: Option<Vec<String>> = match &event {
                RouteEvent::Snapshot(_) => None,
                RouteEvent::Delta(d) => Some(
                    d.upserts
                        .iter()
                        .map(|p| p.name.clone())
                        .chain(d.removes.iter().cloned())
                        .collect(),
                ),
            };
            table.apply(event)?;
            if changed.is_some() {
                seen.deltas.fetch_add(1, Ordering::Relaxed);
                let took = started.elapsed().as_nanos() as u64;
                seen.delta_nanos.fetch_add(took, Ordering::Relaxed);
            } else {
                seen.snapshots.fetch_add(1, Ordering::Relaxed);
            }
            seen.version.store(table.version, Ordering::Release);
            let expect = shared.expect.current();
            let holds = |pool: &str, addr: SocketAddr| {
                table
                    .pools
                    .get(pool)
                    .is_some_and(|r| r.endpoints.iter().any(|e| e.address == addr))
            };
            if let Some(seq) = progress.update(&expect, changed.as_deref(), holds)
                && seen.seq.load(Ordering::Acquire) < seq
            {
                let at = shared.epoch.elapsed().as_nanos() as u64;
                seen.at_nanos.store(at, Ordering::Release);
                seen.seq.store(seq, Ordering::Release);
            }
        }
    }
    anyhow::bail!("controller closed the stream")
}

/// Posts `/v1/reports` with the applied version every second.
async fn report_every_second(
    client: HttpClient,
    name: String,
    shared: Arc<Shared>,
    seen: Arc<Seen>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut seq = 0u64;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        seq += 1;
        let report = serde_json::json!({
            "dataplane": name,
            "appliedVersion": seen.version.load(Ordering::Acquire),
            "rejected": null,
            "windowMs": 1000,
            "seq": seq,
            "pools": {},
        });
        let Ok(req) = http::Request::post(format!("http://{}{REPORTS_PATH}", shared.controller))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(report.to_string())))
        else {
            continue;
        };
        if let Ok(resp) = client.request(req).await {
            let _ = resp.into_body().collect().await;
        }
    }
}
