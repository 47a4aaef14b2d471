//! What an idle keep-alive connection costs the dataplane: its buffers go
//! back when no bytes flow, so that many idle clients hold little memory.
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
/// The most an idle keep-alive connection may hold, in bytes (nginx holds
/// about 700, HAProxy about 1,500).
const PER_IDLE: usize = 2048;

/// Opens a connection, sends one GET on it and reads the whole response;
/// the connection stays open. Blocking, with no allocation of its own.
fn one_request(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(WAIT)).expect("timeout");
    s.write_all(b"GET /idle HTTP/1.1\r\nHost: idle.test\r\n\r\n")
        .expect("request sent");
    let mut got = [0u8; 4096];
    let mut len = 0;
    loop {
        let n = s.read(&mut got[len..]).expect("response read");
        assert!(n > 0, "connection closed after {len} bytes");
        len += n;
        let text = &got[..len];
        if let Some(end) = text.windows(4).position(|w| w == b"\r\n\r\n") {
            assert!(text.starts_with(b"HTTP/1.1 200 "), "a 200");
            let head = std::str::from_utf8(&text[..end]).expect("head is text");
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .expect("a content-length");
            if len >= end + 4 + length {
                assert_eq!(&text[end + 4..end + 4 + length], b"b", "backend b answered");
                return s;
            }
        }
    }
}

#[tokio::test]
async fn idle_keep_alive_connections_hold_no_buffers() {
    let b = Backend::start("b").await;
    let dp = start(one_pool(b.addr)).await;
    let addr = dp.http_addr();
    // Everything made once (the endpoint's connection, the blocking
    // thread, the spares a busy connection takes) is made before counting,
    // and those first connections stay open so that nothing they hold is
    // freed while counting.
    let warm =
        tokio::task::spawn_blocking(move || (0..8).map(|_| one_request(addr)).collect::<Vec<_>>())
            .await
            .expect("warm-up");

    let mut open = Vec::with_capacity(IDLE + 1);
    let region = Region::new(GLOBAL);
    let (open, mut warm) = tokio::task::spawn_blocking(move || {
        for _ in 0..IDLE {
            open.push(one_request(addr));
        }
        (open, warm)
    })
    .await
    .expect("idle connections");
    // The dataplane serves on this test's single thread: by the time a
    // request on an older connection is answered, every connection above
    // has finished its request and gone idle.
    let mut first = warm.pop().expect("a warm connection");
    let first = tokio::task::spawn_blocking(move || {
        first
            .write_all(b"GET /idle HTTP/1.1\r\nHost: idle.test\r\n\r\n")
            .expect("request sent");
        let mut got = [0u8; 1024];
        let n = first.read(&mut got).expect("answered");
        assert!(got[..n].starts_with(b"HTTP/1.1 200 "), "a 200");
        first
    })
    .await
    .expect("settled");
    let change = region.change();
    let held = change.bytes_allocated as isize - change.bytes_deallocated as isize;
    let per_idle = held / IDLE as isize;
    eprintln!(
        "{IDLE} idle connections: {held} bytes held ({per_idle} per connection; {} allocations, {} frees)",
        change.allocations, change.deallocations
    );
    assert!(
        per_idle <= PER_IDLE as isize,
        "an idle connection holds {per_idle} bytes (at most {PER_IDLE})"
    );
    drop((open, warm, first));
    dp.shutdown().await;
}
