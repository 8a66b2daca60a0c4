//! Links the `vae` binary and tests against libtorch: rpath, and libtorch_cuda where there is
//! one (see `../vae-model/build_libtorch.rs`).
include!("../vae-model/build_libtorch.rs");

fn main() {
    link_libtorch();
}
