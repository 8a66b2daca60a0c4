//! TensorBoard event files from `vae train`, read back by the `tensorboard` package; and
//! `vae serve`'s answers to bad requests, foreign pages, floods and its own panics.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use common::{
    QUICK, TINY, get, http, http_full, post, resident_bytes, root, serve, serve_with,
    synthetic_mnist, text, tiny_run, train_args, vae,
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

/// The TFRecord frames of an event file: (offset, payload) of each whole record, and where
/// the whole records end.
fn frames(bytes: &[u8]) -> (Vec<(usize, &[u8])>, usize) {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 12 <= bytes.len() {
        let len = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) as usize;
        let end = at + 12 + len + 4;
        if end > bytes.len() {
            break;
        }
        out.push((at, &bytes[at + 12..at + 12 + len]));
        at = end;
    }
    (out, at)
}

fn event_file(run: &Path) -> std::path::PathBuf {
    let files: Vec<_> = std::fs::read_dir(run)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("events.out")
        })
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    files[0].clone()
}

#[test]
fn a_write_that_fails_mid_image_leaves_a_readable_event_file_and_training_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    synthetic_mnist(&data, 160, 40, 12);
    let d = data.to_str().unwrap();
    let train = |run: &Path, fault: Option<u64>| {
        let r = run.to_str().unwrap();
        let mut args = train_args(d, r, "3", &QUICK);
        args.extend_from_slice(&TINY);
        args.extend_from_slice(&["--validation-size", "16"]);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vae"));
        cmd.current_dir(root()).args(&args);
        if let Some(bytes) = fault {
            cmd.env("VAE_TEST_EVENT_WRITES_FAIL_PAST", bytes.to_string());
        }
        let out = cmd.output().unwrap();
        let (_, stderr) = text(&out);
        assert!(out.status.success(), "{stderr}");
        stderr
    };
    // A run as it is, to find where its last sample grid lies in the event file.
    let clean = dir.path().join("clean");
    train(&clean, None);
    let bytes = std::fs::read(event_file(&clean)).unwrap();
    let (records, _) = frames(&bytes);
    let (at, payload) = records
        .iter()
        .rfind(|(_, p)| p.windows(7).any(|w| w == b"samples"))
        .expect("an image record");
    // The same run on a disk that fills up half-way through writing that record.
    let fault = (at + 12 + payload.len() / 2) as u64;
    let run = dir.path().join("run");
    let stderr = train(&run, Some(fault));
    assert!(
        stderr.contains("TensorBoard images not written") && stderr.contains("No space left"),
        "{stderr}"
    );
    assert!(run.join("last.safetensors").exists() && run.join("samples.png").exists());
    // Only whole records, up to the last one that fitted.
    let bytes = std::fs::read(event_file(&run)).unwrap();
    let (records, whole) = frames(&bytes);
    assert_eq!(whole, bytes.len(), "a torn record at the end");
    assert!(bytes.len() as u64 <= fault);
    assert!(records.len() > 3);
    // TensorBoard reads every record written, to the last: the first two epochs' scalars and
    // images, not the third epoch's sample grid.
    let board = read_board(&run);
    assert_eq!(board.raw.len(), vae_train::parse_events(&bytes).len());
    let steps: Vec<u64> = board.scalars["epoch/val_elbo"]
        .iter()
        .map(|s| s.0)
        .collect();
    assert_eq!(steps[..2], [9, 18]);
    let samples: Vec<u64> = board.images["samples"].iter().map(|s| s.0).collect();
    assert_eq!(samples, [9, 18]);
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
        (
            "more coordinates than any model's directions",
            get(
                a,
                &format!("/api/explore.png?index=0&coords={}", ["0"; 1000].join(",")),
            ),
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
    assert!(
        msg(24).contains("at most 8 slider directions"),
        "{}",
        msg(24)
    );

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

/// Every route of `vae serve`, with a valid request for each: (method, path, body).
const ROUTES: [(&str, &str, &str); 11] = [
    ("GET", "/", ""),
    ("GET", "/errors.js", ""),
    ("GET", "/app.js", ""),
    ("GET", "/style.css", ""),
    ("GET", "/api/info", ""),
    ("GET", "/api/metrics", ""),
    ("GET", "/api/samples.png?temperature=0.5", ""),
    ("GET", "/api/test.png?index=0", ""),
    ("GET", "/api/explore.png?index=0&coords=1,0", ""),
    ("GET", "/api/interpolate.png?a=0&b=1", ""),
    ("POST", "/api/encode", "{\"pixels\": [0.5]}"),
];

/// A request to `path` with the given `Host` and extra header lines.
fn request(method: &str, path: &str, body: &str, host: &str, extra: &str) -> Vec<u8> {
    format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[test]
fn serve_answers_only_its_own_address_and_page() {
    let dir = tempfile::tempdir().unwrap();
    let (run, data) = tiny_run(dir.path());
    let server = serve(&run, &data);
    let a = server.addr.as_str();
    let port = a.rsplit(':').next().unwrap();
    let pixels = format!("{{\"pixels\": {:?}}}", vec![0.5f32; 784]);
    for (method, path, body) in ROUTES {
        let body = if body.is_empty() { "" } else { pixels.as_str() };
        // DNS rebinding: the attacker's name, resolved to 127.0.0.1.
        for host in [format!("evil.example:{port}"), "evil.example".into()] {
            let (status, answer) = http(a, &request(method, path, body, &host, ""));
            assert_eq!(
                status,
                421,
                "{method} {path} for {host}: {}",
                String::from_utf8_lossy(&answer)
            );
        }
        // A page of another origin, and one that hides its origin.
        for origin in [
            "http://evil.example",
            "null",
            &format!("http://localhost:{}", port.parse::<u16>().unwrap() + 1),
        ] {
            let extra = format!("Origin: {origin}\r\n");
            let (status, _) = http(a, &request(method, path, body, a, &extra));
            assert_eq!(status, 403, "{method} {path} from {origin}");
        }
        // A cross-site fetch (an <img> on another site) says so.
        let extra = "Sec-Fetch-Site: cross-site\r\nSec-Fetch-Mode: no-cors\r\n";
        let (status, _) = http(a, &request(method, path, body, a, extra));
        assert_eq!(status, 403, "{method} {path} cross-site");
        // Its own page, by each loopback name: answered, with the page's security headers.
        for host in [a.to_string(), format!("localhost:{port}")] {
            let extra = format!("Origin: http://{host}\r\n");
            let (status, head, answer) = http_full(a, &request(method, path, body, &host, &extra));
            assert_eq!(
                status,
                200,
                "{method} {path} for {host}: {}",
                String::from_utf8_lossy(&answer)
            );
            assert!(
                head.contains("content-security-policy: default-src 'none'; script-src 'self'"),
                "{head}"
            );
            assert!(head.contains("x-content-type-options: nosniff"), "{head}");
        }
    }
    // A request without a Host is refused too.
    let (status, _) = http(a, b"GET /api/info HTTP/1.0\r\n\r\n");
    assert_eq!(status, 400);
}

#[test]
fn serve_off_loopback_needs_allow_remote_and_then_its_token() {
    let dir = tempfile::tempdir().unwrap();
    let (run, data) = tiny_run(dir.path());
    let (r, d) = (run.to_str().unwrap(), data.to_str().unwrap());
    let out = vae(&[
        "serve", "--run", r, "--data", d, "--host", "0.0.0.0", "--port", "0",
    ]);
    let stderr = text(&out).1;
    assert!(!out.status.success());
    assert!(stderr.contains("pass --allow-remote"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");

    let server = serve_with(&run, &data, &["--host", "0.0.0.0", "--allow-remote"]);
    let token = server
        .line
        .split("?token=")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .unwrap_or_else(|| panic!("no token in {:?}", server.line))
        .to_string();
    assert_eq!(token.len(), 32);
    let a = server.addr.as_str();
    let get_with = |path: &str, extra: &str| http_full(a, &request("GET", path, "", a, extra));
    for path in ["/", "/app.js", "/api/info", "/api/test.png?index=0"] {
        assert_eq!(get_with(path, "").0, 401, "{path} without the token");
        let wrong = format!(
            "{path}{}token=0123456789abcdef0123456789abcdef",
            if path.contains('?') { "&" } else { "?" }
        );
        assert_eq!(get_with(&wrong, "").0, 401, "{path} with a wrong token");
    }
    // The printed URL opens the page and hands it a cookie for its own requests.
    let (status, head, _) = get_with(&format!("/?token={token}"), "");
    assert_eq!(status, 200);
    let cookie = head
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .expect("a cookie")
        .split(';')
        .next()
        .unwrap()
        .to_string();
    assert!(
        head.contains("httponly") && head.contains("samesite=strict"),
        "{head}"
    );
    // The header was lower-cased with the rest: the token is hex, so it is unchanged.
    let extra = format!("Cookie: {cookie}\r\n");
    assert_eq!(get_with("/api/info", &extra).0, 200);
    assert_eq!(get_with("/api/test.png?index=0", &extra).0, 200);
    let bearer = format!("Authorization: Bearer {token}\r\n");
    assert_eq!(get_with("/api/info", &bearer).0, 200);
}

#[test]
fn serve_drops_abandoned_work_bounds_its_queue_and_survives_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let (run, data) = tiny_run(dir.path());
    let server = serve_with(&run, &data, &["--test-hooks"]);
    let a = server.addr.as_str();
    let counts = || -> serde_json::Value {
        let (status, body) = get(a, "/api/test/counts");
        assert_eq!(status, 200);
        serde_json::from_slice(&body).unwrap()
    };
    // Warm up, then measure.
    assert_eq!(get(a, "/api/interpolate.png?a=0&b=1&steps=32").0, 200);
    let rss_before = resident_bytes(server.pid());
    let before = counts();

    // 300 requests for the largest interpolation, each abandoned as soon as it is sent.
    let path = "/api/interpolate.png?a=0&b=1&steps=32";
    for _ in 0..300 {
        let mut s = std::net::TcpStream::connect(a).unwrap();
        std::io::Write::write_all(
            &mut s,
            format!("GET {path} HTTP/1.1\r\nHost: {a}\r\n\r\n").as_bytes(),
        )
        .unwrap();
    }
    let started = Instant::now();
    let (status, body) = get(a, "/api/samples.png?temperature=0.5&seed=1");
    let waited = started.elapsed().as_secs_f64();
    assert_eq!(status, 200);
    assert_eq!(&body[..8], b"\x89PNG\r\n\x1a\n");
    let after = counts();
    let queue = after["queue"].as_u64().unwrap();
    let ran = after["ran"].as_u64().unwrap() - before["ran"].as_u64().unwrap() - 1;
    let skipped = after["skipped"].as_u64().unwrap() - before["skipped"].as_u64().unwrap();
    let rss_after = resident_bytes(server.pid());
    println!(
        "after 300 abandoned requests: answered in {waited:.2} s; {ran} abandoned jobs ran, {skipped} skipped (queue {queue}); resident {:.1} MB before, {:.1} MB after",
        rss_before as f64 / 1e6,
        rss_after as f64 / 1e6
    );
    assert!(waited < 5.0, "the next request waited {waited:.1} s");
    assert!(
        ran <= queue,
        "{ran} abandoned jobs ran, more than the queue's {queue}"
    );
    assert!(
        rss_after < rss_before + 50_000_000,
        "resident {rss_before} -> {rss_after} bytes"
    );

    // A panic on the model's thread: a 500 for that request, without its text, and the next
    // request is served.
    let (status, body) = post(a, "/api/test/panic", "application/json", b"");
    let body = String::from_utf8_lossy(&body);
    assert_eq!(status, 500, "{body}");
    assert!(
        body.contains("the model failed on this request") && !body.contains("asked for"),
        "{body}"
    );
    let (status, body) = get(a, "/api/test.png?index=3");
    assert_eq!(status, 200);
    assert_eq!(&body[..8], b"\x89PNG\r\n\x1a\n");
    assert_eq!(counts()["panicked"], 1);
}
