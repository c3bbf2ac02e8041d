//! Backdoor triggers, for measuring the attack success rate only: I-BAU never
//! sees them.
//!
//! Parsed from strings and applied to float `[N, C, H, W]` images in `[0, 1]`
//! (before normalisation and layout mapping):
//! - `patch:size=S,value=V,row=R,col=C`: an `S`x`S` square of value `V`
//!   (default 1) in every channel, top-left corner at `(R, C)`; a negative
//!   `R`/`C` counts from the bottom/right edge (`row=-4,size=3` leaves one
//!   row below the square);
//! - `blend:pattern=FILE,alpha=A`: `x' = (1 - A) x + A P`;
//! - `mask:pattern=FILE,mask=FILE`: `x' = (1 - M) x + M T`.
//!
//! Pattern and mask files are `.npy` arrays (`[H, W]`, `[C, H, W]`,
//! `[H, W, C]` or `[1, C, H, W]`; uint8 scaled to `[0, 1]`, floats kept) or
//! PNG/JPEG/BMP images; relative paths are relative to the current directory.
//! They are read when the trigger is parsed. A one-channel pattern or mask
//! applies to every channel.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use tch::{Kind, Tensor};

use super::{folder, guess_4d_layout, images_tensor, npy, torch, DataError, SourceLayout};

/// The largest patch size and position a trigger accepts, in pixels.
pub const MAX_TRIGGER_PIXELS: i64 = 1 << 16;

/// A trigger stamped on images to measure a backdoor.
#[derive(Debug)]
pub enum Trigger {
    /// A `size`x`size` square of `value`, top-left at (`row`, `col`); negative
    /// positions count from the bottom/right edge.
    Patch {
        size: i64,
        value: f64,
        row: i64,
        col: i64,
    },
    /// `x' = (1 - alpha) x + alpha * pattern`; `pattern` is `[C, H, W]`.
    Blend {
        pattern: Tensor,
        alpha: f64,
        pattern_file: PathBuf,
    },
    /// `x' = (1 - mask) x + mask * pattern`; both `[C, H, W]` with values in
    /// `[0, 1]` for the mask.
    Mask {
        pattern: Tensor,
        mask: Tensor,
        pattern_file: PathBuf,
        mask_file: PathBuf,
    },
}

impl Trigger {
    /// The files the trigger was read from (a pattern, a mask).
    pub fn files(&self) -> Vec<&Path> {
        match self {
            Trigger::Patch { .. } => vec![],
            Trigger::Blend { pattern_file, .. } => vec![pattern_file],
            Trigger::Mask {
                pattern_file,
                mask_file,
                ..
            } => vec![pattern_file, mask_file],
        }
    }
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Trigger::Patch {
                size,
                value,
                row,
                col,
            } => write!(f, "patch:size={size},value={value},row={row},col={col}"),
            Trigger::Blend {
                alpha,
                pattern_file,
                ..
            } => write!(f, "blend:pattern={},alpha={alpha}", pattern_file.display()),
            Trigger::Mask {
                pattern_file,
                mask_file,
                ..
            } => write!(
                f,
                "mask:pattern={},mask={}",
                pattern_file.display(),
                mask_file.display()
            ),
        }
    }
}

/// `key=value` parameters of one trigger string, checked against the keys
/// its kind accepts.
struct Params<'a> {
    spec: &'a str,
    pairs: Vec<(&'a str, &'a str)>,
}

impl<'a> Params<'a> {
    fn parse(spec: &'a str, body: &'a str, accepted: &[&str]) -> Result<Self, DataError> {
        let mut pairs: Vec<(&str, &str)> = Vec::new();
        for item in body.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (k, v) = item
                .split_once('=')
                .ok_or_else(|| trigger_err(spec, format!("`{item}` is not `key=value`")))?;
            let (k, v) = (k.trim(), v.trim());
            if !accepted.contains(&k) {
                return Err(trigger_err(
                    spec,
                    format!("unknown key `{k}` (accepted: {})", accepted.join(", ")),
                ));
            }
            if pairs.iter().any(|(seen, _)| *seen == k) {
                return Err(trigger_err(spec, format!("`{k}` is given twice")));
            }
            pairs.push((k, v));
        }
        Ok(Params { spec, pairs })
    }

    fn get(&self, key: &str) -> Option<&'a str> {
        self.pairs.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }

    fn required(&self, key: &str) -> Result<&'a str, DataError> {
        self.get(key)
            .ok_or_else(|| trigger_err(self.spec, format!("`{key}` is missing")))
    }

    /// An integer of at most [`MAX_TRIGGER_PIXELS`] in size (images are not
    /// larger; the bound keeps positions and sizes far from overflow).
    fn int(&self, key: &str, positive: bool) -> Result<i64, DataError> {
        let v = self.required(key)?;
        let kind = if positive {
            "a positive integer"
        } else {
            "an integer"
        };
        let n = match v.parse::<i64>() {
            Ok(n) if !positive || n > 0 => n,
            _ => {
                return Err(trigger_err(
                    self.spec,
                    format!("`{key}` must be {kind}, got `{v}`"),
                ))
            }
        };
        if n.unsigned_abs() > MAX_TRIGGER_PIXELS as u64 {
            return Err(trigger_err(
                self.spec,
                format!(
                    "`{key}` must be {kind} of at most {MAX_TRIGGER_PIXELS} in size, got `{v}`"
                ),
            ));
        }
        Ok(n)
    }

    /// A number in `[0, 1]`.
    fn unit(&self, key: &str, default: Option<f64>) -> Result<f64, DataError> {
        let v = match (self.get(key), default) {
            (Some(v), _) => v,
            (None, Some(d)) => return Ok(d),
            (None, None) => self.required(key)?,
        };
        match v.parse::<f64>() {
            Ok(x) if (0.0..=1.0).contains(&x) => Ok(x),
            _ => Err(trigger_err(
                self.spec,
                format!("`{key}` must be a number in [0, 1] (image scale), got `{v}`"),
            )),
        }
    }

    fn file(&self, key: &str) -> Result<PathBuf, DataError> {
        let v = self.required(key)?;
        if v.is_empty() {
            return Err(trigger_err(self.spec, format!("`{key}` needs a file")));
        }
        Ok(PathBuf::from(v))
    }
}

fn trigger_err(spec: &str, reason: impl Into<String>) -> DataError {
    DataError::Trigger {
        spec: spec.to_string(),
        reason: reason.into(),
    }
}

impl FromStr for Trigger {
    type Err = DataError;

    fn from_str(spec: &str) -> Result<Self, DataError> {
        let (kind, body) = spec.split_once(':').unwrap_or((spec, ""));
        match kind.trim().to_ascii_lowercase().as_str() {
            "patch" => {
                let p = Params::parse(spec, body, &["size", "value", "row", "col"])?;
                Ok(Trigger::Patch {
                    size: p.int("size", true)?,
                    value: p.unit("value", Some(1.0))?,
                    row: p.int("row", false)?,
                    col: p.int("col", false)?,
                })
            }
            "blend" => {
                let p = Params::parse(spec, body, &["pattern", "alpha"])?;
                let alpha = p.unit("alpha", None)?;
                let pattern_file = p.file("pattern")?;
                let pattern = load_pattern(spec, "pattern", &pattern_file)?;
                Ok(Trigger::Blend {
                    pattern,
                    alpha,
                    pattern_file,
                })
            }
            "mask" => {
                let p = Params::parse(spec, body, &["pattern", "mask"])?;
                let pattern_file = p.file("pattern")?;
                let mask_file = p.file("mask")?;
                let pattern = load_pattern(spec, "pattern", &pattern_file)?;
                let mask = load_pattern(spec, "mask", &mask_file)?;
                let lo = torch("checking the mask", mask.f_min())?.double_value(&[]);
                let hi = torch("checking the mask", mask.f_max())?.double_value(&[]);
                if lo < 0.0 || hi > 1.0 {
                    return Err(trigger_err(
                        spec,
                        format!(
                            "`mask` file `{}` has values in [{lo}, {hi}]; a mask must lie in [0, 1]",
                            mask_file.display()
                        ),
                    ));
                }
                Ok(Trigger::Mask {
                    pattern,
                    mask,
                    pattern_file,
                    mask_file,
                })
            }
            other => Err(trigger_err(
                spec,
                format!(
                    "unknown trigger kind `{other}` (expected `patch:size=S,value=V,row=R,col=C`, \
                     `blend:pattern=FILE.npy,alpha=A` or `mask:pattern=FILE,mask=FILE`)"
                ),
            )),
        }
    }
}

/// Reads a pattern or mask file into float `[C, H, W]`.
fn load_pattern(spec: &str, key: &str, path: &Path) -> Result<Tensor, DataError> {
    let wrap = |e: DataError| trigger_err(spec, format!("`{key}`: {e}"));
    let is_npy = std::fs::read(path)
        .map_err(|e| wrap(DataError::io(path, e)))?
        .starts_with(b"\x93NUMPY");
    let t = if is_npy {
        let arr = npy::read_npy_image(path).map_err(wrap)?;
        let s = arr.shape.clone();
        let (dims, layout) = match s.as_slice() {
            [h, w] => ([1, 1, *h, *w], SourceLayout::Nchw),
            [a, b, c] => {
                let d = [1, *a, *b, *c];
                (d, guess_4d_layout(path, &d).map_err(wrap)?)
            }
            [1, a, b, c] => {
                let d = [1, *a, *b, *c];
                (d, guess_4d_layout(path, &d).map_err(wrap)?)
            }
            _ => {
                return Err(trigger_err(
                    spec,
                    format!(
                    "`{key}` file `{}` has shape {s:?}; expected [H, W], [C, H, W] or [H, W, C]",
                    path.display()
                ),
                ))
            }
        };
        images_tensor(path, arr.raw, dims.map(|d| d as i64), layout).map_err(wrap)?
    } else {
        let (pixels, c, h, w) = folder::decode(path).map_err(wrap)?;
        images_tensor(
            path,
            super::RawImages::U8(pixels),
            [1, h as i64, w as i64, c as i64],
            SourceLayout::Nhwc,
        )
        .map_err(wrap)?
    };
    torch(format!("`{}`", path.display()), t.f_squeeze_dim(0))
}

impl Trigger {
    /// Stamps the trigger on float `[N, C, H, W]` images in `[0, 1]`; returns
    /// new images of the same kind and device.
    pub fn apply(&self, images: &Tensor) -> Result<Tensor, DataError> {
        let spec = self.to_string();
        let size = images.size();
        let &[_, c, h, w] = size.as_slice() else {
            return Err(trigger_err(
                &spec,
                format!("expected [N, C, H, W] images, got {size:?}"),
            ));
        };
        let ctx = || format!("applying trigger `{spec}`");
        match self {
            Trigger::Patch {
                size: s,
                value,
                row,
                col,
            } => {
                let r = if *row < 0 { h + row } else { *row };
                let q = if *col < 0 { w + col } else { *col };
                if r < 0 || q < 0 || r + s > h || q + s > w {
                    return Err(trigger_err(
                        &spec,
                        format!(
                            "a {s}x{s} patch at row {row}, col {col} does not fit {h}x{w} images"
                        ),
                    ));
                }
                let out = torch(ctx(), images.f_detach_copy())?;
                let mut region = torch(
                    ctx(),
                    out.f_narrow(2, r, *s).and_then(|t| t.f_narrow(3, q, *s)),
                )?;
                let _filled = torch(ctx(), region.f_fill_(*value))?;
                Ok(out)
            }
            Trigger::Blend { pattern, alpha, .. } => {
                let p = fit_pattern(&spec, "pattern", pattern, images, [c, h, w])?;
                let mixed = images
                    .f_mul_scalar(1.0 - alpha)
                    .and_then(|x| p.f_mul_scalar(*alpha).and_then(|p| x.f_add(&p)));
                torch(ctx(), mixed)
            }
            Trigger::Mask { pattern, mask, .. } => {
                let p = fit_pattern(&spec, "pattern", pattern, images, [c, h, w])?;
                let m = fit_pattern(&spec, "mask", mask, images, [c, h, w])?;
                // (1 - M) x + M T
                let mixed = m.f_rsub_scalar(1.0).and_then(|keep| {
                    let x = images.f_mul(&keep)?;
                    x.f_add(&m.f_mul(&p)?)
                });
                torch(ctx(), mixed)
            }
        }
    }
}

/// Checks a `[Cp, H, W]` pattern against `[C, H, W]` images (`Cp` is 1 or
/// `C`) and returns it as `[1, Cp, H, W]` on the images' device and kind.
fn fit_pattern(
    spec: &str,
    key: &str,
    pattern: &Tensor,
    images: &Tensor,
    [c, h, w]: [i64; 3],
) -> Result<Tensor, DataError> {
    let s = pattern.size();
    let ok = s.len() == 3 && (s[0] == 1 || s[0] == c) && s[1] == h && s[2] == w;
    if !ok {
        return Err(trigger_err(
            spec,
            format!("`{key}` is {s:?} [C, H, W] but the images are [{c}, {h}, {w}]"),
        ));
    }
    let ctx = format!("trigger `{spec}`: preparing `{key}`");
    let kind = match images.kind() {
        k @ (Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16) => k,
        _ => Kind::Float,
    };
    torch(
        ctx,
        pattern
            .f_to_kind(kind)
            .and_then(|t| t.f_to_device(images.device()))
            .and_then(|t| t.f_unsqueeze(0)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array2, Array3};
    use tch::Device;

    fn err(spec: &str) -> String {
        spec.parse::<Trigger>().unwrap_err().to_string()
    }

    #[test]
    fn parse_patch() {
        let t: Trigger = "patch:size=3,value=1,row=25,col=25".parse().unwrap();
        assert!(matches!(
            t,
            Trigger::Patch {
                size: 3,
                row: 25,
                col: 25,
                ..
            }
        ));
        assert_eq!(t.to_string(), "patch:size=3,value=1,row=25,col=25");
        let t: Trigger = " patch: size=2, row=-3, col=-3 ".parse().unwrap();
        assert!(matches!(t, Trigger::Patch { value, row: -3, .. } if value == 1.0));
    }

    #[test]
    fn parse_errors_name_key_and_value() {
        assert_eq!(
            err("patch:size=x"),
            "trigger `patch:size=x`: `size` must be a positive integer, got `x`"
        );
        assert!(err("patch:size=0,row=1,col=1").contains("`size` must be a positive integer"));
        assert!(err("patch:size=3,row=1").contains("`col` is missing"));
        assert!(err("patch:size=3,row=1,col=1,colour=2").contains("unknown key `colour`"));
        assert!(err("patch:size=3,size=3").contains("`size` is given twice"));
        assert!(err("patch:size=3,row=1,col=1,value=255")
            .contains("`value` must be a number in [0, 1]"));
        assert!(err("patch:size").contains("`size` is not `key=value`"));
        assert!(err("star:size=3").contains("unknown trigger kind `star`"));
        assert!(err("blend:alpha=0.2").contains("`pattern` is missing"));
        assert!(err("blend:pattern=p.npy,alpha=2").contains("`alpha` must be a number in [0, 1]"));
        let e = err("blend:pattern=/nonexistent/p.npy,alpha=0.2");
        assert!(
            e.contains("`pattern`") && e.contains("/nonexistent/p.npy"),
            "{e}"
        );
    }

    #[test]
    fn patch_application() {
        let x = Tensor::zeros([2, 3, 5, 5], (Kind::Float, Device::Cpu));
        let t: Trigger = "patch:size=2,value=0.5,row=-2,col=1".parse().unwrap();
        let y = t.apply(&x).unwrap();
        assert_eq!(y.size(), x.size());
        // 2x2 per channel per image = 24 cells of 0.5.
        assert!((y.sum(Kind::Double).double_value(&[]) - 24.0 * 0.5).abs() < 1e-9);
        assert_eq!(y.double_value(&[1, 2, 3, 1]), 0.5);
        assert_eq!(y.double_value(&[1, 2, 4, 2]), 0.5);
        assert_eq!(y.double_value(&[1, 2, 2, 1]), 0.0);
        assert_eq!(y.double_value(&[0, 0, 3, 3]), 0.0);
        // The input is untouched.
        assert_eq!(x.sum(Kind::Double).double_value(&[]), 0.0);

        let t: Trigger = "patch:size=3,row=4,col=0".parse().unwrap();
        let e = t.apply(&x).unwrap_err().to_string();
        assert!(e.contains("does not fit 5x5"), "{e}");
    }

    #[test]
    fn blend_and_mask_from_files() {
        let dir = tempfile::tempdir().unwrap();
        let pattern = dir.path().join("p.npy");
        ndarray_npy::write_npy(&pattern, &Array2::<u8>::from_elem((2, 2), 255)).unwrap();
        let spec = format!("blend:pattern={},alpha=0.25", pattern.display());
        let t: Trigger = spec.parse().unwrap();
        let x = Tensor::zeros([1, 3, 2, 2], (Kind::Float, Device::Cpu));
        let y = t.apply(&x).unwrap();
        assert_eq!(y.size(), vec![1, 3, 2, 2]);
        assert!((y.double_value(&[0, 2, 1, 1]) - 0.25).abs() < 1e-7);

        // Mask: an HWC float pattern and a PNG mask covering the left column.
        let pat = dir.path().join("t.npy");
        ndarray_npy::write_npy(&pat, &Array3::<f32>::from_elem((2, 2, 3), 0.8)).unwrap();
        let mask = dir.path().join("m.png");
        image::GrayImage::from_fn(2, 2, |x, _| image::Luma([if x == 0 { 255 } else { 0 }]))
            .save(&mask)
            .unwrap();
        let t: Trigger = format!("mask:pattern={},mask={}", pat.display(), mask.display())
            .parse()
            .unwrap();
        let x = Tensor::full([1, 3, 2, 2], 0.1, (Kind::Float, Device::Cpu));
        let y = t.apply(&x).unwrap();
        assert!((y.double_value(&[0, 1, 1, 0]) - 0.8).abs() < 1e-6);
        assert!((y.double_value(&[0, 1, 1, 1]) - 0.1).abs() < 1e-6);

        // Pattern size must match the images.
        let big = Tensor::zeros([1, 3, 4, 4], (Kind::Float, Device::Cpu));
        let e = t.apply(&big).unwrap_err().to_string();
        assert!(
            e.contains("`pattern` is [3, 2, 2]") && e.contains("[3, 4, 4]"),
            "{e}"
        );

        // Mask values outside [0, 1] are refused.
        let bad = dir.path().join("bad.npy");
        ndarray_npy::write_npy(&bad, &Array2::<f32>::from_elem((2, 2), 2.0)).unwrap();
        let e = err(&format!(
            "mask:pattern={},mask={}",
            pat.display(),
            bad.display()
        ));
        assert!(e.contains("bad.npy") && e.contains("[0, 1]"), "{e}");
    }
}
