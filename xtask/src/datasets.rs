//! Fetching MNIST-format datasets from mirrors (HTTP(S) URLs or local folders), verified by the
//! SHA-256 of each file's decompressed bytes, written atomically.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use flate2::read::MultiGzDecoder;
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};

/// One file of a dataset: its name on the mirrors (without `.gz`), and the size and SHA-256 of
/// its decompressed bytes.
#[derive(Debug, Clone)]
pub struct FileSpec {
    pub name: String,
    pub size: u64,
    pub sha256: String,
}

/// A dataset: the folder it lands in under `data/`, and the mirrors to try in order.
#[derive(Debug, Clone)]
pub struct DatasetSpec {
    pub name: String,
    pub mirrors: Vec<String>,
    pub files: Vec<FileSpec>,
}

fn file(name: &str, size: u64, sha256: &str) -> FileSpec {
    FileSpec {
        name: name.into(),
        size,
        sha256: sha256.into(),
    }
}

/// The datasets `cargo xtask download --dataset` knows.
pub fn known(name: &str) -> Result<DatasetSpec> {
    Ok(match name {
        // The mirrors torchvision uses, in its order.
        "mnist" => DatasetSpec {
            name: "mnist".into(),
            mirrors: vec![
                "https://ossci-datasets.s3.amazonaws.com/mnist/".into(),
                "http://yann.lecun.com/exdb/mnist/".into(),
            ],
            files: vec![
                file("train-images-idx3-ubyte", 47_040_016, "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"),
                file("train-labels-idx1-ubyte", 60_008, "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"),
                file("t10k-images-idx3-ubyte", 7_840_016, "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
                file("t10k-labels-idx1-ubyte", 10_008, "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
            ],
        },
        // The Fashion-MNIST authors' own mirror, then their repository (torchvision's order).
        "fashion-mnist" => DatasetSpec {
            name: "fashion-mnist".into(),
            mirrors: vec![
                "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/".into(),
                "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/".into(),
            ],
            files: vec![
                file("train-images-idx3-ubyte", 47_040_016, "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
                file("train-labels-idx1-ubyte", 60_008, "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
                file("t10k-images-idx3-ubyte", 7_840_016, "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
                file("t10k-labels-idx1-ubyte", 10_008, "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
            ],
        },
        other => bail!("unknown dataset {other:?}: known datasets are mnist and fashion-mnist"),
    })
}

/// What happened to one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It was already there and verified.
    Present,
    /// It was fetched from this source and verified.
    Fetched(String),
}

/// Size and SHA-256 (hex) of the decompressed bytes of a gzip file (plain files are hashed as
/// they are, so a mirror that serves uncompressed bytes under a `.gz` name is caught by size).
pub fn decompressed_digest(path: &Path) -> io::Result<(u64, String)> {
    let mut reader = BufReader::with_capacity(1 << 16, File::open(path)?);
    let mut magic = [0u8; 2];
    let n = reader.read(&mut magic)?;
    let head = io::Cursor::new(magic[..n].to_vec());
    let chained = head.chain(reader);
    let mut source: Box<dyn Read> = if magic[..n] == [0x1f, 0x8b] {
        Box::new(MultiGzDecoder::new(chained))
    } else {
        Box::new(chained)
    };
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0u64;
    loop {
        let n = source.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    let digest = hasher.finalize();
    let mut hex = String::with_capacity(64);
    for b in digest {
        let _ = write!(hex, "{b:02x}");
    }
    Ok((total, hex))
}

fn verify(path: &Path, spec: &FileSpec) -> Result<()> {
    let (size, sha) = decompressed_digest(path).context("does not decompress")?;
    if size != spec.size || sha != spec.sha256 {
        bail!(
            "checksum mismatch: decompressed {size} bytes with SHA-256 {sha}, expected {} bytes with {}",
            spec.size,
            spec.sha256
        );
    }
    Ok(())
}

fn is_url(source: &str) -> bool {
    source.contains("://") && !source.starts_with("file://")
}

fn join_source(source: &str, file: &str) -> String {
    if is_url(source) {
        format!("{}/{file}", source.trim_end_matches('/'))
    } else {
        let dir = source.strip_prefix("file://").unwrap_or(source);
        Path::new(dir).join(file).display().to_string()
    }
}

fn progress_bar(len: Option<u64>, label: &str) -> ProgressBar {
    let pb = match len {
        Some(n) => ProgressBar::new(n),
        None => ProgressBar::no_length(),
    };
    pb.set_style(
        ProgressStyle::with_template(
            "{msg:32} [{bar:30}] {bytes:>10}/{total_bytes:10} {bytes_per_sec:>12} {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    pb.set_message(label.to_string());
    pb
}

/// Copies `reader` into `dest` with a progress bar.
fn copy_with_progress(
    mut reader: impl Read,
    dest: &Path,
    len: Option<u64>,
    label: &str,
) -> Result<()> {
    let pb = progress_bar(len, label);
    let mut out = io::BufWriter::new(
        File::create(dest).with_context(|| format!("cannot create {}", dest.display()))?,
    );
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("transfer interrupted"),
        };
        out.write_all(&buf[..n])
            .with_context(|| format!("cannot write {}", dest.display()))?;
        pb.inc(n as u64);
    }
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    pb.finish_and_clear();
    Ok(())
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(15)))
        .timeout_recv_body(Some(Duration::from_secs(600)))
        .user_agent("vae-rs-xtask")
        .build()
        .into()
}

/// Fetches `location` (a URL or local path) into `dest`.
fn fetch(location: &str, dest: &Path, label: &str) -> Result<()> {
    if is_url(location) {
        let mut response = agent()
            .get(location)
            .call()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let len = response.body().content_length();
        let reader = response.body_mut().as_reader();
        copy_with_progress(reader, dest, len, label)
    } else {
        let src = File::open(location).with_context(|| format!("cannot open {location}"))?;
        let len = src.metadata().ok().map(|m| m.len());
        copy_with_progress(src, dest, len, label)
    }
}

/// Makes `dir/<file>.gz` present and verified for every file of `spec`, trying `mirrors` in
/// order (the spec's own when empty). A file already present and verified is left alone unless
/// `force`. Nothing unverified ever sits under a final name: bytes land in a temporary file
/// beside it, are verified, then renamed.
pub fn fetch_dataset(
    spec: &DatasetSpec,
    dir: &Path,
    mirrors: &[String],
    force: bool,
) -> Result<Vec<(String, Outcome)>> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mirrors = if mirrors.is_empty() {
        &spec.mirrors
    } else {
        mirrors
    };
    let mut outcomes = Vec::new();
    for file in &spec.files {
        let gz_name = format!("{}.gz", file.name);
        let final_path = dir.join(&gz_name);
        if !force && final_path.is_file() {
            match verify(&final_path, file) {
                Ok(()) => {
                    outcomes.push((gz_name, Outcome::Present));
                    continue;
                }
                Err(e) => eprintln!("{}: {e:#}; fetching it again", final_path.display()),
            }
        }
        let tmp = dir.join(format!(".{gz_name}.part-{}", std::process::id()));
        let mut failures = Vec::new();
        let mut fetched = None;
        for mirror in mirrors {
            let location = join_source(mirror, &gz_name);
            let attempt = fetch(&location, &tmp, &format!("{}/{gz_name}", spec.name))
                .and_then(|()| verify(&tmp, file));
            match attempt {
                Ok(()) => {
                    std::fs::rename(&tmp, &final_path)
                        .with_context(|| format!("cannot move into {}", final_path.display()))?;
                    fetched = Some(location);
                    break;
                }
                Err(e) => {
                    let _ = std::fs::remove_file(&tmp);
                    failures.push(format!("  {location}: {e:#}"));
                }
            }
        }
        match fetched {
            Some(location) => outcomes.push((gz_name, Outcome::Fetched(location))),
            None => bail!(
                "could not fetch {gz_name} of {} from any source:\n{}",
                spec.name,
                failures.join("\n")
            ),
        }
    }
    Ok(outcomes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::Arc;

    fn gz(bytes: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap()
    }

    fn spec_for(files: &[(&str, &[u8])]) -> DatasetSpec {
        let dir = tempfile::tempdir().unwrap();
        let files = files
            .iter()
            .map(|(name, bytes)| {
                let p = dir.path().join(name);
                std::fs::write(&p, bytes).unwrap();
                let (size, sha256) = decompressed_digest(&p).unwrap();
                FileSpec {
                    name: name.to_string(),
                    size,
                    sha256,
                }
            })
            .collect();
        DatasetSpec {
            name: "toy".into(),
            mirrors: vec![],
            files,
        }
    }

    /// Serves `routes` (path -> body) on a loopback port until the returned guard drops;
    /// anything else is a 404.
    struct Server {
        url: String,
        server: Arc<tiny_http::Server>,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    impl Drop for Server {
        fn drop(&mut self) {
            self.server.unblock();
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }

    fn serve(routes: HashMap<String, Vec<u8>>) -> Server {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
        let url = format!("http://{}/", server.server_addr().to_ip().unwrap());
        let s = Arc::clone(&server);
        let thread = std::thread::spawn(move || {
            for request in s.incoming_requests() {
                let response = match routes.get(request.url()) {
                    Some(body) => tiny_http::Response::from_data(body.clone()),
                    None => {
                        tiny_http::Response::from_data(b"not found".to_vec()).with_status_code(404)
                    }
                };
                let _ = request.respond(response);
            }
        });
        Server {
            url,
            server,
            thread: Some(thread),
        }
    }

    #[test]
    fn falls_through_a_bad_mirror_and_rejects_a_corrupted_file() {
        let a = b"first file's bytes".repeat(100);
        let b = b"second".repeat(10);
        let spec = spec_for(&[("a-idx1-ubyte", &a), ("b-idx1-ubyte", &b)]);

        // Mirror 1: 404 for everything. Mirror 2: a corrupted `a` (valid gzip, wrong bytes).
        // Mirror 3: the right files.
        let dead = serve(HashMap::new());
        let mut corrupt_routes = HashMap::new();
        corrupt_routes.insert("/a-idx1-ubyte.gz".to_string(), gz(b"tampered"));
        let corrupt = serve(corrupt_routes);
        let mut good_routes = HashMap::new();
        good_routes.insert("/a-idx1-ubyte.gz".to_string(), gz(&a));
        good_routes.insert("/b-idx1-ubyte.gz".to_string(), gz(&b));
        let good = serve(good_routes);

        let dest = tempfile::tempdir().unwrap();
        let mirrors = vec![dead.url.clone(), corrupt.url.clone(), good.url.clone()];
        let outcomes = fetch_dataset(&spec, dest.path(), &mirrors, false).unwrap();
        assert_eq!(
            outcomes[0].1,
            Outcome::Fetched(format!("{}a-idx1-ubyte.gz", good.url))
        );
        assert_eq!(
            outcomes[1].1,
            Outcome::Fetched(format!("{}b-idx1-ubyte.gz", good.url))
        );
        let (_, sha) = decompressed_digest(&dest.path().join("a-idx1-ubyte.gz")).unwrap();
        assert_eq!(sha, spec.files[0].sha256);

        // A second run verifies and fetches nothing, even with no mirror reachable.
        let again =
            fetch_dataset(&spec, dest.path(), std::slice::from_ref(&dead.url), false).unwrap();
        assert!(again.iter().all(|(_, o)| *o == Outcome::Present));

        // Only bad sources: an error naming each, and nothing under the final name.
        let fresh = tempfile::tempdir().unwrap();
        let err = fetch_dataset(
            &spec,
            fresh.path(),
            &[dead.url.clone(), corrupt.url.clone()],
            false,
        )
        .unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains(&dead.url) && msg.contains("404"), "{msg}");
        assert!(
            msg.contains(&corrupt.url) && msg.contains("checksum mismatch"),
            "{msg}"
        );
        let left: Vec<_> = std::fs::read_dir(fresh.path()).unwrap().collect();
        assert!(left.is_empty(), "nothing may be left behind: {left:?}");
    }

    #[test]
    fn local_directory_mirror_and_force_refetch() {
        let a = b"local bytes".to_vec();
        let spec = spec_for(&[("a-idx1-ubyte", &a)]);
        let mirror = tempfile::tempdir().unwrap();
        std::fs::write(mirror.path().join("a-idx1-ubyte.gz"), gz(&a)).unwrap();
        let dest = tempfile::tempdir().unwrap();
        let src = mirror.path().display().to_string();
        let out = fetch_dataset(&spec, dest.path(), std::slice::from_ref(&src), false).unwrap();
        assert!(matches!(out[0].1, Outcome::Fetched(_)));
        // A damaged final file is noticed and replaced.
        std::fs::write(dest.path().join("a-idx1-ubyte.gz"), gz(b"damaged")).unwrap();
        let out = fetch_dataset(&spec, dest.path(), std::slice::from_ref(&src), false).unwrap();
        assert!(matches!(out[0].1, Outcome::Fetched(_)));
        let out = fetch_dataset(&spec, dest.path(), std::slice::from_ref(&src), true).unwrap();
        assert!(matches!(out[0].1, Outcome::Fetched(_)), "--force refetches");
        let out = fetch_dataset(&spec, dest.path(), &[src], false).unwrap();
        assert_eq!(out[0].1, Outcome::Present);
    }

    #[test]
    fn known_datasets_have_four_files_and_mirrors() {
        for name in ["mnist", "fashion-mnist"] {
            let spec = known(name).unwrap();
            assert_eq!(spec.files.len(), 4);
            assert_eq!(spec.mirrors.len(), 2);
            assert!(spec.files.iter().all(|f| f.sha256.len() == 64));
        }
        assert!(known("cifar").is_err());
    }
}
