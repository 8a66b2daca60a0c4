//! TensorBoard event files from `vae train`, read back by the `tensorboard` package; and
//! `vae serve`'s answers to bad requests.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use common::{
    QUICK, TINY, get, http, post, root, serve, synthetic_mnist, text, tiny_run, train_args, vae,
};

/// The project's virtual environment's Python, where `cargo xtask download` installs
/// `tensorboard`.
fn venv_python() -> std::path::PathBuf {
    let p = root().join(".venv/bin/python");
    assert!(
        p.exists(),
        "{} missing: run `cargo xtask download` (it installs tensorboard there)",
        p.display()
    );
    p
}

#[derive(serde::Deserialize)]
struct Board {
    scalars: HashMap<String, Vec<(u64, f64)>>,
    images: HashMap<String, Vec<(u64, u32, u32)>>,
    raw: Vec<(String, u64, String)>,
}

fn read_board(run: &Path) -> Board {
    let out = Command::new(venv_python())
        .arg(root().join("tests/tensorboard_read.py"))
        .arg(run)
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "tensorboard_read.py failed: {stderr}");
    serde_json::from_str(&stdout).unwrap()
}

fn metrics_column(run: &Path, column: &str) -> Vec<f64> {
    let csv = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let k = header.iter().position(|h| *h == column).unwrap();
    lines
        .map(|l| l.split(',').nth(k).unwrap().parse().unwrap())
        .collect()
}

#[test]
fn tensorboard_reads_the_runs_scalars_and_images_and_resume_does_not_repeat_steps() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let run = dir.path().join("run");
    synthetic_mnist(&data, 160, 40, 12);
    let (d, r) = (data.to_str().unwrap(), run.to_str().unwrap());
    // 144 training images (16 for validation) in batches of 16: 9 steps an epoch. Stop after
    // 13 steps, in the second epoch, then resume to the end of the third.
    let mut args = train_args(d, r, "3", &QUICK);
    args.extend_from_slice(&TINY);
    args.extend_from_slice(&["--validation-size", "16", "--max-steps", "13"]);
    let out = vae(&args);
    assert!(out.status.success(), "{}", text(&out).1);
    let first = read_board(&run);
    assert_eq!(first.scalars["epoch/val_elbo"].len(), 1);
    let out = vae(&["train", "--resume", r, "--data", d, "--threads", "1"]);
    assert!(out.status.success(), "{}", text(&out).1);

    let board = read_board(&run);
    // The epoch scalars are metrics.csv's, at the steps that ended the epochs.
    let val = &board.scalars["epoch/val_elbo"];
    let steps: Vec<u64> = val.iter().map(|s| s.0).collect();
    assert_eq!(steps, vec![9, 18, 27]);
    for (tag, column) in [
        ("epoch/val_elbo", "val_elbo"),
        ("epoch/train_kl", "train_kl"),
        ("epoch/test_elbo", "test_elbo"),
        ("epoch/lr", "lr"),
    ] {
        let logged: Vec<f64> = board.scalars[tag].iter().map(|s| s.1).collect();
        let csv = metrics_column(&run, column);
        assert_eq!(logged.len(), csv.len(), "{tag}");
        for (a, b) in logged.iter().zip(&csv) {
            // metrics.csv keeps 4 decimals (the learning rate all of them); the event file an f32.
            assert!((a - b).abs() <= 1e-4 + 1e-6 * b.abs(), "{tag}: {a} vs {b}");
        }
    }
    // Step scalars: every LOG_EVERY steps and at each epoch's end, each step once.
    for tag in ["step/elbo", "step/kl", "step/reconstruction", "step/lr"] {
        assert!(board.scalars.contains_key(tag), "{tag} missing");
    }
    let step_elbo: Vec<u64> = board.scalars["step/elbo"].iter().map(|s| s.0).collect();
    assert_eq!(step_elbo, vec![9, 13, 18, 27]);
    let mut seen = HashSet::new();
    for (file, step, tag) in &board.raw {
        assert!(
            seen.insert((step, tag.clone())),
            "{tag} at step {step} twice (in {file})"
        );
    }
    let files: HashSet<&String> = board.raw.iter().map(|r| &r.0).collect();
    assert_eq!(files.len(), 2, "one event file per process");
    // The images: 64 samples in 8 rows of 8 tiles of 12 pixels with 2-pixel borders, and 16
    // test images above their reconstructions (4 rows).
    let samples = &board.images["samples"];
    assert_eq!(samples.len(), 3);
    assert_eq!(samples[0], (9, 8 * 14 + 2, 8 * 14 + 2));
    let recon = &board.images["reconstructions"];
    assert_eq!(
        recon.iter().map(|r| r.0).collect::<Vec<_>>(),
        vec![9, 18, 27]
    );
    assert_eq!((recon[0].1, recon[0].2), (8 * 14 + 2, 4 * 14 + 2));
}

#[test]
fn no_tensorboard_writes_no_event_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let run = dir.path().join("run");
    synthetic_mnist(&data, 48, 16, 12);
    let (d, r) = (data.to_str().unwrap(), run.to_str().unwrap());
    let mut args = train_args(d, r, "1", &QUICK);
    args.extend_from_slice(&TINY);
    args.extend_from_slice(&["--validation-size", "16", "--no-tensorboard"]);
    let out = vae(&args);
    assert!(out.status.success(), "{}", text(&out).1);
    let events = std::fs::read_dir(&run)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("events.out")
        })
        .count();
    assert_eq!(events, 0);
}

#[test]
fn serve_answers_bad_requests_with_4xx_and_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let (run, data) = tiny_run(dir.path());
    let server = serve(&run, &data);
    let a = server.addr.as_str();

    let pixels = |n: usize, v: f32| serde_json::json!({ "pixels": vec![v; n] }).to_string();
    let huge = vec![b'1'; 2 * 1024 * 1024];
    let bad: Vec<(&str, (u16, Vec<u8>))> = vec![
        ("unknown route", get(a, "/nope")),
        ("../ path", get(a, "/../../etc/passwd")),
        ("encoded ../", get(a, "/%2e%2e/%2e%2e/Cargo.toml")),
        ("asset path", get(a, "/page/app.js")),
        (
            "text temperature",
            get(a, "/api/samples.png?temperature=hot"),
        ),
        (
            "NaN temperature",
            get(a, "/api/samples.png?temperature=NaN"),
        ),
        (
            "huge temperature",
            get(a, "/api/samples.png?temperature=1e308"),
        ),
        ("negative seed", get(a, "/api/samples.png?seed=-4")),
        ("negative index", get(a, "/api/test.png?index=-1")),
        ("index past the end", get(a, "/api/test.png?index=40")),
        ("no index", get(a, "/api/explore.png")),
        (
            "bad coordinate",
            get(a, "/api/explore.png?index=0&coords=1,x"),
        ),
        (
            "far coordinate",
            get(a, "/api/explore.png?index=0&coords=99"),
        ),
        (
            "too many coordinates",
            get(a, "/api/explore.png?index=0&coords=0,0,0"),
        ),
        (
            "unknown path mode",
            get(a, "/api/interpolate.png?a=0&b=1&mode=sideways"),
        ),
        (
            "too many steps",
            get(a, "/api/interpolate.png?a=0&b=1&steps=100000"),
        ),
        ("GET on encode", get(a, "/api/encode")),
        (
            "DELETE",
            http(
                a,
                format!("DELETE / HTTP/1.1\r\nHost: {a}\r\nConnection: close\r\n\r\n").as_bytes(),
            ),
        ),
        (
            "not JSON",
            post(a, "/api/encode", "application/json", b"{pixels: oops"),
        ),
        (
            "not a JSON body",
            post(a, "/api/encode", "text/plain", pixels(784, 0.5).as_bytes()),
        ),
        (
            "wrong pixel count",
            post(
                a,
                "/api/encode",
                "application/json",
                pixels(100, 0.5).as_bytes(),
            ),
        ),
        (
            "pixel out of range",
            post(
                a,
                "/api/encode",
                "application/json",
                pixels(784, 2.0).as_bytes(),
            ),
        ),
        (
            "pixels of the wrong type",
            post(
                a,
                "/api/encode",
                "application/json",
                br#"{"pixels": "white"}"#,
            ),
        ),
        (
            "huge body",
            post(a, "/api/encode", "application/json", &huge),
        ),
    ];
    for (what, (status, body)) in &bad {
        assert!(
            (400..500).contains(status),
            "{what}: status {status}, body {}",
            String::from_utf8_lossy(body)
        );
    }
    // The messages say what was wrong.
    let msg = |i: usize| String::from_utf8_lossy(&bad[i].1.1).into_owned();
    assert!(
        msg(9).contains("out of range: the test set has 40 images"),
        "{}",
        msg(9)
    );
    assert!(msg(13).contains("2 slider directions"), "{}", msg(13));
    assert!(msg(20).contains("784 (grey)"), "{}", msg(20));

    // Still serving, and right.
    let (status, page) = get(a, "/");
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&page).contains("vae serve"));
    let (status, info) = get(a, "/api/info");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&info));
    let info: serde_json::Value = serde_json::from_slice(&info).unwrap();
    assert_eq!(info["latent_dim"], 2);
    assert_eq!(info["test_images"], 40);
    let (status, body) = post(
        a,
        "/api/encode",
        "application/json",
        pixels(784, 0.0).as_bytes(),
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let answer: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(answer["nearest"].as_array().unwrap().len(), 6);
    assert!(
        answer["reconstruction"]
            .as_str()
            .unwrap()
            .starts_with("data:image/png;base64,")
    );

    // Concurrent requests are all answered.
    let addr = server.addr.clone();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                for k in 0..5 {
                    let (status, body) = get(
                        &addr,
                        &format!(
                            "/api/explore.png?index={}&coords=0.5,{}",
                            (t * 5 + k) % 40,
                            k as f64 / 5.0
                        ),
                    );
                    assert_eq!(status, 200);
                    assert_eq!(&body[..8], b"\x89PNG\r\n\x1a\n");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let started = Instant::now();
    let (status, _) = get(a, "/api/samples.png?temperature=0.5&seed=3");
    assert_eq!(status, 200, "after {:?}", started.elapsed());
}
