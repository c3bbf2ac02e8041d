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

/// What a check differentiates, given the kernel's first output.
#[derive(Debug, Clone, Copy)]
pub enum Head {
    /// The output itself.
    Output,
    /// Its square: an op linear in the variable has a zero second derivative
    /// of its own, and the square makes the derivative of its backward count.
    Square,
    /// Its tanh: the same, bounded.
    Tanh,
}

impl Head {
    fn apply(self, y: Tensor) -> Tensor {
        match self {
            Head::Output => y,
            Head::Square => &y * &y,
            Head::Tanh => y.tanh(),
        }
    }
}

/// Checks the second derivatives of `head(kernel(inputs)[0])` with respect to
/// input `wrt`, the others held fixed; panics on failure.
pub fn check_input(kernel: &super::Kernel, inputs: &[Tensor], wrt: usize, head: Head) {
    let f = kernel_fn(kernel, inputs, wrt);
    check_second_derivative(|x| head.apply(f(x)), &inputs[wrt])
        .unwrap_or_else(|e| panic!("second derivatives, input {wrt}: {e}"));
}

/// Checks the second derivatives of `head(kernel(inputs)[0])` with respect to
/// the first `joint` inputs together (mixed derivatives included), the rest
/// held fixed; panics on failure.
pub fn check_joint(kernel: &super::Kernel, inputs: &[Tensor], joint: usize, head: Head) {
    let shapes: Vec<Vec<i64>> = inputs[..joint].iter().map(|t| t.size()).collect();
    let flat = Tensor::cat(
        &inputs[..joint]
            .iter()
            .map(|t| t.flatten(0, -1))
            .collect::<Vec<_>>(),
        0,
    );
    let f = |v: &Tensor| {
        let mut offset = 0;
        let mut parts: Vec<Tensor> = shapes
            .iter()
            .map(|s| {
                let len: i64 = s.iter().product();
                let part = v.narrow(0, offset, len).reshape(s.as_slice());
                offset += len;
                part
            })
            .collect();
        parts.extend(inputs[joint..].iter().map(Tensor::shallow_clone));
        let args: Vec<Option<&Tensor>> = parts.iter().map(Some).collect();
        head.apply(kernel(&args).expect("kernel runs").remove(0))
    };
    check_second_derivative(f, &flat)
        .unwrap_or_else(|e| panic!("second derivatives, inputs 0..{joint}: {e}"));
}

/// Builds `op` (one output, [`super::testing::build`]) and checks its second
/// derivatives with respect to input `wrt`; panics naming the op on failure.
pub fn check_op(
    op: &str,
    opset: i64,
    attrs: &[crate::onnx::proto::AttributeProto],
    inputs: &[&Tensor],
    wrt: usize,
    head: Head,
) {
    let kernel = super::testing::build(op, opset, attrs, inputs.len());
    let inputs: Vec<Tensor> = inputs.iter().map(|t| t.shallow_clone()).collect();
    let f = kernel_fn(&kernel, &inputs, wrt);
    check_second_derivative(|x| head.apply(f(x)), &inputs[wrt])
        .unwrap_or_else(|e| panic!("{op}-{opset} {attrs:?}, input {wrt}: {e}"));
}

/// [`check_op`] for a one-input op, through its output.
pub fn check_unary(op: &str, opset: i64, attrs: &[crate::onnx::proto::AttributeProto], x: &Tensor) {
    check_op(op, opset, attrs, &[x], 0, Head::Output);
}
