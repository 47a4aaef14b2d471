//! The host a request names, as the routing table and the TLS sites match
//! it. A leaf: the TLS side and the logs use it without the table.

use std::borrow::Cow;

/// A Host header or `:authority` as the table matches it: port stripped,
/// lower-cased, trailing dot dropped. Borrows when nothing changes.
pub fn normalize_host(raw: &str) -> Cow<'_, str> {
    let host = match raw.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(v6),
        None => match raw.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => raw,
        },
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}
