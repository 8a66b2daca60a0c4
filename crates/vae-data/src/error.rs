use std::io;
use std::path::PathBuf;

/// Everything that can go wrong reading, writing or batching data.
///
/// Each variant names the file (or stream) involved and what about it was wrong, so the
/// message alone tells a user what to fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// The file could not be opened, read or written.
    #[error("cannot {action} {}: {cause}", path.display())]
    Io {
        /// What was being done: `open`, `read`, `write`, …
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The operating system's error (said in the message, so not also a `source`).
        cause: io::Error,
    },
    /// The first four bytes are not an IDX magic number (`0x00 0x00 type rank`).
    #[error(
        "{}: not an IDX file: magic number is {found:#010x}, expected two zero bytes, a type code and a rank",
        path.display()
    )]
    BadMagic {
        /// The file.
        path: PathBuf,
        /// The four bytes read, big-endian.
        found: u32,
    },
    /// The IDX type code is not one of the six the format defines.
    #[error(
        "{}: unsupported IDX element type {code:#04x} (the format defines 0x08 u8, 0x09 i8, 0x0b i16, 0x0c i32, 0x0d f32, 0x0e f64)",
        path.display()
    )]
    UnsupportedType {
        /// The file.
        path: PathBuf,
        /// The type byte read.
        code: u8,
    },
    /// The file ends before the header or the data it announces.
    #[error("{}: truncated {part}: expected {expected} bytes, found {found}", path.display())]
    Truncated {
        /// The file.
        path: PathBuf,
        /// `"header"` or `"data"`.
        part: &'static str,
        /// Bytes the header announces.
        expected: u64,
        /// Bytes present.
        found: u64,
    },
    /// Bytes follow the data the header announces.
    #[error("{}: {extra} trailing bytes after the {expected} data bytes the header announces", path.display())]
    TrailingBytes {
        /// The file.
        path: PathBuf,
        /// Data bytes the header announces.
        expected: u64,
        /// Bytes after them.
        extra: u64,
    },
    /// The dimensions multiply to more elements than this machine can address.
    #[error("{}: dimensions {dims:?} are too large (their product overflows)", path.display())]
    DimensionOverflow {
        /// The file.
        path: PathBuf,
        /// The dimensions read.
        dims: Vec<u64>,
    },
    /// The file starts like gzip but does not decompress.
    #[error("{}: gzip stream is corrupt: {cause}", path.display())]
    Gzip {
        /// The file.
        path: PathBuf,
        /// The decompressor's error (said in the message, so not also a `source`).
        cause: io::Error,
    },
    /// An IDX file holds another element type or rank than the caller needs.
    #[error("{}: expected {expected}, found {found}", path.display())]
    Layout {
        /// The file.
        path: PathBuf,
        /// What was needed, e.g. `"u8 images of rank 3 (N x H x W)"`.
        expected: String,
        /// What the file holds.
        found: String,
    },
    /// Image and label files disagree on the number of examples.
    #[error(
        "{} holds {images} images but {} holds {labels} labels",
        images_path.display(),
        labels_path.display()
    )]
    CountMismatch {
        /// The image file.
        images_path: PathBuf,
        /// Its example count.
        images: usize,
        /// The label file.
        labels_path: PathBuf,
        /// Its example count.
        labels: usize,
    },
    /// A dataset file is not in the directory.
    #[error(
        "{}: no {what} file (looked for {}); run `cargo xtask download` or pass the folder holding the IDX files",
        dir.display(),
        candidates.join(", ")
    )]
    MissingFile {
        /// The directory searched.
        dir: PathBuf,
        /// What was looked for, e.g. `"train images"`.
        what: &'static str,
        /// The file names tried.
        candidates: Vec<String>,
    },
    /// An argument is outside its valid range (batch size 0, a split larger than the data, ...).
    #[error("{0}")]
    InvalidArgument(String),
}

/// `Result` with [`DataError`].
pub type Result<T, E = DataError> = std::result::Result<T, E>;
