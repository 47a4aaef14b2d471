//! Serving HTTP on a bound listener until told to stop.
//!
//! Connections are tasks in a `JoinSet` owned by the accept loop, so stopping
//! the server closes every open connection (long-lived route streams included):
//! dataplanes notice at once and reconnect, which is what a restart must do.

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

/// Response body used by the controller's servers.
pub type Body = BoxBody<Bytes, Infallible>;

/// How long a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts connections on `listener` and serves `handler` until `stop` turns
/// true; over TLS when `tls` is given.
pub async fn serve<H, F>(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    handler: H,
    mut stop: watch::Receiver<bool>,
) where
    H: Fn(Request<Incoming>, std::net::SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let handler = handler.clone();
                let tls = tls.clone();
                conns.spawn(async move {
                    let svc = service_fn(move |req| {
                        let handler = handler.clone();
                        async move { Ok::<_, Infallible>(handler(req, peer).await) }
                    });
                    let builder = auto::Builder::new(TokioExecutor::new());
                    let served = match tls {
                        None => builder.serve_connection(TokioIo::new(stream), svc).await,
                        Some(acceptor) => {
                            let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream));
                            match handshake.await {
                                Ok(Ok(tls)) => builder.serve_connection(TokioIo::new(tls), svc).await,
                                Ok(Err(e)) => {
                                    tracing::info!(%peer, error = %e, "TLS handshake failed");
                                    return;
                                }
                                Err(_) => {
                                    tracing::info!(%peer, "TLS handshake timed out");
                                    return;
                                }
                            }
                        }
                    };
                    if let Err(e) = served {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    conns.shutdown().await;
}

/// A short plain-text response.
pub fn text(status: http::StatusCode, body: impl Into<String>) -> Response<Body> {
    use http_body_util::BodyExt;
    let body = http_body_util::Full::new(Bytes::from(body.into()))
        .map_err(|e| match e {})
        .boxed();
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}
