//! Reductions: ReduceSum, ReduceMean, ReduceMax, ReduceMin, ReduceProd,
//! ReduceL1, ReduceL2, ReduceSumSquare, ReduceLogSum, ReduceLogSumExp, and
//! the index reductions ArgMax, ArgMin.
//!
//! Opsets 1-23, as two specs per reduction: `axes` is an attribute before
//! opset 18 (ReduceSum: before 13) and an optional int64 input from then on,
//! together with `noop_with_empty_axes`. Missing or empty axes reduce every
//! axis (or, with `noop_with_empty_axes = 1`, return the input unchanged).
//! The axes input is not differentiable; the data is, except for ArgMax and
//! ArgMin, whose output is an index.
//!
//! Integer data keeps its kind (sums do not widen int32 to int64); integer
//! means, norms and log-sums are computed in f64 and truncated back.
//! ReduceMax/ReduceMin split the gradient evenly between tied maxima
//! (libtorch's `amax`), ReduceL2's gradient at an all-zero slice is 0.
//!
//! Known deviations from the spec: ReduceMax/ReduceMin over an axis of
//! length 0 is an error (the spec gives -inf/+inf), and ReduceMean over one
//! gives NaN.

use tch::{Kind, Tensor};

use super::util::{input, input_opt, ints, norm_axis};
use super::{Differentiable, Kernel, NodeInfo, OpError, OpResult, OpSpec, Registry};

#[derive(Debug, Clone, Copy)]
enum Reduction {
    Sum,
    Mean,
    Max,
    Min,
    Prod,
    L1,
    L2,
    SumSquare,
    LogSum,
    LogSumExp,
}

impl Reduction {
    const ALL: [Reduction; 10] = [
        Reduction::Sum,
        Reduction::Mean,
        Reduction::Max,
        Reduction::Min,
        Reduction::Prod,
        Reduction::L1,
        Reduction::L2,
        Reduction::SumSquare,
        Reduction::LogSum,
        Reduction::LogSumExp,
    ];

    fn op_type(self) -> &'static str {
        match self {
            Reduction::Sum => "ReduceSum",
            Reduction::Mean => "ReduceMean",
            Reduction::Max => "ReduceMax",
            Reduction::Min => "ReduceMin",
            Reduction::Prod => "ReduceProd",
            Reduction::L1 => "ReduceL1",
            Reduction::L2 => "ReduceL2",
            Reduction::SumSquare => "ReduceSumSquare",
            Reduction::LogSum => "ReduceLogSum",
            Reduction::LogSumExp => "ReduceLogSumExp",
        }
    }

    /// The first opset where `axes` is an input instead of an attribute.
    fn axes_input_opset(self) -> i64 {
        match self {
            Reduction::Sum => 13,
            _ => 18,
        }
    }
}

pub fn register(reg: &mut Registry) {
    for reduction in Reduction::ALL {
        let op_type = reduction.op_type();
        let axes_input_from = reduction.axes_input_opset();
        reg.insert(OpSpec::new(op_type, build_reduce).opsets(1..=axes_input_from - 1));
        reg.insert(
            OpSpec::new(op_type, build_reduce)
                .opsets(axes_input_from..=23)
                .inputs(1..=2)
                .differentiable(Differentiable::Only(&[0])),
        );
    }
    for op_type in ["ArgMax", "ArgMin"] {
        reg.insert(OpSpec::new(op_type, build_arg).differentiable(Differentiable::None));
    }
}

/// Where a reduction's axes come from.
enum Axes {
    /// Opsets before the axes input: the `axes` attribute (empty: every axis).
    Attribute(Vec<i64>),
    /// The optional second input; `noop` when `noop_with_empty_axes = 1`.
    Input { noop: bool },
}

fn build_reduce(info: &NodeInfo) -> OpResult<Kernel> {
    let reduction = Reduction::ALL
        .into_iter()
        .find(|r| r.op_type() == info.op_type)
        .ok_or_else(|| OpError::Unsupported(format!("{} is not a reduction", info.op_type)))?;
    let keepdims = match info.attrs.int("keepdims", 1)? {
        0 => false,
        1 => true,
        v => {
            return Err(OpError::Attribute {
                name: "keepdims".into(),
                reason: format!("expected 0 or 1, got {v}"),
            })
        }
    };
    let axes = if info.opset < reduction.axes_input_opset() {
        Axes::Attribute(info.attrs.ints("axes")?)
    } else {
        Axes::Input {
            noop: info.attrs.int("noop_with_empty_axes", 0)? != 0,
        }
    };
    Ok(Box::new(move |inputs| {
        let x = input(inputs, 0)?;
        let rank = x.dim() as i64;
        let dims = match &axes {
            Axes::Attribute(list) => resolve_axes(list, rank)?,
            Axes::Input { noop } => {
                let list = input_opt(inputs, 1)
                    .map(ints)
                    .transpose()?
                    .unwrap_or_default();
                if list.is_empty() && *noop {
                    return Ok(vec![x.shallow_clone()]);
                }
                resolve_axes(&list, rank)?
            }
        };
        Ok(vec![reduce(x, reduction, &dims, keepdims)?])
    }))
}

/// `axes` normalised, sorted and deduplicated; every axis when empty.
fn resolve_axes(axes: &[i64], rank: i64) -> OpResult<Vec<i64>> {
    if axes.is_empty() {
        return Ok((0..rank).collect());
    }
    let mut dims = axes
        .iter()
        .map(|&a| norm_axis(a, rank))
        .collect::<OpResult<Vec<_>>>()?;
    dims.sort_unstable();
    dims.dedup();
    Ok(dims)
}

fn reduce(x: &Tensor, reduction: Reduction, dims: &[i64], keep: bool) -> OpResult<Tensor> {
    let float = x.is_floating_point();
    // Reductions without an integer form in libtorch run in f64 and truncate back.
    let via_double = |f: &dyn Fn(&Tensor) -> Result<Tensor, tch::TchError>| {
        if float {
            f(x)
        } else {
            f(&x.f_to_kind(Kind::Double)?)?.f_to_kind(x.kind())
        }
    };
    let sum = |t: &Tensor| t.f_sum_dim_intlist(dims, keep, t.kind());
    let y = match reduction {
        Reduction::Sum => sum(x)?,
        Reduction::SumSquare => sum(&x.f_mul(x)?)?,
        Reduction::L1 => sum(&x.f_abs()?)?,
        Reduction::Mean => via_double(&|t| t.f_mean_dim(dims, keep, t.kind()))?,
        Reduction::L2 => via_double(&|t| t.f_norm_scalaropt_dim(2.0, dims, keep))?,
        Reduction::LogSum => via_double(&|t| sum(t)?.f_log())?,
        Reduction::LogSumExp => via_double(&|t| t.f_logsumexp(dims, keep))?,
        Reduction::Max | Reduction::Min => {
            let extreme = |t: &Tensor| match reduction {
                Reduction::Max => t.f_amax(dims, keep),
                _ => t.f_amin(dims, keep),
            };
            if x.kind() == Kind::Bool {
                extreme(&x.f_to_kind(Kind::Uint8)?)?.f_to_kind(Kind::Bool)?
            } else {
                extreme(x)?
            }
        }
        Reduction::Prod => {
            // libtorch reduces one axis at a time; going from the last axis
            // down keeps the remaining axis numbers valid without keepdims.
            let mut y = x.shallow_clone();
            for &d in dims.iter().rev() {
                y = y.f_prod_dim_int(d, keep, x.kind())?;
            }
            y
        }
    };
    Ok(y)
}

fn build_arg(info: &NodeInfo) -> OpResult<Kernel> {
    let axis = info.attrs.int("axis", 0)?;
    let keepdims = info.attrs.int("keepdims", 1)? != 0;
    let select_last_index = info.attrs.int("select_last_index", 0)? != 0;
    let max = info.op_type == "ArgMax";
    Ok(Box::new(move |inputs| {
        let x = input(inputs, 0)?;
        let dim = norm_axis(axis, x.dim() as i64)?;
        let arg = |t: &Tensor| {
            if max {
                t.f_argmax(dim, keepdims)
            } else {
                t.f_argmin(dim, keepdims)
            }
        };
        let y = if select_last_index {
            // The first extreme of the reversed axis is the last one.
            let last = x.size().get(dim as usize).copied().unwrap_or(1) - 1;
            arg(&x.f_flip([dim])?)?.f_neg()?.f_add_scalar(last)?
        } else {
            arg(x)?
        };
        Ok(vec![y])
    }))
}

#[cfg(test)]
mod tests {
    use super::super::gradcheck::{check_second_derivative, check_unary, kernel_fn};
    use super::super::testing::{assert_approx, attr, build, run};
    use super::*;

    /// [[1, 2, 3], [4, 5, 6]]
    fn matrix() -> Tensor {
        Tensor::from_slice(&[1.0f64, 2.0, 3.0, 4.0, 5.0, 6.0]).view([2, 3])
    }

    #[test]
    fn axes_attribute_and_keepdims() {
        let x = matrix();
        let y = run("ReduceSum", 11, &[attr::ints("axes", &[1])], &[Some(&x)]);
        assert_eq!(y.size(), vec![2, 1]);
        assert_approx(&y, &[6.0, 15.0]);
        let attrs = [attr::ints("axes", &[-2]), attr::int("keepdims", 0)];
        let y = run("ReduceMean", 13, &attrs, &[Some(&x)]);
        assert_eq!(y.size(), vec![3]);
        assert_approx(&y, &[2.5, 3.5, 4.5]);
        // No axes: every axis.
        let y = run("ReduceMax", 13, &[], &[Some(&x)]);
        assert_eq!(y.size(), vec![1, 1]);
        assert_approx(&y, &[6.0]);
        let y = run("ReduceMin", 1, &[attr::int("keepdims", 0)], &[Some(&x)]);
        assert_eq!(y.size(), Vec::<i64>::new());
        assert_approx(&y, &[1.0]);
    }

    #[test]
    fn axes_input_and_noop() {
        let x = matrix();
        let axes = Tensor::from_slice(&[0i64]);
        let y = run("ReduceSum", 13, &[], &[Some(&x), Some(&axes)]);
        assert_approx(&y, &[5.0, 7.0, 9.0]);
        let empty = Tensor::from_slice::<i64>(&[]);
        let y = run("ReduceSum", 13, &[], &[Some(&x), Some(&empty)]);
        assert_approx(&y, &[21.0]);
        let noop = [attr::int("noop_with_empty_axes", 1)];
        let y = run("ReduceSum", 13, &noop, &[Some(&x), Some(&empty)]);
        assert_eq!(y.size(), vec![2, 3]);
        let y = run("ReduceMean", 18, &noop, &[Some(&x)]);
        assert_eq!(y.size(), vec![2, 3]);
        let y = run("ReduceMean", 18, &[], &[Some(&x)]);
        assert_approx(&y, &[3.5]);
        let axes = Tensor::from_slice(&[-1i64]);
        let y = run(
            "ReduceL2",
            18,
            &[attr::int("keepdims", 0)],
            &[Some(&x), Some(&axes)],
        );
        assert_approx(&y, &[14f64.sqrt(), 77f64.sqrt()]);
    }

    #[test]
    fn every_reduction_value() {
        let x = Tensor::from_slice(&[1.0f64, -2.0, 3.0, 0.5]).view([2, 2]);
        let axes = [attr::ints("axes", &[1]), attr::int("keepdims", 0)];
        let check = |op: &str, expected: &[f64]| {
            assert_approx(&run(op, 13, &axes, &[Some(&x)]), expected);
        };
        check("ReduceProd", &[-2.0, 1.5]);
        check("ReduceL1", &[3.0, 3.5]);
        check("ReduceL2", &[5f64.sqrt(), 9.25f64.sqrt()]);
        check("ReduceSumSquare", &[5.0, 9.25]);
        check(
            "ReduceLogSumExp",
            &[
                (1f64.exp() + (-2f64).exp()).ln(),
                (3f64.exp() + 0.5f64.exp()).ln(),
            ],
        );
        let positive = x.abs();
        let y = run("ReduceLogSum", 13, &axes, &[Some(&positive)]);
        assert_approx(&y, &[3f64.ln(), 3.5f64.ln()]);
        // Several axes with ReduceProd, without keepdims.
        let cube = Tensor::arange(8, (Kind::Double, tch::Device::Cpu))
            .f_add_scalar(1.0)
            .unwrap()
            .view([2, 2, 2]);
        let attrs = [attr::ints("axes", &[0, 2]), attr::int("keepdims", 0)];
        let y = run("ReduceProd", 13, &attrs, &[Some(&cube)]);
        assert_approx(&y, &[1.0 * 2.0 * 5.0 * 6.0, 3.0 * 4.0 * 7.0 * 8.0]);
    }

    #[test]
    fn integer_reductions_keep_their_kind() {
        let x = Tensor::from_slice(&[1i32, 2, 3, 4]).view([2, 2]);
        let y = run("ReduceSum", 11, &[attr::ints("axes", &[0])], &[Some(&x)]);
        assert_eq!(y.kind(), Kind::Int);
        let y = run("ReduceMean", 13, &[attr::int("keepdims", 0)], &[Some(&x)]);
        assert_eq!(y.kind(), Kind::Int);
        assert_eq!(i64::try_from(&y).unwrap(), 2);
        let y = run("ReduceProd", 13, &[], &[Some(&x)]);
        assert_eq!(y.kind(), Kind::Int);
        let flags = Tensor::from_slice(&[false, true, false, false]).view([2, 2]);
        let axes = Tensor::from_slice(&[1i64]);
        let y = run("ReduceMax", 20, &[], &[Some(&flags), Some(&axes)]);
        assert_eq!(y.kind(), Kind::Bool);
        assert_eq!(
            Vec::<bool>::try_from(y.flatten(0, -1)).unwrap(),
            vec![true, false]
        );
    }

    #[test]
    fn arg_reductions() {
        let x = Tensor::from_slice(&[2.0f64, 5.0, 5.0, 1.0, 1.0, 0.0]).view([2, 3]);
        let y = run("ArgMax", 13, &[attr::int("axis", 1)], &[Some(&x)]);
        assert_eq!(y.kind(), Kind::Int64);
        assert_eq!(y.size(), vec![2, 1]);
        assert_eq!(Vec::<i64>::try_from(y.flatten(0, -1)).unwrap(), vec![1, 0]);
        let attrs = [
            attr::int("axis", -1),
            attr::int("keepdims", 0),
            attr::int("select_last_index", 1),
        ];
        let y = run("ArgMax", 13, &attrs, &[Some(&x)]);
        assert_eq!(y.size(), vec![2]);
        assert_eq!(Vec::<i64>::try_from(&y).unwrap(), vec![2, 1]);
        let y = run("ArgMin", 13, &attrs, &[Some(&x)]);
        assert_eq!(Vec::<i64>::try_from(&y).unwrap(), vec![0, 2]);
        let y = run("ArgMin", 11, &[], &[Some(&x)]);
        assert_eq!(y.size(), vec![1, 3]);
        assert_eq!(
            Vec::<i64>::try_from(y.flatten(0, -1)).unwrap(),
            vec![1, 1, 1]
        );
    }

    #[test]
    fn axis_out_of_range_is_an_error() {
        let x = matrix();
        let kernel = build("ReduceSum", 11, &[attr::ints("axes", &[2])], 1);
        assert!(kernel(&[Some(&x)]).is_err());
        let kernel = build("ArgMax", 13, &[attr::int("axis", -3)], 1);
        assert!(kernel(&[Some(&x)]).is_err());
    }

    #[test]
    fn second_derivatives() {
        let x = Tensor::from_slice(&[0.7f64, -1.3, 2.1, 0.4, -0.6, 1.8]).view([2, 3]);
        let axes = [attr::ints("axes", &[1])];
        for op in [
            "ReduceSum",
            "ReduceMean",
            "ReduceMax",
            "ReduceMin",
            "ReduceProd",
            "ReduceL1",
            "ReduceL2",
            "ReduceSumSquare",
            "ReduceLogSumExp",
        ] {
            check_unary(op, 13, &axes, &x);
            check_unary(op, 13, &[], &x);
        }
        check_unary("ReduceLogSum", 13, &axes, &x.abs());
        // Axes as an input (opset 18).
        let kernel = build("ReduceL2", 18, &[attr::int("keepdims", 0)], 2);
        let inputs = [x.shallow_clone(), Tensor::from_slice(&[0i64])];
        check_second_derivative(kernel_fn(&kernel, &inputs, 0), &x).unwrap();
        let kernel = build("ReduceMean", 18, &[], 2);
        check_second_derivative(kernel_fn(&kernel, &inputs, 0), &x).unwrap();
    }
}
