//! Who may read the route stream and post reports.
//!
//! Three modes: `none` (loopback only), `static:<file>` (bearer tokens listed
//! in a file) and `tokenreview:<namespace>/<serviceaccount>`: the dataplane
//! presents its projected ServiceAccount token (audience [`AUDIENCE`]), the
//! API server vouches for it through the TokenReview API, and only the named
//! ServiceAccount is let in. Verdicts are cached so a reconnect storm does
//! not become a TokenReview storm: an acceptance for the recheck interval
//! (`--token-recheck`, [`DEFAULT_RECHECK`]; never past the token's expiry),
//! a refusal for [`DENIED_TTL`].
//!
//! A revoked token (its ServiceAccount or pod deleted) loses access within
//! the recheck interval: new requests ask the API server again once the
//! cached acceptance is older than that, and every open route stream
//! re-checks its token at that interval without the cache
//! ([`Authenticator::recheck`]) and ends when it is refused. While the API
//! server cannot be asked, open streams are left open: an outage of the
//! API server is not a reason to cut every dataplane off.

use std::collections::HashMap;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};

use crate::api_errors::Causes;

/// Audience the dataplanes' projected tokens are minted for.
pub const AUDIENCE: &str = "sluice";
/// How long a TokenReview's acceptance is trusted by default: also the
/// interval at which open streams re-check their token, so the bound on
/// how long a revoked token keeps access.
pub const DEFAULT_RECHECK: Duration = Duration::from_secs(15);
/// How long a refused token stays refused without asking again.
pub const DENIED_TTL: Duration = Duration::from_secs(10);
/// Most tokens remembered at once.
const CACHE_LIMIT: usize = 4096;

/// How the stream authenticates dataplanes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Auth {
    /// No authentication; only allowed on a loopback listener.
    None,
    /// Bearer tokens listed one per line in a file (re-read on each request,
    /// so a rotated Secret takes effect without a restart).
    Static(PathBuf),
    /// Projected ServiceAccount tokens of this ServiceAccount, checked with
    /// the TokenReview API.
    TokenReview {
        /// Namespace of the ServiceAccount.
        namespace: String,
        /// Its name.
        service_account: String,
    },
}

impl FromStr for Auth {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let usage = || {
            format!(
                "--auth {s:?}: expected none, static:<file> or tokenreview:<namespace>/<serviceaccount>"
            )
        };
        match s.split_once(':') {
            _ if s == "none" => Ok(Self::None),
            Some(("static", path)) if !path.is_empty() => Ok(Self::Static(PathBuf::from(path))),
            Some(("tokenreview", who)) => match who.split_once('/') {
                Some((ns, sa)) if !ns.is_empty() && !sa.is_empty() && !sa.contains('/') => {
                    Ok(Self::TokenReview {
                        namespace: ns.to_string(),
                        service_account: sa.to_string(),
                    })
                }
                _ => Err(usage()),
            },
            _ => Err(usage()),
        }
    }
}

/// Why a request was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// No bearer token.
    #[error("missing bearer token")]
    Missing,
    /// A token that is not valid (401).
    #[error("token not accepted")]
    Rejected,
    /// A valid token of someone not allowed (403).
    #[error("{0} may not read the route stream")]
    Forbidden(String),
    /// The check itself failed (token file unreadable, API server away).
    #[error("cannot check the token: {0}")]
    Unavailable(String),
}

impl Denied {
    /// The HTTP status to answer with.
    pub fn status(&self) -> http::StatusCode {
        match self {
            Self::Missing | Self::Rejected => http::StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => http::StatusCode::FORBIDDEN,
            Self::Unavailable(_) => http::StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// Checks requests against an [`Auth`] mode.
pub struct Authenticator {
    auth: Auth,
    client: Option<kube::Client>,
    recheck: Duration,
    cache: Mutex<HashMap<String, Cached>>,
}

/// A verdict and until when it holds.
type Cached = (Result<(), Denied>, Instant);

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("auth", &self.auth)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// An authenticator; `client` is used by `tokenreview`, whose
    /// acceptances are trusted for `recheck` (see [`DEFAULT_RECHECK`]).
    pub fn new(auth: Auth, client: kube::Client, recheck: Duration) -> Self {
        Self {
            auth,
            client: Some(client),
            recheck,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// How long an acceptance holds: the interval at which open streams
    /// call [`recheck`](Self::recheck); `None` when nothing is checked.
    pub fn recheck_interval(&self) -> Option<Duration> {
        (self.auth != Auth::None).then_some(self.recheck)
    }

    /// Checks the `Authorization` header value; a cached verdict is used
    /// while it holds.
    pub async fn check(&self, authorization: Option<&str>) -> Result<(), Denied> {
        self.verdict(authorization, true).await
    }

    /// Checks again, asking the API server whatever the cache holds (and
    /// refreshing it): what an open stream does every recheck interval, so
    /// that it never outlives its token's access by more than that.
    pub async fn recheck(&self, authorization: Option<&str>) -> Result<(), Denied> {
        self.verdict(authorization, false).await
    }

    async fn verdict(&self, authorization: Option<&str>, cached: bool) -> Result<(), Denied> {
        if self.auth == Auth::None {
            return Ok(());
        }
        let token = authorization
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(Denied::Missing)?;
        match &self.auth {
            Auth::None => Ok(()),
            Auth::Static(path) => check_static(path, token),
            Auth::TokenReview {
                namespace,
                service_account,
            } => {
                if let Some(verdict) = cached.then(|| self.cached(token)).flatten() {
                    return verdict;
                }
                let user = format!("system:serviceaccount:{namespace}:{service_account}");
                let verdict = self.review(token, &user).await;
                if !matches!(verdict, Err(Denied::Unavailable(_))) {
                    let ttl = match verdict {
                        Ok(()) => expiry(token).map_or(self.recheck, |e| e.min(self.recheck)),
                        Err(_) => DENIED_TTL,
                    };
                    self.remember(token, verdict.clone(), ttl);
                }
                verdict
            }
        }
    }

    fn cached(&self, token: &str) -> Option<Result<(), Denied>> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .get(token)
            .filter(|(_, until)| *until > Instant::now())
            .map(|(v, _)| v.clone())
    }

    fn remember(&self, token: &str, verdict: Result<(), Denied>, ttl: Duration) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= CACHE_LIMIT {
            let now = Instant::now();
            cache.retain(|_, (_, until)| *until > now);
            if cache.len() >= CACHE_LIMIT {
                cache.clear();
            }
        }
        cache.insert(token.to_string(), (verdict, Instant::now() + ttl));
    }

    async fn review(&self, token: &str, user: &str) -> Result<(), Denied> {
        let Some(client) = &self.client else {
            return Err(Denied::Unavailable("no API client".into()));
        };
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: Some(vec![AUDIENCE.to_string()]),
            },
            ..TokenReview::default()
        };
        let api: Api<TokenReview> = Api::all(client.clone());
        let reviewed = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| Denied::Unavailable(Causes(&e).to_string()))?;
        let status = reviewed.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            return Err(Denied::Rejected);
        }
        let audience_ok = status
            .audiences
            .as_ref()
            .is_none_or(|a| a.iter().any(|a| a == AUDIENCE));
        if !audience_ok {
            return Err(Denied::Rejected);
        }
        let username = status.user.and_then(|u| u.username).unwrap_or_default();
        if username != user {
            return Err(Denied::Forbidden(username));
        }
        Ok(())
    }
}

fn check_static(path: &std::path::Path, token: &str) -> Result<(), Denied> {
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

/// Time left before the JWT's `exp` claim, read without verifying the
/// signature (the TokenReview already did); `None` when it has none.
fn expiry(token: &str) -> Option<Duration> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let exp = claims.get("exp")?.as_u64()?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs();
    Some(Duration::from_secs(exp.saturating_sub(now)))
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
        assert_eq!(check_static(&file, "secret-two"), Ok(()));
        assert_eq!(check_static(&file, "secret-thr"), Err(Denied::Rejected));
        assert_eq!(
            format!("static:{}", file.display()).parse::<Auth>(),
            Ok(Auth::Static(file))
        );
        assert_eq!("none".parse::<Auth>(), Ok(Auth::None));
    }

    #[test]
    fn tokenreview_names_one_service_account() {
        assert_eq!(
            "tokenreview:sluice-system/sluice-dataplane".parse::<Auth>(),
            Ok(Auth::TokenReview {
                namespace: "sluice-system".into(),
                service_account: "sluice-dataplane".into(),
            })
        );
        for bad in [
            "tokenreview",
            "tokenreview:",
            "tokenreview:ns",
            "tokenreview:/sa",
            "tokenreview:a/b/c",
        ] {
            assert!(bad.parse::<Auth>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_token_expiry_is_read_from_its_claims() {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let claims = format!(r#"{{"aud":["sluice"],"exp":{}}}"#, now + 120);
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims);
        let left = expiry(&format!("header.{payload}.signature")).expect("exp");
        assert!(left <= Duration::from_secs(120) && left >= Duration::from_secs(100));
        assert_eq!(expiry("not-a-jwt"), None);
    }
}
