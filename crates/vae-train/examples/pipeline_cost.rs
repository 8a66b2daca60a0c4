//! How much of a training step the data pipeline costs: times the batch preparation alone
//! (gather 128 rows of the u8 dataset on the device, scale, binarise) and whole steps
//! (the same preparation, forward, backward, Adam), and prints both and their ratio.
//!
//! `cargo run --release -p vae-train --example pipeline_cost -- [data/mnist] [threads]`

use std::time::Instant;

use tch::{Device, Kind, Tensor, nn};
use vae_data::{MnistDataset, Split};
use vae_model::{ConvVae, ConvVaeConfig};
use vae_train::{Adam, images_tensor, prepare};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let data = args.next().unwrap_or_else(|| "data/mnist".into());
    let threads: i32 = args.next().map(|t| t.parse()).transpose()?.unwrap_or(2);
    tch::set_num_threads(threads);
    vae_train::tune_allocator();
    let train = MnistDataset::load(&data, Split::Train)?;
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
    let mut step = |i: i64| -> Result<(), Box<dyn std::error::Error>> {
        let t = model.elbo(&batch(i))?;
        adam.backward_step(&(&t.reconstruction + &t.kl).mean(Kind::Float), None);
        Ok(())
    };
    for i in 0..20 {
        step(i)?;
    }
    let (mut data_s, mut step_s) = (Vec::new(), Vec::new());
    for round in 0..5 {
        let t0 = Instant::now();
        for i in 0..200 {
            let _ = batch(i + round * 1000);
        }
        data_s.push(t0.elapsed().as_secs_f64() / 200.0);
        let t0 = Instant::now();
        for i in 0..40 {
            step(i + round * 1000)?;
        }
        step_s.push(t0.elapsed().as_secs_f64() / 40.0);
    }
    data_s.sort_by(f64::total_cmp);
    step_s.sort_by(f64::total_cmp);
    let (d, s) = (data_s[2], step_s[2]);
    println!(
        "data pipeline {:.3} ms per batch, whole step {:.2} ms: {:.2}% of a step (medians of 5 rounds, {threads} threads)",
        d * 1e3,
        s * 1e3,
        100.0 * d / s
    );
    Ok(())
}
