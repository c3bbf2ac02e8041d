//! Import: a decoded ONNX model -> our own executable graph on tch.
//!
//! [`Graph::import`] runs the phases of the `import` module: nodes are checked
//! and sorted topologically (file order is not trusted), float initializers
//! that act as weights become trainable tensors ([`Parameters`], with a
//! two-way map to their ONNX names), every node gets its kernel from the op
//! registry ([`ops`]), and nodes whose inputs are all constant (shape chains,
//! folded constants) are evaluated once there. [`Graph::forward`] then runs
//! the remaining nodes eagerly, so that tch autograd can differentiate the
//! result twice.

mod import;
pub mod ops;
pub mod rebatch;

use std::collections::{HashMap, HashSet};

use regex::Regex;
use tch::{Device, Kind, Tensor};

use crate::onnx::proto::{
    tensor_shape_proto::dimension::Value as DimValue, type_proto, ValueInfoProto,
};
use crate::onnx::{DataType, Model, TensorError};
pub use import::{InitializerRole, ParamRole};
use ops::{Kernel, OpError, Registry};

/// Errors importing or running a graph. Node-level errors name the node and op.
#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    #[error("{} unsupported op{} (nothing was computed): {}", .0.len(), if .0.len() == 1 { "" } else { "s" }, UnsupportedOp::list(.0))]
    Unsupported(Vec<UnsupportedOp>),
    #[error("node `{node}` ({op_type}): {source}")]
    Node {
        node: String,
        op_type: String,
        #[source]
        source: Box<OpError>,
    },
    #[error("node `{node}` ({op_type}): input `{value}` is not produced by any node, initializer or graph input")]
    MissingValue {
        node: String,
        op_type: String,
        value: String,
    },
    #[error("node `{node}` ({op_type}): output `{value}` is already written by node `{first}` ({first_op_type})")]
    DuplicateOutput {
        node: String,
        op_type: String,
        value: String,
        /// The node that writes the value first, in file order.
        first: String,
        first_op_type: String,
    },
    #[error("graph output `{0}` is not produced by any node, initializer or graph input")]
    MissingOutput(String),
    #[error("the graph has a cycle through node `{node}` ({op_type})")]
    Cycle { node: String, op_type: String },
    #[error("initializer {0}")]
    Initializer(#[from] TensorError),
    #[error("graph input `{name}`: {reason}")]
    Input { name: String, reason: String },
    #[error("option `{option}`: {reason}")]
    Option { option: String, reason: String },
    #[error("{0}")]
    Limit(#[from] crate::limits::LimitError),
}

/// A node the importer cannot run.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UnsupportedOp {
    pub node: String,
    pub op_type: String,
    pub domain: String,
    pub opset: i64,
    pub reason: String,
}

impl UnsupportedOp {
    fn list(ops: &[UnsupportedOp]) -> String {
        ops.iter()
            .map(|u| {
                let domain = if u.domain.is_empty() {
                    "ai.onnx"
                } else {
                    &u.domain
                };
                format!(
                    "node `{}`: {} ({domain} opset {}): {}",
                    u.node, u.op_type, u.opset, u.reason
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// How to import.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    pub device: Device,
    /// The kind every float value is computed in: `Kind::Float` normally,
    /// `Kind::Double` for gradient checks.
    pub float_kind: Kind,
    /// Initializers whose name matches are frozen even when they are weights.
    pub freeze: Option<Regex>,
    /// Float initializers whose name matches are trained even when the
    /// default rule would freeze them (one-element tensors, say).
    pub train: Option<Regex>,
}

impl Default for ImportOptions {
    fn default() -> Self {
        ImportOptions {
            device: Device::Cpu,
            float_kind: Kind::Float,
            freeze: None,
            train: None,
        }
    }
}

/// One dimension of a declared input or output shape.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(untagged)]
pub enum Dim {
    Fixed(i64),
    Symbolic(String),
}

/// A declared graph input or output.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ValueInfo {
    pub name: String,
    pub elem_type: String,
    #[serde(skip)]
    pub data_type: DataType,
    /// `None` when the file declares no shape.
    pub shape: Option<Vec<Dim>>,
}

impl ValueInfo {
    pub fn from_proto(v: &ValueInfoProto) -> ValueInfo {
        let tensor = match v.r#type.as_ref().and_then(|t| t.value.as_ref()) {
            Some(type_proto::Value::TensorType(t)) => Some(t),
            _ => None,
        };
        let data_type = DataType(tensor.map(|t| t.elem_type()).unwrap_or(0));
        let shape = tensor.and_then(|t| t.shape.as_ref()).map(|s| {
            s.dim
                .iter()
                .map(|d| match &d.value {
                    Some(DimValue::DimValue(n)) => Dim::Fixed(*n),
                    Some(DimValue::DimParam(p)) => Dim::Symbolic(p.clone()),
                    None => Dim::Symbolic("?".into()),
                })
                .collect()
        });
        ValueInfo {
            name: v.name().to_string(),
            elem_type: data_type.name().to_string(),
            data_type,
            shape,
        }
    }

    /// The declared dimensions, `None` where symbolic (or not positive);
    /// `None` when no shape is declared.
    pub fn fixed_dims(&self) -> Option<Vec<Option<i64>>> {
        self.shape.as_ref().map(|dims| {
            dims.iter()
                .map(|d| match d {
                    Dim::Fixed(n) if *n > 0 => Some(*n),
                    _ => None,
                })
                .collect()
        })
    }

    /// The shape with symbolic dimensions replaced by `batch` for the first
    /// and 1 elsewhere; `None` when no shape is declared.
    pub fn concrete_shape(&self, batch: i64) -> Option<Vec<i64>> {
        self.shape.as_ref().map(|dims| {
            dims.iter()
                .enumerate()
                .map(|(i, d)| match d {
                    Dim::Fixed(n) if *n > 0 => *n,
                    _ if i == 0 => batch,
                    _ => 1,
                })
                .collect()
        })
    }
}

/// The trainable tensors of a graph and their ONNX initializer names.
#[derive(Debug, Default)]
pub struct Parameters {
    /// Initializer names, in the file's initializer order.
    pub names: Vec<String>,
    /// The trainable tensors (`requires_grad`), in the graph's float kind.
    pub tensors: Vec<Tensor>,
    /// The ONNX element type each initializer is stored in.
    pub dtypes: Vec<DataType>,
    index: HashMap<String, usize>,
    slots: Vec<usize>,
}

impl Parameters {
    pub fn len(&self) -> usize {
        self.tensors.len()
    }
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }
    /// The position of the parameter stored as initializer `name`.
    pub fn position(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.position(name).map(|i| &self.tensors[i])
    }
    /// Total number of trainable elements.
    pub fn numel(&self) -> i64 {
        self.tensors.iter().map(|t| t.numel() as i64).sum()
    }
    /// Overwrites every parameter's values (no autograd history), e.g. to
    /// restore a snapshot. `values` must be in parameter order.
    pub fn assign(&self, values: &[Tensor]) -> Result<(), tch::TchError> {
        tch::no_grad(|| {
            for (p, v) in self.tensors.iter().zip(values) {
                p.shallow_clone().f_copy_(v)?;
            }
            Ok(())
        })
    }
    /// Rounds every parameter stored as float16 or bfloat16 to that
    /// precision, in place (training keeps full-precision master weights;
    /// this is what the written file will hold). Returns how many were
    /// rounded.
    pub fn round_to_stored_precision(&self) -> Result<usize, tch::TchError> {
        let mut rounded = 0;
        tch::no_grad(|| {
            for (p, dtype) in self.tensors.iter().zip(&self.dtypes) {
                let kind = match *dtype {
                    DataType::FLOAT16 => Kind::Half,
                    DataType::BFLOAT16 => Kind::BFloat16,
                    _ => continue,
                };
                let stored = p.f_to_kind(kind)?.f_to_kind(p.kind())?;
                p.shallow_clone().f_copy_(&stored)?;
                rounded += 1;
            }
            Ok(rounded)
        })
    }
    /// Detached copies of every parameter.
    pub fn snapshot(&self) -> Vec<Tensor> {
        self.tensors.iter().map(|t| t.detach().copy()).collect()
    }
}

struct ExecNode {
    name: String,
    op_type: String,
    inputs: Vec<Option<usize>>,
    outputs: Vec<usize>,
    kernel: Kernel,
}

/// An imported graph, ready to run on one device in one float kind.
pub struct Graph {
    pub inputs: Vec<ValueInfo>,
    pub outputs: Vec<ValueInfo>,
    pub params: Parameters,
    pub roles: Vec<InitializerRole>,
    pub float_kind: Kind,
    pub device: Device,
    nodes: Vec<ExecNode>,
    slot_count: usize,
    constants: Vec<(usize, Tensor)>,
    input_slots: Vec<usize>,
    output_slots: Vec<usize>,
    /// For each node, the slots whose last reader it is (freed after it runs).
    frees: Vec<Vec<usize>>,
}

impl Graph {
    /// The parity tolerance that suits the graph's precision: 1e-4 when it
    /// computes in float32/64, 1e-2 with float16 and 3e-2 with bfloat16
    /// inputs, outputs or weights fed to ops other than Cast (ONNX Runtime
    /// computes in that precision, ibau in float32). With the precision's name.
    pub fn default_tolerance(model: &Model) -> (f64, &'static str) {
        let graph = model.graph();
        let cast_only: HashSet<&str> = graph
            .initializer
            .iter()
            .map(|t| t.name())
            .filter(|name| {
                graph
                    .node
                    .iter()
                    .filter(|n| n.input.iter().any(|i| i == name))
                    .all(|n| n.op_type() == "Cast")
            })
            .collect();
        let io = graph
            .input
            .iter()
            .chain(&graph.output)
            .map(|v| ValueInfo::from_proto(v).data_type);
        let weights = graph
            .initializer
            .iter()
            .filter(|t| !cast_only.contains(t.name()))
            .map(|t| DataType(t.data_type()));
        let mut result = (1e-4, "float32");
        for dtype in io.chain(weights) {
            match dtype {
                DataType::BFLOAT16 => return (3e-2, "bfloat16"),
                DataType::FLOAT16 => result = (1e-2, "float16"),
                _ => {}
            }
        }
        result
    }
}

/// The ops of `model` that the registry cannot run, every one of them.
pub fn unsupported_ops(model: &Model, registry: &Registry) -> Vec<UnsupportedOp> {
    (0..model.graph().node.len())
        .filter_map(|i| unsupported_op(model, registry, i))
        .collect()
}

/// Node `index` of `model` when the registry cannot run it.
pub(crate) fn unsupported_op(
    model: &Model,
    registry: &Registry,
    index: usize,
) -> Option<UnsupportedOp> {
    let node = &model.graph().node[index];
    let domain = node.domain();
    let opset = model.opset(domain).unwrap_or(0);
    let reason = if !(domain.is_empty() || domain == "ai.onnx") {
        format!("domain `{domain}` is not supported")
    } else if registry.find(node.op_type(), opset).is_none() {
        match registry.op_types().contains(&node.op_type()) {
            true => format!("opset {opset} of this op is not supported"),
            false => "op not supported".to_string(),
        }
    } else {
        return None;
    };
    Some(UnsupportedOp {
        node: node_name(node.name(), index),
        op_type: node.op_type().to_string(),
        domain: domain.to_string(),
        opset,
        reason,
    })
}

/// A node's name for messages, `#index` when it has none.
pub(crate) fn node_name(name: &str, index: usize) -> String {
    if name.is_empty() {
        format!("#{index}")
    } else {
        name.to_string()
    }
}

impl Graph {
    /// Runs the graph on `inputs` (one tensor per graph input, in order).
    /// Float inputs are converted to the graph's float kind and device.
    pub fn forward(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, GraphError> {
        if inputs.len() != self.input_slots.len() {
            return Err(GraphError::Input {
                name: self
                    .inputs
                    .iter()
                    .map(|i| i.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                reason: format!(
                    "the graph takes {} inputs, got {}",
                    self.input_slots.len(),
                    inputs.len()
                ),
            });
        }
        let mut values: Vec<Option<Tensor>> = (0..self.slot_count).map(|_| None).collect();
        for (s, t) in &self.constants {
            values[*s] = Some(t.shallow_clone());
        }
        for (s, t) in self.params.slots.iter().zip(&self.params.tensors) {
            values[*s] = Some(t.shallow_clone());
        }
        for ((s, t), info) in self.input_slots.iter().zip(inputs).zip(&self.inputs) {
            let convert = || -> Result<Tensor, tch::TchError> {
                let t = t.f_to_device(self.device)?;
                if t.is_floating_point() {
                    t.f_to_kind(self.float_kind)
                } else {
                    Ok(t)
                }
            };
            values[*s] = Some(convert().map_err(|e| GraphError::Input {
                name: info.name.clone(),
                reason: e.to_string(),
            })?);
        }
        for (node, frees) in self.nodes.iter().zip(&self.frees) {
            let args: Vec<Option<&Tensor>> = node
                .inputs
                .iter()
                .map(|s| s.and_then(|s| values[s].as_ref()))
                .collect();
            let results = (node.kernel)(&args).map_err(|source| GraphError::Node {
                node: node.name.clone(),
                op_type: node.op_type.clone(),
                source: Box::new(source),
            })?;
            for (s, t) in node.outputs.iter().zip(results) {
                values[*s] = Some(t);
            }
            for s in frees {
                values[*s] = None;
            }
        }
        self.output_slots
            .iter()
            .zip(&self.outputs)
            .map(|(s, o)| {
                values[*s]
                    .as_ref()
                    .map(Tensor::shallow_clone)
                    .ok_or_else(|| GraphError::MissingOutput(o.name.clone()))
            })
            .collect()
    }

    /// Number of nodes run per forward pass (after constant folding).
    pub fn runtime_node_count(&self) -> usize {
        self.nodes.len()
    }
}
