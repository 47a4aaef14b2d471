//! W3C Trace Context (`traceparent`, version 00) as plain data: parsing
//! what a client sent, writing what the endpoint gets. No allocation: the
//! ids are byte arrays and the header is written into the head being
//! encoded.
//!
//! Parsing follows the specification's rules for a receiver: version 00
//! has exactly 55 characters; a later version (not `ff`) is read by its
//! first 55 characters when the 56th, if any, is `-`; hex digits are
//! lowercase; neither id may be all zeros. Anything else is no parent at
//! all (a new trace starts), never an error for the client.

use http::header::{HeaderMap, HeaderName};

/// The `traceparent` header.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// The `tracestate` header.
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// Length of a version-00 `traceparent` value.
const LEN: usize = 55;
/// The `sampled` bit of the trace flags.
const SAMPLED: u8 = 0x01;

/// A 16-byte trace id, never all zeros.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TraceId(pub [u8; 16]);

/// An 8-byte span id, never all zeros.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SpanId(pub [u8; 8]);

impl TraceId {
    /// A random id (not all zeros).
    pub fn random() -> Self {
        loop {
            let id = fastrand::u128(..).to_be_bytes();
            if id != [0; 16] {
                return Self(id);
            }
        }
    }

    /// Lowercase hex, as the header and the access log write it.
    pub fn hex(&self) -> [u8; 32] {
        let mut out = [0; 32];
        hex_into(&self.0, &mut out);
        out
    }
}

impl SpanId {
    /// A random id (not all zeros).
    pub fn random() -> Self {
        loop {
            let id = fastrand::u64(..).to_be_bytes();
            if id != [0; 8] {
                return Self(id);
            }
        }
    }
}

impl std::fmt::Display for TraceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hex = self.hex();
        // Hex digits are ASCII.
        f.write_str(std::str::from_utf8(&hex).map_err(|_| std::fmt::Error)?)
    }
}

/// What a valid `traceparent` says: the trace, the caller's span, whether
/// the caller records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parent {
    /// The trace the request belongs to.
    pub trace_id: TraceId,
    /// The caller's span: the parent of the proxy's.
    pub span_id: SpanId,
    /// The caller's `sampled` flag.
    pub sampled: bool,
}

impl Parent {
    /// The request's parent, if it carries exactly one valid `traceparent`
    /// (several are as good as an invalid one, per the specification).
    pub fn from_headers(headers: &HeaderMap) -> Option<Self> {
        let mut values = headers.get_all(TRACEPARENT).iter();
        let value = values.next()?;
        if values.next().is_some() {
            return None;
        }
        Self::parse(value.as_bytes())
    }

    /// Parses one `traceparent` value.
    pub fn parse(value: &[u8]) -> Option<Self> {
        let value = trim(value);
        if value.len() < LEN || (value.len() > LEN && value[LEN] != b'-') {
            return None;
        }
        let version = hex_byte(&value[0..2])?;
        if version == 0xff || (version == 0 && value.len() != LEN) {
            return None;
        }
        if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
            return None;
        }
        let mut trace_id = [0; 16];
        for (i, byte) in trace_id.iter_mut().enumerate() {
            *byte = hex_byte(&value[3 + 2 * i..5 + 2 * i])?;
        }
        let mut span_id = [0; 8];
        for (i, byte) in span_id.iter_mut().enumerate() {
            *byte = hex_byte(&value[36 + 2 * i..38 + 2 * i])?;
        }
        let flags = hex_byte(&value[53..55])?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(Self {
            trace_id: TraceId(trace_id),
            span_id: SpanId(span_id),
            sampled: flags & SAMPLED != 0,
        })
    }
}

/// The `traceparent` the endpoint gets: the request's trace, the proxy's
/// own span as the parent, the sampling decision. Only the `sampled` flag
/// is passed on: it is the only one version 00 defines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Propagated {
    /// The trace.
    pub trace_id: TraceId,
    /// The proxy's span.
    pub span_id: SpanId,
    /// Whether the trace is recorded.
    pub sampled: bool,
    /// Whether the client's `tracestate` goes on with it: only when its
    /// `traceparent` was valid (a new trace has no state yet).
    pub keeps_state: bool,
}

impl Propagated {
    /// Appends the `traceparent` line to a head being written.
    pub fn write(&self, out: &mut Vec<u8>) {
        let mut line = *b"traceparent: 00-00000000000000000000000000000000-0000000000000000-00\r\n";
        hex_into(&self.trace_id.0, &mut line[16..48]);
        hex_into(&self.span_id.0, &mut line[49..65]);
        if self.sampled {
            line[67] = b'1';
        }
        out.extend_from_slice(&line);
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn hex_into(bytes: &[u8], out: &mut [u8]) {
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = HEX[usize::from(b >> 4)];
        out[2 * i + 1] = HEX[usize::from(b & 0x0f)];
    }
}

/// Two lowercase hex digits.
fn hex_byte(pair: &[u8]) -> Option<u8> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    Some(digit(pair[0])? << 4 | digit(pair[1])?)
}

/// Optional whitespace around a header value (RFC 9110 §5.5).
fn trim(value: &[u8]) -> &[u8] {
    let start = value.iter().position(|c| !matches!(c, b' ' | b'\t'));
    let end = value.iter().rposition(|c| !matches!(c, b' ' | b'\t'));
    match (start, end) {
        (Some(s), Some(e)) => &value[s..=e],
        _ => &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn the_specification_example_parses() {
        let parent = Parent::parse(VALID.as_bytes()).expect("valid");
        assert_eq!(
            parent.trace_id.to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(
            parent.span_id.0,
            [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]
        );
        assert!(parent.sampled);
        let unsampled = VALID.replace("-01", "-00");
        assert!(!Parent::parse(unsampled.as_bytes()).expect("valid").sampled);
        let padded = format!(" {VALID}\t");
        assert_eq!(Parent::parse(padded.as_bytes()), Some(parent));
    }

    #[test]
    fn invalid_values_are_no_parent() {
        let cases = [
            "",
            "00",
            // All-zero ids.
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            // Uppercase hex.
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            // Version ff, and a non-hex version.
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            // Version 00 with more after it.
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xyz",
            // Wrong separators and lengths.
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
        ];
        for case in cases {
            assert_eq!(Parent::parse(case.as_bytes()), None, "{case:?}");
        }
    }

    #[test]
    fn a_later_version_is_read_by_its_version_00_fields() {
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future";
        let parent = Parent::parse(later.as_bytes()).expect("later version");
        assert_eq!(Some(parent), Parent::parse(VALID.as_bytes()));
        let glued = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x";
        assert_eq!(Parent::parse(glued.as_bytes()), None);
    }

    #[test]
    fn two_traceparent_headers_are_no_parent() {
        let mut headers = HeaderMap::new();
        headers.append(TRACEPARENT, VALID.parse().expect("value"));
        assert!(Parent::from_headers(&headers).is_some());
        headers.append(TRACEPARENT, VALID.parse().expect("value"));
        assert_eq!(Parent::from_headers(&headers), None);
    }

    #[test]
    fn the_written_header_parses_back() {
        proptest::proptest!(|(trace: [u8; 16], span: [u8; 8], sampled: bool)| {
            proptest::prop_assume!(trace != [0; 16] && span != [0; 8]);
            let outgoing = Propagated {
                trace_id: TraceId(trace),
                span_id: SpanId(span),
                sampled,
                keeps_state: true,
            };
            let mut out = Vec::new();
            outgoing.write(&mut out);
            let line = String::from_utf8(out).expect("ascii");
            let value = line
                .strip_prefix("traceparent: ")
                .and_then(|l| l.strip_suffix("\r\n"))
                .expect("one header line");
            let parent = Parent::parse(value.as_bytes()).expect("parses back");
            proptest::prop_assert_eq!(parent.trace_id, outgoing.trace_id);
            proptest::prop_assert_eq!(parent.span_id, outgoing.span_id);
            proptest::prop_assert_eq!(parent.sampled, sampled);
        });
    }
}
