//! Allocator tuning for libtorch on glibc.
//!
//! libtorch allocates and frees the same large activation buffers every step. glibc's malloc
//! serves blocks above its (dynamic) mmap threshold with fresh `mmap`s and returns freed heap
//! tops to the kernel, so each step can pay for new pages. Raising the mmap threshold to its maximum and the trim threshold far
//! above it keeps those buffers in the heap and reuses them.
//!
//! The `vae` binary goes further and replaces glibc's malloc with mimalloc for the whole
//! process (`vae-cli/src/alloc.rs`); this setting is for programs that keep glibc's.

/// Keeps libtorch's per-step buffers in glibc's heap instead of mmapping and unmapping them
/// each step. Process-wide; call it once, early, before training. A no-op on other platforms.
/// Returns whether the settings were applied.
pub fn tune_allocator() -> bool {
    imp::tune()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod imp {
    /// glibc's upper bound for M_MMAP_THRESHOLD on 64-bit targets (32 MiB).
    const MMAP_THRESHOLD: i32 = 32 * 1024 * 1024;
    /// Keep up to 1 GiB of free heap top before returning it to the kernel.
    const TRIM_THRESHOLD: i32 = 1024 * 1024 * 1024;

    #[allow(unsafe_code)]
    pub fn tune() -> bool {
        // SAFETY: mallopt only changes allocator parameters; it is thread-safe in glibc and
        // takes plain integers.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod imp {
    pub fn tune() -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn applies_on_glibc() {
        assert!(super::tune_allocator());
    }
}
