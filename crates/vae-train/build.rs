//! Links examples and tests against libtorch: rpath, and libtorch_cuda where there is one (see
//! `../vae-model/build_libtorch.rs`).
include!("../vae-model/build_libtorch.rs");

fn main() {
    if let Some(lib) = link_libtorch() {
        // For the test that checks a CUDA libtorch is recognised as one.
        println!("cargo:rustc-env=VAE_TRAIN_LIBTORCH_LIB={}", lib.display());
    }
}
