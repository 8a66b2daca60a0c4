//! Making a libtorch for tch 0.24 (PyTorch 2.11) available, and pointing `.libtorch` at it.
//!
//! Order: `$LIBTORCH` if set; an existing Python whose `torch` is 2.11.x; otherwise `pip install
//! torch==2.11.0` into the project's `.venv`. The result is the symlink `<root>/.libtorch`,
//! which `.cargo/config.toml` hands to torch-sys as `LIBTORCH`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The PyTorch version tch 0.24 is built against.
pub const TORCH_VERSION: &str = "2.11.0";

/// A libtorch found on this machine.
#[derive(Debug, Clone)]
pub struct Libtorch {
    /// The folder holding `include/` and `lib/` (a Python package's `torch/`, or an unpacked
    /// libtorch archive).
    pub dir: PathBuf,
    /// Its version, e.g. `2.11.0+cu130`.
    pub version: String,
    /// The Python it belongs to, if any.
    pub python: Option<PathBuf>,
}

impl Libtorch {
    /// Whether it was built with CUDA (ships `libtorch_cuda.so`).
    pub fn has_cuda(&self) -> bool {
        self.dir.join("lib/libtorch_cuda.so").exists()
    }
}

fn version_matches(version: &str) -> bool {
    let base = version.split('+').next().unwrap_or(version);
    let want: Vec<&str> = TORCH_VERSION.split('.').collect();
    let have: Vec<&str> = base.split('.').collect();
    have.len() >= 2 && have[..2] == want[..2]
}

/// Reads the version of a libtorch folder: `build-version` (libtorch archives) or
/// `version.py` (Python packages).
fn dir_version(dir: &Path) -> Option<String> {
    if let Ok(v) = std::fs::read_to_string(dir.join("build-version")) {
        return Some(v.trim().to_string());
    }
    let py = std::fs::read_to_string(dir.join("version.py")).ok()?;
    py.lines().find_map(|l| {
        let rest = l.strip_prefix("__version__")?;
        let v = rest.split(['\'', '"']).nth(1)?;
        Some(v.to_string())
    })
}

fn check_dir(dir: &Path) -> Result<Libtorch> {
    if !dir.join("include/torch").is_dir() || !dir.join("lib").is_dir() {
        bail!(
            "{} is not a libtorch folder (it needs include/torch and lib/)",
            dir.display()
        );
    }
    let version = dir_version(dir).with_context(|| {
        format!(
            "{}: cannot tell the libtorch version (no build-version or version.py)",
            dir.display()
        )
    })?;
    Ok(Libtorch {
        dir: dir.to_path_buf(),
        version,
        python: None,
    })
}

/// Asks `python` for its torch's version and folder.
fn query_python(python: &Path) -> Option<Libtorch> {
    let out = Command::new(python)
        .args([
            "-c",
            "import os, torch; print(torch.__version__); print(os.path.dirname(torch.__file__))",
        ])
        .env("PYTHONWARNINGS", "ignore")
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let version = lines.next()?.trim().to_string();
    let dir = PathBuf::from(lines.next()?.trim());
    Some(Libtorch {
        dir,
        version,
        python: Some(python.to_path_buf()),
    })
}

/// The Pythons to ask, in order: the project's venv, `$VAE_PYTHON`, a system-wide PyTorch venv
/// (GPU machines ship one at `/opt/torch/.venv`), then `python3` and `python` on `PATH`.
fn python_candidates(root: &Path) -> Vec<PathBuf> {
    let mut c = vec![root.join(".venv/bin/python")];
    if let Some(p) = std::env::var_os("VAE_PYTHON") {
        c.insert(0, PathBuf::from(p));
    }
    c.push(PathBuf::from("/opt/torch/.venv/bin/python3"));
    c.push(PathBuf::from("python3"));
    c.push(PathBuf::from("python"));
    c
}

/// The libtorch `.libtorch` points at now, if it is usable.
pub fn current(root: &Path) -> Option<Libtorch> {
    let link = root.join(".libtorch");
    let dir = std::fs::canonicalize(&link).ok()?;
    let mut lt = check_dir(&dir).ok()?;
    // The python owning a `torch/` package folder sits three levels up (lib/pythonX/site-packages).
    lt.python = python_candidates(root).into_iter().find(|p| {
        query_python(p).is_some_and(|q| std::fs::canonicalize(&q.dir).ok().as_deref() == Some(&dir))
    });
    version_matches(&lt.version).then_some(lt)
}

fn link(root: &Path, lt: &Libtorch) -> Result<()> {
    let link = root.join(".libtorch");
    let dir = std::fs::canonicalize(&lt.dir)
        .with_context(|| format!("{} does not exist", lt.dir.display()))?;
    let root = std::fs::canonicalize(root)?;
    if dir == root.join(".libtorch") {
        bail!("refusing to point .libtorch at itself");
    }
    // Relative inside the repository (so the checkout can move), absolute outside it.
    let target = dir
        .strip_prefix(&root)
        .map(Path::to_path_buf)
        .unwrap_or(dir.clone());
    if link.symlink_metadata().is_ok() {
        std::fs::remove_file(&link)
            .with_context(|| format!("cannot replace {}", link.display()))?;
    }
    symlink(&target, &link).with_context(|| format!("cannot create {}", link.display()))
}

#[cfg(unix)]
fn symlink(target: &Path, link: &Path) -> std::io::Result<()> {
    std::os::unix::fs::symlink(target, link)
}

#[cfg(windows)]
fn symlink(target: &Path, link: &Path) -> std::io::Result<()> {
    std::os::windows::fs::symlink_dir(target, link)
}

/// The project's virtual environment's Python (`<root>/.venv`), created if missing.
pub fn venv_python(root: &Path) -> Result<PathBuf> {
    let venv = root.join(".venv");
    let python = venv.join("bin/python");
    if !python.exists() {
        eprintln!(
            "creating a Python virtual environment in {}",
            venv.display()
        );
        let base = ["python3", "python"]
            .into_iter()
            .find(|p| Command::new(p).arg("--version").output().is_ok_and(|o| o.status.success()))
            .context("no python3 on PATH: install Python 3 (with venv and pip), or set LIBTORCH to an unpacked libtorch 2.11")?;
        let status = Command::new(base)
            .args(["-m", "venv"])
            .arg(&venv)
            .status()?;
        if !status.success() {
            bail!(
                "`{base} -m venv {}` failed (on Debian/Ubuntu: apt-get install python3-venv)",
                venv.display()
            );
        }
    }
    Ok(python)
}

/// The `tensorboard` package the tests read event files back with.
pub const TENSORBOARD: &str = "tensorboard==2.21.0";

/// Installs [`TENSORBOARD`] into the project's venv unless it is there; returns the venv's
/// Python.
pub fn ensure_tensorboard(root: &Path) -> Result<PathBuf> {
    let python = venv_python(root)?;
    let has = Command::new(&python)
        .args(["-c", "import tensorboard"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has {
        eprintln!(
            "installing {TENSORBOARD} from PyPI into {} (for the tests)",
            python.display()
        );
        pip_install(&python, &[TENSORBOARD])?;
    }
    Ok(python)
}

/// `python -m pip install --quiet <args>`, an error naming what failed.
fn pip_install(python: &Path, args: &[&str]) -> Result<()> {
    let status = Command::new(python)
        .args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--quiet",
        ])
        .args(args)
        .status()
        .with_context(|| format!("cannot run {}", python.display()))?;
    if !status.success() {
        bail!(
            "pip could not install {} (see its output above)",
            args.join(" ")
        );
    }
    Ok(())
}

/// The CUDA headers that NCCL's process group includes and the torch wheel lacks (`crt/`,
/// and CCCL's `nv/`), pinned to the CUDA 13.0 of torch 2.11's wheel.
pub const CUDA_HEADERS: [&str; 2] = ["nvidia-cuda-crt==13.0.88", "nvidia-cuda-cccl==13.0.85"];

/// Installs [`CUDA_HEADERS`] into `<root>/.cuda-headers` (where `vae-train`'s build script
/// looks) unless they are there; returns their include folder.
pub fn ensure_cuda_headers(root: &Path) -> Result<PathBuf> {
    let target = root.join(".cuda-headers");
    let include = target.join("nvidia/cu13/include");
    if include.join("crt/host_config.h").exists() && include.join("nv/target").exists() {
        return Ok(include);
    }
    let python = venv_python(root)?;
    eprintln!(
        "installing {} into {} (about 20 MB of headers, for NCCL)",
        CUDA_HEADERS.join(" "),
        target.display()
    );
    let target_arg = target.display().to_string();
    let mut args = vec!["--no-deps", "--target", &target_arg];
    args.extend(CUDA_HEADERS);
    pip_install(&python, &args)?;
    Ok(include)
}

/// Makes libtorch available and returns it. `force` reinstalls into `.venv` even when one is
/// found.
pub fn ensure(root: &Path, force: bool) -> Result<Libtorch> {
    // 1. An explicit LIBTORCH wins. `.cargo/config.toml` sets LIBTORCH to our own link for
    //    every process cargo runs, this one included: that one is not a user's choice.
    if let Some(dir) = std::env::var_os("LIBTORCH").filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        let ours = dir.file_name() == Some(".libtorch".as_ref())
            && dir.parent().and_then(|p| std::fs::canonicalize(p).ok())
                == std::fs::canonicalize(root).ok();
        if !ours {
            let lt = check_dir(&dir).context("LIBTORCH is set but unusable")?;
            if !version_matches(&lt.version) {
                bail!(
                    "LIBTORCH={} holds torch {}, but tch 0.24 needs PyTorch {TORCH_VERSION}; unset LIBTORCH or point it at a {TORCH_VERSION} libtorch",
                    dir.display(),
                    lt.version
                );
            }
            link(root, &lt)?;
            return Ok(lt);
        }
    }
    if !force && let Some(lt) = current(root) {
        return Ok(lt);
    }

    // 2. An existing Python with torch 2.11.
    let mut wrong = Vec::new();
    if !force {
        for python in python_candidates(root) {
            match query_python(&python) {
                Some(lt) if version_matches(&lt.version) => {
                    link(root, &lt)?;
                    return Ok(lt);
                }
                Some(lt) => wrong.push(format!("{} has torch {}", python.display(), lt.version)),
                None => {}
            }
        }
    }
    for w in &wrong {
        eprintln!(
            "note: {w}, but tch 0.24 needs {TORCH_VERSION}; installing {TORCH_VERSION} into .venv instead"
        );
    }

    // 3. Install into the project's venv.
    let venv = root.join(".venv");
    let python = venv_python(root)?;
    eprintln!(
        "installing torch=={TORCH_VERSION} from PyPI into {} (about 4.6 GB; pip shows its progress)",
        venv.display()
    );
    let status = Command::new(&python)
        .args(["-m", "pip", "install", "--disable-pip-version-check"])
        .arg(format!("torch=={TORCH_VERSION}"))
        .status()
        .with_context(|| format!("cannot run {}", python.display()))?;
    if !status.success() {
        bail!("pip could not install torch=={TORCH_VERSION} (see its output above)");
    }
    match query_python(&python) {
        Some(lt) if version_matches(&lt.version) => {
            link(root, &lt)?;
            Ok(lt)
        }
        Some(lt) => bail!(
            "pip installed torch {}, expected {TORCH_VERSION}",
            lt.version
        ),
        None => bail!(
            "{} cannot import torch after installing it",
            python.display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_match_on_major_minor() {
        assert!(version_matches("2.11.0"));
        assert!(version_matches("2.11.0+cu130"));
        assert!(version_matches("2.11.1+cpu"));
        assert!(!version_matches("2.10.0"));
        assert!(!version_matches("2.1.0"));
    }

    #[test]
    fn reads_version_from_a_package_or_an_archive() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("include/torch")).unwrap();
        std::fs::create_dir_all(d.path().join("lib")).unwrap();
        std::fs::write(
            d.path().join("version.py"),
            "from x import y\n__version__ = '2.11.0+cu130'\n",
        )
        .unwrap();
        assert_eq!(check_dir(d.path()).unwrap().version, "2.11.0+cu130");
        std::fs::write(d.path().join("build-version"), "2.9.1+cpu\n").unwrap();
        assert_eq!(check_dir(d.path()).unwrap().version, "2.9.1+cpu");
        let empty = tempfile::tempdir().unwrap();
        let err = check_dir(empty.path()).unwrap_err().to_string();
        assert!(err.contains("not a libtorch folder"), "{err}");
    }
}
