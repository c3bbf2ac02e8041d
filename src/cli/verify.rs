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
use crate::torchscript::{self, FileKind, TorchScript};

/// The largest `--batch` (random inputs are also checked against the
/// memory budget).
const MAX_BATCH: i64 = 65536;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The ONNX model file, or a TorchScript file together with `--onnx`.
    #[arg(value_parser = super::existing_file)]
    pub model: PathBuf,
    /// Compare the TorchScript MODEL with this ONNX file (e.g. its export):
    /// both run on the same inputs, in the ONNX file's input shape.
    #[arg(long, value_name = "FILE.onnx", value_parser = super::existing_file, conflicts_with = "torchscript")]
    pub onnx: Option<PathBuf>,
    /// Compare the ONNX MODEL with this TorchScript file.
    #[arg(long, value_name = "FILE.pt", value_parser = super::existing_file)]
    pub torchscript: Option<PathBuf>,
    /// Number of samples in the batch.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(i64).range(1..=MAX_BATCH))]
    pub batch: i64,
    /// Tolerance on the max absolute difference, relative to the output's
    /// scale when that is above 1 [default: 1e-4; 1e-2 for float16 models,
    /// 3e-2 for bfloat16 ones, which ONNX Runtime computes in that precision].
    #[arg(long, value_parser = super::non_negative_number, allow_negative_numbers = true)]
    pub tolerance: Option<f64>,
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
pub fn compare(
    model: &Model,
    graph: &Graph,
    inputs: &[Tensor],
    tolerance: f64,
    tract: bool,
) -> anyhow::Result<Report> {
    let ours = tch::no_grad(|| graph.forward(inputs)).context("running the tch import")?;
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
fn compare_with(
    model: &Model,
    graph: &Graph,
    reference: String,
    ours: Vec<Tensor>,
    inputs: &[Tensor],
    tolerance: f64,
    tract: bool,
) -> anyhow::Result<Report> {
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
            anyhow::bail!(
                "`{}`: output `{}` is not finite (NaN or Inf) in ONNX Runtime on random U[0,1) inputs; \
                 the weights or the graph produce NaN/Inf, so there is nothing to compare",
                model.path.display(),
                info.name
            );
        }
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
        reference,
        precision: Graph::default_tolerance(model).1,
        passed: outputs.iter().all(|o| o.passed),
        tolerance,
        batch: inputs.first().map(|t| t.size()[0]).unwrap_or(0),
        outputs,
        skipped,
    })
}

/// Which file is ONNX and which TorchScript, from the arguments and the
/// files' contents.
fn pair(args: &Args) -> anyhow::Result<(PathBuf, Option<PathBuf>)> {
    let kind = torchscript::detect(&args.model)?;
    torchscript::refuse_pickles(&args.model, kind)?;
    let expect = |path: &PathBuf, want: FileKind, option: &str| -> anyhow::Result<()> {
        let got = torchscript::detect(path)?;
        torchscript::refuse_pickles(path, got)?;
        if got != want {
            anyhow::bail!(
                "{option} `{}` is {}, not {}",
                path.display(),
                if got == FileKind::TorchScript {
                    "a TorchScript file"
                } else {
                    "not a TorchScript file"
                },
                if want == FileKind::TorchScript {
                    "a TorchScript file"
                } else {
                    "an ONNX file"
                }
            );
        }
        Ok(())
    };
    match (kind, &args.onnx, &args.torchscript) {
        (FileKind::TorchScript, Some(onnx), None) => {
            expect(onnx, FileKind::Onnx, "--onnx")?;
            Ok((onnx.clone(), Some(args.model.clone())))
        }
        (FileKind::TorchScript, None, _) => anyhow::bail!(
            "`{}` is a TorchScript file: verify compares it with an ONNX file, pass --onnx FILE.onnx",
            args.model.display()
        ),
        (FileKind::TorchScript, Some(_), Some(_)) => unreachable!("clap: --onnx conflicts with --torchscript"),
        (_, Some(_), _) => anyhow::bail!(
            "--onnx is for a TorchScript MODEL; `{}` is ONNX: use --torchscript FILE.pt to compare it with one",
            args.model.display()
        ),
        (_, None, Some(ts)) => {
            expect(ts, FileKind::TorchScript, "--torchscript")?;
            Ok((args.model.clone(), Some(ts.clone())))
        }
        (_, None, None) => Ok((args.model.clone(), None)),
    }
}

pub fn run(args: Args) -> anyhow::Result<Outcome> {
    let (onnx_path, ts_path) = pair(&args)?;
    let model = Model::load(&onnx_path)?;
    let graph = Graph::import(&model, &Registry::standard(), &ImportOptions::default())
        .with_context(|| format!("importing `{}`", onnx_path.display()))?;
    let inputs = random_inputs(&graph, args.batch, args.seed)?;
    let tolerance = args
        .tolerance
        .unwrap_or_else(|| Graph::default_tolerance(&model).0);
    let report = match &ts_path {
        None => compare(&model, &graph, &inputs, tolerance, !args.no_tract)?,
        Some(ts_path) => {
            let ts = TorchScript::load(ts_path, tch::Device::Cpu, None, None)?;
            if inputs.len() != 1 {
                anyhow::bail!(
                    "`{}` has {} inputs; comparing with TorchScript needs one image input",
                    onnx_path.display(),
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
                !args.no_tract,
            )?
        }
    };
    if args.json {
        super::outln(format_args!("{}", serde_json::to_string_pretty(&report)?))?;
    } else {
        super::outln(format_args!(
            "{} (batch {}, tolerance {:e} for a {} model){}",
            onnx_path.display(),
            report.batch,
            report.tolerance,
            report.precision,
            match &ts_path {
                Some(p) => format!(", compared with TorchScript {}", p.display()),
                None => String::new(),
            }
        ))?;
        for o in &report.outputs {
            let tract = o
                .max_abs_diff
                .tract
                .map(|d| format!("{d:.3e}"))
                .unwrap_or_else(|| "-".into());
            super::outln(format_args!(
                "  {:<24} ort {:.3e}  tract {}  (scale {:.3})  {}",
                o.name,
                o.max_abs_diff.ort,
                tract,
                o.scale,
                if o.passed { "ok" } else { "DIFFERS" }
            ))?;
        }
        for s in &report.skipped {
            super::outln(format_args!("  {} skipped: {}", s.runtime, s.reason))?;
        }
        super::outln(format_args!(
            "{}",
            if report.passed {
                "passed"
            } else {
                "FAILED: a runtime disagrees"
            }
        ))?;
    }
    Ok(if report.passed {
        Outcome::Success
    } else {
        Outcome::Finding
    })
}
