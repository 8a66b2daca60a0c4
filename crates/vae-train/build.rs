//! Links examples and tests against libtorch: rpath, and libtorch_cuda where there is one (see
//! `../vae-model/build_libtorch.rs`); compiles `src/fused_adam.cpp`, the binding to libtorch's
//! fused Adam kernel (tch has none), against the same libtorch.
include!("../vae-model/build_libtorch.rs");

fn main() {
    println!("cargo::rustc-check-cfg=cfg(fused_adam)");
    println!("cargo:rerun-if-changed=src/fused_adam.cpp");
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
        }
    }
}
