//! Reading, writing and batching image data in MNIST's IDX layout, for training VAEs or
//! anything else.
//!
//! `vae-data` is the data half of [vae-rs](https://github.com/vae-rs/vae-rs) and needs no
//! libtorch: it parses IDX files (all six element types, any rank, gzip detected by its magic
//! bytes) into [`ndarray`] arrays, writes them back, loads datasets by split
//! ([`ImageDataset`]: grey-level or colour images, labelled or not),
//! holds out a deterministic validation set, and cuts seeded, reproducible batches with optional
//! dynamic binarisation. Every failure is a [`DataError`] naming the file and what is wrong;
//! no input makes it panic.
//!
//! [`write_atomic`] is the one way the workspace writes files (temporary file, fsync, rename),
//! and [`write_npy`] writes arrays for NumPy.
//!
//! It is not a downloader (`cargo xtask download` in the workspace fetches and verifies the
//! files) and knows nothing about models.
//!
//! ```
//! use vae_data::{BatchConfig, IdxArray, ImageDataset, Split, write_idx};
//! use ndarray::{Array1, Array3};
//!
//! # fn main() -> Result<(), vae_data::DataError> {
//! let dir = tempfile::tempdir().unwrap();
//! // Two 4x4 images and their labels, written as MNIST's file names.
//! let images = Array3::<u8>::from_shape_fn((2, 4, 4), |(n, i, j)| (n * 100 + i * 4 + j) as u8);
//! write_idx(dir.path().join("train-images-idx3-ubyte.gz"), &IdxArray::U8(images.into_dyn()), true)?;
//! write_idx(dir.path().join("train-labels-idx1-ubyte"), &IdxArray::U8(Array1::from(vec![7u8, 3]).into_dyn()), false)?;
//!
//! let train = ImageDataset::load(dir.path(), Split::Train)?;
//! assert_eq!((train.len(), train.image_size()), (2, (4, 4)));
//!
//! let config = BatchConfig { batch_size: 2, binarize: true, seed: 42, ..BatchConfig::default() };
//! for batch in train.batches(&config, 0)? {
//!     assert_eq!(batch.images.dim(), (2, 4, 4, 1)); // N x H x W x C
//!     assert!(batch.images.iter().all(|&p| p == 0.0 || p == 1.0));
//! }
//! # Ok(())
//! # }
//! ```

mod batch;
mod dataset;
mod error;
mod files;
mod idx;
mod import;

pub use batch::{Batch, BatchConfig, Batches};
pub use dataset::{DEFAULT_VALIDATION_SIZE, ImageDataset, Split};
pub use error::{DataError, Result};
pub use files::{remove_stale_temporaries, write_atomic, write_npy};
pub use idx::{IdxArray, IdxType, read_idx, read_idx_from, write_idx, write_idx_to};
pub use import::{
    DEFAULT_MAX_PIXELS, ImportOptions, ImportedImages, default_max_set_bytes, import_png_folder,
};

#[cfg(test)]
mod tests;
