//! The span of one recorded request: what is known when it arrives, what
//! its response head adds, and the moment its response body ends (or the
//! client goes away), when it is queued for export as it is. The export
//! thread turns it into OpenTelemetry's span data (measured with
//! callgrind, bench/results/tracing.md: doing that on the request's own
//! thread cost it about 8k instructions). Attributes follow the
//! OpenTelemetry HTTP semantic conventions for a server span; the pool
//! and the endpoint that answered, which those conventions have no name
//! for in a server span, are `sluice.pool` and `sluice.endpoint`.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::LazyLock;
use std::time::SystemTime;

use http::{Method, Request, Response, Version, header};
use opentelemetry::trace::{
    SpanContext, SpanId as OtelSpanId, SpanKind, Status, TraceFlags, TraceId as OtelTraceId,
    TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};

use super::context::{Propagated, SpanId};
use crate::table::{Table, normalize_host};

/// What a recorded request's span holds.
#[derive(Debug)]
pub struct Span {
    outgoing: Propagated,
    parent: Option<SpanId>,
    start: SystemTime,
    pub(super) end: SystemTime,
    method: Method,
    version: Version,
    pub(super) https: bool,
    host: String,
    path: String,
    user_agent: Option<String>,
    client: SocketAddr,
    status: u16,
    error: Option<String>,
    pool: Option<String>,
    endpoint: Option<SocketAddr>,
}

impl Span {
    /// Starts the span of `req` from `client`.
    pub fn start<B>(
        req: &Request<B>,
        client: SocketAddr,
        start: SystemTime,
        outgoing: Propagated,
        parent: Option<SpanId>,
    ) -> Self {
        let header = |name| req.headers().get(name).and_then(|v| v.to_str().ok());
        let host = req
            .uri()
            .authority()
            .map(|a| a.as_str())
            .or_else(|| header(header::HOST))
            .unwrap_or("");
        Self {
            outgoing,
            parent,
            start,
            end: start,
            method: req.method().clone(),
            version: req.version(),
            https: false,
            host: host.to_string(),
            path: req.uri().path().to_string(),
            user_agent: header(header::USER_AGENT).map(str::to_string),
            client,
            status: 0,
            error: None,
            pool: None,
            endpoint: None,
        }
    }

    /// The span as the exporter takes it.
    pub fn data(mut self: Box<Self>) -> SpanData {
        let end = self.end;
        self.data_at(end)
    }

    pub(super) fn respond<B>(
        &mut self,
        resp: &Response<B>,
        endpoint: Option<SocketAddr>,
        table: &Table,
    ) {
        self.status = resp.status().as_u16();
        self.error = (resp.headers().get(crate::own_headers::ERROR_HEADER))
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        self.endpoint = endpoint;
        let host = normalize_host(&self.host);
        self.pool = table.route(&host, &self.path).map(|p| p.route.name.clone());
    }

    /// The span as the exporter takes it, ended at `end`.
    fn data_at(&mut self, end: SystemTime) -> SpanData {
        let o = self.outgoing;
        let flags = if o.sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        };
        let context = SpanContext::new(
            OtelTraceId::from_bytes(o.trace_id.0),
            OtelSpanId::from_bytes(o.span_id.0),
            flags,
            false,
            TraceState::NONE,
        );
        let method = standard_method(&self.method);
        let mut attributes = vec![
            KeyValue::new("http.request.method", method.unwrap_or("_OTHER")),
            KeyValue::new("url.path", std::mem::take(&mut self.path)),
            KeyValue::new("url.scheme", if self.https { "https" } else { "http" }),
            KeyValue::new("network.protocol.version", protocol_version(self.version)),
            KeyValue::new("client.address", self.client.ip().to_string()),
        ];
        if method.is_none() {
            let original = self.method.as_str().to_string();
            attributes.push(KeyValue::new("http.request.method_original", original));
        }
        let (host, port) = split_host(&self.host);
        if !host.is_empty() {
            attributes.push(KeyValue::new("server.address", host.to_string()));
        }
        if let Some(port) = port {
            attributes.push(KeyValue::new("server.port", i64::from(port)));
        }
        if let Some(agent) = self.user_agent.take() {
            attributes.push(KeyValue::new("user_agent.original", agent));
        }
        if self.status != 0 {
            let status = i64::from(self.status);
            attributes.push(KeyValue::new("http.response.status_code", status));
        }
        if let Some(pool) = self.pool.take() {
            attributes.push(KeyValue::new("sluice.pool", pool));
        }
        if let Some(endpoint) = self.endpoint {
            attributes.push(KeyValue::new("sluice.endpoint", endpoint.to_string()));
        }
        // Server spans: 5xx is an error, 4xx is the client's (the
        // conventions' rule); no status at all, a client that went away.
        let status = if self.status >= 500 || self.status == 0 {
            let kind = (self.error.take()).unwrap_or_else(|| match self.status {
                0 => "incomplete".to_string(),
                code => code.to_string(),
            });
            attributes.push(KeyValue::new("error.type", kind.clone()));
            Status::error(kind)
        } else {
            Status::Unset
        };
        SpanData {
            span_context: context,
            parent_span_id: self
                .parent
                .map_or(OtelSpanId::INVALID, |p| OtelSpanId::from_bytes(p.0)),
            parent_span_is_remote: self.parent.is_some(),
            span_kind: SpanKind::Server,
            name: Cow::Borrowed(method.unwrap_or("HTTP")),
            start_time: self.start,
            end_time: end.max(self.start),
            attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status,
            instrumentation_scope: scope(),
        }
    }
}

/// The instrumentation scope of every span: this crate.
fn scope() -> InstrumentationScope {
    static SCOPE: LazyLock<InstrumentationScope> = LazyLock::new(|| {
        InstrumentationScope::builder("sluice-dataplane")
            .with_version(env!("CARGO_PKG_VERSION"))
            .build()
    });
    SCOPE.clone()
}

/// The method as the conventions name it, when it is one of theirs.
fn standard_method(method: &Method) -> Option<&'static str> {
    Some(match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => return None,
    })
}

fn protocol_version(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

/// `host[:port]` (or `[v6]:port`) into host and port.
fn split_host(authority: &str) -> (&str, Option<u16>) {
    if let Some((host, port)) = authority.rsplit_once(':')
        && !host.ends_with(':')
        && let Ok(port) = port.parse()
        && (!host.contains(':') || host.starts_with('['))
    {
        return (
            host.trim_start_matches('[').trim_end_matches(']'),
            Some(port),
        );
    }
    (
        authority.trim_start_matches('[').trim_end_matches(']'),
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_split_into_address_and_port() {
        assert_eq!(split_host("shop.example.com"), ("shop.example.com", None));
        assert_eq!(
            split_host("shop.example.com:8080"),
            ("shop.example.com", Some(8080))
        );
        assert_eq!(split_host("[2001:db8::1]:443"), ("2001:db8::1", Some(443)));
        assert_eq!(split_host("[2001:db8::1]"), ("2001:db8::1", None));
        assert_eq!(split_host("2001:db8::1"), ("2001:db8::1", None));
        assert_eq!(split_host("host:notaport"), ("host:notaport", None));
    }
}
