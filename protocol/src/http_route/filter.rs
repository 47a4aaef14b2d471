//! The filters of a rule, as Gateway API writes them: `type` and the field
//! it names, checked while deserializing.

use serde::{Deserialize, Serialize};

use super::{check_path, check_token, check_value};
use crate::route::Host;

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
