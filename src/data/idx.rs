//! IDX files (the MNIST / Fashion-MNIST format), gzipped or not.
//!
//! An images file `[N, H, W]` of uint8 (scaled to `[0, 1]`) or float32/64
//! (kept), and beside it a labels file `[N]` of integers, found by the
//! standard naming: `-images-idx3-ubyte` -> `-labels-idx1-ubyte` (also
//! `-images.idx3-ubyte` -> `-labels.idx1-ubyte`), each tried gzipped and
//! plain.
//!
//! The header is read first and the size it claims checked (against the
//! file's size, and the memory budget of [`crate::limits`]) before the data;
//! a gzip stream is never inflated past that size.

use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;

use super::{images_tensor, labels_tensor, DataError, Dataset, RawImages, SourceLayout};
use crate::limits::{check_bytes, element_count, LimitError};

/// IDX element types (third magic byte).
const T_U8: u8 = 0x08;
const T_I8: u8 = 0x09;
const T_I16: u8 = 0x0B;
const T_I32: u8 = 0x0C;
const T_F32: u8 = 0x0D;
const T_F64: u8 = 0x0E;

pub(super) fn is_idx_magic(m: &[u8]) -> bool {
    m.len() == 4
        && m[0] == 0
        && m[1] == 0
        && matches!(m[2], T_U8 | T_I8 | T_I16 | T_I32 | T_F32 | T_F64)
        && (1..=4).contains(&m[3])
}

/// A decoded IDX file: element type, dimensions, and the raw big-endian data.
struct Idx {
    elem: u8,
    dims: Vec<usize>,
    data: Vec<u8>,
}

fn elem_size(elem: u8) -> usize {
    match elem {
        T_U8 | T_I8 => 1,
        T_I16 => 2,
        T_I32 | T_F32 => 4,
        _ => 8,
    }
}

fn elem_name(elem: u8) -> &'static str {
    match elem {
        T_U8 => "uint8",
        T_I8 => "int8",
        T_I16 => "int16",
        T_I32 => "int32",
        T_F32 => "float32",
        _ => "float64",
    }
}

/// Reads an IDX file, gzipped or not, header first: the size the header
/// claims is checked (against the file's size when it is not compressed, and
/// against the memory budget) before any data is read, and a gzip stream is
/// never inflated past it.
fn read_idx(path: &Path) -> Result<Idx, DataError> {
    let file = crate::inputs::open_regular(path).map_err(|e| DataError::io(path, e))?;
    let len = file.metadata().map_err(|e| DataError::io(path, e))?.len();
    let mut file = BufReader::new(file);
    let head = file.fill_buf().map_err(|e| DataError::io(path, e))?;
    if head.starts_with(&[0x1f, 0x8b]) {
        read_idx_stream(path, GzDecoder::new(file), None)
    } else {
        read_idx_stream(path, file, Some(len))
    }
}

/// Reads IDX from `stream`; `file_len` is the file's size when the stream is
/// the file itself rather than inflated from it.
fn read_idx_stream(
    path: &Path,
    mut stream: impl Read,
    file_len: Option<u64>,
) -> Result<Idx, DataError> {
    let source = if file_len.is_some() {
        "the file"
    } else {
        "the gzip stream"
    };
    let read_error = |e: io::Error| match file_len {
        Some(_) => DataError::io(path, e),
        None => DataError::format(path, format!("corrupt gzip data: {e}")),
    };
    let mut magic = Vec::with_capacity(4);
    (&mut stream)
        .take(4)
        .read_to_end(&mut magic)
        .map_err(read_error)?;
    if magic.len() < 4 || !is_idx_magic(&magic) {
        return Err(DataError::format(
            path,
            "not an IDX file (bad magic number)",
        ));
    }
    let (elem, ndims) = (magic[2], magic[3] as usize);
    let mut raw_dims = Vec::with_capacity(4 * ndims);
    (&mut stream)
        .take(4 * ndims as u64)
        .read_to_end(&mut raw_dims)
        .map_err(read_error)?;
    if raw_dims.len() < 4 * ndims {
        return Err(DataError::format(path, "truncated IDX header"));
    }
    let dims: Vec<usize> = raw_dims
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let claim = || format!("IDX header says {dims:?} of {}", elem_name(elem));
    let data_what = format!("the IDX data ({dims:?} of {})", elem_name(elem));
    let limit_error = |e: LimitError| DataError::format(path, e.to_string());
    let dims_i64: Vec<i64> = dims.iter().map(|&d| d as i64).collect();
    let count = element_count(&dims_i64, &data_what).map_err(limit_error)?;
    let expected = count as u64 * elem_size(elem) as u64;
    if let Some(len) = file_len {
        let got = len.saturating_sub(4 + 4 * ndims as u64);
        if got != expected {
            return Err(DataError::format(
                path,
                format!(
                    "{} ({expected} bytes) but the file holds {got} bytes of data",
                    claim()
                ),
            ));
        }
    }
    check_bytes(expected as u128, &data_what).map_err(limit_error)?;
    let mut data = Vec::new();
    if file_len.is_some() {
        // The file is known to hold this much.
        data.reserve_exact(expected as usize);
    }
    (&mut stream)
        .take(expected)
        .read_to_end(&mut data)
        .map_err(read_error)?;
    if (data.len() as u64) < expected {
        return Err(DataError::format(
            path,
            format!(
                "{} ({expected} bytes) but {source} holds only {} bytes of data (truncated)",
                claim(),
                data.len()
            ),
        ));
    }
    // Data past what the header describes is an error, as it always was for
    // plain files; one more byte says whether there is any (and, at the end
    // of a gzip stream, has its checksum verified) without inflating the rest.
    if stream.read(&mut [0u8]).map_err(read_error)? > 0 {
        return Err(DataError::format(
            path,
            format!(
                "{} ({expected} bytes) but {source} holds more data than that",
                claim()
            ),
        ));
    }
    Ok(Idx { elem, dims, data })
}

/// Candidate label file paths beside an images file, in the order tried.
pub(super) fn label_candidates(images: &Path) -> Vec<PathBuf> {
    let Some(name) = images.file_name().and_then(|n| n.to_str()) else {
        return Vec::new();
    };
    let base = name.strip_suffix(".gz").unwrap_or(name);
    let swaps = [
        ("-images-idx3-ubyte", "-labels-idx1-ubyte"),
        ("-images.idx3-ubyte", "-labels.idx1-ubyte"),
        ("_images_idx3_ubyte", "_labels_idx1_ubyte"),
        ("images-idx3-ubyte", "labels-idx1-ubyte"),
        ("images.idx3-ubyte", "labels.idx1-ubyte"),
    ];
    let Some(label_base) = swaps
        .iter()
        .find(|(from, _)| base.contains(from))
        .map(|(from, to)| base.replacen(from, to, 1))
    else {
        return Vec::new();
    };
    let dir = images.parent().unwrap_or(Path::new(""));
    vec![dir.join(format!("{label_base}.gz")), dir.join(&label_base)]
}

pub(super) fn load(path: &Path) -> Result<Dataset, DataError> {
    let images = read_idx(path)?;
    if images.dims.len() != 3 {
        return Err(DataError::format(
            path,
            format!(
                "IDX images must have 3 dimensions [N, H, W], found {:?}",
                images.dims
            ),
        ));
    }
    let labels_path = super::find_labels(path, label_candidates(path))?;
    let labels = read_labels(&labels_path)?;

    let (n, h, w) = (images.dims[0], images.dims[1], images.dims[2]);
    if labels.len() != n {
        return Err(DataError::format(
            &labels_path,
            format!(
                "holds {} labels but `{}` holds {n} images",
                labels.len(),
                path.display()
            ),
        ));
    }
    let raw = match images.elem {
        T_U8 => RawImages::U8(images.data),
        T_F32 => RawImages::F32(
            images
                .data
                .chunks_exact(4)
                .map(|c| f32::from_be_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ),
        T_F64 => RawImages::F32(
            images
                .data
                .chunks_exact(8)
                .map(|c| f64::from_be_bytes(c.try_into().expect("chunk of 8")) as f32)
                .collect(),
        ),
        other => {
            return Err(DataError::format(
                path,
                format!(
                    "IDX images of {} are not supported (expected uint8, float32 or float64)",
                    elem_name(other)
                ),
            ))
        }
    };
    let images = images_tensor(
        path,
        raw,
        [n as i64, 1, h as i64, w as i64],
        SourceLayout::Nhw,
    )?;
    let labels = labels_tensor(&labels_path, &labels)?;
    Dataset::new(
        images,
        labels,
        path.display().to_string(),
        SourceLayout::Nhw,
    )
}

fn read_labels(path: &Path) -> Result<Vec<i64>, DataError> {
    let idx = read_idx(path)?;
    if idx.dims.len() != 1 {
        return Err(DataError::format(
            path,
            format!("IDX labels must have 1 dimension [N], found {:?}", idx.dims),
        ));
    }
    let d = &idx.data;
    Ok(match idx.elem {
        T_U8 => d.iter().map(|&b| b as i64).collect(),
        T_I8 => d.iter().map(|&b| b as i8 as i64).collect(),
        T_I16 => d
            .chunks_exact(2)
            .map(|c| i16::from_be_bytes([c[0], c[1]]) as i64)
            .collect(),
        T_I32 => d
            .chunks_exact(4)
            .map(|c| i32::from_be_bytes([c[0], c[1], c[2], c[3]]) as i64)
            .collect(),
        other => {
            return Err(DataError::format(
                path,
                format!(
                    "IDX labels of {} are not supported (expected an integer type)",
                    elem_name(other)
                ),
            ))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use tch::Kind;

    fn idx_bytes(elem: u8, dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut b = vec![0, 0, elem, dims.len() as u8];
        for d in dims {
            b.extend_from_slice(&d.to_be_bytes());
        }
        b.extend_from_slice(data);
        b
    }

    fn write(path: &Path, bytes: &[u8], gz: bool) {
        if gz {
            let f = std::fs::File::create(path).unwrap();
            let mut e = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
            e.write_all(bytes).unwrap();
            e.finish().unwrap();
        } else {
            std::fs::write(path, bytes).unwrap();
        }
    }

    fn round_trip(gz: bool) {
        let dir = tempfile::tempdir().unwrap();
        let ext = if gz { ".gz" } else { "" };
        let pixels: Vec<u8> = (0..3 * 2 * 4).map(|i| (i * 10) as u8).collect();
        let images = dir.path().join(format!("tiny-images-idx3-ubyte{ext}"));
        write(&images, &idx_bytes(T_U8, &[3, 2, 4], &pixels), gz);
        // Labels in the other compression: both are tried.
        let other = if gz { "" } else { ".gz" };
        write(
            &dir.path().join(format!("tiny-labels-idx1-ubyte{other}")),
            &idx_bytes(T_U8, &[3], &[7, 0, 2]),
            !gz,
        );
        let d = super::super::load(&images).unwrap();
        assert_eq!(d.images.size(), vec![3, 1, 2, 4]);
        assert_eq!(d.images.kind(), Kind::Float);
        assert_eq!(Vec::<i64>::try_from(&d.labels).unwrap(), vec![7, 0, 2]);
        let flat = Vec::<f32>::try_from(d.images.flatten(0, -1)).unwrap();
        let want: Vec<f32> = pixels.iter().map(|&p| p as f32 / 255.0).collect();
        assert_eq!(flat, want);
        assert_eq!(d.layout_hint, SourceLayout::Nhw);
    }

    #[test]
    fn idx_round_trip_plain() {
        round_trip(false);
    }

    #[test]
    fn idx_round_trip_gz() {
        round_trip(true);
    }

    #[test]
    fn idx_float_images() {
        let dir = tempfile::tempdir().unwrap();
        let values = [0.5f32, -1.0, 2.0, 0.25];
        let data: Vec<u8> = values.iter().flat_map(|v| v.to_be_bytes()).collect();
        let images = dir.path().join("f-images-idx3-ubyte");
        write(&images, &idx_bytes(T_F32, &[1, 2, 2], &data), false);
        write(
            &dir.path().join("f-labels-idx1-ubyte"),
            &idx_bytes(T_U8, &[1], &[3]),
            false,
        );
        let d = super::super::load(&images).unwrap();
        assert_eq!(
            Vec::<f32>::try_from(d.images.flatten(0, -1)).unwrap(),
            values
        );
    }

    #[test]
    fn idx_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let images = dir.path().join("t-images-idx3-ubyte");
        write(&images, &idx_bytes(T_U8, &[2, 2, 2], &[0; 8]), false);
        let e = super::super::load(&images).unwrap_err().to_string();
        assert!(
            e.contains("t-labels-idx1-ubyte.gz") && e.contains("t-labels-idx1-ubyte`"),
            "{e}"
        );

        write(
            &dir.path().join("t-labels-idx1-ubyte"),
            &idx_bytes(T_U8, &[3], &[0; 3]),
            false,
        );
        let e = super::super::load(&images).unwrap_err().to_string();
        assert!(e.contains("3 labels") && e.contains("2 images"), "{e}");

        let short = dir.path().join("s-images-idx3-ubyte");
        write(&short, &idx_bytes(T_U8, &[2, 2, 2], &[0; 5]), false);
        let e = super::super::load(&short).unwrap_err().to_string();
        assert!(
            e.contains("s-images-idx3-ubyte") && e.contains("5 bytes"),
            "{e}"
        );
    }

    /// A gzip bomb posing as IDX: a header for four bytes, then 32 MiB of
    /// zeros. Refused after one byte past the four, not inflated in full.
    #[test]
    fn idx_gzip_bomb_is_not_inflated() {
        let dir = tempfile::tempdir().unwrap();
        let images = dir.path().join("b-images-idx3-ubyte.gz");
        let mut e = flate2::write::GzEncoder::new(
            std::fs::File::create(&images).unwrap(),
            flate2::Compression::fast(),
        );
        e.write_all(&idx_bytes(T_U8, &[1, 2, 2], &[0; 4])).unwrap();
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..32 {
            e.write_all(&zeros).unwrap();
        }
        e.finish().unwrap();
        let e = super::super::load(&images).unwrap_err().to_string();
        assert!(
            e.contains("b-images-idx3-ubyte.gz") && e.contains("more data than that"),
            "{e}"
        );
        assert!(!e.contains('\n'), "{e}");
    }

    /// The same bomb as an endless stream: reading stops at the header's size.
    #[test]
    fn idx_stream_is_read_no_further_than_its_header_says() {
        let header = idx_bytes(T_U8, &[1, 2, 2], &[]);
        let endless = std::io::Cursor::new(header).chain(std::io::repeat(7));
        let e = read_idx_stream(Path::new("endless"), endless, None)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("endless") && e.contains("more data"), "{e}");
        let exact = idx_bytes(T_U8, &[1, 2, 2], &[1, 2, 3, 4]);
        let idx = read_idx_stream(Path::new("exact"), &exact[..], None).unwrap();
        assert_eq!(idx.data, vec![1, 2, 3, 4]);
    }

    /// Headers claiming more than the budget, or more than a gzip stream
    /// holds, fail before the data is read; so do labels.
    #[test]
    fn idx_claims_are_checked_before_reading() {
        let dir = tempfile::tempdir().unwrap();
        let huge = dir.path().join("h-images-idx3-ubyte.gz");
        write(
            &huge,
            &idx_bytes(T_U8, &[60000, 60000, 60000], &[0; 100]),
            true,
        );
        let e = super::super::load(&huge).unwrap_err().to_string();
        assert!(
            e.contains("h-images-idx3-ubyte.gz")
                && e.contains("[60000, 60000, 60000]")
                && e.contains(crate::limits::BUDGET_VARIABLE),
            "{e}"
        );

        let short = dir.path().join("s-images-idx3-ubyte.gz");
        write(&short, &idx_bytes(T_U8, &[2, 2, 2], &[0; 5]), true);
        let e = super::super::load(&short).unwrap_err().to_string();
        assert!(
            e.contains("s-images-idx3-ubyte.gz")
                && e.contains("only 5 bytes")
                && e.contains("truncated"),
            "{e}"
        );

        // Plain, the size of the data matches the header; over the budget (a
        // sparse file, no disk is used).
        let big = dir.path().join("p-images-idx3-ubyte");
        let n = (crate::limits::memory_budget() >> 20) as u32 + 1;
        write(&big, &idx_bytes(T_U8, &[n, 1024, 1024], &[]), false);
        std::fs::File::options()
            .write(true)
            .open(&big)
            .unwrap()
            .set_len(16 + ((n as u64) << 20))
            .unwrap();
        let e = super::super::load(&big).unwrap_err().to_string();
        assert!(
            e.contains("p-images-idx3-ubyte") && e.contains(crate::limits::BUDGET_VARIABLE),
            "{e}"
        );

        let images = dir.path().join("l-images-idx3-ubyte");
        write(&images, &idx_bytes(T_U8, &[2, 1, 1], &[0; 2]), false);
        write(
            &dir.path().join("l-labels-idx1-ubyte.gz"),
            &idx_bytes(T_I32, &[u32::MAX], &[0; 8]),
            true,
        );
        let e = super::super::load(&images).unwrap_err().to_string();
        // 16 GiB of int32 labels: over the default budget; truncated under
        // a larger one.
        assert!(
            e.contains("l-labels-idx1-ubyte.gz")
                && (e.contains(crate::limits::BUDGET_VARIABLE) || e.contains("truncated")),
            "{e}"
        );
    }

    /// The real Fashion-MNIST test set from the Debian package
    /// `dataset-fashion-mnist`.
    #[test]
    fn fashion_mnist_test_set() {
        let path = Path::new("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz");
        if !path.is_file() {
            eprintln!(
                "skipping: {} is absent (Debian package dataset-fashion-mnist)",
                path.display()
            );
            return;
        }
        let d = super::super::load(path).unwrap();
        assert_eq!(d.images.size(), vec![10000, 1, 28, 28]);
        assert_eq!(d.len(), 10000);
        let min = d.labels.min().int64_value(&[]);
        let max = d.labels.max().int64_value(&[]);
        assert!(min >= 0 && max < 10, "labels in {min}..={max}");
        assert_eq!(d.num_classes().unwrap(), 10);
        assert!(d.images.max().double_value(&[]) <= 1.0);
        assert!(d.images.min().double_value(&[]) >= 0.0);
    }
}
