//! HTTP/1.1 from clients: Sluice serves the plain request itself, and hands
//! the connection to hyper for everything else.
//!
//! The plain request is nearly all traffic: a complete HTTP/1.1 head with
//! no body (no `Content-Length`, no `Transfer-Encoding`), no `Upgrade`, no
//! `Expect`, no `TE`, not `CONNECT`. Such a request is parsed here (with
//! `httparse`, hyper's own parser), handed to the proxy, and its response
//! written here: one `write` for a response whose body is ready with its
//! head, chunked when its length is unknown, `Date` added when missing and
//! `Connection: close` when the connection ends after it, as hyper does.
//!
//! Anything else — a request with a body, an upgrade, HTTP/1.0, HTTP/2's
//! preface, a head that does not parse or is over the limits — and the
//! connection goes to hyper from that request on: hyper reads the same
//! bytes again ([`Rewind`] replays what was read) and answers as it always
//! did (`400`, `414`, `431`, `100 Continue`, `101` and the tunnel, h2c).
//! So the limits and the protocol corners stay hyper's, tested code; only
//! the one shape of request that dominates is served here.
//!
//! Why: measured with callgrind, hyper's server (its dispatcher, parser,
//! encoder and the moves of its state between them) was about 8k of the
//! proxy's 24.7k user-space instructions per request; with this path the
//! request took 22.5k, and 21.75k once its future was no longer boxed
//! (which this path, polling it where it is built, allows).

use std::cell::RefCell;
use std::future::Future;
use std::io::{self, Write as _};
use std::pin::{Pin, pin};
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};
use std::time::SystemTime;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::http1::common::{header_name, offset_in, write_parts};
use crate::http1::head_timeout::Activity;
use futures::task::AtomicWaker;
use std::sync::atomic::AtomicBool;

/// Most headers a request on this path may carry (hyper's default limit;
/// a request with more goes to hyper, which applies the configured one).
const MAX_HEADERS: usize = 100;
/// Headers the proxy may add to a request's map (`Host`, from an
/// absolute-form target; `X-Forwarded-*` go straight into the endpoint's
/// head): room for them from the start.
const EXTRA_HEADERS: usize = 1;
/// Bytes asked of the socket per read.
const READ_SIZE: usize = 8 * 1024;
/// Least room a read is given.
const MIN_READ: usize = 1024;
/// Response bytes gathered before they are written, when the body has more
/// ready at once.
const GATHER: usize = 16 * 1024;
/// Largest body frame copied behind the head (or behind other small
/// frames) so that they go out in one write; a larger frame is written
/// from its own bytes, with what was gathered in front of it in one
/// vectored write. Copying every byte of a big body into the write buffer
/// cost as much CPU as the kernel's own copies: a 1 GiB download ran at
/// 0.45x nginx's MiB/s, and at 1.3x with these writes and 64 KiB endpoint
/// reads, at 0.68x nginx's CPU per MiB (`bench/results/heavy.md`).
const COPY_MAX: usize = 4 * 1024;

/// What the server side knows of the connection it serves, for its logs;
/// the rest is the handler's.
pub(crate) trait Peer {
    /// The client's address.
    fn peer(&self) -> std::net::SocketAddr;
}

/// One connection's part in the drain: the server side closes the
/// connection after the response in flight once it is set.
#[derive(Default)]
pub(crate) struct Signal {
    /// Set when the drain starts.
    pub(crate) draining: AtomicBool,
    /// Woken when the drain starts.
    pub(crate) waker: AtomicWaker,
}

/// How [`serve`] left the connection.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Next {
    /// It is over: closed by the client, by an error, or by the drain.
    Closed,
    /// The request at the start of the buffer is hyper's, and so is the
    /// rest of the connection.
    HandOff,
}

/// What a request head at the start of a buffer is, for this path.
// Returned once per request and taken apart at once: boxing the request
// would cost an allocation per request to save a move.
#[allow(clippy::large_enum_variant)]
enum Parsed<Q> {
    /// A plain request, taken off the buffer; `head`: it is `HEAD`;
    /// `close`: the client asked to close after it.
    Plain {
        request: Request<Q>,
        head: bool,
        close: bool,
    },
    /// Not complete yet.
    Partial,
    /// Hyper's to serve.
    Other,
}

/// A connection's parsing state, kept from one request to the next so that
/// a request costs no allocation of its own for it.
#[derive(Default)]
struct Scratch {
    /// Each header's name and where its value is in the head.
    fields: Vec<(HeaderName, usize, usize)>,
    /// The last response's header map, emptied: the next request's (as
    /// hyper does; it has room for what the proxy adds).
    spare: Option<HeaderMap>,
    /// The response being written.
    out: Vec<u8>,
    /// Interim responses of the endpoint, to write before the final one.
    interim: Vec<u8>,
}

/// A connection's [`Scratch`], boxed, and lent to the worker's spares
/// while the connection is idle: an idle connection keeps an empty slot
/// rather than the scratch's 168 bytes.
#[derive(Default)]
struct ScratchSlot(Option<Box<Scratch>>);

impl ScratchSlot {
    /// The scratch, taken fresh if the slot is empty (a connection's first
    /// request, with no spare to take).
    fn get(&mut self) -> &mut Scratch {
        self.0.get_or_insert_with(Box::default)
    }
}

impl Scratch {
    /// Parses the request head at the start of `buf`; a plain request is
    /// taken off it, its URI and header values sharing the bytes read.
    fn parse<Q: Default>(&mut self, buf: &mut BytesMut, max_headers: usize) -> Parsed<Q> {
        let mut slots = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
        let slots = &mut slots[..max_headers.min(MAX_HEADERS)];
        let mut req = httparse::Request::new(&mut []);
        let len = match httparse::ParserConfig::default()
            .parse_request_with_uninit_headers(&mut req, buf, slots)
        {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Parsed::Partial,
            Err(_) => return Parsed::Other,
        };
        if req.version != Some(1) {
            return Parsed::Other;
        }
        let method = match req.method.unwrap_or("") {
            "GET" => Method::GET,
            "HEAD" => Method::HEAD,
            "CONNECT" | "" => return Parsed::Other,
            other => match Method::from_bytes(other.as_bytes()) {
                Ok(m) => m,
                Err(_) => return Parsed::Other,
            },
        };
        let at = |s: &[u8]| offset_in(buf, s);
        let path = req.path.unwrap_or("").as_bytes();
        let path = (at(path), at(path) + path.len());
        let mut close = false;
        self.fields.clear();
        for h in req.headers.iter() {
            let Ok(name) = header_name(h.name.as_bytes()) else {
                return Parsed::Other;
            };
            if name == header::CONTENT_LENGTH
                || name == header::TRANSFER_ENCODING
                || name == header::UPGRADE
                || name == header::EXPECT
                || name == header::TE
            {
                return Parsed::Other;
            }
            if name == header::CONNECTION {
                for token in h.value.split(|b| *b == b',') {
                    if token.trim_ascii().eq_ignore_ascii_case(b"close") {
                        close = true;
                    }
                }
            }
            self.fields
                .push((name, at(h.value), at(h.value) + h.value.len()));
        }
        // The head's own bytes, shared by the URI and the values (no copy).
        // Should `http` refuse the URI, the head goes back in front of the
        // buffer, for hyper to answer.
        let frozen = buf.split_to(len).freeze();
        let Ok(uri) = Uri::from_maybe_shared(frozen.slice(path.0..path.1)) else {
            restore(buf, &frozen);
            return Parsed::Other;
        };
        let mut headers = self.spare.take().unwrap_or_default();
        headers.reserve(self.fields.len() + EXTRA_HEADERS);
        for (name, start, end) in self.fields.drain(..) {
            headers.append(
                name,
                crate::http1::common::parsed_value(frozen.slice(start..end)),
            );
        }
        let head = method == Method::HEAD;
        let mut request = Request::new(Q::default());
        *request.method_mut() = method;
        *request.uri_mut() = uri;
        *request.version_mut() = Version::HTTP_11;
        *request.headers_mut() = headers;
        Parsed::Plain {
            request,
            head,
            close,
        }
    }
}

/// Puts a head taken off `buf` back in front of it, for hyper.
fn restore(buf: &mut BytesMut, head: &[u8]) {
    let rest = buf.split();
    buf.extend_from_slice(head);
    buf.extend_from_slice(&rest);
}

/// Serves the connection's plain requests, until it closes or a request
/// comes that is hyper's ([`Next::HandOff`]: it is at the start of `buf`).
/// The handler takes the request with body `Q::default()` (these requests
/// have none; the proxy's empty body, which this codec does not know).
/// `max_head`: the largest request head taken, in bytes. Between requests
/// the connection holds no buffer: they go back to `spares`.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn serve<I, C, H, F, B, Q>(
    io: &mut I,
    buf: &mut BytesMut,
    conn: &C,
    handler: &H,
    spares: &Spares,
    activity: &Activity,
    signal: &Signal,
    max_head: usize,
    max_headers: usize,
) -> Next
where
    I: AsyncRead + AsyncWrite + Unpin,
    C: Peer,
    H: Fn(Request<Q>, &C) -> F,
    Q: Default,
    F: Future<Output = Box<Response<B>>>,
    B: Body + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut client = Client {
        io,
        buf,
        conn,
        signal,
        max_head,
        scratch: ScratchSlot::default(),
    };
    loop {
        let conn = client.conn;
        let Client {
            io, buf, scratch, ..
        } = &mut client;
        if !buf.is_empty() {
            // The parse's result ends with this statement: a match that
            // awaited inside an arm kept its room (280 bytes in a release
            // build) in this future, idle connections' included.
            let plain = match scratch.get().parse(buf, max_headers) {
                Parsed::Plain {
                    request,
                    head,
                    close,
                } => {
                    activity.started();
                    // Boxed, both: inline, their room would be part of
                    // every connection's task, idle ones included. Each is
                    // built in its box (`Box::write` into a fresh one:
                    // `Box::pin(f())` builds it aside and copies it over,
                    // kilobytes), and the request goes into its future
                    // there: `serve_request` keeps neither.
                    let handled =
                        Box::into_pin(Box::write(Box::new_uninit(), handler(request, conn)));
                    Some((handled, head, close))
                }
                Parsed::Partial if buf.len() < max_head => None,
                Parsed::Partial | Parsed::Other => return Next::HandOff,
            };
            if let Some((handled, head, close)) = plain {
                let served = Box::into_pin(Box::write(
                    Box::new_uninit(),
                    serve_request(&mut client, handled, head, close),
                ))
                .await;
                if served == Served::Close {
                    return Next::Closed;
                }
                activity.finished();
                continue;
            }
        }
        // Wait for (more of) a request, or the drain when there is none.
        // An idle connection gives its buffers back until bytes come.
        let idle = buf.is_empty();
        if idle {
            spares.put_conn(buf, scratch);
        }
        let got = std::future::poll_fn(|cx| {
            if idle {
                signal.waker.register(cx.waker());
                if signal.draining.load(Ordering::Acquire) {
                    return Poll::Ready(Ok(0));
                }
                return poll_idle(io, buf, scratch, spares, cx);
            }
            poll_fill(io, buf, cx)
        })
        .await;
        match got {
            Ok(0) | Err(_) => return Next::Closed,
            Ok(_) => {}
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Served {
    KeepAlive,
    Close,
}

/// A connection as [`serve_request`] serves it: the socket, what was read
/// ahead, and the state kept from one request to the next.
struct Client<'a, I, C> {
    io: &'a mut I,
    buf: &'a mut BytesMut,
    conn: &'a C,
    signal: &'a Signal,
    /// The largest request head taken, in bytes (what is read ahead while
    /// a request is in flight stops there).
    max_head: usize,
    scratch: ScratchSlot,
}

/// One request and its response.
async fn serve_request<I, C, F, B>(
    client: &mut Client<'_, I, C>,
    mut handled: Pin<Box<F>>,
    head_request: bool,
    mut close: bool,
) -> Served
where
    I: AsyncRead + AsyncWrite + Unpin,
    C: Peer,
    F: Future<Output = Box<Response<B>>>,
    B: Body + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let Client {
        io,
        buf,
        conn,
        signal,
        max_head,
        scratch,
    } = client;
    let (conn, max_head) = (*conn, *max_head);
    let scratch = scratch.get();
    // While the proxy works, the client is watched: what it sends next
    // (pipelined) is read ahead, up to the head limit; its close (or a
    // reset) drops the request, as hyper does.
    // Interim responses (103 Early Hints, ...) the endpoint sends are
    // forwarded as they come ([`crate::http1::client::interim_into`]).
    let interim = &mut scratch.interim;
    let (mut body, framing) = loop {
        let waited = std::future::poll_fn(|cx| {
            let polled = crate::http1::interim::interim_into(interim, || handled.as_mut().poll(cx));
            if let Poll::Ready(resp) = polled {
                return Poll::Ready(Waited::Answer(resp));
            }
            if !interim.is_empty() {
                return Poll::Ready(Waited::Interim);
            }
            if client_gone(io, buf, cx, max_head) {
                return Poll::Ready(Waited::Gone);
            }
            Poll::Pending
        })
        .await;
        match waited {
            Waited::Answer(resp) => {
                // Taken apart here, where it came: kept whole past the
                // loop, the response would take room in this future.
                let draining = signal.draining.load(Ordering::Acquire);
                break start_response(resp, scratch, head_request, draining, &mut close);
            }
            Waited::Interim => {
                if io.write_all(interim).await.is_err() {
                    return Served::Close;
                }
                interim.clear();
            }
            Waited::Gone => return Served::Close,
        }
    };
    drop(handled);
    let out = &mut scratch.out;
    let mut sent: u64 = 0;
    if framing != Framing::None {
        loop {
            // Gather what the body has ready; write when it has no more
            // for now (or a good deal is gathered), so that a small
            // response goes out with its head in one write.
            let step = std::future::poll_fn(|cx| {
                if out.len() >= GATHER {
                    return Poll::Ready(Step::Write);
                }
                match Pin::new(&mut body).poll_frame(cx) {
                    Poll::Ready(frame) => {
                        Poll::Ready(Step::Frame(frame.map(|r| r.map_err(Into::into))))
                    }
                    Poll::Pending if !out.is_empty() => Poll::Ready(Step::Write),
                    Poll::Pending if client_gone(io, buf, cx, max_head) => Poll::Ready(Step::Gone),
                    Poll::Pending => Poll::Pending,
                }
            })
            .await;
            match step {
                Step::Write => {
                    if io.write_all(out).await.is_err() {
                        return Served::Close;
                    }
                    out.clear();
                }
                Step::Gone => return Served::Close,
                Step::Frame(None) => break,
                Step::Frame(Some(Err(e))) => {
                    tracing::debug!(peer = %conn.peer(), error = %e, "response body failed; closing the connection");
                    let _ = io.write_all(out).await;
                    return Served::Close;
                }
                Step::Frame(Some(Ok(frame))) => {
                    // Trailers are dropped: this path serves no request
                    // that said it takes them (`TE: trailers`).
                    let Ok(mut data) = frame.into_data() else {
                        continue;
                    };
                    let n = data.remaining();
                    if n == 0 {
                        continue;
                    }
                    sent += n as u64;
                    match framing {
                        Framing::Length(len) if sent > len => {
                            tracing::debug!(peer = %conn.peer(), len, "response body longer than its length; closing the connection");
                            let _ = io.write_all(out).await;
                            return Served::Close;
                        }
                        Framing::Chunked => {
                            // (Streamed bodies only: `fmt` is cheap beside
                            // their reads and writes.)
                            let _ = write!(out, "{n:x}\r\n");
                        }
                        _ => {}
                    }
                    if n <= COPY_MAX {
                        put(out, &mut data);
                    } else if send(io, out, &mut data).await.is_err() {
                        return Served::Close;
                    }
                    if framing == Framing::Chunked {
                        out.extend_from_slice(b"\r\n");
                    }
                }
            }
        }
        match framing {
            Framing::Length(len) if sent != len => {
                tracing::debug!(peer = %conn.peer(), len, sent, "response body shorter than its length; closing the connection");
                let _ = io.write_all(out).await;
                return Served::Close;
            }
            Framing::Chunked => out.extend_from_slice(b"0\r\n\r\n"),
            _ => {}
        }
    }
    if !out.is_empty() && io.write_all(out).await.is_err() {
        return Served::Close;
    }
    drop(body);
    if close {
        let _ = io.shutdown().await;
        return Served::Close;
    }
    Served::KeepAlive
}

/// Puts `resp`'s head into the scratch's write buffer, behind the interim
/// responses that came with it, and gives back its body and how it goes
/// on the wire; `close` is set when the connection must close after it.
/// A function of its own so that the response and its head are gone
/// before the body's first await: kept in [`serve_request`], they took a
/// third of its future.
// Boxed: the response comes as the handler gave it, and is taken apart
// here; unboxed at the call, its bytes would be copied once more.
#[allow(clippy::boxed_local)]
fn start_response<B: Body>(
    resp: Box<Response<B>>,
    scratch: &mut Scratch,
    head_request: bool,
    draining: bool,
    close: &mut bool,
) -> (B, Framing) {
    // After an unasked-for `101` (no request on this path asks for one)
    // nothing on the connection would make sense.
    *close |= draining || resp.status().is_informational();
    // Sluice's own 400 (a request it could not trust) says to close.
    *close |= resp.status() == StatusCode::BAD_REQUEST
        && resp
            .headers()
            .get(header::CONNECTION)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
    let (mut parts, body) = (*resp).into_parts();
    let out = &mut scratch.out;
    out.clear();
    // Interim responses that came with the final one go just before it.
    out.append(&mut scratch.interim);
    let framing = encode_head(&parts, &body, head_request, *close, out);
    // The values go now (they hold the endpoint's read buffer); the room
    // stays, for the next request.
    parts.headers.clear();
    scratch.spare = Some(parts.headers);
    (body, framing)
}

/// What the wait for a response came to.
enum Waited<R> {
    /// The response.
    Answer(R),
    /// Interim responses to forward first.
    Interim,
    /// The client went away.
    Gone,
}

enum Step<D> {
    Frame(Option<Result<Frame<D>, Box<dyn std::error::Error + Send + Sync>>>),
    Write,
    Gone,
}

/// How a response body goes on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    /// No body (`HEAD`, `204`, `304`).
    None,
    /// `Content-Length`.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// Writes the status line and headers into `out`, adding `Content-Length`
/// or `Transfer-Encoding`, `Date` and `Connection: close` as needed.
fn encode_head<B: Body>(
    parts: &http::response::Parts,
    body: &B,
    head_request: bool,
    close: bool,
    out: &mut Vec<u8>,
) -> Framing {
    let status = parts.status;
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let bodiless = head_request
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
        || status.is_informational();
    let mut length = None;
    let mut dated = false;
    for (name, value) in &parts.headers {
        if *name == header::CONTENT_LENGTH {
            if status == StatusCode::NO_CONTENT || status.is_informational() {
                continue;
            }
            // The endpoint's, checked when its response was read.
            length = crate::http1::common::parse_length(value.as_bytes()).ok();
        } else if *name == header::TRANSFER_ENCODING || *name == header::CONNECTION {
            // Ours to set (none of the proxy's responses carries them).
            continue;
        } else if *name == header::DATE {
            dated = true;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let framing = if bodiless {
        Framing::None
    } else if let Some(n) = length {
        Framing::Length(n)
    } else if let Some(n) = body.size_hint().exact() {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
        out.extend_from_slice(b"\r\n");
        Framing::Length(n)
    } else {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        Framing::Chunked
    };
    if !dated {
        out.extend_from_slice(b"date: ");
        DATE.with(|d| out.extend_from_slice(d.borrow_mut().now()));
        out.extend_from_slice(b"\r\n");
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    framing
}

/// Writes `out` and then `data`, in one vectored write when the socket
/// takes both; `out` is left empty.
async fn send<W: AsyncWrite + Unpin>(
    io: &mut W,
    out: &mut Vec<u8>,
    data: &mut impl Buf,
) -> io::Result<()> {
    while data.has_remaining() {
        let chunk = data.chunk();
        let n = chunk.len();
        write_parts(io, &mut [out, chunk]).await?;
        out.clear();
        data.advance(n);
    }
    if !out.is_empty() {
        io.write_all(out).await?;
        out.clear();
    }
    Ok(())
}

fn put(out: &mut Vec<u8>, data: &mut impl Buf) {
    while data.has_remaining() {
        let chunk = data.chunk();
        out.extend_from_slice(chunk);
        let n = chunk.len();
        data.advance(n);
    }
}

/// The `Date` header's value, formatted once a second per thread (as
/// hyper does).
struct DateCache {
    second: u64,
    text: Vec<u8>,
}

impl DateCache {
    fn now(&mut self) -> &[u8] {
        let now = SystemTime::now();
        let second = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if second != self.second || self.text.is_empty() {
            self.second = second;
            self.text = httpdate::fmt_http_date(now).into_bytes();
        }
        &self.text
    }
}

/// The `Date` header's value now, for a response written by another
/// front end ([`crate::http2::server`]).
pub(crate) fn date_value() -> http::HeaderValue {
    DATE.with_borrow_mut(|d| http::HeaderValue::from_bytes(d.now()))
        .unwrap_or_else(|_| http::HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT"))
}

thread_local! {
    static DATE: RefCell<DateCache> = const {
        RefCell::new(DateCache { second: 0, text: Vec::new() })
    };
}

/// Reads what the client sends while its request is served: `true` once it
/// closed its side or the connection failed. Stops reading (and so stops
/// watching) when `buf` holds `max_head` bytes, until the next request is
/// taken from it.
fn client_gone<I: AsyncRead + Unpin>(
    io: &mut I,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
    max_head: usize,
) -> bool {
    while buf.len() < max_head {
        match poll_fill(io, buf, cx) {
            Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return true,
            Poll::Ready(Ok(_)) => {}
            Poll::Pending => return false,
        }
    }
    false
}

/// Room for the first read of an idle connection, on the stack: what
/// arrives is copied into a buffer only then taken (most request heads fit).
const IDLE_READ: usize = 4 * 1024;
/// Spare sets of buffers kept per listener and worker: enough for the
/// connections busy at once; the rest are freed.
const SPARES_KEPT: usize = 64;

/// What connections lend each other, per listener and worker: the read
/// buffer and parsing state of a connection between requests.
///
/// Why: an idle keep-alive connection held an 8 KiB read buffer, its
/// response buffer, a header map and the room of a request's future, about
/// 11 KiB (nginx ~0.7 KiB, HAProxy ~1.5 KiB). Returned here between
/// requests, they cost an idle connection nothing, and a busy one no
/// allocation either: the next request takes them back. (A request's future
/// is a block of its own while it runs, which the binary's allocator keeps
/// for the next one: `crate::heap::Recycling`.)
#[derive(Default)]
pub(crate) struct Spares {
    conns: Mutex<Vec<(BytesMut, Box<Scratch>)>>,
}

impl Spares {
    /// Takes a connection's buffers (leaving it none), to be lent again.
    fn put_conn(&self, buf: &mut BytesMut, scratch: &mut ScratchSlot) {
        let buf = std::mem::take(buf);
        let Some(mut scratch) = scratch.0.take() else {
            return; // nothing lent yet (a new connection)
        };
        if buf.capacity() == 0 {
            return; // a connection that only ever read onto the stack
        }
        if buf.capacity() > 2 * READ_SIZE || scratch.out.capacity() > 2 * GATHER {
            // Grown for something unusual: freed rather than kept.
            scratch.out = Vec::new();
            if buf.capacity() > 2 * READ_SIZE {
                return;
            }
        }
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        if conns.len() < SPARES_KEPT {
            conns.push((buf, scratch));
        }
    }

    /// Buffers for a connection that has bytes to read.
    fn take_conn(&self) -> (BytesMut, Option<Box<Scratch>>) {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        match conns.pop() {
            Some((buf, scratch)) => (buf, Some(scratch)),
            None => (BytesMut::new(), None),
        }
    }
}

/// Reads the first bytes of what an idle connection sends into a buffer on
/// the stack, and takes buffers for them only when some arrive.
fn poll_idle<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
    scratch: &mut ScratchSlot,
    spares: &Spares,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    let mut stack = [std::mem::MaybeUninit::<u8>::uninit(); IDLE_READ];
    let mut read = ReadBuf::uninit(&mut stack);
    if let Err(e) = ready!(Pin::new(io).poll_read(cx, &mut read)) {
        return Poll::Ready(Err(e));
    }
    let got = read.filled();
    if !got.is_empty() {
        (*buf, scratch.0) = spares.take_conn();
        buf.reserve(READ_SIZE);
        buf.extend_from_slice(got);
    }
    Poll::Ready(Ok(got.len()))
}

/// Reads more of `io` into `buf`: `Ready(Ok(0))` at the end of the stream.
fn poll_fill<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    // Room is made only when little is left: `reserve` on a buffer whose
    // last head is still shared (the request in flight) allocates anew.
    if buf.capacity() - buf.len() < MIN_READ {
        buf.reserve(READ_SIZE);
    }
    pin!(io.read_buf(buf)).poll(cx)
}

/// A connection whose first bytes, already read, are read again: how a
/// connection passes to hyper with the request this path did not take.
#[derive(Debug)]
pub struct Rewind<I> {
    pre: Bytes,
    io: I,
}

impl<I> Rewind<I> {
    /// `io`, with `pre` read first.
    pub fn new(pre: Bytes, io: I) -> Self {
        Self { pre, io }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Rewind<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.pre.is_empty() {
            let n = this.pre.len().min(buf.remaining());
            buf.put_slice(&this.pre[..n]);
            this.pre.advance(n);
            if this.pre.is_empty() {
                // Lets the read buffer it was part of go.
                this.pre = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

crate::http1::head_timeout::write_through!(Rewind);

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Empty;

    fn parse(raw: &[u8], max_headers: usize) -> (Parsed<Empty<Bytes>>, BytesMut) {
        let mut buf = BytesMut::from(raw);
        let parsed = Scratch::default().parse(&mut buf, max_headers);
        (parsed, buf)
    }

    /// The request, its head's length and whether it asked to close.
    fn plain(raw: &str) -> (Request<Empty<Bytes>>, usize, bool) {
        match parse(raw.as_bytes(), MAX_HEADERS) {
            (Parsed::Plain { request, close, .. }, rest) => {
                (request, raw.len() - rest.len(), close)
            }
            (Parsed::Partial, _) => panic!("partial: {raw:?}"),
            (Parsed::Other, _) => panic!("not plain: {raw:?}"),
        }
    }

    fn other(raw: &str) -> bool {
        let (parsed, rest) = parse(raw.as_bytes(), MAX_HEADERS);
        assert_eq!(rest, raw.as_bytes(), "left whole for hyper");
        matches!(parsed, Parsed::Other)
    }

    #[test]
    fn a_plain_request_is_taken_whole() {
        let raw = "GET /a?b=c HTTP/1.1\r\nHost: shop.example\r\nX-Id: 7\r\nConnection: keep-alive, Close\r\n\r\nGET /next";
        let (req, len, close) = plain(raw);
        assert_eq!(len, raw.find("GET /next").expect("second request"));
        assert!(close, "close is a token among others");
        assert_eq!(req.method(), Method::GET);
        assert_eq!(req.uri(), "/a?b=c");
        assert_eq!(req.headers()["host"], "shop.example");
        assert_eq!(req.headers()["x-id"], "7");
        let (req, _, _) = plain("GET / HTTP/1.1\r\nX-Empty:\r\nHost: a\r\n\r\n");
        assert_eq!(req.headers()["x-empty"], "");
        assert_eq!(req.headers()["host"], "a");
        assert!(req.body().is_end_stream());
        let (req, _, close) =
            plain("DELETE http://a.example/x HTTP/1.1\r\nhost: a.example\r\n\r\n");
        assert!(!close);
        assert_eq!(req.method(), Method::DELETE);
        assert_eq!(req.uri().authority().map(|a| a.as_str()), Some("a.example"));
    }

    #[test]
    fn everything_but_a_plain_request_is_hypers() {
        assert!(other(
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"
        ));
        assert!(other(
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        ));
        assert!(other(
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"
        ));
        assert!(other(
            "PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n"
        ));
        assert!(other("GET / HTTP/1.1\r\nHost: a\r\nTE: trailers\r\n\r\n"));
        assert!(other("GET / HTTP/1.0\r\nHost: a\r\n\r\n"));
        assert!(other("CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n"));
        assert!(other("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"));
        assert!(other("GET / HTTP/1.1\r\nBad Name: x\r\n\r\n"));
        assert!(other("GET /\x7f HTTP/1.1\r\n\r\n"));
        // A target httparse takes and `http` does not: taken back whole.
        assert!(other(
            "GET /a<b HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\n\r\n"
        ));
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\nHost: a\r\n", MAX_HEADERS).0,
            Parsed::Partial
        ));
        let many: String = (0..5).map(|i| format!("X-{i}: v\r\n")).collect();
        let raw = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert!(
            matches!(parse(raw.as_bytes(), 4).0, Parsed::Other),
            "over the header limit"
        );
        assert!(matches!(parse(raw.as_bytes(), 5).0, Parsed::Plain { .. }));
    }

    fn head_of(
        resp: Response<http_body_util::Full<Bytes>>,
        head_request: bool,
        close: bool,
    ) -> (String, Framing) {
        let (parts, body) = resp.into_parts();
        let mut out = Vec::new();
        let framing = encode_head(&parts, &body, head_request, close, &mut out);
        (String::from_utf8(out).expect("text"), framing)
    }

    #[test]
    fn a_head_says_how_its_body_is_framed() {
        let resp = Response::builder()
            .status(503)
            .header("x-sluice-error", "overflow")
            .body(http_body_util::Full::new(Bytes::from_static(b"full\n")))
            .expect("response");
        let (text, framing) = head_of(resp, false, true);
        assert_eq!(framing, Framing::Length(5));
        assert!(text.starts_with("HTTP/1.1 503 Service Unavailable\r\nx-sluice-error: overflow\r\ncontent-length: 5\r\ndate: "), "{text}");
        assert!(
            text.ends_with(" GMT\r\nconnection: close\r\n\r\n"),
            "{text}"
        );
        let resp = Response::builder()
            .header("content-length", "12")
            .header("date", "Wed, 02 Dec 2026 12:00:00 GMT")
            .body(http_body_util::Full::new(Bytes::new()))
            .expect("response");
        let (text, framing) = head_of(resp, true, false);
        assert_eq!(framing, Framing::None, "HEAD");
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\ncontent-length: 12\r\ndate: Wed, 02 Dec 2026 12:00:00 GMT\r\n\r\n"
        );
    }
}
