//! Sanitize a model with the library API, without the command line:
//!
//!     cargo run --example sanitize -- MODEL CLEAN OUT [ROUNDS]
//!
//! MODEL is an ONNX or TorchScript file, CLEAN a labelled image set (IDX,
//! .npz or a folder of class sub-folders; its first 1000 samples are used),
//! OUT where the cleaned model goes. Prints each round and the parity check.
//! For example, on the bundled BadNets VGG (one round):
//!
//!     cargo run --example sanitize -- models/vgg_badnets_legacy.onnx \
//!         /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz vgg_clean.onnx 1

use std::path::PathBuf;

use ibau::graph::ImportOptions;
use ibau::outputs::{Inputs, OutputPlan};
use ibau::{Event, Model, SanitizeConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model_path, clean_path, output, rest @ ..] = args.as_slice() else {
        return Err("usage: sanitize MODEL CLEAN OUT [ROUNDS]".into());
    };
    let (model_path, clean_path) = (PathBuf::from(model_path), PathBuf::from(clean_path));

    // Check where we write against what we read, before any work.
    let mut inputs = Inputs::default();
    inputs.add(&model_path, "the input model");
    inputs.extend(ibau::data::files_read(&clean_path), "the clean data");
    let plan = OutputPlan::new(&inputs, output.as_ref(), None)?;

    let mut model = Model::load(&model_path, &ImportOptions::default())?;
    let clean = ibau::data::load_range(&clean_path, Some("0:1000"))?;
    let mut config = SanitizeConfig::default();
    if let Some(rounds) = rest.first() {
        config.ibau.rounds = rounds.parse()?;
    }

    // The observer: any closure taking events.
    let mut observer = |event: Event<'_>| match event {
        Event::Started { trainable, .. } => {
            eprintln!("training {} tensors", trainable.tensors)
        }
        Event::Round(round) => eprintln!(
            "round {}: {:.1} s, perturbed class {} ({:.0}% of a batch)",
            round.stats.round,
            round.stats.seconds,
            round.stats.perturbed_class,
            100.0 * round.stats.perturbed_share
        ),
        Event::Warning(text) => eprintln!("warning: {text}"),
        _ => {}
    };
    let report = ibau::sanitize(&mut model, &clean, &config, &plan, &mut observer)?;
    println!(
        "wrote {} ({} parity: max abs diff {:.2e})",
        report.output, report.parity.runtime, report.parity.max_abs_diff
    );
    Ok(())
}
