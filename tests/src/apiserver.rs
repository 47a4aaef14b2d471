//! A Kubernetes API-server fake that speaks the real HTTP protocol, so that
//! kube-rs's own client and watcher run against it unchanged.
//!
//! Why our own: `kube-fake-client` replaces the client inside the process and
//! serves no HTTP watch; our controller must be tested through kube-rs's real
//! list/watch machinery (resourceVersions, bookmarks, 410 Gone, relists).
//!
//! What it does: any resource path (`/api/v1/...`, `/apis/<group>/<version>/...`,
//! namespaced or across namespaces); get, list (label and field selectors),
//! create (with `generateName`), replace (with optimistic concurrency),
//! delete; merge, strategic-merge (as merge) and server-side-apply (as a merge
//! of the applied fields, creating when absent) patches; the `status` and
//! `scale` subresources; watch with resourceVersion replay from a bounded
//! history, synthetic ADDED events when starting from "0", periodic bookmarks,
//! `timeoutSeconds`, and an ERROR 410 event when the requested version has
//! left the history. One global resourceVersion counter, `generation` bumped
//! on spec changes only.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc};

type Body = BoxBody<Bytes, Infallible>;

/// Events kept for watch resumes.
const HISTORY: usize = 10_000;

/// A resource collection: `/api/v1` or `/apis/<g>/<v>`, plus the plural.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Collection {
    /// `/api/v1` or `/apis/<group>/<version>`.
    pub prefix: String,
    /// Plural resource name.
    pub plural: String,
}

impl Collection {
    /// The collection of an object from its `apiVersion` and `kind`.
    pub fn of(api_version: &str, kind: &str) -> Self {
        let prefix = if api_version == "v1" {
            "/api/v1".to_string()
        } else {
            format!("/apis/{api_version}")
        };
        let lower = kind.to_ascii_lowercase();
        let plural = if lower.ends_with('y') {
            format!("{}ies", &lower[..lower.len() - 1])
        } else if lower.ends_with('s') {
            format!("{lower}es")
        } else {
            format!("{lower}s")
        };
        Self { prefix, plural }
    }

    fn api_version(&self) -> &str {
        self.prefix.strip_prefix("/apis/").unwrap_or("v1")
    }
}

type Key = (Collection, String, String);

#[derive(Clone, Debug)]
struct WatchEvent {
    rv: u64,
    collection: Collection,
    namespace: String,
    kind: &'static str,
    object: Value,
}

#[derive(Debug, Default)]
struct Store {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    history: VecDeque<WatchEvent>,
    /// Oldest resourceVersion a watch may resume from.
    horizon: u64,
    requests: Vec<String>,
    uid: u64,
}

/// The running fake; cheap to clone.
#[derive(Clone, Debug)]
pub struct FakeApiServer {
    url: String,
    store: Arc<Mutex<Store>>,
    events: broadcast::Sender<WatchEvent>,
    bookmark_interval: Duration,
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn status(code: StatusCode, reason: &str, message: impl Into<String>) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message.into(), "reason": reason, "code": code.as_u16(),
    })
}

fn respond(code: StatusCode, body: &Value) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())).boxed());
    *resp.status_mut() = code;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

fn error(code: StatusCode, reason: &str, message: impl Into<String>) -> Response<Body> {
    respond(code, &status(code, reason, message))
}

/// RFC 7386 JSON merge patch.
pub fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    if let Value::Object(t) = target {
        for (k, v) in patch {
            if v.is_null() {
                t.remove(k);
            } else {
                merge(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

/// Whether `obj` satisfies a label selector (`k=v`, `k==v`, `k!=v`, `k`, `!k`).
fn labels_match(obj: &Value, selector: &str) -> bool {
    let labels = &obj["metadata"]["labels"];
    selector
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .all(|term| {
            if let Some((k, v)) = term.split_once("!=") {
                labels[k.trim()].as_str() != Some(v.trim())
            } else if let Some((k, v)) = term.split_once('=') {
                labels[k.trim()].as_str() == Some(v.trim_start_matches('=').trim())
            } else if let Some(k) = term.strip_prefix('!') {
                labels[k].is_null()
            } else {
                !labels[term].is_null()
            }
        })
}

fn fields_match(obj: &Value, selector: &str) -> bool {
    selector
        .split(',')
        .filter_map(|t| t.split_once('='))
        .all(|(k, v)| {
            let v = v.trim_start_matches('=');
            match k {
                "metadata.name" => obj["metadata"]["name"].as_str() == Some(v),
                "metadata.namespace" => obj["metadata"]["namespace"].as_str() == Some(v),
                _ => true,
            }
        })
}

/// One parsed request path.
struct Target {
    collection: Collection,
    namespace: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

fn parse_path(path: &str) -> Option<Target> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (prefix, rest) = match segs.as_slice() {
        ["api", "v1", rest @ ..] => ("/api/v1".to_string(), rest),
        ["apis", g, v, rest @ ..] => (format!("/apis/{g}/{v}"), rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some((*ns).to_string()), rest),
        rest => (None, rest),
    };
    let (plural, name, sub) = match rest {
        [p] => (p, None, None),
        [p, n] => (p, Some(n), None),
        [p, n, s] => (p, Some(n), Some(s)),
        _ => return None,
    };
    Some(Target {
        collection: Collection {
            prefix,
            plural: (*plural).to_string(),
        },
        namespace,
        name: name.map(|n| (*n).to_string()),
        sub: sub.map(|s| (*s).to_string()),
    })
}

fn query(q: &str) -> BTreeMap<String, String> {
    q.split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_string(), percent_decode(v)))
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether writes to the main resource leave `.status` alone (a status
/// subresource exists): every resource but the core ones.
fn has_status_subresource(c: &Collection) -> bool {
    c.prefix != "/api/v1"
}

fn spec_part(obj: &Value) -> Value {
    match obj {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| {
                    !matches!(k.as_str(), "metadata" | "status" | "apiVersion" | "kind")
                })
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        _ => Value::Null,
    }
}

impl FakeApiServer {
    /// Starts the fake on 127.0.0.1 (port 0) with 1 s bookmarks.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(Duration::from_secs(1)).await
    }

    /// Starts the fake with the given bookmark interval.
    pub async fn start_with(bookmark_interval: Duration) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr: SocketAddr = listener.local_addr()?;
        let (events, _) = broadcast::channel(4096);
        let server = Self {
            url: format!("http://{addr}"),
            store: Arc::new(Mutex::new(Store {
                rv: 1,
                horizon: 1,
                ..Default::default()
            })),
            events,
            bookmark_interval,
        };
        let s = server.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let s = s.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let s = s.clone();
                        async move { Ok::<_, Infallible>(s.handle(req).await) }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Ok(server)
    }

    /// Base URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A kube client pointed at the fake (default namespace `default`).
    pub fn client(&self) -> anyhow::Result<kube::Client> {
        let config = kube::Config::new(self.url.parse()?);
        Ok(kube::Client::try_from(config)?)
    }

    fn lock(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every request seen, as `METHOD path?query`.
    pub fn requests(&self) -> Vec<String> {
        self.lock().requests.clone()
    }

    /// Compacts the watch history up to now: any resume from a version the
    /// server has handed out gets 410 Gone, as after an etcd compaction, and
    /// the client must relist.
    pub fn expire_history(&self) {
        let mut s = self.lock();
        s.history.clear();
        s.horizon = s.rv + 1;
    }

    /// The object, if present.
    pub fn get(&self, collection: &Collection, namespace: &str, name: &str) -> Option<Value> {
        self.lock()
            .objects
            .get(&(collection.clone(), namespace.into(), name.into()))
            .cloned()
    }

    /// Every object of a collection, in all namespaces.
    pub fn list(&self, collection: &Collection) -> Vec<Value> {
        self.lock()
            .objects
            .iter()
            .filter(|((c, _, _), _)| c == collection)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Creates or replaces an object as a client would (status included),
    /// inferring its collection from `apiVersion` and `kind`.
    pub fn apply(&self, obj: Value) -> anyhow::Result<Value> {
        let collection = Collection::of(
            obj["apiVersion"].as_str().unwrap_or_default(),
            obj["kind"].as_str().unwrap_or_default(),
        );
        let ns = obj["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_string();
        let name = obj["metadata"]["name"]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("object without a name"))?
            .to_string();
        let mut s = self.lock();
        let key = (collection.clone(), ns.clone(), name);
        let existing = s.objects.get(&key).cloned();
        Ok(self.write(&mut s, key, existing.as_ref(), obj, true))
    }

    /// Deletes an object; returns whether it existed.
    pub fn delete(&self, collection: &Collection, namespace: &str, name: &str) -> bool {
        let mut s = self.lock();
        self.remove(&mut s, &(collection.clone(), namespace.into(), name.into()))
            .is_some()
    }

    fn record(
        &self,
        s: &mut Store,
        collection: &Collection,
        namespace: &str,
        kind: &'static str,
        object: Value,
    ) {
        let rv = s.rv;
        let ev = WatchEvent {
            rv,
            collection: collection.clone(),
            namespace: namespace.to_string(),
            kind,
            object,
        };
        s.history.push_back(ev.clone());
        if s.history.len() > HISTORY
            && let Some(old) = s.history.pop_front()
        {
            s.horizon = old.rv;
        }
        let _ = self.events.send(ev);
    }

    /// Stores `obj` under `key` as the new version; bookkeeping as the real
    /// server does it. `with_status` keeps the caller's status (else the old one).
    fn write(
        &self,
        s: &mut Store,
        key: Key,
        old: Option<&Value>,
        mut obj: Value,
        with_status: bool,
    ) -> Value {
        if let (Some(old), true) = (old, obj == Value::Null) {
            return old.clone();
        }
        if let Some(old) = old {
            let mut same = obj.clone();
            same["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
            if !with_status {
                same["status"] = old["status"].clone();
            }
            for f in ["uid", "creationTimestamp", "generation"] {
                same["metadata"][f] = old["metadata"][f].clone();
            }
            if &same == old {
                return old.clone();
            }
        }
        s.rv += 1;
        let rv = s.rv;
        let meta = &mut obj["metadata"];
        meta["namespace"] = json!(key.1);
        meta["name"] = json!(key.2);
        meta["resourceVersion"] = json!(rv.to_string());
        let kind = match old {
            Some(old) => {
                meta["uid"] = old["metadata"]["uid"].clone();
                meta["creationTimestamp"] = old["metadata"]["creationTimestamp"].clone();
                let gen_before = old["metadata"]["generation"].as_i64().unwrap_or(1);
                let bumped = spec_part(old) != spec_part(&obj);
                obj["metadata"]["generation"] =
                    json!(if bumped { gen_before + 1 } else { gen_before });
                if !with_status {
                    obj["status"] = old["status"].clone();
                    if obj["status"].is_null()
                        && let Value::Object(m) = &mut obj
                    {
                        m.remove("status");
                    }
                }
                "MODIFIED"
            }
            None => {
                s.uid += 1;
                meta["uid"] = json!(format!("00000000-0000-0000-0000-{:012}", s.uid));
                meta["creationTimestamp"] = json!(now());
                meta["generation"] = json!(1);
                "ADDED"
            }
        };
        if obj["apiVersion"].is_null() {
            obj["apiVersion"] = json!(key.0.api_version());
        }
        s.objects.insert(key.clone(), obj.clone());
        self.record(s, &key.0, &key.1, kind, obj.clone());
        obj
    }

    fn remove(&self, s: &mut Store, key: &Key) -> Option<Value> {
        let mut obj = s.objects.remove(key)?;
        s.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(s.rv.to_string());
        self.record(s, &key.0, &key.1, "DELETED", obj.clone());
        Some(obj)
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path().to_string();
        let q = query(req.uri().query().unwrap_or(""));
        let method = req.method().clone();
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        {
            let mut s = self.lock();
            if s.requests.len() < 100_000 {
                s.requests.push(format!("{method} {}", req.uri()));
            }
        }
        let Some(target) = parse_path(&path) else {
            return error(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("the server could not find the requested resource {path}"),
            );
        };
        let body = match req.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => return error(StatusCode::BAD_REQUEST, "BadRequest", e.to_string()),
        };
        let parsed = if body.is_empty() {
            Ok(Value::Null)
        } else {
            serde_json::from_slice::<Value>(&body)
        };
        let Ok(input) = parsed else {
            return error(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "request body is not JSON",
            );
        };
        match (&method, &target.name) {
            (&Method::GET, None)
                if matches!(q.get("watch").map(String::as_str), Some("true" | "1")) =>
            {
                self.watch(target, q)
            }
            (&Method::GET, None) => self.list_response(&target, &q),
            (&Method::POST, None) => self.create(&target, input),
            (&Method::GET, Some(_)) => self.get_response(&target),
            (&Method::PUT, Some(_)) => self.replace(&target, input),
            (&Method::PATCH, Some(_)) => self.patch(&target, &content_type, input),
            (&Method::DELETE, Some(_)) => self.delete_response(&target),
            _ => error(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                format!("{method} not allowed on {path}"),
            ),
        }
    }

    fn key(&self, t: &Target) -> Key {
        (
            t.collection.clone(),
            t.namespace.clone().unwrap_or_default(),
            t.name.clone().unwrap_or_default(),
        )
    }

    fn matching(&self, s: &Store, t: &Target, q: &BTreeMap<String, String>) -> Vec<Value> {
        s.objects
            .iter()
            .filter(|((c, ns, _), _)| {
                *c == t.collection && t.namespace.as_ref().is_none_or(|n| n == ns)
            })
            .map(|(_, v)| v)
            .filter(|v| {
                q.get("labelSelector")
                    .is_none_or(|sel| labels_match(v, sel))
            })
            .filter(|v| {
                q.get("fieldSelector")
                    .is_none_or(|sel| fields_match(v, sel))
            })
            .cloned()
            .collect()
    }

    fn list_response(&self, t: &Target, q: &BTreeMap<String, String>) -> Response<Body> {
        let s = self.lock();
        let items = self.matching(&s, t, q);
        let kind = items
            .first()
            .and_then(|i| i["kind"].as_str())
            .map(|k| format!("{k}List"))
            .unwrap_or("List".into());
        respond(
            StatusCode::OK,
            &json!({
                "apiVersion": t.collection.api_version(),
                "kind": kind,
                "metadata": {"resourceVersion": s.rv.to_string()},
                "items": items,
            }),
        )
    }

    fn get_response(&self, t: &Target) -> Response<Body> {
        let s = self.lock();
        let key = self.key(t);
        match (s.objects.get(&key), t.sub.as_deref()) {
            (None, _) => not_found(t),
            (Some(obj), Some("scale")) => respond(StatusCode::OK, &scale_of(obj)),
            (Some(obj), _) => respond(StatusCode::OK, obj),
        }
    }

    fn create(&self, t: &Target, mut obj: Value) -> Response<Body> {
        if !obj.is_object() {
            return error(StatusCode::BAD_REQUEST, "BadRequest", "expected an object");
        }
        let mut s = self.lock();
        if obj["metadata"]["name"].as_str().is_none_or(str::is_empty) {
            let Some(prefix) = obj["metadata"]["generateName"].as_str().map(str::to_string) else {
                return error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Invalid",
                    "metadata.name: Required value",
                );
            };
            s.uid += 1;
            obj["metadata"]["name"] = json!(format!("{prefix}{:05x}", s.uid));
        }
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let key = (
            t.collection.clone(),
            t.namespace.clone().unwrap_or_default(),
            name.clone(),
        );
        if s.objects.contains_key(&key) {
            return error(
                StatusCode::CONFLICT,
                "AlreadyExists",
                format!("{} \"{name}\" already exists", t.collection.plural),
            );
        }
        let created = self.write(&mut s, key, None, obj, true);
        respond(StatusCode::CREATED, &created)
    }

    fn replace(&self, t: &Target, obj: Value) -> Response<Body> {
        let mut s = self.lock();
        let key = self.key(t);
        let Some(old) = s.objects.get(&key).cloned() else {
            return not_found(t);
        };
        if let Some(rv) = obj["metadata"]["resourceVersion"].as_str()
            && Some(rv) != old["metadata"]["resourceVersion"].as_str()
        {
            return error(
                StatusCode::CONFLICT,
                "Conflict",
                "the object has been modified; please apply your changes to the latest version and try again",
            );
        }
        let new = match t.sub.as_deref() {
            Some("status") => {
                let mut o = old.clone();
                o["status"] = obj["status"].clone();
                o
            }
            Some("scale") => with_replicas(&old, &obj),
            _ => obj,
        };
        let with_status =
            t.sub.as_deref() == Some("status") || !has_status_subresource(&t.collection);
        let out = self.write(&mut s, key, Some(&old), new, with_status);
        let out = if t.sub.as_deref() == Some("scale") {
            scale_of(&out)
        } else {
            out
        };
        respond(StatusCode::OK, &out)
    }

    fn patch(&self, t: &Target, content_type: &str, patch: Value) -> Response<Body> {
        let apply = content_type.starts_with("application/apply-patch");
        if !(apply
            || content_type.starts_with("application/merge-patch+json")
            || content_type.starts_with("application/strategic-merge-patch+json"))
        {
            return error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UnsupportedMediaType",
                format!("patch type {content_type:?} is not supported by the fake"),
            );
        }
        let mut s = self.lock();
        let key = self.key(t);
        let old = s.objects.get(&key).cloned();
        let base = match (&old, apply, t.sub.is_none()) {
            (Some(o), _, _) => o.clone(),
            (None, true, true) => json!({"metadata": {"name": key.2, "namespace": key.1}}),
            (None, _, _) => return not_found(t),
        };
        let mut new = base.clone();
        match t.sub.as_deref() {
            Some("status") => merge(&mut new["status"], &patch["status"]),
            Some("scale") => new = with_replicas(&base, &patch),
            _ => {
                let mut p = patch.clone();
                if has_status_subresource(&t.collection)
                    && let Value::Object(m) = &mut p
                {
                    m.remove("status");
                }
                merge(&mut new, &p);
            }
        }
        let with_status =
            t.sub.as_deref() == Some("status") || !has_status_subresource(&t.collection);
        let out = self.write(&mut s, key, old.as_ref(), new, with_status);
        let out = if t.sub.as_deref() == Some("scale") {
            scale_of(&out)
        } else {
            out
        };
        respond(StatusCode::OK, &out)
    }

    fn delete_response(&self, t: &Target) -> Response<Body> {
        let mut s = self.lock();
        match self.remove(&mut s, &self.key(t)) {
            Some(obj) => respond(StatusCode::OK, &obj),
            None => not_found(t),
        }
    }

    fn watch(&self, t: Target, q: BTreeMap<String, String>) -> Response<Body> {
        let (tx, rx) = mpsc::channel::<Bytes>(64);
        let mut live = self.events.subscribe();
        let bookmarks = q.get("allowWatchBookmarks").is_some_and(|v| v == "true");
        let timeout = q
            .get("timeoutSeconds")
            .and_then(|v| v.parse::<u64>().ok())
            .map(Duration::from_secs);
        let interval = self.bookmark_interval;
        let line = |kind: &str, object: &Value| {
            Bytes::from(format!("{}\n", json!({"type": kind, "object": object})))
        };
        let matches = move |ev: &WatchEvent, t: &Target, q: &BTreeMap<String, String>| {
            ev.collection == t.collection
                && t.namespace.as_ref().is_none_or(|n| *n == ev.namespace)
                && q.get("labelSelector")
                    .is_none_or(|sel| labels_match(&ev.object, sel))
                && q.get("fieldSelector")
                    .is_none_or(|sel| fields_match(&ev.object, sel))
        };

        // What to send before going live, decided under the lock so nothing
        // published meanwhile is missed (the live receiver already exists).
        let (initial, mut sent_rv, gone) = {
            let s = self.lock();
            match q.get("resourceVersion").map(String::as_str) {
                None | Some("" | "0") => {
                    let adds: Vec<Bytes> = self
                        .matching(&s, &t, &q)
                        .iter()
                        .map(|o| line("ADDED", o))
                        .collect();
                    (adds, s.rv, false)
                }
                Some(v) => match v.parse::<u64>() {
                    Ok(from) if from >= s.horizon && from <= s.rv => {
                        let replay = s
                            .history
                            .iter()
                            .filter(|e| e.rv > from && matches(e, &t, &q))
                            .map(|e| line(e.kind, &e.object))
                            .collect();
                        (replay, s.rv, false)
                    }
                    _ => (vec![], s.rv, true),
                },
            }
        };
        let kind_name = t.collection.plural.clone();
        let api_version = t.collection.api_version().to_string();
        let store = Arc::clone(&self.store);
        tokio::spawn(async move {
            if gone {
                let st = status(StatusCode::GONE, "Expired", "too old resource version");
                let _ = tx.send(line("ERROR", &st)).await;
                return;
            }
            for l in initial {
                if tx.send(l).await.is_err() {
                    return;
                }
            }
            let bookmark = |rv: u64| {
                line(
                    "BOOKMARK",
                    &json!({"kind": kind_name, "apiVersion": api_version, "metadata": {"resourceVersion": rv.to_string()}}),
                )
            };
            if bookmarks && tx.send(bookmark(sent_rv)).await.is_err() {
                return;
            }
            let deadline = tokio::time::sleep(timeout.unwrap_or(Duration::from_secs(3600)));
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    _ = &mut deadline => return,
                    _ = tokio::time::sleep(interval), if bookmarks => {
                        let rv = store.lock().map(|s| s.rv).unwrap_or(sent_rv);
                        if tx.send(bookmark(rv.max(sent_rv))).await.is_err() { return; }
                    }
                    ev = live.recv() => match ev {
                        Ok(ev) if ev.rv > sent_rv && matches(&ev, &t, &q) => {
                            sent_rv = ev.rv;
                            if tx.send(line(ev.kind, &ev.object)).await.is_err() { return; }
                        }
                        Ok(_) => {}
                        // Fell behind or shut down: end the watch; the client re-watches.
                        Err(_) => return,
                    },
                }
            }
        });
        let frames = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv()
                .await
                .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
        });
        let mut resp = Response::new(StreamBody::new(frames).boxed());
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        resp
    }
}

fn not_found(t: &Target) -> Response<Body> {
    error(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!(
            "{} \"{}\" not found",
            t.collection.plural,
            t.name.clone().unwrap_or_default()
        ),
    )
}

/// The `autoscaling/v1` Scale view of an object.
fn scale_of(obj: &Value) -> Value {
    json!({
        "apiVersion": "autoscaling/v1",
        "kind": "Scale",
        "metadata": {
            "name": obj["metadata"]["name"],
            "namespace": obj["metadata"]["namespace"],
            "resourceVersion": obj["metadata"]["resourceVersion"],
        },
        "spec": {"replicas": obj["spec"]["replicas"].as_i64().unwrap_or(0)},
        "status": {"replicas": obj["status"]["replicas"].as_i64().unwrap_or(0)},
    })
}

fn with_replicas(obj: &Value, scale: &Value) -> Value {
    let mut o = obj.clone();
    if let Some(r) = scale["spec"]["replicas"].as_i64() {
        o["spec"]["replicas"] = json!(r);
    }
    o
}
