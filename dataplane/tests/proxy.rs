//! The proxy with real loopback backends: which backend answers, what it
//! receives, what comes back.

mod support;

use std::collections::BTreeMap;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use sluice_dataplane::Source;
use support::*;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

async fn count_backends(
    client: &HttpClient,
    dp: &sluice_dataplane::Dataplane,
    n: usize,
) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        let got = proxy_get(client, dp, "any.example.com", "/").await;
        assert_eq!(got.status, StatusCode::OK, "{}", got.text());
        assert_eq!(
            got.text(),
            got.backend,
            "body and x-backend name the same backend"
        );
        *seen.entry(got.backend).or_default() += 1;
    }
    seen
}

#[tokio::test]
async fn round_robin_spreads_30_requests_10_per_backend() {
    let (a, b, c) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    );
    let dp = start(Source::Static(table(&format!(
        "pools:\n  - name: rr\n    algorithm: RoundRobin\n    endpoints: [{{address: {}}}, {{address: {}}}, {{address: {}}}]\n",
        a.addr, b.addr, c.addr
    ))))
    .await;
    let seen = count_backends(&client(), &dp, 30).await;
    assert_eq!(
        seen,
        BTreeMap::from([("a".into(), 10), ("b".into(), 10), ("c".into(), 10)])
    );
}

#[tokio::test]
async fn weights_3_2_1_split_600_requests_300_200_100() {
    let (a, b, c) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    );
    let dp = start(Source::Static(table(&format!(
        "pools:\n  - name: w\n    algorithm: WeightedRoundRobin\n    endpoints:\n      - {{address: {}, weight: 3}}\n      - {{address: {}, weight: 2}}\n      - {{address: {}}}\n",
        a.addr, b.addr, c.addr
    ))))
    .await;
    let seen = count_backends(&client(), &dp, 600).await;
    assert_eq!(
        seen,
        BTreeMap::from([("a".into(), 300), ("b".into(), 200), ("c".into(), 100)])
    );
}

#[tokio::test]
async fn host_and_longest_prefix_pick_the_pool() {
    let (api, web, other) = (
        Backend::start("api").await,
        Backend::start("web").await,
        Backend::start("other").await,
    );
    let routes = format!(
        "pools:
  - {{name: api, hosts: [api.example.com], pathPrefix: /v1, endpoints: [{{address: {}}}]}}
  - {{name: web, hosts: ['*.example.com'], pathPrefix: /, endpoints: [{{address: {}}}]}}
  - {{name: other, endpoints: [{{address: {}}}]}}
",
        api.addr, web.addr, other.addr
    );
    let dp = start(Source::Static(table(&routes))).await;
    let http = client();
    for (host, path, want) in [
        ("api.example.com", "/v1/users", "api"),
        ("API.Example.com:8080", "/v1", "api"),
        ("api.example.com", "/v2", "web"),
        ("api.example.com", "/v10", "web"),
        ("shop.example.com", "/", "web"),
        ("example.com", "/v1", "other"),
        ("elsewhere.org", "/anything", "other"),
    ] {
        let got = proxy_get(&http, &dp, host, path).await;
        assert_eq!(
            (got.status, got.backend.as_str()),
            (StatusCode::OK, want),
            "{host}{path}"
        );
    }

    // Without the catch-all pool, an unknown host is a 404 that says why.
    let no_catch_all = routes
        .lines()
        .filter(|l| !l.contains("name: other"))
        .collect::<Vec<_>>()
        .join("\n");
    let dp = start(Source::Static(table(&no_catch_all))).await;
    let got = proxy_get(&http, &dp, "elsewhere.org", "/x").await;
    assert_eq!(
        (got.status, got.error.as_str()),
        (StatusCode::NOT_FOUND, "no-route")
    );
    assert_eq!(
        got.text(),
        "no pool matches host \"elsewhere.org\" path \"/x\"\n"
    );
}

#[tokio::test]
async fn no_ready_endpoint_is_503_and_a_failing_endpoint_is_502() {
    let dead = closed_port().await;
    let garbage = garbage_backend().await;
    let dp = start(Source::Static(table(&format!(
        "pools:
  - {{name: empty, hosts: [empty.test], endpoints: []}}
  - {{name: notready, hosts: [notready.test], endpoints: [{{address: 127.0.0.1:9, ready: false}}]}}
  - {{name: dead, hosts: [dead.test], endpoints: [{{address: {dead}}}]}}
  - {{name: garbage, hosts: [garbage.test], endpoints: [{{address: {garbage}}}]}}
"
    ))))
    .await;
    let http = client();
    for pool in ["empty", "notready"] {
        let got = proxy_get(&http, &dp, &format!("{pool}.test"), "/").await;
        assert_eq!(
            (got.status, got.error.as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, "no-endpoints")
        );
        assert_eq!(
            got.text(),
            format!("pool \"{pool}\" has no ready endpoints\n")
        );
    }
    let got = proxy_get(&http, &dp, "dead.test", "/").await;
    assert_eq!(
        (got.status, got.error.as_str()),
        (StatusCode::BAD_GATEWAY, "upstream-failed")
    );
    let body = got.text();
    assert!(
        body.starts_with(&format!("endpoint {dead} failed: ")) && body.contains("refused"),
        "{body}"
    );

    let got = proxy_get(&http, &dp, "garbage.test", "/").await;
    assert_eq!(
        (got.status, got.error.as_str()),
        (StatusCode::BAD_GATEWAY, "upstream-failed")
    );
    assert!(
        got.text()
            .starts_with(&format!("endpoint {garbage} failed: ")),
        "{}",
        got.text()
    );
}

#[tokio::test]
async fn hop_by_hop_headers_stay_on_their_hop_and_forwarding_headers_are_set() {
    let b = Backend::start("b").await;
    let dp = start(one_pool(b.addr)).await;
    let req = Request::get(format!("http://{}/headers", dp.http_addr()))
        .header("host", "shop.example.com")
        .header("connection", "x-custom")
        .header("x-custom", "do-not-forward")
        .header("proxy-authorization", "Basic abc")
        .header("te", "trailers")
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-kept", "yes")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let got = send(&client(), req).await;
    let seen = got.text();
    let lines: Vec<&str> = seen.lines().collect();
    for want in [
        "host: shop.example.com",
        "x-forwarded-for: 203.0.113.9, 127.0.0.1",
        "x-forwarded-proto: http",
        "x-forwarded-host: shop.example.com",
        "x-kept: yes",
    ] {
        assert!(
            lines.contains(&want),
            "backend did not see {want:?}:\n{seen}"
        );
    }
    for gone in ["x-custom", "proxy-authorization", "te:"] {
        assert!(!seen.contains(gone), "backend saw {gone:?}:\n{seen}");
    }

    // And on the way back.
    let got = proxy_get(&client(), &dp, "shop.example.com", "/hop").await;
    assert_eq!(
        got.headers.get("x-kept").map(|v| v.as_bytes()),
        Some(&b"yes"[..])
    );
    assert!(
        got.headers.get("x-hop-secret").is_none(),
        "{:?}",
        got.headers
    );
    assert!(got.headers.get("keep-alive").is_none(), "{:?}", got.headers);
}

#[tokio::test]
async fn an_absolute_form_target_routes_and_replaces_the_host_header() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let b = Backend::start("b").await;
    let dp = start(one_pool_for("shop.example.com", b.addr)).await;
    let mut stream = TcpStream::connect(dp.http_addr()).await.expect("connect");
    stream
        .write_all(
            b"GET http://shop.example.com/headers HTTP/1.1\r\nHost: other.example.com\r\nConnection: close\r\n\r\n",
        )
        .await
        .expect("write");
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut answer))
        .await
        .expect("answer in time")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let lines: Vec<&str> = answer.lines().collect();
    for want in [
        "host: shop.example.com",
        "x-forwarded-host: shop.example.com",
    ] {
        assert!(
            lines.contains(&want),
            "backend did not see {want:?}:\n{answer}"
        );
    }
    assert!(!answer.contains("other.example.com"), "{answer}");
}

#[tokio::test]
async fn http2_prior_knowledge_clients_are_served_with_their_authority_as_host() {
    let b = Backend::start("b").await;
    let dp = start(one_pool_for("h2.example.com", b.addr)).await;
    // Over a connection to the proxy, with the virtual host in :authority.
    let (mut sender, _conn) = hyper_h2c(dp.http_addr()).await;
    let req = Request::get("http://h2.example.com/headers")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let resp = tokio::time::timeout(WAIT, sender.send_request(req))
        .await
        .expect("answered in time")
        .expect("response");
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let backend = resp.headers().get("x-backend").cloned();
    assert_eq!(
        (resp.status(), backend.as_ref().map(|v| v.as_bytes())),
        (StatusCode::OK, Some(&b"b"[..]))
    );
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    let seen = String::from_utf8_lossy(&body);
    assert!(
        seen.lines().any(|l| l == "host: h2.example.com"),
        "the backend sees the authority as Host:\n{seen}"
    );
}

#[tokio::test]
async fn an_8_mib_body_goes_up_intact_and_a_chunked_one_comes_back() {
    let b = Backend::start("b").await;
    let dp = start(one_pool(b.addr)).await;
    let http = client();
    let payload: Vec<u8> = (0..8 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let req = Request::post(format!("http://{}/echo", dp.http_addr()))
        .header("host", "x")
        .body(Full::new(Bytes::from(payload.clone())))
        .expect("request");
    let got = send(&http, req).await;
    assert_eq!(got.status, StatusCode::OK);
    assert!(
        got.body == payload,
        "echoed body differs ({} bytes back)",
        got.body.len()
    );

    let got = proxy_get(&http, &dp, "x", "/chunked").await;
    let want: Vec<u8> = (0..64u8).flat_map(|i| vec![i; 1024]).collect();
    assert!(
        got.body == want,
        "chunked body differs ({} bytes)",
        got.body.len()
    );
}

#[tokio::test]
async fn bodies_stream_through_without_being_buffered() {
    let b = Backend::start("b").await;
    let dp = start(one_pool(b.addr)).await;
    let stream = TcpStream::connect(dp.http_addr()).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let frame = |mut body: hyper::body::Incoming| async move {
        let f = tokio::time::timeout(WAIT, body.frame())
            .await
            .expect("a frame in time");
        let data = f
            .expect("not the end")
            .expect("frame")
            .into_data()
            .expect("data");
        (data, body)
    };

    // The response's first chunk arrives while the backend still holds the rest.
    let resp = tokio::time::timeout(
        WAIT,
        sender.send_request(
            Request::get("/stream")
                .header("host", "x")
                .body(
                    Full::new(Bytes::new())
                        .map_err(|e| match e {})
                        .boxed_unsync(),
                )
                .expect("request"),
        ),
    )
    .await
    .expect("head in time")
    .expect("response");
    let (first, body) = frame(resp.into_body()).await;
    assert_eq!(first, "first\n");
    b.gate.open();
    let rest = tokio::time::timeout(WAIT, body.collect())
        .await
        .expect("rest in time")
        .expect("body")
        .to_bytes();
    assert_eq!(rest, "second\n");

    // Request chunks reach the backend (and echo back) one by one, each
    // before the client sends the next.
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, hyper::Error>>(1);
    let upload = StreamBody::new(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|f| (f, rx))
    }));
    let resp = tokio::time::timeout(WAIT, async {
        let sent = sender.ready().await;
        sent.expect("connection reusable");
        let pending = sender.send_request(
            Request::post("/echo")
                .header("host", "x")
                .body(upload.boxed_unsync())
                .expect("request"),
        );
        tx.send(Ok(Frame::data(Bytes::from("one"))))
            .await
            .expect("send");
        pending.await
    })
    .await
    .expect("head in time")
    .expect("response");
    let (one, body) = frame(resp.into_body()).await;
    assert_eq!(one, "one");
    tx.send(Ok(Frame::data(Bytes::from("two"))))
        .await
        .expect("send");
    let (two, body) = frame(body).await;
    assert_eq!(two, "two");
    drop(tx);
    let rest = tokio::time::timeout(WAIT, body.collect())
        .await
        .expect("end in time")
        .expect("body")
        .to_bytes();
    assert!(rest.is_empty());
}

#[tokio::test]
async fn keep_alive_reuses_connections_on_both_sides() {
    let b = Backend::start("b").await;
    let dp = start(one_pool(b.addr)).await;
    // One client connection carries every request.
    let stream = TcpStream::connect(dp.http_addr()).await.expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream))
            .await
            .expect("handshake");
    let conn = tokio::spawn(conn);
    let mut upstream_conns = Vec::new();
    for i in 0..20 {
        let exchange = async {
            sender.ready().await.expect("connection still open");
            let resp = sender
                .send_request(
                    Request::get("/conn")
                        .header("host", "x")
                        .body(Full::new(Bytes::new()))
                        .expect("request"),
                )
                .await
                .expect("response");
            assert_eq!(resp.status(), StatusCode::OK, "request {i}");
            resp.into_body().collect().await.expect("body").to_bytes()
        };
        let body = tokio::time::timeout(WAIT, exchange)
            .await
            .expect("answered in time");
        upstream_conns.push(String::from_utf8_lossy(&body).into_owned());
    }
    assert!(!conn.is_finished(), "the client connection stayed open");
    // The proxy pooled its upstream connection too: the backend saw far
    // fewer connections than requests (a reused connection may race with
    // the next request now and then, so not necessarily exactly one).
    upstream_conns.dedup();
    assert!(
        upstream_conns.len() <= 3,
        "upstream connections per request: {upstream_conns:?}"
    );
}

/// The pieces a raw backend writes a body in: below, at and above the
/// size the front end copies behind a head, so that both ways of writing
/// a frame run, in every order.
const PIECES: [usize; 8] = [1, 4096, 4097, 70_000, 3, 300_000, 1_000_000, 17];

/// Byte `i` of a test body.
fn body_byte(i: usize) -> u8 {
    (i % 251) as u8
}

/// A backend that answers `/len` with a `Content-Length` body and anything
/// else with a chunked one (a chunk per piece), both written piece by
/// piece, flushed in between.
async fn pieces_backend() -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                loop {
                    let mut b = [0u8; 4096];
                    let n = s.read(&mut b).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    head.extend_from_slice(&b[..n]);
                    let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let chunked = !head.starts_with(b"GET /len ");
                    head.drain(..end + 4);
                    let total: usize = PIECES.iter().sum();
                    let framing = if chunked {
                        "transfer-encoding: chunked".to_string()
                    } else {
                        format!("content-length: {total}")
                    };
                    let resp = format!("HTTP/1.1 200 OK\r\n{framing}\r\n\r\n");
                    if s.write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                    let mut at = 0;
                    for piece in PIECES {
                        let data: Vec<u8> = (at..at + piece).map(body_byte).collect();
                        at += piece;
                        let mut out = Vec::new();
                        if chunked {
                            out.extend_from_slice(format!("{piece:x}\r\n").as_bytes());
                        }
                        out.extend_from_slice(&data);
                        if chunked {
                            out.extend_from_slice(b"\r\n");
                        }
                        if s.write_all(&out).await.is_err() || s.flush().await.is_err() {
                            return;
                        }
                        tokio::task::yield_now().await;
                    }
                    if chunked && s.write_all(b"0\r\n\r\n").await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn big_responses_come_back_intact_in_frames_of_any_size() {
    let dp = start(one_pool(pieces_backend().await)).await;
    let http = client();
    let total: usize = PIECES.iter().sum();
    let want: Vec<u8> = (0..total).map(body_byte).collect();
    // Twice each, on the client's kept-alive connection: what one response
    // left in the buffers must not leak into the next.
    for path in ["/len", "/chunked", "/len", "/chunked"] {
        let got = proxy_get(&http, &dp, "x", path).await;
        assert_eq!(got.status, StatusCode::OK, "{path}");
        assert!(
            got.body == want,
            "{path}: body differs ({} bytes of {total})",
            got.body.len()
        );
    }
}
