//! A plain HTTP/1.1 client for tests, with pooled keep-alive connections.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// What came back.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// `x-backend` header, when a backend answered.
    pub backend: Option<String>,
    /// Body as text.
    pub body: String,
    /// Every response header (a route's filters change them).
    pub headers: http::HeaderMap,
}

/// A keep-alive HTTP client.
#[derive(Clone, Debug)]
pub struct HttpClient {
    inner: Client<HttpConnector, Empty<Bytes>>,
}

impl Default for HttpClient {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpClient {
    /// A client with a connection pool.
    pub fn new() -> Self {
        Self {
            inner: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// A client that keeps no idle connection: every request opens a new
    /// one, as new clients arriving through a Service do (kube-proxy picks
    /// an endpoint per connection, so only these see an endpoint change).
    pub fn without_keep_alive() -> Self {
        Self {
            inner: Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(0)
                .build_http(),
        }
    }

    /// `GET http://addr/path` with `Host: host`, bounded by 5 s.
    pub async fn get(&self, addr: SocketAddr, host: &str, path: &str) -> anyhow::Result<Answer> {
        let req = http::Request::get(format!("http://{addr}{path}"))
            .header(http::header::HOST, host)
            .body(Empty::new())?;
        self.send(req).await
    }

    /// Sends `req` (an absolute `http://` URI), bounded by 5 s.
    pub async fn send(&self, req: http::Request<Empty<Bytes>>) -> anyhow::Result<Answer> {
        self.send_within(req, Duration::from_secs(5)).await
    }

    /// Sends `req`, bounded by `limit`.
    pub async fn send_within(
        &self,
        req: http::Request<Empty<Bytes>>,
        limit: Duration,
    ) -> anyhow::Result<Answer> {
        let fut = async {
            let resp = self.inner.request(req).await?;
            let status = resp.status().as_u16();
            let backend = resp
                .headers()
                .get("x-backend")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let headers = resp.headers().clone();
            let body = resp.into_body().collect().await?.to_bytes();
            anyhow::Ok(Answer {
                status,
                backend,
                headers,
                body: String::from_utf8_lossy(&body).into_owned(),
            })
        };
        tokio::time::timeout(limit, fut)
            .await
            .map_err(|_| anyhow::anyhow!("no answer within {limit:?}"))?
    }

    /// Which backends (`x-backend`) answer `n` GETs of `/` through `addr`
    /// with `Host: host`; any answer but 200 is an error.
    pub async fn tally(
        &self,
        addr: SocketAddr,
        host: &str,
        n: usize,
    ) -> anyhow::Result<std::collections::BTreeMap<String, usize>> {
        let mut seen = std::collections::BTreeMap::new();
        for _ in 0..n {
            let a = self.get(addr, host, "/").await?;
            anyhow::ensure!(a.status == 200, "status {} body {:?}", a.status, a.body);
            *seen.entry(a.backend.unwrap_or_default()).or_insert(0) += 1;
        }
        Ok(seen)
    }
}
