//! Links tests against libtorch: rpath, and libtorch_cuda where there is one (see
//! `build_libtorch.rs`); compiles `src/conv_pointwise.cpp`, the binding to libtorch's oneDNN
//! convolutions with fused epilogues (tch has none), against the same libtorch, setting
//! `cfg(conv_pointwise)`.
include!("build_libtorch.rs");

fn main() {
    println!("cargo::rustc-check-cfg=cfg(conv_pointwise)");
    println!("cargo:rerun-if-changed=src/conv_pointwise.cpp");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    if let Some(lib) = link_libtorch() {
        // The headers sit beside the libraries, in a libtorch download as in the PyTorch wheel.
        let include = lib.join("../include");
        if include.join("ATen/ATen.h").exists() {
            // libtorch 2.11 is built with the C++11 ABI; torch-sys reads the same variable.
            let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
            cc::Build::new()
                .cpp(true)
                .file("src/conv_pointwise.cpp")
                .include(&include)
                .flag("-std=c++17")
                .define("_GLIBCXX_USE_CXX11_ABI", abi.as_str())
                .warnings(false)
                .extra_warnings(false)
                .compile("vae_conv_pointwise");
            println!("cargo:rustc-cfg=conv_pointwise");
        }
    }
}
