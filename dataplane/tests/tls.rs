//! TLS termination on the HTTPS listener: the certificate a client gets is
//! chosen by SNI from the table, HTTP/2 is negotiated by ALPN, pools with a
//! client CA require a client certificate, and a new certificate in a new
//! table is served without a restart. Certificates are generated per test.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use sluice_dataplane::{Dataplane, Source};
use support::*;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// A certificate authority for one test.
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn new() -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("CA certificate");
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A certificate for `names` (server or client), PEM.
    fn issue(&self, names: &[&str]) -> Leaf {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let params = CertificateParams::new(names).expect("params");
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("certificate");
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }

    fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(self.pem.as_bytes()).expect("CA PEM"))
            .expect("CA");
        roots
    }
}

struct Leaf {
    cert: String,
    key: String,
    der: Vec<u8>,
}

/// A YAML double-quoted scalar.
fn q(s: &str) -> String {
    serde_json::to_string(s).expect("json string")
}

fn tls_pool(
    name: &str,
    hosts: &str,
    backend: SocketAddr,
    leaf: &Leaf,
    client_ca: Option<&Ca>,
) -> String {
    let ca = client_ca
        .map(|ca| format!(", clientCA: {}", q(&ca.pem)))
        .unwrap_or_default();
    format!(
        "  - name: {name}\n    hosts: {hosts}\n    endpoints: [{{address: {backend}}}]\n    tls: {{certificate: {}, privateKey: {}{ca}}}\n",
        q(&leaf.cert),
        q(&leaf.key)
    )
}

async fn start_https(source: Source) -> Dataplane {
    let mut opts = options(source);
    opts.https = Some("127.0.0.1:0".parse().expect("addr"));
    Dataplane::start(opts).await.expect("dataplane starts")
}

fn https_addr(dp: &Dataplane) -> SocketAddr {
    dp.https_addr().expect("an HTTPS listener")
}

/// A TLS connection to `addr` naming `sni`, trusting `ca`, offering
/// `alpn`, presenting `client` when given.
async fn connect(
    addr: SocketAddr,
    sni: &str,
    ca: &Ca,
    alpn: &[&[u8]],
    client: Option<&Leaf>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(ca.roots());
    let mut config = match client {
        None => builder.with_no_client_auth(),
        Some(leaf) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(leaf.cert.as_bytes()).expect("cert")],
                PrivateKeyDer::from_pem_slice(leaf.key.as_bytes()).expect("key"),
            )
            .expect("client cert"),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let name = ServerName::try_from(sni.to_string()).expect("server name");
    let tcp = TcpStream::connect(addr).await?;
    tokio::time::timeout(
        WAIT,
        TlsConnector::from(Arc::new(config)).connect(name, tcp),
    )
    .await
    .map_err(|_| std::io::Error::other("handshake timed out"))?
}

/// The certificate the server presented.
fn peer_cert(stream: &TlsStream<TcpStream>) -> Vec<u8> {
    let certs = stream
        .get_ref()
        .1
        .peer_certificates()
        .expect("a certificate");
    certs[0].to_vec()
}

/// An HTTP/1.1 connection over `stream`.
struct H1(hyper::client::conn::http1::SendRequest<Empty<Bytes>>);

impl H1 {
    async fn over(stream: TlsStream<TcpStream>) -> H1 {
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("http1 handshake");
        tokio::spawn(conn);
        H1(sender)
    }

    /// `GET path` with `Host: host`: status, `x-backend`, body; `Err` when
    /// the connection fails.
    async fn get(
        &mut self,
        host: &str,
        path: &str,
    ) -> Result<(StatusCode, String, String), hyper::Error> {
        let exchange = async {
            self.0.ready().await?;
            let req = Request::get(path)
                .header("host", host)
                .body(Empty::new())
                .expect("request");
            let resp = self.0.send_request(req).await?;
            let status = resp.status();
            let backend = resp
                .headers()
                .get("x-backend")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let body = resp.into_body().collect().await?.to_bytes();
            Ok((status, backend, String::from_utf8_lossy(&body).into_owned()))
        };
        tokio::time::timeout(WAIT, exchange)
            .await
            .expect("answered in time")
    }
}

#[tokio::test]
async fn sni_picks_each_pool_s_certificate_and_requests_route_by_host() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let ca = Ca::new();
    let (cert_a, cert_b) = (ca.issue(&["a.example.com"]), ca.issue(&["*.b.example.com"]));
    let yaml = format!(
        "pools:\n{}{}",
        tls_pool("a", "[a.example.com]", a.addr, &cert_a, None),
        tls_pool("b", "[\"*.b.example.com\"]", b.addr, &cert_b, None)
    );
    let dp = start_https(Source::Static(table(&yaml))).await;
    let addr = https_addr(&dp);

    let stream = connect(addr, "a.example.com", &ca, &[], None)
        .await
        .expect("handshake");
    assert!(
        peer_cert(&stream) == cert_a.der,
        "a.example.com gets a's certificate"
    );
    let mut h1 = H1::over(stream).await;
    let (status, backend, headers) = h1.get("a.example.com", "/headers").await.expect("answer");
    assert_eq!((status, backend.as_str()), (StatusCode::OK, "a"));
    assert!(
        headers.lines().any(|l| l == "x-forwarded-proto: https"),
        "the endpoint learns the request came over TLS:\n{headers}"
    );

    let stream = connect(addr, "x.b.example.com", &ca, &[], None)
        .await
        .expect("handshake");
    assert!(
        peer_cert(&stream) == cert_b.der,
        "the wildcard pool's certificate"
    );
    let got = H1::over(stream)
        .await
        .get("x.b.example.com", "/")
        .await
        .expect("answer");
    assert_eq!((got.0, got.1.as_str()), (StatusCode::OK, "b"));

    // Two certificates and no catch-all: a name without one is refused.
    assert!(
        connect(addr, "c.example.com", &ca, &[], None)
            .await
            .is_err()
    );
    // The plain listener still serves the same pools.
    let got = proxy_get(&client(), &dp, "a.example.com", "/headers").await;
    assert!(got.text().lines().any(|l| l == "x-forwarded-proto: http"));
}

#[tokio::test]
async fn alpn_negotiates_http2_or_http1() {
    let b = Backend::start("b").await;
    let ca = Ca::new();
    let leaf = ca.issue(&["h2.example.com"]);
    let yaml = format!(
        "pools:\n{}",
        tls_pool("p", "[h2.example.com]", b.addr, &leaf, None)
    );
    let dp = start_https(Source::Static(table(&yaml))).await;

    let stream = connect(
        https_addr(&dp),
        "h2.example.com",
        &ca,
        &[b"h2", b"http/1.1"],
        None,
    )
    .await
    .expect("handshake");
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    let req = Request::get("https://h2.example.com/headers")
        .body(Empty::<Bytes>::new())
        .expect("request");
    let resp = tokio::time::timeout(WAIT, sender.send_request(req))
        .await
        .expect("answered in time")
        .expect("response");
    assert_eq!(
        (resp.version(), resp.status()),
        (Version::HTTP_2, StatusCode::OK)
    );
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    let seen = String::from_utf8_lossy(&body);
    assert!(
        seen.lines().any(|l| l == "host: h2.example.com"),
        "routed by :authority, which the endpoint sees as Host:\n{seen}"
    );

    let stream = connect(https_addr(&dp), "h2.example.com", &ca, &[b"http/1.1"], None)
        .await
        .expect("handshake");
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let got = H1::over(stream)
        .await
        .get("h2.example.com", "/")
        .await
        .expect("answer");
    assert_eq!((got.0, got.1.as_str()), (StatusCode::OK, "b"));
}

#[tokio::test]
async fn a_pool_with_a_client_ca_requires_a_certificate_it_signed() {
    let (secure, open) = (Backend::start("secure").await, Backend::start("open").await);
    let (server_ca, client_ca, other_ca) = (Ca::new(), Ca::new(), Ca::new());
    let yaml = format!(
        "pools:\n{}{}",
        tls_pool(
            "secure",
            "[secure.example.com]",
            secure.addr,
            &server_ca.issue(&["secure.example.com"]),
            Some(&client_ca)
        ),
        tls_pool(
            "open",
            "[open.example.com]",
            open.addr,
            &server_ca.issue(&["open.example.com"]),
            None
        )
    );
    let dp = start_https(Source::Static(table(&yaml))).await;
    let addr = https_addr(&dp);
    let request = async |client: Option<&Leaf>| {
        let stream = connect(addr, "secure.example.com", &server_ca, &[], client).await?;
        H1::over(stream)
            .await
            .get("secure.example.com", "/")
            .await
            .map_err(std::io::Error::other)
    };

    // No certificate, or one from another CA: refused (during the
    // handshake, or at the first read under TLS 1.3).
    assert!(request(None).await.is_err(), "no client certificate");
    let stranger = other_ca.issue(&["client"]);
    assert!(
        request(Some(&stranger)).await.is_err(),
        "a certificate from another CA"
    );
    // Signed by the pool's client CA: served.
    let member = client_ca.issue(&["client"]);
    let got = request(Some(&member)).await.expect("served");
    assert_eq!((got.0, got.1.as_str()), (StatusCode::OK, "secure"));

    // The open pool asks for no certificate...
    let stream = connect(addr, "open.example.com", &server_ca, &[], None)
        .await
        .expect("handshake");
    let mut h1 = H1::over(stream).await;
    let got = h1.get("open.example.com", "/").await.expect("answer");
    assert_eq!((got.0, got.1.as_str()), (StatusCode::OK, "open"));
    // ...and its connections cannot reach the secure pool by Host, nor can
    // plain HTTP.
    let got = h1.get("secure.example.com", "/").await.expect("answer");
    assert_eq!(got.0, StatusCode::MISDIRECTED_REQUEST);
    let got = proxy_get(&client(), &dp, "secure.example.com", "/").await;
    assert_eq!(
        (got.status, got.error.as_str()),
        (StatusCode::MISDIRECTED_REQUEST, "client-cert-required")
    );
}

#[tokio::test]
async fn a_new_certificate_is_served_to_new_connections_without_a_restart() {
    let b = Backend::start("b").await;
    let ca = Ca::new();
    let (old, new) = (
        ca.issue(&["shop.example.com", "127.0.0.1"]),
        ca.issue(&["shop.example.com", "127.0.0.1"]),
    );
    let dir = temp_dir("tls-swap");
    let path = dir.join("routes.yaml");
    let write = |leaf: &Leaf| {
        let yaml = format!(
            "pools:\n{}",
            tls_pool("shop", "[shop.example.com]", b.addr, leaf, None)
        );
        std::fs::write(&path, yaml).expect("write routes");
    };
    write(&old);
    let dp = start_https(Source::File(path.clone())).await;
    let addr = https_addr(&dp);

    let stream = connect(addr, "shop.example.com", &ca, &[], None)
        .await
        .expect("handshake");
    assert!(peer_cert(&stream) == old.der);
    let mut kept = H1::over(stream).await;
    assert_eq!(
        kept.get("shop.example.com", "/").await.expect("answer").0,
        StatusCode::OK
    );
    // The only certificate is also the one for clients that send no SNI.
    let stream = connect(addr, "127.0.0.1", &ca, &[], None)
        .await
        .expect("handshake without SNI");
    assert!(peer_cert(&stream) == old.der);

    write(&new);
    eventually("new connections to get the new certificate", async || {
        let stream = connect(addr, "shop.example.com", &ca, &[], None).await;
        stream.is_ok_and(|s| peer_cert(&s) == new.der)
    })
    .await;
    // The connection opened before keeps working.
    let got = kept
        .get("shop.example.com", "/")
        .await
        .expect("old connection still serves");
    assert_eq!((got.0, got.1.as_str()), (StatusCode::OK, "b"));

    // A file with a broken certificate is rejected as a whole; the last
    // good certificate stays.
    std::fs::write(
        &path,
        format!(
            "pools:\n  - {{name: shop, hosts: [shop.example.com], endpoints: [{{address: {}}}], tls: {{certificate: broken, privateKey: broken}}}}\n",
            b.addr
        ),
    )
    .expect("write");
    let http = client();
    eventually("the broken file to be reported", async || {
        let routes = admin_get(&http, &dp, "/debug/routes").await.text();
        routes.contains("pool \\\"shop\\\": tls")
    })
    .await;
    let stream = connect(addr, "shop.example.com", &ca, &[], None)
        .await
        .expect("handshake");
    assert!(peer_cert(&stream) == new.der);
}

#[tokio::test]
async fn certificate_files_rewritten_in_place_are_picked_up() {
    let b = Backend::start("b").await;
    let ca = Ca::new();
    let (old, new) = (
        ca.issue(&["files.example.com"]),
        ca.issue(&["files.example.com"]),
    );
    let dir = temp_dir("tls-files");
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    let write = |leaf: &Leaf| {
        std::fs::write(&cert, &leaf.cert).expect("write cert");
        std::fs::write(&key, &leaf.key).expect("write key");
    };
    write(&old);
    let yaml = format!(
        "pools:\n  - {{name: files, hosts: [files.example.com], endpoints: [{{address: {}}}], tls: {{certFile: {}, keyFile: {}}}}}\n",
        b.addr,
        q(&cert.display().to_string()),
        q(&key.display().to_string())
    );
    let dp = start_https(Source::Static(table(&yaml))).await;
    let addr = https_addr(&dp);
    let stream = connect(addr, "files.example.com", &ca, &[], None)
        .await
        .expect("handshake");
    assert!(peer_cert(&stream) == old.der);

    // A renewal writes the files over the old ones; the table is unchanged.
    // (First a pause, so that the dataplane's certificate follower, which
    // reads the files when it starts, has started: what picks the new
    // files up is its periodic re-read.)
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    write(&new);
    eventually("the renewed certificate to be served", async || {
        let stream = connect(addr, "files.example.com", &ca, &[], None).await;
        stream.is_ok_and(|s| peer_cert(&s) == new.der)
    })
    .await;
    let got = H1::over(
        connect(addr, "files.example.com", &ca, &[], None)
            .await
            .expect("handshake"),
    )
    .await
    .get("files.example.com", "/")
    .await
    .expect("answer");
    assert_eq!((got.0, got.1.as_str()), (StatusCode::OK, "b"));
}

/// A dataplane serving `slow.example.com` over TLS with a head deadline of
/// 200 ms, with the CA that signed its certificate and its backend.
async fn with_short_head_deadline() -> (Dataplane, Ca, Backend) {
    let b = Backend::start("b").await;
    let ca = Ca::new();
    let leaf = ca.issue(&["slow.example.com"]);
    let yaml = format!(
        "pools:\n{}",
        tls_pool("p", "[slow.example.com]", b.addr, &leaf, None)
    );
    let mut opts = options(Source::Static(table(&yaml)));
    opts.https = Some("127.0.0.1:0".parse().expect("addr"));
    opts.limits.header_read_timeout = std::time::Duration::from_millis(200);
    let dp = Dataplane::start(opts).await.expect("starts");
    (dp, ca, b)
}

#[tokio::test]
async fn a_stalled_request_head_over_tls_gets_408() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (dp, ca, _b) = with_short_head_deadline().await;
    let mut stream = connect(
        https_addr(&dp),
        "slow.example.com",
        &ca,
        &[b"http/1.1"],
        None,
    )
    .await
    .expect("handshake");
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: slow.example.com\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    // The proxy closes without close_notify: the read may end in an error
    // after the answer.
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut answer))
        .await
        .expect("closed in time");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
}

/// After TLS chose `h2` by ALPN, the client owes the HTTP/2 preface, and
/// the head deadline bounds it as it bounds an HTTP/1.1 head: a client that
/// sends nothing is closed on (until 2026-12-07 it held its connection for
/// as long as it wanted; the HTTP/2 idle timeout counts from the preface).
#[tokio::test]
async fn a_client_that_owes_the_http2_preface_after_tls_is_closed_on() {
    use tokio::io::AsyncReadExt;
    // The HTTP/2 idle timeout (the default) is not what closes it.
    assert!(sluice_dataplane::front::listener::HTTP2_IDLE_TIMEOUT > WAIT);
    let (dp, ca, _b) = with_short_head_deadline().await;
    let mut stream = connect(https_addr(&dp), "slow.example.com", &ca, &[b"h2"], None)
        .await
        .expect("handshake");
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let mut got = Vec::new();
    // The proxy closes without close_notify: the read may end in an error
    // after what it sent.
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut got))
        .await
        .expect("closed in time");
    // What came before the close: the server's side of the handshake, its
    // SETTINGS (type 4) on stream 0.
    let (first, _) = h2_frame_at(&got).expect("a whole frame came first");
    assert_eq!((first.kind, first.stream), (4, 0), "{got:?}");
}

/// A Gateway's HTTPS route brings its listener's certificate, and a route
/// limited to one listener is not served on the other: the HTTP side of
/// the host redirects, the HTTPS side proxies.
#[tokio::test]
async fn a_route_s_certificate_is_served_and_each_route_keeps_to_its_listener() {
    let web = Backend::start("web").await;
    let ca = Ca::new();
    let leaf = ca.issue(&["secure.example.com"]);
    let yaml = format!(
        "pools:\n  - {{name: web, backendOnly: true, endpoints: [{{address: {}}}]}}\nroutes:\n  - name: shop/secure\n    hosts: [secure.example.com]\n    listeners: [https]\n    tls: {{certificate: {}, privateKey: {}}}\n    rules: [{{backends: [{{pool: web}}]}}]\n  - name: shop/redirect\n    hosts: [secure.example.com]\n    listeners: [http]\n    rules: [{{filters: [{{type: RequestRedirect, requestRedirect: {{scheme: https, statusCode: 301}}}}]}}]\n",
        web.addr,
        q(&leaf.cert),
        q(&leaf.key)
    );
    let file = sluice_protocol::RouteFile::from_yaml(&yaml).expect("valid yaml");
    let routes = sluice_protocol::RouteTable::from_parts(1, file.pools, file.routes);
    let dp = start_https(Source::Static(routes)).await;

    let stream = connect(https_addr(&dp), "secure.example.com", &ca, &[], None)
        .await
        .expect("handshake with the route's certificate");
    assert!(peer_cert(&stream) == leaf.der, "the route's certificate");
    let mut h1 = H1::over(stream).await;
    let (status, backend, _) = h1.get("secure.example.com", "/x").await.expect("answer");
    assert_eq!(
        (status, backend.as_str()),
        (StatusCode::OK, "web"),
        "HTTPS proxies"
    );

    let got = proxy_get(&client(), &dp, "secure.example.com", "/x").await;
    assert_eq!(
        got.status,
        StatusCode::MOVED_PERMANENTLY,
        "plain HTTP redirects"
    );
    assert_eq!(
        got.headers.get("location").and_then(|v| v.to_str().ok()),
        Some("https://secure.example.com/x")
    );
}
