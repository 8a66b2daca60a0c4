//! The carryable build: the binary and `run.sh` (as `cargo xtask dist` lays them out) run from
//! another folder, finding libtorch through a Python's torch.

mod common;

use std::process::Command;

use common::*;

#[test]
fn dist_layout_runs_from_another_folder() {
    let dist = tempfile::tempdir().unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_vae"), dist.path().join("vae")).unwrap();
    let script = dist.path().join("run.sh");
    std::fs::copy(root().join("xtask/src/run.sh"), &script).unwrap();
    let elsewhere = tempfile::tempdir().unwrap();

    let out = Command::new("sh")
        .arg(&script)
        .args(["info", "--json"])
        .current_dir(elsewhere.path())
        .env("VAE_PYTHON", torch_python())
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert!(v["threads"].as_i64().unwrap() >= 1);
    assert!(v["auto_device"].is_string());

    // No Python with torch anywhere: one clear sentence.
    let empty = tempfile::tempdir().unwrap();
    let out = Command::new("/bin/sh")
        .arg(&script)
        .arg("--help")
        .current_dir(elsewhere.path())
        .env("VAE_PYTHON", "/nonexistent/python")
        .env("PATH", format!("{}:/bin:/usr/bin", empty.path().display()))
        .output()
        .unwrap();
    let stderr = text(&out).1;
    if !out.status.success() {
        assert!(
            stderr.contains("no Python with torch 2.11 found"),
            "{stderr}"
        );
    }
}
