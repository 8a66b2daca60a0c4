//! `cargo xtask train` and `cargo xtask dist`: CUDA-enabled training through the release
//! binary, and a carryable build for machines with PyTorch but no Rust.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// The launcher written beside the binary by `dist`.
pub const RUN_SH: &str = include_str!("run.sh");

fn build_release(root: &Path, cargo: &str) -> Result<PathBuf> {
    let status = Command::new(cargo)
        .args(["build", "--release", "-p", "vae-cli"])
        .current_dir(root)
        .status()?;
    if !status.success() {
        bail!("cargo build --release -p vae-cli failed");
    }
    Ok(root.join("target/release/vae"))
}

/// Asks the binary what libtorch can do here.
fn info(vae: &Path) -> Result<Value> {
    let out = Command::new(vae)
        .args(["info", "--json"])
        .output()
        .with_context(|| format!("cannot run {}", vae.display()))?;
    if !out.status.success() {
        bail!(
            "`vae info` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// Which device to train on, or why CUDA cannot be used, in one sentence.
pub fn choose_device(info: &Value, want_cuda: bool) -> Result<(String, String)> {
    let has_cuda = info["libtorch_has_cuda"].as_bool().unwrap_or(false);
    let devices = info["cuda_devices"].as_i64().unwrap_or(0);
    let missing = if !has_cuda {
        Some(
            "the libtorch in use is CPU-only (no libtorch_cuda); run `cargo xtask download` on a machine with a CUDA build of PyTorch 2.11, or set LIBTORCH to one",
        )
    } else if devices == 0 {
        Some(
            "libtorch has CUDA but no CUDA device is visible: check the NVIDIA driver (nvidia-smi) and CUDA_VISIBLE_DEVICES",
        )
    } else {
        None
    };
    match (missing, want_cuda) {
        (Some(why), true) => bail!("--cuda asked for, but {why}"),
        (Some(why), false) => Ok(("cpu".into(), format!("training on the CPU: {why}"))),
        (None, _) => Ok((
            "cuda".into(),
            format!("training on CUDA ({devices} device(s) visible; using cuda:0)"),
        )),
    }
}

/// `cargo xtask train`.
pub fn train(root: &Path, cargo: &str, want_cuda: bool, args: &[String]) -> Result<()> {
    let vae = build_release(root, cargo)?;
    let (device, why) = choose_device(&info(&vae)?, want_cuda)?;
    eprintln!("xtask: {why}");
    if args
        .iter()
        .any(|a| a == "--device" || a.starts_with("--device="))
    {
        bail!("pass the device with --cuda (or nothing), not --device after --");
    }
    let status = Command::new(&vae)
        .arg("train")
        .args(["--device", &device])
        .args(args)
        .current_dir(root)
        .status()?;
    if !status.success() {
        bail!("vae train exited with {status}");
    }
    Ok(())
}

/// Writes `binary` and `run.sh` into `out`.
pub fn package(binary: &Path, out: &Path) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    std::fs::copy(binary, out.join("vae"))
        .with_context(|| format!("cannot copy {}", binary.display()))?;
    let script = out.join("run.sh");
    std::fs::write(&script, RUN_SH)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
    }
    Ok(())
}

/// `cargo xtask dist`.
pub fn dist(root: &Path, cargo: &str) -> Result<()> {
    let vae = build_release(root, cargo)?;
    let out = root.join("target/dist");
    package(&vae, &out)?;
    println!(
        "wrote {0}/vae and {0}/run.sh: copy the folder to a machine with PyTorch 2.11 and run `./run.sh train --device cuda` (libtorch itself is not included)",
        out.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn device_choice_names_the_missing_part() {
        let cpu_only = json!({"libtorch_has_cuda": false, "cuda_devices": 0});
        let no_device = json!({"libtorch_has_cuda": true, "cuda_devices": 0});
        let gpu = json!({"libtorch_has_cuda": true, "cuda_devices": 2});
        let e = choose_device(&cpu_only, true).unwrap_err().to_string();
        assert!(e.contains("CPU-only"), "{e}");
        let e = choose_device(&no_device, true).unwrap_err().to_string();
        assert!(e.contains("no CUDA device is visible"), "{e}");
        let (d, why) = choose_device(&no_device, false).unwrap();
        assert_eq!(d, "cpu");
        assert!(why.contains("no CUDA device"));
        assert_eq!(choose_device(&gpu, true).unwrap().0, "cuda");
        assert_eq!(choose_device(&gpu, false).unwrap().0, "cuda");
    }

    #[test]
    fn package_writes_an_executable_launcher() {
        let d = tempfile::tempdir().unwrap();
        let fake = d.path().join("bin");
        std::fs::write(&fake, b"#!/bin/sh\necho hi\n").unwrap();
        package(&fake, &d.path().join("dist")).unwrap();
        let script = std::fs::read_to_string(d.path().join("dist/run.sh")).unwrap();
        assert!(script.starts_with("#!/bin/sh") && script.contains("exec \"$here/vae\""));
        assert!(d.path().join("dist/vae").is_file());
    }
}
