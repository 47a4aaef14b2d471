//! The admin port: `/healthz`, `/readyz`, `/metrics`, `/debug/routes`,
//! `/debug/pools`.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use hyper::Request;

use serde_json::{Value, json};

use crate::balance::Load;
use crate::endpoint::Endpoint;
use crate::state::State;
use crate::table::{Pool, Table};

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// Answers one admin request.
pub async fn handle<B>(state: Arc<State>, req: Request<B>) -> Response<Full<Bytes>> {
    const TEXT: &str = "text/plain; charset=utf-8";
    match req.uri().path() {
        "/healthz" => reply(StatusCode::OK, TEXT, "ok\n".into()),
        "/readyz" => match state.not_ready() {
            None => reply(StatusCode::OK, TEXT, "ready\n".into()),
            Some(why) => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                TEXT,
                format!("not ready: {why}\n"),
            ),
        },
        "/metrics" => reply(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            state.metrics.encode(),
        ),
        "/debug/routes" => {
            let routes = state.routes();
            // Private keys never leave the process through the admin port.
            let pools: Vec<_> = routes
                .pools
                .values()
                .map(|p| {
                    let mut p = p.clone();
                    p.tls = p.tls.as_ref().map(|t| t.redacted());
                    p
                })
                .collect();
            let mut body = serde_json::json!({
                "version": routes.version,
                "pools": pools,
                "lastError": state.last_error(),
                "rejected": state.rejected(),
            });
            if !routes.routes.is_empty() {
                let list: Vec<_> = routes
                    .routes
                    .values()
                    .map(|r| {
                        let mut r = r.clone();
                        r.tls = r.tls.as_ref().map(|t| t.redacted());
                        r
                    })
                    .collect();
                body["routes"] = serde_json::json!(list);
            }
            reply(StatusCode::OK, "application/json", format!("{body:#}\n"))
        }
        "/debug/pools" => {
            let body = pools_json(&state.table.load());
            reply(StatusCode::OK, "application/json", format!("{body:#}\n"))
        }
        other => reply(
            StatusCode::NOT_FOUND,
            TEXT,
            format!("no admin endpoint {other}\n"),
        ),
    }
}

/// `/debug/pools`: every pool's endpoints with their health, ejection and
/// load, and whether the pool is in panic mode.
pub fn pools_json(table: &Table) -> Value {
    let pools: Vec<_> = table.pools().iter().map(|p| pool_json(p)).collect();
    json!({"version": table.version, "pools": pools})
}

fn pool_json(pool: &Pool) -> Value {
    // `Pool::endpoints` are the route's ready endpoints, in route order.
    let weights = pool.route.endpoints.iter().filter(|e| e.ready);
    let endpoints: Vec<_> = pool
        .endpoints
        .iter()
        .zip(weights)
        .map(|(ep, e)| endpoint_json(ep, e.weight.get()))
        .collect();
    let panic = !pool.endpoints.is_empty() && !pool.endpoints.iter().any(|e| e.is_available());
    let in_flight: u64 = pool
        .endpoints
        .iter()
        .map(|e| u64::from(e.in_flight()))
        .sum();
    json!({
        "name": pool.route.name,
        "algorithm": pool.route.algorithm,
        "healthChecked": pool.route.health_check.is_some(),
        "panic": panic,
        "inFlight": in_flight,
        // Requests held for activation (scale from zero).
        "pending": pool.state.held.len(),
        "endpoints": endpoints,
    })
}

fn endpoint_json(ep: &Endpoint, weight: u32) -> Value {
    let o = ep.health.outlier.view();
    json!({
        "address": ep.addr.to_string(),
        "weight": weight,
        "available": ep.is_available(),
        "healthy": ep.health.is_healthy(),
        "ejected": o.ejected,
        "ejectionRemainingMs": o.remaining.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        "timesEjected": o.times_ejected,
        "onTrial": o.probation,
        "consecutiveFailures": o.consecutive_failures,
        "inFlight": ep.in_flight(),
        // Peak-EWMA latency estimate, decayed to now (kept for every
        // algorithm; PeakEwma balances on it).
        "ewmaMs": (ep.latency_estimate_ns() / 1e6 * 1000.0).round() / 1000.0,
    })
}
