//! One module per command; what several commands share lives here.

pub mod eval;
pub mod export;
pub mod import;
pub mod info;
pub mod interpolate;
pub mod latents;
pub mod launch;
pub mod manifold;
pub mod reconstruct;
pub mod sample;
pub mod serve;
pub mod sweep;
pub mod train;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use tch::Tensor;
use vae_data::{ImageDataset, Split};
use vae_model::Vae;
use vae_train::{Checkpoint, LoadedModel, files};

use crate::args::{ModelArgs, Which};

impl ModelArgs {
    /// The checkpoint file meant.
    pub fn path(&self) -> Result<PathBuf> {
        let path = if self.run.is_dir() {
            match self.checkpoint {
                Which::Best => self.run.join(files::BEST),
                Which::Last => self.run.join(files::LAST),
            }
        } else {
            self.run.clone()
        };
        if !path.is_file() {
            bail!(
                "{} not found: is {} a run directory made by `vae train`?",
                path.display(),
                self.run.display()
            );
        }
        Ok(path)
    }

    /// Loads the model on the device asked for.
    pub fn load(&self) -> Result<LoadedModel> {
        let device = self.device.resolve()?;
        Ok(Checkpoint::load(self.path()?)?.into_model(device)?)
    }

    /// Where outputs go by default: the run directory, or the checkpoint's folder.
    pub fn out_dir(&self) -> PathBuf {
        if self.run.is_dir() {
            self.run.clone()
        } else {
            self.run.parent().map(Path::to_path_buf).unwrap_or_default()
        }
    }
}

/// Loads a split and checks its images have the model's size.
pub fn load_split(data: &Path, split: Split, model: &dyn Vae) -> Result<ImageDataset> {
    let ds = ImageDataset::load(data, split).context("cannot load the data")?;
    let [_, h, w] = model.image_shape();
    if ds.image_size() != (h as usize, w as usize) {
        bail!(
            "the images in {} are {}x{}, but the model was trained on {h}x{w}",
            data.display(),
            ds.image_size().0,
            ds.image_size().1,
        );
    }
    Ok(ds)
}

/// `t` viewed as the model's images, `[N, C, H, W]`.
pub fn as_images(t: &Tensor, model: &dyn Vae) -> Tensor {
    let [c, h, w] = model.image_shape();
    t.view([-1, c, h, w])
}
