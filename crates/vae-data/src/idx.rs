//! The IDX format: a big-endian header (`0x00 0x00 type rank`, then `rank` u32 dimensions)
//! followed by the elements in row-major order, optionally gzip-compressed as a whole.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use byteorder::{BigEndian, ByteOrder, WriteBytesExt};
use flate2::bufread::MultiGzDecoder;
use ndarray::{ArrayD, IxDyn};

use crate::error::{DataError, Result};

/// The element types the IDX format defines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IdxType {
    /// `0x08`: unsigned byte.
    U8,
    /// `0x09`: signed byte.
    I8,
    /// `0x0B`: 16-bit signed integer.
    I16,
    /// `0x0C`: 32-bit signed integer.
    I32,
    /// `0x0D`: 32-bit float.
    F32,
    /// `0x0E`: 64-bit float.
    F64,
}

impl IdxType {
    /// The type code stored in the magic number.
    pub fn code(self) -> u8 {
        match self {
            IdxType::U8 => 0x08,
            IdxType::I8 => 0x09,
            IdxType::I16 => 0x0B,
            IdxType::I32 => 0x0C,
            IdxType::F32 => 0x0D,
            IdxType::F64 => 0x0E,
        }
    }

    /// The type for a code, if the format defines one.
    pub fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0x08 => IdxType::U8,
            0x09 => IdxType::I8,
            0x0B => IdxType::I16,
            0x0C => IdxType::I32,
            0x0D => IdxType::F32,
            0x0E => IdxType::F64,
            _ => return None,
        })
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            IdxType::U8 | IdxType::I8 => 1,
            IdxType::I16 => 2,
            IdxType::I32 | IdxType::F32 => 4,
            IdxType::F64 => 8,
        }
    }
}

impl std::fmt::Display for IdxType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            IdxType::U8 => "u8",
            IdxType::I8 => "i8",
            IdxType::I16 => "i16",
            IdxType::I32 => "i32",
            IdxType::F32 => "f32",
            IdxType::F64 => "f64",
        };
        f.write_str(name)
    }
}

/// An IDX file's contents: an n-dimensional array of one of the six element types.
#[derive(Debug, Clone, PartialEq)]
pub enum IdxArray {
    /// Unsigned bytes (MNIST images and labels).
    U8(ArrayD<u8>),
    /// Signed bytes.
    I8(ArrayD<i8>),
    /// 16-bit integers.
    I16(ArrayD<i16>),
    /// 32-bit integers.
    I32(ArrayD<i32>),
    /// 32-bit floats.
    F32(ArrayD<f32>),
    /// 64-bit floats.
    F64(ArrayD<f64>),
}

impl IdxArray {
    /// The element type.
    pub fn idx_type(&self) -> IdxType {
        match self {
            IdxArray::U8(_) => IdxType::U8,
            IdxArray::I8(_) => IdxType::I8,
            IdxArray::I16(_) => IdxType::I16,
            IdxArray::I32(_) => IdxType::I32,
            IdxArray::F32(_) => IdxType::F32,
            IdxArray::F64(_) => IdxType::F64,
        }
    }

    /// The dimensions.
    pub fn shape(&self) -> &[usize] {
        match self {
            IdxArray::U8(a) => a.shape(),
            IdxArray::I8(a) => a.shape(),
            IdxArray::I16(a) => a.shape(),
            IdxArray::I32(a) => a.shape(),
            IdxArray::F32(a) => a.shape(),
            IdxArray::F64(a) => a.shape(),
        }
    }

    /// A short description such as `"u8 array of shape [60000, 28, 28]"`, for error messages.
    pub fn describe(&self) -> String {
        format!("{} array of shape {:?}", self.idx_type(), self.shape())
    }
}

/// Where bytes come from, for error messages: a path, or a name such as `<reader>`.
fn source_name(path: Option<&Path>) -> PathBuf {
    path.map_or_else(|| PathBuf::from("<reader>"), Path::to_path_buf)
}

/// Reads an IDX file, gzip-compressed or not (detected by its magic bytes, not its name).
pub fn read_idx(path: impl AsRef<Path>) -> Result<IdxArray> {
    let path = path.as_ref();
    let file = File::open(path).map_err(|cause| DataError::Io {
        action: "open",
        path: path.to_path_buf(),
        cause,
    })?;
    read_idx_named(BufReader::with_capacity(1 << 16, file), Some(path))
}

/// Reads IDX data from any reader, gzip-compressed or not. Errors name the source `<reader>`.
pub fn read_idx_from(reader: impl Read) -> Result<IdxArray> {
    read_idx_named(BufReader::new(reader), None)
}

fn read_idx_named(mut reader: impl BufRead, path: Option<&Path>) -> Result<IdxArray> {
    let name = source_name(path);
    let io_err = |cause| DataError::Io {
        action: "read",
        path: name.clone(),
        cause,
    };
    let head = reader.fill_buf().map_err(io_err)?;
    if head.starts_with(&[0x1f, 0x8b]) {
        let mut gz = MultiGzDecoder::new(reader);
        read_plain(&mut gz, &name, true)
    } else {
        read_plain(&mut reader, &name, false)
    }
}

/// Reads exactly `buf.len()` bytes or reports how many there were.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

fn read_plain(reader: &mut impl Read, name: &Path, gzip: bool) -> Result<IdxArray> {
    let wrap = |cause: io::Error| {
        if gzip {
            DataError::Gzip {
                path: name.to_path_buf(),
                cause,
            }
        } else {
            DataError::Io {
                action: "read",
                path: name.to_path_buf(),
                cause,
            }
        }
    };

    let mut magic = [0u8; 4];
    let got = read_full(reader, &mut magic).map_err(wrap)?;
    if got < 4 {
        return Err(DataError::Truncated {
            path: name.to_path_buf(),
            part: "header",
            expected: 4,
            found: got as u64,
        });
    }
    if magic[0] != 0 || magic[1] != 0 {
        return Err(DataError::BadMagic {
            path: name.to_path_buf(),
            found: BigEndian::read_u32(&magic),
        });
    }
    let ty = IdxType::from_code(magic[2]).ok_or(DataError::UnsupportedType {
        path: name.to_path_buf(),
        code: magic[2],
    })?;
    let rank = usize::from(magic[3]);

    let mut dims_raw = vec![0u8; 4 * rank];
    let got = read_full(reader, &mut dims_raw).map_err(wrap)?;
    if got < dims_raw.len() {
        return Err(DataError::Truncated {
            path: name.to_path_buf(),
            part: "header",
            expected: 4 + dims_raw.len() as u64,
            found: 4 + got as u64,
        });
    }
    let dims: Vec<usize> = dims_raw
        .chunks_exact(4)
        .map(|c| BigEndian::read_u32(c) as usize)
        .collect();
    let overflow = || DataError::DimensionOverflow {
        path: name.to_path_buf(),
        dims: dims.iter().map(|&d| d as u64).collect(),
    };
    let count = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(overflow)?;
    let expected = count.checked_mul(ty.size()).ok_or_else(overflow)?;
    // isize::MAX bounds every allocation; refuse before trying.
    if expected > isize::MAX as usize {
        return Err(overflow());
    }

    // Grow the buffer as bytes arrive instead of trusting the header with one allocation:
    // a 20-byte file claiming terabytes must fail as truncated, not abort on allocation.
    let mut data = Vec::new();
    reader
        .take(expected as u64)
        .read_to_end(&mut data)
        .map_err(wrap)?;
    if data.len() < expected {
        return Err(DataError::Truncated {
            path: name.to_path_buf(),
            part: "data",
            expected: expected as u64,
            found: data.len() as u64,
        });
    }
    let extra = io::copy(reader, &mut io::sink()).map_err(wrap)?;
    if extra > 0 {
        return Err(DataError::TrailingBytes {
            path: name.to_path_buf(),
            expected: expected as u64,
            extra,
        });
    }

    let shape = IxDyn(&dims);
    let array = |v| ArrayD::from_shape_vec(shape.clone(), v).map_err(|_| overflow());
    Ok(match ty {
        IdxType::U8 => IdxArray::U8(array(data)?),
        IdxType::I8 => IdxArray::I8(
            ArrayD::from_shape_vec(shape.clone(), data.iter().map(|&b| b as i8).collect())
                .map_err(|_| overflow())?,
        ),
        IdxType::I16 => {
            let mut v = vec![0i16; count];
            BigEndian::read_i16_into(&data, &mut v);
            IdxArray::I16(ArrayD::from_shape_vec(shape, v).map_err(|_| overflow())?)
        }
        IdxType::I32 => {
            let mut v = vec![0i32; count];
            BigEndian::read_i32_into(&data, &mut v);
            IdxArray::I32(ArrayD::from_shape_vec(shape, v).map_err(|_| overflow())?)
        }
        IdxType::F32 => {
            let mut v = vec![0f32; count];
            BigEndian::read_f32_into(&data, &mut v);
            IdxArray::F32(ArrayD::from_shape_vec(shape, v).map_err(|_| overflow())?)
        }
        IdxType::F64 => {
            let mut v = vec![0f64; count];
            BigEndian::read_f64_into(&data, &mut v);
            IdxArray::F64(ArrayD::from_shape_vec(shape, v).map_err(|_| overflow())?)
        }
    })
}

/// Writes `array` as IDX to `writer`, uncompressed.
///
/// Fails with [`DataError::InvalidArgument`] for a rank above 255 or a dimension above
/// `u32::MAX`, which the format cannot express.
pub fn write_idx_to(mut writer: impl Write, array: &IdxArray) -> Result<()> {
    let name = PathBuf::from("<writer>");
    let shape = array.shape();
    let rank = u8::try_from(shape.len()).map_err(|_| {
        DataError::InvalidArgument(format!("IDX rank is at most 255, got {}", shape.len()))
    })?;
    let io_err = |cause| DataError::Io {
        action: "write",
        path: name.clone(),
        cause,
    };
    writer
        .write_all(&[0, 0, array.idx_type().code(), rank])
        .map_err(io_err)?;
    for &d in shape {
        let d = u32::try_from(d).map_err(|_| {
            DataError::InvalidArgument(format!("IDX dimensions are at most u32::MAX, got {d}"))
        })?;
        writer.write_u32::<BigEndian>(d).map_err(io_err)?;
    }
    let mut w = io::BufWriter::new(&mut writer);
    let result: io::Result<()> = match array {
        IdxArray::U8(a) => a.iter().try_for_each(|&x| w.write_u8(x)),
        IdxArray::I8(a) => a.iter().try_for_each(|&x| w.write_i8(x)),
        IdxArray::I16(a) => a.iter().try_for_each(|&x| w.write_i16::<BigEndian>(x)),
        IdxArray::I32(a) => a.iter().try_for_each(|&x| w.write_i32::<BigEndian>(x)),
        IdxArray::F32(a) => a.iter().try_for_each(|&x| w.write_f32::<BigEndian>(x)),
        IdxArray::F64(a) => a.iter().try_for_each(|&x| w.write_f64::<BigEndian>(x)),
    };
    result.and_then(|()| w.flush()).map_err(io_err)
}

/// Writes `array` to `path` as IDX, gzip-compressed when `gzip` is true.
///
/// The write is atomic ([`write_atomic`](crate::write_atomic)): a crash never leaves a
/// half-written file under the final name.
pub fn write_idx(path: impl AsRef<Path>, array: &IdxArray, gzip: bool) -> Result<()> {
    let path = path.as_ref();
    let io_err = |cause| DataError::Io {
        action: "compress",
        path: path.to_path_buf(),
        cause,
    };
    let mut bytes = Vec::new();
    if gzip {
        let mut enc = flate2::write::GzEncoder::new(&mut bytes, flate2::Compression::default());
        write_idx_to(&mut enc, array)?;
        enc.finish().map_err(io_err)?;
    } else {
        write_idx_to(&mut bytes, array)?;
    }
    crate::files::write_atomic(path, &bytes)
}

/// Gzip-compresses bytes in memory (test helper).
#[cfg(test)]
pub(crate) fn gzip_bytes(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}
