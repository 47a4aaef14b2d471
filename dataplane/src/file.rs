//! Standalone mode: the table comes from a YAML file, reloaded on change.
//!
//! The file is polled (every [`POLL`]) rather than watched with inotify:
//! polling sees editors' write-and-rename and Kubernetes ConfigMap symlink
//! swaps alike, needs no extra dependency, and costs one small read.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sluice_protocol::{RouteFile, RouteTable};
use tokio::sync::watch;

use crate::state::State;

/// How often the file is re-read.
pub const POLL: Duration = Duration::from_millis(500);

/// Reads and validates the file; errors name the file, line and field.
pub fn load(path: &Path, version: u64) -> Result<(RouteTable, String), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let file = RouteFile::from_yaml(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((RouteTable::from_pools(version, file.pools), text))
}

/// Re-reads `path` until `stop`; a good change is installed as the next
/// version, a bad one is logged and the current table keeps serving.
pub async fn watch(
    path: PathBuf,
    state: Arc<State>,
    mut last_text: String,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(POLL) => {}
        }
        let text = match tokio::fs::read_to_string(&path).await {
            Ok(t) => t,
            Err(e) => {
                let msg = format!("{}: {e}", path.display());
                if state.last_error().as_deref() != Some(&msg) {
                    tracing::error!(error = %msg, "config file unreadable; keeping the current table");
                    state.set_error(msg);
                }
                continue;
            }
        };
        if text == last_text {
            continue;
        }
        last_text.clone_from(&text);
        let version = state.version() + 1;
        match RouteFile::from_yaml(&text) {
            Ok(file) => {
                let pools = file.pools.len();
                state.install(RouteTable::from_pools(version, file.pools));
                tracing::info!(version, pools, file = %path.display(), "config reloaded");
            }
            Err(e) => {
                let msg = format!("{}: {e}", path.display());
                tracing::error!(error = %msg, "config file rejected; keeping the current table");
                state.set_error(msg);
            }
        }
    }
}
