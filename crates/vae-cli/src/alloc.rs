//! The process's allocator: mimalloc, for Rust and, through its `override` feature, for
//! libtorch too. `override` defines `malloc`, `free`, `posix_memalign`, … in this binary; the
//! dynamic linker binds libtorch's calls to them, so its tensor buffers come from mimalloc.
//!
//! A training step frees and reallocates the same few-MB activation buffers each time. glibc's
//! malloc serves them with bin searches, consolidation and page faults on fresh heap; mimalloc
//! reuses them from per-thread free lists, and [`keep_freed_memory`] keeps freed memory
//! committed for the next step. What it gave, and what it costs in peak RSS:
//! `docs/performance.md`.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc 3's `mimalloc.h` (libmimalloc-sys names no constant for
/// it): milliseconds before freed memory goes back to the OS, -1 for never.
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keeps freed memory committed for reuse instead of returning it to the OS after a delay,
/// which would make the next step fault its pages in again. Peak RSS then stays at the
/// run's peak. Call once, first thing in `main`.
pub fn keep_freed_memory() {
    #[allow(unsafe_code)]
    // SAFETY: mi_option_set only stores an integer option; it is called before any other
    // thread of ours exists.
    unsafe {
        libmimalloc_sys::mi_option_set(PURGE_DELAY, -1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(unsafe_code)]
    fn in_mimalloc_heap(p: *const std::ffi::c_void) -> bool {
        // SAFETY: only compares the address with mimalloc's own regions.
        unsafe { libmimalloc_sys::mi_is_in_heap_region(p) }
    }

    #[allow(unsafe_code)]
    fn purge_delay() -> std::ffi::c_long {
        // SAFETY: reads an integer option.
        unsafe { libmimalloc_sys::mi_option_get(PURGE_DELAY) }
    }

    #[test]
    fn libtorch_buffers_come_from_mimalloc() {
        // A tensor's storage is allocated by libtorch (C++, posix_memalign), not by Rust.
        let t = tch::Tensor::zeros([1 << 20], (tch::Kind::Float, tch::Device::Cpu));
        assert!(
            in_mimalloc_heap(t.data_ptr()),
            "libtorch's malloc is not mimalloc"
        );
        let on_stack = 0u8;
        assert!(!in_mimalloc_heap((&raw const on_stack).cast()));
    }

    #[test]
    fn keep_freed_memory_sets_the_purge_delay() {
        // Option 15 is the purge delay if it holds that option's default (1000 ms in mimalloc
        // 3; its neighbours default to 0 and 1).
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            assert_eq!(
                purge_delay(),
                1000,
                "option {PURGE_DELAY} is not the purge delay"
            );
        }
        keep_freed_memory();
        assert_eq!(purge_delay(), -1);
    }
}
