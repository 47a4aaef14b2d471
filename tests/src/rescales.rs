//! A trigger's rescales as `kubectl describe st <name>` shows them, read
//! from the Events an API server holds. Only JSON in, so the same reading
//! serves the tests on the fake and on a real control plane.

use k8s_openapi::jiff::Timestamp;
use serde_json::Value;

/// One `SuccessfulRescale` Event, as a user reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rescale {
    /// The replica count the decision started from.
    pub from: i64,
    /// The count it set ("New size").
    pub to: i64,
    /// The text after "because".
    pub why: String,
    /// How many times this very message was observed (`series.count`, 1
    /// without a series).
    pub count: i64,
}

/// The `SuccessfulRescale` Events about ScalingTrigger `namespace/name`
/// in `events` (events.k8s.io/v1 objects, in any order), oldest first.
/// A note that does not read "New size: N; reason: from A to N because …"
/// is an error naming the note: the numbers must be there to be read.
pub fn rescales(events: &[Value], namespace: &str, name: &str) -> anyhow::Result<Vec<Rescale>> {
    let mut found: Vec<(Timestamp, Rescale)> = Vec::new();
    for e in events {
        let about = &e["regarding"];
        if e["reason"] != "SuccessfulRescale"
            || about["kind"] != "ScalingTrigger"
            || about["namespace"] != namespace
            || about["name"] != name
        {
            continue;
        }
        let note = e["note"].as_str().unwrap_or_default();
        let at: Timestamp = e["eventTime"]
            .as_str()
            .unwrap_or_default()
            .parse()
            .map_err(|err| anyhow::anyhow!("Event {note:?}: eventTime: {err}"))?;
        let rescale = parse(note).ok_or_else(|| {
            anyhow::anyhow!(
                "Event note {note:?} does not read \"New size: N; reason: from A to N because …\""
            )
        })?;
        let count = e["series"]["count"].as_i64().unwrap_or(1);
        found.push((at, Rescale { count, ..rescale }));
    }
    found.sort_by_key(|(at, _)| *at);
    Ok(found.into_iter().map(|(_, r)| r).collect())
}

/// `(from, to)` of each rescale, in order.
pub fn steps(rescales: &[Rescale]) -> Vec<(i64, i64)> {
    rescales.iter().map(|r| (r.from, r.to)).collect()
}

fn parse(note: &str) -> Option<Rescale> {
    let rest = note.strip_prefix("New size: ")?;
    let (size, rest) = rest.split_once("; reason: from ")?;
    let (from, rest) = rest.split_once(" to ")?;
    let (to, why) = rest.split_once(" because ")?;
    let size: i64 = size.parse().ok()?;
    let (from, to) = (from.parse().ok()?, to.parse().ok()?);
    (size == to).then(|| Rescale {
        from,
        to,
        why: why.to_string(),
        count: 1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn notes_are_read_in_event_time_order_and_a_wrong_size_is_refused() {
        let event = |at: &str, note: &str| {
            json!({
                "reason": "SuccessfulRescale", "note": note, "eventTime": at,
                "regarding": {"kind": "ScalingTrigger", "namespace": "shop", "name": "web"},
            })
        };
        let events = [
            event(
                "2026-01-01T00:00:02.000000Z",
                "New size: 6; reason: from 5 to 6 because x",
            ),
            event(
                "2026-01-01T00:00:01.000000Z",
                "New size: 5; reason: from 1 to 5 because the current count is below minReplicas",
            ),
        ];
        let r = rescales(&events, "shop", "web").expect("readable");
        assert_eq!(steps(&r), [(1, 5), (5, 6)]);
        assert_eq!(r[0].why, "the current count is below minReplicas");
        assert!(rescales(&events, "shop", "other").expect("none").is_empty());
        let wrong = [event(
            "2026-01-01T00:00:01Z",
            "New size: 0; reason: from 0 to 1 because requests arrived",
        )];
        assert!(rescales(&wrong, "shop", "web").is_err());
    }
}
