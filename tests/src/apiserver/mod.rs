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
//! `status` and `scale` subresources; discovery of the registered kinds
//! (so `kube::discovery::pinned_kind` resolves them); watch with replay from a bounded
//! history, synthetic ADDED events, `sendInitialEvents`, periodic bookmarks,
//! `timeoutSeconds`, selector-aware ADDED/DELETED transitions and an ERROR
//! `410 Expired` event once the requested version has left the history.
//!
//! Simplifications: lists always serve the newest state (a `resourceVersion`
//! on a list is ignored); apply patches ignore field ownership; no
//! finalizers, admission or defaulting.
//!
//! The files follow the request: `routes` accepts connections and
//! dispatches each request, `discovery` describes the registered kinds,
//! `object`, `list` and `watch` answer it,
//! `select` and `patch` are the selector and patch languages they share,
//! `store` holds the objects and their change history, and `response`
//! turns results and failures into HTTP responses; `validate` checks
//! Events as the real server does.

mod discovery;
mod list;
mod object;
mod patch;
mod response;
mod routes;
mod select;
mod store;
mod validate;
mod watch;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use discovery::Registry;
pub use discovery::Resource;
use patch::merge_patch;
use routes::accept;
use store::State;

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
    without_scale: BTreeSet<Collection>,
    resources: Registry,
}

impl Default for Builder {
    fn default() -> Self {
        Self {
            bookmark_interval: Duration::from_secs(1),
            history_limit: 1000,
            with_status: BTreeSet::new(),
            without_status: BTreeSet::new(),
            without_scale: BTreeSet::new(),
            resources: Resource::defaults()
                .into_iter()
                .map(|r| (r.collection(), r))
                .collect(),
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
    /// A registered kind has one when registered with it; a collection
    /// nobody registered has one outside core `v1`. This overrides both.
    pub fn status_subresource(mut self, group_version: &str, plural: &str) -> Self {
        let c = Collection::new(group_version, plural);
        if let Some(r) = self.resources.get_mut(&c) {
            r.status = true;
        }
        self.without_status.remove(&c);
        self.with_status.insert(c);
        self
    }

    /// Takes the `status` subresource away from a collection.
    pub fn without_status_subresource(mut self, group_version: &str, plural: &str) -> Self {
        let c = Collection::new(group_version, plural);
        if let Some(r) = self.resources.get_mut(&c) {
            r.status = false;
        }
        self.with_status.remove(&c);
        self.without_status.insert(c);
        self
    }

    /// Registers a kind for discovery, replacing any registration of the
    /// same collection; its subresources are the ones it is registered with.
    /// The built-in registrations are listed in [`Resource::defaults`].
    pub fn resource(mut self, resource: Resource) -> Self {
        self.resources.insert(resource.collection(), resource);
        self
    }

    /// Takes the `scale` subresource away from a collection: its `/scale`
    /// answers `404 NotFound` and discovery no longer lists `plural/scale`,
    /// as for a kind that cannot be scaled.
    pub fn without_scale_subresource(mut self, group_version: &str, plural: &str) -> Self {
        let c = Collection::new(group_version, plural);
        if let Some(r) = self.resources.get_mut(&c) {
            r.scale = false;
        }
        self.without_scale.insert(c);
        self
    }

    fn has_status(&self, c: &Collection) -> bool {
        if self.with_status.contains(c) {
            return true;
        }
        if self.without_status.contains(c) {
            return false;
        }
        match self.resources.get(c) {
            Some(r) => r.status,
            None => c.group_version != "v1",
        }
    }

    /// Registered kinds have `scale` when registered with it; others keep
    /// the fake's old permissive default of serving it.
    fn has_scale(&self, c: &Collection) -> bool {
        !self.without_scale.contains(c) && self.resources.get(c).is_none_or(|r| r.scale)
    }

    /// Binds `127.0.0.1:0` and serves until [`FakeApiServer::shutdown`] or
    /// until the last handle is dropped.
    pub async fn start(self) -> anyhow::Result<FakeApiServer> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let url = format!("http://{}", listener.local_addr()?);
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let (changes, _) = tokio::sync::watch::channel(0);
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
    stop: tokio::sync::watch::Sender<bool>,
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

    /// Stops vouching for `token`, as the real API server does once the
    /// token's ServiceAccount or pod is deleted: TokenReviews of it answer
    /// unauthenticated from now on.
    pub fn revoke_token(&self, token: &str) {
        lock(&self.shared.tokens).remove(token);
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
    stopped: tokio::sync::watch::Receiver<bool>,
    watches: AtomicUsize,
    config: Builder,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }
}
