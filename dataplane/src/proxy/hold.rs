//! The request path's wait for a pool's first endpoint (see
//! [`crate::activation`] for when a request is held and how it is
//! released).

use std::sync::Arc;

use tokio::time::Instant;

use crate::activation::queue::{Full, Turn, Woken};
use crate::activation::{OVERFLOW_REASON, Refused, SHUTDOWN_REASON, TIMEOUT_REASON};
use crate::state::State;
use crate::table::{Pool, Table};

/// Holds a request for `pool` (which [`Pool::holds_requests`]) until a table gives it
/// endpoints or takes it away, at most the activation timeout from its
/// arrival. `Ok`: the table to serve it on, with its turn when it was
/// released with others; `Err`: the 503.
pub async fn hold(
    state: &State,
    pool: &Pool,
    arrived: Instant,
) -> Result<(Arc<Table>, Option<Turn>), Refused> {
    let name = &pool.route.name;
    let Some(activation) = &pool.route.activation else {
        return Ok((state.table.load_full(), None));
    };
    let max = activation.max_pending;
    let timeout = activation.timeout;
    let deadline = arrived + timeout.get();
    let (mut waiter, first) = pool.state.held.hold(max).map_err(|Full| Refused {
        reason: OVERFLOW_REASON,
        body: format!(
            "pool {name:?} has no ready endpoints and already holds {max} requests (activation maxPending)\n"
        ),
    })?;
    if first {
        state.activation.demand();
    }
    // A table installed between routing and queueing released nobody:
    // look again now that the place is taken.
    let table = state.table.load_full();
    if !table.holds_requests(name) {
        return Ok((table, None));
    }
    let mut shutdown = state.activation.on_shutdown();
    match waiter.wait(deadline, &mut shutdown).await {
        Woken::Released(turn) => Ok((state.table.load_full(), Some(turn))),
        Woken::TimedOut => Err(Refused {
            reason: TIMEOUT_REASON,
            body: format!(
                "pool {name:?} had no ready endpoints within the activation timeout {timeout}\n"
            ),
        }),
        Woken::ShutDown => Err(Refused {
            reason: SHUTDOWN_REASON,
            body: format!(
                "pool {name:?} has no ready endpoints and the dataplane is shutting down\n"
            ),
        }),
    }
}
