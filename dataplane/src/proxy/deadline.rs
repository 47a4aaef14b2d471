//! Request limits kept per worker thread and swept by one timer.
//!
//! What was missing: `tokio::time::timeout` puts an entry into tokio's
//! timer wheel on its first poll (the time driver's lock, the wheel's
//! levels) and takes it out again when dropped: about 600 instructions a
//! request (callgrind, 2026-12-07; 3 % of a small proxied request), though
//! nearly every request is answered long before its limit. Here a request
//! writes its deadline and waker into a slot of its thread's table (a lock
//! that no other thread takes while the request stays on its worker) and
//! frees the slot when it ends. One task per thread sleeps until the
//! earliest deadline it knows of (a request with an earlier one wakes it to
//! sleep less), then wakes every request whose deadline passed and looks
//! for the next. A request is woken at its deadline or just after (the
//! sweeper's tokio sleep, as a `timeout` would), never before.
//!
//! With one limit for all (a pool's request timeout), the sweeper wakes
//! about once per limit: when the deadline it slept for comes, that
//! request is long answered, and the earliest deadline in the table is a
//! limit away.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// The limit passed before the future finished.
#[derive(Debug, PartialEq, Eq)]
pub struct Elapsed;

pin_project_lite::pin_project! {
    /// `inner`, or [`Elapsed`] once `limit` has passed since its first
    /// poll that did not finish it.
    pub struct Within<F> {
        #[pin]
        inner: F,
        limit: Duration,
        entry: Option<Entry>,
    }

    impl<F> PinnedDrop for Within<F> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(entry) = this.project().entry.take() {
                entry.release();
            }
        }
    }
}

/// `inner`, limited to `limit` (from its first poll that is pending).
pub fn within<F: Future>(limit: Duration, inner: F) -> Within<F> {
    Within {
        inner,
        limit,
        entry: None,
    }
}

impl<F: Future> Future for Within<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(out) = this.inner.poll(cx) {
            return Poll::Ready(Ok(out));
        }
        match this.entry {
            Some(entry) => {
                if entry.passed(cx.waker()) {
                    return Poll::Ready(Err(Elapsed));
                }
            }
            // No deadline (a limit beyond the clock's range, or no runtime
            // to sweep): the future runs unlimited.
            None => *this.entry = Entry::register(*this.limit, cx.waker()),
        }
        Poll::Pending
    }
}

/// A thread's deadlines.
#[derive(Default)]
struct Deadlines {
    table: Mutex<Table>,
    /// A deadline earlier than the sweeper's next wake came.
    earlier: Notify,
}

#[derive(Default)]
struct Table {
    slots: Vec<Slot>,
    free: Vec<usize>,
    /// When the sweeper looks next (`None`: when told).
    next_wake: Option<Instant>,
    /// Whether a sweeper task runs for this table.
    sweeping: bool,
}

struct Slot {
    deadline: Instant,
    /// `None`: the slot is free.
    waker: Option<Waker>,
    passed: bool,
}

thread_local! {
    static DEADLINES: Arc<Deadlines> = Arc::default();
}

/// Slots a table keeps when nothing is in flight (more, after a burst, are
/// freed with the burst's last request).
const ROOM_KEPT: usize = 1024;

impl Deadlines {
    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A request's slot in its thread's table.
struct Entry {
    deadlines: Arc<Deadlines>,
    index: usize,
}

impl Entry {
    fn register(limit: Duration, waker: &Waker) -> Option<Entry> {
        let deadline = Instant::now().checked_add(limit)?;
        let deadlines = DEADLINES.try_with(Arc::clone).ok()?;
        let slot = Slot {
            deadline,
            waker: Some(waker.clone()),
            passed: false,
        };
        let (index, earlier, start) = {
            let mut table = deadlines.lock();
            let index = match table.free.pop() {
                Some(index) => {
                    table.slots[index] = slot;
                    index
                }
                None => {
                    table.slots.push(slot);
                    table.slots.len() - 1
                }
            };
            let earlier = table.next_wake.is_none_or(|wake| deadline < wake);
            if earlier {
                table.next_wake = Some(deadline);
            }
            let start = !table.sweeping;
            table.sweeping = true;
            (index, earlier, start)
        };
        let entry = Entry { deadlines, index };
        if start {
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => drop(runtime.spawn(sweep(Arc::clone(&entry.deadlines)))),
                Err(_) => {
                    entry.deadlines.lock().sweeping = false;
                    entry.release();
                    return None;
                }
            }
        } else if earlier {
            entry.deadlines.earlier.notify_one();
        }
        Some(entry)
    }

    /// Whether the deadline passed; keeps `waker` to be woken otherwise.
    fn passed(&self, waker: &Waker) -> bool {
        let mut table = self.deadlines.lock();
        let slot = &mut table.slots[self.index];
        if slot.passed {
            return true;
        }
        let old = match &slot.waker {
            Some(kept) if kept.will_wake(waker) => None,
            _ => slot.waker.replace(waker.clone()),
        };
        drop(table);
        // Dropped unlocked: a waker's drop may drop a task, and with it a
        // future holding another entry of this table.
        drop(old);
        false
    }

    fn release(self) {
        let waker = {
            let mut table = self.deadlines.lock();
            let waker = table.slots[self.index].waker.take();
            table.free.push(self.index);
            // The last request of a burst out: the table's room goes too.
            if table.free.len() == table.slots.len() && table.slots.capacity() > ROOM_KEPT {
                table.slots = Vec::new();
                table.free = Vec::new();
            }
            waker
        };
        drop(waker);
    }
}

/// Marks the table unswept when its sweeper ends (its runtime shut down):
/// the next request starts another.
struct Sweeping(Arc<Deadlines>);

impl Drop for Sweeping {
    fn drop(&mut self) {
        self.0.lock().sweeping = false;
    }
}

/// The sweeper: sleeps until the next deadline, wakes the requests whose
/// deadline passed, and again.
async fn sweep(deadlines: Arc<Deadlines>) {
    let deadlines = Sweeping(deadlines);
    let deadlines = &deadlines.0;
    let sleep = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(sleep);
    let mut due = Vec::new();
    loop {
        let next_wake = deadlines.lock().next_wake;
        match next_wake {
            None => {
                deadlines.earlier.notified().await;
                continue;
            }
            Some(at) if at > Instant::now() => {
                sleep.as_mut().reset(at);
                tokio::select! {
                    () = &mut sleep => {}
                    () = deadlines.earlier.notified() => continue,
                }
            }
            Some(_) => {}
        }
        let now = Instant::now();
        {
            let mut table = deadlines.lock();
            let mut next = None;
            for slot in &mut table.slots {
                let Some(waker) = &slot.waker else { continue };
                if slot.passed {
                    continue;
                }
                if slot.deadline <= now {
                    slot.passed = true;
                    due.push(waker.clone());
                } else if next.is_none_or(|n| slot.deadline < n) {
                    next = Some(slot.deadline);
                }
            }
            table.next_wake = next;
        }
        for waker in due.drain(..) {
            waker.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Slots in use on this thread.
    fn in_use() -> usize {
        DEADLINES.with(|d| {
            let table = d.lock();
            table.slots.len() - table.free.len()
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_future_that_does_not_finish_is_cut_at_its_limit() {
        let start = Instant::now();
        let out = within(Duration::from_secs(5), std::future::pending::<()>()).await;
        assert_eq!(out, Err(Elapsed));
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        assert_eq!(in_use(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_future_that_finishes_in_time_gives_its_output_and_its_slot() {
        let out = within(Duration::from_secs(5), async {
            tokio::time::sleep(Duration::from_secs(4)).await;
            7
        })
        .await;
        assert_eq!(out, Ok(7));
        assert_eq!(in_use(), 0);
        // A future ready at once takes no slot at all.
        assert_eq!(within(Duration::from_secs(5), async { 8 }).await, Ok(8));
        assert_eq!(in_use(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_earlier_deadline_registered_later_is_kept() {
        // The sweeper sleeps for the 60 s limit; a 1 s one comes after.
        let long = tokio::spawn(within(
            Duration::from_secs(60),
            std::future::pending::<()>(),
        ));
        tokio::time::sleep(Duration::from_millis(10)).await;
        let start = Instant::now();
        let short = within(Duration::from_secs(1), std::future::pending::<()>()).await;
        assert_eq!(short, Err(Elapsed));
        assert_eq!(start.elapsed(), Duration::from_secs(1));
        let long = long.await.expect("task");
        assert_eq!(long, Err(Elapsed));
        assert_eq!(
            start.elapsed(),
            Duration::from_secs(60) - Duration::from_millis(10)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn many_limits_each_end_at_their_own_deadline() {
        let start = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..500u64 {
            // Limits in every order, some futures finishing before them.
            let limit = Duration::from_millis(1 + (i * 7919) % 3000);
            let finish = Duration::from_millis((i * 104_729) % 4000);
            tasks.spawn(async move {
                let out = within(limit, tokio::time::sleep(finish)).await;
                (limit, finish, out, start.elapsed())
            });
        }
        let mut cut = 0;
        while let Some(done) = tasks.join_next().await {
            let (limit, finish, out, at) = done.expect("task");
            if finish < limit {
                assert_eq!((out, at), (Ok(()), finish));
            } else if finish > limit {
                assert_eq!((out, at), (Err(Elapsed), limit));
                cut += 1;
            }
        }
        assert!(cut > 100, "{cut} cut");
        assert_eq!(in_use(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_future_frees_its_slot_and_waker() {
        let mut held = Box::pin(within(Duration::from_secs(5), std::future::pending::<()>()));
        assert!(futures::poll!(held.as_mut()).is_pending());
        assert_eq!(in_use(), 1);
        drop(held);
        assert_eq!(in_use(), 0);
        DEADLINES.with(|d| assert!(d.lock().slots.iter().all(|s| s.waker.is_none())));
        // The slot is used again.
        let out = within(Duration::from_secs(2), std::future::pending::<()>()).await;
        assert_eq!(out, Err(Elapsed));
        DEADLINES.with(|d| assert_eq!(d.lock().slots.len(), 1));
    }

    #[tokio::test(start_paused = true)]
    async fn the_room_of_a_burst_goes_with_its_last_request() {
        let mut burst: Vec<_> = (0..3000)
            .map(|_| Box::pin(within(Duration::from_secs(5), std::future::pending::<()>())))
            .collect();
        for held in &mut burst {
            assert!(futures::poll!(held.as_mut()).is_pending());
        }
        let capacity = || DEADLINES.with(|d| d.lock().slots.capacity());
        assert!(capacity() >= 3000);
        burst.truncate(1);
        assert!(capacity() >= 3000, "one still in flight");
        drop(burst);
        assert_eq!(capacity(), 0);
        // And the table works on.
        let out = within(Duration::from_secs(1), std::future::pending::<()>()).await;
        assert_eq!(out, Err(Elapsed));
    }

    #[test]
    fn a_new_runtime_on_the_thread_starts_its_own_sweeper() {
        for _ in 0..2 {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .expect("runtime");
            let out =
                runtime.block_on(within(Duration::from_secs(3), std::future::pending::<()>()));
            assert_eq!(out, Err(Elapsed));
        }
    }
}
