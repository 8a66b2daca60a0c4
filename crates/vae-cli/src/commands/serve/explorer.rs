//! The model side of `vae serve`: a trained model, the test set's posterior means and their
//! principal directions, and the pictures the page asks for. It lives on one thread (libtorch
//! modules are not shared between threads); the HTTP side sends it jobs.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use tch::{Device, Kind, Tensor};
use vae_data::Split;
use vae_model::Vae;
use vae_model::latent::{self, principal_directions};
use vae_train::{Checkpoint, LoadedModel, encode_images, images_tensor};

use crate::commands::{as_images, load_split};
use crate::grid::{Png, grid_png, image_png};

/// How often the worker looks for a newer checkpoint while idle.
pub const RELOAD_CHECK: Duration = Duration::from_secs(5);

/// What the page needs to know about the model, as `/api/info` sends it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Info {
    /// The run directory or checkpoint file served.
    pub run: String,
    /// The model's kind (`conv`, `ladder`).
    pub kind: String,
    /// Epochs in the checkpoint's history.
    pub epochs: usize,
    /// Dimensions of the latent the page moves (the top group of a hierarchy).
    pub latent_dim: i64,
    /// `[C, H, W]`.
    pub image: [i64; 3],
    /// Test images the page can pick.
    pub test_images: usize,
    /// Standard deviations of the test set's posterior means along the sliders' directions.
    pub direction_std: Vec<f64>,
    /// Whether the sliders move along principal directions (`pca`) or the latent dimensions
    /// themselves (`dims`, for latents of at most the slider count).
    pub directions: &'static str,
}

/// A trained model ready to answer the page.
pub struct Explorer {
    checkpoint: PathBuf,
    modified: Option<SystemTime>,
    data: PathBuf,
    device: Device,
    max_directions: i64,
    loaded: LoadedModel,
    /// The test images, bytes, `[N, C, H, W]` on the CPU.
    test: Tensor,
    /// Their posterior means, `[N, D]`.
    mu: Tensor,
    /// The sliders' directions, `[K, D]`, and the means' standard deviations along them.
    directions: Tensor,
    std: Tensor,
    dims: bool,
    last_check: Instant,
}

/// `directions` (`[K, D]`), each row's sign chosen to point the way `previous`'s row does.
pub fn align_signs(directions: &Tensor, previous: &Tensor) -> Tensor {
    let agree = (directions * previous).sum_dim_intlist(1, true, Kind::Float);
    let sign = agree.ge(0.0).to_kind(Kind::Float) * 2.0 - 1.0;
    directions * sign
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

impl Explorer {
    /// Loads the checkpoint and encodes the test set in `data`.
    pub fn load(
        checkpoint: &Path,
        data: &Path,
        device: Device,
        max_directions: i64,
    ) -> Result<Self> {
        let stamp = modified(checkpoint);
        let loaded = Checkpoint::load(checkpoint)?.into_model(device)?;
        let model = loaded.model.as_ref();
        let test = images_tensor(&load_split(data, Split::Test, model)?, Device::Cpu);
        if test.size()[0] < 2 {
            anyhow::bail!(
                "the test set in {} has fewer than 2 images: the page needs some to explore",
                data.display()
            );
        }
        let (mu, _) = encode_images(model, &test)?;
        let mu = mu.to_device(Device::Cpu).to_kind(Kind::Float);
        let d = mu.size()[1];
        let (directions, std, dims) = if d <= max_directions {
            let std = mu.std_dim(0, true, false);
            (Tensor::eye(d, (Kind::Float, Device::Cpu)), std, true)
        } else {
            let (v, s) = principal_directions(&mu, max_directions);
            (v, s, false)
        };
        Ok(Self {
            checkpoint: checkpoint.to_path_buf(),
            modified: stamp,
            data: data.to_path_buf(),
            device,
            max_directions,
            loaded,
            test,
            mu,
            directions,
            std,
            dims,
            last_check: Instant::now(),
        })
    }

    /// Reloads the checkpoint if it changed since it was loaded (a run still training writes
    /// a new one after each better epoch); checks at most every [`RELOAD_CHECK`]. A checkpoint
    /// that fails to load is not tried again until it changes once more (the model loaded
    /// before goes on serving). The sliders' directions keep their signs across a reload, so
    /// that a slider the page shows does not flip.
    pub fn reload_if_changed(&mut self) -> Result<bool> {
        if self.last_check.elapsed() < RELOAD_CHECK {
            return Ok(false);
        }
        self.last_check = Instant::now();
        let now = modified(&self.checkpoint);
        if now.is_none() || now == self.modified {
            return Ok(false);
        }
        // Whatever comes of it, this version of the file is dealt with.
        self.modified = now;
        let mut fresh = Self::load(
            &self.checkpoint,
            &self.data,
            self.device,
            self.max_directions,
        )
        .with_context(|| {
            format!(
                "cannot reload {} (the model loaded before goes on serving)",
                self.checkpoint.display()
            )
        })?;
        if fresh.dims == self.dims && fresh.directions.size() == self.directions.size() {
            fresh.directions = align_signs(&fresh.directions, &self.directions);
        }
        fresh.modified = now;
        *self = fresh;
        Ok(true)
    }

    fn model(&self) -> &dyn Vae {
        self.loaded.model.as_ref()
    }

    /// The page's facts about the model.
    pub fn info(&self, run: &str) -> Info {
        let model = self.model();
        Info {
            run: run.to_string(),
            kind: self.loaded.checkpoint.model_config.kind().to_string(),
            epochs: self.loaded.checkpoint.state.history.len(),
            latent_dim: model.latent_dim(),
            image: model.image_shape(),
            test_images: self.test_len(),
            direction_std: Vec::try_from(self.std.to_kind(Kind::Double)).unwrap_or_default(),
            directions: if self.dims { "dims" } else { "pca" },
        }
    }

    /// The model's images, `[C, H, W]`.
    pub fn image_shape(&self) -> [i64; 3] {
        self.model().image_shape()
    }

    /// Test images available.
    pub fn test_len(&self) -> usize {
        self.test.size()[0] as usize
    }

    /// Slider directions available.
    pub fn direction_count(&self) -> usize {
        self.directions.size()[0] as usize
    }

    fn test_image(&self, index: usize) -> Tensor {
        self.test.narrow(0, index as i64, 1).to_kind(Kind::Float) / 255.0
    }

    /// The likelihood's means for latents `z`, as images.
    fn decode(&self, z: &Tensor) -> Result<Tensor> {
        let model = self.model();
        let z = z.to_device(model.device());
        let x = tch::no_grad(|| model.decode(&z).map(|p| model.likelihood().mean(&p)))?;
        Ok(as_images(&x, model).to_device(Device::Cpu))
    }

    /// 64 samples at `temperature` from seed `seed`, 8 by 8.
    pub fn samples(&self, temperature: f64, seed: u64) -> Result<Png> {
        tch::manual_seed(seed as i64);
        let x = tch::no_grad(|| self.model().sample(64, temperature))?;
        grid_png(&x.to_device(Device::Cpu), 8)
    }

    /// Test image `index`.
    pub fn test_png(&self, index: usize) -> Result<Png> {
        image_png(&self.test_image(index))
    }

    /// The decoding of test image `index`'s posterior mean moved by `coords[k]` standard
    /// deviations along slider direction k.
    pub fn explore(&self, index: usize, coords: &[f64]) -> Result<Png> {
        // Out of place: `get` is a view of the means.
        let z = coords
            .iter()
            .enumerate()
            .fold(self.mu.get(index as i64), |z, (k, &c)| {
                z + self.directions.get(k as i64) * (c * self.std.double_value(&[k as i64]))
            });
        image_png(&self.decode(&z.unsqueeze(0))?)
    }

    /// Test image `a`, `steps` decodings on the path between the two posterior means, and
    /// test image `b`, in a row.
    pub fn interpolate(&self, a: usize, b: usize, steps: i64, path: latent::Path) -> Result<Png> {
        let z = latent::interpolate(&self.mu.get(a as i64), &self.mu.get(b as i64), steps, path);
        let row = Tensor::cat(
            &[self.test_image(a), self.decode(&z)?, self.test_image(b)],
            0,
        );
        grid_png(&row, (steps + 2) as usize)
    }

    /// Encodes a drawn image (`[C·H·W]` or `[H·W]` values in [0, 1], row-major): its
    /// reconstruction and the `k` test images whose posterior means are nearest its own, with
    /// their distances.
    pub fn encode(&self, pixels: &[f32], k: usize) -> Result<(Png, Vec<(usize, f64)>)> {
        let model = self.model();
        let [c, h, w] = model.image_shape();
        let x = if pixels.len() as i64 == h * w {
            Tensor::from_slice(pixels)
                .view([1, 1, h, w])
                .repeat([1, c, 1, 1])
        } else {
            Tensor::from_slice(pixels).view([1, c, h, w])
        };
        let (recon, mu) = tch::no_grad(|| -> Result<(Tensor, Tensor)> {
            let x = x.to_device(model.device());
            let recon = model.reconstruct(&x)?;
            let mu = model.encode(&x)?.mu;
            Ok((recon, mu))
        })?;
        let mu = mu.to_device(Device::Cpu).to_kind(Kind::Float);
        let dist = (&self.mu - &mu)
            .square()
            .sum_dim_intlist(1, false, Kind::Float)
            .sqrt();
        let k = k.min(self.test_len()) as i64;
        let (values, indices) = dist.topk(k, 0, false, true);
        let values: Vec<f64> = Vec::try_from(values.to_kind(Kind::Double))?;
        let indices: Vec<i64> = Vec::try_from(indices)?;
        let nearest = indices
            .into_iter()
            .zip(values)
            .map(|(i, d)| (i as usize, d))
            .collect();
        let png = image_png(&as_images(&recon, model).to_device(Device::Cpu))?;
        Ok((png, nearest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reloaded_directions_keep_their_signs() {
        let old = Tensor::from_slice(&[1.0f32, 0.0, 0.0, 1.0]).view([2, 2]);
        // The first direction came back flipped, the second nearly the same.
        let new = Tensor::from_slice(&[-0.9f32, 0.1, 0.1, 0.9]).view([2, 2]);
        let aligned = align_signs(&new, &old);
        let v: Vec<f32> = Vec::try_from(aligned.view([-1])).unwrap();
        assert_eq!(v, [0.9, -0.1, 0.1, 0.9]);
    }
}
