//! What users do with a trained model: sample, reconstruct, interpolate, manifold, latents,
//! curves and export.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use tch::{Device, Kind, Tensor};
use vae_data::{MnistDataset, Split};
use vae_model::ConvVae;
use vae_train::{Checkpoint, EpochMetrics, files, images_tensor, parse_device};

use crate::grid::save_grid;
use crate::plot::{PALETTE, Panel, Series, line_chart, scatter};

/// Where a model comes from: a run directory (and which of its checkpoints) or a file.
#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// Run directory made by `vae train`, or a checkpoint file.
    #[arg(long)]
    pub run: PathBuf,
    /// Which checkpoint of a run directory: best or last.
    #[arg(long, default_value = "best")]
    pub checkpoint: String,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
}

impl ModelArgs {
    /// The checkpoint file meant.
    pub fn path(&self) -> Result<PathBuf> {
        let path = if self.run.is_dir() {
            match self.checkpoint.as_str() {
                "best" => self.run.join(files::BEST),
                "last" => self.run.join(files::LAST),
                other => bail!("--checkpoint must be best or last, got {other:?}"),
            }
        } else {
            self.run.clone()
        };
        if !path.is_file() {
            bail!(
                "{} not found: is {} a run directory made by `vae train`?",
                path.display(),
                self.run.display()
            );
        }
        Ok(path)
    }

    /// Loads the model.
    pub fn load(&self) -> Result<(ConvVae, tch::nn::VarStore, Checkpoint)> {
        let device = parse_device(&self.device)?;
        Ok(Checkpoint::load(self.path()?)?.into_model(device)?)
    }

    /// Where outputs go by default: the run directory, or the checkpoint's folder.
    pub fn out_dir(&self) -> PathBuf {
        if self.run.is_dir() {
            self.run.clone()
        } else {
            self.run.parent().map(Path::to_path_buf).unwrap_or_default()
        }
    }
}

/// Loads a split and checks its images have the model's size.
pub fn load_split(data: &Path, split: Split, model: &ConvVae) -> Result<MnistDataset> {
    let ds = MnistDataset::load(data, split).context("cannot load the data")?;
    let c = model.config();
    if ds.image_size() != (c.input_height as usize, c.input_width as usize) {
        bail!(
            "the images in {} are {}x{}, but the model was trained on {}x{}",
            data.display(),
            ds.image_size().0,
            ds.image_size().1,
            c.input_height,
            c.input_width
        );
    }
    Ok(ds)
}

fn as_images(t: &Tensor, model: &ConvVae) -> Tensor {
    let c = model.config();
    t.view([-1, c.input_channels, c.input_height, c.input_width])
}

/// `vae sample`.
#[derive(clap::Args, Debug)]
pub struct SampleArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Number of samples (a square-ish grid, 8 per row).
    #[arg(short = 'n', long, default_value_t = 64)]
    pub n: i64,
    /// Seed of the latents and pixels.
    #[arg(long, default_value_t = 0)]
    pub seed: i64,
    /// Scale of the prior's standard deviation (below 1: more typical samples).
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f64,
    /// Show Bernoulli means (pixel probabilities) instead of binary samples.
    #[arg(long)]
    pub mean: bool,
    /// Output PNG [default: <run>/sample.png].
    #[arg(long)]
    pub out: Option<PathBuf>,
}

pub fn sample(a: SampleArgs) -> Result<u8> {
    if a.n < 1 {
        bail!("-n must be at least 1, got {}", a.n);
    }
    if !(a.temperature.is_finite() && a.temperature > 0.0) {
        bail!(
            "--temperature must be a positive number, got {}",
            a.temperature
        );
    }
    let (model, _vs, _) = a.model.load()?;
    tch::manual_seed(a.seed);
    let means = tch::no_grad(|| model.sample(a.n, a.temperature))?;
    let images = if a.mean { means } else { means.bernoulli() };
    let out = a
        .out
        .unwrap_or_else(|| a.model.out_dir().join("sample.png"));
    let (w, h) = save_grid(&out, &images, 8)?;
    println!("wrote {} ({w}x{h}, {} samples)", out.display(), a.n);
    Ok(0)
}

/// `vae reconstruct`.
#[derive(clap::Args, Debug)]
pub struct ReconstructArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Number of test images.
    #[arg(short = 'n', long, default_value_t = 32)]
    pub n: i64,
    /// Folder holding the MNIST-format test files.
    #[arg(long, default_value = "data/mnist")]
    pub data: PathBuf,
    /// Output PNG [default: <run>/reconstruct.png].
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Rows of 8 originals, each above its reconstructions; returns the PNG size.
pub fn reconstruction_grid(
    model: &ConvVae,
    test_x: &Tensor,
    n: i64,
    out: &Path,
) -> Result<(u32, u32)> {
    let n = n.min(test_x.size()[0]);
    let originals = test_x
        .narrow(0, 0, n)
        .to_device(model.device())
        .to_kind(Kind::Float)
        / 255.0;
    let recon = tch::no_grad(|| model.reconstruct(&originals))?;
    let mut rows = Vec::new();
    for start in (0..n).step_by(8) {
        let len = 8.min(n - start);
        rows.push(originals.narrow(0, start, len));
        rows.push(recon.narrow(0, start, len));
    }
    save_grid(out, &as_images(&Tensor::cat(&rows, 0), model), 8)
}

pub fn reconstruct(a: ReconstructArgs) -> Result<u8> {
    if a.n < 1 {
        bail!("-n must be at least 1, got {}", a.n);
    }
    let (model, _vs, _) = a.model.load()?;
    let test = load_split(&a.data, Split::Test, &model)?;
    let out = a
        .out
        .unwrap_or_else(|| a.model.out_dir().join("reconstruct.png"));
    let (w, h) = reconstruction_grid(&model, &images_tensor(&test, Device::Cpu), a.n, &out)?;
    println!(
        "wrote {} ({w}x{h}: test images above their reconstructions)",
        out.display()
    );
    Ok(0)
}

/// `vae interpolate`.
#[derive(clap::Args, Debug)]
pub struct InterpolateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Index of the first test image.
    #[arg(long)]
    pub from: usize,
    /// Index of the second test image.
    #[arg(long)]
    pub to: usize,
    /// Decoded points along the path (endpoints included).
    #[arg(long, default_value_t = 10)]
    pub steps: i64,
    /// Spherical instead of linear interpolation.
    #[arg(long)]
    pub slerp: bool,
    /// Folder holding the MNIST-format test files.
    #[arg(long, default_value = "data/mnist")]
    pub data: PathBuf,
    /// Output PNG [default: <run>/interpolate-<from>-<to>.png].
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Points from `a` to `b` (1-D latents), linear or spherical: `[steps, d]`.
pub fn interpolation(a: &Tensor, b: &Tensor, steps: i64, slerp: bool) -> Tensor {
    let ts = Tensor::linspace(0.0, 1.0, steps, (Kind::Float, a.device())).unsqueeze(1);
    let linear = || -> Tensor { a.unsqueeze(0) * (1.0 - &ts) + b.unsqueeze(0) * &ts };
    if !slerp {
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

pub fn interpolate(a: InterpolateArgs) -> Result<u8> {
    if a.steps < 2 {
        bail!("--steps must be at least 2, got {}", a.steps);
    }
    let (model, _vs, _) = a.model.load()?;
    let test = load_split(&a.data, Split::Test, &model)?;
    for i in [a.from, a.to] {
        if i >= test.len() {
            bail!(
                "image index {i} is out of range: the test set has {} images (0 to {})",
                test.len(),
                test.len() - 1
            );
        }
    }
    let x = images_tensor(&test, model.device());
    let pick = |i: usize| x.narrow(0, i as i64, 1).to_kind(Kind::Float) / 255.0;
    let (xa, xb) = (pick(a.from), pick(a.to));
    let path = tch::no_grad(|| -> Result<Tensor> {
        let (ma, mb) = (
            model.encode(&xa)?.mu.squeeze_dim(0),
            model.encode(&xb)?.mu.squeeze_dim(0),
        );
        let z = interpolation(&ma, &mb, a.steps, a.slerp);
        Ok(model.decode(&z)?.sigmoid())
    })?;
    let row = Tensor::cat(&[xa, as_images(&path, &model), xb], 0);
    let out = a.out.unwrap_or_else(|| {
        a.model
            .out_dir()
            .join(format!("interpolate-{}-{}.png", a.from, a.to))
    });
    let (w, h) = save_grid(&out, &row, (a.steps + 2) as usize)?;
    println!(
        "wrote {} ({w}x{h}: image {}, {} {} steps, image {})",
        out.display(),
        a.from,
        a.steps,
        if a.slerp { "spherical" } else { "linear" },
        a.to
    );
    Ok(0)
}

/// `vae manifold`.
#[derive(clap::Args, Debug)]
pub struct ManifoldArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Points per axis (2-D latents) or per traversal row.
    #[arg(long, default_value_t = 20)]
    pub grid: i64,
    /// For larger latents: the test image whose latent mean is traversed.
    #[arg(long, default_value_t = 0)]
    pub image: usize,
    /// For larger latents: how many of the first dimensions to traverse.
    #[arg(long, default_value_t = 10)]
    pub dims: i64,
    /// For larger latents: traverse each dimension over [-span, span].
    #[arg(long, default_value_t = 3.0)]
    pub span: f64,
    /// Folder holding the MNIST-format test files (for traversals).
    #[arg(long, default_value = "data/mnist")]
    pub data: PathBuf,
    /// Output PNG [default: <run>/manifold.png].
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// The standard normal's quantiles at `n` evenly spaced probabilities in [0.05, 0.95].
pub fn normal_quantiles(n: i64) -> Tensor {
    let p = Tensor::linspace(0.05, 0.95, n, (Kind::Float, Device::Cpu));
    (p * 2.0 - 1.0).erfinv() * std::f64::consts::SQRT_2
}

pub fn manifold(a: ManifoldArgs) -> Result<u8> {
    if a.grid < 2 {
        bail!("--grid must be at least 2, got {}", a.grid);
    }
    let (model, _vs, _) = a.model.load()?;
    let latent = model.config().latent_dim;
    let dev = model.device();
    let (z, cols, what) = if latent == 2 {
        let q = normal_quantiles(a.grid).to_device(dev);
        // Rows from high to low z2 (up is positive), columns from low to high z1.
        let z1 = q.unsqueeze(0).expand([a.grid, a.grid], false);
        let z2 = q.flip([0]).unsqueeze(1).expand([a.grid, a.grid], false);
        (
            Tensor::stack(&[z1, z2], 2).reshape([-1, 2]),
            a.grid,
            "the prior's quantiles (Kingma & Welling's figure)".to_string(),
        )
    } else {
        let test = load_split(&a.data, Split::Test, &model)?;
        if a.image >= test.len() {
            bail!(
                "--image {} is out of range: the test set has {} images",
                a.image,
                test.len()
            );
        }
        let dims = a.dims.clamp(1, latent);
        let x = images_tensor(&test, dev)
            .narrow(0, a.image as i64, 1)
            .to_kind(Kind::Float)
            / 255.0;
        let mu = tch::no_grad(|| model.encode(&x))?.mu;
        let values = Tensor::linspace(-a.span, a.span, a.grid, (Kind::Float, dev));
        let mut rows = Vec::new();
        for d in 0..dims {
            let z = mu.repeat([a.grid, 1]);
            z.narrow(1, d, 1).copy_(&values.unsqueeze(1));
            rows.push(z);
        }
        (
            Tensor::cat(&rows, 0),
            a.grid,
            format!(
                "dimensions 0..{dims} of image {}'s latent mean over [-{}, {}]",
                a.image, a.span, a.span
            ),
        )
    };
    let images = tch::no_grad(|| model.decode(&z))?.sigmoid();
    let out = a
        .out
        .unwrap_or_else(|| a.model.out_dir().join("manifold.png"));
    let (w, h) = save_grid(&out, &images, cols as usize)?;
    println!("wrote {} ({w}x{h}: {what})", out.display());
    Ok(0)
}

/// `vae latents`.
#[derive(clap::Args, Debug)]
pub struct LatentsArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Which split to encode: test or train.
    #[arg(long, default_value = "test")]
    pub split: String,
    /// Folder holding the MNIST-format files.
    #[arg(long, default_value = "data/mnist")]
    pub data: PathBuf,
    /// CSV of index, label, latent means and log-variances [default: <run>/latents.csv].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Also write the latent means as a float32 `.npy` array (N x latent).
    #[arg(long)]
    pub npy: Option<PathBuf>,
    /// Also draw a 2-D scatter coloured by label (the first two dims of a 2-D latent, else
    /// the first two principal components of the means).
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

/// Posterior means and log-variances of every image, `[N, latent]` each, on the CPU.
pub fn encode_all(model: &ConvVae, x_u8: &Tensor) -> Result<(Tensor, Tensor)> {
    let n = x_u8.size()[0];
    let (mut mus, mut lvs) = (Vec::new(), Vec::new());
    tch::no_grad(|| -> Result<()> {
        let mut s = 0;
        while s < n {
            let len = 1000.min(n - s);
            let x = x_u8
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

/// Writes a float32 array as a NumPy `.npy` file (format 1.0), atomically.
pub fn write_npy(path: &Path, t: &Tensor) -> Result<()> {
    let t = t.to_device(Device::Cpu).to_kind(Kind::Float).contiguous();
    let shape: Vec<String> = t.size().iter().map(|d| d.to_string()).collect();
    let shape = if shape.len() == 1 {
        format!("({},)", shape[0])
    } else {
        format!("({})", shape.join(", "))
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
    // Magic (6) + version (2) + length (2) + header, padded with spaces to a multiple of 64, ending in \n.
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat(total.div_ceil(64) * 64 - total));
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    let values: Vec<f32> = Vec::try_from(&t.view([-1]))?;
    for v in values {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    vae_train::write_atomic(path, &bytes)?;
    Ok(())
}

/// The first two principal components of the rows of `x` (`[N, d]`, d >= 2): `[N, 2]`.
pub fn pca2(x: &Tensor) -> Tensor {
    let centred = x - x.mean_dim(0, true, Kind::Float);
    let cov = centred.transpose(0, 1).matmul(&centred) / (x.size()[0].max(2) - 1) as f64;
    let (_, vectors) = cov.linalg_eigh("L");
    // eigh sorts eigenvalues ascending: the last two columns span the most variance.
    let d = vectors.size()[1];
    centred.matmul(&vectors.narrow(1, d - 2, 2).flip([1]))
}

pub fn latents(a: LatentsArgs) -> Result<u8> {
    let split = match a.split.as_str() {
        "test" => Split::Test,
        "train" => Split::Train,
        other => bail!("--split must be test or train, got {other:?}"),
    };
    let (model, _vs, _) = a.model.load()?;
    let ds = load_split(&a.data, split, &model)?;
    let (mu, logvar) = encode_all(&model, &images_tensor(&ds, Device::Cpu))?;
    let d = model.config().latent_dim as usize;
    let mu_v: Vec<f32> = Vec::try_from(&mu.view([-1]))?;
    let lv_v: Vec<f32> = Vec::try_from(&logvar.view([-1]))?;
    let mut csv = String::from("index,label");
    for i in 0..d {
        csv.push_str(&format!(",mu_{i}"));
    }
    for i in 0..d {
        csv.push_str(&format!(",logvar_{i}"));
    }
    csv.push('\n');
    for (k, label) in ds.labels().iter().enumerate() {
        csv.push_str(&format!("{k},{label}"));
        for v in &mu_v[k * d..(k + 1) * d] {
            csv.push_str(&format!(",{v}"));
        }
        for v in &lv_v[k * d..(k + 1) * d] {
            csv.push_str(&format!(",{v}"));
        }
        csv.push('\n');
    }
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| a.model.out_dir().join("latents.csv"));
    vae_train::write_atomic(&out, csv.as_bytes())?;
    println!(
        "wrote {} ({} rows, {d} latent dims)",
        out.display(),
        ds.len()
    );
    if let Some(p) = &a.npy {
        write_npy(p, &mu)?;
        println!(
            "wrote {} (float32 latent means, {} x {d})",
            p.display(),
            ds.len()
        );
    }
    if let Some(p) = &a.plot {
        let (xy, how) = if d == 1 {
            (
                Tensor::cat(&[mu.shallow_clone(), Tensor::zeros_like(&mu)], 1),
                "z0",
            )
        } else if d == 2 {
            (mu.shallow_clone(), "z0 / z1")
        } else {
            (
                pca2(&mu),
                "first two principal components of the latent means",
            )
        };
        let v: Vec<f32> = Vec::try_from(&xy.contiguous().view([-1]))?;
        let points: Vec<(f64, f64, u8)> = ds
            .labels()
            .iter()
            .enumerate()
            .map(|(k, &l)| (f64::from(v[2 * k]), f64::from(v[2 * k + 1]), l))
            .collect();
        let title = format!("{} {} images: {how}", ds.len(), a.split);
        scatter(
            p,
            &points,
            &title,
            if d > 2 { "PC1" } else { "z0" },
            if d > 2 { "PC2" } else { "z1" },
        )?;
        println!("wrote {}", p.display());
    }
    Ok(0)
}

/// Draws `curves.png`: ELBO, KL and reconstruction per epoch, train and validation.
pub fn write_curves(path: &Path, history: &[EpochMetrics]) -> Result<()> {
    let pts = |f: &dyn Fn(&EpochMetrics) -> f64| {
        history
            .iter()
            .map(|m| (m.epoch as f64, f(m)))
            .collect::<Vec<_>>()
    };
    let panel =
        |title: &str, tr: &dyn Fn(&EpochMetrics) -> f64, va: &dyn Fn(&EpochMetrics) -> f64| Panel {
            title: title.into(),
            x_name: "epoch".into(),
            series: vec![
                Series {
                    name: "train".into(),
                    color: PALETTE[0],
                    points: pts(tr),
                },
                Series {
                    name: "validation".into(),
                    color: PALETTE[1],
                    points: pts(va),
                },
            ],
        };
    line_chart(
        path,
        &[
            panel("ELBO (nats)", &|m| m.train_elbo, &|m| m.val_elbo),
            panel("KL (nats)", &|m| m.train_kl, &|m| m.val_kl),
            panel(
                "reconstruction -log p(x|z)",
                &|m| m.train_reconstruction,
                &|m| m.val_reconstruction,
            ),
        ],
    )
}

/// `vae export`.
#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Output safetensors file, loadable by the PyTorch reference module.
    #[arg(long)]
    pub out: PathBuf,
}

/// Our variable names and the reference PyTorch module's (`ref_pytorch_vae.py`'s `VAE`):
/// `enc` and `dec` are `nn.Sequential`s whose convs sit at indices 0 and 2.
pub const PEER_NAMES: [(&str, &str); 6] = [
    ("encoder.conv1", "enc.0"),
    ("encoder.conv2", "enc.2"),
    ("encoder.head", "head"),
    ("decoder.fc", "fc"),
    ("decoder.deconv1", "dec.0"),
    ("decoder.deconv2", "dec.2"),
];

pub fn export(a: ExportArgs) -> Result<u8> {
    let (model, vs, _) = a.model.load()?;
    let c = model.config();
    if c.res_blocks > 0 || c.prior != vae_model::Prior::Standard {
        bail!(
            "only the reference architecture maps onto the PyTorch module; this model has {} residual blocks per level and prior {:?}",
            c.res_blocks,
            c.prior
        );
    }
    if c.channels != [32, 64]
        || c.hidden_dim.is_some()
        || (c.input_channels, c.input_height, c.input_width) != (1, 28, 28)
    {
        bail!(
            "only the reference architecture (1x28x28 images, channels 32,64, no hidden layer) maps onto the PyTorch module; this model has {}x{}x{}, channels {:?}, hidden {:?}",
            c.input_channels,
            c.input_height,
            c.input_width,
            c.channels,
            c.hidden_dim
        );
    }
    let vars = vs.variables();
    let mut named = Vec::new();
    for (ours, theirs) in PEER_NAMES {
        for part in ["weight", "bias"] {
            let key = format!("{ours}.{part}");
            // Tied models store a deconv's weight once, as its mirrored encoder conv's.
            let t = match vars.get(&key) {
                Some(t) => t.shallow_clone(),
                None if c.tie_weights && key == "decoder.deconv1.weight" => {
                    vars["encoder.conv2.weight"].shallow_clone()
                }
                None if c.tie_weights && key == "decoder.deconv2.weight" => {
                    vars["encoder.conv1.weight"].shallow_clone()
                }
                None => bail!("the checkpoint lacks {key}"),
            };
            named.push((
                format!("{theirs}.{part}"),
                t.to_device(Device::Cpu).contiguous(),
            ));
        }
    }
    let tmp = a.out.with_extension("safetensors.tmp");
    Tensor::write_safetensors(&named, &tmp)?;
    std::fs::rename(&tmp, &a.out).with_context(|| format!("cannot write {}", a.out.display()))?;
    println!(
        "wrote {} ({} tensors named as in ref_pytorch_vae.VAE; load with load_state_dict)",
        a.out.display(),
        named.len()
    );
    Ok(0)
}
