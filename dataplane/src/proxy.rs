//! The request path: route, pick an endpoint, forward, stream back.
//!
//! Bodies are never collected: the client's body streams to the endpoint and
//! the endpoint's body streams back, with hyper's back-pressure both ways.
//! Errors Sluice answers itself are short plain-text bodies saying why, with
//! the reason in `x-sluice-error` for scripts and dashboards.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::endpoint::InFlight;
use crate::forward;
use crate::metrics::Exchange;
use crate::state::State;
use crate::table::normalize_host;
use crate::tls::{self, Site};
use crate::upgrade;

/// Header naming why Sluice answered a request itself.
pub const ERROR_HEADER: &str = "x-sluice-error";

/// How long an idle upstream connection stays pooled. Shorter than the
/// usual server-side keep-alive timeouts (nginx 75 s, Node 5 s is the
/// outlier), so Sluice mostly closes first and rarely reuses a connection
/// the endpoint is closing.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long dialing an endpoint may take before the request fails with 502.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Body of every proxy response: the endpoint's, streamed, or a short one
/// of Sluice's own. An enum rather than a boxed body: no allocation, and the
/// upstream arm carries the request's [`Exchange`] so the request counts as
/// in flight until its last byte.
#[derive(Debug)]
pub enum ProxyBody {
    /// The endpoint's response body.
    Upstream {
        /// The body as hyper's client received it.
        body: Incoming,
        /// Dropped at the end of the body (or when the client goes away).
        exchange: Option<Exchange>,
        /// The endpoint's in-flight count, held to the last byte.
        in_flight: Option<InFlight>,
    },
    /// An answer from Sluice itself.
    Local(Full<Bytes>),
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            Self::Upstream {
                body,
                exchange,
                in_flight,
            } => {
                let polled = Pin::new(body).poll_frame(cx);
                if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
                    exchange.take();
                    in_flight.take();
                }
                polled
            }
            Self::Local(body) => Pin::new(body)
                .poll_frame(cx)
                .map_err(|never| match never {}),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Upstream { body, .. } => body.is_end_stream(),
            Self::Local(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Upstream { body, .. } => body.size_hint(),
            Self::Local(body) => body.size_hint(),
        }
    }
}

impl ProxyBody {
    /// The endpoint that answered, for the access log; `None` when Sluice did.
    pub fn endpoint(&self) -> Option<SocketAddr> {
        match self {
            Self::Upstream { in_flight, .. } => in_flight.as_ref().map(|f| f.endpoint().addr),
            Self::Local(_) => None,
        }
    }
}

/// The forwarding service: one per listener, cloned per connection.
#[derive(Debug, Clone)]
pub struct Proxy {
    state: Arc<State>,
    client: Client<HttpConnector, Incoming>,
}

impl Proxy {
    /// A proxy over `state` with a pooled keep-alive HTTP/1.1 client to the
    /// endpoints.
    pub fn new(state: Arc<State>) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_timer(hyper_util::rt::TokioTimer::new())
            .build(connector);
        Self { state, client }
    }

    /// Handles one request from `peer`, on a connection that negotiated
    /// TLS `site` (`None`: plain HTTP).
    pub async fn handle(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
        site: Option<&Site>,
    ) -> Response<ProxyBody> {
        let table = self.state.table.load_full();
        let Some(raw_host) = request_host(&req) else {
            let body = "request has no Host header\n".to_string();
            return local(StatusCode::BAD_REQUEST, "no-host", body);
        };
        let host = normalize_host(raw_host);
        let path = req.uri().path();
        let Some(pool) = table.route(&host, path) else {
            let body = format!("no pool matches host {host:?} path {path:?}\n");
            return local(StatusCode::NOT_FOUND, "no-route", body);
        };
        if !tls::admits(site, &pool.route) {
            let body = format!(
                "pool {:?} requires a client certificate: connect with TLS to one of its hosts\n",
                pool.route.name
            );
            return local(
                StatusCode::MISDIRECTED_REQUEST,
                "client-cert-required",
                body,
            );
        }
        let exchange = pool.metrics.begin();
        let name = &pool.route.name;
        let Some(target) = pool.pick() else {
            exchange.respond(503);
            let body = format!("pool {name:?} has no ready endpoints\n");
            return local(StatusCode::SERVICE_UNAVAILABLE, "no-endpoints", body);
        };

        let in_flight = target.begin();
        let original_host = HeaderValue::from_str(raw_host).ok();
        let (mut parts, body) = req.into_parts();
        let upgrade = upgrade::take(&mut parts);
        let https = site.is_some();
        if let Err(e) = forward::request(
            &mut parts,
            &target.authority,
            peer.ip(),
            original_host,
            https,
        ) {
            exchange.respond(400);
            return local(StatusCode::BAD_REQUEST, "bad-request", format!("{e}\n"));
        }
        match self.client.request(Request::from_parts(parts, body)).await {
            Ok(resp) => {
                let code = resp.status().as_u16();
                exchange.respond(code);
                target.upstream.inc(code);
                let (mut parts, body) = resp.into_parts();
                forward::strip_hop_by_hop(&mut parts.headers);
                upgrade::switch(upgrade, &mut parts, target);
                let body = ProxyBody::Upstream {
                    body,
                    exchange: Some(exchange),
                    in_flight: Some(in_flight),
                };
                Response::from_parts(parts, body)
            }
            Err(e) => {
                exchange.respond(502);
                target.upstream.inc(0);
                let why = describe(&e);
                tracing::debug!(pool = %name, endpoint = %target.addr, error = %why, "endpoint failed");
                let body = format!("endpoint {} failed: {why}\n", target.addr);
                local(StatusCode::BAD_GATEWAY, "upstream-failed", body)
            }
        }
    }
}

/// `:authority` (HTTP/2, or an HTTP/1.1 absolute-form target, which takes
/// precedence over `Host` per RFC 9112 §3.2.2) or the `Host` header.
fn request_host(req: &Request<Incoming>) -> Option<&str> {
    req.uri().authority().map(|a| a.as_str()).or_else(|| {
        req.headers()
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
    })
}

/// An answer from Sluice itself: a status, a reason header, a short body.
pub fn local(status: StatusCode, reason: &'static str, body: String) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::Local(Full::new(Bytes::from(body))));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(ERROR_HEADER, HeaderValue::from_static(reason));
    resp
}

/// The error and its causes on one line, e.g. "client error (Connect): tcp
/// connect error: Connection refused (os error 111)".
fn describe(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}
