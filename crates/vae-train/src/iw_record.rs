//! A resumable importance-weighted evaluation: [`evaluate_iw_recorded`] keeps each image's
//! bound in a file as it is computed, so an evaluation that is stopped (a closed laptop, a job's
//! time limit, Ctrl-C) goes on from where it stopped, with the same result as if it had not
//! stopped: each batch draws its noise from a seed derived from its first image.
//!
//! The record is a small CSV file: a first line naming what it is a record of (the model, the
//! images, k, the seed, binarisation, the batch size, the device, and bf16 conv products where
//! used), a header, then one `image,bound` line per image, appended and synced batch by batch.
//! A record of anything else is started over; a torn last line (the process stopped mid-write)
//! is dropped; a record is used by one process at a time (an advisory lock on the file).

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;

use sha2::{Digest, Sha256};
use tch::Tensor;
use vae_model::Vae;

use crate::error::{Result, TrainError};
use crate::eval::{IwEstimate, IwPath, iw_batches, iw_batching, summarize_iw};

/// Where [`evaluate_iw_recorded`] keeps the evaluation's per-image bounds.
#[derive(Debug, Clone)]
pub struct IwRecord {
    /// The record file (its folder must exist).
    pub file: PathBuf,
    /// What identifies the model evaluated, such as its checkpoint's digest: a record made
    /// for another model is started over.
    pub model_id: String,
    /// Start over even where the record matches.
    pub fresh: bool,
}

/// What [`evaluate_iw_recorded`] returns: the estimate over all the images, and how many of
/// them came from the record rather than being computed now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IwRun {
    /// The estimate over every image.
    pub estimate: IwEstimate,
    /// Images whose bound was read back from the record.
    pub resumed: usize,
}

/// [`crate::evaluate_iw_by`], keeping each image's bound in `record` as it is computed and
/// reading back the images a matching record already holds. `progress(done, total)` is called
/// after each batch, starting from the images resumed.
pub fn evaluate_iw_recorded(
    model: &dyn Vae,
    images_u8: &Tensor,
    (k, path): (i64, IwPath),
    binarize: bool,
    seed: u64,
    record: &IwRecord,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<IwRun> {
    let n = images_u8.size()[0].max(0) as usize;
    let (batch, _) = iw_batching(model.device(), k);
    let fast = path.evaluator(model);
    let bf16_products = fast.as_ref().is_some_and(|e| e.bf16_products());
    let identity = format!(
        "# vae importance-weighted bounds, one per image: model {}; images {n} (sha256 {}); k {k}; seed {seed}; binarized {binarize}; batch {batch}; device {}{}",
        record.model_id.replace(['\n', '\r'], " "),
        images_digest(images_u8)?,
        crate::device_name(model.device()),
        // Named only when used, so the records of f32 evaluations read as before.
        if bf16_products {
            "; conv products bf16"
        } else {
            ""
        },
    );
    let io = |action: &'static str| {
        let path = record.file.clone();
        move |cause| TrainError::Io {
            action,
            path,
            cause,
        }
    };
    let Ok(mut file) = crate::lock::open_locked(&record.file)? else {
        return Err(TrainError::Busy {
            path: record.file.clone(),
            pid: None,
        });
    };
    let (mut values, kept_bytes) = if record.fresh {
        (Vec::new(), None)
    } else {
        read_record(&mut file, &identity, n, batch as usize)
            .map_err(io("read the evaluation record"))?
    };
    match kept_bytes {
        Some(len) => {
            file.set_len(len)
                .map_err(io("truncate the evaluation record"))?;
            file.seek(SeekFrom::End(0))
                .map_err(io("seek in the evaluation record"))?;
        }
        None => {
            values.clear();
            file.set_len(0)
                .map_err(io("truncate the evaluation record"))?;
            file.seek(SeekFrom::Start(0))
                .map_err(io("seek in the evaluation record"))?;
            file.write_all(format!("{identity}\nimage,log_likelihood\n").as_bytes())
                .and_then(|()| file.sync_data())
                .map_err(io("write the evaluation record"))?;
        }
    }
    let resumed = values.len();
    if resumed > 0 {
        progress(resumed, n);
    }
    if resumed < n {
        iw_batches(
            (model, fast.as_deref()),
            images_u8,
            k,
            binarize,
            seed,
            resumed as i64,
            &mut |start, bounds| {
                let mut lines = String::new();
                for (i, v) in bounds.iter().enumerate() {
                    lines.push_str(&format!("{},{v}\n", start as usize + i));
                }
                file.write_all(lines.as_bytes())
                    .and_then(|()| file.sync_data())
                    .map_err(io("write the evaluation record"))?;
                values.extend_from_slice(bounds);
                progress(values.len(), n);
                Ok(())
            },
        )?;
    }
    Ok(IwRun {
        estimate: IwEstimate {
            bf16_products,
            ..summarize_iw(&values, k)
        },
        resumed,
    })
}

/// A short digest of the images' bytes: a record of other images is not resumed.
fn images_digest(images_u8: &Tensor) -> Result<String> {
    let bytes: Vec<u8> = Vec::try_from(
        images_u8
            .to_device(tch::Device::Cpu)
            .contiguous()
            .view([-1]),
    )?;
    let digest = Sha256::digest(&bytes);
    Ok(digest[..8].iter().map(|b| format!("{b:02x}")).collect())
}

/// The bounds a record holds for the images `0..`, cut back to whole batches, and the length
/// in bytes of the file up to the last of them; `None` when the record is of something else
/// (or empty). At most `n` bounds are read.
fn read_record(
    file: &mut File,
    identity: &str,
    n: usize,
    batch: usize,
) -> std::io::Result<(Vec<f64>, Option<u64>)> {
    file.seek(SeekFrom::Start(0))?;
    let mut reader = BufReader::new(file);
    let mut line = Vec::new();
    let mut read_line = |line: &mut Vec<u8>| -> std::io::Result<bool> {
        line.clear();
        // A line is at most a few dozen bytes; a longer one is not ours.
        let got = Read::take(&mut reader, 4096).read_until(b'\n', line)?;
        Ok(got > 0 && line.last() == Some(&b'\n'))
    };
    if !read_line(&mut line)? || line.strip_suffix(b"\n") != Some(identity.as_bytes()) {
        return Ok((Vec::new(), None));
    }
    let mut offset = line.len() as u64;
    if !read_line(&mut line)? || line != b"image,log_likelihood\n" {
        return Ok((Vec::new(), None));
    }
    offset += line.len() as u64;
    // Byte offsets after each whole batch.
    let mut values = Vec::new();
    let mut boundary = (0usize, offset);
    while values.len() < n && read_line(&mut line)? {
        let parsed = std::str::from_utf8(&line[..line.len() - 1])
            .ok()
            .and_then(|l| l.split_once(','))
            .and_then(|(i, v)| Some((i.parse::<usize>().ok()?, v.parse::<f64>().ok()?)));
        match parsed {
            Some((i, v)) if i == values.len() && v.is_finite() => values.push(v),
            _ => break,
        }
        offset += line.len() as u64;
        if values.len() % batch == 0 || values.len() == n {
            boundary = (values.len(), offset);
        }
    }
    values.truncate(boundary.0);
    Ok((values, Some(boundary.1)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evaluate_iw_by;
    use tch::{Device, Kind, nn};
    use vae_model::{ConvVae, ConvVaeConfig};

    fn model() -> (nn::VarStore, ConvVae) {
        tch::manual_seed(3);
        let vs = nn::VarStore::new(Device::Cpu);
        let config = ConvVaeConfig {
            latent_dim: 2,
            channels: vec![4, 8],
            ..ConvVaeConfig::default()
        };
        let m = ConvVae::new(&vs.root(), &config).unwrap();
        (vs, m)
    }

    fn images(n: i64) -> Tensor {
        tch::manual_seed(9);
        Tensor::randint(256, [n, 1, 28, 28], (Kind::Uint8, Device::Cpu))
    }

    /// An evaluation stopped part-way (here: its record cut after 5 images, mid-line) and
    /// run again computes only the rest, and ends with the same estimate as one that ran
    /// through; a record of another k is started over.
    #[test]
    fn a_stopped_evaluation_resumes_to_the_same_estimate() {
        let _guard = crate::tests::lock();
        let (_vs, m) = model();
        let x = images(12);
        // k = 300: 3 images per batch on the CPU, so a resume starts inside the set.
        let by = (300, IwPath::default());
        let dir = tempfile::tempdir().unwrap();
        let record = IwRecord {
            file: dir.path().join("record.csv"),
            model_id: "model-a".into(),
            fresh: false,
        };
        let whole = evaluate_iw_by(&m, &x, by, true, 5, &mut |_, _| {}).unwrap();
        let first = evaluate_iw_recorded(&m, &x, by, true, 5, &record, &mut |_, _| {}).unwrap();
        assert_eq!(first.resumed, 0);
        assert_eq!(first.estimate, whole);

        // Cut the record inside the 6th image's line: images 0..5 are whole, the batch of
        // images 3..6 is not, so 3 images are kept.
        let text = std::fs::read_to_string(&record.file).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let cut = lines[..2 + 5].join("\n").len() + 1 + lines[2 + 5].len() / 2;
        std::fs::write(&record.file, &text[..cut]).unwrap();
        let mut seen = Vec::new();
        let again =
            evaluate_iw_recorded(&m, &x, by, true, 5, &record, &mut |d, _| seen.push(d)).unwrap();
        assert_eq!(again.resumed, 3);
        assert_eq!(seen, [3, 6, 9, 12]);
        assert_eq!(again.estimate, whole);
        assert_eq!(std::fs::read_to_string(&record.file).unwrap(), text);

        // Complete: nothing is computed; another model's record is started over.
        let done = evaluate_iw_recorded(&m, &x, by, true, 5, &record, &mut |_, _| {}).unwrap();
        assert_eq!((done.resumed, done.estimate), (12, whole));
        let other = IwRecord {
            model_id: "model-b".into(),
            ..record.clone()
        };
        let over = evaluate_iw_recorded(&m, &x, by, true, 5, &other, &mut |_, _| {}).unwrap();
        assert_eq!((over.resumed, over.estimate), (0, whole));
        // A damaged line ends what is kept: the images before it, to a whole batch.
        let text = std::fs::read_to_string(&record.file).unwrap();
        std::fs::write(&record.file, text.replacen("\n4,", "\n4,x", 1)).unwrap();
        let fixed = evaluate_iw_recorded(&m, &x, by, true, 5, &other, &mut |_, _| {}).unwrap();
        assert_eq!((fixed.resumed, fixed.estimate), (3, whole));
    }

    /// One process at a time: a record in use is refused, naming the file.
    #[test]
    fn a_record_in_use_is_refused() {
        let _guard = crate::tests::lock();
        let (_vs, m) = model();
        let x = images(2);
        let dir = tempfile::tempdir().unwrap();
        let record = IwRecord {
            file: dir.path().join("record.csv"),
            model_id: "m".into(),
            fresh: false,
        };
        let holder = File::create(&record.file).unwrap();
        holder.lock().unwrap();
        let err = evaluate_iw_recorded(
            &m,
            &x,
            (4, IwPath::default()),
            true,
            1,
            &record,
            &mut |_, _| {},
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("record.csv") && err.contains("in use"),
            "{err}"
        );
    }
}
