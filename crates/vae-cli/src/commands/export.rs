//! `vae export`: a model as a self-contained PyTorch module (`model.py`) and its weights
//! (`model.safetensors`), or, for the reference architecture, its weights under the names of
//! the PyTorch peer's module.

use std::collections::HashMap;

use anyhow::{Context, Result, bail};
use safetensors::{Dtype, tensor::TensorView};
use tch::{Device, Kind, Tensor};
use vae_model::{Likelihood, Prior};
use vae_train::LoadedModel;

use crate::args::ExportArgs;

/// `named` tensors (f32) serialised as a safetensors file, with `metadata` in its header.
fn safetensors_bytes(
    named: &[(String, Tensor)],
    metadata: Option<HashMap<String, String>>,
) -> Result<Vec<u8>> {
    let mut owned = Vec::with_capacity(named.len());
    for (name, t) in named {
        let t = t.to_kind(Kind::Float).contiguous();
        let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
        let values: Vec<f32> = Vec::try_from(&t.view([-1]))?;
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        owned.push((name.clone(), shape, bytes));
    }
    let views = owned
        .iter()
        .map(|(n, s, b)| Ok((n.clone(), TensorView::new(Dtype::F32, s.clone(), b)?)))
        .collect::<Result<Vec<_>>>()?;
    Ok(safetensors::serialize(views, metadata)?)
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

/// The PyTorch module written as `model.py`; `__CONFIG__` becomes the model's config (JSON).
const MODEL_PY: &str = include_str!("export_model.py");

pub fn run(a: ExportArgs) -> Result<u8> {
    if let Some(out) = a.out.as_deref().filter(|_| !a.reference_names)
        && out
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"))
    {
        bail!(
            "--out {} names a file, but without --reference-names --out is the folder that receives model.safetensors and model.py: pass a folder (e.g. --out {}), or add --reference-names for one file of the reference module's weights",
            out.display(),
            out.with_extension("").display()
        );
    }
    let loaded = a.model.load()?;
    if a.reference_names {
        return reference_names(&a, &loaded);
    }
    let config = loaded.model.config();
    let dir = a
        .out
        .clone()
        .unwrap_or_else(|| a.model.out_dir().join("export"));
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create the export folder {}", dir.display()))?;
    let mut vars: Vec<(String, Tensor)> = loaded
        .vars
        .variables()
        .into_iter()
        .map(|(name, t)| (name, t.to_device(Device::Cpu)))
        .collect();
    vars.sort_by(|x, y| x.0.cmp(&y.0));
    let json = serde_json::to_string(&config)?;
    let weights = dir.join("model.safetensors");
    let metadata = HashMap::from([("config".to_string(), json.clone())]);
    vae_data::write_atomic(&weights, &safetensors_bytes(&vars, Some(metadata))?)?;
    if !["conv", "ladder"].contains(&config.kind()) {
        // The PyTorch module covers the built-in kinds; others export their weights and config.
        println!(
            "wrote {} ({} tensors, the {} model's config in its metadata; no PyTorch module is written for this kind)",
            weights.display(),
            vars.len(),
            config.kind()
        );
        return Ok(0);
    }
    let module = dir.join("model.py");
    vae_data::write_atomic(&module, MODEL_PY.replace("__CONFIG__", &json).as_bytes())?;
    println!(
        "wrote {} ({} tensors) and {} (a PyTorch module of this {} model: Model.from_safetensors)",
        weights.display(),
        vars.len(),
        module.display(),
        config.kind()
    );
    Ok(0)
}

/// What keeps a model from the reference module's architecture, in words (empty if nothing).
fn differences_from_reference(c: &vae_model::ConvVaeConfig) -> Vec<String> {
    let mut d = Vec::new();
    if (c.input_channels, c.input_height, c.input_width) != (1, 28, 28) {
        d.push(format!(
            "{}x{}x{} images",
            c.input_channels, c.input_height, c.input_width
        ));
    }
    if c.channels != [32, 64] {
        let widths: Vec<String> = c.channels.iter().map(i64::to_string).collect();
        d.push(format!("conv widths {}", widths.join(",")));
    }
    if c.latent_dim != 32 {
        d.push(format!("a {}-dimensional latent", c.latent_dim));
    }
    if let Some(h) = c.hidden_dim {
        d.push(format!("a hidden layer of {h}"));
    }
    if c.res_blocks > 0 {
        d.push(format!("{} residual blocks per level", c.res_blocks));
    }
    if let Prior::Vamp { components } = c.prior {
        d.push(format!("a VampPrior of {components} pseudo-inputs"));
    }
    if c.pixel_head.is_some() {
        d.push("a pixel head".into());
    }
    if c.likelihood != Likelihood::Bernoulli {
        d.push(format!("the {} likelihood", c.likelihood));
    }
    d
}

/// `--reference-names`: the weights under `ref_pytorch_vae.VAE`'s names, one file.
fn reference_names(a: &ExportArgs, loaded: &LoadedModel) -> Result<u8> {
    let Some(out) = &a.out else {
        bail!("--reference-names writes one file: name it with --out FILE.safetensors");
    };
    let config = loaded.model.config();
    let Some(c) = config.get::<vae_model::ConvVaeConfig>() else {
        bail!(
            "--reference-names needs the conv VAE of the reference architecture, but this model is of kind {}: export it without --reference-names",
            config.kind()
        );
    };
    let differences = differences_from_reference(c);
    if !differences.is_empty() {
        bail!(
            "--reference-names needs the reference architecture (that of --preset fast), but this model has {}: export it without --reference-names for a module of its own",
            differences.join(", ")
        );
    }
    let vars = loaded.vars.variables();
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
    vae_data::write_atomic(out, &safetensors_bytes(&named, None)?)?;
    println!(
        "wrote {} ({} tensors named as in ref_pytorch_vae.VAE; load with load_state_dict)",
        out.display(),
        named.len()
    );
    Ok(0)
}
