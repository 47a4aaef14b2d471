//! Connections to a pool's endpoints: keep-alive HTTP/1.1 connections held
//! by each endpoint (LIFO, so the warmest is reused and the others can time
//! out), dialed with the pool's `timeouts.connect` and dropped after
//! `timeouts.idle` unused.
//!
//! Written on hyper's connection API rather than hyper-util's pooled client:
//! a checkout is a pop from the endpoint's own list (no pool-wide map keyed
//! by authority, no boxed connect future per request), getting a connection
//! is separate from sending (so a connect failure leaves the request in
//! hand to retry elsewhere, without a copy), and a request that a pooled
//! connection refused before sending a byte (the server closed it while it
//! sat idle) is resent on a fresh connection, never reported as a failure.
//!
//! The circuit breaker counts here: a new connection first takes a place in
//! `maxConnections` (held by the connection's task until it closes, idle
//! ones included) and in `maxPendingRequests` (held while connecting). At
//! the limit a request that needs a new connection fails at once with the
//! overflow; it does not queue for a busy connection to come free, as
//! Envoy's pending queue would.
//!
//! The request body is [`RequestBody`]: the client's own body, passed
//! through, or shared with later attempts until the first read so that a
//! request whose body was never sent can be retried.

use std::error::Error as StdError;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use sluice_protocol::policy::Timeouts;
use tokio::net::TcpStream;

use crate::breaker::{Breaker, Overflow};
use crate::endpoint::Endpoint;

/// Errors crossing hyper's boxed error types.
pub type BoxError = Box<dyn StdError + Send + Sync>;

/// Dialing took longer than `timeouts.connect`.
#[derive(Debug, thiserror::Error)]
#[error("connect timed out after {0:?}")]
pub struct ConnectTimeout(pub Duration);

/// Why an attempt got no response.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The pool is at `maxConnections` or `maxPendingRequests`.
    #[error("{0}")]
    Overflow(Overflow),
    /// Dialing took too long.
    #[error("{0}")]
    ConnectTimeout(ConnectTimeout),
    /// The endpoint could not be reached: nothing was sent.
    #[error("tcp connect error: {0}")]
    Connect(#[source] std::io::Error),
    /// The HTTP/1.1 connection could not be set up: nothing was sent.
    #[error("handshake failed: {0}")]
    Handshake(#[source] hyper::Error),
    /// The connection failed after the request was (at least partly) sent.
    #[error("{0}")]
    Send(#[source] hyper::Error),
}

impl UpstreamError {
    /// Whether the request never left: a connect-time failure.
    pub fn is_connect(&self) -> bool {
        matches!(
            self,
            Self::ConnectTimeout(_) | Self::Connect(_) | Self::Handshake(_)
        )
    }
}

/// An idle (or checked-out) connection to one endpoint.
#[derive(Debug)]
pub struct Conn {
    sender: SendRequest<RequestBody>,
    /// When it was last returned idle.
    since: Instant,
}

impl Conn {
    /// Puts the connection back on `endpoint`'s idle list, after its
    /// response was read to the end.
    pub fn release(mut self, endpoint: &Endpoint) {
        if self.sender.is_closed() {
            return;
        }
        self.since = Instant::now();
        let mut idle = endpoint.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.push(self);
    }
}

/// Longest time between two sweeps of idle connections (shorter when a
/// pool's `timeouts.idle` is: half of the shortest).
pub const REAP_INTERVAL: Duration = Duration::from_secs(5);

/// Closes the idle connections of every endpoint in the current table that
/// have waited longer than their pool's `timeouts.idle` (and those the
/// endpoint closed), every [`REAP_INTERVAL`] at most, until `stop`. Without it an
/// endpoint that stops getting requests would keep its idle connections,
/// and their places in `maxConnections`, until the endpoint closed them.
pub async fn reap(state: Arc<crate::state::State>, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        let every = state
            .table
            .load()
            .pools()
            .iter()
            .map(|p| p.policy.upstream.idle() / 2)
            .min()
            .unwrap_or(REAP_INTERVAL)
            .clamp(Duration::from_millis(50), REAP_INTERVAL);
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(every) => {}
        }
        let table = state.table.load_full();
        let now = Instant::now();
        for pool in table.pools() {
            let limit = pool.policy.upstream.idle();
            for endpoint in &pool.endpoints {
                let mut idle = endpoint.idle.lock().unwrap_or_else(|p| p.into_inner());
                idle.retain(|c| !c.sender.is_closed() && now.duration_since(c.since) < limit);
            }
        }
    }
}

/// One pool's connection settings and circuit breaker.
#[derive(Debug)]
pub struct Upstream {
    breaker: Arc<Breaker>,
    connect: Duration,
    idle: Duration,
}

impl Upstream {
    /// A pool's upstream with its timeouts, counting into `breaker`.
    pub fn new(timeouts: &Timeouts, breaker: Arc<Breaker>) -> Self {
        Self {
            breaker,
            connect: timeouts.connect.get(),
            idle: timeouts.idle.get(),
        }
    }

    /// The upstream for a pool being built: the kept one when the connect
    /// and idle timeouts are unchanged. (Idle connections belong to the
    /// endpoints, so they survive either way.)
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

    /// Longest silence allowed on a response body, and on an idle
    /// connection.
    pub fn idle(&self) -> Duration {
        self.idle
    }

    /// Sends one attempt to `endpoint` on a pooled connection or a new
    /// one. A connect-time failure gives the request back (nothing was
    /// sent); the connection comes back with the response, to be
    /// [released](Conn::release) when its body has been read.
    pub async fn send(
        &self,
        endpoint: &Endpoint,
        req: Request<RequestBody>,
    ) -> Result<(Response<Incoming>, Conn), (UpstreamError, Option<Request<RequestBody>>)> {
        let mut req = req;
        // A pooled connection that turns out closed refuses the request
        // before writing it; then the request goes on a fresh connection.
        while let Some(mut conn) = self.checkout(endpoint) {
            match conn.sender.try_send_request(req).await {
                Ok(resp) => return Ok((resp, conn)),
                Err(mut e) => match e.take_message() {
                    Some(back) => req = back,
                    None => return Err((UpstreamError::Send(e.into_error()), None)),
                },
            }
        }
        let mut conn = match self.connect(endpoint).await {
            Ok(conn) => conn,
            Err(e) => return Err((e, Some(req))),
        };
        match conn.sender.try_send_request(req).await {
            Ok(resp) => Ok((resp, conn)),
            Err(mut e) => {
                let back = e.take_message();
                let err = e.into_error();
                // Refused before a byte was written: as good as a failed connect.
                let err = match back {
                    Some(_) => UpstreamError::Handshake(err),
                    None => UpstreamError::Send(err),
                };
                Err((err, back))
            }
        }
    }

    /// The most recently used idle connection of `endpoint` that can take a
    /// request now; expired and closed ones are dropped on the way.
    fn checkout(&self, endpoint: &Endpoint) -> Option<Conn> {
        let mut idle = endpoint.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.is_empty() {
            return None;
        }
        let now = Instant::now();
        let mut busy = Vec::new();
        let mut found = None;
        while let Some(conn) = idle.pop() {
            if conn.sender.is_closed() || now.duration_since(conn.since) >= self.idle {
                continue;
            }
            if conn.sender.is_ready() {
                found = Some(conn);
                break;
            }
            // Still finishing its last exchange: keep it for later.
            busy.push(conn);
        }
        idle.extend(busy);
        found
    }

    /// Dials `endpoint` within the connect timeout and the breaker's limits.
    async fn connect(&self, endpoint: &Endpoint) -> Result<Conn, UpstreamError> {
        let held = self.breaker.connection().map_err(UpstreamError::Overflow)?;
        let pending = self.breaker.pending().map_err(UpstreamError::Overflow)?;
        let dial = tokio::time::timeout(self.connect, TcpStream::connect(endpoint.addr));
        let stream = match dial.await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(UpstreamError::Connect(e)),
            Err(_) => return Err(UpstreamError::ConnectTimeout(ConnectTimeout(self.connect))),
        };
        drop(pending);
        let _ = stream.set_nodelay(true);
        let (sender, connection) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(UpstreamError::Handshake)?;
        tokio::spawn(async move {
            // The connection counts in `maxConnections` until it closes.
            let _held = held;
            if let Err(e) = connection.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(Conn {
            sender,
            since: Instant::now(),
        })
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

    /// Takes back the body of an attempt that never sent it.
    pub fn restore(&mut self, body: RequestBody) {
        if let (Self::Once(slot), RequestBody::Direct(b)) = (&mut *self, body) {
            *slot = Some(b);
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
