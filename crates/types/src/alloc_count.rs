//! A counting global allocator for tests and benchmarks (feature
//! `count-alloc`): live heap bytes and allocation calls for the whole
//! process, and allocation calls made on one thread while it is armed
//! (proof that a hot path does not allocate).
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};

thread_local! {
    static ARMED: Cell<bool> = const { Cell::new(false) };
    static THREAD: Cell<u64> = const { Cell::new(0) };
}

static LIVE: AtomicIsize = AtomicIsize::new(0);
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

/// Install with `#[global_allocator] static A: Counting = Counting;`.
pub struct Counting;

impl Counting {
    /// Starts counting this thread's allocations (from zero).
    pub fn arm() {
        THREAD.with(|c| c.set(0));
        ARMED.with(|a| a.set(true));
    }

    /// Stops counting; returns this thread's allocations since `arm`.
    pub fn disarm() -> u64 {
        ARMED.with(|a| a.set(false));
        THREAD.with(Cell::get)
    }

    /// This thread's allocations since `arm` (still armed).
    pub fn thread_count() -> u64 {
        THREAD.with(Cell::get)
    }

    /// Heap bytes live in the process.
    pub fn live_bytes() -> isize {
        LIVE.load(Ordering::Relaxed)
    }

    /// Allocation calls (alloc and realloc) in the process so far.
    pub fn allocations() -> usize {
        ALLOCS.load(Ordering::Relaxed)
    }

    fn count(bytes: isize) {
        LIVE.fetch_add(bytes, Ordering::Relaxed);
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // `try_with`: thread-locals may be gone while a thread exits.
        let _ = ARMED.try_with(|a| {
            if a.get() {
                THREAD.with(|c| c.set(c.get() + 1));
            }
        });
    }
}

// SAFETY: every call is forwarded unchanged to the system allocator; the
// wrapper only updates counters.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        Self::count(l.size() as isize);
        // SAFETY: the caller's layout contract is passed on unchanged.
        unsafe { System.alloc(l) }
    }

    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        // SAFETY: `p` was allocated by `System` with `l`.
        unsafe { System.dealloc(p, l) }
    }

    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        Self::count(new as isize - l.size() as isize);
        // SAFETY: as for `GlobalAlloc::realloc`.
        unsafe { System.realloc(p, l, new) }
    }
}
