//! Adds an rpath to the libtorch that torch-sys linked, so binaries and tests run without
//! `LD_LIBRARY_PATH`. torch-sys exports that folder to its direct dependents as metadata.
fn main() {
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        let lib = std::fs::canonicalize(&lib).unwrap_or_else(|_| lib.into());
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    }
}
