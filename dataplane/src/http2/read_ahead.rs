//! A connection's reads, made big while a client streams to it.
//!
//! What was missing: `h2` reads its connection through tokio-util's
//! `FramedRead`, whose buffer asks the socket for what fits in about 8 KiB
//! at a time: a 1 GiB HTTP/2 upload took 132,000 `recvfrom` calls (strace),
//! and the proxy's CPU went to system calls and wake-ups. `tokio::io::BufReader`
//! would read ahead, but it keeps its buffer for the connection's life (an
//! idle HTTP/2 connection would hold it), so this one holds it only while
//! data streams in: a read that fills all the room the reader gave means
//! more is waiting, and the next reads go through an [`AHEAD`]-byte buffer;
//! a read that finds less than half of that, or nothing, is the end of the
//! stream, and once the reader has taken what was read the buffer goes.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, ReadBuf};

/// Bytes asked of the socket per read while data streams in: a quarter
/// of the system calls of 16 KiB frames read one by one, and small enough
/// to come from the heap rather than its own mapping.
const AHEAD: usize = 64 * 1024;

/// The least room a full direct read must have had to start reading ahead:
/// a small exact read (`h2` reads the 24-byte preface that way) says
/// nothing of what follows, and reading ahead on every handshake cost each
/// idle connection 16 KB of resident memory (a zeroed 64 KiB buffer, freed
/// at once, leaves touched pages behind).
const MIN_ROOM: usize = 4 * 1024;

/// `io` with reads ahead while data streams in; writes go straight through.
#[derive(Debug)]
pub struct ReadAhead<I> {
    io: I,
    /// Bytes read ahead (`buf[start..end]` not yet taken); `None` while no
    /// data streams in.
    buf: Option<Box<[u8]>>,
    start: usize,
    end: usize,
    /// The last direct read filled all the room it had.
    streaming: bool,
}

impl<I> ReadAhead<I> {
    /// `io`, read directly until data streams in.
    pub fn new(io: I) -> Self {
        Self {
            io,
            buf: None,
            start: 0,
            end: 0,
            streaming: false,
        }
    }

    /// `io`, with `read` (bytes already taken from it) read first, from a
    /// buffer of their size that goes once they are.
    pub fn after(read: bytes::Bytes, io: I) -> Self {
        if read.is_empty() {
            return Self::new(io);
        }
        Self {
            io,
            end: read.len(),
            buf: Some(Box::from(&read[..])),
            start: 0,
            streaming: false,
        }
    }

    /// Whether a buffer is held (for tests).
    #[cfg(test)]
    fn holds_buffer(&self) -> bool {
        self.buf.is_some()
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for ReadAhead<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.start == this.end && !this.streaming {
            // Nothing read ahead, and no stream: straight into the reader's
            // room, watching whether it comes back full.
            this.buf = None;
            let room = out.remaining();
            let before = out.filled().len();
            ready!(Pin::new(&mut this.io).poll_read(cx, out))?;
            let got = out.filled().len() - before;
            this.streaming = room >= MIN_ROOM && got == room;
            return Poll::Ready(Ok(()));
        }
        if this.start == this.end {
            let buf = this
                .buf
                .get_or_insert_with(|| vec![0u8; AHEAD].into_boxed_slice());
            let mut ahead = ReadBuf::new(buf);
            if Pin::new(&mut this.io)
                .poll_read(cx, &mut ahead)?
                .is_pending()
            {
                // Nothing waiting: the stream paused, and the buffer goes
                // (a connection waiting for bytes holds none).
                (this.buf, this.streaming) = (None, false);
                return Poll::Pending;
            }
            let got = ahead.filled().len();
            (this.start, this.end) = (0, got);
            // Less than half of the room: the stream has paused or ended.
            this.streaming = got >= AHEAD / 2;
            if got == 0 {
                this.buf = None;
                return Poll::Ready(Ok(()));
            }
        }
        if let Some(buf) = this.buf.as_ref() {
            let n = out.remaining().min(this.end - this.start);
            out.put_slice(&buf[this.start..this.start + n]);
            this.start += n;
        }
        if this.start == this.end && !this.streaming {
            this.buf = None;
        }
        Poll::Ready(Ok(()))
    }
}

crate::http1::head_timeout::write_through!(ReadAhead);

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn bytes_come_through_in_order_and_the_buffer_goes_when_the_stream_ends() {
        let (mut client, server) = tokio::io::duplex(4 * AHEAD);
        let mut reader = ReadAhead::new(server);
        // A read of a few bytes that fills its room says nothing.
        client.write_all(b"0123456789").await.expect("written");
        let mut small = [0u8; 10];
        reader.read_exact(&mut small).await.expect("read");
        assert_eq!(&small, b"0123456789");
        assert!(!reader.streaming && !reader.holds_buffer());
        let data: Vec<u8> = (0..3 * AHEAD + 12_345).map(|i| (i % 251) as u8).collect();
        client.write_all(&data).await.expect("written");
        let mut got = Vec::new();
        let mut room = [0u8; 8 * 1024];
        // A read that fills its room of 8 KiB: the next ones read ahead.
        let n = reader.read(&mut room).await.expect("read");
        assert_eq!(n, room.len());
        got.extend_from_slice(&room[..n]);
        let n = reader.read(&mut room).await.expect("read");
        got.extend_from_slice(&room[..n]);
        assert!(reader.holds_buffer(), "reading ahead while data streams");
        while got.len() < data.len() {
            let n = reader.read(&mut room).await.expect("read");
            assert!(n > 0);
            got.extend_from_slice(&room[..n]);
        }
        assert_eq!(got, data, "every byte, in order");
        assert!(!reader.holds_buffer(), "the buffer went with the stream");
        // A small message afterwards is read directly.
        client.write_all(b"ping").await.expect("written");
        let n = reader.read(&mut room).await.expect("read");
        assert_eq!(&room[..n], b"ping");
        assert!(!reader.holds_buffer());
        drop(client);
        assert_eq!(reader.read(&mut room).await.expect("eof"), 0);
    }

    #[tokio::test]
    async fn bytes_read_before_come_first_and_their_buffer_goes_once_taken() {
        let (mut client, server) = tokio::io::duplex(1024);
        let mut reader = ReadAhead::after(bytes::Bytes::from_static(b"PRI * "), server);
        assert!(reader.holds_buffer());
        client.write_all(b"HTTP/2.0").await.expect("written");
        let mut room = [0u8; 4];
        reader.read_exact(&mut room).await.expect("read");
        assert_eq!(&room, b"PRI ");
        assert!(reader.holds_buffer(), "two bytes are left in it");
        let mut rest = [0u8; 10];
        reader.read_exact(&mut rest).await.expect("read");
        assert_eq!(&rest, b"* HTTP/2.0");
        assert!(!reader.holds_buffer(), "the buffer went once taken");
        let empty = ReadAhead::after(bytes::Bytes::new(), tokio::io::empty());
        assert!(!empty.holds_buffer());
    }
}
