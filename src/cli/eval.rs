//! `ibau eval MODEL --data DATA [--range A:B] [--trigger T --target N|next]...
//! [--json]`: clean accuracy and attack success rates.

use std::path::PathBuf;

use super::{Outcome, PreprocessArgs};
use ibau::data::Target;
use ibau::graph::ImportOptions;
use ibau::{evaluate, InputMap, Model, TestSet};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The model: an ONNX file or a TorchScript file (`torch.jit.save`).
    #[arg(value_parser = super::existing_file)]
    pub model: PathBuf,
    /// Labelled images: IDX (`*-images-idx3-ubyte[.gz]`), .npz, or a folder
    /// with one sub-folder per class.
    #[arg(long, value_parser = super::existing_path)]
    pub data: PathBuf,
    /// Samples to use, `A:B` (end excluded; `A:` or `:B` open).
    #[arg(long, value_name = "A:B")]
    pub range: Option<String>,
    /// Trigger to measure the attack success rate with (repeatable: each
    /// pairs with the --target at the same position):
    /// `patch:size=S,value=V,row=R,col=C`, `blend:pattern=FILE.npy,alpha=A`,
    /// `mask:pattern=FILE,mask=FILE`, `additive:pattern=FILE,scale=S`
    /// (`clamp(x + S P, 0, 1)`) or `warp:grid=FILE.npy` (`grid_sample`,
    /// bilinear, border, corners aligned).
    #[arg(long, requires = "target", value_name = "SPEC")]
    pub trigger: Vec<String>,
    /// The attack's target: a class, or `next` (all-to-all: a sample of
    /// label y succeeds when classified (y + 1) mod classes; counted over
    /// every sample). One per --trigger.
    #[arg(long, requires = "trigger", value_name = "N|next", value_parser = super::parse_target, allow_negative_numbers = true)]
    pub target: Vec<Target>,
    #[command(flatten)]
    pub preprocess: PreprocessArgs,
    #[arg(long, default_value = "auto", value_parser = super::parse_device)]
    pub device: tch::Device,
    /// Print {"acc", "asr", "attacks", "samples"} as JSON (schema in docs/schemas.md).
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> anyhow::Result<Outcome> {
    let attacks = super::attacks_option(&args.trigger, &args.target)?;
    let options = ImportOptions {
        device: args.device,
        ..Default::default()
    };
    let model = Model::load(&args.model, &options)?;
    if let Some(note) = model.batch_note() {
        eprintln!("batch: {note}");
    }
    let data = ibau::data::load_range(&args.data, args.range.as_deref())?;
    let map = InputMap::new(&model, &args.preprocess.to_library(), &data)?;
    evaluate::check_classes(model.classifier(), &map, &data, &args.target, "--data")?;
    let test = TestSet {
        data,
        attacks,
        batch_size: 500,
    };
    let metrics = ibau::evaluate(model.classifier(), &map, &test)?;
    if let Some(hint) = evaluate::low_accuracy_hint(metrics.acc, "the data") {
        eprintln!("warning: {hint}");
    }
    if args.json {
        super::outln(format_args!("{}", serde_json::to_string_pretty(&metrics)?))?;
    } else {
        super::outln(format_args!(
            "{} on {} ({} samples)",
            args.model.display(),
            test.data.source,
            metrics.samples
        ))?;
        super::outln(format_args!("  ACC {:.2}%", 100.0 * metrics.acc))?;
        match metrics.attacks.as_slice() {
            [one] => super::outln(format_args!("  ASR {:.2}%", 100.0 * one.asr))?,
            several => {
                for a in several {
                    super::outln(format_args!(
                        "  ASR {:.2}% ({} -> {})",
                        100.0 * a.asr,
                        a.trigger,
                        a.target
                    ))?;
                }
            }
        }
    }
    Ok(Outcome::Success)
}
