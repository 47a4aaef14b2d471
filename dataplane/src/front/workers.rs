//! Thread-per-core serving for `--workers N`: the runtime that started the
//! dataplane is worker 0 and serves like the others; each further worker
//! is a thread with a current-thread tokio runtime of its own accepting on
//! the same listening sockets (as nginx workers share theirs), so that a
//! connection, its requests and its endpoint connections stay on one
//! thread: no work stealing, no wake-ups across threads. Idle endpoint
//! connections are kept per worker ([`crate::worker::current`]) for the same reason, and
//! because a connection belongs to the I/O driver of the runtime that
//! opened it.
//!
//! The listening sockets are shared rather than bound again with
//! `SO_REUSEPORT`: that option would also let a second process bind the
//! same port and quietly take half the traffic. A new connection wakes
//! every idle worker and the first to accept takes it, so a busy worker
//! takes fewer.

use std::future::Future;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use crate::client_body::ClientBody;
use hyper::body::Body;
use hyper::{Request, Response};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::front::listener::{self, ClientConn, Limits};
use crate::front::tls::Sites;

/// One listening socket and how to serve it.
pub struct Serving<'a, H> {
    /// The socket worker 0 accepts on.
    pub listener: &'a TcpListener,
    /// Certificates, for the HTTPS listener.
    pub tls: Option<Arc<Sites>>,
    /// Request limits.
    pub limits: Limits,
    /// The request handler.
    pub handler: H,
}

/// Starts worker `index` on a thread of its own, serving every listener of
/// `serving` until `stop`, then draining for up to `grace`. The task
/// returned ends when the worker has.
pub fn spawn<H, F, B>(
    index: usize,
    serving: &[Serving<'_, H>],
    stop: watch::Receiver<bool>,
    grace: Duration,
) -> std::io::Result<JoinHandle<()>>
where
    H: Fn(Request<ClientBody>, &ClientConn) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Box<Response<B>>> + Send + 'static,
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    // The same sockets, as descriptors of this worker's own.
    let mut sockets = Vec::with_capacity(serving.len());
    for s in serving {
        let fd = s.listener.as_fd().try_clone_to_owned()?;
        let std = std::net::TcpListener::from(fd);
        std.set_nonblocking(true)?;
        let tls = s.tls.clone();
        sockets.push((std, tls, s.limits, s.handler.clone()));
    }
    let (done, finished) = oneshot::channel::<()>();
    std::thread::Builder::new()
        .name(format!("sluice-worker-{index}"))
        .spawn(move || {
            crate::worker::enter(index);
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            let runtime = match runtime {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(worker = index, error = %e, "cannot start the worker's runtime");
                    return;
                }
            };
            runtime.block_on(async move {
                let mut served = tokio::task::JoinSet::new();
                for (std, tls, limits, handler) in sockets {
                    match TcpListener::from_std(std) {
                        Ok(l) => {
                            served.spawn(listener::serve(l, tls, limits, handler, stop.clone(), grace));
                        }
                        Err(e) => {
                            tracing::error!(worker = index, error = %e, "cannot register the listener");
                        }
                    }
                }
                while served.join_next().await.is_some() {}
            });
            // Whatever the worker still ran (tunnels) ends with its runtime.
            drop(runtime);
            let _ = done.send(());
        })?;
    Ok(tokio::spawn(async move {
        let _ = finished.await;
    }))
}
