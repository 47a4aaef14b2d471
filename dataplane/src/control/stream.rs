//! Cluster mode: follow the controller's route stream.
//!
//! One connection at a time: `GET {url}/v1/routes?dataplane=<name>` with
//! `Accept: text/event-stream`, the bearer token (re-read on every connect:
//! projected ServiceAccount tokens rotate) and `Last-Event-ID: <version>`
//! once a table is held, so the controller can answer with just the deltas.
//! Each event is applied all-or-nothing. A refused event (wrong base,
//! invalid table, unparsable) is recorded for the report and answered by
//! reconnecting *without* `Last-Event-ID`, which gets a fresh snapshot.
//! While the controller is away the last table keeps serving; reconnects
//! back off exponentially with jitter.

use std::hash::{BuildHasher, RandomState};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use sluice_protocol::{ROUTES_PATH, RouteEvent, sse};
use tokio::sync::watch;

use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::{ClientConfig, RootCertStore};

use crate::front::listener::stopped;
use crate::state::State;

/// No bytes for this long (three missed keepalives) means the stream is dead.
pub const STREAM_IDLE: Duration = Duration::from_secs(30);
/// First reconnect delay; doubles up to [`BACKOFF_MAX`], plus up to half again
/// of jitter.
pub const BACKOFF_START: Duration = Duration::from_millis(100);
/// Longest reconnect delay (before jitter).
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How long the controller may take to answer a request with its headers.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a controller URL cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    /// Not a URL.
    #[error("--controller {url:?} is not a URL: {reason}")]
    Invalid {
        /// The URL given.
        url: String,
        /// What the parser said.
        reason: String,
    },
    /// `https://` without the CA to check the controller's certificate.
    #[error(
        "--controller {url:?}: an https controller needs --ca-file (the CA that signed its certificate)"
    )]
    NoCa {
        /// The URL given.
        url: String,
    },
    /// The CA file is unusable.
    #[error("--ca-file {path}: {reason}")]
    Ca {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// Another scheme, or none.
    #[error("--controller {url:?}: expected an http:// or https:// URL")]
    Scheme {
        /// The URL given.
        url: String,
    },
}

/// The HTTP client for the controller, over TLS for `https://` URLs.
pub type ControllerClient<B> = Client<HttpsConnector<HttpConnector>, B>;

/// Where the controller is and how to authenticate to it.
#[derive(Clone, Debug)]
pub struct ControllerConn {
    /// Base URL, without a trailing slash.
    pub base: String,
    /// Bearer token file, re-read on every connect.
    pub token_file: Option<PathBuf>,
    /// This dataplane's name.
    pub name: String,
    /// TLS settings: roots from `--ca-file` (none for `http://`).
    pub tls: Arc<ClientConfig>,
}

impl ControllerConn {
    /// Validates the URL and loads the CA of an `https://` one.
    pub fn new(
        url: &str,
        token_file: Option<PathBuf>,
        ca_file: Option<&Path>,
        name: String,
    ) -> Result<Self, UrlError> {
        let uri: Uri = url
            .parse()
            .map_err(|e: http::uri::InvalidUri| UrlError::Invalid {
                url: url.to_string(),
                reason: e.to_string(),
            })?;
        let mut roots = RootCertStore::empty();
        match (uri.scheme_str(), ca_file) {
            (Some("http"), _) => {}
            (Some("https"), None) => return Err(UrlError::NoCa { url: url.into() }),
            (Some("https"), Some(path)) => {
                let ca = |reason: String| UrlError::Ca {
                    path: path.display().to_string(),
                    reason,
                };
                let pem = std::fs::read(path).map_err(|e| ca(e.to_string()))?;
                for cert in CertificateDer::pem_slice_iter(&pem) {
                    let cert = cert.map_err(|e| ca(e.to_string()))?;
                    roots.add(cert).map_err(|e| ca(e.to_string()))?;
                }
                if roots.is_empty() {
                    return Err(ca("no certificate in the file".into()));
                }
            }
            _ => return Err(UrlError::Scheme { url: url.into() }),
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| UrlError::Invalid {
                url: url.into(),
                reason: e.to_string(),
            })?
            .with_root_certificates(roots)
            .with_no_client_auth();
        if uri.query().is_some() {
            return Err(UrlError::Invalid {
                url: url.into(),
                reason: "a base URL takes no query".into(),
            });
        }
        Ok(Self {
            base: url.trim_end_matches('/').to_string(),
            token_file,
            name,
            tls: Arc::new(tls),
        })
    }

    /// The `Authorization` header value, if a token file is configured.
    pub async fn authorization(&self) -> Result<Option<String>, String> {
        let Some(path) = &self.token_file else {
            return Ok(None);
        };
        let token = tokio::fs::read_to_string(path)
            .await
            .map_err(|e| format!("token file {}: {e}", path.display()))?;
        let token = token.trim();
        if token.is_empty() {
            return Err(format!("token file {} is empty", path.display()));
        }
        Ok(Some(format!("Bearer {token}")))
    }

    /// The stream URL for this dataplane.
    pub fn routes_url(&self) -> String {
        format!(
            "{}{ROUTES_PATH}?dataplane={}",
            self.base,
            query_escape(&self.name)
        )
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A client for the controller, checking its certificate against the CA of
/// `conn` on `https://`.
pub fn http_client<B>(conn: &ControllerConn) -> ControllerClient<B>
where
    B: hyper::body::Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(Duration::from_secs(2)));
    connector.set_nodelay(true);
    connector.enforce_http(false);
    let connector = HttpsConnectorBuilder::new()
        .with_tls_config((*conn.tls).clone())
        .https_or_http()
        .enable_http1()
        .wrap_connector(connector);
    Client::builder(TokioExecutor::new()).build(connector)
}

/// A random delay in `[0, max)`, so that dataplanes that lost the controller
/// together do not all come back in the same instant.
fn jitter(max: Duration) -> Duration {
    let max_ms = max.as_millis().max(1) as u64;
    Duration::from_millis(RandomState::new().hash_one(max_ms) % max_ms)
}

/// How one connection went.
#[derive(Debug, Default)]
struct Session {
    /// The controller answered 200 and the stream opened.
    connected: bool,
    /// An event was refused: the next connect asks for a snapshot.
    refused: bool,
}

/// Follows the stream until `stop`.
pub async fn follow(conn: ControllerConn, state: Arc<State>, mut stop: watch::Receiver<bool>) {
    let client = http_client::<Empty<Bytes>>(&conn);
    let mut backoff = BACKOFF_START;
    let mut want_snapshot = false;
    loop {
        let s = tokio::select! {
            _ = stopped(&mut stop) => return,
            s = session(&client, &conn, &state, want_snapshot) => s,
        };
        // Until a connect succeeds, a pending snapshot request stays pending.
        if s.connected {
            want_snapshot = s.refused;
            // A controller whose events keep being refused is not retried
            // at full speed.
            if !s.refused {
                backoff = BACKOFF_START;
            }
        }
        let wait = backoff + jitter(backoff / 2);
        backoff = (backoff * 2).min(BACKOFF_MAX);
        tokio::select! {
            _ = stopped(&mut stop) => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

async fn session(
    client: &ControllerClient<Empty<Bytes>>,
    conn: &ControllerConn,
    state: &State,
    want_snapshot: bool,
) -> Session {
    let mut session = Session::default();
    let mut req = Request::get(conn.routes_url()).header(header::ACCEPT, "text/event-stream");
    match conn.authorization().await {
        Ok(Some(value)) => req = req.header(header::AUTHORIZATION, value),
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(error = %e, "cannot authenticate to the controller");
            return session;
        }
    }
    let version = state.version();
    let resume = version > 0 && !want_snapshot;
    if resume {
        req = req.header("last-event-id", version.to_string());
    }
    let req = match req.body(Empty::new()) {
        Ok(req) => req,
        Err(e) => {
            tracing::warn!(error = %e, "cannot build the route stream request");
            return session;
        }
    };
    let resp = match tokio::time::timeout(RESPONSE_TIMEOUT, client.request(req)).await {
        Ok(Ok(resp)) => resp,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, serving = version, "controller unreachable; serving the last table");
            return session;
        }
        Err(_) => {
            tracing::debug!(
                serving = version,
                "controller did not answer; serving the last table"
            );
            return session;
        }
    };
    if resp.status() != StatusCode::OK {
        let status = resp.status();
        let body = Limited::new(resp.into_body(), 4096)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        tracing::warn!(%status, body = %String::from_utf8_lossy(&body).trim(), "controller refused the route stream");
        return session;
    }
    session.connected = true;
    tracing::info!(controller = %conn.base, resume, serving = version, "route stream connected");
    let mut body = resp.into_body();
    let mut decoder = sse::Decoder::new();
    loop {
        let frame = match tokio::time::timeout(STREAM_IDLE, body.frame()).await {
            Err(_) => {
                tracing::warn!("route stream silent for too long; reconnecting");
                return session;
            }
            Ok(None) => {
                tracing::info!("controller closed the route stream; reconnecting");
                return session;
            }
            Ok(Some(Err(e))) => {
                tracing::info!(error = %e, "route stream broke; reconnecting");
                return session;
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
                return session;
            }
        };
        for msg in messages {
            let applied = match RouteEvent::from_sse(&msg.event, &msg.data) {
                Ok(event) => state.apply(event),
                Err(e) => {
                    // The SSE id is the version the event would have made.
                    let version = msg.id.as_deref().and_then(|id| id.parse().ok());
                    state.reject(version.unwrap_or(0), &e);
                    Err(e)
                }
            };
            match applied {
                Ok(()) => tracing::info!(version = state.version(), "route table applied"),
                Err(e) => {
                    tracing::warn!(error = %e, serving = state.version(), "route event refused; asking for a snapshot");
                    session.refused = true;
                    return session;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_and_the_name_escaped() {
        let c =
            ControllerConn::new("http://ctl:8090/", None, None, "dp 1/a".into()).expect("valid");
        assert_eq!(
            c.routes_url(),
            "http://ctl:8090/v1/routes?dataplane=dp%201%2Fa"
        );
        let err =
            ControllerConn::new("https://ctl:8090", None, None, "dp".into()).expect_err("no CA");
        assert!(err.to_string().contains("needs --ca-file"), "{err}");
        let missing = Path::new("/nonexistent/ca.pem");
        let err = ControllerConn::new("https://ctl:8090", None, Some(missing), "dp".into())
            .expect_err("unreadable CA");
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
        assert!(ControllerConn::new("ctl:8090", None, None, "dp".into()).is_err());
        assert!(ControllerConn::new("http://ctl?x=1", None, None, "dp".into()).is_err());
    }

    #[test]
    fn jitter_stays_below_its_bound() {
        for _ in 0..100 {
            assert!(jitter(Duration::from_millis(50)) < Duration::from_millis(50));
        }
        assert_eq!(jitter(Duration::ZERO), Duration::ZERO);
    }
}
