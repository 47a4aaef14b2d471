//! HTTP/1.1 towards endpoints: the request head written, the response head
//! parsed (with `httparse`, as hyper does) and the response body decoded,
//! all in the request's own task.
//!
//! Why not hyper's client connection: it runs every connection as a task
//! of its own and hands each request to it over a channel, the response
//! back over another, and the body over a third, so that a proxied request
//! crossed tasks four times. Measured (A/B, release builds, same run):
//! replacing it took Sluice's user CPU per request from 9.3 to 7.4 µs. Here
//! the task that serves the client reads and writes the endpoint's socket
//! itself, with no new dependency (`httparse` is hyper's own parser). On
//! the clients' side, [`crate::http1::server`] serves plain HTTP/1.1 requests and
//! hyper the rest (bodies, HTTP/2, limits, upgrades).
//!
//! What it speaks: requests in origin form with `Content-Length` or
//! `Transfer-Encoding: chunked` bodies (trailers kept); responses framed by
//! `Content-Length`, chunked (trailers kept) or by the connection's close;
//! `1xx` interim responses passed to the client side when it forwards
//! them ([`interim_into`]) and skipped otherwise, `101` handing the
//! connection over for a tunnel; bodiless responses to `HEAD` and for 204/304. A response that
//! does not parse, has a head over [`MAX_HEAD`] bytes or more than
//! [`MAX_HEADERS`] headers, or contradicts its own framing, fails the
//! attempt (a 502 for the client, after retries).

use std::cell::RefCell;
use std::future::Future as _;
use std::io::{self, IoSlice};
use std::pin::pin;
use std::task::{Context, Poll, ready};

use crate::forward::Forwarded;
use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Version};
use http_body::{Body, Frame};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest response head taken from an endpoint, in bytes.
pub const MAX_HEAD: usize = 64 * 1024;
/// Most headers a response head (or its trailers) may carry.
pub const MAX_HEADERS: usize = 100;
/// Largest chunk-size line (with extensions) of a chunked body.
const MAX_CHUNK_LINE: usize = 4 * 1024;
/// Bytes asked of the socket per read of a head or a small body.
pub const READ_SIZE: usize = 16 * 1024;
/// Bytes asked of the socket per read of a body with more than
/// [`READ_SIZE`] left (or of unknown length): a quarter of the system calls
/// of 16 KiB reads, and each read's bytes go on as one frame, written to
/// the client from where they were read.
const BODY_READ_SIZE: usize = 64 * 1024;

/// What went wrong speaking HTTP/1.1 to an endpoint.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing the socket failed.
    #[error("connection error: {0}")]
    Io(#[from] io::Error),
    /// The endpoint closed the connection before a whole response.
    #[error("connection closed before a complete response")]
    Closed,
    /// The response head does not parse.
    #[error("invalid response head: {0}")]
    Parse(httparse::Error),
    /// The response head is over [`MAX_HEAD`] bytes.
    #[error("response head over {MAX_HEAD} bytes")]
    HeadTooLarge,
    /// The response's framing is invalid (bad `Content-Length`, bad chunk).
    #[error("invalid response framing: {0}")]
    Framing(&'static str),
    /// The client's request body failed while being sent: it did not
    /// parse (a bad chunk size), was cut short (the client closed or reset
    /// its stream), or did not match its framing. The client's fault, not
    /// the endpoint's: the proxy answers 400 and counts nothing against
    /// the endpoint. Kept apart from [`Error::Io`], the endpoint's socket
    /// failing, which is the endpoint's fault.
    #[error("request body failed: {0}")]
    Body(String),
    /// The connection failed (closed, reset, or a write refused) before
    /// any byte of a response came back: the endpoint went away with the
    /// request. An idempotent request may be sent again elsewhere (RFC
    /// 9110 §9.2.2).
    #[error("connection lost before any response: {0}")]
    Unanswered(io::Error),
}

/// How a request body is framed on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestFraming {
    /// No body.
    Empty,
    /// `Content-Length`: exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

impl RequestFraming {
    /// The framing for a body of `size` (exact when known).
    pub fn for_body(empty: bool, exact: Option<u64>) -> Self {
        match (empty, exact) {
            (true, _) => Self::Empty,
            (false, Some(n)) => Self::Length(n),
            (false, None) => Self::Chunked,
        }
    }
}

/// Writes a request head into `out`: request line, `headers` (which must
/// not carry hop-by-hop framing: `Transfer-Encoding` is Sluice's to set),
/// the `X-Forwarded-*` lines of `forwarded`, and the framing header of the
/// body.
pub fn encode_head(
    out: &mut Vec<u8>,
    method: &Method,
    target: &str,
    headers: &HeaderMap,
    forwarded: Option<&Forwarded>,
    framing: RequestFraming,
) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let replaces_length = !matches!(framing, RequestFraming::Empty);
    for (name, value) in headers {
        if replaces_length && name == header::CONTENT_LENGTH {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if let Some(forwarded) = forwarded {
        forwarded.write(out);
    }
    match framing {
        RequestFraming::Empty => {}
        RequestFraming::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(n.to_string().as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        RequestFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"\r\n");
}

/// Sends a request body with `framing` on `io`, frame by frame (the body's
/// back-pressure is the socket's). Trailers go out with a chunked body and
/// are dropped otherwise (a `Content-Length` body cannot carry them).
pub async fn write_body<W, B>(io: &mut W, body: B, framing: RequestFraming) -> Result<(), Error>
where
    W: AsyncWrite + Unpin,
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    let mut body = pin!(body);
    let mut sent: u64 = 0;
    let mut trailers = None;
    while let Some(frame) = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
        let frame = frame.map_err(|e| Error::Body(e.to_string()))?;
        let frame = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    trailers = Some(t);
                }
                continue;
            }
        };
        if frame.is_empty() {
            continue;
        }
        sent += frame.len() as u64;
        match framing {
            RequestFraming::Empty => {
                return Err(Error::Body("a body where none was framed".into()));
            }
            RequestFraming::Length(n) if sent > n => {
                return Err(Error::Body(format!("body longer than its length {n}")));
            }
            RequestFraming::Length(_) => io.write_all(&frame).await?,
            RequestFraming::Chunked => {
                let mut head = format!("{:x}\r\n", frame.len()).into_bytes();
                if frame.len() <= 4096 {
                    head.extend_from_slice(&frame);
                    head.extend_from_slice(b"\r\n");
                    io.write_all(&head).await?;
                } else {
                    write_parts(io, &mut [&head, &frame, b"\r\n"]).await?;
                }
            }
        }
    }
    match framing {
        RequestFraming::Length(n) if sent != n => {
            return Err(Error::Body(format!("body ended at {sent} of {n} bytes")));
        }
        RequestFraming::Chunked => {
            let mut end = b"0\r\n".to_vec();
            for (name, value) in trailers.iter().flatten() {
                end.extend_from_slice(name.as_str().as_bytes());
                end.extend_from_slice(b": ");
                end.extend_from_slice(value.as_bytes());
                end.extend_from_slice(b"\r\n");
            }
            end.extend_from_slice(b"\r\n");
            io.write_all(&end).await?;
        }
        _ => {}
    }
    io.flush().await?;
    Ok(())
}

/// Writes `parts` in order, several at a time (one `writev`) when the
/// socket takes vectored writes: a big body frame goes out from its own
/// bytes, with its framing around it, in one system call.
pub(crate) async fn write_parts<W: AsyncWrite + Unpin>(
    io: &mut W,
    parts: &mut [&[u8]],
) -> io::Result<()> {
    let mut first = 0;
    loop {
        while first < parts.len() && parts[first].is_empty() {
            first += 1;
        }
        if first == parts.len() {
            return Ok(());
        }
        let mut n = if io.is_write_vectored() {
            let mut slices = [IoSlice::new(&[]); 4];
            let k = (parts.len() - first).min(slices.len());
            for (slice, part) in slices.iter_mut().zip(&parts[first..first + k]) {
                *slice = IoSlice::new(part);
            }
            io.write_vectored(&slices[..k]).await?
        } else {
            io.write(parts[first]).await?
        };
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        while n > 0 && first < parts.len() {
            let take = n.min(parts[first].len());
            parts[first] = &parts[first][take..];
            n -= take;
            if parts[first].is_empty() {
                first += 1;
            }
        }
    }
}

/// A parsed response head.
#[derive(Debug)]
pub struct Head {
    /// The status.
    pub status: StatusCode,
    /// HTTP/1.0 or HTTP/1.1.
    pub version: Version,
    /// The headers, as sent (hop-by-hop ones included), but for a
    /// `Connection` header that names no other header.
    pub headers: HeaderMap,
    /// How the body that follows is framed.
    pub framing: Framing,
    /// Whether the connection may carry another request afterwards.
    pub keep_alive: bool,
}

/// A response header's name and where its value is in the head: kept
/// between responses to reuse the room.
pub type Fields = Vec<(HeaderName, usize, usize)>;

/// Reads the next final response head from `io` (interim `1xx` responses
/// other than `101` are skipped), leaving what follows it in `buf`.
/// `head_request`: the request was `HEAD`, so no body follows. `fields`:
/// room for the parser; `room`: a map for the headers, emptied when a
/// final head arrives (the request's: it saves an allocation, and it stays
/// whole until then, so that a request whose connection failed before
/// any answer can be sent again).
pub async fn read_head<R>(
    io: &mut R,
    buf: &mut BytesMut,
    head_request: bool,
    fields: &mut Fields,
    room: &mut HeaderMap,
) -> Result<Head, Error>
where
    R: AsyncRead + Unpin,
{
    // Whether any byte of a response came: until then a failure is
    // `Unanswered`.
    let mut seen = !buf.is_empty();
    loop {
        if !buf.is_empty()
            && let Some(head) = parse_head(buf, head_request, fields, room)?
        {
            match head {
                Some(head) => return Ok(head),
                None => continue, // an interim response
            }
        }
        if buf.len() >= MAX_HEAD {
            return Err(Error::HeadTooLarge);
        }
        buf.reserve(READ_SIZE);
        match io.read_buf(buf).await {
            Ok(0) if seen => return Err(Error::Closed),
            Ok(0) => return Err(Error::Unanswered(io::ErrorKind::UnexpectedEof.into())),
            Ok(_) => seen = true,
            Err(e) if seen => return Err(Error::Io(e)),
            Err(e) => return Err(Error::Unanswered(e)),
        }
    }
}

/// Parses a response head at the start of `buf` and takes it off: `None`
/// when incomplete (nothing taken); `Some(None)` for an interim response,
/// skipped. The header values share the head's bytes (no copy).
fn parse_head(
    buf: &mut BytesMut,
    head_request: bool,
    fields: &mut Fields,
    room: &mut HeaderMap,
) -> Result<Option<Option<Head>>, Error> {
    // Slots left uninitialised, as hyper's parser leaves them: filling a
    // hundred empty headers per response costs more than parsing five.
    let mut slots = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, buf, &mut slots);
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(Error::Parse(e)),
    };
    let code = resp.code.unwrap_or(0);
    let status = StatusCode::from_u16(code).map_err(|_| Error::Framing("invalid status code"))?;
    if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
        INTERIM.with_borrow_mut(|sink| {
            if let Some(out) = sink {
                encode_interim(out, status, resp.headers);
            }
        });
        buf.advance(len);
        return Ok(Some(None));
    }
    let version = match resp.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    fields.clear();
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut transfer_encoded = false;
    let mut close = version == Version::HTTP_10;
    for h in resp.headers.iter() {
        let name =
            header_name(h.name.as_bytes()).map_err(|_| Error::Framing("invalid header name"))?;
        if name == header::CONNECTION {
            // Hop-by-hop. Kept only when it names other headers, which go
            // with it before the response goes on (`forward`); `close`,
            // `keep-alive` and `upgrade` name none.
            let mut names_others = false;
            for token in std::str::from_utf8(h.value).unwrap_or("").split(',') {
                let token = token.trim();
                if token.eq_ignore_ascii_case("close") {
                    close = true;
                } else if token.eq_ignore_ascii_case("keep-alive") {
                    if version == Version::HTTP_10 {
                        close = false;
                    }
                } else if !token.is_empty() && !token.eq_ignore_ascii_case("upgrade") {
                    names_others = true;
                }
            }
            if !names_others {
                continue;
            }
        }
        if name == header::CONTENT_LENGTH {
            let n = parse_length(h.value)?;
            if length.is_some_and(|l| l != n) {
                return Err(Error::Framing("conflicting content-length headers"));
            }
            length = Some(n);
        } else if name == header::TRANSFER_ENCODING {
            transfer_encoded = true;
            // Chunked only counts as the last coding.
            chunked = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.rsplit(',').next())
                .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
        }
        let start = offset_in(buf, h.value);
        fields.push((name, start, start + h.value.len()));
    }
    let raw = buf.split_to(len).freeze();
    let mut headers = std::mem::take(room);
    headers.clear();
    headers.reserve(fields.len());
    for (name, start, end) in fields.drain(..) {
        headers.append(name, parsed_value(raw.slice(start..end)));
    }
    let bodiless = head_request
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
        || status == StatusCode::SWITCHING_PROTOCOLS;
    // RFC 9112 §6.3: Transfer-Encoding overrides Content-Length; a
    // non-chunked final coding is read to the connection's close.
    let framing = if bodiless {
        Framing::Length(0)
    } else if transfer_encoded {
        if chunked {
            Framing::Chunked(Chunk::Size)
        } else {
            Framing::Eof
        }
    } else {
        match length {
            Some(n) => Framing::Length(n),
            None => Framing::Eof,
        }
    };
    if transfer_encoded && length.is_some() {
        // Both framings: Transfer-Encoding wins, and the length, which
        // does not describe the decoded body, must not go further
        // (RFC 9112 §6.3).
        headers.remove(header::CONTENT_LENGTH);
    }
    let keep_alive =
        !close && !matches!(framing, Framing::Eof) && status != StatusCode::SWITCHING_PROTOCOLS;
    let head = Head {
        status,
        version,
        headers,
        framing,
        keep_alive,
    };
    Ok(Some(Some(head)))
}

thread_local! {
    /// Where interim responses read on this thread go, while the request
    /// being polled has a client side that forwards them ([`interim_into`]).
    static INTERIM: RefCell<Option<Vec<u8>>> = const { RefCell::new(None) };
}

/// Runs `poll` (one poll of a request's future) with the interim (`1xx`,
/// but `101`) responses its endpoint sends encoded into `sink`, for the
/// client side to forward before the final response (RFC 9110 §15.2: a
/// proxy forwards 1xx responses it did not ask for, 103 Early Hints or a
/// second 100). A thread-local rather than a channel through the
/// request: the request's future is polled right here, on this thread,
/// and the common request (no interim response) pays two moves of a
/// `Vec` and no allocation.
pub fn interim_into<R>(sink: &mut Vec<u8>, poll: impl FnOnce() -> R) -> R {
    let taken = std::mem::take(sink);
    let outer = INTERIM.with_borrow_mut(|slot| slot.replace(taken));
    let result = poll();
    *sink = INTERIM
        .with_borrow_mut(|slot| std::mem::replace(slot, outer))
        .unwrap_or_default();
    result
}

/// Writes an interim response head for the client: its status and its
/// fields, but for those of one hop.
fn encode_interim(out: &mut Vec<u8>, status: StatusCode, fields: &[httparse::Header<'_>]) {
    const HOP: [&str; 6] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
        "content-length",
    ];
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for f in fields {
        if HOP.iter().any(|h| f.name.eq_ignore_ascii_case(h)) {
            continue;
        }
        out.extend_from_slice(f.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(f.value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// A header value httparse took, sharing the head's bytes. Used by both
/// parsers (here and in [`crate::http1::server`]).
pub(crate) fn parsed_value(bytes: Bytes) -> HeaderValue {
    // SAFETY: httparse admits in a header value exactly the bytes that
    // `HeaderValue` does — HTAB, SP, visible ASCII and obs-text (0x80 to
    // 0xFF), no other control byte — and both parsers keep its default of
    // refusing obs-fold line breaks, so the byte-by-byte check that
    // `from_maybe_shared` would repeat cannot fail (hyper relies on the
    // same). Measured: the check cost about 540 instructions a request,
    // nearly 3 % of the proxy's. `http` still checks in debug builds.
    unsafe { HeaderValue::from_maybe_shared_unchecked(bytes) }
}

/// A header's name. The names nearly every request or response carries,
/// as clients and servers spell them, are matched as they are (a length
/// switch and a compare); `HeaderName::from_bytes` lowercases and looks up
/// every name (measured: about 200 instructions a name, 3 % of a
/// request's). Used for both sides: the endpoints' responses here, the
/// clients' requests in [`crate::http1::server`].
pub(crate) fn header_name(raw: &[u8]) -> Result<HeaderName, header::InvalidHeaderName> {
    Ok(match raw {
        b"Date" | b"date" => header::DATE,
        b"Server" | b"server" => header::SERVER,
        b"Connection" | b"connection" => header::CONNECTION,
        b"Content-Type" | b"content-type" => header::CONTENT_TYPE,
        b"Content-Length" | b"content-length" => header::CONTENT_LENGTH,
        b"Transfer-Encoding" | b"transfer-encoding" => header::TRANSFER_ENCODING,
        b"Cache-Control" | b"cache-control" => header::CACHE_CONTROL,
        b"ETag" | b"etag" => header::ETAG,
        b"Last-Modified" | b"last-modified" => header::LAST_MODIFIED,
        b"Vary" | b"vary" => header::VARY,
        b"Host" | b"host" => header::HOST,
        b"User-Agent" | b"user-agent" => header::USER_AGENT,
        b"Accept" | b"accept" => header::ACCEPT,
        b"Accept-Encoding" | b"accept-encoding" => header::ACCEPT_ENCODING,
        b"Accept-Language" | b"accept-language" => header::ACCEPT_LANGUAGE,
        b"Cookie" | b"cookie" => header::COOKIE,
        _ => HeaderName::from_bytes(raw)?,
    })
}

/// Where `part`, a slice httparse made of `head`, starts in it (0 for an
/// empty one, which need not point into `head`).
pub(crate) fn offset_in(head: &[u8], part: &[u8]) -> usize {
    match part.is_empty() {
        true => 0,
        false => part.as_ptr() as usize - head.as_ptr() as usize,
    }
}

pub(crate) fn parse_length(value: &[u8]) -> Result<u64, Error> {
    // One value, or the same value repeated in a list (RFC 9110 §8.6).
    let mut found: Option<u64> = None;
    for part in value.split(|b| *b == b',') {
        let part = part.trim_ascii();
        if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
            return Err(Error::Framing("invalid content-length"));
        }
        let n = part.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
        if found.is_some_and(|f| f != n) {
            return Err(Error::Framing("conflicting content-length values"));
        }
        found = Some(n);
    }
    found.ok_or(Error::Framing("invalid content-length"))
}

/// How a response body is delimited, and how far it has been read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// This many bytes are left.
    Length(u64),
    /// Chunked, at this point.
    Chunked(Chunk),
    /// Until the connection closes.
    Eof,
    /// Read to its end.
    Done,
}

/// Where a chunked body's decoding stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// In a chunk's data, this many bytes left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailers or the final CRLF.
    Trailers,
}

impl Framing {
    /// Whether nothing more is to be read.
    pub fn is_done(&self) -> bool {
        matches!(self, Self::Done | Self::Length(0))
    }

    /// The exact length left, when known.
    pub fn exact(&self) -> Option<u64> {
        match self {
            Self::Length(n) => Some(*n),
            Self::Done => Some(0),
            _ => None,
        }
    }

    /// Decodes the next frame out of `buf`, reading `io` when `buf` has too
    /// little. `Ready(None)` at the end of the body.
    pub fn poll_frame<R: AsyncRead + Unpin>(
        &mut self,
        io: &mut R,
        buf: &mut BytesMut,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        loop {
            match *self {
                Self::Done => return Poll::Ready(None),
                Self::Length(0) => {
                    *self = Self::Done;
                    return Poll::Ready(None);
                }
                Self::Length(left) => {
                    if !buf.is_empty() {
                        let take = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                        *self = Self::Length(left - take as u64);
                        if left == take as u64 {
                            *self = Self::Done;
                        }
                        return Poll::Ready(Some(Ok(Frame::data(buf.split_to(take).freeze()))));
                    }
                    let size = if left > READ_SIZE as u64 {
                        BODY_READ_SIZE
                    } else {
                        READ_SIZE
                    };
                    if ready!(poll_fill(io, buf, size, cx))? == 0 {
                        return Poll::Ready(Some(Err(Error::Closed)));
                    }
                }
                Self::Eof => {
                    if !buf.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(buf.split().freeze()))));
                    }
                    if ready!(poll_fill(io, buf, BODY_READ_SIZE, cx))? == 0 {
                        *self = Self::Done;
                        return Poll::Ready(None);
                    }
                }
                Self::Chunked(chunk) => {
                    if let Some(frame) = self.decode_chunked(chunk, buf)? {
                        return Poll::Ready(Some(Ok(frame)));
                    }
                    if *self == Self::Done {
                        return Poll::Ready(None);
                    }
                    if *self != Self::Chunked(chunk) {
                        continue; // progress without a frame
                    }
                    if buf.len() > MAX_HEAD {
                        return Poll::Ready(Some(Err(Error::Framing("chunk metadata too large"))));
                    }
                    let size = match chunk {
                        Chunk::Data(left) if left > READ_SIZE as u64 => BODY_READ_SIZE,
                        _ => READ_SIZE,
                    };
                    if ready!(poll_fill(io, buf, size, cx))? == 0 {
                        return Poll::Ready(Some(Err(Error::Closed)));
                    }
                }
            }
        }
    }

    /// One step of chunked decoding on what `buf` holds: a frame, or a new
    /// state, or (state unchanged) the need for more bytes.
    fn decode_chunked(
        &mut self,
        chunk: Chunk,
        buf: &mut BytesMut,
    ) -> Result<Option<Frame<Bytes>>, Error> {
        match chunk {
            Chunk::Size => match httparse::parse_chunk_size(buf) {
                Ok(httparse::Status::Complete((len, size))) => {
                    buf.advance(len);
                    *self = Self::Chunked(if size == 0 {
                        Chunk::Trailers
                    } else {
                        Chunk::Data(size)
                    });
                }
                Ok(httparse::Status::Partial) if buf.len() > MAX_CHUNK_LINE => {
                    return Err(Error::Framing("chunk size line too long"));
                }
                Ok(httparse::Status::Partial) => {}
                Err(_) => return Err(Error::Framing("invalid chunk size")),
            },
            Chunk::Data(left) => {
                if !buf.is_empty() {
                    let take = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                    let rest = left - take as u64;
                    *self = Self::Chunked(if rest == 0 {
                        Chunk::DataEnd
                    } else {
                        Chunk::Data(rest)
                    });
                    return Ok(Some(Frame::data(buf.split_to(take).freeze())));
                }
            }
            Chunk::DataEnd => {
                if buf.len() >= 2 {
                    if &buf[..2] != b"\r\n" {
                        return Err(Error::Framing("chunk data not followed by CRLF"));
                    }
                    buf.advance(2);
                    *self = Self::Chunked(Chunk::Size);
                }
            }
            Chunk::Trailers => {
                if buf.len() >= 2 && &buf[..2] == b"\r\n" {
                    buf.advance(2);
                    *self = Self::Done;
                    return Ok(None);
                }
                let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
                match httparse::parse_headers(buf, &mut slots) {
                    Ok(httparse::Status::Complete((len, fields))) => {
                        let mut trailers = HeaderMap::with_capacity(fields.len());
                        for f in fields {
                            // A trailer field that is not a valid header is
                            // dropped, as hyper's decoder does.
                            if let (Ok(name), Ok(value)) = (
                                HeaderName::from_bytes(f.name.as_bytes()),
                                HeaderValue::from_bytes(f.value),
                            ) {
                                trailers.append(name, value);
                            }
                        }
                        buf.advance(len);
                        *self = Self::Done;
                        return Ok(Some(Frame::trailers(trailers)));
                    }
                    Ok(httparse::Status::Partial) => {}
                    Err(_) => return Err(Error::Framing("invalid trailers")),
                }
            }
        }
        Ok(None)
    }
}

/// Reads more of `io` into `buf`: `Ready(Ok(0))` at the end of the stream.
/// `size`: the room asked for (a buffer that has it already is read into
/// as it is).
fn poll_fill<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
    size: usize,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    buf.reserve(size);
    pin!(io.read_buf(buf)).poll(cx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpStream;

    /// What `parse_head` made of `raw`, and what it left of it.
    fn parse(raw: &[u8], head_request: bool) -> (Result<Option<Option<Head>>, Error>, BytesMut) {
        let mut buf = BytesMut::from(raw);
        let parsed = parse_head(
            &mut buf,
            head_request,
            &mut Vec::new(),
            &mut HeaderMap::new(),
        );
        (parsed, buf)
    }

    fn head(raw: &str, head_request: bool) -> Head {
        match parse(raw.as_bytes(), head_request) {
            (Ok(Some(Some(h))), rest) => {
                assert!(rest.is_empty(), "all of {raw:?} taken");
                h
            }
            other => panic!("not a complete head: {other:?}"),
        }
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let h = head("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", false);
        assert_eq!((h.framing, h.keep_alive), (Framing::Length(5), true));
        let h = head("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", true);
        assert_eq!(h.framing, Framing::Length(0));
        let h = head(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\ncontent-length: 9\r\n\r\n",
            false,
        );
        assert_eq!(h.framing, Framing::Chunked(Chunk::Size));
        assert!(!h.headers.contains_key(header::CONTENT_LENGTH));
        let h = head("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n", false);
        assert_eq!((h.framing, h.keep_alive), (Framing::Eof, false));
        let h = head("HTTP/1.1 200 OK\r\n\r\n", false);
        assert_eq!((h.framing, h.keep_alive), (Framing::Eof, false));
        let h = head("HTTP/1.1 204 No Content\r\n\r\n", false);
        assert_eq!((h.framing, h.keep_alive), (Framing::Length(0), true));
        let h = head(
            "HTTP/1.1 200 OK\r\nConnection: close\r\ncontent-length: 0\r\n\r\n",
            false,
        );
        assert!(!h.keep_alive);
        let h = head("HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n", false);
        assert!(!h.keep_alive);
        let h = head(
            "HTTP/1.0 200 OK\r\nconnection: Keep-Alive\r\ncontent-length: 0\r\n\r\n",
            false,
        );
        assert!(h.keep_alive);
        assert_eq!(h.version, Version::HTTP_10);
        let h = head("HTTP/1.1 200 OK\r\ncontent-length: 7, 7\r\n\r\n", false);
        assert_eq!(h.framing, Framing::Length(7));
    }

    #[test]
    fn known_names_are_the_names_http_parses() {
        for raw in [
            "Date",
            "date",
            "Server",
            "Connection",
            "content-type",
            "Content-Length",
            "Transfer-Encoding",
            "Cache-Control",
            "ETag",
            "Last-Modified",
            "vary",
            "Host",
            "user-agent",
            "Accept",
            "Accept-Encoding",
            "accept-language",
            "Cookie",
            "X-Custom",
            "CONTENT-TYPE",
        ] {
            let name = header_name(raw.as_bytes()).expect("a valid name");
            let parsed = HeaderName::from_bytes(raw.as_bytes()).expect("a valid name");
            assert_eq!(name, parsed, "{raw}");
        }
        assert!(header_name(b"bad name").is_err());
    }

    #[test]
    fn header_values_come_through_as_sent() {
        let h = head(
            "HTTP/1.1 200 OK\r\nX-A: one\r\nx-empty:\r\nx-a: two  \r\nServer: s\r\ncontent-length: 0\r\n\r\n",
            false,
        );
        let a: Vec<_> = h.headers.get_all("x-a").iter().collect();
        assert_eq!(a, ["one", "two"]);
        assert_eq!(h.headers["x-empty"], "");
        assert_eq!(h.headers["server"], "s");
        assert_eq!(h.headers.len(), 5);
        // `Connection` stays only when it names other headers.
        let h = head(
            "HTTP/1.1 200 OK\r\nConnection: keep-alive\r\ncontent-length: 0\r\n\r\n",
            false,
        );
        assert!(!h.headers.contains_key(header::CONNECTION));
        let h = head(
            "HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\ncontent-length: 0\r\n\r\n",
            false,
        );
        assert_eq!(h.headers[header::CONNECTION], "keep-alive, X-Hop");
        assert!(h.keep_alive);
    }

    #[test]
    fn bad_heads_are_errors() {
        for raw in [
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 5, 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999\r\n\r\n",
            "HTTP/1.1 OK\r\n\r\n",
            "SSH-2.0-OpenSSH\r\n\r\n",
        ] {
            assert!(parse(raw.as_bytes(), false).0.is_err(), "{raw:?}");
        }
        assert!(matches!(
            parse(b"HTTP/1.1 200 OK\r\nx: y\r\n", false),
            (Ok(None), rest) if rest.len() == 23
        ));
        let interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n";
        let (parsed, rest) = parse(interim, false);
        assert!(matches!(parsed, Ok(Some(None))));
        assert_eq!(rest, &interim[25..]);
    }

    #[test]
    fn request_heads_carry_the_body_framing() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("shop"));
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("3"));
        let mut out = Vec::new();
        encode_head(
            &mut out,
            &Method::POST,
            "/a?b",
            &headers,
            None,
            RequestFraming::Chunked,
        );
        assert_eq!(
            String::from_utf8_lossy(&out),
            "POST /a?b HTTP/1.1\r\nhost: shop\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        out.clear();
        encode_head(
            &mut out,
            &Method::PUT,
            "/",
            &headers,
            None,
            RequestFraming::Length(3),
        );
        assert_eq!(
            String::from_utf8_lossy(&out),
            "PUT / HTTP/1.1\r\nhost: shop\r\ncontent-length: 3\r\n\r\n"
        );
        out.clear();
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        encode_head(
            &mut out,
            &Method::POST,
            "/",
            &headers,
            None,
            RequestFraming::Empty,
        );
        assert_eq!(
            String::from_utf8_lossy(&out),
            "POST / HTTP/1.1\r\nhost: shop\r\ncontent-length: 0\r\n\r\n"
        );
    }

    /// Decodes `wire` fed in pieces of `step` bytes through a real socket.
    async fn decode(
        framing: Framing,
        wire: &'static [u8],
        step: usize,
    ) -> Result<(Vec<u8>, Option<HeaderMap>), Error> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let writer = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await?;
            for piece in wire.chunks(step) {
                s.write_all(piece).await?;
                s.flush().await?;
                tokio::task::yield_now().await;
            }
            Ok::<_, io::Error>(())
        });
        let mut io = TcpStream::connect(addr).await?;
        let mut buf = BytesMut::new();
        let mut framing = framing;
        let mut data = Vec::new();
        let mut trailers = None;
        while let Some(frame) =
            std::future::poll_fn(|cx| framing.poll_frame(&mut io, &mut buf, cx)).await
        {
            let frame = frame?;
            match frame.into_data() {
                Ok(d) => data.extend_from_slice(&d),
                Err(f) => trailers = f.into_trailers().ok(),
            }
        }
        let _ = writer.await;
        assert_eq!(framing, Framing::Done);
        Ok((data, trailers))
    }

    #[tokio::test]
    async fn chunked_bodies_decode_in_any_split() {
        let wire: &[u8] = b"5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nx-sum: 12\r\n\r\n";
        for step in [1, 2, 3, 7, wire.len()] {
            let (data, trailers) = decode(Framing::Chunked(Chunk::Size), wire, step)
                .await
                .expect("decodes");
            assert_eq!(data, b"hello, world", "step {step}");
            let trailers = trailers.expect("trailers");
            assert_eq!(trailers["x-sum"], "12");
        }
        let (data, trailers) = decode(Framing::Chunked(Chunk::Size), b"3\r\nabc\r\n0\r\n\r\n", 2)
            .await
            .expect("decodes");
        assert_eq!((data.as_slice(), trailers), (&b"abc"[..], None));
        for bad in [&b"zz\r\n"[..], b"3\r\nabcXY0\r\n\r\n"] {
            assert!(decode(Framing::Chunked(Chunk::Size), bad, 3).await.is_err());
        }
        // Cut short: the connection closes mid-body.
        assert!(matches!(
            decode(Framing::Chunked(Chunk::Size), b"5\r\nhel", 3).await,
            Err(Error::Closed)
        ));
        assert!(matches!(
            decode(Framing::Length(10), b"hello", 2).await,
            Err(Error::Closed)
        ));
        let (data, _) = decode(Framing::Eof, b"to the end", 4)
            .await
            .expect("decodes");
        assert_eq!(data, b"to the end");
    }
}
