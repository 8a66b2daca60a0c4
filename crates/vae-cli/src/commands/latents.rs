//! `vae latents`.

use anyhow::{Result, bail};
use tch::{Device, Tensor};
use vae_data::Split;
use vae_model::latent::pca2;
use vae_train::{encode_images, images_tensor};

use crate::args::{LatentsArgs, SplitArg};
use crate::commands::load_split;
use crate::plot::scatter;

/// The CSV of `latents`: index, label (empty for an unlabelled set), then each mean and each
/// log-variance.
fn latents_csv(labels: Option<&[u8]>, mu: &[f32], logvar: &[f32], d: usize) -> String {
    let mut csv = String::from("index,label");
    for i in 0..d {
        csv.push_str(&format!(",mu_{i}"));
    }
    for i in 0..d {
        csv.push_str(&format!(",logvar_{i}"));
    }
    csv.push('\n');
    for k in 0..mu.len() / d.max(1) {
        match labels {
            Some(l) => csv.push_str(&format!("{k},{}", l[k])),
            None => csv.push_str(&format!("{k},")),
        }
        for v in mu[k * d..(k + 1) * d]
            .iter()
            .chain(&logvar[k * d..(k + 1) * d])
        {
            csv.push_str(&format!(",{v}"));
        }
        csv.push('\n');
    }
    csv
}

pub fn run(a: LatentsArgs) -> Result<u8> {
    let (split, split_name) = match a.split {
        SplitArg::Test => (Split::Test, "test"),
        SplitArg::Train => (Split::Train, "train"),
    };
    let loaded = a.model.load()?;
    let model = loaded.model.as_ref();
    let ds = load_split(&a.data, split, model)?;
    let (mu, logvar) = encode_images(model, &images_tensor(&ds, Device::Cpu))?;
    let d = model.latent_dim() as usize;
    let mu_v: Vec<f32> = Vec::try_from(&mu.view([-1]))?;
    let lv_v: Vec<f32> = Vec::try_from(&logvar.view([-1]))?;
    let labels = ds.labels().map(|l| l.to_vec());
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| a.model.out_dir().join("latents.csv"));
    vae_data::write_atomic(
        &out,
        latents_csv(labels.as_deref(), &mu_v, &lv_v, d).as_bytes(),
    )?;
    println!(
        "wrote {} ({} rows, {d} latent dims)",
        out.display(),
        ds.len()
    );
    if let Some(p) = &a.npy {
        vae_data::write_npy(p, &[ds.len(), d], &mu_v)?;
        println!(
            "wrote {} (float32 latent means, {} x {d})",
            p.display(),
            ds.len()
        );
    }
    if let Some(p) = &a.plot {
        let Some(labels) = &labels else {
            bail!(
                "--plot colours the points by label, but {} has no label file for the {split_name} images: drop --plot, or add the labels",
                a.data.display()
            );
        };
        let (xy, how) = match d {
            1 => (
                Tensor::cat(&[mu.shallow_clone(), Tensor::zeros_like(&mu)], 1),
                "z0",
            ),
            2 => (mu.shallow_clone(), "z0 / z1"),
            _ => (
                pca2(&mu),
                "first two principal components of the latent means",
            ),
        };
        let v: Vec<f32> = Vec::try_from(&xy.contiguous().view([-1]))?;
        let points: Vec<(f64, f64, u8)> = labels
            .iter()
            .enumerate()
            .map(|(k, &l)| (f64::from(v[2 * k]), f64::from(v[2 * k + 1]), l))
            .collect();
        let title = format!("{} {split_name} images: {how}", ds.len());
        let (x_name, y_name) = if d > 2 { ("PC1", "PC2") } else { ("z0", "z1") };
        scatter(p, &points, &title, x_name, y_name)?;
        println!("wrote {}", p.display());
    }
    Ok(0)
}
