//! `ibau verify MODEL`: does this file compute the same function in the tch
//! import, ONNX Runtime and tract?

use std::path::PathBuf;

use anyhow::Context;
use serde::Serialize;
use tch::{Kind, Tensor};

use super::Outcome;
use crate::graph::{ops::Registry, Graph, ImportOptions};
use crate::onnx::Model;
use crate::parity::{self, OrtSession};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The ONNX model file.
    #[arg(value_parser = super::existing_file)]
    pub model: PathBuf,
    /// Number of samples in the batch.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(i64).range(1..))]
    pub batch: i64,
    /// Tolerance on the max absolute difference, relative to the output's
    /// scale when that is above 1.
    #[arg(long, default_value_t = 1e-4)]
    pub tolerance: f64,
    /// Seed of the random U[0,1) inputs.
    #[arg(long, default_value_t = 0)]
    pub seed: i64,
    /// Skip tract (ONNX Runtime is always run).
    #[arg(long)]
    pub no_tract: bool,
    /// Print the result as JSON (schema in README.md).
    #[arg(long)]
    pub json: bool,
}

/// The `verify --json` document.
#[derive(Debug, Serialize)]
pub struct Report {
    pub passed: bool,
    pub tolerance: f64,
    pub batch: i64,
    pub outputs: Vec<OutputDiff>,
    /// Runtimes that could not run the file, with the reason (not counted as a
    /// disagreement; ONNX Runtime is required and fails the command instead).
    pub skipped: Vec<Skipped>,
}

#[derive(Debug, Serialize)]
pub struct OutputDiff {
    pub name: String,
    pub scale: f64,
    pub max_abs_diff: Diffs,
    pub passed: bool,
}

#[derive(Debug, Serialize)]
pub struct Diffs {
    pub ort: f64,
    pub tract: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct Skipped {
    pub runtime: String,
    pub reason: String,
}

/// Random U[0,1) inputs in each graph input's declared shape.
pub fn random_inputs(graph: &Graph, batch: i64, seed: i64) -> anyhow::Result<Vec<Tensor>> {
    tch::manual_seed(seed);
    graph
        .inputs
        .iter()
        .map(|input| {
            let shape = input.concrete_shape(batch).with_context(|| {
                format!(
                    "graph input `{}` declares no shape: pass --data",
                    input.name
                )
            })?;
            if !input.data_type.is_float() {
                anyhow::bail!(
                    "graph input `{}` is {}, not float: pass --data",
                    input.name,
                    input.elem_type
                );
            }
            Ok(Tensor::rand(
                shape.as_slice(),
                (Kind::Float, tch::Device::Cpu),
            ))
        })
        .collect()
}

/// Compares the tch import of `model` with ONNX Runtime (and tract) on `inputs`.
pub fn compare(
    model: &Model,
    graph: &Graph,
    inputs: &[Tensor],
    tolerance: f64,
    tract: bool,
) -> anyhow::Result<Report> {
    let ours = tch::no_grad(|| graph.forward(inputs)).context("running the tch import")?;
    let mut session = OrtSession::open(&model.path)?;
    let theirs = session.run(inputs)?;
    let mut skipped = Vec::new();
    let tract_out = if tract {
        match parity::tract_runtime::run(&model.path, inputs) {
            Ok(out) => Some(out),
            Err(e) => {
                skipped.push(Skipped {
                    runtime: "tract".into(),
                    reason: e.to_string(),
                });
                None
            }
        }
    } else {
        None
    };
    let mut outputs = Vec::new();
    for (i, info) in graph.outputs.iter().enumerate() {
        let reference = &theirs[i];
        let scale = parity::max_abs(reference);
        let limit = tolerance * scale.max(1.0);
        let ort = parity::max_abs_diff(&ours[i], reference);
        let tract = tract_out
            .as_ref()
            .map(|t| parity::max_abs_diff(&ours[i], &t[i]));
        outputs.push(OutputDiff {
            name: info.name.clone(),
            scale,
            passed: ort <= limit && tract.is_none_or(|d| d <= limit),
            max_abs_diff: Diffs { ort, tract },
        });
    }
    Ok(Report {
        passed: outputs.iter().all(|o| o.passed),
        tolerance,
        batch: inputs.first().map(|t| t.size()[0]).unwrap_or(0),
        outputs,
        skipped,
    })
}

pub fn run(args: Args) -> anyhow::Result<Outcome> {
    let model = Model::load(&args.model)?;
    let graph = Graph::import(&model, &Registry::standard(), &ImportOptions::default())
        .with_context(|| format!("importing `{}`", args.model.display()))?;
    let inputs = random_inputs(&graph, args.batch, args.seed)?;
    let report = compare(&model, &graph, &inputs, args.tolerance, !args.no_tract)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{} (batch {}, tolerance {:e})",
            args.model.display(),
            report.batch,
            report.tolerance
        );
        for o in &report.outputs {
            let tract = o
                .max_abs_diff
                .tract
                .map(|d| format!("{d:.3e}"))
                .unwrap_or_else(|| "-".into());
            println!(
                "  {:<24} ort {:.3e}  tract {}  (scale {:.3})  {}",
                o.name,
                o.max_abs_diff.ort,
                tract,
                o.scale,
                if o.passed { "ok" } else { "DIFFERS" }
            );
        }
        for s in &report.skipped {
            println!("  {} skipped: {}", s.runtime, s.reason);
        }
        println!(
            "{}",
            if report.passed {
                "passed"
            } else {
                "FAILED: a runtime disagrees"
            }
        );
    }
    Ok(if report.passed {
        Outcome::Success
    } else {
        Outcome::Finding
    })
}
