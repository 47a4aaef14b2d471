//! Clients that take nothing of what is sent to them: `--send-timeout`.
//!
//! A client that stops reading holds what the proxy was sending it, and
//! with it the endpoint connection the response comes from (and its place
//! in `maxConnections`), for as long as it likes: a response body's own
//! idle timeout never fires while the body waits for the client, since
//! nobody asks the body for more. nginx closes such a client after
//! `send_timeout` (60 s), HAProxy after `timeout client`. Here a connection
//! whose writes took no byte for a whole period fails them
//! ([`SendTimeout`], HTTP/1.1 and HTTP/2 alike), and an HTTP/2 stream whose
//! window stays shut for a whole period is reset ([`SendWatch`], used by
//! `crate::http2::server`), between one and two periods after the last
//! byte taken.
//!
//! What was missing: tokio has timeouts for futures, not for an I/O
//! object's writes that make no progress; the watch costs nothing while
//! writes go through (a counter), and one timer, taken at a connection's
//! first stalled write and moved at most once a period.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Whether a sender has moved anything for a whole period.
#[derive(Debug)]
pub struct SendWatch {
    period: Duration,
    /// Taken at the first stall; moved once per period after.
    timer: Option<Pin<Box<Sleep>>>,
    /// Progress made, and the progress when the timer was last set.
    moved: u32,
    seen: u32,
}

impl SendWatch {
    pub fn new(period: Duration) -> Self {
        Self {
            period,
            timer: None,
            moved: 0,
            seen: 0,
        }
    }

    /// Something was taken.
    pub fn moved(&mut self) {
        self.moved = self.moved.wrapping_add(1);
    }

    /// Called when the sender waits: whether nothing moved for a whole
    /// period (otherwise this task is woken when the period ends).
    pub fn stalled(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(timer) = &mut self.timer else {
            let mut timer = Box::pin(tokio::time::sleep(self.period));
            // Pending (registered) unless the period is zero.
            let ended = timer.as_mut().poll(cx).is_ready();
            self.timer = Some(timer);
            self.seen = self.moved;
            return ended;
        };
        while timer.as_mut().poll(cx).is_ready() {
            if self.moved == self.seen {
                return true;
            }
            self.seen = self.moved;
            timer.as_mut().reset(Instant::now() + self.period);
        }
        false
    }
}

/// A client connection whose writes fail (`TimedOut`) once they took no
/// byte for a whole period; reads go straight through.
#[derive(Debug)]
pub struct SendTimeout<I> {
    io: I,
    watch: SendWatch,
}

impl<I> SendTimeout<I> {
    pub fn new(io: I, period: Duration) -> Self {
        Self {
            io,
            watch: SendWatch::new(period),
        }
    }

    /// Maps a write's outcome: progress counts, a wait past the period
    /// fails.
    fn watched<T>(
        &mut self,
        polled: Poll<io::Result<T>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<T>> {
        match polled {
            Poll::Pending if self.watch.stalled(cx) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client took nothing sent to it for --send-timeout",
            ))),
            Poll::Pending => Poll::Pending,
            ready => {
                self.watch.moved();
                ready
            }
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for SendTimeout<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for SendTimeout<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write(cx, buf);
        this.watched(polled, cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.watched(polled, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_flush(cx);
        this.watched(polled, cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_shutdown(cx);
        this.watched(polled, cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn writes_fail_once_nothing_was_taken_for_a_period_and_not_while_bytes_move() {
        let period = Duration::from_secs(60);
        let (mut client, server) = tokio::io::duplex(1024);
        let mut sender = SendTimeout::new(server, period);
        let chunk = [7u8; 512];
        // A reader that takes 512 bytes every 30 s: the writer keeps
        // waiting for room, and is never cut, for ten periods.
        let reader = tokio::spawn(async move {
            let mut got = [0u8; 512];
            for _ in 0..20 {
                tokio::time::sleep(Duration::from_secs(30)).await;
                client.read_exact(&mut got).await.expect("read");
            }
            client
        });
        for _ in 0..22 {
            sender
                .write_all(&chunk)
                .await
                .expect("bytes move: no timeout");
        }
        let client = reader.await.expect("reader");
        // The reader stops, room runs out: the writes fail after one to
        // two periods.
        let started = Instant::now();
        let failed = async {
            loop {
                if let Err(e) = sender.write_all(&chunk).await {
                    return e;
                }
            }
        }
        .await;
        assert_eq!(failed.kind(), io::ErrorKind::TimedOut);
        let waited = started.elapsed();
        assert!(waited >= period && waited <= 2 * period, "{waited:?}");
        drop(client);
    }
}
