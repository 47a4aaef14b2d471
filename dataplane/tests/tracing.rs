//! Tracing: the `traceparent` an endpoint receives (the client's trace
//! with the proxy's span, or a new trace), the headers left alone when
//! tracing is off, the spans an OTLP collector receives, and the trace id
//! in the access log.

mod support;

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use sluice_dataplane::trace::{Parent, Settings};
use sluice_dataplane::{Dataplane, Options, Source};
use support::*;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The W3C specification's example.
const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const STATE: &str = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7";

fn traced(source: Source, sample_ratio: f64, otlp_endpoint: Option<String>) -> Options {
    let mut opts = options(source);
    opts.tracing = Some(Settings {
        sample_ratio,
        otlp_endpoint,
    });
    opts
}

/// `GET /headers` through the proxy with `headers`, over HTTP/1.1.
async fn headers_h1(dp: &Dataplane, headers: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut req = Request::get(format!("http://{}/headers", dp.http_addr())).header("host", "x");
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let got = send(
        &client(),
        req.body(Full::new(Bytes::new())).expect("request"),
    )
    .await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text());
    listed(&got.text())
}

/// The same over h2c.
async fn headers_h2(dp: &Dataplane, headers: &[(&str, &str)]) -> Vec<(String, String)> {
    let (mut sender, conn) = hyper_h2c(dp.http_addr()).await;
    let mut req = Request::get("http://x/headers");
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let req = req.body(Empty::<Bytes>::new()).expect("request");
    let resp = tokio::time::timeout(WAIT, async {
        let resp = sender.send_request(req).await.expect("response");
        assert_eq!(resp.status(), StatusCode::OK);
        resp.into_body().collect().await.expect("body").to_bytes()
    })
    .await
    .expect("answered in time");
    drop(sender);
    conn.abort();
    listed(&String::from_utf8_lossy(&resp))
}

/// The backend's `/headers` listing as (name, value) pairs.
fn listed(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| l.split_once(": "))
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

/// Every value of `name` the backend got.
fn values<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
        .collect()
}

/// The one `traceparent` the backend got, parsed.
fn traceparent(headers: &[(String, String)]) -> Parent {
    let got = values(headers, "traceparent");
    assert_eq!(got.len(), 1, "{headers:?}");
    Parent::parse(got[0].as_bytes()).expect("a valid traceparent")
}

#[tokio::test]
async fn the_endpoint_gets_the_clients_trace_with_the_proxys_span_over_http1_and_http2() {
    let b = Backend::start("b").await;
    let dp = Dataplane::start(traced(one_pool(b.addr), 0.0, None))
        .await
        .expect("starts");
    let client_parent = Parent::parse(PARENT.as_bytes()).expect("valid");
    let sent = [("traceparent", PARENT), ("tracestate", STATE)];
    for got in [headers_h1(&dp, &sent).await, headers_h2(&dp, &sent).await] {
        let parent = traceparent(&got);
        assert_eq!(parent.trace_id.to_string(), TRACE_ID);
        assert_ne!(parent.span_id, client_parent.span_id, "a new span id");
        assert!(parent.sampled, "the client's sampled flag, not the ratio 0");
        assert_eq!(values(&got, "tracestate"), [STATE]);
    }
    // Each request is a span of its own.
    let again = traceparent(&headers_h1(&dp, &sent).await);
    let once_more = traceparent(&headers_h1(&dp, &sent).await);
    assert_ne!(again.span_id, once_more.span_id);
    // An unsampled parent stays unsampled, whatever the ratio.
    let dp1 = Dataplane::start(traced(one_pool(b.addr), 1.0, None))
        .await
        .expect("starts");
    let unsampled = PARENT.replace("-01", "-00");
    let got = headers_h1(&dp1, &[("traceparent", &unsampled)]).await;
    let parent = traceparent(&got);
    assert_eq!(parent.trace_id.to_string(), TRACE_ID);
    assert!(!parent.sampled);
    assert!(values(&got, "tracestate").is_empty());
    dp.shutdown().await;
    dp1.shutdown().await;
}

#[tokio::test]
async fn a_trace_starts_when_none_came_or_the_one_that_came_is_invalid() {
    let b = Backend::start("b").await;
    let always = Dataplane::start(traced(one_pool(b.addr), 1.0, None))
        .await
        .expect("starts");
    let new_h1 = traceparent(&headers_h1(&always, &[]).await);
    let new_h2 = traceparent(&headers_h2(&always, &[]).await);
    assert!(new_h1.sampled && new_h2.sampled, "ratio 1: recorded");
    assert_ne!(new_h1.trace_id, new_h2.trace_id, "one trace per request");
    // An invalid traceparent (uppercase hex) is as good as none: a new
    // trace, and the state that came with it is not passed on.
    let invalid = PARENT.to_uppercase();
    let got = headers_h1(&always, &[("traceparent", &invalid), ("tracestate", STATE)]).await;
    let fresh = traceparent(&got);
    assert_ne!(fresh.trace_id.to_string(), TRACE_ID);
    assert!(fresh.sampled);
    assert!(values(&got, "tracestate").is_empty(), "{got:?}");
    // Ratio 0: the header still goes out, marked not recorded.
    let never = Dataplane::start(traced(one_pool(b.addr), 0.0, None))
        .await
        .expect("starts");
    assert!(!traceparent(&headers_h1(&never, &[]).await).sampled);
    always.shutdown().await;
    never.shutdown().await;
}

#[tokio::test]
async fn with_tracing_off_the_headers_pass_through_untouched_and_none_is_added() {
    let b = Backend::start("b").await;
    let dp = start(one_pool(b.addr)).await;
    let invalid = "00-not-a-trace-01";
    for sent in [PARENT, invalid] {
        let headers = [("traceparent", sent), ("tracestate", STATE)];
        for got in [
            headers_h1(&dp, &headers).await,
            headers_h2(&dp, &headers).await,
        ] {
            assert_eq!(values(&got, "traceparent"), [sent]);
            assert_eq!(values(&got, "tracestate"), [STATE]);
        }
    }
    for got in [headers_h1(&dp, &[]).await, headers_h2(&dp, &[]).await] {
        assert!(values(&got, "traceparent").is_empty(), "{got:?}");
        assert!(values(&got, "tracestate").is_empty(), "{got:?}");
    }
    dp.shutdown().await;
}

/// A span as the collector got it, with its resource's attributes.
type Received = (Vec<KeyValue>, Span);

/// An OTLP/HTTP collector on loopback: takes `POST /v1/traces`
/// (protobuf) and keeps every span with its resource's attributes.
struct Collector {
    addr: SocketAddr,
    spans: Arc<Mutex<Vec<Received>>>,
    task: JoinHandle<()>,
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Collector {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let spans = Arc::new(Mutex::new(Vec::new()));
        let kept = Arc::clone(&spans);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let kept = Arc::clone(&kept);
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let kept = Arc::clone(&kept);
                        async move { Ok::<_, Infallible>(collect(req, &kept).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self { addr, spans, task }
    }

    fn span_of(&self, trace_id: &[u8]) -> Option<Received> {
        let spans = self.spans.lock().expect("lock");
        spans.iter().find(|(_, s)| s.trace_id == trace_id).cloned()
    }
}

async fn collect(req: Request<Incoming>, kept: &Mutex<Vec<Received>>) -> Response<Full<Bytes>> {
    let wrong = |status| {
        let mut resp = Response::new(Full::new(Bytes::new()));
        *resp.status_mut() = status;
        resp
    };
    if req.method() != http::Method::POST || req.uri().path() != "/v1/traces" {
        return wrong(StatusCode::NOT_FOUND);
    }
    if req.headers()["content-type"] != "application/x-protobuf" {
        return wrong(StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }
    let Ok(body) = req.into_body().collect().await else {
        return wrong(StatusCode::BAD_REQUEST);
    };
    let Ok(export) = ExportTraceServiceRequest::decode(body.to_bytes()) else {
        return wrong(StatusCode::BAD_REQUEST);
    };
    let mut kept = kept.lock().expect("lock");
    for resource_spans in export.resource_spans {
        let resource = resource_spans
            .resource
            .map(|r| r.attributes)
            .unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                kept.push((resource.clone(), span));
            }
        }
    }
    // An empty ExportTraceServiceResponse: full success.
    Response::new(Full::new(Bytes::new()))
}

fn attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v: &AnyValue| v.value.as_ref())
}

fn text(s: &str) -> any_value::Value {
    any_value::Value::StringValue(s.to_string())
}

#[tokio::test]
async fn spans_reach_an_otlp_collector_with_trace_ids_status_pool_and_endpoint() {
    let collector = Collector::start().await;
    let b = Backend::start("b").await;
    let endpoint = format!("http://{}", collector.addr);
    let dp = Dataplane::start(traced(one_pool(b.addr), 1.0, Some(endpoint)))
        .await
        .expect("starts");
    let got = headers_h1(&dp, &[("traceparent", PARENT)]).await;
    let proxy_span = traceparent(&got);
    let client_parent = Parent::parse(PARENT.as_bytes()).expect("valid");
    let trace_id = proxy_span.trace_id.0;
    // And one over HTTP/2 without a traceparent: a new trace's root span.
    let started = traceparent(&headers_h2(&dp, &[]).await);
    eventually("both spans at the collector", async || {
        collector.span_of(&trace_id).is_some() && collector.span_of(&started.trace_id.0).is_some()
    })
    .await;

    let (resource, span) = collector.span_of(&trace_id).expect("span");
    assert_eq!(
        span.span_id, proxy_span.span_id.0,
        "the id the endpoint saw"
    );
    assert_eq!(
        span.parent_span_id, client_parent.span_id.0,
        "the client's span"
    );
    assert_eq!(span.name, "GET");
    assert_eq!(span.kind, 2, "SPAN_KIND_SERVER");
    assert!(span.end_time_unix_nano >= span.start_time_unix_nano);
    let attrs = &span.attributes;
    assert_eq!(
        attribute(attrs, "http.response.status_code"),
        Some(&any_value::Value::IntValue(200))
    );
    assert_eq!(attribute(attrs, "http.request.method"), Some(&text("GET")));
    assert_eq!(attribute(attrs, "url.path"), Some(&text("/headers")));
    assert_eq!(
        attribute(attrs, "network.protocol.version"),
        Some(&text("1.1"))
    );
    assert_eq!(attribute(attrs, "sluice.pool"), Some(&text("p")));
    assert_eq!(
        attribute(attrs, "sluice.endpoint"),
        Some(&text(&b.addr.to_string()))
    );
    assert_eq!(
        attribute(&resource, "service.name"),
        Some(&text("sluice-dataplane"))
    );
    assert_eq!(
        attribute(&resource, "service.instance.id"),
        Some(&text("dp-test"))
    );

    let (_, root) = collector.span_of(&started.trace_id.0).expect("span");
    assert!(root.parent_span_id.is_empty(), "a new trace's root span");
    assert_eq!(
        attribute(&root.attributes, "network.protocol.version"),
        Some(&text("2"))
    );
    dp.shutdown().await;
}

#[tokio::test]
async fn a_failed_request_is_an_error_span_and_unsampled_requests_export_nothing() {
    let collector = Collector::start().await;
    let endpoint = format!("http://{}", collector.addr);
    let dp = Dataplane::start(traced(one_pool(closed_port().await), 1.0, Some(endpoint)))
        .await
        .expect("starts");
    let unsampled = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
    let req = |traceparent: &str| {
        Request::get(format!("http://{}/", dp.http_addr()))
            .header("host", "x")
            .header("traceparent", traceparent)
            .body(Full::new(Bytes::new()))
            .expect("request")
    };
    assert_eq!(
        send(&client(), req(unsampled)).await.status,
        StatusCode::BAD_GATEWAY
    );
    assert_eq!(
        send(&client(), req(PARENT)).await.status,
        StatusCode::BAD_GATEWAY
    );
    let sampled = Parent::parse(PARENT.as_bytes()).expect("valid").trace_id;
    eventually("the sampled request's span", async || {
        collector.span_of(&sampled.0).is_some()
    })
    .await;
    // Shutting down sends whatever is still queued: the unsampled span,
    // had there been one, would be there by now too.
    dp.shutdown().await;
    let (_, span) = collector.span_of(&sampled.0).expect("span");
    assert_eq!(
        attribute(&span.attributes, "http.response.status_code"),
        Some(&any_value::Value::IntValue(502))
    );
    assert_eq!(
        attribute(&span.attributes, "error.type"),
        Some(&text("upstream-failed"))
    );
    let status = span.status.expect("a status");
    assert_eq!(status.code, 2, "STATUS_CODE_ERROR");
    let unsampled_id = Parent::parse(unsampled.as_bytes()).expect("valid").trace_id;
    assert!(collector.span_of(&unsampled_id.0).is_none());
    assert_eq!(collector.spans.lock().expect("lock").len(), 1);
}

#[tokio::test]
async fn an_unusable_otlp_endpoint_is_refused_at_start() {
    let b = Backend::start("b").await;
    for bad in ["collector:4318", "ftp://collector/", "http://"] {
        let opts = traced(one_pool(b.addr), 1.0, Some(bad.to_string()));
        let e = Dataplane::start(opts).await.expect_err(bad).to_string();
        assert!(e.contains(bad) && e.contains("http://"), "{e}");
    }
}

/// A log sink the test can read.
#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

// The default `#[tokio::test]` runtime runs every task on the test thread,
// so a thread-local subscriber sees the dataplane's events.
#[tokio::test]
async fn the_access_log_carries_the_trace_id() {
    let sink = Sink::default();
    let writer = sink.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let events = || {
        let text = String::from_utf8_lossy(&sink.0.lock().expect("lock")).into_owned();
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["target"] == "sluice::access")
            .collect::<Vec<_>>()
    };

    let b = Backend::start("b").await;
    let mut opts = traced(one_pool(b.addr), 1.0, None);
    opts.access_log = true;
    let dp = Dataplane::start(opts).await.expect("starts");
    let started = traceparent(&headers_h1(&dp, &[]).await);
    headers_h1(&dp, &[("traceparent", PARENT)]).await;
    eventually("two access-log events", async || events().len() >= 2).await;
    let logged = events();
    assert_eq!(
        logged[0]["fields"]["trace_id"],
        started.trace_id.to_string()
    );
    assert_eq!(logged[1]["fields"]["trace_id"], TRACE_ID);
    dp.shutdown().await;

    // Tracing off: the field is there, empty.
    let mut opts = options(one_pool(b.addr));
    opts.access_log = true;
    let dp = Dataplane::start(opts).await.expect("starts");
    headers_h1(&dp, &[("traceparent", PARENT)]).await;
    eventually("a third access-log event", async || events().len() >= 3).await;
    assert_eq!(events()[2]["fields"]["trace_id"], "");
    dp.shutdown().await;
}
