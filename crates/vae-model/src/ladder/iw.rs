//! The ladder's importance-weighted evaluation, [`LadderIw`]: the bound of
//! [`Vae::log_likelihood_iw`](crate::Vae::log_likelihood_iw) at the same random draws, with
//! what depends only on the weights prepared once and each sample's top-down pass in fewer,
//! fused kernels.
//!
//! What it does apart from [`LadderVae`]'s own pass (the arithmetic is the same):
//! - the VampPrior's components (the bottom-up pass over its pseudo-inputs) once per
//!   evaluator, not once per chunk of samples;
//! - the posterior conv split by its input: the half that reads the bottom-up features runs
//!   once per image, not once per sample, and the half that reads the top-down features
//!   shares one conv with the prior's;
//! - the top-down path in channels-last layout (the dense layer's rows permuted so its output
//!   already is), with each conv's bias, residual add and SiLU in one oneDNN kernel
//!   ([`fused`]);
//! - the last transposed conv as the sub-pixel 3×3 conv it equals ([`subpixel_weight`]),
//!   which oneDNN runs several times faster for one output channel.
//!
//! With [`IwPrecision::Auto`], on a CPU with AMX-BF16 and for binary data (the Bernoulli
//! likelihood), the top-down convs take their products in bf16 and sum in f32
//! ([`fused::Bf16Products`]): 1.24–1.28× faster there, the estimate moving by under 0.001
//! nats (docs/performance.md). The bottom-up pass, the pixel head and the likelihood stay f32, and
//! so do 8-bit likelihoods, whose discretised densities are too sensitive to the rounding.

use tch::{Kind, Tensor};

use super::{LadderVae, act, repeat_rows, soft_clamp};
use crate::blocks::{Layout, check_samples, subpixel_weight, to_channels_last};
use crate::cpu::CpuFeatures;
use crate::error::ModelError;
use crate::fused::{self, Epilogue};
use crate::likelihood::Likelihood;
use crate::loss;
use crate::vae::{IwEvaluator, IwPrecision, Vae};

/// A conv's weight (channels-last) and bias.
struct Conv {
    w: Tensor,
    b: Tensor,
}

impl Conv {
    fn new(w: &Tensor, b: &Tensor) -> Self {
        Self {
            w: to_channels_last(&w.detach()),
            b: b.detach(),
        }
    }

    fn of(c: &tch::nn::Conv2D) -> Self {
        Self::new(
            &c.ws,
            c.bs.as_ref().expect("the ladder's convs have biases"),
        )
    }

    fn wb(&self) -> (&Tensor, &Tensor) {
        (&self.w, &self.b)
    }
}

/// One spatial group's convs.
struct Group {
    /// Channels of its z.
    g: i64,
    /// From the top-down features: the prior's [μ, log σ] and the posterior's correction's
    /// top-down half, `[4g, c, 3, 3]` (the correction's bias is in `from_bottom_up`).
    from_top_down: Conv,
    /// The posterior's correction's bottom-up half, `[2g, c, 3, 3]`.
    from_bottom_up: Conv,
    inject: Conv,
}

/// One stage of the top-down path: a group, then cells.
struct Stage {
    group: Option<Group>,
    cells: Vec<[Conv; 2]>,
}

/// One resolution of the top-down path.
struct Level {
    stages: Vec<Stage>,
    /// From the next coarser resolution to this one (none at the coarsest).
    up: Option<Conv>,
}

/// The ladder's IW evaluator (see the module's documentation); built by
/// [`Vae::iw_evaluator`](crate::Vae::iw_evaluator).
pub(crate) struct LadderIw<'a> {
    model: &'a LadderVae,
    /// The top prior's VampPrior components (μ, log σ²), `[K, top_dim]` each.
    components: Option<(Tensor, Tensor)>,
    /// The dense layer from z_top, its rows in (row, column, channel) order.
    fc: (Tensor, Tensor),
    /// Finest first.
    levels: Vec<Level>,
    /// The sub-pixel form of the last transposed conv.
    out: Conv,
    /// Whether the top-down convs take their products in bf16 ([`fused::Bf16Products`]).
    bf16_products: bool,
}

impl<'a> LadderIw<'a> {
    pub(crate) fn new(model: &'a LadderVae, precision: IwPrecision) -> Self {
        tch::no_grad(|| {
            let c = &model.config;
            let td = &model.top_down;
            let last = c.channels.len() - 1;
            let (h, w) = c.resolution(last);
            let ch = c.channels[last];
            let fc_w = td
                .fc
                .ws
                .view([ch, h, w, c.top_dim])
                .permute([1, 2, 0, 3])
                .reshape([ch * h * w, c.top_dim]);
            let fc_b = td.fc.bs.as_ref().expect("the dense layer has a bias");
            let fc_b = fc_b
                .view([ch, h, w])
                .permute([1, 2, 0])
                .reshape([ch * h * w]);
            let levels = (0..=last)
                .map(|l| Level {
                    stages: td.levels[l]
                        .iter()
                        .map(|stage| Stage {
                            group: stage.group.as_ref().map(|g| {
                                let width = c.channels[l];
                                let post = &g.posterior.ws;
                                let post_b = g.posterior.bs.as_ref().expect("convs have biases");
                                let prior_b = g.prior.bs.as_ref().expect("convs have biases");
                                Group {
                                    g: c.group_channels[l],
                                    from_top_down: Conv::new(
                                        &Tensor::cat(&[&g.prior.ws, &post.narrow(1, 0, width)], 0),
                                        &Tensor::cat(&[prior_b, &post_b.zeros_like()], 0),
                                    ),
                                    from_bottom_up: Conv::new(
                                        &post.narrow(1, width, width),
                                        post_b,
                                    ),
                                    inject: Conv::of(&g.inject),
                                }
                            }),
                            cells: stage
                                .cells
                                .iter()
                                .map(|cell| cell.convs().map(Conv::of))
                                .collect(),
                        })
                        .collect(),
                    up: td.up.get(l).map(|u| {
                        let (w, b) = u.weight_bias();
                        Conv::new(w, b)
                    }),
                })
                .collect();
            let (w, b) = td.out.weight_bias();
            let (w, b) = subpixel_weight(&w.detach(), &b.detach());
            Self {
                model,
                components: model
                    .prior
                    .images()
                    .map(|u| model.top_posterior(&u.detach())),
                fc: (fc_w, fc_b.detach()),
                levels,
                out: Conv::new(&w, &b),
                bf16_products: precision == IwPrecision::Auto
                    && model.config.likelihood == Likelihood::Bernoulli
                    && model.device() == tch::Device::Cpu
                    && CpuFeatures::current().amx_bf16
                    && fused::Bf16Products::enter().is_some(),
            }
        })
    }

    /// Group `g`'s draw for `s` samples of each of `n` images at a `(h, w)` resolution, from
    /// the top-down features `d` and the bottom-up half of its posterior's correction
    /// (`part`, `[n, 2g, h, w]`); z is added into `d`. Gives log q(z | x) and log p(z) of the
    /// group, `[s·n]` each.
    fn group(
        g: &Group,
        d: &mut Tensor,
        part: &Tensor,
        (s, n): (i64, i64),
        (h, w): (i64, i64),
    ) -> (Tensor, Tensor) {
        let rows = s * n;
        let both = fused::conv(&act(d), g.from_top_down.wb(), (1, 1), Epilogue::Identity);
        let k = g.g;
        // The posterior's correction: its top-down half, plus its bottom-up half of the
        // sample's image (rows are sample-major: row = sample · n + image).
        let delta = |from: i64| {
            (both.narrow(1, from, k).view([s, n, k, h, w]) + part.narrow(1, from - 2 * k, k))
                .reshape([rows, k, h, w])
        };
        let prior_mu = soft_clamp(&both.narrow(1, 0, k), 5.0);
        let prior_log_sigma = soft_clamp(&both.narrow(1, k, k), 5.0);
        let prior_logvar = &prior_log_sigma * 2.0;
        let q_mu = soft_clamp(&(&prior_mu + delta(2 * k)), 5.0);
        let q_logvar = soft_clamp(&(&prior_log_sigma + delta(3 * k)), 5.0) * 2.0;
        let eps = Tensor::randn([rows, k, h, w], (Kind::Float, d.device()));
        let z = &q_mu + (&q_logvar * 0.5).exp() * &eps;
        let sum_image = [1i64, 2, 3];
        let log_q = (eps.square() + &q_logvar + loss::LN_2PI).sum_dim_intlist(
            sum_image.as_slice(),
            false,
            Kind::Float,
        ) * -0.5;
        let log_p =
            ((&z - &prior_mu).square() * (-&prior_logvar).exp() + &prior_logvar + loss::LN_2PI)
                .sum_dim_intlist(sum_image.as_slice(), false, Kind::Float)
                * -0.5;
        fused::conv_accumulate(d, &z, g.inject.wb(), (1, 0));
        (log_q, log_p)
    }

    /// log p(x | z) + log p(z) − log q(z | x) for `s` samples of each of the `n` images whose
    /// bottom-up `features` are given, `[s, n]`. The noise is drawn in [`LadderVae`]'s order
    /// and layout (the top group's, then each spatial group's, coarsest first), so the
    /// weights are that pass's.
    fn log_weights(
        &self,
        x: &Tensor,
        top: (&Tensor, &Tensor),
        parts: &[Vec<Option<Tensor>>],
        s: i64,
    ) -> Tensor {
        let c = &self.model.config;
        let n = x.size()[0];
        let rows = s * n;
        let repeat = |t: &Tensor| repeat_rows(t, s);
        let (mu, logvar) = (repeat(top.0), repeat(top.1));
        let eps_top = mu.randn_like();
        let z_top = &mu + (&logvar * 0.5).exp() * &eps_top;
        let mut log_q = vec![loss::diagonal_normal_log_density(&eps_top, &logvar)];
        let mut log_p = vec![match &self.components {
            Some((m, lv)) => loss::mixture_log_density(&z_top, m, lv),
            None => loss::standard_normal_log_density(&z_top),
        }];
        let last = self.levels.len() - 1;
        let (h, w) = c.resolution(last);
        let products = self.bf16_products.then(fused::Bf16Products::enter);
        // [rows, h·w·c] in (row, column, channel) order: channels-last strides as it comes.
        let mut d = z_top
            .linear(&self.fc.0, Some(&self.fc.1))
            .view([rows, h, w, c.channels[last]])
            .permute([0, 3, 1, 2]);
        for (l, level) in self.levels.iter().enumerate().rev() {
            if let Some(up) = &level.up {
                d = fused::conv_transpose(&act(&d), up.wb(), (2, 1), Epilogue::Identity);
            }
            for (stage, part) in level.stages.iter().zip(&parts[l]) {
                if let Some(g) = &stage.group {
                    let part = part.as_ref().expect("a group has its bottom-up part");
                    let (q, p) = Self::group(g, &mut d, part, (s, n), c.resolution(l));
                    log_q.push(q);
                    log_p.push(p);
                }
                for [c1, c2] in &stage.cells {
                    let inner = fused::conv(&act(&d), c1.wb(), (1, 1), Epilogue::Silu);
                    fused::conv_accumulate(&mut d, &inner, c2.wb(), (1, 1));
                }
            }
        }
        let params =
            fused::conv(&act(&d), self.out.wb(), (1, 1), Epilogue::Identity).pixel_shuffle(2);
        drop(products);
        // One image: its rows are a broadcast view, no copy.
        let images = if n == 1 {
            x.expand([rows, -1, -1, -1], false)
        } else {
            repeat(x)
        };
        let params = match &self.model.top_down.pixel {
            Some(head) => head.forward(&images, &params, Kind::Float),
            None => params,
        };
        let log_px = c.likelihood.log_prob(&params, &images);
        let total =
            |terms: &[Tensor]| Tensor::stack(terms, 0).sum_dim_intlist(0, false, Kind::Float);
        (log_px + total(&log_p) - total(&log_q)).view([s, n])
    }
}

impl IwEvaluator for LadderIw<'_> {
    fn log_likelihood_iw(&self, x: &Tensor, k: i64, max_rows: i64) -> Result<Tensor, ModelError> {
        check_samples(k)?;
        self.model.check_images(x)?;
        tch::no_grad(|| {
            let n = x.size()[0];
            let per_chunk = (max_rows.max(1) / n.max(1)).clamp(1, k);
            let bu = self.model.bottom_up.forward(x, Kind::Float, Layout::Plain);
            // Each group's posterior term from the bottom-up features it pairs with (the first
            // group of a resolution the last stage's), `[n, 2g, h, w]`.
            let parts: Vec<Vec<Option<Tensor>>> = self
                .levels
                .iter()
                .zip(&bu.features)
                .map(|(level, f)| {
                    let stages = level.stages.len();
                    (level.stages.iter().enumerate())
                        .map(|(j, stage)| {
                            stage.group.as_ref().map(|g| {
                                let a = act(&f[stages - 1 - j]);
                                fused::conv(&a, g.from_bottom_up.wb(), (1, 1), Epilogue::Identity)
                            })
                        })
                        .collect()
                })
                .collect();
            let mut chunks = Vec::new();
            let mut done = 0;
            while done < k {
                let s = per_chunk.min(k - done);
                chunks.push(self.log_weights(x, (&bu.top.mu, &bu.top.logvar), &parts, s));
                done += s;
            }
            Ok(loss::log_mean_exp(&Tensor::cat(&chunks, 0)))
        })
    }

    fn bf16_products(&self) -> bool {
        self.bf16_products
    }
}
