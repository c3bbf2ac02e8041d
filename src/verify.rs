//! `verify`: does one file compute the same function in the tch import,
//! ONNX Runtime and tract (or, given a TorchScript file too, in TorchScript)?
//! Random U[0, 1) inputs in the file's declared input shape and precision.

use std::path::Path;

use serde::Serialize;
use tch::{Kind, Tensor};

use crate::error::{bail, Error, Result};
use crate::graph::{ops::Registry, Graph, ImportOptions};
use crate::onnx::Model;
use crate::parity::{self, OrtSession};
use crate::torchscript::TorchScript;

/// What `verify` runs.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// Samples per random batch.
    pub batch: i64,
    /// Seed of the random inputs.
    pub seed: i64,
    /// Relative tolerance; `None` = what suits the file's precision.
    pub tolerance: Option<f64>,
    /// Also run tract (skipped, with the reason, when it cannot load the file).
    pub tract: bool,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        VerifyOptions {
            batch: 8,
            seed: 0,
            tolerance: None,
            tract: true,
        }
    }
}

/// Runs the ONNX file `onnx` through the tch import (or, with `torchscript`,
/// that TorchScript module), ONNX Runtime and tract on the same random
/// inputs and compares every output.
pub fn verify(onnx: &Path, torchscript: Option<&Path>, options: &VerifyOptions) -> Result<Report> {
    let model = Model::load(onnx)?;
    let graph = Graph::import(&model, &Registry::standard(), &ImportOptions::default())
        .map_err(|source| Error::import(onnx, source))?;
    if graph.outputs.is_empty() {
        bail!(
            "`{}` has no graph outputs: nothing to compare",
            onnx.display()
        );
    }
    let inputs = random_inputs(&graph, options.batch, options.seed)?;
    let tolerance = options
        .tolerance
        .unwrap_or_else(|| Graph::default_tolerance(&model).0);
    match torchscript {
        None => compare(&model, &graph, &inputs, tolerance, options.tract),
        Some(ts_path) => {
            let ts = TorchScript::load(ts_path, tch::Device::Cpu, None, None)?;
            if inputs.len() != 1 {
                bail!(
                    "`{}` has {} inputs; comparing with TorchScript needs one image input",
                    onnx.display(),
                    inputs.len()
                );
            }
            let out = tch::no_grad(|| ts.forward(&inputs[0]))?;
            let reference = format!("torchscript {}", ts_path.display());
            compare_with(
                &model,
                &graph,
                reference,
                vec![out],
                &inputs,
                tolerance,
                options.tract,
            )
        }
    }
}

/// The `verify --json` document.
#[derive(Debug, Serialize)]
pub struct Report {
    /// What the runtimes are compared with: `tch import` of the ONNX file,
    /// or `torchscript FILE` when a TorchScript file is compared.
    pub reference: String,
    /// The lowest float precision the file computes in (sets the default
    /// tolerance): float32, float16 or bfloat16.
    pub precision: &'static str,
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
pub fn random_inputs(graph: &Graph, batch: i64, seed: i64) -> Result<Vec<Tensor>> {
    tch::manual_seed(seed);
    graph
        .inputs
        .iter()
        .map(|input| {
            let Some(shape) = input.concrete_shape(batch) else {
                bail!("graph input `{}` declares no shape", input.name);
            };
            let declared = input.shape.iter().flatten().enumerate();
            for (axis, dim) in declared {
                if let crate::graph::Dim::Fixed(n) = dim {
                    if *n < 0 {
                        bail!(
                            "graph input `{}` declares dimension {n} at axis {axis}: a dimension is a size (at least 0) or a name; fix the file's input shape",
                            input.name
                        );
                    }
                }
            }
            if !input.data_type.is_float() {
                bail!(
                    "graph input `{}` is {}, not float",
                    input.name,
                    input.elem_type
                );
            }
            crate::limits::check_dims(
                &shape,
                4,
                &format!(
                    "a random batch for graph input `{}` ({shape:?})",
                    input.name
                ),
            )?;
            // Rounded to the input's precision: every runtime sees the same values.
            Ok(crate::data::round_to(
                &Tensor::f_rand(shape.as_slice(), (Kind::Float, tch::Device::Cpu))?,
                input.data_type,
            )?)
        })
        .collect()
}

/// Compares the tch import of `model` with ONNX Runtime (and tract) on `inputs`.
pub(crate) fn compare(
    model: &Model,
    graph: &Graph,
    inputs: &[Tensor],
    tolerance: f64,
    tract: bool,
) -> Result<Report> {
    let ours = tch::no_grad(|| graph.forward(inputs))?;
    compare_with(
        model,
        graph,
        "tch import".into(),
        ours,
        inputs,
        tolerance,
        tract,
    )
}

/// Compares `ours` (outputs of `graph`'s file on `inputs` by some other
/// means) with ONNX Runtime (and tract) on the file.
pub(crate) fn compare_with(
    model: &Model,
    graph: &Graph,
    reference: String,
    ours: Vec<Tensor>,
    inputs: &[Tensor],
    tolerance: f64,
    tract: bool,
) -> Result<Report> {
    let mut session = OrtSession::open(&model.path)?;
    let theirs = session.run(inputs)?;
    let mut skipped = Vec::new();
    let tract_out = if tract {
        match parity::tract_runtime::run_within(
            &model.path,
            inputs,
            parity::tract_runtime::time_budget(),
        ) {
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
    for (i, info) in graph.outputs.iter().enumerate().take(ours.len()) {
        let reference = &theirs[i];
        // Nothing to compare when ONNX Runtime itself computes NaN or Inf:
        // the file is broken, not a runtime.
        let finite = reference
            .f_isfinite()
            .and_then(|t| t.f_all())
            .map(|t| t.int64_value(&[]) != 0)
            .unwrap_or(false);
        if !finite {
            bail!(
                "`{}`: output `{}` is not finite (NaN or Inf) in ONNX Runtime on random U[0,1) inputs; \
                 the weights or the graph produce NaN/Inf, so there is nothing to compare",
                model.path.display(),
                info.name
            );
        }
        let scale = parity::max_abs(reference);
        let ort = parity::max_abs_diff(&ours[i], reference);
        let tract = tract_out
            .as_ref()
            .map(|t| parity::max_abs_diff(&ours[i], &t[i]));
        let within = |diff: f64| parity::within(diff, scale, tolerance);
        outputs.push(OutputDiff {
            name: info.name.clone(),
            scale,
            passed: within(ort) && tract.is_none_or(within),
            max_abs_diff: Diffs { ort, tract },
        });
    }
    Ok(Report {
        reference,
        precision: Graph::default_tolerance(model).1,
        passed: outputs.iter().all(|o| o.passed),
        tolerance,
        batch: inputs.first().map(|t| t.size()[0]).unwrap_or(0),
        outputs,
        skipped,
    })
}
