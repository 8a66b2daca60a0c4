//! A top-down hierarchical VAE: [`LadderVae`] and its [`LadderVaeConfig`].
//!
//! The generative model is p(x, z) = p(z_top) Π_l p(z_l | z_>l) p(x | z), the approximate
//! posterior q(z | x) = q(z_top | x) Π_l q(z_l | x, z_>l), both computed top-down from the
//! same features (Sønderby et al., "Ladder Variational Autoencoders", NeurIPS 2016; Vahdat &
//! Kautz, "NVAE: A Deep Hierarchical Variational Autoencoder", NeurIPS 2020, §3). A bottom-up
//! path of residual cells reads the image once; the top-down path starts from the top group
//! (a vector), and at each resolution that has a group computes the prior from its own
//! features and the posterior as a residual correction of it from those features and the
//! bottom-up ones at that resolution (NVAE §3.2), then adds the drawn z to its features.

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor, nn};

use crate::blocks::{
    Deconv, Layout, ResidualCell, cast, check_images, check_input_size, check_rows, conv_down,
    conv_in, conv1, conv3, linear, linear_in, to_channels_last,
};
use crate::cpu::CpuFeatures;
use crate::error::ModelError;
use crate::likelihood::Likelihood;
use crate::loss;
use crate::pixel::{self, PixelCnn, PixelHead};
use crate::prior::{LatentPrior, Prior};
use crate::vae::{
    ElboTerms, ImportanceTerms, IwEvaluator, IwPrecision, ModelConfig, Posterior, Vae, VaeConfig,
};

mod iw;

/// The architecture of a [`LadderVae`].
///
/// Resolutions are listed finest first: with `channels = [32, 64]` a 28×28 image is read at
/// 14×14 with 32 channels and at 7×7 with 64; `group_channels = [4, 8]` puts a 4-channel
/// latent group at 14×14 and an 8-channel one at 7×7, under the `top_dim`-dimensional top
/// group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LadderVaeConfig {
    /// Image channels.
    pub input_channels: i64,
    /// Image height; must be divisible by 2^(number of resolutions).
    pub input_height: i64,
    /// Image width; must be divisible by 2^(number of resolutions).
    pub input_width: i64,
    /// Width of both paths at each resolution, finest (half the image's size) first.
    pub channels: Vec<i64>,
    /// Latent channels of the spatial group at each resolution (as `channels`); 0: none there.
    pub group_channels: Vec<i64>,
    /// Dimension of the top group, a vector: the z that [`Vae::encode`] gives and
    /// [`Vae::decode`] takes.
    pub top_dim: i64,
    /// Residual cells at each resolution (as `channels`), in each path; with several
    /// `groups` there, this many after each group.
    pub cells: Vec<usize>,
    /// Latent groups at each resolution (as `channels`), one after another top-down (NVAE's
    /// groups per scale, §3.1); empty: one at each. Each group is followed by `cells` cells,
    /// and the bottom-up path has as many stages of cells there, the last read by the first
    /// group (as a U-Net pairs its levels).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<usize>,
    /// The prior of the top group.
    pub top_prior: Prior,
    /// The observation model p(x | z).
    pub likelihood: Likelihood,
    /// An optional autoregressive head over the top-down path's outputs (one-channel images
    /// only): each pixel's likelihood then also depends on the pixels before it (PixelVAE);
    /// `None`: pixels independent given z.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pixel_head: Option<PixelHead>,
}

impl Default for LadderVaeConfig {
    fn default() -> Self {
        Self {
            input_channels: 1,
            input_height: 28,
            input_width: 28,
            channels: vec![32, 64],
            group_channels: vec![4, 8],
            top_dim: 32,
            cells: vec![1, 1],
            groups: Vec::new(),
            top_prior: Prior::Standard,
            likelihood: Likelihood::Bernoulli,
            pixel_head: None,
        }
    }
}

impl LadderVaeConfig {
    /// Checks every size is positive, the lists match, and the image survives the stride-2 steps.
    pub fn validate(&self) -> Result<(), ModelError> {
        let bad = |msg: String| Err(ModelError::InvalidConfig(msg));
        check_input_size([self.input_channels, self.input_height, self.input_width])?;
        self.top_prior.validate()?;
        if self.channels.is_empty()
            || self.channels.len() > 8
            || self.channels.iter().any(|&c| c < 1)
        {
            return bad(format!(
                "channels must list 1 to 8 positive widths, got {:?}",
                self.channels
            ));
        }
        if self.group_channels.len() != self.channels.len()
            || self.group_channels.iter().any(|&c| c < 0)
        {
            return bad(format!(
                "group_channels must give one non-negative width per resolution ({} here), got {:?}",
                self.channels.len(),
                self.group_channels
            ));
        }
        if self.top_dim < 1 {
            return bad(format!("top_dim must be at least 1, got {}", self.top_dim));
        }
        if self.cells.len() != self.channels.len() || self.cells.iter().any(|&c| c > 64) {
            return bad(format!(
                "cells must give 0 to 64 cells per resolution ({} here), got {:?}",
                self.channels.len(),
                self.cells
            ));
        }
        if !self.groups.is_empty()
            && (self.groups.len() != self.channels.len()
                || self.groups.iter().any(|&g| !(1..=16).contains(&g)))
        {
            return bad(format!(
                "groups must give 1 to 16 latent groups per resolution ({} here), got {:?}",
                self.channels.len(),
                self.groups
            ));
        }
        if let Some(l) =
            (0..self.channels.len()).find(|&l| self.group_channels[l] == 0 && self.stages(l) > 1)
        {
            return bad(format!(
                "resolution {} has no latent channels (group_channels is 0 there), so it takes 1 group, not {}",
                l + 1,
                self.stages(l)
            ));
        }
        if let Err(m) = self.likelihood.validate() {
            return bad(m);
        }
        if let Some(head) = self.pixel_head {
            head.validate(self.input_channels).or_else(bad)?;
        }
        let factor = 1i64 << self.channels.len();
        if self.input_height % factor != 0 || self.input_width % factor != 0 {
            return bad(format!(
                "a {}x{} image cannot pass {} stride-2 steps: height and width must be divisible by {factor}",
                self.input_height,
                self.input_width,
                self.channels.len()
            ));
        }
        Ok(())
    }

    /// (height, width) of resolution `level` (0: the finest, half the image's size).
    fn resolution(&self, level: usize) -> (i64, i64) {
        let f = 1i64 << (level + 1);
        (self.input_height / f, self.input_width / f)
    }

    /// The stages at resolution `level`, in each path: its latent groups (`groups`), each
    /// with its cells.
    pub(crate) fn stages(&self, level: usize) -> usize {
        self.groups.get(level).copied().unwrap_or(1)
    }

    /// The number of latent dimensions of every group together, the top's first: the width of
    /// the noise [`Vae::elbo_with_noise`] takes.
    pub fn noise_dim(&self) -> i64 {
        VaeConfig::latent_group_sizes(self).iter().sum()
    }

    /// Each spatial group's `[c, h, w]`, in the order the top-down pass draws them: coarsest
    /// first, a resolution's groups in turn.
    fn group_shapes(&self) -> Vec<[i64; 3]> {
        (0..self.channels.len())
            .rev()
            .filter(|&l| self.group_channels[l] > 0)
            .flat_map(|l| {
                let (h, w) = self.resolution(l);
                std::iter::repeat_n([self.group_channels[l], h, w], self.stages(l))
            })
            .collect()
    }

    /// Whether the top group's KL has a closed form (the standard-normal prior).
    pub(crate) fn closed_form_top(&self) -> bool {
        self.top_prior == Prior::Standard
    }
}

/// `t` (`[N, ...]`) repeated `s` times along its rows, `[s·N, ...]`, sample-major: row
/// i·N + j is row j of `t`.
fn repeat_rows(t: &Tensor, s: i64) -> Tensor {
    let mut size = t.size();
    let mut expanded = vec![s];
    expanded.extend(&size);
    size[0] *= s;
    t.unsqueeze(0).expand(&expanded, false).reshape(&size)
}

/// NVAE's soft clamp, b·tanh(x / b): the identity near 0, bounded by ±b, with a gradient
/// everywhere (Vahdat & Kautz 2020, in their released code's `soft_clamp5`). Applied to the
/// means and log standard deviations of the spatial groups, it keeps a few large activations
/// early in training from sending a KL or a log-density to infinity.
fn soft_clamp(x: &Tensor, bound: f64) -> Tensor {
    (x / bound).tanh() * bound
}

/// The nonlinearity of both paths: SiLU (swish), as NVAE's cells.
fn act(x: &Tensor) -> Tensor {
    x.silu()
}

/// `cells` in turn: each x ↦ x + Conv3x3(SiLU(Conv3x3(SiLU(x)))), the pre-activation residual
/// cell of both paths.
fn apply_cells(mut h: Tensor, cells: &[ResidualCell], kind: Kind, layout: Layout) -> Tensor {
    for c in cells {
        h = c.forward(&h, &act(&h), |t| t.silu(), kind, layout);
    }
    h
}

/// `n` cells of width `c` under `p`, named `cell1`, `cell2`, ….
fn cells(p: &nn::Path<'_>, c: i64, n: usize) -> Vec<ResidualCell> {
    ResidualCell::stack(p, c, n, |j| format!("cell{}", j + 1))
}

/// Where stage `j` (from 0) of a resolution keeps its variables: the resolution's own path
/// for the first, `stage2`, `stage3`, … under it for the others.
fn stage_path<'a>(level: &nn::Path<'a>, j: usize) -> nn::Path<'a> {
    if j == 0 {
        level.clone()
    } else {
        level / format!("stage{}", j + 1)
    }
}

/// The deterministic bottom-up path: a stride-2 conv from the image, residual cells at each
/// resolution with a stride-2 conv between them, and the top group's posterior head.
#[derive(Debug)]
struct BottomUp {
    stem: nn::Conv2D,
    /// Cells of each stage at each resolution, finest first.
    levels: Vec<Vec<Vec<ResidualCell>>>,
    /// `down[l]` goes from resolution l to l + 1.
    down: Vec<nn::Conv2D>,
    /// q(z_top | x): [μ, log σ²] from the coarsest features.
    top: nn::Linear,
}

/// What the bottom-up path gives: the features after each stage at each resolution (finest
/// first) and the top group's posterior.
struct BottomUpOut {
    features: Vec<Vec<Tensor>>,
    top: Posterior,
}

impl BottomUp {
    fn forward(&self, x: &Tensor, kind: Kind, layout: Layout) -> BottomUpOut {
        let mut h = conv_in(&self.stem, &cast(x, kind), (2, 1), kind, layout);
        let mut features = Vec::with_capacity(self.levels.len());
        for (l, stages) in self.levels.iter().enumerate() {
            let mut level = Vec::with_capacity(stages.len());
            for cells in stages {
                h = apply_cells(h, cells, kind, layout);
                level.push(h.shallow_clone());
            }
            features.push(level);
            if let Some(down) = self.down.get(l) {
                h = conv_in(down, &act(&h), (2, 1), kind, layout);
            }
        }
        let stats = cast(
            &linear_in(&self.top, &act(&h).flatten(1, -1), kind),
            Kind::Float,
        );
        let stats = stats.chunk(2, 1);
        BottomUpOut {
            features,
            top: Posterior {
                mu: stats[0].shallow_clone(),
                logvar: stats[1].shallow_clone(),
            },
        }
    }
}

/// One spatial latent group's layers.
#[derive(Debug)]
struct Group {
    /// p(z_l | z_>l): [μ, log σ] from the top-down features.
    prior: nn::Conv2D,
    /// The posterior's correction [Δμ, Δlog σ] from the top-down and bottom-up features.
    posterior: nn::Conv2D,
    /// z_l back into the top-down features.
    inject: nn::Conv2D,
}

/// One stage of the top-down path: a latent group (none at a resolution without latent
/// channels), then cells.
#[derive(Debug)]
struct Stage {
    group: Option<Group>,
    cells: Vec<ResidualCell>,
}

/// A diagonal Gaussian over a spatial group, `[N, c, h, w]` each.
struct Normal {
    mu: Tensor,
    logvar: Tensor,
}

impl Normal {
    /// From raw [μ, log σ] channels, soft-clamped.
    fn from_raw(mu: &Tensor, log_sigma: &Tensor) -> Self {
        Self {
            mu: soft_clamp(mu, 5.0),
            logvar: soft_clamp(log_sigma, 5.0) * 2.0,
        }
    }
}

/// One group's draw in a top-down pass: z, the standard noise it came from, and the prior and
/// (when the pass reads an image) posterior it came from, `[N, c, h, w]` each.
struct GroupDraw {
    z: Tensor,
    eps: Tensor,
    prior: Normal,
    posterior: Option<Normal>,
}

/// How a top-down pass picks each spatial group's z.
enum Pick<'a> {
    /// μ + T·σ·ε with fresh ε (T = 1: a draw).
    Fresh(f64),
    /// μ + σ·ε with the given ε, one `[N, c, h, w]` tensor per group (coarsest first).
    Given(&'a [Tensor]),
    /// The mean μ.
    Mean,
}

/// The top-down path: from the top group through each resolution (coarsest first) to the
/// likelihood's parameters.
#[derive(Debug)]
struct TopDown {
    /// z_top to the coarsest resolution's features.
    fc: nn::Linear,
    /// The stages at each resolution, finest first (each run in order).
    levels: Vec<Vec<Stage>>,
    /// `up[l]` goes from resolution l + 1 to l.
    up: Vec<Deconv>,
    /// The finest features to the likelihood's parameters at the image's size.
    out: Deconv,
    /// The autoregressive head over those parameters, if any.
    pixel: Option<PixelCnn>,
}

/// A top-down hierarchical VAE (Sønderby et al., "Ladder Variational Autoencoders", NeurIPS
/// 2016; Vahdat & Kautz, "NVAE", NeurIPS 2020): p(x, z) = p(z_top) Π_l p(z_l | z_>l) p(x | z)
/// and q(z | x) = q(z_top | x) Π_l q(z_l | x, z_>l), both computed top-down from the same
/// features, each posterior a residual correction of its prior.
///
/// Variables live under the `nn::Path` it is built on, named after the fields:
/// `bottom_up.stem.weight`, `bottom_up.level1.cell1.conv1.weight`, `bottom_up.down1.weight`,
/// `bottom_up.top.weight`; `top_down.fc.weight`, `top_down.level1.prior.weight`,
/// `top_down.level1.posterior.weight`, `top_down.level1.inject.weight`,
/// `top_down.level1.cell1.conv1.weight`, `top_down.up1.weight`, `top_down.out.weight`, a pixel
/// head's `top_down.pixel_head.first.weight` and so on; a
/// VampPrior's pseudo-inputs as `prior.pseudo_inputs`. Level 1 is the finest resolution. A
/// second group at a resolution, and its cells in both paths, are under `level1.stage2`, and
/// so on.
///
/// Through the [`Vae`] interface, z is the top group: `encode` gives q(z_top | x), `decode`
/// runs the top-down path from z_top with every lower group at its prior mean, and
/// `elbo_with_noise` takes the noise of every group (see [`LadderVaeConfig::noise_dim`]).
/// The KL of each group is reported apart in [`ElboTerms::kl_groups`] (top first, then the
/// spatial groups coarsest first), and is what free bits act on.

#[derive(Debug)]
pub struct LadderVae {
    config: LadderVaeConfig,
    bottom_up: BottomUp,
    top_down: TopDown,
    /// The top group's prior.
    prior: LatentPrior,
    device: Device,
    compute: Kind,
    /// Whether both paths run channels-last (NHWC) when computing in bf16: on a CPU with AMX,
    /// whose oneDNN kernels compute in NHWC (as [`ConvVae`](crate::ConvVae)'s decoder).
    pub(crate) nhwc_bf16: bool,
}

impl LadderVae {
    /// Builds the model's variables under `p`.
    pub fn new(p: &nn::Path<'_>, config: &LadderVaeConfig) -> Result<Self, ModelError> {
        config.validate()?;
        let levels = config.channels.len();
        let bu = p / "bottom_up";
        let td = p / "top_down";
        let stem = conv_down(&bu / "stem", config.input_channels, config.channels[0]);
        let mut bu_levels = Vec::new();
        let mut down = Vec::new();
        let mut td_levels = Vec::new();
        let mut up = Vec::new();
        for (l, (&c, &g)) in config
            .channels
            .iter()
            .zip(&config.group_channels)
            .enumerate()
        {
            let name = format!("level{}", l + 1);
            let stages = 0..config.stages(l);
            let (bu_level, td_level) = (&bu / &name, &td / &name);
            bu_levels.push(
                stages
                    .clone()
                    .map(|j| cells(&stage_path(&bu_level, j), c, config.cells[l]))
                    .collect(),
            );
            td_levels.push(
                stages
                    .map(|j| {
                        let p = stage_path(&td_level, j);
                        Stage {
                            group: (g > 0).then(|| Group {
                                prior: conv3(&p / "prior", c, 2 * g),
                                posterior: conv3(&p / "posterior", 2 * c, 2 * g),
                                inject: conv1(&p / "inject", g, c),
                            }),
                            cells: cells(&p, c, config.cells[l]),
                        }
                    })
                    .collect(),
            );
            if let Some(&next) = config.channels.get(l + 1) {
                down.push(conv_down(&bu / format!("down{}", l + 1), c, next));
                up.push(Deconv::own(&td / format!("up{}", l + 1), next, c));
            }
        }
        let (h, w) = config.resolution(levels - 1);
        let flat = config.channels[levels - 1] * h * w;
        let top = linear(&bu / "top", flat, 2 * config.top_dim);
        let fc = linear(&td / "fc", config.top_dim, flat);
        let out = Deconv::own(
            &td / "out",
            config.channels[0],
            config.input_channels * config.likelihood.params_per_channel(),
        );
        let pixel = config.pixel_head.map(|head| {
            PixelCnn::new(
                &(&td / "pixel_head"),
                &head,
                config.likelihood.params_per_channel(),
            )
        });
        let prior = LatentPrior::new(p, config.top_prior, VaeConfig::image_shape(config));
        Ok(Self {
            config: config.clone(),
            bottom_up: BottomUp {
                stem,
                levels: bu_levels,
                down,
                top,
            },
            top_down: TopDown {
                fc,
                levels: td_levels,
                up,
                out,
                pixel,
            },
            prior,
            device: p.device(),
            compute: Kind::Float,
            nhwc_bf16: p.device() == Device::Cpu && CpuFeatures::current().bf16_channels_last(),
        })
    }

    /// The configuration it was built from.
    pub fn ladder_config(&self) -> &LadderVaeConfig {
        &self.config
    }

    fn check_images(&self, x: &Tensor) -> Result<(), ModelError> {
        let c = &self.config;
        check_images(x, [c.input_channels, c.input_height, c.input_width])
    }

    /// How both paths' convs lay out their tensors: channels-last in bf16 on a CPU with AMX.
    fn layout(&self) -> Layout {
        Layout::for_kind(self.compute, self.nhwc_bf16)
    }

    /// The bottom-up pass of images `x` in the model's arithmetic and layout.
    fn bottom_up(&self, x: &Tensor) -> BottomUpOut {
        self.bottom_up.forward(x, self.compute, self.layout())
    }

    /// The top-down pass from `z_top`: each spatial group's z picked by `pick`, from the
    /// posterior when `features` (the bottom-up path's) are given, else from the prior. Gives
    /// the likelihood's parameters and each group's draw (coarsest first).
    fn top_down(
        &self,
        z_top: &Tensor,
        features: Option<&[Vec<Tensor>]>,
        pick: Pick<'_>,
    ) -> (Tensor, Vec<GroupDraw>) {
        let (kind, layout) = (self.compute, self.layout());
        let c = &self.config;
        let last = c.channels.len() - 1;
        let (h, w) = c.resolution(last);
        let td = &self.top_down;
        let mut d = linear_in(&td.fc, &cast(z_top, kind), kind).view([-1, c.channels[last], h, w]);
        if layout == Layout::ChannelsLast {
            d = to_channels_last(&d);
        }
        let mut draws = Vec::new();
        for l in (0..=last).rev() {
            if l < last {
                d = td.up[l].forward(&act(&d), kind, layout);
            }
            let stages = &td.levels[l];
            for (j, stage) in stages.iter().enumerate() {
                if let Some(group) = &stage.group {
                    // The first group reads the last bottom-up stage.
                    let f = features.map(|f| &f[l][stages.len() - 1 - j]);
                    let draw = self.group_draw(group, &d, f, &pick, draws.len());
                    // Out of place: SiLU kept `d` for its backward.
                    d = d.g_add(&conv_in(
                        &group.inject,
                        &cast(&draw.z, kind),
                        (1, 0),
                        kind,
                        layout,
                    ));
                    draws.push(draw);
                }
                d = apply_cells(d, &stage.cells, kind, layout);
            }
        }
        let params = cast(&td.out.forward(&act(&d), kind, layout), Kind::Float);
        (params, draws)
    }

    /// The likelihood's parameters for images `x` given the top-down path's outputs `base`:
    /// `base` itself, or refined by the pixel head from the pixels before each one.
    fn likelihood_params(&self, x: &Tensor, base: &Tensor) -> Tensor {
        pixel::refine(self.top_down.pixel.as_ref(), x, base, self.compute)
    }

    /// A group's draw from the top-down features `d`: its prior from them, and when the pass
    /// reads an image (`f`, the bottom-up features the group pairs with) its posterior as a
    /// residual correction of that prior (NVAE §3.2); z from the posterior or else the prior,
    /// picked by `pick` (the pass's `index`-th group).
    fn group_draw(
        &self,
        group: &Group,
        d: &Tensor,
        f: Option<&Tensor>,
        pick: &Pick<'_>,
        index: usize,
    ) -> GroupDraw {
        let (kind, layout) = (self.compute, self.layout());
        let a = act(d);
        let raw = cast(
            &conv_in(&group.prior, &a, (1, 1), kind, layout),
            Kind::Float,
        )
        .chunk(2, 1);
        let prior = Normal::from_raw(&raw[0], &raw[1]);
        let posterior = f.map(|f| {
            let both = Tensor::cat(&[a.shallow_clone(), act(f)], 1);
            let delta = cast(
                &conv_in(&group.posterior, &both, (1, 1), kind, layout),
                Kind::Float,
            )
            .chunk(2, 1);
            Normal::from_raw(&(&prior.mu + &delta[0]), &(&prior.logvar * 0.5 + &delta[1]))
        });
        let from = posterior.as_ref().unwrap_or(&prior);
        let (eps, z) = match pick {
            Pick::Fresh(t) => {
                let eps = from.mu.randn_like();
                let z = &from.mu + (&from.logvar * 0.5).exp() * (&eps * *t);
                (eps, z)
            }
            Pick::Given(noise) => {
                let eps = noise[index].shallow_clone();
                let z = &from.mu + (&from.logvar * 0.5).exp() * &eps;
                (eps, z)
            }
            Pick::Mean => (from.mu.zeros_like(), from.mu.shallow_clone()),
        };
        GroupDraw {
            z,
            eps,
            prior,
            posterior,
        }
    }

    /// The top group's posterior (μ, log σ²) for images `u`: the VampPrior's components at
    /// its pseudo-inputs.
    fn top_posterior(&self, u: &Tensor) -> (Tensor, Tensor) {
        let q = self.bottom_up(u).top;
        (q.mu, q.logvar)
    }

    /// log p(z_top) for latents `[..., top_dim]`: `[...]`.
    fn log_prior_top(&self, z: &Tensor) -> Tensor {
        self.prior.log_density(z, |u| self.top_posterior(u))
    }

    /// `n` top latents from the prior, with the Gaussian noise scaled by `temperature`.
    fn sample_top(&self, n: i64, temperature: f64) -> Tensor {
        self.prior
            .sample(n, self.config.top_dim, temperature, self.device, |u| {
                self.top_posterior(u)
            })
    }

    /// The negative-ELBO terms for `x` at top noise `eps_top` and the groups' noise `pick`.
    fn elbo_at(&self, x: &Tensor, eps_top: &Tensor, pick: Pick<'_>) -> ElboTerms {
        let bu = self.bottom_up(x);
        let q = &bu.top;
        let z_top = &q.mu + q.std() * eps_top;
        let (params, draws) = self.top_down(&z_top, Some(&bu.features), pick);
        let kl_top = if self.config.closed_form_top() {
            loss::gaussian_kl(&q.mu, &q.logvar)
        } else {
            loss::diagonal_normal_log_density(eps_top, &q.logvar) - self.log_prior_top(&z_top)
        };
        let mut kl_groups = vec![kl_top];
        for d in &draws {
            let q = d
                .posterior
                .as_ref()
                .expect("a pass over an image has posteriors");
            kl_groups.push(
                loss::gaussian_kl_between(&q.mu, &q.logvar, &d.prior.mu, &d.prior.logvar)
                    .flatten(1, -1)
                    .sum_dim_intlist(-1, false, Kind::Float),
            );
        }
        let kl_dims = Tensor::stack(&kl_groups, 1);
        ElboTerms {
            reconstruction: self
                .config
                .likelihood
                .nll(&self.likelihood_params(x, &params), x),
            kl: kl_dims.sum_dim_intlist(-1, false, Kind::Float),
            kl_groups,
            kl_dims: Some(kl_dims),
        }
    }

    /// log p(x | z_i), log p(z_i) and log q(z_i | x) for `s` fresh samples per image,
    /// `[s, N]` each.
    fn weights(&self, x: &Tensor, s: i64) -> ImportanceTerms {
        let n = x.size()[0];
        let bu = self.bottom_up(x);
        let repeat = |t: &Tensor| repeat_rows(t, s);
        let features: Vec<Vec<Tensor>> = bu
            .features
            .iter()
            .map(|level| level.iter().map(repeat).collect())
            .collect();
        let (mu, logvar) = (repeat(&bu.top.mu), repeat(&bu.top.logvar));
        let eps_top = mu.randn_like();
        let z_top = &mu + (&logvar * 0.5).exp() * &eps_top;
        let (params, draws) = self.top_down(&z_top, Some(&features), Pick::Fresh(1.0));
        let images = repeat(x);
        let log_px = self
            .config
            .likelihood
            .log_prob(&self.likelihood_params(&images, &params), &images)
            .view([s, n]);
        // log q(z | x) and log p(z) factorise over the groups: sums of each group's term.
        let mut log_qz = vec![loss::diagonal_normal_log_density(&eps_top, &logvar)];
        let mut log_pz = vec![self.log_prior_top(&z_top)];
        for d in &draws {
            let q = d
                .posterior
                .as_ref()
                .expect("a pass over an image has posteriors");
            log_qz.push(loss::diagonal_normal_log_density(
                &d.eps.flatten(1, -1),
                &q.logvar.flatten(1, -1),
            ));
            log_pz.push(loss::normal_log_density(
                &d.z.flatten(1, -1),
                &d.prior.mu.flatten(1, -1),
                &d.prior.logvar.flatten(1, -1),
            ));
        }
        let total =
            |terms: &[Tensor]| Tensor::stack(terms, 0).sum_dim_intlist(0, false, Kind::Float);
        let (log_qz, log_pz) = (total(&log_qz), total(&log_pz));
        ImportanceTerms {
            log_px,
            log_pz: log_pz.view([s, n]),
            log_qz: log_qz.view([s, n]),
        }
    }

    /// Splits noise `[N, noise_dim]` into the top's `[N, top_dim]` and each group's
    /// `[N, c, h, w]` (coarsest first).
    fn split_noise(&self, eps: &Tensor) -> (Tensor, Vec<Tensor>) {
        let n = eps.size()[0];
        let shapes = self.config.group_shapes();
        let sizes: Vec<i64> = std::iter::once(self.config.top_dim)
            .chain(shapes.iter().map(|s| s.iter().product::<i64>()))
            .collect();
        let parts = eps.split_with_sizes(&sizes, 1);
        let groups = parts[1..]
            .iter()
            .zip(shapes)
            .map(|(p, [c, h, w])| p.reshape([n, c, h, w]))
            .collect();
        (parts[0].shallow_clone(), groups)
    }
}

impl VaeConfig for LadderVaeConfig {
    const KIND: &'static str = "ladder";

    config_basics!(LadderVae);

    /// The top group's.
    fn latent_dim(&self) -> i64 {
        self.top_dim
    }

    /// The top group and each spatial group (a resolution of no latent channels has none).
    /// The top group, then each spatial group in the order they are drawn.
    fn latent_group_sizes(&self) -> Vec<i64> {
        std::iter::once(self.top_dim)
            .chain(self.group_shapes().iter().map(|s| s.iter().product()))
            .collect()
    }

    /// Each group's KL.
    fn has_kl_per_dimension(&self) -> bool {
        true
    }
}

impl Vae for LadderVae {
    model_basics!();

    /// q(z_top | x), the top group's posterior.
    fn encode(&self, x: &Tensor) -> Result<Posterior, ModelError> {
        self.check_images(x)?;
        Ok(self.bottom_up(x).top)
    }

    /// The likelihood's parameters with the top group at `z` and every lower group at its
    /// prior mean given the groups above (with a pixel head: the parameters it refines).
    fn decode(&self, z: &Tensor) -> Result<Tensor, ModelError> {
        check_rows("latents", z, None, self.config.top_dim)?;
        Ok(self.top_down(z, None, Pick::Mean).0)
    }

    /// The top group's noise drawn first, each lower group's as the pass reaches it.
    fn elbo(&self, x: &Tensor) -> Result<ElboTerms, ModelError> {
        self.check_images(x)?;
        let eps_top = Tensor::randn(
            [x.size()[0], self.config.top_dim],
            (Kind::Float, x.device()),
        );
        Ok(self.elbo_at(x, &eps_top, Pick::Fresh(1.0)))
    }

    /// `eps` holds every group's noise, `[N, noise_dim]` ([`LadderVaeConfig::noise_dim`]): the
    /// top group's first, then each spatial group's, coarsest first, each flattened in
    /// (channel, row, column) order.
    fn noise_dim(&self) -> i64 {
        self.config.noise_dim()
    }

    fn elbo_with_noise(&self, x: &Tensor, eps: &Tensor) -> Result<ElboTerms, ModelError> {
        self.check_images(x)?;
        check_rows("noise", eps, Some(x.size()[0]), self.config.noise_dim())?;
        let (top, groups) = self.split_noise(eps);
        Ok(self.elbo_at(x, &top, Pick::Given(&groups)))
    }

    fn importance_terms(&self, x: &Tensor, k: i64) -> Result<ImportanceTerms, ModelError> {
        self.check_images(x)?;
        Ok(self.weights(x, k))
    }

    /// Every group's Gaussian noise is scaled by `temperature`, top-down.
    fn prior_params(&self, n: i64, temperature: f64) -> Result<Tensor, ModelError> {
        let z = self.sample_top(n, temperature);
        Ok(self.top_down(&z, None, Pick::Fresh(temperature)).0)
    }

    /// Through the posterior means of every group, top-down.
    fn reconstruct(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        self.check_images(x)?;
        let bu = self.bottom_up(x);
        let (params, _) = self.top_down(&bu.top.mu, Some(&bu.features), Pick::Mean);
        Ok(self.means(&params))
    }

    /// With a pixel head, the pixels are drawn one at a time (H·W passes of the head), each
    /// mean given the pixels before it.
    fn means(&self, params: &Tensor) -> Tensor {
        let p = self.top_down.pixel.as_ref();
        pixel::pictures(p, self.config.likelihood, params, self.compute, false)
    }

    fn draws(&self, params: &Tensor) -> Tensor {
        let p = self.top_down.pixel.as_ref();
        pixel::pictures(p, self.config.likelihood, params, self.compute, true)
    }

    fn prior_images(&self) -> Option<Tensor> {
        self.prior.images()
    }

    /// The ladder's own evaluator (`ladder/iw.rs`): the VampPrior's components once, the posterior's bottom-up half once
    /// per image, and the top-down pass in fused channels-last kernels.
    fn iw_evaluator(&self, precision: IwPrecision) -> Option<Box<dyn IwEvaluator + '_>> {
        (self.compute == Kind::Float).then(|| Box::new(iw::LadderIw::new(self, precision)) as _)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::lock;

    /// A 2-group toy on 8×8 images: the top (3 dims) over a 2-channel group at 2×2.
    fn toy(groups: Vec<i64>) -> LadderVaeConfig {
        LadderVaeConfig {
            input_height: 8,
            input_width: 8,
            channels: vec![4, 6],
            group_channels: groups,
            top_dim: 3,
            ..LadderVaeConfig::default()
        }
    }

    fn build(config: &LadderVaeConfig) -> (nn::VarStore, LadderVae) {
        let vs = nn::VarStore::new(Device::Cpu);
        let model = LadderVae::new(&vs.root(), config).unwrap();
        (vs, model)
    }

    /// The toy with a 4-channel, 2-layer pixel head and `likelihood`.
    fn with_head(likelihood: Likelihood) -> LadderVaeConfig {
        LadderVaeConfig {
            likelihood,
            pixel_head: Some(PixelHead {
                channels: 4,
                layers: 2,
            }),
            ..toy(vec![2, 3])
        }
    }

    /// Gives a pixel head's zero-initialised output layer weights, as training would (a fresh
    /// head changes nothing).
    fn train_head(vs: &nn::VarStore) {
        tch::no_grad(|| {
            for (name, mut t) in vs.variables() {
                if name.contains("pixel_head.out") {
                    let _ = t.uniform_(-0.5, 0.5);
                }
            }
        });
    }

    fn images(n: i64) -> Tensor {
        Tensor::rand([n, 1, 8, 8], (Kind::Float, Device::Cpu)).round()
    }

    fn value(t: &Tensor) -> f64 {
        t.double_value(&[])
    }

    #[test]
    fn the_elbo_is_the_sum_of_its_parts_computed_by_hand() {
        let _g = lock();
        tch::manual_seed(1);
        let config = toy(vec![0, 2]);
        let (_vs, model) = build(&config);
        assert_eq!(config.noise_dim(), 3 + 2 * 2 * 2);
        let x = images(5);
        let eps = Tensor::randn([5, config.noise_dim()], (Kind::Float, Device::Cpu));
        let terms = model.elbo_with_noise(&x, &eps).unwrap();

        // By hand, from the two paths' outputs at the same noise.
        let bu = model.bottom_up.forward(&x, Kind::Float, Layout::Plain);
        let eps_top = eps.narrow(1, 0, 3);
        let eps_group = eps.narrow(1, 3, 8).reshape([5, 2, 2, 2]);
        let z_top = &bu.top.mu + (&bu.top.logvar * 0.5).exp() * &eps_top;
        let (logits, draws) = model.top_down(
            &z_top,
            Some(&bu.features),
            Pick::Given(&[eps_group.shallow_clone()]),
        );
        assert_eq!(draws.len(), 1);
        assert_eq!(
            ModelConfig::from(config.clone()).latent_groups(),
            1 + draws.len()
        );
        let (q, p) = (draws[0].posterior.as_ref().unwrap(), &draws[0].prior);
        let z = &q.mu + (&q.logvar * 0.5).exp() * &eps_group;
        assert!(
            value(&(&draws[0].z - &z).abs().max()) < 1e-6,
            "z = μ_q + σ_q·ε"
        );
        let prob = logits.sigmoid();
        let recon = -(&x * prob.log()
            + x.ones_like().g_sub(&x) * prob.ones_like().g_sub(&prob).log())
        .sum_dim_intlist([1, 2, 3].as_slice(), false, Kind::Float);
        let (mu, var) = (&bu.top.mu, bu.top.logvar.exp());
        let kl_top =
            (mu.square() + &var - 1.0 - var.log()).sum_dim_intlist(-1, false, Kind::Float) * 0.5;
        let (var_q, var_p) = (q.logvar.exp(), p.logvar.exp());
        let kl_group = ((var_p.log() - var_q.log()) + (&var_q + (&q.mu - &p.mu).square()) / &var_p
            - 1.0)
            .sum_dim_intlist([1, 2, 3].as_slice(), false, Kind::Float)
            * 0.5;
        let close = |a: &Tensor, b: &Tensor, what: &str| {
            let diff = value(&(a - b).abs().max());
            assert!(diff < 1e-3, "{what} differs by {diff}");
        };
        close(&terms.reconstruction, &recon, "reconstruction");
        assert_eq!(terms.kl_groups.len(), 2);
        close(&terms.kl_groups[0], &kl_top, "top KL");
        close(&terms.kl_groups[1], &kl_group, "group KL");
        close(&terms.kl, &(&kl_top + &kl_group), "KL");
        close(
            terms.kl_dims.as_ref().unwrap(),
            &Tensor::stack(&[kl_top, kl_group], 1),
            "kl_dims",
        );
    }

    #[test]
    fn in_bf16_both_paths_compute_the_same_elbo_channels_last_or_not() {
        let _g = lock();
        tch::manual_seed(5);
        // Two groups at the finer resolution and one at the coarser, with cells: every conv,
        // transposed conv and injection the layout reaches (channels-last on a CPU with AMX).
        let config = LadderVaeConfig {
            cells: vec![1, 1],
            groups: vec![2, 1],
            ..toy(vec![2, 3])
        };
        let (vs, mut model) = build(&config);
        model.set_compute_kind(Kind::BFloat16).unwrap();
        let x = images(6);
        let eps = Tensor::randn([6, config.noise_dim()], (Kind::Float, Device::Cpu));
        let weights = vs.trainable_variables();
        let run = |model: &LadderVae| {
            let t = model.elbo_with_noise(&x, &eps).unwrap();
            let loss = (&t.reconstruction + &t.kl).sum(Kind::Float);
            let grads = Tensor::run_backward(&[&loss], &weights, false, false);
            (t.reconstruction, t.kl, grads)
        };
        model.nhwc_bf16 = false;
        assert_eq!(model.layout(), Layout::Plain);
        let (rec, kl, grads) = run(&model);
        model.nhwc_bf16 = true;
        assert_eq!(model.layout(), Layout::ChannelsLast);
        let (rec_cl, kl_cl, grads_cl) = run(&model);
        // A one-channel output has unit channel stride only when computed channels-last.
        let z = Tensor::randn([2, 3], (Kind::Float, Device::Cpu));
        for (nhwc, want) in [(true, true), (false, false)] {
            model.nhwc_bf16 = nhwc;
            let out = tch::no_grad(|| model.decode(&z).unwrap());
            assert_eq!(out.stride()[1] == 1, want, "strides {:?}", out.stride());
        }
        let rel = |a: &Tensor, b: &Tensor| value(&((a - b).abs().max() / (b.abs().max() + 1e-6)));
        assert!(
            rel(&rec_cl, &rec) < 2e-2,
            "reconstruction {}",
            rel(&rec_cl, &rec)
        );
        assert!(rel(&kl_cl, &kl) < 2e-2, "KL {}", rel(&kl_cl, &kl));
        for (a, b) in grads_cl.iter().zip(&grads) {
            assert!(
                rel(a, b) < 5e-2,
                "gradient differs by {} (relative)",
                rel(a, b)
            );
        }
        // In f32 the layout stays NCHW whatever the CPU has.
        model.set_compute_kind(Kind::Float).unwrap();
        assert_eq!(model.layout(), Layout::Plain);
    }

    #[test]
    fn the_iw_bound_with_one_sample_is_the_elbo() {
        let _g = lock();
        tch::manual_seed(2);
        let (_vs, model) = build(&toy(vec![2, 3]));
        let x = images(4);
        tch::no_grad(|| {
            // The same seed draws the same z: the reconstruction terms agree exactly, and the
            // log-weight's log q − log p is a one-sample estimate of the closed-form KLs.
            let draws = 1500;
            let mut kl_one_sample = Tensor::zeros([4], (Kind::Float, Device::Cpu));
            let mut kl_closed = Tensor::zeros([4], (Kind::Float, Device::Cpu));
            let mut square = Tensor::zeros([4], (Kind::Float, Device::Cpu));
            for i in 0..draws {
                tch::manual_seed(100 + i);
                let iw = model.iwae_terms(&x, 1).unwrap();
                tch::manual_seed(100 + i);
                let elbo = model.elbo(&x).unwrap();
                let diff = value(&(&iw.reconstruction - &elbo.reconstruction).abs().max());
                assert!(diff < 1e-4, "reconstructions differ by {diff}");
                let bound = -(&iw.reconstruction + &iw.kl);
                assert!(value(&(&bound - &iw.bound).abs().max()) < 1e-3);
                kl_one_sample += &iw.kl;
                square += iw.kl.square();
                kl_closed += &elbo.kl;
            }
            let n = draws as f64;
            let mean = &kl_one_sample / n;
            let se = ((&square / n - mean.square()) / n).sqrt();
            let gap = ((&mean - &kl_closed / n).abs() / se).max();
            assert!(
                value(&gap) < 4.5,
                "E[log q − log p] is the KL: {gap} standard errors apart"
            );
            // More samples tighten the bound.
            tch::manual_seed(3);
            let k1 = model
                .log_likelihood_iw(&x, 1, 4096)
                .unwrap()
                .mean(Kind::Float);
            let k200 = model
                .log_likelihood_iw(&x, 200, 4096)
                .unwrap()
                .mean(Kind::Float);
            assert!(value(&k200) > value(&k1));
        });
    }

    #[test]
    fn the_iw_evaluator_gives_the_models_bound_at_the_same_draws() {
        let _g = lock();
        let colour = LadderVaeConfig {
            input_channels: 3,
            channels: vec![4, 6, 8],
            group_channels: vec![2, 0, 3],
            cells: vec![2, 0, 1],
            input_height: 16,
            input_width: 16,
            likelihood: Likelihood::Logistic { components: 2 },
            ..toy(vec![2, 3])
        };
        for (i, config) in [
            toy(vec![2, 3]),
            toy(vec![0, 2]),
            LadderVaeConfig {
                top_prior: Prior::Vamp { components: 5 },
                cells: vec![2, 1],
                ..toy(vec![3, 2])
            },
            colour,
            LadderVaeConfig {
                groups: vec![3, 2],
                cells: vec![1, 0],
                ..toy(vec![2, 3])
            },
            with_head(Likelihood::Logistic { components: 2 }),
        ]
        .into_iter()
        .enumerate()
        {
            tch::manual_seed(10 + i as i64);
            let (vs, model) = build(&config);
            train_head(&vs);
            let shape = [
                4,
                config.input_channels,
                config.input_height,
                config.input_width,
            ];
            let x = Tensor::rand(shape, (Kind::Float, Device::Cpu));
            let x = if config.likelihood == Likelihood::Bernoulli {
                x.round()
            } else {
                (x * 255.0).round() / 255.0
            };
            let fast = model
                .iw_evaluator(IwPrecision::Fp32)
                .expect("the ladder has an evaluator");
            assert!(!fast.bf16_products());
            // Several chunks (7 rows at most: 1 sample of 4 images per chunk), one chunk, and
            // one image (whose rows are a broadcast view of it).
            for (n, k, max_rows) in [(4, 5, 7), (4, 3, 100), (1, 6, 4)] {
                let x = x.narrow(0, 0, n);
                tch::manual_seed(99);
                let want = tch::no_grad(|| model.log_likelihood_iw(&x, k, max_rows)).unwrap();
                tch::manual_seed(99);
                let got = fast.log_likelihood_iw(&x, k, max_rows).unwrap();
                let rel = ((&got - &want).abs() / want.abs()).max().double_value(&[]);
                assert!(
                    rel < 1e-5,
                    "config {i}, k = {k}: {got:?} vs {want:?} ({rel})"
                );
            }
            let err = fast
                .log_likelihood_iw(&x.narrow(2, 0, 4), 2, 10)
                .unwrap_err();
            assert!(err.to_string().contains("images"), "{err}");
        }
    }

    #[test]
    fn the_auto_evaluator_takes_bf16_products_only_for_binary_data_on_a_cpu_with_amx() {
        let _g = lock();
        let amx = crate::CpuFeatures::current().amx_bf16 && crate::fused::available();
        // Channels wide enough for oneDNN's bf16 kernels.
        let wide = |likelihood| LadderVaeConfig {
            input_height: 16,
            input_width: 16,
            channels: vec![16, 32],
            top_prior: Prior::Vamp { components: 5 },
            likelihood,
            ..toy(vec![4, 8])
        };
        for (config, binary) in [
            (wide(Likelihood::Bernoulli), true),
            (wide(Likelihood::Logistic { components: 2 }), false),
        ] {
            tch::manual_seed(3);
            let (_vs, model) = build(&config);
            let x = Tensor::rand([2, 1, 16, 16], (Kind::Float, Device::Cpu));
            let x = if binary {
                x.round()
            } else {
                (x * 255.0).round() / 255.0
            };
            let exact = model.iw_evaluator(IwPrecision::Fp32).unwrap();
            let auto = model.iw_evaluator(IwPrecision::Auto).unwrap();
            assert!(!exact.bf16_products());
            assert_eq!(auto.bf16_products(), amx && binary, "binary: {binary}");
            tch::manual_seed(7);
            let want = exact.log_likelihood_iw(&x, 20, 40).unwrap();
            tch::manual_seed(7);
            let got = auto.log_likelihood_iw(&x, 20, 40).unwrap();
            assert!(
                !crate::fused::bf16_products_on(),
                "the evaluation leaves libtorch's convolutions in f32"
            );
            let rel = ((&got - &want).abs() / want.abs()).max().double_value(&[]);
            if auto.bf16_products() {
                // bf16 products round each conv's inputs to 8 bits of mantissa: the bound moves
                // by rounding of that size, and does move.
                assert!(rel > 0.0 && rel < 1e-2, "{got:?} vs {want:?} ({rel})");
            } else {
                assert_eq!(rel, 0.0, "{got:?} vs {want:?}");
            }
        }
    }

    #[test]
    fn a_pixel_head_refines_each_likelihood_from_the_pixels_before_and_samples_pixel_by_pixel() {
        let _g = lock();
        tch::manual_seed(8);
        let logistic = Likelihood::Logistic { components: 2 };
        let config = with_head(logistic);
        let (vs, model) = build(&config);
        let vars = vs.variables();
        assert_eq!(vars["top_down.pixel_head.out.weight"].size(), [6, 4, 1, 1]);
        assert_eq!(
            vars["top_down.pixel_head.condition.weight"].size(),
            [4, 6, 1, 1]
        );
        let x = (Tensor::rand([3, 1, 8, 8], (Kind::Float, Device::Cpu)) * 255.0).round() / 255.0;
        let eps = Tensor::randn([3, config.noise_dim()], (Kind::Float, Device::Cpu));
        // A fresh head leaves the likelihood as the top-down path gives it.
        let fresh = model.elbo_with_noise(&x, &eps).unwrap();
        let bu = model.bottom_up(&x);
        let (groups_top, groups) = model.split_noise(&eps);
        let z_top = &bu.top.mu + (&bu.top.logvar * 0.5).exp() * &groups_top;
        let (base, _) = model.top_down(&z_top, Some(&bu.features), Pick::Given(&groups));
        assert!(
            fresh
                .reconstruction
                .allclose(&logistic.nll(&base, &x), 1e-5, 1e-4, false)
        );
        // A trained one changes it, learns, and the IW bound stays above the ELBO.
        train_head(&vs);
        let terms = model.elbo_with_noise(&x, &eps).unwrap();
        assert!(
            !terms
                .reconstruction
                .allclose(&fresh.reconstruction, 1e-3, 1e-3, false)
        );
        (&terms.reconstruction + &terms.kl)
            .mean(Kind::Float)
            .backward();
        let g = vars["top_down.pixel_head.first.weight"].grad();
        assert!(value(&g.abs().sum(Kind::Float)) > 0.0, "the head learns");
        let elbo = -(&terms.reconstruction + &terms.kl).mean(Kind::Float);
        let iw = tch::no_grad(|| model.log_likelihood_iw(&x, 50, 1000)).unwrap();
        assert!(value(&iw.mean(Kind::Float)) > value(&elbo) - 1.0);
        // Samples and reconstructions come pixel by pixel, on the 256 levels.
        let drawn = tch::no_grad(|| model.draw(2, 1.0)).unwrap();
        assert_eq!(drawn.size(), [2, 1, 8, 8]);
        let levels = &drawn * 255.0;
        assert!(levels.allclose(&levels.round(), 1e-4, 1e-4, false));
        let rec = tch::no_grad(|| model.reconstruct(&x)).unwrap();
        assert_eq!(rec.size(), [3, 1, 8, 8]);
        assert!(value(&rec.min()) >= 0.0 && value(&rec.max()) <= 1.0);
        // Configs round-trip; one without a head names none; colour images are refused.
        let text = toml::to_string(&config).unwrap();
        assert_eq!(toml::from_str::<LadderVaeConfig>(&text).unwrap(), config);
        assert!(
            !toml::to_string(&toy(vec![2, 3]))
                .unwrap()
                .contains("pixel_head")
        );
        let colour = LadderVaeConfig {
            input_channels: 3,
            ..config
        };
        let err = colour.validate().unwrap_err().to_string();
        assert!(err.contains("one-channel"), "{err}");
    }

    #[test]
    fn sampling_runs_the_groups_top_down_with_their_shapes() {
        let _g = lock();
        tch::manual_seed(3);
        let config = LadderVaeConfig {
            input_height: 16,
            input_width: 16,
            channels: vec![4, 4, 4],
            group_channels: vec![2, 0, 3],
            cells: vec![1, 0, 2],
            top_dim: 5,
            ..LadderVaeConfig::default()
        };
        let (_vs, model) = build(&config);
        let z = model.sample_top(6, 1.0);
        let (params, draws) = model.top_down(&z, None, Pick::Fresh(1.0));
        assert_eq!(params.size(), [6, 1, 16, 16]);
        // Coarsest first: 3 channels at 2×2, then 2 at 8×8; no posterior without an image.
        let shapes: Vec<_> = draws.iter().map(|d| d.z.size()).collect();
        assert_eq!(shapes, [vec![6, 3, 2, 2], vec![6, 2, 8, 8]]);
        assert!(draws.iter().all(|d| d.posterior.is_none()));
        // Each lower group depends on the one above: another top gives another prior below.
        let (_, other) = model.top_down(&(&z + 1.0), None, Pick::Fresh(1.0));
        assert!(value(&(&draws[1].prior.mu - &other[1].prior.mu).abs().max()) > 0.0);
        let s = model.sample(6, 0.7).unwrap();
        assert_eq!(s.size(), [6, 1, 16, 16]);
        assert!(value(&s.min()) >= 0.0 && value(&s.max()) <= 1.0);
        // Temperature 0 is the deterministic mean path.
        let a = model.sample(2, 0.0).unwrap();
        let b = model.sample(2, 0.0).unwrap();
        assert_eq!(value(&(&a - &b).abs().max()), 0.0);
        let d = model.draw(3, 1.0).unwrap();
        assert!(
            value(&(&d * d.ones_like().g_sub(&d)).abs().max()) == 0.0,
            "Bernoulli draws are 0 or 1"
        );
        assert_eq!(model.decode(&z).unwrap().size(), [6, 1, 16, 16]);
        assert_eq!(
            model
                .encode(&images(2).upsample_nearest2d([16, 16], None, None))
                .unwrap()
                .mu
                .size(),
            [2, 5]
        );
    }

    #[test]
    fn configs_round_trip_and_bad_ones_are_refused() {
        let config = ModelConfig::from(toy(vec![2, 3]));
        let text = toml::to_string(&config).unwrap();
        assert!(text.contains("kind = \"ladder\""), "{text}");
        assert_eq!(toml::from_str::<ModelConfig>(&text).unwrap(), config);
        assert_eq!(config.latent_dim(), 3);
        for (bad, why) in [
            (toy(vec![2]), "one non-negative width per resolution"),
            (
                LadderVaeConfig {
                    cells: vec![1],
                    ..toy(vec![2, 3])
                },
                "cells per resolution",
            ),
            (
                LadderVaeConfig {
                    input_height: 10,
                    ..toy(vec![2, 3])
                },
                "divisible by 4",
            ),
            (
                LadderVaeConfig {
                    top_dim: 0,
                    ..toy(vec![2, 3])
                },
                "top_dim",
            ),
            (
                LadderVaeConfig {
                    groups: vec![2],
                    ..toy(vec![2, 3])
                },
                "1 to 16 latent groups per resolution (2 here), got [2]",
            ),
            (
                LadderVaeConfig {
                    groups: vec![1, 0],
                    ..toy(vec![2, 3])
                },
                "1 to 16 latent groups",
            ),
            (
                LadderVaeConfig {
                    groups: vec![2, 1],
                    ..toy(vec![0, 3])
                },
                "resolution 1 has no latent channels",
            ),
        ] {
            let err = bad.validate().unwrap_err().to_string();
            assert!(err.contains(why), "{err}");
        }
        let _g = lock();
        let (_vs, model) = build(&toy(vec![2, 3]));
        let x = images(2);
        let wrong = Tensor::zeros([2, 5], (Kind::Float, Device::Cpu));
        let err = model.elbo_with_noise(&x, &wrong).unwrap_err().to_string();
        assert!(
            err.contains(&format!("[2, {}]", toy(vec![2, 3]).noise_dim())),
            "{err}"
        );
    }

    #[test]
    fn several_groups_at_a_resolution_run_in_turn_each_reading_its_own_bottom_up_stage() {
        let _g = lock();
        tch::manual_seed(5);
        let config = LadderVaeConfig {
            groups: vec![3, 2],
            ..toy(vec![2, 1])
        };
        let (vs, model) = build(&config);
        // One group keeps a resolution's names; the others are stages under it.
        let names = vs.variables();
        for name in [
            "top_down.level1.prior.weight",
            "top_down.level1.stage3.posterior.weight",
            "top_down.level1.stage3.cell1.conv1.weight",
            "top_down.level2.stage2.inject.weight",
            "bottom_up.level1.stage3.cell1.conv2.weight",
            "bottom_up.level2.cell1.conv1.weight",
        ] {
            assert!(names.contains_key(name), "{name} missing");
        }
        assert!(!names.contains_key("top_down.level2.stage3.prior.weight"));
        // The top, two 1-channel groups at 2×2, three 2-channel groups at 4×4.
        assert_eq!(config.noise_dim(), 3 + 2 * (2 * 2) + 3 * (2 * 4 * 4));
        assert_eq!(ModelConfig::from(config.clone()).latent_groups(), 6);
        assert_eq!(
            ModelConfig::from(config.clone()).latent_group_sizes(),
            [3, 4, 4, 32, 32, 32]
        );
        let x = images(3);
        let terms = model.elbo(&x).unwrap();
        assert_eq!(terms.kl_groups.len(), 6);
        assert_eq!(terms.kl_dims.as_ref().unwrap().size(), [3, 6]);
        // Coarsest first, a resolution's groups in turn.
        let bu = model.bottom_up.forward(&x, Kind::Float, Layout::Plain);
        assert_eq!(bu.features.iter().map(Vec::len).collect::<Vec<_>>(), [3, 2]);
        let z_top = bu.top.mu.shallow_clone();
        let (_, draws) = model.top_down(&z_top, Some(&bu.features), Pick::Mean);
        let shapes: Vec<_> = draws.iter().map(|d| d.z.size()).collect();
        assert_eq!(
            shapes,
            [
                [3, 1, 2, 2],
                [3, 1, 2, 2],
                [3, 2, 4, 4],
                [3, 2, 4, 4],
                [3, 2, 4, 4]
            ]
        );
        // The first group at 4×4 reads the last bottom-up stage there, the last the first: a
        // change to the first stage's features moves the last group's posterior only.
        let mut moved: Vec<Vec<Tensor>> = (bu.features.iter())
            .map(|l| l.iter().map(Tensor::shallow_clone).collect())
            .collect();
        moved[0][0] = &moved[0][0] + 1.0;
        let (_, after) = model.top_down(&z_top, Some(&moved), Pick::Mean);
        let posterior_change = |i: usize| {
            let (a, b) = (&draws[i].posterior, &after[i].posterior);
            value(
                &(&a.as_ref().unwrap().mu - &b.as_ref().unwrap().mu)
                    .abs()
                    .max(),
            )
        };
        assert_eq!(posterior_change(2), 0.0);
        assert_eq!(posterior_change(3), 0.0);
        assert!(posterior_change(4) > 0.0);
        // The noise is split the same way: the pass at given noise reproduces the z.
        let eps = Tensor::randn([3, config.noise_dim()], (Kind::Float, Device::Cpu));
        let (top, noise) = model.split_noise(&eps);
        assert_eq!(top.size(), [3, 3]);
        let (_, given) = model.top_down(&z_top, Some(&bu.features), Pick::Given(&noise));
        for (d, e) in given.iter().zip(&noise) {
            assert_eq!(value(&(&d.eps - e).abs().max()), 0.0);
        }
        assert_eq!(model.sample(2, 1.0).unwrap().size(), [2, 1, 8, 8]);
    }

    #[test]
    fn a_vamp_prior_on_the_top_group_gives_a_finite_one_sample_kl() {
        let _g = lock();
        tch::manual_seed(4);
        let config = LadderVaeConfig {
            top_prior: Prior::Vamp { components: 5 },
            ..toy(vec![2, 3])
        };
        let (vs, model) = build(&config);
        assert!(vs.variables().contains_key("prior.pseudo_inputs"));
        let terms = model.elbo(&images(3)).unwrap();
        assert!(terms.kl.isfinite().all().int64_value(&[]) == 1);
        assert_eq!(model.prior_images().unwrap().size(), [5, 1, 8, 8]);
        assert_eq!(model.sample(4, 1.0).unwrap().size(), [4, 1, 8, 8]);
    }
}
