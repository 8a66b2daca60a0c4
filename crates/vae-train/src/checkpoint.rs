//! Checkpoints: one safetensors file holding the model's weights (under their own names),
//! optionally Adam's moments (`optimizer.m.<name>`, `optimizer.v.<name>`) and the weights'
//! moving average (`ema.<name>`), and as header
//! metadata the model config, train config and training state (JSON). Written atomically.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor, nn};
use vae_model::{ConvVaeConfig, ModelConfig, Vae};

use crate::config::TrainConfig;
use crate::error::{Result, TrainError};

/// The value of the `format` metadata key.
pub const FORMAT: &str = "vae-rs-checkpoint/2";
/// The format before model configs carried their `kind`: a conv VAE with a Bernoulli
/// likelihood, which is how it is read.
const FORMAT_CONV_ONLY: &str = "vae-rs-checkpoint/1";

/// Metrics of one finished epoch (nats per example; ELBO is the bound itself, higher is better).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// Epoch, 1-based.
    pub epoch: usize,
    /// Global steps done at its end.
    pub step: u64,
    /// Mean training ELBO over the epoch's batches.
    pub train_elbo: f64,
    /// Mean training KL.
    pub train_kl: f64,
    /// Mean training reconstruction term −log p(x|z).
    pub train_reconstruction: f64,
    /// Validation ELBO.
    pub val_elbo: f64,
    /// Validation KL.
    pub val_kl: f64,
    /// Validation reconstruction term.
    pub val_reconstruction: f64,
    /// Validation KL of each latent group, for a model with more than one (the top first).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub val_kl_groups: Vec<f64>,
    /// Validation IWAE bound at `iw_k` samples, in the epochs of an IWAE fine-tune
    /// ([`TrainConfig::iwae_epochs`](crate::TrainConfig::iwae_epochs)): what selects the best
    /// checkpoint among them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_iw: Option<f64>,
    /// Test-set ELBO, when the trainer was given a test set ([`Trainer::set_test_set`](crate::Trainer::set_test_set)).
    #[serde(default)]
    pub test_elbo: Option<f64>,
    /// Learning rate at the epoch's end.
    pub lr: f64,
    /// Training throughput.
    pub images_per_s: f64,
    /// Training seconds of the epoch (validation excluded).
    pub seconds: f64,
}

/// Sums over the current, unfinished epoch: what a run stopped inside an epoch resumes its
/// training figures from.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EpochAccum {
    /// Σ reconstruction terms.
    pub reconstruction: f64,
    /// Σ KL terms.
    pub kl: f64,
    /// Examples seen.
    pub examples: u64,
    /// Training seconds so far.
    pub seconds: f64,
}

/// Where training stands.
///
/// The random state is derived from `(seed, step)`: every step reseeds libtorch's generator
/// from them, so the seed and the step count are the whole RNG state and a resumed run draws
/// exactly the noise an uninterrupted one would.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimiser steps done.
    pub step: u64,
    /// Adam's step counter.
    pub adam_t: u64,
    /// Best validation ELBO so far.
    pub best_val_elbo: Option<f64>,
    /// One entry per finished epoch.
    pub history: Vec<EpochMetrics>,
    /// Sums of the unfinished epoch.
    pub partial: EpochAccum,
}

/// A checkpoint read from disk (tensors on the CPU).
#[derive(Debug)]
pub struct Checkpoint {
    /// The file it came from.
    pub path: PathBuf,
    /// Architecture.
    pub model_config: ModelConfig,
    /// Training settings.
    pub train_config: TrainConfig,
    /// Progress.
    pub state: TrainState,
    tensors: HashMap<String, Tensor>,
}

fn to_bytes(t: &Tensor) -> Result<(Vec<usize>, Vec<u8>)> {
    let t = t
        .detach()
        .to_device(Device::Cpu)
        .to_kind(Kind::Float)
        .contiguous();
    let shape = t.size().iter().map(|&d| d as usize).collect();
    let values: Vec<f32> = Vec::try_from(&t.flatten(0, -1))?;
    Ok((shape, values.iter().flat_map(|x| x.to_le_bytes()).collect()))
}

fn read_err(path: &Path) -> impl Fn(std::io::Error) -> TrainError + '_ {
    move |cause| TrainError::Io {
        action: "read the checkpoint",
        path: path.to_path_buf(),
        cause,
    }
}

/// What a resumable checkpoint holds besides the weights, one tensor per name of `names`.
pub(crate) struct OptimizerState<'a> {
    pub names: &'a [String],
    pub m: &'a [Tensor],
    pub v: &'a [Tensor],
    pub ema: Option<&'a [Tensor]>,
}

/// Saves a checkpoint of `vs` (and the optimiser's state if given) to `path`, atomically.
pub(crate) fn save(
    path: &Path,
    model_config: &ModelConfig,
    train_config: &TrainConfig,
    state: &TrainState,
    vs: &nn::VarStore,
    optimizer: Option<OptimizerState<'_>>,
) -> Result<()> {
    let mut owned: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, t) in vs.variables() {
        let (shape, bytes) = to_bytes(&t)?;
        owned.push((name, shape, bytes));
    }
    if let Some(o) = optimizer {
        for ((name, m), v) in o.names.iter().zip(o.m).zip(o.v) {
            let (shape, bytes) = to_bytes(m)?;
            owned.push((format!("optimizer.m.{name}"), shape, bytes));
            let (shape, bytes) = to_bytes(v)?;
            owned.push((format!("optimizer.v.{name}"), shape, bytes));
        }
        for (name, e) in o.names.iter().zip(o.ema.unwrap_or_default()) {
            let (shape, bytes) = to_bytes(e)?;
            owned.push((format!("ema.{name}"), shape, bytes));
        }
    }
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), FORMAT.to_string());
    meta.insert("model_config".to_string(), json(model_config));
    meta.insert("train_config".to_string(), json(train_config));
    meta.insert("state".to_string(), json(state));
    let views = owned
        .iter()
        .map(|(n, s, b)| TensorView::new(Dtype::F32, s.clone(), b).map(|v| (n.clone(), v)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TrainError::Checkpoint {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    let bytes = safetensors::serialize(views, Some(meta)).map_err(|e| TrainError::Checkpoint {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    Ok(vae_data::write_atomic(path, &bytes)?)
}

fn json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("plain data serialises")
}

impl Checkpoint {
    /// Reads and checks a checkpoint file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(read_err(path))?;
        Self::from_bytes(&bytes, path)
    }

    /// Parses and checks checkpoint bytes; `path` only names them in errors. Any input gives
    /// a checkpoint or an error, never a panic.
    pub fn from_bytes(bytes: &[u8], path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bad = |reason: String| TrainError::Checkpoint {
            path: path.to_path_buf(),
            reason,
        };
        let st = SafeTensors::deserialize(bytes).map_err(|e| {
            bad(format!(
                "not a readable checkpoint (damaged or truncated?): {e}"
            ))
        })?;
        let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| bad(e.to_string()))?;
        let meta = header.metadata().clone().unwrap_or_default();
        let conv_only = match meta.get("format").map(String::as_str) {
            Some(FORMAT) => false,
            Some(FORMAT_CONV_ONLY) => true,
            Some(other) => {
                return Err(bad(format!(
                    "written in checkpoint format {other:?}, which this build cannot read (it reads {FORMAT} and {FORMAT_CONV_ONLY}): use the vae-rs version that wrote it"
                )));
            }
            None => return Err(bad("not a vae-rs checkpoint (no format metadata)".into())),
        };
        fn field<T: serde::de::DeserializeOwned>(
            meta: &HashMap<String, String>,
            key: &str,
        ) -> Result<T, String> {
            let raw = meta
                .get(key)
                .ok_or_else(|| format!("metadata lacks {key}"))?;
            serde_json::from_str(raw).map_err(|e| format!("metadata {key} is invalid: {e}"))
        }
        let model_config: ModelConfig = if conv_only {
            field::<ConvVaeConfig>(&meta, "model_config")
                .map_err(bad)?
                .into()
        } else {
            field(&meta, "model_config").map_err(bad)?
        };
        let train_config: TrainConfig = field(&meta, "train_config").map_err(bad)?;
        let state: TrainState = field(&meta, "state").map_err(bad)?;
        let mut tensors = HashMap::new();
        for (name, view) in st.tensors() {
            if view.dtype() != Dtype::F32 {
                return Err(bad(format!(
                    "tensor {name} is {:?}, expected F32",
                    view.dtype()
                )));
            }
            let values: Vec<f32> = view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            let shape = view
                .shape()
                .iter()
                .map(|&d| i64::try_from(d))
                .collect::<Result<Vec<i64>, _>>()
                .map_err(|_| {
                    bad(format!(
                        "tensor {name} has an impossible shape {:?}",
                        view.shape()
                    ))
                })?;
            tensors.insert(name, Tensor::from_slice(&values).view(shape.as_slice()));
        }
        Ok(Self {
            path: path.to_path_buf(),
            model_config,
            train_config,
            state,
            tensors,
        })
    }

    /// Copies the stored weights into `vs`, checking every variable is present with its shape.
    pub fn restore_variables(&self, vs: &mut nn::VarStore) -> Result<()> {
        let bad = |reason: String| TrainError::Checkpoint {
            path: self.path.clone(),
            reason,
        };
        let vars = vs.variables();
        for (name, var) in &vars {
            let stored = self
                .tensors
                .get(name)
                .ok_or_else(|| bad(format!("has no {name}: it is from another architecture")))?;
            if stored.size() != var.size() {
                return Err(bad(format!(
                    "holds {name} of shape {:?} but the model needs {:?} (another latent size or architecture?)",
                    stored.size(),
                    var.size()
                )));
            }
        }
        tch::no_grad(|| {
            for (name, mut var) in vars {
                var.copy_(&self.tensors[&name]);
            }
        });
        Ok(())
    }

    /// Adam's stored moments for `names` (in that order), moved to `device`, if the checkpoint
    /// has them all.
    pub fn moments(&self, names: &[String], device: Device) -> Option<(Vec<Tensor>, Vec<Tensor>)> {
        let get = |kind: &str, n: &String| {
            self.tensors
                .get(&format!("optimizer.{kind}.{n}"))
                .map(|t| t.to_device(device))
        };
        let m = names
            .iter()
            .map(|n| get("m", n))
            .collect::<Option<Vec<_>>>()?;
        let v = names
            .iter()
            .map(|n| get("v", n))
            .collect::<Option<Vec<_>>>()?;
        Some((m, v))
    }

    /// The stored moving average of the weights for `names` (in that order), moved to
    /// `device`, if the checkpoint has it.
    pub fn ema(&self, names: &[String], device: Device) -> Option<Vec<Tensor>> {
        names
            .iter()
            .map(|n| {
                self.tensors
                    .get(&format!("ema.{n}"))
                    .map(|t| t.to_device(device))
            })
            .collect()
    }

    /// Builds the model the checkpoint describes on `device` and loads its weights.
    pub fn into_model(self, device: Device) -> Result<LoadedModel> {
        let mut vars = nn::VarStore::new(device);
        let model = self.model_config.build(&vars.root())?;
        self.restore_variables(&mut vars)?;
        Ok(LoadedModel {
            model,
            vars,
            checkpoint: self,
        })
    }
}

/// A model rebuilt from a checkpoint ([`Checkpoint::into_model`]).
#[derive(Debug)]
pub struct LoadedModel {
    /// The model, with the checkpoint's weights.
    pub model: Box<dyn Vae>,
    /// Its variables, named as in the checkpoint.
    pub vars: nn::VarStore,
    /// The checkpoint it came from (configs, state, history).
    pub checkpoint: Checkpoint,
}
