//! The process's allocator: mimalloc, asked the way its own header
//! recommends for the alignment at hand.
//!
//! mimalloc rather than glibc's malloc: hyper takes a fresh 8 KiB read
//! buffer per message on each side of a proxied request, which glibc serves
//! from its slow path (no thread cache for that size), and mirrored bodies
//! are freed on other threads than the one that read them. Measured in the
//! README's Performance section.
//!
//! The `mimalloc` crate sends every allocation through `mi_malloc_aligned`,
//! even when the alignment is one any block already has; for blocks above
//! mimalloc's small size (1 KiB, such as those 8 KiB buffers) that takes
//! its generic aligned path on every call. Here, as std's own allocators
//! do, an alignment that malloc guarantees anyway gets plain `mi_malloc`.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys::{
    mi_free, mi_malloc, mi_malloc_aligned, mi_realloc, mi_realloc_aligned, mi_zalloc,
    mi_zalloc_aligned,
};

/// The alignment every mimalloc block of at least this size has
/// (`MI_MAX_ALIGN_SIZE`, as `max_align_t`).
const MIN_ALIGN: usize = 16;

pub struct MiMalloc;

/// Whether a block of `size` from plain malloc is aligned to `align`
/// already: smaller blocks are only aligned to their size.
fn plain(size: usize, align: usize) -> bool {
    align <= MIN_ALIGN && align <= size
}

// SAFETY: every call goes to mimalloc with the layout's size (and its
// alignment where plain malloc would not guarantee it); mimalloc frees and
// reallocates blocks from either family alike.
unsafe impl GlobalAlloc for MiMalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = match plain(layout.size(), layout.align()) {
            true => mi_malloc(layout.size()),
            false => mi_malloc_aligned(layout.size(), layout.align()),
        };
        p.cast()
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = match plain(layout.size(), layout.align()) {
            true => mi_zalloc(layout.size()),
            false => mi_zalloc_aligned(layout.size(), layout.align()),
        };
        p.cast()
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        mi_free(ptr.cast::<c_void>());
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = match plain(new_size, layout.align()) {
            true => mi_realloc(ptr.cast::<c_void>(), new_size),
            false => mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()),
        };
        p.cast()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_have_the_alignment_asked_for() {
        let a = MiMalloc;
        for (size, align) in [(1, 1), (8, 8), (24, 8), (8192, 1), (100, 64), (4096, 4096)] {
            let layout = Layout::from_size_align(size, align).unwrap();
            unsafe {
                let p = a.alloc(layout);
                assert!(!p.is_null());
                assert_eq!(p as usize % align, 0, "{size} bytes aligned to {align}");
                let q = a.realloc(p, layout, size * 3);
                assert_eq!(
                    q as usize % align,
                    0,
                    "grown {size} bytes aligned to {align}"
                );
                a.dealloc(q, Layout::from_size_align(size * 3, align).unwrap());
                let z = a.alloc_zeroed(layout);
                assert!(std::slice::from_raw_parts(z, size).iter().all(|&b| b == 0));
                a.dealloc(z, layout);
            }
        }
    }
}
