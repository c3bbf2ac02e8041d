//! Mapping images onto a model's input: per-channel normalisation, then the
//! layout the model declares (NCHW, NHWC, HW for one channel, or flattened).

use std::fmt;
use std::str::FromStr;

use tch::Tensor;

use super::{torch, DataError};

/// How images are laid out for the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `[N, C, H, W]`
    Nchw,
    /// `[N, H, W, C]`
    Nhwc,
    /// `[N, C*H*W]`, flattened in C, H, W order (PyTorch's `flatten`).
    Flat,
    /// `[N, H, W]`: one-channel images without a channel axis (Keras models
    /// whose first layer is `Flatten(input_shape=(28, 28))`, say).
    Hw,
}

impl Layout {
    pub const ALL: [Layout; 4] = [Layout::Nchw, Layout::Nhwc, Layout::Flat, Layout::Hw];

    /// Per-sample shape of `[C, H, W]` images in this layout.
    pub fn sample_shape(self, [c, h, w]: [i64; 3]) -> Vec<i64> {
        match self {
            Layout::Nchw => vec![c, h, w],
            Layout::Nhwc => vec![h, w, c],
            Layout::Flat => vec![c * h * w],
            Layout::Hw => vec![h, w],
        }
    }
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Layout::Nchw => "nchw",
            Layout::Nhwc => "nhwc",
            Layout::Flat => "flat",
            Layout::Hw => "hw",
        })
    }
}

impl FromStr for Layout {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "nchw" => Ok(Layout::Nchw),
            "nhwc" => Ok(Layout::Nhwc),
            "flat" => Ok(Layout::Flat),
            "hw" => Ok(Layout::Hw),
            _ => Err(format!(
                "unknown layout `{s}` (expected nchw, nhwc, flat or hw)"
            )),
        }
    }
}

fn shape_str(dims: impl IntoIterator<Item = Option<i64>>) -> String {
    let parts: Vec<String> = dims
        .into_iter()
        .map(|d| d.map_or_else(|| "?".to_string(), |d| d.to_string()))
        .collect();
    format!("[{}]", parts.join(", "))
}

/// Does `[C, H, W]` in `layout` fit the declared model input (batch axis
/// ignored; `None` matches any size)?
fn fits(layout: Layout, chw: [i64; 3], model_shape: &[Option<i64>]) -> bool {
    if layout == Layout::Hw && chw[0] != 1 {
        return false;
    }
    let want = layout.sample_shape(chw);
    model_shape.len() == want.len() + 1
        && model_shape[1..]
            .iter()
            .zip(&want)
            .all(|(m, w)| m.is_none_or(|m| m == *w))
}

/// Maps float `[N, C, H, W]` images onto a model input whose declared shape is
/// `model_shape` (`None` = symbolic). The batch axis is not checked. With
/// `layout` given, that layout is used if it fits; otherwise the one layout
/// that fits is picked, and several fitting (a fully symbolic input, or
/// `C == H == W`) is an error asking for `--layout`. No layout fitting is an
/// error naming both shapes.
pub fn fit_to_input(
    images: &Tensor,
    model_shape: &[Option<i64>],
    layout: Option<Layout>,
) -> Result<(Tensor, Layout), DataError> {
    let size = images.size();
    let data = shape_str(size.iter().map(|&d| Some(d)));
    let model = shape_str(model_shape.iter().copied());
    if size.len() != 4 {
        return Err(DataError::LayoutMismatch {
            data,
            model,
            forced: layout,
        });
    }
    let chw = [size[1], size[2], size[3]];
    let chosen = match layout {
        Some(l) if fits(l, chw, model_shape) => l,
        Some(l) => {
            return Err(DataError::LayoutMismatch {
                data,
                model,
                forced: Some(l),
            })
        }
        None => {
            let candidates: Vec<Layout> = Layout::ALL
                .into_iter()
                .filter(|&l| fits(l, chw, model_shape))
                .collect();
            match candidates.as_slice() {
                [l] => *l,
                [] => {
                    return Err(DataError::LayoutMismatch {
                        data,
                        model,
                        forced: None,
                    })
                }
                _ => {
                    return Err(DataError::AmbiguousLayout {
                        data,
                        model,
                        candidates,
                    })
                }
            }
        }
    };
    let ctx = || format!("mapping images {data} onto the model input {model} as {chosen}");
    let mapped = match chosen {
        Layout::Nchw => images.shallow_clone(),
        Layout::Nhwc => torch(
            ctx(),
            images
                .f_permute([0, 2, 3, 1])
                .and_then(|t| t.f_contiguous()),
        )?,
        Layout::Flat => torch(ctx(), images.f_reshape([size[0], chw[0] * chw[1] * chw[2]]))?,
        Layout::Hw => torch(ctx(), images.f_reshape([size[0], chw[1], chw[2]]))?,
    };
    Ok((mapped, chosen))
}

/// `(x - mean[c]) / std[c]` per channel on `[N, C, H, W]` images. `mean` and
/// `std` each hold one value (for every channel) or one per channel.
pub fn normalize(images: &Tensor, mean: &[f64], std: &[f64]) -> Result<Tensor, DataError> {
    let size = images.size();
    if size.len() != 4 {
        return Err(DataError::Normalize {
            option: "--mean/--std",
            reason: format!("expected [N, C, H, W] images, got {size:?}"),
        });
    }
    let c = size[1];
    let counts = if c == 1 {
        "1 value".to_string()
    } else {
        format!("1 value or {c}, one per channel")
    };
    for (option, given, other, missing) in [
        ("--std", std, "--mean", mean),
        ("--mean", mean, "--std", std),
    ] {
        if missing.is_empty() && !given.is_empty() {
            return Err(DataError::Normalize {
                option,
                reason: format!("given without {other}: give both ({counts} each)"),
            });
        }
    }
    let per_channel = |option: &'static str, v: &[f64]| -> Result<Vec<f64>, DataError> {
        if let Some(bad) = v.iter().find(|x| !x.is_finite()) {
            return Err(DataError::Normalize {
                option,
                reason: format!("{bad} is not a finite number"),
            });
        }
        match v.len() {
            1 => Ok(vec![v[0]; c as usize]),
            n if n as i64 == c => Ok(v.to_vec()),
            n => Err(DataError::Normalize {
                option,
                reason: format!("{n} values given for images with {c} channels (give {counts})"),
            }),
        }
    };
    let mean = per_channel("--mean", mean)?;
    let std = per_channel("--std", std)?;
    if let Some(zero) = std.iter().find(|s| **s == 0.0) {
        return Err(DataError::Normalize {
            option: "--std",
            reason: format!("{zero} would divide by zero"),
        });
    }
    let ctx = "normalizing images";
    let kind = images.kind();
    let as_tensor = |v: &[f64]| -> Result<Tensor, DataError> {
        let t = torch(ctx, Tensor::f_from_slice(v))?;
        let t = torch(ctx, t.f_to_kind(kind))?;
        let t = torch(ctx, t.f_to_device(images.device()))?;
        torch(ctx, t.f_reshape([1, c, 1, 1]))
    };
    let (mean, std) = (as_tensor(&mean)?, as_tensor(&std)?);
    torch(ctx, images.f_sub(&mean).and_then(|t| t.f_div(&std)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn images(n: i64, c: i64, h: i64, w: i64) -> Tensor {
        Tensor::arange(n * c * h * w, (Kind::Float, Device::Cpu)).reshape([n, c, h, w])
    }

    #[test]
    fn picks_the_one_layout_that_fits() {
        let x = images(2, 1, 28, 28);
        let (t, l) = fit_to_input(&x, &[None, Some(1), Some(28), Some(28)], None).unwrap();
        assert_eq!((l, t.size()), (Layout::Nchw, vec![2, 1, 28, 28]));
        let (t, l) = fit_to_input(&x, &[None, Some(28), Some(28), Some(1)], None).unwrap();
        assert_eq!((l, t.size()), (Layout::Nhwc, vec![2, 28, 28, 1]));
        let (t, l) = fit_to_input(&x, &[None, Some(784)], None).unwrap();
        assert_eq!((l, t.size()), (Layout::Flat, vec![2, 784]));
        let (t, l) = fit_to_input(&x, &[None, Some(28), Some(28)], None).unwrap();
        assert_eq!((l, t.size()), (Layout::Hw, vec![2, 28, 28]));
        assert_eq!(t.double_value(&[1, 3, 5]), x.double_value(&[1, 0, 3, 5]));
        // A fixed batch size does not matter; a symbolic H/W does not either.
        let (_, l) = fit_to_input(&x, &[Some(1), Some(1), None, None], None).unwrap();
        assert_eq!(l, Layout::Nchw);
    }

    #[test]
    fn nhwc_and_flat_move_the_right_values() {
        let x = images(1, 3, 2, 4);
        let (t, _) = fit_to_input(&x, &[None, Some(2), Some(4), Some(3)], None).unwrap();
        for (c, h, w) in [(0, 0, 0), (2, 1, 3), (1, 0, 2)] {
            assert_eq!(t.double_value(&[0, h, w, c]), x.double_value(&[0, c, h, w]));
        }
        let (t, _) = fit_to_input(&x, &[None, Some(24)], None).unwrap();
        assert_eq!(
            t.double_value(&[0, 4 * 2 + 3]),
            x.double_value(&[0, 1, 0, 3])
        );
    }

    #[test]
    fn ambiguous_and_forced() {
        let x = images(2, 1, 28, 28);
        let e = fit_to_input(&x, &[None, None, None, None], None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("nchw and nhwc") && e.contains("--layout") && e.contains("[?, ?, ?, ?]"),
            "{e}"
        );
        let (t, l) = fit_to_input(&x, &[None, None, None, None], Some(Layout::Nhwc)).unwrap();
        assert_eq!((l, t.size()), (Layout::Nhwc, vec![2, 28, 28, 1]));
        // C == H == W: both 4-D layouts fit a fully declared shape.
        let cube = images(1, 3, 3, 3);
        let e = fit_to_input(&cube, &[Some(1), Some(3), Some(3), Some(3)], None).unwrap_err();
        assert!(matches!(e, DataError::AmbiguousLayout { .. }), "{e}");
        let e = fit_to_input(&x, &[None, Some(784)], Some(Layout::Nchw))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("[2, 1, 28, 28]") && e.contains("[?, 784]") && e.contains("--layout nchw"),
            "{e}"
        );
    }

    #[test]
    fn mismatch_names_both_shapes() {
        let x = images(2, 1, 28, 28);
        let e = fit_to_input(&x, &[None, Some(3), Some(32), Some(32)], None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("[2, 1, 28, 28]") && e.contains("[?, 3, 32, 32]"),
            "{e}"
        );
        let rgb = images(2, 3, 28, 28);
        let e = fit_to_input(&rgb, &[None, Some(28), Some(28)], None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("[?, 28, 28]") && e.contains("[2, 3, 28, 28]"),
            "{e}"
        );
        assert_eq!("NHWC".parse::<Layout>().unwrap(), Layout::Nhwc);
        assert!("chw".parse::<Layout>().unwrap_err().contains("`chw`"));
    }

    #[test]
    fn normalize_per_channel() {
        let x = Tensor::ones([2, 3, 2, 2], (Kind::Float, Device::Cpu));
        let y = normalize(&x, &[0.5, 0.0, 1.0], &[0.5, 2.0, 1.0]).unwrap();
        assert_eq!(y.double_value(&[1, 0, 1, 1]), 1.0);
        assert_eq!(y.double_value(&[0, 1, 0, 0]), 0.5);
        assert_eq!(y.double_value(&[0, 2, 1, 0]), 0.0);
        let y = normalize(&x, &[0.5], &[0.25]).unwrap();
        assert_eq!(y.double_value(&[0, 2, 0, 0]), 2.0);
        let e = normalize(&x, &[0.5, 0.5], &[1.0]).unwrap_err().to_string();
        assert!(
            e.starts_with("--mean") && e.contains("2 values") && e.contains("3 channels"),
            "{e}"
        );
        let e = normalize(&x, &[0.5], &[0.0]).unwrap_err().to_string();
        assert!(e.starts_with("--std"), "{e}");
        // One of the two alone says which is missing.
        let e = normalize(&x, &[], &[0.5]).unwrap_err().to_string();
        assert!(e.contains("--std") && e.contains("without --mean"), "{e}");
        let e = normalize(&images(1, 1, 2, 2), &[0.5], &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("without --std") && e.contains("1 value each"),
            "{e}"
        );
    }
}
