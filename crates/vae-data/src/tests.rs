use std::io::Write;

use ndarray::{Array1, Array3, ArrayD, IxDyn};

use crate::idx::gzip_bytes;
use crate::*;

fn shapes() -> Vec<Vec<usize>> {
    vec![
        vec![],
        vec![5],
        vec![3, 4],
        vec![2, 3, 4],
        vec![2, 1, 3, 2],
        vec![0, 7],
    ]
}

fn arrays_of_every_type(shape: &[usize]) -> Vec<IdxArray> {
    let n: usize = shape.iter().product();
    let sh = IxDyn(shape);
    let k = |i: usize| i as i64 * 37 - 50;
    vec![
        IdxArray::U8(
            ArrayD::from_shape_vec(sh.clone(), (0..n).map(|i| (i * 31 % 256) as u8).collect())
                .unwrap(),
        ),
        IdxArray::I8(
            ArrayD::from_shape_vec(sh.clone(), (0..n).map(|i| k(i) as i8).collect()).unwrap(),
        ),
        IdxArray::I16(
            ArrayD::from_shape_vec(sh.clone(), (0..n).map(|i| (k(i) * 300) as i16).collect())
                .unwrap(),
        ),
        IdxArray::I32(
            ArrayD::from_shape_vec(sh.clone(), (0..n).map(|i| (k(i) * 70_000) as i32).collect())
                .unwrap(),
        ),
        IdxArray::F32(
            ArrayD::from_shape_vec(sh.clone(), (0..n).map(|i| k(i) as f32 * 0.125).collect())
                .unwrap(),
        ),
        IdxArray::F64(
            ArrayD::from_shape_vec(sh, (0..n).map(|i| k(i) as f64 * 1e-3).collect()).unwrap(),
        ),
    ]
}

#[test]
fn idx_round_trips_every_type_and_rank_plain_and_gzip() {
    let dir = tempfile::tempdir().unwrap();
    for shape in shapes() {
        for array in arrays_of_every_type(&shape) {
            for gzip in [false, true] {
                let path = dir.path().join("a.idx");
                write_idx(&path, &array, gzip).unwrap();
                let back = read_idx(&path).unwrap();
                assert_eq!(back, array, "{} gzip={gzip}", array.describe());
                // The same bytes through a reader.
                let bytes = std::fs::read(&path).unwrap();
                assert_eq!(read_idx_from(&bytes[..]).unwrap(), array);
            }
        }
    }
}

#[test]
fn header_layout_is_big_endian_as_specified() {
    let mut buf = Vec::new();
    let a = IdxArray::I16(ArrayD::from_shape_vec(IxDyn(&[2]), vec![1i16, -2]).unwrap());
    write_idx_to(&mut buf, &a).unwrap();
    assert_eq!(buf, [0, 0, 0x0B, 1, 0, 0, 0, 2, 0, 1, 0xFF, 0xFE]);
}

fn header(code: u8, dims: &[u32]) -> Vec<u8> {
    let mut v = vec![0, 0, code, dims.len() as u8];
    for d in dims {
        v.extend_from_slice(&d.to_be_bytes());
    }
    v
}

#[test]
fn truncated_header_is_reported() {
    let err = read_idx_from(&[0u8, 0, 8][..]).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::Truncated {
                part: "header",
                expected: 4,
                found: 3,
                ..
            }
        ),
        "{err}"
    );
    let mut bytes = header(8, &[2, 3]);
    bytes.truncate(9);
    let err = read_idx_from(&bytes[..]).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::Truncated {
                part: "header",
                expected: 12,
                found: 9,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn truncated_body_is_reported() {
    let mut bytes = header(0x0D, &[2, 3]);
    bytes.extend_from_slice(&[0; 20]);
    let err = read_idx_from(&bytes[..]).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::Truncated {
                part: "data",
                expected: 24,
                found: 20,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("truncated data"), "{err}");
}

#[test]
fn trailing_bytes_are_reported() {
    let mut bytes = header(8, &[2]);
    bytes.extend_from_slice(&[1, 2, 3, 4, 5]);
    let err = read_idx_from(&bytes[..]).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::TrailingBytes {
                expected: 2,
                extra: 3,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn wrong_magic_and_unknown_type_are_reported() {
    let err = read_idx_from(&b"PK\x03\x04 not idx"[..]).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::BadMagic {
                found: 0x504b0304,
                ..
            }
        ),
        "{err}"
    );
    let err = read_idx_from(&header(0x0A, &[1])[..]).unwrap_err();
    assert!(
        matches!(err, DataError::UnsupportedType { code: 0x0A, .. }),
        "{err}"
    );
}

#[test]
fn huge_dimensions_fail_cleanly_without_allocating() {
    // The product overflows usize.
    let err = read_idx_from(&header(0x0E, &[u32::MAX; 4])[..]).unwrap_err();
    assert!(matches!(err, DataError::DimensionOverflow { .. }), "{err}");
    // Representable but absent: 16 GiB announced, none present: truncated, not an abort.
    let err = read_idx_from(&header(0x0E, &[1 << 16, 1 << 15])[..]).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::Truncated {
                part: "data",
                found: 0,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn bad_and_truncated_gzip_are_reported() {
    let mut garbage = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3];
    garbage.extend_from_slice(b"this is not deflate data at all");
    let err = read_idx_from(&garbage[..]).unwrap_err();
    assert!(matches!(err, DataError::Gzip { .. }), "{err}");

    let mut good = header(8, &[100]);
    good.extend((0..100).map(|i| i as u8));
    let gz = gzip_bytes(&good);
    let err = read_idx_from(&gz[..gz.len() / 2]).unwrap_err();
    assert!(
        matches!(err, DataError::Gzip { .. } | DataError::Truncated { .. }),
        "{err}"
    );
}

#[test]
fn gzip_is_detected_by_content_not_name() {
    let dir = tempfile::tempdir().unwrap();
    let a = IdxArray::U8(ArrayD::from_shape_vec(IxDyn(&[3]), vec![1, 2, 3]).unwrap());
    // Compressed under a plain name, plain under a .gz name: both read.
    write_idx(dir.path().join("plain-name"), &a, true).unwrap();
    write_idx(dir.path().join("gz-name.gz"), &a, false).unwrap();
    assert_eq!(read_idx(dir.path().join("plain-name")).unwrap(), a);
    assert_eq!(read_idx(dir.path().join("gz-name.gz")).unwrap(), a);
}

#[test]
fn errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken-idx");
    std::fs::File::create(&path)
        .unwrap()
        .write_all(&[0, 0, 8])
        .unwrap();
    let err = read_idx(&path).unwrap_err();
    assert!(err.to_string().contains("broken-idx"), "{err}");
    let err = read_idx(dir.path().join("absent")).unwrap_err();
    assert!(
        matches!(err, DataError::Io { .. }) && err.to_string().contains("absent"),
        "{err}"
    );
}

fn write_dataset(dir: &std::path::Path, prefix: &str, images: &Array3<u8>, labels: &[u8]) {
    write_idx(
        dir.join(format!("{prefix}-images-idx3-ubyte.gz")),
        &IdxArray::U8(images.clone().into_dyn()),
        true,
    )
    .unwrap();
    write_idx(
        dir.join(format!("{prefix}-labels-idx1-ubyte.gz")),
        &IdxArray::U8(Array1::from(labels.to_vec()).into_dyn()),
        true,
    )
    .unwrap();
}

fn toy(n: usize, h: usize, w: usize) -> (Array3<u8>, Vec<u8>) {
    let images = Array3::from_shape_fn((n, h, w), |(k, i, j)| {
        ((k * 7 + i * 3 + j * 11) % 256) as u8
    });
    let labels = (0..n).map(|k| (k % 10) as u8).collect();
    (images, labels)
}

#[test]
fn dataset_loads_any_image_size_and_splits_validation_deterministically() {
    let dir = tempfile::tempdir().unwrap();
    let (images, labels) = toy(30, 5, 9);
    write_dataset(dir.path(), "train", &images, &labels);
    let ds = ImageDataset::load(dir.path(), Split::Train).unwrap();
    assert_eq!((ds.len(), ds.image_size()), (30, (5, 9)));
    assert_eq!(ds.images(), &images.clone().insert_axis(ndarray::Axis(3)));
    assert_eq!(ds.channels(), 1);
    assert_eq!(ds.class_counts(), vec![3; 10]);
    let (train, val) = ds.split_validation(8).unwrap();
    assert_eq!((train.len(), val.len()), (22, 8));
    assert_eq!(val.labels().unwrap().to_vec(), labels[22..].to_vec());
    assert!(ds.split_validation(30).is_err());
    let f = ds.images_f32();
    assert_eq!(f[[1, 2, 3, 0]], f32::from(images[[1, 2, 3]]) / 255.0);
}

#[test]
fn dataset_errors_are_specific() {
    let dir = tempfile::tempdir().unwrap();
    let err = ImageDataset::load(dir.path(), Split::Test).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::MissingFile {
                what: "test images",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("cargo xtask download"), "{err}");

    let (images, labels) = toy(6, 4, 4);
    write_dataset(dir.path(), "t10k", &images, &labels[..5]);
    let err = ImageDataset::load(dir.path(), Split::Test).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::CountMismatch {
                images: 6,
                labels: 5,
                ..
            }
        ),
        "{err}"
    );

    // Labels where images should be: wrong rank.
    std::fs::copy(
        dir.path().join("t10k-labels-idx1-ubyte.gz"),
        dir.path().join("t10k-images-idx3-ubyte.gz"),
    )
    .unwrap();
    let err = ImageDataset::load(dir.path(), Split::Test).unwrap_err();
    assert!(matches!(err, DataError::Layout { .. }), "{err}");
    assert!(err.to_string().contains("rank 3"), "{err}");
}

#[test]
fn colour_and_unlabelled_sets_load_and_bad_layouts_are_named() {
    use ndarray::{Array2, Array4};
    let dir = tempfile::tempdir().unwrap();
    // Rank 4, three channels, no label file: an unlabelled colour set.
    let images = Array4::from_shape_fn((5, 4, 6, 3), |(n, i, j, c)| {
        (n * 50 + i * 6 + j + c * 80) as u8
    });
    write_idx(
        dir.path().join("train-images-idx4-ubyte.gz"),
        &IdxArray::U8(images.clone().into_dyn()),
        true,
    )
    .unwrap();
    let ds = ImageDataset::load(dir.path(), Split::Train).unwrap();
    assert_eq!((ds.len(), ds.image_size(), ds.channels()), (5, (4, 6), 3));
    assert_eq!(ds.images(), &images);
    assert!(ds.labels().is_none() && ds.class_counts().is_empty());
    let err = ds.check_labels(10).unwrap_err().to_string();
    assert!(err.contains("has no labels"), "{err}");
    let (train, val) = ds.split_validation(2).unwrap();
    assert_eq!((train.len(), val.len(), val.labels()), (3, 2, None));
    let batch = ds
        .batches(
            &BatchConfig {
                batch_size: 2,
                ..BatchConfig::default()
            },
            0,
        )
        .unwrap()
        .next()
        .unwrap();
    assert_eq!((batch.images.dim(), batch.labels), ((2, 4, 6, 3), None));
    assert!(!ds.is_binary());

    // Two channels, and a rank-2 image file: each is a layout error naming the file.
    for (name, array) in [
        (
            "t10k-images-idx4-ubyte.gz",
            IdxArray::U8(Array4::<u8>::zeros((2, 3, 3, 2)).into_dyn()),
        ),
        (
            "t10k-images-idx3-ubyte.gz",
            IdxArray::U8(Array2::<u8>::zeros((2, 9)).into_dyn()),
        ),
    ] {
        let other = tempfile::tempdir().unwrap();
        write_idx(other.path().join(name), &array, true).unwrap();
        let err = ImageDataset::load(other.path(), Split::Test).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, DataError::Layout { .. }), "{text}");
        assert!(text.contains(name) && text.contains("C = 1 or 3"), "{text}");
    }
    assert!(ImageDataset::from_images(Array4::zeros((1, 2, 2, 2)), None).is_err());
}

#[test]
fn batches_are_deterministic_per_seed_and_cover_every_example_once() {
    let (images, labels) = toy(103, 3, 3);
    let ds = ImageDataset::from_arrays(images, Array1::from(labels)).unwrap();
    let cfg = BatchConfig {
        batch_size: 10,
        drop_last: false,
        seed: 5,
        ..BatchConfig::default()
    };
    let order = |cfg: &BatchConfig, epoch| -> Vec<usize> {
        ds.batches(cfg, epoch)
            .unwrap()
            .flat_map(|b| b.indices)
            .collect()
    };
    let a = order(&cfg, 0);
    assert_eq!(a, order(&cfg, 0), "same seed and epoch, same order");
    assert_ne!(a, order(&cfg, 1), "a new order each epoch");
    assert_ne!(
        a,
        order(
            &BatchConfig {
                seed: 6,
                ..cfg.clone()
            },
            0
        ),
        "seed matters"
    );
    let mut sorted = a.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        (0..103).collect::<Vec<_>>(),
        "each example exactly once"
    );

    let batches = ds.batches(&cfg, 0).unwrap();
    assert_eq!(batches.len(), 11);
    let dropped = BatchConfig {
        drop_last: true,
        ..cfg.clone()
    };
    assert_eq!(ds.batches(&dropped, 0).unwrap().count(), 10);
    let in_order = BatchConfig {
        shuffle: false,
        ..cfg
    };
    assert_eq!(order(&in_order, 3), (0..103).collect::<Vec<_>>());
    for b in ds.batches(&in_order, 0).unwrap() {
        for (row, &i) in b.indices.iter().enumerate() {
            assert_eq!(b.labels.as_ref().unwrap()[row], ds.labels().unwrap()[i]);
            assert_eq!(
                b.images[[row, 1, 2, 0]],
                f32::from(ds.images()[[i, 1, 2, 0]]) / 255.0
            );
        }
    }
    let zero = BatchConfig {
        batch_size: 0,
        ..BatchConfig::default()
    };
    assert!(matches!(
        ds.batches(&zero, 0),
        Err(DataError::InvalidArgument(_))
    ));
}

#[test]
fn binarisation_is_seeded_and_its_mean_matches_the_pixel_mean() {
    let n = 2000;
    let images = Array3::from_shape_fn((n, 8, 8), |(k, i, j)| ((k + i * 8 + j) * 13 % 256) as u8);
    let ds = ImageDataset::from_arrays(images, Array1::zeros(n)).unwrap();
    let cfg = BatchConfig {
        batch_size: 500,
        binarize: true,
        seed: 1,
        ..BatchConfig::default()
    };
    let mut total = 0.0f64;
    let mut count = 0usize;
    for b in ds.batches(&cfg, 0).unwrap() {
        assert!(b.images.iter().all(|&p| p == 0.0 || p == 1.0));
        total += b.images.iter().map(|&p| f64::from(p)).sum::<f64>();
        count += b.images.len();
    }
    let pixel_mean = ds.images_f32().iter().map(|&p| f64::from(p)).sum::<f64>() / count as f64;
    let bin_mean = total / count as f64;
    // 128,000 Bernoulli draws: standard error below 0.0015.
    assert!(
        (bin_mean - pixel_mean).abs() < 0.006,
        "{bin_mean} vs {pixel_mean}"
    );
    let first = |seed| {
        ds.batches(
            &BatchConfig {
                seed,
                ..cfg.clone()
            },
            0,
        )
        .unwrap()
        .next()
        .unwrap()
        .images
    };
    assert_eq!(first(1), first(1));
    assert_ne!(first(1), first(2));
}

/// Inputs kept from fuzzing (`fuzz/regressions/idx`), replayed as the fuzz target does:
/// the first byte's low bit chooses raw or gzip-wrapped. Each must give a value or an error.
#[test]
fn fuzz_regressions_do_not_panic() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/regressions/idx");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap().flatten() {
        let data = std::fs::read(entry.path()).unwrap();
        let Some((&mode, rest)) = data.split_first() else {
            continue;
        };
        if mode & 1 == 1 {
            let _ = read_idx_from(&gzip_bytes(rest)[..]);
        } else {
            let _ = read_idx_from(rest);
        }
        n += 1;
    }
    assert!(n > 0, "no regression inputs in {}", dir.display());
}
