//! The access log: one `tracing` event per request, at info level on the
//! target `sluice::access`, written when the response body ends (or the
//! client goes away), so that its duration and byte count cover the whole
//! exchange. With `--log-format json` each is one JSON object per line.
//!
//! Off by default (`--access-log` turns it on): formatting and writing a
//! line costs more CPU than proxying a small request, and the Prometheus
//! metrics already count every request. When off, the only cost is a
//! `None` check per response body frame.
//!
//! Fields: `method`, `host`, `path`, `version`, `status`, `pool` (empty when
//! no pool matched), `endpoint` (empty when Sluice answered itself),
//! `duration_ms`, `bytes` (response body bytes sent), `client` (peer IP),
//! `user_agent`, `trace_id` (the W3C trace id, 32 hex digits; empty when
//! tracing is off).

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use http::{Method, Request, Version, header};

use crate::observed::{Observe, Observed};
use crate::table::{Table, normalize_host};
use crate::trace::TraceId;

/// The target of access-log events, for filtering (`RUST_LOG=sluice::access=off`).
pub const TARGET: &str = "sluice::access";

/// What is known of a request when it arrives.
#[derive(Debug)]
pub struct Entry {
    started: Instant,
    method: Method,
    version: Version,
    host: String,
    path: String,
    user_agent: String,
    client: IpAddr,
    status: u16,
    pool: String,
    endpoint: Option<SocketAddr>,
    bytes: u64,
    trace_id: Option<TraceId>,
}

impl Entry {
    /// Starts the entry of `req` from `peer`.
    pub fn start<B>(req: &Request<B>, peer: SocketAddr) -> Box<Self> {
        let header = |name| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
        };
        let host = req
            .uri()
            .authority()
            .map(|a| a.as_str())
            .unwrap_or_else(|| header(header::HOST));
        Box::new(Self {
            started: Instant::now(),
            method: req.method().clone(),
            version: req.version(),
            host: host.to_string(),
            path: req.uri().path().to_string(),
            user_agent: header(header::USER_AGENT).to_string(),
            client: peer.ip(),
            status: 0,
            pool: String::new(),
            endpoint: None,
            bytes: 0,
            trace_id: None,
        })
    }

    /// Records the trace the request belongs to.
    pub fn set_trace_id(&mut self, trace_id: TraceId) {
        self.trace_id = Some(trace_id);
    }

    /// Records the response head: its status, the endpoint that answered
    /// (if one did) and the pool `table` routes the request to.
    pub fn respond(&mut self, status: u16, endpoint: Option<SocketAddr>, table: &Table) {
        self.status = status;
        self.endpoint = endpoint;
        if let Some(pool) = table.route(&normalize_host(&self.host), &self.path) {
            self.pool.clone_from(&pool.route.name);
        }
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        let endpoint = self.endpoint.map(|e| e.to_string()).unwrap_or_default();
        let trace_id = self.trace_id.map(|t| t.to_string()).unwrap_or_default();
        tracing::info!(
            target: TARGET,
            method = %self.method,
            host = %self.host,
            path = %self.path,
            version = ?self.version,
            status = self.status,
            pool = %self.pool,
            endpoint = %endpoint,
            duration_ms = self.started.elapsed().as_secs_f64() * 1000.0,
            bytes = self.bytes,
            client = %self.client,
            user_agent = %self.user_agent,
            trace_id = %trace_id,
            "request"
        );
    }
}

/// A response body that writes the request's access-log entry when it ends,
/// with the bytes it counted.
pub type Logged<B> = Observed<B, Box<Entry>>;

impl Observe for Entry {
    fn data(&mut self, len: u64) {
        self.bytes += len;
    }
}
