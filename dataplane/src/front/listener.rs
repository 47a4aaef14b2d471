//! Serving connections on a bound listener, with a graceful drain.
//!
//! Stopping first stops accepting, then lets open connections finish their
//! in-flight requests (hyper's graceful shutdown of a connection closes an
//! idle keep-alive one at once; see [`Drain`]) until the grace period ends;
//! whatever is left then is closed.
//!
//! A connection's plain HTTP/1.1 requests (no body, no upgrade) are served
//! by [`crate::http1::server`]; from the first other one on, the connection is
//! hyper's HTTP/1.1 server's, "with upgrades", so that the proxy can tunnel
//! `Upgrade` requests (WebSocket). HTTP/2 is served by
//! [`crate::http2::server`]: over TLS when ALPN chose `h2` (it offers `h2`
//! and `http/1.1`), and on plain ports with prior knowledge (h2c), told
//! from HTTP/1.1 by the connection preface at no cost to HTTP/1.1 clients.
//! (Endpoints are always spoken to in HTTP/1.1.)

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use http::StatusCode;
use hyper::body::{Body, Frame, SizeHint};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::client_body::ClientBody;
use crate::front::tls::{Site, Sites};
use crate::http1::head_timeout::{Activity, H2_PREFACE, HeadTimeout};
use crate::http1::interim::{Informing, Interim};
use crate::http1::server::{self as front, Rewind, Signal, Spares};
use crate::send_timeout::SendTimeout;

/// How long a client may take to send a request head (and, on the HTTPS
/// listener, to finish the TLS handshake).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an HTTP/2 connection may go without a stream open before it is
/// closed (see [`crate::http2::server::serve`]).
pub const HTTP2_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a client may take none of what is sent to it before its
/// connection's writes fail (HTTP/2: before a stream whose window stays
/// shut is reset); see [`crate::send_timeout`]. nginx's `send_timeout`.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest request head (request line and headers) taken, in bytes.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Most headers a request may carry. hyper's own default: keeping it lets
/// hyper parse headers into a stack array; any other value costs a heap
/// allocation per request.
pub const MAX_HEADERS: usize = 100;

/// Connections a listener lets the kernel queue before they are accepted,
/// by default. tokio's (and the standard library's) 128 drops the SYNs of
/// a burst of new connections (measured: a third of 10,000 opened at once,
/// each then waiting at least a second for its retry); nginx's and
/// HAProxy's practice on Linux is a backlog in the thousands. The kernel
/// caps it at `net.core.somaxconn` (4096 by default since Linux 5.4).
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds a listening socket on `addr` with `backlog` (capped by the
/// kernel), with `SO_REUSEADDR` as `TcpListener::bind` sets it, so that a
/// restarted dataplane binds again while old connections linger.
pub fn bind(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// What a client may send before its request is refused, per connection.
/// Over the limits, hyper answers HTTP/1 requests itself: 431 for a head
/// over `max_header_bytes` or with more than `max_headers` headers, 400 for
/// one that does not parse, 414 for a URI over 64 KiB; HTTP/2 peers get a
/// stream or connection error. A head not complete within
/// `header_read_timeout` gets a 408 and the connection closes when it is the
/// connection's first request and some of it arrived; otherwise (an idle
/// connection, a later keep-alive request) the connection closes silently,
/// one to two periods after its last response (see [`crate::http1::head_timeout`]).
/// An HTTP/2 connection with no stream open for `http2_idle_timeout` is
/// closed with GOAWAY, one to two periods after its last stream ended. A
/// client that takes nothing sent to it for `send_timeout` is closed on
/// (an HTTP/2 stream of it reset).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// See [`HEADER_READ_TIMEOUT`].
    pub header_read_timeout: Duration,
    /// See [`HTTP2_IDLE_TIMEOUT`].
    pub http2_idle_timeout: Duration,
    /// See [`SEND_TIMEOUT`].
    pub send_timeout: Duration,
    /// See [`MAX_HEADER_BYTES`]; at least 8 KiB (hyper's minimum buffer).
    pub max_header_bytes: usize,
    /// See [`MAX_HEADERS`].
    pub max_headers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_read_timeout: HEADER_READ_TIMEOUT,
            http2_idle_timeout: HTTP2_IDLE_TIMEOUT,
            send_timeout: SEND_TIMEOUT,
            max_header_bytes: MAX_HEADER_BYTES,
            max_headers: MAX_HEADERS,
        }
    }
}

/// The connection a request came on.
#[derive(Clone, Debug)]
pub struct ClientConn {
    /// The client.
    pub peer: SocketAddr,
    /// The TLS site its handshake chose; `None` for plain HTTP.
    pub site: Option<Arc<Site>>,
}

impl front::Peer for ClientConn {
    fn peer(&self) -> SocketAddr {
        self.peer
    }
}

fn builder(limits: Limits) -> http1::Builder {
    let mut builder = http1::Builder::new();
    // No timer: the head deadlines are [`HeadTimeout`]'s (hyper would arm
    // one per request). hyper's read buffer limit is what bounds the head:
    // past it, 431. Responses are written with one `write` of head and body
    // copied together rather than a `writev` of both (measured: fewer
    // instructions for the small bodies that dominate).
    builder
        .max_buf_size(limits.max_header_bytes.max(8 * 1024))
        .writev(false);
    if limits.max_headers != MAX_HEADERS {
        builder.max_headers(limits.max_headers);
    }
    builder
}

/// Serves `handler` on `listener` until `stop`, then drains for up to
/// `grace`. With `tls`, every connection is a TLS handshake first, its
/// certificate chosen by SNI from `tls`; a name with no certificate is
/// refused.
pub async fn serve<H, F, B>(
    listener: TcpListener,
    tls: Option<Arc<Sites>>,
    limits: Limits,
    handler: H,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
) where
    H: Fn(Request<ClientBody>, &ClientConn) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Box<Response<B>>> + Send + 'static,
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut drain = Drain::default();
    let builder = Arc::new(builder(limits));
    let spares = Arc::new(Spares::default());
    let mut conns = Conns::new();
    loop {
        tokio::select! {
            _ = stopped(&mut stop) => break,
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let (builder, handler, signal) =
                    (Arc::clone(&builder), handler.clone(), drain.signal());
                let spares = Arc::clone(&spares);
                match &tls {
                    None => {
                        let conn = ClientConn { peer, site: None };
                        let limit = Some(limits.header_read_timeout);
                        conns.spawn(serve_conn(builder, stream, conn, limits, limit, handler, spares, signal));
                    }
                    Some(sites) => {
                        let sites = Arc::clone(sites);
                        let timeout = limits.header_read_timeout;
                        conns.spawn(async move {
                            let handshake = tokio::time::timeout(timeout, handshake(&sites, stream));
                            match handshake.await {
                                Ok(Ok((stream, site))) => {
                                    // Over h2, no first-head deadline.
                                    let h1 = stream.get_ref().1.alpn_protocol() != Some(b"h2");
                                    let limit = h1.then_some(timeout);
                                    let conn = ClientConn { peer, site: Some(site) };
                                    return serve_conn(builder, stream, conn, limits, limit, handler, spares, signal).await;
                                }
                                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                            }
                            None
                        });
                    }
                }
            }
            Some(ended) = conns.join_next(), if !conns.is_empty() => match ended {
                Ok(Some(http2)) => (http2.0)(&mut conns),
                _ => drain.closed(),
            },
        }
    }
    drop(listener);
    drain.start();
    let finished = async {
        while let Some(ended) = conns.join_next().await {
            if let Ok(Some(http2)) = ended {
                // Told to drain at its first poll: GOAWAY, then its streams.
                (http2.0)(&mut conns);
            }
        }
    };
    tokio::select! {
        _ = finished => {}
        _ = tokio::time::sleep(grace) => {
            tracing::warn!(open = conns.len(), "grace period over; closing the remaining connections");
        }
    }
    conns.shutdown().await;
}

/// A listener's connection tasks. One ends with `Some` when its connection
/// turned out to be HTTP/2, and the listener spawns its HTTP/2 task.
type Conns = JoinSet<Option<Http2Start>>;

/// An HTTP/2 connection between its first task, which told it from
/// HTTP/1.1 (by its preface, or by ALPN after TLS), and its own, which
/// [`serve`] spawns into its [`Conns`] (the drain and the grace period see
/// it as any other). Why two tasks: a task's memory is the largest state
/// its future can be in, taken when it is spawned and kept to its end; in
/// one task, an HTTP/2 connection would keep the HTTP/1 side's room (600
/// bytes) besides its own, idle ones included (`dataplane/tests/idle_h2.rs`
/// measures them).
struct Http2Start(Box<dyn FnOnce(&mut Conns) + Send>);

/// Reads the ClientHello, picks the site by SNI, completes the handshake.
async fn handshake(
    sites: &Sites,
    stream: TcpStream,
) -> std::io::Result<(tokio_rustls::server::TlsStream<TcpStream>, Arc<Site>)> {
    let acceptor = rustls::server::Acceptor::default();
    let start = tokio_rustls::LazyConfigAcceptor::new(acceptor, stream).await?;
    let hello = start.client_hello();
    let Some(site) = sites.lookup(hello.server_name()) else {
        let name = hello.server_name().unwrap_or("").to_string();
        return Err(std::io::Error::other(format!(
            "no certificate for server name {name:?}"
        )));
    };
    let stream = start.into_stream(Arc::clone(&site.config)).await?;
    Ok((stream, site))
}

/// Serves one connection: HTTP/1.1 (with upgrades) to its end, or, once it
/// turns out to be HTTP/2, hands it back as an [`Http2Start`] for
/// [`crate::http2::server`] to serve in a task of its own. `head_timeout`:
/// the request heads' deadline (408), `None` for HTTP/2 by ALPN. HTTP/1.1's
/// plain requests are served by [`front`], the rest by hyper. Every write
/// to the client goes through [`SendTimeout`].
#[allow(clippy::too_many_arguments)]
#[allow(clippy::manual_async_fn)] // the async block inside says why
fn serve_conn<I, H, F, B>(
    builder: Arc<http1::Builder>,
    io: I,
    conn: ClientConn,
    limits: Limits,
    head_timeout: Option<Duration>,
    handler: H,
    spares: Arc<Spares>,
    signal: Arc<Signal>,
) -> impl Future<Output = Option<Http2Start>> + Send + use<I, H, F, B>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<ClientBody>, &ClientConn) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Box<Response<B>>> + Send + 'static,
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    // An async block rather than an `async fn`: an `async fn` keeps each
    // argument twice in its future (as passed, and moved into the body),
    // 256 bytes of every connection's task, idle ones included (measured by
    // `dataplane/tests/idle.rs`).
    async move {
        let activity = Arc::new(Activity::default());
        let mut io = HeadTimeout::new(
            SendTimeout::new(io, limits.send_timeout),
            head_timeout.unwrap_or_default(),
            Arc::clone(&activity),
            head_timeout.is_some(),
        );
        let mut buf = BytesMut::new();
        // HTTP/2 by ALPN (no head deadline), or h2c with prior knowledge: the
        // connection starts with HTTP/2's preface (which [`front`] hands off at
        // once: it is no HTTP/1 head).
        let h2 = match head_timeout {
            None => true,
            Some(_) => {
                let (max_head, max_headers) = (limits.max_header_bytes, limits.max_headers);
                let served = front::serve(
                    &mut io,
                    &mut buf,
                    &conn,
                    &handler,
                    &spares,
                    &activity,
                    &signal,
                    max_head,
                    max_headers,
                )
                .await;
                if served == front::Next::Closed {
                    return None;
                }
                starts_with_h2_preface(&mut io, &mut buf).await
            }
        };
        if h2 {
            // Handed over to a task of its own (see [`Http2Start`]).
            let start = Box::new(crate::http2::server::Start {
                io: io.into_inner(),
                read: buf.freeze(),
                conn,
                handler,
                signal,
                max_header_list: u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX),
                preface_timeout: limits.header_read_timeout,
                idle: limits.http2_idle_timeout,
                send_timeout: limits.send_timeout,
            });
            return Some(Http2Start(Box::new(move |conns: &mut Conns| {
                conns.spawn(async move {
                    crate::http2::server::serve(start).await;
                    None
                });
            })));
        }
        // Taken here, not at the start: only this path keeps it.
        let peer = conn.peer;
        // The endpoints' interim responses reach HTTP/1 clients around hyper
        // ([`crate::http1::interim`]).
        let interim = Arc::new(Interim::default());
        let io = Informing::new(Rewind::new(buf.freeze(), io), Arc::clone(&interim));
        let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
            activity.started();
            // Boxed: the request's future is kilobytes, and hyper moves this
            // one into place; a pointer is cheaper to move than a copy
            // (measured: memmove was 7 % of the proxy's CPU).
            let resp = Box::pin(handler(req.map(ClientBody::Hyper), &conn));
            let (activity, interim) = (Arc::clone(&activity), Arc::clone(&interim));
            async move {
                let resp = *interim.relay(resp).await;
                // A switched protocol never finishes: the tunnel is not idle.
                let counted = resp.status() != StatusCode::SWITCHING_PROTOCOLS;
                let resp = resp.map(|body| Counted {
                    body,
                    activity: counted.then_some(activity),
                });
                Ok::<_, Infallible>(resp)
            }
        });
        // Boxed: hyper's connection state is kilobytes, and kept inline it
        // would make every connection's task that big, idle ones included,
        // when most connections never get here.
        let mut served = Box::pin(
            builder
                .serve_connection(TokioIo::new(io), svc)
                .with_upgrades(),
        );
        let mut told = false;
        let served = std::future::poll_fn(|cx| {
            if !told {
                signal.waker.register(cx.waker());
                if signal.draining.load(Ordering::Acquire) {
                    told = true;
                    served.as_mut().graceful_shutdown();
                }
            }
            served.as_mut().poll(cx)
        });
        if let Err(e) = served.await {
            tracing::debug!(%peer, error = %e, "connection ended with an error");
        }
        None
    }
}

/// Whether the connection's first bytes, in `buf` and read into it as
/// needed, are HTTP/2's preface. Reads only while they could still be.
async fn starts_with_h2_preface<I: AsyncRead + Unpin>(io: &mut I, buf: &mut BytesMut) -> bool {
    use tokio::io::AsyncReadExt;
    loop {
        let n = buf.len().min(H2_PREFACE.len());
        if buf[..n] != H2_PREFACE[..n] {
            return false;
        }
        if n == H2_PREFACE.len() {
            return true;
        }
        match io.read_buf(buf).await {
            Ok(0) | Err(_) => return false,
            Ok(_) => {}
        }
    }
}

/// Every open connection's [`Signal`], set and woken at once when the
/// listener stops: a connection then finishes the request in flight and
/// closes (an idle one closes at once).
///
/// Why not hyper-util's `GracefulShutdown`: each connection polls its watch
/// channel again on every wake-up (a lock and a waiter check; measured:
/// 1.2 % of the instructions per request); here that is an atomic load and
/// a waker registration that changes nothing.
#[derive(Default)]
struct Drain {
    signals: Vec<Weak<Signal>>,
    /// Connections accepted, and closed, since the closed connections'
    /// entries last went.
    accepted: usize,
    closed: usize,
}

impl Drain {
    /// A new connection's signal.
    fn signal(&mut self) -> Arc<Signal> {
        self.accepted += 1;
        if self.accepted >= 1024 {
            self.sweep();
        }
        let signal = Arc::new(Signal::default());
        self.signals.push(Arc::downgrade(&signal));
        signal
    }

    /// A connection closed: after many, their entries go too, so that a
    /// burst of connections, once closed, leaves nothing behind (a `Weak`
    /// keeps its signal's allocation).
    fn closed(&mut self) {
        self.closed += 1;
        if self.closed >= 1024 {
            self.sweep();
        }
    }

    fn sweep(&mut self) {
        (self.accepted, self.closed) = (0, 0);
        self.signals.retain(|s| s.strong_count() > 0);
        if self.signals.capacity() > 2 * self.signals.len() + 1024 {
            self.signals.shrink_to_fit();
        }
    }

    /// Tells every open connection to finish.
    fn start(&self) {
        for signal in self.signals.iter().filter_map(Weak::upgrade) {
            signal.draining.store(true, Ordering::Release);
            signal.waker.wake();
        }
    }
}

/// A response body that tells the connection's [`Activity`] when it is
/// done (dropped: sent to its end, or abandoned with its connection).
struct Counted<B> {
    body: B,
    activity: Option<Arc<Activity>>,
}

impl<B: Body + Unpin> Body for Counted<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl<B> Drop for Counted<B> {
    fn drop(&mut self) {
        if let Some(activity) = &self.activity {
            activity.finished();
        }
    }
}

/// Resolves once `stop` turns true (or its sender is gone). The watch guard
/// is dropped inside, so callers' futures stay `Send`.
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
