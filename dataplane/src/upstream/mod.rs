//! Connections to a pool's endpoints: keep-alive HTTP/1.1 connections held
//! by each endpoint (LIFO, so the warmest is reused and the others can time
//! out), dialed with the pool's `timeouts.connect` and dropped after
//! `timeouts.idle` unused.
//!
//! A request is written and its response read by the request's own task
//! ([`crate::http1::client`]): no connection task, no channels. A checkout is a pop
//! from the endpoint's own list (no pool-wide map keyed by authority, no
//! boxed connect future per request), getting a connection is separate
//! from sending (so a connect failure leaves the request in hand to retry
//! elsewhere, without a copy), and an idle connection the endpoint closed
//! (its end of file already seen by the reactor) is passed over at
//! checkout, never written to. The response body owns its connection and
//! puts it back on the endpoint's list after the last byte.
//!
//! The circuit breaker counts here: a new connection first takes a place in
//! `maxConnections` (held by the connection until it closes, idle ones
//! included) and in `maxPendingRequests` (held while connecting). At
//! the limit a request that needs a new connection fails at once with the
//! overflow; it does not queue for a busy connection to come free, as
//! Envoy's pending queue would.
//!
//! The request body is [`RequestBody`]: the client's own body, passed
//! through, or shared with later attempts until the first read so that a
//! request whose body was never sent can be retried.

use std::error::Error as StdError;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use crate::client_body::ClientBody;
use bytes::Bytes;
use http::request::Parts;
use http::{Method, Response};
use http_body::{Body, Frame, SizeHint};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::http1::client::{self as h1, ExtraFields, Framing, RequestFraming};
use crate::policy::breaker::Overflow;

pub mod client;
pub mod conn;
pub mod idle;

pub use client::Upstream;
pub use conn::EndpointConn;
use conn::{Io, Writer};
pub use idle::Idle;

/// What the upstream side needs of an endpoint: where to dial it, and the
/// list its idle connections wait on. The endpoint ([`crate::endpoint`])
/// holds the list; only this side puts connections in and takes them out.
pub trait Dialable: Send + Sync + std::fmt::Debug {
    /// The address dialed.
    fn addr(&self) -> SocketAddr;
    /// The endpoint's idle connections.
    fn idle(&self) -> &Idle;
}

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
    /// The exchange failed after the request was (at least partly) sent.
    #[error("{0}")]
    Send(#[source] h1::Error),
}

impl UpstreamError {
    /// Whether the request never left: a connect-time failure.
    pub fn is_connect(&self) -> bool {
        matches!(self, Self::ConnectTimeout(_) | Self::Connect(_))
    }
}

/// The error and its causes on one line, e.g. "client error (Connect): tcp
/// connect error: Connection refused (os error 111)".
pub(crate) fn describe(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

impl Upstream {
    /// Sends one attempt of the request with head `parts` and `body` to
    /// `endpoint`, on a pooled connection or a new one. The head is
    /// borrowed, not taken: an async fn keeps room for every argument it
    /// owns for as long as it runs, and a request passed by value down the
    /// layers here was kept three times over in the attempts' future
    /// (measured: 1.5 KB of its 2.8 KB). On an answer, the response's
    /// headers have taken the room of the request's (`parts.headers`).
    /// A failure says whether the head is still whole (nothing was sent:
    /// it can go again as it is) and gives back a body that was not sent
    /// (a connect failure); the response's body puts the connection back
    /// on the endpoint's idle list when it has been read to its end.
    /// The response comes boxed: the attempt's outcome, the retries, the
    /// request's limit and the release order hand it up before it is taken
    /// apart, a pointer rather than its 152 bytes each time (measured: 230
    /// instructions a request).
    #[allow(clippy::manual_async_fn)] // an async fn keeps each argument twice
    pub fn send<'a, E: Dialable + 'static>(
        &'a self,
        endpoint: &'a Arc<E>,
        parts: &'a mut Parts,
        body: RequestBody,
        forwarded: &'a (dyn ExtraFields + Sync),
    ) -> impl Future<Output = Result<Box<Response<ResponseBody>>, Unsent>> + Send + 'a {
        // An async block: an async fn would keep each argument twice (see
        // `proxy::attempts`).
        async move {
            let conn = match self.checkout(&**endpoint) {
                Some(conn) => conn,
                // Boxed: only requests that find no idle connection dial.
                None => match Box::pin(self.connect(&**endpoint)).await {
                    Ok(conn) => conn,
                    Err(error) => {
                        return Err(Unsent {
                            error,
                            head_intact: true,
                            body: Some(body),
                        });
                    }
                },
            };
            match send_parts_on(conn, parts, body, forwarded, endpoint).await {
                Ok(resp) => Ok(resp),
                // Nothing came back: the head is still whole.
                Err(e) => Err(Unsent {
                    head_intact: matches!(e, h1::Error::Unanswered(_)),
                    error: UpstreamError::Send(e),
                    body: None,
                }),
            }
        }
    }

    /// The most recently used idle connection of `endpoint` that can take a
    /// request now; expired and closed ones are dropped on the way.
    fn checkout(&self, endpoint: &impl Dialable) -> Option<Box<EndpointConn>> {
        endpoint.idle().checkout(self.idle)
    }

    /// Dials `endpoint` within the connect timeout and the breaker's limits.
    async fn connect(&self, endpoint: &impl Dialable) -> Result<Box<EndpointConn>, UpstreamError> {
        let slot = self.breaker.connection().map_err(UpstreamError::Overflow)?;
        let pending = self.breaker.pending().map_err(UpstreamError::Overflow)?;
        let dial = tokio::time::timeout(self.connect, TcpStream::connect(endpoint.addr()));
        let io = match dial.await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(UpstreamError::Connect(e)),
            Err(_) => return Err(UpstreamError::ConnectTimeout(ConnectTimeout(self.connect))),
        };
        drop(pending);
        let _ = io.set_nodelay(true);
        Ok(EndpointConn::new(io, slot))
    }
}

/// A failed attempt: why, whether the request's head is still whole, and
/// its body when it was not sent.
#[derive(Debug)]
pub struct Unsent {
    /// Why it failed.
    pub error: UpstreamError,
    /// Nothing of the head was sent (or nothing came back): it can go to
    /// another endpoint as it is.
    pub head_intact: bool,
    /// The body, when it was never sent (a connect failure).
    pub body: Option<RequestBody>,
}

/// One request and its response head on `conn`, with `forwarded`'s
/// `X-Forwarded-*` fields, on the request's head in place: its headers
/// become the response's (their room reused), but only once a response
/// head came. A request body is sent by a task of its own while the
/// response head is awaited, and goes on while the response streams back:
/// an endpoint that answers before taking the whole body (a 413, an echo)
/// is heard.
#[allow(clippy::manual_async_fn)] // an async fn keeps each argument twice
fn send_parts_on<'a, E: Dialable + 'static>(
    mut conn: Box<EndpointConn>,
    parts: &'a mut Parts,
    body: RequestBody,
    forwarded: &'a (dyn ExtraFields + Sync),
    endpoint: &'a Arc<E>,
) -> impl Future<Output = Result<Box<Response<ResponseBody>>, h1::Error>> + Send + 'a {
    // An async block: an async fn would keep each argument twice (see
    // `proxy::attempts`).
    async move {
        let framing = RequestFraming::for_body(body.is_end_stream(), body.size_hint().exact());
        let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        conn.head.clear();
        h1::encode_head(
            &mut conn.head,
            &parts.method,
            target,
            &parts.headers,
            Some(forwarded),
            framing,
        );
        let head_request = parts.method == Method::HEAD;
        // The request's header map takes the response's headers.
        let room = &mut parts.headers;
        let Io::Whole(io) = &mut conn.io else {
            return Err(h1::Error::Closed);
        };
        conn::give_spare(&mut conn.buf);
        // Nothing came back yet: a failed write is the endpoint gone.
        io.write_all(&conn.head)
            .await
            .map_err(h1::Error::Unanswered)?;
        if framing != RequestFraming::Empty
            && let Io::Whole(io) = std::mem::replace(&mut conn.io, Io::Gone)
        {
            let (read, mut write) = io.into_split();
            let writer = tokio::spawn(async move {
                h1::write_body(&mut write, body, framing).await?;
                Ok(write)
            });
            conn.io = Io::Split {
                read,
                write: Writer::Running(writer),
            };
        }
        let EndpointConn {
            io, buf, fields, ..
        } = &mut *conn;
        let head = match io {
            Io::Split { read, write } => {
                let mut head = pin!(h1::read_head(read, buf, head_request, fields, room));
                tokio::select! {
                    biased;
                    head = &mut head => head?,
                    sent = std::future::poll_fn(|cx| write.poll_sent(cx)) => match sent {
                        Ok(()) => head.await?,
                        // The client's body failed: the endpoint waits for the
                        // rest, which will never come.
                        Err(e @ h1::Error::Body(_)) => return Err(e),
                        // The endpoint may have answered, then closed (a 413);
                        // if nothing came back, it went away with the request.
                        Err(e) => head.await.map_err(|h| match h {
                            h1::Error::Unanswered(_) => h,
                            _ => e,
                        })?,
                    },
                }
            }
            io => h1::read_head(io, buf, head_request, fields, room).await?,
        };
        let mut resp = Response::new(());
        *resp.status_mut() = head.status;
        *resp.version_mut() = head.version;
        *resp.headers_mut() = head.headers;
        let body = ResponseBody::new(
            conn,
            head.framing,
            head.keep_alive,
            Arc::clone(endpoint) as _,
        );
        Ok(Box::new(resp.map(|()| body)))
    }
}

/// An endpoint's response body, read off its connection as the client
/// takes it; the connection goes back to the endpoint's idle list after the
/// last byte (when the exchange left it reusable), and closes otherwise.
#[derive(Debug)]
pub struct ResponseBody {
    /// Until the body is read (or, after a 101, until the tunnel takes it).
    conn: Option<Box<EndpointConn>>,
    framing: Framing,
    reusable: bool,
    endpoint: Arc<dyn Dialable>,
}

impl ResponseBody {
    fn new(
        conn: Box<EndpointConn>,
        framing: Framing,
        reusable: bool,
        endpoint: Arc<dyn Dialable>,
    ) -> Self {
        let mut body = Self {
            conn: Some(conn),
            framing,
            reusable,
            endpoint,
        };
        if framing.is_done() && reusable {
            body.finish();
        }
        body
    }

    /// The connection, after a `101 Switching Protocols`.
    pub fn take_upgraded(&mut self) -> Option<Box<EndpointConn>> {
        self.conn.take()
    }

    fn finish(&mut self) {
        self.framing = Framing::Done;
        if let Some(conn) = self.conn.take()
            && self.reusable
        {
            self.endpoint.idle().release(conn);
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let Some(conn) = this.conn.as_mut() else {
            return Poll::Ready(None);
        };
        if this.framing.is_done() {
            this.finish();
            return Poll::Ready(None);
        }
        let polled = this.framing.poll_frame(&mut conn.io, &mut conn.buf, cx);
        match &polled {
            Poll::Ready(None) => this.finish(),
            Poll::Ready(Some(Ok(_))) if this.framing.is_done() => this.finish(),
            Poll::Ready(Some(Err(_))) => {
                this.framing = Framing::Done;
                this.conn = None;
            }
            _ => {}
        }
        polled.map_err(Into::into)
    }

    fn is_end_stream(&self) -> bool {
        self.conn.is_none() || self.framing.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing.exact() {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

/// How far a request's body has come, for the timeouts that measure
/// silence rather than size ([`crate::proxy`]): when the client last sent
/// a byte of it, whether it is being waited for (the client is silent,
/// not the endpoint slow to take it), and whether it was read to its end
/// (the request is sent; from then on the wait is for the response).
#[derive(Debug)]
pub struct Progress {
    start: tokio::time::Instant,
    /// When the client last sent a frame, in µs since `start`.
    last: AtomicU64,
    /// [`WAITING`] and [`DONE`].
    flags: AtomicU8,
}

/// The body's next frame is awaited from the client.
const WAITING: u8 = 1;
/// The body was read to its end.
const DONE: u8 = 2;

impl Default for Progress {
    fn default() -> Self {
        Self {
            start: tokio::time::Instant::now(),
            last: AtomicU64::new(0),
            flags: AtomicU8::new(0),
        }
    }
}

impl Progress {
    /// When the client last sent something of the body (or the request
    /// arrived); whether the body is awaited from it now; whether it was
    /// all read.
    pub fn state(&self) -> (tokio::time::Instant, bool, bool) {
        let last = self.start + Duration::from_micros(self.last.load(Ordering::Acquire));
        let flags = self.flags.load(Ordering::Acquire);
        (last, flags & WAITING != 0, flags & DONE != 0)
    }

    fn touch(&self) {
        let now = self.start.elapsed().as_micros();
        self.last
            .store(u64::try_from(now).unwrap_or(u64::MAX), Ordering::Release);
    }

    /// Notes what a poll of the client's body gave.
    fn saw<T, E>(&self, polled: &Poll<Option<Result<T, E>>>) {
        match polled {
            Poll::Pending => {
                self.flags.fetch_or(WAITING, Ordering::AcqRel);
            }
            Poll::Ready(Some(Ok(_))) => {
                self.touch();
                self.flags.fetch_and(!WAITING, Ordering::AcqRel);
            }
            Poll::Ready(None) => {
                self.touch();
                self.flags.store(DONE, Ordering::Release);
            }
            Poll::Ready(Some(Err(_))) => {
                self.flags.fetch_and(!WAITING, Ordering::AcqRel);
            }
        }
    }
}

/// Polls the client's body for a frame, noting it in `progress`.
fn poll_client(
    body: &mut ClientBody,
    progress: &Progress,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
    let polled = Pin::new(body).poll_frame(cx);
    progress.saw(&polled);
    polled.map_err(Into::into)
}

/// A request body as the attempts of one request share it.
#[derive(Debug)]
pub enum Outgoing {
    /// No body: every attempt sends none.
    Empty,
    /// A body only the first attempt can send (no retry could resend it).
    Once(Option<ClientBody>, Arc<Progress>),
    /// A body the first attempt that reads it takes; until then a retry can
    /// send it instead.
    Shared {
        /// Where it waits.
        slot: Arc<Mutex<Option<ClientBody>>>,
        /// Its size hint, read before it was shared.
        hint: SizeHint,
        /// How far it has come.
        progress: Arc<Progress>,
    },
}

impl Outgoing {
    /// The client's body; `retriable` says whether another attempt may
    /// need it after a first one failed without reading it; its reads are
    /// noted in `progress`.
    pub fn new(body: ClientBody, retriable: bool, progress: Option<Arc<Progress>>) -> Self {
        if body.is_end_stream() {
            return Self::Empty;
        }
        let progress = progress.unwrap_or_default();
        if retriable {
            let hint = body.size_hint();
            Self::Shared {
                slot: Arc::new(Mutex::new(Some(body))),
                hint,
                progress,
            }
        } else {
            Self::Once(Some(body), progress)
        }
    }

    /// How far the body has come (`None`: there is none).
    pub fn progress(&self) -> Option<&Progress> {
        match self {
            Self::Empty => None,
            Self::Once(_, progress) | Self::Shared { progress, .. } => Some(progress),
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
            Self::Once(b, _) => b.is_some(),
            Self::Shared { slot, .. } => slot.lock().map(|s| s.is_some()).unwrap_or(false),
        }
    }

    /// Takes back the body of an attempt that never sent it.
    pub fn restore(&mut self, body: RequestBody) {
        if let (Self::Once(slot, _), RequestBody::Direct { body, .. }) = (&mut *self, body) {
            *slot = Some(body);
        }
    }

    /// The body of the next attempt.
    pub fn attempt(&mut self) -> RequestBody {
        match self {
            Self::Empty => RequestBody::Empty,
            Self::Once(b, progress) => {
                b.take()
                    .map_or(RequestBody::Empty, |body| RequestBody::Direct {
                        body,
                        progress: Arc::clone(progress),
                    })
            }
            Self::Shared {
                slot,
                hint,
                progress,
            } => RequestBody::Shared {
                slot: Arc::clone(slot),
                body: None,
                hint: *hint,
                progress: Arc::clone(progress),
            },
        }
    }
}

/// The body one attempt sends.
#[derive(Debug)]
pub enum RequestBody {
    /// Nothing.
    Empty,
    /// The client's body.
    Direct {
        /// The body.
        body: ClientBody,
        /// Where its reads are noted.
        progress: Arc<Progress>,
    },
    /// The client's body, taken from `slot` at the first read.
    Shared {
        /// Shared with the other attempts.
        slot: Arc<Mutex<Option<ClientBody>>>,
        /// Taken at the first read.
        body: Option<ClientBody>,
        /// Until then, the size hint.
        hint: SizeHint,
        /// Where its reads are noted.
        progress: Arc<Progress>,
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
            Self::Direct { body, progress } => poll_client(body, progress, cx),
            Self::Shared {
                slot,
                body,
                progress,
                ..
            } => {
                if body.is_none() {
                    *body = slot.lock().ok().and_then(|mut s| s.take());
                }
                match body {
                    Some(b) => poll_client(b, progress, cx),
                    None => Poll::Ready(Some(Err(BodyGone.into()))),
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Empty => true,
            Self::Direct { body, .. } => body.is_end_stream(),
            Self::Shared { body: Some(b), .. } => b.is_end_stream(),
            Self::Shared { body: None, .. } => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Empty => SizeHint::with_exact(0),
            Self::Direct { body, .. } => body.size_hint(),
            Self::Shared { body: Some(b), .. } => b.size_hint(),
            Self::Shared { hint, .. } => *hint,
        }
    }
}
