//! Helpers shared by the whole-flow tests.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use ndarray::{Array1, Array3};
use vae_data::{IdxArray, write_idx};

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// Writes a small MNIST-layout dataset of `size` x `size` bar images into `dir`.
pub fn synthetic_mnist(dir: &Path, train: usize, test: usize, size: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let make = |n: usize, offset: usize| {
        let images = Array3::from_shape_fn((n, size, size), |(k, i, j)| {
            let k = k + offset;
            if j == k % size || i == (k / size) % size {
                255u8
            } else {
                0
            }
        });
        let labels = Array1::from_iter((0..n).map(|k| ((k + offset) % 10) as u8));
        (images, labels)
    };
    for (prefix, n, offset) in [("train", train, 0), ("t10k", test, 1000)] {
        let (images, labels) = make(n, offset);
        write_idx(
            dir.join(format!("{prefix}-images-idx3-ubyte.gz")),
            &IdxArray::U8(images.into_dyn()),
            true,
        )
        .unwrap();
        write_idx(
            dir.join(format!("{prefix}-labels-idx1-ubyte.gz")),
            &IdxArray::U8(labels.into_dyn()),
            true,
        )
        .unwrap();
    }
}

/// Writes a small RGB data set (rank-4 IDX, labelled) of `size` x `size` images into `dir`:
/// image k is a red vertical bar, a green horizontal one and a blue level that varies with k.
pub fn synthetic_colour(dir: &Path, train: usize, test: usize, size: usize) {
    use vae_data::{ImageDataset, Split};
    let make = |n: usize, offset: usize| {
        let images = ndarray::Array4::from_shape_fn((n, size, size, 3), |(k, i, j, c)| {
            let k = k + offset;
            match c {
                0 if j == k % size => 255u8,
                1 if i == (k / size) % size => 200,
                2 => ((k * 37) % 256) as u8,
                _ => 0,
            }
        });
        let labels = Array1::from_iter((0..n).map(|k| ((k + offset) % 10) as u8));
        ImageDataset::from_images(images, Some(labels)).unwrap()
    };
    make(train, 0).save(dir, Split::Train).unwrap();
    make(test, 1000).save(dir, Split::Test).unwrap();
}

/// Flags of a quick CPU run: batches of 16 on one thread.
pub const QUICK: [&str; 6] = ["--batch-size", "16", "--device", "cpu", "--threads", "1"];

/// Flags of a tiny model: a 2-dimensional latent and one conv of 4 channels.
pub const TINY: [&str; 4] = ["--latent-dim", "2", "--channels", "4"];

/// The arguments of `vae train --data data --out run --epochs epochs`, then `extra`.
pub fn train_args<'a>(
    data: &'a str,
    run: &'a str,
    epochs: &'a str,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec!["train", "--data", data, "--out", run, "--epochs", epochs];
    args.extend_from_slice(extra);
    args
}

/// Runs the `vae` binary.
pub fn vae(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vae"))
        .args(args)
        .output()
        .expect("the vae binary runs")
}

/// `vae eval --run run --data data --json` with `extra`, which must succeed: its JSON.
pub fn eval_json(run: &str, data: &str, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["eval", "--run", run, "--data", data, "--json"];
    args.extend_from_slice(extra);
    let out = vae(&args);
    assert!(out.status.success(), "{:?}", text(&out));
    serde_json::from_slice(&out.stdout).expect("`vae eval --json` prints one JSON object")
}

/// Text of both output streams.
pub fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Decodes a grayscale PNG and returns (width, height, pixels).
pub fn read_png(path: &Path) -> (u32, u32, Vec<u8>) {
    let (w, h, color, px) = read_any_png(path);
    assert_eq!(color, png::ColorType::Grayscale, "{}", path.display());
    (w, h, px)
}

/// Decodes a PNG and returns (width, height, colour type, bytes).
pub fn read_any_png(path: &Path) -> (u32, u32, png::ColorType, Vec<u8>) {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let decoder = png::Decoder::new(std::io::BufReader::new(file));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    buf.truncate(info.buffer_size());
    (info.width, info.height, info.color_type, buf)
}

/// The Python holding the torch that `cargo xtask download` set up (recorded beside
/// `.libtorch`).
pub fn torch_python() -> PathBuf {
    let recorded = root().join(".libtorch-python");
    let text = std::fs::read_to_string(&recorded)
        .unwrap_or_else(|_| panic!("{} missing: run `cargo xtask download`", recorded.display()));
    PathBuf::from(text.trim())
}

/// A `vae serve` process, stopped when dropped.
pub struct Server {
    child: Child,
    /// `127.0.0.1:port`.
    pub addr: String,
    /// The line it printed with its URL.
    pub line: String,
}

impl Server {
    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `vae serve` on a free port and waits for its URL line.
pub fn serve(run: &Path, data: &Path) -> Server {
    serve_with(run, data, &[])
}

/// Starts `vae serve` on a free port with `extra` arguments and waits for its URL line; the
/// address is on 127.0.0.1 whatever it listens on.
pub fn serve_with(run: &Path, data: &Path, extra: &[&str]) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_vae"))
        .current_dir(root())
        .args(["serve", "--run"])
        .arg(run)
        .arg("--data")
        .arg(data)
        .args(["--port", "0"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut line = Vec::new();
    let mut byte = [0u8];
    while stdout.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    let line = String::from_utf8(line).unwrap();
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|s| s.split('/').next())
        .unwrap_or_else(|| panic!("no URL in {line:?}"))
        .to_string();
    let port = addr.rsplit(':').next().unwrap();
    if extra.is_empty() {
        assert!(addr.starts_with("127.0.0.1:"), "{line}");
    }
    Server {
        child,
        addr: format!("127.0.0.1:{port}"),
        line,
    }
}

/// Resident memory of process `pid` now (`VmRSS`), in bytes.
pub fn resident_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib * 1024
}

/// Sends `request` and returns the status, the head (lower-cased) and the body.
pub fn http_full(addr: &str, request: &[u8]) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    // A server may answer (413) before it has read a huge body: ignore a failed write.
    let _ = s.write_all(request);
    let mut reply = Vec::new();
    let _ = s.read_to_end(&mut reply);
    let head_end = reply
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP reply: {:?}", String::from_utf8_lossy(&reply)));
    let head = String::from_utf8_lossy(&reply[..head_end]).to_lowercase();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head, reply[head_end + 4..].to_vec())
}

/// Sends `request` (a whole HTTP/1.1 request) and returns the status and body.
pub fn http(addr: &str, request: &[u8]) -> (u16, Vec<u8>) {
    let (status, _, body) = http_full(addr, request);
    (status, body)
}

pub fn get(addr: &str, path: &str) -> (u16, Vec<u8>) {
    http(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
}

pub fn post(addr: &str, path: &str, content_type: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    http(addr, &req)
}

/// Trains the tiny model `vae serve` tests explore: 2 epochs on 28×28 bars.
pub fn tiny_run(dir: &Path) -> (PathBuf, PathBuf) {
    let data = dir.join("data");
    let run = dir.join("run");
    synthetic_mnist(&data, 96, 40, 28);
    let (d, r) = (data.to_str().unwrap(), run.to_str().unwrap());
    let mut args = train_args(d, r, "2", &QUICK);
    args.extend_from_slice(&TINY);
    args.extend_from_slice(&["--validation-size", "16"]);
    let out = vae(&args);
    assert!(out.status.success(), "{}", text(&out).1);
    (run, data)
}

/// What [`vae_measured`] saw of a `vae` process: its output, its peak resident memory and how
/// long it ran.
pub struct Measured {
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
    /// The process's peak resident set (`ru_maxrss` from `wait4`), in bytes.
    pub peak_rss: u64,
    pub seconds: f64,
}

/// Runs `vae` with `args` and measures its own peak memory: `wait4` gives the resource use of
/// that one child (the `RUSAGE_CHILDREN` totals would mix in every earlier child's).
#[allow(unsafe_code, clippy::zombie_processes)] // waited for with `wait4`, below
pub fn vae_measured(args: &[&str]) -> Measured {
    use std::os::unix::process::ExitStatusExt;
    let started = std::time::Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_vae"))
        .current_dir(root())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let mut stderr = String::new();
    let _ = err.read_to_string(&mut stderr);
    let stdout = reader.join().unwrap();
    let mut status = 0;
    // SAFETY: `wait4` writes the status and the usage of the child `pid`, which this process
    // spawned and has not waited for; both pointers are to live locals of the right types.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = child.id() as libc::pid_t;
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(waited, pid, "wait4 failed");
    Measured {
        status: std::process::ExitStatus::from_raw(status),
        stdout,
        stderr,
        // Linux reports kilobytes.
        peak_rss: usage.ru_maxrss as u64 * 1024,
        seconds: started.elapsed().as_secs_f64(),
    }
}

/// Runs the binary of the crate in `dir`, a workspace of its own that depends on this one's
/// crates by path, with `args`: `cargo run --offline` with this workspace's `Cargo.lock` (the
/// same versions, no network), its libtorch, and a target folder kept between runs.
pub fn cargo_run_apart(dir: &Path, args: &[&std::ffi::OsStr]) -> Output {
    let root = root();
    std::fs::copy(root.join("Cargo.lock"), dir.join("Cargo.lock")).unwrap();
    let libtorch = root
        .join(".libtorch")
        .canonicalize()
        .expect("run `cargo xtask download` first");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    Command::new(cargo)
        .args(["run", "--quiet", "--offline", "--"])
        .args(args)
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", root.join("target/as-library"))
        .env("LIBTORCH", &libtorch)
        .env("LD_LIBRARY_PATH", libtorch.join("lib"))
        .output()
        .unwrap()
}
