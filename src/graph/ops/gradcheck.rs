//! Test support: second derivatives through a kernel, from tch autograd,
//! against central finite differences, in f64.
//!
//! For `y = f(x)` and fixed random `w`, `u`: `g(x) = d/dx sum(w * y)` is built
//! with `create_graph`, then `s(x) = sum(u * g(x))`; autograd's `ds/dx` (a
//! Hessian-vector product, i.e. double backward) is compared with finite
//! differences of `s`. I-BAU needs exactly this through every op.

use tch::{Kind, Tensor};

fn first_order(
    f: &dyn Fn(&Tensor) -> Tensor,
    x: &Tensor,
    w: &Tensor,
    create_graph: bool,
) -> Tensor {
    let y = f(x);
    let loss = (y * w).sum(Kind::Double);
    Tensor::run_backward(&[loss], &[x], true, create_graph).remove(0)
}

/// Checks `f`'s second derivatives at `x` (f64). Returns the worst relative
/// error on failure.
pub fn check_second_derivative(f: impl Fn(&Tensor) -> Tensor, x: &Tensor) -> Result<(), String> {
    tch::manual_seed(7);
    let x = x.to_kind(Kind::Double).detach().set_requires_grad(true);
    let y = f(&x);
    let w = Tensor::randn(y.size(), (Kind::Double, x.device()));
    let u = Tensor::randn(x.size(), (Kind::Double, x.device()));
    let g = first_order(&f, &x, &w, true);
    let s = (&g * &u).sum(Kind::Double);
    if !s.requires_grad() {
        // The first derivative does not depend on x (linear op): its second
        // derivative is zero, which finite differences check below.
    }
    let analytic = if s.requires_grad() {
        Tensor::run_backward(&[s], &[&x], false, false).remove(0)
    } else {
        x.zeros_like()
    };
    let eps = 1e-6;
    let flat = x.detach().flatten(0, -1);
    let n = flat.size()[0];
    let mut worst = 0.0f64;
    for i in 0..n {
        let plus = flat.copy();
        let _ = plus.get(i).f_add_scalar_(eps);
        let minus = flat.copy();
        let _ = minus.get(i).f_add_scalar_(-eps);
        let eval = |v: &Tensor| -> f64 {
            let v = v.view(x.size().as_slice()).set_requires_grad(true);
            let g = first_order(&f, &v, &w, false);
            (g * &u).sum(Kind::Double).double_value(&[])
        };
        let numeric = (eval(&plus) - eval(&minus)) / (2.0 * eps);
        let a = analytic.flatten(0, -1).double_value(&[i]);
        let err = (a - numeric).abs() / (1.0 + numeric.abs().max(a.abs()));
        worst = worst.max(err);
        if err > 1e-4 {
            return Err(format!("element {i}: autograd {a}, finite differences {numeric} (relative error {err:.2e})"));
        }
    }
    let _ = worst;
    Ok(())
}

/// A tensor's values as f64, flattened.
pub fn values(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.to_kind(Kind::Double).flatten(0, -1)).expect("f64 values")
}

/// Asserts `t` holds `expected` within 1e-6.
pub fn assert_close(t: &Tensor, expected: &[f64]) {
    let got = values(t);
    assert_eq!(
        got.len(),
        expected.len(),
        "got {got:?}, expected {expected:?}"
    );
    for (g, e) in got.iter().zip(expected) {
        assert!((g - e).abs() < 1e-6, "got {got:?}, expected {expected:?}");
    }
}

/// Runs `kernel` on `inputs`, the `wrt`-th of which is the variable.
pub fn kernel_fn<'a>(
    kernel: &'a super::Kernel,
    inputs: &'a [Tensor],
    wrt: usize,
) -> impl Fn(&Tensor) -> Tensor + 'a {
    move |x: &Tensor| {
        let args: Vec<Option<&Tensor>> = inputs
            .iter()
            .enumerate()
            .map(|(i, t)| Some(if i == wrt { x } else { t }))
            .collect();
        kernel(&args).expect("kernel runs").remove(0)
    }
}

/// Builds the kernel of `op_type` (default domain, `opset`) with `attrs` in f64 on CPU.
pub fn build(
    op_type: &str,
    opset: i64,
    attrs: &[crate::onnx::proto::AttributeProto],
    num_inputs: usize,
) -> super::Kernel {
    let reg = super::Registry::standard();
    let spec = reg
        .find(op_type, opset)
        .unwrap_or_else(|| panic!("{op_type} v{opset} registered"));
    let info = super::NodeInfo {
        name: "test",
        op_type,
        opset,
        attrs: super::Attrs::new(attrs),
        num_inputs,
        num_outputs: 1,
        float_kind: Kind::Double,
        device: tch::Device::Cpu,
    };
    (spec.build)(&info).expect("kernel builds")
}

/// Attribute constructors for tests.
pub mod attr {
    use crate::onnx::proto::{attribute_proto::AttributeType, AttributeProto};

    pub fn int(name: &str, v: i64) -> AttributeProto {
        AttributeProto {
            name: Some(name.into()),
            i: Some(v),
            r#type: Some(AttributeType::Int as i32),
            ..Default::default()
        }
    }
    pub fn float(name: &str, v: f32) -> AttributeProto {
        AttributeProto {
            name: Some(name.into()),
            f: Some(v),
            r#type: Some(AttributeType::Float as i32),
            ..Default::default()
        }
    }
    pub fn ints(name: &str, v: &[i64]) -> AttributeProto {
        AttributeProto {
            name: Some(name.into()),
            ints: v.to_vec(),
            r#type: Some(AttributeType::Ints as i32),
            ..Default::default()
        }
    }
    pub fn string(name: &str, v: &str) -> AttributeProto {
        AttributeProto {
            name: Some(name.into()),
            s: Some(v.as_bytes().to_vec()),
            r#type: Some(AttributeType::String as i32),
            ..Default::default()
        }
    }
}
