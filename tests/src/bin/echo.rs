//! `echo`: the program behind the test image `sluice.test/echo` in the
//! real-cluster tests (`sluice_tests::kube`). It answers every request with
//! who it is and what it saw, as upstream Gateway API conformance's
//! echo-basic does, so a test sees which pod in which namespace answered
//! and what a route's filters did to the request on the way:
//!
//! ```json
//! {"pod": "web-1", "namespace": "default", "method": "GET", "path": "/a",
//!  "query": "x=1", "host": "web.example.com",
//!  "headers": {"user-agent": ["..."]}}
//! ```
//!
//! with `x-backend: <pod>` on the response (what the loopback tests'
//! backends send too). `/healthz` is one more path like any other.
//!
//! Two request headers steer it, for the behaviours a route changes on the
//! way back: `x-echo-set-header: name: value` (repeatable) adds that header
//! to the response, and `x-echo-delay-ms: N` answers after N milliseconds
//! (at most 60 s). `GET /.echo/requests` answers the last 100 requests it
//! saw (not itself, nor `/healthz`, the readiness probe's), oldest first, as a JSON list of the objects above: how
//! a test reads what a mirrored copy looked like, since nobody reads the
//! mirror's answer.
//!
//! Usage: `echo --name NAME [--namespace NS] [--listen ADDR]` (default
//! 0.0.0.0:8080). Runs until SIGTERM or SIGINT. `echo sleep SECONDS` only
//! waits: an exec preStop hook for test pods (images without a shell have
//! no `sleep`).

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// How many requests `/.echo/requests` keeps.
const KEPT: usize = 100;
/// The longest `x-echo-delay-ms` honoured.
const MAX_DELAY: Duration = Duration::from_secs(60);

/// Who this echo is.
struct Identity {
    name: String,
    namespace: String,
}

fn parse(args: &[String]) -> anyhow::Result<(Identity, SocketAddr)> {
    let mut name = None;
    let mut namespace = String::new();
    let mut listen: SocketAddr = SocketAddr::from(([0, 0, 0, 0], 8080));
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) => (f, Some(v.to_string())),
            None => (arg.as_str(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next().cloned())
                .with_context(|| format!("{flag} needs a value"))
        };
        match flag {
            "--name" => name = Some(value()?),
            "--namespace" => namespace = value()?,
            "--listen" => {
                let v = value()?;
                listen = v
                    .parse()
                    .with_context(|| format!("--listen: not an address: {v:?}"))?;
            }
            other => bail!(
                "unknown argument {other:?} (usage: echo --name NAME [--namespace NS] [--listen ADDR])"
            ),
        }
    }
    let name = name.context("--name is required")?;
    Ok((Identity { name, namespace }, listen))
}

/// What the echo saw of `req`, as it answers it.
fn seen(me: &Identity, req: &Request<hyper::body::Incoming>) -> Value {
    let mut headers: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (k, v) in req.headers() {
        headers
            .entry(k.as_str())
            .or_default()
            .push(String::from_utf8_lossy(v.as_bytes()).into_owned());
    }
    let host = req
        .headers()
        .get(http::header::HOST)
        .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default();
    json!({
        "pod": me.name,
        "namespace": me.namespace,
        "method": req.method().as_str(),
        "path": req.uri().path(),
        "query": req.uri().query().unwrap_or_default(),
        "host": host,
        "headers": headers,
    })
}

/// The response headers `x-echo-set-header` asks for; malformed ones are
/// left out (the body shows what was asked).
fn asked_headers(req: &Request<hyper::body::Incoming>) -> Vec<(HeaderName, HeaderValue)> {
    req.headers()
        .get_all("x-echo-set-header")
        .iter()
        .filter_map(|v| {
            let (name, value) = v.to_str().ok()?.split_once(':')?;
            Some((
                HeaderName::from_bytes(name.trim().as_bytes()).ok()?,
                HeaderValue::from_str(value.trim()).ok()?,
            ))
        })
        .collect()
}

async fn answer(
    me: Arc<Identity>,
    log: Arc<Mutex<VecDeque<Value>>>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, http::Error> {
    if req.uri().path() == "/.echo/requests" {
        let list: Vec<Value> = log
            .lock()
            .map(|l| l.iter().cloned().collect())
            .unwrap_or_default();
        return Response::builder()
            .header("x-backend", me.name.as_str())
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(Value::from(list).to_string())));
    }
    let body = seen(&me, &req);
    // Readiness probes (every second) would push out what a test looks for.
    let probe = req.uri().path() == "/healthz";
    if let (false, Ok(mut l)) = (probe, log.lock()) {
        if l.len() == KEPT {
            l.pop_front();
        }
        l.push_back(body.clone());
    }
    let delay = req
        .headers()
        .get("x-echo-delay-ms")
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .map(|ms| Duration::from_millis(ms).min(MAX_DELAY));
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    let mut resp = Response::builder()
        .header("x-backend", me.name.as_str())
        .header(http::header::CONTENT_TYPE, "application/json");
    for (k, v) in asked_headers(&req) {
        resp = resp.header(k, v);
    }
    resp.body(Full::new(Bytes::from(format!("{body}\n"))))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("sleep") {
        let secs: u64 = args
            .get(1)
            .and_then(|s| s.parse().ok())
            .context("usage: echo sleep SECONDS")?;
        tokio::time::sleep(Duration::from_secs(secs)).await;
        return Ok(());
    }
    let (me, listen) = parse(&args)?;
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    eprintln!("echo {} listening on {}", me.name, listener.local_addr()?);
    let me = Arc::new(me);
    let log = Arc::new(Mutex::new(VecDeque::with_capacity(KEPT)));
    let serve = async {
        let mut conns = JoinSet::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (me, log) = (Arc::clone(&me), Arc::clone(&log));
            conns.spawn(async move {
                let svc = service_fn(move |req| answer(Arc::clone(&me), Arc::clone(&log), req));
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
            while conns.try_join_next().is_some() {}
        }
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
        _ = serve => {}
    }
    let served = log.lock().map(|l| l.len()).unwrap_or_default();
    eprintln!("echo {}: stopping (last {served} requests kept)", me.name);
    Ok(())
}
