//! Test harness for op kernels, shared by every op file's tests: build a
//! kernel from the registry as the importer would (f64, CPU), run it, read
//! values back and compare them. Second derivatives are in [`super::gradcheck`].

use tch::{Kind, Tensor};

use super::{Attrs, Kernel, NodeInfo, OpResult, Registry};
use crate::onnx::proto::AttributeProto;

/// Builds `op` at `opset` for a node of `num_inputs` inputs and `num_outputs`
/// outputs, which must be registered and within the spec's counts (the
/// importer checks those before any builder runs).
pub fn try_build(
    op: &str,
    opset: i64,
    attrs: &[AttributeProto],
    num_inputs: usize,
    num_outputs: usize,
) -> OpResult<Kernel> {
    let reg = Registry::standard();
    let spec = reg
        .find(op, opset)
        .unwrap_or_else(|| panic!("{op}-{opset} is registered"));
    assert!(
        spec.inputs.contains(&num_inputs),
        "{op}-{opset} takes {:?} inputs, not {num_inputs}",
        spec.inputs
    );
    assert!(
        spec.outputs.contains(&num_outputs),
        "{op}-{opset} takes {:?} outputs, not {num_outputs}",
        spec.outputs
    );
    let info = NodeInfo {
        name: "test",
        op_type: op,
        opset,
        attrs: Attrs::new(attrs),
        num_inputs,
        num_outputs,
        float_kind: Kind::Double,
        device: tch::Device::Cpu,
    };
    (spec.build)(&info)
}

/// [`try_build`] for a node of one output, which must build.
pub fn build(op: &str, opset: i64, attrs: &[AttributeProto], num_inputs: usize) -> Kernel {
    build_with_outputs(op, opset, attrs, num_inputs, 1)
}

/// [`try_build`], which must succeed.
pub fn build_with_outputs(
    op: &str,
    opset: i64,
    attrs: &[AttributeProto],
    num_inputs: usize,
    num_outputs: usize,
) -> Kernel {
    try_build(op, opset, attrs, num_inputs, num_outputs)
        .unwrap_or_else(|e| panic!("{op}-{opset} builds: {e}"))
}

/// The message [`try_build`] fails with.
pub fn build_error(
    op: &str,
    opset: i64,
    attrs: &[AttributeProto],
    num_inputs: usize,
    num_outputs: usize,
) -> String {
    match try_build(op, opset, attrs, num_inputs, num_outputs) {
        Ok(_) => panic!("{op}-{opset} builds"),
        Err(e) => e.to_string(),
    }
}

/// The inputs tests hand a kernel: one tensor, tensors (where [`omitted`]
/// stands for an omitted optional input), references, or options.
pub trait Inputs {
    fn args(&self) -> Vec<Option<&Tensor>>;
}

impl Inputs for Tensor {
    fn args(&self) -> Vec<Option<&Tensor>> {
        vec![Some(self)]
    }
}

impl Inputs for [Tensor] {
    fn args(&self) -> Vec<Option<&Tensor>> {
        self.iter().map(|t| (!is_omitted(t)).then_some(t)).collect()
    }
}

impl<const N: usize> Inputs for [Tensor; N] {
    fn args(&self) -> Vec<Option<&Tensor>> {
        self.as_slice().args()
    }
}

impl Inputs for [&Tensor] {
    fn args(&self) -> Vec<Option<&Tensor>> {
        self.iter().map(|&t| Some(t)).collect()
    }
}

impl<const N: usize> Inputs for [&Tensor; N] {
    fn args(&self) -> Vec<Option<&Tensor>> {
        self.as_slice().args()
    }
}

impl Inputs for [Option<&Tensor>] {
    fn args(&self) -> Vec<Option<&Tensor>> {
        self.to_vec()
    }
}

impl<const N: usize> Inputs for [Option<&Tensor>; N] {
    fn args(&self) -> Vec<Option<&Tensor>> {
        self.to_vec()
    }
}

/// The inputs of an op that takes none (`Constant`).
pub const NO_INPUTS: &[Tensor] = &[];

/// Stands for an omitted optional input in a list of tensors.
pub fn omitted() -> Tensor {
    Tensor::from_slice::<i8>(&[])
}

fn is_omitted(t: &Tensor) -> bool {
    !t.defined() || (t.dim() == 1 && t.size()[0] == 0 && t.kind() == Kind::Int8)
}

/// Runs `kernel`, which must succeed, and returns its outputs.
pub fn call_all(kernel: &Kernel, inputs: &(impl Inputs + ?Sized)) -> Vec<Tensor> {
    kernel(&inputs.args()).unwrap_or_else(|e| panic!("the kernel runs: {e}"))
}

/// The first output of [`call_all`].
pub fn call(kernel: &Kernel, inputs: &(impl Inputs + ?Sized)) -> Tensor {
    call_all(kernel, inputs).remove(0)
}

/// Builds `op` for `inputs` and `num_outputs` outputs, and runs it.
pub fn try_run(
    op: &str,
    opset: i64,
    attrs: &[AttributeProto],
    inputs: &(impl Inputs + ?Sized),
    num_outputs: usize,
) -> OpResult<Vec<Tensor>> {
    let args = inputs.args();
    let kernel = try_build(op, opset, attrs, args.len(), num_outputs)?;
    kernel(&args)
}

/// [`try_run`] with one output, which must succeed.
pub fn run(
    op: &str,
    opset: i64,
    attrs: &[AttributeProto],
    inputs: &(impl Inputs + ?Sized),
) -> Tensor {
    try_run(op, opset, attrs, inputs, 1)
        .unwrap_or_else(|e| panic!("{op}-{opset} runs: {e}"))
        .remove(0)
}

/// An int64 vector.
pub fn ints(v: &[i64]) -> Tensor {
    Tensor::from_slice(v)
}

/// An f64 vector.
pub fn floats(v: &[f64]) -> Tensor {
    Tensor::from_slice(v)
}

/// 0, 1, 2, ... in f64, in `shape`.
pub fn arange(shape: &[i64]) -> Tensor {
    let n: i64 = shape.iter().product();
    Tensor::arange(n, (Kind::Double, tch::Device::Cpu)).reshape(shape)
}

/// Standard normal f64 values in `shape`, the same for the same `seed`.
pub fn seeded(shape: &[i64], seed: i64) -> Tensor {
    tch::manual_seed(seed);
    Tensor::randn(shape, (Kind::Double, tch::Device::Cpu))
}

/// A tensor's values as f64, flattened.
pub fn values(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.to_kind(Kind::Double).flatten(0, -1)).expect("f64 values")
}

/// A tensor's values as i64, flattened.
pub fn int_values(t: &Tensor) -> Vec<i64> {
    Vec::<i64>::try_from(t.to_kind(Kind::Int64).flatten(0, -1)).expect("i64 values")
}

/// What a result is compared with: values, or a tensor (whose shape must
/// match too).
pub trait Expected {
    fn shape(&self) -> Option<Vec<i64>>;
    fn values(&self) -> Vec<f64>;
}

impl Expected for [f64] {
    fn shape(&self) -> Option<Vec<i64>> {
        None
    }
    fn values(&self) -> Vec<f64> {
        self.to_vec()
    }
}

impl<const N: usize> Expected for [f64; N] {
    fn shape(&self) -> Option<Vec<i64>> {
        None
    }
    fn values(&self) -> Vec<f64> {
        self.to_vec()
    }
}

impl Expected for Vec<f64> {
    fn shape(&self) -> Option<Vec<i64>> {
        None
    }
    fn values(&self) -> Vec<f64> {
        self.clone()
    }
}

impl Expected for Tensor {
    fn shape(&self) -> Option<Vec<i64>> {
        Some(self.size())
    }
    fn values(&self) -> Vec<f64> {
        values(self)
    }
}

/// Asserts that `actual` holds `expected` within 1e-9: for expected values
/// computed in f64 (by hand or by an independent formula).
pub fn assert_close(actual: &Tensor, expected: &(impl Expected + ?Sized)) {
    assert_within(actual, expected, 1e-9);
}

/// Asserts that `actual` holds `expected` within 1e-6: for expected values
/// written to six or seven digits.
pub fn assert_approx(actual: &Tensor, expected: &(impl Expected + ?Sized)) {
    assert_within(actual, expected, 1e-6);
}

fn assert_within(actual: &Tensor, expected: &(impl Expected + ?Sized), tolerance: f64) {
    if let Some(shape) = expected.shape() {
        assert_eq!(actual.size(), shape, "shapes");
    }
    let (got, want) = (values(actual), expected.values());
    assert_eq!(got.len(), want.len(), "got {got:?}, expected {want:?}");
    for (i, (g, e)) in got.iter().zip(&want).enumerate() {
        assert!(
            (g - e).abs() < tolerance,
            "element {i}: {g} vs {e}\ngot {got:?}\nexpected {want:?}"
        );
    }
}

/// Attribute constructors.
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
    pub fn floats(name: &str, v: &[f32]) -> AttributeProto {
        AttributeProto {
            name: Some(name.into()),
            floats: v.to_vec(),
            r#type: Some(AttributeType::Floats as i32),
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
