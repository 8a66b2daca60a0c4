//! Test-set evaluation: the ELBO and the importance-weighted estimate of log p(x).

use tch::{Device, Kind, Tensor};
use vae_data::ImageDataset;
use vae_model::{IwEvaluator, IwPrecision, Vae};

use crate::error::Result;

/// Images of a dataset as a `u8` tensor `[N, C, H, W]` on `device` (channels first, as the
/// models take them; the data set stores them last).
pub fn images_tensor(data: &ImageDataset, device: Device) -> Tensor {
    let (h, w) = data.image_size();
    let (n, c) = (data.len() as i64, data.channels() as i64);
    let raw = data
        .images()
        .as_slice()
        .expect("datasets are stored contiguously");
    let t = Tensor::from_slice(raw);
    // One channel: NHWC memory is NCHW memory, so a view suffices (and keeps plain strides).
    let t = if c == 1 {
        t.view([n, 1, h as i64, w as i64])
    } else {
        t.view([n, h as i64, w as i64, c])
            .permute([0, 3, 1, 2])
            .contiguous()
    };
    t.to_device(device)
}

/// Pixels in [0, 1] of `u8` images, binarised (x ~ Bernoulli(pixel)) when asked.
///
/// The draw is `1[u < p]` with u ~ U[0, 1), which has exactly the law of `p.bernoulli()`
/// (P(u < p) = p, also at p = 0 and p = 1) and is cheaper on the CPU, where libtorch's
/// `bernoulli` samples element by element (`docs/performance.md`).
pub fn prepare(images_u8: &Tensor, binarize: bool) -> Tensor {
    let x = images_u8.to_kind(Kind::Float) / 255.0;
    if binarize {
        x.rand_like().lt_tensor(&x).to_kind(Kind::Float)
    } else {
        x
    }
}

/// Mean ELBO terms over a set of images (nats per image).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ElboSummary {
    /// The ELBO (higher is better).
    pub elbo: f64,
    /// Mean KL(q(z|x) ‖ p(z)).
    pub kl: f64,
    /// Mean KL of each latent group ([`vae_model::ElboTerms::kl_groups`]: one for a
    /// single-latent model; the top first, then the lower groups, for a hierarchical one).
    pub kl_groups: Vec<f64>,
    /// Mean −log p(x|z).
    pub reconstruction: f64,
    /// Images evaluated.
    pub images: usize,
}

/// Images per chunk of [`evaluate_elbo`]; each chunk draws its noise from its own seed.
const ELBO_CHUNK: i64 = 1000;

/// The ELBO of `images_u8` (`[N, C, H, W]`, u8) under `model`, one z per image, with
/// binarisation and sampling noise drawn from `seed` (so repeated calls agree).
///
/// The images go in chunks of 1,000, each drawing from a seed derived from (`seed`, chunk), so
/// the figure does not depend on which process of a data-parallel run evaluates which chunk.
pub fn evaluate_elbo(
    model: &dyn Vae,
    images_u8: &Tensor,
    binarize: bool,
    seed: u64,
) -> Result<ElboSummary> {
    let sums = elbo_sums(model, images_u8, binarize, seed, (0, 1))?;
    Ok(summarize_elbo(&sums, images_u8.size()[0]))
}

/// splitmix64: decorrelates (seed, purpose, counter) into a libtorch seed. The trainer's
/// purposes are 1 (initialisation), 2 (an epoch's permutation) and 3 (a step's draws);
/// [`EVAL_CHUNK`] is an evaluation chunk's.
pub(crate) fn mix(seed: u64, purpose: u64, counter: u64) -> i64 {
    let mut z = seed
        ^ purpose.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ counter.wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) >> 1) as i64
}

/// The purpose of an evaluation chunk's seed in [`mix`].
const EVAL_CHUNK: u64 = 4;

/// The sums behind [`evaluate_elbo`] over the chunks that `shard` = (rank, world) owns
/// (chunk i belongs to rank i mod world), as one f64 tensor on the model's device:
/// [reconstruction, KL, KL of each of the model's latent groups]. Summed over the ranks they
/// are the whole set's; a rank that owns no chunk returns zeros of the same length.
pub(crate) fn elbo_sums(
    model: &dyn Vae,
    images_u8: &Tensor,
    binarize: bool,
    seed: u64,
    (rank, world): (usize, usize),
) -> Result<Tensor> {
    let n = images_u8.size()[0];
    let zero = || Tensor::zeros([], (Kind::Double, model.device()));
    let (mut rec, mut kl) = (zero(), zero());
    let mut groups: Vec<Tensor> = (0..model.config().latent_groups())
        .map(|_| zero())
        .collect();
    tch::no_grad(|| -> Result<()> {
        let mut start = 0;
        let mut chunk = 0u64;
        while start < n {
            let len = ELBO_CHUNK.min(n - start);
            if chunk % world as u64 == rank as u64 {
                tch::manual_seed(mix(seed, EVAL_CHUNK, chunk));
                let x = prepare(
                    &images_u8.narrow(0, start, len).to_device(model.device()),
                    binarize,
                );
                let terms = model.elbo(&x)?;
                rec += terms.reconstruction.sum(Kind::Double);
                kl += terms.kl.sum(Kind::Double);
                debug_assert_eq!(terms.kl_groups.len(), groups.len(), "one KL per group");
                for (sum, g) in groups.iter_mut().zip(&terms.kl_groups) {
                    *sum += g.sum(Kind::Double);
                }
            }
            start += len;
            chunk += 1;
        }
        Ok(())
    })?;
    let mut all = vec![rec, kl];
    all.extend(groups);
    Ok(Tensor::stack(&all, 0))
}

/// The means of `n` images from the sums of [`elbo_sums`].
pub(crate) fn summarize_elbo(sums: &Tensor, n: i64) -> ElboSummary {
    let v: Vec<f64> = Vec::try_from(&sums.to_device(tch::Device::Cpu)).unwrap_or_default();
    let images = n.max(0) as usize;
    let n = n.max(1) as f64;
    let (rec, kl) = (
        v.first().copied().unwrap_or(0.0) / n,
        v.get(1).copied().unwrap_or(0.0) / n,
    );
    ElboSummary {
        elbo: -(rec + kl),
        kl,
        kl_groups: v.iter().skip(2).map(|g| g / n).collect(),
        reconstruction: rec,
        images,
    }
}

/// An importance-weighted estimate of log p(x), averaged over images.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct IwEstimate {
    /// Mean over images of the k-sample bound (nats; −this is the NLL).
    pub log_likelihood: f64,
    /// Standard error of that mean over images.
    pub std_error: f64,
    /// Importance samples per image.
    pub k: i64,
    /// Images evaluated.
    pub images: usize,
    /// Whether some convolutions took their products in bf16 ([`IwPath::bf16_products`]).
    pub bf16_products: bool,
}

/// Which computation [`evaluate_iw`] runs; all give the same bound at the same draws, to float
/// rounding in f32 and to bf16 rounding of some convolutions' products where
/// [`IwEstimate::bf16_products`] says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IwPath {
    /// The model's [`Vae::iw_evaluator`] where it has one, prepared once for all the images,
    /// in this arithmetic.
    Fast(IwPrecision),
    /// [`Vae::log_likelihood_iw`] batch after batch: the reference the fast path is checked
    /// against.
    Reference,
}

impl Default for IwPath {
    fn default() -> Self {
        Self::Fast(IwPrecision::Auto)
    }
}

impl IwPath {
    /// The prepared evaluator this path runs, if any (built under `no_grad`).
    pub(crate) fn evaluator(self, model: &dyn Vae) -> Option<Box<dyn IwEvaluator + '_>> {
        match self {
            Self::Fast(precision) => tch::no_grad(|| model.iw_evaluator(precision)),
            Self::Reference => None,
        }
    }

    /// Whether this path takes some convolutions' products in bf16 for `model` on this
    /// machine ([`IwEvaluator::bf16_products`]).
    pub fn bf16_products(self, model: &dyn Vae) -> bool {
        self.evaluator(model).is_some_and(|e| e.bf16_products())
    }
}

/// The importance-weighted bound with `k` samples for each of `images_u8`, binarised with
/// noise from `seed` (each batch of images from a seed derived from `seed` and its first
/// image), by the model's fastest path ([`IwPath::default`]). `progress(done, total)`
/// is called after each batch of images.
pub fn evaluate_iw(
    model: &dyn Vae,
    images_u8: &Tensor,
    k: i64,
    binarize: bool,
    seed: u64,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<IwEstimate> {
    evaluate_iw_by(
        model,
        images_u8,
        (k, IwPath::default()),
        binarize,
        seed,
        progress,
    )
}

/// [`evaluate_iw`] computed by `path`: both paths give the same bound at the same draws.
pub fn evaluate_iw_by(
    model: &dyn Vae,
    images_u8: &Tensor,
    (k, path): (i64, IwPath),
    binarize: bool,
    seed: u64,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<IwEstimate> {
    let n = images_u8.size()[0];
    let mut per_image = Vec::with_capacity(n.max(0) as usize);
    let fast = path.evaluator(model);
    iw_batches(
        (model, fast.as_deref()),
        images_u8,
        k,
        binarize,
        seed,
        0,
        &mut |_, values| {
            per_image.extend_from_slice(values);
            progress(per_image.len(), n as usize);
            Ok(())
        },
    )?;
    Ok(IwEstimate {
        bf16_products: fast.is_some_and(|e| e.bf16_products()),
        ..summarize_iw(&per_image, k)
    })
}

/// The mean and its standard error over images of per-image bounds.
pub(crate) fn summarize_iw(per_image: &[f64], k: i64) -> IwEstimate {
    let n = per_image.len();
    let mean = per_image.iter().sum::<f64>() / n.max(1) as f64;
    let std_error = if n > 1 {
        let var = per_image.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        (var / n as f64).sqrt()
    } else {
        f64::NAN
    };
    IwEstimate {
        log_likelihood: mean,
        std_error,
        k,
        images: n,
        bf16_products: false,
    }
}

/// The purpose of an importance-weighted batch's seed in [`mix`].
const IW_BATCH: u64 = 5;

/// Images per batch of an importance-weighted evaluation with `k` samples on `device`, and the
/// most rows (image-samples) the model computes at once.
pub(crate) fn iw_batching(device: Device, k: i64) -> (i64, i64) {
    // On the CPU, 1k decoder rows at once keep each activation (~25 MB for the default model)
    // under the allocator's mmap threshold: 4k rows spent much of the time in page faults.
    let max_rows: i64 = if device == Device::Cpu { 1024 } else { 65536 };
    ((max_rows / k.max(1)).clamp(1, 100), max_rows)
}

/// The seed of the batch of an importance-weighted evaluation that starts at image `start`:
/// `seed` itself for the first batch, then one derived from (`seed`, `start`). Each batch draws
/// the same binarisation and samples however the evaluation was interrupted and resumed.
fn iw_batch_seed(seed: u64, start: i64) -> i64 {
    if start == 0 {
        seed as i64
    } else {
        mix(seed, IW_BATCH, start as u64)
    }
}

/// The batches of an importance-weighted evaluation from image `from` (a batch boundary) on:
/// each batch's per-image bounds go to `on_batch(start, bounds)` as they are computed, by
/// `fast` (the model's prepared evaluator, [`IwPath::evaluator`]) or else the model's own pass.
pub(crate) fn iw_batches(
    (model, fast): (&dyn Vae, Option<&dyn IwEvaluator>),
    images_u8: &Tensor,
    k: i64,
    binarize: bool,
    seed: u64,
    from: i64,
    on_batch: &mut dyn FnMut(i64, &[f64]) -> Result<()>,
) -> Result<()> {
    let n = images_u8.size()[0];
    let (batch, max_rows) = iw_batching(model.device(), k);
    debug_assert!(
        from % batch == 0 || from >= n,
        "batches start at multiples of {batch}"
    );
    tch::no_grad(|| -> Result<()> {
        let mut start = from;
        while start < n {
            let len = batch.min(n - start);
            tch::manual_seed(iw_batch_seed(seed, start));
            let x = prepare(
                &images_u8.narrow(0, start, len).to_device(model.device()),
                binarize,
            );
            let ll = match fast {
                Some(e) => e.log_likelihood_iw(&x, k, max_rows)?,
                None => model.log_likelihood_iw(&x, k, max_rows)?,
            };
            let values: Vec<f64> = Vec::try_from(ll.to_kind(Kind::Double).to_device(Device::Cpu))?;
            on_batch(start, &values)?;
            start += len;
        }
        Ok(())
    })
}

/// Posterior means and log-variances of `images_u8` (`[N, C, H, W]`, u8, scaled to [0, 1]),
/// `[N, latent]` each, on the CPU; encoded 1,000 at a time on the model's device.
pub fn encode_images(model: &dyn Vae, images_u8: &Tensor) -> Result<(Tensor, Tensor)> {
    let n = images_u8.size()[0];
    let (mut mus, mut lvs) = (Vec::new(), Vec::new());
    tch::no_grad(|| -> Result<()> {
        let mut s = 0;
        while s < n {
            let len = 1000.min(n - s);
            let x = images_u8
                .narrow(0, s, len)
                .to_device(model.device())
                .to_kind(Kind::Float)
                / 255.0;
            let q = model.encode(&x)?;
            mus.push(q.mu.to_device(Device::Cpu));
            lvs.push(q.logvar.to_device(Device::Cpu));
            s += len;
        }
        Ok(())
    })?;
    Ok((Tensor::cat(&mus, 0), Tensor::cat(&lvs, 0)))
}

#[cfg(test)]
mod tests {
    use tch::{Device, Kind, Tensor};

    use super::prepare;

    #[test]
    fn binarised_pixels_are_bernoulli_of_the_intensity() {
        // Every intensity 0..=255, 2000 draws each: binary values whose frequency is the
        // intensity / 255 (within 5 standard errors), exactly 0 for 0 and 1 for 255.
        let _guard = crate::tests::lock();
        tch::manual_seed(7);
        let levels = Tensor::arange(256, (Kind::Uint8, Device::Cpu));
        let images = levels.view([1, 1, 1, 256]).repeat([2000, 1, 1, 1]);
        let x = prepare(&images, true);
        assert_eq!(x.kind(), Kind::Float);
        assert_eq!(x.size(), images.size());
        let ones = x.eq(1.0).logical_or(&x.eq(0.0)).all().int64_value(&[]);
        assert_eq!(ones, 1, "values other than 0 and 1");
        let freq: Vec<f64> = Vec::try_from(x.mean_dim(0, false, Kind::Double).view([-1])).unwrap();
        for (level, f) in freq.iter().enumerate() {
            let p = level as f64 / 255.0;
            let se = (p * (1.0 - p) / 2000.0).sqrt();
            assert!(
                (f - p).abs() <= 5.0 * se + 1e-12,
                "level {level}: {f} vs {p}"
            );
        }
        assert_eq!(freq[0], 0.0);
        assert_eq!(freq[255], 1.0);

        let plain = prepare(&images, false);
        let want = images.to_kind(Kind::Float) / 255.0;
        assert_eq!((plain - want).abs().max().double_value(&[]), 0.0);
    }
}
