//! `sluice-dataplane demo`: three small backends and the proxy, on loopback.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::Response;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use sluice_protocol::{Endpoint, PoolRoute, RouteTable};
use tokio::net::TcpListener;

/// Starts a backend answering `hello from <name>` on 127.0.0.1 (any port).
pub async fn backend(name: String) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let name = name.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |_req| {
                    let resp = Response::builder()
                        .header("x-backend", name.as_str())
                        .header("content-type", "text/plain; charset=utf-8")
                        .body(Full::new(Bytes::from(format!("hello from {name}\n"))))
                        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())));
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

/// The demo table: one catch-all pool over the three backends.
pub async fn table() -> std::io::Result<RouteTable> {
    let mut endpoints = Vec::new();
    for i in 1..=3 {
        endpoints.push(Endpoint::new(backend(format!("backend-{i}")).await?));
    }
    let pool = PoolRoute {
        name: "demo".into(),
        hosts: vec![],
        path_prefix: Default::default(),
        algorithm: Default::default(),
        endpoints,
    };
    Ok(RouteTable::from_pools(1, vec![pool]))
}
