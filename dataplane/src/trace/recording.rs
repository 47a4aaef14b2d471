//! A recorded request's span on its way: held by the request while it is
//! under way, it takes the response head and goes to the export queue when
//! the response body ends (or the client goes away). Apart from [`span`]
//! (what a span holds) so that the span knows nothing of the queue.
//!
//! [`span`]: super::span

use std::net::SocketAddr;
use std::time::SystemTime;

use http::Response;

use super::export::Queue;
use super::span::Span;
use crate::observed::{Observe, Observed};
use crate::table::Table;

/// A recorded request's span while the request is under way; it ends,
/// and goes to the export queue, when this is dropped.
#[derive(Debug)]
pub struct Recording {
    span: Option<Box<Span>>,
    queue: Queue,
}

impl Recording {
    /// Records `span`, for `queue`.
    pub fn new(span: Span, queue: Queue) -> Self {
        Self {
            span: Some(Box::new(span)),
            queue,
        }
    }

    /// Records that the request came over TLS.
    pub fn set_https(&mut self, https: bool) {
        if let Some(span) = &mut self.span {
            span.https = https;
        }
    }

    /// Records the response head: its status, Sluice's reason when it
    /// answered itself, the endpoint that answered (if one did) and the
    /// pool `table` routes the request to.
    pub fn respond<B>(&mut self, resp: &Response<B>, endpoint: Option<SocketAddr>, table: &Table) {
        if let Some(span) = &mut self.span {
            span.respond(resp, endpoint, table);
        }
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        if let Some(mut span) = self.span.take() {
            span.end = SystemTime::now();
            self.queue.push(span);
        }
    }
}

/// A response body that ends its request's span when it ends.
pub type Traced<B> = Observed<B, Recording>;

/// Ends the span when dropped: the body's end.
impl Observe for Recording {}
