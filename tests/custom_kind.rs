//! A model kind defined outside vae-rs trains through its library: the `examples/mlp-vae`
//! crate, copied into a separate workspace that depends on `vae-data`, `vae-model` and
//! `vae-train` by path, registers its MLP VAE, trains it for an epoch, resumes it for a
//! second, evaluates it and reloads its checkpoint. The `vae` binary, which does not know
//! that kind, refuses the run in one sentence that names it.

mod common;

use std::path::Path;

/// Copies `from` (files and folders) into `to`.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn a_kind_defined_in_another_workspace_trains_resumes_evaluates_and_reloads() {
    let root = common::root();
    let dir = tempfile::tempdir().unwrap();
    let crate_dir = dir.path().join("mlp-vae");
    copy_tree(&root.join("examples/mlp-vae"), &crate_dir);
    let manifest = crate_dir.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let crates = format!("{}/crates/", root.display());
    std::fs::write(&manifest, text.replace("../../crates/", &crates)).unwrap();
    let data = dir.path().join("data");
    common::synthetic_mnist(&data, 300, 40, 28);
    let run = dir.path().join("run");

    let out = common::cargo_run_apart(
        &crate_dir,
        &[data.as_os_str(), run.as_os_str(), "300".as_ref()],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // 300 images less a validation fifth, in batches of 32: 7 full steps an epoch.
    assert!(
        stdout.contains("trained the mlp model 1 epoch, 7 steps"),
        "{stdout}"
    );
    let resumed = stdout
        .lines()
        .find(|l| l.starts_with("resumed to 2 epochs, 14 steps; validation ELBO "))
        .unwrap_or_else(|| panic!("{stdout}"));
    let elbos: Vec<f64> = resumed
        .split_once("validation ELBO ")
        .unwrap()
        .1
        .split(' ')
        .filter_map(|w| w.parse().ok())
        .collect();
    // The second epoch's validation ELBO is better: the resumed run kept learning.
    assert!(elbos[1] > elbos[0] && elbos[1] < 0.0, "{stdout}");
    let test = stdout
        .lines()
        .find(|l| l.starts_with("test ELBO "))
        .unwrap_or_else(|| panic!("{stdout}"));
    let figures: Vec<f64> = test
        .split([' ', ','])
        .filter_map(|w| w.parse().ok())
        .collect();
    // [ELBO, IW bound, images]: finite and negative, and the IW bound is the tighter.
    let (elbo, iw) = (figures[0], figures[1]);
    assert_eq!(figures[2], 40.0, "{stdout}");
    assert!(elbo < 0.0 && iw < 0.0 && iw > elbo, "{stdout}");
    assert!(
        stdout.contains("reloaded the mlp model, decode difference 0, samples [4, 1, 28, 28]"),
        "{stdout}"
    );
    // The run's files are those of any run.
    let config = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(config.contains("kind = \"mlp\""), "{config}");

    // `vae` registers only the built-in kinds: it says which kind it cannot read.
    let out = common::vae(&[
        "eval",
        "--run",
        run.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
    ]);
    let (_, stderr) = common::text(&out);
    assert!(!out.status.success());
    assert!(
        stderr.contains("unknown model kind `mlp`") && stderr.contains("`conv`, `ladder`"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}
