use tch::{Cuda, Device};

use crate::error::{Result, TrainError};

/// Parses `auto`, `cpu`, `cuda` or `cuda:N` into a device, checking it can be used.
///
/// `auto` picks the first CUDA device when libtorch has CUDA and a device is visible, else
/// the CPU. An explicit `cuda` that cannot be honoured is an error saying which part is
/// missing: a libtorch built without CUDA, or no visible device.
pub fn parse_device(spec: &str) -> Result<Device> {
    let spec = spec.trim().to_ascii_lowercase();
    let cuda_index = match spec.as_str() {
        "auto" => {
            return Ok(if Cuda::is_available() {
                Device::Cuda(0)
            } else {
                Device::Cpu
            });
        }
        "cpu" => return Ok(Device::Cpu),
        "cuda" | "gpu" => 0,
        s => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(i)) => i,
            _ => {
                return Err(TrainError::Device(format!(
                    "unknown device {spec:?}: use auto, cpu, cuda or cuda:N"
                )));
            }
        },
    };
    if !tch::utils::has_cuda() {
        return Err(TrainError::Device(format!(
            "device {spec} asked for, but this libtorch was built without CUDA (a CPU-only libtorch): use --device cpu, or a CUDA build of PyTorch {}",
            "2.11"
        )));
    }
    let count = Cuda::device_count();
    if count == 0 {
        return Err(TrainError::Device(format!(
            "device {spec} asked for, but no CUDA device is visible (libtorch has CUDA; check the NVIDIA driver and CUDA_VISIBLE_DEVICES)"
        )));
    }
    if cuda_index as i64 >= count {
        return Err(TrainError::Device(format!(
            "device {spec} asked for, but only {count} CUDA device(s) are visible (cuda:0 to cuda:{})",
            count - 1
        )));
    }
    Ok(Device::Cuda(cuda_index))
}

/// A short human name: `cpu` or `cuda:N`.
pub fn device_name(device: Device) -> String {
    match device {
        Device::Cpu => "cpu".into(),
        Device::Cuda(i) => format!("cuda:{i}"),
        other => format!("{other:?}").to_lowercase(),
    }
}
