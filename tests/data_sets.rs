//! Grey-level and colour data with their likelihoods, and your own images in: a colour set
//! trains, evaluates in bits per dimension and draws colour pictures; a folder of PNGs imports;
//! bad data is one sentence and a non-zero exit.

mod common;

use std::path::Path;

use common::*;
use sha2::Digest;
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
    // Guard: opaque grey PNGs, which the header limits, the alpha compositing and the palette
    // rule leave alone, import to these exact bytes (SHA-256s).
    for (name, sha) in [
        (
            "train-images-idx3-ubyte.gz",
            "8b11db36439738e3850254a18f0d652b2cec8b3d20ae19d4519acc91eb0a02dd",
        ),
        (
            "train-labels-idx1-ubyte.gz",
            "3a195c8a392377b7a5e2ee0de42d520a1fadec923f3fc871c85da5a4e1d335e5",
        ),
        (
            "t10k-images-idx3-ubyte.gz",
            "54fd9437941876a370e5e6f9dd7172b13bab1c50b5dd5a649ae238cf84e36d2b",
        ),
        (
            "t10k-labels-idx1-ubyte.gz",
            "5eed50462be62fbd2875099261ccc4766646324187501aaaaa3801cb8b8c012a",
        ),
    ] {
        let bytes = std::fs::read(data.join(name)).unwrap();
        let hex: String = sha2::Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(hex, sha, "{name}");
    }
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

/// A PNG whose header claims `w` x `h` grey pixels, followed by a little pixel data.
fn claimed_png(path: &Path, w: u32, h: u32) {
    fn chunk(out: &mut Vec<u8>, kind: &[u8], data: &[u8]) {
        let mut crc = flate2::Crc::new();
        crc.update(kind);
        crc.update(data);
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        out.extend_from_slice(&crc.sum().to_be_bytes());
    }
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 0, 0, 0, 0]);
    // A zlib stream of 64 KiB of zero rows: what a real file of that size would start with.
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut z, &vec![0u8; 1 << 16]).unwrap();
    let idat = z.finish().unwrap();
    let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
    chunk(&mut bytes, b"IHDR", &ihdr);
    chunk(&mut bytes, b"IDAT", &idat);
    chunk(&mut bytes, b"IEND", &[]);
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn hostile_pngs_are_refused_from_their_headers_quickly_in_little_memory() {
    let root = tempfile::tempdir().unwrap();
    // Three files claiming 60,000 x 60,000 grey pixels (3.6 GB each).
    let huge = root.path().join("huge");
    std::fs::create_dir(&huge).unwrap();
    for k in 0..3 {
        claimed_png(&huge.join(format!("{k}.png")), 60_000, 60_000);
    }
    // 40 real images of 64 x 64 (4 KiB each, 160 KiB together), over a set limit of 100K.
    let many = root.path().join("many");
    std::fs::create_dir(&many).unwrap();
    for k in 0..40u8 {
        grey_png(&many.join(format!("{k:02}.png")), 64, 64, k);
    }
    let out = root.path().join("out");
    let (h, m, o) = (
        huge.to_str().unwrap(),
        many.to_str().unwrap(),
        out.to_str().unwrap(),
    );
    for (args, needle) in [
        (
            vec!["import", h, "--out", o],
            "0.png: its header says 60000x60000 pixels (3600000000), over the limit of 16777216 per image",
        ),
        (
            vec!["import", m, "--out", o, "--max-set-size", "100K"],
            "the 40 images in",
        ),
    ] {
        let run = vae_measured(&args);
        let stderr = run.stderr.trim();
        assert!(!run.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "one sentence: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        println!(
            "{args:?}: refused in {:.2} s, peak RSS {:.1} MB",
            run.seconds,
            run.peak_rss as f64 / 1e6
        );
        assert!(run.seconds < 5.0, "{args:?} took {:.1} s", run.seconds);
        // `vae` maps libtorch at start: about 400 MB resident before it reads anything.
        assert!(
            run.peak_rss < 500_000_000,
            "{args:?}: peak RSS {} bytes",
            run.peak_rss
        );
        assert!(!out.exists(), "a refused import wrote {o}");
    }
    // The set's limit is its decoded size: 163,840 bytes fit under 160K.
    let run = vae_measured(&["import", m, "--out", o, "--max-set-size", "160K"]);
    assert!(run.status.success(), "{}", run.stderr);
}

#[test]
fn importing_into_a_used_folder_needs_force_and_leaves_no_stale_files() {
    let root = tempfile::tempdir().unwrap();
    let (grey, colour) = (root.path().join("grey"), root.path().join("colour"));
    std::fs::create_dir(&grey).unwrap();
    std::fs::create_dir(&colour).unwrap();
    for k in 0..10u8 {
        grey_png(&grey.join(format!("{k}.png")), 8, 8, k * 20);
        let file = std::fs::File::create(colour.join(format!("{k}.png"))).unwrap();
        let mut enc = png::Encoder::new(std::io::BufWriter::new(file), 8, 8);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let px: Vec<u8> = (0..192).map(|i| (i as u8).wrapping_mul(k + 1)).collect();
        enc.write_header().unwrap().write_image_data(&px).unwrap();
    }
    let out = root.path().join("out");
    let (g, c, o) = (
        grey.to_str().unwrap(),
        colour.to_str().unwrap(),
        out.to_str().unwrap(),
    );
    ok(&["import", g, "--out", o]);
    std::fs::write(out.join("notes.txt"), "mine").unwrap();
    // Used: refused, and nothing changed.
    let before = std::fs::read(out.join("train-images-idx3-ubyte.gz")).unwrap();
    let refused = vae(&["import", c, "--out", o]);
    let stderr = text(&refused).1;
    assert!(!refused.status.success());
    assert!(
        stderr.contains("already holds files") && stderr.contains("--force"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read(out.join("train-images-idx3-ubyte.gz")).unwrap(),
        before
    );
    // Forced: the grey set's files go, so the loader finds the colour set, not the old one.
    let (stdout, _) = ok(&["import", c, "--out", o, "--force"]);
    assert!(stdout.contains("removed"), "{stdout}");
    let mut names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "notes.txt",
            "t10k-images-idx4-ubyte.gz",
            "train-images-idx4-ubyte.gz"
        ]
    );
    let set = vae_data::ImageDataset::load(&out, vae_data::Split::Train).unwrap();
    assert_eq!(set.channels(), 3);
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
