//! `vae manifold`.

use anyhow::{Result, bail};
use tch::{Kind, Tensor};
use vae_data::Split;
use vae_model::latent;
use vae_train::images_tensor;

use crate::args::ManifoldArgs;
use crate::commands::load_split;
use crate::grid::save_grid;

pub fn run(a: ManifoldArgs) -> Result<u8> {
    if a.grid < 2 {
        bail!("--grid must be at least 2, got {}", a.grid);
    }
    let loaded = a.model.load()?;
    let model = loaded.model.as_ref();
    let latent_dim = model.latent_dim();
    let dev = model.device();
    let (z, what) = if latent_dim == 2 {
        (
            latent::quantile_grid(a.grid).to_device(dev),
            "the prior's quantiles (Kingma & Welling's figure)".to_string(),
        )
    } else {
        let test = load_split(&a.data, Split::Test, model)?;
        if a.image >= test.len() {
            bail!(
                "--image {} is out of range: the test set has {} images",
                a.image,
                test.len()
            );
        }
        let dims = a.dims.clamp(1, latent_dim);
        let x = images_tensor(&test, dev)
            .narrow(0, a.image as i64, 1)
            .to_kind(Kind::Float)
            / 255.0;
        let mu = tch::no_grad(|| model.encode(&x))?.mu;
        let values = Tensor::linspace(-a.span, a.span, a.grid, (Kind::Float, dev));
        (
            latent::traversal(&mu, dims, &values),
            format!(
                "dimensions 0..{dims} of image {}'s latent mean over [-{}, {}]",
                a.image, a.span, a.span
            ),
        )
    };
    let images =
        tch::no_grad(|| -> Result<Tensor> { Ok(model.likelihood().mean(&model.decode(&z)?)) })?;
    let out = a
        .out
        .unwrap_or_else(|| a.model.out_dir().join("manifold.png"));
    let (w, h) = save_grid(&out, &images, a.grid as usize)?;
    println!("wrote {} ({w}x{h}: {what})", out.display());
    Ok(0)
}
