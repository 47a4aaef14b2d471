//! What a request brings to endpoint selection: the hash of its `hashKey`
//! (RingHash, Maglev) and the endpoint its affinity cookie names. Read from
//! the headers without allocating.

use std::net::IpAddr;

use http::HeaderMap;
use http::header::{COOKIE, HeaderName};
use sluice_protocol::HashKey;

use super::hash;

/// A request's inputs to [`crate::table::Pool::pick`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PickRequest {
    /// Hash of the request's key, for the hashing algorithms; `None` when
    /// the pool does not hash or the request lacks the header or cookie
    /// (it then gets a random endpoint, as in Envoy).
    pub hash: Option<u64>,
    /// The endpoint (index into the pool's endpoints) named by a valid
    /// affinity cookie.
    pub sticky: Option<u32>,
}

/// Where a pool's hash key comes from, parsed once per pool.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// A request header.
    Header(HeaderName),
    /// A cookie.
    Cookie(String),
    /// The client's IP.
    SourceIp,
}

impl KeySource {
    /// The source for `key`. A header name that does not parse (the
    /// protocol validates it, so never in practice) hashes the source IP.
    pub fn new(key: &HashKey) -> Self {
        match key {
            HashKey::Header(name) => HeaderName::from_bytes(name.as_bytes())
                .map(Self::Header)
                .unwrap_or(Self::SourceIp),
            HashKey::Cookie(name) => Self::Cookie(name.clone()),
            HashKey::SourceIp => Self::SourceIp,
        }
    }

    /// The request's hash, if it carries the key.
    pub fn hash(&self, headers: &HeaderMap, peer: IpAddr) -> Option<u64> {
        match self {
            Self::Header(name) => headers.get(name).map(|v| hash::key(v.as_bytes())),
            Self::Cookie(name) => cookie(headers, name).map(|v| hash::key(v.as_bytes())),
            Self::SourceIp => Some(match peer {
                IpAddr::V4(v4) => hash::key(&v4.octets()),
                IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                    Some(v4) => hash::key(&v4.octets()),
                    None => hash::key(&v6.octets()),
                },
            }),
        }
    }
}

/// The value of cookie `name` in the request's `Cookie` headers (HTTP/2
/// clients may send several), first occurrence.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (n, value) = pair.trim().split_once('=')?;
            (n == name).then(|| value.trim_matches('"'))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(*n, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn cookies_are_found_among_others_and_across_headers() {
        let h = headers(&[("cookie", "a=1; sid=xyz"), ("cookie", "b=2;c=\"q\"")]);
        assert_eq!(cookie(&h, "sid"), Some("xyz"));
        assert_eq!(cookie(&h, "b"), Some("2"));
        assert_eq!(cookie(&h, "c"), Some("q"));
        assert_eq!(cookie(&h, "s"), None);
        assert_eq!(cookie(&headers(&[]), "a"), None);
    }

    #[test]
    fn keys_hash_their_value_or_are_missing() {
        let ip: IpAddr = "192.0.2.7".parse().expect("ip");
        let h = headers(&[("x-user", "alice"), ("cookie", "u=alice")]);
        let by_header = KeySource::new(&HashKey::Header("x-user".into()));
        let by_cookie = KeySource::new(&HashKey::Cookie("u".into()));
        assert_eq!(by_header.hash(&h, ip), Some(hash::key(b"alice")));
        assert_eq!(by_cookie.hash(&h, ip), Some(hash::key(b"alice")));
        assert_eq!(by_header.hash(&headers(&[]), ip), None);
        let by_ip = KeySource::new(&HashKey::SourceIp);
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().expect("ip");
        assert_eq!(by_ip.hash(&h, ip), by_ip.hash(&h, mapped));
    }
}
