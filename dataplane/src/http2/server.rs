//! HTTP/2 from clients (TLS with ALPN `h2`, or h2c with prior knowledge),
//! served on the `h2` crate, which hyper's own HTTP/2 is built on.
//!
//! What was missing: hyper's server hands a service one request and takes
//! one response back; it has no way to send an interim (`1xx`) response
//! before it, and RFC 9110 §15.2 has a proxy forward the ones it did not
//! ask for (103 Early Hints, a second 100). `h2`'s `SendResponse` has
//! `send_informational`. So this module does what hyper's HTTP/2 server
//! did, with the same settings, and forwards the endpoint's interim
//! responses as HEADERS frames before the final one:
//!
//! - each stream is a task: the proxy's future is polled with the interim
//!   responses its endpoint sends collected
//!   ([`crate::http1::interim::interim_into`]); a client's RST_STREAM while
//!   it waits drops it (the request is cancelled, as hyper does), and one
//!   that came before the task first ran means the request is never
//!   started;
//! - the response head loses the fields HTTP/2 forbids, the hop-by-hop
//!   ones ([`crate::hop_by_hop`]: `Connection` and the ones it names,
//!   `Keep-Alive`, `Proxy-Connection`, `Transfer-Encoding`, `Upgrade`,
//!   `TE`, ...), in one pass over its names (a proxied response has lost
//!   them already; Sluice's own answers may carry `Connection: close`),
//!   gains `Date` when missing and
//!   `Content-Length` when the body's length is known, and goes out without
//!   HPACK's dynamic table ([`INDEX_SENT_HEADERS`]);
//! - the body is sent as the client's flow control allows: a frame is
//!   taken from the body only when the one before it was handed to `h2`,
//!   so at most one frame and `h2`'s send buffer (400 KiB, hyper's) wait
//!   per stream; a body error resets the stream (`INTERNAL_ERROR`), and so
//!   does (`CANCEL`) a client window that lets nothing out for a whole
//!   `--send-timeout` ([`crate::send_timeout`]);
//! - the request's body is [`H2Body`]: its bytes go back to the client's
//!   window as the proxy takes them;
//! - the drain sends GOAWAY and lets the open streams finish.

use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes};
use h2::server::SendResponse;
use h2::{Reason, SendStream};
use http::header;
use http::{Request, Response};
use http_body::Body;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use crate::client_body::{ClientBody, H2Body};
use crate::hop_by_hop;
use crate::http1::interim::{decode_interim, interim_into};
use crate::http1::server::{Peer, Signal, date_value};
use crate::http2::read_ahead::ReadAhead;
use crate::send_timeout::SendWatch;

/// Each stream's and the connection's receive window: hyper's default
/// (the protocol's 64 KiB limits uploads over long round trips).
const WINDOW: u32 = 1024 * 1024;
/// Largest DATA frame sent: the protocol's default.
const MAX_FRAME: u32 = 16 * 1024;
/// Response bytes `h2` may hold per stream beyond what the client's window
/// lets out: hyper's default.
const SEND_BUFFER: usize = 400 * 1024;
/// Streams a client may have open at once: hyper's default.
const MAX_STREAMS: u32 = 200;
/// Streams the server may reset for the client's errors before it closes
/// the connection (`ENHANCE_YOUR_CALM`): hyper's default.
const MAX_ERROR_RESETS: usize = 1024;
/// Whether the response heads sent add their fields to HPACK's dynamic
/// table: no, so every field goes as a static table index or a literal
/// (its name from the static table when it is there), as nginx and HAProxy
/// send theirs. Why: indexing cost a hash of every field sent and kept the
/// values it indexed for the connection's life; those values are slices
/// of an endpoint connection's read buffer (the response head is parsed in
/// place, [`crate::http1::client`]), so each was copied first, or one kept
/// 16 KiB alive per connection ever answered. The price is bytes on the
/// wire: a repeated field is sent again rather than as an index into the
/// table. (`h2` has no such setting of its own: `third_party/README.md`.)
const INDEX_SENT_HEADERS: bool = false;

/// What an HTTP/2 connection's task starts from: the connection, what was
/// read of it already, and what serves its streams ([`serve`]).
pub(crate) struct Start<I, C, H> {
    /// The connection with its send deadline
    /// ([`crate::send_timeout::SendTimeout`]) and none of the HTTP/1
    /// side's wrappers (its head deadline is over once the preface came,
    /// or was never set).
    pub io: I,
    /// Bytes already read from `io`: the preface, if it came in the
    /// clear, and whatever came with it. `h2` reads them first.
    pub read: Bytes,
    pub conn: C,
    pub handler: H,
    pub signal: Arc<Signal>,
    /// The largest request head taken (`SETTINGS_MAX_HEADER_LIST_SIZE`).
    pub max_header_list: u32,
    /// How long the client may take to send its preface: after TLS chose
    /// `h2` by ALPN, the preface is the first thing it owes.
    pub preface_timeout: Duration,
    /// See [`serve`].
    pub idle: Duration,
    /// A stream whose window stays shut this long is reset
    /// ([`crate::send_timeout`]).
    pub send_timeout: Duration,
}

/// Serves HTTP/2 on `start.io` until the client closes it, the connection
/// fails, the drain has ended its streams, or it was idle; a client whose
/// preface does not come within `start.preface_timeout` is closed on (as
/// the HTTP/1 side does with a head that does not come).
///
/// Idle: a connection that accepted no stream during a whole `idle` period
/// and has none open when the period ends is closed with GOAWAY (NO_ERROR;
/// a request crossing it is refused unprocessed, which a client may send
/// again on a new connection), so between one and two periods after its
/// last stream ended; PINGs do not count. One timer per connection, moved
/// once a period: a stream costs a counter's increment. Without it an idle
/// HTTP/2 connection stayed open for as long as its client wanted, where an
/// idle HTTP/1.1 one closes (`crate::http1::head_timeout`).
///
/// `start` comes boxed, and is this future's only argument: what the
/// future keeps of it for the connection's life is a pointer (an argument
/// passed by value keeps its room in the future even once moved out).
pub(crate) async fn serve<I, C, H, F, B>(start: Box<Start<I, C, H>>)
where
    I: AsyncRead + AsyncWrite + Unpin,
    C: Peer,
    H: Fn(Request<ClientBody>, &C) -> F,
    F: Future<Output = Box<Response<B>>> + Send + 'static,
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let Start {
        io,
        read,
        conn,
        handler,
        signal,
        max_header_list,
        preface_timeout,
        idle,
        send_timeout,
    } = {
        // Moved into a block of its own: a box moved out of in place keeps
        // its allocation until its scope ends (here, the connection's).
        let start = start;
        *start
    };
    // The builder in a block of its own: kept in scope, it would take its
    // 152 bytes of this future for the connection's whole life.
    let handshake = {
        let mut builder = h2::server::Builder::new();
        builder
            .initial_window_size(WINDOW)
            .initial_connection_window_size(WINDOW)
            .max_frame_size(MAX_FRAME)
            .max_header_list_size(max_header_list)
            .max_local_error_reset_streams(Some(MAX_ERROR_RESETS))
            .max_send_buffer_size(SEND_BUFFER)
            .max_concurrent_streams(MAX_STREAMS)
            .index_sent_headers(INDEX_SENT_HEADERS);
        builder.handshake::<_, Bytes>(ReadAhead::after(read, io))
    };
    let mut connection = match tokio::time::timeout(preface_timeout, handshake).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            tracing::debug!(peer = %conn.peer(), error = %e, "HTTP/2 handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(peer = %conn.peer(), "no HTTP/2 preface in time");
            return;
        }
    };
    let mut told = false;
    // Streams accepted, and how many there were when the period began.
    let (mut accepted, mut accepted_before) = (0u64, 0u64);
    // The idle period's timer, polled (to be woken when it ends) once per
    // period; in between, a look at whether it ended is an atomic load.
    let mut period = pin!(tokio::time::sleep(idle));
    let mut armed = false;
    loop {
        let next = poll_fn(|cx| {
            if !told {
                signal.waker.register(cx.waker());
                if signal.draining.load(Ordering::Acquire) {
                    told = true;
                    connection.graceful_shutdown();
                }
            }
            if !told && (!armed || period.is_elapsed()) {
                let mut ended = armed;
                // Twice at most: a period that ends at once (a zero
                // timeout) is looked at once more, then at the next wake.
                for _ in 0..2 {
                    if ended {
                        if accepted == accepted_before && !connection.has_streams() {
                            tracing::debug!(peer = %conn.peer(), "idle HTTP/2 connection closed");
                            told = true;
                            connection.abrupt_shutdown(Reason::NO_ERROR);
                            break;
                        }
                        accepted_before = accepted;
                        period.as_mut().reset(Instant::now() + idle);
                    }
                    // Pending: registered; this task is woken when it ends.
                    armed = period.as_mut().poll(cx).is_pending();
                    if armed {
                        break;
                    }
                    ended = true;
                }
            }
            connection.poll_accept(cx)
        })
        .await;
        match next {
            Some(Ok((req, respond))) => {
                accepted += 1;
                let (parts, recv) = req.into_parts();
                let body = H2Body::new(recv, &parts.headers);
                let req = Request::from_parts(parts, ClientBody::H2(body));
                // Boxed: the request's future is kilobytes, and the task
                // would otherwise move it into place.
                let response = Box::pin(handler(req, &conn));
                tokio::spawn(serve_stream(response, respond, send_timeout));
            }
            Some(Err(e)) => {
                tracing::debug!(peer = %conn.peer(), error = %e, "HTTP/2 connection ended with an error");
                return;
            }
            None => return,
        }
    }
}

/// One stream: the proxy's response, after the interim ones, then its body,
/// sent as the client's window allows; the stream is reset when the body
/// fails, the client reset it, or its window let nothing out for a whole
/// `send_timeout`.
///
/// An async block holding only what crosses an `await` (the body is sent
/// from here, not from a function of its own, and the head is built in a
/// block): the stream's task moves this future twice as it is spawned and
/// writes over it once as it ends, and under callgrind each copy costs
/// about as many instructions as the future has bytes. As an `async fn`
/// calling another for the body, the proxy's stream future was 944 bytes;
/// it is 392 now, and an h2c request 0.7k instructions cheaper (callgrind
/// by hand, 10 connections × 10 streams: 38.6k → 37.9k).
#[allow(clippy::manual_async_fn)]
fn serve_stream<F, B>(
    mut response: F,
    mut respond: SendResponse<Bytes>,
    send_timeout: Duration,
) -> impl Future<Output = ()> + use<F, B>
where
    F: Future<Output = Box<Response<B>>> + Unpin,
    B: Body + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    async move {
        let mut interim = Vec::new();
        let answered = poll_fn(|cx| {
            // A client's RST_STREAM cancels the request. Looked at before
            // the request is polled, so that a stream reset before its task
            // first runs (a "rapid reset" flood) never reaches an endpoint.
            if respond.poll_reset(cx).is_ready() {
                return Poll::Ready(None);
            }
            let polled = interim_into(&mut interim, || Pin::new(&mut response).poll(cx));
            if !interim.is_empty() {
                for head in decode_interim(&interim) {
                    if let Err(e) = respond.send_informational(head) {
                        tracing::debug!(error = %e, "interim response not sent");
                    }
                }
                interim.clear();
            }
            polled.map(Some)
        })
        .await;
        // Whatever interim heads it collected go before the body is sent.
        drop(interim);
        let Some(resp) = answered else {
            return;
        };
        let (mut body, mut send) = {
            let (mut parts, body) = resp.into_parts();
            hop_by_hop::strip(&mut parts.headers);
            parts.headers.entry(header::DATE).or_insert_with(date_value);
            let end = body.is_end_stream();
            if !end
                && let Some(n) = body.size_hint().exact()
                && !parts.headers.contains_key(header::CONTENT_LENGTH)
            {
                parts.headers.insert(header::CONTENT_LENGTH, n.into());
            }
            match respond.send_response(Response::from_parts(parts, ()), end) {
                Ok(send) if !end => (body, send),
                Ok(_) => return,
                Err(e) => {
                    tracing::debug!(error = %e, "response head not sent");
                    respond.send_reset(Reason::INTERNAL_ERROR);
                    return;
                }
            }
        };
        // A frame taken from the body that waits for window.
        let mut waiting: Option<(Bytes, bool)> = None;
        let mut watch = SendWatch::new(send_timeout);
        let sent =
            poll_fn(|cx| poll_send(&mut body, &mut send, &mut waiting, &mut watch, cx)).await;
        if let Err(why) = sent {
            tracing::debug!(error = %why, "response body ended early");
        }
    }
}

/// The body's frames, one at a time, onto `send`.
fn poll_send<B>(
    body: &mut B,
    send: &mut SendStream<Bytes>,
    waiting: &mut Option<(Bytes, bool)>,
    watch: &mut SendWatch,
    cx: &mut Context<'_>,
) -> Poll<Result<(), Box<dyn std::error::Error + Send + Sync>>>
where
    B: Body + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    loop {
        // Woken by the client's RST_STREAM while waiting for the body or
        // for window.
        if let Poll::Ready(reason) = send.poll_reset(cx) {
            let reason = reason.map_or_else(|e| e.to_string(), |r| format!("{r:?}"));
            return Poll::Ready(Err(format!("the client reset the stream: {reason}").into()));
        }
        if waiting.is_some() {
            while send.capacity() == 0 {
                match send.poll_capacity(cx) {
                    Poll::Pending if watch.stalled(cx) => {
                        send.send_reset(Reason::CANCEL);
                        return Poll::Ready(Err(
                            "the client's window let nothing out for --send-timeout".into(),
                        ));
                    }
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Some(Ok(0))) => {}
                    Poll::Ready(Some(Ok(_))) => break,
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e.into())),
                    Poll::Ready(None) => return Poll::Ready(Err("the stream closed".into())),
                }
            }
            watch.moved();
            if let Some((data, eos)) = waiting.take() {
                send.send_data(data, eos)?;
                if eos {
                    return Poll::Ready(Ok(()));
                }
            }
            continue;
        }
        // The next frame is taken only now: a claim on the connection's
        // window made before a frame is in hand could hold it from other
        // streams while the body has nothing (hyper's #4003).
        match ready!(Pin::new(&mut *body).poll_frame(cx)) {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(mut data) => {
                    let eos = body.is_end_stream();
                    let data = data.copy_to_bytes(data.remaining());
                    if data.is_empty() {
                        send.send_data(data, eos)?;
                        if eos {
                            return Poll::Ready(Ok(()));
                        }
                        continue;
                    }
                    // A claim of one byte: `h2` raises it to what is
                    // buffered when the frame is handed over.
                    send.reserve_capacity(1);
                    *waiting = Some((data, eos));
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        send.reserve_capacity(0);
                        send.send_trailers(trailers)?;
                        return Poll::Ready(Ok(()));
                    }
                }
            },
            Some(Err(e)) => {
                send.send_reset(Reason::INTERNAL_ERROR);
                return Poll::Ready(Err(e.into()));
            }
            None => {
                send.send_data(Bytes::new(), true)?;
                return Poll::Ready(Ok(()));
            }
        }
    }
}
