//! Cluster mode: follow the controller's route stream.
//!
//! One connection at a time; each event is applied all-or-nothing. A refused
//! event (wrong base, invalid table) is reported and answered by reconnecting
//! without `Last-Event-ID`, which gets a fresh snapshot. While the controller
//! is away the last table keeps serving; reconnects back off exponentially
//! with jitter.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use sluice_protocol::{ROUTES_PATH, RouteEvent, sse};
use tokio::sync::watch;

use crate::state::State;

/// No bytes for this long (three missed keepalives) means the stream is dead.
pub const STREAM_IDLE: Duration = Duration::from_secs(30);
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Where the controller is and how to authenticate to it.
#[derive(Clone, Debug)]
pub struct ControllerConn {
    /// Base URL, without a trailing slash.
    pub base: String,
    /// Bearer token file, re-read on every connect (projected tokens rotate).
    pub token_file: Option<PathBuf>,
    /// This dataplane's name.
    pub name: String,
}

impl ControllerConn {
    /// Validates the URL.
    pub fn new(url: &str, token_file: Option<PathBuf>, name: String) -> Result<Self, String> {
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("--controller {url:?}: {e}"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(format!(
                    "--controller {url:?}: TLS to the controller arrives with the secure channel; use http:// for now"
                ));
            }
            _ => return Err(format!("--controller {url:?}: expected an http:// URL")),
        }
        if uri.authority().is_none() {
            return Err(format!("--controller {url:?}: no host"));
        }
        Ok(Self {
            base: url.trim_end_matches('/').to_string(),
            token_file,
            name,
        })
    }

    /// The `Authorization` header value, if a token file is configured.
    pub fn authorization(&self) -> Result<Option<String>, String> {
        let Some(path) = &self.token_file else {
            return Ok(None);
        };
        let token =
            std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Some(format!("Bearer {}", token.trim())))
    }
}

/// A plain HTTP client for the controller.
pub fn http_client<B>() -> Client<HttpConnector, B>
where
    B: hyper::body::Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(Duration::from_secs(2)));
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new()).build(connector)
}

/// A pseudo-random jitter in `[0, max)`, from the clock: enough to spread
/// reconnects of many dataplanes without a random-number dependency.
fn jitter(max: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let max_ms = max.as_millis().max(1) as u64;
    Duration::from_millis(u64::from(nanos) % max_ms)
}

/// Follows the stream until `stop`.
pub async fn follow(conn: ControllerConn, state: Arc<State>, mut stop: watch::Receiver<bool>) {
    let client = http_client::<Empty<Bytes>>();
    let mut backoff = BACKOFF_START;
    let mut want_snapshot = false;
    loop {
        let outcome = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            outcome = session(&client, &conn, &state, want_snapshot) => outcome,
        };
        match outcome {
            Session::Refused => {
                want_snapshot = true;
                backoff = BACKOFF_START;
            }
            Session::Ended { connected } => {
                want_snapshot = false;
                if connected {
                    backoff = BACKOFF_START;
                }
            }
        }
        let wait = backoff + jitter(backoff / 2 + Duration::from_millis(1));
        backoff = (backoff * 2).min(BACKOFF_MAX);
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

enum Session {
    /// An event was refused: reconnect for a snapshot.
    Refused,
    /// The stream ended or never opened.
    Ended { connected: bool },
}

async fn session(
    client: &Client<HttpConnector, Empty<Bytes>>,
    conn: &ControllerConn,
    state: &State,
    want_snapshot: bool,
) -> Session {
    let failed = Session::Ended { connected: false };
    let url = format!("{}{ROUTES_PATH}?dataplane={}", conn.base, conn.name);
    let mut req = Request::get(&url).header(header::ACCEPT, "text/event-stream");
    match conn.authorization() {
        Ok(Some(value)) => req = req.header(header::AUTHORIZATION, value),
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(error = %e, "token file unreadable");
            return failed;
        }
    }
    let version = state.version();
    if version > 0 && !want_snapshot {
        req = req.header("last-event-id", version.to_string());
    }
    let Ok(req) = req.body(Empty::new()) else {
        return failed;
    };
    let resp = match tokio::time::timeout(Duration::from_secs(5), client.request(req)).await {
        Ok(Ok(resp)) => resp,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "controller unreachable; serving the last table");
            return failed;
        }
        Err(_) => {
            tracing::debug!("controller did not answer; serving the last table");
            return failed;
        }
    };
    if resp.status() != StatusCode::OK {
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        tracing::warn!(%status, body = %String::from_utf8_lossy(&body).trim(), "controller refused the route stream");
        return failed;
    }
    tracing::info!(controller = %conn.base, resume = version, "route stream connected");
    let mut body = resp.into_body();
    let mut decoder = sse::Decoder::new();
    loop {
        let frame = match tokio::time::timeout(STREAM_IDLE, body.frame()).await {
            Err(_) => {
                tracing::warn!("route stream silent for too long; reconnecting");
                break;
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                tracing::info!(error = %e, "route stream broke; reconnecting");
                break;
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let Some(data) = frame.data_ref() else {
            continue;
        };
        let messages = match decoder.push(data) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "undecodable route stream; reconnecting");
                break;
            }
        };
        for msg in messages {
            let applied =
                RouteEvent::from_sse(&msg.event, &msg.data).and_then(|event| state.apply(event));
            match applied {
                Ok(()) => tracing::debug!(version = state.version(), "route table applied"),
                Err(e) => {
                    tracing::warn!(error = %e, serving = state.version(), "route event refused; asking for a snapshot");
                    return Session::Refused;
                }
            }
        }
    }
    Session::Ended { connected: true }
}
