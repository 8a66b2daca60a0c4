//! Your own images in: a folder of PNGs (grey or RGB, one size) as a train/test split of an
//! [`ImageDataset`], and a data set written back as IDX files.

use std::path::{Path, PathBuf};

use ndarray::{Array1, Array4, Axis};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use crate::dataset::{ImageDataset, Split};
use crate::error::{DataError, Result};
use crate::idx::{IdxArray, write_idx};

/// A folder of PNGs read as a data set: [`import_png_folder`].
#[derive(Debug, Clone)]
pub struct ImportedImages {
    /// The training split.
    pub train: ImageDataset,
    /// The test split.
    pub test: ImageDataset,
    /// The class of each label (the sub-folders' names, sorted), empty when unlabelled.
    pub classes: Vec<String>,
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl Fn(std::io::Error) -> DataError + 'a {
    move |cause| DataError::Io {
        action,
        path: path.to_path_buf(),
        cause,
    }
}

/// The `.png` files directly in `dir`, sorted by name.
fn pngs_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io("read the folder", dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e.eq_ignore_ascii_case("png")))
        .collect();
    files.sort();
    Ok(files)
}

/// One decoded PNG: 8-bit pixels, H x W x C (C = 1 or 3; alpha dropped, palettes expanded).
struct Decoded {
    height: usize,
    width: usize,
    channels: usize,
    pixels: Vec<u8>,
}

fn mode(channels: usize) -> &'static str {
    if channels == 1 { "grey" } else { "RGB" }
}

fn decode(path: &Path) -> Result<Decoded> {
    let bad = |reason: String| DataError::InvalidArgument(format!("{}: {reason}", path.display()));
    let file = std::fs::File::open(path).map_err(io("open", path))?;
    let mut decoder = png::Decoder::new(std::io::BufReader::new(file));
    // 8 bits per sample, palettes and low bit depths expanded.
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder
        .read_info()
        .map_err(|e| bad(format!("not a readable PNG ({e})")))?;
    let mut buf = vec![
        0;
        reader
            .output_buffer_size()
            .ok_or_else(|| bad("too large".into()))?
    ];
    let info = reader
        .next_frame(&mut buf)
        .map_err(|e| bad(format!("not a readable PNG ({e})")))?;
    buf.truncate(info.buffer_size());
    let (stored, channels) = match info.color_type {
        png::ColorType::Grayscale => (1, 1),
        png::ColorType::GrayscaleAlpha => (2, 1),
        png::ColorType::Rgb => (3, 3),
        png::ColorType::Rgba => (4, 3),
        other => return Err(bad(format!("unsupported colour type {other:?}"))),
    };
    let (width, height) = (info.width as usize, info.height as usize);
    let pixels: Vec<u8> = buf
        .chunks_exact(stored)
        .flat_map(|px| px[..channels].to_vec())
        .collect();
    if pixels.len() != width * height * channels {
        return Err(bad("its pixel data does not fill its size".into()));
    }
    Ok(Decoded {
        height,
        width,
        channels,
        pixels,
    })
}

/// Reads a folder of PNGs into a train/test split.
///
/// Images are the `.png` files in `dir`, or in its sub-folders, each sub-folder a class
/// (labels 0, 1, … in the sub-folders' name order); files are taken in name order. Every image
/// must have one size and mode (grey, or RGB; alpha is dropped). A seeded shuffle
/// (`seed`) puts `test_fraction` of them, rounded, at least one, in the test split.
pub fn import_png_folder(dir: &Path, test_fraction: f64, seed: u64) -> Result<ImportedImages> {
    if !(test_fraction > 0.0 && test_fraction < 1.0) {
        return Err(DataError::InvalidArgument(format!(
            "the test fraction must lie strictly between 0 and 1, got {test_fraction}"
        )));
    }
    let mut classes: Vec<(String, PathBuf)> = std::fs::read_dir(dir)
        .map_err(io("read the folder", dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .map(|p| {
            (
                p.file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned(),
                p,
            )
        })
        .collect();
    classes.sort();
    let top = pngs_in(dir)?;
    let (files, labelled): (Vec<(PathBuf, u8)>, bool) = if classes.is_empty() {
        (top.into_iter().map(|p| (p, 0)).collect(), false)
    } else {
        if let Some(stray) = top.first() {
            return Err(DataError::InvalidArgument(format!(
                "{} lies beside class folders: put every image in a class folder, or none",
                stray.display()
            )));
        }
        if classes.len() > 256 {
            return Err(DataError::InvalidArgument(format!(
                "{} has {} class folders; labels are bytes, so at most 256",
                dir.display(),
                classes.len()
            )));
        }
        let mut all = Vec::new();
        for (label, (_, path)) in classes.iter().enumerate() {
            all.extend(pngs_in(path)?.into_iter().map(|p| (p, label as u8)));
        }
        (all, true)
    };
    if files.len() < 2 {
        return Err(DataError::InvalidArgument(format!(
            "{} holds {} PNG image(s): a train and a test split need at least 2",
            dir.display(),
            files.len()
        )));
    }
    let first = decode(&files[0].0)?;
    let (h, w, c) = (first.height, first.width, first.channels);
    let mut pixels = Vec::with_capacity(files.len() * h * w * c);
    pixels.extend_from_slice(&first.pixels);
    for (path, _) in &files[1..] {
        let d = decode(path)?;
        if (d.height, d.width, d.channels) != (h, w, c) {
            return Err(DataError::InvalidArgument(format!(
                "{} is {}x{} {}, but {} (the first) is {h}x{w} {}: every image must share one size and mode",
                path.display(),
                d.width,
                d.height,
                mode(d.channels),
                files[0].0.display(),
                mode(c)
            )));
        }
        pixels.extend_from_slice(&d.pixels);
    }
    let images = Array4::from_shape_vec((files.len(), h, w, c), pixels)
        .expect("every image checked to have this size");
    let labels = Array1::from_iter(files.iter().map(|(_, l)| *l));
    let mut order: Vec<usize> = (0..files.len()).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    let n_test = ((files.len() as f64 * test_fraction).round() as usize).clamp(1, files.len() - 1);
    let (test_idx, train_idx) = order.split_at(n_test);
    let part = |idx: &[usize]| {
        let mut idx = idx.to_vec();
        idx.sort_unstable();
        ImageDataset::from_images(
            images.select(Axis(0), &idx),
            labelled.then(|| labels.select(Axis(0), &idx)),
        )
    };
    Ok(ImportedImages {
        train: part(train_idx)?,
        test: part(test_idx)?,
        classes: classes.into_iter().map(|(name, _)| name).collect(),
    })
}

impl ImageDataset {
    /// Writes the set as `split`'s IDX files in `dir` (gzipped, atomically): images of rank 3
    /// when grey, rank 4 when colour (`-idx4-ubyte`), and the labels when it has them. Returns
    /// the paths written.
    pub fn save(&self, dir: impl AsRef<Path>, split: Split) -> Result<Vec<PathBuf>> {
        let dir = dir.as_ref();
        let colour = self.channels() == 3;
        let [images_name, labels_name] = split.file_names(if colour { 4 } else { 3 });
        let images = if colour {
            IdxArray::U8(self.images().clone().into_dyn())
        } else {
            IdxArray::U8(self.images().index_axis(Axis(3), 0).to_owned().into_dyn())
        };
        let mut written = vec![dir.join(images_name)];
        write_idx(&written[0], &images, true)?;
        if let Some(labels) = self.labels() {
            written.push(dir.join(labels_name));
            write_idx(&written[1], &IdxArray::U8(labels.clone().into_dyn()), true)?;
        }
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes an 8-bit PNG of `w` x `h` with `color` samples from `f(i, j, c)`.
    fn write_png(
        path: &Path,
        w: u32,
        h: u32,
        color: png::ColorType,
        f: impl Fn(u32, u32, u32) -> u8,
    ) {
        let c = match color {
            png::ColorType::Grayscale => 1,
            png::ColorType::Rgb => 3,
            png::ColorType::Rgba => 4,
            _ => unreachable!(),
        };
        let data: Vec<u8> = (0..h)
            .flat_map(|i| (0..w).flat_map(move |j| (0..c).map(move |k| (i, j, k))))
            .map(|(i, j, k)| f(i, j, k))
            .collect();
        let file = std::fs::File::create(path).unwrap();
        let mut enc = png::Encoder::new(std::io::BufWriter::new(file), w, h);
        enc.set_color(color);
        enc.set_depth(png::BitDepth::Eight);
        enc.write_header().unwrap().write_image_data(&data).unwrap();
    }

    #[test]
    fn class_folders_become_labels_and_the_split_is_seeded() {
        let dir = tempfile::tempdir().unwrap();
        for (class, n) in [("cats", 6), ("dogs", 4)] {
            std::fs::create_dir(dir.path().join(class)).unwrap();
            for k in 0..n {
                // RGBA: the alpha channel is dropped.
                write_png(
                    &dir.path().join(class).join(format!("{k}.png")),
                    5,
                    3,
                    png::ColorType::Rgba,
                    |i, j, c| (k * 20 + i * 5 + j + c * 60) as u8,
                );
            }
        }
        let a = import_png_folder(dir.path(), 0.3, 7).unwrap();
        assert_eq!(a.classes, ["cats", "dogs"]);
        assert_eq!((a.train.len(), a.test.len()), (7, 3));
        assert_eq!((a.train.image_size(), a.train.channels()), ((3, 5), 3));
        let counts: Vec<usize> = [a.train.class_counts(), a.test.class_counts()]
            .iter()
            .map(|c| c.iter().sum())
            .collect();
        assert_eq!(counts, [7, 3]);
        // The same seed gives the same split; pixels arrive in H x W x C order.
        let b = import_png_folder(dir.path(), 0.3, 7).unwrap();
        assert_eq!(a.test, b.test);
        let img = a.train.images();
        assert_eq!(img[[0, 1, 2, 1]] as u32 % 20, (5 + 2 + 60) % 20);
        // Written and loaded back, grey or colour, the set is the same.
        let out = tempfile::tempdir().unwrap();
        a.train.save(out.path(), Split::Train).unwrap();
        a.test.save(out.path(), Split::Test).unwrap();
        assert_eq!(ImageDataset::load(out.path(), Split::Test).unwrap(), a.test);
    }

    #[test]
    fn unlabelled_grey_folders_import_and_bad_folders_are_named() {
        let dir = tempfile::tempdir().unwrap();
        for k in 0..4 {
            write_png(
                &dir.path().join(format!("{k}.png")),
                4,
                4,
                png::ColorType::Grayscale,
                |i, j, _| (k * 40 + i * 4 + j) as u8,
            );
        }
        let a = import_png_folder(dir.path(), 0.25, 0).unwrap();
        assert!(a.classes.is_empty() && a.train.labels().is_none());
        assert_eq!((a.train.len(), a.test.len(), a.train.channels()), (3, 1, 1));
        let out = tempfile::tempdir().unwrap();
        let written = a.train.save(out.path(), Split::Train).unwrap();
        assert_eq!(written.len(), 1, "no label file for an unlabelled set");
        assert_eq!(
            ImageDataset::load(out.path(), Split::Train).unwrap(),
            a.train
        );

        // Mixed sizes, mixed modes: the odd file is named.
        write_png(
            &dir.path().join("9.png"),
            5,
            4,
            png::ColorType::Grayscale,
            |_, _, _| 0,
        );
        let err = import_png_folder(dir.path(), 0.25, 0)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("9.png is 5x4 grey") && err.contains("4x4 grey"),
            "{err}"
        );
        write_png(
            &dir.path().join("9.png"),
            4,
            4,
            png::ColorType::Rgb,
            |_, _, _| 0,
        );
        let err = import_png_folder(dir.path(), 0.25, 0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("9.png is 4x4 RGB"), "{err}");
        // An empty folder, and a file that is not a PNG.
        let empty = tempfile::tempdir().unwrap();
        let err = import_png_folder(empty.path(), 0.25, 0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("holds 0 PNG image(s)"), "{err}");
        std::fs::write(dir.path().join("9.png"), b"not a png").unwrap();
        let err = import_png_folder(dir.path(), 0.25, 0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("9.png: not a readable PNG"), "{err}");
        assert!(import_png_folder(dir.path(), 1.0, 0).is_err());
    }
}
