//! Real HTTP backends on loopback that say who they are.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// A backend answering every request with `<name>\n` and `x-backend: <name>`.
#[derive(Debug)]
pub struct Backend {
    /// Its name.
    pub name: String,
    /// Where it listens.
    pub addr: SocketAddr,
    hits: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Backend {
    /// Starts a backend on 127.0.0.1, port 0.
    pub async fn start(name: &str) -> anyhow::Result<Self> {
        Self::bind(name, SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Starts a backend on `addr` (the echo program of the real-cluster
    /// tests binds its pod's address).
    pub async fn bind(name: &str, addr: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let hits = Arc::new(AtomicU64::new(0));
        let (n, h) = (name.to_string(), Arc::clone(&hits));
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (n, h) = (n.clone(), Arc::clone(&h));
                conns.spawn(async move {
                    let svc = service_fn(move |_req: Request<hyper::body::Incoming>| {
                        h.fetch_add(1, Ordering::Relaxed);
                        let resp = Response::builder()
                            .header("x-backend", n.as_str())
                            .body(Full::new(Bytes::from(format!("{n}\n"))));
                        async move { resp.map_err(|_| unreachable_error()) }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
                while conns.try_join_next().is_some() {}
            }
        });
        Ok(Self {
            name: name.to_string(),
            addr,
            hits,
            task,
        })
    }

    /// Requests served so far.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    /// Stops listening and closes every connection.
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn unreachable_error() -> Infallible {
    // Response::builder with a valid static header cannot fail.
    panic!("response builder failed")
}
