//! `cargo xtask bench`: our `vae train` against the PyTorch peer
//! (`../shared/bench/ref_pytorch_vae.py`), same data, model, batch, threads and steps,
//! alternating runs, with training images/s, peak RSS and (with `--quality`) test ELBO,
//! IW NLL and the time to reach the peer's test ELBO.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

/// Settings of a bench run.
#[derive(Debug, Clone)]
pub struct BenchArgs {
    pub steps: u64,
    pub pairs: usize,
    pub threads: usize,
    pub batch: usize,
    pub device: String,
    pub json: bool,
    pub quality: bool,
    pub epochs: usize,
    pub our_epochs: Option<usize>,
    pub iw: u64,
    pub iw_images: usize,
    pub peer: Option<PathBuf>,
    pub vae: Option<PathBuf>,
    pub python: Option<PathBuf>,
    pub peer_allocator: Option<PathBuf>,
    pub precision: Option<String>,
}

/// The allocator setting `vae` applies to itself (mimalloc keeping freed memory committed,
/// `vae-cli/src/alloc.rs`), as environment for the peer run "with our allocator", with
/// mimalloc preloaded.
const PEER_MIMALLOC_ENV: (&str, &str) = ("MIMALLOC_PURGE_DELAY", "-1");

/// What one process did: its wall time, its peak resident memory, and its output.
struct Measured {
    wall: f64,
    peak_rss_mb: f64,
    stdout: String,
}

fn vm_hwm_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| {
        l.strip_prefix("VmHWM:")?
            .trim()
            .strip_suffix("kB")?
            .trim()
            .parse()
            .ok()
    })
}

/// Runs `cmd`, sampling its peak RSS (VmHWM, a high-water mark) until it exits.
fn measure(mut cmd: Command) -> Result<Measured> {
    let started = Instant::now();
    let out_file = tempfile::NamedTempFile::new()?;
    let mut child = cmd
        .stdout(out_file.reopen()?)
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    let mut peak = 0;
    let stderr = child.stderr.take();
    let err_thread = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(mut e) = stderr {
            let _ = std::io::Read::read_to_string(&mut e, &mut s);
        }
        s
    });
    let status = loop {
        if let Some(kb) = vm_hwm_kb(child.id()) {
            peak = peak.max(kb);
        }
        if let Some(status) = child.try_wait()? {
            break status;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let wall = started.elapsed().as_secs_f64();
    let stderr = err_thread.join().unwrap_or_default();
    let stdout = std::fs::read_to_string(out_file.path())?;
    if !status.success() {
        bail!("{cmd:?} failed ({status}):\n{stdout}\n{stderr}");
    }
    Ok(Measured {
        wall,
        peak_rss_mb: peak as f64 / 1024.0,
        stdout,
    })
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

struct Tools {
    vae: PathBuf,
    python: PathBuf,
    peer: PathBuf,
    /// mimalloc as a shared library, preloaded into the peer's "with our allocator" runs
    /// (the timing pairs only).
    mimalloc: Option<PathBuf>,
    data: PathBuf,
    scratch: tempfile::TempDir,
}

fn ours_train(t: &Tools, a: &BenchArgs, out: &Path, extra: &[String]) -> Command {
    let mut c = Command::new(&t.vae);
    c.arg("train")
        .arg("--data")
        .arg(&t.data)
        .arg("--out")
        .arg(out);
    c.args(["--threads", &a.threads.to_string(), "--device", &a.device]);
    if let Some(p) = &a.precision {
        c.args(["--precision", p]);
    }
    c.args(extra);
    c
}

fn peer_cmd(t: &Tools, a: &BenchArgs, extra: &[String], tuned: bool) -> Command {
    let mut c = Command::new(&t.python);
    c.arg(&t.peer).arg("--data").arg(&t.data);
    c.args([
        "--threads",
        &a.threads.to_string(),
        "--batch",
        &a.batch.to_string(),
        "--device",
        &a.device,
    ]);
    c.args(extra);
    c.env("PYTHONWARNINGS", "ignore");
    if let (true, Some(lib)) = (tuned, &t.mimalloc) {
        c.env("LD_PRELOAD", lib);
        c.env(PEER_MIMALLOC_ENV.0, PEER_MIMALLOC_ENV.1);
    }
    c
}

/// The last JSON line a run printed: the peer's result, or ours with `--untimed-steps`.
fn last_json_line(m: &Measured) -> Result<Value> {
    let line = m
        .stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .context("the run printed no JSON line")?;
    Ok(serde_json::from_str(line)?)
}

fn speed(t: &Tools, a: &BenchArgs) -> Result<Value> {
    let mut runs = Vec::new();
    let (mut ours_ips, mut peer_ips, mut tuned_ips) = (Vec::new(), Vec::new(), Vec::new());
    let (mut ours_rss, mut peer_rss, mut tuned_rss) = (Vec::new(), Vec::new(), Vec::new());
    let (mut ratio, mut ratio_tuned) = (Vec::new(), Vec::new());
    for pair in 0..a.pairs {
        let out = t.scratch.path().join(format!("speed-{pair}"));
        // The peer's model (the fast preset: reference architecture, standard prior).
        let extra = vec![
            "--preset".into(),
            "fast".into(),
            "--max-steps".into(),
            a.steps.to_string(),
            // The peer's 5 warm-up steps, left out of the timing as the peer does.
            "--untimed-steps".into(),
            "5".into(),
            "--batch-size".into(),
            a.batch.to_string(),
        ];
        let ours = measure(ours_train(t, a, &out, &extra))?;
        let ips = last_json_line(&ours)?["train_images_per_s"]
            .as_f64()
            .unwrap_or(f64::NAN);
        let peer_extra = vec!["--steps".into(), a.steps.to_string()];
        let peer = measure(peer_cmd(t, a, &peer_extra, false))?;
        let pj = last_json_line(&peer)?;
        let tuned = measure(peer_cmd(t, a, &peer_extra, true))?;
        let tj = last_json_line(&tuned)?;
        let (p_ips, t_ips) = (
            pj["train_images_per_s"].as_f64().unwrap_or(f64::NAN),
            tj["train_images_per_s"].as_f64().unwrap_or(f64::NAN),
        );
        if !a.json {
            println!(
                "pair {}: ours {:7.0} img/s {:6.0} MB | peer {:7.0} img/s {:6.0} MB | peer+mimalloc {:7.0} img/s {:6.0} MB | ours/peer {:.2} ours/peer+mimalloc {:.2}",
                pair + 1,
                ips,
                ours.peak_rss_mb,
                p_ips,
                peer.peak_rss_mb,
                t_ips,
                tuned.peak_rss_mb,
                ips / p_ips,
                ips / t_ips
            );
        }
        runs.push(json!({"pair": pair + 1, "ours_images_per_s": ips, "ours_peak_rss_mb": ours.peak_rss_mb, "ours_wall_s": ours.wall,
            "peer_images_per_s": p_ips, "peer_peak_rss_mb": peer.peak_rss_mb, "peer_wall_s": peer.wall,
            "peer_malloc_images_per_s": t_ips, "peer_malloc_peak_rss_mb": tuned.peak_rss_mb}));
        ratio.push(ips / p_ips);
        ratio_tuned.push(ips / t_ips);
        ours_ips.push(ips);
        peer_ips.push(p_ips);
        tuned_ips.push(t_ips);
        ours_rss.push(ours.peak_rss_mb);
        peer_rss.push(peer.peak_rss_mb);
        tuned_rss.push(tuned.peak_rss_mb);
        let _ = std::fs::remove_dir_all(&out);
    }
    let summary = json!({
        "ours_images_per_s": median(&mut ours_ips), "peer_images_per_s": median(&mut peer_ips), "peer_malloc_images_per_s": median(&mut tuned_ips),
        "ratio_ours_over_peer": median(&mut ratio), "ratio_ours_over_peer_malloc": median(&mut ratio_tuned),
        "ours_peak_rss_mb": median(&mut ours_rss), "peer_peak_rss_mb": median(&mut peer_rss), "peer_malloc_peak_rss_mb": median(&mut tuned_rss),
    });
    if !a.json {
        println!(
            "median: ours {:.0} img/s, peer {:.0} (with our allocator {:.0}); ours/peer {:.2} ({:.2}); peak RSS ours {:.0} MB, peer {:.0} MB ({:.0} MB)",
            summary["ours_images_per_s"].as_f64().unwrap_or(f64::NAN),
            summary["peer_images_per_s"].as_f64().unwrap_or(f64::NAN),
            summary["peer_malloc_images_per_s"]
                .as_f64()
                .unwrap_or(f64::NAN),
            summary["ratio_ours_over_peer"].as_f64().unwrap_or(f64::NAN),
            summary["ratio_ours_over_peer_malloc"]
                .as_f64()
                .unwrap_or(f64::NAN),
            summary["ours_peak_rss_mb"].as_f64().unwrap_or(f64::NAN),
            summary["peer_peak_rss_mb"].as_f64().unwrap_or(f64::NAN),
            summary["peer_malloc_peak_rss_mb"]
                .as_f64()
                .unwrap_or(f64::NAN),
        );
    }
    Ok(json!({"runs": runs, "median": summary}))
}

/// Per-epoch (cumulative training seconds, test ELBO) from a run's metrics.csv.
fn curve(run: &Path) -> Result<Vec<(f64, f64)>> {
    let csv = std::fs::read_to_string(run.join("metrics.csv"))?;
    let mut header = Vec::new();
    let mut out = Vec::new();
    let mut total = 0.0;
    for (i, line) in csv.lines().enumerate() {
        let cells: Vec<&str> = line.split(',').collect();
        if i == 0 {
            header = cells.iter().map(|s| s.to_string()).collect();
            continue;
        }
        let col = |name: &str| {
            header
                .iter()
                .position(|h| h == name)
                .and_then(|j| cells.get(j)?.parse::<f64>().ok())
        };
        total += col("seconds").unwrap_or(0.0);
        out.push((total, col("test_elbo").unwrap_or(f64::NAN)));
    }
    Ok(out)
}

fn quality(t: &Tools, a: &BenchArgs) -> Result<Value> {
    let run = t.scratch.path().join("quality");
    // Ours with its defaults (the point: what a user gets from `vae train`), unless told.
    let ours_extra: Vec<String> = a
        .our_epochs
        .map(|e| vec!["--epochs".into(), e.to_string()])
        .unwrap_or_default();
    let train = measure(ours_train(t, a, &run, &ours_extra))?;
    let mut eval = Command::new(&t.vae);
    eval.arg("eval")
        .arg("--run")
        .arg(&run)
        .arg("--data")
        .arg(&t.data);
    eval.args([
        "--iw-samples",
        &a.iw.to_string(),
        "--images",
        &a.iw_images.to_string(),
        "--device",
        &a.device,
        "--json",
    ]);
    let ev: Value = serde_json::from_str(measure(eval)?.stdout.trim())?;
    let curve = curve(&run)?;
    let ours_seconds = curve.last().map_or(f64::NAN, |c| c.0);
    let peer = measure(peer_cmd(
        t,
        a,
        &[
            "--epochs".into(),
            a.epochs.to_string(),
            "--iw".into(),
            a.iw.to_string(),
            "--iw-images".into(),
            a.iw_images.to_string(),
        ],
        false,
    ))?;
    let pj = last_json_line(&peer)?;
    let peer_elbo = pj["test_elbo_nats"].as_f64().unwrap_or(f64::NAN);
    let peer_seconds = pj["seconds"].as_f64().unwrap_or(f64::NAN);
    // Our first epoch whose test ELBO reaches the peer's final test ELBO.
    let reach = curve.iter().find(|(_, v)| *v >= peer_elbo).map(|c| c.0);
    let result = json!({
        "epochs": a.epochs, "iw_k": a.iw, "iw_images": a.iw_images,
        "ours": {"test_elbo": ev["test_elbo"], "iw_nll": ev["iw_nll"], "iw_std_error": ev["iw_std_error"], "train_seconds": ours_seconds,
                 "wall_s": train.wall, "peak_rss_mb": train.peak_rss_mb, "seconds_to_peer_test_elbo": reach},
        "peer": {"test_elbo": peer_elbo, "iw_nll": pj["iw_nll_nats"], "train_seconds": peer_seconds, "wall_s": peer.wall, "peak_rss_mb": peer.peak_rss_mb},
        "time_to_peer_elbo_ratio": reach.map(|r| r / peer_seconds),
    });
    if !a.json {
        println!(
            "quality (peer {} epochs, ours its defaults): ours test ELBO {:.2}, IW NLL {:.2} ± {:.2} (k={}, {} images), {:.0} s training | peer test ELBO {:.2}, IW NLL {}, {:.0} s",
            a.epochs,
            ev["test_elbo"].as_f64().unwrap_or(f64::NAN),
            ev["iw_nll"].as_f64().unwrap_or(f64::NAN),
            ev["iw_std_error"].as_f64().unwrap_or(f64::NAN),
            a.iw,
            a.iw_images,
            ours_seconds,
            peer_elbo,
            pj["iw_nll_nats"],
            peer_seconds
        );
        match reach {
            Some(r) => println!(
                "ours reached the peer's test ELBO ({peer_elbo:.2}) after {r:.0} s of training: {:.2}x the peer's time",
                r / peer_seconds
            ),
            None => println!(
                "ours did not reach the peer's test ELBO ({peer_elbo:.2}) within {} epochs",
                a.epochs
            ),
        }
    }
    Ok(result)
}

/// `data/mnist`, checked to hold MNIST.
pub fn mnist_dir(root: &Path) -> Result<PathBuf> {
    let data = root.join("data/mnist");
    if !data.join("train-images-idx3-ubyte.gz").is_file() {
        bail!(
            "{} has no MNIST: run `cargo xtask download` first",
            data.display()
        );
    }
    Ok(data)
}

/// Builds mimalloc as a shared library, for preloading into the peer, from the source of the
/// libmimalloc-sys crate that `vae` links (found with `cargo metadata`), with the defines its
/// build script uses for an overriding release build. Returns the library's path.
pub fn build_mimalloc(root: &Path, cargo: &str) -> Result<PathBuf> {
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1"])
        .current_dir(root)
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run cargo metadata")?;
    if !out.status.success() {
        bail!("cargo metadata failed");
    }
    let meta: Value = serde_json::from_slice(&out.stdout)?;
    let manifest = meta["packages"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == "libmimalloc-sys"))
        .and_then(|p| p["manifest_path"].as_str())
        .context("no libmimalloc-sys among the workspace's dependencies")?;
    let src = Path::new(manifest)
        .parent()
        .context("manifest path has no parent")?
        .join("c_src/mimalloc/v3");
    let lib = root.join("target/xtask/libmimalloc.so");
    std::fs::create_dir_all(lib.parent().context("no parent")?)?;
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let status = Command::new(&cc)
        .args(["-shared", "-fPIC", "-O3", "-ftls-model=initial-exec"])
        .args([
            "-DMI_MALLOC_OVERRIDE",
            "-DMI_DEBUG=0",
            "-DMI_BUILD_RELEASE",
            "-DNDEBUG",
        ])
        .arg("-I")
        .arg(src.join("include"))
        .arg("-I")
        .arg(src.join("src"))
        .arg(src.join("src/static.c"))
        .arg("-o")
        .arg(&lib)
        .arg("-lpthread")
        .status()
        .with_context(|| format!("cannot run {cc} (set CC, or pass --peer-allocator)"))?;
    if !status.success() {
        bail!(
            "building {} with {cc} failed (pass --peer-allocator)",
            lib.display()
        );
    }
    Ok(lib)
}

/// Builds the release `vae` binary and returns its path.
pub fn build_vae(root: &Path, cargo: &str) -> Result<PathBuf> {
    let status = Command::new(cargo)
        .args(["build", "--release", "--quiet", "-p", "vae-cli"])
        .current_dir(root)
        .status()?;
    if !status.success() {
        bail!("cargo build --release -p vae-cli failed");
    }
    Ok(root.join("target/release/vae"))
}

pub fn run(root: &Path, cargo: &str, a: &BenchArgs) -> Result<()> {
    let data = mnist_dir(root)?;
    let python = match &a.python {
        Some(p) => p.clone(),
        None => {
            let lt = crate::libtorch::current(root).context(
                "no libtorch set up: run `cargo xtask download` first (or pass --python)",
            )?;
            lt.python.clone().context(
                "the libtorch in .libtorch belongs to no Python with torch, so the peer cannot run (pass --python)",
            )?
        }
    };
    let peer = a
        .peer
        .clone()
        .unwrap_or_else(|| root.join("../shared/bench/ref_pytorch_vae.py"));
    if !peer.is_file() {
        bail!("peer script {} not found (pass --peer)", peer.display());
    }
    let tools = Tools {
        vae: match &a.vae {
            Some(v) if v.is_file() => v.clone(),
            Some(v) => bail!("--vae {}: no such file", v.display()),
            None => build_vae(root, cargo)?,
        },
        python,
        peer,
        mimalloc: match &a.peer_allocator {
            _ if a.pairs == 0 => None,
            Some(p) if p.is_file() => Some(p.clone()),
            Some(p) => bail!("--peer-allocator {}: no such file", p.display()),
            None => Some(build_mimalloc(root, cargo)?),
        },
        data,
        scratch: tempfile::tempdir()?,
    };
    if !a.json {
        println!(
            "bench: {} steps x batch {} on {}, {} threads, {} pairs (ours, peer, peer with our allocator: mimalloc preloaded); ours in {}",
            a.steps,
            a.batch,
            a.device,
            a.threads,
            a.pairs,
            a.precision.as_deref().unwrap_or("fp32")
        );
    }
    let mut report = json!({"device": a.device, "threads": a.threads, "batch": a.batch, "steps": a.steps, "pairs": a.pairs, "precision": a.precision.as_deref().unwrap_or("fp32")});
    if a.pairs > 0 {
        report["speed"] = speed(&tools, a)?;
    }
    if a.quality {
        report["quality"] = quality(&tools, a)?;
    }
    if a.json {
        println!("{report}");
    }
    Ok(())
}
