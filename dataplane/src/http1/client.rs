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
//! them ([`interim_into`](super::interim::interim_into)) and skipped otherwise, `101` handing the
//! connection over for a tunnel; bodiless responses to `HEAD` and for 204/304. A response that
//! does not parse, has a head over [`MAX_HEAD`] bytes or more than
//! [`MAX_HEADERS`] headers, or contradicts its own framing, fails the
//! attempt (a 502 for the client, after retries).

use std::io;

use bytes::{Buf, BytesMut};
use http::header::{self, HeaderMap, HeaderName};
use http::{Method, StatusCode, Version};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::common::{
    MAX_HEAD, MAX_HEADERS, READ_SIZE, header_name, offset_in, parse_length, parsed_value,
};
use super::interim::{INTERIM, encode_interim};

pub use super::body::{Chunk, Framing, RequestFraming, write_body};
pub use super::common::Error;

/// Fields appended to a request head after the request's own headers (the
/// proxy's `X-Forwarded-*` lines), written straight into the head rather
/// than through its `HeaderMap`: the codec carries them without knowing
/// what they say.
pub trait ExtraFields {
    /// Appends the fields, each line ending in CRLF.
    fn write(&self, out: &mut Vec<u8>);
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
    forwarded: Option<&dyn ExtraFields>,
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

#[cfg(test)]
mod tests {
    use super::super::body::*;
    use super::super::common::*;
    use super::*;
    use http::HeaderValue;
    use tokio::io::AsyncWriteExt;
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
