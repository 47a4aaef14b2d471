//! The host a request names, as the routing table and the TLS sites match
//! it. A leaf: the TLS side and the logs use it without the table.

use std::borrow::Cow;

/// A Host header or `:authority` as the table matches it: port stripped,
/// lower-cased, trailing dot dropped. Borrows when nothing changes.
pub fn normalize_host(raw: &str) -> Cow<'_, str> {
    let host = match raw.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(v6),
        // A `:port` of digits at the end goes: one pass from the end (it
        // runs on every request; `rsplit_once` and a second pass over the
        // port cost about twice the instructions).
        None => match port_colon(raw.as_bytes()) {
            Some(colon) => &raw[..colon],
            None => raw,
        },
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

/// Where the `:` of a trailing `:port` (digits, perhaps none) is in an
/// authority that is not an IP literal; `None` when it ends otherwise.
/// One pass from the end, over the port's digits only.
pub fn port_colon(authority: &[u8]) -> Option<usize> {
    let digits = authority
        .iter()
        .rev()
        .take_while(|b| b.is_ascii_digit())
        .count();
    let colon = authority.len().checked_sub(digits + 1)?;
    (authority[colon] == b':').then_some(colon)
}
