//! The plugins' memory allocator on wasm32: a block of up to 4 KiB, once
//! freed, goes on a free list of its size class and is handed out again
//! from there. Larger blocks, and blocks aligned to more than 16 bytes, go
//! to std's allocator (dlmalloc, on wasm32-wasip2).
//!
//! Why: a plugin call makes dozens of small allocations (the strings of its
//! event, its decision's reason and changes, `format!`'s growing buffers)
//! and frees them at the end of the call. Through dlmalloc, each malloc and
//! free cost 100–150 instructions, about a quarter of the guest's work in
//! the benchmarks' pipeline; here each is a push or a pop.
//!
//! What it trades: memory freed in one class is reused only by that class
//! (at most 4 KiB blocks, and a plugin's memory never shrinks anyway: wasm
//! memories only grow), and up to half a block is padding. A plugin that
//! wants another allocator turns off the SDK's `size-class-alloc` feature.
//!
//! Only for one thread: wasm32-wasip2 plugins have no threads. With the
//! `atomics` target feature the SDK does not install it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::UnsafeCell;

/// Block sizes: 16-byte steps to 64, then powers of two and the
/// points halfway between them, to 4 KiB.
const CLASSES: [usize; 16] = [16, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096];
/// What is taken from std's allocator at a time, and cut into blocks.
const CHUNK: usize = 64 * 1024;
/// Every block's alignment (all classes are multiples of it, and chunks
/// start on it).
const ALIGN: usize = 16;

/// The size class of a block of `size` bytes aligned to `align`, or None
/// for std's allocator.
fn class(size: usize, align: usize) -> Option<usize> {
    if align > ALIGN || size > CLASSES[CLASSES.len() - 1] {
        return None;
    }
    let s = size.max(1);
    if s <= 64 {
        return Some((s - 1) / 16);
    }
    // 2^bits is the least power of two >= s: its class is 5 + 2 (bits - 7);
    // the class below it (1.5 * 2^(bits - 1)) serves sizes up to that.
    let bits = (usize::BITS - (s - 1).leading_zeros()) as usize;
    let upper = 5 + 2 * (bits - 7);
    Some(if s <= CLASSES[upper - 1] { upper - 1 } else { upper })
}

pub struct SizeClasses {
    state: UnsafeCell<State>,
}

struct State {
    /// Each class's free blocks: a block's first word points to the next.
    free: [*mut u8; CLASSES.len()],
    /// The part of the newest chunk not yet cut into blocks.
    next: usize,
    end: usize,
}

// SAFETY: installed only where the program has one thread (see the module
// comment and the `cfg` on the static in lib.rs).
#[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
unsafe impl Sync for SizeClasses {}

impl SizeClasses {
    pub const fn new() -> SizeClasses {
        SizeClasses { state: UnsafeCell::new(State { free: [std::ptr::null_mut(); CLASSES.len()], next: 0, end: 0 }) }
    }
}

impl Default for SizeClasses {
    fn default() -> Self {
        SizeClasses::new()
    }
}

unsafe impl GlobalAlloc for SizeClasses {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some(i) = class(layout.size(), layout.align()) else {
            return System.alloc(layout);
        };
        let st = &mut *self.state.get();
        let head = st.free[i];
        if !head.is_null() {
            st.free[i] = *(head as *mut *mut u8);
            return head;
        }
        let size = CLASSES[i];
        if st.end - st.next < size {
            // The rest of the old chunk (less than this block) is left.
            let chunk = System.alloc(Layout::from_size_align_unchecked(CHUNK, ALIGN));
            if chunk.is_null() {
                return chunk;
            }
            st.next = chunk as usize;
            st.end = st.next + CHUNK;
        }
        let block = st.next as *mut u8;
        st.next += size;
        block
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let Some(i) = class(layout.size(), layout.align()) else {
            return System.dealloc(ptr, layout);
        };
        let st = &mut *self.state.get();
        *(ptr as *mut *mut u8) = st.free[i];
        st.free[i] = ptr;
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let (old, new) = (class(layout.size(), layout.align()), class(new_size, layout.align()));
        match (old, new) {
            // The block already fits.
            (Some(a), Some(b)) if a == b => ptr,
            (None, None) => System.realloc(ptr, layout, new_size),
            _ => {
                let to = Layout::from_size_align_unchecked(new_size, layout.align());
                let moved = self.alloc(to);
                if !moved.is_null() {
                    std::ptr::copy_nonoverlapping(ptr, moved, layout.size().min(new_size));
                    self.dealloc(ptr, layout);
                }
                moved
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_size_gets_the_least_class_that_holds_it() {
        for size in 0..=4096 {
            let i = class(size, 8).unwrap();
            assert!(CLASSES[i] >= size.max(1), "{size} in {}", CLASSES[i]);
            assert!(i == 0 || CLASSES[i - 1] < size, "{size} could be in {}", CLASSES[i - 1]);
        }
        assert_eq!(class(4097, 8), None);
        assert_eq!(class(64, 32), None, "alignment above 16 goes to std");
        assert_eq!(class(64, 16), Some(3));
    }

    #[test]
    fn blocks_are_reused_aligned_and_keep_their_contents_when_moved() {
        let a = SizeClasses::new();
        unsafe {
            let l = Layout::from_size_align(40, 8).unwrap();
            let p = a.alloc(l);
            let q = a.alloc(l);
            assert!(!p.is_null() && !q.is_null() && p != q);
            assert_eq!(p as usize % ALIGN, 0);
            assert_eq!(q as usize - p as usize, 48, "cut one after the other from a chunk");
            a.dealloc(p, l);
            assert_eq!(a.alloc(l), p, "a freed block is handed out again");
            // Growing within the class keeps the block; past it, moves it.
            assert_eq!(a.realloc(q, l, 48), q);
            for k in 0..40 {
                *q.add(k) = k as u8;
            }
            let r = a.realloc(q, Layout::from_size_align(48, 8).unwrap(), 3000);
            assert_ne!(r, q);
            assert!((0..40).all(|k| *r.add(k) == k as u8));
            // Into std's allocator and back.
            let big = a.realloc(r, Layout::from_size_align(3000, 8).unwrap(), 10_000);
            assert!((0..40).all(|k| *big.add(k) == k as u8));
            let small = a.realloc(big, Layout::from_size_align(10_000, 8).unwrap(), 20);
            assert!((0..20).all(|k| *small.add(k) == k as u8));
            a.dealloc(small, Layout::from_size_align(20, 8).unwrap());
            // Many blocks of every class: distinct, inside no other.
            let mut live = Vec::new();
            for (n, size) in (1..3000).step_by(37).enumerate() {
                let l = Layout::from_size_align(size, 1 << (n % 5)).unwrap();
                let p = a.alloc(l);
                assert_eq!(p as usize % l.align(), 0);
                std::ptr::write_bytes(p, n as u8, size);
                live.push((p, l, n as u8));
            }
            for (p, l, n) in &live {
                assert!((0..l.size()).all(|k| *p.add(k) == *n), "a block was overwritten");
            }
            for (p, l, _) in live {
                a.dealloc(p, l);
            }
        }
    }
}
