//! TensorBoard event files: [`EventWriter`] writes scalars and images in TensorFlow's event
//! format, and [`TensorBoard`] is the [`Observer`] that logs a run into its directory.
//!
//! The format (TensorFlow's `tensorflow/core/util/event.proto` and `summary.proto`, framed as
//! TFRecords): each record is its length as a little-endian u64, the masked CRC-32C of those
//! 8 bytes, the serialised `Event`, and the masked CRC-32C of the event. The first event of a
//! file carries `file_version = "brain.Event:2"`. Scalars are `Summary.Value.simple_value`,
//! images `Summary.Value.image` (a PNG), which TensorBoard reads as its scalar and image
//! plugins' data. No maintained Rust crate writes the format for current dependencies (the
//! `tensorboard-rs` family is archived and pins protobuf 2), so this module is a small writer
//! over `prost`'s derived messages, with a reader for its own files (resume truncates them).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use prost::Message;
use vae_model::Vae;

use crate::checkpoint::EpochMetrics;
use crate::error::{Result, TrainError};
use crate::observe::{Observer, StepProgress};

/// The protobuf messages, field numbers as in TensorFlow's `.proto` files.
mod proto {
    /// `tensorflow.Event` (the fields used here).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Event {
        /// Seconds since the Unix epoch.
        #[prost(double, tag = "1")]
        pub wall_time: f64,
        /// The global step.
        #[prost(int64, tag = "2")]
        pub step: i64,
        /// What the event holds.
        #[prost(oneof = "What", tags = "3, 5")]
        pub what: Option<What>,
    }

    /// `Event.what`.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum What {
        /// The format's version, in a file's first event.
        #[prost(string, tag = "3")]
        FileVersion(String),
        /// Summaries.
        #[prost(message, tag = "5")]
        Summary(Summary),
    }

    /// `tensorflow.Summary`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Summary {
        /// Tagged values.
        #[prost(message, repeated, tag = "1")]
        pub value: Vec<Value>,
    }

    /// `tensorflow.Summary.Value` (the fields used here).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Value {
        /// The series' name.
        #[prost(string, tag = "1")]
        pub tag: String,
        /// The value.
        #[prost(oneof = "Kind", tags = "2, 4")]
        pub value: Option<Kind>,
    }

    /// `Summary.Value.value`.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Kind {
        /// A scalar.
        #[prost(float, tag = "2")]
        SimpleValue(f32),
        /// An encoded image.
        #[prost(message, tag = "4")]
        Image(Image),
    }

    /// `tensorflow.Summary.Image`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Image {
        /// Height in pixels.
        #[prost(int32, tag = "1")]
        pub height: i32,
        /// Width in pixels.
        #[prost(int32, tag = "2")]
        pub width: i32,
        /// 1 grey, 3 RGB, 4 RGBA.
        #[prost(int32, tag = "3")]
        pub colorspace: i32,
        /// The PNG file.
        #[prost(bytes = "vec", tag = "4")]
        pub encoded_image_string: Vec<u8>,
    }
}

/// CRC-32C (Castagnoli), as TFRecord framing uses it.
fn crc32c(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    0x82F6_3B78 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };
    let mut crc = !0u32;
    for &b in data {
        crc = TABLE[((crc ^ u32::from(b)) & 0xFF) as usize] ^ (crc >> 8);
    }
    !crc
}

/// TFRecord's masked CRC: rotated right by 15 bits, plus a constant.
fn masked_crc(data: &[u8]) -> u32 {
    let crc = crc32c(data);
    crc.rotate_right(15).wrapping_add(0xA282_EAD8)
}

/// One TFRecord around `payload`.
fn frame(payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u64).to_le_bytes();
    let mut record = Vec::with_capacity(payload.len() + 16);
    record.extend_from_slice(&len);
    record.extend_from_slice(&masked_crc(&len).to_le_bytes());
    record.extend_from_slice(payload);
    record.extend_from_slice(&masked_crc(payload).to_le_bytes());
    record
}

/// The records of an event file's bytes that are whole and pass their checksums, in order; a
/// damaged or cut-off tail (a process killed mid-write) ends the list. Every offset is checked
/// arithmetic: a crafted length ends the list too.
fn records(bytes: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while let Some((payload, next)) = split_record(rest) {
        out.push(payload);
        rest = next;
    }
    out
}

/// The first record of `bytes` and what follows it, if it is whole and passes its checksums.
fn split_record(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len_bytes, rest) = bytes.split_first_chunk::<8>()?;
    let (len_crc, rest) = rest.split_first_chunk::<4>()?;
    if masked_crc(len_bytes) != u32::from_le_bytes(*len_crc) {
        return None;
    }
    let len = usize::try_from(u64::from_le_bytes(*len_bytes)).ok()?;
    if rest.len() < len.checked_add(4)? {
        return None;
    }
    let (payload, rest) = rest.split_at(len);
    let (crc, rest) = rest.split_first_chunk::<4>()?;
    (masked_crc(payload) == u32::from_le_bytes(*crc)).then_some((payload, rest))
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> TrainError {
    let path = path.to_path_buf();
    move |cause| TrainError::Io {
        action,
        path,
        cause,
    }
}

/// Whether `path`'s file name is a TensorBoard event file's.
fn is_event_file(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("events.out.tfevents."))
}

/// What an event file holds, as [`read_event_file`] returns it.
#[derive(Debug, Clone, PartialEq)]
pub enum LoggedValue {
    /// A scalar.
    Scalar(f32),
    /// A PNG image of (width, height).
    Image {
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
        /// The PNG file's bytes.
        png: Vec<u8>,
    },
}

/// One summary value read back: its step, tag and value.
#[derive(Debug, Clone, PartialEq)]
pub struct LoggedEvent {
    /// The global step.
    pub step: u64,
    /// The series' name.
    pub tag: String,
    /// The value.
    pub value: LoggedValue,
}

/// The summary values in the event file at `path`, in order (for tests and tools; TensorBoard
/// itself is the reader users want). Records after a damaged one are not read.
pub fn read_event_file(path: impl AsRef<Path>) -> Result<Vec<LoggedEvent>> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(io("read", path))?;
    Ok(parse_events(&bytes))
}

/// The summary values in an event file's bytes, in order: what [`read_event_file`] reads. Any
/// bytes are accepted: the list ends at the first record that is cut off, fails its checksum
/// or is not an `Event`.
pub fn parse_events(bytes: &[u8]) -> Vec<LoggedEvent> {
    let mut out = Vec::new();
    for record in records(bytes) {
        let Ok(event) = proto::Event::decode(record) else {
            break;
        };
        if let Some(proto::What::Summary(s)) = event.what {
            for v in s.value {
                let value = match v.value {
                    Some(proto::Kind::SimpleValue(x)) => LoggedValue::Scalar(x),
                    Some(proto::Kind::Image(i)) => LoggedValue::Image {
                        width: i.width.max(0) as u32,
                        height: i.height.max(0) as u32,
                        png: i.encoded_image_string,
                    },
                    None => continue,
                };
                out.push(LoggedEvent {
                    step: event.step.max(0) as u64,
                    tag: v.tag,
                    value,
                });
            }
        }
    }
    out
}

/// The event-file bytes that the `events` fuzz target reads for `data`: records carry CRCs
/// that random bytes rarely pass, so when the first byte's low bit is set the rest is cut into
/// payloads (each after a length byte) and framed as valid records, which reaches the `Event`
/// decoding behind the checksums; otherwise the rest as it is. Public so that a fuzzer outside
/// this crate reaches [`parse_events`] past the checksums.
pub fn events_fuzz_input(data: &[u8]) -> Vec<u8> {
    let Some((&first, mut rest)) = data.split_first() else {
        return Vec::new();
    };
    if first & 1 == 0 {
        return rest.to_vec();
    }
    let mut framed = Vec::new();
    while let Some((&len, tail)) = rest.split_first() {
        let (payload, next) = tail.split_at(usize::from(len).min(tail.len()));
        framed.extend(frame(payload));
        rest = next;
    }
    framed
}

/// Writes one TensorBoard event file (`events.out.tfevents.<seconds>.<host>.<pid>.vae`) in a
/// folder. Records are buffered; [`EventWriter::flush`] writes them, making them visible to a
/// TensorBoard watching the folder.
///
/// The file only ever ends in whole records: a write that fails part-way (a full disk) is cut
/// back to the end of the last whole record before the error is returned, so readers (and a
/// resumed run) keep everything written before it, and later records still follow on.
#[derive(Debug)]
pub struct EventWriter {
    path: PathBuf,
    file: File,
    /// Records not yet written.
    pending: Vec<u8>,
    /// The file's length: whole records only.
    written: u64,
    /// A fault injected for tests: writes past this many bytes fail after writing what fits.
    fail_at: Option<u64>,
}

impl EventWriter {
    /// Creates a new event file in `dir` (which must exist) and writes its version record.
    pub fn create(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let host = std::fs::read_to_string("/etc/hostname")
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty() && h.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
            .unwrap_or_else(|| "localhost".to_string());
        let secs = now() as u64;
        let mut n = 0;
        let path = loop {
            let suffix = if n == 0 {
                String::new()
            } else {
                format!(".{n}")
            };
            let p = dir.join(format!(
                "events.out.tfevents.{secs:010}.{host}.{}.vae{suffix}",
                std::process::id()
            ));
            if !p.exists() {
                break p;
            }
            n += 1;
        };
        let file = File::create_new(&path).map_err(io("create", &path))?;
        let mut writer = Self {
            path,
            file,
            pending: Vec::new(),
            written: 0,
            fail_at: None,
        };
        writer.write(proto::Event {
            wall_time: now(),
            step: 0,
            what: Some(proto::What::FileVersion("brain.Event:2".into())),
        });
        writer.flush()?;
        Ok(writer)
    }

    /// The file written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes every later write that would take the file past `bytes` fail part-way, as a disk
    /// that fills up would: for tests of what a failed write leaves.
    pub fn fail_writes_past(&mut self, bytes: u64) {
        self.fail_at = Some(bytes);
    }

    fn write(&mut self, event: proto::Event) {
        self.pending
            .extend_from_slice(&frame(&event.encode_to_vec()));
    }

    fn summary(&mut self, step: u64, values: Vec<proto::Value>) {
        self.write(proto::Event {
            wall_time: now(),
            step: step as i64,
            what: Some(proto::What::Summary(proto::Summary { value: values })),
        })
    }

    /// Logs `(tag, value)` pairs at `step`, as one event (written at the next flush).
    pub fn scalars(&mut self, step: u64, values: &[(&str, f64)]) {
        let values = values
            .iter()
            .map(|&(tag, v)| proto::Value {
                tag: tag.to_string(),
                value: Some(proto::Kind::SimpleValue(v as f32)),
            })
            .collect();
        self.summary(step, values)
    }

    /// Logs a PNG image (`channels` 1 grey, 3 RGB or 4 RGBA) under `tag` at `step` (written at
    /// the next flush).
    pub fn image(
        &mut self,
        step: u64,
        tag: &str,
        png: &[u8],
        (width, height, channels): (u32, u32, u8),
    ) {
        let image = proto::Image {
            height: height as i32,
            width: width as i32,
            colorspace: i32::from(channels),
            encoded_image_string: png.to_vec(),
        };
        self.summary(
            step,
            vec![proto::Value {
                tag: tag.to_string(),
                value: Some(proto::Kind::Image(image)),
            }],
        )
    }

    /// Writes the records logged since the last flush. On failure they are dropped and the
    /// file is cut back to its last whole record.
    pub fn flush(&mut self) -> Result<()> {
        let pending = std::mem::take(&mut self.pending);
        if pending.is_empty() {
            return Ok(());
        }
        match self.append(&pending) {
            Ok(()) => {
                self.written += pending.len() as u64;
                Ok(())
            }
            Err(cause) => {
                // Cut back to the whole records; the next flush appends after them.
                let restored = self
                    .file
                    .set_len(self.written)
                    .and_then(|()| self.file.seek(SeekFrom::Start(self.written)));
                if let Err(e) = restored {
                    tracing::warn!(
                        "cannot cut {} back to its last whole record: {e}",
                        self.path.display()
                    );
                }
                Err(io("write", &self.path)(cause))
            }
        }
    }

    fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if let Some(limit) = self.fail_at {
            let room = limit.saturating_sub(self.written);
            if (bytes.len() as u64) > room {
                self.file.write_all(&bytes[..room as usize])?;
                return Err(std::io::Error::from_raw_os_error(28)); // ENOSPC
            }
        }
        self.file.write_all(bytes)
    }
}

/// Rewrites every event file in `dir` without the events after `step` (and without a damaged
/// tail), atomically: what a resumed run does before it logs the steps again, so that no step
/// appears twice.
pub fn truncate_event_files(dir: impl AsRef<Path>, step: u64) -> Result<()> {
    let dir = dir.as_ref();
    let entries = std::fs::read_dir(dir).map_err(io("read", dir))?;
    for entry in entries {
        let path = entry.map_err(io("read", dir))?.path();
        if !is_event_file(&path) || !path.is_file() {
            continue;
        }
        let mut bytes = Vec::new();
        File::open(&path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(io("read", &path))?;
        let mut kept = Vec::with_capacity(bytes.len());
        let mut changed = false;
        let whole = records(&bytes);
        let whole_len: usize = whole.iter().map(|r| r.len() + 16).sum();
        changed |= whole_len != bytes.len();
        for record in whole {
            let keep = match proto::Event::decode(record) {
                Ok(e) => {
                    e.step <= step as i64 || matches!(e.what, Some(proto::What::FileVersion(_)))
                }
                Err(_) => false,
            };
            if keep {
                kept.extend_from_slice(&frame(record));
            } else {
                changed = true;
            }
        }
        if changed {
            vae_data::write_atomic(&path, &kept)?;
        }
    }
    Ok(())
}

/// What an [`ImageMaker`] returns: `(tag, png, (width, height, channels))` per image.
pub type Images = Vec<(String, Vec<u8>, (u32, u32, u8))>;

/// Draws each epoch's image summaries from the model. The trainer's crate draws no pictures;
/// `vae train` passes one that draws its sample and reconstruction grids.
pub type ImageMaker = Box<
    dyn FnMut(&dyn Vae) -> std::result::Result<Images, Box<dyn std::error::Error + Send + Sync>>,
>;

/// The [`Observer`] that logs a run for TensorBoard into the run directory: at each step
/// interval the training ELBO, KL and reconstruction of the interval, the learning rate and
/// images/s (`step/…`); after each epoch the train, validation and test ELBO, their KL and
/// reconstruction terms, the KL of each latent group where a model has several, the learning
/// rate and images/s (`epoch/…`); and the images an [`ImageMaker`] draws. A resumed run's
/// [`TensorBoard::new`] first drops the events logged after the checkpoint's step.
///
/// The event file is a view of the run, not its record (`metrics.csv` and the checkpoints
/// are): a failure to write it or to draw its images is logged as a warning and training goes
/// on.
pub struct TensorBoard {
    writer: EventWriter,
    images: Option<ImageMaker>,
}

impl std::fmt::Debug for TensorBoard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TensorBoard")
            .field("writer", &self.writer)
            .field("images", &self.images.is_some())
            .finish()
    }
}

impl TensorBoard {
    /// Logs into `run_dir`, a run at `step` (0 for a new run, the checkpoint's step for a
    /// resumed one): events already there after `step` are dropped, then a new file is begun.
    pub fn new(run_dir: impl AsRef<Path>, step: u64) -> Result<Self> {
        let dir = run_dir.as_ref();
        truncate_event_files(dir, step)?;
        Ok(Self {
            writer: EventWriter::create(dir)?,
            images: None,
        })
    }

    /// Also logs the images `maker` draws after each epoch.
    pub fn with_images(mut self, maker: ImageMaker) -> Self {
        self.images = Some(maker);
        self
    }

    /// The event file written.
    pub fn path(&self) -> &Path {
        self.writer.path()
    }

    /// Makes later writes fail past `bytes`, as [`EventWriter::fail_writes_past`]: for tests
    /// of what a failed write leaves.
    pub fn fail_writes_past(&mut self, bytes: u64) {
        self.writer.fail_writes_past(bytes);
    }

    fn warn_on_error(&self, what: &str, result: std::result::Result<(), impl std::fmt::Display>) {
        if let Err(e) = result {
            tracing::warn!(
                "TensorBoard {what} not written to {}: {e}",
                self.path().display()
            );
        }
    }
}

impl Observer for TensorBoard {
    fn step(&mut self, p: &StepProgress) {
        let (Some(elbo), Some(kl), Some(rec)) =
            (p.interval_elbo, p.interval_kl, p.interval_reconstruction)
        else {
            return;
        };
        let mut values = vec![
            ("step/elbo", elbo),
            ("step/kl", kl),
            ("step/reconstruction", rec),
            ("step/lr", p.lr),
        ];
        if let Some(rate) = p.images_per_s {
            values.push(("step/images_per_s", rate));
        }
        self.writer.scalars(p.step, &values);
        let written = self.writer.flush();
        self.warn_on_error("scalars", written);
    }

    fn epoch_finished(&mut self, history: &[EpochMetrics]) -> Result<()> {
        let Some(m) = history.last() else {
            return Ok(());
        };
        let mut values = vec![
            ("epoch/train_elbo", m.train_elbo),
            ("epoch/train_kl", m.train_kl),
            ("epoch/train_reconstruction", m.train_reconstruction),
            ("epoch/val_elbo", m.val_elbo),
            ("epoch/val_kl", m.val_kl),
            ("epoch/val_reconstruction", m.val_reconstruction),
            ("epoch/images_per_s", m.images_per_s),
            ("epoch/lr", m.lr),
            ("epoch/epoch", m.epoch as f64),
        ];
        if let Some(t) = m.test_elbo {
            values.push(("epoch/test_elbo", t));
        }
        if let Some(v) = m.val_iw {
            values.push(("epoch/val_iw", v));
        }
        let group_tags: Vec<String> = (1..=m.val_kl_groups.len())
            .map(|g| format!("epoch/val_kl_group{g}"))
            .collect();
        for (tag, kl) in group_tags.iter().zip(&m.val_kl_groups) {
            values.push((tag, *kl));
        }
        self.writer.scalars(m.step, &values);
        let written = self.writer.flush();
        self.warn_on_error("epoch scalars", written);
        Ok(())
    }

    fn epoch_model(&mut self, metrics: &EpochMetrics, model: &dyn Vae) -> Result<()> {
        let Some(maker) = self.images.as_mut() else {
            return Ok(());
        };
        let images = match maker(model) {
            Ok(images) => images,
            Err(e) => {
                self.warn_on_error("images", Err(e));
                return Ok(());
            }
        };
        // One write per image: a failure loses that image, not the ones before it.
        for (tag, png, size) in images {
            self.writer.image(metrics.step, &tag, &png, size);
            let written = self.writer.flush();
            self.warn_on_error("images", written);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        // The CRC-32C catalogue's check value of "123456789".
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
    }

    #[test]
    fn records_round_trip_and_stop_at_a_damaged_one() {
        let mut bytes = frame(b"first");
        bytes.extend(frame(b"second"));
        assert_eq!(records(&bytes), vec![&b"first"[..], &b"second"[..]]);
        // Cut the second record short: only the first is whole.
        let cut = &bytes[..bytes.len() - 3];
        assert_eq!(records(cut), vec![&b"first"[..]]);
        // Flip a byte in the first payload: nothing is trusted.
        let mut bad = bytes.clone();
        bad[13] ^= 1;
        assert!(records(&bad).is_empty());
    }

    #[test]
    fn scalars_and_images_read_back_and_truncate_by_step() {
        let dir = tempfile::tempdir().unwrap();
        let path = {
            let mut w = EventWriter::create(dir.path()).unwrap();
            for step in 1..=5u64 {
                w.scalars(step * 10, &[("loss", step as f64), ("lr", 0.5)]);
            }
            w.image(50, "samples", &[1, 2, 3], (4, 2, 1));
            w.flush().unwrap();
            w.path().to_path_buf()
        };
        assert!(is_event_file(&path));
        let events = read_event_file(&path).unwrap();
        assert_eq!(events.len(), 11);
        assert_eq!(events[0].step, 10);
        assert_eq!(events[0].tag, "loss");
        assert_eq!(events[0].value, LoggedValue::Scalar(1.0));
        assert_eq!(
            events[10].value,
            LoggedValue::Image {
                width: 4,
                height: 2,
                png: vec![1, 2, 3]
            }
        );

        // Append half a record, as a killed process would leave it, then truncate after 30.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(&frame(b"xxxxxxxx")[..10]).unwrap();
        drop(f);
        truncate_event_files(dir.path(), 30).unwrap();
        let events = read_event_file(&path).unwrap();
        let steps: Vec<u64> = events.iter().map(|e| e.step).collect();
        assert_eq!(steps, vec![10, 10, 20, 20, 30, 30]);
        // The version record is kept: the file still opens as an event file.
        let bytes = std::fs::read(&path).unwrap();
        let first = proto::Event::decode(records(&bytes)[0]).unwrap();
        assert_eq!(
            first.what,
            Some(proto::What::FileVersion("brain.Event:2".into()))
        );
    }

    #[test]
    fn a_write_that_fails_part_way_leaves_only_whole_records() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = EventWriter::create(dir.path()).unwrap();
        w.scalars(1, &[("loss", 1.0)]);
        w.flush().unwrap();
        let whole = std::fs::metadata(w.path()).unwrap().len();
        // Room for a few hundred more bytes: an image record of 4 KiB fails half-way.
        w.fail_writes_past(whole + 300);
        w.image(2, "samples", &[7; 4096], (64, 64, 1));
        let err = w.flush().unwrap_err().to_string();
        assert!(err.contains("No space left on device"), "{err}");
        assert_eq!(std::fs::metadata(w.path()).unwrap().len(), whole);
        // Small records still fit after it, and follow on from the whole ones.
        w.scalars(3, &[("loss", 3.0)]);
        w.flush().unwrap();
        w.image(4, "samples", &[7; 4096], (64, 64, 1));
        assert!(w.flush().is_err());
        w.scalars(5, &[("loss", 5.0)]);
        w.flush().unwrap();
        let bytes = std::fs::read(w.path()).unwrap();
        let whole_len: usize = records(&bytes).iter().map(|r| r.len() + 16).sum();
        assert_eq!(whole_len, bytes.len(), "no torn record in the file");
        let steps: Vec<u64> = parse_events(&bytes).iter().map(|e| e.step).collect();
        assert_eq!(steps, [1, 3, 5]);
    }

    #[test]
    fn crafted_lengths_end_the_records_without_overflow() {
        for len in [
            u64::MAX,
            u64::MAX - 3,
            u64::MAX - 15,
            (usize::MAX - 12) as u64,
        ] {
            let len_bytes = len.to_le_bytes();
            let mut bytes = len_bytes.to_vec();
            bytes.extend_from_slice(&masked_crc(&len_bytes).to_le_bytes());
            bytes.extend_from_slice(b"payload");
            assert!(records(&bytes).is_empty());
            assert!(parse_events(&bytes).is_empty());
        }
    }

    /// Inputs kept from fuzzing the reader (`fuzz/regressions/events`).
    #[test]
    fn event_fuzz_regressions_do_not_panic() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/regressions/events");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            let _ = parse_events(&bytes);
            let _ = parse_events(&events_fuzz_input(&bytes));
            n += 1;
        }
        assert!(n >= 3, "{n} regression inputs in {}", dir.display());
        // A whole summary, then the same record cut short: the first is read.
        let torn = std::fs::read(dir.join("torn-tail")).unwrap();
        let events = parse_events(&torn);
        assert_eq!(events.len(), 1);
        assert_eq!(
            (events[0].step, events[0].value.clone()),
            (5, LoggedValue::Scalar(1.0))
        );
    }
}
