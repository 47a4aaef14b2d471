//! The access log: one JSON event per request on the `sluice::access`
//! target, with what an operator greps for.

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};

use http::{Request, StatusCode};
use sluice_dataplane::{Dataplane, Source};
use support::*;

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

impl Sink {
    /// The access-log events written so far.
    fn access_events(&self) -> Vec<serde_json::Value> {
        let text = String::from_utf8_lossy(&self.0.lock().expect("lock")).into_owned();
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["target"] == "sluice::access")
            .collect()
    }
}

// The default `#[tokio::test]` runtime runs every task on the test thread,
// so a thread-local subscriber sees the dataplane's events.
#[tokio::test]
async fn every_request_is_one_json_event_with_its_pool_endpoint_and_status() {
    let sink = Sink::default();
    let writer = sink.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let b = Backend::start("b").await;
    let mut opts = options(Source::Static(table(&format!(
        "pools:\n  - {{name: web, hosts: [shop.example.com], endpoints: [{{address: {}}}]}}\n",
        b.addr
    ))));
    opts.access_log = true;
    let dp = Dataplane::start(opts).await.expect("starts");
    let http = client();
    let req = Request::get(format!("http://{}/cart?item=1", dp.http_addr()))
        .header("host", "shop.example.com")
        .header("user-agent", "test-agent/1.0")
        .body(Default::default())
        .expect("request");
    assert_eq!(send(&http, req).await.status, StatusCode::OK);
    assert_eq!(
        proxy_get(&http, &dp, "other.example.com", "/x")
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    eventually("two access-log events", async || {
        sink.access_events().len() >= 2
    })
    .await;

    let events = sink.access_events();
    assert_eq!(events.len(), 2, "{events:#?}");
    let ok = &events[0]["fields"];
    assert_eq!(events[0]["level"], "INFO");
    assert_eq!(ok["method"], "GET");
    assert_eq!(ok["host"], "shop.example.com");
    assert_eq!(ok["path"], "/cart");
    assert_eq!(ok["status"], 200);
    assert_eq!(ok["pool"], "web");
    assert_eq!(ok["endpoint"], b.addr.to_string());
    assert_eq!(ok["bytes"], 1, "the body \"b\"");
    assert_eq!(ok["client"], "127.0.0.1");
    assert_eq!(ok["user_agent"], "test-agent/1.0");
    assert!(ok["duration_ms"].as_f64().is_some_and(|d| d >= 0.0), "{ok}");

    let missed = &events[1]["fields"];
    assert_eq!(missed["status"], 404);
    assert_eq!(missed["pool"], "");
    assert_eq!(missed["endpoint"], "");
}

#[tokio::test]
async fn without_the_flag_nothing_is_logged_per_request() {
    let sink = Sink::default();
    let writer = sink.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let b = Backend::start("b").await;
    let dp = start(Source::Static(table(&format!(
        "pools:\n  - {{name: web, endpoints: [{{address: {}}}]}}\n",
        b.addr
    ))))
    .await;
    let http = client();
    for _ in 0..3 {
        assert_eq!(proxy_get(&http, &dp, "x", "/").await.backend, "b");
    }
    dp.shutdown().await;
    assert!(sink.access_events().is_empty());
}
