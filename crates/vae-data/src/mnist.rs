//! MNIST-layout datasets: a rank-3 `u8` image file (N x H x W) and a rank-1 `u8` label file.

use std::path::{Path, PathBuf};

use ndarray::{Array1, Array3, Axis, Ix1, Ix3};
use rayon::prelude::*;

use crate::error::{DataError, Result};
use crate::idx::{IdxArray, read_idx};

/// Which half of an MNIST-layout dataset to load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Split {
    /// `train-images-idx3-ubyte` and `train-labels-idx1-ubyte` (60,000 examples for MNIST).
    Train,
    /// `t10k-images-idx3-ubyte` and `t10k-labels-idx1-ubyte` (10,000 examples for MNIST).
    Test,
}

impl Split {
    fn prefix(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "t10k",
        }
    }

    /// File names of the images and labels of this split, compressed and not, in the order
    /// they are looked for.
    pub fn file_candidates(self) -> [Vec<String>; 2] {
        let p = self.prefix();
        let names = |kind: &str, rank: u8| {
            [
                format!("{p}-{kind}-idx{rank}-ubyte.gz"),
                format!("{p}-{kind}-idx{rank}-ubyte"),
                format!("{p}-{kind}.idx{rank}-ubyte"),
            ]
            .to_vec()
        };
        [names("images", 3), names("labels", 1)]
    }
}

/// The default number of training examples held out for validation (the last ones).
pub const DEFAULT_VALIDATION_SIZE: usize = 10_000;

/// Images (`u8`, N x H x W) and their labels, as stored in MNIST-layout IDX files.
///
/// Nothing here assumes 28 x 28 images or ten classes: any pair of IDX files of this layout
/// loads (Fashion-MNIST, KMNIST, EMNIST, ...).
#[derive(Debug, Clone, PartialEq)]
pub struct MnistDataset {
    images: Array3<u8>,
    labels: Array1<u8>,
}

fn find_file(dir: &Path, what: &'static str, candidates: &[String]) -> Result<PathBuf> {
    candidates
        .iter()
        .map(|name| dir.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| DataError::MissingFile {
            dir: dir.to_path_buf(),
            what,
            candidates: candidates.to_vec(),
        })
}

impl MnistDataset {
    /// Loads one split from a directory holding the four IDX files (gzip or not).
    pub fn load(dir: impl AsRef<Path>, split: Split) -> Result<Self> {
        let dir = dir.as_ref();
        let [image_names, label_names] = split.file_candidates();
        let (what_images, what_labels) = match split {
            Split::Train => ("train images", "train labels"),
            Split::Test => ("test images", "test labels"),
        };
        let images = find_file(dir, what_images, &image_names)?;
        let labels = find_file(dir, what_labels, &label_names)?;
        Self::from_files(images, labels)
    }

    /// Loads an image file and a label file, checking their layouts and counts agree.
    pub fn from_files(
        images_path: impl AsRef<Path>,
        labels_path: impl AsRef<Path>,
    ) -> Result<Self> {
        let (images_path, labels_path) = (images_path.as_ref(), labels_path.as_ref());
        let (images, labels) = rayon::join(|| read_idx(images_path), || read_idx(labels_path));
        let images = match images? {
            IdxArray::U8(a) if a.ndim() == 3 => a.into_dimensionality::<Ix3>().ok(),
            other => {
                return Err(DataError::Layout {
                    path: images_path.to_path_buf(),
                    expected: "u8 images of rank 3 (N x H x W)".into(),
                    found: other.describe(),
                });
            }
        };
        let labels = match labels? {
            IdxArray::U8(a) if a.ndim() == 1 => a.into_dimensionality::<Ix1>().ok(),
            other => {
                return Err(DataError::Layout {
                    path: labels_path.to_path_buf(),
                    expected: "u8 labels of rank 1 (N)".into(),
                    found: other.describe(),
                });
            }
        };
        let (Some(images), Some(labels)) = (images, labels) else {
            unreachable!("rank checked above")
        };
        if images.len_of(Axis(0)) != labels.len() {
            return Err(DataError::CountMismatch {
                images_path: images_path.to_path_buf(),
                images: images.len_of(Axis(0)),
                labels_path: labels_path.to_path_buf(),
                labels: labels.len(),
            });
        }
        Self::from_arrays(images, labels)
    }

    /// Builds a dataset from arrays already in memory.
    pub fn from_arrays(images: Array3<u8>, labels: Array1<u8>) -> Result<Self> {
        if images.len_of(Axis(0)) != labels.len() {
            return Err(DataError::InvalidArgument(format!(
                "{} images but {} labels",
                images.len_of(Axis(0)),
                labels.len()
            )));
        }
        let (_, h, w) = images.dim();
        if h == 0 || w == 0 {
            return Err(DataError::InvalidArgument(format!(
                "images must have a non-zero size, got {h} x {w}"
            )));
        }
        Ok(Self {
            images: images.as_standard_layout().into_owned(),
            labels,
        })
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no examples.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Image height and width.
    pub fn image_size(&self) -> (usize, usize) {
        let (_, h, w) = self.images.dim();
        (h, w)
    }

    /// The images, N x H x W, as stored (0 = background, 255 = ink for MNIST).
    pub fn images(&self) -> &Array3<u8> {
        &self.images
    }

    /// The labels.
    pub fn labels(&self) -> &Array1<u8> {
        &self.labels
    }

    /// The images as `f32` in [0, 1], N x H x W, converted in parallel.
    pub fn images_f32(&self) -> Array3<f32> {
        let raw = self.images.as_slice().expect("standard layout");
        let out: Vec<f32> = raw.par_iter().map(|&p| f32::from(p) / 255.0).collect();
        Array3::from_shape_vec(self.images.dim(), out).expect("same shape")
    }

    /// How many examples carry each label, indexed by label (length = largest label + 1).
    pub fn class_counts(&self) -> Vec<usize> {
        let n = self
            .labels
            .iter()
            .map(|&l| usize::from(l) + 1)
            .max()
            .unwrap_or(0);
        let mut counts = vec![0; n];
        for &l in &self.labels {
            counts[usize::from(l)] += 1;
        }
        counts
    }

    /// Checks every label is below `num_classes`, naming the first that is not.
    pub fn check_labels(&self, num_classes: usize) -> Result<()> {
        match self
            .labels
            .iter()
            .position(|&l| usize::from(l) >= num_classes)
        {
            None => Ok(()),
            Some(i) => Err(DataError::InvalidArgument(format!(
                "label {} of example {i} is out of range for {num_classes} classes (0 to {})",
                self.labels[i],
                num_classes.saturating_sub(1)
            ))),
        }
    }

    /// The examples at `indices`, in that order.
    ///
    /// # Panics
    /// If an index is out of range (as slice indexing does).
    pub fn select(&self, indices: &[usize]) -> Self {
        Self {
            images: self.images.select(Axis(0), indices),
            labels: self.labels.select(Axis(0), indices),
        }
    }

    /// Splits off the last `validation` examples: `(train, validation)`. Deterministic, so the
    /// same data always gives the same validation set (the usual MNIST protocol holds out the
    /// last 10,000 training images, [`DEFAULT_VALIDATION_SIZE`]).
    pub fn split_validation(&self, validation: usize) -> Result<(Self, Self)> {
        if validation >= self.len() {
            return Err(DataError::InvalidArgument(format!(
                "cannot hold out {validation} validation examples from {} (at least one must stay for training)",
                self.len()
            )));
        }
        let cut = self.len() - validation;
        let part = |range: std::ops::Range<usize>| Self {
            images: self
                .images
                .slice_axis(Axis(0), range.clone().into())
                .to_owned(),
            labels: self.labels.slice_axis(Axis(0), range.into()).to_owned(),
        };
        Ok((part(0..cut), part(cut..self.len())))
    }
}
