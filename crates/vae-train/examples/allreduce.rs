//! The cost of data-parallel training's one collective per step: two ranks (two processes of
//! this example, over loopback, one libtorch thread each) sum a buffer the size of a preset's
//! flat gradients (plus the 3-value tail) through libtorch's ProcessGroupGloo, and rank 0
//! prints the median time per all-reduce and the bytes.
//!
//! `cargo run --release -p vae-train --example allreduce -- [default|ladder|...] [rounds]`

use std::process::Command;
use std::time::Instant;

use tch::{Device, Kind, Tensor, nn};
use vae_train::{Preset, ProcessGroup, Rendezvous, RunConfig, StoreServer};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let preset: Preset = args.next().unwrap_or_else(|| "default".into()).parse()?;
    let rounds: usize = args.next().map(|r| r.parse()).transpose()?.unwrap_or(200);
    let Some(rendezvous) = Rendezvous::from_env()? else {
        // The launcher: host the store and start two ranks of this same program.
        let store = StoreServer::host()?;
        let me = std::env::current_exe()?;
        let children: Vec<_> = (0..2)
            .map(|rank| {
                Command::new(&me)
                    .args(std::env::args().skip(1))
                    .env("WORLD_SIZE", "2")
                    .env("RANK", rank.to_string())
                    .env("MASTER_PORT", store.port().to_string())
                    .env("TORCHELASTIC_USE_AGENT_STORE", "True")
                    .spawn()
            })
            .collect::<Result<_, _>>()?;
        for mut c in children {
            c.wait()?;
        }
        return Ok(());
    };
    tch::set_num_threads(1);
    let mut run = RunConfig::preset(preset);
    run.model.set_image_shape([1, 28, 28]);
    let vs = nn::VarStore::new(Device::Cpu);
    let _model = run.model.build(&vs.root())?;
    let params: i64 = vs
        .trainable_variables()
        .iter()
        .map(|t| t.numel() as i64)
        .sum();
    let group = ProcessGroup::join(&rendezvous, Device::Cpu)?;
    let buffer = Tensor::ones([params + 3], (Kind::Float, Device::Cpu));
    for _ in 0..10 {
        group.all_reduce_sum(&buffer)?;
    }
    let mut times = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        group.all_reduce_sum(&buffer)?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    if group.rank() == 0 {
        println!(
            "{preset:?}: {params} parameters, {:.2} MB per all-reduce; 2 ranks over loopback (Gloo): median {:.3} ms, p10 {:.3} ms, p90 {:.3} ms ({rounds} rounds)",
            (params + 3) as f64 * 4.0 / 1e6,
            times[rounds / 2],
            times[rounds / 10],
            times[rounds * 9 / 10]
        );
    }
    Ok(())
}
