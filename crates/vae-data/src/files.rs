//! Writing files so that a crash never leaves a half-written one: every file the workspace
//! writes goes through [`write_atomic`].

use std::fs::File;
use std::io::Write;
use std::path::Path;

use crate::error::{DataError, Result};

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl Fn(std::io::Error) -> DataError + 'a {
    move |cause| DataError::Io {
        action,
        path: path.to_path_buf(),
        cause,
    }
}

/// The temporary name [`write_atomic`] writes `path`'s bytes under before the rename:
/// `.<name>.tmp-<pid>` beside it.
fn temporary_for(path: &Path) -> std::path::PathBuf {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dir.join(format!(".{name}.tmp-{}", std::process::id()))
}

/// Writes `bytes` to `path` atomically: a temporary file beside it, fsync, rename over
/// `path`, fsync of the folder. Readers see the old file or the new one, never a part; on
/// error the temporary file is removed and `path` is untouched.
pub fn write_atomic(path: impl AsRef<Path>, bytes: &[u8]) -> Result<()> {
    let path = path.as_ref();
    let tmp = temporary_for(path);
    let result = (|| {
        // Errors name the file asked for, not the temporary one.
        let mut f = File::create(&tmp).map_err(io_err("write", path))?;
        f.write_all(bytes).map_err(io_err("write", path))?;
        f.sync_all().map_err(io_err("write", path))?;
        std::fs::rename(&tmp, path).map_err(io_err("write", path))?;
        // Make the rename itself durable.
        if let Some(dir) = tmp.parent()
            && let Ok(d) = File::open(dir)
        {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Removes the temporary files that [`write_atomic`] left in `dir` when its process was
/// killed mid-write. Returns how many it removed.
pub fn remove_stale_temporaries(dir: impl AsRef<Path>) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') && name.contains(".tmp-") && std::fs::remove_file(e.path()).is_ok()
        {
            removed += 1;
        }
    }
    removed
}

/// Writes `values` as a little-endian float32 NumPy `.npy` array (format 1.0) of `shape`,
/// atomically. `values` must hold exactly the product of `shape`.
pub fn write_npy(path: impl AsRef<Path>, shape: &[usize], values: &[f32]) -> Result<()> {
    let path = path.as_ref();
    if shape.iter().product::<usize>() != values.len() {
        return Err(DataError::InvalidArgument(format!(
            "{}: {} values do not fill an array of shape {shape:?}",
            path.display(),
            values.len()
        )));
    }
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
    // Magic (6) + version (2) + length (2) + header, padded with spaces to a multiple of 64,
    // ending in \n.
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat(total.div_ceil(64) * 64 - total));
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    for v in values {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    write_atomic(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_writes_replace_whole_files_and_leave_no_temporaries() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.txt");
        write_atomic(&p, b"first").unwrap();
        write_atomic(&p, b"second").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"second");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        // A write into a missing folder fails, naming the file, and leaves nothing.
        let target = dir.path().join("no/such.txt");
        let err = write_atomic(&target, b"x").unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "cannot write {}: No such file or directory (os error 2)",
                target.display()
            )
        );
        // A temporary left by a killed writer is cleaned up.
        std::fs::write(dir.path().join(".b.txt.tmp-999"), b"half").unwrap();
        assert_eq!(remove_stale_temporaries(dir.path()), 1);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn npy_files_have_numpys_header_and_the_values() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.npy");
        write_npy(&p, &[2, 3], &[0.0, 1.0, 2.0, 3.0, 4.0, 5.5]).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
        let len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert_eq!((10 + len) % 64, 0, "the header pads to 64 bytes");
        let header = std::str::from_utf8(&bytes[10..10 + len]).unwrap();
        assert!(
            header.contains("'shape': (2, 3)") && header.ends_with('\n'),
            "{header}"
        );
        let last = f32::from_le_bytes(bytes[bytes.len() - 4..].try_into().unwrap());
        assert_eq!((bytes.len() - 10 - len, last), (24, 5.5));
        assert!(write_npy(&p, &[4], &[1.0]).is_err());
    }
}
