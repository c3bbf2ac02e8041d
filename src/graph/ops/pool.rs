//! Pooling: MaxPool, AveragePool, LpPool, GlobalAveragePool, GlobalMaxPool,
//! GlobalLpPool, all over opsets 1..=23 and 1 to 3 spatial axes (inputs of
//! rank 3 to 5; the global pools take any rank).
//!
//! Windows follow the current spec: explicit `pads` (any size, asymmetric
//! allowed), `auto_pad`, `dilations`, and `ceil_mode`, where a window that
//! would start in the end padding is dropped (as in PyTorch). When tch cannot
//! express the padding (asymmetric, or more than half the kernel) the input is
//! padded explicitly: with the type's lowest value for MaxPool, with zeros for
//! AveragePool and LpPool, whose divisor then comes from pooling a mask of the
//! counted positions (`count_include_pad` counts `pads` but never the
//! ceil-mode overhang). Dilated AveragePool and LpPool (opsets 18, 19) run as
//! a convolution with a constant kernel. Every path is twice differentiable.
//!
//! Known deviations from the spec:
//! - MaxPool: the optional second output (Indices) is rejected when the node
//!   asks for it; `storage_order` only affects Indices and is ignored.
//! - GlobalMaxPool and MaxPool share gradients among tied maxima as tch does
//!   (the spec defines no gradient).

use tch::{Kind, Tensor};

use super::conv::{extents, spatial_rank, torch_pad_list, AutoPad, Window};
use super::util::input;
use super::Kernel;
use super::{NodeInfo, OpError, OpResult, OpSpec, Registry};

pub fn register(reg: &mut Registry) {
    reg.insert(OpSpec::new("MaxPool", build_max_pool).outputs(1..=2));
    reg.insert(OpSpec::new("AveragePool", build_average_pool));
    reg.insert(OpSpec::new("LpPool", build_lp_pool));
    reg.insert(OpSpec::new("GlobalAveragePool", build_global_average_pool));
    reg.insert(OpSpec::new("GlobalMaxPool", build_global_max_pool));
    reg.insert(OpSpec::new("GlobalLpPool", build_global_lp_pool));
}

/// A pool's window attributes as written in the node.
struct Pool {
    window: Window,
    ceil_mode: bool,
}

/// A pool's window over one input.
struct Geometry {
    kernel: Vec<i64>,
    strides: Vec<i64>,
    dilations: Vec<i64>,
    /// `(begin, end)` padding per spatial axis.
    pads: Vec<(i64, i64)>,
    /// Growth at the end of each axis for `ceil_mode`, beyond `pads`.
    overhang: Vec<i64>,
    /// The output's spatial sizes.
    out: Vec<i64>,
}

impl Pool {
    fn parse(info: &NodeInfo) -> OpResult<Pool> {
        let window = Window::parse(&info.attrs)?;
        if window.kernel_shape.is_none() {
            return Err(OpError::Attribute {
                name: "kernel_shape".into(),
                reason: "required but missing".into(),
            });
        }
        Ok(Pool {
            window,
            ceil_mode: info.attrs.int("ceil_mode", 0)? != 0,
        })
    }

    fn geometry(&self, x: &Tensor) -> OpResult<Geometry> {
        let n = spatial_rank(x, 0)?;
        let size = x.size();
        let input = &size[2..];
        let kernel = self.window.kernel(n)?;
        let strides = self.window.strides(n)?;
        let dilations = self.window.dilations(n)?;
        let extent = extents(&kernel, &dilations);
        let pads = self.window.forward_pads(input, &extent, &strides)?;
        let mut overhang = vec![0; n];
        let mut out = vec![0; n];
        for i in 0..n {
            let padded = input[i] + pads[i].0 + pads[i].1;
            if padded < extent[i] {
                return Err(OpError::Unsupported(format!(
                    "spatial axis {i}: the window spans {} but the padded input only {padded}",
                    extent[i]
                )));
            }
            let s = strides[i];
            out[i] = (padded - extent[i]) / s + 1;
            // With auto_pad the output size does not depend on ceil_mode.
            if self.ceil_mode && self.window.auto_pad == AutoPad::NotSet {
                out[i] = (padded - extent[i] + s - 1) / s + 1;
                if (out[i] - 1) * s >= input[i] + pads[i].0 {
                    out[i] -= 1;
                }
                overhang[i] = ((out[i] - 1) * s + extent[i] - padded).max(0);
            }
        }
        Ok(Geometry {
            kernel,
            strides,
            dilations,
            pads,
            overhang,
            out,
        })
    }
}

impl Geometry {
    /// Whether tch's own symmetric padding (at most half the kernel) and
    /// ceil mode express this window.
    fn native(&self) -> bool {
        self.pads
            .iter()
            .zip(&self.kernel)
            .all(|(&(b, e), &k)| b == e && b <= k / 2)
    }

    fn symmetric_pads(&self) -> Vec<i64> {
        self.pads.iter().map(|&(b, _)| b).collect()
    }

    fn ceil(&self) -> bool {
        self.overhang.iter().any(|&o| o > 0)
    }

    /// Pads and overhang together, as a tch pad list.
    fn full_pad_list(&self) -> Vec<i64> {
        let full: Vec<(i64, i64)> = self
            .pads
            .iter()
            .zip(&self.overhang)
            .map(|(&(b, e), &o)| (b, e + o))
            .collect();
        torch_pad_list(&full)
    }

    /// `y` without the windows past the output size: in ceil mode a window
    /// that starts in the end padding is dropped, even when floor mode over
    /// the padded input would keep it.
    fn crop(&self, y: Tensor) -> Result<Tensor, tch::TchError> {
        let mut y = y;
        for (i, &out) in self.out.iter().enumerate() {
            let axis = i as i64 + 2;
            if y.size()[i + 2] > out {
                y = y.f_narrow(axis, 0, out)?;
            }
        }
        Ok(y)
    }

    fn zeros(&self) -> Vec<i64> {
        vec![0; self.kernel.len()]
    }

    /// The mean of every window of an already padded `x`, without padding or
    /// ceil mode: tch's average pool, or a convolution with a constant kernel
    /// when dilated (tch's average pools have no dilation).
    fn window_mean(&self, x: &Tensor) -> Result<Tensor, tch::TchError> {
        let (k, s, zeros) = (&self.kernel, &self.strides, self.zeros());
        if self.dilations.iter().all(|&d| d == 1) {
            return match k.len() {
                1 => x.f_avg_pool1d(k, s, &zeros, false, true),
                2 => x.f_avg_pool2d(k, s, &zeros, false, true, None),
                _ => x.f_avg_pool3d(k, s, &zeros, false, true, None),
            };
        }
        let size = x.size();
        let mut planes = vec![-1, 1];
        planes.extend_from_slice(&size[2..]);
        let mut weight_shape = vec![1, 1];
        weight_shape.extend_from_slice(k);
        let count: i64 = k.iter().product();
        let weight = Tensor::f_full(&weight_shape, 1.0 / count as f64, (x.kind(), x.device()))?;
        let y = x.f_reshape(&planes)?.f_convolution(
            &weight,
            None::<&Tensor>,
            s,
            &zeros,
            &self.dilations,
            false,
            &zeros,
            1,
        )?;
        let out = y.size();
        let mut shape = size[..2].to_vec();
        shape.extend_from_slice(&out[2..]);
        y.f_reshape(&shape)
    }

    /// The sum of every window of `x` padded with zeros.
    fn window_sum(&self, x: &Tensor) -> Result<Tensor, tch::TchError> {
        let count: i64 = self.kernel.iter().product();
        let padded = x.f_constant_pad_nd(self.full_pad_list())?;
        self.window_mean(&padded)?.f_mul_scalar(count as f64)
    }
}

/// The lowest value of `kind`, the neutral padding of a max.
fn lowest(kind: Kind) -> f64 {
    match kind {
        Kind::Uint8 | Kind::Bool => 0.0,
        Kind::Int8 => f64::from(i8::MIN),
        Kind::Int16 => f64::from(i16::MIN),
        Kind::Int => f64::from(i32::MIN),
        Kind::Int64 => i64::MIN as f64,
        _ => f64::NEG_INFINITY,
    }
}

fn build_max_pool(info: &NodeInfo) -> OpResult<Kernel> {
    if info.num_outputs > 1 {
        return Err(OpError::Unsupported(
            "the second output (Indices) of MaxPool is not supported".into(),
        ));
    }
    let pool = Pool::parse(info)?;
    Ok(Box::new(move |inputs| {
        let x = input(inputs, 0)?;
        let g = pool.geometry(x)?;
        let (padded, padding, ceil);
        let source = if g.native() {
            (padding, ceil) = (g.symmetric_pads(), g.ceil());
            x
        } else {
            (padding, ceil) = (g.zeros(), false);
            padded = x.f_pad(g.full_pad_list(), "constant", lowest(x.kind()))?;
            &padded
        };
        let (k, s, d) = (&g.kernel, &g.strides, &g.dilations);
        let y = match k.len() {
            1 => source.f_max_pool1d(k, s, &padding, d, ceil)?,
            2 => source.f_max_pool2d(k, s, &padding, d, ceil)?,
            _ => source.f_max_pool3d(k, s, &padding, d, ceil)?,
        };
        Ok(vec![g.crop(y)?])
    }))
}

fn build_average_pool(info: &NodeInfo) -> OpResult<Kernel> {
    let pool = Pool::parse(info)?;
    let count_include_pad = info.attrs.int("count_include_pad", 0)? != 0;
    Ok(Box::new(move |inputs| {
        let x = input(inputs, 0)?;
        let g = pool.geometry(x)?;
        if g.native() && g.dilations.iter().all(|&d| d == 1) {
            // tch's divisor is the spec's: pads counted or not, the ceil-mode
            // overhang never.
            let (k, s, p, ceil) = (&g.kernel, &g.strides, g.symmetric_pads(), g.ceil());
            let y = match k.len() {
                1 => x.f_avg_pool1d(k, s, &p, ceil, count_include_pad)?,
                2 => x.f_avg_pool2d(k, s, &p, ceil, count_include_pad, None)?,
                _ => x.f_avg_pool3d(k, s, &p, ceil, count_include_pad, None)?,
            };
            return Ok(vec![y]);
        }
        let mean = g.crop(g.window_mean(&x.f_constant_pad_nd(g.full_pad_list())?)?)?;
        let padded = g.pads.iter().any(|&(b, e)| b > 0 || e > 0);
        if !g.ceil() && (count_include_pad || !padded) {
            return Ok(vec![mean]);
        }
        // The fraction of each window that counts, from a mask that is 1 on
        // the input (and on the pads when they count), 0 elsewhere.
        let size = x.size();
        let mut mask_shape = vec![1, 1];
        mask_shape.extend_from_slice(&size[2..]);
        let counted_pad = if count_include_pad { 1.0 } else { 0.0 };
        let mask = Tensor::f_ones(&mask_shape, (x.kind(), x.device()))?.f_pad(
            torch_pad_list(&g.pads),
            "constant",
            counted_pad,
        )?;
        let overhang: Vec<(i64, i64)> = g.overhang.iter().map(|&o| (0, o)).collect();
        let mask = mask.f_constant_pad_nd(torch_pad_list(&overhang))?;
        let fraction = g.crop(g.window_mean(&mask)?)?;
        Ok(vec![mean.f_div(&fraction)?])
    }))
}

/// The `p` of LpPool and GlobalLpPool: a float in opset 1, an int after.
fn lp_exponent(info: &NodeInfo) -> OpResult<f64> {
    let p = if info.opset < 2 {
        f64::from(info.attrs.float("p", 2.0)?)
    } else {
        info.attrs.int("p", 2)? as f64
    };
    if p <= 0.0 || !p.is_finite() {
        return Err(OpError::Attribute {
            name: "p".into(),
            reason: format!("must be a positive number, got {p}"),
        });
    }
    Ok(p)
}

/// `|x|^p`, smooth for p = 2.
fn lp_power(x: &Tensor, p: f64) -> Result<Tensor, tch::TchError> {
    match p {
        1.0 => x.f_abs(),
        2.0 => x.f_mul(x),
        _ => x.f_abs()?.f_pow_tensor_scalar(p),
    }
}

/// `s^(1/p)`.
fn lp_root(s: &Tensor, p: f64) -> Result<Tensor, tch::TchError> {
    match p {
        1.0 => Ok(s.shallow_clone()),
        2.0 => s.f_sqrt(),
        _ => s.f_pow_tensor_scalar(1.0 / p),
    }
}

fn build_lp_pool(info: &NodeInfo) -> OpResult<Kernel> {
    let pool = Pool::parse(info)?;
    let p = lp_exponent(info)?;
    Ok(Box::new(move |inputs| {
        let x = input(inputs, 0)?;
        let g = pool.geometry(x)?;
        let sum = g.crop(g.window_sum(&lp_power(x, p)?)?)?;
        Ok(vec![lp_root(&sum, p)?])
    }))
}

/// The spatial axes (2..rank) of a global pool's input; empty for rank <= 2,
/// where the pool is the identity.
fn spatial_axes(x: &Tensor) -> Vec<i64> {
    (2..x.dim() as i64).collect()
}

fn build_global_average_pool(_info: &NodeInfo) -> OpResult<Kernel> {
    Ok(super::util::unary(|x| {
        let axes = spatial_axes(x);
        if axes.is_empty() {
            return Ok(x.shallow_clone());
        }
        x.f_mean_dim(axes.as_slice(), true, None)
    }))
}

fn build_global_max_pool(_info: &NodeInfo) -> OpResult<Kernel> {
    Ok(super::util::unary(|x| {
        let axes = spatial_axes(x);
        if axes.is_empty() {
            return Ok(x.shallow_clone());
        }
        x.f_amax(axes.as_slice(), true)
    }))
}

fn build_global_lp_pool(info: &NodeInfo) -> OpResult<Kernel> {
    let p = lp_exponent(info)?;
    Ok(super::util::unary(move |x| {
        let axes = spatial_axes(x);
        if axes.is_empty() {
            return lp_root(&lp_power(x, p)?, p);
        }
        let sum = lp_power(x, p)?.f_sum_dim_intlist(axes.as_slice(), true, None)?;
        lp_root(&sum, p)
    }))
}

#[cfg(test)]
mod tests {
    use super::super::gradcheck::{check_op, Head};
    use super::super::testing::{assert_close, attr, build, build_error, run, seeded, values};
    use super::*;
    use crate::onnx::proto::AttributeProto;

    #[derive(Clone, Copy, PartialEq)]
    enum Reduce {
        Max,
        Average { count_include_pad: bool },
    }

    /// Direct 2-D pooling with the spec's output size and the rule that a
    /// window starting in the end padding is dropped.
    fn naive_pool2d(
        x: &Tensor,
        reduce: Reduce,
        kernel: [i64; 2],
        strides: [i64; 2],
        pads: [(i64, i64); 2],
        dilations: [i64; 2],
        ceil_mode: bool,
    ) -> Tensor {
        let size = x.size();
        let (planes, h, w) = (size[0] * size[1], size[2], size[3]);
        let xv = values(x);
        let input = [h, w];
        let out: Vec<i64> = (0..2)
            .map(|i| {
                let span = input[i] + pads[i].0 + pads[i].1 - ((kernel[i] - 1) * dilations[i] + 1);
                let mut o = if ceil_mode {
                    (span as f64 / strides[i] as f64).ceil() as i64 + 1
                } else {
                    span / strides[i] + 1
                };
                if ceil_mode && (o - 1) * strides[i] >= input[i] + pads[i].0 {
                    o -= 1;
                }
                o
            })
            .collect();
        let mut y = Vec::new();
        for plane in 0..planes {
            for oy in 0..out[0] {
                for ox in 0..out[1] {
                    let (mut best, mut sum, mut count) = (f64::NEG_INFINITY, 0.0, 0.0);
                    for ky in 0..kernel[0] {
                        for kx in 0..kernel[1] {
                            let at = [
                                oy * strides[0] + ky * dilations[0] - pads[0].0,
                                ox * strides[1] + kx * dilations[1] - pads[1].0,
                            ];
                            let inside = (0..2).all(|i| at[i] >= 0 && at[i] < input[i]);
                            let in_pads =
                                (0..2).all(|i| at[i] >= -pads[i].0 && at[i] < input[i] + pads[i].1);
                            if inside {
                                let v = xv[((plane * h + at[0]) * w + at[1]) as usize];
                                best = best.max(v);
                                sum += v;
                                count += 1.0;
                            } else if in_pads
                                && reduce
                                    == (Reduce::Average {
                                        count_include_pad: true,
                                    })
                            {
                                count += 1.0;
                            }
                        }
                    }
                    y.push(match reduce {
                        Reduce::Max => best,
                        Reduce::Average { .. } => sum / count,
                    });
                }
            }
        }
        Tensor::from_slice(&y).reshape([size[0], size[1], out[0], out[1]])
    }

    /// `(attributes, kernel, strides, pads, dilations, ceil_mode)` cases.
    type Case = (
        Vec<AttributeProto>,
        [i64; 2],
        [i64; 2],
        [(i64, i64); 2],
        [i64; 2],
        bool,
    );

    fn cases() -> Vec<Case> {
        vec![
            (vec![], [2, 2], [1, 1], [(0, 0); 2], [1, 1], false),
            (
                vec![attr::ints("strides", &[2, 2])],
                [3, 3],
                [2, 2],
                [(0, 0); 2],
                [1, 1],
                false,
            ),
            // Symmetric pads (tch's own padding).
            (
                vec![attr::ints("pads", &[1, 1, 1, 1])],
                [3, 3],
                [1, 1],
                [(1, 1); 2],
                [1, 1],
                false,
            ),
            // Asymmetric pads and pads over half the kernel.
            (
                vec![
                    attr::ints("pads", &[0, 2, 1, 2]),
                    attr::ints("strides", &[2, 1]),
                ],
                [2, 3],
                [2, 1],
                [(0, 1), (2, 2)],
                [1, 1],
                false,
            ),
            // ceil_mode: 7 wide, kernel 3, stride 2 -> 3 windows; 6 wide ->
            // ceil gives 3, the last one partly outside.
            (
                vec![attr::ints("strides", &[2, 2]), attr::int("ceil_mode", 1)],
                [3, 3],
                [2, 2],
                [(0, 0); 2],
                [1, 1],
                true,
            ),
            // ceil_mode with pads: the overhang is never counted.
            (
                vec![
                    attr::ints("strides", &[2, 3]),
                    attr::ints("pads", &[1, 1, 1, 1]),
                    attr::int("ceil_mode", 1),
                ],
                [3, 3],
                [2, 3],
                [(1, 1), (1, 1)],
                [1, 1],
                true,
            ),
            // ceil_mode with a stride larger than the kernel: the last window
            // would start in the end padding and is dropped.
            // (height: 7 padded, windows at 0, 3 and 6 -> 6 is dropped; width:
            // windows at 0, 3 and 6, the last one half overhang).
            (
                vec![
                    attr::ints("strides", &[3, 3]),
                    attr::ints("pads", &[0, 0, 1, 0]),
                    attr::int("ceil_mode", 1),
                ],
                [1, 2],
                [3, 3],
                [(0, 1), (0, 0)],
                [1, 1],
                true,
            ),
            // Dilations with asymmetric pads and ceil mode.
            (
                vec![
                    attr::ints("dilations", &[2, 1]),
                    attr::ints("pads", &[1, 0, 0, 1]),
                    attr::ints("strides", &[2, 2]),
                    attr::int("ceil_mode", 1),
                ],
                [2, 2],
                [2, 2],
                [(1, 0), (0, 1)],
                [2, 1],
                true,
            ),
            // SAME_UPPER on 6x7, kernel 3, strides 2: totals 1 and 2.
            (
                vec![
                    attr::string("auto_pad", "SAME_UPPER"),
                    attr::ints("strides", &[2, 2]),
                ],
                [3, 3],
                [2, 2],
                [(0, 1), (1, 1)],
                [1, 1],
                false,
            ),
            (
                vec![
                    attr::string("auto_pad", "SAME_LOWER"),
                    attr::ints("strides", &[2, 2]),
                ],
                [3, 3],
                [2, 2],
                [(1, 0), (1, 1)],
                [1, 1],
                false,
            ),
            (
                vec![
                    attr::string("auto_pad", "VALID"),
                    attr::int("ceil_mode", 1),
                    attr::ints("strides", &[2, 2]),
                ],
                [2, 2],
                [2, 2],
                [(0, 0); 2],
                [1, 1],
                false,
            ),
        ]
    }

    #[test]
    fn max_pool_matches_a_direct_pool() {
        let x = seeded(&[2, 2, 6, 7], 1);
        for (mut attrs, kernel, strides, pads, dilations, ceil) in cases() {
            attrs.push(attr::ints("kernel_shape", &kernel));
            let y = run("MaxPool", 12, &attrs, &x);
            let expected = naive_pool2d(&x, Reduce::Max, kernel, strides, pads, dilations, ceil);
            assert_close(&y, &expected);
        }
    }

    #[test]
    fn average_pool_matches_a_direct_pool() {
        let x = seeded(&[2, 2, 6, 7], 2);
        for count_include_pad in [false, true] {
            for (mut attrs, kernel, strides, pads, dilations, ceil) in cases() {
                attrs.push(attr::ints("kernel_shape", &kernel));
                attrs.push(attr::int("count_include_pad", count_include_pad as i64));
                let y = run("AveragePool", 19, &attrs, &x);
                let reduce = Reduce::Average { count_include_pad };
                let expected = naive_pool2d(&x, reduce, kernel, strides, pads, dilations, ceil);
                assert_close(&y, &expected);
            }
        }
    }

    #[test]
    fn pools_match_spec_examples() {
        // test_averagepool_2d_ceil / test_maxpool_2d_ceil: 4x4 ramp 1..16,
        // kernel 3, strides 2, ceil_mode.
        let x = Tensor::arange_start(1, 17, (Kind::Double, tch::Device::Cpu)).reshape([1, 1, 4, 4]);
        let attrs = [
            attr::ints("kernel_shape", &[3, 3]),
            attr::ints("strides", &[2, 2]),
            attr::int("ceil_mode", 1),
        ];
        let avg = run("AveragePool", 10, &attrs, &x);
        assert_close(
            &avg,
            &Tensor::from_slice(&[6.0f64, 7.5, 12., 13.5]).reshape([1, 1, 2, 2]),
        );
        let max = run("MaxPool", 10, &attrs, &x);
        assert_close(
            &max,
            &Tensor::from_slice(&[11.0f64, 12., 15., 16.]).reshape([1, 1, 2, 2]),
        );
        // 1-D and 3-D agree with the 2-D pool on a singleton axis.
        let x = seeded(&[1, 3, 9], 3);
        let attrs = [
            attr::ints("kernel_shape", &[3]),
            attr::ints("pads", &[2, 1]),
        ];
        let expected = naive_pool2d(
            &x.unsqueeze(2),
            Reduce::Max,
            [1, 3],
            [1, 1],
            [(0, 0), (2, 1)],
            [1, 1],
            false,
        );
        assert_close(&run("MaxPool", 12, &attrs, &x).unsqueeze(2), &expected);
        let attrs = [
            attr::ints("kernel_shape", &[1, 1, 3]),
            attr::ints("strides", &[1, 1, 2]),
        ];
        let y = run("AveragePool", 11, &attrs, &x.unsqueeze(2).unsqueeze(2));
        let expected = naive_pool2d(
            &x.unsqueeze(2),
            Reduce::Average {
                count_include_pad: false,
            },
            [1, 3],
            [1, 2],
            [(0, 0); 2],
            [1, 1],
            false,
        );
        assert_close(&y.squeeze_dim(2), &expected);
    }

    #[test]
    fn max_pool_keeps_integer_types_and_rejects_indices() {
        let x = Tensor::from_slice(&[1u8, 5, 3, 2, 0, 9, 4, 4, 7]).reshape([1, 1, 3, 3]);
        let attrs = [
            attr::ints("kernel_shape", &[2, 2]),
            attr::ints("pads", &[0, 0, 1, 1]),
        ];
        let y = run("MaxPool", 12, &attrs, &x);
        assert_eq!(y.kind(), Kind::Uint8);
        assert_eq!(
            Vec::<u8>::try_from(y.flatten(0, -1)).expect("u8"),
            [5, 9, 9, 4, 9, 9, 4, 7, 7]
        );
        let err = build_error("MaxPool", 12, &[attr::ints("kernel_shape", &[2, 2])], 1, 2);
        assert!(err.contains("Indices"), "{err}");
        let kernel = build("MaxPool", 12, &[attr::ints("kernel_shape", &[5, 5])], 1);
        assert!(
            kernel(&[Some(&seeded(&[1, 1, 3, 3], 0))]).is_err(),
            "window larger than input"
        );
    }

    #[test]
    fn lp_pool_is_the_p_norm_of_each_window() {
        let x = seeded(&[1, 2, 5, 4], 4);
        let attrs = [
            attr::ints("kernel_shape", &[2, 3]),
            attr::ints("pads", &[1, 0, 0, 1]),
            attr::ints("strides", &[2, 1]),
            attr::int("p", 3),
        ];
        let y = run("LpPool", 11, &attrs, &x);
        // sum |x|^3 over the window = count * average of |x|^3 (pads count 0).
        let cubes = x.abs().pow_tensor_scalar(3.0);
        let sums = naive_pool2d(
            &cubes,
            Reduce::Average {
                count_include_pad: true,
            },
            [2, 3],
            [2, 1],
            [(1, 0), (0, 1)],
            [1, 1],
            false,
        ) * 6.0;
        assert_close(&y, &sums.pow_tensor_scalar(1.0 / 3.0));
        // Opset 1 takes p as a float; p = 2 by default.
        let y = run("LpPool", 1, &[attr::ints("kernel_shape", &[5, 4])], &x);
        let norms = x
            .square()
            .sum_dim_intlist([2, 3].as_slice(), true, None)
            .sqrt();
        assert_close(&y, &norms);
        let y = run("GlobalLpPool", 2, &[attr::int("p", 1)], &x);
        assert_close(&y, &x.abs().sum_dim_intlist([2, 3].as_slice(), true, None));
    }

    #[test]
    fn global_pools_reduce_every_spatial_axis() {
        let x = Tensor::from_slice(&[1.0f64, 2., 3., 4., 5., 6., -1., -2., -9., 0., 0., 0.])
            .reshape([1, 2, 2, 3]);
        let y = run("GlobalAveragePool", 1, &[], &x);
        assert_close(
            &y,
            &Tensor::from_slice(&[3.5f64, -2.]).reshape([1, 2, 1, 1]),
        );
        let y = run("GlobalMaxPool", 1, &[], &x);
        assert_close(&y, &Tensor::from_slice(&[6.0f64, 0.]).reshape([1, 2, 1, 1]));
        let y = run("GlobalAveragePool", 1, &[], &x.reshape([1, 2, 6, 1, 1]));
        assert_eq!(y.size(), [1, 2, 1, 1, 1]);
    }

    #[test]
    fn pool_second_derivatives() {
        let x = seeded(&[1, 2, 4, 5], 5);
        let windows = [
            vec![attr::ints("kernel_shape", &[2, 2])],
            vec![
                attr::ints("kernel_shape", &[2, 3]),
                attr::ints("pads", &[1, 0, 0, 2]),
                attr::ints("strides", &[2, 2]),
                attr::int("ceil_mode", 1),
            ],
            vec![
                attr::ints("kernel_shape", &[2, 2]),
                attr::ints("dilations", &[2, 1]),
                attr::ints("pads", &[1, 1, 1, 1]),
            ],
        ];
        for attrs in &windows {
            check_op("MaxPool", 12, attrs, &[&x], 0, Head::Square);
            check_op("AveragePool", 19, attrs, &[&x], 0, Head::Square);
            let mut counting = attrs.clone();
            counting.push(attr::int("count_include_pad", 1));
            check_op("AveragePool", 19, &counting, &[&x], 0, Head::Square);
            let mut lp = attrs.clone();
            lp.push(attr::int("p", 3));
            check_op("LpPool", 18, &lp, &[&x], 0, Head::Output);
            check_op("LpPool", 18, attrs, &[&x], 0, Head::Output);
        }
        check_op("GlobalAveragePool", 1, &[], &[&x], 0, Head::Square);
        check_op("GlobalMaxPool", 1, &[], &[&x], 0, Head::Square);
        check_op("GlobalLpPool", 2, &[], &[&x], 0, Head::Output);
    }
}
