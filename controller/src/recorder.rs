//! Events (events.k8s.io/v1) about pools and triggers, written so that each
//! distinct message stays readable.
//!
//! kube-runtime's `Recorder` keys its series by type, reason, action,
//! reporter and object, not by the note: every later Event with the same
//! reason on the same object only bumps the first one's `series.count`,
//! and the first note stays. Seven rescales of a trigger left one Event
//! reading "New size: 5; reason: from 1 to 5 …" with a count of 7, and a
//! scale from zero after a scale to zero read "New size: 0" while the
//! target was at 1. HPA's own Events (the core/v1 recorder) count only
//! repeats of the same message. This recorder does the same: the note is
//! part of the key, so each distinct decision is its own Event, and only a
//! repeat of the very same note (a failing patch retried every pass)
//! becomes a series with a count.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event as K8sEvent, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};

pub use kube::runtime::events::EventType;

/// How long a repeat of the same note is counted in the Event already
/// written rather than written anew (kube-runtime's and client-go's 6 min).
const SERIES_FOR: SignedDuration = SignedDuration::from_mins(6);

/// The API server refuses an Event whose note is longer (events.k8s.io/v1
/// validation); longer notes are cut at a character boundary.
pub const NOTE_LIMIT: usize = 1024;

/// One Event to publish.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Event {
    /// `Normal` or `Warning`.
    pub type_: EventType,
    /// Short `PascalCase` reason, the `Reason` column of `kubectl describe`.
    pub reason: String,
    /// What was done (`Scale`, `SetProgrammed`).
    pub action: String,
    /// The human text, the `Message` column.
    pub note: String,
}

/// What makes two Events one series: everything, the note included.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    event: Event,
    kind: Option<String>,
    namespace: Option<String>,
    name: Option<String>,
    uid: Option<String>,
}

/// Publishes Events as one reporting controller instance.
#[derive(Clone)]
pub struct Recorder {
    client: Client,
    controller: String,
    instance: String,
    written: Arc<Mutex<HashMap<Key, K8sEvent>>>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("controller", &self.controller)
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

/// `note` cut to [`NOTE_LIMIT`] bytes at a character boundary.
fn bounded(note: &str) -> String {
    if note.len() <= NOTE_LIMIT {
        return note.to_string();
    }
    let mut end = NOTE_LIMIT - '…'.len_utf8();
    while !note.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &note[..end])
}

impl Recorder {
    /// A recorder reporting as `controller`, instance `instance` (the pod).
    pub fn new(client: Client, controller: &str, instance: &str) -> Self {
        Self {
            client,
            controller: controller.to_string(),
            instance: instance.to_string(),
            written: Arc::default(),
        }
    }

    /// Writes `event` about `regarding`: a new Event, or, when the same
    /// note was written about the same object within [`SERIES_FOR`], one
    /// more in that Event's series.
    pub async fn publish(
        &self,
        event: &Event,
        regarding: &ObjectReference,
    ) -> Result<(), kube::Error> {
        let event = Event {
            note: bounded(&event.note),
            ..event.clone()
        };
        let now = Timestamp::now();
        let key = Key {
            event: event.clone(),
            kind: regarding.kind.clone(),
            namespace: regarding.namespace.clone(),
            name: regarding.name.clone(),
            uid: regarding.uid.clone(),
        };
        let previous = {
            let mut written = self.written.lock().unwrap_or_else(|p| p.into_inner());
            written.retain(|_, e| last_seen(e).is_some_and(|t| t + SERIES_FOR > now));
            written.get(&key).cloned()
        };
        let namespace = regarding.namespace.as_deref().unwrap_or("default");
        let api: Api<K8sEvent> = Api::namespaced(self.client.clone(), namespace);
        let stored = match previous {
            Some(mut stored) => {
                let series = EventSeries {
                    count: stored.series.as_ref().map_or(2, |s| s.count + 1),
                    last_observed_time: MicroTime(now),
                };
                let patch = serde_json::json!({ "series": &series });
                match api
                    .patch(
                        &stored.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(&patch),
                    )
                    .await
                {
                    Ok(_) => {
                        stored.series = Some(series);
                        stored
                    }
                    // Deleted meanwhile (Events expire): start over.
                    Err(kube::Error::Api(e)) if e.code == 404 => {
                        api.create(&PostParams::default(), &self.fresh(&event, regarding, now))
                            .await?
                    }
                    Err(e) => return Err(e),
                }
            }
            None => {
                api.create(&PostParams::default(), &self.fresh(&event, regarding, now))
                    .await?
            }
        };
        self.written
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, stored);
        Ok(())
    }

    fn fresh(&self, event: &Event, regarding: &ObjectReference, now: Timestamp) -> K8sEvent {
        let name = regarding.name.as_deref().unwrap_or(&self.controller);
        K8sEvent {
            metadata: ObjectMeta {
                namespace: regarding.namespace.clone(),
                name: Some(format!("{name}.{:x}", now.as_nanosecond())),
                ..ObjectMeta::default()
            },
            action: Some(event.action.clone()),
            reason: Some(event.reason.clone()),
            note: Some(event.note.clone()),
            type_: Some(
                match event.type_ {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                }
                .to_string(),
            ),
            event_time: Some(MicroTime(now)),
            regarding: Some(regarding.clone()),
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            ..K8sEvent::default()
        }
    }
}

/// When an Event was last observed: its series' last time, else its own.
fn last_seen(e: &K8sEvent) -> Option<Timestamp> {
    e.series
        .as_ref()
        .map(|s| s.last_observed_time.0)
        .or_else(|| e.event_time.as_ref().map(|t| t.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_notes_are_cut_at_a_character_boundary_within_the_limit() {
        let short = "New size: 3; reason: from 1 to 3";
        assert_eq!(bounded(short), short);
        let long = "é".repeat(NOTE_LIMIT);
        let cut = bounded(&long);
        assert!(cut.len() <= NOTE_LIMIT, "{}", cut.len());
        assert!(cut.ends_with('…'));
        assert!(cut.starts_with("éé"));
    }
}
