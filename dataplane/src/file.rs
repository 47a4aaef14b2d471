//! Standalone mode: the table comes from a YAML file, reloaded on change.
//!
//! The file is polled (its contents, every [`POLL`]) rather than watched
//! with inotify: editors save by writing a new file and renaming it over
//! the old one, and Kubernetes updates a mounted ConfigMap by swapping a
//! symlink to a new directory; an inotify watch on the old inode sees
//! neither, while re-reading the path sees both. It needs no extra
//! dependency, and reading a small file twice a second costs nothing.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sluice_protocol::route::RouteError;
use sluice_protocol::{RouteFile, RouteTable};
use tokio::sync::watch;

use crate::listener::stopped;
use crate::state::State;

/// How often the file is re-read.
pub const POLL: Duration = Duration::from_millis(500);

/// Why the file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The file could not be read.
    #[error("cannot read {}: {error}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why (in the message, not a `source`: the message says it all).
        error: std::io::Error,
    },
    /// The file is not a valid route file; the error names line and field.
    #[error("{}: {error}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        error: RouteError,
    },
    /// A pool's certificate, key or client CA cannot be used.
    #[error("{}: {error}", path.display())]
    Tls {
        /// The file.
        path: PathBuf,
        /// Which pool and what is wrong.
        error: crate::tls::TlsError,
    },
}

/// Reads and validates the file as table `version`; also returns the text,
/// for change detection.
pub fn load(path: &Path, version: u64) -> Result<(RouteTable, String), FileError> {
    let text = std::fs::read_to_string(path).map_err(|error| FileError::Read {
        path: path.to_path_buf(),
        error,
    })?;
    let routes = parse(path, &text, version)?;
    Ok((routes, text))
}

fn parse(path: &Path, text: &str, version: u64) -> Result<RouteTable, FileError> {
    let file = RouteFile::from_yaml(text).map_err(|error| FileError::Invalid {
        path: path.to_path_buf(),
        error,
    })?;
    crate::tls::check(&file.pools).map_err(|error| FileError::Tls {
        path: path.to_path_buf(),
        error,
    })?;
    Ok(RouteTable::from_pools(version, file.pools))
}

/// Re-reads `path` until `stop`. A changed, valid file is installed as the
/// next version; an unreadable or invalid one is logged at ERROR, shown as
/// `lastError` in `/debug/routes`, and the current table keeps serving.
pub async fn watch(
    path: PathBuf,
    state: Arc<State>,
    mut last_text: String,
    mut stop: watch::Receiver<bool>,
) {
    let mut unreadable = false;
    // What parsing `last_text` said: `None` when it is the table being served.
    let mut verdict: Option<String> = None;
    loop {
        tokio::select! {
            _ = stopped(&mut stop) => return,
            _ = tokio::time::sleep(POLL) => {}
        }
        let text = match tokio::fs::read_to_string(&path).await {
            Ok(text) => text,
            Err(error) => {
                let msg = FileError::Read {
                    path: path.clone(),
                    error,
                }
                .to_string();
                // Logged once per distinct error, not twice a second.
                if state.last_error().as_deref() != Some(msg.as_str()) {
                    tracing::error!(error = %msg, "config file unreadable; keeping the current table");
                    state.set_error(msg);
                }
                unreadable = true;
                continue;
            }
        };
        if text == last_text {
            if std::mem::take(&mut unreadable) {
                // Back as it was (a ConfigMap swap in progress, say).
                tracing::info!(file = %path.display(), "config file readable again, unchanged");
                match &verdict {
                    None => state.clear_error(),
                    Some(e) => state.set_error(e.clone()),
                }
            }
            continue;
        }
        unreadable = false;
        last_text.clone_from(&text);
        let version = state.version() + 1;
        match parse(&path, &text, version) {
            Ok(routes) => {
                verdict = None;
                let pools = routes.pools.len();
                state.install(routes);
                tracing::info!(version, pools, file = %path.display(), "config reloaded");
            }
            Err(e) => {
                tracing::error!(error = %e, serving = version - 1, "config file rejected; keeping the current table");
                verdict = Some(e.to_string());
                state.set_error(e.to_string());
            }
        }
    }
}
