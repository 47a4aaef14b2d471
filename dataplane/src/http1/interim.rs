//! An endpoint's interim responses (`1xx` but `101`: 103 Early Hints, a
//! second 100) on their way to an HTTP/1.1 client that hyper serves.
//!
//! RFC 9110 §15.2 has a proxy forward the 1xx responses it did not ask
//! for. Sluice's own front end writes them itself ([`crate::http1::server`]);
//! hyper's server has no way to send one (a service returns one
//! response). So they go around it: the request's future is polled with
//! [`crate::http1::interim::interim_into`] collecting them ([`Interim::relay`]), and the
//! connection's socket, wrapped in [`Informing`], writes them before
//! anything hyper writes next.
//!
//! Why that order holds: hyper's HTTP/1 dispatcher polls the request's
//! future and then flushes, and it flushes the socket itself only once its
//! own buffer is empty. Interim responses are taken only when the last
//! thing hyper did with the socket was such a flush ("clean"): then none
//! of an earlier response is still waiting in hyper's buffer, and the
//! final response of this request, which hyper can only have buffered
//! after them, is written after them. When hyper is still writing an
//! earlier response (a slow client reading pipelined answers), they are
//! dropped, as they were before: they are hints. HTTP/2 clients get them
//! as HEADERS frames from [`crate::http2::server`], which collects them the
//! same way and decodes them ([`decode_interim`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use std::cell::RefCell;

use bytes::{Buf, BytesMut};
use http::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

thread_local! {
    /// Where interim responses read on this thread go, while the request
    /// being polled has a client side that forwards them ([`interim_into`]).
    pub(super) static INTERIM: RefCell<Option<Vec<u8>>> = const { RefCell::new(None) };
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
pub(super) fn encode_interim(
    out: &mut Vec<u8>,
    status: StatusCode,
    fields: &[httparse::Header<'_>],
) {
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

/// The interim responses [`encode_interim`] wrote into `bytes`, as
/// responses for a client that is not spoken to in HTTP/1 (HTTP/2's
/// HEADERS frames); what does not decode ends the list (it cannot happen
/// to bytes written here).
pub fn decode_interim(mut bytes: &[u8]) -> Vec<http::Response<()>> {
    let mut heads = Vec::new();
    while !bytes.is_empty() {
        let mut fields = [httparse::EMPTY_HEADER; 64];
        let mut parsed = httparse::Response::new(&mut fields);
        let Ok(httparse::Status::Complete(n)) = parsed.parse(bytes) else {
            break;
        };
        let Some(status) = parsed.code.and_then(|c| StatusCode::from_u16(c).ok()) else {
            break;
        };
        let mut head = http::Response::new(());
        *head.status_mut() = status;
        for f in parsed.headers.iter() {
            if let (Ok(name), Ok(value)) = (
                http::HeaderName::from_bytes(f.name.as_bytes()),
                http::HeaderValue::from_bytes(f.value),
            ) {
                head.headers_mut().append(name, value);
            }
        }
        heads.push(head);
        bytes = &bytes[n..];
    }
    heads
}

/// The interim responses of one connection, waiting to be written.
#[derive(Debug)]
pub struct Interim {
    /// Bytes of interim responses, in order.
    pending: Mutex<BytesMut>,
    /// `pending` is not empty (read without the lock on every write).
    any: AtomicBool,
    /// hyper's last use of the socket was a flush of an empty buffer.
    clean: AtomicBool,
}

impl Default for Interim {
    fn default() -> Self {
        Self {
            pending: Mutex::new(BytesMut::new()),
            any: AtomicBool::new(false),
            clean: AtomicBool::new(true),
        }
    }
}

impl Interim {
    /// Polls `request` (the proxy's future of one HTTP/1 request) to its
    /// response, queueing the interim responses its endpoint sends on the
    /// way.
    pub async fn relay<F: Future>(&self, request: F) -> F::Output {
        let mut request = std::pin::pin!(request);
        let mut sink = Vec::new();
        std::future::poll_fn(|cx| {
            let polled = interim_into(&mut sink, || request.as_mut().poll(cx));
            if !sink.is_empty() {
                self.push(&sink);
                sink.clear();
            }
            polled
        })
        .await
    }

    fn push(&self, bytes: &[u8]) {
        if !self.clean.load(Ordering::Acquire) {
            tracing::debug!(
                bytes = bytes.len(),
                "interim response dropped: an earlier response is still being written"
            );
            return;
        }
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.extend_from_slice(bytes);
        self.any.store(true, Ordering::Release);
    }

    /// Writes what is pending to `io`, before anything else.
    fn drain<I: AsyncWrite + Unpin>(
        &self,
        io: &mut I,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.any.load(Ordering::Acquire) {
            return Poll::Ready(Ok(()));
        }
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        while !pending.is_empty() {
            let n = ready!(Pin::new(&mut *io).poll_write(cx, &pending))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            pending.advance(n);
        }
        self.any.store(false, Ordering::Release);
        Poll::Ready(Ok(()))
    }
}

/// A connection's socket as hyper sees it: what hyper writes goes after
/// the pending interim responses.
#[derive(Debug)]
pub struct Informing<I> {
    io: I,
    interim: Arc<Interim>,
}

impl<I> Informing<I> {
    /// `io`, writing `interim`'s responses first.
    pub fn new(io: I, interim: Arc<Interim>) -> Self {
        Self { io, interim }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Informing<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Informing<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.interim.drain(&mut this.io, cx))?;
        this.interim.clean.store(false, Ordering::Release);
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.interim.drain(&mut this.io, cx))?;
        this.interim.clean.store(false, Ordering::Release);
        Pin::new(&mut this.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        ready!(this.interim.drain(&mut this.io, cx))?;
        let flushed = ready!(Pin::new(&mut this.io).poll_flush(cx));
        if flushed.is_ok() {
            // hyper flushes the socket only once its buffer is empty.
            this.interim.clean.store(true, Ordering::Release);
        }
        Poll::Ready(flushed)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interim_heads_decode_as_they_were_encoded() {
        let mut out = Vec::new();
        let fields = [
            httparse::Header {
                name: "Link",
                value: b"</a.css>; rel=preload",
            },
            httparse::Header {
                name: "Connection",
                value: b"keep-alive",
            },
            httparse::Header {
                name: "Link",
                value: b"</b.js>; rel=preload",
            },
        ];
        encode_interim(&mut out, StatusCode::from_u16(103).expect("103"), &fields);
        encode_interim(&mut out, StatusCode::CONTINUE, &[]);
        let heads = decode_interim(&out);
        assert_eq!(heads.len(), 2);
        assert_eq!(heads[0].status().as_u16(), 103);
        let links: Vec<_> = heads[0].headers().get_all("link").iter().collect();
        assert_eq!(links, ["</a.css>; rel=preload", "</b.js>; rel=preload"]);
        assert!(heads[0].headers().get("connection").is_none());
        assert_eq!(heads[1].status(), StatusCode::CONTINUE);
        assert!(heads[1].headers().is_empty());
        assert!(decode_interim(b"HTTP/1.1 103 Early").is_empty());
    }
}
