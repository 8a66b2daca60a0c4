//! `vae sample`.

use anyhow::{Result, bail};

use crate::args::SampleArgs;
use crate::grid::save_grid;

pub fn run(a: SampleArgs) -> Result<u8> {
    if a.n < 1 {
        bail!("-n must be at least 1, got {}", a.n);
    }
    if !(a.temperature.is_finite() && a.temperature > 0.0) {
        bail!(
            "--temperature must be a positive number, got {}",
            a.temperature
        );
    }
    let loaded = a.model.load()?;
    let model = loaded.model.as_ref();
    tch::manual_seed(a.seed);
    // The likelihood's means, or with --draw images drawn from it.
    let images = tch::no_grad(|| {
        if a.draw {
            model.draw(a.n, a.temperature)
        } else {
            model.sample(a.n, a.temperature)
        }
    })?;
    let out = a
        .out
        .unwrap_or_else(|| a.model.out_dir().join("sample.png"));
    let (w, h) = save_grid(&out, &images, 8)?;
    println!("wrote {} ({w}x{h}, {} samples)", out.display(), a.n);
    Ok(0)
}
