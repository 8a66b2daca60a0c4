use serde::{Deserialize, Serialize};
use tch::Cuda;

use crate::error::{Result, TrainError};

/// The device a run asks for: `auto`, `cpu`, `cuda` or `cuda:N` in config files and flags.
/// [`Device::resolve`] turns it into the `tch::Device` to compute on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Device {
    /// The first CUDA device when libtorch has CUDA and one is visible, else the CPU.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// CUDA device N.
    Cuda(usize),
}

impl std::str::FromStr for Device {
    type Err = TrainError;
    fn from_str(spec: &str) -> Result<Self> {
        let spec = spec.trim().to_ascii_lowercase();
        match spec.as_str() {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" | "gpu" => Ok(Self::Cuda(0)),
            s => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(i)) => Ok(Self::Cuda(i)),
                _ => Err(TrainError::Device(format!(
                    "unknown device {spec:?}: use auto, cpu, cuda or cuda:N"
                ))),
            },
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

impl TryFrom<String> for Device {
    type Error = TrainError;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<Device> for String {
    fn from(d: Device) -> Self {
        d.to_string()
    }
}

impl Device {
    /// The `tch::Device` to compute on, checking it can be used: an explicit CUDA device that
    /// cannot be honoured is an error saying which part is missing (a libtorch built without
    /// CUDA, or no visible device).
    pub fn resolve(self) -> Result<tch::Device> {
        let cuda_index = match self {
            Self::Auto => {
                return Ok(if Cuda::is_available() {
                    tch::Device::Cuda(0)
                } else {
                    tch::Device::Cpu
                });
            }
            Self::Cpu => return Ok(tch::Device::Cpu),
            Self::Cuda(i) => i,
        };
        let spec = self.to_string();
        let count = if tch::utils::has_cuda() {
            Cuda::device_count()
        } else {
            0
        };
        if count == 0 {
            return Err(TrainError::Device(no_cuda_reason(
                &spec,
                libtorch_has_cuda(),
            )));
        }
        if cuda_index as i64 >= count {
            return Err(TrainError::Device(format!(
                "device {spec} asked for, but only {count} CUDA device(s) are visible (cuda:0 to cuda:{})",
                count - 1
            )));
        }
        Ok(tch::Device::Cuda(cuda_index))
    }
}

/// Whether the libtorch in this process was built with CUDA (its `libtorch_cuda` is loaded),
/// whether or not a GPU is visible. libtorch's own `hasCUDA` is false on a CUDA build without
/// a device, so it cannot tell the two apart; the process's memory map can (Linux).
pub fn libtorch_has_cuda() -> bool {
    if tch::utils::has_cuda() {
        return true;
    }
    std::fs::read_to_string("/proc/self/maps")
        .map(|maps| maps.contains("libtorch_cuda"))
        .unwrap_or(false)
}

/// Why `spec` (a CUDA device) cannot be used when no device is visible.
fn no_cuda_reason(spec: &str, libtorch_has_cuda: bool) -> String {
    if libtorch_has_cuda {
        format!(
            "device {spec} asked for, but no CUDA device is visible (libtorch has CUDA; check the NVIDIA driver with nvidia-smi, and CUDA_VISIBLE_DEVICES)"
        )
    } else {
        format!(
            "device {spec} asked for, but this libtorch was built without CUDA (a CPU-only libtorch): use --device cpu, or a CUDA build of PyTorch 2.11"
        )
    }
}

/// A short human name: `cpu` or `cuda:N`.
pub fn device_name(device: tch::Device) -> String {
    match device {
        tch::Device::Cpu => "cpu".into(),
        tch::Device::Cuda(i) => format!("cuda:{i}"),
        other => format!("{other:?}").to_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reason_names_the_missing_part() {
        assert!(no_cuda_reason("cuda", true).contains("no CUDA device is visible"));
        assert!(no_cuda_reason("cuda:1", false).contains("built without CUDA"));
        // This process is linked against the libtorch that build.rs saw: a CUDA build of it
        // must show as one (a linker that drops libtorch_cuda makes it look CPU-only).
        if let Some(dir) = option_env!("VAE_TRAIN_LIBTORCH_LIB") {
            let cuda_build = std::path::Path::new(dir).join("libtorch_cuda.so").exists();
            assert_eq!(libtorch_has_cuda(), cuda_build, "libtorch in {dir}");
        }
        if !tch::Cuda::is_available() {
            let err = Device::Cuda(0).resolve().unwrap_err().to_string();
            assert_eq!(err, no_cuda_reason("cuda:0", libtorch_has_cuda()));
        }
    }

    #[test]
    fn devices_parse_print_and_serialise_as_their_names() {
        for (text, d) in [
            ("auto", Device::Auto),
            ("cpu", Device::Cpu),
            ("cuda", Device::Cuda(0)),
            ("CUDA:2", Device::Cuda(2)),
        ] {
            assert_eq!(text.parse::<Device>().unwrap(), d);
        }
        assert_eq!(Device::Cuda(1).to_string(), "cuda:1");
        assert_eq!(serde_json::to_string(&Device::Cpu).unwrap(), "\"cpu\"");
        assert_eq!(
            serde_json::from_str::<Device>("\"cuda:3\"").unwrap(),
            Device::Cuda(3)
        );
        let err = "tpu".parse::<Device>().unwrap_err().to_string();
        assert_eq!(err, "unknown device \"tpu\": use auto, cpu, cuda or cuda:N");
        assert_eq!(Device::Cpu.resolve().unwrap(), tch::Device::Cpu);
    }
}
