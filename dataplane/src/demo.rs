//! `sluice-dataplane demo`: three small backends and the proxy, on loopback,
//! for the README quick start.
//!
//! The backends take 127.0.0.1:9001-9003 when those are free, so the
//! addresses printed by `/debug/routes` match the README; a taken port
//! falls back to any free one.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Response, header};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use sluice_protocol::{Algorithm, Endpoint, PoolRoute, RouteTable};
use tokio::net::TcpListener;

/// Ports the demo backends prefer.
pub const PORTS: [u16; 3] = [9001, 9002, 9003];

/// Starts a backend answering `hello from <name>\n` with `x-backend: <name>`
/// on 127.0.0.1:`port`, or on any free port when that one is taken.
pub async fn backend(name: String, port: u16) -> std::io::Result<SocketAddr> {
    let listener = match TcpListener::bind(("127.0.0.1", port)).await {
        Ok(l) => l,
        Err(_) => TcpListener::bind(("127.0.0.1", 0)).await?,
    };
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "demo backend cannot accept");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let name = name.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |_req| {
                    let mut resp =
                        Response::new(Full::new(Bytes::from(format!("hello from {name}\n"))));
                    let h = resp.headers_mut();
                    if let Ok(v) = name.parse() {
                        h.insert("x-backend", v);
                    }
                    h.insert(
                        header::CONTENT_TYPE,
                        header::HeaderValue::from_static("text/plain; charset=utf-8"),
                    );
                    async move { Ok::<_, Infallible>(resp) }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// Starts the three backends and returns the demo table: one catch-all
/// pool, `demo`, round robin over them.
pub async fn table() -> std::io::Result<RouteTable> {
    let mut endpoints = Vec::new();
    for (i, port) in PORTS.iter().enumerate() {
        let addr = backend(format!("backend-{}", i + 1), *port).await?;
        endpoints.push(Endpoint::new(addr));
    }
    let pool = PoolRoute {
        name: "demo".into(),
        hosts: vec![],
        path_prefix: Default::default(),
        algorithm: Algorithm::RoundRobin,
        endpoints,
        ..Default::default()
    };
    Ok(RouteTable::from_pools(1, vec![pool]))
}
