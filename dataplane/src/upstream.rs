//! Connections to a pool's endpoints: one keep-alive HTTP/1.1 client per
//! pool (as Envoy keeps a connection pool per cluster), so the pool's
//! `timeouts.connect` and `timeouts.idle` apply to its connections only,
//! and its circuit breaker can count them.
//!
//! The connector wraps hyper-util's `HttpConnector`: a connect first takes
//! a place in `maxConnections` (held by the connection until it closes,
//! idle ones included) and in `maxPendingRequests` (held while
//! connecting). hyper-util's pool asks the connector only when it has no
//! idle connection for the endpoint, so at the limit a request that would
//! need a new connection fails at once with the overflow — it does not
//! queue for a busy connection to come free, as Envoy's pending queue
//! would. A request is "pending" while the connection it asked for is
//! being made.
//!
//! The client's request body is [`RequestBody`]: the client's own body,
//! passed through, or shared with later attempts until the first read so
//! that a request whose body was never sent can be retried.

use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Uri};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::legacy::{Client, ResponseFuture};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use sluice_protocol::policy::Timeouts;
use tokio::net::TcpStream;
use tower_service::Service;

use crate::breaker::{Breaker, Held};

/// Errors crossing hyper's boxed error types.
pub type BoxError = Box<dyn StdError + Send + Sync>;

/// Dialing took longer than `timeouts.connect`.
#[derive(Debug, thiserror::Error)]
#[error("connect timed out after {0:?}")]
pub struct ConnectTimeout(pub Duration);

/// One pool's client to its endpoints.
#[derive(Debug)]
pub struct Upstream {
    client: Client<Connector, RequestBody>,
    connect: Duration,
    idle: Duration,
}

impl Upstream {
    /// A client with the pool's timeouts, counting into `breaker`.
    pub fn new(timeouts: &Timeouts, breaker: Arc<Breaker>) -> Self {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        let connector = Connector {
            http,
            breaker,
            timeout: timeouts.connect.get(),
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(timeouts.idle.get())
            .pool_timer(TokioTimer::new())
            .build(connector);
        Self {
            client,
            connect: timeouts.connect.get(),
            idle: timeouts.idle.get(),
        }
    }

    /// The client for a pool being built: the kept one (and its pooled
    /// connections) when the connect and idle timeouts are unchanged.
    pub fn kept(
        slot: &Mutex<Option<Arc<Upstream>>>,
        timeouts: &Timeouts,
        breaker: &Arc<Breaker>,
    ) -> Arc<Upstream> {
        let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(u) = slot.as_ref()
            && u.connect == timeouts.connect.get()
            && u.idle == timeouts.idle.get()
        {
            return Arc::clone(u);
        }
        let u = Arc::new(Upstream::new(timeouts, Arc::clone(breaker)));
        *slot = Some(Arc::clone(&u));
        u
    }

    /// Sends one attempt.
    pub fn request(&self, req: Request<RequestBody>) -> ResponseFuture {
        self.client.request(req)
    }

    /// Longest silence allowed on a response body.
    pub fn idle(&self) -> Duration {
        self.idle
    }
}

/// `HttpConnector` with the pool's connect timeout and circuit breaker.
#[derive(Clone, Debug)]
pub struct Connector {
    http: HttpConnector,
    breaker: Arc<Breaker>,
    timeout: Duration,
}

impl Service<Uri> for Connector {
    type Response = Counted;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Counted, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let admitted = self
            .breaker
            .connection()
            .and_then(|conn| self.breaker.pending().map(|pending| (conn, pending)));
        let timeout = self.timeout;
        let connecting = self.http.call(uri);
        Box::pin(async move {
            let (conn, _pending) = admitted?;
            match tokio::time::timeout(timeout, connecting).await {
                Ok(Ok(io)) => Ok(Counted { io, _conn: conn }),
                Ok(Err(e)) => Err(e.into()),
                Err(_) => Err(ConnectTimeout(timeout).into()),
            }
        })
    }
}

/// A connection to an endpoint, counted in `maxConnections` until closed.
#[derive(Debug)]
pub struct Counted {
    io: TokioIo<TcpStream>,
    _conn: Held,
}

impl Connection for Counted {
    fn connected(&self) -> Connected {
        self.io.connected()
    }
}

impl hyper::rt::Read for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}

/// A request body as the attempts of one request share it.
#[derive(Debug)]
pub enum Outgoing {
    /// No body: every attempt sends none.
    Empty,
    /// A body only the first attempt can send (no retry could resend it).
    Once(Option<Incoming>),
    /// A body the first attempt that reads it takes; until then a retry can
    /// send it instead.
    Shared {
        /// Where it waits.
        slot: Arc<Mutex<Option<Incoming>>>,
        /// Its size hint, read before it was shared.
        hint: SizeHint,
    },
}

impl Outgoing {
    /// The client's body; `retriable` says whether another attempt may
    /// need it after a first one failed without reading it.
    pub fn new(body: Incoming, retriable: bool) -> Self {
        if body.is_end_stream() {
            Self::Empty
        } else if retriable {
            let hint = body.size_hint();
            Self::Shared {
                slot: Arc::new(Mutex::new(Some(body))),
                hint,
            }
        } else {
            Self::Once(Some(body))
        }
    }

    /// Whether the request has no body.
    pub fn is_empty(&self) -> bool {
        matches!(self, Self::Empty)
    }

    /// Whether another attempt can still send the whole body.
    pub fn intact(&self) -> bool {
        match self {
            Self::Empty => true,
            Self::Once(b) => b.is_some(),
            Self::Shared { slot, .. } => slot.lock().map(|s| s.is_some()).unwrap_or(false),
        }
    }

    /// The body of the next attempt.
    pub fn attempt(&mut self) -> RequestBody {
        match self {
            Self::Empty => RequestBody::Empty,
            Self::Once(b) => b.take().map_or(RequestBody::Empty, RequestBody::Direct),
            Self::Shared { slot, hint } => RequestBody::Shared {
                slot: Arc::clone(slot),
                body: None,
                hint: *hint,
            },
        }
    }
}

/// The body hyper's client sends for one attempt.
#[derive(Debug)]
pub enum RequestBody {
    /// Nothing.
    Empty,
    /// The client's body.
    Direct(Incoming),
    /// The client's body, taken from `slot` at the first read.
    Shared {
        /// Shared with the other attempts.
        slot: Arc<Mutex<Option<Incoming>>>,
        /// Taken at the first read.
        body: Option<Incoming>,
        /// Until then, the size hint.
        hint: SizeHint,
    },
}

/// The body was taken by an earlier attempt (never expected: a retry
/// checks that it is still there).
#[derive(Debug, thiserror::Error)]
#[error("the request body was already sent")]
struct BodyGone;

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Self::Empty => Poll::Ready(None),
            Self::Direct(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            Self::Shared { slot, body, .. } => {
                if body.is_none() {
                    *body = slot.lock().ok().and_then(|mut s| s.take());
                }
                match body {
                    Some(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
                    None => Poll::Ready(Some(Err(BodyGone.into()))),
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Empty => true,
            Self::Direct(b) => b.is_end_stream(),
            Self::Shared { body: Some(b), .. } => b.is_end_stream(),
            Self::Shared { body: None, .. } => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Empty => SizeHint::with_exact(0),
            Self::Direct(b) => b.size_hint(),
            Self::Shared { body: Some(b), .. } => b.size_hint(),
            Self::Shared { hint, .. } => *hint,
        }
    }
}
