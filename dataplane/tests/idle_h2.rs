//! What an idle HTTP/2 connection (h2c, prior knowledge) costs the
//! dataplane once its settings are exchanged, and once it has been
//! answered: the connection's state, and no buffer. `h2` from crates.io
//! holds a 16 KiB write buffer, an 8 KiB read buffer and a 4 KiB HPACK
//! scratch buffer for a connection's whole life, and its stream slabs keep
//! the room of their busiest moment; the patched `h2` Sluice builds
//! (`third_party/README.md`) gives all of them back when the connection has
//! no stream and waits for the peer. Two buffers outside `h2` could keep
//! one alive too: a response's header values are slices of the endpoint
//! connection's 16 KiB read buffer, which the HPACK encoder's table kept
//! (`dataplane/src/http2/server.rs` has the encoder index nothing), and a
//! request's literal values are slices of `h2`'s read buffer, which the
//! HPACK decoder's table kept (the patch copies what the table keeps). The
//! request below sends its `:authority` as such a literal.
//!
//! No read-ahead buffer either (`dataplane/src/http2/read_ahead.rs` holds
//! one only while a client streams).
//!
//! The only test of its binary: its allocator counts every allocation of
//! the process, which another test running at the same time would disturb.

mod support;

use std::alloc::System;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use support::*;

/// Counts every allocation (stats_alloc wraps the system allocator).
#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Idle connections opened while the allocator counts.
const IDLE: usize = 200;
/// The most an idle HTTP/2 connection may hold, in bytes: its state
/// (measured 2026-12-07: 2.6 KB never asked, 2.9 KB answered once: the
/// task of its own (1.5 KB, `h2`'s connection inside; one task for both
/// the HTTP/1 side and HTTP/2 took 0.7 KB more, `front::listener`'s
/// `Http2Start` says why), `h2`'s stream store (0.6 KB) and HPACK table,
/// the socket's registration (0.3 KB)), and less than the state plus any
/// one of the buffers above (the smallest, 4 KiB, as the patched `h2`
/// takes them).
const PER_IDLE: isize = 3 * 1024;

/// The client's preface and an empty SETTINGS frame.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";
/// A HEADERS frame on stream 1 that ends it: `GET http://a/` in HPACK
/// (`:method GET`, `:scheme http`, `:path /` from the static table,
/// `:authority a` a literal the decoder's table keeps, not Huffman-coded:
/// its bytes are a slice of `h2`'s read buffer).
const GET: &[u8] = b"\x00\x00\x06\x01\x05\x00\x00\x00\x01\x82\x86\x84\x41\x01a";

/// Opens an h2c connection and reads the server's first frames (its
/// SETTINGS and the ACK of ours); with `request`, sends one GET and reads
/// until its answer ends. The connection stays open.
fn idle_h2(addr: SocketAddr, request: bool) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(WAIT)).expect("timeout");
    s.write_all(PREFACE).expect("preface sent");
    if request {
        s.write_all(GET).expect("request sent");
    }
    let mut got = [0u8; 1024];
    let mut len = 0;
    // Frames until the ACK of our SETTINGS (type 4, flags 1).
    loop {
        let n = s.read(&mut got[len..]).expect("settings read");
        assert!(n > 0, "connection closed");
        len += n;
        let mut at = 0;
        while let Some((frame, taken)) = h2_frame_at(&got[at..len]) {
            if request && frame.kind == 1 && frame.stream == 1 {
                // `:status 200` is HPACK's static entry 8: the endpoint
                // answered (Sluice's own refusals are 4xx and 5xx), so its
                // connection's read buffer was in play.
                assert_eq!(frame.payload.first(), Some(&0x88), "stream 1 answered 200");
            }
            // The ACK of our SETTINGS; or, with a request, the end of
            // stream 1 (END_STREAM on its HEADERS or DATA), which comes
            // after that ACK.
            let done = if request {
                matches!(frame.kind, 0 | 1) && frame.flags & 1 == 1 && frame.stream == 1
            } else {
                frame.kind == 4 && frame.flags & 1 == 1
            };
            if done {
                return s;
            }
            at += taken;
        }
    }
}

/// Opens `IDLE` connections (with `request`: each answered once) while
/// the allocator counts, and returns the bytes each holds once idle.
async fn held_per_idle(addr: SocketAddr, request: bool) -> isize {
    let region = Region::new(GLOBAL);
    let open = tokio::task::spawn_blocking(move || {
        (0..IDLE)
            .map(|_| idle_h2(addr, request))
            .collect::<Vec<_>>()
    })
    .await
    .expect("idle connections");
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let change = region.change();
    let held = change.bytes_allocated as isize - change.bytes_deallocated as isize;
    let per_idle = held / IDLE as isize;
    eprintln!(
        "{IDLE} idle h2c connections (answered once: {request}): {held} bytes held ({per_idle} per connection; {} allocations, {} frees)",
        change.allocations, change.deallocations
    );
    drop(open);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    per_idle
}

#[tokio::test]
async fn idle_http2_connections_cost() {
    let b = Backend::start("b").await;
    let dp = start(one_pool(b.addr)).await;
    let addr = dp.http_addr();
    let warm = tokio::task::spawn_blocking(move || {
        (0..8)
            .map(|i| idle_h2(addr, i % 2 == 0))
            .collect::<Vec<_>>()
    })
    .await
    .expect("warm-up");
    let fresh = held_per_idle(addr, false).await;
    assert!(
        fresh <= PER_IDLE,
        "an idle HTTP/2 connection holds {fresh} bytes (at most {PER_IDLE})"
    );
    let answered = held_per_idle(addr, true).await;
    assert!(
        answered <= PER_IDLE,
        "an idle HTTP/2 connection that was answered once holds {answered} bytes (at most {PER_IDLE})"
    );
    drop(warm);
    dp.shutdown().await;
}
