//! `cargo xtask bench --breakdown`: where a training step's time goes, ours beside the
//! PyTorch peer's, operator by operator.
//!
//! Each side trains once with libtorch's profiler recording its timed steps (ours: `vae train
//! --profile`, the Kineto profiler through `vae_train::Profiler`; the peer: `torch.profiler`
//! around the same steps of `peer_variants.py` (conv, eager) or `ladder_peer.py train`), and
//! once without, for the step time the profiler does not inflate. Both traces are read by the
//! same code: each operator's self time (its time less that of the operators it called),
//! summed by operator and by kind of work, in ms per step. What lies outside every operator
//! is the caller's own work: our Rust code and tch's bindings, or the peer's Python.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::{Value, json};

use super::{BenchArgs, BenchModel, Tools, last_json_line, measure, ours_train, python_cmd};

/// Time spent in one operator (by name), summed over the profiled steps.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct OpTime {
    self_us: f64,
    calls: u64,
}

/// What a trace says about the steps it recorded.
#[derive(Debug, Default)]
struct Profile {
    /// Self time and calls by operator name.
    ops: HashMap<String, OpTime>,
    /// Self time by kind of work (see [`kind_of`]).
    kinds: HashMap<&'static str, f64>,
    /// Time inside top-level operators (an operator's callees counted once, in it).
    in_ops_us: f64,
}

/// One complete ("X") event of a trace.
struct Event {
    name: String,
    ts: f64,
    dur: f64,
    /// An operator (`cpu_op`), or a user annotation (PyTorch's `Optimizer.step#Adam.step`),
    /// which groups operators but is not one.
    op: bool,
}

/// The kind of work an operator does; `optimiser` is set by the caller for operators run
/// inside the optimiser's annotation.
fn kind_of(name: &str) -> &'static str {
    let n = name.trim_start_matches("aten::");
    if name.starts_with("autograd::engine::evaluate_function")
        || name.ends_with("Backward0")
        || name.ends_with("Backward1")
    {
        "autograd engine"
    } else if n.contains("conv") {
        "convolution"
    } else if ["addmm", "mm", "bmm", "linear", "matmul"]
        .iter()
        .any(|m| n == *m || n.starts_with(&format!("{m}_")))
    {
        "dense (matmul)"
    } else if n.contains("adam") || n.starts_with("_foreach") {
        "optimiser"
    } else if [
        "bernoulli",
        "uniform",
        "normal",
        "rand",
        "randn",
        "randint",
        "randperm",
    ]
    .iter()
    .any(|m| n.starts_with(m))
    {
        "random numbers"
    } else if [
        "copy_",
        "_to_copy",
        "to",
        "contiguous",
        "clone",
        "cat",
        "index_select",
        "index",
        "pixel_shuffle",
    ]
    .contains(&n)
    {
        "copies and gathers"
    } else if [
        "empty",
        "empty_strided",
        "zeros",
        "zero_",
        "fill_",
        "ones_like",
        "zeros_like",
        "empty_like",
    ]
    .contains(&n)
    {
        "allocation and fills"
    } else if [
        "sum",
        "mean",
        "logsumexp",
        "max",
        "norm",
        "linalg_vector_norm",
    ]
    .iter()
    .any(|m| n == *m || n.starts_with(&format!("{m}_")))
    {
        "reductions"
    } else if n.ends_with("_backward") {
        "elementwise backward"
    } else {
        "elementwise and other"
    }
}

/// Reads a Chrome trace written by libtorch's profiler (ours or torch.profiler's).
fn read_trace(path: &Path) -> Result<Profile> {
    let text = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let trace: Value = serde_json::from_slice(&text)
        .with_context(|| format!("{} is not a JSON trace", path.display()))?;
    let events = trace["traceEvents"]
        .as_array()
        .with_context(|| format!("{} has no traceEvents", path.display()))?;
    let mut by_thread: HashMap<String, Vec<Event>> = HashMap::new();
    for e in events {
        let cat = e["cat"].as_str().unwrap_or("");
        if e["ph"] != "X" || !(cat == "cpu_op" || cat == "user_annotation") {
            continue;
        }
        let (Some(ts), Some(dur)) = (e["ts"].as_f64(), e["dur"].as_f64()) else {
            continue;
        };
        by_thread
            .entry(e["tid"].to_string())
            .or_default()
            .push(Event {
                name: e["name"].as_str().unwrap_or("?").to_string(),
                ts,
                dur,
                op: cat == "cpu_op",
            });
    }
    Ok(profile(by_thread.into_values()))
}

/// Self times from the nesting of each thread's events: an event's parent is the innermost
/// one still open when it starts.
fn profile(threads: impl Iterator<Item = Vec<Event>>) -> Profile {
    let mut p = Profile::default();
    for mut events in threads {
        // Parents first: by start, the longer of two that start together first.
        events.sort_by(|a, b| a.ts.total_cmp(&b.ts).then(b.dur.total_cmp(&a.dur)));
        // Open events: (index, end); children[i] sums the time of event i's direct callees.
        let mut open: Vec<(usize, f64)> = Vec::new();
        let mut children = vec![0.0f64; events.len()];
        let mut in_optimiser = vec![false; events.len()];
        for i in 0..events.len() {
            let e = &events[i];
            // Kineto rounds to microseconds: an event ending where the next starts is closed.
            while open.last().is_some_and(|&(_, end)| end <= e.ts + 1e-3) {
                open.pop();
            }
            let parent_op = open
                .iter()
                .rev()
                .find(|&&(j, _)| events[j].op)
                .map(|&(j, _)| j);
            if let Some(&(j, _)) = open.last() {
                in_optimiser[i] = in_optimiser[j] || events[j].name.starts_with("Optimizer.step");
            } else {
                in_optimiser[i] = e.name.starts_with("Optimizer.step");
            }
            if e.op {
                match parent_op {
                    Some(j) => children[j] += e.dur,
                    None => p.in_ops_us += e.dur,
                }
            }
            open.push((i, e.ts + e.dur));
        }
        for (i, e) in events.iter().enumerate() {
            if !e.op {
                continue;
            }
            let own = (e.dur - children[i]).max(0.0);
            let t = p.ops.entry(e.name.clone()).or_default();
            t.self_us += own;
            t.calls += 1;
            let kind = if in_optimiser[i] {
                "optimiser"
            } else {
                kind_of(&e.name)
            };
            *p.kinds.entry(kind).or_default() += own;
        }
    }
    p
}

/// The two sides' commands: (ours, the peer), each writing its trace to `trace` when given.
fn commands(
    t: &Tools,
    a: &BenchArgs,
    export: Option<&Path>,
    trace: Option<(&Path, &Path)>,
    tag: &str,
) -> (std::process::Command, std::process::Command) {
    let out = t.scratch.path().join(format!("breakdown-{tag}"));
    let preset = match a.model {
        BenchModel::Conv => "fast",
        BenchModel::Ladder => "ladder",
    };
    let mut ours = ours_train(t, a, &out, &[]);
    ours.args(["--preset", preset, "--max-steps", &a.steps.to_string()]);
    ours.args(["--untimed-steps", "5", "--batch-size", &a.batch.to_string()]);
    ours.arg("--no-tensorboard");
    let steps = a.steps.to_string();
    let mut peer_args = vec!["--steps".to_string(), steps];
    if let Some((o, p)) = trace {
        ours.arg("--profile").arg(o);
        peer_args.push("--profile".into());
        peer_args.push(p.display().to_string());
    }
    let peer = match (a.model, export) {
        (BenchModel::Ladder, Some(export)) => {
            let args: Vec<&str> = peer_args.iter().map(String::as_str).collect();
            super::ladder::peer(t, a, "train", export, false, &args)
        }
        _ => {
            let script = [
                t.variants.as_os_str(),
                "--peer".as_ref(),
                t.peer.as_os_str(),
            ];
            let mut c = python_cmd(t, a, &script);
            c.args(&peer_args);
            c
        }
    };
    (ours, peer)
}

/// ms per step of a run's timed steps, from the JSON line it printed.
fn step_ms(out: &super::Measured, steps: u64) -> Result<f64> {
    let j = last_json_line(out)?;
    let seconds = j["seconds"]
        .as_f64()
        .context("the run printed no seconds")?;
    Ok(seconds * 1e3 / steps as f64)
}

pub(super) fn run(t: &Tools, a: &BenchArgs) -> Result<Value> {
    let export = match a.model {
        BenchModel::Ladder => Some(super::ladder::ladder_run(t, a)?.1),
        BenchModel::Conv => None,
    };
    let traces = (
        t.scratch.path().join("ours.trace.json"),
        t.scratch.path().join("peer.trace.json"),
    );
    let (ours, peer) = commands(t, a, export.as_deref(), None, "plain");
    let plain = (
        step_ms(&measure(ours).context("our plain run failed")?, a.steps)?,
        step_ms(
            &measure(peer).context("the peer's plain run failed")?,
            a.steps,
        )?,
    );
    let (ours, peer) = commands(
        t,
        a,
        export.as_deref(),
        Some((&traces.0, &traces.1)),
        "profiled",
    );
    let profiled = (
        step_ms(&measure(ours).context("our profiled run failed")?, a.steps)?,
        step_ms(
            &measure(peer).context("the peer's profiled run failed")?,
            a.steps,
        )?,
    );
    let (o, p) = (read_trace(&traces.0)?, read_trace(&traces.1)?);
    let per_step = |us: f64| us / 1e3 / a.steps as f64;
    let model = match a.model {
        BenchModel::Conv => {
            "the reference conv VAE (--preset fast) against ref_pytorch_vae.py, eager"
        }
        BenchModel::Ladder => "the ladder preset against its exported module, eager",
    };
    println!(
        "breakdown of a training step: {model}; {} steps x batch {}, {} threads; ms per step",
        a.steps, a.batch, a.threads
    );
    println!("{:<44} {:>9} {:>9}", "", "ours", "peer");
    println!(
        "{:<44} {:>9.2} {:>9.2}",
        "step, unprofiled run", plain.0, plain.1
    );
    println!(
        "{:<44} {:>9.2} {:>9.2}",
        "step, profiled run", profiled.0, profiled.1
    );
    let inside = (per_step(o.in_ops_us), per_step(p.in_ops_us));
    println!(
        "{:<44} {:>9.2} {:>9.2}",
        "  in libtorch's operators", inside.0, inside.1
    );
    let outside = (profiled.0 - inside.0, profiled.1 - inside.1);
    println!(
        "{:<44} {:>9.2} {:>9.2}   ({:.1}% / {:.1}% of the step)",
        "  outside them (ours: Rust; peer: Python)",
        outside.0,
        outside.1,
        100.0 * outside.0 / profiled.0,
        100.0 * outside.1 / profiled.1
    );
    // By kind of work, the peer's largest first.
    let mut kinds: Vec<&'static str> = o.kinds.keys().chain(p.kinds.keys()).copied().collect();
    kinds.sort_unstable();
    kinds.dedup();
    let kind_ms = |pr: &Profile, k: &str| per_step(pr.kinds.get(k).copied().unwrap_or(0.0));
    kinds.sort_by(|x, y| kind_ms(&p, y).total_cmp(&kind_ms(&p, x)));
    println!("by kind of work (operators' self time):");
    for k in &kinds {
        println!(
            "  {:<42} {:>9.2} {:>9.2}",
            k,
            kind_ms(&o, k),
            kind_ms(&p, k)
        );
    }
    // By operator: the largest on either side.
    let mut names: Vec<&String> = o.ops.keys().chain(p.ops.keys()).collect();
    names.sort_unstable();
    names.dedup();
    let op = |pr: &Profile, n: &str| pr.ops.get(n).copied().unwrap_or_default();
    names.sort_by(|x, y| {
        let size = |n: &str| op(&o, n).self_us.max(op(&p, n).self_us);
        size(y).total_cmp(&size(x))
    });
    let shown = 24.min(names.len());
    println!("by operator (self time; calls per step):");
    let cell = |t: OpTime| {
        if t.calls == 0 {
            format!("{:>9} {:>5}", "-", "")
        } else {
            format!(
                "{:>9.3} {:>5}",
                per_step(t.self_us),
                format!("{:.0}", t.calls as f64 / a.steps as f64)
            )
        }
    };
    for n in &names[..shown] {
        println!(
            "  {:<42} {} {}",
            truncate(n, 42),
            cell(op(&o, n)),
            cell(op(&p, n))
        );
    }
    let rest = |pr: &Profile| {
        names[shown..].iter().fold(OpTime::default(), |acc, n| {
            let t = op(pr, n);
            OpTime {
                self_us: acc.self_us + t.self_us,
                calls: acc.calls + t.calls,
            }
        })
    };
    println!(
        "  {:<42} {} {}",
        format!("the other {} operators", names.len() - shown),
        cell(rest(&o)),
        cell(rest(&p))
    );
    let calls =
        |pr: &Profile| pr.ops.values().map(|t| t.calls).sum::<u64>() as f64 / a.steps as f64;
    println!(
        "operator calls per step: ours {:.0}, peer {:.0}",
        calls(&o),
        calls(&p)
    );
    let table = |pr: &Profile| -> Value {
        let mut m = serde_json::Map::new();
        for (n, t) in &pr.ops {
            m.insert(n.clone(), json!({"ms_per_step": per_step(t.self_us), "calls_per_step": t.calls as f64 / a.steps as f64}));
        }
        Value::Object(m)
    };
    let kinds_json = |pr: &Profile| -> Value {
        pr.kinds
            .iter()
            .map(|(k, us)| ((*k).to_string(), json!(per_step(*us))))
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    Ok(json!({
        "model": match a.model { BenchModel::Conv => "conv", BenchModel::Ladder => "ladder" },
        "steps": a.steps,
        "ours": {"step_ms": plain.0, "profiled_step_ms": profiled.0, "in_operators_ms": inside.0,
                 "outside_operators_ms": outside.0, "kinds_ms": kinds_json(&o), "operators": table(&o)},
        "peer": {"step_ms": plain.1, "profiled_step_ms": profiled.1, "in_operators_ms": inside.1,
                 "outside_operators_ms": outside.1, "kinds_ms": kinds_json(&p), "operators": table(&p)},
    }))
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n - 1).collect();
        t.push('…');
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(name: &str, ts: f64, dur: f64, op: bool) -> Event {
        Event {
            name: name.into(),
            ts,
            dur,
            op,
        }
    }

    /// Self time is an operator's time less its callees'; operators inside the optimiser's
    /// annotation count as the optimiser's; the annotation itself is not an operator.
    #[test]
    fn self_times_follow_the_nesting() {
        let p = profile(
            vec![vec![
                ev("aten::conv2d", 0.0, 10.0, true),
                ev("aten::mkldnn_convolution", 1.0, 8.0, true),
                ev("aten::relu_", 10.0, 2.0, true),
                ev("Optimizer.step#Adam.step", 20.0, 10.0, false),
                ev("aten::add_", 21.0, 3.0, true),
                ev("aten::mul_", 25.0, 1.0, true),
            ]]
            .into_iter(),
        );
        assert_eq!(p.ops["aten::conv2d"].self_us, 2.0);
        assert_eq!(p.ops["aten::mkldnn_convolution"].self_us, 8.0);
        assert_eq!(p.ops["aten::relu_"].self_us, 2.0);
        assert!(!p.ops.contains_key("Optimizer.step#Adam.step"));
        // conv2d (10) + relu_ (2) + add_ (3) + mul_ (1): the annotation's own 6 are outside.
        assert_eq!(p.in_ops_us, 16.0);
        assert_eq!(p.kinds["convolution"], 10.0);
        assert_eq!(p.kinds["optimiser"], 4.0);
        assert_eq!(p.kinds["elementwise and other"], 2.0);
    }

    #[test]
    fn operators_fall_into_kinds() {
        assert_eq!(kind_of("aten::convolution_backward"), "convolution");
        assert_eq!(kind_of("aten::addmm"), "dense (matmul)");
        assert_eq!(kind_of("aten::_fused_adam_"), "optimiser");
        assert_eq!(kind_of("aten::bernoulli_"), "random numbers");
        assert_eq!(kind_of("aten::copy_"), "copies and gathers");
        assert_eq!(
            kind_of("autograd::engine::evaluate_function: AddmmBackward0"),
            "autograd engine"
        );
        assert_eq!(kind_of("AddmmBackward0"), "autograd engine");
        assert_eq!(kind_of("aten::threshold_backward"), "elementwise backward");
        assert_eq!(kind_of("aten::sum"), "reductions");
        assert_eq!(kind_of("aten::silu"), "elementwise and other");
    }
}
