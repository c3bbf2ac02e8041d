//! `ibau scan MODEL... --clean DATA`: is each model backdoored, and towards
//! which class? No trigger needed.

use std::path::PathBuf;

use super::{Outcome, PreprocessArgs};
use ibau::graph::ImportOptions;
use ibau::scan::{self, ScanConfig, Verdict};
use ibau::Model;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Models to scan: ONNX or TorchScript files.
    #[arg(required = true, value_parser = super::existing_path)]
    pub models: Vec<PathBuf>,
    /// Clean labelled images (IDX, .npz, or a folder of class folders).
    #[arg(long, value_parser = super::existing_path)]
    pub clean: PathBuf,
    /// Clean samples to use, `A:B` (end excluded).
    #[arg(long, value_name = "A:B")]
    pub clean_range: Option<String>,
    #[command(flatten)]
    pub preprocess: PreprocessArgs,
    /// Steps of each per-class search.
    #[arg(long, default_value_t = 60, value_parser = super::positive_count)]
    pub steps: usize,
    /// Flag a class whose score is above this.
    #[arg(long, value_parser = super::positive_number)]
    pub threshold: Option<f64>,
    #[arg(long, default_value = "auto", value_parser = super::parse_device)]
    pub device: tch::Device,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> anyhow::Result<Outcome> {
    let clean = ibau::data::load_range(&args.clean, args.clean_range.as_deref())?;
    let mut config = ScanConfig {
        preprocess: args.preprocess.to_library(),
        steps: args.steps,
        ..Default::default()
    };
    if let Some(t) = args.threshold {
        config.threshold = t;
    }
    let options = ImportOptions {
        device: args.device,
        ..Default::default()
    };
    let mut found = false;
    let mut entries = Vec::new();
    for path in &args.models {
        let model = Model::load(path, &options)?;
        let (result, _) = scan::scan(&model, &clean, &config, &mut |_, _, _| {})?;
        found |= result.verdict == Verdict::Backdoor;
        if !args.json {
            super::outln(format_args!(
                "{}: {:?} targets {:?} statistic {:.2} (threshold {:.2}) {:.1}s",
                path.display(),
                result.verdict,
                result.targets,
                result.statistic,
                result.threshold,
                result.seconds
            ))?;
            for c in &result.classes {
                super::outln(format_args!(
                    "  {:>3} radius {:6.3} mask {:7.2} transfer {:.2}/{:.2} score {:.2}",
                    c.class, c.radius, c.mask, c.radius_transfer, c.mask_transfer, c.score
                ))?;
            }
        }
        entries.push(serde_json::json!({"file": path.display().to_string(), "result": result}));
    }
    if args.json {
        super::outln(format_args!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"schema": scan::SCHEMA, "models": entries})
            )?
        ))?;
    }
    Ok(if found {
        Outcome::Finding
    } else {
        Outcome::Success
    })
}
