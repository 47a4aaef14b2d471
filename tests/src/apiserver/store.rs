//! The store: objects by collection, the global resourceVersion counter
//! and the bounded history of changes that watches replay.

use std::collections::{BTreeMap, VecDeque};

use http::StatusCode;
use serde_json::{Map, Value, json};
use tokio::sync::watch;

use super::Collection;
use super::response::ApiError;

/// An object's place in its collection: (namespace, name), namespace empty
/// for cluster-scoped objects.
pub(super) type Key = (String, String);

/// The store. One lock guards objects, history and the counter, so a list
/// or a watch start sees a consistent (objects, resourceVersion) pair.
pub(super) struct State {
    /// The global resourceVersion counter: the newest version handed out.
    pub(super) rv: u64,
    pub(super) objects: BTreeMap<Collection, BTreeMap<Key, Value>>,
    /// Kinds seen per collection, to name lists and bookmarks.
    pub(super) kinds: BTreeMap<Collection, String>,
    pub(super) history: VecDeque<Change>,
    /// The newest version of a change dropped from `history`: a running
    /// watch behind it has missed something.
    pub(super) evicted: u64,
    /// New watches (and list continuations) below this get `410 Expired`.
    pub(super) resumable_from: u64,
    pub(super) history_limit: usize,
    /// Carries the newest resourceVersion, waking watches and waiters.
    pub(super) changes: watch::Sender<u64>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum ChangeKind {
    Added,
    Modified,
    Deleted,
}

pub(super) struct Change {
    pub(super) rv: u64,
    pub(super) collection: Collection,
    pub(super) kind: ChangeKind,
    pub(super) object: Value,
    /// The object before a modification, so a selector-filtered watch can
    /// turn "moved into / out of the selection" into ADDED / DELETED.
    pub(super) previous: Option<Value>,
}

impl State {
    pub(super) fn get(&self, c: &Collection, ns: &str, name: &str) -> Option<&Value> {
        self.objects
            .get(c)?
            .get(&(ns.to_string(), name.to_string()))
    }

    pub(super) fn kind_of(&self, c: &Collection) -> Option<&str> {
        self.kinds.get(c).map(String::as_str)
    }

    /// Stores a new object, filling in what the server owns. `ns` is empty
    /// for cluster-scoped objects.
    pub(super) fn create(
        &mut self,
        c: &Collection,
        ns: &str,
        mut obj: Value,
    ) -> Result<Value, ApiError> {
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
        super::validate::check(c, &obj, None)?;
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
    pub(super) fn update(
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
        super::validate::check(c, &obj, Some(&old))?;
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

    pub(super) fn remove(&mut self, c: &Collection, ns: &str, name: &str) -> Option<Value> {
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

pub(super) fn metadata_mut(v: &mut Value) -> Result<&mut Map<String, Value>, ApiError> {
    object_mut(v)?
        .entry("metadata")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .ok_or_else(|| ApiError::bad_request("metadata must be an object"))
}
