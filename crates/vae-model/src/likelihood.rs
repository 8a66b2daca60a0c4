//! Observation models p(x | z): what the decoder's outputs parameterise.

use serde::{Deserialize, Serialize};
use tch::Tensor;

/// The observation model p(x | z) over pixels, given the decoder's outputs.
///
/// The decoder gives [`params_per_channel`](Self::params_per_channel) output channels per
/// image channel, `[N, C·P, H, W]` for images `[N, C, H, W]`; the methods here turn them into
/// log-densities, means and samples. A closed set, so a checkpoint names the one it was
/// trained with (`kind = "bernoulli"` in a config file).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
#[non_exhaustive]
pub enum Likelihood {
    /// Independent Bernoulli pixels with logits ℓ: p(x) = Π σ(ℓ)^x (1 − σ(ℓ))^(1−x), for
    /// binary images (or intensities in [0, 1] read as probabilities).
    #[default]
    Bernoulli,
}

impl Likelihood {
    /// Decoder output channels per image channel.
    pub fn params_per_channel(self) -> i64 {
        match self {
            Self::Bernoulli => 1,
        }
    }

    /// −log p(x | params) summed over pixels: one value per example, `[N]`.
    ///
    /// Bernoulli: [`bernoulli_nll`](crate::loss::bernoulli_nll), the numerically stable binary
    /// cross-entropy with logits.
    pub fn nll(self, params: &Tensor, x: &Tensor) -> Tensor {
        match self {
            Self::Bernoulli => crate::loss::bernoulli_nll(params, x),
        }
    }

    /// log p(x | params) summed over pixels, `[N]`.
    pub fn log_prob(self, params: &Tensor, x: &Tensor) -> Tensor {
        -self.nll(params, x)
    }

    /// E[x | params], `[N, C, H, W]` (Bernoulli: the pixel probabilities σ(ℓ)).
    pub fn mean(self, params: &Tensor) -> Tensor {
        match self {
            Self::Bernoulli => params.sigmoid(),
        }
    }

    /// A draw x ~ p(x | params), `[N, C, H, W]`.
    pub fn sample(self, params: &Tensor) -> Tensor {
        match self {
            Self::Bernoulli => self.mean(params).bernoulli(),
        }
    }

    /// Its name in configuration files and messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Bernoulli => "bernoulli",
        }
    }
}

impl std::fmt::Display for Likelihood {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use tch::{Kind, Tensor};

    use super::Likelihood;

    #[test]
    fn bernoulli_log_prob_is_the_direct_formula_and_mean_and_samples_follow_it() {
        let l = Likelihood::Bernoulli;
        assert_eq!(l.params_per_channel(), 1);
        let logits = Tensor::from_slice(&[-3.0f32, 0.0, 2.0, 40.0]).view([1, 1, 2, 2]);
        let x = Tensor::from_slice(&[0.0f32, 1.0, 1.0, 0.0]).view([1, 1, 2, 2]);
        let p: Vec<f64> = vec![-3.0f64, 0.0, 2.0, 40.0]
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

    #[test]
    fn it_is_named_by_its_kind_in_config_files() {
        let text = toml::to_string(&Likelihood::Bernoulli).unwrap();
        assert_eq!(text.trim(), "kind = \"bernoulli\"");
        assert_eq!(
            toml::from_str::<Likelihood>("kind = \"bernoulli\"").unwrap(),
            Likelihood::Bernoulli
        );
        assert!(toml::from_str::<Likelihood>("kind = \"gauss\"").is_err());
        assert_eq!(Likelihood::Bernoulli.to_string(), "bernoulli");
    }
}
