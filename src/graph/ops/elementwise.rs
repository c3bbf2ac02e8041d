//! Elementwise ops: arithmetic (Add, Sub, Mul, Div, Pow, Mod), unary math
//! (Sqrt, Exp, Log, Neg, Abs, Reciprocal, Sin, Cos, Tan, Asin, Acos, Atan,
//! Sinh, Cosh, Asinh, Acosh, Atanh), variadic Min, Max, Sum, Mean, Where,
//! comparisons (Equal, Greater, Less, GreaterOrEqual, LessOrEqual, IsNaN,
//! IsInf), logic (Not, And, Or, Xor) and Cast, CastLike.
//!
//! Opsets: every version of each op from its introduction up to 23. Before
//! opset 7 (Add, Sub, Mul, Div, Pow, Equal, Greater, Less, And, Or, Xor), a
//! node broadcasts only with `broadcast = 1`, aligning B with A from `axis`
//! (suffix matching by default); that is rewritten into numpy broadcasting.
//! Cast has two specs: `to` is a type name (string) in opset 1-5 and a type
//! code from 6.
//!
//! Kinds: integer tensors stay in their kind (int64 shape arithmetic stays
//! int64; integer Div truncates toward zero, as C does); every float value of
//! the graph is held in the graph's float kind, so a Cast or CastLike to any
//! float type (float, double, float16, bfloat16) yields that kind and stays
//! differentiable.
//!
//! Gradients: Pow flows only through its base (the exponent is treated as
//! a constant), Mod only through its dividend, Where only through X and Y;
//! comparisons, logic and IsNaN/IsInf have none.
//!
//! Known deviations from the spec:
//! - Without `broadcast = 1` the legacy ops (opset < 7) still broadcast
//!   numpy-style instead of rejecting different shapes.
//! - Cast to float16/bfloat16 keeps the graph's float kind (no rounding to
//!   half precision); `saturate` (float8 only) is ignored; casts to and from
//!   strings and float8/4-bit types are rejected.
//! - Pow with an integer base and a float exponent computes in float and
//!   truncates back to the base's integer kind.

use tch::{Kind, Tensor};

use super::util::{input, unary};
use super::{Differentiable, Kernel, NodeInfo, OpError, OpResult, OpSpec, Registry};
use crate::onnx::DataType;

type Binary = fn(&Tensor, &Tensor) -> Result<Tensor, tch::TchError>;

pub fn register(reg: &mut Registry) {
    // Arithmetic, with the legacy broadcast attributes before opset 7.
    for op_type in ["Add", "Sub", "Mul", "Div"] {
        reg.insert(OpSpec::new(op_type, build_binary).inputs(2..=2));
    }
    reg.insert(
        OpSpec::new("Pow", build_binary)
            .inputs(2..=2)
            .differentiable(Differentiable::Only(&[0])),
    );
    reg.insert(
        OpSpec::new("Mod", build_mod)
            .opsets(10..=23)
            .inputs(2..=2)
            .differentiable(Differentiable::Only(&[0])),
    );

    let unary_math: [(&'static str, i64); 17] = [
        ("Sqrt", 1),
        ("Exp", 1),
        ("Log", 1),
        ("Neg", 1),
        ("Abs", 1),
        ("Reciprocal", 1),
        ("Sin", 7),
        ("Cos", 7),
        ("Tan", 7),
        ("Asin", 7),
        ("Acos", 7),
        ("Atan", 7),
        ("Sinh", 9),
        ("Cosh", 9),
        ("Asinh", 9),
        ("Acosh", 9),
        ("Atanh", 9),
    ];
    for (op_type, first) in unary_math {
        reg.insert(OpSpec::new(op_type, build_unary_math).opsets(first..=23));
    }

    for op_type in ["Min", "Max", "Sum", "Mean"] {
        reg.insert(OpSpec::new(op_type, build_variadic).inputs(1..=usize::MAX));
    }

    reg.insert(
        OpSpec::new("Where", |_| {
            Ok(Box::new(|inputs| {
                let condition = as_bool(input(inputs, 0)?)?;
                Ok(vec![
                    input(inputs, 1)?.f_where_self(&condition, input(inputs, 2)?)?
                ])
            }))
        })
        .opsets(9..=23)
        .inputs(3..=3)
        .differentiable(Differentiable::Only(&[1, 2])),
    );

    let comparisons: [(&'static str, i64); 8] = [
        ("Equal", 1),
        ("Greater", 1),
        ("Less", 1),
        ("GreaterOrEqual", 12),
        ("LessOrEqual", 12),
        ("And", 1),
        ("Or", 1),
        ("Xor", 1),
    ];
    for (op_type, first) in comparisons {
        reg.insert(
            OpSpec::new(op_type, build_binary)
                .opsets(first..=23)
                .inputs(2..=2)
                .differentiable(Differentiable::None),
        );
    }
    reg.insert(
        OpSpec::new("Not", |_| Ok(unary(|x| as_bool(x)?.f_logical_not())))
            .differentiable(Differentiable::None),
    );
    reg.insert(
        OpSpec::new("IsNaN", |_| Ok(unary(Tensor::f_isnan)))
            .opsets(9..=23)
            .differentiable(Differentiable::None),
    );
    reg.insert(
        OpSpec::new("IsInf", build_is_inf)
            .opsets(10..=23)
            .differentiable(Differentiable::None),
    );

    reg.insert(OpSpec::new("Cast", build_cast).opsets(1..=5));
    reg.insert(OpSpec::new("Cast", build_cast).opsets(6..=23));
    reg.insert(
        OpSpec::new("CastLike", build_cast_like)
            .opsets(15..=23)
            .inputs(2..=2)
            .differentiable(Differentiable::Only(&[0])),
    );
}

/// Division; integer tensors truncate toward zero, as ONNX (C) does.
fn divide(a: &Tensor, b: &Tensor) -> Result<Tensor, tch::TchError> {
    if a.is_floating_point() || b.is_floating_point() {
        a.f_div(b)
    } else {
        a.f_div_tensor_mode(b, "trunc")
    }
}

/// `base ^ exponent` in the base's kind (the spec's output type is the base's).
fn power(base: &Tensor, exponent: &Tensor) -> Result<Tensor, tch::TchError> {
    let z = base.f_pow(exponent)?;
    if z.kind() == base.kind() {
        Ok(z)
    } else {
        z.f_to_kind(base.kind())
    }
}

fn as_bool(t: &Tensor) -> Result<Tensor, tch::TchError> {
    if t.kind() == Kind::Bool {
        Ok(t.shallow_clone())
    } else {
        t.f_to_kind(Kind::Bool)
    }
}

fn logical(
    f: fn(&Tensor, &Tensor) -> Result<Tensor, tch::TchError>,
) -> impl Fn(&Tensor, &Tensor) -> Result<Tensor, tch::TchError> {
    move |a, b| f(&as_bool(a)?, &as_bool(b)?)
}

type BoxedBinary = Box<dyn Fn(&Tensor, &Tensor) -> Result<Tensor, tch::TchError> + Send + Sync>;

/// The binary op of `op_type`.
fn binary_fn(op_type: &str) -> OpResult<BoxedBinary> {
    Ok(match op_type {
        "Add" => Box::new(Tensor::f_add),
        "Sub" => Box::new(Tensor::f_sub),
        "Mul" => Box::new(Tensor::f_mul),
        "Div" => Box::new(divide),
        "Pow" => Box::new(power),
        "Equal" => Box::new(Tensor::f_eq_tensor),
        "Greater" => Box::new(Tensor::f_gt_tensor),
        "Less" => Box::new(Tensor::f_lt_tensor),
        "GreaterOrEqual" => Box::new(Tensor::f_ge_tensor),
        "LessOrEqual" => Box::new(Tensor::f_le_tensor),
        "And" => Box::new(logical(Tensor::f_logical_and)),
        "Or" => Box::new(logical(Tensor::f_logical_or)),
        "Xor" => Box::new(logical(Tensor::f_logical_xor)),
        other => {
            return Err(OpError::Unsupported(format!(
                "{other} is not a binary elementwise op"
            )))
        }
    })
}

/// The legacy (opset < 7) broadcast of B against A: `Some(axis)` when the
/// node sets `broadcast = 1` (`axis` is `None` for suffix matching).
fn legacy_broadcast(info: &NodeInfo) -> OpResult<Option<Option<i64>>> {
    if info.opset >= 7 {
        return Ok(None);
    }
    match info.attrs.int("broadcast", 0)? {
        0 => Ok(None),
        1 => Ok(Some(info.attrs.int_opt("axis")?)),
        v => Err(OpError::Attribute {
            name: "broadcast".into(),
            reason: format!("expected 0 or 1, got {v}"),
        }),
    }
}

/// B reshaped so that numpy broadcasting against A matches the legacy rule:
/// B's shape is a contiguous run of A's shape starting at `axis`.
fn align_legacy(a: &Tensor, b: &Tensor, axis: Option<i64>) -> OpResult<Tensor> {
    let (rank_a, rank_b) = (a.dim() as i64, b.dim() as i64);
    let start = match axis {
        None => rank_a - rank_b,
        Some(axis) if axis < 0 => axis.saturating_add(rank_a),
        Some(axis) => axis,
    };
    if rank_b > rank_a || start < 0 || start.saturating_add(rank_b) > rank_a {
        return Err(OpError::Attribute {
            name: "axis".into(),
            reason: format!(
                "B of shape {:?} cannot be broadcast to A of shape {:?} from axis {start}",
                b.size(),
                a.size()
            ),
        });
    }
    let mut shape = b.size();
    shape.resize((rank_a - start) as usize, 1);
    Ok(b.f_reshape(shape.as_slice())?)
}

fn build_binary(info: &NodeInfo) -> OpResult<Kernel> {
    let f = binary_fn(info.op_type)?;
    let legacy = legacy_broadcast(info)?;
    Ok(Box::new(move |inputs| {
        let a = input(inputs, 0)?;
        let b = input(inputs, 1)?;
        let y = match legacy {
            Some(axis) => f(a, &align_legacy(a, b, axis)?)?,
            None => f(a, b)?,
        };
        Ok(vec![y])
    }))
}

fn build_mod(info: &NodeInfo) -> OpResult<Kernel> {
    let fmod = match info.attrs.int("fmod", 0)? {
        0 => false,
        1 => true,
        v => {
            return Err(OpError::Attribute {
                name: "fmod".into(),
                reason: format!("expected 0 or 1, got {v}"),
            })
        }
    };
    Ok(Box::new(move |inputs| {
        let a = input(inputs, 0)?;
        let b = input(inputs, 1)?;
        // fmod = 0: the result takes the divisor's sign (Python's %);
        // fmod = 1: the dividend's (C's fmod).
        let y = if fmod {
            a.f_fmod_tensor(b)?
        } else {
            a.f_remainder_tensor(b)?
        };
        Ok(vec![y])
    }))
}

fn build_unary_math(info: &NodeInfo) -> OpResult<Kernel> {
    let f: fn(&Tensor) -> Result<Tensor, tch::TchError> = match info.op_type {
        "Sqrt" => Tensor::f_sqrt,
        "Exp" => Tensor::f_exp,
        "Log" => Tensor::f_log,
        "Neg" => Tensor::f_neg,
        "Abs" => Tensor::f_abs,
        "Reciprocal" => Tensor::f_reciprocal,
        "Sin" => Tensor::f_sin,
        "Cos" => Tensor::f_cos,
        "Tan" => Tensor::f_tan,
        "Asin" => Tensor::f_asin,
        "Acos" => Tensor::f_acos,
        "Atan" => Tensor::f_atan,
        "Sinh" => Tensor::f_sinh,
        "Cosh" => Tensor::f_cosh,
        "Asinh" => Tensor::f_asinh,
        "Acosh" => Tensor::f_acosh,
        "Atanh" => Tensor::f_atanh,
        other => {
            return Err(OpError::Unsupported(format!(
                "{other} is not a unary elementwise op"
            )))
        }
    };
    Ok(unary(f))
}

fn build_variadic(info: &NodeInfo) -> OpResult<Kernel> {
    let (combine, mean): (Binary, bool) = match info.op_type {
        "Min" => (Tensor::f_minimum, false),
        "Max" => (Tensor::f_maximum, false),
        "Sum" => (Tensor::f_add, false),
        "Mean" => (Tensor::f_add, true),
        other => {
            return Err(OpError::Unsupported(format!(
                "{other} is not a variadic elementwise op"
            )))
        }
    };
    Ok(Box::new(move |inputs| {
        let mut acc = input(inputs, 0)?.shallow_clone();
        for index in 1..inputs.len() {
            acc = combine(&acc, input(inputs, index)?)?;
        }
        if mean && inputs.len() > 1 {
            acc = acc.f_div_scalar(inputs.len() as f64)?;
        }
        Ok(vec![acc])
    }))
}

fn build_is_inf(info: &NodeInfo) -> OpResult<Kernel> {
    let negative = info.attrs.int("detect_negative", 1)? != 0;
    let positive = info.attrs.int("detect_positive", 1)? != 0;
    Ok(unary(move |x| match (negative, positive) {
        (true, true) => x.f_isinf(),
        (true, false) => x.f_isneginf(),
        (false, true) => x.f_isposinf(),
        (false, false) => Tensor::f_zeros(x.size(), (Kind::Bool, x.device())),
    }))
}

/// The ONNX type named by Cast-1's string `to` (a `TensorProto.DataType` name).
fn data_type_from_name(name: &str) -> Option<DataType> {
    let code = match name.to_ascii_uppercase().as_str() {
        "FLOAT" => 1,
        "UINT8" => 2,
        "INT8" => 3,
        "UINT16" => 4,
        "INT16" => 5,
        "INT32" => 6,
        "INT64" => 7,
        "STRING" => 8,
        "BOOL" => 9,
        "FLOAT16" => 10,
        "DOUBLE" => 11,
        "UINT32" => 12,
        "UINT64" => 13,
        "COMPLEX64" => 14,
        "COMPLEX128" => 15,
        "BFLOAT16" => 16,
        _ => return None,
    };
    Some(DataType(code))
}

/// The kind a value of ONNX type `to` is held in: the graph's float kind for
/// every float type.
fn target_kind(to: DataType, float_kind: Kind) -> OpResult<Kind> {
    if to.is_float() {
        return Ok(float_kind);
    }
    to.kind().ok_or_else(|| OpError::Attribute {
        name: "to".into(),
        reason: format!("casting to {to} is not supported"),
    })
}

fn cast_to(x: &Tensor, kind: Kind) -> Result<Tensor, tch::TchError> {
    if x.kind() == kind {
        Ok(x.shallow_clone())
    } else {
        x.f_to_kind(kind)
    }
}

fn build_cast(info: &NodeInfo) -> OpResult<Kernel> {
    let to = if info.opset < 6 {
        let name = info
            .attrs
            .string_opt("to")?
            .ok_or_else(|| OpError::Attribute {
                name: "to".into(),
                reason: "required but missing".into(),
            })?;
        data_type_from_name(&name).ok_or_else(|| OpError::Attribute {
            name: "to".into(),
            reason: format!("unknown type name {name:?}"),
        })?
    } else {
        let code = info.attrs.int_req("to")?;
        DataType(i32::try_from(code).map_err(|_| OpError::Attribute {
            name: "to".into(),
            reason: format!("unknown type code {code}"),
        })?)
    };
    let kind = target_kind(to, info.float_kind)?;
    Ok(unary(move |x| cast_to(x, kind)))
}

fn build_cast_like(info: &NodeInfo) -> OpResult<Kernel> {
    let float_kind = info.float_kind;
    Ok(Box::new(move |inputs| {
        let x = input(inputs, 0)?;
        let target = input(inputs, 1)?;
        let kind = if target.is_floating_point() {
            float_kind
        } else {
            target.kind()
        };
        Ok(vec![cast_to(x, kind)?])
    }))
}

#[cfg(test)]
mod tests {
    use super::super::gradcheck::{check_op, check_second_derivative, kernel_fn, Head};
    use super::super::testing::{assert_approx, attr, build, build_error, int_values, run};
    use super::*;

    #[test]
    fn arithmetic_broadcasts_numpy_style() {
        let a = Tensor::from_slice(&[1.0f64, 2.0, 3.0, 4.0, 5.0, 6.0]).view([2, 3]);
        let b = Tensor::from_slice(&[10.0f64, 20.0, 30.0]);
        assert_approx(
            &run("Add", 14, &[], &[&a, &b]),
            &[11.0, 22.0, 33.0, 14.0, 25.0, 36.0],
        );
        assert_approx(
            &run("Sub", 14, &[], &[&a, &b]),
            &[-9.0, -18.0, -27.0, -6.0, -15.0, -24.0],
        );
        assert_approx(
            &run("Mul", 7, &[], &[&a, &b]),
            &[10.0, 40.0, 90.0, 40.0, 100.0, 180.0],
        );
        assert_approx(
            &run("Div", 13, &[], &[&b, &a]),
            &[10.0, 10.0, 10.0, 2.5, 4.0, 5.0],
        );
    }

    #[test]
    fn legacy_broadcast_aligns_from_axis() {
        let a = Tensor::zeros([2, 3, 2], (Kind::Double, tch::Device::Cpu));
        let b = Tensor::from_slice(&[1.0f64, 2.0, 3.0]);
        let attrs = [attr::int("broadcast", 1), attr::int("axis", 1)];
        let y = run("Add", 6, &attrs, &[&a, &b]);
        assert_eq!(y.size(), vec![2, 3, 2]);
        assert_approx(
            &y,
            &[1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 1.0, 1.0, 2.0, 2.0, 3.0, 3.0],
        );
        // Suffix matching by default.
        let b = Tensor::from_slice(&[1.0f64, 2.0]);
        let y = run(
            "Mul",
            1,
            &[attr::int("broadcast", 1)],
            &[&a.ones_like(), &b],
        );
        assert_approx(
            &y,
            &[1.0, 2.0, 1.0, 2.0, 1.0, 2.0, 1.0, 2.0, 1.0, 2.0, 1.0, 2.0],
        );
        let kernel = build(
            "Add",
            6,
            &[attr::int("broadcast", 1), attr::int("axis", 2)],
            2,
        );
        let b = Tensor::from_slice(&[1.0f64, 2.0, 3.0]);
        assert!(kernel(&[Some(&a), Some(&b)]).is_err());
    }

    #[test]
    fn integer_arithmetic_stays_integer() {
        let shape = Tensor::from_slice(&[7i64, -7, 9]);
        let two = Tensor::from_slice(&[2i64]);
        let y = run("Div", 14, &[], &[&shape, &two]);
        assert_eq!(y.kind(), Kind::Int64);
        assert_eq!(int_values(&y), vec![3, -3, 4]);
        let y = run("Mul", 14, &[], &[&shape, &two]);
        assert_eq!(y.kind(), Kind::Int64);
        let y = run(
            "Add",
            14,
            &[],
            &[&Tensor::from_slice(&[250u8]), &Tensor::from_slice(&[10u8])],
        );
        assert_eq!(y.kind(), Kind::Uint8);
        assert_eq!(int_values(&y), vec![4]);
        let y = run("Mod", 13, &[], &[&shape, &Tensor::from_slice(&[4i64])]);
        assert_eq!(int_values(&y), vec![3, 1, 1]);
        let y = run(
            "Mod",
            13,
            &[attr::int("fmod", 1)],
            &[&shape, &Tensor::from_slice(&[4i64])],
        );
        assert_eq!(int_values(&y), vec![3, -3, 1]);
    }

    #[test]
    fn pow_keeps_the_base_kind() {
        let base = Tensor::from_slice(&[1.0f64, 2.0, 3.0]);
        let exponent = Tensor::from_slice(&[2i64]);
        let y = run("Pow", 15, &[], &[&base, &exponent]);
        assert_eq!(y.kind(), Kind::Double);
        assert_approx(&y, &[1.0, 4.0, 9.0]);
        let ints = Tensor::from_slice(&[1i32, 2, 3]);
        let y = run(
            "Pow",
            15,
            &[],
            &[&ints, &Tensor::from_slice(&[1.0f64, 2.0, 3.0])],
        );
        assert_eq!(y.kind(), Kind::Int);
        assert_eq!(int_values(&y), vec![1, 4, 27]);
    }

    #[test]
    fn unary_math_values() {
        let x = Tensor::from_slice(&[0.25f64, 1.0, 4.0]);
        assert_approx(&run("Sqrt", 13, &[], &[&x]), &[0.5, 1.0, 2.0]);
        assert_approx(&run("Reciprocal", 13, &[], &[&x]), &[4.0, 1.0, 0.25]);
        assert_approx(&run("Log", 13, &[], &[&x]), &[0.25f64.ln(), 0.0, 4f64.ln()]);
        assert_approx(
            &run("Exp", 13, &[], &[&x]),
            &[0.25f64.exp(), 1f64.exp(), 4f64.exp()],
        );
        assert_approx(&run("Neg", 13, &[], &[&x]), &[-0.25, -1.0, -4.0]);
        assert_approx(
            &run("Atan", 7, &[], &[&x]),
            &[0.25f64.atan(), 1f64.atan(), 4f64.atan()],
        );
        let ints = Tensor::from_slice(&[-3i64, 2]);
        let y = run("Abs", 13, &[], &[&ints]);
        assert_eq!(y.kind(), Kind::Int64);
        assert_eq!(int_values(&y), vec![3, 2]);
    }

    #[test]
    fn variadic_ops() {
        let a = Tensor::from_slice(&[1.0f64, 5.0]);
        let b = Tensor::from_slice(&[3.0f64]);
        let c = Tensor::from_slice(&[2.0f64, 2.0]);
        assert_approx(&run("Max", 13, &[], &[&a, &b, &c]), &[3.0, 5.0]);
        assert_approx(&run("Min", 13, &[], &[&a, &b, &c]), &[1.0, 2.0]);
        assert_approx(&run("Sum", 13, &[], &[&a, &b, &c]), &[6.0, 10.0]);
        assert_approx(&run("Mean", 13, &[], &[&a, &b, &c]), &[2.0, 10.0 / 3.0]);
        assert_approx(&run("Sum", 13, &[], &[&a]), &[1.0, 5.0]);
        let ints = Tensor::from_slice(&[4i64, -1]);
        let y = run("Max", 13, &[], &[&ints, &Tensor::from_slice(&[0i64])]);
        assert_eq!(y.kind(), Kind::Int64);
        assert_eq!(int_values(&y), vec![4, 0]);
    }

    #[test]
    fn where_comparisons_and_logic() {
        let a = Tensor::from_slice(&[1.0f64, 2.0, 3.0]);
        let b = Tensor::from_slice(&[2.0f64]);
        let check = |op: &str, expected: &[bool]| {
            let y = run(op, 16, &[], &[&a, &b]);
            assert_eq!(y.kind(), Kind::Bool, "{op}");
            assert_eq!(Vec::<bool>::try_from(&y).unwrap(), expected, "{op}");
        };
        check("Equal", &[false, true, false]);
        check("Greater", &[false, false, true]);
        check("Less", &[true, false, false]);
        check("GreaterOrEqual", &[false, true, true]);
        check("LessOrEqual", &[true, true, false]);
        let p = Tensor::from_slice(&[true, true, false, false]);
        let q = Tensor::from_slice(&[true, false, true, false]);
        let logic = |op: &str| Vec::<bool>::try_from(&run(op, 7, &[], &[&p, &q])).unwrap();
        assert_eq!(logic("And"), vec![true, false, false, false]);
        assert_eq!(logic("Or"), vec![true, true, true, false]);
        assert_eq!(logic("Xor"), vec![false, true, true, false]);
        let y = run("Not", 1, &[], &[&p]);
        assert_eq!(
            Vec::<bool>::try_from(&y).unwrap(),
            vec![false, false, true, true]
        );
        let cond = Tensor::from_slice(&[true, false, true]);
        let y = run("Where", 16, &[], &[&cond, &a, &b]);
        assert_approx(&y, &[1.0, 2.0, 3.0]);
        let y = run("Where", 16, &[], &[&cond.logical_not(), &a, &b]);
        assert_approx(&y, &[2.0, 2.0, 2.0]);
        let special = Tensor::from_slice(&[f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 0.0]);
        let y = run("IsNaN", 13, &[], &[&special]);
        assert_eq!(
            Vec::<bool>::try_from(&y).unwrap(),
            vec![true, false, false, false]
        );
        let y = run("IsInf", 20, &[attr::int("detect_negative", 0)], &[&special]);
        assert_eq!(
            Vec::<bool>::try_from(&y).unwrap(),
            vec![false, true, false, false]
        );
    }

    #[test]
    fn cast_targets() {
        let x = Tensor::from_slice(&[-1.7f64, 0.0, 2.9]);
        // Every float type becomes the graph's float kind (f64 in tests).
        for to in [1, 10, 11, 16] {
            let y = run("Cast", 13, &[attr::int("to", to)], &[&x]);
            assert_eq!(y.kind(), Kind::Double, "to {to}");
        }
        let y = run("Cast", 13, &[attr::int("to", 7)], &[&x]);
        assert_eq!(y.kind(), Kind::Int64);
        assert_eq!(int_values(&y), vec![-1, 0, 2]);
        let y = run("Cast", 13, &[attr::int("to", 9)], &[&x]);
        assert_eq!(Vec::<bool>::try_from(&y).unwrap(), vec![true, false, true]);
        let y = run("Cast", 1, &[attr::string("to", "INT32")], &[&x]);
        assert_eq!(y.kind(), Kind::Int);
        let y = run(
            "Cast",
            6,
            &[attr::int("to", 1)],
            &[&Tensor::from_slice(&[3i64])],
        );
        assert_eq!(y.kind(), Kind::Double);
        let y = run("CastLike", 15, &[], &[&Tensor::from_slice(&[3i64]), &x]);
        assert_eq!(y.kind(), Kind::Double);
        let y = run("CastLike", 15, &[], &[&x, &Tensor::from_slice(&[1u8])]);
        assert_eq!(y.kind(), Kind::Uint8);
        // Strings are refused when the kernel is built, naming the attribute.
        let err = build_error("Cast", 13, &[attr::int("to", 8)], 1, 1);
        assert!(err.contains("`to`"), "{err}");
    }

    #[test]
    fn second_derivatives_arithmetic() {
        let a = Tensor::from_slice(&[0.7f64, -1.3, 2.1, 0.4, -0.6, 1.8]).view([2, 3]);
        let b = Tensor::from_slice(&[1.5f64, -0.8, 2.2]);
        for op in ["Add", "Sub", "Mul", "Div"] {
            check_op(op, 14, &[], &[&a, &b], 0, Head::Output);
            check_op(op, 14, &[], &[&a, &b], 1, Head::Output);
        }
        // Pow: through the base, with a float and an integer exponent.
        let base = a.abs() + 0.2;
        check_op("Pow", 15, &[], &[&base, &b], 0, Head::Output);
        check_op(
            "Pow",
            15,
            &[],
            &[&base, &Tensor::from_slice(&[3i64])],
            0,
            Head::Output,
        );
        check_op(
            "Pow",
            15,
            &[],
            &[&a, &Tensor::from_slice(&[2.0f64])],
            0,
            Head::Output,
        );
    }

    #[test]
    fn second_derivatives_unary_and_variadic() {
        let positive = Tensor::from_slice(&[0.3f64, 1.7, 0.9, 2.4]);
        for op in [
            "Sqrt",
            "Log",
            "Exp",
            "Reciprocal",
            "Neg",
            "Abs",
            "Sin",
            "Cos",
            "Atan",
        ] {
            check_op(op, 13, &[], &[&positive], 0, Head::Output);
        }
        let unit = Tensor::from_slice(&[0.3f64, -0.5, 0.1]);
        for op in ["Asin", "Acos", "Atanh", "Tan", "Sinh", "Cosh", "Asinh"] {
            check_op(op, 13, &[], &[&unit], 0, Head::Output);
        }
        let a = Tensor::from_slice(&[0.7f64, -1.3, 2.1]);
        let b = Tensor::from_slice(&[0.2f64, 0.5, -0.4]);
        for op in ["Max", "Min", "Sum", "Mean"] {
            check_op(op, 13, &[], &[&a, &b], 0, Head::Output);
            check_op(op, 13, &[], &[&a, &b], 1, Head::Output);
        }
        let cond = Tensor::from_slice(&[true, false, true]);
        check_op("Where", 16, &[], &[&cond, &a, &b], 1, Head::Output);
        check_op("Where", 16, &[], &[&cond, &a, &b], 2, Head::Output);
        let kernel = build("Cast", 13, &[attr::int("to", 1)], 1);
        check_second_derivative(kernel_fn(&kernel, &[a.shallow_clone()], 0), &a).unwrap();
    }
}
