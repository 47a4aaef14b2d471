//! Every status a BackendPool went through, as an API server's watch
//! delivers it: for assertions about what was ever stored ("Programmed was
//! never False"), not only what is stored at the end. Speaks only the
//! Kubernetes API, so it serves the fake and a real control plane alike.

use std::sync::{Arc, Mutex, PoisonError};

use futures::StreamExt;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use serde_json::Value;
use sluice_crds::BackendPool;
use tokio::task::JoinHandle;

/// One stored version of the pool's status.
#[derive(Clone, Debug, PartialEq)]
pub struct Seen {
    /// The object's `resourceVersion`.
    pub resource_version: String,
    /// Its `.status`, as JSON (`null` before the controller wrote one).
    pub status: Value,
}

impl Seen {
    /// A condition as `(status, reason)`.
    pub fn condition(&self, type_: &str) -> Option<(String, String)> {
        self.status["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == type_)
            .map(|c| {
                (
                    c["status"].as_str().unwrap_or_default().to_string(),
                    c["reason"].as_str().unwrap_or_default().to_string(),
                )
            })
    }
}

/// Watches one BackendPool and keeps every version of its status; the
/// watch ends when this is dropped.
pub struct StatusLog {
    seen: Arc<Mutex<Vec<Seen>>>,
    task: JoinHandle<()>,
}

impl StatusLog {
    /// Starts watching BackendPool `namespace/name` through `client`.
    pub fn start(client: Client, namespace: &str, name: &str) -> Self {
        let api: Api<BackendPool> = Api::namespaced(client, namespace);
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let into = Arc::clone(&seen);
        let task = tokio::spawn(async move {
            let mut objects = watcher(api, config)
                .default_backoff()
                .applied_objects()
                .boxed();
            while let Some(next) = objects.next().await {
                let Ok(pool) = next else { continue };
                let entry = Seen {
                    resource_version: pool.metadata.resource_version.clone().unwrap_or_default(),
                    status: serde_json::to_value(&pool.status).unwrap_or(Value::Null),
                };
                into.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(entry);
            }
        });
        Self { seen, task }
    }

    /// Every version seen so far, oldest first.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Drop for StatusLog {
    fn drop(&mut self) {
        self.task.abort();
    }
}
