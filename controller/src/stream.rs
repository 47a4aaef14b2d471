//! The dataplane-facing server: `GET /v1/routes` (SSE) and `POST /v1/reports`.
//!
//! Each stream is a small task that sends whatever brings its dataplane from
//! the version it last sent to the current one (see [`RouteStore::event_since`]).
//! The task writes into a one-slot channel, so a slow reader holds back only
//! its own task, and when it catches up it gets one coalesced event, never a
//! backlog.
//!
//! Only the leader serves (and sends its first event only once its caches
//! are synced: a partial table would take routes away). A follower answers 503
//! with `Retry-After: 1`, which a dataplane treats like an unreachable
//! controller: it keeps its last table and retries. When leadership is lost,
//! open streams end at once, so dataplanes reconnect through the Service to
//! the new leader.
//!
//! A stream re-checks its dataplane's token every recheck interval (see
//! [`crate::auth`]) and ends when the token is no longer accepted, so a
//! revoked token does not keep a stream it opened before.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, StatusCode, header};
use http_body_util::{BodyExt, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use sluice_protocol::{REPORTS_PATH, ROUTES_PATH, Report, sse};
use tokio::sync::{Notify, mpsc, watch};

use crate::admin::Synced;
use crate::auth::{Authenticator, Denied};
use crate::dataplanes::Dataplanes;
use crate::server::{Body, text};
use crate::store::RouteStore;
use crate::traffic::Traffic;

/// How often a stream opened before the caches synced checks again.
const SYNC_POLL: Duration = Duration::from_millis(10);

/// Largest report body accepted.
const MAX_REPORT_BYTES: usize = 8 * 1024 * 1024;

/// What the stream server needs.
#[derive(Debug)]
pub struct StreamContext {
    /// The routes.
    pub store: Arc<RouteStore>,
    /// Connected dataplanes and their acks.
    pub dataplanes: Arc<Dataplanes>,
    /// Who may connect.
    pub auth: Arc<Authenticator>,
    /// Interval of `: keepalive` comments.
    pub keepalive: Duration,
    /// Whether this replica leads.
    pub leader: watch::Receiver<bool>,
    /// Whether the caches behind the table are complete.
    pub synced: Arc<Synced>,
    /// The reported traffic, for the autoscaler.
    pub traffic: Arc<Traffic>,
    /// Woken when a report shows requests held for activation.
    pub demand: Arc<Notify>,
}

/// Routes one request.
pub async fn handle(
    ctx: Arc<StreamContext>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Body> {
    // Before authentication: a follower does no TokenReviews.
    if let Some(why) = not_serving(&ctx) {
        let mut resp = text(StatusCode::SERVICE_UNAVAILABLE, why);
        resp.headers_mut()
            .insert(header::RETRY_AFTER, http::HeaderValue::from_static("1"));
        return resp;
    }
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if let Err(denied) = ctx.auth.check(authorization).await {
        tracing::warn!(%peer, path = req.uri().path(), reason = %denied, "refused a dataplane request");
        let status = denied.status();
        let what = status
            .canonical_reason()
            .unwrap_or("refused")
            .to_lowercase();
        let mut resp = text(status, format!("{what}: {denied}\n"));
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer"),
            );
        }
        return resp;
    }
    let authorization = authorization.map(str::to_string);
    match (req.method(), req.uri().path()) {
        (&Method::GET, ROUTES_PATH) => routes(ctx, &req, peer, authorization),
        (&Method::POST, REPORTS_PATH) => report(ctx, req).await,
        (_, ROUTES_PATH | REPORTS_PATH) => {
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
        }
        (_, path) => text(StatusCode::NOT_FOUND, format!("no endpoint {path}\n")),
    }
}

/// Why this replica does not serve dataplanes now, if it does not.
fn not_serving(ctx: &StreamContext) -> Option<&'static str> {
    (!*ctx.leader.borrow()).then_some("not the leader\n")
}

fn query_param<'a>(req: &'a Request<Incoming>, name: &str) -> Option<&'a str> {
    req.uri()
        .query()?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn routes(
    ctx: Arc<StreamContext>,
    req: &Request<Incoming>,
    peer: SocketAddr,
    authorization: Option<String>,
) -> Response<Body> {
    let name = query_param(req, "dataplane")
        .filter(|n| !n.is_empty() && n.len() <= 253)
        .map(str::to_string)
        .unwrap_or_else(|| peer.to_string());
    let resume = req
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    tracing::info!(dataplane = %name, %peer, ?resume, "route stream opened");

    let (tx, rx) = mpsc::channel::<Bytes>(1);
    let guard = ctx.dataplanes.connect(&name);
    tokio::spawn(async move {
        let _guard = guard;
        let mut versions = ctx.store.subscribe();
        let mut leader = ctx.leader.clone();
        let mut sent = resume;
        let recheck = ctx.auth.recheck_interval();
        let mut next_check = Instant::now() + recheck.unwrap_or_default();
        // A table built from partial caches would take routes away from the
        // dataplane: the first event waits for every cache's first list.
        while !ctx.synced.waiting().is_empty() {
            tokio::select! {
                _ = tokio::time::sleep(SYNC_POLL) => {}
                _ = tx.closed() => return,
            }
        }
        loop {
            if !*leader.borrow_and_update() {
                tracing::info!(dataplane = %name, "no longer the leader; closing the route stream");
                break;
            }
            if let Some(every) = recheck
                && Instant::now() >= next_check
            {
                next_check = Instant::now() + every;
                match ctx.auth.recheck(authorization.as_deref()).await {
                    Ok(()) => {}
                    Err(Denied::Unavailable(why)) => {
                        tracing::warn!(dataplane = %name, %why, "cannot re-check the stream's token; keeping the stream");
                    }
                    Err(denied) => {
                        tracing::warn!(dataplane = %name, %peer, reason = %denied, "the stream's token is no longer accepted; closing the route stream");
                        break;
                    }
                }
            }
            versions.borrow_and_update();
            if let Some(event) = ctx.store.event_since(sent) {
                let frame = sse::encode(event.name(), event.version(), &event.to_json());
                if tx.send(Bytes::from(frame)).await.is_err() {
                    break;
                }
                sent = Some(event.version());
                continue;
            }
            tokio::select! {
                changed = versions.changed() => if changed.is_err() { break },
                _ = tokio::time::sleep(ctx.keepalive) => {
                    if tx.send(Bytes::from_static(sse::KEEPALIVE.as_bytes())).await.is_err() {
                        break;
                    }
                }
                _ = tx.closed() => break,
                changed = leader.changed() => if changed.is_err() { break },
                _ = tokio::time::sleep_until(next_check.into()), if recheck.is_some() => {}
            }
        }
        tracing::info!(dataplane = %name, "route stream closed");
    });

    let frames = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, std::convert::Infallible>(Frame::data(b)), rx))
    });
    let mut resp = Response::new(StreamBody::new(frames).boxed());
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/event-stream"),
    );
    h.insert(
        header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-cache"),
    );
    resp
}

async fn report(ctx: Arc<StreamContext>, req: Request<Incoming>) -> Response<Body> {
    let body = match Limited::new(req.into_body(), MAX_REPORT_BYTES)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return text(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("report body refused: {e}\n"),
            );
        }
    };
    let report: Report = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("malformed report: {e}\n")),
    };
    if report.dataplane.is_empty() {
        return text(
            StatusCode::BAD_REQUEST,
            "malformed report: dataplane must not be empty\n",
        );
    }
    if let Some(rejected) = &report.rejected {
        tracing::warn!(dataplane = %report.dataplane, version = rejected.version, error = %rejected.error, "dataplane rejected a route version");
    }
    if ctx.dataplanes.report(&report) {
        ctx.traffic.record(&report, Instant::now());
        if report.pools.values().any(|p| p.pending > 0) {
            ctx.demand.notify_one();
        }
    }
    text(StatusCode::NO_CONTENT, "")
}
