//! The checks the real API server makes on events.k8s.io/v1 Events, so that
//! an Event the fake stores is one a cluster would store: the fields it
//! requires, the 1024-byte limit on `note`, a `series` count of at least 2,
//! and that an update may move the series but not rewrite what the Event
//! says (a recorder cannot "fix" an old Event's note by patching it).

use serde_json::Value;

use super::Collection;
use super::response::ApiError;

/// Longest `note` the real server accepts.
const NOTE_LIMIT: usize = 1024;

/// Fields an update may not change.
const IMMUTABLE: [&str; 9] = [
    "action",
    "eventTime",
    "note",
    "reason",
    "regarding",
    "related",
    "reportingController",
    "reportingInstance",
    "type",
];

fn events() -> Collection {
    Collection::new("events.k8s.io/v1", "events")
}

/// Checks `new` (replacing `old` when given) if it is an Event.
pub(super) fn check(c: &Collection, new: &Value, old: Option<&Value>) -> Result<(), ApiError> {
    if *c != events() {
        return Ok(());
    }
    let mut problems = Vec::new();
    for field in [
        "eventTime",
        "reportingController",
        "reportingInstance",
        "action",
        "reason",
    ] {
        if new[field].as_str().is_none_or(str::is_empty) {
            problems.push(format!("{field}: Required value"));
        }
    }
    if let Some(note) = new["note"].as_str()
        && note.len() > NOTE_LIMIT
    {
        problems.push(format!(
            "note: Too long: may not be more than {NOTE_LIMIT} bytes"
        ));
    }
    if !matches!(new["type"].as_str(), Some("Normal" | "Warning")) {
        problems.push(format!("type: Unsupported value: {}", new["type"]));
    }
    if new["series"].is_object() {
        if new["series"]["count"].as_i64().is_none_or(|n| n < 2) {
            problems.push("series.count: Invalid value: should be at least 2".into());
        }
        if new["series"]["lastObservedTime"].is_null() {
            problems.push("series.lastObservedTime: Required value".into());
        }
    }
    if let Some(old) = old {
        for field in IMMUTABLE {
            if new[field] != old[field] {
                problems.push(format!("{field}: Invalid value: field is immutable"));
            }
        }
    }
    match problems.is_empty() {
        true => Ok(()),
        false => Err(ApiError::invalid(format!(
            "Event.events.k8s.io {:?} is invalid: {}",
            new["metadata"]["name"].as_str().unwrap_or_default(),
            problems.join(", ")
        ))),
    }
}
