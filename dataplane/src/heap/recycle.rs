//! Keeps blocks freed on a thread for the next allocation of their size on
//! that thread: the binary's allocator, over the system's.
//!
//! What was missing: every request allocates three blocks the system
//! allocator cannot hand out from its per-thread cache — the request
//! (264 B), the front end's response state (960 B) and the attempts
//! (1,032 B). glibc's cache keeps seven blocks a size; with 64 requests in
//! flight on a worker, dozens of these are freed in a row, and most
//! `malloc`/`free` calls go through its bins: 1.2k instructions a request
//! of 20.4k (callgrind, `bench/`'s host + prefix request, 2026-12-07).
//! jemalloc (tikv-jemallocator 0.7) took 0.4k of them, 0.65k tuned (its
//! cache is collected and its slabs churn); mimalloc doubled the idle
//! resident memory (measured earlier). HAProxy keeps per-thread pools of
//! its request-sized objects for the same reason.
//!
//! Blocks of 129 bytes to 4 KiB are kept on a free list per size class and
//! thread, at most [`KEPT_BYTES`] a thread. A class is one of glibc's chunk
//! sizes (16 bytes apart), so a block takes what `malloc` would have given
//! it, no more. The rest goes to the system allocator as before, and a
//! thread's blocks go back to it when the thread ends. A block freed on
//! another thread than the one that allocated it joins that thread's lists
//! (the system allocator takes any block from any thread).
//!
//! Blocks aligned to more than 16 bytes (up to [`CACHE_PAIR`]) have lists
//! of their own, of blocks aligned to [`CACHE_PAIR`]: tokio aligns every
//! task to 128 bytes, and each HTTP/2 stream is a task (1,024 bytes), which
//! glibc serves through `posix_memalign`, its slowest path: about 750
//! instructions a request of 44k (callgrind, h2load one stream at a time,
//! 2026-12-07).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::ptr;

/// Distance between glibc's chunk sizes, and so between size classes.
const GRAIN: usize = 16;
/// glibc's bytes of a chunk that are not the caller's (its size field).
const CHUNK_HEADER: usize = 8;
/// Blocks up to this size are the system allocator's (its per-thread
/// cache and fast bins serve them without a search).
const SMALL: usize = 128;
/// The largest block kept.
const LARGEST: usize = 4096;
/// The chunk size (in grains) of the smallest class.
const FIRST_CHUNK: usize = (SMALL + 1 + CHUNK_HEADER).div_ceil(GRAIN);
/// Classes: blocks of 136, 152, 168, ... 4,104 bytes (a chunk's room).
const CLASSES: usize = (LARGEST + CHUNK_HEADER).div_ceil(GRAIN) - FIRST_CHUNK + 1;
/// Bytes of free blocks a thread keeps: the per-request blocks (about
/// 4.3 KB a request: the request, its future, the front end's and the
/// attempts' state, the response) of a hundred requests in flight.
/// Measured: at 256 KiB, 64 requests in flight overflowed it and a quarter
/// of their blocks went through glibc's bins again (230 instructions a
/// request).
pub const KEPT_BYTES: usize = 512 * 1024;
/// The alignment every block has (the system allocator's `malloc`).
const ALIGN: usize = 16;
/// The alignment of the over-aligned classes' blocks: a pair of cache
/// lines, tokio's alignment of its tasks.
const CACHE_PAIR: usize = 128;
/// Lists per thread: the classes aligned to [`ALIGN`], then the same sizes
/// aligned to [`CACHE_PAIR`].
const LISTS: usize = 2 * CLASSES;

/// The allocator: [`System`], with freed blocks of request size kept per
/// thread (module docs).
pub struct Recycling;

/// One thread's free blocks: a list per class, linked through each block's
/// first bytes.
struct Kept {
    heads: [Cell<*mut u8>; LISTS],
    bytes: Cell<usize>,
}

impl Kept {
    const fn new() -> Self {
        Self {
            heads: [const { Cell::new(ptr::null_mut()) }; LISTS],
            bytes: Cell::new(0),
        }
    }

    fn take(&self, class: usize) -> *mut u8 {
        let head = &self.heads[class];
        let block = head.get();
        if !block.is_null() {
            // SAFETY: a block on the list is a live system allocation of
            // its class's layout (≥ 136 bytes, aligned to 16 or 128) that
            // no one else holds; its first word was written by `keep` and
            // names the next block (or null).
            head.set(unsafe { block.cast::<*mut u8>().read() });
            self.bytes.set(self.bytes.get() - class_size(class));
        }
        block
    }

    /// Keeps `block` (of `class`), or says no when the thread keeps enough.
    fn keep(&self, block: *mut u8, class: usize) -> bool {
        let bytes = self.bytes.get() + class_size(class);
        if bytes > KEPT_BYTES {
            return false;
        }
        let head = &self.heads[class];
        // SAFETY: `block` was allocated by us with its class's size and is
        // no longer used by its owner (it is being freed): its first word is
        // ours to write.
        unsafe { block.cast::<*mut u8>().write(head.get()) };
        head.set(block);
        self.bytes.set(bytes);
        true
    }
}

impl Drop for Kept {
    fn drop(&mut self) {
        for class in 0..LISTS {
            loop {
                let block = self.take(class);
                if block.is_null() {
                    break;
                }
                // SAFETY: taken from the list: a system allocation of this
                // layout that no one holds.
                unsafe { System.dealloc(block, class_layout(class)) };
            }
        }
    }
}

thread_local! {
    static KEPT: Kept = const { Kept::new() };
}

/// The class of a block of `layout`, when it is one kept: by size, and
/// among the over-aligned ones when its alignment is above [`ALIGN`].
#[inline]
fn class_of(layout: Layout) -> Option<usize> {
    let size = layout.size();
    if size <= SMALL || size > LARGEST || layout.align() > CACHE_PAIR {
        return None;
    }
    let class = (size + CHUNK_HEADER).div_ceil(GRAIN) - FIRST_CHUNK;
    Some(if layout.align() > ALIGN {
        CLASSES + class
    } else {
        class
    })
}

/// The bytes of a block of `class`: all of its chunk's room.
#[inline]
fn class_size(class: usize) -> usize {
    (FIRST_CHUNK + class % CLASSES) * GRAIN - CHUNK_HEADER
}

#[inline]
fn class_layout(class: usize) -> Layout {
    let align = if class >= CLASSES { CACHE_PAIR } else { ALIGN };
    // At most 4,104 bytes, aligned to 16 or 128: valid.
    match Layout::from_size_align(class_size(class), align) {
        Ok(layout) => layout,
        Err(_) => unreachable!("class sizes are valid layouts"),
    }
}

// Out of line, the kept classes' paths: inlined into every allocation and
// free of the binary they made its code 1.6 MB larger (and 0.7 MiB more of
// it resident when idle); the size check that picks them stays inline, and
// folds away where the size is known.

/// A kept block of `class`, or a new one.
#[inline(never)]
fn take_or_allocate(class: usize) -> *mut u8 {
    let kept = KEPT
        .try_with(|kept| kept.take(class))
        .unwrap_or(ptr::null_mut());
    if !kept.is_null() {
        return kept;
    }
    // SAFETY: a valid layout of non-zero size.
    unsafe { System.alloc(class_layout(class)) }
}

/// Keeps `block`, a system allocation of `class`'s layout that its owner
/// frees, or gives it back to the system.
///
/// # Safety
///
/// `block` was allocated with `class`'s layout and is no longer used.
#[inline(never)]
unsafe fn keep_or_free(block: *mut u8, class: usize) {
    let kept = KEPT
        .try_with(|kept| kept.keep(block, class))
        .unwrap_or(false);
    if !kept {
        // SAFETY: the caller's contract.
        unsafe { System.dealloc(block, class_layout(class)) };
    }
}

// SAFETY: every block handed out is either the system allocator's answer
// for the caller's layout, or (a kept class) a system allocation of the
// class's size, at least the layout's size and aligned to 16 or 128 ≥ its
// alignment, not held by anyone else (it was freed, and is taken off its
// list once). `dealloc` and `realloc` send a block back the way it came:
// by the layout's class, which the caller's layout determines the same way
// as when it was allocated.
unsafe impl GlobalAlloc for Recycling {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match class_of(layout) {
            // SAFETY: the caller's contract, passed on.
            None => unsafe { System.alloc(layout) },
            Some(class) => take_or_allocate(class),
        }
    }

    #[inline]
    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        match class_of(layout) {
            // SAFETY: the caller's contract: allocated by `System` with it.
            None => unsafe { System.dealloc(block, layout) },
            // SAFETY: the caller's contract: allocated by `alloc` with a
            // layout of this class, and no longer used.
            Some(class) => unsafe { keep_or_free(block, class) },
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if class_of(layout).is_none() {
            // SAFETY: the caller's contract, passed on.
            return unsafe { System.alloc_zeroed(layout) };
        }
        // SAFETY: the caller's contract; the block is zeroed over the
        // layout's size, all it promises.
        unsafe {
            let block = self.alloc(layout);
            if !block.is_null() {
                ptr::write_bytes(block, 0, layout.size());
            }
            block
        }
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY (layout): the caller's contract makes `new_size` with the
        // old alignment a valid layout.
        let new = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        match (class_of(layout), class_of(new)) {
            // SAFETY: the caller's contract, passed on: neither is kept.
            (None, None) => unsafe { System.realloc(block, layout, new_size) },
            // The block is of the class's size already.
            (Some(old), Some(class)) if old == class => block,
            _ => {
                // SAFETY: the caller's contract: `block` holds
                // `layout.size()` bytes; the new block is a separate one of
                // `new_size`, and the smaller of the two is copied.
                unsafe {
                    let moved = self.alloc(new);
                    if !moved.is_null() {
                        ptr::copy_nonoverlapping(block, moved, layout.size().min(new_size));
                        self.dealloc(block, layout);
                    }
                    moved
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(size: usize) -> Layout {
        Layout::from_size_align(size, 8).expect("layout")
    }

    #[test]
    fn a_freed_block_of_request_size_is_the_next_one_of_its_class() {
        let heap = Recycling;
        // SAFETY (whole test): blocks are used within their layouts and
        // freed once, with the layout they were allocated with.
        unsafe {
            let first = heap.alloc(layout(1000));
            assert!(!first.is_null());
            ptr::write_bytes(first, 0xAB, 1000);
            heap.dealloc(first, layout(1000));
            // 995 and 1,000 bytes share a class: the same block again.
            let second = heap.alloc(layout(995));
            assert_eq!(second, first);
            // Another class gets another block.
            let other = heap.alloc(layout(600));
            assert_ne!(other, first);
            heap.dealloc(second, layout(995));
            heap.dealloc(other, layout(600));
        }
    }

    #[test]
    fn small_large_and_overaligned_blocks_are_the_system_allocators() {
        assert_eq!(class_of(layout(128)), None);
        assert_eq!(class_of(layout(129)), Some(0));
        assert_eq!(class_of(layout(136)), Some(0));
        assert_eq!(class_of(layout(137)), Some(1));
        assert_eq!(class_of(layout(4096)), Some(CLASSES - 1));
        assert_eq!(class_of(layout(4097)), None);
        // Over-aligned blocks up to 128 bytes have classes of their own;
        // beyond, they are the system allocator's.
        let aligned = |size, align| Layout::from_size_align(size, align).expect("layout");
        assert_eq!(
            class_of(aligned(1024, 64)),
            Some(CLASSES + class_of(layout(1024)).expect("class"))
        );
        assert_eq!(class_of(aligned(1024, 128)), class_of(aligned(1024, 64)));
        assert_eq!(class_of(aligned(128, 128)), None);
        assert_eq!(class_of(aligned(1024, 256)), None);
        assert_eq!(class_layout(CLASSES).align(), CACHE_PAIR);
        assert_eq!(class_size(CLASSES), class_size(0));
        // Each class is a chunk's room in glibc (16 n - 8 bytes), the one
        // `malloc` gives every size of the class.
        assert_eq!(class_size(0), 136);
        assert_eq!(class_size(CLASSES - 1), 4104);
        for class in 0..CLASSES {
            let size = class_size(class);
            assert_eq!((size + CHUNK_HEADER) % GRAIN, 0, "{size}");
            assert_eq!(class_of(layout(size.min(LARGEST))), Some(class), "{size}");
            let smallest = (size - GRAIN + 1).max(SMALL + 1);
            assert_eq!(class_of(layout(smallest)), Some(class), "{size}");
        }
    }

    #[test]
    fn a_thread_keeps_at_most_its_limit_and_hands_the_rest_back() {
        // On a thread of its own, whose lists start empty.
        std::thread::spawn(|| {
            let heap = Recycling;
            let size = 4096;
            let block = class_size(CLASSES - 1);
            let count = KEPT_BYTES / block + 16;
            // SAFETY: as above.
            unsafe {
                let blocks: Vec<_> = (0..count).map(|_| heap.alloc(layout(size))).collect();
                assert!(blocks.iter().all(|b| !b.is_null()));
                for &block in &blocks {
                    heap.dealloc(block, layout(size));
                }
                let kept = KEPT.with(|k| k.bytes.get());
                assert_eq!(kept, KEPT_BYTES / block * block);
                // What was kept is handed out again, most recent first.
                let again = heap.alloc(layout(size));
                assert_eq!(again, blocks[KEPT_BYTES / block - 1]);
                heap.dealloc(again, layout(size));
            }
        })
        .join()
        .expect("thread");
    }

    #[test]
    fn an_over_aligned_block_is_reused_aligned_and_only_as_such() {
        // On a thread of its own, whose lists start empty.
        std::thread::spawn(|| {
            let heap = Recycling;
            let task = Layout::from_size_align(1024, 128).expect("layout");
            // SAFETY: as above.
            unsafe {
                let first = heap.alloc(task);
                assert!(!first.is_null());
                assert_eq!(first as usize % 128, 0);
                heap.dealloc(first, task);
                // A block of the same size with the usual alignment is not
                // that one (it may not be aligned to what the next task
                // needs once freed again)...
                let plain = heap.alloc(layout(1024));
                assert_ne!(plain, first);
                // ...and the next over-aligned one is.
                let again = heap.alloc(Layout::from_size_align(1020, 64).expect("layout"));
                assert_eq!(again, first);
                heap.dealloc(again, Layout::from_size_align(1020, 64).expect("layout"));
                heap.dealloc(plain, layout(1024));
            }
        })
        .join()
        .expect("thread");
    }

    #[test]
    fn zeroed_and_grown_blocks_hold_what_they_promise() {
        let heap = Recycling;
        // SAFETY: as above.
        unsafe {
            // A recycled block had bytes in it: a zeroed one has none.
            let dirty = heap.alloc(layout(300));
            ptr::write_bytes(dirty, 0xFF, 300);
            heap.dealloc(dirty, layout(300));
            let zeroed = heap.alloc_zeroed(layout(300));
            assert!((0..300).all(|i| *zeroed.add(i) == 0));
            // Grown within its class, across classes, and out of them, the
            // bytes stay.
            for i in 0..300 {
                *zeroed.add(i) = i as u8;
            }
            let same = heap.realloc(zeroed, layout(300), 310);
            assert_eq!(same, zeroed);
            let moved = heap.realloc(same, layout(310), 2000);
            let big = heap.realloc(moved, layout(2000), 10_000);
            assert!((0..300).all(|i| *big.add(i) == i as u8));
            let small = heap.realloc(big, layout(10_000), 200);
            assert!((0..200).all(|i| *small.add(i) == i as u8));
            heap.dealloc(small, layout(200));
        }
    }

    #[test]
    fn a_block_freed_on_another_thread_is_kept_there() {
        let heap = Recycling;
        // SAFETY: as above; the block is sent to the other thread as an
        // address and used only there after.
        let address = unsafe { heap.alloc(layout(700)) } as usize;
        std::thread::spawn(move || {
            let heap = Recycling;
            // SAFETY: as above.
            unsafe {
                heap.dealloc(address as *mut u8, layout(700));
                assert_eq!(heap.alloc(layout(700)) as usize, address);
                heap.dealloc(address as *mut u8, layout(700));
            }
        })
        .join()
        .expect("thread");
    }
}
