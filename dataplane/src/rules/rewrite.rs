//! What a rule's filters do to a request or response head: header
//! changes, path replacement, the `Location` of a redirect. Plain
//! functions over `http` types, built once with the table.

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use sluice_protocol::http_route::{HeaderModifier, PathModifier, Redirect, Scheme};

/// A `RequestHeaderModifier` or `ResponseHeaderModifier`, with names and
/// values already parsed.
#[derive(Debug, Default)]
pub struct HeaderOps {
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
}

impl HeaderOps {
    /// Parses a modifier. Names and values were validated with the table
    /// (tokens, no control characters), so none is dropped here.
    pub fn new(m: &HeaderModifier) -> Self {
        let pair = |p: &sluice_protocol::http_route::HeaderPair| {
            Some((
                HeaderName::from_bytes(p.name.as_str().as_bytes()).ok()?,
                HeaderValue::from_str(p.value.as_str()).ok()?,
            ))
        };
        Self {
            set: m.set.iter().filter_map(pair).collect(),
            add: m.add.iter().filter_map(pair).collect(),
            remove: m
                .remove
                .iter()
                .filter_map(|n| HeaderName::from_bytes(n.as_str().as_bytes()).ok())
                .collect(),
        }
    }

    /// Sets, then adds, then removes.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
        for name in &self.remove {
            headers.remove(name);
        }
    }
}

/// A path change of a redirect or a rewrite.
#[derive(Debug, Clone)]
pub enum PathChange {
    /// The path becomes this one.
    Full(String),
    /// The matched prefix becomes this one.
    Prefix(String),
}

impl PathChange {
    /// From the protocol's modifier.
    pub fn new(m: &PathModifier) -> Self {
        match m {
            PathModifier::ReplaceFullPath(p) => Self::Full(p.clone()),
            PathModifier::ReplacePrefixMatch(p) => Self::Prefix(p.clone()),
        }
    }

    /// The new path for `path`, of which the rule's `PathPrefix` matched
    /// the first `prefix_len` bytes (trailing `/` not counted). By whole
    /// segments, as Gateway API's table of examples has it: prefix `/foo`
    /// to `/xyz` makes `/foo/bar` `/xyz/bar` and `/foo` `/xyz`; to `/xyz/`
    /// makes `/foo` `/xyz/`; to `` or `/` makes `/foo/bar` `/bar` and
    /// `/foo` `/`.
    pub fn apply(&self, path: &str, prefix_len: usize) -> String {
        match self {
            Self::Full(p) => p.clone(),
            Self::Prefix(replacement) => {
                let rest = path.get(prefix_len..).unwrap_or_default();
                if rest.is_empty() {
                    return if replacement.is_empty() {
                        "/".into()
                    } else {
                        replacement.clone()
                    };
                }
                let mut out = replacement.trim_end_matches('/').to_string();
                out.push_str(rest);
                out
            }
        }
    }
}

/// A `RequestRedirect`, ready to build `Location` values.
#[derive(Debug)]
pub struct RedirectTo {
    scheme: Option<Scheme>,
    hostname: Option<String>,
    port: Option<u16>,
    path: Option<PathChange>,
    /// The status to answer with.
    pub status: StatusCode,
}

impl RedirectTo {
    /// From the protocol's filter.
    pub fn new(r: &Redirect) -> Self {
        Self {
            scheme: r.scheme,
            hostname: r.hostname.as_ref().map(|h| h.as_str().to_string()),
            port: r.port.map(|p| p.get()),
            path: r.path.as_ref().map(PathChange::new),
            status: StatusCode::from_u16(r.status_code.get()).unwrap_or(StatusCode::FOUND),
        }
    }

    /// The `Location` for a request that came over `https` (or not) with
    /// `host` (the `Host` as sent, port included if any), `path` and
    /// `query`. The port, when the filter gives none: the well-known port
    /// of the filter's scheme if it names one, else the port the client
    /// used (the `Host`'s, or its scheme's default). A port that is the
    /// scheme's default is left out, as Gateway API asks.
    pub fn location(
        &self,
        https: bool,
        host: &str,
        path: &str,
        query: Option<&str>,
        prefix_len: usize,
    ) -> String {
        let request_scheme = if https { Scheme::Https } else { Scheme::Http };
        let scheme = self.scheme.unwrap_or(request_scheme);
        let (name, port) = split_host(host);
        let port = self.port.unwrap_or(match (self.scheme, port) {
            (Some(s), _) => s.default_port(),
            (None, Some(p)) => p,
            (None, None) => request_scheme.default_port(),
        });
        let name = self.hostname.as_deref().unwrap_or(name);
        let mut out = format!("{}://{name}", scheme.as_str());
        if port != scheme.default_port() {
            out.push(':');
            out.push_str(&port.to_string());
        }
        match &self.path {
            Some(change) => out.push_str(&change.apply(path, prefix_len)),
            None => out.push_str(path),
        }
        if let Some(q) = query {
            out.push('?');
            out.push_str(q);
        }
        out
    }
}

/// `host[:port]` or `[v6][:port]` as name and port.
fn split_host(host: &str) -> (&str, Option<u16>) {
    if host.starts_with('[') {
        return match host.rsplit_once("]:") {
            Some((name, port)) => (&host[..name.len() + 1], port.parse().ok()),
            None => (host, None),
        };
    }
    match host.rsplit_once(':') {
        Some((name, port)) => match port.parse() {
            Ok(p) => (name, Some(p)),
            Err(_) => (host, None),
        },
        None => (host, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redirect(yaml: &str) -> RedirectTo {
        let r: Redirect = serde_saphyr::from_str(yaml).expect("redirect");
        RedirectTo::new(&r)
    }

    #[test]
    fn prefix_replacement_follows_the_gateway_api_table() {
        // (matched prefix, replacement, request path, expected)
        let cases = [
            ("/foo", "/xyz", "/foo/bar", "/xyz/bar"),
            ("/foo/", "/xyz", "/foo/bar", "/xyz/bar"),
            ("/foo", "/xyz/", "/foo/bar", "/xyz/bar"),
            ("/foo/", "/xyz/", "/foo/bar", "/xyz/bar"),
            ("/foo", "/xyz", "/foo", "/xyz"),
            ("/foo/", "/xyz", "/foo", "/xyz"),
            ("/foo", "/xyz/", "/foo", "/xyz/"),
            ("/foo/", "/xyz/", "/foo", "/xyz/"),
            ("/foo", "", "/foo/bar", "/bar"),
            ("/foo/", "", "/foo/bar", "/bar"),
            ("/foo", "/", "/foo/bar", "/bar"),
            ("/foo/", "/", "/foo/bar", "/bar"),
            ("/foo", "/", "/foo", "/"),
            ("/foo/", "/", "/foo", "/"),
            ("/foo", "", "/foo", "/"),
            ("/", "/xyz", "/foo", "/xyz/foo"),
        ];
        for (prefix, replacement, path, want) in cases {
            let len = prefix.trim_end_matches('/').len();
            let got = PathChange::Prefix(replacement.into()).apply(path, len);
            assert_eq!(got, want, "{prefix} -> {replacement:?} on {path}");
        }
        assert_eq!(PathChange::Full("/a".into()).apply("/foo/bar", 4), "/a");
    }

    #[test]
    fn locations_keep_what_the_filter_leaves_and_drop_default_ports() {
        let to_https = redirect("scheme: https");
        assert_eq!(
            to_https.location(false, "shop.example.com:8080", "/a", Some("q=1"), 0),
            "https://shop.example.com/a?q=1"
        );
        let host_only = redirect("hostname: other.example.com");
        assert_eq!(
            host_only.location(false, "shop.example.com:8080", "/a", None, 0),
            "http://other.example.com:8080/a"
        );
        assert_eq!(
            host_only.location(true, "shop.example.com", "/a", None, 0),
            "https://other.example.com/a"
        );
        let port = redirect("{port: 8443, scheme: https, statusCode: 301}");
        assert_eq!(port.status, StatusCode::MOVED_PERMANENTLY);
        assert_eq!(
            port.location(false, "[::1]:80", "/", None, 0),
            "https://[::1]:8443/"
        );
        let path = redirect("path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}");
        assert_eq!(path.status, StatusCode::FOUND);
        assert_eq!(
            path.location(false, "a.example.com", "/old/x", None, 4),
            "http://a.example.com/new/x"
        );
    }

    #[test]
    fn header_ops_set_then_add_then_remove() {
        let m: HeaderModifier = serde_saphyr::from_str(
            "{set: [{name: X-Set, value: new}], add: [{name: x-add, value: two}], remove: [x-gone]}",
        )
        .expect("modifier");
        let mut h = HeaderMap::new();
        h.insert("x-set", HeaderValue::from_static("old"));
        h.insert("x-add", HeaderValue::from_static("one"));
        h.insert("x-gone", HeaderValue::from_static("1"));
        HeaderOps::new(&m).apply(&mut h);
        assert_eq!(h["x-set"], "new");
        let adds: Vec<_> = h.get_all("x-add").iter().collect();
        assert_eq!(adds, ["one", "two"]);
        assert!(!h.contains_key("x-gone"));
    }
}
