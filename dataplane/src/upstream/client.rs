//! One pool's client settings: connect and idle timeouts and the circuit
//! breaker its connections count in, kept in the pool's state while the
//! timeouts stay the same. How an attempt is sent with them is
//! [`super`]'s.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_protocol::policy::Timeouts;

use crate::policy::breaker::Breaker;

/// One pool's connection settings and circuit breaker.
#[derive(Debug)]
pub struct Upstream {
    pub(super) breaker: Arc<Breaker>,
    pub(super) connect: Duration,
    pub(super) idle: Duration,
}

impl Upstream {
    /// A pool's upstream with its timeouts, counting into `breaker`.
    pub fn new(timeouts: &Timeouts, breaker: Arc<Breaker>) -> Self {
        Self {
            breaker,
            connect: timeouts.connect.get(),
            idle: timeouts.idle.get(),
        }
    }

    /// The upstream for a pool being built: the kept one when the connect
    /// and idle timeouts are unchanged. (Idle connections belong to the
    /// endpoints, so they survive either way.)
    pub fn kept(
        slot: &Mutex<Option<Arc<Upstream>>>,
        timeouts: &Timeouts,
        breaker: &Arc<Breaker>,
    ) -> Arc<Upstream> {
        let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(u) = slot.as_ref()
            && u.connect == timeouts.connect.get()
            && u.idle == timeouts.idle.get()
        {
            return Arc::clone(u);
        }
        let u = Arc::new(Upstream::new(timeouts, Arc::clone(breaker)));
        *slot = Some(Arc::clone(&u));
        u
    }

    /// Longest silence allowed on a response body, and on an idle
    /// connection.
    pub fn idle(&self) -> Duration {
        self.idle
    }
}
