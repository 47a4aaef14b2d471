//! Which dataplanes are connected and which route version each applied.
//!
//! Fed by the stream (connects, disconnects) and the reports (acks). A
//! dataplane counts as present while it holds a stream open or reported
//! within the last three report windows.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use sluice_protocol::{Rejected, Report};

/// A dataplane that has not reported for this long and holds no stream is gone.
pub const STALE_AFTER: Duration = Duration::from_secs(3);

/// One dataplane as the controller sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dataplane {
    /// Its name.
    pub name: String,
    /// The version it last reported as applied.
    pub applied_version: u64,
    /// The last version it refused.
    pub rejected: Option<Rejected>,
    /// Streams it holds open.
    pub streams: usize,
}

#[derive(Debug)]
struct Entry {
    state: Dataplane,
    last_seen: Instant,
    last_seq: Option<u64>,
}

/// The registry, shared by the stream server and the status writer.
#[derive(Debug, Default)]
pub struct Dataplanes {
    inner: Mutex<BTreeMap<String, Entry>>,
}

/// Held while a stream is open; unregisters the stream when dropped.
#[derive(Debug)]
pub struct StreamGuard {
    registry: Arc<Dataplanes>,
    name: String,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if let Some(e) = self.registry.lock().get_mut(&self.name) {
            e.state.streams = e.state.streams.saturating_sub(1);
            e.last_seen = Instant::now();
        }
    }
}

impl Dataplanes {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Entry>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn entry<'a>(map: &'a mut BTreeMap<String, Entry>, name: &str) -> &'a mut Entry {
        map.entry(name.to_string()).or_insert_with(|| Entry {
            state: Dataplane {
                name: name.to_string(),
                applied_version: 0,
                rejected: None,
                streams: 0,
            },
            last_seen: Instant::now(),
            last_seq: None,
        })
    }

    /// Registers an open stream.
    pub fn connect(self: &Arc<Self>, name: &str) -> StreamGuard {
        let mut map = self.lock();
        let e = Self::entry(&mut map, name);
        e.state.streams += 1;
        e.last_seen = Instant::now();
        StreamGuard {
            registry: Arc::clone(self),
            name: name.to_string(),
        }
    }

    /// Records a report. Returns false when it repeats the last one seen
    /// (a retried post), which callers must not count again.
    pub fn report(&self, report: &Report) -> bool {
        let mut map = self.lock();
        let e = Self::entry(&mut map, &report.dataplane);
        e.last_seen = Instant::now();
        e.state.applied_version = report.applied_version;
        e.state.rejected.clone_from(&report.rejected);
        let fresh = e.last_seq != Some(report.seq) || report.seq == 0;
        e.last_seq = Some(report.seq);
        fresh
    }

    /// The dataplanes present now (stale ones are forgotten).
    pub fn present(&self) -> Vec<Dataplane> {
        let mut map = self.lock();
        let now = Instant::now();
        map.retain(|_, e| e.state.streams > 0 || now.duration_since(e.last_seen) < STALE_AFTER);
        map.values().map(|e| e.state.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(seq: u64) -> Report {
        Report {
            dataplane: "dp-0".into(),
            applied_version: 7,
            window_ms: 1000,
            seq,
            ..Default::default()
        }
    }

    #[test]
    fn a_retried_report_is_not_fresh_and_the_next_one_is() {
        let registry = Dataplanes::default();
        assert!(registry.report(&report(1)));
        // The answer was lost and the dataplane posted the same report again.
        assert!(!registry.report(&report(1)));
        assert!(registry.report(&report(2)));
        // Another dataplane's sequence is its own.
        let mut other = report(2);
        other.dataplane = "dp-1".into();
        assert!(registry.report(&other));
        let present = registry.present();
        assert_eq!(present.len(), 2);
        assert_eq!(present[0].applied_version, 7);
    }
}
