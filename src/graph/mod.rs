//! Import: a decoded ONNX model -> our own executable graph on tch.
//!
//! Nodes are sorted topologically (file order is not trusted), every value gets
//! a slot, float initializers that act as weights become trainable tensors
//! ([`Parameters`], with a two-way map to their ONNX names), and nodes whose
//! inputs are all constant (shape chains, folded constants) are evaluated once
//! here. [`Graph::forward`] then runs the remaining nodes eagerly, so that tch
//! autograd can differentiate the result twice.

pub mod ops;
pub mod rebatch;

use std::collections::{HashMap, HashSet};

use regex::Regex;
use tch::{Device, Kind, Tensor};

use crate::onnx::proto::{
    tensor_shape_proto::dimension::Value as DimValue, type_proto, ValueInfoProto,
};
use crate::onnx::{tensor_from_proto, DataType, Model, TensorError};
use ops::{Attrs, Kernel, NodeInfo, OpError, Registry};

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

/// Whether a float tensor holds NaN or infinite values.
enum NonFinite {
    None,
    Infinite,
    NaN,
}

fn non_finite(t: &Tensor, name: &str) -> Result<NonFinite, GraphError> {
    let wrap = |source| {
        GraphError::Initializer(TensorError::Torch {
            name: name.to_string(),
            source,
        })
    };
    let any = |t: Result<Tensor, tch::TchError>| -> Result<bool, GraphError> {
        Ok(t.and_then(|t| t.f_any()).map_err(wrap)?.int64_value(&[]) != 0)
    };
    if any(t.f_isnan())? {
        Ok(NonFinite::NaN)
    } else if any(t.f_isinf())? {
        Ok(NonFinite::Infinite)
    } else {
        Ok(NonFinite::None)
    }
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

/// Why an initializer is or is not trainable (for `inspect`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct InitializerRole {
    pub name: String,
    pub dtype: String,
    pub elements: i64,
    pub trainable: bool,
    pub reason: &'static str,
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
    let mut found = Vec::new();
    for (i, node) in model.graph().node.iter().enumerate() {
        let domain = node.domain();
        let opset = model.opset(domain).unwrap_or(0);
        let reason = if !(domain.is_empty() || domain == "ai.onnx") {
            Some(format!("domain `{domain}` is not supported"))
        } else if registry.find(node.op_type(), opset).is_none() {
            Some(match registry.op_types().contains(&node.op_type()) {
                true => format!("opset {opset} of this op is not supported"),
                false => "op not supported".to_string(),
            })
        } else {
            None
        };
        if let Some(reason) = reason {
            found.push(UnsupportedOp {
                node: node_name(node.name(), i),
                op_type: node.op_type().to_string(),
                domain: domain.to_string(),
                opset,
                reason,
            });
        }
    }
    found
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
    /// Imports `model`. Fails, before computing anything, with the list of every
    /// unsupported op when there is one.
    pub fn import(
        model: &Model,
        registry: &Registry,
        options: &ImportOptions,
    ) -> Result<Graph, GraphError> {
        let unsupported = unsupported_ops(model, registry);
        if !unsupported.is_empty() {
            return Err(GraphError::Unsupported(unsupported));
        }
        let graph = model.graph();
        let node_err = |node: &str, op_type: &str, source: OpError| GraphError::Node {
            node: node.to_string(),
            op_type: op_type.to_string(),
            source: Box::new(source),
        };

        // Slots: one per value name.
        let mut slot_of: HashMap<String, usize> = HashMap::new();
        let slot = |name: &str, slot_of: &mut HashMap<String, usize>| -> usize {
            let next = slot_of.len();
            *slot_of.entry(name.to_string()).or_insert(next)
        };
        let initializer_names: HashSet<&str> = graph.initializer.iter().map(|t| t.name()).collect();
        let inputs: Vec<ValueInfo> = graph
            .input
            .iter()
            .filter(|v| !initializer_names.contains(v.name()))
            .map(ValueInfo::from_proto)
            .collect();
        let outputs: Vec<ValueInfo> = graph.output.iter().map(ValueInfo::from_proto).collect();
        let input_slots: Vec<usize> = inputs.iter().map(|v| slot(&v.name, &mut slot_of)).collect();

        // Producers, for the topological sort.
        let mut producer: HashMap<&str, usize> = HashMap::new();
        for (i, node) in graph.node.iter().enumerate() {
            for out in node.output.iter().filter(|o| !o.is_empty()) {
                producer.insert(out.as_str(), i);
            }
        }
        let available: HashSet<&str> = inputs
            .iter()
            .map(|v| v.name.as_str())
            .chain(initializer_names.iter().copied())
            .collect();
        for (i, node) in graph.node.iter().enumerate() {
            for input in node.input.iter().filter(|n| !n.is_empty()) {
                if !producer.contains_key(input.as_str()) && !available.contains(input.as_str()) {
                    return Err(GraphError::MissingValue {
                        node: node_name(node.name(), i),
                        op_type: node.op_type().to_string(),
                        value: input.clone(),
                    });
                }
            }
        }
        for out in &outputs {
            if !producer.contains_key(out.name.as_str()) && !available.contains(out.name.as_str()) {
                return Err(GraphError::MissingOutput(out.name.clone()));
            }
        }
        let order = topological_order(graph, &producer)?;

        // Which values lie on a differentiable path to an output.
        let mut on_path: HashSet<&str> = outputs.iter().map(|o| o.name.as_str()).collect();
        for &i in order.iter().rev() {
            let node = &graph.node[i];
            if !node.output.iter().any(|o| on_path.contains(o.as_str())) {
                continue;
            }
            let opset = model.opset(node.domain()).unwrap_or(0);
            let spec = registry.find(node.op_type(), opset).expect("checked above");
            for (k, input) in node.input.iter().enumerate() {
                if !input.is_empty() && spec.differentiable.includes(k) {
                    on_path.insert(input.as_str());
                }
            }
        }

        // Initializers: trainable parameters or frozen constants.
        let mut params = Parameters::default();
        let mut roles = Vec::new();
        let mut constants: Vec<(usize, Tensor)> = Vec::new();
        let mut constant_slots: HashSet<usize> = HashSet::new();
        // Where each constant slot's tensor is in `constants`.
        let mut constant_index: HashMap<usize, usize> = HashMap::new();
        for init in &graph.initializer {
            let name = init.name();
            let dtype = DataType(init.data_type());
            let elements =
                crate::limits::element_count(&init.dims, &format!("initializer `{name}`"))?;
            let mut tensor = tensor_from_proto(init)?;
            let (trainable, reason) = if !dtype.is_float() {
                (false, "not a float tensor")
            } else if options.freeze.as_ref().is_some_and(|r| r.is_match(name)) {
                (false, "frozen by --freeze")
            } else if options.train.as_ref().is_some_and(|r| r.is_match(name)) {
                (true, "trained by --train")
            } else if !on_path.contains(name) {
                (false, "not on a differentiable path to an output")
            } else if elements <= 1 {
                (false, "one-element constant")
            } else {
                match non_finite(&tensor, name)? {
                    NonFinite::None => (true, "weight"),
                    NonFinite::Infinite => (false, "holds infinite values (a mask, not a weight)"),
                    NonFinite::NaN => {
                        return Err(GraphError::Initializer(TensorError::NaN {
                            name: name.to_string(),
                        }))
                    }
                }
            };
            roles.push(InitializerRole {
                name: name.to_string(),
                dtype: dtype.name().to_string(),
                elements,
                trainable,
                reason,
            });
            let s = slot(name, &mut slot_of);
            let to_device = |t: Tensor| t.f_to_device(options.device);
            let wrap = |e| {
                GraphError::Initializer(TensorError::Torch {
                    name: name.to_string(),
                    source: e,
                })
            };
            if dtype.is_float() {
                tensor = tensor.f_to_kind(options.float_kind).map_err(wrap)?;
            }
            tensor = to_device(tensor).map_err(wrap)?;
            if trainable {
                params.index.insert(name.to_string(), params.tensors.len());
                params.names.push(name.to_string());
                params.dtypes.push(dtype);
                params.slots.push(s);
                params.tensors.push(tensor.set_requires_grad(true));
            } else {
                constant_slots.insert(s);
                constant_index.insert(s, constants.len());
                constants.push((s, tensor));
            }
        }

        // Build kernels in order; fold nodes whose inputs are all constant.
        let mut nodes = Vec::new();
        for &i in &order {
            let node = &graph.node[i];
            let name = node_name(node.name(), i);
            let opset = model.opset(node.domain()).unwrap_or(0);
            let spec = registry.find(node.op_type(), opset).expect("checked above");
            let n_in = node.input.len();
            let n_out = node.output.len();
            if !spec.inputs.contains(&n_in) || !spec.outputs.contains(&n_out) {
                return Err(node_err(
                    &name,
                    node.op_type(),
                    OpError::Unsupported(format!(
                        "{n_in} inputs and {n_out} outputs; the op takes {:?} inputs and {:?} outputs",
                        spec.inputs, spec.outputs
                    )),
                ));
            }
            let info = NodeInfo {
                name: &name,
                op_type: node.op_type(),
                opset,
                attrs: Attrs::new(&node.attribute),
                num_inputs: n_in,
                num_outputs: n_out,
                float_kind: options.float_kind,
                device: options.device,
            };
            let kernel = (spec.build)(&info).map_err(|e| node_err(&name, node.op_type(), e))?;
            let in_slots: Vec<Option<usize>> = node
                .input
                .iter()
                .map(|n| (!n.is_empty()).then(|| slot(n, &mut slot_of)))
                .collect();
            let out_slots: Vec<usize> = node.output.iter().map(|n| slot(n, &mut slot_of)).collect();
            let foldable = in_slots
                .iter()
                .flatten()
                .all(|s| constant_slots.contains(s));
            if foldable {
                let args: Vec<Option<&Tensor>> = in_slots
                    .iter()
                    .map(|s| s.and_then(|s| constant_index.get(&s).map(|&k| &constants[k].1)))
                    .collect();
                let results = tch::no_grad(|| kernel(&args))
                    .map_err(|e| node_err(&name, node.op_type(), e))?;
                // Large constants are not kept: the node runs with the rest.
                let small = results
                    .iter()
                    .all(|t| t.numel() as u128 <= crate::limits::MAX_FOLDED_ELEMENTS as u128);
                if small {
                    for (s, t) in out_slots.iter().zip(results) {
                        constant_slots.insert(*s);
                        constant_index.insert(*s, constants.len());
                        constants.push((*s, t));
                    }
                    continue;
                }
            }
            nodes.push(ExecNode {
                name,
                op_type: node.op_type().to_string(),
                inputs: in_slots,
                outputs: out_slots,
                kernel,
            });
        }
        let output_slots: Vec<usize> = outputs
            .iter()
            .map(|o| slot(&o.name, &mut slot_of))
            .collect();

        // Free each value after its last reader, except graph outputs.
        let mut last_reader: HashMap<usize, usize> = HashMap::new();
        for (k, node) in nodes.iter().enumerate() {
            for s in node.inputs.iter().flatten() {
                last_reader.insert(*s, k);
            }
        }
        let mut frees = vec![Vec::new(); nodes.len()];
        for (s, k) in last_reader {
            if !output_slots.contains(&s) {
                frees[k].push(s);
            }
        }

        Ok(Graph {
            inputs,
            outputs,
            params,
            roles,
            float_kind: options.float_kind,
            device: options.device,
            nodes,
            slot_count: slot_of.len(),
            constants,
            input_slots,
            output_slots,
            frees,
        })
    }

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

fn topological_order(
    graph: &crate::onnx::proto::GraphProto,
    producer: &HashMap<&str, usize>,
) -> Result<Vec<usize>, GraphError> {
    let n = graph.node.len();
    let mut indegree = vec![0usize; n];
    let mut readers: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, node) in graph.node.iter().enumerate() {
        let deps: HashSet<usize> = node
            .input
            .iter()
            .filter_map(|name| producer.get(name.as_str()).copied())
            .collect();
        indegree[i] = deps.len();
        for d in deps {
            readers[d].push(i);
        }
    }
    // Kahn's algorithm, keeping file order among ready nodes.
    let mut ready: std::collections::BTreeSet<usize> =
        (0..n).filter(|&i| indegree[i] == 0).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(i) = ready.pop_first() {
        order.push(i);
        for &r in &readers[i] {
            indegree[r] -= 1;
            if indegree[r] == 0 {
                ready.insert(r);
            }
        }
    }
    if order.len() < n {
        let stuck = (0..n).find(|&i| indegree[i] > 0).unwrap_or(0);
        let node = &graph.node[stuck];
        return Err(GraphError::Cycle {
            node: node_name(node.name(), stuck),
            op_type: node.op_type().to_string(),
        });
    }
    Ok(order)
}
