//! What a request and a response look like on the far side of the proxy:
//! hop-by-hop headers removed, `X-Forwarded-*` set, the URI pointed at the
//! chosen endpoint. Plain functions over `http` types, tested here.

use std::io::Write as _;
use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{Uri, Version};

const HOPS: usize = 8;

/// Headers that describe one hop and are never forwarded (RFC 9110 §7.6.1,
/// plus the legacy `Keep-Alive` and `Proxy-Connection`). `Trailer` is not
/// one of them (it was in RFC 2616): it announces the trailer fields that
/// pass through, and hyper sends the client only the announced ones.
const HOP_BY_HOP: [HeaderName; HOPS] = [
    header::CONNECTION, // first: see strip_hop_by_hop
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Removes hop-by-hop headers, including every header the `Connection`
/// header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names (standard ones compare as numbers) finds
    // which are present; most messages carry none, or only `Connection:
    // keep-alive`, and then nothing is hashed or allocated.
    let mut present = [false; HOPS];
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == name) {
            present[i] = true;
        }
    }
    if present[0] {
        // Other headers the `Connection` header names (`close`,
        // `keep-alive` and `upgrade` name none or a listed one).
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|t| {
                !["close", "keep-alive", "upgrade"]
                    .iter()
                    .any(|k| t.eq_ignore_ascii_case(k))
            })
            .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for (name, _) in HOP_BY_HOP.iter().zip(present).filter(|(_, p)| *p) {
        headers.remove(name);
    }
}

/// Rewrites a client request's head for an endpoint: origin-form URI,
/// HTTP/1.1, hop-by-hop headers gone, and the host the request
/// was routed by in `Host` and `X-Forwarded-Host` (an HTTP/2 client sends no
/// `Host`, and an absolute-form target overrides it, RFC 9112 §3.2.2), and
/// the client appended to `X-Forwarded-For`, `X-Forwarded-Proto` saying
/// whether it came over TLS. An upgrade request (WebSocket) keeps its
/// `Upgrade` and `Connection: upgrade`.
pub fn request(
    parts: &mut Parts,
    client: IpAddr,
    original_host: Option<HeaderValue>,
    https: bool,
) -> Result<(), http::Error> {
    let path_and_query = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    // Origin-form: the connection already goes to the endpoint, and
    // `Host` names what the client asked for.
    parts.uri = Uri::from(path_and_query);
    let upgrade = crate::upgrade::requested(parts.version, &parts.headers);
    parts.version = Version::HTTP_11;
    let headers = &mut parts.headers;
    strip_hop_by_hop(headers);
    if let Some(protocol) = upgrade {
        crate::upgrade::keep(headers, protocol);
    }
    // Room for the headers added below, made once.
    headers.reserve(4);
    if let Some(host) = original_host {
        // An HTTP/1.1 request usually carries it already.
        if headers.get(header::HOST) != Some(&host) {
            headers.insert(header::HOST, host.clone());
        }
        headers.insert(X_FORWARDED_HOST, host);
    }
    let mut text = [0u8; IP_TEXT];
    let ip = ip_text(client, &mut text);
    let prior = headers.get_all(X_FORWARDED_FOR);
    let xff = if prior.iter().next().is_none() {
        // The usual case: one allocation, of the value's own size.
        HeaderValue::from_bytes(ip)
    } else {
        let mut xff = Vec::new();
        for prior in prior {
            if let Ok(prior) = prior.to_str() {
                xff.extend_from_slice(prior.trim().as_bytes());
                xff.extend_from_slice(b", ");
            }
        }
        xff.extend_from_slice(ip);
        HeaderValue::from_bytes(&xff)
    };
    if let Ok(v) = xff {
        headers.insert(X_FORWARDED_FOR, v);
    }
    let proto = if https { "https" } else { "http" };
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    Ok(())
}

/// Room for the longest address as text (IPv6 is at most 39 bytes).
const IP_TEXT: usize = 48;

/// `ip` as text, in `out`. IPv4 digits are written here: `Ipv4Addr`'s
/// `Display` goes through the formatter with padding support, and this runs
/// on every request (measured: 4 % of the proxy's user-space instructions
/// per request went to it).
fn ip_text(ip: IpAddr, out: &mut [u8; IP_TEXT]) -> &[u8] {
    let mut len = 0;
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out[len] = b'.';
                    len += 1;
                }
                if octet >= 100 {
                    out[len] = b'0' + octet / 100;
                    len += 1;
                }
                if octet >= 10 {
                    out[len] = b'0' + octet / 10 % 10;
                    len += 1;
                }
                out[len] = b'0' + octet % 10;
                len += 1;
            }
        }
        IpAddr::V6(v6) => {
            let mut rest = &mut out[..];
            let _ = write!(rest, "{v6}");
            len = IP_TEXT - rest.len();
        }
    }
    &out[..len]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        let cases: [IpAddr; 6] = [
            [0, 0, 0, 0].into(),
            [255, 255, 255, 255].into(),
            [10, 100, 9, 199].into(),
            [192, 0, 2, 30].into(),
            "2001:db8::1".parse().expect("v6"),
            "::ffff:192.0.2.1".parse().expect("v4-mapped v6"),
        ];
        let mut out = [0u8; IP_TEXT];
        for ip in cases {
            assert_eq!(ip_text(ip, &mut out), ip.to_string().as_bytes());
        }
        let longest: IpAddr = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe"
            .parse()
            .expect("v6");
        assert_eq!(ip_text(longest, &mut out), longest.to_string().as_bytes());
        proptest::proptest!(|(octets: [u8; 4])| {
            let ip = IpAddr::from(octets);
            let mut out = [0u8; IP_TEXT];
            let expected = ip.to_string();
            proptest::prop_assert_eq!(ip_text(ip, &mut out), expected.as_bytes());
        });
    }

    #[test]
    fn connection_named_headers_are_stripped() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Custom"),
        );
        h.insert("x-custom", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn the_upstream_request_names_the_endpoint_and_keeps_the_host() {
        let (mut parts, ()) = http::Request::get("http://shop.example.com:8080/a/b?c=d")
            .version(Version::HTTP_2)
            .header("x-forwarded-for", "203.0.113.1")
            .header("x-forwarded-for", "198.51.100.2")
            .body(())
            .expect("request")
            .into_parts();
        let host = HeaderValue::from_static("shop.example.com:8080");
        request(&mut parts, [192, 0, 2, 3].into(), Some(host), false).expect("rewrites");
        assert_eq!(parts.uri, "/a/b?c=d");
        assert_eq!(parts.version, Version::HTTP_11);
        let h = &parts.headers;
        assert_eq!(h["host"], "shop.example.com:8080");
        assert_eq!(h["x-forwarded-host"], "shop.example.com:8080");
        assert_eq!(h["x-forwarded-for"], "203.0.113.1, 198.51.100.2, 192.0.2.3");
        assert_eq!(h["x-forwarded-proto"], "http");
    }
}
