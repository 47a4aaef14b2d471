//! Distributed tracing: W3C Trace Context propagation and, optionally,
//! spans exported over OTLP/HTTP.
//!
//! Each proxied request is one span of the proxy's. The endpoint gets a
//! `traceparent` naming the request's trace and that span as its parent:
//! the client's trace when it sent a valid `traceparent` (its `tracestate`
//! passed on unchanged, its `sampled` flag kept), a new one otherwise.
//! A new trace is recorded for a share of requests ([`Settings::sample_ratio`]);
//! its `traceparent` is sent either way, with the `sampled` flag saying
//! which, so that the endpoint's logs can always name the trace.
//!
//! Off by default. When off, nothing here runs: the request path carries
//! `None`s, and `traceparent`/`tracestate` pass through as any header.
//!
//! Layout: [`context`] (the header, as plain data), [`span`] (what a
//! recorded request becomes), [`recording`] (a span on its way, from the
//! request to the queue), [`export`] (the queue and the OTLP exporter's
//! thread).

pub mod context;
pub mod export;
pub mod recording;
pub mod span;

use std::net::SocketAddr;
use std::time::SystemTime;

use http::Request;

pub use context::{Parent, Propagated, SpanId, TraceId};
pub use recording::{Recording, Traced};
pub use span::Span;

/// How tracing runs (present: on).
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// Share of new traces (requests without a valid `traceparent`) that
    /// are recorded, from 0 to 1. A request with a parent follows its
    /// parent's `sampled` flag instead.
    pub sample_ratio: f64,
    /// Where spans go: an OTLP/HTTP endpoint; `None`: propagation only.
    pub otlp_endpoint: Option<String>,
}

/// The dataplane's tracer: the sampling setting and where recorded spans
/// go. One per dataplane, shared by every connection.
#[derive(Debug)]
pub struct Tracer {
    sample_ratio: f64,
    queue: Option<export::Queue>,
}

/// A request's place in its trace, decided when it arrives.
#[derive(Debug)]
pub struct Begun {
    /// What the endpoint gets.
    pub outgoing: Propagated,
    /// The proxy's span, when it is recorded and exported.
    pub span: Option<Recording>,
}

impl Tracer {
    /// A tracer sampling new traces at `sample_ratio` and sending the
    /// spans it records to `queue` (`None`: records none).
    pub fn new(sample_ratio: f64, queue: Option<export::Queue>) -> Self {
        Self {
            sample_ratio,
            queue,
        }
    }

    /// Places `req`, from `peer`, in a trace: its parent's, or a new one.
    pub fn begin<B>(&self, req: &Request<B>, peer: SocketAddr) -> Begun {
        let parent = Parent::from_headers(req.headers());
        let outgoing = match parent {
            Some(parent) => Propagated {
                trace_id: parent.trace_id,
                span_id: SpanId::random(),
                sampled: parent.sampled,
                keeps_state: true,
            },
            None => Propagated {
                trace_id: TraceId::random(),
                span_id: SpanId::random(),
                sampled: self.sample_ratio >= 1.0 || fastrand::f64() < self.sample_ratio,
                keeps_state: false,
            },
        };
        let span = match &self.queue {
            Some(queue) if outgoing.sampled => {
                let start = SystemTime::now();
                let parent = parent.map(|p| p.span_id);
                let span = Span::start(req, peer, start, outgoing, parent);
                Some(Recording::new(span, queue.clone()))
            }
            _ => None,
        };
        Begun { outgoing, span }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(traceparent: Option<&str>) -> Request<()> {
        let mut req = Request::get("/").header("host", "x");
        if let Some(value) = traceparent {
            req = req.header("traceparent", value);
        }
        req.body(()).expect("request")
    }

    const PEER: SocketAddr =
        SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 1);

    #[test]
    fn a_parent_keeps_its_trace_and_sampled_flag_with_a_new_span() {
        let tracer = Tracer::new(0.0, None);
        let value = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let begun = tracer.begin(&request(Some(value)), PEER);
        let parent = Parent::parse(value.as_bytes()).expect("valid");
        assert_eq!(begun.outgoing.trace_id, parent.trace_id);
        assert_ne!(begun.outgoing.span_id, parent.span_id);
        assert!(begun.outgoing.sampled, "the parent's flag, not the ratio");
        assert!(begun.outgoing.keeps_state);
        let unsampled = value.replace("-01", "-00");
        let tracer = Tracer::new(1.0, None);
        assert!(
            !tracer
                .begin(&request(Some(&unsampled)), PEER)
                .outgoing
                .sampled
        );
    }

    #[test]
    fn without_a_valid_parent_a_trace_starts_sampled_per_the_ratio() {
        for header in [None, Some("garbage")] {
            let always = Tracer::new(1.0, None).begin(&request(header), PEER);
            assert!(always.outgoing.sampled);
            assert!(!always.outgoing.keeps_state);
            let never = Tracer::new(0.0, None).begin(&request(header), PEER);
            assert!(!never.outgoing.sampled);
            assert_ne!(always.outgoing.trace_id, never.outgoing.trace_id);
        }
        let half = Tracer::new(0.5, None);
        let sampled = (0..2000)
            .filter(|_| half.begin(&request(None), PEER).outgoing.sampled)
            .count();
        assert!((800..1200).contains(&sampled), "{sampled} of 2000");
    }
}
