//! `--state-dir`: the last applied table on disk, so a restarted dataplane
//! serves at once, even while the controller is away.
//!
//! One writer task follows the installed versions and writes the newest
//! (coalescing bursts of deltas into one write), on a blocking thread so the
//! runtime's workers keep serving requests. Writes go to a temporary file
//! renamed over the old one, so a crash never leaves half a table.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sluice_protocol::{RouteEvent, RouteTable, Snapshot};
use tokio::sync::watch;

use crate::front::listener::stopped;
use crate::state::State;

/// File name of the persisted table under `--state-dir`.
pub const STATE_FILE: &str = "routes.json";

/// The table persisted under `dir`, if there is a valid one. An unreadable
/// or invalid file is logged and ignored: the controller will send a table.
pub fn load(dir: &Path) -> Option<RouteTable> {
    let path = dir.join(STATE_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the persisted table");
            return None;
        }
    };
    let mut routes = RouteTable::default();
    match RouteEvent::from_sse(sluice_protocol::EVENT_SNAPSHOT, &text)
        .and_then(|event| routes.apply(event))
    {
        Ok(()) => Some(routes),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "ignoring the persisted table");
            None
        }
    }
}

/// Writes `snapshot` to `dir` atomically (temporary file, then rename).
pub fn write(dir: &Path, snapshot: &Snapshot) -> std::io::Result<()> {
    let tmp = dir.join(format!("{STATE_FILE}.tmp"));
    let bytes = serde_json::to_vec(snapshot).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, dir.join(STATE_FILE))
}

/// Writes every newly installed table to `dir` until `stop`, then writes
/// the last one if it is not on disk yet.
pub async fn run(dir: PathBuf, state: Arc<State>, mut stop: watch::Receiver<bool>) {
    let mut versions = state.subscribe();
    let mut written = None;
    loop {
        tokio::select! {
            _ = stopped(&mut stop) => break,
            changed = versions.changed() => if changed.is_err() { break },
        }
        write_latest(&dir, &state, &mut written).await;
    }
    write_latest(&dir, &state, &mut written).await;
}

async fn write_latest(dir: &Path, state: &State, written: &mut Option<u64>) {
    let routes = state.routes();
    if routes.version == 0 || *written == Some(routes.version) {
        return;
    }
    let version = routes.version;
    let target = dir.to_path_buf();
    let result = tokio::task::spawn_blocking(move || write(&target, &routes.snapshot())).await;
    match result {
        Ok(Ok(())) => *written = Some(version),
        Ok(Err(e)) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot persist the route table")
        }
        Err(e) => tracing::warn!(error = %e, "persisting the route table failed"),
    }
}
