//! A response body that lets an observer see it go by: the length of each
//! data frame, and its end (the body's last frame, an error, or the body
//! dropped unfinished: the observer is dropped then). The access log
//! counts the bytes and writes its line at the end; a trace span ends there.
//! A leaf, so both wrap a response the same way.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Buf;
use http::Response;
use http_body::{Body, Frame, SizeHint};

/// What watches a response body; it is dropped when the body ends.
pub trait Observe {
    /// A data frame of `len` bytes went by.
    fn data(&mut self, _len: u64) {}
}

impl<T: Observe + ?Sized> Observe for Box<T> {
    fn data(&mut self, len: u64) {
        (**self).data(len);
    }
}

/// A response body and its observer, while there is one.
#[derive(Debug)]
pub struct Observed<B, O> {
    body: B,
    observer: Option<O>,
}

impl<B, O> Observed<B, O> {
    /// Wraps `resp`'s body; with `observer`, it sees the body go by.
    pub fn wrap(resp: Response<B>, observer: Option<O>) -> Response<Self> {
        resp.map(|body| Observed { body, observer })
    }
}

impl<B: Body + Unpin, O: Observe + Unpin> Body for Observed<B, O> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        if let Some(observer) = &mut this.observer {
            match &polled {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        observer.data(data.remaining() as u64);
                    }
                }
                Poll::Ready(_) => this.observer = None,
                Poll::Pending => {}
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
