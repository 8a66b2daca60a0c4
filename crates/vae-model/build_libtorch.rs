// Included (`include!`) by the build scripts of vae-model, vae-train and vae-cli: cargo hands a
// `rustc-link-arg` to the package's own binaries and tests only, so each package that links
// some against libtorch emits these itself.

/// Adds an rpath to the libtorch that torch-sys linked (exported to torch-sys' direct
/// dependents as `DEP_TCH_LIBTORCH_LIB`), so binaries and tests run without `LD_LIBRARY_PATH`,
/// and returns that folder.
///
/// With a CUDA build of libtorch it also links `libtorch_cuda` unconditionally: nothing in our
/// code names a symbol of it, so the linker's `--as-needed` would drop it, and libtorch would
/// then report no CUDA at run time (`vae info` would say `libtorch_has_cuda: false` on a
/// cu130 libtorch). Rust's `-as-needed` link modifier would say this more simply,
/// but it is nightly-only.
fn link_libtorch() -> Option<std::path::PathBuf> {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let lib = std::env::var("DEP_TCH_LIBTORCH_LIB").ok()?;
    let lib = std::fs::canonicalize(&lib).unwrap_or_else(|_| lib.into());
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    if lib.join("libtorch_cuda.so").exists() {
        println!(
            "cargo:rustc-link-arg=-Wl,--no-as-needed,-L{},-ltorch_cuda,--as-needed",
            lib.display()
        );
    }
    Some(lib)
}
