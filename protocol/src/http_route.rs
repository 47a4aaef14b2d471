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
use crate::route::{Host, RouteError};

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

/// The methods a rule can match on (Gateway API's list).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub enum Method {
    GET,
    HEAD,
    POST,
    PUT,
    DELETE,
    CONNECT,
    OPTIONS,
    TRACE,
    PATCH,
}

impl Method {
    /// The method as sent on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::GET => "GET",
            Self::HEAD => "HEAD",
            Self::POST => "POST",
            Self::PUT => "PUT",
            Self::DELETE => "DELETE",
            Self::CONNECT => "CONNECT",
            Self::OPTIONS => "OPTIONS",
            Self::TRACE => "TRACE",
            Self::PATCH => "PATCH",
        }
    }
}

/// One step applied to a request (or its response).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawFilter", into = "RawFilter")]
pub enum Filter {
    /// Headers set, added or removed before forwarding.
    RequestHeaderModifier(HeaderModifier),
    /// Headers set, added or removed on the response.
    ResponseHeaderModifier(HeaderModifier),
    /// Answer with a redirect instead of forwarding.
    RequestRedirect(Redirect),
    /// Host and path changed before forwarding.
    UrlRewrite(UrlRewrite),
    /// A copy of the request sent to another pool, its answer ignored.
    RequestMirror(Mirror),
}

/// The kinds of [`Filter`], as written in `type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub enum FilterType {
    RequestHeaderModifier,
    ResponseHeaderModifier,
    RequestRedirect,
    #[serde(rename = "URLRewrite")]
    UrlRewrite,
    RequestMirror,
}

/// [`Filter`] as written: `type` and the field it names, as Gateway API's.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawFilter {
    #[serde(rename = "type")]
    kind: FilterType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    request_header_modifier: Option<HeaderModifier>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    response_header_modifier: Option<HeaderModifier>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    request_redirect: Option<Redirect>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    url_rewrite: Option<UrlRewrite>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    request_mirror: Option<Mirror>,
}

impl TryFrom<RawFilter> for Filter {
    type Error = String;
    fn try_from(raw: RawFilter) -> Result<Self, String> {
        let given = [
            raw.request_header_modifier.is_some(),
            raw.response_header_modifier.is_some(),
            raw.request_redirect.is_some(),
            raw.url_rewrite.is_some(),
            raw.request_mirror.is_some(),
        ];
        if given.iter().filter(|g| **g).count() > 1 {
            return Err(format!(
                "filter of type {:?} must set only the field its type names",
                raw.kind
            ));
        }
        let missing = |field: &str| format!("filter of type {:?} needs `{field}`", raw.kind);
        Ok(match raw.kind {
            FilterType::RequestHeaderModifier => Self::RequestHeaderModifier(
                raw.request_header_modifier
                    .ok_or_else(|| missing("requestHeaderModifier"))?,
            ),
            FilterType::ResponseHeaderModifier => Self::ResponseHeaderModifier(
                raw.response_header_modifier
                    .ok_or_else(|| missing("responseHeaderModifier"))?,
            ),
            FilterType::RequestRedirect => Self::RequestRedirect(
                raw.request_redirect
                    .ok_or_else(|| missing("requestRedirect"))?,
            ),
            FilterType::UrlRewrite => {
                Self::UrlRewrite(raw.url_rewrite.ok_or_else(|| missing("urlRewrite"))?)
            }
            FilterType::RequestMirror => {
                Self::RequestMirror(raw.request_mirror.ok_or_else(|| missing("requestMirror"))?)
            }
        })
    }
}

impl From<Filter> for RawFilter {
    fn from(f: Filter) -> Self {
        let mut raw = RawFilter {
            kind: f.kind(),
            request_header_modifier: None,
            response_header_modifier: None,
            request_redirect: None,
            url_rewrite: None,
            request_mirror: None,
        };
        match f {
            Filter::RequestHeaderModifier(m) => raw.request_header_modifier = Some(m),
            Filter::ResponseHeaderModifier(m) => raw.response_header_modifier = Some(m),
            Filter::RequestRedirect(r) => raw.request_redirect = Some(r),
            Filter::UrlRewrite(r) => raw.url_rewrite = Some(r),
            Filter::RequestMirror(m) => raw.request_mirror = Some(m),
        }
        raw
    }
}

impl Filter {
    /// The filter's `type`.
    pub fn kind(&self) -> FilterType {
        match self {
            Self::RequestHeaderModifier(_) => FilterType::RequestHeaderModifier,
            Self::ResponseHeaderModifier(_) => FilterType::ResponseHeaderModifier,
            Self::RequestRedirect(_) => FilterType::RequestRedirect,
            Self::UrlRewrite(_) => FilterType::UrlRewrite,
            Self::RequestMirror(_) => FilterType::RequestMirror,
        }
    }
}

/// Header changes, applied as `set`, then `add`, then `remove`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderModifier {
    /// Replace every value of the header with this one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set: Vec<HeaderPair>,
    /// Append a value, keeping those already there.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<HeaderPair>,
    /// Remove the header (names).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<HeaderName>,
}

/// A header name and value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderPair {
    /// The name.
    pub name: HeaderName,
    /// The value (no control characters).
    pub value: HeaderText,
}

/// A header name: an HTTP token (compared without case).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HeaderName(String);

impl HeaderName {
    /// The name as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for HeaderName {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        check_token(&s).map(|()| Self(s))
    }
}

impl From<HeaderName> for String {
    fn from(h: HeaderName) -> Self {
        h.0
    }
}

/// A header value: visible characters, spaces and tabs only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HeaderText(String);

impl HeaderText {
    /// The value as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for HeaderText {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        check_value(&s).map(|()| Self(s))
    }
}

impl From<HeaderText> for String {
    fn from(h: HeaderText) -> Self {
        h.0
    }
}

/// An answer redirecting the client. Fields left out keep the request's.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Redirect {
    /// `http` or `https`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<Scheme>,
    /// The host to redirect to (no wildcard).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<Host>,
    /// The port; when omitted, the scheme's well-known port if `scheme` is
    /// given, else the port the client used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<std::num::NonZeroU16>,
    /// The path, replaced whole or by its matched prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathModifier>,
    /// 301, 302 (the default), 303, 307 or 308.
    #[serde(default, skip_serializing_if = "RedirectStatus::is_default")]
    pub status_code: RedirectStatus,
}

/// The schemes a redirect can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[allow(missing_docs)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    /// The scheme as written in a URL.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Https => "https",
        }
    }

    /// The port a URL of this scheme leaves out.
    pub fn default_port(self) -> u16 {
        match self {
            Self::Http => 80,
            Self::Https => 443,
        }
    }
}

/// A redirect's status code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "u16", into = "u16")]
pub struct RedirectStatus(u16);

impl RedirectStatus {
    /// The code.
    pub fn get(self) -> u16 {
        self.0
    }
    fn is_default(&self) -> bool {
        self.0 == 302
    }
}

impl Default for RedirectStatus {
    fn default() -> Self {
        Self(302)
    }
}

impl TryFrom<u16> for RedirectStatus {
    type Error = String;
    fn try_from(code: u16) -> Result<Self, String> {
        match code {
            301 | 302 | 303 | 307 | 308 => Ok(Self(code)),
            _ => Err(format!(
                "statusCode {code} is not a redirect: use 301, 302, 303, 307 or 308"
            )),
        }
    }
}

impl From<RedirectStatus> for u16 {
    fn from(s: RedirectStatus) -> Self {
        s.0
    }
}

/// Host and path changes made before forwarding.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UrlRewrite {
    /// The `Host` the pool receives (`X-Forwarded-Host` keeps the client's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<Host>,
    /// The path the pool receives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathModifier>,
}

/// How a redirect or rewrite changes the path; the query is kept.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawPathModifier", into = "RawPathModifier")]
pub enum PathModifier {
    /// The whole path becomes this one.
    ReplaceFullPath(String),
    /// The part the rule's `PathPrefix` matched becomes this one, by whole
    /// segments: prefix `/foo` to `/xyz` turns `/foo/bar` into `/xyz/bar`,
    /// and to `` or `/` turns it into `/bar`.
    ReplacePrefixMatch(String),
}

/// The kinds of [`PathModifier`], as written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub enum PathModifierType {
    ReplaceFullPath,
    ReplacePrefixMatch,
}

/// [`PathModifier`] as written, as Gateway API's.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawPathModifier {
    #[serde(rename = "type")]
    kind: PathModifierType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    replace_full_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    replace_prefix_match: Option<String>,
}

impl TryFrom<RawPathModifier> for PathModifier {
    type Error = String;
    fn try_from(raw: RawPathModifier) -> Result<Self, String> {
        match (raw.kind, raw.replace_full_path, raw.replace_prefix_match) {
            (PathModifierType::ReplaceFullPath, Some(p), None) => {
                check_path("replaceFullPath", &p).map(|()| Self::ReplaceFullPath(p))
            }
            (PathModifierType::ReplacePrefixMatch, None, Some(p)) => {
                if !p.is_empty() {
                    check_path("replacePrefixMatch", &p)?;
                }
                Ok(Self::ReplacePrefixMatch(p))
            }
            (kind, _, _) => Err(format!(
                "path of type {kind:?} needs `{}` and only that",
                match kind {
                    PathModifierType::ReplaceFullPath => "replaceFullPath",
                    PathModifierType::ReplacePrefixMatch => "replacePrefixMatch",
                }
            )),
        }
    }
}

impl From<PathModifier> for RawPathModifier {
    fn from(m: PathModifier) -> Self {
        match m {
            PathModifier::ReplaceFullPath(p) => Self {
                kind: PathModifierType::ReplaceFullPath,
                replace_full_path: Some(p),
                replace_prefix_match: None,
            },
            PathModifier::ReplacePrefixMatch(p) => Self {
                kind: PathModifierType::ReplacePrefixMatch,
                replace_full_path: None,
                replace_prefix_match: Some(p),
            },
        }
    }
}

/// Where mirrored requests go.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Mirror {
    /// The pool, by name.
    pub pool: String,
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
