//! The HTTP side: accepting connections, logging each request, reading its
//! path and query, and dispatching it to the handler for what it addresses.
//! TokenReviews are answered here too, since they touch no stored object.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::discovery::discovery;
use super::list::list;
use super::object::{View, delete, drop_status, render, write};
use super::patch::PatchType;
use super::response::{ApiError, Body, json_response, unsupported};
use super::watch::watch;
use super::{Collection, LoggedRequest, Shared, lock};

/// Decoded query parameters; a repeated parameter keeps its last value.
pub(super) type Query = BTreeMap<String, String>;

/// Request bodies above this are refused: nothing a controller sends is near it.
const MAX_BODY: usize = 16 << 20;
/// Requests kept for [`FakeApiServer::request_log`](super::FakeApiServer::request_log).
const MAX_LOGGED: usize = 10_000;

pub(super) async fn accept(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!("fake API server: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = stopped.changed() => return,
        };
        let (shared, mut stopped) = (shared.clone(), stopped.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(serve(shared, req).await) }
            });
            // No header-read timeout: it would close idle keep-alive
            // connections under kube's connection pool mid-test.
            let conn = http1::Builder::new()
                .header_read_timeout(None)
                .serve_connection(TokioIo::new(stream), service);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stopped.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
}

async fn serve(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let logged = LoggedRequest {
        method: parts.method.to_string(),
        path: parts
            .uri
            .path_and_query()
            .map_or_else(|| parts.uri.path().to_string(), |p| p.to_string()),
        content_type: content_type.map(str::to_owned),
    };
    tracing::debug!(method = %logged.method, path = %logged.path, "fake API server request");
    {
        let mut log = lock(&shared.log);
        if log.len() == MAX_LOGGED {
            log.pop_front();
        }
        log.push_back(logged.clone());
    }
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            return ApiError::bad_request(format!("reading the request body: {e}")).response();
        }
    };
    let query = parse_query(parts.uri.query().unwrap_or_default());
    let ctype = logged
        .content_type
        .as_deref()
        .map(|t| t.split(';').next().unwrap_or_default().trim());
    route(
        &shared,
        &parts.method,
        parts.uri.path(),
        &query,
        ctype,
        &body,
    )
    .unwrap_or_else(|e| e.response())
}

/// What a URL addresses.
pub(super) struct Target {
    pub(super) collection: Collection,
    /// `None`: across namespaces (lists, watches) or cluster-scoped.
    pub(super) namespace: Option<String>,
    pub(super) name: Option<String>,
    pub(super) subresource: Option<String>,
}

fn parse_path(path: &str) -> Option<Target> {
    let segments: Vec<String> = path
        .trim_matches('/')
        .split('/')
        .map(|s| decode(s, false))
        .collect();
    if segments.iter().any(String::is_empty) {
        return None;
    }
    let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
    let (group_version, rest) = match segs.as_slice() {
        ["api", "v1", rest @ ..] => ("v1".to_string(), rest),
        ["apis", group, version, rest @ ..] => (format!("{group}/{version}"), rest),
        _ => return None,
    };
    let (namespace, plural, tail) = match rest {
        // `namespaces/{ns}/status` is the Namespace's own subresource.
        ["namespaces", ns, plural, tail @ ..]
            if !(tail.is_empty() && matches!(*plural, "status" | "finalize")) =>
        {
            (Some(ns.to_string()), *plural, tail)
        }
        [plural, tail @ ..] => (None, *plural, tail),
        [] => return None,
    };
    let (name, subresource) = match tail {
        [] => (None, None),
        [name] => (Some(name.to_string()), None),
        [name, sub] => (Some(name.to_string()), Some(sub.to_string())),
        _ => return None,
    };
    Some(Target {
        collection: Collection::new(group_version, plural),
        namespace,
        name,
        subresource,
    })
}

/// Percent-decoding (and `+` as space in queries): the deps have no URL crate.
fn decode(s: &str, plus_is_space: bool) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
                continue;
            }
            (b'+', _) if plus_is_space => out.push(b' '),
            (b, _) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_query(q: &str) -> Query {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k, true), decode(v, true))
        })
        .collect()
}

pub(super) fn flag(query: &Query, name: &str) -> bool {
    query.get(name).is_some_and(|v| v == "true" || v == "1")
}

/// A numeric query parameter; absent, empty and `0` all mean "not set",
/// as they do for `limit`, `timeoutSeconds` and `resourceVersion`.
pub(super) fn number(query: &Query, name: &str) -> Result<Option<u64>, ApiError> {
    match query.get(name).map(String::as_str) {
        None | Some("" | "0") => Ok(None),
        Some(v) => v.parse().map(Some).map_err(|_| {
            ApiError::bad_request(format!("{name} must be a non-negative integer, not {v:?}"))
        }),
    }
}

fn route(
    shared: &Arc<Shared>,
    method: &Method,
    path: &str,
    query: &Query,
    ctype: Option<&str>,
    body: &[u8],
) -> Result<Response<Body>, ApiError> {
    if path == "/version" {
        let version = json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-sluice-fake"});
        return Ok(json_response(StatusCode::OK, &version));
    }
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("the server could not find the requested resource ({path})"),
        )
    };
    if method == Method::GET
        && let Some(answer) = discovery(&shared.config.resources, path)
    {
        return answer;
    }
    let target = parse_path(path).ok_or_else(not_found)?;
    let c = &target.collection;
    if *c == Collection::new("authentication.k8s.io/v1", "tokenreviews") && method == Method::POST {
        expect_json(ctype)?;
        return Ok(json_response(
            StatusCode::CREATED,
            &token_review(shared, parse_json(body)?),
        ));
    }
    let view = match target.subresource.as_deref() {
        None => View::Object,
        Some("status") if shared.config.has_status(c) => View::Status,
        Some("scale") if shared.config.has_scale(c) => View::Scale,
        Some(_) => return Err(not_found()),
    };
    let ns = target.namespace.clone().unwrap_or_default();
    match (method, target.name.as_deref()) {
        (&Method::GET, None) if flag(query, "watch") => watch(shared, &target, query),
        (&Method::GET, None) => list(shared, &target, query),
        (&Method::POST, None) => {
            expect_json(ctype)?;
            let obj = drop_status(shared, c, parse_json(body)?);
            if let Some(given) = obj["metadata"]["namespace"]
                .as_str()
                .filter(|g| !ns.is_empty() && *g != ns)
            {
                let msg = format!(
                    "the namespace of the object ({given}) does not match the namespace on the request ({ns})"
                );
                return Err(ApiError::bad_request(msg));
            }
            let created = shared.state().create(c, &ns, obj)?;
            Ok(json_response(StatusCode::CREATED, &created))
        }
        (&Method::GET, Some(name)) => {
            let state = shared.state();
            let obj = state
                .get(c, &ns, name)
                .ok_or_else(|| ApiError::not_found(c, name))?;
            Ok(json_response(StatusCode::OK, &render(obj, view)))
        }
        (&Method::PUT, Some(name)) => {
            expect_json(ctype)?;
            write(shared, &target, name, view, None, query, body)
        }
        (&Method::PATCH, Some(name)) => {
            let patch = PatchType::parse(ctype)?;
            write(shared, &target, name, view, Some(patch), query, body)
        }
        (&Method::DELETE, Some(name)) if view == View::Object => delete(shared, c, &ns, name, body),
        _ => Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("{method} is not supported on {path}"),
        )),
    }
}

/// Answers a TokenReview as the real API server does: authenticated when
/// the token is known and minted for one of the requested audiences.
fn token_review(shared: &Shared, mut review: Value) -> Value {
    let token = review["spec"]["token"].as_str().unwrap_or_default();
    let wanted: Vec<&str> = review["spec"]["audiences"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let known = lock(&shared.tokens).get(token).cloned();
    let status = match known {
        Some((user, audiences))
            if wanted.is_empty() || wanted.iter().any(|w| audiences.iter().any(|a| a == w)) =>
        {
            let matched: Vec<&str> = if wanted.is_empty() {
                audiences.iter().map(String::as_str).collect()
            } else {
                wanted.clone()
            };
            json!({"authenticated": true, "user": {"username": user}, "audiences": matched})
        }
        Some(_) => json!({"authenticated": false, "error": "token audiences are invalid"}),
        None => json!({"authenticated": false, "error": "invalid bearer token"}),
    };
    review["status"] = status;
    review
}

fn expect_json(ctype: Option<&str>) -> Result<(), ApiError> {
    match ctype {
        None | Some("application/json") => Ok(()),
        Some(other) => Err(unsupported(other)),
    }
}

pub(super) fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("malformed JSON body: {e}")))
}
