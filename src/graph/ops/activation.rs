//! Activation ops: Relu, LeakyRelu, PRelu, Elu, Selu, Celu, Sigmoid,
//! HardSigmoid, HardSwish, Tanh, Softplus, Softsign, Gelu, Erf, Mish,
//! ThresholdedRelu, Clip, Softmax, LogSoftmax, Dropout, Identity, and the
//! piecewise-constant Sign, Floor, Ceil, Round.
//!
//! Opsets: every version of each op from its introduction up to 23
//! (Gelu 20+, Mish 18+, HardSwish 14+, Celu 12+, ThresholdedRelu 10+,
//! Round 11+, Sign/Erf 9+). Clip and Softmax/LogSoftmax have two specs each,
//! where the semantics change (Clip bounds become inputs at 11; Softmax
//! works on one axis instead of a coerced 2-D view at 13); Dropout has two
//! (ratio and training_mode become inputs at 12).
//!
//! The kernels are built from twice-differentiable tch ops. Branches that
//! would overflow in the unused half of a `where` (Elu's exponential) are
//! clamped first, so that no `0 * inf` reaches a gradient.
//!
//! Known deviations from the spec:
//! - Dropout always runs in inference mode: `training_mode` (opset 12+) and
//!   `is_test = 0` (opsets 1-6) are ignored, the output is the input and the
//!   optional mask is all true (all ones before opset 10, where the mask is
//!   of the data's type).
//! - PRelu before opset 7: a 1-D slope whose length is the channel count of
//!   an input of rank > 2 is applied per channel (axis 1), as the legacy
//!   exporters that wrote it meant; from opset 7 the slope is broadcast
//!   numpy-style, as the spec says.
//! - Clip with attribute bounds (opsets 1-10): a missing bound means no
//!   bound, where the spec's default is the float type's lowest/highest
//!   finite value (they differ only for infinite inputs).
//! - Softplus follows libtorch: `x` itself above 20 (the difference is below
//!   float precision).
//! - Identity takes tensors only (no sequences or optionals).

use tch::{Kind, Tensor};

use super::util::{input, input_opt, norm_axis, unary};
use super::{Differentiable, Kernel, NodeInfo, OpError, OpResult, OpSpec, Registry};

pub fn register(reg: &mut Registry) {
    reg.insert(OpSpec::new("Relu", |_| Ok(unary(Tensor::f_relu))));
    reg.insert(OpSpec::new("LeakyRelu", build_leaky_relu));
    reg.insert(OpSpec::new("PRelu", build_prelu).inputs(2..=2));
    reg.insert(OpSpec::new("Elu", build_elu));
    reg.insert(OpSpec::new("Selu", build_selu));
    reg.insert(OpSpec::new("Celu", build_celu).opsets(12..=23));
    reg.insert(OpSpec::new("Sigmoid", |_| Ok(unary(Tensor::f_sigmoid))));
    reg.insert(OpSpec::new("HardSigmoid", build_hard_sigmoid));
    reg.insert(
        OpSpec::new("HardSwish", |_| {
            Ok(unary(|x| x.f_mul(&hard_sigmoid(x, 1.0 / 6.0, 0.5)?)))
        })
        .opsets(14..=23),
    );
    reg.insert(OpSpec::new("Tanh", |_| Ok(unary(Tensor::f_tanh))));
    reg.insert(OpSpec::new("Softplus", |_| Ok(unary(Tensor::f_softplus))));
    reg.insert(OpSpec::new("Softsign", |_| {
        Ok(unary(|x| x.f_div(&x.f_abs()?.f_add_scalar(1.0)?)))
    }));
    reg.insert(OpSpec::new("Gelu", build_gelu).opsets(20..=23));
    reg.insert(OpSpec::new("Erf", |_| Ok(unary(Tensor::f_erf))).opsets(9..=23));
    reg.insert(
        OpSpec::new("Mish", |_| {
            Ok(unary(|x| x.f_mul(&x.f_softplus()?.f_tanh()?)))
        })
        .opsets(18..=23),
    );
    reg.insert(OpSpec::new("ThresholdedRelu", build_thresholded_relu).opsets(10..=23));

    // Piecewise constant: the gradient is zero wherever it exists, so no
    // initializer feeding them is worth training.
    for (op_type, first) in [("Sign", 9), ("Floor", 1), ("Ceil", 1), ("Round", 11)] {
        reg.insert(
            OpSpec::new(op_type, build_piecewise_constant)
                .opsets(first..=23)
                .differentiable(Differentiable::None),
        );
    }

    reg.insert(OpSpec::new("Clip", build_clip_attributes).opsets(1..=10));
    reg.insert(
        OpSpec::new("Clip", build_clip_inputs)
            .opsets(11..=23)
            .inputs(1..=3)
            .differentiable(Differentiable::Only(&[0])),
    );

    reg.insert(OpSpec::new("Softmax", |i| build_softmax_2d(i, false)).opsets(1..=12));
    reg.insert(OpSpec::new("Softmax", |i| build_softmax(i, false)).opsets(13..=23));
    reg.insert(OpSpec::new("LogSoftmax", |i| build_softmax_2d(i, true)).opsets(1..=12));
    reg.insert(OpSpec::new("LogSoftmax", |i| build_softmax(i, true)).opsets(13..=23));

    reg.insert(
        OpSpec::new("Dropout", build_dropout)
            .opsets(1..=11)
            .outputs(1..=2),
    );
    reg.insert(
        OpSpec::new("Dropout", build_dropout)
            .opsets(12..=23)
            .inputs(1..=3)
            .outputs(1..=2)
            .differentiable(Differentiable::Only(&[0])),
    );
    reg.insert(OpSpec::new("Identity", |_| {
        Ok(unary(|x| Ok(x.shallow_clone())))
    }));
}

fn build_leaky_relu(info: &NodeInfo) -> OpResult<Kernel> {
    let alpha = f64::from(info.attrs.float("alpha", 0.01)?);
    Ok(unary(move |x| {
        x.f_where_self(&x.f_ge(0.0)?, &x.f_mul_scalar(alpha)?)
    }))
}

fn build_prelu(info: &NodeInfo) -> OpResult<Kernel> {
    let legacy_per_channel = info.opset < 7;
    Ok(Box::new(move |inputs| {
        let x = input(inputs, 0)?;
        let mut slope = input(inputs, 1)?.shallow_clone();
        let x_shape = x.size();
        if legacy_per_channel
            && x_shape.len() > 2
            && slope.dim() == 1
            && slope.size()[0] == x_shape[1]
            && x_shape[1] != 1
        {
            let mut per_channel = vec![x_shape[1]];
            per_channel.resize(x_shape.len() - 1, 1);
            slope = slope.f_reshape(per_channel.as_slice())?;
        }
        let y = x.f_where_self(&x.f_ge(0.0)?, &x.f_mul(&slope)?)?;
        if y.size() != x_shape {
            return Err(OpError::Input {
                index: 1,
                reason: format!(
                    "slope of shape {:?} is not unidirectionally broadcastable to X of shape {x_shape:?}",
                    slope.size()
                ),
            });
        }
        Ok(vec![y])
    }))
}

/// `alpha * (exp(x) - 1)` for `x <= 0`, 0 above; computed on `min(x, 0)` so
/// that large positive inputs never produce an infinite exponential.
fn elu_negative_part(x: &Tensor, alpha: f64) -> Result<Tensor, tch::TchError> {
    x.f_clamp_max(0.0)?.f_expm1()?.f_mul_scalar(alpha)
}

fn build_elu(info: &NodeInfo) -> OpResult<Kernel> {
    let alpha = f64::from(info.attrs.float("alpha", 1.0)?);
    // With the default alpha, libtorch's fused elu (twice differentiable,
    // no overflow); tch exposes no alpha, so other values are composed.
    if alpha == 1.0 {
        return Ok(unary(|x| x.f_elu()));
    }
    Ok(unary(move |x| {
        x.f_relu()?.f_add(&elu_negative_part(x, alpha)?)
    }))
}

fn build_selu(info: &NodeInfo) -> OpResult<Kernel> {
    // Opset 1 documents rounded defaults; opset 6 the exact ones.
    let (default_alpha, default_gamma) = if info.opset < 6 {
        (1.6732, 1.0507)
    } else {
        (1.673_263_2, 1.050_701)
    };
    let alpha = f64::from(info.attrs.float("alpha", default_alpha)?);
    let gamma = f64::from(info.attrs.float("gamma", default_gamma)?);
    Ok(unary(move |x| {
        x.f_relu()?
            .f_add(&elu_negative_part(x, alpha)?)?
            .f_mul_scalar(gamma)
    }))
}

fn build_celu(info: &NodeInfo) -> OpResult<Kernel> {
    let alpha = info.attrs.float("alpha", 1.0)?;
    if alpha == 0.0 {
        return Err(OpError::Attribute {
            name: "alpha".into(),
            reason: "must not be 0".into(),
        });
    }
    let alpha = f64::from(alpha);
    Ok(unary(move |x| {
        let negative = x
            .f_clamp_max(0.0)?
            .f_div_scalar(alpha)?
            .f_expm1()?
            .f_mul_scalar(alpha)?;
        x.f_relu()?.f_add(&negative)
    }))
}

fn hard_sigmoid(x: &Tensor, alpha: f64, beta: f64) -> Result<Tensor, tch::TchError> {
    x.f_mul_scalar(alpha)?.f_add_scalar(beta)?.f_clamp(0.0, 1.0)
}

fn build_hard_sigmoid(info: &NodeInfo) -> OpResult<Kernel> {
    let alpha = f64::from(info.attrs.float("alpha", 0.2)?);
    let beta = f64::from(info.attrs.float("beta", 0.5)?);
    Ok(unary(move |x| hard_sigmoid(x, alpha, beta)))
}

fn build_gelu(info: &NodeInfo) -> OpResult<Kernel> {
    let approximate = info.attrs.string("approximate", "none")?;
    if approximate != "none" && approximate != "tanh" {
        return Err(OpError::Attribute {
            name: "approximate".into(),
            reason: format!("expected \"none\" or \"tanh\", got {approximate:?}"),
        });
    }
    Ok(unary(move |x| x.f_gelu(&approximate)))
}

fn build_thresholded_relu(info: &NodeInfo) -> OpResult<Kernel> {
    let alpha = f64::from(info.attrs.float("alpha", 1.0)?);
    Ok(unary(move |x| x.f_where_scalarother(&x.f_gt(alpha)?, 0.0)))
}

fn build_piecewise_constant(info: &NodeInfo) -> OpResult<Kernel> {
    Ok(match info.op_type {
        "Sign" => unary(Tensor::f_sign),
        "Floor" => unary(Tensor::f_floor),
        "Ceil" => unary(Tensor::f_ceil),
        // Round half to even, as the spec asks and libtorch does.
        "Round" => unary(Tensor::f_round),
        other => {
            return Err(OpError::Unsupported(format!(
                "{other} is not an activation"
            )))
        }
    })
}

fn build_clip_attributes(info: &NodeInfo) -> OpResult<Kernel> {
    let min = info.attrs.float_opt("min")?.map(f64::from);
    let max = info.attrs.float_opt("max")?.map(f64::from);
    Ok(unary(move |x| match (min, max) {
        (Some(lo), Some(hi)) => x.f_clamp(lo, hi),
        (Some(lo), None) => x.f_clamp_min(lo),
        (None, Some(hi)) => x.f_clamp_max(hi),
        (None, None) => Ok(x.shallow_clone()),
    }))
}

fn build_clip_inputs(_info: &NodeInfo) -> OpResult<Kernel> {
    Ok(Box::new(|inputs| {
        let x = input(inputs, 0)?;
        let min = input_opt(inputs, 1);
        let max = input_opt(inputs, 2);
        for (index, bound) in [(1, min), (2, max)] {
            if let Some(b) = bound {
                if b.numel() != 1 {
                    return Err(OpError::Input {
                        index,
                        reason: format!("expected a scalar bound, got shape {:?}", b.size()),
                    });
                }
            }
        }
        // A bound that is not a scalar of rank 0 would broadcast the output.
        let scalar = |b: &Tensor| b.f_reshape([] as [i64; 0]);
        let min = min.map(scalar).transpose()?;
        let max = max.map(scalar).transpose()?;
        let y = if min.is_none() && max.is_none() {
            x.shallow_clone()
        } else {
            x.f_clamp_tensor(min.as_ref(), max.as_ref())?
        };
        Ok(vec![y])
    }))
}

fn softmax_along(x: &Tensor, dim: i64, log: bool) -> Result<Tensor, tch::TchError> {
    if log {
        x.f_log_softmax(dim, x.kind())
    } else {
        x.f_softmax(dim, x.kind())
    }
}

/// Softmax before opset 13: the input is viewed as 2-D,
/// `[a_0 * .. * a_{k-1}, a_k * .. * a_{n-1}]`, and normalised along the second.
fn build_softmax_2d(info: &NodeInfo, log: bool) -> OpResult<Kernel> {
    let axis = info.attrs.int("axis", 1)?;
    Ok(Box::new(move |inputs| {
        let x = input(inputs, 0)?;
        let shape = x.size();
        let rank = shape.len() as i64;
        if rank == 0 {
            return Ok(vec![softmax_along(x, -1, log)?]);
        }
        // The coerced view allows axis == rank (a trailing dimension of 1).
        let k = if axis < 0 { axis + rank } else { axis };
        if !(0..=rank).contains(&k) {
            return Err(OpError::Unsupported(format!(
                "axis {axis} is out of range for a tensor of rank {rank}"
            )));
        }
        let k = k as usize;
        if k + 1 == shape.len() {
            return Ok(vec![softmax_along(x, k as i64, log)?]);
        }
        let outer: i64 = shape[..k].iter().product();
        let inner: i64 = shape[k..].iter().product();
        let y = softmax_along(&x.f_reshape([outer, inner])?, 1, log)?;
        Ok(vec![y.f_reshape(shape.as_slice())?])
    }))
}

fn build_softmax(info: &NodeInfo, log: bool) -> OpResult<Kernel> {
    let axis = info.attrs.int("axis", -1)?;
    Ok(Box::new(move |inputs| {
        let x = input(inputs, 0)?;
        let dim = norm_axis(axis, x.dim() as i64)?;
        Ok(vec![softmax_along(x, dim, log)?])
    }))
}

fn build_dropout(info: &NodeInfo) -> OpResult<Kernel> {
    let with_mask = info.num_outputs > 1;
    // Before opset 10 the mask has the data's type; from 10 it is bool.
    let bool_mask = info.opset >= 10;
    let float_kind = info.float_kind;
    Ok(Box::new(move |inputs| {
        let x = input(inputs, 0)?;
        let mut outputs = vec![x.shallow_clone()];
        if with_mask {
            let kind = match (bool_mask, x.is_floating_point()) {
                (true, _) => Kind::Bool,
                (false, true) => x.kind(),
                (false, false) => float_kind,
            };
            outputs.push(Tensor::f_ones(x.size(), (kind, x.device()))?);
        }
        Ok(outputs)
    }))
}

#[cfg(test)]
mod tests {
    use super::super::gradcheck::{check_second_derivative, check_unary, kernel_fn};
    use super::super::testing::{
        assert_approx, attr, build, build_with_outputs, run, try_build, values,
    };
    use super::*;

    fn sample() -> Tensor {
        Tensor::from_slice(&[-1.7f64, -0.4, 0.3, 1.2, 2.5, -2.2]).view([2, 3])
    }

    #[test]
    fn relu_family_values() {
        let x = Tensor::from_slice(&[-2.0f64, -0.5, 0.0, 1.5]);
        assert_approx(
            &run("Relu", 14, &[], &[x.shallow_clone()]),
            &[0.0, 0.0, 0.0, 1.5],
        );
        assert_approx(
            &run(
                "LeakyRelu",
                16,
                &[attr::float("alpha", 0.1)],
                &[x.shallow_clone()],
            ),
            &[-0.2, -0.05, 0.0, 1.5],
        );
        assert_approx(
            &run("LeakyRelu", 6, &[], &[x.shallow_clone()]),
            &[-0.02, -0.005, 0.0, 1.5],
        );
        assert_approx(
            &run(
                "ThresholdedRelu",
                10,
                &[attr::float("alpha", 1.0)],
                &[x.shallow_clone()],
            ),
            &[0.0, 0.0, 0.0, 1.5],
        );
        let int = Tensor::from_slice(&[-3i64, 4]);
        let y = run("Relu", 14, &[], &[int]);
        assert_eq!(y.kind(), Kind::Int64);
        assert_eq!(Vec::<i64>::try_from(&y).unwrap(), vec![0, 4]);
    }

    #[test]
    fn prelu_broadcasts_slope() {
        let x = Tensor::from_slice(&[-1.0f64, -2.0, 3.0, -4.0]).view([1, 2, 2, 1]);
        let slope = Tensor::from_slice(&[0.5f64, 0.25]).view([2, 1, 1]);
        assert_approx(
            &run("PRelu", 16, &[], &[x.shallow_clone(), slope]),
            &[-0.5, -1.0, 3.0, -1.0],
        );
        // Legacy per-channel slope of shape [C] against NCHW.
        let slope = Tensor::from_slice(&[0.5f64, 0.25]);
        assert_approx(
            &run("PRelu", 6, &[], &[x.shallow_clone(), slope.shallow_clone()]),
            &[-0.5, -1.0, 3.0, -1.0],
        );
        // From opset 7 the same slope broadcasts numpy-style, which fails here.
        let kernel = build("PRelu", 9, &[], 2);
        assert!(kernel(&[Some(&x), Some(&slope)]).is_err());
    }

    #[test]
    fn exponential_units_values() {
        let x = Tensor::from_slice(&[-1.0f64, 0.0, 2.0]);
        let e = (-1.0f64).exp_m1();
        assert_approx(
            &run("Elu", 6, &[attr::float("alpha", 2.0)], &[x.shallow_clone()]),
            &[2.0 * e, 0.0, 2.0],
        );
        let (a, g) = (1.673_263_192_176_818_8f64, 1.050_701_022_148_132_3f64);
        let y = run("Selu", 6, &[], &[x.shallow_clone()]);
        let got = values(&y);
        for (v, want) in got.iter().zip([g * a * e, 0.0, 2.0 * g]) {
            assert!((v - want).abs() < 1e-6, "{got:?}");
        }
        assert_approx(
            &run(
                "Celu",
                12,
                &[attr::float("alpha", 2.0)],
                &[x.shallow_clone()],
            ),
            &[2.0 * (-0.5f64).exp_m1(), 0.0, 2.0],
        );
        // Large inputs do not overflow the unused exponential branch.
        let big = Tensor::from_slice(&[1000.0f64]).set_requires_grad(true);
        let y = run("Elu", 6, &[], &[big.shallow_clone()]);
        let g = Tensor::run_backward(&[y.sum(Kind::Double)], &[&big], false, false);
        assert_approx(&g[0], &[1.0]);
    }

    #[test]
    fn smooth_activation_values() {
        let x = Tensor::from_slice(&[-3.0f64, 0.0, 1.0, 4.0]);
        assert_approx(
            &run("HardSigmoid", 6, &[], &[x.shallow_clone()]),
            &[0.0, 0.5, 0.7, 1.0],
        );
        assert_approx(
            &run("HardSwish", 14, &[], &[x.shallow_clone()]),
            &[0.0, 0.0, 1.0 * (1.0 / 6.0 + 0.5), 4.0],
        );
        assert_approx(
            &run("Softsign", 1, &[], &[x.shallow_clone()]),
            &[-0.75, 0.0, 0.5, 0.8],
        );
        let sp: Vec<f64> = [-3.0f64, 0.0, 1.0, 4.0]
            .iter()
            .map(|v| v.exp().ln_1p())
            .collect();
        assert_approx(&run("Softplus", 1, &[], &[x.shallow_clone()]), &sp);
        let mish: Vec<f64> = [-3.0f64, 0.0, 1.0, 4.0]
            .iter()
            .zip(&sp)
            .map(|(v, s)| v * s.tanh())
            .collect();
        assert_approx(&run("Mish", 18, &[], &[x.shallow_clone()]), &mish);
        let exact = values(&(&x * ((&x / 2f64.sqrt()).erf() + 1.0) * 0.5));
        assert_approx(&run("Gelu", 20, &[], &[x.shallow_clone()]), &exact);
        let tanh: Vec<f64> = [-3.0f64, 0.0, 1.0, 4.0]
            .iter()
            .map(|v| {
                let inner = (2.0 / std::f64::consts::PI).sqrt() * (v + 0.044715 * v.powi(3));
                0.5 * v * (1.0 + inner.tanh())
            })
            .collect();
        assert_approx(
            &run("Gelu", 20, &[attr::string("approximate", "tanh")], &[x]),
            &tanh,
        );
    }

    #[test]
    fn gelu_rejects_unknown_approximation() {
        let attrs = [attr::string("approximate", "erf")];
        let err = try_build("Gelu", 20, &attrs, 1, 1).err().expect("rejected");
        assert!(err.to_string().contains("approximate"), "{err}");
    }

    #[test]
    fn piecewise_constant_values() {
        let x = Tensor::from_slice(&[-1.5f64, -0.5, 0.5, 2.5, 0.0]);
        assert_approx(
            &run("Round", 11, &[], &[x.shallow_clone()]),
            &[-2.0, -0.0, 0.0, 2.0, 0.0],
        );
        assert_approx(
            &run("Floor", 13, &[], &[x.shallow_clone()]),
            &[-2.0, -1.0, 0.0, 2.0, 0.0],
        );
        assert_approx(
            &run("Ceil", 13, &[], &[x.shallow_clone()]),
            &[-1.0, -0.0, 1.0, 3.0, 0.0],
        );
        assert_approx(&run("Sign", 13, &[], &[x]), &[-1.0, -1.0, 1.0, 1.0, 0.0]);
    }

    #[test]
    fn clip_attribute_and_input_bounds() {
        let x = Tensor::from_slice(&[-2.0f64, 0.5, 3.0]);
        let attrs = [attr::float("min", -1.0), attr::float("max", 1.0)];
        assert_approx(
            &run("Clip", 6, &attrs, &[x.shallow_clone()]),
            &[-1.0, 0.5, 1.0],
        );
        assert_approx(
            &run("Clip", 6, &[attr::float("max", 0.0)], &[x.shallow_clone()]),
            &[-2.0, 0.0, 0.0],
        );
        let min = Tensor::from_slice(&[-1.0f64]).view([]);
        let max = Tensor::from_slice(&[1.0f64]).view([]);
        let kernel = build("Clip", 13, &[], 3);
        let y = kernel(&[Some(&x), None, Some(&max)]).unwrap().remove(0);
        assert_approx(&y, &[-2.0, 0.5, 1.0]);
        let y = kernel(&[Some(&x), Some(&min)]).unwrap().remove(0);
        assert_approx(&y, &[-1.0, 0.5, 3.0]);
        let y = kernel(&[Some(&x), Some(&min), Some(&max)])
            .unwrap()
            .remove(0);
        assert_approx(&y, &[-1.0, 0.5, 1.0]);
        // min > max: every value becomes max.
        let y = kernel(&[Some(&x), Some(&max), Some(&min)])
            .unwrap()
            .remove(0);
        assert_approx(&y, &[-1.0, -1.0, -1.0]);
        let ints = Tensor::from_slice(&[-5i8, 3, 9]);
        let hi = Tensor::from_slice(&[4i8]).view([]);
        let y = kernel(&[Some(&ints), None, Some(&hi)]).unwrap().remove(0);
        assert_eq!(y.kind(), Kind::Int8);
        assert_eq!(
            Vec::<i64>::try_from(y.to_kind(Kind::Int64)).unwrap(),
            vec![-5, 3, 4]
        );
    }

    #[test]
    fn softmax_axis_semantics_by_opset() {
        let x = Tensor::from_slice(&[1.0f64, 2.0, 3.0, 4.0, 0.0, -1.0, 0.5, 0.5]).view([2, 2, 2]);
        // Opset 13: along the last axis.
        let y = run("Softmax", 13, &[], &[x.shallow_clone()]);
        let sums = values(&y.sum_dim_intlist([-1i64].as_slice(), false, Kind::Double));
        assert_approx(&Tensor::from_slice(&sums), &[1.0; 4]);
        // Opset 11, axis 1: the last two axes together form one distribution.
        let y = run("Softmax", 11, &[], &[x.shallow_clone()]);
        let sums = values(&y.sum_dim_intlist([1i64, 2].as_slice(), false, Kind::Double));
        assert_approx(&Tensor::from_slice(&sums), &[1.0; 2]);
        let direct = x.view([2, 4]).softmax(1, Kind::Double).view([2, 2, 2]);
        assert_approx(&y, &values(&direct));
        // LogSoftmax agrees with log(Softmax).
        let ly = run(
            "LogSoftmax",
            11,
            &[attr::int("axis", 0)],
            &[x.shallow_clone()],
        );
        let direct = x.view([1, 8]).log_softmax(1, Kind::Double).view([2, 2, 2]);
        assert_approx(&ly, &values(&direct));
        let ly = run(
            "LogSoftmax",
            13,
            &[attr::int("axis", 1)],
            &[x.shallow_clone()],
        );
        assert_approx(&ly, &values(&x.log_softmax(1, Kind::Double)));
    }

    #[test]
    fn dropout_is_identity_with_true_mask() {
        let x = Tensor::from_slice(&[1.0f64, -2.0]);
        let ratio = Tensor::from_slice(&[0.5f64]).view([]);
        let training = Tensor::from_slice(&[false]).view([]);
        let kernel = build_with_outputs("Dropout", 13, &[], 3, 2);
        let out = kernel(&[Some(&x), Some(&ratio), Some(&training)]).unwrap();
        assert_approx(&out[0], &[1.0, -2.0]);
        assert_eq!(out[1].kind(), Kind::Bool);
        assert_eq!(Vec::<bool>::try_from(&out[1]).unwrap(), vec![true, true]);
        // Before opset 10 the mask has the data's type.
        let kernel = build_with_outputs("Dropout", 7, &[attr::float("ratio", 0.3)], 1, 2);
        let out = kernel(&[Some(&x)]).unwrap();
        assert_eq!(out[1].kind(), Kind::Double);
        assert_approx(&out[1], &[1.0, 1.0]);
        assert_approx(&run("Dropout", 12, &[], &[x.shallow_clone()]), &[1.0, -2.0]);
        assert_approx(&run("Identity", 16, &[], &[x]), &[1.0, -2.0]);
    }

    #[test]
    fn second_derivatives_smooth_activations() {
        let x = sample();
        check_unary("Elu", 6, &[attr::float("alpha", 0.7)], &x);
        check_unary("Selu", 6, &[], &x);
        check_unary("Celu", 12, &[attr::float("alpha", 1.5)], &x);
        check_unary("Sigmoid", 13, &[], &x);
        check_unary("Tanh", 13, &[], &x);
        check_unary("Softplus", 1, &[], &x);
        check_unary("Softsign", 1, &[], &x);
        check_unary("Mish", 18, &[], &x);
        check_unary("Erf", 13, &[], &x);
    }

    #[test]
    fn second_derivatives_gelu_both_modes() {
        let x = sample();
        check_unary("Gelu", 20, &[], &x);
        check_unary("Gelu", 20, &[attr::string("approximate", "tanh")], &x);
    }

    #[test]
    fn second_derivatives_piecewise_linear() {
        // Away from the kinks, so that finite differences are meaningful.
        let x = sample();
        check_unary("Relu", 14, &[], &x);
        check_unary("LeakyRelu", 16, &[attr::float("alpha", 0.2)], &x);
        check_unary("HardSigmoid", 6, &[attr::float("alpha", 0.3)], &x);
        check_unary("HardSwish", 14, &[], &x);
        check_unary("ThresholdedRelu", 10, &[attr::float("alpha", 0.5)], &x);
        check_unary(
            "Clip",
            6,
            &[attr::float("min", -1.0), attr::float("max", 2.0)],
            &x,
        );
    }

    #[test]
    fn second_derivatives_clip_inputs_and_prelu() {
        let x = sample();
        let min = Tensor::from_slice(&[-1.0f64]).view([]);
        let max = Tensor::from_slice(&[2.0f64]).view([]);
        let kernel = build("Clip", 13, &[], 3);
        let inputs = [x.shallow_clone(), min, max];
        check_second_derivative(kernel_fn(&kernel, &inputs, 0), &x).unwrap();

        let slope = Tensor::from_slice(&[0.3f64, -0.2, 0.7]);
        let kernel = build("PRelu", 16, &[], 2);
        let inputs = [x.shallow_clone(), slope.shallow_clone()];
        check_second_derivative(kernel_fn(&kernel, &inputs, 0), &x).unwrap();
        // The slope is a trainable weight too.
        check_second_derivative(kernel_fn(&kernel, &inputs, 1), &slope).unwrap();
    }

    #[test]
    fn second_derivatives_softmax() {
        let x = Tensor::from_slice(&[
            0.3f64, -1.2, 2.0, 0.1, 0.7, -0.4, 1.1, 0.0, -2.0, 0.5, 0.9, 1.4,
        ])
        .view([2, 3, 2]);
        for op in ["Softmax", "LogSoftmax"] {
            check_unary(op, 13, &[], &x);
            check_unary(op, 13, &[attr::int("axis", 1)], &x);
            check_unary(op, 11, &[], &x);
            check_unary(op, 1, &[attr::int("axis", 2)], &x);
        }
    }

    #[test]
    fn second_derivative_identity() {
        check_unary("Identity", 16, &[], &sample());
    }
}
