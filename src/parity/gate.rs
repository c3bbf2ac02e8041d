//! The parity gate of `sanitize`: the trained model is written into the
//! output plan's staging folder, a second runtime runs the written file
//! (ONNX Runtime for ONNX, a libtorch reload for TorchScript) on the clean
//! batches and must match the trained module within the tolerance; only
//! then is the file moved into place.

use std::path::Path;

use tch::Tensor;

use crate::classifier::Classifier;
use crate::error::{Error, Result};
use crate::model::{GraphClassifier, Model};
use crate::outputs::OutputPlan;
use crate::parity::{self, OrtSession};
use crate::torchscript::TorchScript;

/// What the gate measured on the written file.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Parity {
    /// What ran the written file: `onnxruntime` or `libtorch`.
    pub runtime: &'static str,
    pub passed: bool,
    pub max_abs_diff: f64,
    pub tolerance: f64,
}

/// Writes the trained `model` through the plan, gated by the parity check.
pub fn write_checked(
    model: &Model,
    inputs: &[Tensor],
    tolerance: Option<f64>,
    output: &OutputPlan,
) -> Result<Parity> {
    Ok(match model {
        Model::Onnx { file, model } => {
            let tolerance =
                tolerance.unwrap_or_else(|| crate::graph::Graph::default_tolerance(file).0);
            let trained = crate::export::with_parameters(file, &model.graph.params)?;
            crate::export::write_checked(&trained, output, |path| {
                onnx_parity(path, model, inputs, tolerance)
            })?
        }
        Model::TorchScript(ts) => {
            let tolerance = tolerance.unwrap_or(1e-4);
            crate::export::write_checked_with(
                output,
                |path| Ok(ts.save_trained(path)?),
                |path| torchscript_parity(path, ts, inputs, tolerance),
            )?
        }
    })
}

/// Why the parity gate refused a written file.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    /// The second runtime could not run the written file.
    #[error(transparent)]
    Run(#[from] Error),
    #[error("{runtime} on the written file differs from the trained module by {worst:.3e} (tolerance {tolerance:e})")]
    Differs {
        runtime: &'static str,
        worst: f64,
        tolerance: f64,
    },
}

/// Worst difference over `inputs` of `ours` and `theirs`, and whether every
/// output stayed within `tolerance` (see [`parity::within`]).
fn compare_runs(
    runtime: &'static str,
    inputs: &[Tensor],
    tolerance: f64,
    mut run: impl FnMut(&Tensor) -> Result<(Vec<Tensor>, Vec<Tensor>)>,
) -> std::result::Result<Parity, GateError> {
    let mut worst = 0.0f64;
    let mut passed = true;
    for x in inputs {
        let (ours, theirs) = run(x)?;
        for (a, b) in ours.iter().zip(&theirs) {
            let diff = parity::max_abs_diff(a, b);
            worst = worst.max(diff);
            passed &= parity::within(diff, parity::max_abs(b), tolerance);
        }
    }
    if passed {
        Ok(Parity {
            runtime,
            passed,
            max_abs_diff: worst,
            tolerance,
        })
    } else {
        Err(GateError::Differs {
            runtime,
            worst,
            tolerance,
        })
    }
}

/// Runs the written ONNX file with ONNX Runtime on the clean set and compares
/// it with the trained module.
fn onnx_parity(
    path: &Path,
    model: &GraphClassifier,
    inputs: &[Tensor],
    tolerance: f64,
) -> std::result::Result<Parity, GateError> {
    let mut session = OrtSession::open(path).map_err(Error::from)?;
    // A file with a fixed batch size takes batches of that size only.
    let chunked;
    let inputs = match model.fixed_batch {
        Some(b) => {
            chunked = inputs
                .iter()
                .map(|x| crate::model::fixed_batch_chunks(x, b))
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(Error::from)?
                .into_iter()
                .flatten()
                .map(|(chunk, _)| chunk)
                .collect::<Vec<_>>();
            chunked.as_slice()
        }
        None => inputs,
    };
    compare_runs("onnxruntime", inputs, tolerance, |x| {
        let ours = tch::no_grad(|| model.graph.forward(std::slice::from_ref(x)))?;
        let theirs = session.run(std::slice::from_ref(x))?;
        Ok((ours, theirs))
    })
}

/// Reloads the written TorchScript file with libtorch and compares it with
/// the trained module on the clean set.
fn torchscript_parity(
    path: &Path,
    model: &TorchScript,
    inputs: &[Tensor],
    tolerance: f64,
) -> std::result::Result<Parity, GateError> {
    let device = Classifier::device(model);
    let reloaded = TorchScript::load(path, device, None, None).map_err(Error::from)?;
    compare_runs("libtorch", inputs, tolerance, |x| {
        tch::no_grad(|| {
            let ours = model.forward(x)?;
            let theirs = reloaded.forward(x)?;
            Ok((vec![ours], vec![theirs]))
        })
    })
}
