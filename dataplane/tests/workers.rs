//! `--workers N`: extra threads with runtimes of their own serve the same
//! listeners, each with its own endpoint connections, and drain with the
//! rest.

mod support;

use std::time::Duration;

use http::StatusCode;
use sluice_dataplane::{Dataplane, Source};
use support::{Backend, client, get, options, send, table};

/// The names of this process's threads that are Sluice workers.
fn worker_threads() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("/proc/self/task")
        .map(|dir| {
            dir.flatten()
                .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
                .map(|n| n.trim().to_string())
                .filter(|n| n.starts_with("sluice-worker-"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[tokio::test]
async fn extra_workers_serve_the_same_port_and_drain_with_the_rest() {
    let b = Backend::start("b").await;
    let mut opts = options(Source::Static(table(&format!(
        "pools:\n  - {{name: p, endpoints: [{{address: {}}}]}}\n",
        b.addr
    ))));
    opts.workers = 3;
    opts.grace_period = Duration::from_secs(30);
    let dp = Dataplane::start(opts).await.expect("starts");
    // (A thread names itself once it runs.)
    support::eventually("two worker threads", async || {
        worker_threads() == ["sluice-worker-1", "sluice-worker-2"]
    })
    .await;
    let addr = dp.http_addr();

    // 40 clients of their own connections, 10 requests each: every one
    // answered by the backend, whichever worker accepted it.
    let clients: Vec<_> = (0..40)
        .map(|_| {
            tokio::spawn(async move {
                let http = client();
                let mut ok = 0;
                for _ in 0..10 {
                    let got = send(&http, get(addr, "x", "/")).await;
                    ok += usize::from(got.status == StatusCode::OK && got.body.as_ref() == b"b");
                }
                ok
            })
        })
        .collect();
    let mut ok = 0;
    for c in clients {
        ok += c.await.expect("client");
    }
    assert_eq!(ok, 400);

    // A request in flight when the drain starts is answered; then every
    // worker thread is gone.
    let in_flight = tokio::spawn(async move { send(&client(), get(addr, "x", "/gate")).await });
    b.gate.arrival().await;
    let shutdown = tokio::spawn(dp.shutdown());
    tokio::time::sleep(Duration::from_millis(200)).await;
    support::in_flight_answered_then_stopped(&b, in_flight, shutdown).await;
    support::eventually("the worker threads to end", async || {
        worker_threads().is_empty()
    })
    .await;
}
