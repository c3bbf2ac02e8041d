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
//! - `mask:pattern=FILE,mask=FILE`: `x' = (1 - M) x + M T`;
//! - `additive:pattern=FILE,scale=S`: `x' = clamp(x + S P, 0, 1)` (`S`
//!   default 1; `P` may be negative: SIG and low-frequency triggers);
//! - `warp:grid=FILE.npy`: `x' = grid_sample(x, G)` with PyTorch's
//!   `grid_sample` convention (bilinear, `padding_mode="border"`,
//!   `align_corners=True`); `G` is float `[H, W, 2]` or `[1, H, W, 2]` of
//!   sampling coordinates in `[-1, 1]`, `G[..., 0]` the column (x) and
//!   `G[..., 1]` the row (y) (WaNet).
//!
//! Pattern and mask files are `.npy` arrays (`[H, W]`, `[C, H, W]`,
//! `[H, W, C]` or `[1, C, H, W]`; uint8 scaled to `[0, 1]`, floats kept) or
//! PNG/JPEG/BMP images; relative paths are relative to the current directory.
//! They are read when the trigger is parsed, and values that are not finite
//! are refused (masks and grids must also lie in their range). A one-channel
//! pattern or mask applies to every channel.
//!
//! An [`Attack`] pairs a trigger with its [`Target`]: one class (all-to-one)
//! or `next` (all-to-all: label `y` to `(y + 1) mod classes`).

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
    /// `x' = clamp(x + scale * pattern, 0, 1)`; `pattern` is `[C, H, W]`,
    /// finite, of either sign.
    Additive {
        pattern: Tensor,
        scale: f64,
        pattern_file: PathBuf,
    },
    /// `x' = grid_sample(x, grid)` (bilinear, border padding, corners
    /// aligned); `grid` is float32 `[1, H, W, 2]` of `(x, y)` sampling
    /// coordinates in `[-1, 1]`.
    Warp { grid: Tensor, grid_file: PathBuf },
}

impl Trigger {
    /// The files the trigger was read from (a pattern, a mask).
    pub fn files(&self) -> Vec<&Path> {
        match self {
            Trigger::Patch { .. } => vec![],
            Trigger::Blend { pattern_file, .. } | Trigger::Additive { pattern_file, .. } => {
                vec![pattern_file]
            }
            Trigger::Warp { grid_file, .. } => vec![grid_file],
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
            Trigger::Additive {
                scale,
                pattern_file,
                ..
            } => write!(
                f,
                "additive:pattern={},scale={scale}",
                pattern_file.display()
            ),
            Trigger::Warp { grid_file, .. } => write!(f, "warp:grid={}", grid_file.display()),
        }
    }
}

/// Where an attack sends a triggered sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// All-to-one: every triggered sample to this class; its success rate
    /// counts the samples of the other labels.
    Class(i64),
    /// All-to-all: a sample of label `y` to `(y + 1) mod classes`; its
    /// success rate counts every sample.
    Next,
}

impl Target {
    /// The class the attack aims each sample of `labels` (int64 `[N]`) at,
    /// for a model of `classes` classes.
    pub fn aimed(&self, labels: &Tensor, classes: i64) -> Result<Tensor, DataError> {
        let ctx = "the attack's target labels";
        match *self {
            Target::Class(t) => torch(ctx, labels.f_full_like(t)),
            Target::Next => torch(
                ctx,
                labels.f_add_scalar(1).and_then(|l| l.f_remainder(classes)),
            ),
        }
    }
}

/// A class number, or `next`.
impl FromStr for Target {
    type Err = DataError;

    fn from_str(s: &str) -> Result<Self, DataError> {
        let v = s.trim();
        if v.eq_ignore_ascii_case("next") {
            return Ok(Target::Next);
        }
        v.parse::<i64>()
            .map(Target::Class)
            .map_err(|_| DataError::Target {
                value: s.to_string(),
            })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Class(t) => write!(f, "{t}"),
            Target::Next => f.write_str("next"),
        }
    }
}

/// A class as a JSON number, `next` as the string `"next"`.
impl serde::Serialize for Target {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match *self {
            Target::Class(t) => s.serialize_i64(t),
            Target::Next => s.serialize_str("next"),
        }
    }
}

/// A trigger and the target its success is measured against.
#[derive(Debug)]
pub struct Attack {
    pub trigger: Trigger,
    pub target: Target,
}

impl Attack {
    /// Pairs trigger specifications with targets in order (`--trigger A
    /// --target 3 --trigger B --target next`). The counts are checked before
    /// any trigger file is read.
    pub fn pair<S: AsRef<str>>(
        triggers: &[S],
        targets: &[Target],
    ) -> Result<Vec<Attack>, DataError> {
        if triggers.len() != targets.len() {
            return Err(DataError::AttackPairs {
                triggers: triggers.len(),
                targets: targets.len(),
            });
        }
        triggers
            .iter()
            .zip(targets)
            .map(|(spec, &target)| {
                Ok(Attack {
                    trigger: spec.as_ref().parse()?,
                    target,
                })
            })
            .collect()
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

    /// A finite number of either sign.
    fn finite(&self, key: &str, default: f64) -> Result<f64, DataError> {
        let Some(v) = self.get(key) else {
            return Ok(default);
        };
        match v.parse::<f64>() {
            Ok(x) if x.is_finite() => Ok(x),
            _ => Err(trigger_err(
                self.spec,
                format!("`{key}` must be a finite number, got `{v}`"),
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
                check_values(spec, "pattern", &pattern_file, &pattern, None, "a pattern")?;
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
                check_values(spec, "pattern", &pattern_file, &pattern, None, "a pattern")?;
                check_values(spec, "mask", &mask_file, &mask, Some((0.0, 1.0)), "a mask")?;
                Ok(Trigger::Mask {
                    pattern,
                    mask,
                    pattern_file,
                    mask_file,
                })
            }
            "additive" => {
                let p = Params::parse(spec, body, &["pattern", "scale"])?;
                let scale = p.finite("scale", 1.0)?;
                let pattern_file = p.file("pattern")?;
                let pattern = load_pattern(spec, "pattern", &pattern_file)?;
                check_values(spec, "pattern", &pattern_file, &pattern, None, "a pattern")?;
                Ok(Trigger::Additive {
                    pattern,
                    scale,
                    pattern_file,
                })
            }
            "warp" => {
                let p = Params::parse(spec, body, &["grid"])?;
                let grid_file = p.file("grid")?;
                let grid = load_grid(spec, &grid_file)?;
                Ok(Trigger::Warp { grid, grid_file })
            }
            other => Err(trigger_err(
                spec,
                format!(
                    "unknown trigger kind `{other}` (expected `patch:size=S,value=V,row=R,col=C`, \
                     `blend:pattern=FILE.npy,alpha=A`, `mask:pattern=FILE,mask=FILE`, \
                     `additive:pattern=FILE,scale=S` or `warp:grid=FILE.npy`)"
                ),
            )),
        }
    }
}

/// Opens a trigger file, refusing anything but a regular file (a FIFO
/// would block, a device never end), checked on the open file. The readers
/// then bound what they read by the file's size and the memory budget.
fn open_regular(path: &Path) -> Result<std::fs::File, DataError> {
    crate::inputs::open_regular(path).map_err(|e| DataError::io(path, e))
}

/// Reads a pattern or mask file into float `[C, H, W]`.
fn load_pattern(spec: &str, key: &str, path: &Path) -> Result<Tensor, DataError> {
    use std::io::Read;
    let wrap = |e: DataError| trigger_err(spec, format!("`{key}`: {e}"));
    // The first bytes tell `.npy` from an image.
    let mut magic = Vec::with_capacity(6);
    open_regular(path)
        .map_err(wrap)?
        .take(6)
        .read_to_end(&mut magic)
        .map_err(|e| wrap(DataError::io(path, e)))?;
    let is_npy = magic == b"\x93NUMPY";
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

/// Reads a warp grid: a float `.npy` of shape `[H, W, 2]` or `[1, H, W, 2]`
/// with coordinates in `[-1, 1]`, as float32 `[1, H, W, 2]`.
fn load_grid(spec: &str, path: &Path) -> Result<Tensor, DataError> {
    let wrap = |e: DataError| trigger_err(spec, format!("`grid`: {e}"));
    open_regular(path).map_err(wrap)?;
    let arr = npy::read_npy_image(path).map_err(wrap)?;
    let bad =
        |reason: String| trigger_err(spec, format!("`grid` file `{}` {reason}", path.display()));
    let shape = arr.shape;
    let (h, w) = match shape.as_slice() {
        [h, w, 2] | [1, h, w, 2] => (*h as i64, *w as i64),
        _ => {
            return Err(bad(format!(
            "has shape {shape:?}; expected [H, W, 2] or [1, H, W, 2] (x, y sampling coordinates)"
        )))
        }
    };
    let super::RawImages::F32(values) = arr.raw else {
        return Err(bad(
            "is uint8; a grid holds float32 or float64 coordinates in [-1, 1]".into(),
        ));
    };
    let ctx = format!("`{}`: building the grid", path.display());
    let grid = torch(
        &ctx,
        Tensor::f_from_slice(&values).and_then(|t| t.f_reshape([1, h, w, 2])),
    )?;
    check_values(
        spec,
        "grid",
        path,
        &grid,
        Some((-1.0, 1.0)),
        "grid coordinates",
    )?;
    Ok(grid)
}

/// Refuses a trigger file (`key`, read from `path`) that is empty, holds
/// values that are not finite, or values outside `range`: `what` must lie
/// in it.
fn check_values(
    spec: &str,
    key: &str,
    path: &Path,
    values: &Tensor,
    range: Option<(f64, f64)>,
    what: &str,
) -> Result<(), DataError> {
    let bad =
        |reason: String| trigger_err(spec, format!("`{key}` file `{}` {reason}", path.display()));
    if values.numel() == 0 {
        return Err(bad("is empty".into()));
    }
    let ctx = || format!("checking `{}`", path.display());
    let finite = torch(ctx(), values.f_isfinite().and_then(|t| t.f_all()))?.int64_value(&[]) != 0;
    if !finite {
        return Err(bad(
            "holds values that are not finite (NaN or infinite)".into()
        ));
    }
    if let Some((lo, hi)) = range {
        let min = torch(ctx(), values.f_min())?.double_value(&[]);
        let max = torch(ctx(), values.f_max())?.double_value(&[]);
        if min < lo || max > hi {
            return Err(bad(format!(
                "has values in [{min}, {max}]; {what} must lie in [{lo}, {hi}]"
            )));
        }
    }
    Ok(())
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
            Trigger::Additive { pattern, scale, .. } => {
                let p = fit_pattern(&spec, "pattern", pattern, images, [c, h, w])?;
                let added = p
                    .f_mul_scalar(*scale)
                    .and_then(|p| images.f_add(&p))
                    .and_then(|x| x.f_clamp(0.0, 1.0));
                torch(ctx(), added)
            }
            Trigger::Warp { grid, grid_file } => {
                let g = grid.size();
                if g[1..3] != [h, w] {
                    return Err(trigger_err(
                        &spec,
                        format!(
                            "`grid` file `{}` is {g:?} [1, H, W, 2] but the images are {size:?} \
                             [N, C, H, W]: H and W must match",
                            grid_file.display()
                        ),
                    ));
                }
                // grid_sample's modes: interpolation 0 = bilinear, padding
                // 1 = border; align_corners = true.
                let warped = grid
                    .f_to_kind(float_kind(images))
                    .and_then(|g| g.f_to_device(images.device()))
                    .and_then(|g| g.f_expand([size[0], h, w, 2], false))
                    .and_then(|g| images.f_grid_sampler_2d(&g, 0, 1, true));
                torch(ctx(), warped)
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
    torch(
        ctx,
        pattern
            .f_to_kind(float_kind(images))
            .and_then(|t| t.f_to_device(images.device()))
            .and_then(|t| t.f_unsqueeze(0)),
    )
}

/// The images' kind when it is a float kind, else float32: what a pattern
/// or grid is converted to before it meets the images.
fn float_kind(images: &Tensor) -> Kind {
    match images.kind() {
        k @ (Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16) => k,
        _ => Kind::Float,
    }
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

        // Patterns holding NaN are refused for blend and mask alike.
        let nan = dir.path().join("nan.npy");
        ndarray_npy::write_npy(&nan, &Array2::<f32>::from_elem((2, 2), f32::NAN)).unwrap();
        for spec in [
            format!("blend:pattern={},alpha=0.1", nan.display()),
            format!("mask:pattern={},mask={}", nan.display(), mask.display()),
        ] {
            let e = err(&spec);
            assert!(e.contains("nan.npy") && e.contains("not finite"), "{e}");
        }
    }

    /// A spec for `kind` with `key` pointing at `file`, plus `extra`.
    fn spec_with(kind: &str, key: &str, file: &Path, extra: &str) -> String {
        format!("{kind}:{key}={}{extra}", file.display())
    }

    #[test]
    fn additive_adds_clamps_and_scales() {
        let dir = tempfile::tempdir().unwrap();
        // One channel, either sign: applies to all three image channels.
        let pattern = dir.path().join("sig.npy");
        let values = ndarray::arr2(&[[0.3f32, -0.3], [0.0, 2.0]]);
        ndarray_npy::write_npy(&pattern, &values).unwrap();
        let x = Tensor::full([2, 3, 2, 2], 0.8, (Kind::Float, Device::Cpu));
        let at = |y: &Tensor| -> Vec<f64> {
            [(0, 0), (0, 1), (1, 0), (1, 1)]
                .iter()
                .map(|&(r, c)| y.double_value(&[1, 2, r, c]))
                .collect()
        };
        let close = |got: Vec<f64>, want: [f64; 4]| {
            for (g, w) in got.iter().zip(want) {
                assert!((g - w).abs() < 1e-6, "{got:?} vs {want:?}");
            }
        };
        let t: Trigger = spec_with("additive", "pattern", &pattern, "")
            .parse()
            .unwrap();
        assert_eq!(
            t.to_string(),
            spec_with("additive", "pattern", &pattern, ",scale=1")
        );
        assert_eq!(t.files(), vec![pattern.as_path()]);
        close(at(&t.apply(&x).unwrap()), [1.0, 0.5, 0.8, 1.0]);
        let t: Trigger = spec_with("additive", "pattern", &pattern, ",scale=0.5")
            .parse()
            .unwrap();
        close(at(&t.apply(&x).unwrap()), [0.95, 0.65, 0.8, 1.0]);
        let t: Trigger = spec_with("additive", "pattern", &pattern, ",scale=-1")
            .parse()
            .unwrap();
        close(at(&t.apply(&x).unwrap()), [0.5, 1.0, 0.8, 0.0]);
        // The input is untouched.
        assert!((x.sum(Kind::Double).double_value(&[]) - 0.8 * 24.0).abs() < 1e-5);

        // uint8 is scaled to [0, 1] as for blend.
        let bright = dir.path().join("u8.npy");
        ndarray_npy::write_npy(&bright, &Array2::<u8>::from_elem((2, 2), 51)).unwrap();
        let t: Trigger = spec_with("additive", "pattern", &bright, "")
            .parse()
            .unwrap();
        close(at(&t.apply(&x).unwrap()), [1.0; 4]);
        let y = t.apply(&Tensor::zeros([1, 1, 2, 2], (Kind::Float, Device::Cpu)));
        assert!((y.unwrap().double_value(&[0, 0, 1, 0]) - 0.2).abs() < 1e-6);
    }

    #[test]
    fn additive_refuses_bad_values_and_scales() {
        let dir = tempfile::tempdir().unwrap();
        for (name, bad) in [("nan.npy", f32::NAN), ("inf.npy", f32::NEG_INFINITY)] {
            let path = dir.path().join(name);
            let mut values = Array2::<f32>::zeros((2, 2));
            values[[1, 0]] = bad;
            ndarray_npy::write_npy(&path, &values).unwrap();
            let e = err(&spec_with("additive", "pattern", &path, ""));
            assert!(e.contains(name) && e.contains("not finite"), "{e}");
        }
        let ok = dir.path().join("ok.npy");
        ndarray_npy::write_npy(&ok, &Array2::<f32>::zeros((2, 2))).unwrap();
        for scale in ["x", "inf", "NaN", ""] {
            let e = err(&spec_with(
                "additive",
                "pattern",
                &ok,
                &format!(",scale={scale}"),
            ));
            assert!(e.contains("`scale` must be a finite number"), "{e}");
        }
        assert!(err("additive:scale=2").contains("`pattern` is missing"));
        assert!(err(&spec_with("additive", "pattern", &ok, ",alpha=1")).contains("unknown key"));
        let e = err("additive:pattern=/nonexistent/sig.npy");
        assert!(e.contains("/nonexistent/sig.npy"), "{e}");
        // The pattern must fit the images.
        let t: Trigger = spec_with("additive", "pattern", &ok, "").parse().unwrap();
        let e = t
            .apply(&Tensor::zeros([1, 1, 3, 3], (Kind::Float, Device::Cpu)))
            .unwrap_err()
            .to_string();
        assert!(e.contains("[1, 2, 2]") && e.contains("[1, 3, 3]"), "{e}");
    }

    /// The sampling coordinates of each pixel of an `h`x`w` image
    /// (`align_corners=True`): `[h, w, 2]` of `(x, y)`.
    fn identity_grid(h: usize, w: usize) -> Array3<f32> {
        let coord = |i: usize, n: usize| -1.0 + 2.0 * i as f32 / (n - 1) as f32;
        Array3::from_shape_fn(
            (h, w, 2),
            |(i, j, k)| {
                if k == 0 {
                    coord(j, w)
                } else {
                    coord(i, h)
                }
            },
        )
    }

    fn warp(dir: &Path, name: &str, grid: &Array3<f32>) -> Trigger {
        let path = dir.join(name);
        ndarray_npy::write_npy(&path, grid).unwrap();
        spec_with("warp", "grid", &path, "").parse().unwrap()
    }

    #[test]
    fn warp_follows_grid_sample() {
        let dir = tempfile::tempdir().unwrap();
        let (h, w) = (3usize, 4usize);
        // Distinct values: 0.01 * (channel * 100 + row * 10 + col).
        let x = Tensor::arange(2 * 3 * 12, (Kind::Float, Device::Cpu))
            .reshape([2, 3, 3, 4])
            .f_div_scalar(100.0)
            .unwrap();
        // The identity grid returns the image.
        let t = warp(dir.path(), "id.npy", &identity_grid(h, w));
        assert!(matches!(&t, Trigger::Warp { grid, .. } if grid.size() == [1, 3, 4, 2]));
        let y = t.apply(&x).unwrap();
        let diff = (&y - &x).abs().max().double_value(&[]);
        assert!(diff < 1e-6, "identity grid moved the image by {diff}");

        // One pixel to the left: column j samples column j + 1, the last
        // column its own (the grid stays in [-1, 1]).
        let mut shift = identity_grid(h, w);
        for i in 0..h {
            for j in 0..w - 1 {
                shift[[i, j, 0]] = shift[[i, j + 1, 0]];
            }
        }
        let y = warp(dir.path(), "shift.npy", &shift).apply(&x).unwrap();
        for (n, c, i, j) in [(0, 0, 0, 0), (1, 2, 2, 1), (0, 1, 1, 2), (1, 0, 2, 3)] {
            let from = (j + 1).min(w as i64 - 1);
            let (got, want) = (
                y.double_value(&[n, c, i, j]),
                x.double_value(&[n, c, i, from]),
            );
            assert!(
                (got - want).abs() < 1e-6,
                "({n}, {c}, {i}, {j}): {got} vs {want}"
            );
        }

        // A 2x2 image [[0.1, 0.3], [0.5, 0.9]]; pixel (0, 0) samples column
        // 0.5, row 0.25: 0.75 (0.5 * 0.1 + 0.5 * 0.3) + 0.25 (0.5 * 0.5 + 0.5 * 0.9).
        let small = Tensor::from_slice(&[0.1f32, 0.3, 0.5, 0.9]).reshape([1, 1, 2, 2]);
        let mut half = identity_grid(2, 2);
        half[[0, 0, 0]] = 0.0;
        half[[0, 0, 1]] = -0.5;
        let y = warp(dir.path(), "half.npy", &half).apply(&small).unwrap();
        let expected = 0.75 * (0.5 * 0.1 + 0.5 * 0.3) + 0.25 * (0.5 * 0.5 + 0.5 * 0.9);
        assert!((y.double_value(&[0, 0, 0, 0]) - expected).abs() < 1e-6);
        assert!((y.double_value(&[0, 0, 1, 1]) - 0.9).abs() < 1e-6);

        // [1, H, W, 2] reads the same; a grid of another size is refused.
        let path = dir.path().join("batch.npy");
        let batched = identity_grid(h, w).insert_axis(ndarray::Axis(0));
        ndarray_npy::write_npy(&path, &batched).unwrap();
        let t: Trigger = spec_with("warp", "grid", &path, "").parse().unwrap();
        assert_eq!(t.to_string(), spec_with("warp", "grid", &path, ""));
        assert_eq!(t.files(), vec![path.as_path()]);
        let e = t
            .apply(&Tensor::zeros([1, 1, 4, 4], (Kind::Float, Device::Cpu)))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("batch.npy") && e.contains("[1, 3, 4, 2]") && e.contains("[1, 1, 4, 4]"),
            "{e}"
        );
    }

    #[test]
    fn warp_refuses_bad_grids() {
        let dir = tempfile::tempdir().unwrap();
        let grid_err = |name: &str, write: &dyn Fn(&Path)| {
            let path = dir.path().join(name);
            write(&path);
            let e = err(&spec_with("warp", "grid", &path, ""));
            assert!(e.contains(name), "{e}");
            e
        };
        let mut outside = identity_grid(2, 2);
        outside[[1, 1, 0]] = 1.5;
        let e = grid_err("outside.npy", &|p| {
            ndarray_npy::write_npy(p, &outside).unwrap()
        });
        assert!(e.contains("[-1, 1]") && e.contains("1.5"), "{e}");
        let mut nan = identity_grid(2, 2);
        nan[[0, 1, 1]] = f32::NAN;
        let e = grid_err("nan.npy", &|p| ndarray_npy::write_npy(p, &nan).unwrap());
        assert!(e.contains("not finite"), "{e}");
        let e = grid_err("u8.npy", &|p| {
            ndarray_npy::write_npy(p, &Array3::<u8>::zeros((2, 2, 2))).unwrap()
        });
        assert!(e.contains("uint8"), "{e}");
        let e = grid_err("three.npy", &|p| {
            ndarray_npy::write_npy(p, &Array3::<f32>::zeros((2, 2, 3))).unwrap()
        });
        assert!(e.contains("expected [H, W, 2]"), "{e}");
        let e = grid_err("flat.npy", &|p| {
            ndarray_npy::write_npy(p, &Array2::<f32>::zeros((2, 2))).unwrap()
        });
        assert!(e.contains("[2, 2]"), "{e}");
        let e = grid_err("empty.npy", &|p| {
            ndarray_npy::write_npy(p, &Array3::<f32>::zeros((0, 2, 2))).unwrap()
        });
        assert!(e.contains("empty"), "{e}");
        let e = grid_err("grid.png", &|p| {
            image::GrayImage::new(2, 2).save(p).unwrap();
        });
        assert!(e.contains("`grid`"), "{e}");
        assert!(err("warp:").contains("`grid` is missing"));
        assert!(err("warp:grid=g.npy,scale=2").contains("unknown key `scale`"));
    }

    #[test]
    fn targets_parse_and_aim() {
        assert_eq!("3".parse::<Target>().unwrap(), Target::Class(3));
        assert_eq!(" next ".parse::<Target>().unwrap(), Target::Next);
        assert_eq!("NEXT".parse::<Target>().unwrap(), Target::Next);
        // Negative classes parse; the class check refuses them with the model.
        assert_eq!("-1".parse::<Target>().unwrap(), Target::Class(-1));
        for bad in ["prev", "", "3.5", "next1"] {
            let e = bad.parse::<Target>().unwrap_err().to_string();
            assert!(e.contains("a class number or `next`"), "{e}");
        }
        assert_eq!(Target::Next.to_string(), "next");
        assert_eq!(serde_json::to_string(&Target::Class(7)).unwrap(), "7");
        assert_eq!(serde_json::to_string(&Target::Next).unwrap(), "\"next\"");

        let labels = Tensor::from_slice(&[0i64, 1, 2, 9]);
        let aimed = |t: Target| Vec::<i64>::try_from(t.aimed(&labels, 10).unwrap()).unwrap();
        assert_eq!(aimed(Target::Next), vec![1, 2, 3, 0]);
        assert_eq!(aimed(Target::Class(4)), vec![4; 4]);
    }

    #[test]
    fn attacks_pair_in_order_and_counts_must_match() {
        let patch = "patch:size=2,row=0,col=0";
        let attacks = Attack::pair(
            &[patch, "patch:size=1,row=-1,col=-1"],
            &[Target::Class(3), Target::Next],
        )
        .unwrap();
        assert_eq!(attacks.len(), 2);
        assert_eq!(
            attacks[0].trigger.to_string(),
            "patch:size=2,value=1,row=0,col=0"
        );
        assert_eq!(attacks[0].target, Target::Class(3));
        assert_eq!(attacks[1].target, Target::Next);
        assert!(Attack::pair::<&str>(&[], &[]).unwrap().is_empty());

        // The counts are checked before any file is read.
        let e = Attack::pair(
            &["warp:grid=/nonexistent.npy"],
            &[Target::Class(1), Target::Next],
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("1 --trigger and 2 --target given"), "{e}");
        let e = Attack::pair(&[patch, patch], &[Target::Next]).unwrap_err();
        assert!(matches!(
            e,
            DataError::AttackPairs {
                triggers: 2,
                targets: 1
            }
        ));
        // A bad trigger among good ones is named.
        let e = Attack::pair(&[patch, "patch:size=x"], &[Target::Next, Target::Next])
            .unwrap_err()
            .to_string();
        assert!(e.contains("patch:size=x"), "{e}");
    }

    /// A FIFO (or a folder) given as a trigger file is refused, never
    /// waited on.
    #[test]
    fn trigger_files_must_be_regular_files() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("pipe.npy");
        let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        for (kind, key, extra) in [
            ("blend", "pattern", ",alpha=0.1"),
            ("additive", "pattern", ""),
            ("warp", "grid", ""),
        ] {
            for path in [fifo.as_path(), dir.path()] {
                let e = err(&spec_with(kind, key, path, extra));
                assert!(
                    e.contains("not a regular file") && e.contains(path.to_str().unwrap()),
                    "{e}"
                );
            }
        }
    }
}
