//! One request, one authority: the host Sluice routes on is the one the
//! backend gets in `Host` and in `X-Forwarded-Host`, over HTTP/1.1 and
//! HTTP/2; a request with two `Host` headers or an invalid one is refused
//! with 400 and its connection closed. Checked on the bytes a backend
//! receives.

mod support;

use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use sluice_dataplane::Source;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Pool `a` for host `a.example`, pool `b` for `b.example`.
fn two_hosts(a: &Backend, b: &Backend) -> Source {
    Source::Static(table(&format!(
        "pools:\n  - {{name: a, hosts: [a.example], endpoints: [{{address: {}}}]}}\n  - {{name: b, hosts: [b.example], endpoints: [{{address: {}}}]}}\n",
        a.addr, b.addr
    )))
}

/// Sends `raw` on a new connection and reads until the proxy closes it
/// (within [`WAIT`]): everything that came back.
async fn until_closed(addr: SocketAddr, raw: &str) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(raw.as_bytes()).await.expect("write");
    let mut got = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut got))
        .await
        .expect("the proxy closed the connection in time")
        .expect("read");
    String::from_utf8_lossy(&got).into_owned()
}

/// The lines of the `/headers` answer naming `name`.
fn lines<'a>(body: &'a str, name: &str) -> Vec<&'a str> {
    body.lines()
        .filter(|l| l.starts_with(&format!("{name}: ")))
        .collect()
}

#[tokio::test]
async fn two_or_invalid_host_headers_are_refused_and_the_connection_closes() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let dp = start(two_hosts(&a, &b)).await;
    let requests = [
        // Served by Sluice's own front end (no body)…
        "GET /headers HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\nGET / HTTP/1.1\r\nHost: a.example\r\n\r\n",
        // …and by hyper (a body).
        "POST /headers HTTP/1.1\r\nHost: b.example\r\nHost: a.example\r\nContent-Length: 2\r\n\r\nhiGET / HTTP/1.1\r\nHost: a.example\r\n\r\n",
        "GET /headers HTTP/1.1\r\nHost: a.example@b.example\r\n\r\n",
        "GET /headers HTTP/1.1\r\nHost: a.example b.example\r\n\r\n",
        "POST /headers HTTP/1.1\r\nHost: a.example:80x\r\nContent-Length: 0\r\n\r\n",
    ];
    for raw in requests {
        let got = until_closed(dp.http_addr(), raw).await;
        assert!(got.starts_with("HTTP/1.1 400 "), "{raw:?}: {got}");
        assert_eq!(
            got.matches("HTTP/1.1 ").count(),
            1,
            "one answer, then closed: {got}"
        );
        assert!(
            got.to_ascii_lowercase().contains("connection: close"),
            "{got}"
        );
    }
    assert_eq!(
        (
            a.connections.load(std::sync::atomic::Ordering::SeqCst),
            b.connections.load(std::sync::atomic::Ordering::SeqCst)
        ),
        (0, 0),
        "no backend saw any of them"
    );
}

#[tokio::test]
async fn an_absolute_form_target_names_the_host_routed_and_forwarded() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let dp = start(two_hosts(&a, &b)).await;
    for raw in [
        "GET http://a.example/headers HTTP/1.1\r\nHost: b.example\r\nConnection: close\r\n\r\n",
        "POST http://a.example/headers HTTP/1.1\r\nHost: b.example\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi",
    ] {
        let got = until_closed(dp.http_addr(), raw).await;
        assert!(got.starts_with("HTTP/1.1 200 "), "{got}");
        assert!(got.contains("x-backend: a"), "routed by the target: {got}");
        let body = got.split("\r\n\r\n").nth(1).unwrap_or("");
        assert_eq!(lines(body, "host"), ["host: a.example"], "{body}");
        assert_eq!(
            lines(body, "x-forwarded-host"),
            ["x-forwarded-host: a.example"],
            "{body}"
        );
    }
}

/// Sends `req` over HTTP/2 (prior knowledge) to the proxy at `proxy`:
/// the status and the body. `:authority` is the URI's.
async fn h2(proxy: SocketAddr, req: Request<Full<Bytes>>) -> (StatusCode, String) {
    let (mut sender, conn) = hyper_h2c(proxy).await;
    let answer = async {
        let resp = sender.send_request(req).await.expect("response");
        let status = resp.status();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    };
    let got = tokio::time::timeout(WAIT, answer)
        .await
        .expect("answered in time");
    conn.abort();
    got
}

#[tokio::test]
async fn over_http2_the_authority_is_routed_and_forwarded_and_a_differing_host_refused() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let dp = start(two_hosts(&a, &b)).await;
    let req = |host: Option<&str>| {
        let mut req = Request::get("http://a.example/headers");
        if let Some(host) = host {
            req = req.header("host", host);
        }
        req.body(Full::default()).expect("request")
    };
    for host in [None, Some("a.example")] {
        let (status, body) = h2(dp.http_addr(), req(host)).await;
        assert_eq!(status, StatusCode::OK, "{host:?}: {body}");
        assert_eq!(lines(&body, "host"), ["host: a.example"], "{body}");
        assert_eq!(
            lines(&body, "x-forwarded-host"),
            ["x-forwarded-host: a.example"],
            "{body}"
        );
    }
    let (status, body) = h2(dp.http_addr(), req(Some("b.example"))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(b.connections.load(std::sync::atomic::Ordering::SeqCst), 0);
}
