//! Resampling: Resize and the older Upsample. Registered from
//! [`super::Registry::standard`].
//!
//! | op | opsets | notes |
//! |----|--------|-------|
//! | Resize | 10, 11-23 | nearest, linear, cubic; every coordinate mode; `antialias`, `axes`, `keep_aspect_ratio_policy` (18+) |
//! | Upsample | 7-8 (`scales` attribute), 9 (`scales` input) | nearest, linear |
//!
//! Only the data input is differentiable: roi, scales and sizes are read
//! as floats or integers on the CPU each run.
//!
//! Deviations from the spec:
//! - Resize and Upsample compute source coordinates in f64 (ONNX Runtime uses
//!   f32; a nearest-neighbour tie can round the other way). When
//!   `scale * input_length` is not a whole number, the `align_corners`,
//!   `pytorch_half_pixel` and `tf_crop_and_resize` modes use that unrounded
//!   length, as the reference implementation and the ONNX test data do;
//!   ONNX Runtime 1.32 uses the rounded output length and differs there.
//! - Resize-10 and Upsample nearest round as ONNX Runtime does (down when
//!   upsampling, up when downsampling); the spec leaves it open.

use tch::Tensor;

use super::util::{self, check_dims, index_tensor, is_float, resolve_axes};
use super::{
    attr_error, input_error, Differentiable, Kernel, NodeInfo, OpError, OpResult, OpSpec, Registry,
};

pub fn register(reg: &mut Registry) {
    // Only the data input is differentiable.
    let spec = |op, build: fn(&NodeInfo) -> OpResult<Kernel>, opsets, inputs| {
        OpSpec::new(op, build)
            .opsets(opsets)
            .inputs(inputs)
            .differentiable(Differentiable::Only(&[0]))
    };
    reg.insert(spec("Resize", resize, 10..=10, 2..=2));
    // 11..=23: opsets 13, 18 and 19 only add optional inputs, attributes
    // (antialias, axes, keep_aspect_ratio_policy) and a coordinate mode
    // (half_pixel_symmetric), whose defaults keep the opset-11 behaviour.
    reg.insert(spec("Resize", resize, 11..=23, 1..=4));
    reg.insert(OpSpec::new("Upsample", upsample).opsets(7..=8));
    reg.insert(spec("Upsample", upsample, 9..=9, 2..=2));
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum CoordMode {
    HalfPixel,
    HalfPixelSymmetric,
    PytorchHalfPixel,
    AlignCorners,
    Asymmetric,
    TfHalfPixelForNn,
    TfCropAndResize,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum NearestMode {
    RoundPreferFloor,
    RoundPreferCeil,
    Floor,
    Ceil,
    /// Resize-10 and Upsample as ONNX Runtime runs them: down when
    /// upsampling, up when downsampling.
    Legacy,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Interpolation {
    Nearest(NearestMode),
    Linear,
    Cubic { a: f64 },
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum AspectPolicy {
    Stretch,
    NotLarger,
    NotSmaller,
}

/// Where Resize/Upsample read the scales and sizes from.
#[derive(Clone, Debug)]
enum ResizeInputs {
    /// Upsample-7/8: a `scales` attribute.
    ScalesAttribute(Vec<f64>),
    /// Upsample-9, Resize-10: `scales` is input 1.
    Scales,
    /// Resize-11+: roi (1), scales (2), sizes (3).
    RoiScalesSizes,
}

#[derive(Clone, Debug)]
struct ResizeConfig {
    interpolation: Interpolation,
    coord: CoordMode,
    exclude_outside: bool,
    extrapolation_value: f64,
    antialias: bool,
    axes: Option<Vec<i64>>,
    policy: AspectPolicy,
    inputs: ResizeInputs,
}

/// The taps of one resized axis: output position `o` is
/// `sum_k weights[k][o] * x[indices[k][o]]`, plus the extrapolation value
/// where `outside[o]` (tf_crop_and_resize).
struct AxisTaps {
    indices: Vec<Vec<i64>>,
    weights: Vec<Vec<f64>>,
    outside: Vec<bool>,
}

impl ResizeConfig {
    /// The source coordinate of output position `x` along an axis.
    fn source_coord(&self, x: f64, in_len: i64, out_len: i64, scale: f64, roi: (f64, f64)) -> f64 {
        let input = in_len as f64;
        // The reference implementation's resized length: `scale * input`,
        // not the rounded output length.
        let resized = scale * input;
        match self.coord {
            CoordMode::HalfPixel => (x + 0.5) / scale - 0.5,
            CoordMode::HalfPixelSymmetric => {
                let adjustment = out_len as f64 / resized;
                let offset = input / 2.0 * (1.0 - adjustment);
                offset + (x + 0.5) / scale - 0.5
            }
            CoordMode::PytorchHalfPixel if resized == 1.0 => -0.5,
            CoordMode::PytorchHalfPixel => (x + 0.5) / scale - 0.5,
            CoordMode::AlignCorners if resized == 1.0 => 0.0,
            CoordMode::AlignCorners => x * (input - 1.0) / (resized - 1.0),
            CoordMode::Asymmetric => x / scale,
            CoordMode::TfHalfPixelForNn => (x + 0.5) / scale,
            CoordMode::TfCropAndResize => {
                let span = (roi.1 - roi.0) * (input - 1.0);
                let offset = roi.0 * (input - 1.0);
                if resized == 1.0 {
                    offset + span / 2.0
                } else {
                    offset + x * span / (resized - 1.0)
                }
            }
        }
    }

    /// Weights of the taps `base + start + k` around a source coordinate
    /// `base + ratio` (`ratio` in (0, 1]); returns `start` and the weights.
    fn coefficients(&self, ratio: f64, scale: f64) -> (i64, Vec<f64>) {
        match self.interpolation {
            Interpolation::Nearest(mode) => {
                let upper = ratio == 1.0
                    || match mode {
                        NearestMode::RoundPreferFloor => ratio > 0.5,
                        NearestMode::RoundPreferCeil => ratio >= 0.5,
                        NearestMode::Floor => false,
                        NearestMode::Ceil => true,
                        NearestMode::Legacy => scale < 1.0,
                    };
                (i64::from(upper), vec![1.0])
            }
            Interpolation::Linear if !self.antialias || scale >= 1.0 => {
                (0, vec![1.0 - ratio, ratio])
            }
            Interpolation::Linear => {
                let start = (-1.0 / scale).floor() as i64 + 1;
                let weights = (start..2 - start)
                    .map(|i| (1.0 - ((i as f64 - ratio) * scale).abs()).clamp(0.0, 1.0))
                    .collect();
                (start, normalized(weights))
            }
            Interpolation::Cubic { a } => {
                let s = if self.antialias { scale.min(1.0) } else { 1.0 };
                let start = (-2.0 / s).floor() as i64 + 1;
                let weights = (start..2 - start)
                    .map(|i| cubic_kernel(s * (i as f64 - ratio), a))
                    .collect();
                (start, normalized(weights))
            }
        }
    }

    fn axis_taps(&self, in_len: i64, out_len: i64, scale: f64, roi: (f64, f64)) -> AxisTaps {
        let mut taps = AxisTaps {
            indices: Vec::new(),
            weights: Vec::new(),
            outside: vec![false; out_len as usize],
        };
        for o in 0..out_len {
            let x = self.source_coord(o as f64, in_len, out_len, scale, roi);
            let (start, mut weights) = if self.coord == CoordMode::TfCropAndResize
                && !(0.0..=(in_len - 1) as f64).contains(&x)
            {
                taps.outside[o as usize] = true;
                (0, Vec::new())
            } else {
                // The taps lie around `base + ratio`, ratio in (0, 1] (the
                // reference implementation prefers the left neighbour).
                let base = x.ceil() as i64 - 1;
                let (start, weights) = self.coefficients(x - base as f64, scale);
                (base + start, weights)
            };
            let mut indices: Vec<i64> = (0..weights.len() as i64).map(|k| start + k).collect();
            if self.exclude_outside {
                for (w, &i) in weights.iter_mut().zip(&indices) {
                    if !(0..in_len).contains(&i) {
                        *w = 0.0;
                    }
                }
                weights = normalized(weights);
            }
            for i in indices.iter_mut() {
                *i = (*i).max(0).min(in_len - 1);
            }
            while taps.indices.len() < weights.len() {
                taps.indices.push(vec![0; out_len as usize]);
                taps.weights.push(vec![0.0; out_len as usize]);
            }
            for (k, (w, i)) in weights.into_iter().zip(indices).enumerate() {
                taps.weights[k][o as usize] = w;
                taps.indices[k][o as usize] = i;
            }
        }
        // Taps that never contribute (nearest's unused side, integer
        // positions) cost a gather each: drop them.
        let (indices, weights) = taps
            .indices
            .into_iter()
            .zip(taps.weights)
            .filter(|(_, w)| w.iter().any(|&v| v != 0.0))
            .unzip();
        AxisTaps {
            indices,
            weights,
            outside: taps.outside,
        }
    }
}

fn normalized(weights: Vec<f64>) -> Vec<f64> {
    let sum: f64 = weights.iter().sum();
    if sum == 0.0 || sum == 1.0 {
        weights
    } else {
        weights.into_iter().map(|w| w / sum).collect()
    }
}

/// Keys' cubic convolution kernel with coefficient `a`.
fn cubic_kernel(x: f64, a: f64) -> f64 {
    let x = x.abs();
    if x <= 1.0 {
        ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a
    } else {
        0.0
    }
}

fn resize(info: &NodeInfo) -> OpResult<Kernel> {
    let a = &info.attrs;
    let legacy = info.opset < 11;
    let interpolation = match a.string("mode", "nearest")?.as_str() {
        "nearest" if legacy => Interpolation::Nearest(NearestMode::Legacy),
        "nearest" => Interpolation::Nearest(
            match a.string("nearest_mode", "round_prefer_floor")?.as_str() {
                "round_prefer_floor" => NearestMode::RoundPreferFloor,
                "round_prefer_ceil" => NearestMode::RoundPreferCeil,
                "floor" => NearestMode::Floor,
                "ceil" => NearestMode::Ceil,
                other => {
                    return Err(attr_error(
                        "nearest_mode",
                        format!("unknown mode `{other}`"),
                    ))
                }
            },
        ),
        "linear" => Interpolation::Linear,
        "cubic" if !legacy => Interpolation::Cubic {
            a: f64::from(a.float("cubic_coeff_a", -0.75)?),
        },
        other => return Err(attr_error("mode", format!("unknown mode `{other}`"))),
    };
    let coord = match legacy {
        true => CoordMode::Asymmetric,
        false => match a
            .string("coordinate_transformation_mode", "half_pixel")?
            .as_str()
        {
            "half_pixel" => CoordMode::HalfPixel,
            "half_pixel_symmetric" => CoordMode::HalfPixelSymmetric,
            "pytorch_half_pixel" => CoordMode::PytorchHalfPixel,
            "align_corners" => CoordMode::AlignCorners,
            "asymmetric" => CoordMode::Asymmetric,
            "tf_half_pixel_for_nn" => CoordMode::TfHalfPixelForNn,
            "tf_crop_and_resize" => CoordMode::TfCropAndResize,
            other => {
                return Err(attr_error(
                    "coordinate_transformation_mode",
                    format!("unknown mode `{other}`"),
                ))
            }
        },
    };
    let antialias = a.int("antialias", 0)? != 0;
    if antialias && matches!(interpolation, Interpolation::Nearest(_)) {
        return Err(attr_error("antialias", "not defined for mode nearest"));
    }
    let policy = match a.string("keep_aspect_ratio_policy", "stretch")?.as_str() {
        "stretch" => AspectPolicy::Stretch,
        "not_larger" => AspectPolicy::NotLarger,
        "not_smaller" => AspectPolicy::NotSmaller,
        other => {
            return Err(attr_error(
                "keep_aspect_ratio_policy",
                format!("unknown policy `{other}`"),
            ))
        }
    };
    let config = ResizeConfig {
        interpolation,
        coord,
        exclude_outside: a.int("exclude_outside", 0)? != 0,
        extrapolation_value: f64::from(a.float("extrapolation_value", 0.0)?),
        antialias,
        axes: a.ints_opt("axes")?,
        policy,
        inputs: if legacy {
            ResizeInputs::Scales
        } else {
            ResizeInputs::RoiScalesSizes
        },
    };
    Ok(Box::new(move |inputs| {
        Ok(vec![run_resize(&config, inputs)?])
    }))
}

fn upsample(info: &NodeInfo) -> OpResult<Kernel> {
    let interpolation = match info.attrs.string("mode", "nearest")?.as_str() {
        "nearest" => Interpolation::Nearest(NearestMode::Legacy),
        "linear" | "bilinear" => Interpolation::Linear,
        other => return Err(attr_error("mode", format!("unknown mode `{other}`"))),
    };
    let inputs = if info.opset < 9 {
        let scales = info
            .attrs
            .floats_opt("scales")?
            .ok_or_else(|| attr_error("scales", "required but missing"))?;
        ResizeInputs::ScalesAttribute(scales.into_iter().map(f64::from).collect())
    } else {
        ResizeInputs::Scales
    };
    let config = ResizeConfig {
        interpolation,
        coord: CoordMode::Asymmetric,
        exclude_outside: false,
        extrapolation_value: 0.0,
        antialias: false,
        axes: None,
        policy: AspectPolicy::Stretch,
        inputs,
    };
    Ok(Box::new(move |inputs| {
        Ok(vec![run_resize(&config, inputs)?])
    }))
}

/// Non-empty float values of optional input `index`.
fn floats_nonempty(inputs: &[Option<&Tensor>], index: usize) -> OpResult<Option<Vec<f64>>> {
    match util::input_opt(inputs, index) {
        Some(t) if t.numel() > 0 => Ok(Some(util::floats(t)?)),
        _ => Ok(None),
    }
}

fn run_resize(config: &ResizeConfig, inputs: &[Option<&Tensor>]) -> OpResult<Tensor> {
    let x = util::input(inputs, 0)?;
    let dims = x.size();
    let rank = dims.len();
    let axes = match &config.axes {
        Some(a) => resolve_axes(a, rank).map_err(|e| attr_error("axes", e))?,
        None => (0..rank).collect(),
    };
    let (scales_index, scales, sizes, roi) = match &config.inputs {
        ResizeInputs::ScalesAttribute(s) => (None, Some(s.clone()), None, None),
        ResizeInputs::Scales => (Some(1), floats_nonempty(inputs, 1)?, None, None),
        ResizeInputs::RoiScalesSizes => {
            let sizes = match util::input_opt(inputs, 3) {
                Some(t) if t.numel() > 0 => Some(util::ints(t)?),
                _ => None,
            };
            (
                Some(2),
                floats_nonempty(inputs, 2)?,
                sizes,
                floats_nonempty(inputs, 1)?,
            )
        }
    };
    let scale_err = |reason: String| match scales_index {
        Some(i) => input_error(i, reason),
        None => attr_error("scales", reason),
    };
    // Output length and scale of every axis.
    let mut out_dims = dims.clone();
    let mut axis_scales = vec![1.0f64; rank];
    match (scales, sizes) {
        (Some(_), Some(_)) => {
            return Err(OpError::Unsupported(
                "both scales and sizes are given; only one may be".into(),
            ))
        }
        (None, None) => {
            return Err(OpError::Unsupported(
                "neither scales nor sizes is given".into(),
            ))
        }
        (Some(scales), None) => {
            if scales.len() != axes.len() {
                return Err(scale_err(format!(
                    "{} scales for {} axes",
                    scales.len(),
                    axes.len()
                )));
            }
            for (&a, &s) in axes.iter().zip(&scales) {
                if !(s > 0.0 && s.is_finite()) {
                    return Err(scale_err(format!("scale {s} is not positive")));
                }
                axis_scales[a] = s;
                out_dims[a] = (dims[a] as f64 * s).floor() as i64;
            }
        }
        (None, Some(sizes)) => {
            if sizes.len() != axes.len() {
                return Err(input_error(
                    3,
                    format!("{} sizes for {} axes", sizes.len(), axes.len()),
                ));
            }
            check_dims(&sizes, 3, "size")?;
            if let Some(&a) = axes.iter().find(|&&a| dims[a] == 0) {
                return Err(OpError::Unsupported(format!(
                    "cannot resize the empty dimension {a}"
                )));
            }
            let ratios: Vec<f64> = axes
                .iter()
                .zip(&sizes)
                .map(|(&a, &s)| s as f64 / dims[a] as f64)
                .collect();
            let common = match config.policy {
                AspectPolicy::Stretch => None,
                AspectPolicy::NotLarger => ratios.iter().copied().reduce(f64::min),
                AspectPolicy::NotSmaller => ratios.iter().copied().reduce(f64::max),
            };
            for (k, &a) in axes.iter().enumerate() {
                match common {
                    None => {
                        axis_scales[a] = ratios[k];
                        out_dims[a] = sizes[k];
                    }
                    Some(s) => {
                        axis_scales[a] = s;
                        out_dims[a] = (s * dims[a] as f64 + 0.5).floor() as i64;
                    }
                }
            }
        }
    }
    // Region of interest per axis (tf_crop_and_resize only).
    let mut rois = vec![(0.0, 1.0); rank];
    if config.coord == CoordMode::TfCropAndResize {
        let roi = roi.ok_or_else(|| input_error(1, "tf_crop_and_resize needs a roi"))?;
        if roi.len() != 2 * axes.len() {
            return Err(input_error(
                1,
                format!("{} roi values for {} axes", roi.len(), axes.len()),
            ));
        }
        for (k, &a) in axes.iter().enumerate() {
            rois[a] = (roi[k], roi[k + axes.len()]);
        }
    }
    let float_input = is_float(x.kind());
    let mut y = x.shallow_clone();
    for &a in &axes {
        let (in_len, out_len) = (dims[a], out_dims[a]);
        if in_len == 0 || out_len == 0 {
            if in_len != out_len {
                let mut shape = y.size();
                shape[a] = out_len;
                y = Tensor::f_full(shape, config.extrapolation_value, (x.kind(), x.device()))?;
            }
            continue;
        }
        let taps = config.axis_taps(in_len, out_len, axis_scales[a], rois[a]);
        let identity = in_len == out_len
            && !taps.outside.contains(&true)
            && taps.weights.len() == 1
            && taps.weights[0].iter().all(|&w| w == 1.0)
            && taps.indices[0].iter().copied().eq(0..in_len);
        if identity {
            continue;
        }
        if !float_input && taps.weights.iter().flatten().any(|&w| w != 0.0 && w != 1.0) {
            return Err(OpError::Unsupported(format!(
                "interpolating a {:?} tensor (only nearest works on integers)",
                x.kind()
            )));
        }
        // Weights broadcast along axis `a`.
        let mut weight_shape = vec![1i64; rank];
        weight_shape[a] = out_len;
        let as_weights = |w: &[f64]| -> OpResult<Tensor> {
            Ok(Tensor::f_from_slice(w)?
                .f_to_kind(x.kind())?
                .f_to_device(x.device())?
                .f_reshape(weight_shape.as_slice())?)
        };
        let mut acc: Option<Tensor> = None;
        for (indices, weights) in taps.indices.iter().zip(&taps.weights) {
            let picked = y.f_index_select(a as i64, &index_tensor(indices, x.device())?)?;
            let term = if weights.iter().all(|&w| w == 1.0) {
                picked
            } else {
                picked.f_mul(&as_weights(weights)?)?
            };
            acc = Some(match acc {
                None => term,
                Some(acc) => acc.f_add(&term)?,
            });
        }
        if taps.outside.contains(&true) {
            let mask: Vec<f64> = taps
                .outside
                .iter()
                .map(|&o| if o { config.extrapolation_value } else { 0.0 })
                .collect();
            let fill = as_weights(&mask)?;
            acc = Some(match acc {
                Some(acc) => acc.f_add(&fill)?,
                None => {
                    let mut shape = y.size();
                    shape[a] = out_len;
                    fill.f_expand(shape, false)?.f_contiguous()?
                }
            });
        }
        y = match acc {
            Some(acc) => acc,
            None => {
                return Err(OpError::Unsupported(format!(
                    "resizing axis {a} selects nothing"
                )))
            }
        };
    }
    Ok(y)
}

#[cfg(test)]
mod tests {
    use tch::{Kind, Tensor};

    use super::super::gradcheck::{check_op, Head};
    use super::super::testing::{
        arange, assert_close, attr, floats, int_values, ints, omitted, run, try_build, try_run,
        values,
    };
    use crate::onnx::proto::AttributeProto;

    fn resize(attrs: &[AttributeProto], x: &Tensor, scales: &[f64], sizes: &[i64]) -> Tensor {
        let scales = if scales.is_empty() {
            omitted()
        } else {
            floats(scales)
        };
        let sizes = if sizes.is_empty() {
            omitted()
        } else {
            ints(sizes)
        };
        run(
            "Resize",
            19,
            attrs,
            &[x.shallow_clone(), omitted(), scales, sizes],
        )
    }

    #[test]
    fn resize_matches_libtorch_interpolation() {
        let x = Tensor::randn([1, 2, 3, 4], (Kind::Double, tch::Device::Cpu));
        let linear = [attr::string("mode", "linear")];
        for (h, w) in [(6, 8), (5, 7), (2, 3), (3, 4), (1, 1)] {
            let y = resize(&linear, &x, &[], &[1, 2, h, w]);
            assert_close(&y, &x.upsample_bilinear2d([h, w], false, None, None));
            let y = resize(
                &[
                    linear[0].clone(),
                    attr::string("coordinate_transformation_mode", "align_corners"),
                ],
                &x,
                &[],
                &[1, 2, h, w],
            );
            assert_close(&y, &x.upsample_bilinear2d([h, w], true, None, None));
            let y = resize(&[attr::string("mode", "cubic")], &x, &[], &[1, 2, h, w]);
            assert_close(&y, &x.upsample_bicubic2d([h, w], false, None, None));
            // libtorch's "nearest" is asymmetric + floor.
            let y = resize(
                &[
                    attr::string("coordinate_transformation_mode", "asymmetric"),
                    attr::string("nearest_mode", "floor"),
                ],
                &x,
                &[],
                &[1, 2, h, w],
            );
            assert_close(&y, &x.upsample_nearest2d([h, w], None, None));
        }
        // Scales, and axes (opset 18+).
        let y = resize(&linear, &x, &[1.0, 1.0, 2.0, 2.0], &[]);
        assert_close(&y, &x.upsample_bilinear2d([6, 8], false, None, None));
        let y = resize(
            &[linear[0].clone(), attr::ints("axes", &[-1, 2])],
            &x,
            &[2.0, 2.0],
            &[],
        );
        assert_close(&y, &x.upsample_bilinear2d([6, 8], false, None, None));
        // Same size: the input itself.
        assert_close(&resize(&linear, &x, &[1.0; 4], &[]), &x);
    }

    #[test]
    fn resize_modes_by_hand() {
        let x = floats(&[1.0, 2.0, 3.0, 4.0]).reshape([1, 1, 1, 4]);
        let nearest = |mode: &str, coord: &str, scale: f64| {
            values(&resize(
                &[
                    attr::string("nearest_mode", mode),
                    attr::string("coordinate_transformation_mode", coord),
                ],
                &x,
                &[1.0, 1.0, 1.0, scale],
                &[],
            ))
        };
        // half_pixel, x2: sources -0.25, 0.25, 0.75, 1.25, ...
        assert_eq!(
            nearest("round_prefer_floor", "half_pixel", 2.0),
            [1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 4.0, 4.0]
        );
        // half_pixel, x0.5: sources 0.5, 2.5: ties.
        assert_eq!(nearest("round_prefer_floor", "half_pixel", 0.5), [1.0, 3.0]);
        assert_eq!(nearest("round_prefer_ceil", "half_pixel", 0.5), [2.0, 4.0]);
        assert_eq!(nearest("ceil", "asymmetric", 0.75), [1.0, 3.0, 4.0]);
        assert_eq!(nearest("floor", "tf_half_pixel_for_nn", 0.5), [2.0, 4.0]);
        // pytorch_half_pixel to one output: source -0.5.
        let y = resize(
            &[
                attr::string("mode", "linear"),
                attr::string("coordinate_transformation_mode", "pytorch_half_pixel"),
            ],
            &x,
            &[],
            &[1, 1, 1, 1],
        );
        assert_eq!(values(&y), [1.0]);
        // tf_crop_and_resize: the roi's outside is the extrapolation value.
        let roi = floats(&[0.0, 0.0, 0.0, 0.5, 1.0, 1.0, 1.0, 1.5]);
        let y = run(
            "Resize",
            13,
            &[
                attr::string("mode", "linear"),
                attr::string("coordinate_transformation_mode", "tf_crop_and_resize"),
                attr::float("extrapolation_value", 9.0),
            ],
            &[x.shallow_clone(), roi, omitted(), ints(&[1, 1, 1, 4])],
        );
        assert_eq!(values(&y), [2.5, 3.5, 9.0, 9.0]);
        // keep_aspect_ratio_policy: one common scale.
        let m = arange(&[1, 1, 2, 4]);
        let policy = |p: &str| {
            [
                attr::string("keep_aspect_ratio_policy", p),
                attr::ints("axes", &[2, 3]),
            ]
        };
        let y = resize(&policy("not_larger"), &m, &[], &[4, 4]);
        assert_eq!(y.size(), [1, 1, 2, 4]);
        let y = resize(&policy("not_smaller"), &m, &[], &[4, 4]);
        assert_eq!(y.size(), [1, 1, 4, 8]);
        // Nearest on integers works; interpolating them does not.
        let i = ints(&[1, 2]).reshape([1, 2]);
        assert_eq!(int_values(&resize(&[], &i, &[1.0, 2.0], &[])), [1, 1, 2, 2]);
        let linear = [attr::string("mode", "linear")];
        assert!(try_run(
            "Resize",
            19,
            &linear,
            &[i, omitted(), floats(&[1.0, 1.5])],
            1
        )
        .is_err());
        assert!(try_run(
            "Resize",
            19,
            &[],
            &[
                x.shallow_clone(),
                omitted(),
                floats(&[1.0, 2.0, 1.0, 1.0]),
                ints(&[1, 1, 1, 4])
            ],
            1
        )
        .is_err());
        assert!(try_run(
            "Resize",
            19,
            &[],
            &[x.shallow_clone(), omitted(), floats(&[2.0])],
            1
        )
        .is_err());
        assert!(try_build("Resize", 19, &[attr::string("mode", "area")], 3, 1).is_err());
        assert!(try_build("Resize", 19, &[attr::int("antialias", 1)], 3, 1).is_err());
    }

    #[test]
    fn resize_antialias_matches_the_reference() {
        // Expected values from onnx.reference (ONNX Runtime 1.32 agrees to
        // f32 precision); libtorch's antialiasing differs at the borders.
        let x = arange(&[1, 1, 8, 9]).pow_tensor_scalar(1.5) / 10.0;
        let expected = [
            (
                "linear",
                [
                    3.8082828521728516,
                    4.746607780456543,
                    5.902872562408447,
                    7.0857954025268555,
                    18.950834274291992,
                    20.772974014282227,
                    22.800485610961914,
                    24.741304397583008,
                    41.077701568603516,
                    43.461490631103516,
                    46.07802200317383,
                    48.55210494995117,
                ],
            ),
            (
                "cubic",
                [
                    2.4118294715881348,
                    3.34322190284729,
                    4.4423089027404785,
                    5.661374568939209,
                    18.008541107177734,
                    19.987802505493164,
                    22.0379581451416,
                    24.13897132873535,
                    42.44552230834961,
                    45.02818298339844,
                    47.67638397216797,
                    50.36058807373047,
                ],
            ),
        ];
        for (mode, expected) in expected {
            let attrs = [attr::string("mode", mode), attr::int("antialias", 1)];
            let y = resize(&attrs, &x, &[], &[1, 1, 3, 4]);
            for (a, e) in values(&y).iter().zip(expected) {
                assert!((a - e).abs() < 1e-5 * e.abs(), "{mode}: {a} vs {e}");
            }
        }
    }

    #[test]
    fn legacy_resize_and_upsample() {
        let x = floats(&[1.0, 2.0, 3.0]).reshape([1, 3]);
        let y = run(
            "Upsample",
            7,
            &[attr::floats("scales", &[1.0, 2.0])],
            &[x.shallow_clone()],
        );
        assert_eq!(values(&y), [1.0, 1.0, 2.0, 2.0, 3.0, 3.0]);
        let y = run(
            "Upsample",
            9,
            &[attr::string("mode", "linear")],
            &[x.shallow_clone(), floats(&[1.0, 2.0])],
        );
        assert_eq!(values(&y), [1.0, 1.5, 2.0, 2.5, 3.0, 3.0]);
        let y = run("Resize", 10, &[], &[x.shallow_clone(), floats(&[1.0, 2.0])]);
        assert_eq!(values(&y), [1.0, 1.0, 2.0, 2.0, 3.0, 3.0]);
        // Downsampling rounds up, as ONNX Runtime does.
        let y = run(
            "Resize",
            10,
            &[],
            &[
                floats(&[1.0, 2.0, 3.0, 4.0]).reshape([1, 4]),
                floats(&[1.0, 0.6]),
            ],
        );
        assert_eq!(values(&y), [1.0, 3.0]);
    }

    #[test]
    fn second_derivatives() {
        let x = Tensor::randn([1, 1, 3, 4], (Kind::Double, tch::Device::Cpu));
        let check = |opset, attrs: &[AttributeProto], inputs: &[&Tensor]| {
            check_op("Resize", opset, attrs, inputs, 0, Head::Square)
        };
        let (none, linear) = (omitted(), [attr::string("mode", "linear")]);
        let scales = floats(&[1.0, 1.0, 1.5, 0.75]);
        check(19, &linear, &[&x, &none, &scales, &none]);
        let cubic = [
            attr::string("mode", "cubic"),
            attr::int("exclude_outside", 1),
        ];
        check(19, &cubic, &[&x, &none, &none, &ints(&[1, 1, 5, 3])]);
        let antialias = [linear[0].clone(), attr::int("antialias", 1)];
        check(19, &antialias, &[&x, &none, &none, &ints(&[1, 1, 2, 2])]);
        check(13, &[], &[&x, &none, &floats(&[1.0, 1.0, 2.0, 2.0])]);
    }
}
