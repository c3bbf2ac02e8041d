//! `ibau inspect MODEL [--json]`: what a model is made of and whether ibau can
//! train it.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use serde::Serialize;

use super::Outcome;
use crate::graph::{
    self, ops::Registry, Graph, ImportOptions, InitializerRole, UnsupportedOp, ValueInfo,
};
use crate::onnx::{DataType, Model};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The model: an ONNX file or a TorchScript file (`torch.jit.save`).
    #[arg(value_parser = super::existing_file)]
    pub model: PathBuf,
    /// Print the summary as JSON (schema in README.md) instead of text.
    #[arg(long)]
    pub json: bool,
    /// Freeze initializers whose name matches this regular expression.
    #[arg(long, value_name = "REGEX")]
    pub freeze: Option<regex::Regex>,
    /// Train float initializers whose name matches this regular expression,
    /// even where the default rule would freeze them.
    #[arg(long, value_name = "REGEX")]
    pub train: Option<regex::Regex>,
}

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
pub fn summarize(model: &Model, options: &ImportOptions) -> anyhow::Result<Summary> {
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
            .with_context(|| format!("importing `{}`", model.path.display()))?;
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
        .filter(|r| !r.trainable && r.reason != "not a float tensor")
        .cloned()
        .collect();
    let elements: i64 = list.iter().map(|r| r.elements).sum();
    let frozen_weights: i64 = frozen
        .iter()
        .filter(|r| r.reason == "frozen by --freeze")
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

fn shape_text(v: &ValueInfo) -> String {
    match &v.shape {
        None => "?".into(),
        Some(dims) => format!(
            "[{}]",
            dims.iter()
                .map(|d| match d {
                    graph::Dim::Fixed(n) => n.to_string(),
                    graph::Dim::Symbolic(s) => s.clone(),
                })
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn print_text(s: &Summary) -> anyhow::Result<()> {
    super::outln(format_args!("{}", s.file))?;
    super::outln(format_args!(
        "  producer      {} {}",
        s.producer.name, s.producer.version
    ))?;
    super::outln(format_args!("  IR version    {}", s.ir_version))?;
    let opsets: Vec<String> = s
        .opsets
        .iter()
        .map(|o| format!("{} {}", o.domain, o.version))
        .collect();
    super::outln(format_args!("  opsets        {}", opsets.join(", ")))?;
    for v in &s.inputs {
        super::outln(format_args!(
            "  input         {} {} {}",
            v.name,
            v.elem_type,
            shape_text(v)
        ))?;
    }
    for v in &s.outputs {
        super::outln(format_args!(
            "  output        {} {} {}",
            v.name,
            v.elem_type,
            shape_text(v)
        ))?;
    }
    let ops: Vec<String> = s
        .nodes
        .by_op
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    super::outln(format_args!(
        "  nodes         {} ({})",
        s.nodes.total,
        ops.join(", ")
    ))?;
    let dtypes: Vec<String> = s
        .initializers
        .dtypes
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    super::outln(format_args!(
        "  initializers  {} tensors, {} elements, {} bytes ({}){}",
        s.initializers.count,
        s.initializers.elements,
        s.initializers.bytes,
        dtypes.join(", "),
        if s.initializers.external > 0 {
            format!(", {} stored externally", s.initializers.external)
        } else {
            String::new()
        }
    ))?;
    match &s.trainable {
        Some(t) => {
            super::outln(format_args!(
                "  trainable     {} tensors, {} elements, {:.1}% of the float weights",
                t.tensors,
                t.elements,
                100.0 * t.share
            ))?;
            for r in &t.list {
                super::outln(format_args!(
                    "    {:<40} {:>10} {}",
                    r.name, r.elements, r.dtype
                ))?;
            }
            if !t.frozen.is_empty() {
                super::outln(format_args!("  frozen float tensors"))?;
                for r in &t.frozen {
                    super::outln(format_args!(
                        "    {:<40} {:>10} {} ({})",
                        r.name, r.elements, r.dtype, r.reason
                    ))?;
                }
            }
        }
        None => {
            super::outln(format_args!(
                "  unsupported   {} node(s): the model cannot be imported",
                s.unsupported_ops.len()
            ))?;
            for u in &s.unsupported_ops {
                super::outln(format_args!(
                    "    node `{}`: {} (opset {}): {}",
                    u.node, u.op_type, u.opset, u.reason
                ))?;
            }
        }
    }
    Ok(())
}

/// The `inspect --json` document of a TorchScript file (schema 1).
#[derive(Debug, Serialize)]
pub struct TorchScriptSummary {
    pub schema: u32,
    pub file: String,
    /// Always `torchscript` (ONNX summaries have no `format` field).
    pub format: &'static str,
    pub parameters: Vec<crate::torchscript::ParamInfo>,
    pub trainable: super::pipeline::TrainableShare,
}

fn inspect_torchscript(args: &Args) -> anyhow::Result<Outcome> {
    let options = ImportOptions {
        device: tch::Device::Cpu,
        freeze: args.freeze.clone(),
        train: args.train.clone(),
        ..Default::default()
    };
    let loaded = super::pipeline::LoadedModel::load(&args.model, &options)?;
    let trainable = loaded.trainable();
    let super::pipeline::LoadedModel::TorchScript(ts) = loaded else {
        unreachable!("detected as TorchScript");
    };
    let summary = TorchScriptSummary {
        schema: 1,
        file: args.model.display().to_string(),
        format: "torchscript",
        parameters: ts.infos.clone(),
        trainable,
    };
    if args.json {
        super::outln(format_args!("{}", serde_json::to_string_pretty(&summary)?))?;
        return Ok(Outcome::Success);
    }
    super::outln(format_args!("{}", summary.file))?;
    super::outln(format_args!(
        "  format        TorchScript (torch.jit.save archive)"
    ))?;
    let elements: i64 = summary.parameters.iter().map(|p| p.elements).sum();
    super::outln(format_args!(
        "  parameters    {} tensors, {} elements",
        summary.parameters.len(),
        elements
    ))?;
    super::outln(format_args!(
        "  trainable     {} tensors, {} elements, {:.1}% of the float weights",
        trainable.tensors,
        trainable.elements,
        100.0 * trainable.share
    ))?;
    for p in &summary.parameters {
        super::outln(format_args!(
            "    {:<40} {:>10} {} {:?}{}",
            p.name,
            p.elements,
            p.dtype,
            p.shape,
            p.reason
                .as_deref()
                .map(|r| format!(" (frozen: {r})"))
                .unwrap_or_default()
        ))?;
    }
    Ok(Outcome::Success)
}

pub fn run(args: Args) -> anyhow::Result<Outcome> {
    let kind = crate::torchscript::detect(&args.model)?;
    crate::torchscript::refuse_pickles(&args.model, kind)?;
    if kind == crate::torchscript::FileKind::TorchScript {
        return inspect_torchscript(&args);
    }
    let model = Model::load(&args.model)?;
    let options = ImportOptions {
        freeze: args.freeze,
        train: args.train,
        ..Default::default()
    };
    let summary = summarize(&model, &options)?;
    if args.json {
        super::outln(format_args!("{}", serde_json::to_string_pretty(&summary)?))?;
    } else {
        print_text(&summary)?;
    }
    Ok(Outcome::Success)
}
