//! Where a training step's time goes: times, over interleaved rounds, the batch preparation,
//! forward + loss, backward (gradients) and the optimiser step of the reference model, and
//! prints each as a median and a share of the whole step.
//!
//! `cargo run --release -p vae-train --example step_breakdown -- [data/mnist] [threads]`

use std::time::Instant;

use tch::{Device, Kind, Tensor, nn};
use vae_data::{ImageDataset, Split};
use vae_model::Vae;
use vae_model::{ConvVae, ConvVaeConfig};
use vae_train::{Adam, images_tensor};
use vae_train::{prepare, tune_allocator};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let data = args.next().unwrap_or_else(|| "data/mnist".into());
    let threads: i32 = args.next().map(|t| t.parse()).transpose()?.unwrap_or(2);
    tch::set_num_threads(threads);
    tune_allocator();
    let train = ImageDataset::load(&data, Split::Train)?;
    let x = images_tensor(&train, Device::Cpu);
    let n = x.size()[0];
    let perm = Tensor::randperm(n, (Kind::Int64, Device::Cpu));
    let batch = |i: i64| {
        prepare(
            &x.index_select(0, &perm.narrow(0, (i * 128) % (n - 128), 128)),
            true,
        )
    };

    let vs = nn::VarStore::new(Device::Cpu);
    let model = ConvVae::new(&vs.root(), &ConvVaeConfig::default())?;
    let mut adam = Adam::new(&vs, 1e-3, (0.9, 0.999), 1e-8);
    const ROUNDS: usize = 7;
    const STEPS: i64 = 30;
    let mut parts = [const { Vec::new() }; 4];
    let mut whole = Vec::new();
    for round in 0..=ROUNDS {
        let mut t = [0.0f64; 4];
        let t_round = Instant::now();
        for i in 0..STEPS {
            let t0 = Instant::now();
            let xb = batch(i + round as i64 * 1000);
            let t1 = Instant::now();
            let e = model.elbo(&xb)?;
            let loss = (&e.reconstruction + &e.kl).mean(Kind::Float);
            let t2 = Instant::now();
            let grads = adam.gradients(&loss);
            let t3 = Instant::now();
            adam.step(&grads);
            let t4 = Instant::now();
            for (acc, (a, b)) in t.iter_mut().zip([(t0, t1), (t1, t2), (t2, t3), (t3, t4)]) {
                *acc += (b - a).as_secs_f64();
            }
        }
        // Round 0 warms the kernels up and is not counted.
        if round > 0 {
            for (p, v) in parts.iter_mut().zip(t) {
                p.push(v / STEPS as f64);
            }
            whole.push(t_round.elapsed().as_secs_f64() / STEPS as f64);
        }
    }
    let whole = median(whole);
    println!(
        "whole step {:.2} ms (median of {ROUNDS} rounds of {STEPS} steps, {threads} threads)",
        whole * 1e3
    );
    for (name, p) in ["data", "forward + loss", "backward", "optimiser"]
        .iter()
        .zip(parts)
    {
        let m = median(p);
        println!(
            "  {name:<15} {:6.2} ms  {:5.1}%",
            m * 1e3,
            100.0 * m / whole
        );
    }
    Ok(())
}
