//! libtorch's operator profiler (the Kineto profiler behind `torch.profiler`), which tch does
//! not bind: [`Profiler::start`] records every operator libtorch runs on this process's
//! threads, forward and autograd's backward alike, and [`Profiler::finish`] writes them as a
//! Chrome trace (the format of `torch.profiler`'s `export_chrome_trace`, which
//! `chrome://tracing` and Perfetto open). `vae train --profile` records its timed steps with
//! it, and `cargo xtask bench --breakdown` sets such a trace beside the PyTorch peer's.
//!
//! `build.rs` compiles `profiler.cpp` against the libtorch tch links and sets
//! `cfg(profiler)`; without it [`Profiler::start`] reports that it is unavailable.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{Result, TrainError};

/// Whether a [`Profiler`] is running in this process (libtorch would silently restart its
/// profiler, and the second one's stop would end the first's record).
static RUNNING: AtomicBool = AtomicBool::new(false);

/// A running profiler: one per process at a time. Dropping it without
/// [`finish`](Profiler::finish) stops it and discards what it recorded.
#[derive(Debug)]
pub struct Profiler {
    running: bool,
}

impl Profiler {
    /// Starts recording libtorch's operators. Fails when this build has no profiler binding
    /// or a profiler is already running in this process.
    pub fn start() -> Result<Self> {
        let fail = |cause: &str| {
            TrainError::Profiler(format!("cannot start libtorch's profiler: {cause}"))
        };
        if RUNNING.swap(true, Ordering::SeqCst) {
            return Err(fail(
                "one is already running in this process; finish it first",
            ));
        }
        ffi::start().map_err(|cause| {
            RUNNING.store(false, Ordering::SeqCst);
            fail(&cause)
        })?;
        Ok(Self { running: true })
    }

    /// Stops libtorch's profiler, writing its trace to `path` when given.
    fn stop(&mut self, path: Option<&Path>) -> Result<(), String> {
        self.running = false;
        let result = ffi::stop(path);
        RUNNING.store(false, Ordering::SeqCst);
        result
    }

    /// Stops recording and writes the trace to `path` as Chrome-trace JSON, atomically (a
    /// temporary file beside it, then a rename).
    pub fn finish(mut self, path: &Path) -> Result<()> {
        let tmp = path.with_file_name(format!(
            ".{}.tmp",
            path.file_name()
                .map_or("trace".into(), |n| n.to_string_lossy())
        ));
        self.stop(Some(&tmp)).map_err(|cause| {
            let _ = std::fs::remove_file(&tmp);
            TrainError::Profiler(format!(
                "cannot write the profiler's trace to {}: {cause}",
                path.display()
            ))
        })?;
        std::fs::rename(&tmp, path).map_err(|cause| TrainError::Io {
            action: "write the profiler's trace",
            path: path.to_path_buf(),
            cause,
        })
    }
}

impl Drop for Profiler {
    fn drop(&mut self) {
        if self.running {
            let _ = self.stop(None);
        }
    }
}

#[cfg(profiler)]
#[allow(unsafe_code)]
mod ffi {
    use std::ffi::{CStr, CString, c_char};
    use std::path::Path;

    unsafe extern "C" {
        fn vae_profiler_start() -> *mut c_char;
        fn vae_profiler_stop(path: *const c_char) -> *mut c_char;
        fn vae_profiler_free_error(message: *mut c_char);
    }

    /// The message of a failed call, freed here.
    fn outcome(err: *mut c_char) -> Result<(), String> {
        if err.is_null() {
            return Ok(());
        }
        // SAFETY: a non-null return is a NUL-terminated string from `strdup`, freed once here.
        Err(unsafe {
            let s = CStr::from_ptr(err).to_string_lossy().into_owned();
            vae_profiler_free_error(err);
            s
        })
    }

    pub(super) fn start() -> Result<(), String> {
        // SAFETY: no arguments; the C++ side catches every exception.
        outcome(unsafe { vae_profiler_start() })
    }

    pub(super) fn stop(path: Option<&Path>) -> Result<(), String> {
        use std::os::unix::ffi::OsStrExt;
        let path = path
            .map(|p| CString::new(p.as_os_str().as_bytes()))
            .transpose()
            .map_err(|_| "the path holds a NUL byte".to_string())?;
        let ptr = path.as_ref().map_or(std::ptr::null(), |p| p.as_ptr());
        // SAFETY: `ptr` is null or a NUL-terminated string alive for the call; the C++ side
        // copies it and catches every exception.
        outcome(unsafe { vae_profiler_stop(ptr) })
    }
}

#[cfg(not(profiler))]
mod ffi {
    use std::path::Path;

    pub(super) fn start() -> Result<(), String> {
        Err("this build has no profiler binding (libtorch's headers were not found when it was compiled)".into())
    }

    pub(super) fn stop(_path: Option<&Path>) -> Result<(), String> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Kind, Tensor};

    /// The trace names the operators run while recording, backward ones included.
    #[test]
    fn the_trace_holds_the_operators_run_while_recording() {
        let _guard = crate::tests::lock();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trace.json");
        let profiler = Profiler::start().unwrap();
        // A second profiler in the same process is refused, not silently merged.
        assert!(Profiler::start().is_err());
        let w = Tensor::randn([8, 8], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
        let y = w.matmul(&w).sum(Kind::Float);
        y.backward();
        profiler.finish(&path).unwrap();
        let trace: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let names: Vec<&str> = trace["traceEvents"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e["name"].as_str())
            .collect();
        assert!(names.contains(&"aten::matmul"), "{names:?}");
        assert!(names.iter().any(|n| n.contains("MmBackward")), "{names:?}");
        // Stopped: a new one may start, and dropping it discards its record.
        drop(Profiler::start().unwrap());
        assert!(!dir.path().join(".trace.json.tmp").exists());
    }
}
