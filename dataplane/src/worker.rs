//! Which worker thread this is (see [`crate::front::workers`]), for what is
//! kept per worker, such as an endpoint's idle connections: a connection
//! belongs to the I/O driver of the runtime that opened it. A leaf, so that
//! what keeps per-worker state need not import the serving side.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

thread_local! {
    static WORKER: Cell<usize> = const { Cell::new(0) };
}

/// The most workers any dataplane in this process was started with: how
/// many idle lists an endpoint keeps.
static WORKERS: AtomicUsize = AtomicUsize::new(1);

/// The worker this thread is (0 outside the extra worker threads).
pub fn current() -> usize {
    WORKER.with(Cell::get)
}

/// How many idle lists a new endpoint needs.
pub fn count() -> usize {
    WORKERS.load(Ordering::Relaxed)
}

/// Records that `n` workers will serve (before any endpoint is built).
pub fn reserve(n: usize) {
    WORKERS.fetch_max(n.max(1), Ordering::Relaxed);
}

/// Marks the calling thread as worker `index` (done once, as it starts).
pub fn enter(index: usize) {
    WORKER.with(|w| w.set(index));
}
