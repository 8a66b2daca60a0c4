//! `vae info`: what this build of libtorch can do here.

use anyhow::Result;

use vae_train::Precision;

use crate::args::InfoArgs;

pub fn run(a: InfoArgs) -> Result<u8> {
    let has_cuda = vae_train::libtorch_has_cuda();
    let devices = if tch::utils::has_cuda() {
        tch::Cuda::device_count()
    } else {
        0
    };
    let auto_device = vae_train::Device::Auto.resolve()?;
    let auto = vae_train::device_name(auto_device);
    let cpu = vae_train::CpuFeatures::detect();
    let on_cpu = Precision::Auto.resolve_on(tch::Device::Cpu, &cpu);
    let on_auto = Precision::Auto.resolve_on(auto_device, &cpu);
    let dist = vae_train::backends();
    if a.json {
        let v = serde_json::json!({
            "libtorch_has_cuda": has_cuda,
            "cuda_devices": devices,
            "cudnn": has_cuda && tch::Cuda::cudnn_is_available(),
            "mkldnn": tch::utils::has_mkldnn(),
            "openmp": tch::utils::has_openmp(),
            "threads": tch::get_num_threads(),
            "auto_device": auto,
            "cpu": {"model": cpu.model, "flags": cpu.flags(), "bf16_channels_last": cpu.bf16_channels_last()},
            "auto_precision": {"cpu": on_cpu.precision.name(), "cpu_reason": on_cpu.reason,
                               "auto_device": on_auto.precision.name(), "auto_device_reason": on_auto.reason},
            "distributed": {"gloo": dist.gloo, "nccl": dist.nccl, "missing": dist.missing},
        });
        println!("{v}");
    } else {
        println!("libtorch with CUDA: {has_cuda}");
        println!("CUDA devices visible: {devices}");
        println!(
            "oneDNN (mkldnn): {}, OpenMP: {}",
            tch::utils::has_mkldnn(),
            tch::utils::has_openmp()
        );
        println!("CPU threads: {}", tch::get_num_threads());
        let flags = cpu.flags();
        println!(
            "CPU: {} ({})",
            cpu.model,
            if flags.is_empty() {
                "no AVX-512, AVX-512-BF16 or AMX-BF16".to_string()
            } else {
                flags.join(", ")
            }
        );
        println!("--device auto picks: {auto}");
        println!(
            "--precision auto picks {} on the CPU, because {}",
            on_cpu.precision, on_cpu.reason
        );
        println!(
            "bf16 convs on the CPU run {}",
            if cpu.bf16_channels_last() {
                "channels-last (NHWC) throughout, for the AMX kernels"
            } else {
                "NCHW, with the conv VAE's encoder channels-last"
            }
        );
        if auto_device != tch::Device::Cpu {
            println!(
                "--precision auto picks {} on {auto}, because {}",
                on_auto.precision, on_auto.reason
            );
        }
        let mut have: Vec<&str> = Vec::new();
        if dist.gloo {
            have.push("gloo (CPU)");
        }
        if dist.nccl {
            have.push("nccl (CUDA)");
        }
        println!(
            "training on several processes (--nproc, torchrun): {}{}",
            if have.is_empty() {
                "none".to_string()
            } else {
                have.join(", ")
            },
            if dist.missing.is_empty() {
                String::new()
            } else {
                format!("; missing {}", dist.missing.join("; "))
            }
        );
    }
    Ok(0)
}
