//! A client's request body as the front ends hand it to the proxy: none,
//! hyper's (HTTP/1.1 requests with a body), or an HTTP/2 stream's
//! ([`crate::http2::server`]).

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::HeaderMap;
use http::header::CONTENT_LENGTH;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::http1::common::parse_length;

/// A body's read error, whichever front end read it.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// A client's request body.
#[derive(Debug, Default)]
pub enum ClientBody {
    /// The request has no body.
    #[default]
    Empty,
    /// The body as hyper reads it (HTTP/1.1 requests with one).
    Hyper(Incoming),
    /// An HTTP/2 request's DATA frames and trailers.
    H2(H2Body),
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            Self::Empty => Poll::Ready(None),
            Self::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            Self::H2(b) => b.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Empty => true,
            Self::Hyper(b) => b.is_end_stream(),
            Self::H2(b) => b.recv.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Empty => SizeHint::with_exact(0),
            Self::Hyper(b) => b.size_hint(),
            Self::H2(b) => b.size_hint(),
        }
    }
}

/// An HTTP/2 request's body: its stream's DATA frames, each one's bytes
/// given back to the client's flow-control window as it is taken (as
/// hyper's does), then its trailers.
#[derive(Debug)]
pub struct H2Body {
    recv: h2::RecvStream,
    /// The DATA frames are over; trailers next.
    data_done: bool,
    /// Bytes still to come, when the request said how many.
    remaining: Option<u64>,
}

impl H2Body {
    /// The body of a request with `headers`, read from `recv`. (The `h2`
    /// crate holds the stream to its `Content-Length`: more or fewer bytes
    /// are a stream error, which reaches the reader as one.)
    pub fn new(recv: h2::RecvStream, headers: &HeaderMap) -> Self {
        let remaining = if recv.is_end_stream() {
            Some(0)
        } else {
            content_length(headers)
        };
        Self {
            recv,
            data_done: false,
            remaining,
        }
    }

    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if !self.data_done {
            match ready!(self.recv.poll_data(cx)) {
                Some(Ok(bytes)) => {
                    let _ = self.recv.flow_control().release_capacity(bytes.len());
                    if let Some(n) = self.remaining.as_mut() {
                        *n = n.saturating_sub(bytes.len() as u64);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(bytes))));
                }
                // RFC 9113 §8.1: a client's RST_STREAM with NO_ERROR after
                // the response began means "stop sending", not a failure.
                Some(Err(e)) if e.reason() == Some(h2::Reason::NO_ERROR) => {
                    return Poll::Ready(None);
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
                None => self.data_done = true,
            }
        }
        match ready!(self.recv.poll_trailers(cx)) {
            Ok(trailers) => Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t)))),
            Err(e) if e.reason() == Some(h2::Reason::NO_ERROR) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e.into()))),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

/// The request's `Content-Length`, when every value it gives is the same
/// number (each parsed as HTTP/1's are, [`parse_length`]).
fn content_length(headers: &HeaderMap) -> Option<u64> {
    let mut length = None;
    for value in headers.get_all(CONTENT_LENGTH) {
        let n = parse_length(value.as_bytes()).ok()?;
        if length.is_some_and(|l| l != n) {
            return None;
        }
        length = Some(n);
    }
    length
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_is_one_number_or_none() {
        let mut headers = HeaderMap::new();
        assert_eq!(content_length(&headers), None);
        headers.append(CONTENT_LENGTH, "12".parse().expect("value"));
        assert_eq!(content_length(&headers), Some(12));
        headers.append(CONTENT_LENGTH, "12".parse().expect("value"));
        assert_eq!(content_length(&headers), Some(12));
        headers.append(CONTENT_LENGTH, "13".parse().expect("value"));
        assert_eq!(content_length(&headers), None);
        let mut headers = HeaderMap::new();
        headers.append(CONTENT_LENGTH, "x".parse().expect("value"));
        assert_eq!(content_length(&headers), None);
    }
}
