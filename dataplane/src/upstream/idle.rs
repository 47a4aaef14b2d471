//! An endpoint's idle keep-alive connections: one list per worker thread
//! (a connection belongs to the I/O driver of the runtime that opened it,
//! see [`crate::worker`]), most recently used last, so the warmest is
//! reused and the others can time out. The endpoint holds one; the upstream
//! side alone puts connections in and takes them out.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::conn::EndpointConn;

/// The idle connections to one endpoint.
#[derive(Debug)]
pub struct Idle {
    /// Boxed connections: one moves as a pointer between its list, a
    /// request and a body.
    #[allow(clippy::vec_box)]
    lists: Box<[Mutex<Vec<Box<EndpointConn>>>]>,
}

impl Default for Idle {
    fn default() -> Self {
        Self {
            lists: (0..crate::worker::count())
                .map(|_| Mutex::new(Vec::new()))
                .collect(),
        }
    }
}

impl Idle {
    /// The calling worker's list.
    #[allow(clippy::vec_box)]
    fn mine(&self) -> MutexGuard<'_, Vec<Box<EndpointConn>>> {
        let list = &self.lists[crate::worker::current() % self.lists.len()];
        list.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps `conn`, whose exchange is over, for the calling worker's next
    /// request, when it can be kept.
    pub(super) fn release(&self, mut conn: Box<EndpointConn>) {
        if conn.go_idle() {
            self.mine().push(conn);
        }
    }

    /// The calling worker's most recently used connection that can take a
    /// request now; those idle for `max_idle` or more, and those the
    /// endpoint closed, are dropped on the way.
    pub(super) fn checkout(&self, max_idle: Duration) -> Option<Box<EndpointConn>> {
        let mut idle = self.mine();
        if idle.is_empty() {
            return None;
        }
        let now = Instant::now();
        while let Some(mut conn) = idle.pop() {
            if now.duration_since(conn.since) < max_idle && conn.alive() {
                return Some(conn);
            }
        }
        None
    }

    /// Closes, on every worker's list, the connections idle for `limit` or
    /// more at `now` and those the endpoint closed.
    pub fn sweep(&self, now: Instant, limit: Duration) {
        for list in &self.lists {
            let mut idle = list.lock().unwrap_or_else(|p| p.into_inner());
            idle.retain_mut(|c| now.duration_since(c.since) < limit && c.alive());
        }
    }

    /// Connections kept, on every worker's list.
    pub fn len(&self) -> usize {
        self.lists
            .iter()
            .map(|l| l.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }

    /// Whether no connection is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
