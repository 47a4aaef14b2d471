//! 408 Request Timeout for a client that starts a request and does not
//! finish its head in time (slowloris).
//!
//! hyper enforces a header read timeout but closes the connection without a
//! word. This wrapper around a connection's I/O, below hyper, answers the
//! first request of a connection with a `408` before closing, as HAProxy
//! does, when some bytes of it arrived (a connection opened and left idle,
//! as browsers do speculatively, is closed silently). Later requests on a
//! keep-alive connection are left to hyper's own timeout, set a little
//! longer than this one: there, an idle client and a slow one look the same.
//! HTTP/2 connections (by preface or by ALPN) are not wrapped: their
//! requests are streams with their own flow control.
//!
//! Cost: one timer per connection, disarmed once the first head is read;
//! afterwards each read is a pass-through with one atomic load until then.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";
const REQUEST_TIMEOUT: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\nx-sluice-error: request-head-timeout\r\n\r\n";

/// A connection's I/O with the first-request-head deadline.
#[derive(Debug)]
pub struct HeadTimeout<I> {
    io: I,
    armed: Option<Armed>,
    head_seen: Arc<AtomicBool>,
}

#[derive(Debug)]
struct Armed {
    deadline: Pin<Box<Sleep>>,
    /// Bytes read so far.
    received: usize,
    /// Whether they are a prefix of HTTP/2's preface.
    maybe_h2: bool,
}

impl<I> HeadTimeout<I> {
    /// Wraps `io`: unless `head_seen` is set (by the service, when the
    /// first request arrives) within `timeout`, the client gets a 408.
    /// `armed: false` wraps without a deadline (HTTP/2 by ALPN).
    pub fn new(io: I, timeout: Duration, head_seen: Arc<AtomicBool>, armed: bool) -> Self {
        let armed = armed.then(|| Armed {
            deadline: Box::pin(tokio::time::sleep(timeout)),
            received: 0,
            maybe_h2: true,
        });
        Self {
            io,
            armed,
            head_seen,
        }
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> AsyncRead for HeadTimeout<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.armed.is_some() && this.head_seen.load(Ordering::Relaxed) {
            this.armed = None;
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        let Some(armed) = &mut this.armed else {
            return polled;
        };
        match polled {
            Poll::Ready(Ok(())) => {
                let new = &buf.filled()[before..];
                // hyper-util reads the start of the connection to tell
                // HTTP/2's preface from HTTP/1; so does this.
                if armed.maybe_h2 {
                    let start = armed.received.min(H2_PREFACE.len());
                    let end = (armed.received + new.len()).min(H2_PREFACE.len());
                    armed.maybe_h2 = new[..end - start] == H2_PREFACE[start..end];
                    if armed.maybe_h2 && end == H2_PREFACE.len() {
                        this.armed = None;
                        return Poll::Ready(Ok(()));
                    }
                }
                armed.received += new.len();
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                if armed.deadline.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                let partial = armed.received > 0;
                this.armed = None;
                if partial {
                    // Best effort: a client that stalls its head rarely
                    // has a full receive window.
                    let io = Pin::new(&mut this.io);
                    if let Poll::Ready(Ok(n)) = io.poll_write(cx, REQUEST_TIMEOUT)
                        && n == REQUEST_TIMEOUT.len()
                    {
                        let _ = Pin::new(&mut this.io).poll_flush(cx);
                    }
                }
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "request head not received in time",
                )))
            }
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for HeadTimeout<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
