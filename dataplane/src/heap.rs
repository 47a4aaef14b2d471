//! Gives memory freed in a burst back to the system.
//!
//! glibc's allocator returns freed memory to the system only from the top
//! of its heap; what a burst freed below long-lived allocations stays
//! resident. Measured (`bench/heavy.sh`, 10,000 connections at once, each
//! request in flight holding its read buffers): resident memory went from
//! 8 MiB to 143 MiB during the burst and stayed there once every
//! connection had closed and every idle endpoint connection was reaped;
//! the memory was free inside the allocator, not kept by Sluice:
//! `malloc_trim(0)` brought it to 11 MiB. So every [`CHECK`], if the
//! allocator holds more than [`FREE_LIMIT`] free, it is told to give it
//! back. Under steady load little is free (the buffers are reused), so the
//! trim runs after bursts, not per request.
//!
//! Only with glibc; elsewhere this does nothing. Blocks the binary's
//! allocator keeps for reuse ([`Recycling`], at most [`KEPT_BYTES`] a
//! thread) are in use as glibc sees them, and not trimmed.

mod recycle;

use std::time::Duration;

pub use recycle::{KEPT_BYTES, Recycling};

use tokio::sync::watch;

/// How often the allocator's free memory is looked at.
pub const CHECK: Duration = Duration::from_secs(10);
/// Free memory the allocator may keep before it is given back.
pub const FREE_LIMIT: usize = 16 * 1024 * 1024;

/// Until `stop`: every [`CHECK`], trims the heap when more than
/// [`FREE_LIMIT`] of it is free.
pub async fn run(mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(CHECK) => {}
        }
        if free_bytes().is_some_and(|free| free > FREE_LIMIT) {
            // A trim walks the heap (milliseconds after a big burst): off
            // the serving thread.
            let _ = tokio::task::spawn_blocking(trim).await;
        }
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod glibc {
    /// glibc's `struct mallinfo2` (2.33 and later).
    #[repr(C)]
    pub struct MallInfo2 {
        pub arena: usize,
        pub ordblks: usize,
        pub smblks: usize,
        pub hblks: usize,
        pub hblkhd: usize,
        pub usmblks: usize,
        pub fsmblks: usize,
        pub uordblks: usize,
        pub fordblks: usize,
        pub keepcost: usize,
    }

    unsafe extern "C" {
        pub fn mallinfo2() -> MallInfo2;
        pub fn malloc_trim(pad: usize) -> i32;
    }
}

/// Bytes free inside the allocator (its heaps' free chunks), when known.
pub fn free_bytes() -> Option<usize> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: `mallinfo2` takes no argument and returns a plain struct
        // by value, declared above as glibc defines it; it only reads the
        // allocator's statistics under its own locks.
        let info = unsafe { glibc::mallinfo2() };
        Some(info.fordblks + info.fsmblks)
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    None
}

/// Gives the allocator's free memory back to the system.
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` takes a byte count and only releases pages of
    // free chunks (`madvise(MADV_DONTNEED)`) under the allocator's locks;
    // no memory in use is touched.
    unsafe {
        glibc::malloc_trim(0);
    }
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    fn resident_kib() -> usize {
        let statm = std::fs::read_to_string("/proc/self/statm").expect("statm");
        let pages: usize = statm
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse().ok())
            .expect("resident pages");
        pages * 4
    }

    #[test]
    fn memory_freed_below_live_allocations_goes_back_to_the_system() {
        // 64 MiB of 16 KiB buffers, each followed by a small allocation
        // that stays: freed, the buffers cannot leave from the heap's top.
        let mut kept = Vec::with_capacity(4096);
        let mut buffers = Vec::with_capacity(4096);
        for i in 0..4096u32 {
            buffers.push(vec![i as u8 | 1; 16 * 1024]);
            kept.push(Box::new(i));
        }
        drop(buffers);
        let free = free_bytes().expect("glibc reports");
        assert!(free >= 60 * 1024 * 1024, "{free} bytes free");
        let before = resident_kib();
        trim();
        let after = resident_kib();
        assert!(
            before > after + 32 * 1024,
            "resident {before} KiB before the trim, {after} KiB after"
        );
        assert_eq!(
            kept.iter().map(|b| **b as u64).sum::<u64>(),
            4095 * 4096 / 2
        );
    }
}
