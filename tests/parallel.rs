//! Data-parallel training on libtorch's c10d (Gloo over loopback): two ranks train the model
//! one process trains, through `vae train --nproc` and the real `torchrun`; a lost rank ends
//! the job and the run resumes; SIGINT stops every rank with a whole checkpoint.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use vae_train::Checkpoint;

/// Steps of the comparison runs.
const STEPS: &str = "40";

/// `vae train` of a small conv model on `data`, fp32 on one CPU thread, a global batch of 16.
fn train_command(data: &Path, out: &Path, epochs: &str, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "train".into(),
        "--data".into(),
        data.display().to_string(),
        "--out".into(),
        out.display().to_string(),
        "--epochs".into(),
        epochs.into(),
    ];
    a.extend(
        [
            "--latent-dim",
            "4",
            "--channels",
            "8",
            "--batch-size",
            "16",
            "--validation-size",
            "32",
            "--precision",
            "fp32",
            "--device",
            "cpu",
            "--threads",
            "1",
            "--no-tensorboard",
        ]
        .map(String::from),
    );
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("the command runs");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The f32 tensors of a safetensors file.
fn weights(path: &Path) -> HashMap<String, Vec<f32>> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .filter(|(_, t)| t.dtype() == safetensors::Dtype::F32)
        .map(|(name, t)| {
            let v = t
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            (name, v)
        })
        .collect()
}

/// The largest |a − b| over every weight, relative to the largest |a|.
fn relative_difference(a: &HashMap<String, Vec<f32>>, b: &HashMap<String, Vec<f32>>) -> f64 {
    assert_eq!(
        a.keys().collect::<std::collections::BTreeSet<_>>(),
        b.keys().collect(),
        "the same variables"
    );
    let (mut diff, mut scale) = (0f64, 0f64);
    for (k, x) in a {
        for (p, q) in x.iter().zip(&b[k]) {
            diff = diff.max((f64::from(*p) - f64::from(*q)).abs());
            scale = scale.max(f64::from(*p).abs());
        }
    }
    diff / scale
}

/// torchrun beside the Python that `cargo xtask download` set up, when there is one.
fn torchrun() -> Option<PathBuf> {
    let recorded = std::fs::read_to_string(root().join(".libtorch-python")).ok()?;
    let t = Path::new(recorded.trim()).parent()?.join("torchrun");
    t.is_file().then_some(t)
}

/// Tolerance of a 2-rank run against one process after 40 steps: the two sum the batch's
/// gradients in different orders (two halves, then across ranks), so they differ by float
/// rounding, which Adam's normalised steps carry along.
const TOLERANCE: f64 = 1e-5;

#[test]
fn two_ranks_hold_identical_weights_and_match_one_process() {
    let data = tempfile::tempdir().unwrap();
    synthetic_mnist(data.path(), 256, 32, 12);
    let runs = tempfile::tempdir().unwrap();
    let dumps = |name: &str| {
        let d = runs.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        d
    };
    let vae = env!("CARGO_BIN_EXE_vae");
    let extra = ["--max-steps", STEPS];

    let one = dumps("w1");
    run(Command::new(vae)
        .args(train_command(
            data.path(),
            &runs.path().join("one"),
            "5",
            &extra,
        ))
        .env("VAE_TEST_WEIGHTS_OUT", &one));
    let reference = weights(&one.join("rank0.safetensors"));

    let two = dumps("w2");
    let out = run(Command::new(vae)
        .args(train_command(
            data.path(),
            &runs.path().join("two"),
            "5",
            &extra,
        ))
        .args(["--nproc", "2"])
        .env("VAE_TEST_WEIGHTS_OUT", &two));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("2 processes x 8 images per step"),
        "{stderr}"
    );
    let config = std::fs::read_to_string(runs.path().join("two/config.toml")).unwrap();
    assert!(
        config.starts_with("# trained on 2 processes, 8 images each per step"),
        "{config}"
    );
    let (r0, r1) = (
        std::fs::read(two.join("rank0.safetensors")).unwrap(),
        std::fs::read(two.join("rank1.safetensors")).unwrap(),
    );
    assert!(r0 == r1, "the ranks' weights are bit-identical");
    let d = relative_difference(&reference, &weights(&two.join("rank0.safetensors")));
    eprintln!("2 ranks (--nproc) against 1 process: largest relative difference {d:e}");
    assert!(d > 0.0 && d < TOLERANCE, "2 ranks against 1 process: {d:e}");
    // Rank 0's checkpoint is the run's, at the same step.
    let ckpt = Checkpoint::load(runs.path().join("two/last.safetensors")).unwrap();
    assert_eq!(ckpt.state.step, 40);

    let Some(torchrun) = torchrun() else {
        eprintln!("no torchrun beside the set-up's Python: the torchrun half is skipped");
        return;
    };
    let tr = dumps("wt");
    run(Command::new(torchrun)
        .args(["--nproc-per-node", "2", "--no-python", vae])
        .args(train_command(
            data.path(),
            &runs.path().join("tr"),
            "5",
            &extra,
        ))
        .env("VAE_TEST_WEIGHTS_OUT", &tr));
    assert!(
        std::fs::read(tr.join("rank0.safetensors")).unwrap()
            == std::fs::read(tr.join("rank1.safetensors")).unwrap(),
        "under torchrun too"
    );
    let d = relative_difference(&reference, &weights(&tr.join("rank0.safetensors")));
    eprintln!("2 ranks (torchrun) against 1 process: largest relative difference {d:e}");
    assert!(d < TOLERANCE, "torchrun 2 ranks against 1 process: {d:e}");
}

#[test]
fn free_bits_across_ranks_and_a_resume_at_another_world_size_match_one_process() {
    // Free bits clamp the global batch's per-unit KL means (reduced over the ranks before the
    // clamp); a run stopped on 2 ranks resumes on 1 process (the state is global).
    let data = tempfile::tempdir().unwrap();
    synthetic_mnist(data.path(), 256, 32, 12);
    let runs = tempfile::tempdir().unwrap();
    let vae = env!("CARGO_BIN_EXE_vae");
    let bits = ["--free-bits", "0.3", "--prior", "standard"];
    let one = runs.path().join("w1");
    std::fs::create_dir_all(&one).unwrap();
    run(Command::new(vae)
        .args(train_command(
            data.path(),
            &runs.path().join("one"),
            "5",
            &bits,
        ))
        .args(["--max-steps", STEPS])
        .env("VAE_TEST_WEIGHTS_OUT", &one));

    let dir = runs.path().join("two");
    run(Command::new(vae)
        .args(train_command(data.path(), &dir, "5", &bits))
        .args(["--max-steps", "20", "--nproc", "2"]));
    let resumed = runs.path().join("wr");
    std::fs::create_dir_all(&resumed).unwrap();
    run(Command::new(vae)
        .args(["train", "--data"])
        .arg(data.path())
        .arg("--resume")
        .arg(&dir)
        .args(["--max-steps", STEPS, "--threads", "1"])
        .env("VAE_TEST_WEIGHTS_OUT", &resumed));
    let d = relative_difference(
        &weights(&one.join("rank0.safetensors")),
        &weights(&resumed.join("rank0.safetensors")),
    );
    eprintln!("free bits, 2 ranks then 1 process, against 1 process: {d:e}");
    assert!(d < TOLERANCE, "{d:e}");
}

#[test]
fn settings_that_cannot_split_or_differ_between_ranks_are_refused() {
    let data = tempfile::tempdir().unwrap();
    synthetic_mnist(data.path(), 128, 16, 12);
    let runs = tempfile::tempdir().unwrap();
    let vae = env!("CARGO_BIN_EXE_vae");

    let out = Command::new(vae)
        .args(train_command(
            data.path(),
            &runs.path().join("odd"),
            "1",
            &[],
        ))
        .args(["--nproc", "3"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("batch size 16 does not divide among 3 processes"),
        "{stderr}"
    );

    // A plain launch, as Slurm's variables give one: rank 0 hosts the store; rank 1 was
    // started with another seed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let spawn = |rank: usize, seed: &str| {
        Command::new(vae)
            .args(train_command(
                data.path(),
                &runs.path().join("mixed"),
                "1",
                &["--seed", seed],
            ))
            .env("WORLD_SIZE", "2")
            .env("RANK", rank.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let started = Instant::now();
    let (a, b) = (spawn(0, "1"), spawn(1, "2"));
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    let stderr1 = String::from_utf8_lossy(&b.stderr);
    assert!(!b.status.success() && !a.status.success());
    assert!(
        stderr1.contains("rank 1's settings differ from rank 0's"),
        "{stderr1}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "rank 0 learns of it at once, not at the collective timeout"
    );
}

/// The process ids of `parent`'s children.
fn children(parent: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let tasks = format!("/proc/{parent}/task");
    for t in std::fs::read_dir(tasks).into_iter().flatten().flatten() {
        if let Ok(text) = std::fs::read_to_string(t.path().join("children")) {
            out.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
    }
    out
}

/// The worker of rank `rank` among `pids` (from its environment).
fn rank_of(pids: &[u32], rank: usize) -> Option<u32> {
    let want = format!("RANK={rank}");
    pids.iter().copied().find(|p| {
        std::fs::read(format!("/proc/{p}/environ"))
            .map(|env| env.split(|b| *b == 0).any(|v| v == want.as_bytes()))
            .unwrap_or(false)
    })
}

fn alive(pid: u32) -> bool {
    // A reaped process has no /proc entry; a zombie is not running.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .args(["-s", sig, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn wait_for(path: &Path, child: &mut Child) {
    let started = Instant::now();
    while !path.exists() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the job ended before {} was written",
            path.display()
        );
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no {} within a minute",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits up to `limit` for `child`; its exit code and stderr, and how long it took.
fn wait_within(mut child: Child, limit: Duration) -> (Option<i32>, String, Duration) {
    let started = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            let out = child.wait_with_output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            return (out.status.code(), stderr, started.elapsed());
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            panic!("still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A run of many epochs on small data, started by `launcher` (the command before `vae`'s
/// arguments; empty: `vae` itself) and left once its first checkpoint is written.
struct LongRun {
    data: tempfile::TempDir,
    _runs: tempfile::TempDir,
    dir: PathBuf,
    last: PathBuf,
    child: Child,
}

impl LongRun {
    fn start(launcher: &[&str], extra: &[&str]) -> Self {
        let data = tempfile::tempdir().unwrap();
        synthetic_mnist(data.path(), 256, 32, 12);
        let runs = tempfile::tempdir().unwrap();
        let dir = runs.path().join("r");
        let last = dir.join("last.safetensors");
        let mut cmd = match launcher.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args);
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_vae")),
        };
        let mut child = cmd
            .args(train_command(data.path(), &dir, "100000", extra))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_for(&last, &mut child);
        Self {
            data,
            _runs: runs,
            dir,
            last,
            child,
        }
    }
}

#[test]
fn a_killed_rank_ends_the_job_which_then_resumes() {
    let job = LongRun::start(&[], &["--nproc", "2"]);
    let (data, dir, last, launcher) = (job.data.path(), &job.dir, &job.last, job.child);
    let workers = children(launcher.id());
    let victim = rank_of(&workers, 1).expect("rank 1 is a child of the launcher");
    signal(victim, "KILL");
    let (code, stderr, took) = wait_within(launcher, Duration::from_secs(90));
    assert!(code.is_some_and(|c| c != 0), "{stderr}");
    assert!(
        stderr.contains("rank 1 was killed by signal 9"),
        "the sentence names the lost rank: {stderr}"
    );
    eprintln!("the launcher ended {took:?} after rank 1 was killed");
    assert!(workers.iter().all(|&p| !alive(p)), "no worker is left");

    let ckpt = Checkpoint::load(last).expect("the last checkpoint is whole");
    let epochs = (ckpt.state.history.len() + 1).to_string();
    run(Command::new(env!("CARGO_BIN_EXE_vae"))
        .args(["train", "--data"])
        .arg(data)
        .arg("--resume")
        .arg(dir)
        .args(["--epochs", &epochs, "--threads", "1", "--nproc", "2"]));
    let done = Checkpoint::load(last).unwrap();
    assert_eq!(done.state.history.len(), ckpt.state.history.len() + 1);
    run(Command::new(env!("CARGO_BIN_EXE_vae"))
        .args(["eval", "--run"])
        .arg(dir)
        .arg("--data")
        .arg(data)
        .args(["--iw-samples", "4"]));
}

#[test]
fn sigint_to_the_launcher_stops_every_rank_with_a_whole_checkpoint() {
    let job = LongRun::start(&[], &["--nproc", "2"]);
    let (last, launcher) = (&job.last, job.child);
    std::thread::sleep(Duration::from_millis(300));
    let workers = children(launcher.id());
    assert_eq!(workers.len(), 2, "two workers");
    signal(launcher.id(), "INT");
    let (code, stderr, took) = wait_within(launcher, Duration::from_secs(10));
    assert_eq!(code, Some(130), "{stderr}");
    assert!(workers.iter().all(|&p| !alive(p)), "every rank is gone");
    assert!(stderr.contains("interrupted at step"), "{stderr}");
    eprintln!("every rank gone {took:?} after SIGINT");
    let ckpt = Checkpoint::load(last).expect("the checkpoint is whole");
    assert!(ckpt.state.step > 0);
}

#[test]
fn sigint_to_torchrun_stops_every_worker_with_a_whole_checkpoint() {
    let Some(torchrun) = torchrun() else {
        eprintln!("no torchrun beside the set-up's Python: skipped");
        return;
    };
    let launcher = [
        torchrun.to_str().unwrap(),
        "--nproc-per-node",
        "2",
        "--no-python",
        env!("CARGO_BIN_EXE_vae"),
    ];
    let job = LongRun::start(&launcher, &[]);
    let (last, agent) = (&job.last, job.child);
    std::thread::sleep(Duration::from_millis(300));
    let workers: Vec<u32> = (0..2)
        .filter_map(|r| rank_of(&children(agent.id()), r))
        .collect();
    assert_eq!(workers.len(), 2, "torchrun's two workers");
    signal(agent.id(), "INT");
    let (_, stderr, took) = wait_within(agent, Duration::from_secs(40));
    let started = Instant::now();
    while workers.iter().any(|&p| alive(p)) {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "a worker outlived torchrun: {stderr}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("torchrun and its workers gone {took:?} after SIGINT");
    Checkpoint::load(last).expect("last.safetensors loads");
}
