//! Links examples and tests against libtorch: rpath, and libtorch_cuda where there is one (see
//! `../vae-model/build_libtorch.rs`); compiles `src/fused_adam.cpp`, the binding to libtorch's
//! fused Adam kernel (tch has none), against the same libtorch; `src/profiler.cpp`, the binding
//! to its operator profiler (`cfg(profiler)`); and `src/dist.cpp`, the binding
//! to libtorch's c10d process groups (Gloo with the headers in `third_party/gloo`, NCCL where
//! the CUDA and NCCL headers of the PyTorch wheel are found), setting `cfg(dist)`.
include!("../vae-model/build_libtorch.rs");

fn main() {
    println!("cargo::rustc-check-cfg=cfg(fused_adam)");
    println!("cargo::rustc-check-cfg=cfg(dist)");
    println!("cargo::rustc-check-cfg=cfg(profiler)");
    println!("cargo:rerun-if-changed=src/fused_adam.cpp");
    println!("cargo:rerun-if-changed=src/dist.cpp");
    println!("cargo:rerun-if-changed=src/profiler.cpp");
    println!("cargo:rerun-if-changed=third_party/gloo");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    if let Some(lib) = link_libtorch() {
        // For the test that checks a CUDA libtorch is recognised as one.
        println!("cargo:rustc-env=VAE_TRAIN_LIBTORCH_LIB={}", lib.display());
        // The headers sit beside the libraries, in a libtorch download as in the PyTorch wheel.
        let include = lib.join("../include");
        if include.join("ATen/ATen.h").exists() {
            // libtorch 2.11 is built with the C++11 ABI; torch-sys reads the same variable.
            let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
            cc::Build::new()
                .cpp(true)
                .file("src/fused_adam.cpp")
                .include(&include)
                .flag("-std=c++17")
                .define("_GLIBCXX_USE_CXX11_ABI", abi.as_str())
                .warnings(false)
                .extra_warnings(false)
                .compile("vae_fused_adam");
            println!("cargo:rustc-cfg=fused_adam");
            cc::Build::new()
                .cpp(true)
                .file("src/profiler.cpp")
                .include(&include)
                .include(include.join("torch/csrc/api/include"))
                .flag("-std=c++17")
                .define("_GLIBCXX_USE_CXX11_ABI", abi.as_str())
                .warnings(false)
                .extra_warnings(false)
                .compile("vae_profiler");
            println!("cargo:rustc-cfg=profiler");
            compile_dist(&lib, &include, &abi);
        }
    }
}

/// Compiles `src/dist.cpp` with Gloo (always: its headers are vendored) and with NCCL when
/// libtorch is a CUDA build and the wheel's `nvidia/` folders hold `nccl.h` and complete CUDA
/// headers. Records in `VAE_DIST_NCCL_MISSING` why NCCL is left out, for `vae info`.
fn compile_dist(lib: &std::path::Path, include: &std::path::Path, abi: &str) {
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .file("src/dist.cpp")
        .include(include)
        .include(include.join("torch/csrc/api/include"))
        .include("third_party/gloo")
        .flag("-std=c++17")
        .define("_GLIBCXX_USE_CXX11_ABI", abi)
        .define("USE_C10D_GLOO", None)
        .warnings(false)
        .extra_warnings(false);
    let missing = nccl_headers(lib).map(|dirs| {
        for d in dirs {
            build.include(d);
        }
        build.define("USE_C10D_NCCL", None);
        build.define("USE_CUDA", None);
    });
    if let Err(why) = &missing {
        println!("cargo:rustc-env=VAE_DIST_NCCL_MISSING={why}");
    } else {
        println!("cargo:rustc-env=VAE_DIST_NCCL_MISSING=");
    }
    build.compile("vae_dist");
    println!("cargo:rustc-cfg=dist");
}

/// The include folders NCCL's process group needs, or why they are not all there.
fn nccl_headers(lib: &std::path::Path) -> Result<Vec<std::path::PathBuf>, String> {
    if !lib.join("libtorch_cuda.so").exists() {
        return Err("libtorch is a CPU build".into());
    }
    // torch/lib → site-packages/nvidia/...
    let nvidia = lib.join("../../nvidia");
    let nccl = nvidia.join("nccl/include");
    let cuda = nvidia.join("cu13/include");
    let mut dirs = vec![nccl.clone(), cuda.clone()];
    if !nccl.join("nccl.h").exists() {
        return Err(format!("no nccl.h in {}", nccl.display()));
    }
    // The runtime headers include crt/ and nv/ (CUDA's CCCL), which come in their own wheels:
    // in the same folder when pip installed them beside torch, or in the workspace's
    // `.cuda-headers`, where `cargo xtask download` puts them.
    let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.cuda-headers");
    let extra = workspace.join("nvidia/cu13/include");
    println!("cargo:rerun-if-changed={}", workspace.display());
    for (file, what) in [("crt/host_config.h", "crt"), ("nv/target", "cccl")] {
        let found = [cuda.clone(), extra.clone()]
            .into_iter()
            .find(|d| d.join(file).exists());
        match found {
            Some(d) => {
                if !dirs.contains(&d) {
                    // After the wheel's own headers, so only the missing ones come from here.
                    dirs.push(d);
                }
            }
            None => {
                return Err(format!(
                    "the CUDA headers in {} lack {file} (the nvidia-cuda-{what} wheel; cargo xtask download installs it)",
                    cuda.display()
                ));
            }
        }
    }
    Ok(dirs)
}
