//! Data: the clean set I-BAU learns from and the test set that measures it.
//!
//! Sits before training and evaluation: [`load`] reads a labelled image set
//! (IDX, NumPy `.npz`/`.npy`, or a folder of images per class) into a
//! [`Dataset`] of float `[N, C, H, W]` images in `[0, 1]`; [`parse_range`] and
//! [`Dataset::slice`] pick the samples; [`trigger::Trigger`] stamps a backdoor
//! trigger on images to measure the attack success rate (the defender never
//! needs it); [`normalize`] and [`fit_to_input`] map the images onto the
//! model's input space (per-channel mean/std, then NCHW, NHWC or flattened).
//!
//! Order of preprocessing: load (scale to `[0, 1]`) -> trigger -> normalize ->
//! layout. The I-BAU perturbation lives after the last step, in the model's
//! input space.

mod folder;
mod idx;
mod layout;
mod npy;
pub mod trigger;

use std::fmt;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};

use tch::{Device, Kind, Tensor};

pub use layout::{fit_to_input, normalize, Layout};
pub use npy::load_npz_arrays;
pub use trigger::{Attack, Target, Trigger};

/// Everything that can go wrong reading data, parsing a data option or mapping
/// data onto a model. Every message names the file or option at fault.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file or directory could not be read at all.
    #[error("cannot read `{path}`: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The file was read but its contents are not what its format requires.
    #[error("`{path}`: {reason}")]
    Format { path: PathBuf, reason: String },
    /// No labels file sits beside an images file.
    #[error(
        "no labels file found for `{images}`; tried {}",
        tried.iter().map(|p| format!("`{}`", p.display())).collect::<Vec<_>>().join(", ")
    )]
    MissingLabels {
        images: PathBuf,
        tried: Vec<PathBuf>,
    },
    /// An image file that the image crate could not decode.
    #[error("cannot decode image `{path}`: {source}")]
    Image {
        path: PathBuf,
        #[source]
        source: image::ImageError,
    },
    /// A bad `A:B` sample range, or one outside the data.
    #[error("range `{spec}`: {reason}")]
    Range { spec: String, reason: String },
    /// A bad trigger specification or a trigger that does not fit the images.
    #[error("trigger `{spec}`: {reason}")]
    Trigger { spec: String, reason: String },
    /// A `--target` that is neither a class number nor `next`.
    #[error("target `{value}`: expected a class number or `next`")]
    Target { value: String },
    /// `--trigger` and `--target` given a different number of times.
    #[error(
        "{triggers} --trigger and {targets} --target given: each --trigger needs the \
         --target at the same position (--trigger A --target 3 --trigger B --target next)"
    )]
    AttackPairs { triggers: usize, targets: usize },
    /// Bad `--mean` / `--std` values.
    #[error("{option}: {reason}")]
    Normalize {
        option: &'static str,
        reason: String,
    },
    /// Several layouts map the data onto the model's declared input.
    #[error(
        "data of shape {data} fits the model input {model} as {}; pass `--layout` to choose",
        candidates.iter().map(|l| l.to_string()).collect::<Vec<_>>().join(" and ")
    )]
    AmbiguousLayout {
        data: String,
        model: String,
        candidates: Vec<Layout>,
    },
    /// No layout (or not the one asked for) maps the data onto the model.
    #[error("data of shape {data} does not fit the model input {model}{}", forced.map(|l| format!(" as {l} (`--layout {l}`)")).unwrap_or_default())]
    LayoutMismatch {
        data: String,
        model: String,
        forced: Option<Layout>,
    },
    /// A libtorch operation failed on data we built (should not happen on
    /// valid inputs; kept fallible so user data never panics).
    #[error("{context}: {source}")]
    Torch {
        context: String,
        #[source]
        source: tch::TchError,
    },
}

impl DataError {
    fn format(path: &Path, reason: impl Into<String>) -> Self {
        DataError::Format {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }

    fn io(path: &Path, source: io::Error) -> Self {
        DataError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Wraps a libtorch error with what we were doing.
pub(crate) fn torch<T>(
    context: impl fmt::Display,
    r: Result<T, tch::TchError>,
) -> Result<T, DataError> {
    r.map_err(|source| DataError::Torch {
        context: context.to_string(),
        source,
    })
}

/// How the images were laid out in the source file. Informational: the
/// mapping onto the model is decided by [`fit_to_input`] from the model's
/// declared input, not from this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceLayout {
    /// `[N, C, H, W]` arrays.
    Nchw,
    /// `[N, H, W, C]` arrays, and decoded image files.
    Nhwc,
    /// `[N, H, W]`: no channel axis (IDX files, grayscale arrays); `C = 1`.
    Nhw,
    /// `[N, H*W]`: flattened square single-channel images.
    Flat,
}

impl fmt::Display for SourceLayout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SourceLayout::Nchw => "NCHW",
            SourceLayout::Nhwc => "NHWC",
            SourceLayout::Nhw => "NHW",
            SourceLayout::Flat => "flat",
        })
    }
}

/// A labelled image set.
#[derive(Debug)]
pub struct Dataset {
    /// float32 `[N, C, H, W]`; uint8 sources scaled by 1/255 into `[0, 1]`,
    /// float sources kept as given.
    pub images: Tensor,
    /// int64 `[N]` class indices.
    pub labels: Tensor,
    /// Where the data came from (path, plus the range when sliced), for
    /// messages and reports.
    pub source: String,
    /// Layout of the images in the source file.
    pub layout_hint: SourceLayout,
}

impl Dataset {
    /// Builds a dataset, checking that images are `[N, C, H, W]` and labels
    /// `[N]` (images are converted to float32 and labels to int64).
    pub fn new(
        images: Tensor,
        labels: Tensor,
        source: impl Into<String>,
        layout_hint: SourceLayout,
    ) -> Result<Self, DataError> {
        let source = source.into();
        let (isize, lsize) = (images.size(), labels.size());
        if isize.len() != 4 || lsize.len() != 1 || isize[0] != lsize[0] {
            return Err(DataError::format(
                Path::new(&source),
                format!("images {isize:?} and labels {lsize:?} do not form [N, C, H, W] and [N]"),
            ));
        }
        let images = torch(
            format!("`{source}`: converting images"),
            images.f_to_kind(Kind::Float),
        )?;
        let labels = torch(
            format!("`{source}`: converting labels"),
            labels.f_to_kind(Kind::Int64),
        )?;
        Ok(Dataset {
            images,
            labels,
            source,
            layout_hint,
        })
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.labels.size()[0] as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `[C, H, W]` of one image.
    pub fn image_shape(&self) -> [i64; 3] {
        let s = self.images.size();
        [s[1], s[2], s[3]]
    }

    /// One more than the largest label (0 for an empty set).
    pub fn num_classes(&self) -> Result<i64, DataError> {
        if self.is_empty() {
            return Ok(0);
        }
        let max = torch("largest label", self.labels.f_max())?;
        Ok(torch("largest label", max.f_int64_value(&[]))? + 1)
    }

    /// The samples in `range` (a view, no copy). An end of `usize::MAX` (as
    /// [`parse_range`] gives for `A:`) means the end of the data; any other
    /// end past the data is an error naming the dataset's size.
    pub fn slice(&self, range: Range<usize>) -> Result<Dataset, DataError> {
        let len = self.len();
        let end = if range.end == usize::MAX {
            len
        } else {
            range.end
        };
        let spec = if range.end == usize::MAX {
            format!("{}:", range.start)
        } else {
            format!("{}:{}", range.start, range.end)
        };
        if end > len || range.start >= end {
            return Err(DataError::Range {
                spec,
                reason: format!("out of bounds for `{}` ({len} samples)", self.source),
            });
        }
        let (start, n) = (range.start as i64, (end - range.start) as i64);
        let ctx = || format!("`{}`: selecting samples {spec}", self.source);
        Ok(Dataset {
            images: torch(ctx(), self.images.f_narrow(0, start, n))?,
            labels: torch(ctx(), self.labels.f_narrow(0, start, n))?,
            source: format!("{}[{}:{}]", self.source, range.start, end),
            layout_hint: self.layout_hint,
        })
    }

    /// The same samples on `device`.
    pub fn to_device(&self, device: Device) -> Result<Dataset, DataError> {
        let ctx = || format!("`{}`: moving to {device:?}", self.source);
        Ok(Dataset {
            images: torch(ctx(), self.images.f_to_device(device))?,
            labels: torch(ctx(), self.labels.f_to_device(device))?,
            source: self.source.clone(),
            layout_hint: self.layout_hint,
        })
    }

    /// `(images, labels)` batches in order; the last one may be smaller.
    /// Batches are views of the dataset's tensors. A `batch_size` of 0 is
    /// read as 1.
    pub fn batches(&self, batch_size: usize) -> Batches<'_> {
        Batches {
            dataset: self,
            batch_size: batch_size.max(1),
            next: 0,
        }
    }
}

/// Iterator returned by [`Dataset::batches`].
pub struct Batches<'a> {
    dataset: &'a Dataset,
    batch_size: usize,
    next: usize,
}

impl Iterator for Batches<'_> {
    type Item = (Tensor, Tensor);

    fn next(&mut self) -> Option<Self::Item> {
        let len = self.dataset.len();
        if self.next >= len {
            return None;
        }
        let start = self.next as i64;
        let n = self.batch_size.min(len - self.next) as i64;
        self.next += n as usize;
        // In bounds by construction, so narrow cannot fail.
        Some((
            self.dataset.images.narrow(0, start, n),
            self.dataset.labels.narrow(0, start, n),
        ))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.dataset.len().saturating_sub(self.next);
        let n = left.div_ceil(self.batch_size);
        (n, Some(n))
    }
}

impl ExactSizeIterator for Batches<'_> {}

/// Parses a sample range `A:B` (`A:` to the end, `:B` from the start, `:`
/// everything). An open end is `usize::MAX`, which [`Dataset::slice`] reads
/// as the end of the data.
pub fn parse_range(s: &str) -> Result<Range<usize>, DataError> {
    let err = |reason: &str| DataError::Range {
        spec: s.to_string(),
        reason: reason.to_string(),
    };
    let (a, b) = s
        .trim()
        .split_once(':')
        .ok_or_else(|| err("expected `A:B`, `A:` or `:B` (sample indices, end excluded)"))?;
    let bound = |t: &str, open: usize| -> Result<usize, DataError> {
        let t = t.trim();
        if t.is_empty() {
            return Ok(open);
        }
        t.parse::<usize>().map_err(|_| {
            err(&format!(
                "`{t}` is not a sample index (a non-negative integer)"
            ))
        })
    };
    let start = bound(a, 0)?;
    let end = bound(b, usize::MAX)?;
    if start >= end {
        return Err(err("the range is empty (start must be below end)"));
    }
    Ok(start..end)
}

/// The first of `tried` that exists: the labels file beside `images`.
fn find_labels(images: &Path, tried: Vec<PathBuf>) -> Result<PathBuf, DataError> {
    tried
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| DataError::MissingLabels {
            images: images.to_path_buf(),
            tried,
        })
}

/// The files (or folder) that [`load`] reads for `path`: the path itself and,
/// for IDX and `.npy` images, the label files it looks for beside them.
pub fn files_read(path: &Path) -> Vec<PathBuf> {
    let mut files = vec![path.to_path_buf()];
    if path.is_file() {
        files.extend(idx::label_candidates(path));
        files.extend(npy::npy_label_candidates(path));
    }
    files.retain(|p| p.exists());
    files.dedup();
    files
}

/// [`load`] with an optional `A:B` range of samples; an empty result is an
/// error naming the source.
pub fn load_range(path: &Path, range: Option<&str>) -> Result<Dataset, DataError> {
    let dataset = load(path)?;
    let dataset = match range {
        Some(r) => dataset.slice(parse_range(r)?)?,
        None => dataset,
    };
    if dataset.is_empty() {
        return Err(DataError::format(path, "holds no samples"));
    }
    Ok(dataset)
}

/// Loads a labelled image set, detecting its format:
/// - a directory: one sub-folder per class (class index = sorted folder name
///   order), PNG/JPEG/BMP images of one size; grayscale gives `C = 1`,
///   otherwise `C = 3` (alpha dropped; grayscale images are repeated to 3
///   channels when the folder mixes both);
/// - an IDX images file, gzipped or not (`*-images-idx3-ubyte[.gz]`), whose
///   labels file is found beside it by the standard naming;
/// - a `.npz` with images and labels arrays (`x`/`y`, `images`/`labels`,
///   `x_test`/`y_test`, ...);
/// - a `.npy` of images with a labels `.npy` beside it (`x.npy` -> `y.npy`,
///   `*images*.npy` -> `*labels*.npy`).
///
/// Arrays may be uint8 (scaled by 1/255) or float32/64 (kept), laid out as
/// NCHW, NHWC, `[N, H, W]` or `[N, H*W]` (square, single channel).
pub fn load(path: &Path) -> Result<Dataset, DataError> {
    let meta = std::fs::metadata(path).map_err(|e| DataError::io(path, e))?;
    if meta.is_dir() {
        return folder::load(path);
    }
    match sniff(path)? {
        Sniffed::Npz => npy::load_npz(path),
        Sniffed::Npy => npy::load_npy_pair(path),
        Sniffed::Idx => idx::load(path),
        Sniffed::Unknown => Err(DataError::format(
            path,
            "not a recognised data file (expected an IDX images file, gzipped or not, \
             a .npz or .npy file, or a folder with one sub-folder per class)",
        )),
    }
}

enum Sniffed {
    Npz,
    Npy,
    Idx,
    Unknown,
}

/// Detects the format from the first bytes (through gzip when compressed).
fn sniff(path: &Path) -> Result<Sniffed, DataError> {
    use std::io::Read;
    let file = crate::inputs::open_regular(path).map_err(|e| DataError::io(path, e))?;
    let mut head = Vec::with_capacity(8);
    file.take(8)
        .read_to_end(&mut head)
        .map_err(|e| DataError::io(path, e))?;
    if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
        return Ok(Sniffed::Npz);
    }
    if head.starts_with(b"\x93NUMPY") {
        return Ok(Sniffed::Npy);
    }
    let magic = if head.starts_with(&[0x1f, 0x8b]) {
        let file = crate::inputs::open_regular(path).map_err(|e| DataError::io(path, e))?;
        let mut inner = Vec::with_capacity(4);
        flate2::read::GzDecoder::new(file)
            .take(4)
            .read_to_end(&mut inner)
            .map_err(|e| DataError::io(path, e))?;
        inner
    } else {
        head
    };
    if magic.len() >= 4 && idx::is_idx_magic(&magic[..4]) {
        return Ok(Sniffed::Idx);
    }
    Ok(Sniffed::Unknown)
}

/// Builds a float `[N, C, H, W]` image tensor from raw samples in
/// `source_layout` order. uint8 data is scaled by 1/255.
pub(crate) enum RawImages {
    U8(Vec<u8>),
    F32(Vec<f32>),
}

/// `dims` are the array's dimensions as stored; returns NCHW float32.
pub(crate) fn images_tensor(
    path: &Path,
    raw: RawImages,
    dims: [i64; 4],
    stored: SourceLayout,
) -> Result<Tensor, DataError> {
    let ctx = || format!("`{}`: building the image tensor", path.display());
    let t = match raw {
        RawImages::U8(v) => {
            let t = torch(ctx(), Tensor::f_from_slice(&v))?;
            let t = torch(ctx(), t.f_to_kind(Kind::Float))?;
            torch(ctx(), t.f_div_scalar(255.0))?
        }
        RawImages::F32(v) => torch(ctx(), Tensor::f_from_slice(&v))?,
    };
    let t = torch(ctx(), t.f_reshape(dims))?;
    match stored {
        SourceLayout::Nhwc => {
            let t = torch(ctx(), t.f_permute([0, 3, 1, 2]))?;
            torch(ctx(), t.f_contiguous())
        }
        _ => Ok(t),
    }
}

/// int64 `[N]` labels, checked non-negative.
pub(crate) fn labels_tensor(path: &Path, labels: &[i64]) -> Result<Tensor, DataError> {
    if let Some((i, l)) = labels.iter().enumerate().find(|(_, l)| **l < 0) {
        return Err(DataError::format(
            path,
            format!("label {l} at sample {i} is negative; labels must be class indices"),
        ));
    }
    torch(
        format!("`{}`: building the label tensor", path.display()),
        Tensor::f_from_slice(labels),
    )
}

/// Decides NCHW vs NHWC for a 4-D image array `[N, a, b, c]`: the channel
/// axis is the one of size 1 to 4; when both could be, a size of 1 or 3 wins
/// over 2 or 4, then the square spatial pair decides; a fully ambiguous array
/// (e.g. `[N, 3, 3, 3]`) is read as NCHW.
pub(crate) fn guess_4d_layout(path: &Path, dims: &[usize]) -> Result<SourceLayout, DataError> {
    let (a, b, c) = (dims[1], dims[2], dims[3]);
    let chan = |d: usize| (1..=4).contains(&d);
    let usual = |d: usize| d == 1 || d == 3;
    match (chan(a), chan(c)) {
        (true, false) => Ok(SourceLayout::Nchw),
        (false, true) => Ok(SourceLayout::Nhwc),
        (true, true) => Ok(match (usual(a), usual(c)) {
            (true, false) => SourceLayout::Nchw,
            (false, true) => SourceLayout::Nhwc,
            _ if a == b && c != b => SourceLayout::Nhwc,
            _ => SourceLayout::Nchw,
        }),
        (false, false) => Err(DataError::format(
            path,
            format!(
                "images of shape {dims:?}: cannot tell the channel axis (expected NCHW or NHWC \
                 with 1 to 4 channels)"
            ),
        )),
    }
}

/// `x` rounded to the precision of ONNX element type `dtype` (float16 or
/// bfloat16), kept in its own kind; other types leave it as it is.
pub fn round_to(x: &Tensor, dtype: crate::onnx::DataType) -> Result<Tensor, tch::TchError> {
    use crate::onnx::DataType;
    let kind = match dtype {
        DataType::FLOAT16 => tch::Kind::Half,
        DataType::BFLOAT16 => tch::Kind::BFloat16,
        _ => return Ok(x.shallow_clone()),
    };
    x.f_to_kind(kind)?.f_to_kind(x.kind())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy(n: i64) -> Dataset {
        let images = Tensor::arange(n * 4, (Kind::Float, Device::Cpu)).reshape([n, 1, 2, 2]);
        let labels = Tensor::arange(n, (Kind::Int64, Device::Cpu));
        Dataset::new(images, labels, "toy", SourceLayout::Nchw).unwrap()
    }

    #[test]
    fn parse_range_forms() {
        assert_eq!(parse_range("0:5000").unwrap(), 0..5000);
        assert_eq!(parse_range(" 5000: ").unwrap(), 5000..usize::MAX);
        assert_eq!(parse_range(":10").unwrap(), 0..10);
        assert_eq!(parse_range(":").unwrap(), 0..usize::MAX);
        for bad in ["5", "a:3", "3:2", "4:4", "-1:3", "1:2:3"] {
            let e = parse_range(bad).unwrap_err().to_string();
            assert!(e.starts_with(&format!("range `{bad}`")), "{e}");
        }
    }

    #[test]
    fn slice_and_bounds() {
        let d = toy(10);
        let s = d.slice(parse_range("2:5").unwrap()).unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(s.labels.int64_value(&[0]), 2);
        assert_eq!(s.source, "toy[2:5]");
        assert_eq!(d.slice(parse_range("7:").unwrap()).unwrap().len(), 3);
        let e = d
            .slice(parse_range("0:11").unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("0:11") && e.contains("10 samples") && e.contains("toy"),
            "{e}"
        );
        assert!(d.slice(parse_range("10:").unwrap()).is_err());
    }

    #[test]
    fn batches_keep_order_and_last_partial() {
        let d = toy(7);
        let b: Vec<_> = d.batches(3).collect();
        assert_eq!(b.len(), 3);
        assert_eq!(d.batches(3).len(), 3);
        assert_eq!(b[2].0.size(), vec![1, 1, 2, 2]);
        let labels: Vec<i64> = b
            .iter()
            .flat_map(|(_, l)| Vec::<i64>::try_from(l).unwrap())
            .collect();
        assert_eq!(labels, (0..7).collect::<Vec<_>>());
        assert_eq!(d.num_classes().unwrap(), 7);
    }

    #[test]
    fn guess_layouts() {
        let p = Path::new("x");
        assert_eq!(
            guess_4d_layout(p, &[5, 1, 28, 28]).unwrap(),
            SourceLayout::Nchw
        );
        assert_eq!(
            guess_4d_layout(p, &[5, 28, 28, 3]).unwrap(),
            SourceLayout::Nhwc
        );
        assert_eq!(
            guess_4d_layout(p, &[5, 3, 4, 4]).unwrap(),
            SourceLayout::Nchw
        );
        assert_eq!(
            guess_4d_layout(p, &[5, 4, 4, 3]).unwrap(),
            SourceLayout::Nhwc
        );
        assert_eq!(
            guess_4d_layout(p, &[5, 2, 3, 3]).unwrap(),
            SourceLayout::Nhwc
        );
        assert_eq!(
            guess_4d_layout(p, &[5, 3, 3, 3]).unwrap(),
            SourceLayout::Nchw
        );
        assert!(guess_4d_layout(p, &[5, 28, 28, 28]).is_err());
    }

    #[test]
    fn unknown_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("notes.txt");
        std::fs::write(&p, "hello").unwrap();
        let e = load(&p).unwrap_err().to_string();
        assert!(
            e.contains("notes.txt") && e.contains("not a recognised"),
            "{e}"
        );
        let e = load(&dir.path().join("absent")).unwrap_err().to_string();
        assert!(e.contains("absent"), "{e}");
    }
}
