//! What both directions of the HTTP/1.1 codec share: the error type,
//! vectored writes of several parts, and the pieces of head parsing (header
//! names and values as httparse found them, `Content-Length`).

use std::io::{self, IoSlice};

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Largest response head taken from an endpoint, in bytes.
pub const MAX_HEAD: usize = 64 * 1024;

/// Most headers a response head (or its trailers) may carry.
pub const MAX_HEADERS: usize = 100;
/// Bytes asked of the socket per read of a head or a small body.
pub const READ_SIZE: usize = 16 * 1024;

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

/// Most parts [`write_parts`] hands the socket in one `writev`: a request
/// body's gathered frames with their chunk framing around them
/// ([`super::body::write_body`]).
pub(crate) const WRITE_PARTS: usize = 18;

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
            let mut slices = [IoSlice::new(&[]); WRITE_PARTS];
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
