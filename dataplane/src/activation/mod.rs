//! Scale from zero: holding requests for a pool that has no endpoints yet.
//!
//! A pool whose route carries `activation` and lists no ready endpoint
//! (`Pool::endpoints` is empty; endpoints that are merely unhealthy or
//! ejected still take traffic in panic mode, so they never cause a hold)
//! does not answer 503 at once: the request waits in the pool's [`Queue`]
//! for a table that gives the pool endpoints, at most `maxPending` of them
//! per pool, each for at most `timeout` from its arrival. The first request
//! held in an empty queue wakes the reporter ([`Signals::demanded`]), so the
//! controller hears of the demand without waiting for the next tick.
//!
//! Release happens where tables are installed ([`release`]): every queue
//! whose pool no longer needs holding (it has endpoints, lost `activation`,
//! or left the table) hands its requests back, and each goes through the
//! proxy's normal path on the new table. They go one after another in
//! arrival order: a released request holds the [`Turn`] until it has picked
//! its endpoint and started its first attempt (dialed, or handed the request
//! to a pooled connection), then passes it to the next, so picks, circuit
//! breaker places and connection attempts follow arrival order while the
//! exchanges themselves overlap. (An endpoint may still see two neighbours
//! swapped when the second's connection is ready first.) A client that hangs
//! up drops its [`Waiter`], which takes its place out of the queue, or skips
//! its turn.
//! On shutdown the listeners stop and no table can arrive anymore, so the
//! held requests are answered at once ([`Signals::shut_down`]).
//!
//! Nothing here is on the path of a pool that has endpoints: the proxy only
//! looks at `activation` after its pick found no endpoint.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{Notify, oneshot, watch};
use tokio::time::Instant;

use crate::state::State;
use crate::table::{Pool, Table};

/// `x-sluice-error` of a request refused because `maxPending` requests are
/// already held for the pool.
pub const OVERFLOW_REASON: &str = "activation-overflow";
/// `x-sluice-error` of a held request whose pool got no endpoint within
/// the activation `timeout`.
pub const TIMEOUT_REASON: &str = "activation-timeout";
/// `x-sluice-error` of a held request answered because the dataplane is
/// shutting down.
pub const SHUTDOWN_REASON: &str = "activation-shutdown";

/// What the dataplane as a whole shares about held requests: the wake-up
/// of the reporter and the shutdown.
#[derive(Debug)]
pub struct Signals {
    demand: Notify,
    shutdown: watch::Sender<bool>,
}

impl Default for Signals {
    fn default() -> Self {
        Self {
            demand: Notify::new(),
            shutdown: watch::channel(false).0,
        }
    }
}

impl Signals {
    /// Resolves when a pool started holding requests since the last call
    /// (several starts in between resolve it once).
    pub async fn demanded(&self) {
        self.demand.notified().await;
    }

    /// Answers every held request, and every request that would be held
    /// from now on, with 503: no table will come to release them.
    pub fn shut_down(&self) {
        self.shutdown.send_replace(true);
    }
}

/// Why a request was not held or not released.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// `x-sluice-error`.
    pub reason: &'static str,
    /// The short body saying why.
    pub body: String,
}

/// The requests one pool holds, oldest first. Kept in the pool's
/// [`PoolState`](crate::endpoint::PoolState), so it survives the table
/// updates that bring the endpoints.
#[derive(Debug, Default)]
pub struct Queue {
    waiters: Mutex<Waiters>,
}

type Waiting = VecDeque<(u64, oneshot::Sender<Turn>)>;

#[derive(Debug, Default)]
struct Waiters {
    next_id: u64,
    list: Waiting,
}

/// The queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

impl Waiters {
    /// Adds a waiter at the back; `true` with it when the queue was empty.
    fn push(&mut self, max: u32) -> Result<(u64, oneshot::Receiver<Turn>, bool), Full> {
        if self.list.len() >= max as usize {
            return Err(Full);
        }
        let id = self.next_id;
        self.next_id += 1;
        let (tx, rx) = oneshot::channel();
        let first = self.list.is_empty();
        self.list.push_back((id, tx));
        Ok((id, rx, first))
    }

    /// Takes waiter `id` out, if it is still there.
    fn remove(&mut self, id: u64) {
        if let Some(i) = self.list.iter().position(|(w, _)| *w == id) {
            self.list.remove(i);
        }
    }
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, Waiters> {
        self.waiters.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Requests held now.
    pub fn len(&self) -> usize {
        self.lock().list.len()
    }

    /// Whether no request is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes a place at the back of the queue, unless `max` are held; the
    /// `bool` says whether the queue was empty (the pool's demand is new).
    pub fn hold(self: &Arc<Self>, max: u32) -> Result<(Waiter, bool), Full> {
        let (id, rx, first) = self.lock().push(max)?;
        let waiter = Waiter {
            queue: Arc::clone(self),
            id,
            rx,
        };
        Ok((waiter, first))
    }

    /// Empties the queue and gives the oldest request its [`Turn`]; the
    /// others follow in order. Returns how many were held.
    pub fn release(&self) -> usize {
        let released = std::mem::take(&mut self.lock().list);
        let n = released.len();
        pass(released);
        n
    }
}

/// A released request's turn to start: while it lives, the requests
/// released after it wait; dropping it wakes the next.
#[derive(Debug)]
pub struct Turn {
    rest: Waiting,
}

impl Drop for Turn {
    fn drop(&mut self) {
        pass(std::mem::take(&mut self.rest));
    }
}

/// Gives the turn to the first of `rest` still waiting (one that went
/// away is skipped).
fn pass(mut rest: Waiting) {
    while let Some((_, tx)) = rest.pop_front() {
        match tx.send(Turn { rest }) {
            Ok(()) => return,
            Err(mut turn) => rest = std::mem::take(&mut turn.rest),
        }
    }
}

/// Runs `fut`, passing `turn` on once `fut` was first polled: a released
/// request's first attempt has then started. `None` (every request that was
/// never held) costs a branch per poll.
pub async fn relay<F: Future>(fut: F, turn: Option<Turn>) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    let mut turn = turn;
    std::future::poll_fn(move |cx| {
        let polled = fut.as_mut().poll(cx);
        turn.take();
        polled
    })
    .await
}

/// One held request's place in its pool's queue; dropping it (the client
/// went away, or the request was answered) frees the place.
#[derive(Debug)]
pub struct Waiter {
    queue: Arc<Queue>,
    id: u64,
    rx: oneshot::Receiver<Turn>,
}

impl Drop for Waiter {
    fn drop(&mut self) {
        self.queue.lock().remove(self.id);
    }
}

/// How a wait ended.
#[derive(Debug)]
pub enum Woken {
    /// The queue was released and it is this request's turn: the pool may
    /// have endpoints now.
    Released(Turn),
    /// The deadline passed first.
    TimedOut,
    /// The dataplane is shutting down.
    ShutDown,
}

impl Waiter {
    /// Waits for the release, the deadline or the shutdown, whichever
    /// comes first.
    pub async fn wait(&mut self, deadline: Instant, shutdown: &mut watch::Receiver<bool>) -> Woken {
        tokio::select! {
            biased;
            // The sender is only dropped unsent by a release that found
            // this waiter gone, which cannot be while it waits.
            turn = &mut self.rx => match turn {
                Ok(turn) => Woken::Released(turn),
                Err(_) => Woken::Released(Turn { rest: Waiting::new() }),
            },
            _ = shutdown.wait_for(|s| *s) => Woken::ShutDown,
            _ = tokio::time::sleep_until(deadline) => Woken::TimedOut,
        }
    }
}

/// Whether a request for pool `name` must be held on `table`: the pool is
/// there, has `activation`, and no ready endpoint.
pub fn must_hold(table: &Table, name: &str) -> bool {
    table.pool(name).is_some_and(holds)
}

/// Whether `pool` holds its requests rather than answering 503 at once.
pub fn holds(pool: &Arc<Pool>) -> bool {
    pool.route.activation.is_some() && pool.endpoints.is_empty()
}

/// Holds a request for `pool` (which [`holds`]) until a table gives it
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
        state.activation.demand.notify_one();
    }
    // A table installed between routing and queueing released nobody:
    // look again now that the place is taken.
    let table = state.table.load_full();
    if !must_hold(&table, name) {
        return Ok((table, None));
    }
    let mut shutdown = state.activation.shutdown.subscribe();
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

/// Releases, after `table` replaced `previous`, the queues of the pools
/// that no longer hold requests on `table`. Only a pool that had
/// `activation` on `previous` can have a queue: one held under an older
/// table was released when that table was replaced.
pub fn release(previous: &Table, table: &Table) {
    let had_activation = previous
        .pools()
        .iter()
        .filter(|p| p.route.activation.is_some());
    for pool in had_activation {
        if !must_hold(table, &pool.route.name) {
            let n = pool.state.held.release();
            if n > 0 {
                tracing::debug!(pool = %pool.route.name, released = n, "held requests released");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn never() -> watch::Sender<bool> {
        watch::channel(false).0
    }

    #[tokio::test]
    async fn a_full_queue_refuses_and_a_dropped_waiter_frees_its_place() {
        let queue = Arc::new(Queue::default());
        let (a, first) = queue.hold(2).expect("room");
        assert!(first, "the first waiter is new demand");
        let (_b, first) = queue.hold(2).expect("room");
        assert!(!first);
        assert_eq!(queue.hold(2).err(), Some(Full));
        assert_eq!(queue.len(), 2);
        drop(a);
        assert_eq!(queue.len(), 1);
        assert!(queue.hold(2).is_ok(), "the dropped waiter's place is free");
        assert_eq!(
            queue.hold(0).err(),
            Some(Full),
            "maxPending 0 holds nothing"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn released_waiters_take_their_turns_in_arrival_order() {
        let queue = Arc::new(Queue::default());
        let mut waiters: Vec<Waiter> = (0..8).map(|_| queue.hold(10).expect("room").0).collect();
        // One went away before the release, one goes away after it.
        drop(waiters.remove(2));
        let leaving = waiters.remove(4);
        let order = Arc::new(Mutex::new(Vec::new()));
        let shutdown = never();
        let mut tasks = Vec::new();
        for (i, mut w) in waiters.into_iter().enumerate() {
            let (order, mut rx) = (Arc::clone(&order), shutdown.subscribe());
            tasks.push(tokio::spawn(async move {
                let deadline = Instant::now() + Duration::from_secs(10);
                let woken = w.wait(deadline, &mut rx).await;
                order.lock().expect("lock").push(i);
                tokio::task::yield_now().await;
                matches!(woken, Woken::Released(_))
            }));
        }
        assert_eq!(queue.release(), 7);
        assert!(queue.is_empty());
        drop(leaving);
        for t in tasks {
            assert!(t.await.expect("task"), "released");
        }
        assert_eq!(*order.lock().expect("lock"), vec![0, 1, 2, 3, 4, 5]);
        assert_eq!(queue.release(), 0);
    }

    #[tokio::test]
    async fn a_wait_ends_at_the_deadline_or_at_shutdown() {
        let queue = Arc::new(Queue::default());
        let shutdown = never();
        let (mut w, _) = queue.hold(10).expect("room");
        let deadline = Instant::now() + Duration::from_millis(50);
        let woken = w.wait(deadline, &mut shutdown.subscribe()).await;
        assert!(matches!(woken, Woken::TimedOut), "{woken:?}");
        assert!(Instant::now() >= deadline);
        drop(w);
        assert!(queue.is_empty());

        let (mut w, _) = queue.hold(10).expect("room");
        shutdown.send_replace(true);
        let later = Instant::now() + Duration::from_secs(30);
        let woken = w.wait(later, &mut shutdown.subscribe()).await;
        assert!(matches!(woken, Woken::ShutDown), "{woken:?}");
    }
}
