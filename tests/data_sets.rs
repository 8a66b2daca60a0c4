//! Grey-level and colour data with their likelihoods, and your own images in: a colour set
//! trains, evaluates in bits per dimension and draws colour pictures; a folder of PNGs imports;
//! bad data is one sentence and a non-zero exit.

mod common;

use std::path::Path;

use common::*;
use vae_data::{IdxArray, write_idx};

fn ok(args: &[&str]) -> (String, String) {
    let out = vae(args);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{args:?}\n{stdout}\n{stderr}");
    (stdout, stderr)
}

/// A small model and budget: `epochs` epochs, `validation` images held out, then `extra`.
fn small(
    epochs: &'static str,
    validation: &'static str,
    extra: &[&'static str],
) -> Vec<&'static str> {
    let model = ["--latent-dim", "4", "--channels", "8,16"];
    let budget = ["--epochs", epochs, "--validation-size", validation];
    [&QUICK[..], &model[..], &budget[..], extra].concat()
}

#[test]
fn a_colour_set_trains_with_the_logistic_likelihood_and_draws_colour_pictures() {
    let data = tempfile::tempdir().unwrap();
    synthetic_colour(data.path(), 64, 16, 8);
    let runs = tempfile::tempdir().unwrap();
    let run = runs.path().join("r");
    let (d, r) = (data.path().to_str().unwrap(), run.to_str().unwrap());
    let mut args = vec!["train", "--data", d, "--out", r];
    args.extend(small("2", "16", &[]));
    let (_, stderr) = ok(&args);
    assert!(
        stderr.contains("likelihood: logistic (5 components), the default for colour data"),
        "{stderr}"
    );
    for picture in ["samples.png", "reconstructions.png", "pseudo_inputs.png"] {
        let (_, _, color, _) = read_any_png(&run.join(picture));
        assert_eq!(color, png::ColorType::Rgb, "{picture}");
    }
    // Bits per dimension: −log p(x) / (8·8·3·ln 2), for the IW bound and the ELBO.
    let (stdout, _) = ok(&[
        "eval",
        "--run",
        r,
        "--data",
        d,
        "--iw-samples",
        "20",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["likelihood"], "logistic");
    let nll = v["iw_nll"].as_f64().unwrap();
    let bits = v["iw_bits_per_dim"].as_f64().unwrap();
    assert!((bits - nll / (192.0 * std::f64::consts::LN_2)).abs() < 1e-9);
    assert!(
        bits > 0.0 && bits < 8.0,
        "at most 8 bits for 8-bit data: {bits}"
    );
    let (stdout, _) = ok(&["eval", "--run", r, "--data", d, "--iw-samples", "5"]);
    assert!(stdout.contains("bits/dim"), "{stdout}");
    // Samples show the mean, or with --draw images drawn on the 256 levels.
    let out = run.join("drawn.png");
    ok(&[
        "sample",
        "--run",
        r,
        "-n",
        "4",
        "--draw",
        "--out",
        out.to_str().unwrap(),
    ]);
    let (_, _, color, px) = read_any_png(&out);
    assert_eq!(color, png::ColorType::Rgb);
    assert!(
        px.iter().any(|&p| p != 40 && p != 0 && p != 255),
        "grey levels drawn"
    );

    // A binary grey set keeps the Bernoulli; a grey-level one gets the logistic; either can
    // be named.
    let grey = tempfile::tempdir().unwrap();
    synthetic_mnist(grey.path(), 64, 8, 8);
    let g = grey.path().to_str().unwrap();
    let mut args = vec!["train", "--data", g, "--out"];
    let bern = runs.path().join("bern");
    args.push(bern.to_str().unwrap());
    args.extend(small("1", "16", &[]));
    let (_, stderr) = ok(&args);
    assert!(
        !stderr.contains("likelihood:"),
        "binary data keeps the Bernoulli: {stderr}"
    );
    let cb = runs.path().join("cb");
    let mut args = vec!["train", "--data", g, "--out", cb.to_str().unwrap()];
    args.extend(small("1", "16", &["--likelihood", "continuous-bernoulli"]));
    ok(&args);
    let (stdout, _) = ok(&[
        "eval",
        "--run",
        cb.to_str().unwrap(),
        "--data",
        g,
        "--iw-samples",
        "0",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["likelihood"], "continuous-bernoulli");
    assert!(
        v["elbo_bits_per_dim"].is_null(),
        "a density has no bits per dimension"
    );
}

#[test]
fn a_grey_level_set_like_fashion_mnist_gets_the_logistic_likelihood_and_bits_per_dim() {
    // As `cargo xtask download --dataset fashion-mnist` lays it out: grey levels, not binary.
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("fashion-mnist");
    std::fs::create_dir(&data).unwrap();
    let make = |n: usize, offset: usize| {
        let images = ndarray::Array3::from_shape_fn((n, 8, 8), |(k, i, j)| {
            (((k + offset) * 29 + i * 31 + j * 7) % 256) as u8
        });
        let labels = ndarray::Array1::from_iter((0..n).map(|k| (k % 10) as u8));
        vae_data::ImageDataset::from_arrays(images, labels).unwrap()
    };
    make(64, 0).save(&data, vae_data::Split::Train).unwrap();
    make(16, 500).save(&data, vae_data::Split::Test).unwrap();
    let run = root.path().join("run");
    let (d, r) = (data.to_str().unwrap(), run.to_str().unwrap());
    let mut args = vec!["train", "--data", d, "--out", r];
    args.extend(small("1", "16", &[]));
    let (_, stderr) = ok(&args);
    assert!(
        stderr.contains("likelihood: logistic (5 components), the default for grey-level data"),
        "{stderr}"
    );
    let (stdout, _) = ok(&["eval", "--run", r, "--data", d, "--iw-samples", "10"]);
    assert!(stdout.contains("bits/dim (importance-weighted"), "{stdout}");
    // The test images are scored as they are, not binarised: the same figure twice.
    let (again, _) = ok(&["eval", "--run", r, "--data", d, "--iw-samples", "10"]);
    assert_eq!(stdout, again);
}

/// Writes a grey PNG of `w` x `h`.
fn grey_png(path: &Path, w: u32, h: u32, level: u8) {
    let file = std::fs::File::create(path).unwrap();
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), w, h);
    enc.set_color(png::ColorType::Grayscale);
    enc.set_depth(png::BitDepth::Eight);
    let px: Vec<u8> = (0..w * h).map(|i| level.wrapping_add(i as u8)).collect();
    enc.write_header().unwrap().write_image_data(&px).unwrap();
}

#[test]
fn a_folder_of_pngs_imports_and_trains() {
    let pics = tempfile::tempdir().unwrap();
    for class in ["a", "b"] {
        std::fs::create_dir(pics.path().join(class)).unwrap();
        for k in 0..20u8 {
            grey_png(
                &pics.path().join(class).join(format!("{k:02}.png")),
                8,
                8,
                (k * 9).wrapping_add(if class == "a" { 0 } else { 100 }),
            );
        }
    }
    let out = tempfile::tempdir().unwrap();
    let data = out.path().join("mine");
    let (stdout, _) = ok(&[
        "import",
        pics.path().to_str().unwrap(),
        "--out",
        data.to_str().unwrap(),
        "--test-fraction",
        "0.2",
    ]);
    assert!(
        stdout
            .contains("imported 32 training and 8 test images (8x8 grey; 2 classes: 0 = a, 1 = b)"),
        "{stdout}"
    );
    let run = out.path().join("run");
    let mut args = vec![
        "train",
        "--data",
        data.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
    ];
    args.extend(small("1", "8", &[]));
    let (_, stderr) = ok(&args);
    assert!(stderr.contains("likelihood: logistic"), "{stderr}");
    assert!(run.join("samples.png").is_file());
}

#[test]
fn bad_data_is_one_sentence_and_a_non_zero_exit() {
    let root = tempfile::tempdir().unwrap();
    let case = |name: &str| {
        let d = root.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        d
    };
    // Images of two channels, and an image file of rank 2.
    let two = case("two-channels");
    write_idx(
        two.join("train-images-idx4-ubyte.gz"),
        &IdxArray::U8(ndarray::Array4::<u8>::zeros((4, 8, 8, 2)).into_dyn()),
        true,
    )
    .unwrap();
    let flat = case("rank-2");
    write_idx(
        flat.join("train-images-idx3-ubyte.gz"),
        &IdxArray::U8(ndarray::Array2::<u8>::zeros((4, 64)).into_dyn()),
        true,
    )
    .unwrap();
    // A label file that does not match its images.
    let mismatch = case("labels");
    synthetic_mnist(&mismatch, 20, 4, 8);
    write_idx(
        mismatch.join("train-labels-idx1-ubyte.gz"),
        &IdxArray::U8(ndarray::Array1::<u8>::zeros(7).into_dyn()),
        true,
    )
    .unwrap();
    // PNG folders: mixed sizes, and empty.
    let mixed = case("mixed");
    grey_png(&mixed.join("a.png"), 8, 8, 0);
    grey_png(&mixed.join("b.png"), 9, 8, 0);
    let empty = case("empty");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let cases: Vec<(Vec<String>, String)> = vec![
        (
            vec!["train".into(), "--data".into(), s(&two)],
            "found u8 array of shape [4, 8, 8, 2]".into(),
        ),
        (
            vec!["train".into(), "--data".into(), s(&flat)],
            "expected u8 images of rank 3 (N x H x W) or rank 4 (N x H x W x C, C = 1 or 3)".into(),
        ),
        (
            vec!["train".into(), "--data".into(), s(&mismatch)],
            "holds 20 images but".into(),
        ),
        (
            vec![
                "import".into(),
                s(&mixed),
                "--out".into(),
                s(&root.path().join("o1")),
            ],
            "b.png is 9x8 grey, but".into(),
        ),
        (
            vec![
                "import".into(),
                s(&empty),
                "--out".into(),
                s(&root.path().join("o2")),
            ],
            "holds 0 PNG image(s)".into(),
        ),
    ];
    for (args, needle) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = vae(&args);
        let stderr = text(&out).1;
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(
            stderr.contains(&needle),
            "{args:?}: wanted {needle:?} in {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one sentence: {stderr}");
    }
}
