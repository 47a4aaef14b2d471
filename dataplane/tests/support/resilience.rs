//! Misbehaving endpoints and clients for the circuit breaker, retry,
//! timeout and rate limit tests.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;

use crate::support::HttpClient;

/// How a [`Faulty`] endpoint answers.
#[derive(Clone, Copy, Debug)]
pub enum Fault {
    /// Reads the request, answers this status with its name.
    Status(u16),
    /// Reads the request head and never answers.
    Hang,
}

/// An endpoint on 127.0.0.1 that answers every request the same wrong way
/// and counts the requests it received.
#[derive(Debug)]
pub struct Faulty {
    /// Where it listens.
    pub addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for Faulty {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Faulty {
    /// Starts on a free port; `name` goes in `x-backend` and the body.
    pub async fn start(name: &'static str, fault: Fault) -> Faulty {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&hits);
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let counter = Arc::clone(&counter);
                conns.spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        counter.fetch_add(1, Ordering::SeqCst);
                        async move {
                            let _ = req.into_body().collect().await;
                            match fault {
                                Fault::Status(code) => {
                                    let mut resp = Response::new(Full::new(Bytes::from(name)));
                                    *resp.status_mut() =
                                        StatusCode::from_u16(code).expect("status");
                                    resp.headers_mut()
                                        .insert("x-backend", http::HeaderValue::from_static(name));
                                    Ok::<_, Infallible>(resp)
                                }
                                Fault::Hang => std::future::pending().await,
                            }
                        }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Faulty { addr, hits, task }
    }

    /// Requests received so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// A loopback address where connecting hangs: a listener that never
/// accepts, with its accept queue filled, so Linux drops further SYNs.
/// Keep the returned value alive for as long as the address is used.
pub struct Blackhole {
    /// The address.
    pub addr: SocketAddr,
    _listener: tokio::net::TcpListener,
    _fillers: Vec<TcpStream>,
}

impl Blackhole {
    /// Fills a backlog-0 listener until a connect to it hangs, or `None`
    /// when the kernel never let one hang (the test then cannot run here).
    pub async fn start() -> Option<Blackhole> {
        let socket = TcpSocket::new_v4().expect("socket");
        socket
            .bind("127.0.0.1:0".parse().expect("addr"))
            .expect("bind");
        let addr = socket.local_addr().expect("addr");
        let listener = socket.listen(0).expect("listen");
        let mut fillers = Vec::new();
        for _ in 0..16 {
            match tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(addr)).await {
                Ok(Ok(s)) => fillers.push(s),
                Ok(Err(_)) => return None,
                Err(_) => {
                    return Some(Blackhole {
                        addr,
                        _listener: listener,
                        _fillers: fillers,
                    });
                }
            }
        }
        None
    }
}

/// A pooled client whose connections come from `ip` (any of 127/8 on
/// Linux loopback).
pub fn client_from(ip: IpAddr) -> HttpClient {
    let mut http = HttpConnector::new();
    http.set_local_address(Some(ip));
    Client::builder(TokioExecutor::new()).build(http)
}
