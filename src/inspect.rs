//! `inspect`: what a model file is made of (producer, opsets, inputs and
//! outputs, ops, initializers) and what ibau would train in it.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::graph::{
    self, ops::Registry, Graph, ImportOptions, InitializerRole, ParamRole, UnsupportedOp, ValueInfo,
};
use crate::model::{Model, TrainableShare};
use crate::onnx::{DataType, Model as OnnxFile};

/// The `inspect --json` document (schema 1).
#[derive(Debug, Serialize)]
pub struct Summary {
    pub schema: u32,
    pub file: String,
    pub producer: Producer,
    pub ir_version: i64,
    pub opsets: Vec<Opset>,
    pub inputs: Vec<ValueInfo>,
    pub outputs: Vec<ValueInfo>,
    pub nodes: Nodes,
    pub initializers: Initializers,
    pub unsupported_ops: Vec<UnsupportedOp>,
    /// `null` when the model cannot be imported (see `unsupported_ops`).
    pub trainable: Option<Trainable>,
}

#[derive(Debug, Serialize)]
pub struct Producer {
    pub name: String,
    pub version: String,
}

#[derive(Debug, Serialize)]
pub struct Opset {
    pub domain: String,
    pub version: i64,
}

#[derive(Debug, Serialize)]
pub struct Nodes {
    pub total: usize,
    pub by_op: BTreeMap<String, usize>,
}

#[derive(Debug, Serialize)]
pub struct Initializers {
    pub count: usize,
    pub elements: i64,
    pub bytes: u64,
    /// Number of initializers per element type.
    pub dtypes: BTreeMap<String, usize>,
    pub external: usize,
}

#[derive(Debug, Serialize)]
pub struct Trainable {
    pub tensors: usize,
    pub elements: i64,
    /// Float weight elements: float initializers of more than one element on
    /// a differentiable path to an output, plus any frozen by `--freeze`.
    pub weight_elements: i64,
    /// `elements / weight_elements` (1.0 when every weight is trained).
    pub share: f64,
    pub list: Vec<InitializerRole>,
    /// Float initializers that stay frozen, and why.
    pub frozen: Vec<InitializerRole>,
}

/// Builds the summary of `model`.
pub fn summarize(model: &OnnxFile, options: &ImportOptions) -> Result<Summary> {
    let graph = model.graph();
    let registry = Registry::standard();
    let mut by_op = BTreeMap::new();
    for node in &graph.node {
        let key = match node.domain() {
            "" | "ai.onnx" => node.op_type().to_string(),
            d => format!("{d}.{}", node.op_type()),
        };
        *by_op.entry(key).or_insert(0) += 1;
    }
    let mut dtypes = BTreeMap::new();
    let mut elements = 0i64;
    let mut bytes = 0u64;
    for init in &graph.initializer {
        let dtype = DataType(init.data_type());
        *dtypes.entry(dtype.name().to_string()).or_insert(0) += 1;
        // Saturating: a hostile file may claim dims whose product overflows.
        let n = init
            .dims
            .iter()
            .try_fold(1i64, |acc, &d| acc.checked_mul(d.max(0)))
            .unwrap_or(i64::MAX);
        elements = elements.saturating_add(n);
        bytes =
            bytes.saturating_add((n as u64).saturating_mul(dtype.byte_size().unwrap_or(0) as u64));
    }
    let unsupported = graph::unsupported_ops(model, &registry);
    let trainable = if unsupported.is_empty() {
        let imported = Graph::import(model, &registry, options)
            .map_err(|source| Error::import(&model.path, source))?;
        Some(trainable_summary(&imported.roles))
    } else {
        None
    };
    let initializer_names: std::collections::HashSet<&str> =
        graph.initializer.iter().map(|t| t.name()).collect();
    Ok(Summary {
        schema: 1,
        file: model.path.display().to_string(),
        producer: Producer {
            name: model.proto.producer_name().to_string(),
            version: model.proto.producer_version().to_string(),
        },
        ir_version: model.proto.ir_version(),
        opsets: model
            .proto
            .opset_import
            .iter()
            .map(|o| Opset {
                domain: if o.domain().is_empty() {
                    "ai.onnx".into()
                } else {
                    o.domain().to_string()
                },
                version: o.version(),
            })
            .collect(),
        inputs: graph
            .input
            .iter()
            .filter(|v| !initializer_names.contains(v.name()))
            .map(ValueInfo::from_proto)
            .collect(),
        outputs: graph.output.iter().map(ValueInfo::from_proto).collect(),
        nodes: Nodes {
            total: graph.node.len(),
            by_op,
        },
        initializers: Initializers {
            count: graph.initializer.len(),
            elements,
            bytes,
            dtypes,
            external: model.external.len(),
        },
        unsupported_ops: unsupported,
        trainable,
    })
}

/// Trainable tensors and their share of the float weights.
pub fn trainable_summary(roles: &[InitializerRole]) -> Trainable {
    let list: Vec<InitializerRole> = roles.iter().filter(|r| r.trainable).cloned().collect();
    let frozen: Vec<InitializerRole> = roles
        .iter()
        .filter(|r| !r.trainable && r.reason != ParamRole::NotFloat)
        .cloned()
        .collect();
    let elements: i64 = list.iter().map(|r| r.elements).sum();
    let frozen_weights: i64 = frozen
        .iter()
        .filter(|r| r.reason == ParamRole::FrozenByOption)
        .map(|r| r.elements)
        .sum();
    let weight_elements = elements + frozen_weights;
    Trainable {
        tensors: list.len(),
        elements,
        weight_elements,
        share: if weight_elements == 0 {
            1.0
        } else {
            elements as f64 / weight_elements as f64
        },
        list,
        frozen,
    }
}

/// The `inspect --json` document of a TorchScript file (schema 1).
#[derive(Debug, Serialize)]
pub struct TorchScriptSummary {
    pub schema: u32,
    pub file: String,
    /// Always `torchscript` (ONNX summaries have no `format` field).
    pub format: &'static str,
    pub parameters: Vec<crate::torchscript::ParamInfo>,
    pub trainable: TrainableShare,
}

/// The summary of a loaded TorchScript model.
pub fn summarize_torchscript(model: &Model) -> Option<TorchScriptSummary> {
    let Model::TorchScript(ts) = model else {
        return None;
    };
    Some(TorchScriptSummary {
        schema: 1,
        file: ts.path.display().to_string(),
        format: "torchscript",
        parameters: ts.infos.clone(),
        trainable: model.trainable(),
    })
}
