//! The admin port: liveness, readiness and metrics.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http::StatusCode;
use hyper::body::Incoming;
use hyper::{Request, Response};
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::server::{Body, text};

/// Which watch caches have completed their first list.
#[derive(Debug, Default)]
pub struct Synced {
    /// BackendPools listed.
    pub pools: AtomicBool,
    /// Services listed.
    pub services: AtomicBool,
    /// EndpointSlices listed.
    pub slices: AtomicBool,
    /// TLS Secrets listed.
    pub secrets: AtomicBool,
    /// ScalingTriggers listed (they decide which routes hold requests).
    pub triggers: AtomicBool,
    /// A Gateway API kind listed. Not a readiness condition: Gateway API
    /// is optional and its CRDs may never be installed.
    pub gateway: AtomicBool,
}

impl Synced {
    /// Names of the caches still waiting for their first list.
    pub fn waiting(&self) -> Vec<&'static str> {
        [
            ("backendpools", &self.pools),
            ("services", &self.services),
            ("secrets", &self.secrets),
            ("endpointslices", &self.slices),
            ("scalingtriggers", &self.triggers),
        ]
        .into_iter()
        .filter(|(_, flag)| !flag.load(Ordering::Acquire))
        .map(|(name, _)| name)
        .collect()
    }
}

/// Serves `/healthz`, `/readyz` and `/metrics`. Ready means caches synced
/// and leading: the Service then sends dataplanes to the leader only.
pub async fn handle(
    req: Request<Incoming>,
    synced: Arc<Synced>,
    leader: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
) -> Response<Body> {
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => {
            let waiting = synced.waiting();
            if !waiting.is_empty() {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("waiting for the first list of: {}\n", waiting.join(", ")),
                )
            } else if !*leader.borrow() {
                text(StatusCode::SERVICE_UNAVAILABLE, "not leader\n")
            } else {
                text(StatusCode::OK, "ready\n")
            }
        }
        "/metrics" => {
            let mut resp = text(StatusCode::OK, metrics.encode());
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            resp
        }
        other => text(
            StatusCode::NOT_FOUND,
            format!("no admin endpoint {other}\n"),
        ),
    }
}
