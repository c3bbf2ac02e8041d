//! NumPy `.npz` archives and `.npy` pairs.
//!
//! Images: uint8 (scaled by 1/255) or float32/float64 (kept, stored as
//! float32), `[N, C, H, W]`, `[N, H, W, C]`, `[N, H, W]` or `[N, H*W]` for
//! square single-channel images. Labels: any integer type (or integral
//! floats), `[N]`, `[N, 1]` or one-hot `[N, K]`.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use ndarray::ArrayD;
use ndarray_npy::{NpzReader, ReadNpyError, ReadNpzError, ReadableElement};

use super::{
    guess_4d_layout, images_tensor, labels_tensor, DataError, Dataset, RawImages, SourceLayout,
};

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

/// Why reading an array failed: a dtype to try next, or a real error.
enum ReadFail {
    WrongDtype(String),
    Other(String),
}

impl From<ReadNpyError> for ReadFail {
    fn from(e: ReadNpyError) -> Self {
        match e {
            ReadNpyError::WrongDescriptor(d) => ReadFail::WrongDtype(d.to_string()),
            other => ReadFail::Other(other.to_string()),
        }
    }
}

impl From<ReadNpzError> for ReadFail {
    fn from(e: ReadNpzError) -> Self {
        match e {
            ReadNpzError::Npy(e) => e.into(),
            other => ReadFail::Other(other.to_string()),
        }
    }
}

/// One array to read, in a standalone `.npy` or inside an `.npz`.
trait ArraySource {
    fn read<T: ReadableElement>(&mut self) -> Result<ArrayD<T>, ReadFail>;
    /// The file to blame in messages.
    fn path(&self) -> &Path;
    /// How to name the array in messages ("array `x`" or "the array").
    fn what(&self) -> String;
}

struct NpyFile<'a>(&'a Path);

impl ArraySource for NpyFile<'_> {
    fn read<T: ReadableElement>(&mut self) -> Result<ArrayD<T>, ReadFail> {
        Ok(ndarray_npy::read_npy(self.0)?)
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
    npz: &'a mut NpzReader<BufReader<File>>,
    name: &'a str,
}

impl ArraySource for NpzEntry<'_> {
    fn read<T: ReadableElement>(&mut self) -> Result<ArrayD<T>, ReadFail> {
        Ok(self.npz.by_name(self.name)?)
    }
    fn path(&self) -> &Path {
        self.path
    }
    fn what(&self) -> String {
        format!("array `{}`", self.name)
    }
}

/// Tries each element type in turn; `Ok(None)` when none matched (with the
/// file's dtype descriptor), `Err` on any other failure.
macro_rules! try_dtypes {
    ($src:expr, $last:ident, [$($ty:ty => $wrap:expr),* $(,)?]) => {{
        let mut found = None;
        $(
            if found.is_none() {
                match $src.read::<$ty>() {
                    Ok(a) => found = Some($wrap(a)),
                    Err(ReadFail::WrongDtype(d)) => $last = d,
                    Err(ReadFail::Other(e)) => {
                        return Err(DataError::format(
                            $src.path(),
                            format!("cannot read {}: {e}", $src.what()),
                        ))
                    }
                }
            }
        )*
        found
    }};
}

/// An image array as read: raw samples in row-major order and its shape.
pub(super) struct ImageArray {
    pub raw: RawImages,
    pub shape: Vec<usize>,
}

fn read_image_array(src: &mut impl ArraySource) -> Result<ImageArray, DataError> {
    let mut last = String::new();
    let found = try_dtypes!(src, last, [
        u8 => |a: ArrayD<u8>| ImageArray { shape: a.shape().to_vec(), raw: RawImages::U8(a.iter().copied().collect()) },
        f32 => |a: ArrayD<f32>| ImageArray { shape: a.shape().to_vec(), raw: RawImages::F32(a.iter().copied().collect()) },
        f64 => |a: ArrayD<f64>| ImageArray { shape: a.shape().to_vec(), raw: RawImages::F32(a.iter().map(|&v| v as f32).collect()) },
    ]);
    found.ok_or_else(|| {
        DataError::format(
            src.path(),
            format!(
                "{} has dtype {last}; images must be uint8, float32 or float64",
                src.what()
            ),
        )
    })
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
    let mut last = String::new();
    let found = try_dtypes!(src, last, [
        i64 => ints::<i64>,
        i32 => ints::<i32>,
        u8 => ints::<u8>,
        i16 => ints::<i16>,
        i8 => ints::<i8>,
        u16 => ints::<u16>,
        u32 => ints::<u32>,
        u64 => ints::<u64>,
        f32 => floats::<f32>,
        f64 => floats::<f64>,
    ]);
    let (vals, shape) = found.ok_or_else(|| {
        DataError::format(
            src.path(),
            format!("{} has dtype {last}; labels must be integers", src.what()),
        )
    })?;
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

fn open_npz(path: &Path) -> Result<NpzReader<BufReader<File>>, DataError> {
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    NpzReader::new(BufReader::new(file))
        .map_err(|e| DataError::format(path, format!("not a valid .npz archive: {e}")))
}

/// Loads an `.npz`, picking the images/labels pair by its usual names.
pub(super) fn load_npz(path: &Path) -> Result<Dataset, DataError> {
    let mut npz = open_npz(path)?;
    let names = npz
        .names()
        .map_err(|e| DataError::format(path, format!("cannot list arrays: {e}")))?;
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
    let names = npz
        .names()
        .map_err(|e| DataError::format(path, format!("cannot list arrays: {e}")))?;
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

fn read_npz_pair(
    path: &Path,
    npz: &mut NpzReader<BufReader<File>>,
    x: &str,
    y: &str,
) -> Result<Dataset, DataError> {
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
fn npy_label_candidates(images: &Path) -> Vec<PathBuf> {
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
    let tried = npy_label_candidates(path);
    let labels_path =
        tried
            .iter()
            .find(|p| p.is_file())
            .cloned()
            .ok_or_else(|| DataError::MissingLabels {
                images: path.to_path_buf(),
                tried: tried.clone(),
            })?;
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
