//! `vae reconstruct`.

use std::path::Path;

use anyhow::{Result, bail};
use tch::{Device, Kind, Tensor};
use vae_data::Split;
use vae_model::Vae;
use vae_train::images_tensor;

use crate::args::ReconstructArgs;
use crate::commands::{as_images, load_split};
use crate::grid::save_grid;

/// Rows of 8 originals, each above its reconstructions; returns the PNG size.
pub fn reconstruction_grid(
    model: &dyn Vae,
    test_x: &Tensor,
    n: i64,
    out: &Path,
) -> Result<(u32, u32)> {
    save_grid(out, &reconstruction_rows(model, test_x, n)?, 8)
}

/// The first `n` images of `test_x` (bytes) in rows of 8, each row above its reconstructions,
/// as `[2n, C, H, W]` in [0, 1].
pub fn reconstruction_rows(model: &dyn Vae, test_x: &Tensor, n: i64) -> Result<Tensor> {
    let n = n.min(test_x.size()[0]);
    let originals = test_x
        .narrow(0, 0, n)
        .to_device(model.device())
        .to_kind(Kind::Float)
        / 255.0;
    let recon = tch::no_grad(|| model.reconstruct(&originals))?;
    let mut rows = Vec::new();
    for start in (0..n).step_by(8) {
        let len = 8.min(n - start);
        rows.push(originals.narrow(0, start, len));
        rows.push(recon.narrow(0, start, len));
    }
    Ok(as_images(&Tensor::cat(&rows, 0), model))
}

pub fn run(a: ReconstructArgs) -> Result<u8> {
    if a.n < 1 {
        bail!("-n must be at least 1, got {}", a.n);
    }
    let loaded = a.model.load()?;
    let model = loaded.model.as_ref();
    let test = load_split(&a.data, Split::Test, model)?;
    let out = a
        .out
        .unwrap_or_else(|| a.model.out_dir().join("reconstruct.png"));
    let (w, h) = reconstruction_grid(model, &images_tensor(&test, Device::Cpu), a.n, &out)?;
    println!(
        "wrote {} ({w}x{h}: test images above their reconstructions)",
        out.display()
    );
    Ok(0)
}
