//! The autoregressive (PixelCNN-style) head over the decoder's outputs: [`PixelHead`]
//! configures it, `PixelCnn` computes it.

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor, nn};

use crate::blocks::{cast, torch_default};
use crate::likelihood::Likelihood;

/// A small PixelCNN-style head (van den Oord et al., "Pixel Recurrent Neural Networks", ICML
/// 2016; used on a VAE decoder as in PixelVAE, Gulrajani et al., ICLR 2017): p(x | z) =
/// Π_i p(x_i | d_i(z) + g_i(x_<i, d(z))), where d(z) are the decoder's outputs (the
/// likelihood's parameters: Bernoulli logits, or the logistic mixture's weights, means and
/// scales) and g is a stack of masked convs that sees only the pixels before i in raster
/// order. Its output layer starts at zero, so a fresh model with the head equals one without
/// it.
///
/// Training and the likelihood stay one parallel pass (the pixels x are known); sampling is
/// sequential, one pass per pixel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PixelHead {
    /// Width of the masked convs.
    pub channels: i64,
    /// Masked convs: a 7×7 of mask type A (excludes the pixel itself), then `layers − 1`
    /// residual 3×3 convs of mask type B.
    pub layers: usize,
}

impl Default for PixelHead {
    fn default() -> Self {
        Self {
            channels: 16,
            layers: 3,
        }
    }
}

impl PixelHead {
    /// Checks its sizes, and that the images (`input_channels`) have one channel: the head
    /// orders the pixels of one plane.
    pub fn validate(&self, input_channels: i64) -> Result<(), String> {
        if input_channels != 1 {
            return Err(format!(
                "the pixel head orders pixels of one-channel images only, got {input_channels} channels"
            ));
        }
        if !(1..=4096).contains(&self.channels) || !(1..=64).contains(&self.layers) {
            return Err(format!(
                "the pixel head needs 1 to 4096 channels and 1 to 64 layers, got {} and {}",
                self.channels, self.layers
            ));
        }
        Ok(())
    }
}

/// A k×k stride-1 conv whose kernel is masked so output pixel (i, j) sees only input pixels
/// before it in raster order: rows above, and the same row to the left; type B also sees
/// (i, j) itself (van den Oord et al. 2016).
#[derive(Debug)]
struct MaskedConv {
    weight: Tensor,
    bias: Tensor,
    /// `[1, 1, k, k]` of 0/1, not a variable.
    mask: Tensor,
    k: i64,
}

impl MaskedConv {
    fn new(p: nn::Path<'_>, c_in: i64, c_out: i64, k: i64, include_centre: bool) -> Self {
        let init = torch_default(c_in * k * k);
        let weight = p.var("weight", &[c_out, c_in, k, k], init);
        let bias = p.var("bias", &[c_out], init);
        Self {
            weight,
            bias,
            mask: raster_mask(k, include_centre, p.device()),
            k,
        }
    }

    fn forward(&self, x: &Tensor, kind: Kind) -> Tensor {
        let w = cast(&(&self.weight * &self.mask), kind);
        let pad = self.k / 2;
        x.conv2d(
            &w,
            Some(&cast(&self.bias, kind)),
            [1, 1],
            [pad, pad],
            [1, 1],
            1,
        )
    }
}

/// The raster-order mask of a k×k kernel (k odd): 1 above the centre row, and left of the
/// centre in its row; the centre itself for type B.
pub(crate) fn raster_mask(k: i64, include_centre: bool, device: Device) -> Tensor {
    let c = k / 2;
    let values: Vec<f32> = (0..k * k)
        .map(|idx| {
            let (i, j) = (idx / k, idx % k);
            let before = i < c || (i == c && j < c);
            let centre = i == c && j == c;
            if before || (centre && include_centre) {
                1.0
            } else {
                0.0
            }
        })
        .collect();
    Tensor::from_slice(&values)
        .view([1, 1, k, k])
        .to_device(device)
}

/// g(x_<i, d): a 7×7 type-A masked conv of the pixels plus a 1×1 conv of the decoder's outputs,
/// then residual 3×3 type-B masked convs, then a 1×1 conv (initialised to zero) whose output is
/// added to the decoder's outputs.
#[derive(Debug)]
pub(crate) struct PixelCnn {
    first: MaskedConv,
    condition: nn::Conv2D,
    layers: Vec<MaskedConv>,
    out: nn::Conv2D,
}

impl PixelCnn {
    /// The head for a decoder of `params` output channels (the likelihood's parameters of a
    /// one-channel image).
    pub(crate) fn new(p: &nn::Path<'_>, head: &PixelHead, params: i64) -> Self {
        let c = head.channels;
        let one_by_one = |p: nn::Path<'_>, i: i64, o: i64, zero: bool| {
            let init = if zero {
                nn::Init::Const(0.0)
            } else {
                torch_default(i)
            };
            nn::conv2d(
                p,
                i,
                o,
                1,
                nn::ConvConfig {
                    ws_init: init,
                    bs_init: init,
                    ..Default::default()
                },
            )
        };
        Self {
            first: MaskedConv::new(p / "first", 1, c, 7, false),
            condition: one_by_one(p / "condition", params, c, false),
            layers: (1..head.layers)
                .map(|i| MaskedConv::new(p / format!("layer{i}"), c, c, 3, true))
                .collect(),
            out: one_by_one(p / "out", c, params, true),
        }
    }

    /// The likelihood's parameters for pixels `x` `[N, 1, H, W]` given the decoder's outputs
    /// `base` `[N, P, H, W]`: `base + g(x_<i, base)`, computed in `kind`, returned in f32.
    pub(crate) fn forward(&self, x: &Tensor, base: &Tensor, kind: Kind) -> Tensor {
        let conv1 = |c: &nn::Conv2D, t: &Tensor| {
            t.conv2d(
                &cast(&c.ws, kind),
                c.bs.as_ref().map(|b| cast(b, kind)).as_ref(),
                [1, 1],
                [0, 0],
                [1, 1],
                1,
            )
        };
        let (xk, bk) = (cast(x, kind), cast(base, kind));
        let mut h = (self.first.forward(&xk, kind) + conv1(&self.condition, &bk)).relu_();
        for layer in &self.layers {
            h = (&h + layer.forward(&h, kind)).relu_();
        }
        base + cast(&conv1(&self.out, &h), Kind::Float)
    }

    /// Ancestral sampling, one pixel at a time in raster order, given the decoder's outputs
    /// `base` `[N, P, H, W]` for `likelihood`: returns each pixel's mean given the pixels
    /// sampled before it (a grey-level picture of the sample) and the pixels drawn, `[N, 1, H,
    /// W]` each. Masked convs never look below the current row, so each pass runs on the rows
    /// so far only.
    pub(crate) fn sample_pixels(
        &self,
        base: &Tensor,
        likelihood: Likelihood,
        kind: Kind,
    ) -> (Tensor, Tensor) {
        let size = base.size();
        let (n, h, w) = (size[0], size[2], size[3]);
        let x = Tensor::zeros([n, 1, h, w], (Kind::Float, base.device()));
        let means = x.zeros_like();
        for i in 0..h {
            let rows = i + 1;
            for j in 0..w {
                let params = self.forward(&x.narrow(2, 0, rows), &base.narrow(2, 0, rows), kind);
                let here = params.narrow(2, i, 1).narrow(3, j, 1);
                means
                    .narrow(2, i, 1)
                    .narrow(3, j, 1)
                    .copy_(&likelihood.mean(&here));
                x.narrow(2, i, 1)
                    .narrow(3, j, 1)
                    .copy_(&likelihood.sample(&here));
            }
        }
        (means, x)
    }
}

/// The likelihood's parameters for pixels `x` given the decoder's outputs `base`: `base`
/// itself, or refined by `head` from the pixels before each one.
pub(crate) fn refine(head: Option<&PixelCnn>, x: &Tensor, base: &Tensor, kind: Kind) -> Tensor {
    match head {
        None => base.shallow_clone(),
        Some(head) => head.forward(x, base, kind),
    }
}

/// The likelihood's means for the decoder's outputs `base` (`draw` false) or images drawn from
/// it (`draw` true); with a head, pixel by pixel, each given the pixels drawn before it.
pub(crate) fn pictures(
    head: Option<&PixelCnn>,
    likelihood: Likelihood,
    base: &Tensor,
    kind: Kind,
    draw: bool,
) -> Tensor {
    match (head, draw) {
        (None, false) => likelihood.mean(base),
        (None, true) => likelihood.sample(base),
        (Some(head), _) => {
            let (means, drawn) = head.sample_pixels(base, likelihood, kind);
            if draw { drawn } else { means }
        }
    }
}

#[cfg(test)]
mod tests {
    use tch::{Device, Kind, Tensor, nn};

    use super::PixelHead;
    use super::{PixelCnn, raster_mask};
    use crate::likelihood::Likelihood;
    use crate::loss::bernoulli_nll;
    use crate::tests::lock;
    use crate::{ConvVae, ConvVaeConfig, ModelError, Vae};

    fn head(vs: &nn::VarStore, channels: i64, layers: usize, params: i64) -> PixelCnn {
        let h = PixelCnn::new(
            &(vs.root() / "pixel_head"),
            &PixelHead { channels, layers },
            params,
        );
        // Give the zero-initialised output layer weights, as training would.
        tch::no_grad(|| {
            let _ = h.out.ws.shallow_clone().uniform_(-1.0, 1.0);
            let _ = h
                .out
                .bs
                .as_ref()
                .unwrap()
                .shallow_clone()
                .uniform_(-0.5, 0.5);
        });
        h
    }

    #[test]
    fn masks_see_only_earlier_pixels() {
        let a = raster_mask(3, false, Device::Cpu);
        let b = raster_mask(3, true, Device::Cpu);
        let want_a = Tensor::from_slice(&[1f32, 1., 1., 1., 0., 0., 0., 0., 0.]).view([1, 1, 3, 3]);
        let want_b = Tensor::from_slice(&[1f32, 1., 1., 1., 1., 0., 0., 0., 0.]).view([1, 1, 3, 3]);
        assert!(a.equal(&want_a), "{a}");
        assert!(b.equal(&want_b), "{b}");
    }

    #[test]
    fn a_fresh_head_leaves_the_decoder_logits_unchanged() {
        let _g = lock();
        let vs = nn::VarStore::new(Device::Cpu);
        let h = PixelCnn::new(&(vs.root() / "pixel_head"), &PixelHead::default(), 1);
        let x = Tensor::rand([3, 1, 6, 5], (Kind::Float, Device::Cpu)).round();
        let base = Tensor::randn([3, 1, 6, 5], (Kind::Float, Device::Cpu));
        assert!(h.forward(&x, &base, Kind::Float).equal(&base));
        // And sampling gives σ(base) (to rounding: σ of one element vs a vectorised σ).
        assert!(
            h.sample_pixels(&base, Likelihood::Bernoulli, Kind::Float)
                .0
                .allclose(&base.sigmoid(), 1e-6, 1e-7, false)
        );
    }

    #[test]
    fn each_logit_depends_only_on_the_pixels_before_it() {
        let _g = lock();
        // Seeded, and 16 channels wide: with few channels, the ReLUs could by chance cut every
        // path from a neighbour (the test then failed about one run in six). One parameter per
        // pixel (Bernoulli logits) and 15 (a 5-component logistic mixture's).
        for params in [1, 15] {
            tch::manual_seed(4);
            let vs = nn::VarStore::new(Device::Cpu);
            let h = head(&vs, 16, 3, params);
            let (rows, cols) = (7, 9);
            let x = Tensor::rand([2, 1, rows, cols], (Kind::Float, Device::Cpu))
                .round()
                .set_requires_grad(true);
            let base = Tensor::randn([2, params, rows, cols], (Kind::Float, Device::Cpu));
            let out = h.forward(&x, &base, Kind::Float);
            assert_eq!(out.size(), base.size());
            let (i, j) = (3, 4);
            out.get(0)
                .narrow(0, params - 1, 1)
                .get(0)
                .get(i)
                .get(j)
                .backward();
            let g = x.grad().abs();
            let mut seen_before = 0;
            for r in 0..rows {
                for c in 0..cols {
                    let v = g.double_value(&[0, 0, r, c]);
                    if (r, c) >= (i, j) {
                        assert_eq!(v, 0.0, "output ({i},{j}) depends on pixel ({r},{c})");
                    } else if v > 0.0 {
                        seen_before += 1;
                    }
                    assert_eq!(g.double_value(&[1, 0, r, c]), 0.0, "images mix");
                }
            }
            // A 7x7 type-A conv and two 3x3 type-B ones see a good part of what came before,
            // including the left and upper neighbours.
            assert!(seen_before >= 20, "{params} parameters: {seen_before}");
            assert!(g.double_value(&[0, 0, i, j - 1]) > 0.0);
            assert!(g.double_value(&[0, 0, i - 1, j]) > 0.0);
        }
    }

    #[test]
    fn the_head_defines_a_normalised_distribution_over_images() {
        let _g = lock();
        let vs = nn::VarStore::new(Device::Cpu);
        let h = head(&vs, 4, 2, 1);
        // All 2^6 binary images of 2x3 pixels: Σ_x p(x | z) must be 1, which holds only if
        // each pixel's logit ignores that pixel and the ones after it.
        let n = 1i64 << 6;
        let bits: Vec<f32> = (0..n)
            .flat_map(|k| (0..6).map(move |b| ((k >> b) & 1) as f32))
            .collect();
        let x = Tensor::from_slice(&bits).view([n, 1, 2, 3]);
        let base =
            Tensor::randn([1, 1, 2, 3], (Kind::Float, Device::Cpu)).expand([n, 1, 2, 3], false);
        let logits = h.forward(&x, &base, Kind::Float);
        let log_p = -bernoulli_nll(&logits.view([n, -1]), &x.view([n, -1]));
        let total = log_p.exp().sum(Kind::Double).double_value(&[]);
        assert!((total - 1.0).abs() < 1e-5, "Σ p(x) = {total}");
        // Sampling draws from the same distribution: the first pixel's mean is its logit's σ.
        let means = h
            .sample_pixels(&base.narrow(0, 0, 1), Likelihood::Bernoulli, Kind::Float)
            .0;
        let first = logits.double_value(&[0, 0, 0, 0]);
        assert!((means.double_value(&[0, 0, 0, 0]) - 1.0 / (1.0 + (-first).exp())).abs() < 1e-6);
    }

    #[test]
    fn a_model_with_the_head_names_its_layers_trains_and_estimates() -> Result<(), ModelError> {
        let _g = lock();
        let cfg = ConvVaeConfig {
            input_height: 8,
            input_width: 8,
            latent_dim: 3,
            channels: vec![4, 8],
            pixel_head: Some(PixelHead {
                channels: 5,
                layers: 2,
            }),
            ..ConvVaeConfig::default()
        };
        let vs = nn::VarStore::new(Device::Cpu);
        let vae = ConvVae::new(&vs.root(), &cfg)?;
        let vars = vs.variables();
        assert_eq!(vars["decoder.pixel_head.first.weight"].size(), [5, 1, 7, 7]);
        assert_eq!(
            vars["decoder.pixel_head.layer1.weight"].size(),
            [5, 5, 3, 3]
        );
        assert_eq!(
            vars["decoder.pixel_head.condition.weight"].size(),
            [5, 1, 1, 1]
        );
        assert_eq!(vars["decoder.pixel_head.out.weight"].size(), [1, 5, 1, 1]);
        let x = Tensor::rand([4, 1, 8, 8], (Kind::Float, Device::Cpu)).round();
        let terms = vae.elbo(&x)?;
        let loss = (&terms.reconstruction + &terms.kl).mean(Kind::Float);
        loss.backward();
        let g = vars["decoder.pixel_head.out.weight"].grad();
        assert!(
            g.abs().sum(Kind::Float).double_value(&[]) > 0.0,
            "the head gets gradients"
        );
        let ll = tch::no_grad(|| vae.log_likelihood_iw(&x, 20, 64))?;
        assert_eq!(ll.size(), [4]);
        assert!(ll.isfinite().all().int64_value(&[]) == 1);
        let s = tch::no_grad(|| vae.sample(3, 1.0))?;
        assert_eq!(s.size(), [3, 1, 8, 8]);
        // Configs round-trip through TOML; older configs (no pixel_head) still load.
        let text = toml::to_string(&cfg).unwrap();
        assert_eq!(toml::from_str::<ConvVaeConfig>(&text).unwrap(), cfg);
        let bad = ConvVaeConfig {
            input_channels: 3,
            ..cfg.clone()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("one-channel")
        );
        Ok(())
    }
}
