//! `cargo xtask bench`: our `vae train` against the PyTorch peer
//! (`../shared/bench/ref_pytorch_vae.py`), same data, model, batch, threads and steps,
//! alternating runs, with training images/s, peak RSS and (with `--quality`) test ELBO,
//! IW NLL and the time to reach the peer's test ELBO. Besides the peer as its users run it
//! (fp32, eager), the same model runs in the configurations a PyTorch user tuning for speed
//! would try (`peer_variants.py`: bf16 autocast with channels-last, `torch.compile`), and
//! the output names the CPU and its bf16 features.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

mod breakdown;
mod ladder;

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
    /// The peer configurations timed in each pair, in this order (the conv model's bench).
    pub peers: Vec<PeerConfig>,
    /// Whether `peers` was left to its default (all, less the bf16 ones on a CPU without
    /// bf16 hardware).
    pub default_peers: bool,
    /// The model benchmarked.
    pub model: BenchModel,
    /// With the ladder: time the importance-weighted evaluation instead of training.
    pub eval: bool,
    /// With the ladder: the run to export and evaluate [default: one trained here].
    pub run: Option<PathBuf>,
    /// With the ladder and no `run`: epochs of the run trained here.
    pub ladder_epochs: usize,
    /// One profiled run of each side and the step's time by operation, instead of the pairs.
    pub breakdown: bool,
}

/// Which model a bench times.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchModel {
    /// The reference conv VAE (`--preset fast`) against `ref_pytorch_vae.py`.
    Conv,
    /// The `ladder` preset against its exported PyTorch module.
    Ladder,
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
    /// `peer_variants.py`: the peer's model run with autocast, channels-last or torch.compile.
    variants: PathBuf,
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

/// Python running `script` (with its own leading arguments) on the bench's data, threads,
/// batch and device.
fn python_cmd(t: &Tools, a: &BenchArgs, script: &[&std::ffi::OsStr]) -> Command {
    let mut c = Command::new(&t.python);
    c.args(script).arg("--data").arg(&t.data);
    c.args([
        "--threads",
        &a.threads.to_string(),
        "--batch",
        &a.batch.to_string(),
        "--device",
        &a.device,
    ]);
    c.env("PYTHONWARNINGS", "ignore");
    c
}

fn peer_cmd(t: &Tools, a: &BenchArgs, extra: &[String], tuned: bool) -> Command {
    let mut c = python_cmd(t, a, &[t.peer.as_os_str()]);
    c.args(extra);
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

/// One configuration of the peer: the reference script as users run it, or a faster way of
/// running the same model (`peer_variants.py`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerConfig {
    /// The reference script itself: fp32, eager, NCHW (the ratio's denominator).
    Eager,
    /// The reference script with mimalloc preloaded, set as `vae` sets it.
    EagerMalloc,
    /// bf16 autocast with the model and batches channels-last.
    Bf16ChannelsLast,
    /// `torch.compile` (inductor), fp32.
    Compile,
    /// `torch.compile` with bf16 autocast and channels-last.
    CompileBf16ChannelsLast,
}

impl PeerConfig {
    pub const ALL: [Self; 5] = [
        Self::Eager,
        Self::EagerMalloc,
        Self::Bf16ChannelsLast,
        Self::Compile,
        Self::CompileBf16ChannelsLast,
    ];

    /// Its name on the command line and in the JSON.
    /// Whether the configuration computes in bf16.
    pub fn is_bf16(self) -> bool {
        matches!(self, Self::Bf16ChannelsLast | Self::CompileBf16ChannelsLast)
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Eager => "eager",
            Self::EagerMalloc => "eager-mimalloc",
            Self::Bf16ChannelsLast => "bf16-channels-last",
            Self::Compile => "compile",
            Self::CompileBf16ChannelsLast => "compile-bf16-channels-last",
        }
    }

    /// `peer_variants.py`'s flags for it; None: the reference script itself.
    fn variant_flags(self) -> Option<&'static [&'static str]> {
        match self {
            Self::Eager | Self::EagerMalloc => None,
            Self::Bf16ChannelsLast => Some(&["--autocast", "bf16", "--channels-last"]),
            Self::Compile => Some(&["--compile"]),
            Self::CompileBf16ChannelsLast => {
                Some(&["--compile", "--autocast", "bf16", "--channels-last"])
            }
        }
    }
}

impl std::str::FromStr for PeerConfig {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|c| c.name() == s.trim())
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|c| c.name()).collect();
                format!("unknown peer configuration {s:?}: use {}", names.join(", "))
            })
    }
}

/// A peer configuration's command for `steps` timed steps.
fn peer_speed_cmd(t: &Tools, a: &BenchArgs, config: PeerConfig) -> Command {
    let steps = ["--steps".to_string(), a.steps.to_string()];
    match config.variant_flags() {
        None => peer_cmd(t, a, &steps, config == PeerConfig::EagerMalloc),
        Some(flags) => {
            let script = [
                t.variants.as_os_str(),
                "--peer".as_ref(),
                t.peer.as_os_str(),
            ];
            let mut c = python_cmd(t, a, &script);
            c.args(steps).args(flags);
            c
        }
    }
}

/// What one peer configuration did in one pair; `error` when it could not run here.
struct PeerRun {
    images_per_s: f64,
    peak_rss_mb: f64,
    compile_s: Option<f64>,
    error: Option<String>,
}

fn run_peer(t: &Tools, a: &BenchArgs, config: PeerConfig) -> PeerRun {
    let result = measure(peer_speed_cmd(t, a, config)).and_then(|m| {
        let j = last_json_line(&m)?;
        Ok(PeerRun {
            images_per_s: j["train_images_per_s"].as_f64().unwrap_or(f64::NAN),
            peak_rss_mb: m.peak_rss_mb,
            compile_s: j["compile_s"].as_f64(),
            error: None,
        })
    });
    result.unwrap_or_else(|e| {
        // The last line of the error says why (a torch.compile without a C++ compiler, say).
        let why = format!("{e:#}");
        let last = why
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        PeerRun {
            images_per_s: f64::NAN,
            peak_rss_mb: f64::NAN,
            compile_s: None,
            error: Some(last.trim().to_string()),
        }
    })
}

fn speed(t: &Tools, a: &BenchArgs) -> Result<Value> {
    let mut runs = Vec::new();
    let mut ours_ips = Vec::new();
    let mut ours_rss = Vec::new();
    let mut ratio = Vec::new();
    let mut ratio_best = Vec::new();
    let mut per_peer: Vec<(PeerConfig, Vec<f64>, Vec<f64>)> = a
        .peers
        .iter()
        .map(|&c| (c, Vec::new(), Vec::new()))
        .collect();
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
        // Counterbalanced against the machine's drift: odd pairs run ours first and then the
        // peer's configurations, even pairs the configurations in reverse and ours last, so
        // the reference (eager) always runs next to ours.
        let forward = pair % 2 == 0;
        let run_ours = || measure(ours_train(t, a, &out, &extra));
        let ours_first = if forward { Some(run_ours()?) } else { None };
        let mut results: Vec<PeerRun> = if forward {
            per_peer.iter().map(|p| run_peer(t, a, p.0)).collect()
        } else {
            per_peer.iter().rev().map(|p| run_peer(t, a, p.0)).collect()
        };
        if !forward {
            results.reverse();
        }
        let ours = match ours_first {
            Some(o) => o,
            None => run_ours()?,
        };
        let ips = last_json_line(&ours)?["train_images_per_s"]
            .as_f64()
            .unwrap_or(f64::NAN);
        let mut line = format!(
            "pair {}: ours {ips:6.0} img/s {:5.0} MB",
            pair + 1,
            ours.peak_rss_mb
        );
        let mut peers = serde_json::Map::new();
        let mut best: Option<(PeerConfig, f64)> = None;
        let mut eager = f64::NAN;
        for ((config, ips_list, rss_list), r) in per_peer.iter_mut().zip(results) {
            if *config == PeerConfig::Eager {
                eager = r.images_per_s;
            }
            match &r.error {
                None => {
                    line += &format!(
                        " | {} {:6.0} {:5.0} MB",
                        config.name(),
                        r.images_per_s,
                        r.peak_rss_mb
                    );
                    if let Some(c) = r.compile_s {
                        line += &format!(" (compile {c:.0} s)");
                    }
                    ips_list.push(r.images_per_s);
                    rss_list.push(r.peak_rss_mb);
                    if best.is_none_or(|(_, b)| r.images_per_s > b) {
                        best = Some((*config, r.images_per_s));
                    }
                }
                Some(e) => line += &format!(" | {} did not run ({e})", config.name()),
            }
            peers.insert(
                config.name().into(),
                json!({"images_per_s": r.images_per_s, "peak_rss_mb": r.peak_rss_mb,
                       "compile_s": r.compile_s, "error": r.error}),
            );
        }
        let (r, rb) = (ips / eager, best.map_or(f64::NAN, |(_, b)| ips / b));
        line += &format!(
            " | ours/peer {r:.2}, ours/best peer {rb:.2} ({})",
            best.map_or("none", |(c, _)| c.name())
        );
        if !a.json {
            println!("{line}");
        }
        runs.push(
            json!({"pair": pair + 1, "ours_images_per_s": ips, "ours_peak_rss_mb": ours.peak_rss_mb,
            "ours_wall_s": ours.wall, "peers": peers, "ratio_ours_over_peer": r,
            "ratio_ours_over_best_peer": rb, "best_peer": best.map(|(c, _)| c.name())}),
        );
        ratio.push(r);
        ratio_best.push(rb);
        ours_ips.push(ips);
        ours_rss.push(ours.peak_rss_mb);
        let _ = std::fs::remove_dir_all(&out);
    }
    let mut peer_medians = serde_json::Map::new();
    for (config, ips_list, rss_list) in &mut per_peer {
        peer_medians.insert(
            config.name().into(),
            json!({"images_per_s": median(ips_list), "peak_rss_mb": median(rss_list), "runs": ips_list.len()}),
        );
    }
    let list = |v: &[f64]| {
        v.iter()
            .map(|r| format!("{r:.2}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let (pairs_text, best_text) = (list(&ratio), list(&ratio_best));
    let summary = json!({
        "ours_images_per_s": median(&mut ours_ips), "ours_peak_rss_mb": median(&mut ours_rss),
        "peers": peer_medians,
        "ratio_ours_over_peer": median(&mut ratio), "ratio_ours_over_best_peer": median(&mut ratio_best),
    });
    if !a.json {
        let num = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
        let peers: Vec<String> = a
            .peers
            .iter()
            .map(|c| {
                let v = &summary["peers"][c.name()];
                format!(
                    "{} {:.0} img/s {:.0} MB",
                    c.name(),
                    num(&v["images_per_s"]),
                    num(&v["peak_rss_mb"])
                )
            })
            .collect();
        println!(
            "median: ours {:.0} img/s {:.0} MB; {}",
            num(&summary["ours_images_per_s"]),
            num(&summary["ours_peak_rss_mb"]),
            peers.join("; ")
        );
        println!(
            "ours / peer (fp32 eager, as users run it): {pairs_text} -> median {:.2}",
            num(&summary["ratio_ours_over_peer"])
        );
        println!(
            "ours / the best peer configuration of each pair: {best_text} -> median {:.2}",
            num(&summary["ratio_ours_over_best_peer"])
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

/// The machine a bench runs on as `vae info --json` sees it (CPU model and bf16 features),
/// the precision ours trains in there and why, and the peer's torch version.
fn machine(t: &Tools, a: &BenchArgs) -> Result<Value> {
    let out = Command::new(&t.vae)
        .args(["info", "--json"])
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run {} info", t.vae.display()))?;
    if !out.status.success() {
        bail!("{} info --json failed", t.vae.display());
    }
    let info: Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("{} info --json printed no JSON", t.vae.display()))?;
    let auto = &info["auto_precision"];
    let (precision, reason) = match a.precision.as_deref() {
        Some(p) if p != "auto" => (json!(p), json!("asked for with --precision")),
        _ if a.device == "cpu" => (auto["cpu"].clone(), auto["cpu_reason"].clone()),
        _ => (
            auto["auto_device"].clone(),
            auto["auto_device_reason"].clone(),
        ),
    };
    let torch = Command::new(&t.python)
        .args(["-c", "import torch; print(torch.__version__)"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    Ok(
        json!({"cpu": info["cpu"], "ours_precision": precision, "ours_precision_reason": reason, "torch": torch}),
    )
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
        variants: root.join("xtask/peer_variants.py"),
        mimalloc: match &a.peer_allocator {
            _ if a.pairs == 0
                || a.breakdown
                || (a.model == BenchModel::Conv && !a.peers.contains(&PeerConfig::EagerMalloc)) =>
            {
                None
            }
            Some(p) if p.is_file() => Some(p.clone()),
            Some(p) => bail!("--peer-allocator {}: no such file", p.display()),
            None => Some(build_mimalloc(root, cargo)?),
        },
        data,
        scratch: tempfile::tempdir()?,
    };
    let machine = machine(&tools, a)?;
    let precision = a.precision.as_deref().unwrap_or("auto");
    // The bf16 peer columns emulate bf16 on a CPU without bf16 hardware (~12x slower than
    // fp32 on Zen 3): no user of that CPU would pick them, so by default they are left out.
    let bf16_hardware = machine["cpu"]["flags"].as_array().is_some_and(|f| {
        f.iter()
            .any(|x| x.as_str().is_some_and(|x| x.contains("bf16")))
    });
    let mut a = a.clone();
    if a.default_peers && a.device == "cpu" && !bf16_hardware {
        a.peers.retain(|p| !p.is_bf16());
        if !a.json && a.model == BenchModel::Conv {
            println!(
                "note: this CPU has no bf16 hardware (AVX-512-BF16 or AMX-BF16), so the bf16 peer configurations are skipped (name them with --peers to time them anyway)"
            );
        }
    }
    let a = &a;
    if a.json || a.breakdown {
        // The breakdown prints its own header.
    } else if a.model == BenchModel::Conv {
        let names: Vec<&str> = a.peers.iter().map(|c| c.name()).collect();
        println!(
            "bench: {} steps x batch {} on {}, {} threads, {} pairs; ours with --precision {precision} ({}); peer configurations: {}",
            a.steps,
            a.batch,
            a.device,
            a.threads,
            a.pairs,
            machine["ours_precision"].as_str().unwrap_or("?"),
            names.join(", ")
        );
    } else {
        println!(
            "bench: the ladder on {}, {} threads, {} pairs; ours with --precision {precision} ({})",
            a.device,
            a.threads,
            a.pairs,
            machine["ours_precision"].as_str().unwrap_or("?"),
        );
    }
    if !a.json {
        println!(
            "machine: {} ({}), torch {}",
            machine["cpu"]["model"].as_str().unwrap_or("?"),
            machine["cpu"]["flags"]
                .as_array()
                .map(|f| f
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(", "))
                .filter(|f| !f.is_empty())
                .unwrap_or_else(|| "no AVX-512, AVX-512-BF16 or AMX-BF16".into()),
            machine["torch"].as_str().unwrap_or("?"),
        );
    }
    let mut report = json!({"device": a.device, "threads": a.threads, "batch": a.batch, "steps": a.steps, "pairs": a.pairs,
        "precision": precision, "machine": machine});
    if a.breakdown {
        report["breakdown"] = breakdown::run(&tools, a)?;
    } else if a.model == BenchModel::Ladder {
        report["ladder"] = ladder::run(&tools, a)?;
    } else if a.pairs > 0 {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_configurations_parse_by_name() {
        for c in PeerConfig::ALL {
            assert_eq!(c.name().parse::<PeerConfig>().unwrap(), c);
        }
        let err = "fastest".parse::<PeerConfig>().unwrap_err();
        assert!(err.contains("eager, eager-mimalloc"), "{err}");
    }

    /// `peer_variants.py` runs the peer's own model with bf16 autocast and channels-last and
    /// prints the JSON line the bench reads.
    #[test]
    fn the_peer_runs_with_bf16_autocast_and_channels_last() {
        let root = crate::root();
        let python = crate::libtorch::current(&root)
            .and_then(|lt| lt.python)
            .expect("no Python with torch: run `cargo xtask download` first");
        let peer = root.join("../shared/bench/ref_pytorch_vae.py");
        let data = mnist_dir(&root).unwrap();
        let out = Command::new(python)
            .arg(root.join("xtask/peer_variants.py"))
            .arg("--peer")
            .arg(&peer)
            .arg("--data")
            .arg(&data)
            .args(["--threads", "1", "--batch", "16", "--steps", "3"])
            .args(["--autocast", "bf16", "--channels-last"])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let m = Measured {
            wall: 0.0,
            peak_rss_mb: 0.0,
            stdout: stdout.to_string(),
        };
        let j = last_json_line(&m).unwrap();
        assert_eq!(j["impl"], "pytorch-eager-bf16-channels-last");
        assert_eq!(j["steps"], 3);
        assert!(j["train_images_per_s"].as_f64().unwrap() > 0.0, "{j}");
    }
}
