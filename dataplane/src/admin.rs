//! The admin port: `/healthz`, `/readyz`, `/metrics`, `/debug/routes`,
//! `/debug/pools`.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use hyper::Request;

use crate::state::State;

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
            let body = crate::health::pools_json(&state.table.load());
            reply(StatusCode::OK, "application/json", format!("{body:#}\n"))
        }
        other => reply(
            StatusCode::NOT_FOUND,
            TEXT,
            format!("no admin endpoint {other}\n"),
        ),
    }
}
