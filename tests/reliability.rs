//! Interruptions lose nothing: SIGKILL at arbitrary points (checkpoint writes included) and
//! SIGINT, each followed by `--resume`.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use vae_train::Checkpoint;

/// 32 training images in batches of 16: two steps an epoch, so checkpoints are written all the
/// time and a kill often lands inside one.
fn spawn_train(data: &Path, run: &Path, resume: bool, epochs: usize) -> Child {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vae"));
    c.arg("train").arg("--data").arg(data);
    if resume {
        c.arg("--resume")
            .arg(run)
            .args(["--epochs", &epochs.to_string()]);
    } else {
        c.arg("--out")
            .arg(run)
            .args(["--epochs", &epochs.to_string()]);
        c.args([
            "--latent-dim",
            "2",
            "--channels",
            "4",
            "--batch-size",
            "16",
            "--validation-size",
            "16",
        ]);
        c.args(["--device", "cpu", "--threads", "1"]);
    }
    c.stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn temporaries(run: &Path) -> Vec<String> {
    std::fs::read_dir(run)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains(".tmp-"))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn sigkill_at_many_points_then_resume_always_continues_from_a_whole_checkpoint() {
    let data = tempfile::tempdir().unwrap();
    synthetic_mnist(data.path(), 48, 8, 8);
    let runs = tempfile::tempdir().unwrap();
    let run = runs.path().join("r");
    let last = run.join("last.safetensors");
    let mut step = 0;
    // Staggered delays so kills land at different phases of steps and writes.
    for (i, ms) in [900u64, 1310, 770, 1150, 1640, 980].into_iter().enumerate() {
        let resume = last.exists();
        let mut child = spawn_train(data.path(), &run, resume, 100_000);
        std::thread::sleep(Duration::from_millis(ms));
        child.kill().unwrap();
        child.wait().unwrap();
        if last.exists() {
            let ckpt = Checkpoint::load(&last)
                .unwrap_or_else(|e| panic!("kill {i}: checkpoint damaged: {e}"));
            assert!(ckpt.state.step >= step, "kill {i}: progress went backwards");
            step = ckpt.state.step;
        }
    }
    assert!(step > 0, "training made no progress between kills");
    // Finish cleanly: two more epochs than the checkpoint has.
    let epochs = Checkpoint::load(&last).unwrap().state.history.len() + 2;
    let child = spawn_train(data.path(), &run, true, epochs);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let done = Checkpoint::load(&last).unwrap();
    assert_eq!(done.state.history.len(), epochs);
    assert!(done.state.step > step);
    assert!(
        temporaries(&run).is_empty(),
        "left behind: {:?}",
        temporaries(&run)
    );
}

#[test]
fn sigint_writes_a_checkpoint_exits_130_and_resumes() {
    let data = tempfile::tempdir().unwrap();
    synthetic_mnist(data.path(), 48, 8, 8);
    let runs = tempfile::tempdir().unwrap();
    let run = runs.path().join("r");
    let last = run.join("last.safetensors");
    let child = spawn_train(data.path(), &run, false, 100_000);
    let started = Instant::now();
    while !last.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no checkpoint within a minute"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    let status = Command::new("kill")
        .args(["-s", "INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains("interrupted at step") && stderr.contains("--resume"),
        "{stderr}"
    );
    let ckpt = Checkpoint::load(&last).unwrap();
    let epochs = ckpt.state.history.len() + 1;
    let out = spawn_train(data.path(), &run, true, epochs)
        .wait_with_output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let done = Checkpoint::load(&last).unwrap();
    assert_eq!(done.state.history.len(), epochs);
    assert!(done.state.step > ckpt.state.step);
}
