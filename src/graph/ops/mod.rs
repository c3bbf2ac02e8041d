//! The op registry: one table of every ONNX op the importer supports, gathered
//! from one file per op family. Each entry ([`OpSpec`]) declares the opsets it
//! covers, how many inputs and outputs it takes, which inputs gradients flow
//! through (this decides which initializers are trainable), and how to build
//! its kernel from the node's attributes.
//!
//! Kernels run eagerly on tch tensors and must stay twice differentiable
//! (I-BAU takes gradients of gradients): build them from differentiable tch
//! ops only, and never detach a float value.

pub mod activation;
pub mod conv;
pub mod elementwise;
#[cfg(test)]
pub mod gradcheck;
pub mod norm;
pub mod pool;
pub mod reduce;
pub mod resize;
pub mod shape;
#[cfg(test)]
pub mod testing;

use std::collections::HashMap;
use std::ops::RangeInclusive;

use tch::{Device, Kind, Tensor};

use crate::onnx::proto::{attribute_proto::AttributeType, AttributeProto, TensorProto};

/// An error inside one op: the caller adds the node's name and op type.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error("attribute `{name}`: {reason}")]
    Attribute { name: String, reason: String },
    #[error("input {index}: {reason}")]
    Input { index: usize, reason: String },
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    Torch(#[from] tch::TchError),
    #[error("{0}")]
    Tensor(#[from] crate::onnx::TensorError),
    #[error("{0}")]
    Limit(#[from] crate::limits::LimitError),
}

pub type OpResult<T> = Result<T, OpError>;

/// A built op: inputs in node order (`None` for an omitted optional input),
/// outputs in node order.
pub type Kernel = Box<dyn Fn(&[Option<&Tensor>]) -> OpResult<Vec<Tensor>> + Send + Sync>;

/// Which inputs of an op gradients flow through.
#[derive(Debug, Clone, Copy)]
pub enum Differentiable {
    /// Every input (elementwise arithmetic, Concat, ...).
    All,
    /// No input (Shape, ArgMax, comparisons, ...).
    None,
    /// Only these input positions (Conv: X, W, B; Reshape: data only).
    Only(&'static [usize]),
}

impl Differentiable {
    pub fn includes(self, index: usize) -> bool {
        match self {
            Differentiable::All => true,
            Differentiable::None => false,
            Differentiable::Only(list) => list.contains(&index),
        }
    }
}

/// What a kernel builder knows about its node.
pub struct NodeInfo<'a> {
    pub name: &'a str,
    pub op_type: &'a str,
    /// The opset version of the node's domain in the model.
    pub opset: i64,
    pub attrs: Attrs<'a>,
    /// Number of inputs in the node (trailing omitted ones included as `None`).
    pub num_inputs: usize,
    pub num_outputs: usize,
    /// The float kind the graph computes in (f32 normally, f64 for tests):
    /// every float tensor of the graph is held in this kind.
    pub float_kind: Kind,
    pub device: Device,
}

/// One supported op type over an opset range.
pub struct OpSpec {
    pub op_type: &'static str,
    pub opsets: RangeInclusive<i64>,
    pub inputs: RangeInclusive<usize>,
    pub outputs: RangeInclusive<usize>,
    pub differentiable: Differentiable,
    pub build: fn(&NodeInfo) -> OpResult<Kernel>,
}

impl OpSpec {
    /// A spec with the usual defaults: opsets 1..=23, one input, one output,
    /// every input differentiable.
    pub fn new(op_type: &'static str, build: fn(&NodeInfo) -> OpResult<Kernel>) -> OpSpec {
        OpSpec {
            op_type,
            opsets: 1..=MAX_OPSET,
            inputs: 1..=1,
            outputs: 1..=1,
            differentiable: Differentiable::All,
            build,
        }
    }
    pub fn opsets(mut self, r: RangeInclusive<i64>) -> Self {
        self.opsets = r;
        self
    }
    pub fn inputs(mut self, r: RangeInclusive<usize>) -> Self {
        self.inputs = r;
        self
    }
    pub fn outputs(mut self, r: RangeInclusive<usize>) -> Self {
        self.outputs = r;
        self
    }
    pub fn differentiable(mut self, d: Differentiable) -> Self {
        self.differentiable = d;
        self
    }
}

/// The newest default-domain opset the importer knows.
pub const MAX_OPSET: i64 = 23;

/// Every supported op, by op type (default ONNX domain only).
#[derive(Default)]
pub struct Registry {
    specs: HashMap<&'static str, Vec<OpSpec>>,
}

impl Registry {
    /// The registry of every op family.
    pub fn standard() -> Registry {
        let mut reg = Registry::default();
        activation::register(&mut reg);
        conv::register(&mut reg);
        elementwise::register(&mut reg);
        norm::register(&mut reg);
        pool::register(&mut reg);
        reduce::register(&mut reg);
        resize::register(&mut reg);
        shape::register(&mut reg);
        reg
    }

    pub fn insert(&mut self, spec: OpSpec) {
        self.specs.entry(spec.op_type).or_default().push(spec);
    }

    /// The spec for `op_type` at `opset`, if supported.
    pub fn find(&self, op_type: &str, opset: i64) -> Option<&OpSpec> {
        self.specs
            .get(op_type)?
            .iter()
            .find(|s| s.opsets.contains(&opset))
    }

    /// Every supported op type, sorted.
    pub fn op_types(&self) -> Vec<&'static str> {
        let mut v: Vec<_> = self.specs.keys().copied().collect();
        v.sort_unstable();
        v
    }
}

/// Typed access to a node's attributes; errors name the attribute.
#[derive(Clone, Copy)]
pub struct Attrs<'a> {
    list: &'a [AttributeProto],
}

/// An error about attribute `name` of the node being built.
pub(crate) fn attr_error(name: &str, reason: impl Into<String>) -> OpError {
    OpError::Attribute {
        name: name.to_string(),
        reason: reason.into(),
    }
}

/// An error about input `index` of the node.
pub(crate) fn input_error(index: usize, reason: impl Into<String>) -> OpError {
    OpError::Input {
        index,
        reason: reason.into(),
    }
}

impl<'a> Attrs<'a> {
    pub fn new(list: &'a [AttributeProto]) -> Self {
        Attrs { list }
    }

    pub fn get(&self, name: &str) -> Option<&'a AttributeProto> {
        self.list.iter().find(|a| a.name() == name)
    }

    pub fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    fn typed(&self, name: &str, ty: AttributeType) -> OpResult<Option<&'a AttributeProto>> {
        match self.get(name) {
            None => Ok(None),
            Some(a) if a.r#type() == ty || a.r#type() == AttributeType::Undefined => Ok(Some(a)),
            Some(a) => Err(attr_error(
                name,
                format!("expected {ty:?}, got {:?}", a.r#type()),
            )),
        }
    }

    pub fn int_opt(&self, name: &str) -> OpResult<Option<i64>> {
        Ok(self.typed(name, AttributeType::Int)?.map(|a| a.i()))
    }
    pub fn int(&self, name: &str, default: i64) -> OpResult<i64> {
        Ok(self.int_opt(name)?.unwrap_or(default))
    }
    pub fn int_req(&self, name: &str) -> OpResult<i64> {
        self.int_opt(name)?
            .ok_or_else(|| attr_error(name, "required but missing"))
    }
    pub fn float_opt(&self, name: &str) -> OpResult<Option<f32>> {
        Ok(self.typed(name, AttributeType::Float)?.map(|a| a.f()))
    }
    pub fn float(&self, name: &str, default: f32) -> OpResult<f32> {
        Ok(self.float_opt(name)?.unwrap_or(default))
    }
    pub fn ints_opt(&self, name: &str) -> OpResult<Option<Vec<i64>>> {
        Ok(self
            .typed(name, AttributeType::Ints)?
            .map(|a| a.ints.clone()))
    }
    pub fn ints(&self, name: &str) -> OpResult<Vec<i64>> {
        Ok(self.ints_opt(name)?.unwrap_or_default())
    }
    pub fn floats_opt(&self, name: &str) -> OpResult<Option<Vec<f32>>> {
        Ok(self
            .typed(name, AttributeType::Floats)?
            .map(|a| a.floats.clone()))
    }
    pub fn string_opt(&self, name: &str) -> OpResult<Option<String>> {
        self.typed(name, AttributeType::String)?
            .map(|a| String::from_utf8(a.s().to_vec()).map_err(|_| attr_error(name, "not UTF-8")))
            .transpose()
    }
    pub fn string(&self, name: &str, default: &str) -> OpResult<String> {
        Ok(self
            .string_opt(name)?
            .unwrap_or_else(|| default.to_string()))
    }
    pub fn tensor_opt(&self, name: &str) -> OpResult<Option<&'a TensorProto>> {
        Ok(self
            .typed(name, AttributeType::Tensor)?
            .and_then(|a| a.t.as_ref()))
    }
    /// Fails when the attribute is present and set to a value other than `expected`.
    pub fn expect_int(&self, name: &str, expected: i64) -> OpResult<()> {
        match self.int_opt(name)? {
            Some(v) if v != expected => Err(attr_error(
                name,
                format!("value {v} is not supported (only {expected})"),
            )),
            _ => Ok(()),
        }
    }
}

/// Helpers for kernels.
pub mod util {
    use super::*;

    /// Input `index`, which the spec's input range guarantees is in the slice;
    /// an error when it was omitted.
    pub fn input<'t>(inputs: &[Option<&'t Tensor>], index: usize) -> OpResult<&'t Tensor> {
        inputs.get(index).copied().flatten().ok_or(OpError::Input {
            index,
            reason: "required but missing".into(),
        })
    }

    /// Input `index` if present.
    pub fn input_opt<'t>(inputs: &[Option<&'t Tensor>], index: usize) -> Option<&'t Tensor> {
        inputs.get(index).copied().flatten()
    }

    /// Fails when an output of `dims` in `kind` would exceed the memory
    /// budget (ops that make tensors from a shape: Expand, Tile,
    /// ConstantOfShape, Range), before anything is allocated.
    pub fn check_output(dims: &[i64], kind: Kind) -> OpResult<()> {
        crate::limits::check_dims(
            dims,
            kind.elt_size_in_bytes(),
            &format!("an output of shape {dims:?}"),
        )?;
        Ok(())
    }

    /// The values of an integer tensor input (shapes, axes, pads), on the CPU.
    pub fn ints(t: &Tensor) -> OpResult<Vec<i64>> {
        let t = t
            .f_to_device(Device::Cpu)?
            .f_to_kind(Kind::Int64)?
            .f_flatten(0, -1)?;
        Ok(Vec::<i64>::try_from(&t)?)
    }

    /// The values of a float tensor input (scales, clip bounds), on the CPU.
    pub fn floats(t: &Tensor) -> OpResult<Vec<f64>> {
        let t = t
            .f_to_device(Device::Cpu)?
            .f_to_kind(Kind::Double)?
            .f_flatten(0, -1)?;
        Ok(Vec::<f64>::try_from(&t)?)
    }

    /// A scalar input's value as f64.
    pub fn scalar(t: &Tensor) -> OpResult<f64> {
        floats(t)?.first().copied().ok_or(OpError::Input {
            index: 0,
            reason: "expected one value, got an empty tensor".into(),
        })
    }

    /// `axis` counted from the end when negative, checked against `rank`.
    pub fn norm_axis(axis: i64, rank: i64) -> OpResult<i64> {
        let a = if axis < 0 { axis + rank } else { axis };
        if (0..rank.max(1)).contains(&a) {
            Ok(a)
        } else {
            Err(OpError::Unsupported(format!(
                "axis {axis} is out of range for a tensor of rank {rank}"
            )))
        }
    }

    /// `axis` counted from the end when negative; `None` when outside `0..rank`.
    pub(crate) fn resolve_axis(axis: i64, rank: usize) -> Option<usize> {
        let rank = rank as i64;
        let a = if axis < 0 { axis + rank } else { axis };
        (0..rank).contains(&a).then_some(a as usize)
    }

    /// Resolves every axis of `axes` against `rank`; duplicates are an error.
    pub(crate) fn resolve_axes(axes: &[i64], rank: usize) -> Result<Vec<usize>, String> {
        let mut out = Vec::with_capacity(axes.len());
        for &a in axes {
            let r = resolve_axis(a, rank)
                .ok_or_else(|| format!("axis {a} is out of range for rank {rank}"))?;
            if out.contains(&r) {
                return Err(format!("axis {a} is repeated"));
            }
            out.push(r);
        }
        Ok(out)
    }

    /// An int64 index tensor on `device`.
    pub(crate) fn index_tensor(values: &[i64], device: Device) -> OpResult<Tensor> {
        Ok(Tensor::f_from_slice(values)?.f_to_device(device)?)
    }

    pub(crate) fn is_float(kind: Kind) -> bool {
        matches!(
            kind,
            Kind::Half | Kind::BFloat16 | Kind::Float | Kind::Double
        )
    }

    /// Checks that `values` holds no negative dimension.
    pub(crate) fn check_dims(values: &[i64], index: usize, what: &str) -> OpResult<()> {
        match values.iter().find(|&&d| d < 0) {
            Some(d) => Err(input_error(
                index,
                format!("negative {what} {d} in {values:?}"),
            )),
            None => Ok(()),
        }
    }

    /// Wraps a one-output closure as a kernel.
    pub fn unary(
        f: impl Fn(&Tensor) -> Result<Tensor, tch::TchError> + Send + Sync + 'static,
    ) -> Kernel {
        Box::new(move |inputs| Ok(vec![f(input(inputs, 0)?)?]))
    }

    /// Wraps a two-input, one-output closure as a kernel.
    pub fn binary(
        f: impl Fn(&Tensor, &Tensor) -> Result<Tensor, tch::TchError> + Send + Sync + 'static,
    ) -> Kernel {
        Box::new(move |inputs| Ok(vec![f(input(inputs, 0)?, input(inputs, 1)?)?]))
    }
}
