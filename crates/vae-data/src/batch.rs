//! Seeded, reproducible mini-batches with optional dynamic binarisation.

use ndarray::{Array1, Array4, Axis};
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::dataset::ImageDataset;
use crate::error::{DataError, Result};

/// How to cut a dataset into batches.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchConfig {
    /// Examples per batch (> 0).
    pub batch_size: usize,
    /// Visit examples in a seeded random order (a new order each epoch) instead of in order.
    pub shuffle: bool,
    /// Drop the last batch if it is smaller than `batch_size`.
    pub drop_last: bool,
    /// Dynamic binarisation: each pixel becomes 1 with probability equal to its intensity,
    /// drawn afresh every time the example is seen (the standard protocol for Bernoulli VAEs).
    pub binarize: bool,
    /// Seed of the order and the binarisation noise.
    pub seed: u64,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            batch_size: 128,
            shuffle: true,
            drop_last: true,
            binarize: false,
            seed: 0,
        }
    }
}

/// One batch: images as `f32` (N x H x W x C, in [0, 1], or {0, 1} when binarised), their
/// labels (when the set has them), and their indices in the dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// Pixels.
    pub images: Array4<f32>,
    /// Labels.
    pub labels: Option<Array1<u8>>,
    /// Positions in the dataset.
    pub indices: Vec<usize>,
}

/// An iterator over one epoch's batches; see [`ImageDataset::batches`].
#[derive(Debug)]
pub struct Batches<'a> {
    data: &'a ImageDataset,
    order: Vec<usize>,
    pos: usize,
    config: BatchConfig,
    rng: ChaCha8Rng,
}

impl ImageDataset {
    /// The batches of epoch `epoch`. The same `(config.seed, epoch)` always gives the same
    /// batches, and every example appears exactly once per epoch (bar a dropped last batch).
    pub fn batches(&self, config: &BatchConfig, epoch: u64) -> Result<Batches<'_>> {
        if config.batch_size == 0 {
            return Err(DataError::InvalidArgument(
                "batch size must be at least 1".into(),
            ));
        }
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        rng.set_stream(epoch);
        let mut order: Vec<usize> = (0..self.len()).collect();
        if config.shuffle {
            order.shuffle(&mut rng);
        }
        Ok(Batches {
            data: self,
            order,
            pos: 0,
            config: config.clone(),
            rng,
        })
    }
}

impl Batches<'_> {
    /// Number of batches this epoch yields in all.
    pub fn num_batches(&self) -> usize {
        let (n, b) = (self.order.len(), self.config.batch_size);
        if self.config.drop_last {
            n / b
        } else {
            n.div_ceil(b)
        }
    }
}

impl Iterator for Batches<'_> {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        let remaining = self.order.len() - self.pos;
        let take = remaining.min(self.config.batch_size);
        if take == 0 || (self.config.drop_last && take < self.config.batch_size) {
            return None;
        }
        let indices = self.order[self.pos..self.pos + take].to_vec();
        self.pos += take;
        let mut images = self
            .data
            .images()
            .select(Axis(0), &indices)
            .mapv(|p| f32::from(p) / 255.0);
        if self.config.binarize {
            let rng = &mut self.rng;
            images.mapv_inplace(|p| if rng.random::<f32>() < p { 1.0 } else { 0.0 });
        }
        let labels = self.data.labels().map(|l| l.select(Axis(0), &indices));
        Some(Batch {
            images,
            labels,
            indices,
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let done = self.pos / self.config.batch_size;
        let left = self.num_batches().saturating_sub(done);
        (left, Some(left))
    }
}

impl ExactSizeIterator for Batches<'_> {}
