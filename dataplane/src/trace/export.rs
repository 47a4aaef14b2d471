//! Spans to an OTLP/HTTP endpoint (protobuf), from a thread of their own.
//!
//! Requests hand their finished spans to a bounded [`Queue`] and never wait
//! for it: when it is full (the collector is slow or gone), the span is
//! dropped and counted, and the thread says so in the log. The thread
//! runs a small runtime of its own, so that exporting takes no time from
//! the threads serving traffic. It waits for a first span, sleeps
//! [`BATCH_DELAY`] while more queue up, then sends up to [`MAX_BATCH`] a
//! request (at once again while more wait). Measured with callgrind
//! (bench/results/tracing.md): sending spans as they came cost 39k
//! instructions per recorded request, and taking each as it came while
//! gathering a batch still 31k (a wake-up of this thread per span).
//!
//! The exporter is `opentelemetry-otlp`'s, over a hyper client (plain
//! HTTP, or HTTPS checked against the system's CA roots): no gRPC, no
//! second HTTP stack. Its environment variables apply as they do to any
//! OpenTelemetry SDK (`OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_SERVICE_NAME`,
//! `OTEL_RESOURCE_ATTRIBUTES`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::connect::HttpConnector;
use opentelemetry::{Key, KeyValue};
use opentelemetry_http::hyper::HyperClient;
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SpanExporter as _;
use tokio::sync::{mpsc, oneshot};

use super::span::Span;

/// Spans waiting for export at most; more are dropped.
pub const QUEUE: usize = 4096;
/// Most spans sent in one export request.
pub const MAX_BATCH: usize = 512;
/// Longest a span waits for others to share its export request.
pub const BATCH_DELAY: Duration = Duration::from_secs(1);
/// How long one export request may take.
const TIMEOUT: Duration = Duration::from_secs(10);
/// The path of traces under an OTLP/HTTP base URL.
const TRACES_PATH: &str = "/v1/traces";

/// Why the exporter could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The endpoint is not an `http://` or `https://` URL.
    #[error(
        "invalid OTLP endpoint {url:?}: {why} (expected a URL like http://otel-collector:4318)"
    )]
    Endpoint {
        /// The endpoint as given.
        url: String,
        /// What is wrong with it.
        why: String,
    },
    /// No CA certificates to check an `https://` endpoint with.
    #[error("cannot load the system's CA certificates for {url}: {error}")]
    Roots {
        /// The endpoint.
        url: String,
        /// Why.
        error: std::io::Error,
    },
    /// The exporter or its thread would not start.
    #[error("cannot start the OTLP exporter: {0}")]
    Start(String),
}

/// Where requests put their finished spans; cloned into each recorded
/// request's span.
#[derive(Clone, Debug)]
pub struct Queue {
    tx: mpsc::Sender<Box<Span>>,
    dropped: Arc<AtomicU64>,
}

impl Queue {
    /// Queues `span`, or drops and counts it when the queue is full.
    pub fn push(&self, span: Box<Span>) {
        if self.tx.try_send(span).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The export thread's end: told to stop waiting for batches to fill,
/// it sends what is queued and stops once every [`Queue`] is gone.
#[derive(Debug)]
pub struct Finished {
    flush: oneshot::Sender<()>,
    done: oneshot::Receiver<()>,
}

impl Finished {
    /// Has the thread send what is queued without delay, and waits for it
    /// to stop.
    pub async fn flush(self) {
        let _ = self.flush.send(());
        let _ = self.done.await;
    }
}

/// The URL spans are posted to: `url` itself when it has a path, else
/// `url` + `/v1/traces` (as `OTEL_EXPORTER_OTLP_ENDPOINT` is read).
pub fn traces_url(url: &str) -> Result<Uri, Error> {
    let invalid = |why: &str| Error::Endpoint {
        url: url.to_string(),
        why: why.to_string(),
    };
    let uri: Uri = url
        .parse()
        .map_err(|e: http::uri::InvalidUri| invalid(&e.to_string()))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(invalid("the scheme must be http or https")),
    }
    if uri.authority().is_none() {
        return Err(invalid("it names no host"));
    }
    if matches!(uri.path(), "" | "/") && uri.query().is_none() {
        let base = url.trim_end_matches('/');
        return format!("{base}{TRACES_PATH}")
            .parse()
            .map_err(|e: http::uri::InvalidUri| invalid(&e.to_string()));
    }
    Ok(uri)
}

/// Starts the export thread, sending to `url` spans of the service
/// `service.name` = `sluice-dataplane` (unless `OTEL_SERVICE_NAME` says
/// otherwise) and `service.instance.id` = `instance`.
pub fn start(url: &str, instance: &str) -> Result<(Queue, Finished), Error> {
    let endpoint = traces_url(url)?;
    let https = endpoint.scheme_str() == Some("https");
    let resource = resource(instance);
    let (tx, rx) = mpsc::channel(QUEUE);
    let dropped = Arc::new(AtomicU64::new(0));
    let (done_tx, done) = oneshot::channel();
    let (flush, flush_rx) = oneshot::channel();
    let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
    let thread_dropped = Arc::clone(&dropped);
    let url = url.to_string();
    std::thread::Builder::new()
        .name("sluice-otlp".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    let _ = ready_tx.send(Err(Error::Start(e.to_string())));
                    return;
                }
            };
            runtime.block_on(async move {
                let exporter = match exporter(&url, endpoint, https, &resource) {
                    Ok(exporter) => exporter,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                run(exporter, rx, flush_rx, thread_dropped).await;
            });
            let _ = done_tx.send(());
        })
        .map_err(|e| Error::Start(e.to_string()))?;
    ready_rx
        .recv()
        .map_err(|_| Error::Start("the export thread stopped".into()))??;
    Ok((Queue { tx, dropped }, Finished { flush, done }))
}

/// What every span is from: `service.name` from `OTEL_SERVICE_NAME` or
/// `OTEL_RESOURCE_ATTRIBUTES` when either names one, else
/// `sluice-dataplane`; `service.instance.id` the dataplane's name.
fn resource(instance: &str) -> Resource {
    let instance = KeyValue::new("service.instance.id", instance.to_string());
    let detected = Resource::builder().with_attribute(instance.clone()).build();
    let named = detected
        .get(&Key::new("service.name"))
        .is_some_and(|name| !name.as_str().starts_with("unknown_service"));
    if named {
        return detected;
    }
    Resource::builder()
        .with_service_name("sluice-dataplane")
        .with_attribute(instance)
        .build()
}

/// The OTLP exporter of `endpoint`, built inside the thread's runtime (the
/// hyper client needs one).
fn exporter(
    url: &str,
    endpoint: Uri,
    https: bool,
    resource: &Resource,
) -> Result<opentelemetry_otlp::SpanExporter, Error> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    let builder = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(endpoint.to_string())
        .with_timeout(TIMEOUT);
    let builder = if https {
        connector.enforce_http(false);
        let tls = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(rustls::crypto::ring::default_provider())
            .map_err(|error| Error::Roots {
                url: url.to_string(),
                error,
            })?
            .https_only()
            .enable_http1()
            .wrap_connector(connector);
        builder.with_http_client(HyperClient::new(tls, TIMEOUT, None))
    } else {
        builder.with_http_client(HyperClient::new(connector, TIMEOUT, None))
    };
    let mut exporter = builder.build().map_err(|e| Error::Start(e.to_string()))?;
    exporter.set_resource(resource);
    Ok(exporter)
}

/// Exports what the queue holds until every [`Queue`] is gone and the
/// queue is empty; after `flush`, without waiting for batches to fill.
async fn run(
    exporter: opentelemetry_otlp::SpanExporter,
    mut rx: mpsc::Receiver<Box<Span>>,
    mut flush: oneshot::Receiver<()>,
    dropped: Arc<AtomicU64>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut failing = false;
    let mut flushing = false;
    let mut dropped_seen = 0;
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        // Not listening to the queue meanwhile: a span queued now wakes
        // no one.
        if !flushing && batch.len() < MAX_BATCH && rx.len() < MAX_BATCH {
            tokio::select! {
                _ = tokio::time::sleep(BATCH_DELAY) => {}
                _ = &mut flush => flushing = true,
            }
        }
        while batch.len() < MAX_BATCH
            && let Ok(span) = rx.try_recv()
        {
            batch.push(span);
        }
        let spans = batch.len();
        let data = batch.drain(..).map(Span::data).collect();
        match exporter.export(data).await {
            Ok(()) if failing => {
                failing = false;
                tracing::info!(spans, "exporting spans again");
            }
            Ok(()) => {}
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, spans, "cannot export spans; they are dropped until the endpoint answers");
            }
            Err(e) => tracing::debug!(error = %e, spans, "cannot export spans"),
        }
        let now = dropped.load(Ordering::Relaxed);
        if now != dropped_seen {
            tracing::warn!(
                dropped = now - dropped_seen,
                "the span export queue was full; spans dropped"
            );
            dropped_seen = now;
        }
    }
    let _ = exporter.shutdown();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_base_url_gets_the_traces_path_and_a_full_one_is_kept() {
        let url = |s| traces_url(s).map(|u| u.to_string());
        assert_eq!(
            url("http://otel-collector:4318").expect("base"),
            "http://otel-collector:4318/v1/traces"
        );
        assert_eq!(
            url("http://otel-collector:4318/").expect("base"),
            "http://otel-collector:4318/v1/traces"
        );
        assert_eq!(
            url("https://tempo.example.com/otlp/v1/traces").expect("full"),
            "https://tempo.example.com/otlp/v1/traces"
        );
        for bad in [
            "otel-collector:4318",
            "grpc://c:4317",
            "http://",
            "not a url",
        ] {
            let e = traces_url(bad).expect_err(bad).to_string();
            assert!(e.contains(bad) && e.contains("http://"), "{e}");
        }
    }
}
