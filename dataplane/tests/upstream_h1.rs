//! HTTP/1.1 towards endpoints, against endpoints that write exact bytes:
//! connection reuse and its limits, framing (chunked with trailers, HEAD,
//! read-to-close), interim responses, early answers to uploads, and bad
//! response heads.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use sluice_dataplane::Dataplane;
use support::{WAIT, client, one_pool, send, start};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One request as the endpoint read it.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    /// The connection's number (0 for the first accepted).
    conn: usize,
    body_len: usize,
}

/// What the endpoint does with a request.
enum Reply {
    /// Writes these bytes and waits for the next request.
    Bytes(Vec<u8>),
    /// Writes these bytes and closes the connection.
    ThenClose(Vec<u8>),
    /// Writes these bytes without reading the request's body, and holds
    /// the connection open.
    Early(Vec<u8>),
    /// Writes these bytes, then closes the connection after a pause (a
    /// server's idle timeout).
    ThenIdleClose(Vec<u8>, Duration),
    /// Writes these pieces with a pause between two, and waits for the
    /// next request.
    Paced(Vec<Vec<u8>>),
}

/// An endpoint that answers each request as `script` says, recording what
/// it read.
struct Scripted {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    conns: Arc<AtomicUsize>,
}

impl Scripted {
    async fn start(script: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let conns = Arc::new(AtomicUsize::new(0));
        let script = Arc::new(script);
        let (s, c) = (Arc::clone(&seen), Arc::clone(&conns));
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let n = c.fetch_add(1, Ordering::SeqCst);
                let (seen, script) = (Arc::clone(&s), Arc::clone(&script));
                tokio::spawn(serve(stream, n, seen, script));
            }
        });
        Self { addr, seen, conns }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("seen").clone()
    }

    fn conns(&self) -> usize {
        self.conns.load(Ordering::SeqCst)
    }
}

async fn serve(
    mut stream: TcpStream,
    conn: usize,
    seen: Arc<Mutex<Vec<Seen>>>,
    script: Arc<impl Fn(&Seen) -> Reply + Send + Sync + 'static>,
) {
    let mut buf = Vec::new();
    loop {
        // The head.
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 8192];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let mut slots = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut slots);
        let Ok(httparse::Status::Complete(_)) = req.parse(&buf[..end]) else {
            return;
        };
        let length = req
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .and_then(|h| {
                std::str::from_utf8(h.value)
                    .ok()?
                    .trim()
                    .parse::<usize>()
                    .ok()
            })
            .unwrap_or(0);
        let mut request = Seen {
            method: req.method.unwrap_or("").to_string(),
            path: req.path.unwrap_or("").to_string(),
            conn,
            body_len: length,
        };
        buf.drain(..end);
        let reply = script(&request);
        if let Reply::Early(bytes) = &reply {
            seen.lock().expect("seen").push(request);
            let _ = stream.write_all(bytes).await;
            tokio::time::sleep(3 * WAIT).await;
            return;
        }
        // The body (Content-Length only: what these tests send).
        while buf.len() < length {
            let mut chunk = [0u8; 65536];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..length);
        request.body_len = length;
        seen.lock().expect("seen").push(request);
        match reply {
            Reply::Bytes(bytes) => {
                if stream.write_all(&bytes).await.is_err() {
                    return;
                }
            }
            Reply::ThenClose(bytes) => {
                let _ = stream.write_all(&bytes).await;
                return;
            }
            Reply::Early(_) => {}
            Reply::Paced(pieces) => {
                for (i, piece) in pieces.iter().enumerate() {
                    if i > 0 {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    if stream.write_all(piece).await.is_err() {
                        return;
                    }
                }
            }
            Reply::ThenIdleClose(bytes, after) => {
                let _ = stream.write_all(&bytes).await;
                tokio::time::sleep(after).await;
                return;
            }
        }
    }
}

async fn dataplane_for(endpoint: SocketAddr) -> Dataplane {
    start(one_pool(endpoint)).await
}

fn ok(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nx-backend: scripted\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn request(dp: &Dataplane, method: Method, path: &str, body: Bytes) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(format!("http://{}{path}", dp.http_addr()))
        .header("host", "x")
        .body(Full::new(body))
        .expect("request")
}

/// Sends a raw HTTP/1.1 request to the dataplane and reads until `end`
/// shows up in the answer.
async fn raw(dp: &Dataplane, request: &str, end: &str) -> String {
    let mut stream = TcpStream::connect(dp.http_addr()).await.expect("connect");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut got = Vec::new();
    let _ = tokio::time::timeout(WAIT, async {
        let mut chunk = [0u8; 4096];
        while !String::from_utf8_lossy(&got).contains(end) {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test]
async fn keep_alive_connections_are_reused_and_closed_ones_are_not() {
    let kept = Scripted::start(|_| Reply::Bytes(ok("kept"))).await;
    let dp = dataplane_for(kept.addr).await;
    let http = client();
    for _ in 0..20 {
        let got = send(&http, request(&dp, Method::GET, "/", Bytes::new())).await;
        assert_eq!((got.status, got.text().as_str()), (StatusCode::OK, "kept"));
    }
    assert_eq!(kept.conns(), 1, "20 sequential requests on one connection");
    assert!(kept.seen().iter().all(|s| s.conn == 0 && s.method == "GET"));

    // An endpoint that closes after every response: each request gets a
    // fresh connection and none fails.
    let closing = Scripted::start(|_| {
        Reply::ThenClose(
            b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 6\r\n\r\nclosed".to_vec(),
        )
    })
    .await;
    let dp = dataplane_for(closing.addr).await;
    for _ in 0..20 {
        let got = send(&http, request(&dp, Method::POST, "/", Bytes::from("x"))).await;
        assert_eq!(
            (got.status, got.text().as_str()),
            (StatusCode::OK, "closed")
        );
    }
    assert_eq!(closing.conns(), 20);
}

#[tokio::test]
async fn idle_connections_the_endpoint_closed_are_never_written_to() {
    // The endpoint drops every connection 50 ms after answering; POSTs (not
    // retried) 200 ms apart must each find that out before sending.
    let endpoint =
        Scripted::start(|_| Reply::ThenIdleClose(ok("fresh"), Duration::from_millis(50))).await;
    let dp = dataplane_for(endpoint.addr).await;
    let http = client();
    for i in 0..5 {
        let got = send(&http, request(&dp, Method::POST, "/", Bytes::from("data"))).await;
        assert_eq!(
            (got.status, got.text().as_str()),
            (StatusCode::OK, "fresh"),
            "request {i}: {}",
            got.error
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(endpoint.seen().len(), 5);
    assert_eq!(endpoint.conns(), 5);
}

#[tokio::test]
async fn chunked_responses_keep_their_trailers_and_interim_responses_keep_the_framing() {
    let endpoint = Scripted::start(|req| match req.path.as_str() {
        "/chunked" => Reply::Bytes(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-checksum\r\n\r\n\
              5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nx-checksum: 42\r\n\r\n"
                .to_vec(),
        ),
        _ => Reply::Bytes(
            b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n\r\n\
              HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nafter"
                .to_vec(),
        ),
    })
    .await;
    let dp = dataplane_for(endpoint.addr).await;
    let got = raw(
        &dp,
        "GET /chunked HTTP/1.1\r\nhost: x\r\nte: trailers\r\n\r\n",
        "x-checksum: 42\r\n\r\n",
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
    assert!(got.contains("transfer-encoding: chunked"), "{got}");
    let body = got.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    assert!(body.contains("hello") && body.contains(", world"), "{got}");
    assert!(body.ends_with("0\r\nx-checksum: 42\r\n\r\n"), "{got}");

    let http = client();
    let got = send(&http, request(&dp, Method::GET, "/hints", Bytes::new())).await;
    assert_eq!((got.status, got.text().as_str()), (StatusCode::OK, "after"));
    // Both exchanges on one connection: the framing was followed exactly.
    assert_eq!(endpoint.conns(), 1);
}

/// An endpoint that sends a 103 (with a hop-by-hop field) and a 100
/// before its 200 "after": in one write for `/together`, paced otherwise.
async fn hinting() -> Scripted {
    const HINTS: &[u8] = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\nConnection: keep-alive\r\n\r\n";
    const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
    Scripted::start(|req| match req.path.as_str() {
        "/together" => Reply::Bytes([HINTS, CONTINUE, &ok("after")].concat()),
        _ => Reply::Paced(vec![HINTS.to_vec(), CONTINUE.to_vec(), ok("after")]),
    })
    .await
}

#[tokio::test]
async fn interim_responses_are_forwarded_before_the_final_one() {
    let endpoint = hinting().await;
    let dp = dataplane_for(endpoint.addr).await;
    // Without a body on Sluice's own front end, with one on hyper's path.
    let requests = [
        "GET /together HTTP/1.1\r\nhost: x\r\n\r\n",
        "GET /apart HTTP/1.1\r\nhost: x\r\n\r\n",
        "POST /together HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\nhi",
        "POST /apart HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\nhi",
    ];
    for path in requests {
        let got = raw(&dp, path, "after").await;
        let expected = "HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n\
                        HTTP/1.1 100 Continue\r\n\r\n\
                        HTTP/1.1 200 OK\r\n";
        assert!(got.starts_with(expected), "{path}: {got}");
        assert!(got.ends_with("\r\n\r\nafter"), "{path}: {got}");
    }
    assert_eq!(endpoint.conns(), 1, "one connection served them all");
}

#[tokio::test]
async fn interim_responses_reach_http2_clients_as_headers_before_the_final_one() {
    let endpoint = hinting().await;
    let dp = dataplane_for(endpoint.addr).await;
    // h2c with prior knowledge, on the `h2` crate's client (hyper's drops
    // interim responses).
    let tcp = TcpStream::connect(dp.http_addr()).await.expect("connect");
    let (mut h2, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(connection);
    for (method, path, body) in [
        (Method::GET, "/together", ""),
        (Method::GET, "/apart", ""),
        (Method::POST, "/together", "hi"),
        (Method::POST, "/apart", "hi"),
    ] {
        let req = Request::builder()
            .method(method.clone())
            .uri(format!("http://x{path}"))
            .header("content-length", body.len())
            .body(())
            .expect("request");
        h2 = h2.ready().await.expect("ready");
        let (mut response, mut send) = h2.send_request(req, body.is_empty()).expect("send");
        if !body.is_empty() {
            send.send_data(Bytes::from(body), true).expect("body");
        }
        let mut interim = Vec::new();
        while let Some(head) = std::future::poll_fn(|cx| response.poll_informational(cx)).await {
            let head = head.expect("interim");
            let link = head
                .headers()
                .get("link")
                .map(|v| v.to_str().unwrap_or("").to_string());
            interim.push((head.status().as_u16(), link, head.headers().len()));
        }
        let response = tokio::time::timeout(WAIT, response)
            .await
            .expect("in time")
            .expect("response");
        assert_eq!(
            interim,
            [
                (103, Some("</a.css>; rel=preload".to_string()), 1),
                (100, None, 0)
            ],
            "{method} {path}: both interim responses, in order, without the hop-by-hop field"
        );
        assert_eq!(response.status(), StatusCode::OK, "{method} {path}");
        let mut body = response.into_body();
        let mut got = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.expect("data");
            let _ = body.flow_control().release_capacity(chunk.len());
            got.extend_from_slice(&chunk);
        }
        assert_eq!(got, b"after", "{method} {path}");
    }
    let seen: Vec<_> = endpoint
        .seen()
        .iter()
        .map(|s| (s.method.clone(), s.body_len))
        .collect();
    assert_eq!(
        seen,
        [("GET", 0), ("GET", 0), ("POST", 2), ("POST", 2)].map(|(m, n)| (m.to_string(), n))
    );
}

#[tokio::test]
async fn head_responses_have_no_body_and_close_delimited_ones_are_read_to_the_end() {
    let endpoint = Scripted::start(|req| match (req.method.as_str(), req.path.as_str()) {
        ("HEAD", _) => Reply::Bytes(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n".to_vec()),
        (_, "/old") => Reply::ThenClose(
            b"HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\n\r\nto the very end".to_vec(),
        ),
        _ => Reply::Bytes(ok("after head")),
    })
    .await;
    let dp = dataplane_for(endpoint.addr).await;
    let http = client();
    let got = send(&http, request(&dp, Method::HEAD, "/", Bytes::new())).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.headers["content-length"], "1000");
    assert!(got.body.is_empty());
    // The connection was not left waiting for 1,000 bytes that never come.
    let got = send(&http, request(&dp, Method::GET, "/", Bytes::new())).await;
    assert_eq!(got.text(), "after head");
    assert_eq!(endpoint.conns(), 1);

    let got = send(&http, request(&dp, Method::GET, "/old", Bytes::new())).await;
    assert_eq!(
        (got.status, got.text().as_str()),
        (StatusCode::OK, "to the very end")
    );
}

#[tokio::test]
async fn an_answer_before_the_upload_ends_reaches_the_client() {
    let endpoint = Scripted::start(|_| {
        Reply::Early(
            b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 8\r\nconnection: close\r\n\r\ntoo big\n"
                .to_vec(),
        )
    })
    .await;
    let dp = dataplane_for(endpoint.addr).await;
    let http = client();
    // More than the socket buffers hold: sending it all before reading the
    // answer would never end.
    let upload = Bytes::from(vec![7u8; 64 * 1024 * 1024]);
    let got = send(&http, request(&dp, Method::PUT, "/", upload)).await;
    assert_eq!(
        (got.status, got.text().as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, "too big\n")
    );
    // (The rest of the upload is not sent: the endpoint answered and
    // closes, as Envoy resets such a stream.)
    assert_eq!(endpoint.seen().len(), 1);
}

#[tokio::test]
async fn bad_response_heads_are_502s_and_the_next_request_is_served() {
    let endpoint = Scripted::start(|req| match req.path.as_str() {
        "/huge" => {
            let mut head = b"HTTP/1.1 200 OK\r\nx-big: ".to_vec();
            head.extend(std::iter::repeat_n(b'a', 100 * 1024));
            head.extend_from_slice(b"\r\ncontent-length: 0\r\n\r\n");
            Reply::ThenClose(head)
        }
        "/conflict" => Reply::ThenClose(
            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabcd".to_vec(),
        ),
        "/garbled" => Reply::ThenClose(b"HTTP/1.1 2OO OK\r\n\r\n".to_vec()),
        _ => Reply::Bytes(ok("fine")),
    })
    .await;
    let dp = dataplane_for(endpoint.addr).await;
    let http = client();
    for (path, why) in [
        ("/huge", "response head over"),
        ("/conflict", "conflicting content-length"),
        ("/garbled", "invalid response head"),
    ] {
        // POST: not retried, so the answer is the first attempt's.
        let got = send(&http, request(&dp, Method::POST, path, Bytes::from("x"))).await;
        assert_eq!(
            (got.status, got.error.as_str()),
            (StatusCode::BAD_GATEWAY, "upstream-failed"),
            "{path}"
        );
        assert!(got.text().contains(why), "{path}: {}", got.text());
        let got = send(&http, request(&dp, Method::GET, "/", Bytes::new())).await;
        assert_eq!((got.status, got.text().as_str()), (StatusCode::OK, "fine"));
    }
}
