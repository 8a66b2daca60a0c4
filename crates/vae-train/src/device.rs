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
    Ok(Device::Cuda(cuda_index))
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
pub fn device_name(device: Device) -> String {
    match device {
        Device::Cpu => "cpu".into(),
        Device::Cuda(i) => format!("cuda:{i}"),
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
        // must show as one (before session 4 the linker dropped libtorch_cuda, and a CUDA
        // libtorch looked like a CPU-only one).
        if let Some(dir) = option_env!("VAE_TRAIN_LIBTORCH_LIB") {
            let cuda_build = std::path::Path::new(dir).join("libtorch_cuda.so").exists();
            assert_eq!(libtorch_has_cuda(), cuda_build, "libtorch in {dir}");
        }
        if !tch::Cuda::is_available() {
            let err = parse_device("cuda").unwrap_err().to_string();
            assert_eq!(err, no_cuda_reason("cuda", libtorch_has_cuda()));
        }
    }
}
