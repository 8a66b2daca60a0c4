use tch::{Device, Kind, Tensor, nn};

use crate::loss::{bernoulli_nll, gaussian_kl, log_mean_exp};
use crate::*;

/// libtorch's generator is global to the process, and building a model or drawing moves it:
/// every test takes this lock, so a parallel test cannot draw between another's seeding and
/// its draws.
static RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub(crate) fn lock() -> std::sync::MutexGuard<'static, ()> {
    RNG.lock().unwrap_or_else(|e| e.into_inner())
}

fn t(v: &[f32], shape: &[i64]) -> Tensor {
    Tensor::from_slice(v).view(shape)
}

fn scalar(x: &Tensor) -> f64 {
    x.double_value(&[])
}

#[test]
fn gaussian_kl_matches_closed_form() {
    let _g = lock();
    // KL = ½ Σ (μ² + σ² − 1 − log σ²)
    let mu = t(&[1.0, 0.0, 0.0, -2.0], &[2, 2]);
    let logvar = t(&[0.0, 2f32.ln(), 0.0, -1.0], &[2, 2]);
    let kl = gaussian_kl(&mu, &logvar);
    let want0 = 0.5 * ((1.0 + 1.0 - 1.0 - 0.0) + (0.0 + 2.0 - 1.0 - 2f64.ln()));
    let want1 = 0.5 * ((0.0 + 1.0 - 1.0) + (4.0 + (-1f64).exp() - 1.0 + 1.0));
    assert!((scalar(&kl.get(0)) - want0).abs() < 1e-6);
    assert!((scalar(&kl.get(1)) - want1).abs() < 1e-6);
    // Zero exactly at the prior.
    assert_eq!(
        scalar(
            &gaussian_kl(
                &Tensor::zeros([1, 5], (Kind::Float, Device::Cpu)),
                &Tensor::zeros([1, 5], (Kind::Float, Device::Cpu))
            )
            .get(0)
        ),
        0.0
    );
}

#[test]
fn bernoulli_nll_matches_direct_formula_and_is_stable() {
    let _g = lock();
    let logits = t(&[0.0, 2.0, -3.0, 0.5], &[1, 4]);
    let x = t(&[1.0, 0.0, 0.0, 0.3], &[1, 4]);
    let want: f64 = [(0.0f64, 1.0f64), (2.0, 0.0), (-3.0, 0.0), (0.5, 0.3)]
        .iter()
        .map(|&(l, x)| {
            let p = 1.0 / (1.0 + (-l).exp());
            -(x * p.ln() + (1.0 - x) * (1.0 - p).ln())
        })
        .sum();
    assert!((scalar(&bernoulli_nll(&logits, &x).get(0)) - want).abs() < 1e-5);
    // Huge logits do not overflow: a confident right answer costs ~0, a wrong one ~|logit|.
    let big = t(&[1000.0, -1000.0], &[1, 2]);
    let right = t(&[1.0, 0.0], &[1, 2]);
    let wrong = t(&[0.0, 1.0], &[1, 2]);
    assert!(scalar(&bernoulli_nll(&big, &right).get(0)).abs() < 1e-6);
    assert!((scalar(&bernoulli_nll(&big, &wrong).get(0)) - 2000.0).abs() < 1e-3);
}

#[test]
fn log_mean_exp_is_stable() {
    let _g = lock();
    let w = t(&[-1000.0, -1000.0, -1000.0 + 3f32.ln()], &[3, 1]);
    // log((e^-1000 (1 + 1 + 3)) / 3) = -1000 + ln(5/3)
    assert!((scalar(&log_mean_exp(&w).get(0)) - (-1000.0 + (5.0f64 / 3.0).ln())).abs() < 1e-3);
}

fn small_config() -> ConvVaeConfig {
    ConvVaeConfig {
        input_height: 8,
        input_width: 12,
        latent_dim: 3,
        channels: vec![4, 6],
        hidden_dim: Some(10),
        ..ConvVaeConfig::default()
    }
}

#[test]
fn variables_are_named_after_fields_and_shapes_match_the_reference() {
    let _g = lock();
    let vs = nn::VarStore::new(Device::Cpu);
    let _vae = ConvVae::new(&vs.root(), &ConvVaeConfig::default()).unwrap();
    let vars = vs.variables();
    let shape = |n: &str| {
        vars.get(n)
            .unwrap_or_else(|| panic!("missing {n}: {:?}", vars.keys()))
            .size()
    };
    assert_eq!(shape("encoder.conv1.weight"), [32, 1, 4, 4]);
    assert_eq!(shape("encoder.conv2.weight"), [64, 32, 4, 4]);
    assert_eq!(shape("encoder.head.weight"), [64, 3136]);
    assert_eq!(shape("decoder.fc.weight"), [3136, 32]);
    assert_eq!(shape("decoder.deconv1.weight"), [64, 32, 4, 4]);
    assert_eq!(shape("decoder.deconv2.weight"), [32, 1, 4, 4]);
    assert_eq!(vars.len(), 12);
    // PyTorch's default init bound for the head: 1/sqrt(3136).
    let w = &vars["encoder.head.weight"];
    assert!(scalar(&w.abs().max()) <= 1.0 / 3136f64.sqrt() + 1e-7);
}

#[test]
fn forward_shapes_and_configurable_architecture() {
    let _g = lock();
    let vs = nn::VarStore::new(Device::Cpu);
    let cfg = small_config();
    let vae = ConvVae::new(&vs.root(), &cfg).unwrap();
    let x = Tensor::rand([5, 1, 8, 12], (Kind::Float, Device::Cpu));
    let out = vae.forward(&x).unwrap();
    assert_eq!(out.params.size(), [5, 1, 8, 12]);
    assert_eq!(out.mu.size(), [5, 3]);
    let terms = vae.elbo(&x).unwrap();
    assert_eq!(terms.reconstruction.size(), [5]);
    assert!(scalar(&terms.kl.min()) >= 0.0);
    assert_eq!(vae.sample(7, 1.0).unwrap().size(), [7, 1, 8, 12]);
    let r = vae.reconstruct(&x).unwrap();
    assert!(scalar(&r.min()) >= 0.0 && scalar(&r.max()) <= 1.0);
    assert!(vs.variables().contains_key("decoder.hidden.weight"));
}

#[test]
fn wrong_shapes_are_errors_not_panics() {
    let _g = lock();
    let vs = nn::VarStore::new(Device::Cpu);
    let vae = ConvVae::new(&vs.root(), &ConvVaeConfig::default()).unwrap();
    let wrong = Tensor::zeros([2, 1, 32, 32], (Kind::Float, Device::Cpu));
    let err = vae.elbo(&wrong).unwrap_err().to_string();
    assert!(
        err.contains("[N, 1, 28, 28]") && err.contains("[2, 1, 32, 32]"),
        "{err}"
    );
    assert!(
        vae.encode(&Tensor::zeros([28, 28], (Kind::Float, Device::Cpu)))
            .is_err()
    );
    assert!(
        vae.decode(&Tensor::zeros([1, 5], (Kind::Float, Device::Cpu)))
            .is_err()
    );
    assert!(vae.sample(0, 1.0).is_err());
    let x = Tensor::zeros([1, 1, 28, 28], (Kind::Float, Device::Cpu));
    assert!(vae.log_likelihood_iw(&x, 0, 100).is_err());
}

#[test]
fn invalid_configs_are_rejected() {
    let _g = lock();
    for cfg in [
        ConvVaeConfig {
            latent_dim: 0,
            ..ConvVaeConfig::default()
        },
        ConvVaeConfig {
            channels: vec![],
            ..ConvVaeConfig::default()
        },
        ConvVaeConfig {
            input_height: 30,
            ..ConvVaeConfig::default()
        },
        ConvVaeConfig {
            hidden_dim: Some(0),
            ..ConvVaeConfig::default()
        },
    ] {
        let vs = nn::VarStore::new(Device::Cpu);
        assert!(
            matches!(
                ConvVae::new(&vs.root(), &cfg),
                Err(ModelError::InvalidConfig(_))
            ),
            "{cfg:?}"
        );
    }
    let toml_like: ConvVaeConfig = serde_json::from_str(r#"{"latent_dim": 2}"#).unwrap();
    assert_eq!(
        toml_like,
        ConvVaeConfig {
            latent_dim: 2,
            ..ConvVaeConfig::default()
        }
    );
    assert!(
        serde_json::from_str::<ConvVaeConfig>(r#"{"latnt_dim": 2}"#).is_err(),
        "typos are errors"
    );
}

#[test]
fn iw_bound_with_one_sample_is_the_elbo_in_expectation_and_rises_with_k() {
    let _g = lock();
    tch::manual_seed(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let vae = ConvVae::new(&vs.root(), &small_config()).unwrap();
    let x = Tensor::rand([4, 1, 8, 12], (Kind::Float, Device::Cpu)).round();
    tch::no_grad(|| {
        let reps = 4000;
        // Each call draws fresh samples: average many single-sample estimates.
        let xr = x.repeat([reps, 1, 1, 1]);
        let iw1 = scalar(
            &vae.log_likelihood_iw(&xr, 1, 100_000)
                .unwrap()
                .mean(Kind::Float),
        );
        let elbo = scalar(&vae.elbo(&xr).unwrap().elbo().mean(Kind::Float));
        let spread = scalar(&vae.log_likelihood_iw(&xr, 1, 100_000).unwrap().std(true));
        let se = spread / ((4 * reps) as f64).sqrt();
        assert!(
            (iw1 - elbo).abs() < 5.0 * se + 0.05,
            "IW(k=1) {iw1} vs ELBO {elbo} (se {se})"
        );
        let iw50 = scalar(
            &vae.log_likelihood_iw(&x.repeat([50, 1, 1, 1]), 50, 1000)
                .unwrap()
                .mean(Kind::Float),
        );
        assert!(
            iw50 > iw1 + 0.01,
            "IW(k=50) {iw50} should exceed IW(k=1) {iw1}"
        );
        // Chunking does not change the estimator: small chunks give the same law.
        let chunked = scalar(
            &vae.log_likelihood_iw(&x.repeat([50, 1, 1, 1]), 50, 7)
                .unwrap()
                .mean(Kind::Float),
        );
        assert!((chunked - iw50).abs() < 0.5, "{chunked} vs {iw50}");
    });
}

#[test]
fn tied_weights_share_the_encoder_tensors_and_halve_conv_parameters() {
    let _g = lock();
    let count = |tie| {
        let vs = nn::VarStore::new(Device::Cpu);
        let vae = ConvVae::new(
            &vs.root(),
            &ConvVaeConfig {
                tie_weights: tie,
                ..ConvVaeConfig::default()
            },
        )
        .unwrap();
        let conv_params: i64 = vs
            .variables()
            .iter()
            .filter(|(n, _)| n.contains("conv"))
            .map(|(_, t)| t.numel() as i64)
            .sum();
        (vs, vae, conv_params)
    };
    let (_, _, untied) = count(false);
    let (vs, vae, tied) = count(true);
    let weights = 32 * 16 + 64 * 32 * 16;
    assert_eq!(untied - tied, weights, "the two deconv weights are gone");
    assert!(!vs.variables().contains_key("decoder.deconv1.weight"));
    assert!(vs.variables().contains_key("decoder.deconv1.bias"));
    // Gradients from the decoder reach the shared encoder weight.
    let z = Tensor::randn([2, 32], (Kind::Float, Device::Cpu));
    vae.decode(&z).unwrap().sum(Kind::Float).backward();
    let g = vs.variables()["encoder.conv2.weight"].grad();
    assert!(g.defined() && g.abs().sum(Kind::Float).double_value(&[]) > 0.0);
}

#[test]
fn decoder_matches_plain_transposed_convolutions() {
    let _g = lock();
    // The CPU fast path for few-channel transposed convs computes the same function as
    // libtorch's default conv_transpose2d.
    let vs = nn::VarStore::new(Device::Cpu);
    let vae = ConvVae::new(&vs.root(), &ConvVaeConfig::default()).unwrap();
    let v = vs.variables();
    let z = Tensor::randn([16, 32], (Kind::Float, Device::Cpu));
    let ours = vae.decode(&z).unwrap();
    let h = z
        .linear(&v["decoder.fc.weight"], Some(&v["decoder.fc.bias"]))
        .relu()
        .view([-1, 64, 7, 7]);
    let h = h
        .conv_transpose2d(
            &v["decoder.deconv1.weight"],
            Some(&v["decoder.deconv1.bias"]),
            [2, 2],
            [1, 1],
            [0, 0],
            1,
            [1, 1],
        )
        .relu();
    let want = h.conv_transpose2d(
        &v["decoder.deconv2.weight"],
        Some(&v["decoder.deconv2.bias"]),
        [2, 2],
        [1, 1],
        [0, 0],
        1,
        [1, 1],
    );
    let diff = (ours - want).abs().max().double_value(&[]);
    assert!(diff < 1e-4, "max abs difference {diff}");
}

/// The plain (NCHW) conv of the encoder's layer `name` (`encoder.{name}.weight`, padding 1),
/// as the reference the model's layout choices are checked against.
fn encoder_conv(
    v: &std::collections::HashMap<String, Tensor>,
    h: &Tensor,
    name: &str,
    stride: i64,
) -> Tensor {
    h.conv2d(
        &v[&format!("encoder.{name}.weight")],
        Some(&v[&format!("encoder.{name}.bias")]),
        [stride, stride],
        [1, 1],
        [1, 1],
        1,
    )
}

#[test]
fn the_nhwc_encoder_matches_plain_nchw_convolutions() {
    let _g = lock();
    // On the CPU the encoder runs channels-last; its posterior must be the NCHW one.
    let vs = nn::VarStore::new(Device::Cpu);
    let mut vae = ConvVae::new(&vs.root(), &ConvVaeConfig::default()).unwrap();
    assert!(vae.nhwc_encoder, "the CPU default is the NHWC encoder");
    let v = vs.variables();
    let x = Tensor::rand([16, 1, 28, 28], (Kind::Float, Device::Cpu));
    let conv = |h: &Tensor, name: &str| encoder_conv(&v, h, name, 2).relu();
    let h = conv(&conv(&x, "conv1"), "conv2");
    assert!(h.is_contiguous(), "the reference runs NCHW");
    let want = h
        .flatten(1, -1)
        .linear(&v["encoder.head.weight"], Some(&v["encoder.head.bias"]));
    let q = vae.encode(&x).unwrap();
    let ours = Tensor::cat(&[&q.mu, &q.logvar], 1);
    let diff = (&ours - &want).abs().max().double_value(&[]);
    assert!(diff < 1e-4, "max abs difference {diff}");

    // Same gradients with either layout.
    let grads = |vae: &ConvVae| {
        let q = vae.encode(&x).unwrap();
        let loss = (q.mu.square().sum(Kind::Float) + q.logvar.sum(Kind::Float)).sum(Kind::Float);
        let w = &v["encoder.conv1.weight"];
        let w2 = &v["encoder.conv2.weight"];
        Tensor::run_backward(&[loss], &[w, w2], false, false)
    };
    let nhwc = grads(&vae);
    vae.nhwc_encoder = false;
    let nchw = grads(&vae);
    for (a, b) in nhwc.iter().zip(&nchw) {
        assert_eq!(a.size(), b.size());
        let rel = ((a - b).abs().max() / b.abs().max()).double_value(&[]);
        assert!(rel < 1e-4, "gradients differ by {rel} (relative)");
    }
}

#[test]
fn the_bf16_decoder_matches_transposed_convs_with_their_biases() {
    let _g = lock();
    // In bf16 on the CPU the transposed convs add their biases apart, NCHW or channels-last;
    // the decoder must still be fc, ReLU, deconv1 (with bias), ReLU, deconv2 (with bias), and
    // its gradients as close to the f32 ones as those through libtorch's own biased bf16
    // transposed conv.
    let vs = nn::VarStore::new(Device::Cpu);
    let cfg = ConvVaeConfig::default();
    let mut vae = ConvVae::new(&vs.root(), &cfg).unwrap();
    vae.set_compute_kind(Kind::BFloat16).unwrap();
    let v = vs.variables();
    let params = [
        &v["decoder.deconv1.bias"],
        &v["decoder.deconv2.bias"],
        &v["decoder.deconv1.weight"],
    ];
    let grads =
        |out: Tensor| Tensor::run_backward(&[out.square().sum(Kind::Float)], &params, false, false);
    tch::manual_seed(0);
    let z = Tensor::randn([8, cfg.latent_dim], (Kind::Float, Device::Cpu));
    // libtorch's own layers, computed in `kind`.
    let reference = |kind: Kind| {
        let w = |name: &str| v[name].to_kind(kind);
        let deconv = |h: &Tensor, name: &str| {
            h.conv_transpose2d(
                &w(&format!("decoder.{name}.weight")),
                Some(&w(&format!("decoder.{name}.bias"))),
                [2, 2],
                [1, 1],
                [0, 0],
                1,
                [1, 1],
            )
        };
        let h = z
            .to_kind(kind)
            .linear(&w("decoder.fc.weight"), Some(&w("decoder.fc.bias")))
            .relu()
            .view([-1, 64, 7, 7]);
        deconv(&deconv(&h, "deconv1").relu(), "deconv2").to_kind(Kind::Float)
    };
    let want = reference(Kind::BFloat16);
    let scale = want.abs().max().double_value(&[]);
    let exact = grads(reference(Kind::Float));
    // Relative errors against the f32 gradients, over whole tensors: bf16 rounds each element
    // by up to 2^-8, so single elements are too noisy to compare.
    let error = |gs: &[Tensor]| -> Vec<f64> {
        gs.iter()
            .zip(&exact)
            .map(|(a, b)| ((a - b).norm() / b.norm()).double_value(&[]))
            .collect()
    };
    let theirs = error(&grads(reference(Kind::BFloat16)));
    // Both layouts (channels-last is what a CPU with AMX runs), whatever this CPU has.
    for nhwc in [false, true] {
        vae.nhwc_bf16_decoder = nhwc;
        let ours = vae.decode(&z).unwrap();
        // A one-channel output has unit channel stride only when it was computed channels-last.
        assert_eq!(ours.stride()[1] == 1, nhwc, "strides {:?}", ours.stride());
        let diff = (&ours - &want).abs().max().double_value(&[]);
        assert!(
            diff <= 1e-2 * scale,
            "channels-last {nhwc}: max abs difference {diff} (scale {scale})"
        );
        let ours = error(&grads(ours));
        for (i, (o, t)) in ours.iter().zip(&theirs).enumerate() {
            assert!(
                *o <= 1.5 * t + 2e-3,
                "channels-last {nhwc}: gradient {i} is {o} from f32, libtorch's bf16 layers {t}"
            );
        }
    }
}

#[test]
fn the_encoder_with_residual_blocks_matches_a_plain_composition() {
    let _g = lock();
    // Each level: ReLU(conv) then ReLU(x + conv3x3(ReLU(conv3x3(x)))), plain NCHW ops; the
    // model applies each level's last ReLU later (after the flatten at the last level).
    let vs = nn::VarStore::new(Device::Cpu);
    let cfg = ConvVaeConfig {
        res_blocks: 1,
        ..ConvVaeConfig::default()
    };
    let vae = ConvVae::new(&vs.root(), &cfg).unwrap();
    let v = vs.variables();
    let conv = |h: &Tensor, name: &str, stride: i64| encoder_conv(&v, h, name, stride);
    let block = |x: &Tensor, name: &str| {
        let inner = conv(x, &format!("{name}.conv1"), 1).relu();
        (x + conv(&inner, &format!("{name}.conv2"), 1)).relu()
    };
    let x = Tensor::rand([8, 1, 28, 28], (Kind::Float, Device::Cpu));
    let h = block(&conv(&x, "conv1", 2).relu(), "block1.0");
    let h = block(&conv(&h, "conv2", 2).relu(), "block2.0");
    let want = h
        .flatten(1, -1)
        .linear(&v["encoder.head.weight"], Some(&v["encoder.head.bias"]));
    let q = vae.encode(&x).unwrap();
    let ours = Tensor::cat(&[&q.mu, &q.logvar], 1);
    let diff = (&ours - &want).abs().max().double_value(&[]);
    assert!(diff < 1e-4, "max abs difference {diff}");
}

#[test]
fn to_channels_last_keeps_values_sets_nhwc_strides_and_passes_gradients() {
    let _g = lock();
    for shape in [[2i64, 3, 4, 5], [32, 1, 4, 4]] {
        let t = Tensor::randn(shape, (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let cl = crate::blocks::to_channels_last(&t);
        let (c, h, w) = (shape[1], shape[2], shape[3]);
        assert_eq!(cl.stride(), vec![c * h * w, 1, w * c, c], "{shape:?}");
        assert_eq!((&cl - &t).abs().max().double_value(&[]), 0.0);
        // Already channels-last: no copy.
        assert_eq!(
            crate::blocks::to_channels_last(&cl).data_ptr(),
            cl.data_ptr()
        );
        let weight = Tensor::randn(shape, (Kind::Float, Device::Cpu));
        let g = Tensor::run_backward(&[(&cl * &weight).sum(Kind::Float)], &[&t], false, false);
        assert_eq!((&g[0] - &weight).abs().max().double_value(&[]), 0.0);
    }
}

#[test]
fn iwae_with_one_sample_is_the_elbo_on_that_sample_and_rises_with_k() {
    let _g = lock();
    tch::manual_seed(3);
    let vs = nn::VarStore::new(Device::Cpu);
    let vae = ConvVae::new(&vs.root(), &small_config()).unwrap();
    let x = Tensor::rand([6, 1, 8, 12], (Kind::Float, Device::Cpu)).round();
    let t = vae.iwae_terms(&x, 1).unwrap();
    // k = 1: log p(x|z) + log p(z) − log q(z|x) = −(reconstruction + sampled KL), same z.
    let diff = (&t.bound + &t.reconstruction + &t.kl)
        .abs()
        .max()
        .double_value(&[]);
    assert!(diff < 1e-4, "{diff}");
    // The same draw by hand.
    tch::manual_seed(9);
    let bound = vae.iwae_terms(&x, 1).unwrap().bound;
    tch::manual_seed(9);
    let q = vae.encode(&x).unwrap();
    let eps = Tensor::randn([1, 6, 3], (Kind::Float, Device::Cpu));
    let z = &q.mu + &eps * (&q.logvar * 0.5).exp();
    let logits = vae.decode(&z.view([6, 3])).unwrap();
    let by_hand = -crate::loss::bernoulli_nll(&logits, &x)
        + crate::loss::standard_normal_log_density(&z.view([6, 3]))
        - crate::loss::diagonal_normal_log_density(&eps.view([6, 3]), &q.logvar);
    assert!((bound - by_hand).abs().max().double_value(&[]) < 1e-4);
    // On average the bound rises with k.
    let xr = x.repeat([200, 1, 1, 1]);
    let mean = |k| {
        vae.iwae_terms(&xr, k)
            .unwrap()
            .bound
            .mean(Kind::Float)
            .double_value(&[])
    };
    assert!(mean(10) > mean(1) + 0.05);
    assert!(vae.iwae_terms(&x, 0).is_err());
}

#[test]
fn kl_balance_coefficients_follow_nvae() {
    let _g = lock();
    use crate::loss::kl_balance_coefficients;
    // Batch-mean KLs 10, 1, 40 nats over groups of 10, 50, 200 units: per unit (plus NVAE's
    // 0.01) 1.001, 0.0202, 0.20005; scaled to mean 1.
    let means = t(&[10.0, 1.0, 40.0], &[3]);
    let gamma = kl_balance_coefficients(&means, &[10, 50, 200]);
    let raw = [10.01 / 10.0, 1.01 / 50.0, 40.01 / 200.0];
    let mean = raw.iter().sum::<f64>() / 3.0;
    for (j, r) in raw.iter().enumerate() {
        let g = gamma.double_value(&[j as i64]);
        assert!(
            (g - r / mean).abs() < 1e-5,
            "group {j}: {g} vs {}",
            r / mean
        );
    }
    // The group with the least information per unit is pressed least.
    assert!(gamma.double_value(&[1]) < gamma.double_value(&[2]));
    assert!((gamma.mean(Kind::Float).double_value(&[]) - 1.0).abs() < 1e-6);
}

#[test]
fn free_bits_clamp_each_dimension_as_stated() {
    let _g = lock();
    use crate::loss::{free_bits_kl, gaussian_kl, gaussian_kl_dims};
    // Two examples, three dims; dimension KLs by hand: ½(μ² + σ² − 1 − log σ²).
    let mu = t(&[0.1, 2.0, 0.0, -0.1, 1.0, 0.0], &[2, 3]);
    let logvar = Tensor::zeros([2, 3], (Kind::Float, Device::Cpu));
    let dims = gaussian_kl_dims(&mu, &logvar);
    let per_dim_mean = [(0.01 + 0.01) / 4.0, (4.0 + 1.0) / 4.0, 0.0];
    for (j, want) in per_dim_mean.iter().enumerate() {
        assert!(
            (dims.get(0).get(j as i64).double_value(&[])
                + dims.get(1).get(j as i64).double_value(&[]))
                / 2.0
                - want
                < 1e-6
        );
    }
    let lambda = 0.5;
    let want: f64 = per_dim_mean.iter().map(|&k: &f64| k.max(lambda)).sum();
    assert!((free_bits_kl(&mu, &logvar, lambda).double_value(&[]) - want).abs() < 1e-6);
    // λ = 0 is the plain batch-mean KL.
    let plain = gaussian_kl(&mu, &logvar)
        .mean(Kind::Float)
        .double_value(&[]);
    assert!((free_bits_kl(&mu, &logvar, 0.0).double_value(&[]) - plain).abs() < 1e-6);
}

#[test]
fn mixture_log_density_matches_a_direct_computation() {
    let _g = lock();
    use crate::loss::{LN_2PI, mixture_log_density};
    let z = t(&[0.3, -1.0, 2.0, 0.5, 0.0, 0.0], &[3, 2]);
    let mu = t(&[0.0, 0.0, 1.0, -1.0], &[2, 2]);
    let logvar = t(&[0.0, 0.5, -1.0, 1.0], &[2, 2]);
    let got: Vec<f32> = Vec::try_from(&mixture_log_density(&z, &mu, &logvar)).unwrap();
    let (zv, mv, lv): (Vec<f32>, Vec<f32>, Vec<f32>) = (
        Vec::try_from(&z.flatten(0, -1)).unwrap(),
        Vec::try_from(&mu.flatten(0, -1)).unwrap(),
        Vec::try_from(&logvar.flatten(0, -1)).unwrap(),
    );
    for (m, g) in got.iter().enumerate() {
        // (1/K) Σ_k Π_d N(z_d; μ_kd, σ_kd²), by hand in f64.
        let mut p = 0.0f64;
        for k in 0..2 {
            let mut log_n = 0.0f64;
            for d in 0..2 {
                let (zz, mm, ll) = (
                    f64::from(zv[m * 2 + d]),
                    f64::from(mv[k * 2 + d]),
                    f64::from(lv[k * 2 + d]),
                );
                log_n += -0.5 * ((zz - mm).powi(2) / ll.exp() + ll + LN_2PI);
            }
            p += log_n.exp() / 2.0;
        }
        assert!(
            (f64::from(*g) - p.ln()).abs() < 1e-5,
            "row {m}: {g} vs {}",
            p.ln()
        );
    }
    // One component is a plain diagonal Gaussian.
    let one = mixture_log_density(&z, &mu.narrow(0, 0, 1), &logvar.narrow(0, 0, 1));
    let direct = crate::loss::normal_log_density(&z, &mu.narrow(0, 0, 1), &logvar.narrow(0, 0, 1));
    assert!((one - direct).abs().max().double_value(&[]) < 1e-5);
}

fn vamp_config() -> ConvVaeConfig {
    ConvVaeConfig {
        prior: Prior::Vamp { components: 5 },
        ..small_config()
    }
}

#[test]
fn vamp_prior_is_the_mixture_of_posteriors_at_its_pseudo_inputs() {
    let _g = lock();
    tch::manual_seed(4);
    let vs = nn::VarStore::new(Device::Cpu);
    let vae = ConvVae::new(&vs.root(), &vamp_config()).unwrap();
    assert_eq!(vs.variables()["prior.pseudo_inputs"].size(), [5, 1, 8, 12]);
    let u = vae.pseudo_inputs().unwrap();
    let q = vae.encode(&u).unwrap();
    let z = Tensor::randn([4, 7, 3], (Kind::Float, Device::Cpu));
    let got = vae.log_prior(&z);
    assert_eq!(got.size(), [4, 7]);
    // Direct: log (1/K) Σ_k N(z; μ_k, σ_k²) with a [.., K, D] broadcast.
    let direct = crate::loss::normal_log_density(&z.unsqueeze(2), &q.mu, &q.logvar)
        .logsumexp([-1].as_slice(), false)
        - 5f64.ln();
    assert!((got - direct).abs().max().double_value(&[]) < 1e-4);
    // Its KL is the one-sample estimate at the forward pass's z.
    let x = Tensor::rand([6, 1, 8, 12], (Kind::Float, Device::Cpu)).round();
    let out = vae.forward(&x).unwrap();
    let kl = vae.kl(&out);
    let want =
        crate::loss::normal_log_density(&out.z, &out.mu, &out.logvar) - vae.log_prior(&out.z);
    assert!((kl - want).abs().max().double_value(&[]) < 1e-5);
    // Gradients reach the pseudo-inputs through the prior.
    let g = Tensor::run_backward(
        &[vae.elbo(&x).unwrap().kl.sum(Kind::Float)],
        &[vs.variables()["prior.pseudo_inputs"].shallow_clone()],
        false,
        false,
    );
    assert!(g[0].abs().sum(Kind::Float).double_value(&[]) > 0.0);
    // Samples are images; IW estimates stay finite.
    assert_eq!(vae.sample(9, 1.0).unwrap().size(), [9, 1, 8, 12]);
    let ll = tch::no_grad(|| vae.log_likelihood_iw(&x, 20, 64)).unwrap();
    assert!(ll.isfinite().all().int64_value(&[]) == 1);
}

#[test]
fn the_standard_prior_log_density_and_kl_are_unchanged() {
    let _g = lock();
    tch::manual_seed(5);
    let vs = nn::VarStore::new(Device::Cpu);
    let vae = ConvVae::new(&vs.root(), &small_config()).unwrap();
    assert!(vae.pseudo_inputs().is_none());
    let z = Tensor::randn([2, 3], (Kind::Float, Device::Cpu));
    let direct = crate::loss::standard_normal_log_density(&z);
    assert!((vae.log_prior(&z) - direct).abs().max().double_value(&[]) < 1e-6);
    let x = Tensor::rand([4, 1, 8, 12], (Kind::Float, Device::Cpu)).round();
    let out = vae.forward(&x).unwrap();
    assert!(
        (vae.kl(&out) - gaussian_kl(&out.mu, &out.logvar))
            .abs()
            .max()
            .double_value(&[])
            < 1e-6
    );
}

#[test]
fn residual_blocks_add_named_layers_and_start_as_residuals() {
    let _g = lock();
    let vs = nn::VarStore::new(Device::Cpu);
    let cfg = ConvVaeConfig {
        res_blocks: 2,
        ..small_config()
    };
    let vae = ConvVae::new(&vs.root(), &cfg).unwrap();
    let vars = vs.variables();
    // Encoder blocks at each conv's width, decoder blocks before each transposed conv.
    assert_eq!(vars["encoder.block1.0.conv1.weight"].size(), [4, 4, 3, 3]);
    assert_eq!(vars["encoder.block2.1.conv2.weight"].size(), [6, 6, 3, 3]);
    assert_eq!(vars["decoder.block1.0.conv1.weight"].size(), [6, 6, 3, 3]);
    assert_eq!(vars["decoder.block2.1.conv2.bias"].size(), [4]);
    let plain = nn::VarStore::new(Device::Cpu);
    let _ = ConvVae::new(&plain.root(), &small_config()).unwrap();
    // 2 blocks × 2 convs × (weight + bias) × (2 encoder + 2 decoder levels).
    assert_eq!(vars.len(), plain.variables().len() + 32);
    let x = Tensor::rand([3, 1, 8, 12], (Kind::Float, Device::Cpu));
    let out = vae.forward(&x).unwrap();
    assert_eq!(out.params.size(), [3, 1, 8, 12]);
    // With a block's second conv zeroed, the block is ReLU(x + 0) = x for x ≥ 0.
    tch::no_grad(|| {
        for (name, mut v) in vs.variables() {
            if name.contains("block") && name.contains("conv2") {
                let _ = v.zero_();
            }
        }
    });
    let blocks_off = vae.encode(&x).unwrap().mu;
    let vs2 = nn::VarStore::new(Device::Cpu);
    let plain_model = ConvVae::new(&vs2.root(), &small_config()).unwrap();
    tch::no_grad(|| {
        let src = vs.variables();
        for (name, mut v) in vs2.variables() {
            v.copy_(&src[&name]);
        }
    });
    let want = plain_model.encode(&x).unwrap().mu;
    assert!((blocks_off - want).abs().max().double_value(&[]) < 1e-6);
}

#[test]
fn prior_and_blocks_validate() {
    let _g = lock();
    let bad = ConvVaeConfig {
        prior: Prior::Vamp { components: 0 },
        ..ConvVaeConfig::default()
    };
    assert!(
        bad.validate()
            .unwrap_err()
            .to_string()
            .contains("pseudo-inputs")
    );
    // The prior round-trips through TOML-like serde.
    let cfg = vamp_config();
    let json = serde_json::to_string(&cfg).unwrap();
    assert!(
        json.contains(r#""prior":{"kind":"vamp","components":5}"#),
        "{json}"
    );
    let back: ConvVaeConfig = serde_json::from_str(&json).unwrap();
    assert_eq!(back, cfg);
}

#[test]
fn bf16_compute_stays_close_to_f32_and_keeps_f32_weights_and_gradients() {
    let _g = lock();
    tch::manual_seed(6);
    let vs = nn::VarStore::new(Device::Cpu);
    let cfg = ConvVaeConfig {
        res_blocks: 1,
        ..small_config()
    };
    let mut vae = ConvVae::new(&vs.root(), &cfg).unwrap();
    let x = Tensor::rand([5, 1, 8, 12], (Kind::Float, Device::Cpu)).round();
    let z = Tensor::randn([5, 3], (Kind::Float, Device::Cpu));
    let (mu32, logits32) = (vae.encode(&x).unwrap().mu, vae.decode(&z).unwrap());
    vae.set_compute_kind(Kind::BFloat16).unwrap();
    assert_eq!(vae.compute_kind(), Kind::BFloat16);
    let (mu16, logits16) = (vae.encode(&x).unwrap().mu, vae.decode(&z).unwrap());
    // Outputs come back as f32, within bf16's ~3 significant digits of the f32 result.
    assert_eq!((mu16.kind(), logits16.kind()), (Kind::Float, Kind::Float));
    let rel = |a: &Tensor, b: &Tensor| {
        ((a - b).abs().max() / b.abs().max().clamp_min(1e-3)).double_value(&[])
    };
    assert!(rel(&mu16, &mu32) < 0.05, "{}", rel(&mu16, &mu32));
    assert!(
        rel(&logits16, &logits32) < 0.05,
        "{}",
        rel(&logits16, &logits32)
    );
    assert!(rel(&mu16, &mu32) > 0.0, "bf16 really is used");
    // Gradients reach the f32 weights as f32.
    let terms = vae.elbo(&x).unwrap();
    let loss = (&terms.reconstruction + &terms.kl).mean(Kind::Float);
    let params: Vec<Tensor> = vs.trainable_variables();
    let grads = Tensor::run_backward(&[loss], &params, false, false);
    for (p, g) in params.iter().zip(&grads) {
        assert_eq!((p.kind(), g.kind()), (Kind::Float, Kind::Float));
        assert!(g.isfinite().all().int64_value(&[]) == 1);
    }
    assert!(vae.set_compute_kind(Kind::Half).is_err());
}

#[test]
fn the_elbo_at_given_noise_is_the_elbo_with_that_noise() {
    let _g = lock();
    for cfg in [small_config(), vamp_config()] {
        tch::manual_seed(11);
        let vs = nn::VarStore::new(Device::Cpu);
        let vae = ConvVae::new(&vs.root(), &cfg).unwrap();
        let x = Tensor::rand([4, 1, 8, 12], (Kind::Float, Device::Cpu)).round();
        tch::manual_seed(5);
        let a = vae.elbo(&x).unwrap();
        tch::manual_seed(5);
        let eps = Tensor::randn([4, cfg.latent_dim], (Kind::Float, Device::Cpu));
        let b = vae.elbo_with_noise(&x, &eps).unwrap();
        assert_eq!(scalar(&(a.elbo() - b.elbo()).abs().max()), 0.0);
        assert!(vae.elbo_with_noise(&x, &eps.narrow(0, 0, 3)).is_err());
    }
}
