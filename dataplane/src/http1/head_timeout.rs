//! Request head deadlines on HTTP/1 connections: 408 Request Timeout for a
//! client that starts its first request and does not finish the head in
//! time (slowloris), and the close of a keep-alive connection that brings
//! no new request.
//!
//! This wrapper sits around a connection's I/O, below hyper. It answers the
//! first request of a connection with a `408` before closing, as HAProxy
//! does, when some bytes of it arrived (a connection opened and left idle,
//! as browsers do speculatively, is closed silently). After the first
//! request, a connection that neither has a request in flight nor starts a
//! new one for a whole period is closed silently, between one and two
//! periods after its last response (an idle client and a slow one look the
//! same there). A connection that switched protocols (`101`, a tunnel) is
//! never closed by it. HTTP/2 connections (by preface or by ALPN) are not
//! watched: their requests are streams with their own flow control.
//!
//! Why not hyper's own header read timeout: it arms a boxed timer for every
//! request head (measured: 3 % of the proxy's user-space instructions per
//! request). Here one timer per connection is set at its start and moved
//! only when it fires, at most once per period; in between, a read is a
//! pass-through.

use std::future::{Future, poll_fn};
use std::io;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// HTTP/2's connection preface (RFC 9113 §3.4): a connection that starts
/// with it is HTTP/2's, and has no request head to wait for.
pub(crate) const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const REQUEST_TIMEOUT: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\nx-sluice-error: request-head-timeout\r\n\r\n";

/// A connection's requests, as its service sees them: counted when their
/// head arrives and when their response ends.
#[derive(Debug, Default)]
pub struct Activity {
    started: AtomicU64,
    finished: AtomicU64,
}

impl Activity {
    /// A request head arrived.
    pub fn started(&self) {
        self.started.fetch_add(1, Ordering::Relaxed);
    }

    /// A response was sent to its end (never called for a `101`).
    pub fn finished(&self) {
        self.finished.fetch_add(1, Ordering::Relaxed);
    }
}

/// A connection's I/O with its request head deadlines.
#[derive(Debug)]
pub struct HeadTimeout<I> {
    io: I,
    /// `None`: not watched (HTTP/2).
    watch: Option<Watch>,
    activity: Arc<Activity>,
}

#[derive(Debug)]
struct Watch {
    period: Duration,
    deadline: Pin<Box<Sleep>>,
    /// Requests started when the deadline was last set.
    started_then: u64,
    /// Until the first request arrives: what was read of it.
    first: Option<First>,
    /// The waker the deadline was last polled with.
    waker: Option<Waker>,
}

#[derive(Debug)]
struct First {
    /// Bytes read so far.
    received: usize,
    /// Whether they are a prefix of HTTP/2's preface.
    maybe_h2: bool,
}

impl<I> HeadTimeout<I> {
    /// Wraps `io` with deadlines of `period`, told about requests by
    /// `activity`. `watched: false` wraps without any (HTTP/2 by ALPN).
    pub fn new(io: I, period: Duration, activity: Arc<Activity>, watched: bool) -> Self {
        let watch = watched.then(|| Watch {
            period,
            deadline: Box::pin(tokio::time::sleep(period)),
            started_then: 0,
            first: Some(First {
                received: 0,
                maybe_h2: true,
            }),
            waker: None,
        });
        Self {
            io,
            watch,
            activity,
        }
    }

    /// The connection, unwrapped: HTTP/2's, handed over once its preface
    /// came (no deadline is left to watch).
    pub fn into_inner(self) -> I {
        self.io
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> AsyncRead for HeadTimeout<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        let Some(watch) = &mut this.watch else {
            return polled;
        };
        match polled {
            Poll::Ready(Ok(())) => {
                let Some(first) = &mut watch.first else {
                    return Poll::Ready(Ok(()));
                };
                let new = &buf.filled()[before..];
                // The listener tells HTTP/2 from HTTP/1 by the whole
                // preface at the connection's start; so does this.
                if first.maybe_h2 {
                    let start = first.received.min(H2_PREFACE.len());
                    let end = (first.received + new.len()).min(H2_PREFACE.len());
                    first.maybe_h2 = new[..end - start] == H2_PREFACE[start..end];
                    if first.maybe_h2 && end == H2_PREFACE.len() {
                        this.watch = None;
                        return Poll::Ready(Ok(()));
                    }
                }
                first.received += new.len();
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => loop {
                // Polled only with a new waker or once passed (polling it
                // at every read cost 1 % of a request's instructions).
                if poll_deadline(watch.deadline.as_mut(), &mut watch.waker, cx).is_pending() {
                    return Poll::Pending;
                }
                let started = this.activity.started.load(Ordering::Relaxed);
                let finished = this.activity.finished.load(Ordering::Relaxed);
                if started > finished || started != watch.started_then {
                    // A request is in flight, or one came since the
                    // deadline was set: the connection was not idle for
                    // the whole period. Next look: one period from now.
                    watch.started_then = started;
                    watch.first = None;
                    let next = Instant::now() + watch.period;
                    watch.deadline.as_mut().reset(next);
                    watch.waker = None;
                    continue;
                }
                let partial = watch.first.as_ref().is_some_and(|f| f.received > 0);
                this.watch = None;
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
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no request head in time",
                )));
            },
        }
    }
}

/// `AsyncWrite` for a reading wrapper (`$wrapper<I>` with a field `io`):
/// writes go straight through to `io`.
macro_rules! write_through {
    ($wrapper:ident) => {
        impl<I: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for $wrapper<I> {
            fn poll_write(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
            }

            fn poll_write_vectored(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                self.io.is_write_vectored()
            }

            fn poll_flush(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.get_mut().io).poll_flush(cx)
            }

            fn poll_shutdown(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
            }
        }
    };
}
pub(crate) use write_through;

write_through!(HeadTimeout);

/// Polls `deadline` when `waker` (the waker it was last polled with) is
/// not this task's, or when it has passed; otherwise says `Pending` at no
/// cost.
fn poll_deadline(
    deadline: Pin<&mut Sleep>,
    waker: &mut Option<Waker>,
    cx: &mut Context<'_>,
) -> Poll<()> {
    if waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) && !deadline.is_elapsed() {
        return Poll::Pending;
    }
    // Outside the task's cooperative budget: with the budget spent,
    // `Sleep::poll` says `Pending` without registering the waker, and the
    // waker kept below would stop the deadline from being polled again.
    let mut deadline = deadline;
    let polled = pin!(tokio::task::unconstrained(poll_fn(|cx| {
        deadline.as_mut().poll(cx)
    })))
    .poll(cx);
    *waker = match polled {
        Poll::Pending => Some(cx.waker().clone()),
        Poll::Ready(()) => None,
    };
    polled
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_deadline_first_polled_with_the_budget_spent_still_fires() {
        let mut deadline = pin!(tokio::time::sleep(Duration::from_millis(20)));
        let mut waker = None;
        let fired = tokio::time::timeout(
            Duration::from_secs(5),
            poll_fn(|cx| {
                // The task's budget spent before the deadline is polled, as
                // by a connection that read many pipelined requests at once.
                while pin!(tokio::task::consume_budget()).poll(cx).is_ready() {}
                poll_deadline(deadline.as_mut(), &mut waker, cx)
            }),
        )
        .await;
        assert!(fired.is_ok(), "the deadline never fired");
    }
}
