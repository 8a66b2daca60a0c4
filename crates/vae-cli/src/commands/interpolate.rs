//! `vae interpolate`.

use anyhow::{Result, bail};
use tch::{Kind, Tensor};
use vae_data::Split;
use vae_model::latent::{self, Path};
use vae_train::images_tensor;

use crate::args::InterpolateArgs;
use crate::commands::{as_images, load_split};
use crate::grid::save_grid;

pub fn run(a: InterpolateArgs) -> Result<u8> {
    if a.steps < 2 {
        bail!("--steps must be at least 2, got {}", a.steps);
    }
    let loaded = a.model.load()?;
    let model = loaded.model.as_ref();
    let test = load_split(&a.data, Split::Test, model)?;
    for i in [a.from, a.to] {
        if i >= test.len() {
            bail!(
                "image index {i} is out of range: the test set has {} images (0 to {})",
                test.len(),
                test.len() - 1
            );
        }
    }
    let x = images_tensor(&test, model.device());
    let pick = |i: usize| x.narrow(0, i as i64, 1).to_kind(Kind::Float) / 255.0;
    let (xa, xb) = (pick(a.from), pick(a.to));
    let path = if a.slerp {
        Path::Spherical
    } else {
        Path::Linear
    };
    let decoded = tch::no_grad(|| -> Result<Tensor> {
        let (ma, mb) = (
            model.encode(&xa)?.mu.squeeze_dim(0),
            model.encode(&xb)?.mu.squeeze_dim(0),
        );
        let z = latent::interpolate(&ma, &mb, a.steps, path);
        Ok(model.likelihood().mean(&model.decode(&z)?))
    })?;
    let row = Tensor::cat(&[xa, as_images(&decoded, model), xb], 0);
    let out = a.out.unwrap_or_else(|| {
        a.model
            .out_dir()
            .join(format!("interpolate-{}-{}.png", a.from, a.to))
    });
    let (w, h) = save_grid(&out, &row, (a.steps + 2) as usize)?;
    println!(
        "wrote {} ({w}x{h}: image {}, {} {} steps, image {})",
        out.display(),
        a.from,
        a.steps,
        if a.slerp { "spherical" } else { "linear" },
        a.to
    );
    Ok(0)
}
