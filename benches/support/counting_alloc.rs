//! A global allocator that counts allocations and bytes, for the load harness's app process: the
//! library itself never counts. Off until [`enable`] is called, so the other processes of the
//! harness (the same binary) pay one relaxed load per allocation.
//!
//! Each thread adds to a slot of its own (slots are cache-line sized), so counting does not make
//! the app's worker threads contend on one counter.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};

/// Counts what passes through to the system allocator.
pub struct Counting;

static ENABLED: AtomicBool = AtomicBool::new(false);
static NEXT_SLOT: AtomicUsize = AtomicUsize::new(0);

const SLOTS: usize = 32;

#[repr(align(64))]
struct Slot {
    allocations: AtomicU64,
    bytes: AtomicU64,
}

#[allow(clippy::declare_interior_mutable_const)] // only to repeat it in the array below
const EMPTY: Slot = Slot {
    allocations: AtomicU64::new(0),
    bytes: AtomicU64::new(0),
};
static COUNTS: [Slot; SLOTS] = [EMPTY; SLOTS];

thread_local! {
    static MY_SLOT: Cell<usize> = const { Cell::new(usize::MAX) };
}

fn count(bytes: usize) {
    if !ENABLED.load(Relaxed) {
        return;
    }
    let slot = MY_SLOT
        .try_with(|slot| {
            if slot.get() == usize::MAX {
                slot.set(NEXT_SLOT.fetch_add(1, Relaxed) % SLOTS);
            }
            slot.get()
        })
        .unwrap_or(0);
    COUNTS[slot].allocations.fetch_add(1, Relaxed);
    COUNTS[slot].bytes.fetch_add(bytes as u64, Relaxed);
}

// SAFETY: every call is passed to `System` unchanged; counting allocates nothing.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: the caller's contract for `layout` is `System`'s.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    /// A growth counts as an allocation of the new size (it usually is one: copy and free).
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Starts counting.
pub fn enable() {
    ENABLED.store(true, Relaxed);
}

/// Allocations (reallocations included) and bytes asked for since [`enable`].
pub fn totals() -> (u64, u64) {
    COUNTS.iter().fold((0, 0), |(count, bytes), slot| {
        (
            count + slot.allocations.load(Relaxed),
            bytes + slot.bytes.load(Relaxed),
        )
    })
}
