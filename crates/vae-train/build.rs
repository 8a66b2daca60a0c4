//! Adds an rpath to the libtorch that torch-sys linked, so binaries and tests run without
//! `LD_LIBRARY_PATH`. torch-sys exports that folder to its direct dependents as metadata.
//!
//! With a CUDA build of libtorch it also links `libtorch_cuda` unconditionally: nothing in
//! our code names a symbol of it, so the linker's `--as-needed` would drop it, and libtorch
//! would then report no CUDA at run time (`vae info` said `libtorch_has_cuda: false` on a
//! cu130 libtorch before this).
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        let lib = std::fs::canonicalize(&lib).unwrap_or_else(|_| lib.into());
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
        // For the test that checks a CUDA libtorch is recognised as one.
        println!("cargo:rustc-env=VAE_TRAIN_LIBTORCH_LIB={}", lib.display());
        if lib.join("libtorch_cuda.so").exists() {
            println!(
                "cargo:rustc-link-arg=-Wl,--no-as-needed,-L{},-ltorch_cuda,--as-needed",
                lib.display()
            );
        }
    }
}
