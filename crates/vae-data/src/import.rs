//! Your own images in: a folder of PNGs (grey or RGB, one size) as a train/test split of an
//! [`ImageDataset`], and a data set written back as IDX files.
//!
//! The folder may come from anywhere, so nothing is allocated from what a file claims before it
//! is checked: every header is read first, each image's size is held to
//! [`ImportOptions::max_pixels`] and the decoded set's to [`ImportOptions::max_set_bytes`],
//! and only then is anything decoded, into buffers reserved fallibly.

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

/// How [`import_png_folder`] reads a folder.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportOptions {
    /// Share of the images put in the test split, strictly between 0 and 1.
    pub test_fraction: f64,
    /// Seed of the shuffle that picks the test images.
    pub seed: u64,
    /// The colour that transparent pixels are composited onto (RGB; grey images take its
    /// luma): white by default, as image viewers show transparency.
    pub background: [u8; 3],
    /// The most pixels one image may have, checked from its header before it is decoded.
    pub max_pixels: u64,
    /// The most bytes the decoded set may take (one byte per pixel and channel), summed from
    /// every header before any image is decoded.
    pub max_set_bytes: u64,
}

/// [`ImportOptions::max_pixels`]' default: 4096 x 4096, more than the images of common
/// image sets (ImageNet, CelebA-HQ, FFHQ).
pub const DEFAULT_MAX_PIXELS: u64 = 4096 * 4096;

impl Default for ImportOptions {
    fn default() -> Self {
        Self {
            test_fraction: 0.1,
            seed: 0,
            background: [255; 3],
            max_pixels: DEFAULT_MAX_PIXELS,
            max_set_bytes: default_max_set_bytes(),
        }
    }
}

/// [`ImportOptions::max_set_bytes`]' default: a third of the memory available now
/// (`MemAvailable` in `/proc/meminfo`; 4 GiB where it cannot be read), since an import holds
/// the decoded set up to three times while it splits and writes it.
pub fn default_max_set_bytes() -> u64 {
    available_memory().unwrap_or(12 << 30) / 3
}

fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl Fn(std::io::Error) -> DataError + 'a {
    move |cause| DataError::Io {
        action,
        path: path.to_path_buf(),
        cause,
    }
}

/// Whether a folder entry is left out: hidden files and folders (`.DS_Store`, `._x.png`,
/// `.git`) and the `__MACOSX` folders that macOS archives carry.
fn skipped(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_none_or(|n| n.starts_with('.') || n == "__MACOSX")
}

/// The entries of `dir` that are not [`skipped`], sorted by name.
fn entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io("read the folder", dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| !skipped(p))
        .collect();
    paths.sort();
    Ok(paths)
}

/// The `.png` files directly in `dir`, sorted by name.
fn pngs_in(dir: &Path) -> Result<Vec<PathBuf>> {
    Ok(entries(dir)?
        .into_iter()
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e.eq_ignore_ascii_case("png")))
        .collect())
}

fn mode(channels: usize) -> &'static str {
    if channels == 1 { "grey" } else { "RGB" }
}

fn bad(path: &Path, reason: impl std::fmt::Display) -> DataError {
    DataError::InvalidArgument(format!("{}: {reason}", path.display()))
}

/// What a PNG's header says: its size and the channels it imports as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    width: usize,
    height: usize,
    /// 1 (grey: grey files, and palette files whose colours are all grey) or 3 (RGB).
    channels: usize,
}

impl Header {
    /// Bytes of the decoded image.
    fn bytes(self) -> Option<u64> {
        (self.width as u64)
            .checked_mul(self.height as u64)?
            .checked_mul(self.channels as u64)
    }
}

/// Opens `path` and reads its PNG header (the chunks before the pixel data), with 8-bit
/// samples, palettes and low bit depths expanded; checks its size against `max_pixels`.
fn read_header(
    path: &Path,
    max_pixels: u64,
) -> Result<(png::Reader<std::io::BufReader<std::fs::File>>, Header)> {
    let file = std::fs::File::open(path).map_err(io("open", path))?;
    let mut decoder = png::Decoder::new(std::io::BufReader::new(file));
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let reader = decoder
        .read_info()
        .map_err(|e| bad(path, format_args!("not a readable PNG ({e})")))?;
    let info = reader.info();
    let (width, height) = (info.width, info.height);
    let pixels = u64::from(width) * u64::from(height);
    if pixels > max_pixels {
        return Err(bad(
            path,
            format_args!(
                "its header says {width}x{height} pixels ({pixels}), over the limit of {max_pixels} per image: if the image is real, raise the limit (vae import --max-pixels)"
            ),
        ));
    }
    let channels = match info.color_type {
        png::ColorType::Grayscale | png::ColorType::GrayscaleAlpha => 1,
        png::ColorType::Rgb | png::ColorType::Rgba => 3,
        png::ColorType::Indexed => {
            let palette = info.palette.as_deref().unwrap_or_default();
            let grey = palette
                .chunks_exact(3)
                .all(|c| c[0] == c[1] && c[1] == c[2]);
            if grey { 1 } else { 3 }
        }
    };
    let header = Header {
        width: width as usize,
        height: height as usize,
        channels,
    };
    Ok((reader, header))
}

/// `value` composited over `background` with opacity `alpha` (8-bit, rounded).
fn over(value: u8, alpha: u8, background: u8) -> u8 {
    let (v, a, b) = (u32::from(value), u32::from(alpha), u32::from(background));
    ((v * a + b * (255 - a) + 127) / 255) as u8
}

/// Decodes `path`, whose header was `expected`, appending its H x W x C pixels to `out`:
/// transparent pixels composited over `background`.
fn decode_into(
    path: &Path,
    expected: Header,
    max_pixels: u64,
    background: [u8; 3],
    out: &mut Vec<u8>,
) -> Result<()> {
    let (mut reader, header) = read_header(path, max_pixels)?;
    if header != expected {
        return Err(bad(path, "it changed while it was being imported"));
    }
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| bad(path, "its decoded size overflows"))?;
    let mut buf = Vec::new();
    buf.try_reserve_exact(size).map_err(|_| {
        bad(
            path,
            format_args!("cannot allocate {size} bytes to decode it"),
        )
    })?;
    buf.resize(size, 0);
    let info = reader
        .next_frame(&mut buf)
        .map_err(|e| bad(path, format_args!("not a readable PNG ({e})")))?;
    buf.truncate(info.buffer_size());
    let stored = match info.color_type {
        png::ColorType::Grayscale => 1,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        other => return Err(bad(path, format_args!("unsupported colour type {other:?}"))),
    };
    let pixels = header.width * header.height;
    if buf.len() != pixels * stored {
        return Err(bad(path, "its pixel data does not fill its size"));
    }
    let grey_background = ((299 * u32::from(background[0])
        + 587 * u32::from(background[1])
        + 114 * u32::from(background[2])
        + 500)
        / 1000) as u8;
    for px in buf.chunks_exact(stored) {
        // Grey output takes the first channel: grey files, or palettes of grey colours.
        let (colour, alpha) = match stored {
            1 | 3 => (px, 255),
            _ => (&px[..stored - 1], px[stored - 1]),
        };
        if header.channels == 1 {
            out.push(over(colour[0], alpha, grey_background));
        } else {
            out.extend((0..3).map(|c| over(colour[c], alpha, background[c])));
        }
    }
    Ok(())
}

/// Reads a folder of PNGs into a train/test split.
///
/// Images are the `.png` files in `dir`, or in its sub-folders, each sub-folder a class
/// (labels 0, 1, … in the sub-folders' name order); files are taken in name order, and hidden
/// files and folders (and `__MACOSX`) are left out. Every image must have one size and mode:
/// grey (grey files, and palette files whose colours are all grey), or RGB; transparent pixels
/// are composited over [`ImportOptions::background`]. A seeded shuffle puts
/// [`ImportOptions::test_fraction`] of them, rounded, at least one, in the test split.
///
/// ```no_run
/// use vae_data::{ImportOptions, import_png_folder};
/// let set = import_png_folder("my-drawings".as_ref(), &ImportOptions::default())?;
/// println!("{} training images", set.train.len());
/// # Ok::<(), vae_data::DataError>(())
/// ```
pub fn import_png_folder(dir: &Path, options: &ImportOptions) -> Result<ImportedImages> {
    let test_fraction = options.test_fraction;
    if !(test_fraction > 0.0 && test_fraction < 1.0) {
        return Err(DataError::InvalidArgument(format!(
            "the test fraction must lie strictly between 0 and 1, got {test_fraction}"
        )));
    }
    let all = entries(dir)?;
    let classes: Vec<(String, PathBuf)> = all
        .iter()
        .filter(|p| p.is_dir())
        .map(|p| {
            (
                p.file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned(),
                p.clone(),
            )
        })
        .collect();
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

    // Every header first: sizes and modes agree, and the set fits, before anything is decoded.
    let mut first = None;
    let mut total: u64 = 0;
    for (path, _) in &files {
        let h = read_header(path, options.max_pixels)?.1;
        let first = *first.get_or_insert(h);
        if h != first {
            return Err(DataError::InvalidArgument(format!(
                "{} is {}x{} {}, but {} (the first) is {}x{} {}: every image must share one size and mode",
                path.display(),
                h.width,
                h.height,
                mode(h.channels),
                files[0].0.display(),
                first.width,
                first.height,
                mode(first.channels)
            )));
        }
        total = h
            .bytes()
            .and_then(|b| total.checked_add(b))
            .unwrap_or(u64::MAX);
    }
    if total > options.max_set_bytes {
        return Err(DataError::InvalidArgument(format!(
            "the {} images in {} decode to {total} bytes, over the limit of {} for the whole set: import fewer images, or raise the limit if the memory is there (vae import --max-set-size)",
            files.len(),
            dir.display(),
            options.max_set_bytes
        )));
    }
    let first = first.expect("at least 2 files");
    let mut pixels = Vec::new();
    usize::try_from(total)
        .ok()
        .and_then(|n| pixels.try_reserve_exact(n).ok())
        .ok_or_else(|| {
            DataError::InvalidArgument(format!(
                "cannot allocate the {total} bytes that the images in {} decode to: import fewer images",
                dir.display()
            ))
        })?;
    for (path, _) in &files {
        decode_into(
            path,
            first,
            options.max_pixels,
            options.background,
            &mut pixels,
        )?;
    }
    let (h, w, c) = (first.height, first.width, first.channels);
    let images = Array4::from_shape_vec((files.len(), h, w, c), pixels)
        .expect("every image checked to have this size");
    let labels = Array1::from_iter(files.iter().map(|(_, l)| *l));
    let mut order: Vec<usize> = (0..files.len()).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(options.seed));
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

    fn opts(test_fraction: f64, seed: u64) -> ImportOptions {
        ImportOptions {
            test_fraction,
            seed,
            ..ImportOptions::default()
        }
    }

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
                // RGBA, opaque: the colours are kept as they are.
                write_png(
                    &dir.path().join(class).join(format!("{k}.png")),
                    5,
                    3,
                    png::ColorType::Rgba,
                    |i, j, c| {
                        if c == 3 {
                            255
                        } else {
                            (k * 20 + i * 5 + j + c * 60) as u8
                        }
                    },
                );
            }
        }
        let a = import_png_folder(dir.path(), &opts(0.3, 7)).unwrap();
        assert_eq!(a.classes, ["cats", "dogs"]);
        assert_eq!((a.train.len(), a.test.len()), (7, 3));
        assert_eq!((a.train.image_size(), a.train.channels()), ((3, 5), 3));
        let counts: Vec<usize> = [a.train.class_counts(), a.test.class_counts()]
            .iter()
            .map(|c| c.iter().sum())
            .collect();
        assert_eq!(counts, [7, 3]);
        // The same seed gives the same split; pixels arrive in H x W x C order.
        let b = import_png_folder(dir.path(), &opts(0.3, 7)).unwrap();
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
        let a = import_png_folder(dir.path(), &opts(0.25, 0)).unwrap();
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
        let err = import_png_folder(dir.path(), &opts(0.25, 0))
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
        let err = import_png_folder(dir.path(), &opts(0.25, 0))
            .unwrap_err()
            .to_string();
        assert!(err.contains("9.png is 4x4 RGB"), "{err}");
        // An empty folder, and a file that is not a PNG.
        let empty = tempfile::tempdir().unwrap();
        let err = import_png_folder(empty.path(), &opts(0.25, 0))
            .unwrap_err()
            .to_string();
        assert!(err.contains("holds 0 PNG image(s)"), "{err}");
        std::fs::write(dir.path().join("9.png"), b"not a png").unwrap();
        let err = import_png_folder(dir.path(), &opts(0.25, 0))
            .unwrap_err()
            .to_string();
        assert!(err.contains("9.png: not a readable PNG"), "{err}");
        assert!(import_png_folder(dir.path(), &opts(1.0, 0)).is_err());
    }

    /// A PNG of `w` x `h` with 8-bit `data` in `color`, with a palette when indexed.
    fn write_raw(path: &Path, w: u32, h: u32, color: png::ColorType, palette: &[u8], data: &[u8]) {
        let file = std::fs::File::create(path).unwrap();
        let mut enc = png::Encoder::new(std::io::BufWriter::new(file), w, h);
        enc.set_color(color);
        enc.set_depth(png::BitDepth::Eight);
        if !palette.is_empty() {
            enc.set_palette(palette.to_vec());
        }
        enc.write_header().unwrap().write_image_data(data).unwrap();
    }

    #[test]
    fn alpha_is_composited_palette_grey_stays_grey_and_hidden_files_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        // Black strokes on a transparent background (whose hidden colour is black too): over
        // white they show; a half-transparent grey mixes.
        for k in 0..3 {
            let px: Vec<u8> = [
                [0, 0, 0, 0],
                [0, 0, 0, 255],
                [100, 100, 100, 128],
                [0, 0, 0, 0],
            ]
            .concat();
            write_raw(
                &dir.path().join(format!("{k}.png")),
                2,
                2,
                png::ColorType::Rgba,
                &[],
                &px,
            );
        }
        // What macOS and editors leave beside images: skipped, though one is no PNG at all.
        std::fs::write(dir.path().join("._0.png"), b"AppleDouble").unwrap();
        std::fs::create_dir(dir.path().join("__MACOSX")).unwrap();
        std::fs::create_dir(dir.path().join(".thumbs")).unwrap();
        let a = import_png_folder(dir.path(), &opts(0.34, 0)).unwrap();
        assert!(a.classes.is_empty(), "hidden folders are no classes");
        assert_eq!((a.train.len() + a.test.len(), a.train.channels()), (3, 3));
        let img = a.train.images();
        let pixel = |p: usize| [img[[0, p / 2, p % 2, 0]], img[[0, p / 2, p % 2, 1]]];
        assert_eq!(pixel(0), [255, 255], "transparent: the background");
        assert_eq!(pixel(1), [0, 0], "opaque black stays black");
        // 100 * 128/255 + 255 * 127/255 = 177.2
        assert_eq!(pixel(2), [177, 177]);
        // Over black, the transparent pixels are black.
        let black = ImportOptions {
            background: [0; 3],
            ..opts(0.34, 0)
        };
        let b = import_png_folder(dir.path(), &black).unwrap();
        assert_eq!(b.train.images()[[0, 0, 0, 0]], 0);

        // A palette of greys imports grey, beside a grey file; one colour makes it RGB.
        let grey = tempfile::tempdir().unwrap();
        let palette = [0, 0, 0, 128, 128, 128, 255, 255, 255];
        write_raw(
            &grey.path().join("a.png"),
            2,
            1,
            png::ColorType::Indexed,
            &palette,
            &[1, 2],
        );
        write_raw(
            &grey.path().join("b.png"),
            2,
            1,
            png::ColorType::Grayscale,
            &[],
            &[7, 9],
        );
        let g = import_png_folder(grey.path(), &opts(0.5, 0)).unwrap();
        assert_eq!(g.train.channels(), 1);
        let mut values: Vec<u8> = [&g.train, &g.test]
            .iter()
            .flat_map(|s| s.images().iter().copied().collect::<Vec<_>>())
            .collect();
        values.sort_unstable();
        assert_eq!(values, [7, 9, 128, 255]);
        let coloured = [0, 0, 0, 255, 0, 0];
        write_raw(
            &grey.path().join("a.png"),
            2,
            1,
            png::ColorType::Indexed,
            &coloured,
            &[1, 0],
        );
        let err = import_png_folder(grey.path(), &opts(0.5, 0))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("b.png is 2x1 grey, but") && err.contains("2x1 RGB"),
            "{err}"
        );
    }

    /// A PNG whose header claims `w` x `h` grey pixels, with no pixel data after it.
    fn header_only(path: &Path, w: u32, h: u32) {
        let mut ihdr = b"IHDR".to_vec();
        ihdr.extend_from_slice(&w.to_be_bytes());
        ihdr.extend_from_slice(&h.to_be_bytes());
        ihdr.extend_from_slice(&[8, 0, 0, 0, 0]);
        let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
        bytes.extend_from_slice(&13u32.to_be_bytes());
        bytes.extend_from_slice(&ihdr);
        bytes.extend_from_slice(&png_crc(&ihdr).to_be_bytes());
        // An empty IDAT: the header is all there is.
        bytes.extend_from_slice(&0u32.to_be_bytes());
        bytes.extend_from_slice(b"IDAT");
        bytes.extend_from_slice(&png_crc(b"IDAT").to_be_bytes());
        std::fs::write(path, bytes).unwrap();
    }

    fn png_crc(data: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    0xEDB8_8320 ^ (crc >> 1)
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    #[test]
    fn sizes_are_checked_from_the_headers_before_anything_is_decoded() {
        let dir = tempfile::tempdir().unwrap();
        for k in 0..3 {
            header_only(&dir.path().join(format!("{k}.png")), 60_000, 60_000);
        }
        let err = import_png_folder(dir.path(), &opts(0.3, 0))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("0.png: its header says 60000x60000 pixels (3600000000), over the limit of 16777216 per image"),
            "{err}"
        );
        // Within the per-image limit, over the set's: refused from the headers alone (these
        // files hold no pixels, so decoding would fail with another message).
        let options = ImportOptions {
            max_pixels: 60_000 * 60_000,
            max_set_bytes: 1 << 30,
            ..opts(0.3, 0)
        };
        let err = import_png_folder(dir.path(), &options)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("the 3 images in")
                && err.contains("decode to 10800000000 bytes, over the limit of 1073741824"),
            "{err}"
        );
        assert!(default_max_set_bytes() > 0);
    }
}
