//! The terms of the evidence lower bound (Kingma & Welling, "Auto-Encoding Variational Bayes",
//! ICLR 2014) and of the importance-weighted bound (Burda, Grosse & Salakhutdinov,
//! "Importance Weighted Autoencoders", ICLR 2016).

use tch::{Kind, Reduction, Tensor};

/// ln(2π).
pub const LN_2PI: f64 = 1.837_877_066_409_345_5;

/// −log p(x | z) for a Bernoulli decoder, summed over pixels: one value per example.
///
/// With logits ℓ and targets x ∈ [0, 1]: Σ_pixels max(ℓ, 0) − ℓ·x + log(1 + e^−|ℓ|), libtorch's
/// numerically stable binary cross-entropy with logits. `logits` and `x` are `[N, ...]`.
pub fn bernoulli_nll(logits: &Tensor, x: &Tensor) -> Tensor {
    logits
        .binary_cross_entropy_with_logits::<Tensor>(x, None, None, Reduction::None)
        .flatten(1, -1)
        .sum_dim_intlist(-1, false, Kind::Float)
}

/// KL(N(μ, diag σ²) ‖ N(0, I)) in closed form, per example:
/// ½ Σ_j (μ_j² + σ_j² − 1 − log σ_j²). `mu` and `logvar` are `[N, latent]`.
pub fn gaussian_kl(mu: &Tensor, logvar: &Tensor) -> Tensor {
    (mu.square() + logvar.exp() - 1.0 - logvar).sum_dim_intlist(-1, false, Kind::Float) * 0.5
}

/// KL(N(μ, σ²) ‖ N(0, 1)) of each latent dimension, `[N, latent]`.
pub fn gaussian_kl_dims(mu: &Tensor, logvar: &Tensor) -> Tensor {
    (mu.square() + logvar.exp() - 1.0 - logvar) * 0.5
}

/// KL(N(μ_q, σ_q²) ‖ N(μ_p, σ_p²)) of each dimension, elementwise:
/// ½ (log σ_p² − log σ_q² + (σ_q² + (μ_q − μ_p)²)/σ_p² − 1). The KL of a hierarchical VAE's
/// group, whose prior is a Gaussian computed from the groups above.
pub fn gaussian_kl_between(
    mu_q: &Tensor,
    logvar_q: &Tensor,
    mu_p: &Tensor,
    logvar_p: &Tensor,
) -> Tensor {
    ((logvar_q.exp() + (mu_q - mu_p).square()) * (-logvar_p).exp() + logvar_p - logvar_q - 1.0)
        * 0.5
}

/// The free-bits KL term (Kingma et al., "Improved Variational Inference with Inverse
/// Autoregressive Flow", NeurIPS 2016): Σ_j max(λ, E_batch\[KL_j\]), where KL_j is the KL of
/// latent dimension j. Dimensions already below λ nats get no gradient towards the prior, so
/// they are not pushed to collapse. λ = 0 gives the batch-mean KL.
pub fn free_bits_kl(mu: &Tensor, logvar: &Tensor, lambda: f64) -> Tensor {
    free_bits(&gaussian_kl_dims(mu, logvar), lambda)
}

/// The free-bits KL term from per-dimension KLs `kl_dims` (`[N, latent]`, as
/// [`ElboTerms::kl_dims`](crate::ElboTerms::kl_dims)): Σ_j max(λ, E_batch\[KL_j\]).
pub fn free_bits(kl_dims: &Tensor, lambda: f64) -> Tensor {
    kl_dims
        .mean_dim(0, false, Kind::Float)
        .clamp_min(lambda)
        .sum(Kind::Float)
}

/// NVAE's KL balancing coefficients (Vahdat & Kautz, "NVAE: A Deep Hierarchical
/// Variational Autoencoder", NeurIPS 2020, App. A): γ_l ∝ (E_batch|KL_l| + 0.01) / α_l,
/// scaled to mean 1, from each group's batch-mean KL `means` (`[G]`) and its latent units
/// `sizes` (α_l). Weighting each group's KL by γ_l during the KL warm-up lowers the pressure
/// on the groups that carry little information per unit, so that none is switched off early.
/// (NVAE's default α_l further divides by the groups at the group's scale; with one group per
/// scale the two agree.)
pub fn kl_balance_coefficients(means: &Tensor, sizes: &[i64]) -> Tensor {
    let alpha = Tensor::from_slice(sizes)
        .to_kind(Kind::Float)
        .to_device(means.device());
    let gamma = (means.abs() + 0.01) / alpha;
    &gamma / gamma.mean(Kind::Float)
}

/// log N(z; 0, I) summed over the last dimension.
pub fn standard_normal_log_density(z: &Tensor) -> Tensor {
    (z.square() + LN_2PI).sum_dim_intlist(-1, false, Kind::Float) * -0.5
}

/// log N(μ + σ·ε; μ, diag σ²) summed over the last dimension, from the standardised noise ε:
/// −½ Σ (ε² + log σ² + ln 2π).
pub fn diagonal_normal_log_density(eps: &Tensor, logvar: &Tensor) -> Tensor {
    (eps.square() + logvar + LN_2PI).sum_dim_intlist(-1, false, Kind::Float) * -0.5
}

/// log N(z; μ, diag σ²) summed over the last dimension: −½ Σ ((z − μ)²/σ² + log σ² + ln 2π).
/// Broadcasts like the tensor ops it is made of.
pub fn normal_log_density(z: &Tensor, mu: &Tensor, logvar: &Tensor) -> Tensor {
    ((z - mu).square() * (-logvar).exp() + logvar + LN_2PI).sum_dim_intlist(-1, false, Kind::Float)
        * -0.5
}

/// log (1/K Σ_k N(z; μ_k, diag σ_k²)) for every row of `z` (`[M, D]`) under the mixture of K
/// diagonal Gaussians with `mu`, `logvar` (`[K, D]`): `[M]`. The VampPrior's log-density.
///
/// Expands the squares, Σ_d (z_d − μ_kd)²/σ_kd² = z²·(1/σ_k²) − 2 z·(μ_k/σ_k²) + Σ μ_k²/σ_k²,
/// so the `[M, K]` component log-densities come from two matrix products and no `[M, K, D]`
/// tensor is built.
pub fn mixture_log_density(z: &Tensor, mu: &Tensor, logvar: &Tensor) -> Tensor {
    let k = mu.size()[0];
    let d = mu.size()[1];
    let precision = (-logvar).exp(); // [K, D]
    let quad = z.square().matmul(&precision.tr()) - z.matmul(&(mu * &precision).tr()) * 2.0
        + (mu.square() * &precision + logvar).sum_dim_intlist(-1, false, Kind::Float); // [M, K]
    let log_components = (quad + d as f64 * LN_2PI) * -0.5;
    log_components.logsumexp([-1].as_slice(), false) - (k as f64).ln()
}

/// log (1/k Σ_i exp(w_i)) over dimension 0 of `log_weights` (`[k, N]`), stably: the
/// importance-weighted bound from k samples' log weights log p(x, z_i) − log q(z_i | x).
pub fn log_mean_exp(log_weights: &Tensor) -> Tensor {
    let k = log_weights.size()[0];
    log_weights.logsumexp([0].as_slice(), false) - (k as f64).ln()
}
