//! What a new user meets with the defaults: a small data set, two trainers on one run
//! directory, a run stopped by a step limit, and the sentences errors are told in.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use vae_train::Checkpoint;

/// A trainer child process, killed when dropped so that a failing assertion leaves no
/// training process behind.
struct Trainer(Option<Child>);

impl Trainer {
    fn id(&self) -> u32 {
        self.0.as_ref().unwrap().id()
    }

    fn child(&mut self) -> &mut Child {
        self.0.as_mut().unwrap()
    }

    /// Waits for it to exit and returns its standard error.
    fn stderr(mut self) -> String {
        let out = self.0.take().unwrap().wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}

impl Drop for Trainer {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn spawn(args: &[&str]) -> Trainer {
    Trainer(Some(
        Command::new(env!("CARGO_BIN_EXE_vae"))
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    ))
}

fn wait_for(path: &Path) {
    let started = Instant::now();
    while !path.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{} did not appear",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_six_thousand_image_set_trains_with_the_default_validation_split() {
    let data = tempfile::tempdir().unwrap();
    synthetic_mnist(data.path(), 6000, 20, 28);
    let runs = tempfile::tempdir().unwrap();
    let run = runs.path().join("r");
    // The defaults but one epoch: the validation split is a sixth of the set, 1,000 images.
    let out = vae(&train_args(
        data.path().to_str().unwrap(),
        run.to_str().unwrap(),
        "1",
        &["--device", "cpu"],
    ));
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let ckpt = Checkpoint::load(run.join("last.safetensors")).unwrap();
    // 5,000 training images in batches of 128.
    assert_eq!(ckpt.state.step, 5000 / 128);
    assert_eq!(ckpt.train_config.validation_size, None);
    // A split that does not fit names the setting that changes it.
    let out = vae(&[
        "train",
        "--data",
        data.path().to_str().unwrap(),
        "--out",
        runs.path().join("too-many").to_str().unwrap(),
        "--validation-size",
        "6000",
    ]);
    assert!(!out.status.success());
    assert_eq!(
        text(&out).1.trim(),
        "error: invalid training configuration: cannot hold out 6000 validation images from a training set of 6000: set validation_size (--validation-size) between 1 and 5999"
    );
}

#[test]
fn one_process_holds_a_run_directory_and_a_killed_one_lets_go() {
    let data = tempfile::tempdir().unwrap();
    synthetic_mnist(data.path(), 48, 8, 8);
    let (d, runs) = (data.path().to_str().unwrap(), tempfile::tempdir().unwrap());
    let run = runs.path().join("r");
    let r = run.to_str().unwrap();
    let small = [&TINY[..], &QUICK[..], &["--validation-size", "16"][..]].concat();
    let mut first = spawn(&train_args(d, r, "100000", &small));
    wait_for(&run.join("last.safetensors"));
    let holder = format!(
        "error: {r} is in use by another vae process (pid {}); wait for it to finish, or stop it",
        first.id()
    );

    // A second trainer on the same directory, resuming or starting, is refused.
    for second in [
        vec!["train", "--data", d, "--resume", r],
        [
            vec!["train", "--data", d, "--out", r, "--epochs", "3"],
            small.to_vec(),
        ]
        .concat(),
    ] {
        let out = vae(&second);
        assert!(!out.status.success(), "{second:?} trained beside the first");
        assert_eq!(text(&out).1.trim(), holder, "{second:?}");
    }
    // Read-only commands work while it trains.
    let out = vae(&[
        "eval",
        "--run",
        r,
        "--checkpoint",
        "last",
        "--data",
        d,
        "--iw-samples",
        "0",
    ]);
    assert!(out.status.success(), "{}", text(&out).1);

    // Killed, it leaves no lock behind: the run resumes with no manual step.
    first.child().kill().unwrap();
    first.child().wait().unwrap();
    let epochs = Checkpoint::load(run.join("last.safetensors"))
        .unwrap()
        .state
        .history
        .len()
        + 1;
    let out = vae(&[
        "train",
        "--data",
        d,
        "--resume",
        r,
        "--epochs",
        &epochs.to_string(),
    ]);
    assert!(out.status.success(), "{}", text(&out).1);

    // Two trainers racing to create one directory: one trains, the other is refused.
    let fresh = runs.path().join("race");
    let f = fresh.to_str().unwrap();
    let args = train_args(d, f, "100000", &small);
    let (mut a, mut b) = (spawn(&args), spawn(&args));
    let started = Instant::now();
    let refused = loop {
        if let Some(status) = a.child().try_wait().unwrap() {
            break (a, b, status);
        }
        if let Some(status) = b.child().try_wait().unwrap() {
            break (b, a, status);
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "neither was refused"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let (loser, mut winner, status) = refused;
    assert!(!status.success());
    let stderr = loser.stderr();
    assert_eq!(
        stderr.trim(),
        format!(
            "error: {f} is in use by another vae process (pid {}); wait for it to finish, or stop it",
            winner.id()
        )
    );
    assert!(
        winner.child().try_wait().unwrap().is_none(),
        "the winner trains on"
    );
}

#[test]
fn a_run_stopped_by_the_step_limit_resumes_to_its_end() {
    let data = tempfile::tempdir().unwrap();
    synthetic_mnist(data.path(), 48, 8, 8);
    let runs = tempfile::tempdir().unwrap();
    let run = runs.path().join("r");
    let (d, r) = (data.path().to_str().unwrap(), run.to_str().unwrap());
    let out = vae(&train_args(
        d,
        r,
        "2",
        &[
            &QUICK[..],
            &["--validation-size", "16", "--max-steps", "1"][..],
        ]
        .concat(),
    ));
    assert!(out.status.success(), "{}", text(&out).1);
    assert!(text(&out).1.contains("stopped at step 1 (step limit)"));
    // The limit belonged to that invocation: the resumed run trains its two epochs.
    let out = vae(&["train", "--data", d, "--resume", r]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("test ELBO"), "{stdout}");
    let done = Checkpoint::load(run.join("last.safetensors")).unwrap();
    assert_eq!((done.state.step, done.state.history.len()), (4, 2));
}

#[test]
fn errors_say_what_failed_where_and_the_cause_once() {
    let data = tempfile::tempdir().unwrap();
    synthetic_mnist(data.path(), 48, 8, 8);
    let d = data.path().to_str().unwrap();
    let empty = tempfile::tempdir().unwrap();
    let e = empty.path().to_str().unwrap();
    let missing_file = format!("{e}/best.safetensors");
    let cases: Vec<(Vec<&str>, String)> = vec![
        (
            vec!["train", "--data", d, "--out", "/proc/vae-run"],
            "error: cannot create the run directory /proc/vae-run: No such file or directory (os error 2)".into(),
        ),
        (
            vec!["train", "--data", d, "--resume", e],
            format!("error: cannot resume {e}: it holds no last.safetensors (name a run directory that vae train wrote, or start a new run with --out)"),
        ),
        (
            vec!["eval", "--run", e, "--data", d],
            format!("error: {e}/best.safetensors not found: is {e} a run directory made by `vae train`?"),
        ),
        (
            vec!["eval", "--run", &missing_file, "--data", d],
            format!("error: {e}/best.safetensors not found: is {e}/best.safetensors a run directory made by `vae train`?"),
        ),
        (
            vec!["train", "--data", d, "--config", "/nonexistent/run.toml"],
            "error: cannot read config /nonexistent/run.toml: No such file or directory (os error 2)".into(),
        ),
    ];
    for (args, want) in cases {
        let out = vae(&args);
        assert!(!out.status.success(), "{args:?}");
        assert_eq!(text(&out).1.trim(), want, "{args:?}");
    }
}
