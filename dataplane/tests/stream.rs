//! Cluster mode against a scripted controller: refusals, resync, reports,
//! and starting from the persisted table while the controller is away.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use sluice_dataplane::{Dataplane, Options, Source};
use sluice_protocol::{Delta, Endpoint, PoolRoute, Report, RouteEvent, Snapshot, sse};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

async fn named_backend(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = service_fn(move |_req: Request<Incoming>| async move {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(name))))
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

fn pool(addr: SocketAddr) -> PoolRoute {
    PoolRoute {
        name: "ns/p".into(),
        hosts: vec![],
        path_prefix: Default::default(),
        algorithm: Default::default(),
        endpoints: vec![Endpoint::new(addr)],
    }
}

fn frame(event: RouteEvent) -> Bytes {
    Bytes::from(sse::encode(event.name(), event.version(), &event.to_json()))
}

/// What the scripted controller saw.
#[derive(Default)]
struct Seen {
    last_event_ids: Vec<Option<String>>,
    reports: Vec<Report>,
    /// Keeps open streams open until the test ends.
    streams: Vec<mpsc::Sender<Bytes>>,
}

/// Serves `script[n]` as the events of the n-th stream connection.
async fn controller(script: Vec<Vec<RouteEvent>>) -> (SocketAddr, Arc<Mutex<Seen>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(Seen::default()));
    let script = Arc::new(Mutex::new(script.into_iter()));
    let shared = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (seen, script) = (Arc::clone(&shared), Arc::clone(&script));
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let (seen, script) = (Arc::clone(&seen), Arc::clone(&script));
                    async move {
                        if req.uri().path() == "/v1/reports" {
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            if let Ok(r) = serde_json::from_slice::<Report>(&body) {
                                seen.lock().expect("lock").reports.push(r);
                            }
                            let empty = http_body_util::Either::Left(Full::new(Bytes::new()));
                            return Ok::<_, Infallible>(Response::new(empty));
                        }
                        let id = req
                            .headers()
                            .get("last-event-id")
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_string);
                        let events = script.lock().expect("lock").next().unwrap_or_default();
                        let (tx, rx) = mpsc::channel::<Bytes>(16);
                        for e in events {
                            let _ = tx.try_send(frame(e));
                        }
                        let mut s = seen.lock().expect("lock");
                        s.last_event_ids.push(id);
                        s.streams.push(tx);
                        let frames = futures::stream::unfold(rx, |mut rx| async move {
                            rx.recv()
                                .await
                                .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
                        });
                        Ok(Response::new(http_body_util::Either::Right(
                            StreamBody::new(frames),
                        )))
                    }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, seen)
}

async fn start(url: String, state_dir: &std::path::Path) -> Dataplane {
    Dataplane::start(Options {
        source: Source::Controller {
            url,
            token_file: None,
        },
        name: "dp-test".into(),
        http: "127.0.0.1:0".parse().expect("addr"),
        admin: "127.0.0.1:0".parse().expect("addr"),
        state_dir: Some(state_dir.to_path_buf()),
        grace_period: Duration::from_secs(1),
    })
    .await
    .expect("dataplane starts")
}

async fn body_of(dp: &Dataplane) -> String {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let req = Request::get(format!("http://{}/", dp.http_addr()))
        .body(Empty::new())
        .expect("req");
    let fut = async {
        let resp = client.request(req).await.expect("answered");
        String::from_utf8_lossy(&resp.into_body().collect().await.expect("body").to_bytes())
            .to_string()
    };
    tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .expect("within 5 s")
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..200 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn a_refused_delta_is_reported_and_answered_with_a_fresh_snapshot() {
    let (a, b) = (named_backend("a").await, named_backend("b").await);
    let script = vec![
        vec![
            RouteEvent::Snapshot(Snapshot {
                version: 10,
                pools: vec![pool(a)],
            }),
            // Computed from a version the dataplane never had.
            RouteEvent::Delta(Delta {
                version: 11,
                base: 99,
                upserts: vec![pool(b)],
                removes: vec![],
            }),
        ],
        vec![RouteEvent::Snapshot(Snapshot {
            version: 20,
            pools: vec![pool(b)],
        })],
    ];
    let (addr, seen) = controller(script).await;
    let dir = std::env::temp_dir().join(format!("sluice-state-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let dp = start(format!("http://{addr}"), &dir).await;

    eventually("version 20", || dp.route_version() == 20).await;
    assert_eq!(body_of(&dp).await, "b");
    {
        let s = seen.lock().expect("lock");
        // First connect had no table; the reconnect after the refusal asks
        // for a snapshot by sending no Last-Event-ID.
        assert_eq!(s.last_event_ids, vec![None, None]);
    }
    eventually(
        "a report carrying the refusal and the applied version",
        || {
            seen.lock().expect("lock").reports.iter().any(|r| {
                r.applied_version == 20
                    && r.rejected
                        .as_ref()
                        .is_some_and(|j| j.version == 11 && j.error.contains("99"))
            })
        },
    )
    .await;
    dp.shutdown().await;

    // A restart while the controller is gone serves the persisted table.
    drop(seen);
    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind")
        .local_addr()
        .expect("addr");
    let dp = start(format!("http://{closed}"), &dir).await;
    assert_eq!(dp.route_version(), 20);
    assert_eq!(body_of(&dp).await, "b");
    dp.shutdown().await;
}
