//! Image datasets in MNIST's layout: a `u8` image file of rank 3 (N x H x W, grey) or rank 4
//! (N x H x W x C, C = 1 or 3), and optionally a rank-1 `u8` label file.

use std::path::{Path, PathBuf};

use ndarray::{Array1, Array3, Array4, Axis, Ix1, Ix3, Ix4};
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
    /// they are looked for (images of rank 3, then of rank 4: `-idx4-ubyte`).
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
        [
            [names("images", 3), names("images", 4)].concat(),
            names("labels", 1),
        ]
    }

    /// The canonical file names of this split's images (of `rank` 3 or 4) and labels, gzipped.
    pub fn file_names(self, rank: u8) -> [String; 2] {
        let p = self.prefix();
        [
            format!("{p}-images-idx{rank}-ubyte.gz"),
            format!("{p}-labels-idx1-ubyte.gz"),
        ]
    }
}

/// The default number of training examples held out for validation (the last ones).
pub const DEFAULT_VALIDATION_SIZE: usize = 10_000;

/// Images (`u8`, N x H x W x C with C = 1 or 3) and, when the set has them, their labels, as
/// stored in MNIST-layout IDX files.
///
/// Nothing here assumes 28 x 28 images, grey levels or ten classes: MNIST, Fashion-MNIST,
/// KMNIST, EMNIST and colour sets (rank-4 files, e.g. from `vae import`) all load.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageDataset {
    images: Array4<u8>,
    labels: Option<Array1<u8>>,
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

/// What an image file must hold.
const IMAGE_LAYOUT: &str = "u8 images of rank 3 (N x H x W) or rank 4 (N x H x W x C, C = 1 or 3)";

impl ImageDataset {
    /// Loads one split from a directory holding its IDX files (gzip or not): the images, and
    /// the labels if the directory has them (an unlabelled set loads too).
    pub fn load(dir: impl AsRef<Path>, split: Split) -> Result<Self> {
        let dir = dir.as_ref();
        let [image_names, label_names] = split.file_candidates();
        let what_images = match split {
            Split::Train => "train images",
            Split::Test => "test images",
        };
        let images = find_file(dir, what_images, &image_names)?;
        let labels = label_names
            .iter()
            .map(|name| dir.join(name))
            .find(|p| p.is_file());
        Self::from_files(images, labels)
    }

    /// Loads an image file and, if given, a label file, checking their layouts and counts
    /// agree.
    pub fn from_files(
        images_path: impl AsRef<Path>,
        labels_path: Option<impl AsRef<Path>>,
    ) -> Result<Self> {
        let images_path = images_path.as_ref();
        let labels_path = labels_path.as_ref().map(|p| p.as_ref());
        let (images, labels) = rayon::join(
            || read_idx(images_path),
            || labels_path.map(read_idx).transpose(),
        );
        let layout = |found: &IdxArray| DataError::Layout {
            path: images_path.to_path_buf(),
            expected: IMAGE_LAYOUT.into(),
            found: found.describe(),
        };
        let images = match images? {
            IdxArray::U8(a) if a.ndim() == 3 => a
                .into_dimensionality::<Ix3>()
                .expect("rank checked")
                .insert_axis(Axis(3)),
            IdxArray::U8(a) if a.ndim() == 4 && matches!(a.shape()[3], 1 | 3) => {
                a.into_dimensionality::<Ix4>().expect("rank checked")
            }
            other => return Err(layout(&other)),
        };
        let labels = match (labels?, labels_path) {
            (None, _) | (_, None) => None,
            (Some(IdxArray::U8(a)), Some(_)) if a.ndim() == 1 => {
                Some(a.into_dimensionality::<Ix1>().expect("rank checked"))
            }
            (Some(other), Some(path)) => {
                return Err(DataError::Layout {
                    path: path.to_path_buf(),
                    expected: "u8 labels of rank 1 (N)".into(),
                    found: other.describe(),
                });
            }
        };
        if let (Some(labels), Some(path)) = (&labels, labels_path)
            && images.len_of(Axis(0)) != labels.len()
        {
            return Err(DataError::CountMismatch {
                images_path: images_path.to_path_buf(),
                images: images.len_of(Axis(0)),
                labels_path: path.to_path_buf(),
                labels: labels.len(),
            });
        }
        Self::from_images(images, labels)
    }

    /// Builds a grey-level dataset (N x H x W) with labels from arrays already in memory.
    pub fn from_arrays(images: Array3<u8>, labels: Array1<u8>) -> Result<Self> {
        Self::from_images(images.insert_axis(Axis(3)), Some(labels))
    }

    /// Builds a dataset from images N x H x W x C (C = 1 or 3) and, optionally, labels.
    pub fn from_images(images: Array4<u8>, labels: Option<Array1<u8>>) -> Result<Self> {
        if let Some(labels) = &labels
            && images.len_of(Axis(0)) != labels.len()
        {
            return Err(DataError::InvalidArgument(format!(
                "{} images but {} labels",
                images.len_of(Axis(0)),
                labels.len()
            )));
        }
        let (_, h, w, c) = images.dim();
        if h == 0 || w == 0 {
            return Err(DataError::InvalidArgument(format!(
                "images must have a non-zero size, got {h} x {w}"
            )));
        }
        if !matches!(c, 1 | 3) {
            return Err(DataError::InvalidArgument(format!(
                "images must have 1 (grey) or 3 (RGB) channels, got {c}"
            )));
        }
        Ok(Self {
            images: images.as_standard_layout().into_owned(),
            labels,
        })
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.images.len_of(Axis(0))
    }

    /// Whether there are no examples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Image height and width.
    pub fn image_size(&self) -> (usize, usize) {
        let (_, h, w, _) = self.images.dim();
        (h, w)
    }

    /// Channels per pixel: 1 (grey) or 3 (RGB).
    pub fn channels(&self) -> usize {
        self.images.len_of(Axis(3))
    }

    /// Whether every pixel is 0 or 255: binary images, which a Bernoulli models exactly.
    pub fn is_binary(&self) -> bool {
        self.images.iter().all(|&p| p == 0 || p == 255)
    }

    /// The images, N x H x W x C, as stored (0 = background, 255 = ink for MNIST).
    pub fn images(&self) -> &Array4<u8> {
        &self.images
    }

    /// The labels, when the set has them.
    pub fn labels(&self) -> Option<&Array1<u8>> {
        self.labels.as_ref()
    }

    /// The images as `f32` in [0, 1], N x H x W x C, converted in parallel.
    pub fn images_f32(&self) -> Array4<f32> {
        let raw = self.images.as_slice().expect("standard layout");
        let out: Vec<f32> = raw.par_iter().map(|&p| f32::from(p) / 255.0).collect();
        Array4::from_shape_vec(self.images.dim(), out).expect("same shape")
    }

    /// How many examples carry each label, indexed by label (length = largest label + 1;
    /// empty for an unlabelled set).
    pub fn class_counts(&self) -> Vec<usize> {
        let Some(labels) = &self.labels else {
            return Vec::new();
        };
        let n = labels
            .iter()
            .map(|&l| usize::from(l) + 1)
            .max()
            .unwrap_or(0);
        let mut counts = vec![0; n];
        for &l in labels {
            counts[usize::from(l)] += 1;
        }
        counts
    }

    /// Checks the set has labels and every one is below `num_classes`, naming the first that
    /// is not.
    pub fn check_labels(&self, num_classes: usize) -> Result<()> {
        let Some(labels) = &self.labels else {
            return Err(DataError::InvalidArgument(
                "the data set has no labels (no *-labels-idx1-ubyte file beside its images)".into(),
            ));
        };
        match labels.iter().position(|&l| usize::from(l) >= num_classes) {
            None => Ok(()),
            Some(i) => Err(DataError::InvalidArgument(format!(
                "label {} of example {i} is out of range for {num_classes} classes (0 to {})",
                labels[i],
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
            labels: self.labels.as_ref().map(|l| l.select(Axis(0), indices)),
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
            labels: self
                .labels
                .as_ref()
                .map(|l| l.slice_axis(Axis(0), range.into()).to_owned()),
        };
        Ok((part(0..cut), part(cut..self.len())))
    }
}
