//! The request path: route, pick an endpoint, forward, stream back.
//!
//! Bodies are never collected: the client's body streams to the endpoint and
//! the endpoint's body streams back, with hyper's back-pressure both ways.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Scheme};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::metrics::{PoolCode, PoolEndpointCode, PoolLabel};
use crate::state::State;

/// Body of every proxy response: the endpoint's, or a short local one.
pub type ProxyBody = Either<Incoming, Full<Bytes>>;

/// Header naming why Sluice answered a request itself.
pub const ERROR_HEADER: &str = "x-sluice-error";

/// Headers that describe one hop, never forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The forwarding service.
#[derive(Debug, Clone)]
pub struct Proxy {
    state: Arc<State>,
    client: Client<HttpConnector, Incoming>,
}

impl Proxy {
    /// A proxy over `state` with a pooled keep-alive client to endpoints.
    pub fn new(state: Arc<State>) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(std::time::Duration::from_secs(2)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(std::time::Duration::from_secs(60))
            .pool_max_idle_per_host(1024)
            .build(connector);
        Self { state, client }
    }

    /// Handles one request from `peer`.
    pub async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<ProxyBody> {
        let table = self.state.table.load_full();
        let Some(raw_host) = request_host(&req) else {
            return local(
                StatusCode::BAD_REQUEST,
                "no-host",
                "request has no Host header\n".into(),
            );
        };
        let host = normalize_host(raw_host);
        let path = req.uri().path();
        let Some(pool) = table.route(&host, path) else {
            let body = format!("no pool matches host {host:?} path {path:?}\n");
            return local(StatusCode::NOT_FOUND, "no-route", body);
        };
        let name = &pool.route.name;
        let Some(target) = pool.balancer.pick() else {
            self.count(name, None, 503);
            let body = format!("pool {name:?} has no ready endpoints\n");
            return local(StatusCode::SERVICE_UNAVAILABLE, "no-endpoints", body);
        };

        let started = Instant::now();
        pool.stats.start();
        let label = PoolLabel { pool: name.clone() };
        self.state.metrics.inflight.get_or_create(&label).inc();
        let original_host = HeaderValue::from_str(raw_host).ok();
        let upstream = match forward_request(req, target, peer, original_host) {
            Ok(r) => r,
            Err(e) => {
                pool.stats.finish(400, 0.0);
                self.state.metrics.inflight.get_or_create(&label).dec();
                return local(StatusCode::BAD_REQUEST, "bad-request", format!("{e}\n"));
            }
        };
        let result = self.client.request(upstream).await;
        let elapsed = started.elapsed();
        self.state.metrics.inflight.get_or_create(&label).dec();
        self.state
            .metrics
            .duration
            .get_or_create(&label)
            .observe(elapsed.as_secs_f64());
        let ms = elapsed.as_secs_f64() * 1000.0;
        match result {
            Ok(mut resp) => {
                let code = resp.status().as_u16();
                pool.stats.finish(code, ms);
                self.count(name, Some(target.addr), code);
                strip_hop_by_hop(resp.headers_mut());
                resp.map(Either::Left)
            }
            Err(e) => {
                pool.stats.finish(502, ms);
                self.count(name, Some(target.addr), 502);
                tracing::debug!(pool = %name, endpoint = %target.addr, error = %describe(&e), "endpoint failed");
                let body = format!("endpoint {} failed: {}\n", target.addr, describe(&e));
                local(StatusCode::BAD_GATEWAY, "upstream-failed", body)
            }
        }
    }

    fn count(&self, pool: &str, endpoint: Option<SocketAddr>, code: u16) {
        let m = &self.state.metrics;
        m.requests
            .get_or_create(&PoolCode {
                pool: pool.to_string(),
                code,
            })
            .inc();
        if let Some(ep) = endpoint {
            let upstream_code = if code == 502 { 0 } else { code };
            m.upstream
                .get_or_create(&PoolEndpointCode {
                    pool: pool.to_string(),
                    endpoint: ep.to_string(),
                    code: upstream_code,
                })
                .inc();
        }
    }
}

/// `:authority` (HTTP/2, absolute-form) or the Host header.
fn request_host(req: &Request<Incoming>) -> Option<&str> {
    req.uri().authority().map(|a| a.as_str()).or_else(|| {
        req.headers()
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
    })
}

/// Lower-cased host without port; borrows when nothing needs changing.
fn normalize_host(raw: &str) -> Cow<'_, str> {
    let host = match raw.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(v6),
        None => raw.rsplit_once(':').map_or(raw, |(h, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                h
            } else {
                raw
            }
        }),
    };
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

fn forward_request(
    req: Request<Incoming>,
    target: &crate::balance::Target,
    peer: SocketAddr,
    original_host: Option<HeaderValue>,
) -> Result<Request<Incoming>, http::Error> {
    let (mut parts, body) = req.into_parts();
    let path_and_query = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    parts.uri = Uri::builder()
        .scheme(Scheme::HTTP)
        .authority(target.authority.clone())
        .path_and_query(path_and_query)
        .build()?;
    parts.version = Version::HTTP_11;
    let headers = &mut parts.headers;
    strip_hop_by_hop(headers);
    if let Some(host) = original_host {
        if !headers.contains_key(header::HOST) {
            headers.insert(header::HOST, host.clone());
        }
        headers.insert(X_FORWARDED_HOST, host);
    }
    let client_ip = peer.ip().to_string();
    let xff = match headers.get(X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prior) => format!("{prior}, {client_ip}"),
        None => client_ip,
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert(X_FORWARDED_FOR, v);
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    Ok(Request::from_parts(parts, body))
}

/// Removes hop-by-hop headers, including any the Connection header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

/// An answer from Sluice itself: a status, a reason header, a short body.
pub fn local(status: StatusCode, reason: &'static str, body: String) -> Response<ProxyBody> {
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from(body))));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(ERROR_HEADER, HeaderValue::from_static(reason));
    resp
}

/// The error and its causes, as one line ("client error (Connect): tcp
/// connect error: Connection refused").
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_lose_their_port_and_case() {
        assert_eq!(normalize_host("Api.Example.com:8080"), "api.example.com");
        assert_eq!(normalize_host("example.com"), "example.com");
        assert_eq!(normalize_host("[::1]:80"), "::1");
    }

    #[test]
    fn connection_named_headers_are_stripped() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-custom"),
        );
        h.insert("x-custom", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }
}
