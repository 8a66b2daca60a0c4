//! Maths on latent codes for exploring a trained model: paths between codes, traversals,
//! the prior's quantile grid, principal components and active units.

use tch::{Device, Kind, Tensor};

/// How [`interpolate`] moves between two codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// Straight line: (1 − t)·a + t·b.
    Linear,
    /// Great circle (slerp; Shoemake 1985, as White, "Sampling Generative Networks", 2016
    /// recommends for Gaussian latents): sin((1 − t)θ)/sin θ · a + sin(tθ)/sin θ · b, with θ
    /// the angle between a and b. Falls back to the line when a and b are (anti)parallel.
    Spherical,
}

/// `steps` points from `a` to `b` (1-D codes of one length), endpoints included: `[steps, d]`.
pub fn interpolate(a: &Tensor, b: &Tensor, steps: i64, path: Path) -> Tensor {
    let ts = Tensor::linspace(0.0, 1.0, steps, (Kind::Float, a.device())).unsqueeze(1);
    let linear = || -> Tensor { a.unsqueeze(0) * (1.0 - &ts) + b.unsqueeze(0) * &ts };
    if path == Path::Linear {
        return linear();
    }
    let cos = (a.dot(b) / (a.norm() * b.norm() + 1e-12)).clamp(-1.0, 1.0);
    let theta = cos.acos().double_value(&[]);
    if theta.abs() < 1e-4 || (std::f64::consts::PI - theta).abs() < 1e-4 {
        return linear();
    }
    let s = theta.sin();
    let one_minus: Tensor = 1.0 - &ts;
    let wa = (one_minus * theta).sin() / s;
    let wb = (&ts * theta).sin() / s;
    a.unsqueeze(0) * wa + b.unsqueeze(0) * wb
}

/// Traversals of `code` (`[1, d]` or `[d]`): for each of the first `dims` dimensions, `values`
/// (`[m]`) put in that dimension with the others kept. `[dims·m, d]`, dimension by dimension.
pub fn traversal(code: &Tensor, dims: i64, values: &Tensor) -> Tensor {
    let code = code.reshape([1, -1]);
    let m = values.size()[0];
    let rows: Vec<Tensor> = (0..dims.clamp(0, code.size()[1]))
        .map(|d| {
            let z = code.repeat([m, 1]);
            z.narrow(1, d, 1).copy_(&values.reshape([m, 1]));
            z
        })
        .collect();
    Tensor::cat(&rows, 0)
}

/// The standard normal's quantiles at `n` evenly spaced probabilities in [0.05, 0.95].
pub fn normal_quantiles(n: i64) -> Tensor {
    let p = Tensor::linspace(0.05, 0.95, n, (Kind::Float, Device::Cpu));
    (p * 2.0 - 1.0).erfinv() * std::f64::consts::SQRT_2
}

/// An `n`×`n` grid of 2-D codes at the standard normal's quantiles (Kingma & Welling's
/// manifold figure): rows from high to low z₂ (up is positive), columns from low to high z₁,
/// `[n², 2]` in row-major order.
pub fn quantile_grid(n: i64) -> Tensor {
    let q = normal_quantiles(n);
    let z1 = q.unsqueeze(0).expand([n, n], false);
    let z2 = q.flip([0]).unsqueeze(1).expand([n, n], false);
    Tensor::stack(&[z1, z2], 2).reshape([-1, 2])
}

/// The first `k` principal directions of the rows of `x` (`[N, d]`, k clamped to 1..=d), most
/// variance first: `(directions [k, d]` (unit rows), `standard deviations [k])`.
pub fn principal_directions(x: &Tensor, k: i64) -> (Tensor, Tensor) {
    let x = x.to_kind(Kind::Float);
    let centred = &x - x.mean_dim(0, true, Kind::Float);
    let cov = centred.transpose(0, 1).matmul(&centred) / (x.size()[0].max(2) - 1) as f64;
    let (values, vectors) = cov.linalg_eigh("L");
    // eigh sorts eigenvalues ascending: the last k columns span the most variance.
    let d = vectors.size()[1];
    let k = k.clamp(1, d);
    let directions = vectors.narrow(1, d - k, k).flip([1]).transpose(0, 1);
    let std = values.narrow(0, d - k, k).flip([0]).clamp_min(0.0).sqrt();
    (directions.contiguous(), std)
}

/// The projections of the rows of `x` (`[N, d]`, d ≥ 2) on their first two principal
/// components, `[N, 2]`.
pub fn pca2(x: &Tensor) -> Tensor {
    let (directions, _) = principal_directions(x, 2);
    let centred = x - x.mean_dim(0, true, Kind::Float);
    centred.matmul(&directions.transpose(0, 1))
}

/// Active units: latent dimensions whose posterior mean varies across inputs,
/// Cov_x(E_q\[z_i\]) > 0.01 (Burda et al., "Importance Weighted Autoencoders", ICLR 2016), from
/// the means `mu` (`[N, d]`).
pub fn active_units(mu: &Tensor) -> i64 {
    mu.var_dim(0, true, false)
        .gt(0.01)
        .sum(Kind::Int64)
        .int64_value(&[])
}

#[cfg(test)]
mod tests {
    use tch::{Device, Kind, Tensor};

    use super::*;

    fn close(a: &Tensor, b: &Tensor) -> f64 {
        (a - b).abs().max().double_value(&[])
    }

    #[test]
    fn linear_and_spherical_paths_join_the_endpoints() {
        let a = Tensor::from_slice(&[1.0f32, 0.0]);
        let b = Tensor::from_slice(&[0.0f32, 2.0]);
        let line = interpolate(&a, &b, 5, Path::Linear);
        assert_eq!(line.size(), [5, 2]);
        assert!(close(&line.get(0), &a) < 1e-6 && close(&line.get(4), &b) < 1e-6);
        assert!(close(&line.get(2), &Tensor::from_slice(&[0.5f32, 1.0])) < 1e-6);
        let arc = interpolate(&a, &b, 5, Path::Spherical);
        assert!(close(&arc.get(0), &a) < 1e-6 && close(&arc.get(4), &b) < 1e-5);
        // Halfway along a 90° arc both weights are sin(45°)/sin(90°).
        let w = std::f64::consts::FRAC_1_SQRT_2;
        let mid = Tensor::from_slice(&[w as f32, 2.0 * w as f32]);
        assert!(close(&arc.get(2), &mid) < 1e-5);
        // Parallel codes: the line.
        let twice = &a * 2.0;
        assert!(
            close(
                &interpolate(&a, &twice, 3, Path::Spherical),
                &interpolate(&a, &twice, 3, Path::Linear)
            ) < 1e-6
        );
    }

    #[test]
    fn traversals_vary_one_dimension_at_a_time() {
        let code = Tensor::from_slice(&[1.0f32, 2.0, 3.0]).view([1, 3]);
        let values = Tensor::from_slice(&[-1.0f32, 0.0, 1.0]);
        let t = traversal(&code, 2, &values);
        assert_eq!(t.size(), [6, 3]);
        let rows: Vec<f32> = Vec::try_from(t.view([-1])).unwrap();
        assert_eq!(
            rows,
            [
                -1.0, 2.0, 3.0, 0.0, 2.0, 3.0, 1.0, 2.0, 3.0, // dimension 0
                1.0, -1.0, 3.0, 1.0, 0.0, 3.0, 1.0, 1.0, 3.0, // dimension 1
            ]
        );
        assert_eq!(
            traversal(&code, 9, &values).size(),
            [9, 3],
            "dims clamp to d"
        );
    }

    #[test]
    fn quantiles_are_symmetric_and_the_grid_runs_up_and_right() {
        let q: Vec<f32> = Vec::try_from(normal_quantiles(3)).unwrap();
        assert!(
            (q[0] + 1.644_853_6).abs() < 1e-4
                && q[1].abs() < 1e-6
                && (q[2] - 1.644_853_6).abs() < 1e-4
        );
        let g = quantile_grid(3);
        assert_eq!(g.size(), [9, 2]);
        // First row: top (z2 high), left to right in z1.
        assert!(g.double_value(&[0, 1]) > 1.6 && g.double_value(&[0, 0]) < -1.6);
        assert!(g.double_value(&[2, 0]) > 1.6 && g.double_value(&[8, 1]) < -1.6);
    }

    #[test]
    fn pca_finds_the_direction_of_most_variance_and_active_units_count_varying_means() {
        let _g = crate::tests::lock();
        tch::manual_seed(0);
        // Variance 100 along (1, 1, 0)/√2, 1 along (1, −1, 0)/√2, none along z.
        let n = 2000;
        let big = Tensor::randn([n, 1], (Kind::Float, Device::Cpu)) * 10.0;
        let small = Tensor::randn([n, 1], (Kind::Float, Device::Cpu));
        let s = std::f64::consts::FRAC_1_SQRT_2;
        let x = Tensor::cat(
            &[(&big + &small) * s, (&big - &small) * s, big.zeros_like()],
            1,
        );
        let p = pca2(&x);
        assert_eq!(p.size(), [n, 2]);
        let var: Vec<f64> = Vec::try_from(p.var_dim(0, true, false).to_kind(Kind::Double)).unwrap();
        assert!(
            (var[0] - 100.0).abs() < 10.0 && (var[1] - 1.0).abs() < 0.2,
            "{var:?}"
        );
        let (dirs, std) = principal_directions(&x, 3);
        assert_eq!(dirs.size(), [3, 3]);
        let std: Vec<f64> = Vec::try_from(std.to_kind(Kind::Double)).unwrap();
        assert!(
            (std[0] - 10.0).abs() < 0.5 && (std[1] - 1.0).abs() < 0.1 && std[2] < 1e-2,
            "{std:?}"
        );
        // The first direction is ±(1, 1, 0)/√2.
        let first = dirs.get(0).abs() - Tensor::from_slice(&[s as f32, s as f32, 0.0]);
        assert!(first.abs().max().double_value(&[]) < 0.02);
        assert_eq!(active_units(&x), 2);
        // Variances 1, 0.04 and 0.0025: the last is under the 0.01 threshold.
        let scales = Tensor::from_slice(&[1.0f32, 0.2, 0.05]);
        let mu = Tensor::randn([n, 3], (Kind::Float, Device::Cpu)) * scales;
        assert_eq!(active_units(&mu), 2);
    }
}
