//! What the proxy does with what clients send on the wire: `Upgrade`
//! tunnels (WebSocket), and requests that are too big, malformed, too slow
//! or abandoned, none of which may keep the proxy from serving the next.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use sluice_dataplane::Dataplane;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinSet;

/// An endpoint that accepts `Upgrade: echo` with 101 and then echoes every
/// byte back; anything else gets 400 naming the `upgrade` header it saw.
async fn upgrade_echo_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = service_fn(|mut req: Request<Incoming>| async move {
                    let upgrade = req.headers().get("upgrade").cloned();
                    if upgrade.as_ref().is_none_or(|u| u != "echo") {
                        let resp = Response::builder()
                            .status(StatusCode::BAD_REQUEST)
                            .header("x-seen-upgrade", format!("{upgrade:?}"))
                            .body(Empty::<Bytes>::new());
                        return Ok::<_, Infallible>(resp.expect("response"));
                    }
                    let on_upgrade = hyper::upgrade::on(&mut req);
                    tokio::spawn(async move {
                        if let Ok(upgraded) = on_upgrade.await {
                            let mut io = TokioIo::new(upgraded);
                            let mut buf = [0u8; 1024];
                            while let Ok(n) = io.read(&mut buf).await {
                                if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                                    break;
                                }
                            }
                        }
                    });
                    let resp = Response::builder()
                        .status(StatusCode::SWITCHING_PROTOCOLS)
                        .header("upgrade", "echo")
                        .header("connection", "upgrade")
                        .body(Empty::<Bytes>::new());
                    Ok(resp.expect("response"))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

/// Reads a response head (up to the blank line) from a raw connection.
async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    let read = async {
        while !head.ends_with(b"\r\n\r\n") {
            match stream.read(&mut byte).await {
                Ok(1) => head.push(byte[0]),
                _ => break,
            }
        }
    };
    tokio::time::timeout(WAIT, read)
        .await
        .expect("a response head in time");
    String::from_utf8_lossy(&head).to_ascii_lowercase()
}

/// Everything the proxy sends until it closes the connection.
async fn read_to_close(stream: &mut TcpStream) -> std::io::Result<String> {
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut out))
        .await
        .expect("the proxy closed the connection in time")?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

async fn proxy_to(
    endpoint: SocketAddr,
    tune: impl FnOnce(&mut sluice_dataplane::Options),
) -> Dataplane {
    let mut opts = options(one_pool(endpoint));
    tune(&mut opts);
    Dataplane::start(opts).await.expect("dataplane starts")
}

#[tokio::test]
async fn an_upgrade_request_becomes_a_tunnel_to_the_endpoint() {
    let dp = proxy_to(upgrade_echo_backend().await, |_| {}).await;
    let mut stream = TcpStream::connect(dp.http_addr()).await.expect("connect");
    stream
        .write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Upgrade\r\nUpgrade: echo\r\n\r\n")
        .await
        .expect("write");
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: echo\r\n"), "{head}");
    assert!(head.contains("connection: upgrade\r\n"), "{head}");
    // Bytes now go through both ways, in several rounds.
    for message in ["hello", "through the proxy", "and back"] {
        stream.write_all(message.as_bytes()).await.expect("write");
        let mut back = vec![0u8; message.len()];
        tokio::time::timeout(WAIT, stream.read_exact(&mut back))
            .await
            .expect("echo in time")
            .expect("echo");
        assert_eq!(back, message.as_bytes());
    }

    // `Upgrade` without `Connection: upgrade` is an ordinary header of this
    // hop: it does not reach the endpoint.
    let mut stream = TcpStream::connect(dp.http_addr()).await.expect("connect");
    stream
        .write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: echo\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("http/1.1 400"), "{head}");
    assert!(head.contains("x-seen-upgrade: none"), "{head}");
}

#[tokio::test]
async fn too_many_or_too_large_headers_get_431_and_garbage_gets_400() {
    let b = Backend::start("b").await;
    let dp = proxy_to(b.addr, |o| o.limits.max_header_bytes = 16 * 1024).await;

    // A head that reaches the limit without ending.
    let mut stream = TcpStream::connect(dp.http_addr()).await.expect("connect");
    let mut head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
    head.resize(16 * 1024, b'a');
    stream.write_all(&head).await.expect("write");
    let answer = read_to_close(&mut stream).await.expect("answer");
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");

    // 101 headers, over the limit of 100.
    let mut stream = TcpStream::connect(dp.http_addr()).await.expect("connect");
    let mut req = "GET / HTTP/1.1\r\nHost: x\r\n".to_string();
    for i in 0..100 {
        req.push_str(&format!("X-H{i}: {i}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).await.expect("write");
    let answer = read_to_close(&mut stream).await.expect("answer");
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");

    for garbage in [
        &b"this is not http\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
        b"\x00\x01\x02\x03\r\n\r\n",
    ] {
        let mut stream = TcpStream::connect(dp.http_addr()).await.expect("connect");
        stream.write_all(garbage).await.expect("write");
        let answer = read_to_close(&mut stream).await.expect("answer");
        assert!(answer.starts_with("HTTP/1.1 400"), "{garbage:?}: {answer}");
    }
    // And the same proxy still serves.
    assert_eq!(proxy_get(&client(), &dp, "x", "/").await.backend, "b");
}

#[tokio::test]
async fn an_http2_header_list_over_the_limit_gets_431() {
    let b = Backend::start("b").await;
    let dp = proxy_to(b.addr, |o| o.limits.max_header_bytes = 16 * 1024).await;
    let (mut sender, _conn) = hyper_h2c(dp.http_addr()).await;
    let send = async |sender: &mut hyper::client::conn::http2::SendRequest<Empty<Bytes>>, size| {
        let req = Request::get("http://x/")
            .header("x-big", "a".repeat(size))
            .body(Empty::<Bytes>::new())
            .expect("request");
        tokio::time::timeout(WAIT, sender.send_request(req))
            .await
            .expect("answered in time")
            .expect("response")
            .status()
    };
    assert_eq!(
        send(&mut sender, 32 * 1024).await,
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
    );
    // The connection stays usable for requests within the limit.
    assert_eq!(send(&mut sender, 1024).await, StatusCode::OK);
}

#[tokio::test]
async fn a_client_that_never_finishes_its_head_gets_408_and_an_idle_one_is_closed() {
    let b = Backend::start("b").await;
    let dp = proxy_to(b.addr, |o| {
        o.limits.header_read_timeout = Duration::from_millis(200);
    })
    .await;
    let mut slow = TcpStream::connect(dp.http_addr()).await.expect("connect");
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .expect("write");
    let mut idle = TcpStream::connect(dp.http_addr()).await.expect("connect");
    let answer = read_to_close(&mut slow).await.expect("answer");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer.contains("x-sluice-error: request-head-timeout"),
        "{answer}"
    );
    // A connection that sent nothing (a browser's speculative one) is
    // closed without a word.
    assert_eq!(read_to_close(&mut idle).await.unwrap_or_default(), "");

    // A keep-alive connection whose first request was served is closed
    // silently when it brings no new request.
    let mut kept = TcpStream::connect(dp.http_addr()).await.expect("connect");
    kept.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let head = read_head(&mut kept).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    let rest = read_to_close(&mut kept).await.unwrap_or_default();
    assert_eq!(rest, "b", "the body, then nothing");

    // An h2c connection is not held to the HTTP/1 deadline.
    let (mut sender, _conn) = hyper_h2c(dp.http_addr()).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let req = Request::get("http://x/")
        .body(Empty::<Bytes>::new())
        .expect("request");
    let resp = tokio::time::timeout(WAIT, sender.send_request(req))
        .await
        .expect("answered in time")
        .expect("the h2 connection is still open");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(proxy_get(&client(), &dp, "x", "/").await.backend, "b");
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed_and_one_with_a_stream_open_is_not() {
    // Periods of 200 ms; each wait below spans several of them.
    let b = Backend::start("b").await;
    let dp = proxy_to(b.addr, |o| {
        o.limits.http2_idle_timeout = Duration::from_millis(200);
    })
    .await;
    let (mut sender, conn) = hyper_h2c(dp.http_addr()).await;
    let get = |path: &str| {
        Request::get(format!("http://x{path}"))
            .body(Empty::<Bytes>::new())
            .expect("request")
    };
    // A stream whose answer takes several periods is open, not idle: it is
    // answered, and the connection serves the next request.
    let slow = tokio::spawn(sender.send_request(get("/gate")));
    b.gate.arrival().await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    b.gate.open();
    let resp = tokio::time::timeout(WAIT, slow)
        .await
        .expect("answered in time")
        .expect("task")
        .expect("the connection stayed open");
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = tokio::time::timeout(WAIT, sender.send_request(get("/")))
        .await
        .expect("answered in time")
        .expect("the connection serves the next request");
    assert_eq!(resp.status(), StatusCode::OK);
    drop(resp);
    // With no stream open, it is closed with GOAWAY (NO_ERROR: the client's
    // connection ends cleanly), and no request goes on it after.
    let ended = tokio::time::timeout(WAIT, conn)
        .await
        .expect("closed in time")
        .expect("task");
    assert!(ended.is_ok(), "a clean close: {ended:?}");
    assert!(
        sender.send_request(get("/")).await.is_err(),
        "the connection is closed"
    );
    // A fresh connection is served as before.
    assert_eq!(proxy_get(&client(), &dp, "x", "/").await.backend, "b");
}

/// A raw connection to `dp` on which `head` was sent.
async fn sent(dp: &Dataplane, head: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(dp.http_addr()).await.expect("connect");
    stream.write_all(head).await.expect("write");
    stream
}

/// A tunnel is closed once neither side has sent a byte for a whole
/// `timeouts.idle` of its pool; one that keeps moving outlives many
/// periods. Until 2026-12-07 a silent tunnel stayed open for ever, holding
/// its endpoint connection.
#[tokio::test]
async fn a_tunnel_silent_both_ways_for_the_idle_timeout_is_closed() {
    let echo = upgrade_echo_backend().await;
    let yaml = format!(
        "pools:\n  - name: p\n    timeouts: {{idle: 600ms}}\n    endpoints: [{{address: {echo}}}]\n"
    );
    let dp = Dataplane::start(options(sluice_dataplane::Source::Static(table(&yaml))))
        .await
        .expect("dataplane starts");
    let upgrade = b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n";
    let mut stream = sent(&dp, upgrade).await;
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    // A message every 100 ms for 2 s (over three periods): open all along.
    for i in 0..20 {
        let message = format!("message {i:02}");
        stream.write_all(message.as_bytes()).await.expect("write");
        let mut back = vec![0u8; message.len()];
        tokio::time::timeout(WAIT, stream.read_exact(&mut back))
            .await
            .expect("echo in time")
            .expect("the tunnel is open while bytes move");
        assert_eq!(back, message.as_bytes());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Then nothing either way: the proxy closes it.
    let rest = read_to_close(&mut stream).await.expect("a clean close");
    assert_eq!(rest, "", "nothing more came through");
}

#[tokio::test]
async fn the_head_deadline_spares_a_slow_answer_and_a_quiet_tunnel() {
    // Deadlines of 200 ms; each wait below spans several of them.
    let short = |o: &mut sluice_dataplane::Options| {
        o.limits.header_read_timeout = Duration::from_millis(200);
    };
    let quiet = Duration::from_millis(700);
    let b = Backend::start("b").await;
    let dp = proxy_to(b.addr, short).await;
    // A request whose answer takes longer than the deadline is in flight,
    // not idle: it is answered, and its connection serves the next one.
    let mut stream = sent(&dp, b"GET /gate HTTP/1.1\r\nHost: x\r\n\r\n").await;
    b.gate.arrival().await;
    tokio::time::sleep(quiet).await;
    b.gate.open();
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    let mut body = [0u8; 1];
    stream.read_exact(&mut body).await.expect("the body");
    assert_eq!(&body, b"b");
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let answer = read_to_close(&mut stream).await.expect("answer");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // A tunnel that stays quiet is not a connection waiting for a head.
    let dp = proxy_to(upgrade_echo_backend().await, short).await;
    let upgrade = b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n";
    let mut stream = sent(&dp, upgrade).await;
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    tokio::time::sleep(quiet).await;
    stream.write_all(b"still there").await.expect("write");
    let mut back = [0u8; 11];
    tokio::time::timeout(WAIT, stream.read_exact(&mut back))
        .await
        .expect("echo in time")
        .expect("the tunnel is open");
    assert_eq!(&back, b"still there");
}

#[tokio::test]
async fn a_thousand_broken_connections_leave_the_proxy_serving() {
    let b = Backend::start("b").await;
    let dp = proxy_to(b.addr, |o| {
        o.limits.header_read_timeout = Duration::from_secs(1);
    })
    .await;
    let addr = dp.http_addr();
    let mut held = Vec::new();
    for batch in 0..20 {
        let mut conns = JoinSet::new();
        for i in 0..50 {
            conns.spawn(async move {
                let mut stream = TcpStream::connect(addr).await.expect("connect");
                match (batch * 50 + i) % 5 {
                    // Garbage: answered 400.
                    0 => {
                        stream.write_all(b"\x16\x03\x01 nope\r\n\r\n").await.expect("write");
                        let answer = read_to_close(&mut stream).await.unwrap_or_default();
                        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
                        None
                    }
                    // Half a request line, then gone.
                    1 => {
                        let _ = stream.write_all(b"GET /half").await;
                        None
                    }
                    // Connect and close at once.
                    2 => None,
                    // Half a head, kept open until the end of the test.
                    3 => {
                        let _ = stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await;
                        Some(stream)
                    }
                    // A body promised and never sent, then gone.
                    _ => {
                        let _ = stream
                            .write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\npartial")
                            .await;
                        None
                    }
                }
            });
        }
        while let Some(joined) = conns.join_next().await {
            held.extend(joined.expect("connection task"));
        }
    }
    assert_eq!(held.len(), 200);
    let http = client();
    for _ in 0..5 {
        let got = proxy_get(&http, &dp, "x", "/").await;
        assert_eq!((got.status, got.backend.as_str()), (StatusCode::OK, "b"));
    }
    // The held connections are answered 408 and closed.
    for mut stream in held.drain(..10) {
        let answer = read_to_close(&mut stream).await.unwrap_or_default();
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    }
}

/// An endpoint that holds each request until `start` is notified, then
/// reads its whole body and answers with the number of bytes.
async fn held_reader_backend(start: std::sync::Arc<Notify>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let start = std::sync::Arc::clone(&start);
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let start = std::sync::Arc::clone(&start);
                    async move {
                        start.notified().await;
                        let mut body = req.into_body();
                        let mut n = 0usize;
                        while let Some(Ok(frame)) = http_body_util::BodyExt::frame(&mut body).await
                        {
                            n += frame.data_ref().map_or(0, |d| d.len());
                        }
                        Ok::<_, Infallible>(Response::new(http_body_util::Full::new(Bytes::from(
                            n.to_string(),
                        ))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn an_upload_to_an_endpoint_that_does_not_read_is_held_back_not_buffered() {
    const CHUNK: usize = 64 * 1024;
    const ATTEMPT: usize = 256 * 1024 * 1024;
    let start = std::sync::Arc::new(Notify::new());
    let dp = proxy_to(
        held_reader_backend(std::sync::Arc::clone(&start)).await,
        |_| {},
    )
    .await;
    let stream = TcpStream::connect(dp.http_addr()).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let (tx, rx) = mpsc::channel::<Result<hyper::body::Frame<Bytes>, Infallible>>(1);
    let body = http_body_util::StreamBody::new(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|f| (f, rx))
    }));
    let req = Request::post("/upload")
        .header("host", "x")
        .body(body)
        .expect("request");
    let response = tokio::spawn(sender.send_request(req));
    // Push until the proxy stops taking bytes (nothing moves for a while),
    // at most 256 MiB. The chunk is static: the test allocates nothing.
    static ZEROS: [u8; CHUNK] = [0; CHUNK];
    let mut pushed = 0;
    while pushed < ATTEMPT {
        let frame = Ok(hyper::body::Frame::data(Bytes::from_static(&ZEROS)));
        match tokio::time::timeout(Duration::from_millis(500), tx.send(frame)).await {
            Ok(sent) => sent.expect("body still wanted"),
            Err(_) => break,
        }
        pushed += CHUNK;
    }
    // What went in sits in the kernel's socket buffers on the way (about
    // 10 MiB on loopback here, autotuned) and a chunk or two in the proxy:
    // bounded, far below what the client tried to send.
    assert!(
        pushed < 64 * 1024 * 1024,
        "{} MiB went in while the endpoint read nothing",
        pushed >> 20
    );
    // Once the endpoint reads, everything arrives.
    start.notify_one();
    let rest = async {
        for _ in 0..16 {
            tx.send(Ok(hyper::body::Frame::data(Bytes::from_static(&ZEROS))))
                .await
                .expect("send");
            pushed += CHUNK;
        }
        drop(tx);
    };
    tokio::time::timeout(WAIT, rest)
        .await
        .expect("the rest of the body in time");
    let resp = tokio::time::timeout(WAIT, response)
        .await
        .expect("answered in time")
        .expect("task")
        .expect("response");
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .expect("body")
        .to_bytes();
    assert_eq!(String::from_utf8_lossy(&body), pushed.to_string());
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_whatever_their_shape() {
    let b = Backend::start("b").await;
    let dp = proxy_to(b.addr, |_| {}).await;
    // Four requests in one write: plain ones, one with a body between them
    // (served by hyper from there on), the last asking to close.
    let mut stream = sent(
        &dp,
        b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n\
          GET /headers HTTP/1.1\r\nHost: x\r\nX-Probe: 1\r\n\r\n\
          POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
          GET /conn HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    let answer = read_to_close(&mut stream).await.expect("answers");
    let lower = answer.to_ascii_lowercase();
    assert_eq!(answer.matches("HTTP/1.1 200 OK\r\n").count(), 4, "{answer}");
    let at = |what: &str| {
        lower
            .find(what)
            .unwrap_or_else(|| panic!("{what:?} in {answer}"))
    };
    assert!(at("\r\n\r\nb") < at("x-probe: 1"), "{answer}");
    assert!(at("x-probe: 1") < at("hello"), "{answer}");
    assert!(
        lower.trim_end().ends_with("\r\n\r\n1"),
        "one connection to the endpoint: {answer}"
    );
    // Every answer says how long it is, and when.
    assert_eq!(lower.matches("content-length: ").count(), 4, "{answer}");
    assert_eq!(lower.matches("\r\ndate: ").count(), 4, "{answer}");
    assert_eq!(lower.matches("connection: close").count(), 1, "{answer}");
}

/// The requests in flight across the pools, by `/debug/pools`.
async fn in_flight(dp: &Dataplane) -> u64 {
    let got = admin_get(&client(), dp, "/debug/pools").await;
    let pools: serde_json::Value = serde_json::from_slice(&got.body).expect("json");
    let pools = pools["pools"].as_array().expect("pools");
    pools.iter().filter_map(|p| p["inFlight"].as_u64()).sum()
}

#[tokio::test]
async fn a_client_that_goes_away_takes_its_request_with_it() {
    let b = Backend::start("b").await;
    let dp = proxy_to(b.addr, |_| {}).await;
    let stream = sent(&dp, b"GET /gate HTTP/1.1\r\nHost: x\r\n\r\n").await;
    b.gate.arrival().await;
    assert_eq!(in_flight(&dp).await, 1);
    // The endpoint never answers; the client leaves. The request ends
    // with it, not when the endpoint answers (or times out).
    drop(stream);
    eventually("no request in flight", async || in_flight(&dp).await == 0).await;
    let got = proxy_get(&client(), &dp, "x", "/").await;
    assert_eq!(got.status, StatusCode::OK);
}

#[tokio::test]
async fn a_target_the_front_end_cannot_take_is_refused_as_before_and_the_next_is_served() {
    let b = Backend::start("b").await;
    let dp = proxy_to(b.addr, |_| {}).await;
    // httparse takes `<` in a target and `http` does not: the front end
    // hands the request to hyper whole, which answers 400 and closes.
    let mut stream = sent(&dp, b"GET /a<b HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let answer = read_to_close(&mut stream).await.expect("answer");
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert_eq!(
        b.connections.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "nothing forwarded"
    );
    let got = proxy_get(&client(), &dp, "x", "/").await;
    assert_eq!(got.status, StatusCode::OK);
}

/// An h2c connection (prior knowledge) to the dataplane, on the `h2`
/// crate's client: dropping a response future resets its stream.
async fn h2c(dp: &Dataplane) -> h2::client::SendRequest<Bytes> {
    let tcp = TcpStream::connect(dp.http_addr()).await.expect("connect");
    let (h2, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(connection);
    h2
}

fn h2_get(path: &str) -> Request<()> {
    Request::get(format!("http://x{path}"))
        .body(())
        .expect("request")
}

/// The status of an HTTP/2 response, which must come within [`WAIT`].
async fn status_of(response: h2::client::ResponseFuture) -> StatusCode {
    tokio::time::timeout(WAIT, response)
        .await
        .expect("in time")
        .expect("answered")
        .status()
}

#[tokio::test]
async fn an_http2_client_that_resets_its_stream_takes_its_request_with_it() {
    let b = Backend::start("b").await;
    let dp = proxy_to(b.addr, |_| {}).await;
    let h2 = h2c(&dp).await;
    let mut h2 = h2.ready().await.expect("ready");
    let (response, _) = h2.send_request(h2_get("/gate"), true).expect("sent");
    b.gate.arrival().await;
    assert_eq!(in_flight(&dp).await, 1);
    // RST_STREAM(CANCEL): the request ends with the stream, not when the
    // endpoint answers.
    drop(response);
    eventually("no request in flight", async || in_flight(&dp).await == 0).await;
    // The connection serves the next stream.
    b.gate.open();
    let mut h2 = h2.ready().await.expect("ready");
    let (response, _) = h2.send_request(h2_get("/"), true).expect("sent");
    assert_eq!(status_of(response).await, StatusCode::OK);
}

#[tokio::test]
async fn a_flood_of_http2_streams_reset_at_once_leaves_nothing_behind_and_others_served() {
    const STREAMS: usize = 5_000;
    let b = Backend::start("b").await;
    let dp = proxy_to(b.addr, |_| {}).await;
    // Each stream opened and reset at once ("rapid reset"), on requests
    // that would wait at the endpoint's gate for ever. The dataplane may
    // also close the connection for it (GOAWAY): the flood then stops.
    let flooder = h2c(&dp).await;
    let flood = tokio::spawn(async move {
        let mut h2 = flooder;
        let mut sent = 0;
        for _ in 0..STREAMS {
            h2 = match h2.ready().await {
                Ok(h2) => h2,
                Err(_) => break,
            };
            match h2.send_request(h2_get("/gate"), true) {
                Ok((response, _)) => drop(response),
                Err(_) => break,
            }
            sent += 1;
        }
        sent
    });
    // Meanwhile, another client is served.
    let other = h2c(&dp).await;
    let mut other = other.ready().await.expect("ready");
    let (response, _) = other.send_request(h2_get("/"), true).expect("sent");
    assert_eq!(status_of(response).await, StatusCode::OK);
    let sent = tokio::time::timeout(WAIT, flood)
        .await
        .expect("the flood ends in time")
        .expect("flood task");
    assert!(sent > 0, "streams were opened");
    eprintln!("{sent} of {STREAMS} streams opened and reset before the connection closed");
    // Every request the flood started has ended with its stream.
    eventually("no request in flight", async || in_flight(&dp).await == 0).await;
    let got = proxy_get(&client(), &dp, "x", "/").await;
    assert_eq!(got.status, StatusCode::OK);
}

/// One HPACK representation (RFC 7541 §6), its strings left undecoded.
#[derive(Debug, PartialEq)]
enum Hpack {
    /// An index into the static (≤ 61) or the dynamic table.
    Indexed(u64),
    /// A literal; `indexing`: the decoder is told to add it to its table.
    Literal { indexing: bool, name_index: u64 },
    /// A dynamic table size update.
    SizeUpdate(u64),
}

/// Reads an HPACK integer with a `prefix`-bit prefix at `at`.
fn hpack_int(block: &[u8], at: &mut usize, prefix: u32) -> u64 {
    let max = (1u64 << prefix) - 1;
    let mut value = u64::from(block[*at]) & max;
    *at += 1;
    if value == max {
        let mut shift = 0;
        loop {
            let byte = block[*at];
            *at += 1;
            value += u64::from(byte & 0x7f) << shift;
            shift += 7;
            if byte & 0x80 == 0 {
                break;
            }
        }
    }
    value
}

/// The representations of a header block.
fn hpack_fields(block: &[u8]) -> Vec<Hpack> {
    let mut at = 0;
    let mut fields = Vec::new();
    let skip_string = |at: &mut usize| {
        let len = hpack_int(block, at, 7);
        *at += usize::try_from(len).expect("length");
    };
    while at < block.len() {
        let first = block[at];
        let field = if first & 0x80 != 0 {
            Hpack::Indexed(hpack_int(block, &mut at, 7))
        } else if first & 0xc0 == 0x40 || first & 0xe0 != 0x20 {
            let indexing = first & 0xc0 == 0x40;
            let name_index = hpack_int(block, &mut at, if indexing { 6 } else { 4 });
            if name_index == 0 {
                skip_string(&mut at);
            }
            skip_string(&mut at);
            Hpack::Literal {
                indexing,
                name_index,
            }
        } else {
            Hpack::SizeUpdate(hpack_int(block, &mut at, 5))
        };
        fields.push(field);
    }
    fields
}

/// A request head split over a HEADERS and a CONTINUATION frame (as clients
/// send a head bigger than a frame) is decoded whole: the fields of the
/// second frame reach the endpoint. (`h2` keeps a split head's state boxed,
/// taken only while one arrives: `third_party/README.md`.)
#[tokio::test]
async fn http2_a_head_split_over_continuation_frames_is_served_whole() {
    let b = Backend::start("b").await;
    let dp = proxy_to(b.addr, |_| {}).await;
    let mut conn = TcpStream::connect(dp.http_addr()).await.expect("connect");
    // `:method GET`, `:scheme http`, `:authority x` in HEADERS (END_STREAM,
    // no END_HEADERS); `:path /headers` and `x-split: yes` in CONTINUATION
    // (END_HEADERS), as literals without indexing.
    let first = [0x82, 0x86, 0x01, 0x01, b'x'];
    let mut second = vec![0x04, 0x08];
    second.extend_from_slice(b"/headers");
    second.extend_from_slice(&[0x00, 0x07]);
    second.extend_from_slice(b"x-split");
    second.extend_from_slice(&[0x03]);
    second.extend_from_slice(b"yes");
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend(h2_frame(0x4, 0, 0, &[]));
    hello.extend(h2_frame(0x1, 0x1, 1, &first));
    hello.extend(h2_frame(0x9, 0x4, 1, &second));
    conn.write_all(&hello).await.expect("write");
    let (mut status, mut body, mut buf) = (None, Vec::new(), Vec::new());
    tokio::time::timeout(WAIT, async {
        loop {
            let mut chunk = [0u8; 4096];
            let n = conn.read(&mut chunk).await.expect("read");
            assert!(n > 0, "the connection closed");
            buf.extend_from_slice(&chunk[..n]);
            while let Some((frame, taken)) = h2_frame_at(&buf) {
                let (kind, flags, stream) = (frame.kind, frame.flags, frame.stream);
                let payload = frame.payload.to_vec();
                buf.drain(..taken);
                match kind {
                    0x4 if flags & 0x1 == 0 => conn
                        .write_all(&h2_frame(0x4, 0x1, 0, &[]))
                        .await
                        .expect("ack"),
                    0x3 | 0x7 => panic!("stream or connection refused: {payload:?}"),
                    0x1 if stream == 1 => status = payload.first().copied(),
                    0x0 if stream == 1 => {
                        body.extend_from_slice(&payload);
                        if flags & 0x1 != 0 {
                            return;
                        }
                    }
                    _ => {}
                }
            }
        }
    })
    .await
    .expect("the response in time");
    // `:status 200` as the static table's index 8.
    assert_eq!(status, Some(0x88), "status");
    let body = String::from_utf8_lossy(&body);
    assert!(body.lines().any(|l| l == "x-split: yes"), "{body}");
}

#[tokio::test]
async fn http2_response_heads_go_without_the_dynamic_table() {
    let b = Backend::start("b").await;
    let dp = proxy_to(b.addr, |_| {}).await;
    let mut conn = TcpStream::connect(dp.http_addr()).await.expect("connect");
    // GET http://x/ twice, from the static table and a literal authority.
    let get = [0x82, 0x86, 0x84, 0x01, 0x01, b'x'];
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend(h2_frame(0x4, 0, 0, &[]));
    hello.extend(h2_frame(0x1, 0x5, 1, &get));
    conn.write_all(&hello).await.expect("write");
    // The response heads of streams 1 and then 3, each asked for once the
    // one before was answered (so that the second could use what the first
    // put in a table).
    let mut blocks = Vec::new();
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, async {
        while blocks.len() < 2 {
            let mut chunk = [0u8; 4096];
            let n = conn.read(&mut chunk).await.expect("read");
            assert!(n > 0, "the connection closed");
            buf.extend_from_slice(&chunk[..n]);
            while let Some((frame, taken)) = h2_frame_at(&buf) {
                let (kind, flags, payload) = (frame.kind, frame.flags, frame.payload.to_vec());
                buf.drain(..taken);
                if kind == 0x4 && flags & 0x1 == 0 {
                    conn.write_all(&h2_frame(0x4, 0x1, 0, &[]))
                        .await
                        .expect("ack");
                }
                if kind == 0x1 {
                    assert_eq!(flags & 0x4, 0x4, "one HEADERS frame per head");
                    let padded = flags & 0x8 != 0;
                    let start = if padded { 1 } else { 0 } + if flags & 0x20 != 0 { 5 } else { 0 };
                    let pad = if padded { usize::from(payload[0]) } else { 0 };
                    blocks.push(payload[start..payload.len() - pad].to_vec());
                    if blocks.len() == 1 {
                        conn.write_all(&h2_frame(0x1, 0x5, 3, &get))
                            .await
                            .expect("write");
                    }
                }
            }
        }
    })
    .await
    .expect("two responses in time");
    let (first, second) = (hpack_fields(&blocks[0]), hpack_fields(&blocks[1]));
    // `:status 200` from the static table; no field the client is told to
    // add to its table, so the second head can refer to none either.
    assert_eq!(first[0], Hpack::Indexed(8), "{first:?}");
    for field in first.iter().chain(&second) {
        match field {
            Hpack::Indexed(i) => assert!(
                *i <= 61,
                "an index into the dynamic table: {first:?} {second:?}"
            ),
            Hpack::Literal { indexing, .. } => {
                assert!(
                    !indexing,
                    "a field the client is told to index: {first:?} {second:?}"
                );
            }
            Hpack::SizeUpdate(_) => panic!("a table size update, with no table in use: {first:?}"),
        }
    }
    // Both heads carry the same fields, each a literal again the second
    // time: `:status`, `x-backend`, `content-length` and `date`.
    assert_eq!(first.len(), second.len(), "{first:?} {second:?}");
    assert!(second.len() >= 4, "{second:?}");
}
