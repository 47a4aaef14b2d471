//! What a request and a response look like on the far side of the proxy:
//! hop-by-hop headers removed ([`crate::hop_by_hop`]), `X-Forwarded-*` set,
//! the URI pointed at the chosen endpoint. Plain functions over `http`
//! types, tested here.

use std::io::Write as _;
use std::net::IpAddr;

use http::header::{self, HeaderName, HeaderValue};
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{Uri, Version};

use crate::hop_by_hop;
use crate::trace::context::{Propagated, TRACEPARENT, TRACESTATE};

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The host a request was routed by, for `Host` and `X-Forwarded-Host`.
#[derive(Debug, Clone)]
pub struct RoutedHost {
    pub value: HeaderValue,
    /// Whether it came from the request's own `Host` header (which then
    /// needs no rewrite); otherwise from the URI's authority.
    pub in_host_header: bool,
}

/// The `X-Forwarded-*` fields of one request, written by the endpoint
/// side's encoder after the request's own headers ([`Forwarded::write`]):
/// three `HeaderMap` inserts (and a hash each) per request cost more than
/// the whole text they make (measured: 1,440 instructions a request, 7 %
/// of the proxy's).
#[derive(Debug)]
pub struct Forwarded {
    /// `X-Forwarded-For` values the client sent, joined (`None`: none).
    prior: Option<Vec<u8>>,
    client: IpAddr,
    https: bool,
    /// The host the request was routed by.
    host: Option<HeaderValue>,
    /// The request's `traceparent` when tracing is on.
    trace: Option<Propagated>,
}

impl crate::http1::client::ExtraFields for Forwarded {
    fn write(&self, out: &mut Vec<u8>) {
        Forwarded::write(self, out);
    }
}

impl Forwarded {
    /// Appends the request's `X-Forwarded-For` (the client's chain, then
    /// the client), `X-Forwarded-Proto` and `X-Forwarded-Host` lines to a
    /// head being written.
    pub fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"x-forwarded-for: ");
        if let Some(prior) = &self.prior {
            out.extend_from_slice(prior);
            out.extend_from_slice(b", ");
        }
        let mut text = [0u8; IP_TEXT];
        out.extend_from_slice(ip_text(self.client, &mut text));
        out.extend_from_slice(if self.https {
            b"\r\nx-forwarded-proto: https\r\n"
        } else {
            b"\r\nx-forwarded-proto: http\r\n"
        });
        if let Some(host) = &self.host {
            out.extend_from_slice(b"x-forwarded-host: ");
            out.extend_from_slice(host.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        if let Some(trace) = &self.trace {
            trace.write(out);
        }
    }
}

/// Rewrites a client request's head for an endpoint: origin-form URI,
/// HTTP/1.1, hop-by-hop headers gone, the host the request was routed by
/// in `Host` (an HTTP/2 client sends no `Host`, and an absolute-form
/// target overrides it, RFC 9112 §3.2.2). The `X-Forwarded-*` fields the
/// client sent leave the map: what the endpoint gets instead is returned,
/// for the encoder to write — the client appended to the
/// `X-Forwarded-For` chain, `X-Forwarded-Proto` saying whether it came
/// over TLS, `X-Forwarded-Host` the routed host. An upgrade request
/// (WebSocket) keeps its `Upgrade` and `Connection: upgrade`. With
/// `trace` (tracing on), the client's `traceparent` is replaced by the
/// proxy's, and its `tracestate` kept only when that trace goes on.
pub fn request(
    parts: &mut Parts,
    client: IpAddr,
    original_host: Option<RoutedHost>,
    https: bool,
    trace: Option<Propagated>,
) -> Forwarded {
    let path_and_query = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    // Origin-form: the connection already goes to the endpoint, and
    // `Host` names what the client asked for.
    parts.uri = Uri::from(path_and_query);
    let upgrade = crate::proxy::upgrade::requested(parts.version, &parts.headers);
    parts.version = Version::HTTP_11;
    let headers = &mut parts.headers;
    let forwarded_by_client = hop_by_hop::strip_noting_forwarded(headers);
    if let Some(protocol) = upgrade {
        crate::proxy::upgrade::keep(headers, protocol);
    }
    let mut prior = None;
    if forwarded_by_client {
        if let header::Entry::Occupied(entry) = headers.entry(X_FORWARDED_FOR) {
            let mut chain = Vec::new();
            for value in entry.remove_entry_mult().1 {
                if let Ok(value) = value.to_str() {
                    if !chain.is_empty() {
                        chain.extend_from_slice(b", ");
                    }
                    chain.extend_from_slice(value.trim().as_bytes());
                }
            }
            prior = Some(chain).filter(|c| !c.is_empty());
        }
        headers.remove(X_FORWARDED_PROTO);
        headers.remove(X_FORWARDED_HOST);
    }
    if let Some(host) = &original_host
        && !host.in_host_header
    {
        headers.insert(header::HOST, host.value.clone());
    }
    if let Some(trace) = &trace {
        headers.remove(TRACEPARENT);
        if !trace.keeps_state {
            headers.remove(TRACESTATE);
        }
    }
    Forwarded {
        prior,
        client,
        https,
        host: original_host.map(|h| h.value),
        trace,
    }
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
    fn the_upstream_request_names_the_endpoint_and_keeps_the_host() {
        let (mut parts, ()) = http::Request::get("http://shop.example.com:8080/a/b?c=d")
            .version(Version::HTTP_2)
            .header("x-forwarded-for", "203.0.113.1")
            .header("x-forwarded-for", "198.51.100.2")
            .body(())
            .expect("request")
            .into_parts();
        let host = RoutedHost {
            value: HeaderValue::from_static("shop.example.com:8080"),
            in_host_header: false,
        };
        let forwarded = request(&mut parts, [192, 0, 2, 3].into(), Some(host), false, None);
        assert_eq!(parts.uri, "/a/b?c=d");
        assert_eq!(parts.version, Version::HTTP_11);
        let h = &parts.headers;
        assert_eq!(h["host"], "shop.example.com:8080");
        assert!(
            !h.contains_key("x-forwarded-for"),
            "the chain moves out of the map"
        );
        let mut out = Vec::new();
        forwarded.write(&mut out);
        assert_eq!(
            String::from_utf8_lossy(&out),
            "x-forwarded-for: 203.0.113.1, 198.51.100.2, 192.0.2.3\r\n\
             x-forwarded-proto: http\r\n\
             x-forwarded-host: shop.example.com:8080\r\n"
        );
    }

    #[test]
    fn a_trace_replaces_the_clients_traceparent_and_keeps_tracestate_only_if_it_goes_on() {
        use crate::trace::{Propagated, SpanId, TraceId};
        let client_parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let head = || {
            http::Request::get("/")
                .header("host", "shop.example.com")
                .header("traceparent", client_parent)
                .header("tracestate", "congo=t61rcWkgMzE")
                .body(())
                .expect("request")
                .into_parts()
                .0
        };
        let ours = |keeps_state| Propagated {
            trace_id: TraceId([0xab; 16]),
            span_id: SpanId([0x01; 8]),
            sampled: true,
            keeps_state,
        };
        let written = |forwarded: Forwarded| {
            let mut out = Vec::new();
            forwarded.write(&mut out);
            String::from_utf8(out).expect("ascii")
        };
        for keeps_state in [true, false] {
            let mut parts = head();
            let forwarded = request(
                &mut parts,
                [192, 0, 2, 3].into(),
                None,
                false,
                Some(ours(keeps_state)),
            );
            assert!(!parts.headers.contains_key("traceparent"));
            assert_eq!(parts.headers.contains_key("tracestate"), keeps_state);
            assert!(written(forwarded).ends_with(
                "traceparent: 00-abababababababababababababababab-0101010101010101-01\r\n"
            ));
        }
        // Tracing off: both pass through in the map, nothing is added.
        let mut parts = head();
        let forwarded = request(&mut parts, [192, 0, 2, 3].into(), None, false, None);
        assert_eq!(parts.headers["traceparent"], client_parent);
        assert_eq!(parts.headers["tracestate"], "congo=t61rcWkgMzE");
        assert!(!written(forwarded).contains("traceparent"));
    }

    #[test]
    fn forwarding_headers_from_the_client_are_replaced_not_repeated() {
        let (mut parts, ()) = http::Request::get("/")
            .header("host", "shop.example.com")
            .header("x-forwarded-proto", "https")
            .header("x-forwarded-host", "spoofed.example.com")
            .body(())
            .expect("request")
            .into_parts();
        let host = RoutedHost {
            value: HeaderValue::from_static("shop.example.com"),
            in_host_header: true,
        };
        let forwarded = request(&mut parts, [192, 0, 2, 3].into(), Some(host), false, None);
        assert_eq!(parts.headers.len(), 1, "{:?}", parts.headers);
        let mut out = Vec::new();
        forwarded.write(&mut out);
        assert_eq!(
            String::from_utf8_lossy(&out),
            "x-forwarded-for: 192.0.2.3\r\n\
             x-forwarded-proto: http\r\n\
             x-forwarded-host: shop.example.com\r\n"
        );
    }
}
