//! Watch responses: replay from the history or the current state, then
//! live changes, bookmarks, and an end on timeout, shutdown or departure.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http::{Response, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};

use super::response::{ApiError, Body};
use super::routes::{Query, Target, flag, number};
use super::select::Filter;
use super::store::{ChangeKind, State};
use super::{Collection, Shared};

/// Starts a watch response. Nothing is spawned: the response body is the
/// watch, so when the client goes away hyper drops it and the watch ends.
pub(super) fn watch(
    shared: &Arc<Shared>,
    target: &Target,
    query: &Query,
) -> Result<Response<Body>, ApiError> {
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
