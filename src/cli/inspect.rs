//! `ibau inspect MODEL [--json]`: what a model is made of and whether ibau can
//! train it.

use std::path::PathBuf;

use super::Outcome;
use ibau::graph::{self, ImportOptions, ValueInfo};
use ibau::inspect::{summarize, summarize_torchscript, Summary};
use ibau::onnx::Model as OnnxFile;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The model: an ONNX file or a TorchScript file (`torch.jit.save`).
    #[arg(value_parser = super::existing_file)]
    pub model: PathBuf,
    /// Print the summary as JSON (schema in docs/schemas.md) instead of text.
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

fn inspect_torchscript(args: &Args) -> anyhow::Result<Outcome> {
    let options = ImportOptions {
        device: tch::Device::Cpu,
        freeze: args.freeze.clone(),
        train: args.train.clone(),
        ..Default::default()
    };
    let loaded = ibau::Model::load(&args.model, &options)?;
    let trainable = loaded.trainable();
    let summary = summarize_torchscript(&loaded).expect("detected as TorchScript");
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
                .map(|r| format!(" (frozen: {r})"))
                .unwrap_or_default()
        ))?;
    }
    Ok(Outcome::Success)
}

pub fn run(args: Args) -> anyhow::Result<Outcome> {
    let kind = ibau::torchscript::detect(&args.model)?;
    ibau::torchscript::refuse_pickles(&args.model, kind)?;
    if kind == ibau::torchscript::FileKind::TorchScript {
        return inspect_torchscript(&args);
    }
    let model = OnnxFile::load(&args.model)?;
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
