//! Who may read the route stream and post reports.

use std::path::PathBuf;
use std::str::FromStr;

/// How the stream authenticates dataplanes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Auth {
    /// No authentication; only allowed on a loopback listener.
    None,
    /// Bearer tokens listed one per line in a file (re-read on each request,
    /// so a rotated Secret takes effect without a restart).
    Static(PathBuf),
}

impl FromStr for Auth {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once(':') {
            _ if s == "none" => Ok(Self::None),
            Some(("static", path)) if !path.is_empty() => Ok(Self::Static(PathBuf::from(path))),
            _ => Err(format!(
                "--auth {s:?}: expected none or static:<file> (tokenreview arrives with the secure channel)"
            )),
        }
    }
}

/// Why a request was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// No bearer token.
    #[error("missing bearer token")]
    Missing,
    /// A token that is not allowed.
    #[error("token not accepted")]
    Rejected,
    /// The token file could not be read.
    #[error("token file unreadable: {0}")]
    Unavailable(String),
}

impl Auth {
    /// Checks the `Authorization` header value.
    pub fn check(&self, authorization: Option<&str>) -> Result<(), Denied> {
        let path = match self {
            Self::None => return Ok(()),
            Self::Static(path) => path,
        };
        let token = authorization
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(Denied::Missing)?;
        let allowed = std::fs::read_to_string(path)
            .map_err(|e| Denied::Unavailable(format!("{}: {e}", path.display())))?;
        let ok = allowed
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .fold(false, |found, line| {
                found | constant_time_eq(line.as_bytes(), token.as_bytes())
            });
        if ok { Ok(()) } else { Err(Denied::Rejected) }
    }
}

/// Compares without an early exit, so timing does not reveal how much of a
/// guessed token was right. (Tiny enough not to warrant a crate.)
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_tokens_accept_listed_tokens_only() {
        let dir = std::env::temp_dir().join(format!("sluice-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("tokens");
        std::fs::write(&file, "# dataplanes\nsecret-one\n\nsecret-two\n").unwrap();
        let auth: Auth = format!("static:{}", file.display()).parse().unwrap();
        assert_eq!(auth.check(Some("Bearer secret-two")), Ok(()));
        assert_eq!(auth.check(Some("Bearer secret-thr")), Err(Denied::Rejected));
        assert_eq!(auth.check(Some("Basic x")), Err(Denied::Missing));
        assert_eq!(auth.check(None), Err(Denied::Missing));
        assert!("tokenreview".parse::<Auth>().is_err());
        assert_eq!("none".parse::<Auth>(), Ok(Auth::None));
    }
}
