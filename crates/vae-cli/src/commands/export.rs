//! `vae export`: a model's weights under the PyTorch reference module's parameter names.

use std::collections::HashMap;

use anyhow::{Result, bail};
use safetensors::{Dtype, tensor::TensorView};
use tch::{Device, Kind, Tensor};

use crate::args::ExportArgs;

/// `named` tensors (f32) serialised as a safetensors file.
fn safetensors_bytes(named: &[(String, Tensor)]) -> Result<Vec<u8>> {
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
    Ok(safetensors::serialize(
        views,
        None::<HashMap<String, String>>,
    )?)
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

pub fn run(a: ExportArgs) -> Result<u8> {
    let loaded = a.model.load()?;
    let config = loaded.model.config();
    let Some(c) = config.as_conv() else {
        bail!(
            "only the conv VAE maps onto the PyTorch reference module; this model is of kind {}",
            config.kind()
        );
    };
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
    let bytes = safetensors_bytes(&named)?;
    vae_data::write_atomic(&a.out, &bytes)?;
    println!(
        "wrote {} ({} tensors named as in ref_pytorch_vae.VAE; load with load_state_dict)",
        a.out.display(),
        named.len()
    );
    Ok(0)
}
