//! The fields that describe one connection (hop-by-hop): the proxy forwards
//! none of them, either way, and HTTP/2 forbids them (RFC 9113 §8.2.2), so
//! the HTTP/2 server strips them from every response it sends, Sluice's own
//! answers included. A leaf, so that both sides share one list and one pass.

use http::header::{self, HeaderMap, HeaderName};

const HOPS: usize = 8;

/// Headers that describe one hop and are never forwarded (RFC 9110 §7.6.1,
/// plus the legacy `Keep-Alive` and `Proxy-Connection`). `Trailer` is not
/// one of them (it was in RFC 2616): it announces the trailer fields that
/// pass through, and hyper sends the client only the announced ones.
static HOP_BY_HOP: [HeaderName; HOPS] = [
    header::CONNECTION, // first: see strip_seeing
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Where `name` is in [`HOP_BY_HOP`]: a match on its text (names are lower
/// case), which compiles to a switch on the length and one comparison.
/// Why not a search of the array: as a `const` it was built and dropped
/// for every header of every message, and as a `static` each name was
/// compared with each entry in turn (callgrind: both cost about 500
/// instructions per HTTP/2 request more than this).
fn hop_index(name: &HeaderName) -> Option<usize> {
    let i = match name.as_str() {
        "connection" => 0,
        "keep-alive" => 1,
        "proxy-connection" => 2,
        "proxy-authenticate" => 3,
        "proxy-authorization" => 4,
        "te" => 5,
        "transfer-encoding" => 6,
        "upgrade" => 7,
        _ => return None,
    };
    debug_assert_eq!(HOP_BY_HOP[i], name);
    Some(i)
}

/// Removes hop-by-hop headers, including every header the `Connection`
/// header names.
pub fn strip(headers: &mut HeaderMap) {
    strip_seeing::<false>(headers);
}

/// [`strip`], and whether an `X-Forwarded-*` header is there, seen on the
/// way (the proxy's look at a request's).
pub fn strip_noting_forwarded(headers: &mut HeaderMap) -> bool {
    strip_seeing::<true>(headers)
}

fn strip_seeing<const FORWARDED: bool>(headers: &mut HeaderMap) -> bool {
    // One pass over the names (standard ones compare as numbers) finds
    // which are present; most messages carry none, or only `Connection:
    // keep-alive`, and then nothing is hashed or allocated.
    let mut present = [false; HOPS];
    let mut forwarded = false;
    for name in headers.keys() {
        if let Some(i) = hop_index(name) {
            present[i] = true;
        } else if FORWARDED && name.as_str().starts_with("x-forwarded-") {
            forwarded = true;
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
    forwarded
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_match_and_the_list_name_the_same_fields() {
        // `hop_index` spells the list out again: the two must agree.
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_index(name), Some(i), "{name}");
        }
        assert_eq!(hop_index(&header::TRAILER), None);
        assert_eq!(hop_index(&header::CONTENT_LENGTH), None);
    }

    #[test]
    fn connection_fields_and_the_ones_connection_names_go_and_the_rest_stay() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("connection", "close, x-hop"),
            ("connection", "keep-alive, X-Other-Hop"),
            ("x-hop", "1"),
            ("x-other-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("te", "trailers"),
            ("proxy-connection", "keep-alive"),
            ("proxy-authenticate", "Basic"),
            ("x-kept", "yes"),
            ("content-type", "text/plain"),
        ] {
            headers.append(HeaderName::from_static(name), value.parse().expect("value"));
        }
        assert!(!strip_noting_forwarded(&mut headers.clone()));
        strip(&mut headers);
        let mut left: Vec<_> = headers.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["content-type", "x-kept"]);
    }

    #[test]
    fn a_forwarded_field_is_noted_and_kept() {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", "192.0.2.1".parse().expect("value"));
        headers.insert(header::CONNECTION, "close".parse().expect("value"));
        assert!(strip_noting_forwarded(&mut headers));
        assert!(headers.contains_key("x-forwarded-for"));
        assert!(!headers.contains_key(header::CONNECTION));
    }
}
