//! Whose fault a failure is: a client's broken request is never held
//! against an endpoint, and an endpoint that dies costs no idempotent
//! request. What clients get back, and what the pool remembers of its
//! endpoints (`/debug/pools`, `/metrics`).

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::Value;
use sluice_dataplane::Source;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// How a raw client ends its request.
#[derive(Clone, Copy, Debug)]
enum End {
    /// Keeps the connection open and reads the answer.
    Wait,
    /// Closes its sending side, then reads the answer.
    HalfClose,
    /// Goes away at once.
    Close,
}

/// Sends `raw` on a new connection to `addr`, ends as `end` says, and
/// reads until a whole response head came or the proxy closed: the
/// response's status, `None` when none came.
async fn raw(addr: SocketAddr, raw: &[u8], end: End) -> Option<u16> {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(raw).await.expect("write");
    match end {
        End::Wait => {}
        End::HalfClose => s.shutdown().await.expect("shutdown"),
        End::Close => return None,
    }
    let read = async {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        got
    };
    let got = tokio::time::timeout(WAIT, read)
        .await
        .expect("an answer or a close in time");
    let text = String::from_utf8_lossy(&got);
    let status = text.strip_prefix("HTTP/1.1 ")?.get(..3)?;
    Some(status.parse().expect("a status code"))
}

/// The `/debug/pools` entries of pool `p`'s endpoints.
async fn endpoints(http: &HttpClient, dp: &sluice_dataplane::Dataplane) -> Vec<Value> {
    let got = admin_get(http, dp, "/debug/pools").await;
    let pools: Value = serde_json::from_slice(&got.body).expect("/debug/pools is JSON");
    pools["pools"][0]["endpoints"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test]
async fn malformed_or_abandoned_uploads_are_the_clients_fault_not_the_endpoints() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let dp = start(Source::Static(table(&format!(
        "pools:\n  - name: p\n    outlierDetection: {{consecutiveFailures: 3, baseEjectionTime: 60s}}\n    endpoints: [{{address: {}}}, {{address: {}}}]\n",
        a.addr, b.addr
    ))))
    .await;
    let chunked = "POST /count HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
    let cut = "POST /count HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789";
    let uploads: [(String, End); 6] = [
        (format!("{chunked}zz\r\nhello\r\n0\r\n\r\n"), End::Wait),
        (
            format!("{chunked}fffffffffffffffffffff\r\nhello\r\n0\r\n\r\n"),
            End::Wait,
        ),
        (format!("{chunked}0x5\r\nhello\r\n0\r\n\r\n"), End::Wait),
        (format!("{chunked}5\r\nhelloXX0\r\n\r\n"), End::Wait),
        (cut.to_string(), End::HalfClose),
        (cut.to_string(), End::Close),
    ];
    let mut answered = 0;
    for round in 0..8 {
        for (upload, end) in &uploads {
            let status = raw(dp.http_addr(), upload.as_bytes(), *end).await;
            assert!(
                status.is_none_or(|s| (400..500).contains(&s)),
                "round {round}, {end:?} {upload:?}: {status:?}"
            );
            answered += usize::from(status.is_some());
        }
    }
    assert!(
        answered >= 32,
        "the malformed ones got their 400: {answered}"
    );
    let http = client();
    // Abandoned uploads end on the proxy's side a little after the
    // client left: wait until none is in flight.
    nothing_counted_against_endpoints(&http, &dp, "the abandoned uploads to end").await;
    let mut seen = Vec::new();
    for _ in 0..20 {
        let got = proxy_get(&http, &dp, "x", "/").await;
        assert_eq!(got.status, StatusCode::OK, "{}", got.text());
        seen.push(got.backend);
    }
    assert!(
        seen.iter().any(|n| n == "a") && seen.iter().any(|n| n == "b"),
        "{seen:?}"
    );
    // And a well-formed upload still goes through whole.
    let got = send(
        &http,
        Request::post(format!("http://{}/count", dp.http_addr()))
            .header("host", "x")
            .body(Full::new(Bytes::from_static(b"0123456789")))
            .expect("request"),
    )
    .await;
    assert_eq!((got.status, got.text().as_str()), (StatusCode::OK, "10"));
}

#[tokio::test]
async fn an_http2_stream_reset_mid_upload_is_the_clients_fault_not_the_endpoints() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let dp = start(Source::Static(table(&format!(
        "pools:\n  - name: p\n    outlierDetection: {{consecutiveFailures: 3, baseEjectionTime: 60s}}\n    endpoints: [{{address: {}}}, {{address: {}}}]\n",
        a.addr, b.addr
    ))))
    .await;
    let (mut sender, conn) = hyper_h2c(dp.http_addr()).await;
    for _ in 0..12 {
        // Some bytes, then the client's body fails: hyper resets the
        // stream.
        let frames = futures::stream::unfold(0, |n| async move {
            match n {
                0 => Some((Ok(hyper::body::Frame::data(Bytes::from_static(b"abc"))), 1)),
                1 => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    Some((Err(std::io::Error::other("client gave up")), 2))
                }
                _ => None,
            }
        });
        let req = Request::post("http://x/count")
            .body(http_body_util::StreamBody::new(Box::pin(frames)))
            .expect("request");
        let sent = tokio::time::timeout(WAIT, sender.send_request(req))
            .await
            .expect("the stream ended in time");
        if let Ok(resp) = sent {
            assert!(resp.status().is_client_error(), "{:?}", resp.status());
        }
    }
    conn.abort();
    let http = client();
    nothing_counted_against_endpoints(&http, &dp, "the reset uploads to end").await;
}

/// An endpoint that can be killed: its listener and every connection close
/// at once, as when its process dies. Each answer takes a few
/// milliseconds, so that some requests are in flight when it dies.
struct Mortal {
    addr: SocketAddr,
    in_flight: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for Mortal {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Mortal {
    async fn start(name: &'static str) -> Mortal {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let in_flight = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&in_flight);
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let counter = Arc::clone(&counter);
                        conns.spawn(async move {
                            let svc = service_fn(move |_req: Request<Incoming>| {
                                let counter = Arc::clone(&counter);
                                async move {
                                    counter.fetch_add(1, Ordering::SeqCst);
                                    tokio::time::sleep(Duration::from_millis(10)).await;
                                    counter.fetch_sub(1, Ordering::SeqCst);
                                    let resp = Response::builder()
                                        .header("x-backend", name)
                                        .body(Full::new(Bytes::from(name)))
                                        .expect("response");
                                    Ok::<_, Infallible>(resp)
                                }
                            });
                            let _ = auto::Builder::new(TokioExecutor::new())
                                .serve_connection(TokioIo::new(stream), svc)
                                .await;
                        });
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        });
        Mortal {
            addr,
            in_flight,
            task,
        }
    }

    /// Dies: the listener and every connection close.
    fn kill(&self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_endpoint_costs_no_idempotent_request_with_default_settings() {
    let eps = [
        Mortal::start("a").await,
        Mortal::start("b").await,
        Mortal::start("c").await,
    ];
    let list: Vec<String> = eps
        .iter()
        .map(|e| format!("{{address: {}}}", e.addr))
        .collect();
    let dp = start(Source::Static(table(&format!(
        "pools:\n  - name: p\n    endpoints: [{}]\n",
        list.join(", ")
    ))))
    .await;
    let addr = dp.http_addr();
    let done = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = JoinSet::new();
    for _ in 0..8 {
        let (done, stop) = (Arc::clone(&done), Arc::clone(&stop));
        workers.spawn(async move {
            let http = client();
            let mut failures = Vec::new();
            // Bounded by count as well as by the stop flag.
            for _ in 0..5_000 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let answer = async {
                    let resp = http.request(get(addr, "x", "/")).await?;
                    let status = resp.status();
                    let body = resp.into_body().collect().await?.to_bytes();
                    Ok::<_, Box<dyn std::error::Error + Send + Sync>>((status, body))
                };
                match tokio::time::timeout(WAIT, answer).await {
                    Ok(Ok((StatusCode::OK, body))) if body.len() == 1 => {}
                    other => failures.push(format!("{other:?}")),
                }
                done.fetch_add(1, Ordering::SeqCst);
            }
            failures
        });
    }
    let victim = &eps[0];
    eventually("traffic to flow and reach the victim", async || {
        done.load(Ordering::SeqCst) >= 300 && victim.in_flight.load(Ordering::SeqCst) > 0
    })
    .await;
    victim.kill();
    let at_kill = done.load(Ordering::SeqCst);
    eventually("traffic to go on without the victim", async || {
        done.load(Ordering::SeqCst) >= at_kill + 1_000
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    let mut failures = Vec::new();
    while let Some(worker) = workers.join_next().await {
        failures.extend(worker.expect("worker"));
    }
    assert!(
        failures.is_empty(),
        "{} of {} requests failed: {:?}",
        failures.len(),
        done.load(Ordering::SeqCst),
        &failures[..failures.len().min(5)]
    );
    let http = client();
    let victim_entry = endpoints(&http, &dp)
        .await
        .into_iter()
        .find(|e| e["address"] == victim.addr.to_string())
        .unwrap_or(Value::Null);
    assert_eq!(
        victim_entry["ejected"], true,
        "ejected on its refusals: {victim_entry}"
    );
}

/// Once no request is in flight any more (`what` names the wait): no
/// endpoint ejected, none with a failure counted, and no failed exchange
/// (`code="0"`) in the endpoints' metrics.
async fn nothing_counted_against_endpoints(
    http: &HttpClient,
    dp: &sluice_dataplane::Dataplane,
    what: &str,
) {
    eventually(what, async || {
        endpoints(http, dp).await.iter().all(|e| e["inFlight"] == 0)
    })
    .await;
    for e in endpoints(http, dp).await {
        assert_eq!(e["ejected"], false, "{e}");
        assert_eq!(e["consecutiveFailures"], 0, "{e}");
    }
    let metrics = admin_get(http, dp, "/metrics").await.text();
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("sluice_upstream_requests_total") && l.contains("code=\"0\"")),
        "no failed exchange counted against an endpoint:\n{metrics}"
    );
}

/// An endpoint that answers `/endless` with a body it never finishes (64
/// KiB at a time, for as long as the proxy takes them) and anything else
/// with `ok`; `released` counts the endless answers whose connection the
/// proxy closed.
async fn endless_backend() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let released = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&released);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let released = Arc::clone(&counted);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    if !head.starts_with(b"GET /endless ") {
                        head.clear();
                        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if stream.write_all(ok).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    let endless = b"HTTP/1.1 200 OK\r\ncontent-length: 1099511627776\r\n\r\n";
                    let chunk = vec![b'x'; 64 * 1024];
                    let mut sent = stream.write_all(endless).await;
                    while sent.is_ok() {
                        sent = stream.write_all(&chunk).await;
                    }
                    released.fetch_add(1, Ordering::SeqCst);
                    return;
                }
            });
        }
    });
    (addr, released)
}

/// A connection to `addr` with a 4 KiB receive buffer: a client that reads
/// nothing has it full at once.
async fn small_window_client(addr: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    socket.connect(addr).await.expect("connect")
}

/// Waits until `released` endless answers lost their endpoint connection,
/// then reads `s` to its end: what was on its way, then the proxy's close.
async fn endpoint_goes_then_client_is_closed(
    released: &AtomicUsize,
    count: usize,
    s: &mut TcpStream,
) -> Vec<u8> {
    eventually("the endpoint connection to go", async || {
        released.load(Ordering::SeqCst) == count
    })
    .await;
    let mut rest = Vec::new();
    // The close may come as a reset: an error after the bytes is fine.
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut rest))
        .await
        .expect("the proxy closed the connection");
    rest
}

/// A client that stops reading a response is closed on after
/// `--send-timeout` (its HTTP/2 stream reset), which lets the endpoint's
/// connection go; it is the client's doing, counted against no endpoint.
/// Until 2026-12-07 such a client held the endpoint connection for ever
/// (the body's idle timeout never fired: nobody asked the body for more).
#[tokio::test]
async fn a_client_that_stops_reading_is_closed_on_and_it_is_not_the_endpoints_fault() {
    let (addr, released) = endless_backend().await;
    let mut opts = options(Source::Static(table(&format!(
        "pools:\n  - name: p\n    outlierDetection: {{consecutiveFailures: 1, baseEjectionTime: 60s}}\n    endpoints: [{{address: {addr}}}]\n"
    ))));
    opts.limits.send_timeout = Duration::from_millis(300);
    let dp = sluice_dataplane::Dataplane::start(opts)
        .await
        .expect("starts");
    let http = client();

    // HTTP/1.1: a small receive window, a look at the head, then nothing.
    let mut s = small_window_client(dp.http_addr()).await;
    s.write_all(b"GET /endless HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut first = [0u8; 16];
    s.read_exact(&mut first).await.expect("the head starts");
    assert_eq!(&first[..12], b"HTTP/1.1 200");
    endpoint_goes_then_client_is_closed(&released, 1, &mut s).await;
    nothing_counted_against_endpoints(&http, &dp, "the exchange to end").await;

    // HTTP/2: the stream's window stays shut (its body is never read).
    let (mut sender, conn) = hyper_h2c::<http_body_util::Empty<Bytes>>(dp.http_addr()).await;
    let get = |path: &str| {
        Request::get(format!("http://x{path}"))
            .body(http_body_util::Empty::<Bytes>::new())
            .expect("request")
    };
    let endless = tokio::time::timeout(WAIT, sender.send_request(get("/endless")))
        .await
        .expect("a head in time")
        .expect("answered");
    assert_eq!(endless.status(), StatusCode::OK);
    eventually("the endpoint connection to go", async || {
        released.load(Ordering::SeqCst) == 2
    })
    .await;
    // The stream was reset; the connection serves the next one.
    let body = tokio::time::timeout(WAIT, endless.into_body().collect())
        .await
        .expect("the body ended in time");
    assert!(body.is_err(), "the stream was reset");
    let resp = tokio::time::timeout(WAIT, sender.send_request(get("/")))
        .await
        .expect("answered in time")
        .expect("the connection is open");
    let text = resp.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(&text[..], b"ok");
    nothing_counted_against_endpoints(&http, &dp, "the exchange to end").await;
    drop(sender);
    let _ = conn.await;
}

/// An HTTP/2 client that reads nothing at all (its windows wide open, so
/// only the socket fills up) is closed on after `--send-timeout`: the
/// connection's own writes wait, not just a stream's window.
#[tokio::test]
async fn an_http2_client_that_reads_nothing_is_closed_on() {
    let (addr, released) = endless_backend().await;
    let mut opts = options(Source::Static(table(&format!(
        "pools:\n  - name: p\n    endpoints: [{{address: {addr}}}]\n"
    ))));
    opts.limits.send_timeout = Duration::from_millis(300);
    // Not the idle timeout's doing: it is the default, a minute.
    assert!(opts.limits.http2_idle_timeout > WAIT);
    let dp = sluice_dataplane::Dataplane::start(opts)
        .await
        .expect("starts");
    let mut s = small_window_client(dp.http_addr()).await;
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    // SETTINGS_INITIAL_WINDOW_SIZE as large as it goes, and the
    // connection's window too: flow control never stops the server.
    out.extend(h2_frame(4, 0, 0, &[0, 4, 0x7f, 0xff, 0xff, 0xff]));
    out.extend(h2_frame(8, 0, 0, &(0x7fff_ffffu32 - 65_535).to_be_bytes()));
    // GET http://x/endless, END_STREAM | END_HEADERS.
    let mut head = vec![0x82, 0x86, 0x04, 8];
    head.extend_from_slice(b"/endless");
    head.extend_from_slice(&[0x41, 1, b'x']);
    out.extend(h2_frame(1, 0x5, 1, &head));
    s.write_all(&out).await.expect("write");
    // The close, not just the stream's reset (which would leave the
    // connection open for its idle minute).
    let rest = endpoint_goes_then_client_is_closed(&released, 1, &mut s).await;
    assert!(rest.len() > 9, "the server's frames came first");
}
