//! `--workers N`: extra threads with runtimes of their own serve the same
//! listeners, each with its own endpoint connections, and drain with the
//! rest.

mod support;

use std::time::Duration;

use http::StatusCode;
use sluice_dataplane::Dataplane;
use support::{Backend, WAIT, client, get, one_pool, options, send};

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
    let mut opts = options(one_pool(b.addr));
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

#[tokio::test]
async fn requests_are_served_while_worker_0_is_blocked() {
    // The backend and the client run on a thread and runtime of their own,
    // so that this test's runtime (worker 0) can be blocked outright.
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (dp_tx, dp_rx) = tokio::sync::oneshot::channel::<std::net::SocketAddr>();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let side = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("side runtime");
        runtime.block_on(async move {
            let b = Backend::start("side").await;
            addr_tx.send(b.addr).expect("backend address");
            let proxy = dp_rx.await.expect("dataplane address");
            let mut ok = 0;
            for _ in 0..20 {
                // A new client each time: a new connection to accept.
                let got = send(&client(), get(proxy, "x", "/")).await;
                ok += usize::from(got.status == StatusCode::OK && got.body.as_ref() == b"side");
            }
            done_tx.send(ok).expect("result");
        });
    });
    let backend = addr_rx.recv().expect("backend address");
    let mut opts = options(one_pool(backend));
    opts.workers = 2;
    let dp = Dataplane::start(opts).await.expect("starts");
    dp_tx.send(dp.http_addr()).expect("send address");
    // Worker 0 (this thread) does nothing until the 20 requests are done:
    // whatever answered them was worker 1.
    let ok = done_rx
        .recv_timeout(WAIT)
        .expect("the requests finish while worker 0 is blocked");
    assert_eq!(ok, 20);
    side.join().expect("side thread");
    dp.shutdown().await;
}
