//! One process per run directory: an advisory lock on `<run>/.lock`, released by the OS when
//! the process ends however it ends (so a killed run resumes with no manual step).

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use crate::error::{Result, TrainError};

/// The lock file's name inside a run directory.
pub(crate) const LOCK_FILE: &str = ".lock";

/// Holds a run directory for this process while it lives.
#[derive(Debug)]
pub(crate) struct RunLock {
    _file: File,
}

impl RunLock {
    /// Takes the lock on `run_dir` (which must exist), or says which process holds it.
    pub(crate) fn acquire(run_dir: &Path) -> Result<Self> {
        let path = run_dir.join(LOCK_FILE);
        let mut file = match open_locked(&path)? {
            Ok(file) => file,
            Err(mut held) => {
                return Err(TrainError::Busy {
                    path: run_dir.to_path_buf(),
                    pid: holder(&mut held),
                });
            }
        };
        let io = |action: &'static str, path: &PathBuf| {
            let path = path.clone();
            move |cause| TrainError::Io {
                action,
                path,
                cause,
            }
        };
        // Who holds it, for the message a second process prints.
        let pid = std::process::id().to_string();
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| file.write_all(pid.as_bytes()))
            .and_then(|()| file.flush())
            .map_err(io("write the lock file", &path))?;
        Ok(Self { _file: file })
    }
}

/// Opens `path` for reading and writing, creating it, and takes its advisory lock, which the
/// OS releases when the process ends however it ends: `Ok(Err(file))` when another process
/// holds it.
pub(crate) fn open_locked(path: &Path) -> Result<std::result::Result<File, File>> {
    let fail = |action: &'static str| {
        move |cause| TrainError::Io {
            action,
            path: path.to_path_buf(),
            cause,
        }
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(fail("open"))?;
    match file.try_lock() {
        Ok(()) => Ok(Ok(file)),
        Err(TryLockError::WouldBlock) => Ok(Err(file)),
        Err(TryLockError::Error(cause)) => Err(fail("lock")(cause)),
    }
}

/// The pid the holder wrote into the lock file. It writes it just after locking, so a
/// process that lost a race for the lock waits a little for it.
fn holder(file: &mut File) -> Option<u32> {
    for _ in 0..50 {
        let mut text = String::new();
        if file.rewind().is_ok()
            && file.read_to_string(&mut text).is_ok()
            && let Ok(pid) = text.trim().parse()
        {
            return Some(pid);
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_pid_until_it_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let first = RunLock::acquire(dir.path()).unwrap();
        // flock locks belong to the open file: a second open in this process conflicts too.
        let err = RunLock::acquire(dir.path()).unwrap_err();
        match &err {
            TrainError::Busy { pid, .. } => assert_eq!(*pid, Some(std::process::id())),
            other => panic!("{other}"),
        }
        assert!(
            err.to_string().contains("in use by another vae process"),
            "{err}"
        );
        drop(first);
        RunLock::acquire(dir.path()).unwrap();
    }
}
