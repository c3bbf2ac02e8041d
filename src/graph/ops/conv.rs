//! Convolutions and matrix products: Conv, ConvTranspose, Gemm, MatMul, Einsum.
//!
//! Opsets: Conv, ConvTranspose, Gemm and MatMul 1..=23; Einsum 12..=23.
//!
//! Conv and ConvTranspose run tch's `convolution` (1-D to 3-D: inputs of rank 3
//! to 5), whose double backward is native. Also home of the window geometry
//! (`Window`, `AutoPad`) that the pools share.
//!
//! Known deviations from the spec:
//! - Conv: asymmetric `pads` are applied as an explicit zero pad before a
//!   convolution with the symmetric part (same values, one more copy).
//! - ConvTranspose: `output_shape` (with or without `auto_pad`) splits the
//!   total padding as the current spec text says (SAME_UPPER: the smaller half
//!   at the start; otherwise the larger half at the start; floor division, so
//!   a negative total grows the end first). The ONNX reference crops at the end
//!   instead for NOTSET with an odd positive total; ONNX Runtime differs again.
//!   `output_shape` may also list the batch and channel dimensions (some
//!   exporters write them); they are ignored.
//! - Gemm: C is always broadcast (opsets 1 and 6 only broadcast with
//!   `broadcast=1`; models relying on a shape error there are not supported).
//!   A and B must be 2-D.
//! - Einsum: whitespace in `equation` is dropped before it goes to tch.

use super::{attr_error, input_error};
use tch::Tensor;

use super::util::{input, input_opt};
use super::{Attrs, Differentiable, Kernel, NodeInfo, OpError, OpResult, OpSpec, Registry};

pub fn register(reg: &mut Registry) {
    reg.insert(
        OpSpec::new("Conv", build_conv)
            .inputs(2..=3)
            .differentiable(Differentiable::All),
    );
    reg.insert(
        OpSpec::new("ConvTranspose", build_conv_transpose)
            .inputs(2..=3)
            .differentiable(Differentiable::All),
    );
    reg.insert(OpSpec::new("Gemm", build_gemm).inputs(2..=3));
    reg.insert(OpSpec::new("MatMul", build_matmul).inputs(2..=2));
    reg.insert(
        OpSpec::new("Einsum", build_einsum)
            .opsets(12..=super::MAX_OPSET)
            .inputs(1..=usize::MAX),
    );
}

/// The `auto_pad` attribute of convolutions and pools.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AutoPad {
    NotSet,
    SameUpper,
    SameLower,
    Valid,
}

impl AutoPad {
    pub(crate) fn parse(attrs: &Attrs) -> OpResult<AutoPad> {
        // Some old exporters write an empty string for the default.
        match attrs.string("auto_pad", "NOTSET")?.as_str() {
            "NOTSET" | "" => Ok(AutoPad::NotSet),
            "SAME_UPPER" => Ok(AutoPad::SameUpper),
            "SAME_LOWER" => Ok(AutoPad::SameLower),
            "VALID" => Ok(AutoPad::Valid),
            other => Err(attr_error(
                "auto_pad",
                format!(
                    "unknown value `{other}` (expected NOTSET, SAME_UPPER, SAME_LOWER or VALID)"
                ),
            )),
        }
    }
}

/// The spatial attributes shared by Conv, ConvTranspose and the pools, as
/// written in the node. The number of spatial axes is only known from the
/// input at run time, so per-axis lists are checked against it there.
#[derive(Debug, Clone)]
pub(crate) struct Window {
    pub kernel_shape: Option<Vec<i64>>,
    pub strides: Option<Vec<i64>>,
    pub dilations: Option<Vec<i64>>,
    /// `[x1_begin, x2_begin, ..., x1_end, x2_end, ...]`.
    pub pads: Option<Vec<i64>>,
    pub auto_pad: AutoPad,
}

/// The largest magnitude of a window attribute (kernel, strides,
/// dilations, pads, output padding and shape): far above any real model,
/// and low enough that the geometry's arithmetic cannot overflow i64.
const MAX_WINDOW: i64 = 1 << 24;

/// `values`, refused when one exceeds [`MAX_WINDOW`] in magnitude.
fn bounded(name: &str, values: Option<Vec<i64>>) -> OpResult<Option<Vec<i64>>> {
    if let Some(bad) = values
        .iter()
        .flatten()
        .find(|v| v.unsigned_abs() > MAX_WINDOW as u64)
    {
        return Err(attr_error(
            name,
            format!("{bad} is out of range (at most {MAX_WINDOW} in magnitude)"),
        ));
    }
    Ok(values)
}

impl Window {
    /// Reads and checks `kernel_shape`, `strides`, `dilations`, `pads` and
    /// `auto_pad`.
    pub(crate) fn parse(attrs: &Attrs) -> OpResult<Window> {
        let positive = |name: &str| -> OpResult<Option<Vec<i64>>> {
            let values = bounded(name, attrs.ints_opt(name)?)?;
            if let Some(v) = &values {
                if let Some(bad) = v.iter().find(|&&x| x < 1) {
                    return Err(attr_error(name, format!("values must be >= 1, got {bad}")));
                }
            }
            Ok(values)
        };
        let kernel_shape = positive("kernel_shape")?;
        let strides = positive("strides")?;
        let dilations = positive("dilations")?;
        let pads = bounded("pads", attrs.ints_opt("pads")?)?;
        if let Some(p) = &pads {
            if p.len() % 2 != 0 {
                return Err(attr_error(
                    "pads",
                    format!(
                        "expected an even number of values (begins then ends), got {}",
                        p.len()
                    ),
                ));
            }
            if let Some(bad) = p.iter().find(|&&x| x < 0) {
                return Err(attr_error(
                    "pads",
                    format!("values must be >= 0, got {bad}"),
                ));
            }
        }
        Ok(Window {
            kernel_shape,
            strides,
            dilations,
            pads,
            auto_pad: AutoPad::parse(attrs)?,
        })
    }

    pub(crate) fn strides(&self, n: usize) -> OpResult<Vec<i64>> {
        per_axis("strides", self.strides.as_deref(), n, 1)
    }

    pub(crate) fn dilations(&self, n: usize) -> OpResult<Vec<i64>> {
        per_axis("dilations", self.dilations.as_deref(), n, 1)
    }

    /// `kernel_shape`, which pools require.
    pub(crate) fn kernel(&self, n: usize) -> OpResult<Vec<i64>> {
        match &self.kernel_shape {
            Some(k) => per_axis("kernel_shape", Some(k), n, 1),
            None => Err(attr_error("kernel_shape", "required but missing")),
        }
    }

    /// The kernel extent from a weight's spatial dimensions, checked against
    /// `kernel_shape` when the node gives it.
    pub(crate) fn kernel_from_weight(&self, weight_spatial: &[i64]) -> OpResult<Vec<i64>> {
        if let Some(k) = &self.kernel_shape {
            if k.as_slice() != weight_spatial {
                return Err(attr_error(
                    "kernel_shape",
                    format!("{k:?} does not match the weight's spatial shape {weight_spatial:?}"),
                ));
            }
        }
        Ok(weight_spatial.to_vec())
    }

    /// The explicit `pads` as `(begin, end)` per axis (zeros when absent).
    pub(crate) fn explicit_pads(&self, n: usize) -> OpResult<Vec<(i64, i64)>> {
        match &self.pads {
            None => Ok(vec![(0, 0); n]),
            Some(p) if p.len() == 2 * n => Ok((0..n).map(|i| (p[i], p[n + i])).collect()),
            Some(p) => Err(attr_error(
                "pads",
                format!(
                    "expected {} values (begin and end of {n} spatial axes), got {}",
                    2 * n,
                    p.len()
                ),
            )),
        }
    }

    /// `(begin, end)` padding per axis of a convolution or pool over `input`
    /// (spatial sizes) with effective kernel extents `extent`
    /// (`(kernel - 1) * dilation + 1`).
    pub(crate) fn forward_pads(
        &self,
        input: &[i64],
        extent: &[i64],
        strides: &[i64],
    ) -> OpResult<Vec<(i64, i64)>> {
        let n = input.len();
        match self.auto_pad {
            AutoPad::NotSet => self.explicit_pads(n),
            AutoPad::Valid => Ok(vec![(0, 0); n]),
            AutoPad::SameUpper | AutoPad::SameLower => Ok((0..n)
                .map(|i| {
                    let out = (input[i] + strides[i] - 1) / strides[i];
                    let total = ((out - 1) * strides[i] + extent[i] - input[i]).max(0);
                    let small = total / 2;
                    if self.auto_pad == AutoPad::SameUpper {
                        (small, total - small)
                    } else {
                        (total - small, small)
                    }
                })
                .collect()),
        }
    }
}

/// A per-axis attribute: `n` values, or `default` on every axis when absent.
pub(crate) fn per_axis(
    name: &str,
    values: Option<&[i64]>,
    n: usize,
    default: i64,
) -> OpResult<Vec<i64>> {
    match values {
        None => Ok(vec![default; n]),
        Some(v) if v.len() == n => Ok(v.to_vec()),
        Some(v) => Err(attr_error(
            name,
            format!(
                "expected {n} values (one per spatial axis), got {}",
                v.len()
            ),
        )),
    }
}

/// `(begin, end)` padding per spatial axis.
pub(crate) type Pads = Vec<(i64, i64)>;

/// Effective kernel extents: `(kernel - 1) * dilation + 1`.
pub(crate) fn extents(kernel: &[i64], dilations: &[i64]) -> Vec<i64> {
    kernel
        .iter()
        .zip(dilations)
        .map(|(k, d)| (k - 1) * d + 1)
        .collect()
}

/// `(begin, end)` per spatial axis as the pad list of tch's `constant_pad_nd`
/// and `pad` (last axis first).
pub(crate) fn torch_pad_list(pads: &[(i64, i64)]) -> Vec<i64> {
    pads.iter().rev().flat_map(|&(b, e)| [b, e]).collect()
}

/// The spatial rank of input `index` (rank 3 to 5), checked.
pub(crate) fn spatial_rank(x: &Tensor, index: usize) -> OpResult<usize> {
    let rank = x.dim();
    if (3..=5).contains(&rank) {
        Ok(rank - 2)
    } else {
        Err(input_error(
            index,
            format!("expected rank 3 to 5 (N, C and 1 to 3 spatial axes), got rank {rank}"),
        ))
    }
}

/// Checks that the weight has the input's rank.
fn check_weight_rank(x: &Tensor, w: &Tensor) -> OpResult<()> {
    if w.dim() != x.dim() {
        return Err(input_error(
            1,
            format!(
                "the weight has rank {} but the input has rank {}",
                w.dim(),
                x.dim()
            ),
        ));
    }
    Ok(())
}

fn group_attr(attrs: &Attrs) -> OpResult<i64> {
    let group = attrs.int("group", 1)?;
    if group < 1 {
        return Err(attr_error("group", format!("must be >= 1, got {group}")));
    }
    Ok(group)
}

fn build_conv(info: &NodeInfo) -> OpResult<Kernel> {
    let window = Window::parse(&info.attrs)?;
    let group = group_attr(&info.attrs)?;
    Ok(Box::new(move |inputs| {
        let x = input(inputs, 0)?;
        let w = input(inputs, 1)?;
        let bias = input_opt(inputs, 2);
        let n = spatial_rank(x, 0)?;
        check_weight_rank(x, w)?;
        let x_size = x.size();
        let kernel = window.kernel_from_weight(&w.size()[2..])?;
        let strides = window.strides(n)?;
        let dilations = window.dilations(n)?;
        let extent = extents(&kernel, &dilations);
        let pads = window.forward_pads(&x_size[2..], &extent, &strides)?;
        // tch pads symmetrically: the symmetric part goes to the convolution,
        // the rest is an explicit zero pad.
        let symmetric: Vec<i64> = pads.iter().map(|&(b, e)| b.min(e)).collect();
        let rest: Vec<(i64, i64)> = pads
            .iter()
            .zip(&symmetric)
            .map(|(&(b, e), &s)| (b - s, e - s))
            .collect();
        let padded;
        let x = if rest.iter().any(|&(b, e)| b != 0 || e != 0) {
            padded = x.f_constant_pad_nd(torch_pad_list(&rest))?;
            &padded
        } else {
            x
        };
        let y = x.f_convolution(
            w,
            bias,
            &strides,
            &symmetric,
            &dilations,
            false,
            vec![0; n],
            group,
        )?;
        Ok(vec![y])
    }))
}

struct ConvTransposeAttrs {
    window: Window,
    group: i64,
    output_padding: Option<Vec<i64>>,
    output_shape: Option<Vec<i64>>,
}

impl ConvTransposeAttrs {
    /// `(begin, end)` crop per axis of the full transposed convolution
    /// (negative: grow), and the output padding per axis.
    fn pads(&self, input: &[i64], extent: &[i64], strides: &[i64]) -> OpResult<(Pads, Vec<i64>)> {
        let n = input.len();
        let output_padding = per_axis("output_padding", self.output_padding.as_deref(), n, 0)?;
        let target: Vec<i64> = match (&self.output_shape, self.window.auto_pad) {
            (Some(shape), _) if shape.len() == n => shape.clone(),
            (Some(shape), _) if shape.len() == n + 2 => shape[2..].to_vec(),
            (Some(shape), _) => {
                return Err(attr_error(
                    "output_shape",
                    format!(
                        "expected {n} values (one per spatial axis), got {}",
                        shape.len()
                    ),
                ))
            }
            (None, AutoPad::SameUpper | AutoPad::SameLower) => {
                input.iter().zip(strides).map(|(i, s)| i * s).collect()
            }
            (None, AutoPad::Valid) => return Ok((vec![(0, 0); n], output_padding)),
            (None, AutoPad::NotSet) => return Ok((self.window.explicit_pads(n)?, output_padding)),
        };
        let pads = (0..n)
            .map(|i| {
                let total = strides[i] * (input[i] - 1) + output_padding[i] + extent[i] - target[i];
                let half = total.div_euclid(2);
                if self.window.auto_pad == AutoPad::SameUpper {
                    (half, total - half)
                } else {
                    (total - half, half)
                }
            })
            .collect();
        Ok((pads, output_padding))
    }
}

fn build_conv_transpose(info: &NodeInfo) -> OpResult<Kernel> {
    let attrs = ConvTransposeAttrs {
        window: Window::parse(&info.attrs)?,
        group: group_attr(&info.attrs)?,
        output_padding: bounded("output_padding", info.attrs.ints_opt("output_padding")?)?,
        output_shape: bounded("output_shape", info.attrs.ints_opt("output_shape")?)?,
    };
    if let Some(bad) = attrs.output_padding.iter().flatten().find(|&&p| p < 0) {
        return Err(attr_error(
            "output_padding",
            format!("values must be >= 0, got {bad}"),
        ));
    }
    if let Some(bad) = attrs.output_shape.iter().flatten().find(|&&p| p < 1) {
        return Err(attr_error(
            "output_shape",
            format!("values must be >= 1, got {bad}"),
        ));
    }
    Ok(Box::new(move |inputs| {
        let x = input(inputs, 0)?;
        let w = input(inputs, 1)?;
        let bias = input_opt(inputs, 2);
        let n = spatial_rank(x, 0)?;
        check_weight_rank(x, w)?;
        let x_size = x.size();
        let input_spatial = &x_size[2..];
        let kernel = attrs.window.kernel_from_weight(&w.size()[2..])?;
        let strides = attrs.window.strides(n)?;
        let dilations = attrs.window.dilations(n)?;
        let extent = extents(&kernel, &dilations);
        let (pads, output_padding) = attrs.pads(input_spatial, &extent, &strides)?;
        for i in 0..n {
            let full = strides[i] * (input_spatial[i] - 1) + extent[i];
            let size = full + output_padding[i] - pads[i].0 - pads[i].1;
            if size < 1 {
                return Err(OpError::Unsupported(format!(
                    "spatial axis {i}: the output would have size {size}"
                )));
            }
        }
        // tch takes symmetric, non-negative pads and output padding below the
        // stride or dilation; anything else crops or grows the full result.
        let native = pads
            .iter()
            .zip(&output_padding)
            .zip(strides.iter().zip(&dilations))
            .all(|((&(b, e), &op), (&s, &d))| b == e && b >= 0 && op < s.max(d));
        if native {
            let padding: Vec<i64> = pads.iter().map(|&(b, _)| b).collect();
            let y = x.f_convolution(
                w,
                bias,
                &strides,
                &padding,
                &dilations,
                true,
                &output_padding,
                attrs.group,
            )?;
            return Ok(vec![y]);
        }
        let full = x.f_convolution(
            w,
            None::<&Tensor>,
            &strides,
            vec![0; n],
            &dilations,
            true,
            vec![0; n],
            attrs.group,
        )?;
        let resize: Vec<(i64, i64)> = pads
            .iter()
            .zip(&output_padding)
            .map(|(&(b, e), &op)| (-b, op - e))
            .collect();
        let mut y = full.f_constant_pad_nd(torch_pad_list(&resize))?;
        if let Some(bias) = bias {
            let mut shape = vec![1, -1];
            shape.extend(std::iter::repeat_n(1, n));
            y = y.f_add(&bias.f_reshape(&shape)?)?;
        }
        Ok(vec![y])
    }))
}

fn build_gemm(info: &NodeInfo) -> OpResult<Kernel> {
    let alpha = f64::from(info.attrs.float("alpha", 1.0)?);
    let beta = f64::from(info.attrs.float("beta", 1.0)?);
    let trans_a = info.attrs.int("transA", 0)? != 0;
    let trans_b = info.attrs.int("transB", 0)? != 0;
    Ok(Box::new(move |inputs| {
        let matrix = |index: usize, transpose: bool| -> OpResult<Tensor> {
            let t = input(inputs, index)?;
            if t.dim() != 2 {
                return Err(input_error(
                    index,
                    format!("expected a matrix, got rank {}", t.dim()),
                ));
            }
            Ok(if transpose {
                t.f_transpose(0, 1)?
            } else {
                t.shallow_clone()
            })
        };
        let a = matrix(0, trans_a)?;
        let b = matrix(1, trans_b)?;
        let mut y = a.f_matmul(&b)?;
        if alpha != 1.0 {
            y = y.f_mul_scalar(alpha)?;
        }
        if let Some(c) = input_opt(inputs, 2) {
            y = if beta == 1.0 {
                y.f_add(c)?
            } else {
                y.f_add(&c.f_mul_scalar(beta)?)?
            };
        }
        Ok(vec![y])
    }))
}

fn build_matmul(_info: &NodeInfo) -> OpResult<Kernel> {
    Ok(super::util::binary(|a, b| a.f_matmul(b)))
}

fn build_einsum(info: &NodeInfo) -> OpResult<Kernel> {
    let equation: String = info
        .attrs
        .string_opt("equation")?
        .ok_or_else(|| attr_error("equation", "required but missing"))?
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let operands = equation.split("->").next().unwrap_or("").split(',').count();
    if operands != info.num_inputs {
        return Err(attr_error(
            "equation",
            format!(
                "`{equation}` has {operands} operands but the node has {} inputs",
                info.num_inputs
            ),
        ));
    }
    Ok(Box::new(move |inputs| {
        let operands = (0..inputs.len())
            .map(|i| input(inputs, i))
            .collect::<OpResult<Vec<&Tensor>>>()?;
        Ok(vec![Tensor::f_einsum(
            &equation,
            &operands,
            None::<&[i64]>,
        )?])
    }))
}

#[cfg(test)]
mod tests {
    use super::super::gradcheck::{self, Head};
    use super::super::testing::{assert_close, attr, build, build_error, call, seeded, values};
    use crate::onnx::proto::AttributeProto;
    use tch::{Kind, Tensor};

    /// Direct 2-D convolution on nested loops, the independent formula.
    #[allow(clippy::too_many_arguments)]
    fn naive_conv2d(
        x: &Tensor,
        w: &Tensor,
        b: Option<&Tensor>,
        strides: [i64; 2],
        pads: [(i64, i64); 2],
        dilations: [i64; 2],
        group: i64,
    ) -> Tensor {
        let (xs, ws) = (x.size(), w.size());
        let (xv, wv) = (values(x), values(w));
        let bv = b.map(values);
        let (n, c, h, wd) = (xs[0], xs[1], xs[2], xs[3]);
        let (m, cg, kh, kw) = (ws[0], ws[1], ws[2], ws[3]);
        let out = |i: usize| {
            let len = [h, wd][i] + pads[i].0 + pads[i].1;
            let ext = ([kh, kw][i] - 1) * dilations[i] + 1;
            (len - ext) / strides[i] + 1
        };
        let (oh, ow) = (out(0), out(1));
        let mut y = vec![0.0; (n * m * oh * ow) as usize];
        for ni in 0..n {
            for mi in 0..m {
                let g = mi / (m / group);
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut acc = bv.as_ref().map_or(0.0, |b| b[mi as usize]);
                        for ci in 0..cg {
                            let cin = g * cg + ci;
                            for ky in 0..kh {
                                for kx in 0..kw {
                                    let iy = oy * strides[0] + ky * dilations[0] - pads[0].0;
                                    let ix = ox * strides[1] + kx * dilations[1] - pads[1].0;
                                    if iy < 0 || iy >= h || ix < 0 || ix >= wd {
                                        continue;
                                    }
                                    acc += xv[(((ni * c + cin) * h + iy) * wd + ix) as usize]
                                        * wv[(((mi * cg + ci) * kh + ky) * kw + kx) as usize];
                                }
                            }
                        }
                        y[(((ni * m + mi) * oh + oy) * ow + ox) as usize] = acc;
                    }
                }
            }
        }
        Tensor::from_slice(&y).reshape([n, m, oh, ow])
    }

    /// Direct 2-D transposed convolution (scatter form), cropped/grown to
    /// `pads` and `output_padding` like the spec's output-shape formula.
    fn naive_conv_transpose2d(
        x: &Tensor,
        w: &Tensor,
        strides: [i64; 2],
        pads: [(i64, i64); 2],
        output_padding: [i64; 2],
    ) -> Tensor {
        let (xs, ws) = (x.size(), w.size());
        let (xv, wv) = (values(x), values(w));
        let (n, c, h, wd) = (xs[0], xs[1], xs[2], xs[3]);
        let (m, kh, kw) = (ws[1], ws[2], ws[3]);
        let oh = strides[0] * (h - 1) + kh + output_padding[0] - pads[0].0 - pads[0].1;
        let ow = strides[1] * (wd - 1) + kw + output_padding[1] - pads[1].0 - pads[1].1;
        let mut y = vec![0.0; (n * m * oh * ow) as usize];
        for ni in 0..n {
            for ci in 0..c {
                for iy in 0..h {
                    for ix in 0..wd {
                        for mi in 0..m {
                            for ky in 0..kh {
                                for kx in 0..kw {
                                    let oy = iy * strides[0] + ky - pads[0].0;
                                    let ox = ix * strides[1] + kx - pads[1].0;
                                    if oy < 0 || oy >= oh || ox < 0 || ox >= ow {
                                        continue;
                                    }
                                    y[(((ni * m + mi) * oh + oy) * ow + ox) as usize] += xv
                                        [(((ni * c + ci) * h + iy) * wd + ix) as usize]
                                        * wv[(((ci * m + mi) * kh + ky) * kw + kx) as usize];
                                }
                            }
                        }
                    }
                }
            }
        }
        Tensor::from_slice(&y).reshape([n, m, oh, ow])
    }

    /// `(attributes, strides, (begin, end) pads, dilations or output padding)`.
    type Case = (Vec<AttributeProto>, [i64; 2], [(i64, i64); 2], [i64; 2]);

    fn conv(attrs: &[AttributeProto], inputs: &[Tensor]) -> Tensor {
        call(&build("Conv", 11, attrs, inputs.len()), inputs)
    }

    #[test]
    fn conv_matches_the_spec_example() {
        // The ONNX Conv example: 5x5 ramp, 3x3 ones kernel.
        let x = Tensor::arange(25, (Kind::Double, tch::Device::Cpu)).reshape([1, 1, 5, 5]);
        let w = Tensor::ones([1, 1, 3, 3], (Kind::Double, tch::Device::Cpu));
        let inputs = [x, w];
        let y = conv(&[attr::ints("kernel_shape", &[3, 3])], &inputs);
        assert_close(&y, &[54., 63., 72., 99., 108., 117., 144., 153., 162.]);
        let y = conv(&[attr::ints("pads", &[1, 1, 1, 1])], &inputs);
        assert_eq!(y.size(), [1, 1, 5, 5]);
        assert_close(&y.narrow(2, 0, 1), &[12., 21., 27., 33., 24.]);
        // strides 2, pads only on the height (the spec's asymmetric example).
        let y = conv(
            &[
                attr::ints("pads", &[1, 0, 1, 0]),
                attr::ints("strides", &[2, 2]),
            ],
            &inputs,
        );
        assert_close(&y, &[21., 33., 99., 117., 111., 123.]);
    }

    #[test]
    fn conv_matches_a_direct_convolution() {
        let x = seeded(&[2, 4, 6, 7], 1);
        let w = seeded(&[6, 2, 3, 2], 2);
        let b = seeded(&[6], 3);
        let cases: Vec<Case> = vec![
            (vec![], [1, 1], [(0, 0), (0, 0)], [1, 1]),
            (
                vec![
                    attr::ints("pads", &[2, 0, 1, 3]),
                    attr::ints("strides", &[2, 1]),
                    attr::ints("dilations", &[1, 2]),
                ],
                [2, 1],
                [(2, 1), (0, 3)],
                [1, 2],
            ),
            // SAME_UPPER on 6x7, kernel 3x2, strides 2: outputs 3x4, total pads
            // 1 and 1; the odd one goes to the end.
            (
                vec![
                    attr::string("auto_pad", "SAME_UPPER"),
                    attr::ints("strides", &[2, 2]),
                ],
                [2, 2],
                [(0, 1), (0, 1)],
                [1, 1],
            ),
            (
                vec![
                    attr::string("auto_pad", "SAME_LOWER"),
                    attr::ints("strides", &[2, 2]),
                ],
                [2, 2],
                [(1, 0), (1, 0)],
                [1, 1],
            ),
            // SAME_LOWER with stride 1: totals 2 and 1 (odd one at the start).
            (
                vec![attr::string("auto_pad", "SAME_LOWER")],
                [1, 1],
                [(1, 1), (1, 0)],
                [1, 1],
            ),
            (
                vec![
                    attr::string("auto_pad", "VALID"),
                    attr::ints("pads", &[5, 5, 5, 5]),
                ],
                [1, 1],
                [(0, 0), (0, 0)],
                [1, 1],
            ),
        ];
        for (mut attrs, strides, pads, dilations) in cases {
            attrs.push(attr::int("group", 2));
            let y = conv(
                &attrs,
                &[x.shallow_clone(), w.shallow_clone(), b.shallow_clone()],
            );
            let expected = naive_conv2d(&x, &w, Some(&b), strides, pads, dilations, 2);
            assert_eq!(y.size(), expected.size(), "{attrs:?}");
            assert_close(&y, &values(&expected));
        }
    }

    #[test]
    fn conv_1d_and_3d_agree_with_2d() {
        let x = seeded(&[1, 2, 9], 4);
        let w = seeded(&[3, 2, 3], 5);
        let attrs = [attr::ints("pads", &[2, 1]), attr::ints("strides", &[2])];
        let y = conv(&attrs, &[x.shallow_clone(), w.shallow_clone()]);
        let expected = naive_conv2d(
            &x.unsqueeze(2),
            &w.unsqueeze(2),
            None,
            [1, 2],
            [(0, 0), (2, 1)],
            [1, 1],
            1,
        );
        assert_close(&y, &values(&expected));
        let y = conv(
            &[],
            &[x.unsqueeze(2).unsqueeze(2), w.unsqueeze(2).unsqueeze(2)],
        );
        let expected = naive_conv2d(
            &x.unsqueeze(2),
            &w.unsqueeze(2),
            None,
            [1, 1],
            [(0, 0); 2],
            [1, 1],
            1,
        );
        assert_close(&y, &values(&expected));
    }

    #[test]
    fn conv_rejects_bad_attributes_and_shapes() {
        let attrs = [attr::ints("pads", &[1, 1, 1])];
        let err = build_error("Conv", 11, &attrs, 2, 1);
        assert!(err.contains("attribute `pads`"), "{err}");
        let kernel = build("Conv", 11, &[attr::ints("strides", &[1, 1, 1])], 2);
        let x = seeded(&[1, 1, 4, 4], 0);
        let w = seeded(&[1, 1, 3, 3], 0);
        let err = kernel(&[Some(&x), Some(&w)]).expect_err("3 strides on 2-D rejected");
        assert!(err.to_string().contains("attribute `strides`"), "{err}");
        let flat = seeded(&[4, 4], 0);
        assert!(kernel(&[Some(&flat), Some(&w)]).is_err());
    }

    #[test]
    fn conv_transpose_matches_spec_examples_and_a_direct_formula() {
        let x = Tensor::arange(9, (Kind::Double, tch::Device::Cpu)).reshape([1, 1, 3, 3]);
        let w = Tensor::ones([1, 2, 3, 3], (Kind::Double, tch::Device::Cpu));
        let ct = |attrs: &[AttributeProto]| {
            call(
                &build("ConvTranspose", 11, attrs, 2),
                &[x.shallow_clone(), w.shallow_clone()],
            )
        };
        // The spec's first example (no attributes): 5x5 per channel.
        let y = ct(&[]);
        assert_eq!(y.size(), [1, 2, 5, 5]);
        assert_close(&y.get(0).get(0).get(0), &[0., 1., 3., 3., 2.]);
        assert_close(&y.get(0).get(1).get(2), &[9., 21., 36., 27., 15.]);
        // test_convtranspose_pads / output_shape / autopad_same, by formula.
        let cases: Vec<Case> = vec![
            (
                vec![
                    attr::ints("strides", &[3, 2]),
                    attr::ints("pads", &[1, 2, 1, 2]),
                ],
                [3, 2],
                [(1, 1), (2, 2)],
                [0, 0],
            ),
            (
                vec![
                    attr::ints("strides", &[3, 2]),
                    attr::ints("output_padding", &[1, 1]),
                ],
                [3, 2],
                [(0, 0), (0, 0)],
                [1, 1],
            ),
            // Output 10x8 from a full 9x7: one more row and column at the end.
            (
                vec![
                    attr::ints("strides", &[3, 2]),
                    attr::ints("output_shape", &[10, 8]),
                ],
                [3, 2],
                [(0, -1), (0, -1)],
                [0, 0],
            ),
            // SAME_UPPER, strides 2: 6x6 from a full 7x7, the crop at the end.
            (
                vec![
                    attr::ints("strides", &[2, 2]),
                    attr::string("auto_pad", "SAME_UPPER"),
                ],
                [2, 2],
                [(0, 1), (0, 1)],
                [0, 0],
            ),
            (
                vec![
                    attr::ints("strides", &[2, 2]),
                    attr::string("auto_pad", "SAME_LOWER"),
                ],
                [2, 2],
                [(1, 0), (1, 0)],
                [0, 0],
            ),
            // Asymmetric explicit pads with output padding.
            (
                vec![
                    attr::ints("strides", &[2, 3]),
                    attr::ints("pads", &[0, 2, 1, 0]),
                    attr::ints("output_padding", &[1, 2]),
                ],
                [2, 3],
                [(0, 1), (2, 0)],
                [1, 2],
            ),
        ];
        for (attrs, strides, pads, output_padding) in cases {
            let y = ct(&attrs);
            let expected = naive_conv_transpose2d(&x, &w, strides, pads, output_padding);
            assert_eq!(y.size(), expected.size(), "{attrs:?}");
            assert_close(&y, &values(&expected));
        }
    }

    #[test]
    fn conv_transpose_adds_bias_everywhere_and_handles_groups() {
        let x = seeded(&[1, 4, 3, 2], 6);
        let w = seeded(&[4, 3, 2, 2], 7);
        let b = seeded(&[6], 8);
        let attrs = [
            attr::int("group", 2),
            attr::ints("strides", &[2, 2]),
            attr::ints("pads", &[0, 1, 1, 0]),
        ];
        let kernel = build("ConvTranspose", 11, &attrs, 3);
        let y = call(
            &kernel,
            &[x.shallow_clone(), w.shallow_clone(), b.shallow_clone()],
        );
        // Independent: each group alone, then the bias.
        let mut parts = Vec::new();
        for g in 0..2 {
            let xg = x.narrow(1, 2 * g, 2);
            let wg = w.narrow(0, 2 * g, 2);
            parts.push(naive_conv_transpose2d(
                &xg,
                &wg,
                [2, 2],
                [(0, 1), (1, 0)],
                [0, 0],
            ));
        }
        let expected = Tensor::cat(&parts, 1) + b.view([1, 6, 1, 1]);
        assert_eq!(y.size(), expected.size());
        assert_close(&y, &values(&expected));
    }

    #[test]
    fn gemm_applies_alpha_beta_transposes_and_broadcast() {
        let a = Tensor::from_slice(&[1.0f64, 2., 3., 4., 5., 6.]).reshape([3, 2]);
        let b = Tensor::from_slice(&[1.0f64, 0., -1., 2., 1., 0.]).reshape([3, 2]);
        let c = Tensor::from_slice(&[10.0f64, 20.]);
        let kernel = build(
            "Gemm",
            13,
            &[
                attr::int("transA", 1),
                attr::float("alpha", 0.5),
                attr::float("beta", 2.0),
            ],
            3,
        );
        // A' = [[1,3,5],[2,4,6]], B = [[1,0],[-1,2],[1,0]]:
        // A'B = [[3,6],[4,8]]; 0.5 A'B + 2 C = [[21.5,43],[22,44]].
        let y = call(&kernel, &[a.shallow_clone(), b.shallow_clone(), c]);
        assert_close(&y, &[21.5, 43., 22., 44.]);
        let kernel = build("Gemm", 13, &[attr::int("transB", 1)], 2);
        let y = call(&kernel, &[b.shallow_clone(), a.shallow_clone()]);
        // B A' (3x2 times 2x3).
        assert_close(&y, &[1., 3., 5., 3., 5., 7., 1., 3., 5.]);
    }

    #[test]
    fn matmul_follows_numpy_for_vectors_and_batches() {
        let v = Tensor::from_slice(&[1.0f64, 2.]);
        let m = Tensor::from_slice(&[1.0f64, 2., 3., 4.]).reshape([2, 2]);
        let kernel = build("MatMul", 13, &[], 2);
        let y = call(&kernel, &[v.shallow_clone(), m.shallow_clone()]);
        assert_eq!(y.size(), [2]);
        assert_close(&y, &[7., 10.]);
        let y = call(&kernel, &[m.shallow_clone(), v.shallow_clone()]);
        assert_close(&y, &[5., 11.]);
        let y = call(&kernel, &[v.shallow_clone(), v.shallow_clone()]);
        assert_eq!(y.size(), Vec::<i64>::new());
        assert_close(&y, &[5.]);
        let batch = Tensor::stack(&[&m, &(&m * 2.0)], 0);
        let y = call(&kernel, &[batch, m.shallow_clone()]);
        assert_eq!(y.size(), [2, 2, 2]);
        assert_close(&y, &[7., 10., 15., 22., 14., 20., 30., 44.]);
    }

    #[test]
    fn einsum_computes_products_traces_and_diagonals() {
        let m = Tensor::from_slice(&[1.0f64, 2., 3., 4.]).reshape([2, 2]);
        let einsum = |eq: &str, inputs: &[Tensor]| {
            call(
                &build("Einsum", 12, &[attr::string("equation", eq)], inputs.len()),
                inputs,
            )
        };
        assert_close(
            &einsum("ij, jk -> ik", &[m.shallow_clone(), m.shallow_clone()]),
            &[7., 10., 15., 22.],
        );
        assert_close(&einsum("ii", &[m.shallow_clone()]), &[5.]);
        assert_close(&einsum("ii->i", &[m.shallow_clone()]), &[1., 4.]);
        assert_close(&einsum("ij->ji", &[m.shallow_clone()]), &[1., 3., 2., 4.]);
        assert_close(&einsum("...j->...", &[m.shallow_clone()]), &[3., 7.]);
    }

    /// The second derivatives through every input at once (cross terms
    /// included): `f(v)` splits one flat vector into the kernel's inputs.
    #[test]
    fn conv_second_derivatives() {
        let attrs = [
            attr::ints("pads", &[1, 0, 0, 2]),
            attr::ints("strides", &[2, 1]),
            attr::int("group", 2),
        ];
        let kernel = build("Conv", 11, &attrs, 3);
        let inputs = [
            seeded(&[1, 2, 3, 3], 1),
            seeded(&[2, 1, 2, 2], 2),
            seeded(&[2], 3),
        ];
        gradcheck::check_joint(&kernel, &inputs, inputs.len(), Head::Output);
        gradcheck::check_joint(&kernel, &inputs, inputs.len(), Head::Square);
        let f = gradcheck::kernel_fn(&kernel, &inputs, 0);
        gradcheck::check_second_derivative(|x| f(x).tanh(), &inputs[0]).expect("through X");
    }

    #[test]
    fn conv_transpose_second_derivatives() {
        let attrs = [
            attr::ints("strides", &[2, 1]),
            attr::ints("pads", &[0, 1, 1, 0]),
        ];
        let kernel = build("ConvTranspose", 11, &attrs, 3);
        let inputs = [
            seeded(&[1, 1, 2, 2], 4),
            seeded(&[1, 2, 2, 2], 5),
            seeded(&[2], 6),
        ];
        gradcheck::check_joint(&kernel, &inputs, inputs.len(), Head::Output);
        gradcheck::check_joint(&kernel, &inputs, inputs.len(), Head::Square);
        let native = build("ConvTranspose", 11, &[attr::ints("strides", &[2, 2])], 3);
        gradcheck::check_joint(&native, &inputs, inputs.len(), Head::Square);
    }

    #[test]
    fn gemm_matmul_einsum_second_derivatives() {
        let gemm = build(
            "Gemm",
            13,
            &[
                attr::int("transB", 1),
                attr::float("alpha", 0.5),
                attr::float("beta", 3.0),
            ],
            3,
        );
        let inputs = [seeded(&[2, 3], 1), seeded(&[2, 3], 2), seeded(&[1, 2], 3)];
        gradcheck::check_joint(&gemm, &inputs, inputs.len(), Head::Square);
        let matmul = build("MatMul", 13, &[], 2);
        let inputs = [seeded(&[2, 1, 3], 4), seeded(&[3], 5)];
        gradcheck::check_joint(&matmul, &inputs, 2, Head::Square);
        let einsum = build("Einsum", 12, &[attr::string("equation", "bij,jk->bik")], 2);
        let inputs = [seeded(&[2, 2, 3], 6), seeded(&[3, 2], 7)];
        gradcheck::check_joint(&einsum, &inputs, 2, Head::Square);
    }
}
