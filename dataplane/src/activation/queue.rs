//! The requests one pool holds while it has no endpoint, and the turns
//! they take when released: a leaf of queues and channels that the pool's
//! state keeps, knowing nothing of tables or the proxy.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

/// The requests one pool holds, oldest first. Kept in the pool's
/// [`KeptPool`](crate::endpoint::KeptPool), so it survives the table
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
pub fn relay<F: Future>(fut: F, turn: Option<Turn>) -> Relay<F> {
    Relay { fut, turn }
}

pin_project_lite::pin_project! {
    /// [`relay`]'s future. A type rather than an `async fn`: an `async fn`
    /// keeps room for the future it is given twice (the argument and the
    /// pinned local), and this one wraps every forwarded request's
    /// attempts.
    pub struct Relay<F> {
        #[pin]
        fut: F,
        turn: Option<Turn>,
    }
}

impl<F: Future> Future for Relay<F> {
    type Output = F::Output;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        let this = self.project();
        let polled = this.fut.poll(cx);
        this.turn.take();
        polled
    }
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
