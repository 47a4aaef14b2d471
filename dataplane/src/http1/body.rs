//! Message bodies on the wire: a request body written with its framing
//! (`Content-Length` or chunked, trailers kept), and a response body read
//! and decoded by its framing, frame by frame.

use std::future::Future as _;
use std::io;
use std::pin::pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue};
use http_body::{Body, Frame};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::common::{Error, MAX_HEAD, MAX_HEADERS, READ_SIZE, WRITE_PARTS, write_parts};

/// Largest chunk-size line (with extensions) of a chunked body.
const MAX_CHUNK_LINE: usize = 4 * 1024;

/// Bytes asked of the socket per read of a body with more than
/// [`READ_SIZE`] left (or of unknown length): a quarter of the system calls
/// of 16 KiB reads, and each read's bytes go on as one frame, written to
/// the client from where they were read.
const BODY_READ_SIZE: usize = 64 * 1024;

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

/// Most body frames gathered into one write (room is left for a chunk's
/// framing around them), and the bytes after which no more are gathered.
const GATHER_FRAMES: usize = WRITE_PARTS - 2;
const GATHER_BYTES: usize = 256 * 1024;

/// Sends a request body with `framing` on `io` (the body's back-pressure
/// is the socket's). The frames the body has ready at once go out
/// together, in one chunk when chunked and one `writev`: an HTTP/2
/// client's upload comes in DATA frames of 16 KiB, and a write each cost
/// a system call per 16 KiB. Trailers go out with a chunked body and are
/// dropped otherwise (a `Content-Length` body cannot carry them).
pub async fn write_body<W, B>(io: &mut W, body: B, framing: RequestFraming) -> Result<(), Error>
where
    W: AsyncWrite + Unpin,
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    let mut body = pin!(body);
    let mut sent: u64 = 0;
    let mut trailers = None;
    let mut batch: Vec<Bytes> = Vec::new();
    let mut ended = false;
    while !ended {
        ended =
            std::future::poll_fn(|cx| gather(body.as_mut(), cx, &mut batch, &mut trailers)).await?;
        if batch.is_empty() {
            continue;
        }
        let len: usize = batch.iter().map(Bytes::len).sum();
        sent += len as u64;
        let mut parts: [&[u8]; GATHER_FRAMES + 2] = [&[]; GATHER_FRAMES + 2];
        let frames = batch.iter().map(|b| &b[..]);
        match framing {
            RequestFraming::Empty => {
                return Err(Error::Body("a body where none was framed".into()));
            }
            RequestFraming::Length(n) if sent > n => {
                return Err(Error::Body(format!("body longer than its length {n}")));
            }
            RequestFraming::Length(_) => {
                for (part, frame) in parts.iter_mut().zip(frames) {
                    *part = frame;
                }
                write_parts(io, &mut parts[..batch.len()]).await?;
            }
            RequestFraming::Chunked => {
                let mut head = format!("{len:x}\r\n").into_bytes();
                if len <= 4096 {
                    for frame in frames {
                        head.extend_from_slice(frame);
                    }
                    head.extend_from_slice(b"\r\n");
                    io.write_all(&head).await?;
                } else {
                    parts[0] = &head;
                    for (part, frame) in parts[1..].iter_mut().zip(frames) {
                        *part = frame;
                    }
                    parts[batch.len() + 1] = b"\r\n";
                    write_parts(io, &mut parts[..batch.len() + 2]).await?;
                }
            }
        }
        batch.clear();
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

/// Takes the frames `body` has ready into `batch` (data) and `trailers`,
/// up to [`GATHER_FRAMES`] and [`GATHER_BYTES`]; ready when it took some or
/// the body ended (`true`: it did).
fn gather<B>(
    mut body: std::pin::Pin<&mut B>,
    cx: &mut Context<'_>,
    batch: &mut Vec<Bytes>,
    trailers: &mut Option<HeaderMap>,
) -> Poll<Result<bool, Error>>
where
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    let mut size = 0;
    while batch.len() < GATHER_FRAMES && size < GATHER_BYTES {
        match body.as_mut().poll_frame(cx) {
            Poll::Pending if batch.is_empty() => return Poll::Pending,
            Poll::Pending => break,
            Poll::Ready(None) => return Poll::Ready(Ok(true)),
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(Error::Body(e.to_string()))),
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) if data.is_empty() => {}
                Ok(data) => {
                    size += data.len();
                    batch.push(data);
                }
                Err(frame) => {
                    if let Ok(t) = frame.into_trailers() {
                        *trailers = Some(t);
                    }
                }
            },
        }
    }
    Poll::Ready(Ok(false))
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
