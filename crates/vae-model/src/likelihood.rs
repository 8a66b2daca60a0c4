//! Observation models p(x | z): what the decoder's outputs parameterise.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// The discretised logistic mixture's default number of components.
pub const DEFAULT_LOGISTIC_COMPONENTS: i64 = 5;

/// The observation model p(x | z) over pixels, given the decoder's outputs.
///
/// The decoder gives [`params_per_channel`](Self::params_per_channel) output channels per
/// image channel, `[N, C·P, H, W]` for images `[N, C, H, W]` in [0, 1] (channel c's parameters
/// are outputs c·P to c·P + P − 1); the methods here turn them into log-densities, means and
/// samples. A closed set, so a checkpoint names the one it was trained with (`kind =
/// "bernoulli"` in a config file).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
#[non_exhaustive]
pub enum Likelihood {
    /// Independent Bernoulli pixels with logits ℓ: p(x) = Π σ(ℓ)^x (1 − σ(ℓ))^(1−x), for
    /// binary images (the binarised-MNIST protocol).
    #[default]
    Bernoulli,
    /// A mixture of discretised logistics over the 256 levels of 8-bit data, per pixel and
    /// channel (Salimans et al., "PixelCNN++", ICLR 2017, without its coupling of colour
    /// channels): the bins at 0 and 255 take the tails. A probability mass function, so
    /// −log p(x) is a code length (bits per dimension).
    Logistic {
        /// Mixture components K (each takes three outputs: a weight logit, a mean, a log-scale).
        components: i64,
    },
    /// The continuous Bernoulli (Loaiza-Ganem & Cunningham, "The continuous Bernoulli: fixing a
    /// pervasive error in variational autoencoders", NeurIPS 2019): the density on [0, 1]
    /// proportional to λ^x (1 − λ)^(1−x), with its normalising constant, which the BCE on
    /// intensities of the Keras and PyTorch examples lacks.
    ContinuousBernoulli,
}

/// log(2 atanh(1 − 2λ) / (1 − 2λ)), the continuous Bernoulli's log-normaliser, from logits ℓ
/// (λ = σ(ℓ), so 1 − 2λ = −tanh(ℓ/2) and 2 atanh(1 − 2λ) = −ℓ): log(ℓ / tanh(ℓ/2)), and
/// log 2 + ℓ²/12 (error O(ℓ⁴)) near ℓ = 0, where the ratio is 0/0.
fn continuous_bernoulli_log_norm(logits: &Tensor) -> Tensor {
    let near = logits.abs().lt(1e-2);
    let safe = logits.where_self(&near.logical_not(), &logits.ones_like());
    let exact = (&safe / (&safe * 0.5).tanh()).log();
    let taylor = logits.square() / 12.0 + std::f64::consts::LN_2;
    taylor.where_self(&near, &exact)
}

impl Likelihood {
    /// The discretised logistic mixture with the default number of components.
    pub fn logistic() -> Self {
        Self::Logistic {
            components: DEFAULT_LOGISTIC_COMPONENTS,
        }
    }

    /// Decoder output channels per image channel.
    pub fn params_per_channel(self) -> i64 {
        match self {
            Self::Bernoulli | Self::ContinuousBernoulli => 1,
            Self::Logistic { components } => 3 * components,
        }
    }

    /// Whether training data is binarised for it (the Bernoulli's binarised-data protocol);
    /// the others model the intensities themselves.
    pub fn binarised_data(self) -> bool {
        self == Self::Bernoulli
    }

    /// Whether it is a probability mass over the 256 levels of 8-bit data, so that −log p(x)
    /// in bits per dimension is a code length.
    pub fn is_8bit(self) -> bool {
        matches!(self, Self::Logistic { .. })
    }

    /// Checks its own settings.
    pub fn validate(self) -> Result<(), String> {
        match self {
            Self::Logistic { components } if !(1..=64).contains(&components) => Err(format!(
                "the logistic mixture needs 1 to 64 components, got {components}"
            )),
            _ => Ok(()),
        }
    }

    /// The logistic mixture's parameters of `params` (`[N, C·3K, H, W]`) as
    /// (weight logits, means in [−1, 1] scale, log-scales), each `[N, C, K, H, W]`.
    fn logistic_parts(params: &Tensor, k: i64) -> (Tensor, Tensor, Tensor) {
        let s = params.size();
        let p = params.view([s[0], -1, 3, k, s[2], s[3]]);
        let logits = p.select(2, 0);
        let means = p.select(2, 1);
        let log_scales = p.select(2, 2).clamp_min(-7.0);
        (logits, means, log_scales)
    }

    /// −log p(x | params) summed over pixels and channels: one value per example, `[N]`.
    ///
    /// Bernoulli: [`bernoulli_nll`](crate::loss::bernoulli_nll), the numerically stable binary
    /// cross-entropy with logits. Logistic: the mass of x's bin, [x − 1/255, x + 1/255] on the
    /// [−1, 1] scale, with the edge bins open to ±∞. Continuous Bernoulli: the BCE minus the
    /// log-normaliser.
    pub fn nll(self, params: &Tensor, x: &Tensor) -> Tensor {
        match self {
            Self::Bernoulli => crate::loss::bernoulli_nll(params, x),
            Self::ContinuousBernoulli => {
                crate::loss::bernoulli_nll(params, x)
                    - continuous_bernoulli_log_norm(params)
                        .flatten(1, -1)
                        .sum_dim_intlist(-1, false, Kind::Float)
            }
            Self::Logistic { components } => {
                let (logits, means, log_scales) = Self::logistic_parts(params, components);
                // x on the [−1, 1] scale, one copy per component: [N, C, 1, H, W].
                let x = (x * 2.0 - 1.0).unsqueeze(2);
                let centred = &x - &means;
                let inv_s = (-&log_scales).exp();
                let plus_in = &inv_s * (&centred + 1.0 / 255.0);
                let min_in = &inv_s * (&centred - 1.0 / 255.0);
                let log_cdf_plus = &plus_in - plus_in.softplus(); // log σ(plus_in), for x = 0
                let log_one_minus_cdf_min = -min_in.softplus(); // log(1 − σ(min_in)), for x = 1
                let cdf_delta = plus_in.sigmoid() - min_in.sigmoid();
                let mid_in = &inv_s * &centred;
                // Where the bin's mass underflows, its density times the bin width.
                let log_pdf_mid = &mid_in - &log_scales - mid_in.softplus() * 2.0 - (127.5f64).ln();
                let log_mass = cdf_delta
                    .clamp_min(1e-12)
                    .log()
                    .where_self(&cdf_delta.gt(1e-5), &log_pdf_mid);
                let log_probs = log_cdf_plus.where_self(
                    &x.lt(-0.999),
                    &log_one_minus_cdf_min.where_self(&x.gt(0.999), &log_mass),
                );
                let mixed = (log_probs + logits.log_softmax(2, Kind::Float))
                    .logsumexp([2].as_slice(), false);
                -mixed.flatten(1, -1).sum_dim_intlist(-1, false, Kind::Float)
            }
        }
    }

    /// log p(x | params) summed over pixels and channels, `[N]`.
    pub fn log_prob(self, params: &Tensor, x: &Tensor) -> Tensor {
        -self.nll(params, x)
    }

    /// E[x | params] in [0, 1], `[N, C, H, W]` (Bernoulli: the pixel probabilities σ(ℓ)).
    pub fn mean(self, params: &Tensor) -> Tensor {
        match self {
            Self::Bernoulli => params.sigmoid(),
            Self::ContinuousBernoulli => {
                // λ/(2λ − 1) + 1/(2 atanh(1 − 2λ)) = 1/(1 − e^−ℓ) − 1/ℓ, which is
                // ½ + ℓ/12 + O(ℓ³) near ℓ = 0.
                let near = params.abs().lt(1e-2);
                let safe = params.where_self(&near.logical_not(), &params.ones_like());
                let exact = (-(-&safe).expm1()).reciprocal() - safe.reciprocal();
                let taylor = params / 12.0 + 0.5;
                taylor.where_self(&near, &exact)
            }
            Self::Logistic { components } => {
                let (logits, means, _) = Self::logistic_parts(params, components);
                let weights = logits.softmax(2, Kind::Float);
                let m = (weights * means.clamp(-1.0, 1.0)).sum_dim_intlist(2, false, Kind::Float);
                ((m + 1.0) * 0.5).clamp(0.0, 1.0)
            }
        }
    }

    /// A draw x ~ p(x | params), `[N, C, H, W]` in [0, 1] (logistic: on the 256 levels).
    pub fn sample(self, params: &Tensor) -> Tensor {
        match self {
            Self::Bernoulli => self.mean(params).bernoulli(),
            Self::ContinuousBernoulli => {
                // Inverse CDF: x = log(1 + u(e^ℓ − 1)) / ℓ, and u itself at ℓ = 0.
                let u = params.rand_like().clamp(1e-6, 1.0 - 1e-6);
                let near = params.abs().lt(1e-4);
                let safe = params.where_self(&near.logical_not(), &params.ones_like());
                let exact = (&u * safe.expm1()).log1p() / &safe;
                u.where_self(&near, &exact).clamp(0.0, 1.0)
            }
            Self::Logistic { components } => {
                let (logits, means, log_scales) = Self::logistic_parts(params, components);
                // A component per pixel and channel by the Gumbel-max trick, then its logistic.
                let gumbel = -(-logits.rand_like().clamp(1e-5, 1.0 - 1e-5).log()).log();
                let pick = (logits + gumbel).argmax(2, true);
                let one_hot = means.zeros_like().scatter_value(2, &pick, 1.0);
                let mu = (&means * &one_hot).sum_dim_intlist(2, false, Kind::Float);
                let ls = (&log_scales * &one_hot).sum_dim_intlist(2, false, Kind::Float);
                let u = mu.rand_like().clamp(1e-5, 1.0 - 1e-5);
                let x = mu + ls.exp() * (u.log() - (-&u).log1p());
                // Back to [0, 1] on the 256 levels.
                (((x.clamp(-1.0, 1.0) + 1.0) * 127.5).round() / 255.0).clamp(0.0, 1.0)
            }
        }
    }

    /// Its name in configuration files and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Bernoulli => "bernoulli",
            Self::Logistic { .. } => "logistic",
            Self::ContinuousBernoulli => "continuous-bernoulli",
        }
    }
}

/// A likelihood by name, as on the command line: `bernoulli`, `continuous-bernoulli`,
/// `logistic` (with [`DEFAULT_LOGISTIC_COMPONENTS`] components) or `logistic:K`.
impl std::str::FromStr for Likelihood {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let logistic = |components| Ok(Self::Logistic { components });
        match s {
            "bernoulli" => Ok(Self::Bernoulli),
            "continuous-bernoulli" => Ok(Self::ContinuousBernoulli),
            "logistic" => logistic(DEFAULT_LOGISTIC_COMPONENTS),
            _ => match s.strip_prefix("logistic:").map(str::parse) {
                Some(Ok(k)) => logistic(k),
                _ => Err(
                    "expected bernoulli, continuous-bernoulli, logistic or logistic:K (K components)"
                        .into(),
                ),
            },
        }
    }
}

impl std::fmt::Display for Likelihood {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Logistic { components } => write!(f, "logistic ({components} components)"),
            other => f.write_str(other.name()),
        }
    }
}

#[cfg(test)]
mod tests {
    use tch::{Device, Kind, Tensor};

    use super::Likelihood;

    fn cpu() -> (Kind, Device) {
        (Kind::Float, Device::Cpu)
    }

    #[test]
    fn bernoulli_log_prob_is_the_direct_formula_and_mean_and_samples_follow_it() {
        let _g = crate::tests::lock();
        let l = Likelihood::Bernoulli;
        assert_eq!(l.params_per_channel(), 1);
        let logits = Tensor::from_slice(&[-3.0f32, 0.0, 2.0, 40.0]).view([1, 1, 2, 2]);
        let x = Tensor::from_slice(&[0.0f32, 1.0, 1.0, 0.0]).view([1, 1, 2, 2]);
        let p: Vec<f64> = [-3.0f64, 0.0, 2.0, 40.0]
            .into_iter()
            .map(|v| 1.0 / (1.0 + (-v).exp()))
            .collect();
        let direct = (1.0 - p[0]).ln() + p[1].ln() + p[2].ln() + (-40.0f64); // log(1 − σ(40)) ≈ −40
        let got = l.log_prob(&logits, &x).double_value(&[0]);
        assert!((got - direct).abs() < 1e-4, "{got} vs {direct}");
        assert_eq!(l.nll(&logits, &x).double_value(&[0]), -got);
        let mean: Vec<f32> = Vec::try_from(l.mean(&logits).view([-1])).unwrap();
        for (m, q) in mean.iter().zip(&p) {
            assert!((f64::from(*m) - q).abs() < 1e-6);
        }
        tch::manual_seed(3);
        let many = logits.expand([4000, 1, 2, 2], false);
        let draws = l.sample(&many);
        let ok = draws
            .eq(0.0)
            .logical_or(&draws.eq(1.0))
            .all()
            .int64_value(&[]);
        assert_eq!(ok, 1, "samples are binary");
        let freq = draws.mean_dim(0, false, Kind::Double).view([-1]);
        for (i, q) in p.iter().enumerate() {
            let f = freq.double_value(&[i as i64]);
            assert!((f - q).abs() < 5.0 * (q * (1.0 - q) / 4000.0).sqrt() + 1e-9);
        }
    }

    /// Varied logistic-mixture parameters for `pixels` pixels of 2 channels: `[1, 2·3K, 1, pixels]`.
    fn logistic_params(k: i64, pixels: i64) -> Tensor {
        let n = 2 * 3 * k * pixels;
        let t = Tensor::arange(n, cpu()).view([1, 2 * 3 * k, 1, pixels]);
        // Weight logits in ±2, means across [−1.4, 1.4] (some beyond the edges), log-scales
        // from −6 (a sharp bump) to 0.5 (wide).
        let wave = (&t * 0.37).sin();
        let parts = wave.view([1, 2, 3, k, 1, pixels]);
        let logits = parts.select(2, 0) * 2.0;
        let means = parts.select(2, 1) * 1.4;
        let log_scales = parts.select(2, 2) * 3.25 - 2.75;
        Tensor::stack(&[logits, means, log_scales], 2).view([1, 2 * 3 * k, 1, pixels])
    }

    #[test]
    fn the_logistic_mixture_sums_to_one_over_the_256_levels_with_finite_gradients() {
        let _g = crate::tests::lock();
        let k = 3;
        let l = Likelihood::Logistic { components: k };
        assert_eq!(l.params_per_channel(), 9);
        let pixels = 7;
        let params = logistic_params(k, pixels).set_requires_grad(true);
        // Every level of every pixel: 256 images, each one level everywhere.
        let levels = Tensor::arange(256, cpu()) / 255.0;
        let x = levels
            .view([256, 1, 1, 1])
            .expand([256, 2, 1, pixels], false);
        let p = params.expand([256, -1, -1, -1], false);
        // Per pixel and channel: sum over levels of exp(log p(level)).
        let per_element = {
            // log p of each element alone: the nll of a one-pixel, one-channel slice.
            let mut sums = Vec::new();
            for c in 0..2 {
                for j in 0..pixels {
                    let xs = x.narrow(1, c, 1).narrow(3, j, 1);
                    let ps = p.narrow(1, c * 3 * k, 3 * k).narrow(3, j, 1);
                    sums.push(l.log_prob(&ps, &xs).exp().sum(Kind::Double));
                }
            }
            Tensor::stack(&sums, 0)
        };
        let sums: Vec<f64> = Vec::try_from(&per_element).unwrap();
        for (i, s) in sums.iter().enumerate() {
            assert!((s - 1.0).abs() < 1e-4, "element {i}: the levels sum to {s}");
        }
        // Gradients at the edge levels (0 and 255) and in between are finite.
        let edges = Tensor::from_slice(&[0.0f32, 1.0, 128.0 / 255.0])
            .view([3, 1, 1, 1])
            .expand([3, 2, 1, pixels], false);
        let loss = l
            .nll(&params.expand([3, -1, -1, -1], false), &edges)
            .sum(Kind::Float);
        loss.backward();
        let g = params.grad();
        assert_eq!(g.isfinite().all().int64_value(&[]), 1, "finite gradients");
        assert!(g.abs().sum(Kind::Float).double_value(&[]) > 0.0);
    }

    #[test]
    fn logistic_samples_follow_the_mass_function() {
        let _g = crate::tests::lock();
        tch::manual_seed(9);
        let k = 2;
        let l = Likelihood::Logistic { components: k };
        // One pixel, one channel: components at −0.5 (weight e²/(1+e²)) and 0.6, wide enough
        // to spread over many levels.
        let one = Tensor::from_slice(&[2.0f32, 0.0, -0.5, 0.6, -2.0, -2.5]).view([1, 6, 1, 1]);
        let params = Tensor::cat(&[one.shallow_clone(), one], 1); // 2 channels alike
        let n = 40_000;
        let draws = l.sample(&params.expand([n, -1, -1, -1], false));
        let levels = (draws.narrow(1, 0, 1).view([-1]) * 255.0)
            .round()
            .to_kind(Kind::Int64);
        let counts = levels.bincount::<Tensor>(None, 256).to_kind(Kind::Double) / n as f64;
        let grid = (Tensor::arange(256, cpu()) / 255.0).view([256, 1, 1, 1]);
        let p = l
            .log_prob(
                &params.narrow(1, 0, 6).expand([256, -1, -1, -1], false),
                &grid,
            )
            .exp()
            .to_kind(Kind::Double);
        // Total variation between the histogram and the mass function.
        let tv = (&counts - &p).abs().sum(Kind::Double).double_value(&[]) / 2.0;
        assert!(tv < 0.03, "total variation {tv}");
        let mean = draws.mean(Kind::Double).double_value(&[]);
        let want = l.mean(&params).mean(Kind::Double).double_value(&[]);
        assert!((mean - want).abs() < 0.02, "sample mean {mean} vs {want}");
    }

    /// ∫₀¹ of samples `y` at `m` evenly spaced points (the trapezoid rule).
    fn integral(y: &Tensor) -> f64 {
        let m = y.size()[0];
        let ends = (y.double_value(&[0]) + y.double_value(&[m - 1])) / 2.0;
        (y.sum(Kind::Double).double_value(&[]) - ends) / (m - 1) as f64
    }

    #[test]
    fn the_continuous_bernoulli_integrates_to_one_and_samples_follow_it() {
        let _g = crate::tests::lock();
        let l = Likelihood::ContinuousBernoulli;
        // Logits across the range, including 0 and the series' neighbourhood.
        let logits = Tensor::from_slice(&[-6.0f32, -1.0, -0.005, 0.0, 0.004, 0.3, 3.0]);
        let m = 2001;
        let xs = Tensor::linspace(0.0, 1.0, m, cpu());
        for i in 0..logits.size()[0] {
            let ell = logits.get(i).view([1, 1, 1, 1]).expand([m, 1, 1, 1], false);
            let density = l
                .log_prob(&ell, &xs.view([m, 1, 1, 1]))
                .exp()
                .to_kind(Kind::Double);
            let total = integral(&density);
            assert!(
                (total - 1.0).abs() < 1e-3,
                "ℓ = {}: ∫ = {total}",
                logits.double_value(&[i])
            );
            // The mean of the density, by quadrature, is `mean`.
            let by_quadrature = integral(&(&density * xs.to_kind(Kind::Double)));
            let mean = l.mean(&ell.narrow(0, 0, 1)).double_value(&[0, 0, 0, 0]);
            assert!(
                (by_quadrature - mean).abs() < 1e-3,
                "mean {mean} vs {by_quadrature}"
            );
            // Samples: their mean too.
            tch::manual_seed(i);
            let draws = l.sample(&ell.narrow(0, 0, 1).expand([20_000, 1, 1, 1], false));
            let got = draws.mean(Kind::Double).double_value(&[]);
            assert!((got - mean).abs() < 0.01, "sample mean {got} vs {mean}");
        }
        // Finite gradients at the edges of [0, 1] and at ℓ = 0.
        let ell = Tensor::from_slice(&[0.0f32, 2.0, -2.0])
            .view([3, 1, 1, 1])
            .set_requires_grad(true);
        let x = Tensor::from_slice(&[0.0f32, 1.0, 0.5]).view([3, 1, 1, 1]);
        l.nll(&ell, &x).sum(Kind::Float).backward();
        assert_eq!(ell.grad().isfinite().all().int64_value(&[]), 1);
    }

    #[test]
    fn it_is_named_by_its_kind_in_config_files() {
        let text = toml::to_string(&Likelihood::Bernoulli).unwrap();
        assert_eq!(text.trim(), "kind = \"bernoulli\"");
        assert_eq!(
            toml::from_str::<Likelihood>("kind = \"logistic\"\ncomponents = 4").unwrap(),
            Likelihood::Logistic { components: 4 }
        );
        assert_eq!(
            toml::from_str::<Likelihood>("kind = \"continuous-bernoulli\"").unwrap(),
            Likelihood::ContinuousBernoulli
        );
        assert!(toml::from_str::<Likelihood>("kind = \"gauss\"").is_err());
        assert_eq!(Likelihood::Bernoulli.to_string(), "bernoulli");
        assert!(Likelihood::Logistic { components: 0 }.validate().is_err());
    }
}
