//! What the dataplane tests share: loopback backends that say who they
//! are, a fake controller, a client, and bounded waits.
//!
//! Each test file uses a different part of this module.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use sluice_dataplane::{Dataplane, Options, Source};
use sluice_protocol::{Report, RouteEvent, RouteFile, RouteTable, sse};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;

/// Every wait in these tests ends within this.
pub const WAIT: Duration = Duration::from_secs(10);

type Body = BoxBody<Bytes, hyper::Error>;

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|e| match e {}).boxed()
}

/// Lets a test hold requests inside a backend: `/gate` and `/stream` wait
/// for [`Gate::open`], and announce their arrival first.
#[derive(Debug)]
pub struct Gate {
    arrived: Semaphore,
    open: watch::Sender<bool>,
}

impl Gate {
    /// Waits until a request reached the gate.
    pub async fn arrival(&self) {
        let permit = tokio::time::timeout(WAIT, self.arrived.acquire())
            .await
            .expect("a request reached the gate in time")
            .expect("semaphore open");
        permit.forget();
    }

    /// Lets every held request (and later ones) through.
    pub fn open(&self) {
        self.open.send_replace(true);
    }

    async fn pass(&self) {
        self.arrived.add_permits(1);
        let mut open = self.open.subscribe();
        let _ = open.wait_for(|o| *o).await;
    }
}

/// A backend on 127.0.0.1 that answers with its name (body and
/// `x-backend`), and on some paths does more:
/// - `/echo` streams the request body back;
/// - `/count` reads the whole request body, then answers its length;
/// - `/headers` lists the request headers it received, one per line, sorted;
/// - `/conn` answers with the number of the connection it came on;
/// - `/chunked` streams 64 chunks of 1 KiB (byte i in chunk i);
/// - `/gate` answers its name once the gate opens;
/// - `/stream` sends `first\n`, waits for the gate, then sends `second\n`;
/// - `/hop` answers with hop-by-hop headers that must not reach the client.
#[derive(Debug)]
pub struct Backend {
    /// Its name.
    pub name: &'static str,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Connections accepted so far.
    pub connections: Arc<AtomicUsize>,
    /// The gate of `/gate` and `/stream`.
    pub gate: Arc<Gate>,
    task: JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Backend {
    /// Starts a backend on a free port.
    pub async fn start(name: &'static str) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let connections = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(Gate {
            arrived: Semaphore::new(0),
            open: watch::channel(false).0,
        });
        let (conns, g) = (Arc::clone(&connections), Arc::clone(&gate));
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let conn = conns.fetch_add(1, Ordering::SeqCst) + 1;
                let g = Arc::clone(&g);
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let g = Arc::clone(&g);
                        async move { Ok::<_, Infallible>(answer(name, conn, &g, req).await) }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Backend {
            name,
            addr,
            connections,
            gate,
            task,
        }
    }
}

async fn answer(
    name: &'static str,
    conn: usize,
    gate: &Gate,
    req: Request<Incoming>,
) -> Response<Body> {
    let resp = Response::builder().header("x-backend", name);
    let body = match req.uri().path() {
        "/echo" => req.into_body().boxed(),
        "/count" => match req.into_body().collect().await {
            Ok(body) => full(body.to_bytes().len().to_string()),
            Err(e) => full(format!("body failed: {e}")),
        },
        "/headers" => {
            let mut lines: Vec<String> = req
                .headers()
                .iter()
                .map(|(k, v)| format!("{k}: {}", v.to_str().unwrap_or("<binary>")))
                .collect();
            lines.sort();
            full(lines.join("\n"))
        }
        "/conn" => full(conn.to_string()),
        "/chunked" => {
            let chunks = futures::stream::iter(
                (0..64u8).map(|i| Ok::<_, hyper::Error>(Frame::data(Bytes::from(vec![i; 1024])))),
            );
            StreamBody::new(chunks).boxed()
        }
        "/gate" => {
            gate.pass().await;
            full(name)
        }
        "/stream" => {
            let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, hyper::Error>>(2);
            let _ = tx.send(Ok(Frame::data(Bytes::from("first\n")))).await;
            let open = gate.open.subscribe();
            gate.arrived.add_permits(1);
            tokio::spawn(async move {
                let mut open = open;
                let _ = open.wait_for(|o| *o).await;
                let _ = tx.send(Ok(Frame::data(Bytes::from("second\n")))).await;
            });
            StreamBody::new(futures::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|f| (f, rx))
            }))
            .boxed()
        }
        "/hop" => {
            let resp = resp
                .header("connection", "x-hop-secret")
                .header("x-hop-secret", "1")
                .header("keep-alive", "timeout=5")
                .header("x-kept", "yes");
            return resp.body(full(name)).expect("response");
        }
        _ => full(name),
    };
    resp.body(body).expect("response")
}

/// A port where nothing listens (bound, then released).
pub async fn closed_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind")
        .local_addr()
        .expect("addr")
}

/// An endpoint that accepts, reads the request and answers garbage.
pub async fn garbage_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = tokio::io::AsyncReadExt::read(&mut stream, &mut buf).await;
                let _ = stream.write_all(b"this is not HTTP\r\n\r\n").await;
                let _ = stream.shutdown().await;
            });
        }
    });
    addr
}

/// A route table of version 1 from standalone-file YAML.
pub fn table(yaml: &str) -> RouteTable {
    let file = RouteFile::from_yaml(yaml).expect("test yaml is valid");
    RouteTable::from_pools(1, file.pools)
}

/// Options for a dataplane on loopback, any ports.
/// A table source with one pool, `p`, of one endpoint at `endpoint`.
pub fn one_pool(endpoint: SocketAddr) -> Source {
    Source::Static(table(&format!(
        "pools:\n  - {{name: p, endpoints: [{{address: {endpoint}}}]}}\n"
    )))
}

/// One pool `p` for `host` only, over one endpoint.
pub fn one_pool_for(host: &str, endpoint: SocketAddr) -> Source {
    Source::Static(table(&format!(
        "pools:\n  - {{name: p, hosts: [{host}], endpoints: [{{address: {endpoint}}}]}}\n"
    )))
}

pub fn options(source: Source) -> Options {
    Options {
        source,
        name: "dp-test".into(),
        http: "127.0.0.1:0".parse().expect("addr"),
        https: None,
        admin: "127.0.0.1:0".parse().expect("addr"),
        state_dir: None,
        grace_period: Duration::from_secs(5),
        drain_delay: Duration::ZERO,
        limits: Default::default(),
        access_log: false,
        report_interval: sluice_dataplane::control::report::INTERVAL,
        workers: 1,
        tracing: None,
        listen_backlog: sluice_dataplane::front::listener::LISTEN_BACKLOG,
    }
}

/// Starts a dataplane.
pub async fn start(source: Source) -> Dataplane {
    Dataplane::start(options(source))
        .await
        .expect("dataplane starts")
}

/// A fresh, empty directory under the system temp dir.
pub fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "sluice-dp-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// What came back.
#[derive(Debug)]
pub struct Got {
    /// Status code.
    pub status: StatusCode,
    /// `x-backend`: who answered, empty when Sluice did.
    pub backend: String,
    /// `x-sluice-error`: why Sluice answered itself.
    pub error: String,
    /// Response headers.
    pub headers: http::HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

impl Got {
    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A pooled HTTP/1.1 client.
pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// An h2c (prior knowledge) connection to `addr`: its sender, and the task
/// that drives it (its result says how the connection ended).
pub async fn hyper_h2c<B>(
    addr: SocketAddr,
) -> (
    hyper::client::conn::http2::SendRequest<B>,
    JoinHandle<hyper::Result<()>>,
)
where
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2c handshake");
    (sender, tokio::spawn(conn))
}

/// An HTTP/2 frame read off the wire (RFC 9113 §4.1), for tests that speak
/// the protocol byte by byte.
pub struct H2Frame<'a> {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: &'a [u8],
}

/// An HTTP/2 frame: its 9-byte head, then `payload`.
pub fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("length").to_be_bytes();
    let mut frame = vec![len[1], len[2], len[3], kind, flags];
    frame.extend_from_slice(&stream.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// The frame at the start of `buf` and the bytes it takes there; `None`
/// until all of it has arrived.
pub fn h2_frame_at(buf: &[u8]) -> Option<(H2Frame<'_>, usize)> {
    let head = buf.get(..9)?;
    let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
    let payload = buf.get(9..9 + len)?;
    let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    let frame = H2Frame {
        kind: head[3],
        flags: head[4],
        stream,
        payload,
    };
    Some((frame, 9 + len))
}

/// A new client.
pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Sends `req` and reads the whole answer, within [`WAIT`].
pub async fn send(client: &HttpClient, req: Request<Full<Bytes>>) -> Got {
    let fut = async {
        let resp = client.request(req).await.expect("request completes");
        let (parts, body) = resp.into_parts();
        let header = |n: &str| {
            parts
                .headers
                .get(n)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        let (backend, error) = (header("x-backend"), header("x-sluice-error"));
        let body = body.collect().await.expect("body").to_bytes();
        Got {
            status: parts.status,
            backend,
            error,
            headers: parts.headers,
            body,
        }
    };
    tokio::time::timeout(WAIT, fut)
        .await
        .expect("answered in time")
}

/// `GET http://{addr}{path}` with `Host: host`.
pub fn get(addr: SocketAddr, host: &str, path: &str) -> Request<Full<Bytes>> {
    Request::get(format!("http://{addr}{path}"))
        .header("host", host)
        .body(Full::new(Bytes::new()))
        .expect("request")
}

/// `GET` on the dataplane's proxy port.
pub async fn proxy_get(client: &HttpClient, dp: &Dataplane, host: &str, path: &str) -> Got {
    send(client, get(dp.http_addr(), host, path)).await
}

/// `GET` on the dataplane's admin port.
pub async fn admin_get(client: &HttpClient, dp: &Dataplane, path: &str) -> Got {
    send(client, get(dp.admin_addr(), "admin", path)).await
}

/// Polls `check` until it holds, failing the test after [`WAIT`].
pub async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

/// One route stream a fake controller accepted.
#[derive(Debug)]
pub struct StreamConn {
    /// The `Last-Event-ID` the dataplane sent.
    pub last_event_id: Option<String>,
    /// The `Authorization` it sent.
    pub authorization: Option<String>,
    /// The `dataplane` query parameter.
    pub query: String,
    events: mpsc::Sender<Bytes>,
}

impl StreamConn {
    /// Sends one event on this stream.
    pub async fn send(&self, event: RouteEvent) {
        let frame = sse::encode(event.name(), event.version(), &event.to_json());
        self.events
            .send(Bytes::from(frame))
            .await
            .expect("stream still open");
    }

    /// Sends raw bytes (a keepalive, a broken event).
    pub async fn send_raw(&self, bytes: &'static str) {
        self.events
            .send(Bytes::from_static(bytes.as_bytes()))
            .await
            .expect("stream still open");
    }
}

/// A scripted controller: the test receives each route stream as it
/// connects and decides what to send; reports are collected. Dropping a
/// [`StreamConn`] ends that stream.
#[derive(Debug)]
pub struct FakeController {
    /// Where it listens.
    pub addr: SocketAddr,
    streams: mpsc::UnboundedReceiver<StreamConn>,
    reports: Arc<Mutex<Vec<Report>>>,
    task: JoinHandle<()>,
}

impl Drop for FakeController {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeController {
    /// Starts on a free port.
    pub async fn start() -> Self {
        Self::start_on("127.0.0.1:0".parse().expect("addr")).await
    }

    /// Starts on `addr` (to come back where a stopped one was).
    pub async fn start_on(addr: SocketAddr) -> Self {
        let listener = TcpListener::bind(addr).await.expect("bind controller");
        let addr = listener.local_addr().expect("addr");
        let (tx, streams) = mpsc::unbounded_channel();
        let reports = Arc::new(Mutex::new(Vec::new()));
        let shared = Arc::clone(&reports);
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (tx, reports) = (tx.clone(), Arc::clone(&shared));
                // Held in the JoinSet so that aborting the controller ends
                // its connections too.
                conns.spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (tx, reports) = (tx.clone(), Arc::clone(&reports));
                        async move { Ok::<_, Infallible>(controller_answer(req, tx, reports).await) }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self {
            addr,
            streams,
            reports,
            task,
        }
    }

    /// The controller URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The next route stream a dataplane opens.
    pub async fn next_stream(&mut self) -> StreamConn {
        tokio::time::timeout(WAIT, self.streams.recv())
            .await
            .expect("the dataplane connected in time")
            .expect("controller running")
    }

    /// Every report received so far.
    pub fn reports(&self) -> Vec<Report> {
        self.reports.lock().expect("lock").clone()
    }
}

async fn controller_answer(
    req: Request<Incoming>,
    streams: mpsc::UnboundedSender<StreamConn>,
    reports: Arc<Mutex<Vec<Report>>>,
) -> Response<Body> {
    let header = |n: &str| {
        req.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    match req.uri().path() {
        "/v1/reports" => {
            let body = req.into_body().collect().await.map(|b| b.to_bytes());
            if let Some(report) = body.ok().and_then(|b| serde_json::from_slice(&b).ok()) {
                reports.lock().expect("lock").push(report);
            }
            Response::new(full(""))
        }
        "/v1/routes" => {
            let (tx, rx) = mpsc::channel::<Bytes>(16);
            let _ = streams.send(StreamConn {
                last_event_id: header("last-event-id"),
                authorization: header("authorization"),
                query: req.uri().query().unwrap_or("").to_string(),
                events: tx,
            });
            let frames = futures::stream::unfold(rx, |mut rx| async move {
                rx.recv()
                    .await
                    .map(|b| (Ok::<_, hyper::Error>(Frame::data(b)), rx))
            });
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(StreamBody::new(frames).boxed())
                .expect("response")
        }
        _ => {
            let mut resp = Response::new(full("not found"));
            *resp.status_mut() = StatusCode::NOT_FOUND;
            resp
        }
    }
}

/// The end of a drain test: the shutdown still waits for the request held
/// at backend `b`'s gate; the gate opens, the request gets `b`'s answer,
/// and the shutdown completes within [`WAIT`].
pub async fn in_flight_answered_then_stopped(
    b: &Backend,
    in_flight: JoinHandle<Got>,
    shutdown: JoinHandle<()>,
) {
    assert!(
        !shutdown.is_finished(),
        "shutdown waits for the request in flight"
    );
    b.gate.open();
    let got = in_flight.await.expect("request task");
    assert_eq!(
        (got.status, got.body.as_ref()),
        (StatusCode::OK, b.name.as_bytes())
    );
    tokio::time::timeout(WAIT, shutdown)
        .await
        .expect("shutdown completes in time")
        .expect("shutdown task");
}
