//! NumPy `.npz` archives and `.npy` pairs.
//!
//! Images: uint8 (scaled by 1/255) or float32/float64 (kept, stored as
//! float32), `[N, C, H, W]`, `[N, H, W, C]`, `[N, H, W]` or `[N, H*W]` for
//! square single-channel images. Labels: any integer type (or integral
//! floats), `[N]`, `[N, 1]` or one-hot `[N, K]`.
//!
//! Files nobody vetted: each array's header is parsed here first, and the
//! size its shape claims is checked against the bytes present (the file's
//! size, or an `.npz` member's declared size) and the memory budget
//! ([`crate::limits`]) before ndarray-npy allocates anything.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use ndarray::ArrayD;
use ndarray_npy::{ReadNpyError, ReadNpyExt, ReadableElement};

use super::{
    guess_4d_layout, images_tensor, labels_tensor, DataError, Dataset, RawImages, SourceLayout,
};
use crate::limits::{check_bytes, human_bytes, LimitError};

/// Image/label array names tried in an `.npz`, in this order.
const NPZ_PAIRS: &[(&str, &str)] = &[
    ("x", "y"),
    ("X", "y"),
    ("X", "Y"),
    ("images", "labels"),
    ("x_test", "y_test"),
    ("X_test", "y_test"),
    ("x_train", "y_train"),
    ("X_train", "y_train"),
    ("data", "labels"),
    ("inputs", "targets"),
    ("imgs", "labels"),
];

/// An `.npz` archive, read with our own zip reader so that no member is
/// inflated past the size its array header was checked for.
type Npz = zip::ZipArchive<BufReader<File>>;

/// The element types ibau reads from arrays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dtype {
    U8,
    I8,
    I16,
    U16,
    I32,
    U32,
    I64,
    U64,
    F32,
    F64,
}

impl Dtype {
    /// The type a descriptor names: the descriptors ndarray-npy reads (one
    /// byte types in any spelling, others in either byte order).
    fn from_descr(descr: &str) -> Option<Dtype> {
        match descr {
            "|u1" | "u1" | "B" => return Some(Dtype::U8),
            "|i1" | "i1" | "b" => return Some(Dtype::I8),
            _ => {}
        }
        let code = descr
            .strip_prefix('<')
            .or_else(|| descr.strip_prefix('>'))?;
        Some(match code {
            "i2" => Dtype::I16,
            "u2" => Dtype::U16,
            "i4" => Dtype::I32,
            "u4" => Dtype::U32,
            "i8" => Dtype::I64,
            "u8" => Dtype::U64,
            "f4" => Dtype::F32,
            "f8" => Dtype::F64,
            _ => return None,
        })
    }

    fn size(self) -> usize {
        match self {
            Dtype::U8 | Dtype::I8 => 1,
            Dtype::I16 | Dtype::U16 => 2,
            Dtype::I32 | Dtype::U32 | Dtype::F32 => 4,
            Dtype::I64 | Dtype::U64 | Dtype::F64 => 8,
        }
    }
}

/// What an `.npy` header says, parsed here before ndarray-npy reads the
/// array (ndarray-npy allocates whatever the shape claims, and reads any
/// trailing data to its end).
#[derive(Debug, Clone, PartialEq, Eq)]
struct NpyHeader {
    /// The dtype descriptor as written (`<f4`, `|u1`, ...).
    descr: String,
    shape: Vec<u64>,
    /// Bytes before the data: magic string, version, header length, header.
    data_offset: u64,
}

/// Longer headers are refused: NumPy writes about 128 bytes (and itself
/// refuses to read more than 10 000 without being told to).
const MAX_HEADER_LEN: usize = 64 << 10;

/// `read_exact`, with a truncated file said as such.
fn read_exact(reader: &mut impl Read, buf: &mut [u8]) -> Result<(), String> {
    reader.read_exact(buf).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => "the header is truncated".to_string(),
        _ => format!("cannot read the header: {e}"),
    })
}

/// Parses an `.npy` header (format versions 1.0, 2.0 and 3.0) from the start
/// of `reader`, reading nothing past it.
fn parse_npy_header(reader: &mut impl Read) -> Result<NpyHeader, String> {
    let mut preamble = [0u8; 8];
    read_exact(reader, &mut preamble)?;
    if &preamble[..6] != b"\x93NUMPY" {
        return Err("not a NumPy array (bad magic string)".to_string());
    }
    let (header_len, len_bytes) = match preamble[6] {
        1 => {
            let mut len = [0u8; 2];
            read_exact(reader, &mut len)?;
            (u16::from_le_bytes(len) as usize, 2)
        }
        2 | 3 => {
            let mut len = [0u8; 4];
            read_exact(reader, &mut len)?;
            (u32::from_le_bytes(len) as usize, 4)
        }
        major => {
            return Err(format!(
                "unsupported .npy format version {major}.{}",
                preamble[7]
            ))
        }
    };
    if header_len > MAX_HEADER_LEN {
        return Err(format!(
            "the header is {} long (at most {} is read)",
            human_bytes(header_len as u64),
            human_bytes(MAX_HEADER_LEN as u64)
        ));
    }
    let mut text = vec![0u8; header_len];
    read_exact(reader, &mut text)?;
    let text = std::str::from_utf8(&text).map_err(|_| "the header is not text".to_string())?;
    let (descr, shape) = HeaderDict { text, pos: 0 }.parse()?;
    Ok(NpyHeader {
        descr,
        shape,
        data_offset: (preamble.len() + len_bytes + header_len) as u64,
    })
}

/// A cursor over the header's Python literal, `{'descr': '<f4',
/// 'fortran_order': False, 'shape': (2, 3), }`: the subset NumPy writes, read
/// without recursion.
struct HeaderDict<'a> {
    text: &'a str,
    pos: usize,
}

impl HeaderDict<'_> {
    /// The descriptor and the shape; the order does not change the size.
    fn parse(mut self) -> Result<(String, Vec<u64>), String> {
        let (mut descr, mut fortran_order, mut shape) = (None, None, None);
        self.expect(b'{')?;
        while !self.eat(b'}') {
            let key = self.string()?;
            self.expect(b':')?;
            let repeated = match key.as_str() {
                "descr" => {
                    if self.peek() == Some(b'[') {
                        return Err(
                            "its dtype is structured (named fields), which ibau does not read"
                                .to_string(),
                        );
                    }
                    descr.replace(self.string()?).is_some()
                }
                "fortran_order" => fortran_order.replace(self.boolean()?).is_some(),
                "shape" => shape.replace(self.shape()?).is_some(),
                other => return Err(format!("the header has an unexpected key `{other}`")),
            };
            if repeated {
                return Err(format!("the header repeats the key `{key}`"));
            }
            if !self.eat(b',') {
                self.expect(b'}')?;
                break;
            }
        }
        if !self.text[self.pos..].trim().is_empty() {
            return Err("the header has text after its dictionary".to_string());
        }
        match (descr, fortran_order, shape) {
            (Some(descr), Some(_), Some(shape)) => Ok((descr, shape)),
            _ => Err("the header lacks one of `descr`, `fortran_order`, `shape`".to_string()),
        }
    }

    fn peek(&mut self) -> Option<u8> {
        let rest = &self.text[self.pos..];
        self.pos += rest.len() - rest.trim_start().len();
        self.text.as_bytes().get(self.pos).copied()
    }

    fn eat(&mut self, c: u8) -> bool {
        let found = self.peek() == Some(c);
        if found {
            self.pos += 1;
        }
        found
    }

    fn expect(&mut self, c: u8) -> Result<(), String> {
        if self.eat(c) {
            return Ok(());
        }
        Err(format!(
            "malformed header: expected `{}` at byte {}",
            c as char, self.pos
        ))
    }

    /// A quoted string without escapes (none occur in keys or descriptors).
    fn string(&mut self) -> Result<String, String> {
        let quote = match self.peek() {
            Some(q @ (b'\'' | b'"')) => q as char,
            _ => {
                return Err(format!(
                    "malformed header: expected a string at byte {}",
                    self.pos
                ))
            }
        };
        let body = &self.text[self.pos + 1..];
        let end = body
            .find([quote, '\\'])
            .filter(|&i| body[i..].starts_with(quote))
            .ok_or_else(|| format!("malformed header: bad string at byte {}", self.pos))?;
        self.pos += end + 2;
        Ok(body[..end].to_string())
    }

    fn boolean(&mut self) -> Result<bool, String> {
        self.peek();
        for (word, value) in [("True", true), ("False", false)] {
            if self.text[self.pos..].starts_with(word) {
                self.pos += word.len();
                return Ok(value);
            }
        }
        Err(format!(
            "malformed header: expected True or False at byte {}",
            self.pos
        ))
    }

    /// `(2, 3)`, `(5,)` or `()`.
    fn shape(&mut self) -> Result<Vec<u64>, String> {
        self.expect(b'(')?;
        let mut dims = Vec::new();
        while !self.eat(b')') {
            self.peek();
            let digits = self.text[self.pos..]
                .bytes()
                .take_while(u8::is_ascii_digit)
                .count();
            let dim = self.text[self.pos..self.pos + digits]
                .parse::<u64>()
                .map_err(|_| format!("malformed header: bad dimension at byte {}", self.pos))?;
            dims.push(dim);
            self.pos += digits;
            if !self.eat(b',') {
                self.expect(b')')?;
                break;
            }
        }
        Ok(dims)
    }
}

/// One array to read, in a standalone `.npy` or inside an `.npz`.
trait ArraySource {
    /// The array's bytes from their start (the header first), and how many
    /// there are: the file's size, or the member's uncompressed size as the
    /// archive's directory declares it.
    fn open(&mut self) -> Result<(Box<dyn Read + '_>, u64), DataError>;
    /// The file to blame in messages.
    fn path(&self) -> &Path;
    /// How to name the array in messages ("array `x`" or "the array").
    fn what(&self) -> String;
}

struct NpyFile<'a>(&'a Path);

impl ArraySource for NpyFile<'_> {
    fn open(&mut self) -> Result<(Box<dyn Read + '_>, u64), DataError> {
        let file = crate::inputs::open_regular(self.0).map_err(|e| DataError::io(self.0, e))?;
        let len = file.metadata().map_err(|e| DataError::io(self.0, e))?.len();
        Ok((Box::new(BufReader::new(file)), len))
    }
    fn path(&self) -> &Path {
        self.0
    }
    fn what(&self) -> String {
        "the array".to_string()
    }
}

struct NpzEntry<'a> {
    path: &'a Path,
    npz: &'a mut Npz,
    /// The array's name, as listed (without `.npy`).
    name: &'a str,
}

impl ArraySource for NpzEntry<'_> {
    fn open(&mut self) -> Result<(Box<dyn Read + '_>, u64), DataError> {
        // As NumPy does: the name itself, else the name with `.npy`.
        let member = if self.npz.file_names().any(|n| n == self.name) {
            self.name.to_string()
        } else {
            format!("{}.npy", self.name)
        };
        let file = self.npz.by_name(&member).map_err(|e| {
            DataError::format(self.path, format!("cannot read array `{}`: {e}", self.name))
        })?;
        let len = file.size();
        Ok((Box::new(file), len))
    }
    fn path(&self) -> &Path {
        self.path
    }
    fn what(&self) -> String {
        format!("array `{}`", self.name)
    }
}

/// The header of `src`, and the number of bytes that follow it.
fn read_header(src: &mut impl ArraySource) -> Result<(NpyHeader, u64), DataError> {
    let (path, what) = (src.path().to_path_buf(), src.what());
    let fail = |reason: String| DataError::format(&path, format!("{what}: {reason}"));
    let (mut reader, len) = src.open()?;
    let header = parse_npy_header(&mut reader).map_err(fail)?;
    let present = len
        .checked_sub(header.data_offset)
        .ok_or_else(|| fail("the header is truncated".to_string()))?;
    Ok((header, present))
}

/// Reads the array as `T`, the type its header names, after checking that
/// the size its shape claims is the size of the data present and within the
/// memory budget. ndarray-npy reads at most one byte past the data: enough
/// to see that an archive member holds more than its directory declared,
/// without inflating the rest.
fn read_array<T: ReadableElement>(
    src: &mut impl ArraySource,
    header: &NpyHeader,
    present: u64,
    dtype: Dtype,
) -> Result<ArrayD<T>, DataError> {
    let (path, what) = (src.path().to_path_buf(), src.what());
    let fail = |reason: String| DataError::format(&path, format!("{what}: {reason}"));
    let described = format!("{what} of shape {:?} ({})", header.shape, header.descr);
    let bytes = header
        .shape
        .iter()
        .try_fold(dtype.size() as u128, |acc, &d| acc.checked_mul(d as u128))
        .ok_or_else(|| {
            let overflow = LimitError::Overflow {
                what: described.clone(),
            };
            DataError::format(&path, overflow.to_string())
        })?;
    if bytes != present as u128 {
        return Err(fail(format!(
            "its header says shape {:?} of {} ({}) but {} of data follow it",
            header.shape,
            header.descr,
            human_bytes(bytes),
            human_bytes(present)
        )));
    }
    check_bytes(bytes, &described).map_err(|e| DataError::format(&path, e.to_string()))?;
    let (reader, _) = src.open()?;
    // `bytes` is within the budget here, so the sum cannot overflow.
    let limit = header.data_offset + bytes as u64 + 1;
    ArrayD::<T>::read_npy(reader.take(limit)).map_err(|e| match e {
        ReadNpyError::ExtraBytes(_) => fail(format!(
            "more data follows than its header says ({})",
            human_bytes(bytes)
        )),
        e => fail(format!("cannot read it: {e}")),
    })
}

/// An image array as read: raw samples in row-major order and its shape.
pub(super) struct ImageArray {
    pub raw: RawImages,
    pub shape: Vec<usize>,
}

fn read_image_array(src: &mut impl ArraySource) -> Result<ImageArray, DataError> {
    let (header, present) = read_header(src)?;
    let (raw, shape) = match Dtype::from_descr(&header.descr) {
        Some(dtype @ Dtype::U8) => {
            let a: ArrayD<u8> = read_array(src, &header, present, dtype)?;
            (
                RawImages::U8(a.iter().copied().collect()),
                a.shape().to_vec(),
            )
        }
        Some(dtype @ Dtype::F32) => {
            let a: ArrayD<f32> = read_array(src, &header, present, dtype)?;
            (
                RawImages::F32(a.iter().copied().collect()),
                a.shape().to_vec(),
            )
        }
        Some(dtype @ Dtype::F64) => {
            let a: ArrayD<f64> = read_array(src, &header, present, dtype)?;
            let raw = RawImages::F32(a.iter().map(|&v| v as f32).collect());
            (raw, a.shape().to_vec())
        }
        _ => {
            return Err(DataError::format(
                src.path(),
                format!(
                    "{} has dtype `{}`; images must be uint8, float32 or float64",
                    src.what(),
                    header.descr
                ),
            ))
        }
    };
    Ok(ImageArray { raw, shape })
}

/// Labels as read: values in row-major order and the shape.
fn read_label_array(src: &mut impl ArraySource) -> Result<(Vec<i64>, Vec<usize>), DataError> {
    fn ints<T: Copy + TryInto<i64>>(a: ArrayD<T>) -> (Vec<Option<i64>>, Vec<usize>) {
        let shape = a.shape().to_vec();
        (a.iter().map(|&v| v.try_into().ok()).collect(), shape)
    }
    fn floats<T: Copy + Into<f64>>(a: ArrayD<T>) -> (Vec<Option<i64>>, Vec<usize>) {
        let shape = a.shape().to_vec();
        let vals = a
            .iter()
            .map(|&v| {
                let v: f64 = v.into();
                (v.fract() == 0.0 && v.abs() < 1e15).then_some(v as i64)
            })
            .collect();
        (vals, shape)
    }
    let (header, present) = read_header(src)?;
    let Some(dtype) = Dtype::from_descr(&header.descr) else {
        return Err(DataError::format(
            src.path(),
            format!(
                "{} has dtype `{}`; labels must be integers",
                src.what(),
                header.descr
            ),
        ));
    };
    let (vals, shape) = match dtype {
        Dtype::U8 => ints::<u8>(read_array(src, &header, present, dtype)?),
        Dtype::I8 => ints::<i8>(read_array(src, &header, present, dtype)?),
        Dtype::I16 => ints::<i16>(read_array(src, &header, present, dtype)?),
        Dtype::U16 => ints::<u16>(read_array(src, &header, present, dtype)?),
        Dtype::I32 => ints::<i32>(read_array(src, &header, present, dtype)?),
        Dtype::U32 => ints::<u32>(read_array(src, &header, present, dtype)?),
        Dtype::I64 => ints::<i64>(read_array(src, &header, present, dtype)?),
        Dtype::U64 => ints::<u64>(read_array(src, &header, present, dtype)?),
        Dtype::F32 => floats::<f32>(read_array(src, &header, present, dtype)?),
        Dtype::F64 => floats::<f64>(read_array(src, &header, present, dtype)?),
    };
    let vals = vals
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            v.ok_or_else(|| {
                DataError::format(
                    src.path(),
                    format!(
                        "{}: value {i} (row-major) is not an integer class index",
                        src.what()
                    ),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let labels = match shape.as_slice() {
        [_] | [_, 1] => vals,
        [n, k] => one_hot_to_index(&vals, *n, *k).ok_or_else(|| {
            DataError::format(
                src.path(),
                format!(
                    "{} has shape {shape:?}; labels must be [N] class indices (or one-hot rows)",
                    src.what()
                ),
            )
        })?,
        _ => {
            return Err(DataError::format(
                src.path(),
                format!("{} has shape {shape:?}; labels must be [N]", src.what()),
            ))
        }
    };
    Ok((labels, shape))
}

fn one_hot_to_index(vals: &[i64], n: usize, k: usize) -> Option<Vec<i64>> {
    (0..n)
        .map(|i| {
            let row = &vals[i * k..(i + 1) * k];
            let mut ones = row.iter().enumerate().filter(|(_, &v)| v != 0);
            match (ones.next(), ones.next()) {
                (Some((j, 1)), None) => Some(j as i64),
                _ => None,
            }
        })
        .collect()
}

/// Turns an image array into NCHW float32 and its source layout.
fn build_images(
    path: &Path,
    what: &str,
    images: ImageArray,
) -> Result<(tch::Tensor, SourceLayout), DataError> {
    let s = &images.shape;
    let (dims, layout) = match s.len() {
        4 => {
            let layout = guess_4d_layout(path, s)?;
            let d = [s[0], s[1], s[2], s[3]].map(|v| v as i64);
            (d, layout)
        }
        3 => ([s[0], 1, s[1], s[2]].map(|v| v as i64), SourceLayout::Nhw),
        2 => {
            let side = (s[1] as f64).sqrt().round() as usize;
            if side * side != s[1] {
                return Err(DataError::format(
                    path,
                    format!(
                        "{what} has shape {s:?}: flattened images are only read as square \
                         single-channel images; save them as [N, C, H, W] or [N, H, W, C]"
                    ),
                ));
            }
            ([s[0], 1, side, side].map(|v| v as i64), SourceLayout::Flat)
        }
        _ => {
            return Err(DataError::format(
                path,
                format!(
                    "{what} has shape {s:?}; images must be [N, C, H, W], [N, H, W, C] or [N, H, W]"
                ),
            ))
        }
    };
    Ok((images_tensor(path, images.raw, dims, layout)?, layout))
}

fn build_dataset(
    path: &Path,
    images_what: &str,
    images: ImageArray,
    labels_path: &Path,
    labels: Vec<i64>,
) -> Result<Dataset, DataError> {
    let n = images.shape.first().copied().unwrap_or(0);
    if labels.len() != n {
        return Err(DataError::format(
            labels_path,
            format!("{} labels for {n} images", labels.len()),
        ));
    }
    let (images, layout) = build_images(path, images_what, images)?;
    let labels = labels_tensor(labels_path, &labels)?;
    Dataset::new(images, labels, path.display().to_string(), layout)
}

fn open_npz(path: &Path) -> Result<Npz, DataError> {
    let file = crate::inputs::open_regular(path).map_err(|e| DataError::io(path, e))?;
    zip::ZipArchive::new(BufReader::new(file))
        .map_err(|e| DataError::format(path, format!("not a valid .npz archive: {e}")))
}

/// The arrays' names in archive order, each without a `.npy` suffix (as
/// NumPy lists them).
fn npz_names(path: &Path, npz: &mut Npz) -> Result<Vec<String>, DataError> {
    (0..npz.len())
        .map(|i| {
            let member = npz
                .by_index_raw(i)
                .map_err(|e| DataError::format(path, format!("cannot list arrays: {e}")))?;
            let name = member.name();
            Ok(name.strip_suffix(".npy").unwrap_or(name).to_string())
        })
        .collect()
}

/// Loads an `.npz`, picking the images/labels pair by its usual names.
pub(super) fn load_npz(path: &Path) -> Result<Dataset, DataError> {
    let mut npz = open_npz(path)?;
    let names = npz_names(path, &mut npz)?;
    let present: Vec<&(&str, &str)> = NPZ_PAIRS
        .iter()
        .filter(|(x, y)| names.iter().any(|n| n == x) && names.iter().any(|n| n == y))
        .collect();
    match present.as_slice() {
        [(x, y)] => read_npz_pair(path, &mut npz, x, y),
        [] => Err(DataError::format(
            path,
            format!(
                "no images/labels arrays found: it holds {}; expected a pair named {}",
                quote_list(&names),
                NPZ_PAIRS
                    .iter()
                    .map(|(x, y)| format!("`{x}`/`{y}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
        several => Err(DataError::format(
            path,
            format!(
                "holds several images/labels pairs ({}); save the one to use as `x` and `y`",
                several
                    .iter()
                    .map(|(x, y)| format!("`{x}`/`{y}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

/// Loads an `.npz` from two named arrays.
pub fn load_npz_arrays(path: &Path, images: &str, labels: &str) -> Result<Dataset, DataError> {
    let mut npz = open_npz(path)?;
    let names = npz_names(path, &mut npz)?;
    for name in [images, labels] {
        if !names.iter().any(|n| n == name) {
            return Err(DataError::format(
                path,
                format!("has no array `{name}`; it holds {}", quote_list(&names)),
            ));
        }
    }
    read_npz_pair(path, &mut npz, images, labels)
}

fn read_npz_pair(path: &Path, npz: &mut Npz, x: &str, y: &str) -> Result<Dataset, DataError> {
    let images = read_image_array(&mut NpzEntry { path, npz, name: x })?;
    let (labels, _) = read_label_array(&mut NpzEntry { path, npz, name: y })?;
    build_dataset(path, &format!("array `{x}`"), images, path, labels)
}

fn quote_list(names: &[String]) -> String {
    if names.is_empty() {
        return "no arrays".to_string();
    }
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Label file names tried beside an images `.npy`: each `x`/`images`/...
/// token of the stem swapped for its labels counterpart.
pub(super) fn npy_label_candidates(images: &Path) -> Vec<PathBuf> {
    const SWAPS: &[(&str, &[&str])] = &[
        ("x", &["y"]),
        ("X", &["y", "Y"]),
        ("images", &["labels"]),
        ("imgs", &["labels"]),
        ("image", &["label", "labels"]),
        ("data", &["labels"]),
        ("inputs", &["targets", "labels"]),
    ];
    let Some(stem) = images.file_stem().and_then(|s| s.to_str()) else {
        return Vec::new();
    };
    let dir = images.parent().unwrap_or(Path::new(""));
    // Tokens with their byte offsets, split on `_`, `-` and `.`.
    let mut tokens = Vec::new();
    let mut start = 0;
    for (i, c) in stem.char_indices().chain([(stem.len(), '_')]) {
        if matches!(c, '_' | '-' | '.') {
            tokens.push((start, &stem[start..i]));
            start = i + c.len_utf8();
        }
    }
    let mut out = Vec::new();
    for (offset, token) in tokens {
        for (from, tos) in SWAPS {
            if token == *from {
                for to in *tos {
                    let name = format!(
                        "{}{to}{}.npy",
                        &stem[..offset],
                        &stem[offset + token.len()..]
                    );
                    let p = dir.join(name);
                    if !out.contains(&p) {
                        out.push(p);
                    }
                }
            }
        }
    }
    out
}

/// Loads an images `.npy` and the labels `.npy` beside it.
pub(super) fn load_npy_pair(path: &Path) -> Result<Dataset, DataError> {
    let labels_path = super::find_labels(path, npy_label_candidates(path))?;
    let images = read_image_array(&mut NpyFile(path))?;
    let (labels, _) = read_label_array(&mut NpyFile(&labels_path))?;
    build_dataset(path, "the array", images, &labels_path, labels)
}

/// Reads a standalone `.npy` image-like array (for trigger patterns and
/// masks): raw values and shape.
pub(super) fn read_npy_image(path: &Path) -> Result<ImageArray, DataError> {
    read_image_array(&mut NpyFile(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array1, Array2, Array4};
    use ndarray_npy::{write_npy, NpzWriter};

    fn write_npz<F: FnOnce(&mut NpzWriter<File>)>(path: &Path, f: F) {
        let mut w = NpzWriter::new(File::create(path).unwrap());
        f(&mut w);
        w.finish().unwrap();
    }

    /// A version 1.0 `.npy` header for `dict`, padded as NumPy pads it.
    fn npy_header(dict: &str) -> Vec<u8> {
        let unpadded = 10 + dict.len() + 1;
        let len = dict.len() + 1 + (64 - unpadded % 64) % 64;
        let mut b = b"\x93NUMPY\x01\x00".to_vec();
        b.extend_from_slice(&(len as u16).to_le_bytes());
        b.extend_from_slice(dict.as_bytes());
        b.resize(10 + len - 1, b' ');
        b.push(b'\n');
        b
    }

    fn shape_dict(descr: &str, shape: &str) -> String {
        format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}")
    }

    /// A zip archive of `members`, deflated.
    fn write_zip(path: &Path, members: &[(&str, &[u8])]) {
        let mut w = zip::ZipWriter::new(File::create(path).unwrap());
        let options =
            zip::write::FileOptions::default().compression_method(zip::CompressionMethod::Deflated);
        for (name, bytes) in members {
            w.start_file(*name, options).unwrap();
            std::io::Write::write_all(&mut w, bytes).unwrap();
        }
        w.finish().unwrap();
    }

    #[test]
    fn npy_header_parser() {
        let parse = |b: &[u8]| parse_npy_header(&mut &b[..]);
        let bytes = npy_header(&shape_dict("<f4", "(2, 3)"));
        let h = parse(&bytes).unwrap();
        assert_eq!((h.descr.as_str(), h.shape.as_slice()), ("<f4", &[2, 3][..]));
        assert_eq!(h.data_offset, bytes.len() as u64);
        // Double quotes, any key order, no trailing comma, a scalar shape.
        let h = parse(&npy_header(
            r#"{"shape": (), "fortran_order": True, "descr": "|u1"}"#,
        ))
        .unwrap();
        assert!(h.shape.is_empty() && h.descr == "|u1");
        assert_eq!(
            parse(&npy_header(&shape_dict("<i8", "(7,)")))
                .unwrap()
                .shape,
            vec![7]
        );
        // Version 2.0: a four-byte header length.
        let dict = shape_dict("<f8", "(1,)");
        let mut v2 = b"\x93NUMPY\x02\x00".to_vec();
        v2.extend_from_slice(&(dict.len() as u32 + 1).to_le_bytes());
        v2.extend_from_slice(dict.as_bytes());
        v2.push(b'\n');
        assert_eq!(parse(&v2).unwrap().data_offset, v2.len() as u64);
        // A version 2.0 header claiming 4 GiB is refused before any is read.
        let mut huge = b"\x93NUMPY\x02\x00".to_vec();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(parse(&huge).unwrap_err().contains("at most"));
        for (bad, why) in [
            (
                npy_header("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,)}"),
                "structured",
            ),
            (npy_header(&shape_dict("<f4", "(2, -3)")), "bad dimension"),
            (
                npy_header(&shape_dict("<f4", "(99999999999999999999,)")),
                "bad dimension",
            ),
            (npy_header("{'descr': '<f4', 'shape': (1,)}"), "lacks"),
            (npy_header("{'descr': '<f4', 'descr': '<f4'}"), "repeats"),
            (
                npy_header("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'x': 1}"),
                "unexpected key",
            ),
            (npy_header("{'descr': '<f4' 'x'}"), "expected `}`"),
            (
                npy_header(&(shape_dict("<f4", "(1,)") + " ((((")),
                "after its dictionary",
            ),
            (b"\x93NUMPY\x01\x00\x40".to_vec(), "truncated"),
            (
                npy_header(&shape_dict("<f4", "(1,)"))[..40].to_vec(),
                "truncated",
            ),
            (b"PK\x03\x04\x00\x00\x00\x00\x00\x00".to_vec(), "magic"),
            (b"\x93NUMPY\x04\x00\x00\x00".to_vec(), "version 4.0"),
        ] {
            let e = parse(&bad).unwrap_err();
            assert!(e.contains(why), "{why}: {e}");
        }
    }

    /// A 1 KB `.npy` whose header claims 28 TB: refused from its header
    /// (ndarray-npy alone aborts the process allocating it).
    #[test]
    fn npy_claiming_more_than_the_file_holds_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut x = npy_header(&shape_dict("<f4", "(1000000, 1000, 1000, 7)"));
        x.resize(x.len() + 1000, 0);
        std::fs::write(dir.path().join("x.npy"), &x).unwrap();
        write_npy(dir.path().join("y.npy"), &Array1::<u8>::zeros(2)).unwrap();
        let e = super::super::load(&dir.path().join("x.npy"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("x.npy") && e.contains("25.5 TiB") && e.contains("1000 bytes of data"),
            "{e}"
        );
        assert!(!e.contains('\n'), "{e}");

        // The labels too, and a shape whose size overflows.
        write_npy(dir.path().join("x.npy"), &Array4::<u8>::zeros((2, 1, 2, 2))).unwrap();
        let mut y = npy_header(&shape_dict(
            "<i8",
            "(4294967296, 4294967296, 4294967296, 4294967296, 2)",
        ));
        y.resize(y.len() + 16, 0);
        std::fs::write(dir.path().join("y.npy"), &y).unwrap();
        let e = super::super::load(&dir.path().join("x.npy"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("y.npy") && e.contains("overflows"), "{e}");
    }

    /// An `.npy` whose size matches its header but exceeds the memory budget
    /// (a sparse file: no disk is used).
    #[test]
    fn npy_over_the_memory_budget_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let n = crate::limits::memory_budget() + 1;
        let header = npy_header(&shape_dict("|u1", &format!("({n}, 1, 1)")));
        let path = dir.path().join("x.npy");
        std::fs::write(&path, &header).unwrap();
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(header.len() as u64 + n)
            .unwrap();
        write_npy(dir.path().join("y.npy"), &Array1::<u8>::zeros(2)).unwrap();
        let e = super::super::load(&path).unwrap_err().to_string();
        assert!(
            e.contains("x.npy") && e.contains(crate::limits::BUDGET_VARIABLE),
            "{e}"
        );
    }

    /// An `.npz` member whose header claims more than the member holds.
    #[test]
    fn npz_member_claiming_more_than_it_holds_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.npz");
        let mut x = npy_header(&shape_dict("<f4", "(1000000, 1000, 1000, 7)"));
        x.resize(x.len() + 1000, 0);
        let mut y = npy_header(&shape_dict("|u1", "(2,)"));
        y.extend_from_slice(&[0, 1]);
        write_zip(&p, &[("x.npy", &x), ("y.npy", &y)]);
        let e = super::super::load(&p).unwrap_err().to_string();
        assert!(
            e.contains("d.npz") && e.contains("array `x`") && e.contains("25.5 TiB"),
            "{e}"
        );
    }

    /// A zip bomb: the member holds a 4-byte array and then 16 MiB of zeros
    /// that its directory entry does not declare. It must fail after reading
    /// one byte past the array, not inflate the rest.
    #[test]
    fn npz_member_inflating_past_its_declared_size_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bomb.npz");
        let mut x = npy_header(&shape_dict("|u1", "(1, 1, 2, 2)"));
        let declared = x.len() as u32 + 4;
        x.resize(x.len() + 4 + (16 << 20), 0);
        let mut y = npy_header(&shape_dict("|u1", "(1,)"));
        y.push(0);
        write_zip(&p, &[("x.npy", &x), ("y.npy", &y)]);
        // Make the local and central headers of `x.npy` declare only the
        // array: the uncompressed size sits 22 bytes into a local header and
        // 24 bytes into a central one.
        let mut zip = std::fs::read(&p).unwrap();
        for (signature, offset, name_at) in [(b"PK\x03\x04", 22, 30), (b"PK\x01\x02", 24, 46)] {
            let at = (0..zip.len() - name_at - 5)
                .find(|&i| {
                    &zip[i..i + 4] == signature && &zip[i + name_at..i + name_at + 5] == b"x.npy"
                })
                .unwrap();
            zip[at + offset..at + offset + 4].copy_from_slice(&declared.to_le_bytes());
        }
        std::fs::write(&p, &zip).unwrap();
        let e = super::super::load(&p).unwrap_err().to_string();
        assert!(
            e.contains("bomb.npz") && e.contains("array `x`") && e.contains("more data follows"),
            "{e}"
        );
    }

    #[test]
    fn npz_uint8_nhwc() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.npz");
        // [N=2, H=2, W=3, C=3]; value encodes (n, h, w, c).
        let x = Array4::<u8>::from_shape_fn((2, 2, 3, 3), |(n, h, w, c)| {
            (n * 100 + h * 30 + w * 5 + c) as u8
        });
        write_npz(&p, |w| {
            w.add_array("x", &x).unwrap();
            w.add_array("y", &Array1::<i64>::from(vec![4, 1])).unwrap();
        });
        let d = super::super::load(&p).unwrap();
        assert_eq!(d.images.size(), vec![2, 3, 2, 3]);
        assert_eq!(d.layout_hint, SourceLayout::Nhwc);
        // images[n, c, h, w] == x[n, h, w, c] / 255
        let v = d.images.double_value(&[1, 2, 1, 0]);
        assert!((v - (100 + 30 + 2) as f64 / 255.0).abs() < 1e-6, "{v}");
        assert_eq!(Vec::<i64>::try_from(&d.labels).unwrap(), vec![4, 1]);
    }

    #[test]
    fn npz_float_nchw_with_alternative_names() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.npz");
        let x = Array4::<f32>::from_shape_fn((3, 1, 4, 4), |(n, _, h, w)| {
            n as f32 + h as f32 * 0.1 + w as f32 * 0.01 - 0.5
        });
        write_npz(&p, |w| {
            w.add_array("x_test", &x).unwrap();
            // int32 labels as a column: [N, 1].
            w.add_array(
                "y_test",
                &Array2::<i32>::from_shape_vec((3, 1), vec![0, 2, 1]).unwrap(),
            )
            .unwrap();
        });
        let d = super::super::load(&p).unwrap();
        assert_eq!(d.images.size(), vec![3, 1, 4, 4]);
        assert_eq!(d.layout_hint, SourceLayout::Nchw);
        // Float sources are kept as given (no scaling, no clamping).
        assert!((d.images.double_value(&[0, 0, 0, 0]) + 0.5).abs() < 1e-6);
        assert!((d.images.double_value(&[2, 0, 3, 1]) - (2.0 + 0.3 + 0.01 - 0.5)).abs() < 1e-6);
        assert_eq!(Vec::<i64>::try_from(&d.labels).unwrap(), vec![0, 2, 1]);
    }

    #[test]
    fn npz_one_hot_labels_and_flat_images() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.npz");
        let x = Array2::<f64>::from_elem((2, 9), 0.25);
        let y = Array2::<f32>::from_shape_vec((2, 3), vec![0., 0., 1., 1., 0., 0.]).unwrap();
        write_npz(&p, |w| {
            w.add_array("images", &x).unwrap();
            w.add_array("labels", &y).unwrap();
        });
        let d = super::super::load(&p).unwrap();
        assert_eq!(d.images.size(), vec![2, 1, 3, 3]);
        assert_eq!(d.layout_hint, SourceLayout::Flat);
        assert_eq!(Vec::<i64>::try_from(&d.labels).unwrap(), vec![2, 0]);
    }

    #[test]
    fn npz_errors_name_arrays() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("odd.npz");
        write_npz(&p, |w| {
            w.add_array("a", &Array1::<u8>::zeros(3)).unwrap();
            w.add_array("b", &Array1::<u8>::zeros(3)).unwrap();
        });
        let e = super::super::load(&p).unwrap_err().to_string();
        assert!(
            e.contains("odd.npz") && e.contains("`a`, `b`") && e.contains("`x`/`y`"),
            "{e}"
        );

        let p = dir.path().join("both.npz");
        let x = Array4::<u8>::zeros((2, 1, 2, 2));
        let y = Array1::<u8>::zeros(2);
        write_npz(&p, |w| {
            for n in ["x_train", "x_test"] {
                w.add_array(n, &x).unwrap();
            }
            for n in ["y_train", "y_test"] {
                w.add_array(n, &y).unwrap();
            }
        });
        let e = super::super::load(&p).unwrap_err().to_string();
        assert!(
            e.contains("several") && e.contains("`x_test`/`y_test`"),
            "{e}"
        );
        let d = load_npz_arrays(&p, "x_test", "y_test").unwrap();
        assert_eq!(d.len(), 2);
        assert!(load_npz_arrays(&p, "nope", "y_test")
            .unwrap_err()
            .to_string()
            .contains("`nope`"));

        let p = dir.path().join("mismatch.npz");
        write_npz(&p, |w| {
            w.add_array("x", &x).unwrap();
            w.add_array("y", &Array1::<u8>::zeros(3)).unwrap();
        });
        let e = super::super::load(&p).unwrap_err().to_string();
        assert!(e.contains("3 labels for 2 images"), "{e}");

        let p = dir.path().join("dtype.npz");
        write_npz(&p, |w| {
            w.add_array("x", &Array4::<i32>::zeros((2, 1, 2, 2)))
                .unwrap();
            w.add_array("y", &y).unwrap();
        });
        let e = super::super::load(&p).unwrap_err().to_string();
        assert!(
            e.contains("array `x`") && e.contains("uint8, float32 or float64"),
            "{e}"
        );

        let p = dir.path().join("neg.npz");
        write_npz(&p, |w| {
            w.add_array("x", &x).unwrap();
            w.add_array("y", &Array1::<i64>::from(vec![0, -1])).unwrap();
        });
        let e = super::super::load(&p).unwrap_err().to_string();
        assert!(e.contains("negative"), "{e}");
    }

    #[test]
    fn npy_pair_found_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let x = Array4::<u8>::from_elem((2, 2, 2, 1), 255);
        write_npy(dir.path().join("test_images.npy"), &x).unwrap();
        write_npy(
            dir.path().join("test_labels.npy"),
            &Array1::<u8>::from(vec![1, 0]),
        )
        .unwrap();
        let d = super::super::load(&dir.path().join("test_images.npy")).unwrap();
        assert_eq!(d.images.size(), vec![2, 1, 2, 2]);
        assert_eq!(d.images.double_value(&[1, 0, 1, 1]), 1.0);

        write_npy(dir.path().join("x_val.npy"), &x).unwrap();
        let e = super::super::load(&dir.path().join("x_val.npy"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("y_val.npy"), "{e}");
        write_npy(
            dir.path().join("y_val.npy"),
            &Array1::<i64>::from(vec![1, 0]),
        )
        .unwrap();
        assert_eq!(
            super::super::load(&dir.path().join("x_val.npy"))
                .unwrap()
                .len(),
            2
        );
    }
}
