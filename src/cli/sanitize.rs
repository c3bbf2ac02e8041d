//! `ibau sanitize MODEL --clean DATA -o OUT`: I-BAU on the model's weights,
//! the cleaned weights written back into the same ONNX graph, gated by an
//! ONNX Runtime parity check of the written file.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use tch::Tensor;

use super::pipeline::{self, GraphClassifier, InputMap, LoadedModel, Metrics, Preprocess, TestSet};
use super::Outcome;
use crate::graph::ImportOptions;
use crate::ibau::{self, Batch, Config, OptimizerKind, Search, TargetedStats};
use crate::outputs::{Inputs, OutputPlan};
use crate::parity::{self, OrtSession};
use crate::torchscript::TorchScript;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The (possibly poisoned) model: ONNX, or TorchScript (`torch.jit.save`).
    /// Never modified.
    #[arg(value_parser = super::existing_file)]
    pub model: PathBuf,
    /// Clean labelled images the defender holds (IDX, .npz or a folder of
    /// class sub-folders).
    #[arg(long, value_parser = pipeline::existing_path)]
    pub clean: PathBuf,
    /// Samples of `--clean` to use, `A:B`.
    #[arg(long, value_name = "A:B")]
    pub clean_range: Option<String>,
    /// Where to write the cleaned model, in the input's format (never the
    /// input path).
    #[arg(short, long)]
    pub output: PathBuf,
    /// I-BAU rounds.
    #[arg(long, default_value_t = 5, value_parser = super::positive_count)]
    pub rounds: usize,
    /// How each round finds the perturbation it unlearns. `targeted`: one
    /// perturbation per class, each shrunk to the smallest L2 radius that
    /// sends 90% of the clean samples to its class; every round unlearns the
    /// class that needed the smallest radius in the first round (a backdoor's
    /// target). `paper`:
    /// the paper's untargeted universal perturbation (SGD, `--perturbation-lr`,
    /// `--regularization`), which on many models finds a natural perturbation
    /// instead of the trigger. Both use `--radius` and `--perturbation-steps`.
    #[arg(long, value_enum, default_value_t = Search::Targeted)]
    pub search: Search,
    /// Fixed-point iterations of the hypergradient.
    #[arg(long, default_value_t = 5, value_parser = super::positive_count)]
    pub k: usize,
    /// Learning rate of the outer optimiser.
    #[arg(long, default_value_t = 1e-3, value_parser = super::positive_number, allow_negative_numbers = true)]
    pub lr: f64,
    /// Outer optimiser.
    #[arg(long, value_enum, default_value_t = OptimizerKind::Adam)]
    pub optim: OptimizerKind,
    /// Clean batch size.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_size: u32,
    /// Steps of the perturbation search per round (default: one per clean
    /// batch, as the paper; the targeted search takes at least 50, cycling
    /// over the batches).
    #[arg(long, value_parser = super::positive_count)]
    pub perturbation_steps: Option<usize>,
    /// Learning rate of the paper's perturbation search (`--search paper`).
    #[arg(long, default_value_t = 10.0, value_parser = super::positive_number, allow_negative_numbers = true)]
    pub perturbation_lr: f64,
    /// L2 radius the perturbation is projected into (the targeted search's
    /// largest radius).
    #[arg(long, default_value_t = 10.0, value_parser = super::positive_number, allow_negative_numbers = true)]
    pub radius: f64,
    /// Weight of ||delta||^2 in the inner loss and the paper's perturbation
    /// search.
    #[arg(long, default_value_t = 0.001, value_parser = super::non_negative_number, allow_negative_numbers = true)]
    pub regularization: f64,
    /// Step size of the fixed-point map delta - step * grad(inner loss).
    #[arg(long, default_value_t = 0.1, value_parser = super::positive_number, allow_negative_numbers = true)]
    pub inner_step: f64,
    /// Share of each clean batch that receives the perturbation in the outer
    /// loss (int(share * batch size) samples; the paper: 0.01, one of 100).
    #[arg(long, default_value_t = 0.01, value_parser = unit_interval)]
    pub poison_share: f64,
    /// Early stop of the fixed-point iterations (||v_k - v_k-1|| below it).
    #[arg(long, default_value_t = 1e-10, value_parser = super::non_negative_number, allow_negative_numbers = true)]
    pub fixed_point_tolerance: f64,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto", value_parser = super::parse_device)]
    pub device: tch::Device,
    /// Seed of the perturbation masks (same seed, same weights on CPU).
    #[arg(long, default_value_t = 0)]
    pub seed: i64,
    /// Freeze initializers whose name matches this regular expression.
    #[arg(long, value_name = "REGEX")]
    pub freeze: Option<regex::Regex>,
    /// Train float initializers whose name matches, beyond the default rule.
    #[arg(long, value_name = "REGEX")]
    pub train: Option<regex::Regex>,
    /// Test set to measure ACC (and ASR with a trigger) before, per round, after.
    #[arg(long, value_parser = pipeline::existing_path)]
    pub test: Option<PathBuf>,
    /// Samples of `--test` to use, `A:B`.
    #[arg(long, value_name = "A:B", requires = "test")]
    pub test_range: Option<String>,
    /// Trigger for measuring the attack success rate (see `ibau eval --help`).
    #[arg(long, requires_all = ["target", "test"])]
    pub trigger: Option<String>,
    /// The attack's target label.
    #[arg(long, requires = "trigger", allow_negative_numbers = true)]
    pub target: Option<i64>,
    /// Stop before `--rounds` once a round ends with the measured attack
    /// success rate below this fraction (e.g. 0.2); needs `--trigger`.
    #[arg(long, value_name = "FRACTION", requires = "trigger", value_parser = unit_interval)]
    pub stop_below_asr: Option<f64>,
    /// Tolerance of the parity check of the written file (ONNX Runtime for
    /// ONNX, a libtorch reload for TorchScript): max absolute difference,
    /// relative to the output's scale when above 1 [default: 1e-4; 1e-2 for
    /// float16 ONNX models, 3e-2 for bfloat16 ones].
    #[arg(long, value_parser = super::non_negative_number, allow_negative_numbers = true)]
    pub parity_tolerance: Option<f64>,
    /// Write a JSON report (schema in README.md).
    #[arg(long, value_name = "FILE.json")]
    pub report: Option<PathBuf>,
    #[command(flatten)]
    pub preprocess: Preprocess,
}

/// The `--report` document (schema 1).
#[derive(Debug, Serialize)]
pub struct Report {
    pub schema: u32,
    pub input: String,
    pub output: String,
    pub device: String,
    pub seconds: f64,
    pub clean_samples: usize,
    pub trainable: Trainable,
    /// The tensor I-BAU's losses used as logits.
    pub logits: pipeline::LogitsSource,
    /// How a batch size fixed by the file was handled (absent when the
    /// file's batch axis is dynamic).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch: Option<String>,
    pub config: Config,
    pub before: Option<Metrics>,
    pub after: Option<Metrics>,
    pub rounds: Vec<Round>,
    pub parity: Parity,
}

#[derive(Debug, Serialize)]
pub struct Trainable {
    pub tensors: usize,
    pub elements: i64,
    pub share: f64,
}

#[derive(Debug, Serialize)]
pub struct Round {
    pub round: usize,
    pub seconds: f64,
    pub perturbation_norm: f64,
    /// Where the round's perturbation sends the first clean batch: the
    /// majority class and its share (a backdoor's target shows up here).
    pub perturbed_class: i64,
    pub perturbed_share: f64,
    /// The targeted search's choice: the class unlearned, its radius, the
    /// median radius over classes and every class's radius (absent with
    /// `--search paper`).
    pub targeted: Option<TargetedStats>,
    pub acc: Option<f64>,
    pub asr: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Parity {
    /// What ran the written file: `onnxruntime` or `libtorch`.
    pub runtime: &'static str,
    pub passed: bool,
    pub max_abs_diff: f64,
    pub tolerance: f64,
}

fn unit_interval(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("`{s}` is not a share between 0 and 1")),
    }
}

fn percent(x: Option<f64>) -> String {
    x.map(|v| format!("{:>7.2}%", 100.0 * v))
        .unwrap_or_else(|| format!("{:>8}", "-"))
}

/// Worst difference over `inputs` of `ours` and `theirs`, and whether every
/// output stayed within `tolerance` (relative to its scale above 1).
fn compare_runs(
    runtime: &'static str,
    path: &std::path::Path,
    inputs: &[Tensor],
    tolerance: f64,
    mut run: impl FnMut(&Tensor) -> Result<(Vec<Tensor>, Vec<Tensor>), String>,
) -> Result<Parity, String> {
    let mut worst = 0.0f64;
    let mut passed = true;
    for x in inputs {
        let (ours, theirs) = run(x)?;
        for (a, b) in ours.iter().zip(&theirs) {
            let diff = parity::max_abs_diff(a, b);
            worst = worst.max(diff);
            passed &= diff <= tolerance * parity::max_abs(b).max(1.0);
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
        Err(format!(
            "{runtime} on `{}` differs from the trained module by {worst:.3e} (tolerance {tolerance:e})",
            path.display()
        ))
    }
}

/// Runs the written ONNX file with ONNX Runtime on the clean set and compares
/// it with the trained module.
fn onnx_parity(
    path: &std::path::Path,
    model: &GraphClassifier,
    inputs: &[Tensor],
    tolerance: f64,
) -> Result<Parity, String> {
    let mut session = OrtSession::open(path).map_err(|e| e.to_string())?;
    // A file with a fixed batch size takes batches of that size only.
    let chunked;
    let inputs = match model.fixed_batch {
        Some(b) => {
            chunked = inputs
                .iter()
                .map(|x| pipeline::fixed_batch_chunks(x, b))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())?
                .into_iter()
                .flatten()
                .map(|(chunk, _)| chunk)
                .collect::<Vec<_>>();
            chunked.as_slice()
        }
        None => inputs,
    };
    compare_runs("onnxruntime", path, inputs, tolerance, |x| {
        let ours = tch::no_grad(|| model.graph.forward(std::slice::from_ref(x)))
            .map_err(|e| e.to_string())?;
        let theirs = session
            .run(std::slice::from_ref(x))
            .map_err(|e| e.to_string())?;
        Ok((ours, theirs))
    })
}

/// Reloads the written TorchScript file with libtorch and compares it with
/// the trained module on the clean set.
fn torchscript_parity(
    path: &std::path::Path,
    model: &TorchScript,
    inputs: &[Tensor],
    tolerance: f64,
) -> Result<Parity, String> {
    let device = crate::ibau::Classifier::device(model);
    let reloaded = TorchScript::load(path, device, None, None).map_err(|e| e.to_string())?;
    compare_runs("libtorch", path, inputs, tolerance, |x| {
        tch::no_grad(|| {
            let ours = model.forward(x).map_err(|e| e.to_string())?;
            let theirs = reloaded.forward(x).map_err(|e| e.to_string())?;
            Ok((vec![ours], vec![theirs]))
        })
    })
}

pub fn run(args: Args) -> anyhow::Result<Outcome> {
    let start = Instant::now();
    let trigger = args
        .trigger
        .as_deref()
        .map(pipeline::parse_trigger)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    // Where this run writes, checked against everything it reads before
    // any work (the model's external-data files once it is loaded).
    let mut inputs = Inputs::default();
    inputs.add(&args.model, "the input model");
    inputs.extend(crate::data::files_read(&args.clean), "a --clean data file");
    if let Some(test) = &args.test {
        inputs.extend(crate::data::files_read(test), "a --test data file");
    }
    if let Some(t) = &trigger {
        inputs.extend(t.files(), "a --trigger file");
    }
    let plan = OutputPlan::new(&inputs, &args.output, args.report.as_deref())?;
    let options = ImportOptions {
        device: args.device,
        freeze: args.freeze.clone(),
        train: args.train.clone(),
        ..Default::default()
    };
    let mut loaded = LoadedModel::load(&args.model, &options)?;
    if let LoadedModel::Onnx { file, .. } = &loaded {
        let mut external = Inputs::default();
        external.extend(
            file.external_files(),
            "an external-data file of the input model",
        );
        plan.recheck(&external)?;
    }
    if loaded.classifier().parameters().is_empty() {
        anyhow::bail!(
            "`{}` has no trainable weights: nothing to sanitize",
            args.model.display()
        );
    }
    let clean = pipeline::load_data(&args.clean, args.clean_range.as_deref()).context("--clean")?;
    let map = InputMap::new(&loaded, &args.preprocess, &clean).context("--clean")?;
    let batches: Vec<Batch> = clean
        .batches(args.batch_size as usize)
        .map(|(images, labels)| {
            Ok(Batch {
                images: map.apply(&images)?,
                labels: labels.f_to_device(map.device)?,
            })
        })
        .collect::<anyhow::Result<_>>()?;
    if let Some(first) = batches.first() {
        loaded.detect_probabilities(&first.images)?;
        let predicted =
            tch::no_grad(|| loaded.classifier().logits(&first.images))?.f_argmax(-1, false)?;
        let acc = predicted
            .f_eq_tensor(&first.labels)?
            .f_to_kind(tch::Kind::Double)?
            .f_mean(tch::Kind::Double)?
            .double_value(&[]);
        if let Some(hint) = pipeline::low_accuracy_hint(acc, "the first clean batch") {
            eprintln!("warning: {hint}");
        }
    }
    let model = loaded.classifier();
    pipeline::check_classes(model, &map, &clean, None, "--clean")?;
    let logits = loaded.logits_source();
    let test = match &args.test {
        Some(path) => {
            let data = pipeline::load_data(path, args.test_range.as_deref()).context("--test")?;
            pipeline::check_classes(model, &map, &data, args.target, "--test")?;
            Some(TestSet {
                data,
                trigger: trigger.zip(args.target),
                batch_size: 500,
            })
        }
        None => None,
    };
    let config = Config {
        rounds: args.rounds,
        search: args.search,
        k: args.k,
        optimizer: args.optim,
        lr: args.lr,
        batch_size: args.batch_size as usize,
        perturbation_lr: args.perturbation_lr,
        perturbation_radius: args.radius,
        perturbation_steps: args.perturbation_steps,
        regularization: args.regularization,
        inner_step: args.inner_step,
        poison_share: args.poison_share,
        tolerance: args.fixed_point_tolerance,
        seed: args.seed,
    };
    let roles = loaded.trainable();
    eprintln!(
        "sanitizing {} on {:?}: {} clean samples in {} batches, {} trainable tensors ({} elements, {:.1}% of the float weights)",
        args.model.display(),
        model.device(),
        clean.len(),
        batches.len(),
        roles.tensors,
        roles.elements,
        100.0 * roles.share
    );

    if logits.how != "graph output" && logits.how != "module output" {
        eprintln!("logits: `{}`, the {}", logits.tensor, logits.how);
    }
    let batch_note = loaded.batch_note();
    if let Some(note) = &batch_note {
        eprintln!("batch: {note}");
    }
    let before = test
        .as_ref()
        .map(|t| pipeline::evaluate(model, &map, t))
        .transpose()?;
    let progress = ProgressBar::new((config.rounds * batches.len()) as u64);
    progress.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {pos}/{len} steps, {elapsed} elapsed, ETA {eta}",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    let mut rounds = Vec::new();
    let mut eval_error = None;
    ibau::unlearn(
        model,
        &batches,
        &config,
        &mut |round, _| {
            progress.set_message(format!("round {round}/{}", config.rounds));
            progress.inc(1);
        },
        &mut |stats| {
            let metrics = match test
                .as_ref()
                .map(|t| pipeline::evaluate(model, &map, t))
                .transpose()
            {
                Ok(m) => m,
                Err(e) => {
                    eval_error = Some(e);
                    return Err(ibau::TrainError::Config("evaluation failed".into()));
                }
            };
            progress.suspend(|| {
                eprintln!(
                    "round {}: {:.1} s, {}perturbation norm {:.3} (sends {:.0}% to class {}){}",
                    stats.round,
                    stats.seconds,
                    stats
                        .targeted
                        .as_ref()
                        .map(|t| format!(
                            "class {} needs radius {:.2} (median of classes {:.2}), ",
                            t.class, t.radius, t.median_radius
                        ))
                        .unwrap_or_default(),
                    stats.perturbation_norm,
                    100.0 * stats.perturbed_share,
                    stats.perturbed_class,
                    metrics
                        .map(|m| format!(
                            ", ACC {} ASR {}",
                            percent(Some(m.acc)).trim(),
                            percent(m.asr).trim()
                        ))
                        .unwrap_or_default()
                )
            });
            rounds.push(Round {
                round: stats.round,
                seconds: stats.seconds,
                perturbation_norm: stats.perturbation_norm,
                perturbed_class: stats.perturbed_class,
                perturbed_share: stats.perturbed_share,
                targeted: stats.targeted.clone(),
                acc: metrics.map(|m| m.acc),
                asr: metrics.and_then(|m| m.asr),
            });
            let done = args
                .stop_below_asr
                .zip(metrics.and_then(|m| m.asr))
                .is_some_and(|(limit, asr)| asr < limit);
            Ok(if done {
                std::ops::ControlFlow::Break(())
            } else {
                std::ops::ControlFlow::Continue(())
            })
        },
    )
    .map_err(|e| match eval_error.take() {
        Some(eval) => eval,
        None => anyhow::Error::new(e).context("I-BAU"),
    })?;
    progress.finish_and_clear();
    let mut after = rounds.last().zip(test.as_ref()).map(|(r, t)| Metrics {
        acc: r.acc.unwrap_or(0.0),
        asr: r.asr,
        samples: t.data.len(),
    });
    // Weights stored in float16/bfloat16 were trained as float32 master
    // weights; round them to what the file will hold, and measure that.
    if let LoadedModel::Onnx { model: graph, .. } = &loaded {
        let rounded = graph.graph.params.round_to_stored_precision()?;
        if rounded > 0 {
            eprintln!(
                "rounded {rounded} trained tensors to their stored precision (float16/bfloat16)"
            );
            if let Some(t) = &test {
                after = Some(pipeline::evaluate(model, &map, t)?);
            }
        }
    }

    // Write back, gated by a second runtime on the clean set.
    let parity_inputs: Vec<Tensor> = batches.iter().map(|b| b.images.shallow_clone()).collect();
    let parity = match &loaded {
        LoadedModel::Onnx { file, model } => {
            let tolerance = args
                .parity_tolerance
                .unwrap_or_else(|| crate::graph::Graph::default_tolerance(file).0);
            let trained = crate::export::with_parameters(file, &model.graph.params)?;
            crate::export::write_checked(&trained, &plan, |path| {
                onnx_parity(path, model, &parity_inputs, tolerance)
            })?
        }
        LoadedModel::TorchScript(ts) => {
            let tolerance = args.parity_tolerance.unwrap_or(1e-4);
            crate::export::write_checked_with(
                &plan,
                |path| Ok(ts.save_trained(path)?),
                |path| torchscript_parity(path, ts, &parity_inputs, tolerance),
            )?
        }
    };

    eprintln!();
    eprintln!("          {:>8} {:>8}", "ACC", "ASR");
    for (name, m) in [("before", before), ("after", after)] {
        if let Some(m) = m {
            eprintln!("{name:<8}  {} {}", percent(Some(m.acc)), percent(m.asr));
        }
    }
    eprintln!(
        "wrote {} ({} parity: max abs diff {:.2e})",
        args.output.display(),
        parity.runtime,
        parity.max_abs_diff
    );

    let report = Report {
        schema: 1,
        input: args.model.display().to_string(),
        output: args.output.display().to_string(),
        device: format!("{:?}", model.device()).to_lowercase(),
        seconds: start.elapsed().as_secs_f64(),
        clean_samples: clean.len(),
        trainable: Trainable {
            tensors: roles.tensors,
            elements: roles.elements,
            share: roles.share,
        },
        logits,
        batch: batch_note,
        config,
        before,
        after,
        rounds,
        parity,
    };
    if let Some(path) = &plan.report {
        let json = serde_json::to_vec_pretty(&report)?;
        crate::onnx::write_atomically(path, &json)?;
    }
    Ok(Outcome::Success)
}
