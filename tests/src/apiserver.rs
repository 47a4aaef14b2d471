//! A fake kube-apiserver that speaks the real Kubernetes HTTP protocol on
//! loopback, so that kube-rs's *unchanged* `Client`, `Api` and
//! `runtime::watcher` run against it in tests.
//!
//! Why not `kube-fake-client` or a mocked `Service`: the controller must be
//! exercised through kube-rs's real list/watch machinery — resourceVersions,
//! bookmarks, `410 Gone` and relists, streaming responses, patch content
//! types — and only a server on a socket makes all of that run for real.
//!
//! What it does, generically for any resource (objects are kept as JSON):
//! get, list (label and field selectors, `limit`/`continue`), create (with
//! `generateName`), replace (optimistic concurrency), delete (with
//! preconditions); merge, strategic-merge (as merge), server-side-apply (as a
//! merge of the applied fields, creating when absent) and JSON patches; the
//! `status` and `scale` subresources; watch with replay from a bounded
//! history, synthetic ADDED events, `sendInitialEvents`, periodic bookmarks,
//! `timeoutSeconds`, selector-aware ADDED/DELETED transitions and an ERROR
//! `410 Expired` event once the requested version has left the history.
//!
//! Simplifications: lists always serve the newest state (a `resourceVersion`
//! on a list is ignored); apply patches ignore field ownership; no
//! finalizers, admission or defaulting.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::convert::Infallible;
use std::ops::Bound;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

type Body = UnsyncBoxBody<Bytes, Infallible>;
type Query = BTreeMap<String, String>;
type Key = (String, String);

/// Request bodies above this are refused: nothing a controller sends is near it.
const MAX_BODY: usize = 16 << 20;
/// Requests kept for [`FakeApiServer::request_log`].
const MAX_LOGGED: usize = 10_000;

/// A resource collection, the unit the API server stores, lists and watches.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Collection {
    /// `v1` for the core group, else `group/version`, as in `apiVersion`.
    pub group_version: String,
    /// The lower-case plural used in URLs, e.g. `endpointslices`.
    pub plural: String,
}

impl Collection {
    /// A collection named the way URLs name it.
    pub fn new(group_version: impl Into<String>, plural: impl Into<String>) -> Self {
        Self {
            group_version: group_version.into(),
            plural: plural.into(),
        }
    }

    /// The collection of objects with this `apiVersion` and `kind`, which is
    /// how tests naturally describe objects. The plural is the lower-case
    /// kind made plural by the English rules Kubernetes follows, with an
    /// override table for the irregular ones.
    pub fn of(api_version: &str, kind: &str) -> Self {
        const IRREGULAR: &[(&str, &str)] = &[("endpoints", "endpoints")];
        let lower = kind.to_ascii_lowercase();
        let plural = if let Some((_, p)) = IRREGULAR.iter().find(|(k, _)| *k == lower) {
            (*p).to_string()
        } else if ["s", "x", "ch", "sh"]
            .iter()
            .any(|end| lower.ends_with(end))
        {
            format!("{lower}es")
        } else if lower.ends_with('y') && !lower.ends_with("ay") && !lower.ends_with("ey") {
            format!("{}ies", &lower[..lower.len() - 1])
        } else {
            format!("{lower}s")
        };
        Self::new(api_version, plural)
    }
}

/// One request as the server received it, so tests can assert what a
/// client actually sent (query parameters, patch content types).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoggedRequest {
    /// `GET`, `PATCH`, ...
    pub method: String,
    /// Path and query, still percent-encoded.
    pub path: String,
    /// The `Content-Type` header, if any.
    pub content_type: Option<String>,
}

/// Configures a [`FakeApiServer`] before it starts; the defaults suit tests.
#[derive(Clone, Debug)]
pub struct Builder {
    bookmark_interval: Duration,
    history_limit: usize,
    with_status: BTreeSet<Collection>,
    without_status: BTreeSet<Collection>,
}

impl Default for Builder {
    fn default() -> Self {
        Self {
            bookmark_interval: Duration::from_secs(1),
            history_limit: 1000,
            with_status: BTreeSet::new(),
            without_status: BTreeSet::new(),
        }
    }
}

impl Builder {
    /// How often watches that asked for bookmarks get one. Short by default
    /// so tests see bookmarks quickly; real servers send them about a minute apart.
    pub fn bookmark_interval(mut self, every: Duration) -> Self {
        self.bookmark_interval = every;
        self
    }

    /// How many changes are kept for watch resumes; an older resume gets `410 Expired`.
    pub fn history_limit(mut self, changes: usize) -> Self {
        self.history_limit = changes.max(1);
        self
    }

    /// Gives a collection a `status` subresource: writes to the object then
    /// leave `.status` alone and `/status` writes touch only `.status`.
    /// Every collection outside core `v1` has one unless told otherwise.
    pub fn status_subresource(mut self, group_version: &str, plural: &str) -> Self {
        let c = Collection::new(group_version, plural);
        self.without_status.remove(&c);
        self.with_status.insert(c);
        self
    }

    /// Takes the `status` subresource away from a collection outside core `v1`.
    pub fn without_status_subresource(mut self, group_version: &str, plural: &str) -> Self {
        let c = Collection::new(group_version, plural);
        self.with_status.remove(&c);
        self.without_status.insert(c);
        self
    }

    fn has_status(&self, c: &Collection) -> bool {
        self.with_status.contains(c)
            || (c.group_version != "v1" && !self.without_status.contains(c))
    }

    /// Binds `127.0.0.1:0` and serves until [`FakeApiServer::shutdown`] or
    /// until the last handle is dropped.
    pub async fn start(self) -> anyhow::Result<FakeApiServer> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let url = format!("http://{}", listener.local_addr()?);
        let (stop, stopped) = watch::channel(false);
        let (changes, _) = watch::channel(0);
        let state = State {
            // "0" means "any version" on the wire, so it is never handed out.
            rv: 1,
            objects: BTreeMap::new(),
            kinds: BTreeMap::new(),
            history: VecDeque::new(),
            evicted: 0,
            resumable_from: 0,
            history_limit: self.history_limit,
            changes,
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            log: Mutex::new(VecDeque::new()),
            stopped: stopped.clone(),
            watches: AtomicUsize::new(0),
            config: self,
            tokens: Mutex::new(BTreeMap::new()),
        });
        let task = tokio::spawn(accept(listener, shared.clone(), stopped));
        let stop = Arc::new(Stop {
            stop,
            task: Mutex::new(Some(task)),
        });
        Ok(FakeApiServer { shared, url, stop })
    }
}

/// Handle to a running fake API server. Clones share the server; it stops
/// when [`shutdown`](Self::shutdown) is called or the last clone is dropped.
#[derive(Clone)]
pub struct FakeApiServer {
    shared: Arc<Shared>,
    url: String,
    stop: Arc<Stop>,
}

/// Dropping the sender is itself the stop signal, so no `Drop` impl is needed.
struct Stop {
    stop: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl FakeApiServer {
    /// Options for a server that differs from the defaults.
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// A server with the defaults (1 s bookmarks, 1000 changes of history).
    pub async fn start() -> anyhow::Result<Self> {
        Builder::default().start().await
    }

    /// Makes the TokenReview API vouch for `token` as `username`, minted
    /// for `audiences`; any other token is unauthenticated.
    pub fn add_token(&self, token: &str, username: &str, audiences: &[&str]) {
        lock(&self.shared.tokens).insert(
            token.to_string(),
            (
                username.to_string(),
                audiences.iter().map(|a| a.to_string()).collect(),
            ),
        );
    }

    /// The base URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A kube client for this server, `default` as its default namespace.
    pub fn client(&self) -> anyhow::Result<kube::Client> {
        let config = kube::Config::new(self.url.parse()?);
        Ok(kube::Client::try_from(config)?)
    }

    /// An object as stored, without going through HTTP.
    pub fn get(&self, c: &Collection, namespace: &str, name: &str) -> Option<Value> {
        self.shared.state().get(c, namespace, name).cloned()
    }

    /// Every object of a collection, all namespaces, ordered by namespace and name.
    pub fn list(&self, c: &Collection) -> Vec<Value> {
        let state = self.shared.state();
        state
            .objects
            .get(c)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Creates or wholly replaces an object (collection from `apiVersion` and
    /// `kind`). Unlike HTTP writes this also sets `.status`, so tests can
    /// play the part of other controllers (a Deployment's ready replicas).
    pub fn put(&self, obj: Value) -> anyhow::Result<Value> {
        let (c, ns, name) = identify(&obj)?;
        let mut state = self.shared.state();
        Ok(match state.get(&c, &ns, &name) {
            Some(_) => state.update(&c, &ns, &name, obj)?,
            None => state.create(&c, &ns, obj)?,
        })
    }

    /// Merges the given fields into an object, creating it when absent, the
    /// way `kubectl apply` would; `.status` is written too (see [`put`](Self::put)).
    pub fn apply(&self, obj: Value) -> anyhow::Result<Value> {
        let (c, ns, name) = identify(&obj)?;
        let mut state = self.shared.state();
        Ok(match state.get(&c, &ns, &name).cloned() {
            Some(mut current) => {
                merge_patch(&mut current, &obj);
                state.update(&c, &ns, &name, current)?
            }
            None => state.create(&c, &ns, obj)?,
        })
    }

    /// Deletes an object (watchers see DELETED); returns it if it existed.
    pub fn delete(&self, c: &Collection, namespace: &str, name: &str) -> Option<Value> {
        self.shared.state().remove(c, namespace, name)
    }

    /// The newest resourceVersion handed out.
    pub fn resource_version(&self) -> u64 {
        self.shared.state().rv
    }

    /// Forgets the watch history, as etcd compaction does: any watch resumed
    /// from a version handed out before now gets `410 Expired` and must relist.
    /// Watches already running are unaffected unless they had missed changes.
    pub fn expire_history(&self) {
        let mut state = self.shared.state();
        if let Some(last) = state.history.back() {
            state.evicted = last.rv;
        }
        state.history.clear();
        state.rv += 1;
        state.resumable_from = state.rv;
    }

    /// What clients sent so far (the newest 10 000 requests).
    pub fn request_log(&self) -> Vec<LoggedRequest> {
        lock(&self.shared.log).iter().cloned().collect()
    }

    /// Watch responses currently streaming; drops back when clients go away.
    pub fn active_watches(&self) -> usize {
        self.shared.watches.load(Ordering::SeqCst)
    }

    /// Waits until the object exists and satisfies `done`, woken by every
    /// write rather than polling on a timer; fails after `timeout` with the
    /// last version seen.
    pub async fn wait_for(
        &self,
        c: &Collection,
        namespace: &str,
        name: &str,
        mut done: impl FnMut(&Value) -> bool,
        timeout: Duration,
    ) -> anyhow::Result<Value> {
        let mut changes = self.shared.state().changes.subscribe();
        let deadline = Instant::now() + timeout;
        loop {
            let current = self.get(c, namespace, name);
            if let Some(obj) = current.as_ref().filter(|o| done(o)) {
                return Ok(obj.clone());
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => anyhow::bail!("the fake API server stopped"),
                Err(_) => anyhow::bail!(
                    "timed out after {timeout:?} waiting for {}/{} {namespace}/{name}; last seen: {}",
                    c.group_version,
                    c.plural,
                    current.map_or_else(|| "nothing".to_string(), |o| o.to_string())
                ),
            }
        }
    }

    /// Stops accepting, ends running watches and waits for the accept loop.
    pub async fn shutdown(&self) {
        self.stop.stop.send_replace(true);
        let task = lock(&self.stop.task).take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The collection, namespace and name an object names itself by.
fn identify(obj: &Value) -> anyhow::Result<(Collection, String, String)> {
    let field = |v: &Value, what: &str| -> anyhow::Result<String> {
        v.as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow::anyhow!("object without {what}: {obj}"))
    };
    let c = Collection::of(
        &field(&obj["apiVersion"], "apiVersion")?,
        &field(&obj["kind"], "kind")?,
    );
    let ns = obj["metadata"]["namespace"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    Ok((c, ns, field(&obj["metadata"]["name"], "metadata.name")?))
}

struct Shared {
    /// Tokens the TokenReview API vouches for: token → (username, audiences).
    tokens: Mutex<BTreeMap<String, (String, Vec<String>)>>,
    state: Mutex<State>,
    log: Mutex<VecDeque<LoggedRequest>>,
    stopped: watch::Receiver<bool>,
    watches: AtomicUsize,
    config: Builder,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }
}

/// The store. One lock guards objects, history and the counter, so a list
/// or a watch start sees a consistent (objects, resourceVersion) pair.
struct State {
    /// The global resourceVersion counter: the newest version handed out.
    rv: u64,
    objects: BTreeMap<Collection, BTreeMap<Key, Value>>,
    /// Kinds seen per collection, to name lists and bookmarks.
    kinds: BTreeMap<Collection, String>,
    history: VecDeque<Change>,
    /// The newest version of a change dropped from `history`: a running
    /// watch behind it has missed something.
    evicted: u64,
    /// New watches (and list continuations) below this get `410 Expired`.
    resumable_from: u64,
    history_limit: usize,
    /// Carries the newest resourceVersion, waking watches and waiters.
    changes: watch::Sender<u64>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ChangeKind {
    Added,
    Modified,
    Deleted,
}

struct Change {
    rv: u64,
    collection: Collection,
    kind: ChangeKind,
    object: Value,
    /// The object before a modification, so a selector-filtered watch can
    /// turn "moved into / out of the selection" into ADDED / DELETED.
    previous: Option<Value>,
}

impl State {
    fn get(&self, c: &Collection, ns: &str, name: &str) -> Option<&Value> {
        self.objects
            .get(c)?
            .get(&(ns.to_string(), name.to_string()))
    }

    fn kind_of(&self, c: &Collection) -> Option<&str> {
        self.kinds.get(c).map(String::as_str)
    }

    /// Stores a new object, filling in what the server owns. `ns` is empty
    /// for cluster-scoped objects.
    fn create(&mut self, c: &Collection, ns: &str, mut obj: Value) -> Result<Value, ApiError> {
        let kind = self.kind_of(c).map(str::to_owned);
        let root = object_mut(&mut obj)?;
        root.entry("apiVersion")
            .or_insert_with(|| json!(c.group_version));
        if let Some(kind) = kind {
            root.entry("kind").or_insert_with(|| json!(kind));
        }
        let meta = metadata_mut(&mut obj)?;
        let name = match (
            meta.get("name").and_then(Value::as_str),
            meta.get("generateName"),
        ) {
            (Some(name), _) if !name.is_empty() => name.to_string(),
            (_, Some(Value::String(prefix))) => self.generate_name(c, ns, prefix),
            _ => {
                return Err(ApiError::invalid(
                    "metadata.name or metadata.generateName is required",
                ));
            }
        };
        if self.get(c, ns, &name).is_some() {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "AlreadyExists",
                format!("{} \"{name}\" already exists", c.plural),
            ));
        }
        self.rv += 1;
        let rv = self.rv;
        let meta = metadata_mut(&mut obj)?;
        meta.insert("name".into(), json!(name));
        if ns.is_empty() {
            meta.remove("namespace");
        } else {
            meta.insert("namespace".into(), json!(ns));
        }
        meta.insert(
            "uid".into(),
            json!(format!("00000000-0000-4000-8000-{rv:012x}")),
        );
        meta.insert("creationTimestamp".into(), json!(now()));
        meta.insert("generation".into(), json!(1));
        meta.insert("resourceVersion".into(), json!(rv.to_string()));
        self.store(c, ns, &name, obj.clone());
        self.record(c, ChangeKind::Added, obj.clone(), None);
        Ok(obj)
    }

    /// Replaces an existing object. Identity fields come from the stored
    /// object; `generation` moves when anything outside metadata and status
    /// changed. A write that changes nothing is not a change at all: no new
    /// version, no event — as on a real server, where this keeps controllers
    /// that rewrite the same status from waking themselves forever.
    fn update(
        &mut self,
        c: &Collection,
        ns: &str,
        name: &str,
        mut obj: Value,
    ) -> Result<Value, ApiError> {
        let old = self
            .get(c, ns, name)
            .cloned()
            .ok_or_else(|| ApiError::not_found(c, name))?;
        object_mut(&mut obj)?;
        let meta = metadata_mut(&mut obj)?;
        for field in [
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "generation",
            "resourceVersion",
        ] {
            match old["metadata"].get(field) {
                Some(v) => meta.insert(field.into(), v.clone()),
                None => meta.remove(field),
            };
        }
        if obj == old {
            return Ok(old);
        }
        let generation = old["metadata"]["generation"].as_i64().unwrap_or(1);
        let bump = i64::from(!same_spec(&old, &obj));
        self.rv += 1;
        let meta = metadata_mut(&mut obj)?;
        meta.insert("generation".into(), json!(generation + bump));
        meta.insert("resourceVersion".into(), json!(self.rv.to_string()));
        self.store(c, ns, name, obj.clone());
        self.record(c, ChangeKind::Modified, obj.clone(), Some(old));
        Ok(obj)
    }

    fn remove(&mut self, c: &Collection, ns: &str, name: &str) -> Option<Value> {
        let mut obj = self
            .objects
            .get_mut(c)?
            .remove(&(ns.to_string(), name.to_string()))?;
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.record(c, ChangeKind::Deleted, obj.clone(), None);
        Some(obj)
    }

    fn store(&mut self, c: &Collection, ns: &str, name: &str, obj: Value) {
        if let Some(kind) = obj["kind"].as_str() {
            self.kinds.insert(c.clone(), kind.to_string());
        }
        let key = (ns.to_string(), name.to_string());
        self.objects.entry(c.clone()).or_default().insert(key, obj);
    }

    fn record(&mut self, c: &Collection, kind: ChangeKind, object: Value, previous: Option<Value>) {
        let collection = c.clone();
        self.history.push_back(Change {
            rv: self.rv,
            collection,
            kind,
            object,
            previous,
        });
        while self.history.len() > self.history_limit {
            if let Some(gone) = self.history.pop_front() {
                self.evicted = gone.rv;
                self.resumable_from = self.resumable_from.max(gone.rv);
            }
        }
        self.changes.send_replace(self.rv);
    }

    /// Kubernetes' five-character suffix, from the same consonant-heavy alphabet.
    fn generate_name(&self, c: &Collection, ns: &str, prefix: &str) -> String {
        const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
        let mut seed = (self.rv + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        loop {
            let suffix: String = (0..5)
                .map(|i| ALPHABET[((seed >> (i * 8)) % ALPHABET.len() as u64) as usize] as char)
                .collect();
            let name = format!("{prefix}{suffix}");
            if self.get(c, ns, &name).is_none() {
                return name;
            }
            seed = seed.rotate_left(13).wrapping_add(0x2545_F491_4F6C_DD1D);
        }
    }
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// Equal apart from metadata and status, i.e. the same desired state.
fn same_spec(a: &Value, b: &Value) -> bool {
    let strip = |v: &Value| -> Map<String, Value> {
        let mut m = v.as_object().cloned().unwrap_or_default();
        m.remove("metadata");
        m.remove("status");
        m
    };
    strip(a) == strip(b)
}

fn object_mut(v: &mut Value) -> Result<&mut Map<String, Value>, ApiError> {
    v.as_object_mut()
        .ok_or_else(|| ApiError::bad_request("the body must be a JSON object"))
}

fn metadata_mut(v: &mut Value) -> Result<&mut Map<String, Value>, ApiError> {
    object_mut(v)?
        .entry("metadata")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .ok_or_else(|| ApiError::bad_request("metadata must be an object"))
}

/// A failed request, answered with a `Status` object as the real server
/// does; kube-rs turns that into `kube::Error::Api` with code and reason.
#[derive(Debug)]
struct ApiError {
    code: StatusCode,
    reason: &'static str,
    message: String,
}

impl ApiError {
    fn new(code: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BadRequest", message)
    }

    fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", message)
    }

    fn not_found(c: &Collection, name: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("{} \"{name}\" not found", c.plural),
        )
    }

    fn conflict(c: &Collection, name: &str) -> Self {
        let message = format!(
            "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; \
             please apply your changes to the latest version and try again",
            c.plural
        );
        Self::new(StatusCode::CONFLICT, "Conflict", message)
    }

    fn expired(message: String) -> Self {
        Self::new(StatusCode::GONE, "Expired", message)
    }

    fn status(&self) -> Value {
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": self.message, "reason": self.reason, "code": self.code.as_u16(),
        })
    }

    fn response(&self) -> Response<Body> {
        json_response(self.code, &self.status())
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.code.as_u16(),
            self.reason,
            self.message
        )
    }
}

impl std::error::Error for ApiError {}

fn json_response(code: StatusCode, v: &Value) -> Response<Body> {
    let mut res = Response::new(Full::new(Bytes::from(v.to_string())).boxed_unsync());
    *res.status_mut() = code;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    res
}

async fn accept(listener: TcpListener, shared: Arc<Shared>, mut stopped: watch::Receiver<bool>) {
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
struct Target {
    collection: Collection,
    /// `None`: across namespaces (lists, watches) or cluster-scoped.
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
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

fn flag(query: &Query, name: &str) -> bool {
    query.get(name).is_some_and(|v| v == "true" || v == "1")
}

/// A numeric query parameter; absent, empty and `0` all mean "not set",
/// as they do for `limit`, `timeoutSeconds` and `resourceVersion`.
fn number(query: &Query, name: &str) -> Result<Option<u64>, ApiError> {
    match query.get(name).map(String::as_str) {
        None | Some("" | "0") => Ok(None),
        Some(v) => v.parse().map(Some).map_err(|_| {
            ApiError::bad_request(format!("{name} must be a non-negative integer, not {v:?}"))
        }),
    }
}

/// Which face of an object a request reads or writes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum View {
    Object,
    Status,
    Scale,
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
        Some("scale") => View::Scale,
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

fn unsupported(ctype: &str) -> ApiError {
    ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "UnsupportedMediaType",
        format!("the body of the request was in an unknown format: {ctype}"),
    )
}

fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("malformed JSON body: {e}")))
}

/// The status in a create or object write is the server's to keep when the
/// collection has a status subresource.
fn drop_status(shared: &Shared, c: &Collection, mut obj: Value) -> Value {
    if shared.config.has_status(c) {
        set_field(&mut obj, "status", None);
    }
    obj
}

fn render(obj: &Value, view: View) -> Value {
    if view != View::Scale {
        return obj.clone();
    }
    let meta = &obj["metadata"];
    let selector = obj["status"]["selector"]
        .as_str()
        .map(str::to_owned)
        .or_else(|| {
            let labels = obj["spec"]["selector"]["matchLabels"].as_object()?;
            let terms: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect();
            Some(terms.join(","))
        });
    json!({
        "apiVersion": "autoscaling/v1", "kind": "Scale",
        "metadata": {
            "name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"],
            "resourceVersion": meta["resourceVersion"], "creationTimestamp": meta["creationTimestamp"],
        },
        // Workload controllers default `replicas` to 1.
        "spec": {"replicas": obj["spec"]["replicas"].as_i64().unwrap_or(1)},
        "status": {"replicas": obj["status"]["replicas"].as_i64().unwrap_or(0), "selector": selector},
    })
}

/// The object after writing `incoming` (a whole object, or a Scale) through `view`.
fn merge_back(shared: &Shared, c: &Collection, old: &Value, incoming: Value, view: View) -> Value {
    match view {
        View::Object if shared.config.has_status(c) => {
            let mut new = incoming;
            set_field(&mut new, "status", old.get("status").cloned());
            new
        }
        View::Object => incoming,
        View::Status => {
            let mut new = old.clone();
            set_field(&mut new, "status", incoming.get("status").cloned());
            new
        }
        View::Scale => {
            let mut new = old.clone();
            if let Some(replicas) = incoming["spec"]["replicas"].as_i64() {
                let mut spec = old.get("spec").cloned().unwrap_or_else(|| json!({}));
                set_field(&mut spec, "replicas", Some(json!(replicas)));
                set_field(&mut new, "spec", Some(spec));
            }
            new
        }
    }
}

/// Sets (`Some`) or removes (`None`) a field of an object; a no-op on non-objects.
fn set_field(obj: &mut Value, key: &str, value: Option<Value>) {
    if let Some(o) = obj.as_object_mut() {
        match value {
            Some(v) => o.insert(key.to_string(), v),
            None => o.remove(key),
        };
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum PatchType {
    /// RFC 7386; strategic merge patches are treated as this too.
    Merge,
    /// Server-side apply, approximated as a merge of the applied fields.
    Apply,
    /// RFC 6902.
    Json,
}

impl PatchType {
    fn parse(ctype: Option<&str>) -> Result<Self, ApiError> {
        match ctype {
            Some("application/merge-patch+json" | "application/strategic-merge-patch+json") => {
                Ok(Self::Merge)
            }
            Some("application/apply-patch+yaml") => Ok(Self::Apply),
            Some("application/json-patch+json") => Ok(Self::Json),
            other => Err(unsupported(other.unwrap_or("no Content-Type"))),
        }
    }
}

/// PUT (`patch` is `None`) or PATCH through one of the object's views.
fn write(
    shared: &Shared,
    target: &Target,
    name: &str,
    view: View,
    patch: Option<PatchType>,
    query: &Query,
    body: &[u8],
) -> Result<Response<Body>, ApiError> {
    if patch == Some(PatchType::Apply) && query.get("fieldManager").is_none_or(String::is_empty) {
        return Err(ApiError::bad_request(
            "fieldManager is required for apply patch",
        ));
    }
    let (c, ns) = (
        &target.collection,
        target.namespace.as_deref().unwrap_or_default(),
    );
    let input = parse_json(body)?;
    let mut state = shared.state();
    let Some(old) = state.get(c, ns, name).cloned() else {
        if patch == Some(PatchType::Apply) && view == View::Object {
            let mut obj = drop_status(shared, c, input);
            metadata_mut(&mut obj)?.insert("name".into(), json!(name));
            let created = state.create(c, ns, obj)?;
            return Ok(json_response(StatusCode::CREATED, &created));
        }
        return Err(ApiError::not_found(c, name));
    };
    let current = render(&old, view);
    let incoming = match patch {
        None => input,
        Some(PatchType::Merge | PatchType::Apply) => {
            let mut v = current.clone();
            merge_patch(&mut v, &input);
            v
        }
        Some(PatchType::Json) => json_patch(current.clone(), &input)?,
    };
    let wanted_rv = incoming["metadata"]["resourceVersion"]
        .as_str()
        .filter(|v| !v.is_empty());
    if wanted_rv.is_some_and(|v| Some(v) != current["metadata"]["resourceVersion"].as_str()) {
        return Err(ApiError::conflict(c, name));
    }
    if incoming["metadata"]["name"]
        .as_str()
        .is_some_and(|n| n != name)
    {
        return Err(ApiError::bad_request(
            "the name of the object does not match the name on the URL",
        ));
    }
    let new = merge_back(shared, c, &old, incoming, view);
    let stored = state.update(c, ns, name, new)?;
    Ok(json_response(StatusCode::OK, &render(&stored, view)))
}

fn delete(
    shared: &Shared,
    c: &Collection,
    ns: &str,
    name: &str,
    body: &[u8],
) -> Result<Response<Body>, ApiError> {
    let options = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        parse_json(body)?
    };
    let mut state = shared.state();
    let current = state
        .get(c, ns, name)
        .ok_or_else(|| ApiError::not_found(c, name))?;
    for field in ["resourceVersion", "uid"] {
        if let Some(want) = options["preconditions"][field].as_str()
            && current["metadata"][field].as_str() != Some(want)
        {
            return Err(ApiError::conflict(c, name));
        }
    }
    let gone = state
        .remove(c, ns, name)
        .ok_or_else(|| ApiError::not_found(c, name))?;
    Ok(json_response(StatusCode::OK, &gone))
}

fn list(shared: &Shared, target: &Target, query: &Query) -> Result<Response<Body>, ApiError> {
    let filter = Filter::new(target, query)?;
    let limit = number(query, "limit")?.map(|n| usize::try_from(n).unwrap_or(usize::MAX));
    let state = shared.state();
    // A continue token is `{list rv}/{namespace}/{name}` of the last item
    // returned; later pages report the first page's version, so a watch
    // started from it replays whatever changed while paging.
    let (list_rv, after) = match query.get("continue").filter(|t| !t.is_empty()) {
        None => (state.rv, None),
        Some(token) => {
            let bad = || ApiError::bad_request(format!("invalid continue token {token:?}"));
            let mut parts = token.splitn(3, '/');
            let (rv, ns, name) = (
                parts.next(),
                parts.next().ok_or_else(bad)?,
                parts.next().ok_or_else(bad)?,
            );
            let rv: u64 = rv.and_then(|r| r.parse().ok()).ok_or_else(bad)?;
            if rv < state.resumable_from {
                return Err(ApiError::expired(format!(
                    "the continue token for version {rv} has expired"
                )));
            }
            (rv, Some((ns.to_string(), name.to_string())))
        }
    };
    let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
    let mut items = Vec::new();
    let mut next = None;
    let mut last: Option<&Key> = None;
    for (key, obj) in state
        .objects
        .get(&target.collection)
        .into_iter()
        .flat_map(|m| m.range((lower.clone(), Bound::Unbounded)))
    {
        if !filter.matches(obj) {
            continue;
        }
        if let (Some(limit), Some((ns, name))) = (limit, last)
            && items.len() == limit
        {
            next = Some(format!("{list_rv}/{ns}/{name}"));
            break;
        }
        items.push(obj.clone());
        last = Some(key);
    }
    let kind = state
        .kind_of(&target.collection)
        .map_or_else(|| "List".to_string(), |k| format!("{k}List"));
    let mut metadata = json!({"resourceVersion": list_rv.to_string()});
    if let Some(token) = next {
        metadata["continue"] = json!(token);
    }
    let list = json!({"kind": kind, "apiVersion": target.collection.group_version, "metadata": metadata, "items": items});
    Ok(json_response(StatusCode::OK, &list))
}

/// A label selector requirement.
enum Label {
    Eq(String, String),
    Ne(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    Absent(String),
}

/// Namespace, label and field selection of a list or watch.
struct Filter {
    namespace: Option<String>,
    labels: Vec<Label>,
    /// (dotted path, value, negated)
    fields: Vec<(String, String, bool)>,
}

impl Filter {
    fn new(target: &Target, query: &Query) -> Result<Self, ApiError> {
        let labels = query
            .get("labelSelector")
            .map(|s| parse_labels(s))
            .transpose()?
            .unwrap_or_default();
        let mut fields = Vec::new();
        for term in query
            .get("fieldSelector")
            .into_iter()
            .flat_map(|s| s.split(','))
            .filter(|t| !t.trim().is_empty())
        {
            let (path, value, negated) = if let Some((p, v)) = term.split_once("!=") {
                (p, v, true)
            } else if let Some((p, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                (p, v, false)
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid field selector term {term:?}"
                )));
            };
            fields.push((path.trim().to_string(), value.trim().to_string(), negated));
        }
        Ok(Self {
            namespace: target.namespace.clone(),
            labels,
            fields,
        })
    }

    fn matches(&self, obj: &Value) -> bool {
        let meta = &obj["metadata"];
        if let Some(ns) = &self.namespace
            && meta["namespace"].as_str().unwrap_or_default() != ns
        {
            return false;
        }
        let label = |k: &str| meta["labels"][k].as_str();
        let labels_ok = self.labels.iter().all(|req| match req {
            Label::Eq(k, v) => label(k) == Some(v),
            Label::Ne(k, v) => label(k) != Some(v),
            Label::In(k, vs) => label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            Label::NotIn(k, vs) => label(k).is_none_or(|l| vs.iter().all(|v| v != l)),
            Label::Exists(k) => label(k).is_some(),
            Label::Absent(k) => label(k).is_none(),
        });
        labels_ok
            && self.fields.iter().all(|(path, value, negated)| {
                let found = path.split('.').try_fold(obj, |v, seg| v.get(seg));
                let found = match found {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Null) | None => String::new(),
                    Some(other) => other.to_string(),
                };
                (found == *value) != *negated
            })
    }
}

/// `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k`, `!k`, comma-separated.
fn parse_labels(selector: &str) -> Result<Vec<Label>, ApiError> {
    let bad = || ApiError::bad_request(format!("invalid label selector {selector:?}"));
    let mut terms = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, ch) in selector.char_indices() {
        match ch {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                terms.push(&selector[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&selector[start..]);
    let mut out = Vec::new();
    for term in terms.into_iter().map(str::trim).filter(|t| !t.is_empty()) {
        let key = |k: &str| -> Result<String, ApiError> {
            let k = k.trim();
            if k.is_empty() || k.contains(char::is_whitespace) {
                Err(bad())
            } else {
                Ok(k.to_string())
            }
        };
        let req = if let Some((head, values)) = term.split_once('(') {
            let values = values.strip_suffix(')').ok_or_else(bad)?;
            let values: Vec<String> = values.split(',').map(|v| v.trim().to_string()).collect();
            match head.split_whitespace().collect::<Vec<_>>().as_slice() {
                [k, "in"] => Label::In(key(k)?, values),
                [k, "notin"] => Label::NotIn(key(k)?, values),
                _ => return Err(bad()),
            }
        } else if let Some((k, v)) = term.split_once("!=") {
            Label::Ne(key(k)?, v.trim().to_string())
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            Label::Eq(key(k)?, v.trim().to_string())
        } else if let Some(k) = term.strip_prefix('!') {
            Label::Absent(key(k)?)
        } else {
            Label::Exists(key(term)?)
        };
        out.push(req);
    }
    Ok(out)
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
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
                merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

/// RFC 6902 JSON patch: add, remove, replace and test (move and copy are
/// not used by controllers).
fn json_patch(mut doc: Value, ops: &Value) -> Result<Value, ApiError> {
    let ops = ops
        .as_array()
        .ok_or_else(|| ApiError::bad_request("a JSON patch must be an array"))?;
    for op in ops {
        let str_field = |f: &str| {
            op[f].as_str().ok_or_else(|| {
                ApiError::bad_request(format!("JSON patch operation without {f}: {op}"))
            })
        };
        let value = || {
            op.get("value")
                .cloned()
                .ok_or_else(|| ApiError::bad_request(format!("no value in {op}")))
        };
        let path = str_field("path")?;
        match str_field("op")? {
            "add" => pointer_add(&mut doc, path, value()?)?,
            "remove" => drop(pointer_remove(&mut doc, path)?),
            "replace" => {
                pointer_remove(&mut doc, path)?;
                pointer_add(&mut doc, path, value()?)?;
            }
            "test" if doc.pointer(path) == Some(&value()?) => {}
            "test" => {
                return Err(ApiError::invalid(format!(
                    "JSON patch test failed at {path}"
                )));
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown JSON patch operation {other:?}"
                )));
            }
        }
    }
    Ok(doc)
}

/// The container a JSON pointer's last token lives in, and that token.
fn pointer_parent<'a>(doc: &'a mut Value, path: &str) -> Result<(&'a mut Value, String), ApiError> {
    let missing = || ApiError::invalid(format!("no such path in the object: {path}"));
    let (parent, last) = path.rsplit_once('/').ok_or_else(missing)?;
    let token = last.replace("~1", "/").replace("~0", "~");
    Ok((doc.pointer_mut(parent).ok_or_else(missing)?, token))
}

fn pointer_add(doc: &mut Value, path: &str, value: Value) -> Result<(), ApiError> {
    if path.is_empty() {
        *doc = value;
        return Ok(());
    }
    let (parent, token) = pointer_parent(doc, path)?;
    match parent {
        Value::Object(m) => {
            m.insert(token, value);
        }
        Value::Array(a) if token == "-" => a.push(value),
        Value::Array(a) => match token.parse::<usize>() {
            Ok(i) if i <= a.len() => a.insert(i, value),
            _ => return Err(ApiError::invalid(format!("bad array index in {path}"))),
        },
        _ => {
            return Err(ApiError::invalid(format!(
                "cannot add below a scalar at {path}"
            )));
        }
    }
    Ok(())
}

fn pointer_remove(doc: &mut Value, path: &str) -> Result<Value, ApiError> {
    let missing = || ApiError::invalid(format!("no such path in the object: {path}"));
    let (parent, token) = pointer_parent(doc, path)?;
    match parent {
        Value::Object(m) => m.remove(&token).ok_or_else(missing),
        Value::Array(a) => match token.parse::<usize>() {
            Ok(i) if i < a.len() => Ok(a.remove(i)),
            _ => Err(missing()),
        },
        _ => Err(missing()),
    }
}

/// Starts a watch response. Nothing is spawned: the response body is the
/// watch, so when the client goes away hyper drops it and the watch ends.
fn watch(shared: &Arc<Shared>, target: &Target, query: &Query) -> Result<Response<Body>, ApiError> {
    let filter = Filter::new(target, query)?;
    let timeout = Duration::from_secs(number(query, "timeoutSeconds")?.unwrap_or(1800));
    // Absent or "0" means "from any version": the current state.
    let from = number(query, "resourceVersion")?;
    let initial_events = flag(query, "sendInitialEvents");
    let bookmarks = flag(query, "allowWatchBookmarks");
    let period = shared.config.bookmark_interval;
    let mut ticker = tokio::time::interval_at(Instant::now() + period, period);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let state = shared.state();
    let c = target.collection.clone();
    let mut w = Watch {
        shared: shared.clone(),
        kind: state.kind_of(&c).unwrap_or_default().to_string(),
        collection: c,
        filter,
        cursor: state.rv,
        pending: VecDeque::new(),
        finished: false,
        changes: state.changes.subscribe(),
        stopped: shared.stopped.clone(),
        ticker,
        bookmarks,
        deadline: Instant::now() + timeout,
        _count: WatchCount::new(shared),
    };
    match from {
        Some(rv) if !initial_events && rv < state.resumable_from => {
            let message = format!("too old resource version: {rv} ({})", state.resumable_from);
            w.pending
                .push_back(event_line("ERROR", &ApiError::expired(message).status()));
            w.finished = true;
        }
        Some(rv) if !initial_events => {
            w.cursor = rv;
            w.scan(&state);
        }
        // Absent or "0" (or a streaming list): the current state as
        // synthetic ADDED events, then changes from now on.
        _ => {
            for obj in state
                .objects
                .get(&w.collection)
                .into_iter()
                .flat_map(|m| m.values())
            {
                if w.filter.matches(obj) {
                    w.pending.push_back(event_line("ADDED", obj));
                }
            }
        }
    }
    drop(state);
    if !w.finished && (bookmarks || initial_events) {
        w.bookmark(initial_events);
    }
    let stream = futures::stream::unfold(
        w,
        |mut w| async move { w.next().await.map(|line| (line, w)) },
    );
    let body = StreamBody::new(stream.map(|line| Ok::<_, Infallible>(Frame::data(line))));
    let mut res = Response::new(BodyExt::boxed_unsync(body));
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    Ok(res)
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut line = json!({"type": kind, "object": object}).to_string();
    line.push('\n');
    Bytes::from(line)
}

/// Counts live watch responses for [`FakeApiServer::active_watches`].
struct WatchCount(Arc<Shared>);

impl WatchCount {
    fn new(shared: &Arc<Shared>) -> Self {
        shared.watches.fetch_add(1, Ordering::SeqCst);
        Self(shared.clone())
    }
}

impl Drop for WatchCount {
    fn drop(&mut self) {
        self.0.watches.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One watch response in progress: a cursor into the history plus
/// encoded lines not yet sent.
struct Watch {
    shared: Arc<Shared>,
    collection: Collection,
    kind: String,
    filter: Filter,
    /// Every change up to this version has been considered.
    cursor: u64,
    pending: VecDeque<Bytes>,
    finished: bool,
    changes: watch::Receiver<u64>,
    stopped: watch::Receiver<bool>,
    ticker: tokio::time::Interval,
    bookmarks: bool,
    deadline: Instant,
    _count: WatchCount,
}

enum Wake {
    End,
    Changed,
    Tick,
}

impl Watch {
    async fn next(&mut self) -> Option<Bytes> {
        loop {
            if let Some(line) = self.pending.pop_front() {
                return Some(line);
            }
            if self.finished || *self.stopped.borrow() {
                return None;
            }
            let wake = tokio::select! {
                _ = tokio::time::sleep_until(self.deadline) => Wake::End,
                _ = self.stopped.changed() => Wake::End,
                changed = self.changes.changed() => if changed.is_ok() { Wake::Changed } else { Wake::End },
                _ = self.ticker.tick(), if self.bookmarks => Wake::Tick,
            };
            match wake {
                Wake::End => return None,
                Wake::Changed => {
                    let shared = self.shared.clone();
                    self.scan(&shared.state());
                }
                Wake::Tick => self.bookmark(false),
            }
        }
    }

    /// Queues the changes after the cursor that this watch selects, or an
    /// ERROR 410 when some of them have already left the history.
    fn scan(&mut self, state: &State) {
        if state.evicted > self.cursor {
            let message = format!(
                "too old resource version: {} ({})",
                self.cursor, state.evicted
            );
            self.pending
                .push_back(event_line("ERROR", &ApiError::expired(message).status()));
            self.finished = true;
            return;
        }
        let start = state.history.partition_point(|ch| ch.rv <= self.cursor);
        for ch in state
            .history
            .range(start..)
            .filter(|ch| ch.collection == self.collection)
        {
            let now = self.filter.matches(&ch.object);
            let before = ch.previous.as_ref().is_some_and(|p| self.filter.matches(p));
            let kind = match (ch.kind, before, now) {
                (ChangeKind::Added, _, true) | (ChangeKind::Modified, false, true) => "ADDED",
                (ChangeKind::Modified, true, true) => "MODIFIED",
                (ChangeKind::Deleted, _, true) | (ChangeKind::Modified, true, false) => "DELETED",
                _ => continue,
            };
            self.pending.push_back(event_line(kind, &ch.object));
        }
        self.cursor = self.cursor.max(state.rv);
        if self.kind.is_empty() {
            self.kind = state
                .kind_of(&self.collection)
                .unwrap_or_default()
                .to_string();
        }
    }

    /// A BOOKMARK at the cursor; `initial_end` marks the end of a streaming list.
    fn bookmark(&mut self, initial_end: bool) {
        let mut metadata = json!({"resourceVersion": self.cursor.to_string()});
        if initial_end {
            metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let object = json!({"kind": self.kind, "apiVersion": self.collection.group_version, "metadata": metadata});
        self.pending.push_back(event_line("BOOKMARK", &object));
    }
}
