//! A connection to one endpoint: its socket (whole, or split while a task
//! sends a request body), its read buffer, and the rooms its request and
//! response heads are written and parsed in, kept across exchanges. The
//! exchange itself is [`super`]'s; keeping idle connections is
//! [`super::idle`]'s.

use std::cell::RefCell;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use bytes::BytesMut;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::task::JoinHandle;

use crate::http1::client as h1;
use crate::policy::breaker::Held;

thread_local! {
    /// Read buffers of idle endpoint connections, for the next exchange on
    /// this thread: an idle connection holds none. Why: after a burst of
    /// 10,000 requests at once, the endpoint connections it opened stayed
    /// idle (for `timeouts.idle`) with a 16 KiB read buffer each: 160 MiB
    /// of resident memory that did not come back (see
    /// `bench/results/heavy.md`).
    static SPARE_BUFS: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

/// Read buffers kept per thread: enough for the exchanges in flight at
/// once; the rest are freed.
const SPARE_BUFS_KEPT: usize = 64;

/// Gives an idle connection's read buffer to the thread's spares (one
/// grown for a big body is freed instead).
fn lend(buf: BytesMut) {
    if buf.capacity() == 0 || buf.capacity() > 2 * crate::http1::common::READ_SIZE {
        return;
    }
    SPARE_BUFS.with(|s| {
        let mut spares = s.borrow_mut();
        if spares.len() < SPARE_BUFS_KEPT {
            spares.push(buf);
        }
    });
}

/// Gives `buf` (a connection's read buffer) a spare of this thread's, if
/// any, when it has none.
pub(super) fn give_spare(buf: &mut BytesMut) {
    if buf.capacity() == 0 {
        *buf = SPARE_BUFS
            .with(|s| s.borrow_mut().pop())
            .unwrap_or_default();
    }
}

/// A connection to one endpoint, idle or carrying one exchange.
#[derive(Debug)]
pub struct EndpointConn {
    pub(super) io: Io,
    /// Bytes read and not yet consumed.
    pub(super) buf: BytesMut,
    /// The request head being written (kept to reuse its allocation).
    pub(super) head: Vec<u8>,
    /// The response head's parser's room (kept likewise).
    pub(super) fields: h1::Fields,
    /// When it was last returned idle.
    pub(super) since: Instant,
    /// Its place in the pool's `maxConnections`.
    _slot: Held,
}

/// The socket: whole, or split while a request body is being sent by a
/// task of its own (so that the response can stream back at the same time,
/// as an echo or a bidirectional stream needs).
#[derive(Debug)]
pub(super) enum Io {
    Whole(TcpStream),
    Split {
        read: OwnedReadHalf,
        write: Writer,
    },
    /// Between the two (never seen outside a method).
    Gone,
}

/// The write half while a task sends the request body, and after.
/// Dropping it while the task runs stops the sending.
#[derive(Debug)]
pub(super) enum Writer {
    Running(JoinHandle<Result<OwnedWriteHalf, h1::Error>>),
    /// (An `Option` only to be taken out: `Writer` has a `Drop`.)
    Done(Option<OwnedWriteHalf>),
    Failed,
}

impl Drop for Writer {
    fn drop(&mut self) {
        if let Writer::Running(task) = self {
            task.abort();
        }
    }
}

impl Writer {
    /// Waits for the body to be sent; the write half is kept.
    pub(super) fn poll_sent(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), h1::Error>> {
        let Writer::Running(task) = self else {
            return Poll::Ready(match self {
                Writer::Done(Some(_)) => Ok(()),
                _ => Err(h1::Error::Closed),
            });
        };
        let (next, result) = match ready!(Pin::new(task).poll(cx)) {
            Ok(Ok(write)) => (Writer::Done(Some(write)), Ok(())),
            Ok(Err(e)) => (Writer::Failed, Err(e)),
            Err(e) => (Writer::Failed, Err(h1::Error::Io(std::io::Error::other(e)))),
        };
        *self = next;
        Poll::Ready(result)
    }
}

impl Io {
    /// The whole socket again, if the body was sent in full.
    pub(super) fn rejoin(&mut self) -> bool {
        if let Io::Split { write, .. } = self {
            let mut cx = Context::from_waker(std::task::Waker::noop());
            if !matches!(write.poll_sent(&mut cx), Poll::Ready(Ok(()))) {
                return false;
            }
        }
        match std::mem::replace(self, Io::Gone) {
            Io::Whole(io) => *self = Io::Whole(io),
            Io::Split { read, mut write } => {
                if let Writer::Done(half) = &mut write
                    && let Some(half) = half.take()
                    && let Ok(io) = read.reunite(half)
                {
                    *self = Io::Whole(io);
                }
            }
            Io::Gone => {}
        }
        matches!(self, Io::Whole(_))
    }
}

impl tokio::io::AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Whole(io) => Pin::new(io).poll_read(cx, buf),
            Io::Split { read, .. } => Pin::new(read).poll_read(cx, buf),
            Io::Gone => Poll::Ready(Err(std::io::ErrorKind::NotConnected.into())),
        }
    }
}

impl EndpointConn {
    /// Readies the connection to wait idle, after its response was read
    /// to the end and its request body sent: its read buffer goes to the
    /// thread's spares. `false`: it cannot be kept (bytes beyond the
    /// response, from an endpoint that answered more than it was asked,
    /// rule it out, as does a request body not sent in full).
    pub(super) fn go_idle(&mut self) -> bool {
        if !self.buf.is_empty() || !self.io.rejoin() {
            return false;
        }
        lend(std::mem::take(&mut self.buf));
        self.since = Instant::now();
        true
    }

    /// A new connection on `io`, holding its place in `maxConnections`.
    /// Boxed once for its life: it moves between the idle list and the
    /// requests that use it.
    pub(super) fn new(io: TcpStream, slot: Held) -> Box<Self> {
        Box::new(EndpointConn {
            io: Io::Whole(io),
            buf: BytesMut::new(),
            head: Vec::new(),
            fields: Vec::new(),
            since: Instant::now(),
            _slot: slot,
        })
    }

    /// Whether an idle connection can take a request: the reactor has seen
    /// nothing arrive on it (no end of file, no stray bytes). Costs a
    /// system call only when something did arrive.
    pub(super) fn alive(&mut self) -> bool {
        let Io::Whole(io) = &self.io else {
            return false;
        };
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match io.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                matches!(io.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
            }
        }
    }

    /// The raw connection and the bytes already read from it, for a tunnel
    /// after `101 Switching Protocols` (`None` if a request body was still
    /// being sent).
    pub fn into_tunnel(mut self) -> Option<(TcpStream, BytesMut, Held)> {
        if !self.io.rejoin() {
            return None;
        }
        match std::mem::replace(&mut self.io, Io::Gone) {
            Io::Whole(io) => Some((io, self.buf, self._slot)),
            _ => None,
        }
    }
}
