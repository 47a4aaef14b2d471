//! `HttpRoute`: rules between a host and its pools — matches, filters and
//! weighted backends — in the shape of Gateway API's `HTTPRoute`, resolved.
//!
//! A [`crate::PoolRoute`] with hosts is itself a route with one `PathPrefix`
//! rule to its own pool; an `HttpRoute` adds rules that send requests to
//! pools by name. Pools are named, not embedded: one pool (its endpoints,
//! balancer, breaker and health) serves every rule that names it.
//!
//! As in [`crate::route`], values are checked while deserializing (newtypes
//! with `try_from`), so a bad regex or path in a YAML file is reported with
//! its line; what depends on several fields is checked by [`validate_routes`].

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::duration::Duration;
use crate::policy::Tls;
use crate::route::{Host, RouteError};

mod filter;

pub use filter::{
    Filter, FilterType, HeaderModifier, HeaderName, HeaderPair, HeaderText, Mirror, PathModifier,
    PathModifierType, RawFilter, RawPathModifier, Redirect, RedirectStatus, Scheme, UrlRewrite,
};

/// Longest regular expression accepted, in characters (Gateway API's own
/// limit on a path value).
pub const MAX_PATTERN_LEN: usize = 1024;

/// Memory a compiled regular expression may take, in bytes. A pattern such
/// as `(a{100}){100}` compiles to far more and is refused: the table is
/// built by the dataplane from input it did not write.
pub const MAX_REGEX_SIZE: usize = 1 << 20;

/// One route: hosts, and rules tried in precedence order (see the
/// dataplane's `rules` module and `docs/protocol.md`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRoute {
    /// Unique among routes; `namespace/name` for routes from the cluster.
    pub name: String,
    /// Host patterns, as a pool's `hosts`; empty means every host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<Host>,
    /// Tie-break between rules of equal precedence in different routes:
    /// lower first (the controller passes the route's age rank, so the
    /// oldest route wins, as Gateway API asks), then the name.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub order: u64,
    /// The rules; at least one.
    pub rules: Vec<Rule>,
    /// The dataplane listeners that serve the route; empty means both
    /// (so routes written before the field existed keep working). A
    /// Gateway's HTTP-only route, such as a redirect to HTTPS, is not
    /// served on the HTTPS listener, and the other way round.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub listeners: Vec<Listener>,
    /// The certificate (and key) the HTTPS listener serves for `hosts`
    /// (any name when `hosts` is empty), chosen by SNI like a pool's.
    /// Certificate and key only: a client CA belongs to a pool, whose
    /// requests are then checked against it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<Tls>,
}

/// A dataplane listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Listener {
    /// Plain HTTP.
    Http,
    /// TLS-terminated HTTPS.
    Https,
}

impl HttpRoute {
    /// Whether the route is served on `listener`.
    pub fn serves(&self, listener: Listener) -> bool {
        self.listeners.is_empty() || self.listeners.contains(&listener)
    }
}

/// Matches, what to do with a request that meets one, and where it goes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    /// A request meeting any one of these takes the rule; none means a
    /// `PathPrefix /` match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<RouteMatch>,
    /// Applied in order before the request is forwarded (and, for
    /// `ResponseHeaderModifier`, to the response).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<Filter>,
    /// Pools sharing the rule's traffic by weight. A request whose share
    /// falls on a pool the table does not have, or a rule without backends
    /// (and without a redirect), is answered 500.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<Backend>,
    /// Time limits of the rule, on top of the pool's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<RuleTimeouts>,
}

/// Conditions that must all hold.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteMatch {
    /// The path condition; `PathPrefix /` when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,
    /// Header conditions (names compared without case).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<ValueMatch>,
    /// Query parameter conditions (names and values compared as sent).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query_params: Vec<ValueMatch>,
    /// The request method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<Method>,
}

/// How a path is matched.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawPathMatch", into = "RawPathMatch")]
pub enum PathMatch {
    /// The whole path equals the value.
    Exact(String),
    /// The path starts with the value, by whole segments: `/foo` matches
    /// `/foo` and `/foo/bar`, not `/foobar`. A trailing `/` is ignored.
    PathPrefix(String),
    /// The whole path matches the regular expression.
    RegularExpression(String),
}

impl Default for PathMatch {
    fn default() -> Self {
        Self::PathPrefix("/".into())
    }
}

/// The kinds of [`PathMatch`], as written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum PathMatchType {
    /// See [`PathMatch::Exact`].
    Exact,
    /// See [`PathMatch::PathPrefix`].
    #[default]
    PathPrefix,
    /// See [`PathMatch::RegularExpression`].
    RegularExpression,
}

/// [`PathMatch`] as written: `{type, value}`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPathMatch {
    #[serde(rename = "type", default)]
    kind: PathMatchType,
    #[serde(default = "slash")]
    value: String,
}

fn slash() -> String {
    "/".into()
}

impl TryFrom<RawPathMatch> for PathMatch {
    type Error = String;
    fn try_from(raw: RawPathMatch) -> Result<Self, String> {
        let v = raw.value;
        match raw.kind {
            PathMatchType::Exact => check_path("path value", &v).map(|()| Self::Exact(v)),
            PathMatchType::PathPrefix => check_path("path value", &v).map(|()| Self::PathPrefix(v)),
            PathMatchType::RegularExpression => {
                compile(&v).map(|_| ())?;
                Ok(Self::RegularExpression(v))
            }
        }
    }
}

impl From<PathMatch> for RawPathMatch {
    fn from(m: PathMatch) -> Self {
        let (kind, value) = match m {
            PathMatch::Exact(v) => (PathMatchType::Exact, v),
            PathMatch::PathPrefix(v) => (PathMatchType::PathPrefix, v),
            PathMatch::RegularExpression(v) => (PathMatchType::RegularExpression, v),
        };
        Self { kind, value }
    }
}

/// A header or query parameter condition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawValueMatch", into = "RawValueMatch")]
pub struct ValueMatch {
    /// Header or parameter name.
    pub name: String,
    /// Whether `value` is a regular expression (matched against the whole
    /// value) rather than the exact value.
    pub regex: bool,
    /// The value or the pattern.
    pub value: String,
}

/// How a header or query value is compared.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ValueMatchType {
    /// The value equals `value`.
    #[default]
    Exact,
    /// The whole value matches the regular expression `value`.
    RegularExpression,
}

/// [`ValueMatch`] as written: `{type, name, value}`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawValueMatch {
    #[serde(rename = "type", default)]
    kind: ValueMatchType,
    name: String,
    value: String,
}

impl TryFrom<RawValueMatch> for ValueMatch {
    type Error = String;
    fn try_from(raw: RawValueMatch) -> Result<Self, String> {
        check_token(&raw.name)?;
        let regex = raw.kind == ValueMatchType::RegularExpression;
        if regex {
            compile(&raw.value)?;
        } else {
            check_value(&raw.value)?;
        }
        Ok(Self {
            name: raw.name,
            regex,
            value: raw.value,
        })
    }
}

impl From<ValueMatch> for RawValueMatch {
    fn from(m: ValueMatch) -> Self {
        let kind = if m.regex {
            ValueMatchType::RegularExpression
        } else {
            ValueMatchType::Exact
        };
        Self {
            kind,
            name: m.name,
            value: m.value,
        }
    }
}

/// The methods a rule can match on (Gateway API's list), written in
/// capitals as on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
#[allow(missing_docs)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Connect,
    Options,
    Trace,
    Patch,
}

impl Method {
    /// The method as sent on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Head => "HEAD",
            Self::Post => "POST",
            Self::Put => "PUT",
            Self::Delete => "DELETE",
            Self::Connect => "CONNECT",
            Self::Options => "OPTIONS",
            Self::Trace => "TRACE",
            Self::Patch => "PATCH",
        }
    }
}

/// A pool and its share of a rule's traffic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Backend {
    /// The pool, by name.
    pub pool: String,
    /// Relative share; 0 sends it nothing.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub weight: u32,
}

/// A rule's time limits. `0s` means no limit.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleTimeouts {
    /// From the request's arrival to the response head, retries included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<Duration>,
    /// One try to one endpoint, to the response head.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_request: Option<Duration>,
}

fn one() -> u32 {
    1
}
fn is_one(w: &u32) -> bool {
    *w == 1
}
fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Compiles `pattern` to match whole values (`^(?:pattern)$`), within
/// [`MAX_PATTERN_LEN`] and [`MAX_REGEX_SIZE`].
pub fn compile(pattern: &str) -> Result<regex::Regex, String> {
    if pattern.chars().count() > MAX_PATTERN_LEN {
        return Err(format!(
            "regular expression is longer than {MAX_PATTERN_LEN} characters"
        ));
    }
    regex::RegexBuilder::new(&format!("^(?:{pattern})$"))
        .size_limit(MAX_REGEX_SIZE)
        .dfa_size_limit(MAX_REGEX_SIZE)
        .build()
        .map_err(|e| {
            // The crate's message spans lines under a caret drawing; its
            // last line says what is wrong.
            let text = e.to_string();
            let why = text.lines().last().unwrap_or_default().trim().to_string();
            format!("invalid regular expression {pattern:?}: {why}")
        })
}

fn check_path(field: &str, p: &str) -> Result<(), String> {
    if !p.starts_with('/') {
        return Err(format!("{field} {p:?} must start with '/'"));
    }
    if p.contains(['?', '#']) || p.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{field} {p:?} must not contain '?', '#' or spaces"));
    }
    Ok(())
}

fn check_token(name: &str) -> Result<(), String> {
    let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if name.is_empty() || !name.bytes().all(tchar) {
        return Err(format!("{name:?} is not a valid header or parameter name"));
    }
    Ok(())
}

fn check_value(value: &str) -> Result<(), String> {
    if value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(format!("value {value:?} contains control characters"));
    }
    Ok(())
}

/// Checks what the types alone cannot: unique non-empty names, at least
/// one rule, filters that fit together, `ReplacePrefixMatch` only where a
/// prefix matched, `backendRequest` within `request`.
pub fn validate_routes(routes: &[HttpRoute]) -> Result<(), RouteError> {
    let mut names = BTreeSet::new();
    for (index, route) in routes.iter().enumerate() {
        if route.name.is_empty() {
            return Err(RouteError::EmptyRouteName { index });
        }
        if !names.insert(route.name.as_str()) {
            return Err(RouteError::DuplicateRouteName {
                index,
                name: route.name.clone(),
            });
        }
        if route.rules.is_empty() {
            return Err(RouteError::Rule {
                route: route.name.clone(),
                rule: 0,
                message: "a route needs at least one rule".into(),
            });
        }
        if let Some(tls) = &route.tls {
            let fail = |message: String| RouteError::Rule {
                route: route.name.clone(),
                rule: 0,
                message,
            };
            if !route.serves(Listener::Https) {
                return Err(fail(
                    "tls: the route is not served on the https listener".into(),
                ));
            }
            if tls.client_ca.is_some() || tls.client_ca_file.is_some() {
                return Err(fail(
                    "tls: a route takes a certificate and key only; client CAs belong to pools"
                        .into(),
                ));
            }
            tls.check().map_err(fail)?;
        }
        for (i, rule) in route.rules.iter().enumerate() {
            check_rule(rule).map_err(|message| RouteError::Rule {
                route: route.name.clone(),
                rule: i,
                message,
            })?;
        }
    }
    Ok(())
}

fn check_rule(rule: &Rule) -> Result<(), String> {
    for (i, m) in rule.matches.iter().enumerate() {
        let mut seen = BTreeSet::new();
        for h in &m.headers {
            if !seen.insert(h.name.to_ascii_lowercase()) {
                return Err(format!("matches[{i}]: header {:?} is listed twice", h.name));
            }
        }
        let mut seen = BTreeSet::new();
        for q in &m.query_params {
            if !seen.insert(q.name.as_str()) {
                return Err(format!(
                    "matches[{i}]: query parameter {:?} is listed twice",
                    q.name
                ));
            }
        }
    }
    let mut kinds = BTreeSet::new();
    for f in &rule.filters {
        let kind = f.kind();
        if kind != FilterType::RequestMirror && !kinds.insert(format!("{kind:?}")) {
            return Err(format!("filter {kind:?} is given more than once"));
        }
        match f {
            Filter::RequestHeaderModifier(m) | Filter::ResponseHeaderModifier(m) => {
                check_modifier(m)?
            }
            Filter::RequestRedirect(Redirect { path, .. })
            | Filter::UrlRewrite(UrlRewrite { path, .. }) => {
                if let Some(PathModifier::ReplacePrefixMatch(_)) = path
                    && rule
                        .matches
                        .iter()
                        .any(|m| !matches!(m.path, None | Some(PathMatch::PathPrefix(_))))
                {
                    return Err(
                        "ReplacePrefixMatch needs every match of the rule to be a PathPrefix"
                            .into(),
                    );
                }
            }
            Filter::RequestMirror(m) => {
                if m.pool.is_empty() {
                    return Err("requestMirror: pool must not be empty".into());
                }
            }
        }
    }
    let redirect = kinds.contains("RequestRedirect");
    if redirect && kinds.contains("UrlRewrite") {
        return Err("RequestRedirect and URLRewrite cannot be used together".into());
    }
    if redirect && !rule.backends.is_empty() {
        return Err("a rule with a RequestRedirect takes no backends".into());
    }
    if rule.backends.iter().any(|b| b.pool.is_empty()) {
        return Err("backends: pool must not be empty".into());
    }
    if let Some(RuleTimeouts {
        request: Some(request),
        backend_request: Some(backend),
    }) = &rule.timeouts
        && request.get() > std::time::Duration::ZERO
        && backend.get() > request.get()
    {
        return Err(format!(
            "timeouts: backendRequest {backend} is longer than request {request}"
        ));
    }
    Ok(())
}

fn check_modifier(m: &HeaderModifier) -> Result<(), String> {
    for (list, what) in [(&m.set, "set"), (&m.add, "add")] {
        let mut seen = BTreeSet::new();
        for pair in list {
            if !seen.insert(pair.name.as_str().to_ascii_lowercase()) {
                return Err(format!(
                    "header modifier: {:?} appears twice in `{what}`",
                    pair.name.as_str()
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
