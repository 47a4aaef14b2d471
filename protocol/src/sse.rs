//! Server-Sent Events framing (the subset the route stream uses), both ways.
//!
//! Written here rather than taken from a crate: the SSE crates on crates.io are
//! either tied to one HTTP client (reqwest, eventsource) or to a web framework;
//! the framing is a few lines, and both sides need the same bounded parser.

/// The keepalive comment, sent every 10 s on an idle stream.
pub const KEEPALIVE: &str = ": keepalive\n\n";

/// Largest event the decoder accepts before it calls the stream broken.
pub const MAX_EVENT_BYTES: usize = 256 * 1024 * 1024;

/// Frames one event. `data` must not contain newlines (our JSON never does).
pub fn encode(event: &str, id: u64, data: &str) -> String {
    format!("id: {id}\nevent: {event}\ndata: {data}\n\n")
}

/// One decoded event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Message {
    /// `event:` field; `message` when absent, as the SSE spec says.
    pub event: String,
    /// `id:` field, if any.
    pub id: Option<String>,
    /// `data:` lines joined by `\n`.
    pub data: String,
}

/// Why the stream could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// An event grew past [`MAX_EVENT_BYTES`].
    #[error("event larger than {MAX_EVENT_BYTES} bytes")]
    TooLarge,
    /// Not UTF-8.
    #[error("stream is not UTF-8")]
    NotUtf8,
}

/// An incremental decoder: feed it chunks as they arrive, take messages out.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
    current: Message,
    has_data: bool,
}

impl Decoder {
    /// A decoder with nothing buffered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds a chunk; returns the messages it completed.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<Message>, DecodeError> {
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        let mut start = 0;
        while let Some(nl) = self.buf[start..].iter().position(|b| *b == b'\n') {
            let end = start + nl;
            let line = &self.buf[start..end];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let line = std::str::from_utf8(line).map_err(|_| DecodeError::NotUtf8)?;
            if line.is_empty() {
                if self.has_data {
                    let mut msg = std::mem::take(&mut self.current);
                    if msg.event.is_empty() {
                        msg.event = "message".to_string();
                    }
                    out.push(msg);
                } else {
                    self.current = Message::default();
                }
                self.has_data = false;
            } else if !line.starts_with(':') {
                let (field, value) = match line.split_once(':') {
                    Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                    None => (line, ""),
                };
                match field {
                    "event" => self.current.event = value.to_string(),
                    "id" => self.current.id = Some(value.to_string()),
                    "data" => {
                        if self.has_data {
                            self.current.data.push('\n');
                        }
                        self.current.data.push_str(value);
                        self.has_data = true;
                    }
                    _ => {}
                }
            }
            start = end + 1;
        }
        self.buf.drain(..start);
        if self.buf.len() + self.current.data.len() > MAX_EVENT_BYTES {
            return Err(DecodeError::TooLarge);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn decodes_events_and_skips_comments() {
        let mut d = Decoder::new();
        let mut stream = encode("snapshot", 4, r#"{"version":4}"#);
        stream.push_str(KEEPALIVE);
        stream.push_str(&encode("delta", 5, "x"));
        let msgs = d.push(stream.as_bytes()).unwrap();
        assert_eq!(msgs.len(), 2);
        assert_eq!(msgs[0].event, "snapshot");
        assert_eq!(msgs[0].id.as_deref(), Some("4"));
        assert_eq!(msgs[0].data, r#"{"version":4}"#);
        assert_eq!(msgs[1].event, "delta");
    }

    #[test]
    fn handles_crlf_and_multiline_data() {
        let mut d = Decoder::new();
        let msgs = d.push(b"event: e\r\ndata: a\r\ndata: b\r\n\r\n").unwrap();
        assert_eq!(
            msgs,
            vec![Message {
                event: "e".into(),
                id: None,
                data: "a\nb".into()
            }]
        );
    }

    proptest! {
        #[test]
        fn any_chunking_yields_the_same_messages(cuts in prop::collection::vec(0usize..200, 0..10)) {
            let mut stream = String::new();
            for i in 0..5u64 {
                stream.push_str(&encode("delta", i, &format!("{{\"n\":{i}}}")));
                stream.push_str(KEEPALIVE);
            }
            let bytes = stream.as_bytes();
            let mut points: Vec<usize> = cuts.into_iter().map(|c| c % bytes.len()).collect();
            points.sort_unstable();
            let mut d = Decoder::new();
            let mut got = Vec::new();
            let mut last = 0;
            for p in points.into_iter().chain([bytes.len()]) {
                got.extend(d.push(&bytes[last..p]).unwrap());
                last = p;
            }
            prop_assert_eq!(got.len(), 5);
            for (i, m) in got.iter().enumerate() {
                prop_assert_eq!(&m.data, &format!("{{\"n\":{i}}}"));
            }
        }
    }
}
