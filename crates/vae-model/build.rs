//! Links tests against libtorch: rpath, and libtorch_cuda where there is one (see
//! `build_libtorch.rs`).
include!("build_libtorch.rs");

fn main() {
    link_libtorch();
}
