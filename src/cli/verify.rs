//! `ibau verify MODEL`: does this file compute the same function in the tch
//! import, ONNX Runtime and tract?

use std::path::PathBuf;

use super::Outcome;
use ibau::torchscript::{self, FileKind};
use ibau::verify::VerifyOptions;

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
    /// Print the result as JSON (schema in docs/schemas.md).
    #[arg(long)]
    pub json: bool,
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
    let options = VerifyOptions {
        batch: args.batch,
        seed: args.seed,
        tolerance: args.tolerance,
        tract: !args.no_tract,
    };
    let report = ibau::verify(&onnx_path, ts_path.as_deref(), &options)?;
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
