//! A tunnel's bytes (an upgraded connection, WebSocket), both ways, until
//! both sides have closed, either fails, or neither sent a byte for a whole
//! idle period.
//!
//! What was missing: tokio's `copy_bidirectional` takes an 8 KiB buffer per
//! direction when the tunnel opens and keeps both to its end, 16 KiB for
//! every open tunnel, idle ones included (an application's WebSockets are
//! mostly idle). Here a direction holds a buffer only while bytes it read
//! wait to be written: it borrows one from its worker's spares to read
//! into, and gives it back when a read finds nothing, as the HTTP/1 side
//! does with its read buffers.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::send_timeout::SendWatch;

/// Bytes read at most at once, per direction.
const BUF: usize = 16 * 1024;
/// Spare buffers a worker keeps for its tunnels: enough for the
/// directions that read at the same moment, not for every tunnel.
const SPARES: usize = 8;

thread_local! {
    /// This worker's spare buffers (each worker thread runs its own tasks).
    static SPARE: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

fn take_buffer() -> Box<[u8]> {
    SPARE
        .with(|spare| spare.borrow_mut().pop())
        .unwrap_or_else(|| vec![0u8; BUF].into_boxed_slice())
}

fn give_back(buf: Box<[u8]>) {
    SPARE.with(|spare| {
        let mut spare = spare.borrow_mut();
        if spare.len() < SPARES {
            spare.push(buf);
        }
    });
}

/// How a tunnel ended.
#[derive(Debug)]
pub enum Ended {
    /// Both sides closed: the bytes sent up (client to endpoint) and down.
    Closed { up: u64, down: u64 },
    /// Neither side sent a byte for a whole idle period.
    Idle,
    /// A side failed.
    Failed(io::Error),
}

/// Copies between `client` and `upstream` until both have closed, either
/// fails, or no byte went either way during a whole `idle` period (so
/// between one and two periods after the last one).
pub async fn run<C, U>(mut client: C, mut upstream: U, idle: Duration) -> Ended
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let (mut up, mut down) = (OneWay::default(), OneWay::default());
    // The silence is watched as a client's send deadline is: one timer,
    // moved at most once a period.
    let (mut silence, mut moved) = (SendWatch::new(idle), 0);
    poll_fn(|cx| {
        let ups = up.poll_copy(cx, Pin::new(&mut client), Pin::new(&mut upstream));
        let downs = down.poll_copy(cx, Pin::new(&mut upstream), Pin::new(&mut client));
        match (ups, downs) {
            (Poll::Ready(Err(e)), _) | (_, Poll::Ready(Err(e))) => {
                return Poll::Ready(Ended::Failed(e));
            }
            (Poll::Ready(Ok(())), Poll::Ready(Ok(()))) => {
                let (up, down) = (up.moved, down.moved);
                return Poll::Ready(Ended::Closed { up, down });
            }
            _ => {}
        }
        if up.moved + down.moved != moved {
            moved = up.moved + down.moved;
            silence.moved();
        }
        if silence.stalled(cx) {
            return Poll::Ready(Ended::Idle);
        }
        Poll::Pending
    })
    .await
}

/// One direction of a tunnel.
#[derive(Debug, Default)]
struct OneWay {
    /// Bytes read and not yet all written (`buf[start..end]`); `None`
    /// whenever nothing waits.
    buf: Option<Box<[u8]>>,
    start: usize,
    end: usize,
    /// Written since the writer was last flushed.
    unflushed: bool,
    /// The reader's side closed: what is left is written, then the
    /// writer's side is shut down (`done`).
    eof: bool,
    done: bool,
    /// Bytes written.
    moved: u64,
}

impl OneWay {
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut from: Pin<&mut R>,
        mut to: Pin<&mut W>,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        loop {
            if self.done {
                return Poll::Ready(Ok(()));
            }
            if let Some(buf) = &self.buf {
                while self.start < self.end {
                    let n = ready!(to.as_mut().poll_write(cx, &buf[self.start..self.end]))?;
                    if n == 0 {
                        return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                    }
                    self.start += n;
                    self.moved += n as u64;
                    self.unflushed = true;
                }
            }
            if self.eof {
                ready!(to.as_mut().poll_shutdown(cx))?;
                self.done = true;
                continue;
            }
            let mut buf = self.buf.take().unwrap_or_else(take_buffer);
            let mut read = ReadBuf::new(&mut buf);
            match from.as_mut().poll_read(cx, &mut read) {
                Poll::Pending => {
                    // Nothing to read: the buffer goes back, and what was
                    // written goes out (a TLS side holds it otherwise).
                    give_back(buf);
                    if self.unflushed && to.as_mut().poll_flush(cx)?.is_ready() {
                        self.unflushed = false;
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => {
                    give_back(buf);
                    return Poll::Ready(Err(e));
                }
                Poll::Ready(Ok(())) => {
                    let n = read.filled().len();
                    (self.start, self.end) = (0, n);
                    if n == 0 {
                        self.eof = true;
                        give_back(buf);
                    } else {
                        self.buf = Some(buf);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn bytes_go_both_ways_and_a_close_goes_through() {
        let (mut client, client_side) = tokio::io::duplex(1024);
        let (upstream_side, mut upstream) = tokio::io::duplex(1024);
        let tunnel = tokio::spawn(run(client_side, upstream_side, Duration::from_secs(60)));
        // More than the pipes hold, one way, while the other way talks.
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.expect("written");
            client.shutdown().await.expect("half-closed");
            client
        });
        upstream.write_all(b"hello").await.expect("written");
        let mut got = vec![0u8; data.len()];
        upstream.read_exact(&mut got).await.expect("read");
        assert_eq!(got, data);
        // The client's close reached the endpoint's side.
        assert_eq!(upstream.read(&mut [0u8; 1]).await.expect("eof"), 0);
        let mut client = writer.await.expect("writer");
        let mut back = [0u8; 5];
        client.read_exact(&mut back).await.expect("read");
        assert_eq!(&back, b"hello");
        drop(upstream);
        assert_eq!(client.read(&mut [0u8; 1]).await.expect("eof"), 0);
        match tunnel.await.expect("tunnel") {
            Ended::Closed { up, down } => assert_eq!((up, down), (100_000, 5)),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_direction_holds_no_buffer_while_it_waits() {
        let (mut client, client_side) = tokio::io::duplex(1024);
        let (mut upstream_side, _upstream) = tokio::io::duplex(1024);
        let mut client_side = client_side;
        let mut way = OneWay::default();
        client.write_all(b"ping").await.expect("written");
        poll_fn(|cx| {
            let polled =
                way.poll_copy(cx, Pin::new(&mut client_side), Pin::new(&mut upstream_side));
            assert!(polled.is_pending(), "nothing more to read");
            Poll::Ready(())
        })
        .await;
        assert_eq!(way.moved, 4);
        assert!(way.buf.is_none(), "the buffer went back");
    }
}
