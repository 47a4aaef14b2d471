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

use crate::front::listener::stopped;
use crate::state::State;

/// How often the file is re-read.
pub const POLL: Duration = Duration::from_millis(500);

/// Why the file could not be used. Every message starts with the file's
/// path and says in plain words what was expected, because the person
/// reading it edited a YAML file, not the Rust types behind it.
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
    /// The file is not a valid route file.
    #[error("{}: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong: line, column, the expectation in plain words and
        /// the offending line as written.
        message: String,
    },
    /// The file has nothing in it (or only comments): more likely a file
    /// caught half-written than a wish to serve nothing.
    #[error(
        "{}: the file is empty; expected `pools:` with a list of pools (write `pools: []` to serve none)",
        path.display()
    )]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// The file lists no pools while pools are being served, and does not
    /// say it means it.
    #[error(
        "{}: the file lists no pools, which would stop serving the {serving} pool(s) in service; \
         if that is meant, add `allowEmpty: true` at the top level",
        path.display()
    )]
    WouldEmpty {
        /// The file.
        path: PathBuf,
        /// Pools served now.
        serving: usize,
    },
    /// A pool's certificate, key or client CA cannot be used.
    #[error("{}: {error}", path.display())]
    Tls {
        /// The file.
        path: PathBuf,
        /// Which pool and what is wrong.
        error: crate::front::tls::TlsError,
    },
}

/// Reads and validates the file as table `version` for a first start; also
/// returns the text, for change detection. An explicit `pools: []` is a
/// valid start (nothing is being served yet that it could take away).
pub fn load(path: &Path, version: u64) -> Result<(RouteTable, String), FileError> {
    let text = std::fs::read_to_string(path).map_err(|error| FileError::Read {
        path: path.to_path_buf(),
        error,
    })?;
    let routes = parse(path, &text, version, 0)?;
    Ok((routes, text))
}

/// Parses `text` as table `version`, to replace a table of `serving` pools.
fn parse(path: &Path, text: &str, version: u64, serving: usize) -> Result<RouteTable, FileError> {
    if is_blank(text) {
        return Err(FileError::Empty {
            path: path.to_path_buf(),
        });
    }
    let file = RouteFile::from_yaml(text).map_err(|error| FileError::Invalid {
        path: path.to_path_buf(),
        message: explain(&error, text),
    })?;
    if file.pools.is_empty() && file.routes.is_empty() && serving > 0 && !file.allow_empty {
        return Err(FileError::WouldEmpty {
            path: path.to_path_buf(),
            serving,
        });
    }
    let table = RouteTable::from_parts(version, file.pools, file.routes);
    crate::front::tls::check(&table).map_err(|error| FileError::Tls {
        path: path.to_path_buf(),
        error,
    })?;
    Ok(table)
}

/// Whether the file holds no YAML at all: blank lines, comments, document
/// markers.
fn is_blank(text: &str) -> bool {
    text.lines().all(|line| {
        let line = line.trim();
        line.is_empty() || line.starts_with('#') || line == "---" || line == "..."
    })
}

/// The parser's verdict for a person: once (the YAML library repeats its
/// message under a caret drawing), with the types' names (`u32`, socket
/// address syntax) turned into what to write, and the offending line as
/// written, so that the value at fault is in the message.
fn explain(error: &RouteError, text: &str) -> String {
    let RouteError::Yaml(raw) = error else {
        return error.to_string();
    };
    let first = raw.lines().next().unwrap_or_default();
    let first = first.strip_prefix("error: ").unwrap_or(first);
    let located = first.strip_prefix("line ").and_then(|rest| {
        let (line, rest) = rest.split_once(" column ")?;
        let (column, what) = rest.split_once(": ")?;
        Some((line.parse::<usize>().ok()?, column, what))
    });
    match located {
        Some((line, column, what)) => {
            let source = text.lines().nth(line.saturating_sub(1)).unwrap_or_default();
            format!(
                "line {line} column {column}: {}\n  {line} | {}",
                plain_words(what),
                source.trim_end()
            )
        }
        None => plain_words(first),
    }
}

/// What the deserializer says about a value, in the words of the file.
fn plain_words(what: &str) -> String {
    const WORDS: [(&str, &str); 7] = [
        (
            "expected a nonzero u32",
            "expected a positive whole number (1 or more)",
        ),
        (
            "invalid u32",
            "expected a whole number from 0 to 4294967295",
        ),
        ("expected u32", "expected a whole number"),
        ("expected u64", "expected a whole number"),
        (
            "invalid socket address syntax",
            "expected an address as IP:port, such as 127.0.0.1:9001 or [::1]:9001 \
             (host names are not resolved)",
        ),
        (
            "expected sequence start",
            "expected a list (`- ` items on the lines below, or `[]`)",
        ),
        ("expected mapping start", "expected `field: value` lines"),
    ];
    WORDS
        .iter()
        .fold(what.to_string(), |s, (from, to)| s.replace(from, to))
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
        match parse(&path, &text, version, state.routes().pools.len()) {
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

#[cfg(test)]
mod tests {
    use super::*;

    const WEB: &str = "pools:\n  - name: web\n    endpoints:\n      - {address: 127.0.0.1:9001}\n";

    fn error(text: &str, serving: usize) -> String {
        match parse(Path::new("/etc/sluice/sluice.yaml"), text, 2, serving) {
            Ok(t) => panic!("accepted {} pools from {text:?}", t.pools.len()),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_route_whose_certificate_cannot_be_used_rejects_the_file() {
        let text = format!(
            "{WEB}    backendOnly: true\nroutes:\n  - name: shop/secure\n    hosts: [secure.example.com]\n    tls: {{certificate: broken, privateKey: broken}}\n    rules: [{{backends: [{{pool: web}}]}}]\n"
        );
        let e = error(&text, 0);
        assert!(
            e.starts_with("/etc/sluice/sluice.yaml: pool \"route:shop/secure\": tls:"),
            "{e}"
        );
    }

    #[test]
    fn a_wrong_number_says_what_to_write_once_with_the_line_at_fault() {
        let err = error(&WEB.replace("9001}", "9001, weight: 0}"), 1);
        assert_eq!(
            err,
            "/etc/sluice/sluice.yaml: line 4 column 35: invalid value: integer `0`, \
             expected a positive whole number (1 or more)\n  \
             4 |       - {address: 127.0.0.1:9001, weight: 0}"
        );
        let err = error(&WEB.replace("9001}", "9001, weight: -3}"), 1);
        assert!(
            err.contains("expected a whole number from 0 to 4294967295") && !err.contains("u32"),
            "{err}"
        );
    }

    #[test]
    fn a_host_name_address_is_refused_saying_ip_and_port() {
        let err = error(&WEB.replace("127.0.0.1:9001", "backend.local:9001"), 1);
        assert!(
            err.starts_with(
                "/etc/sluice/sluice.yaml: line 4 column 19: expected an address as IP:port"
            ) && err.contains("host names are not resolved")
                && err.ends_with("4 |       - {address: backend.local:9001}"),
            "{err}"
        );
        assert_eq!(err.matches("expected an address").count(), 1, "{err}");
    }

    #[test]
    fn no_pools_are_refused_over_a_table_in_service_unless_meant() {
        for empty in ["", "\n# all gone\n", "---\n"] {
            let err = error(empty, 0);
            assert!(
                err.contains("sluice.yaml: the file is empty") && err.contains("pools: []"),
                "{err}"
            );
        }
        let err = error("pools: []\n", 3);
        assert!(
            err.contains("would stop serving the 3 pool(s)") && err.contains("allowEmpty: true"),
            "{err}"
        );
        let path = Path::new("sluice.yaml");
        let meant = parse(path, "allowEmpty: true\npools: []\n", 2, 3).expect("meant");
        assert!(meant.pools.is_empty());
        let first = parse(path, "pools: []\n", 1, 0).expect("an explicit empty start");
        assert!(first.pools.is_empty());
    }
}
