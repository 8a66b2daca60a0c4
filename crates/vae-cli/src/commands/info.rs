//! `vae info`: what this build of libtorch can do here.

use anyhow::Result;

use crate::args::InfoArgs;

pub fn run(a: InfoArgs) -> Result<u8> {
    let has_cuda = vae_train::libtorch_has_cuda();
    let devices = if tch::utils::has_cuda() {
        tch::Cuda::device_count()
    } else {
        0
    };
    let auto = vae_train::device_name(vae_train::Device::Auto.resolve()?);
    if a.json {
        let v = serde_json::json!({
            "libtorch_has_cuda": has_cuda,
            "cuda_devices": devices,
            "cudnn": has_cuda && tch::Cuda::cudnn_is_available(),
            "mkldnn": tch::utils::has_mkldnn(),
            "openmp": tch::utils::has_openmp(),
            "threads": tch::get_num_threads(),
            "auto_device": auto,
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
        println!("--device auto picks: {auto}");
    }
    Ok(0)
}
