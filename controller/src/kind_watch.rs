//! One kind's watch, forwarded to the index: the API server's watch events
//! become [`Change`]s, a relist one change with every object, and failures
//! are logged once per outage rather than on every retry.

use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use futures::StreamExt;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use crate::admin::Synced;
use crate::api_errors::{Causes, Outage, Report};
use crate::index::{self, Change};

/// Forwards one kind's watch events to the index as [`Change`]s.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn watch_kind<K>(
    api: Api<K>,
    kind: &'static str,
    config: watcher::Config,
    tx: mpsc::Sender<(&'static str, Change)>,
    applied: fn(K) -> Change,
    deleted: fn(index::Key) -> Change,
    relisted: fn(Vec<K>) -> Change,
    synced: Arc<Synced>,
    flag: fn(&Synced) -> &AtomicBool,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    K::DynamicType: Default,
{
    let mut events = watcher(api, config).default_backoff().boxed();
    let mut buffer: Vec<K> = Vec::new();
    let mut outage = Outage::default();
    while let Some(event) = events.next().await {
        // `Init` comes before the relist is tried; only what came back
        // from the API server shows that it answers again.
        let answered = matches!(&event, Ok(e) if !matches!(e, watcher::Event::Init));
        if answered && let Some(after) = outage.succeeded(Instant::now()) {
            tracing::info!(kind, ?after, "watch works again");
        }
        let change = match event {
            Ok(watcher::Event::Init) => {
                buffer.clear();
                continue;
            }
            Ok(watcher::Event::InitApply(obj)) => {
                buffer.push(obj);
                continue;
            }
            Ok(watcher::Event::InitDone) => {
                flag(&synced).store(true, Ordering::Release);
                relisted(std::mem::take(&mut buffer))
            }
            Ok(watcher::Event::Apply(obj)) => applied(obj),
            Ok(watcher::Event::Delete(obj)) => {
                deleted((obj.namespace().unwrap_or_default(), obj.name_any()))
            }
            Err(e) => {
                let error = Causes(&e);
                match outage.failed(Instant::now()) {
                    Report::Started => {
                        tracing::warn!(kind, %error, "watch failed; retrying with backoff");
                    }
                    Report::Continuing {
                        failing_for,
                        unlogged,
                    } => {
                        tracing::warn!(kind, %error, ?failing_for, unlogged, "watch still failing; retrying with backoff");
                    }
                    Report::Quiet => {
                        tracing::debug!(kind, %error, "watch failed; retrying with backoff");
                    }
                }
                continue;
            }
        };
        if tx.send((kind, change)).await.is_err() {
            return;
        }
    }
}
