//! `ibau sanitize MODEL --clean DATA -o OUT`: I-BAU on the model's weights,
//! the cleaned weights written back into the same ONNX graph, gated by an
//! ONNX Runtime parity check of the written file.

use std::path::PathBuf;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};

use super::{Outcome, PreprocessArgs};
use ibau::data;
use ibau::data::Target;
use ibau::graph::ImportOptions;
use ibau::ibau::{Config, OptimizerKind, Phase, Search};
use ibau::outputs::{Inputs, OutputPlan};
use ibau::sanitize::ScanWhen;
use ibau::{Event, Model, Observer, SanitizeConfig, TestSet};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The (possibly poisoned) model: ONNX, or TorchScript (`torch.jit.save`).
    /// Never modified.
    #[arg(value_parser = super::existing_file)]
    pub model: PathBuf,
    /// Clean labelled images the defender holds (IDX, .npz or a folder of
    /// class sub-folders).
    #[arg(long, value_parser = super::existing_path)]
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
    #[arg(long, value_enum, default_value_t = SearchArg::Targeted)]
    pub search: SearchArg,
    /// Fixed-point iterations of the hypergradient.
    #[arg(long, default_value_t = 5, value_parser = super::positive_count)]
    pub k: usize,
    /// Learning rate of the outer optimiser.
    #[arg(long, default_value_t = 1e-3, value_parser = super::positive_number, allow_negative_numbers = true)]
    pub lr: f64,
    /// Outer optimiser.
    #[arg(long, value_enum, default_value_t = OptimArg::Adam)]
    pub optim: OptimArg,
    /// Clean batch size.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_size: u32,
    /// Perturbed images per forward pass of the targeted search (and of the
    /// scans): its classes go through the model in chunks of at most this
    /// many images, so memory follows this number, not the number of
    /// classes [default: twice --batch-size].
    #[arg(long, value_parser = super::positive_count)]
    pub max_batch: Option<usize>,
    /// On a model with more than twice this many classes, the targeted
    /// search (and the scans) first screen every class in six cheap steps
    /// and search only this many, the easiest to reach (the scans add as
    /// many random classes as a reference); 0 searches every class.
    #[arg(long, default_value_t = ibau::ibau::DEFAULT_CANDIDATES)]
    pub candidates: usize,
    /// Steps of the perturbation search per round (default: one per clean
    /// batch, as the paper; the targeted search takes at least 50, cycling
    /// over the batches).
    #[arg(long, value_parser = super::positive_count)]
    pub perturbation_steps: Option<usize>,
    /// Learning rate of the paper's perturbation search; only with
    /// `--search paper` (the targeted search sets its own step) [default: 10].
    #[arg(long, value_parser = super::positive_number, allow_negative_numbers = true)]
    pub perturbation_lr: Option<f64>,
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
    /// Pull the trained weights back towards the model's own with this
    /// weight: each outer step's gradient gets `anchor * (theta - theta_0)`
    /// (0: none, as the paper). Experimental: for small clean sets.
    #[arg(long, default_value_t = 0.0, value_parser = super::non_negative_number, allow_negative_numbers = true)]
    pub anchor: f64,
    /// Shift each outer batch by a random translation of up to 2 pixels
    /// (edges replicated) before it is perturbed. Experimental: for small
    /// clean sets.
    #[arg(long)]
    pub augment: bool,
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
    #[arg(long, value_parser = super::existing_path)]
    pub test: Option<PathBuf>,
    /// Samples of `--test` to use, `A:B`.
    #[arg(long, value_name = "A:B", requires = "test")]
    pub test_range: Option<String>,
    /// Trigger for measuring the attack success rate (see `ibau eval --help`;
    /// repeatable, each paired with the --target at the same position).
    #[arg(long, requires_all = ["target", "test"], value_name = "SPEC")]
    pub trigger: Vec<String>,
    /// The attack's target: a class or `next` (all-to-all); one per --trigger.
    #[arg(long, requires = "trigger", value_name = "N|next", value_parser = super::parse_target, allow_negative_numbers = true)]
    pub target: Vec<Target>,
    /// Stop before `--rounds` once a round ends with the measured attack
    /// success rate below this fraction (e.g. 0.2); needs `--trigger`. With
    /// several triggers, the highest of their rates.
    #[arg(long, value_name = "FRACTION", requires = "trigger", value_parser = unit_interval)]
    pub stop_below_asr: Option<f64>,
    /// Tolerance of the parity check of the written file (ONNX Runtime for
    /// ONNX, a libtorch reload for TorchScript): max absolute difference,
    /// relative to the output's scale when above 1 [default: 1e-4; 1e-2 for
    /// float16 ONNX models, 3e-2 for bfloat16 ones].
    #[arg(long, value_parser = super::non_negative_number, allow_negative_numbers = true)]
    pub parity_tolerance: Option<f64>,
    /// Write a JSON report (schema in docs/schemas.md).
    #[arg(long, value_name = "FILE.json")]
    pub report: Option<PathBuf>,
    /// Do not scan the model before and after (see `ibau scan`); the report's
    /// `scan_before`/`scan_after` are then null.
    #[arg(long, conflicts_with = "until_clean")]
    pub no_scan: bool,
    /// Scan the weights after every round and stop after the first round
    /// whose scan says clean: the trigger-free stopping rule.
    #[arg(long)]
    pub until_clean: bool,
    /// Train without the accuracy guard when the scan before says clean.
    /// Without it, a model the scan finds clean trains on four fifths of
    /// the clean samples, the rest (at most 1000) held back, and the weights
    /// written are those of the last round within 0.5 points of their
    /// accuracy before, or the model as it came (unlearning a backdoor that
    /// is not there only costs accuracy).
    #[arg(long)]
    pub force: bool,
    /// Also unlearn the paper's untargeted universal perturbation in every
    /// round of the targeted search, besides each flagged class's (for
    /// attacks without one easiest target, such as all-to-all triggers).
    /// Only with the targeted search.
    #[arg(long)]
    pub untargeted: bool,
    /// Also unlearn a universal mask trigger (Neural Cleanse's form) found
    /// by an untargeted search in every round of the targeted search, with
    /// 20% of every outer batch stamped: what unlearns all-to-all backdoors.
    /// On by itself when the scan before flags a backdoor without a target
    /// class (its untargeted mask); this forces it on other models. Only
    /// with the targeted search.
    #[arg(long)]
    pub mask_fallback: bool,
    /// Also unlearn, for each class the scan before flags, a mask trigger
    /// of its own (Neural Cleanse's form, searched towards that class each
    /// round) besides its additive perturbation: for patch backdoors, which
    /// the additive search does not reproduce. Experimental, off by
    /// default. Only with the targeted search.
    #[arg(long)]
    pub mask_targets: bool,
    #[command(flatten)]
    pub preprocess: PreprocessArgs,
}

/// `--search` (the library's [`Search`]).
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum SearchArg {
    Paper,
    Targeted,
}

/// `--optim` (the library's [`OptimizerKind`]).
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum OptimArg {
    Adam,
    Sgd,
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

/// With several trigger/target pairs, the lines naming them (`ASR#1:
/// SPEC -> TARGET`); none for one pair.
fn attack_legend(attacks: &[ibau::data::Attack]) -> Vec<String> {
    if attacks.len() < 2 {
        return Vec::new();
    }
    attacks
        .iter()
        .enumerate()
        .map(|(i, a)| format!("ASR#{}: {} -> {}", i + 1, a.trigger, a.target))
        .collect()
}

/// ACC and ASR before and after; with several trigger/target pairs, ASR is
/// the highest and each pair has a column `ASR#i`, named in `legend`.
fn print_table(report: &ibau::sanitize::Report, legend: &[String]) {
    for line in legend {
        eprintln!("{line}");
    }
    let columns: String = (1..=legend.len())
        .map(|i| format!(" {:>8}", format!("ASR#{i}")))
        .collect();
    eprintln!("          {:>8} {:>8}{columns}", "ACC", "ASR");
    for (name, m) in [("before", &report.before), ("after", &report.after)] {
        if let Some(m) = m {
            let each: String = m
                .attacks
                .iter()
                .take(legend.len())
                .map(|a| format!(" {}", percent(Some(a.asr))))
                .collect();
            eprintln!(
                "{name:<8}  {} {}{each}",
                percent(Some(m.acc)),
                percent(m.asr)
            );
        }
    }
}

/// `, ACC a ASR b` after a round measured on a test set, with each pair's
/// ASR when there are several.
fn round_metrics(round: &ibau::sanitize::Round) -> String {
    let Some(acc) = round.acc else {
        return String::new();
    };
    let each = match round.attacks.as_slice() {
        [] | [_] => String::new(),
        several => format!(
            " ({})",
            several
                .iter()
                .enumerate()
                .map(|(i, a)| format!("#{} {}", i + 1, percent(Some(a.asr)).trim()))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    format!(
        ", ACC {} ASR {}{each}",
        percent(Some(acc)).trim(),
        percent(round.asr).trim()
    )
}

/// The library's configuration from the command line: every derived
/// default is resolved here, once, and options that mean nothing together
/// are refused rather than ignored.
fn sanitize_config(args: &Args) -> anyhow::Result<SanitizeConfig> {
    let search = match args.search {
        SearchArg::Paper => Search::Paper,
        SearchArg::Targeted => Search::Targeted,
    };
    for (given, option) in [
        (args.untargeted, "--untargeted"),
        (args.mask_fallback, "--mask-fallback"),
        (args.mask_targets, "--mask-targets"),
    ] {
        if given && search == Search::Paper {
            anyhow::bail!(
                "{option}: it adds to the targeted search; --search paper has no per-class search to add it to (drop one of the two)"
            );
        }
    }
    if search == Search::Targeted && args.perturbation_lr.is_some() {
        anyhow::bail!(
            "--perturbation-lr: it sets the paper's search (--search paper); the targeted search sets its own step"
        );
    }
    let ibau = Config {
        rounds: args.rounds,
        search,
        k: args.k,
        optimizer: match args.optim {
            OptimArg::Adam => OptimizerKind::Adam,
            OptimArg::Sgd => OptimizerKind::Sgd,
        },
        lr: args.lr,
        batch_size: args.batch_size as usize,
        max_batch: Some(args.max_batch.unwrap_or(2 * args.batch_size as usize)),
        candidates: args.candidates,
        targets: Vec::new(),
        untargeted: args.untargeted,
        mask_fallback: args.mask_fallback,
        mask_targets: Vec::new(),
        perturbation_lr: args
            .perturbation_lr
            .unwrap_or(Config::default().perturbation_lr),
        perturbation_radius: args.radius,
        perturbation_steps: args.perturbation_steps,
        regularization: args.regularization,
        inner_step: args.inner_step,
        poison_share: args.poison_share,
        tolerance: args.fixed_point_tolerance,
        seed: args.seed,
        anchor: args.anchor,
        augment: args.augment,
    };
    let scan = (!args.no_scan).then(|| ibau::scan::ScanConfig {
        max_batch: ibau.max_batch_or_default(),
        candidates: args.candidates,
        ..Default::default()
    });
    Ok(SanitizeConfig {
        ibau,
        preprocess: args.preprocess.to_library(),
        test: None,
        stop_below_asr: args.stop_below_asr,
        parity_tolerance: args.parity_tolerance,
        scan,
        until_clean: args.until_clean,
        force: args.force,
        mask_targets: args.mask_targets,
    })
}

pub fn run(args: Args) -> anyhow::Result<Outcome> {
    let mut config = sanitize_config(&args)?;
    let attacks = super::attacks_option(&args.trigger, &args.target)?;
    let legend = attack_legend(&attacks);
    // Where this run writes, checked against everything it reads before
    // any work (the model's external-data files once it is loaded).
    let mut inputs = Inputs::default();
    inputs.add(&args.model, "the input model");
    inputs.extend(data::files_read(&args.clean), "a --clean data file");
    if let Some(test) = &args.test {
        inputs.extend(data::files_read(test), "a --test data file");
    }
    for attack in &attacks {
        inputs.extend(attack.trigger.files(), "a --trigger file");
    }
    let plan = OutputPlan::new(&inputs, &args.output, args.report.as_deref())?;
    super::note_removed(&plan.removed);
    let options = ImportOptions {
        device: args.device,
        freeze: args.freeze.clone(),
        train: args.train.clone(),
        ..Default::default()
    };
    let mut model = Model::load(&args.model, &options)?;
    let mut external = Inputs::default();
    external.extend(
        model.external_files(),
        "an external-data file of the input model",
    );
    plan.recheck(&external)?;
    let clean = data::load_range(&args.clean, args.clean_range.as_deref()).context("--clean")?;
    let test = match &args.test {
        Some(path) => Some(TestSet {
            data: data::load_range(path, args.test_range.as_deref()).context("--test")?,
            attacks,
            batch_size: 500,
        }),
        None => None,
    };
    config.test = test;
    let mut progress = Progress::new(&args.model, &legend);
    progress.force = args.force;
    let report = ibau::sanitize(&mut model, &clean, &config, &plan, &mut progress)?;
    progress.finish();
    if let Some(g) = &report.guard {
        eprintln!("{}", guard_line(g));
    }
    eprintln!();
    print_table(&report, &legend);
    eprintln!(
        "wrote {} ({} parity: max abs diff {:.2e})",
        args.output.display(),
        report.parity.runtime,
        report.parity.max_abs_diff
    );
    if let Some(path) = &plan.report {
        let json = serde_json::to_vec_pretty(&report)?;
        ibau::onnx::write_atomically(path, &json)?;
    }
    Ok(Outcome::Success)
}

/// The command line's observer: a progress bar over every outer step, the
/// summary line before training and one line per round.
struct Progress<'a> {
    model: &'a std::path::Path,
    /// The trigger/target pairs' names, when there are several.
    legend: &'a [String],
    bar: Option<ProgressBar>,
    scan_bar: Option<ProgressBar>,
    /// Clean batches (outer steps per round) and search steps per round.
    batches: usize,
    search_steps: usize,
    force: bool,
}

fn when_text(when: ScanWhen) -> String {
    match when {
        ScanWhen::Before => "before".into(),
        ScanWhen::AfterRound(r) => format!("after round {r}"),
        ScanWhen::After => "after".into(),
    }
}

impl<'a> Progress<'a> {
    fn new(model: &'a std::path::Path, legend: &'a [String]) -> Self {
        Progress {
            model,
            legend,
            bar: None,
            scan_bar: None,
            batches: 0,
            search_steps: 0,
            force: false,
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }

    fn say(&self, line: String) {
        match &self.bar {
            Some(bar) => bar.suspend(|| eprintln!("{line}")),
            None => eprintln!("{line}"),
        }
    }
}

impl Observer for Progress<'_> {
    fn event(&mut self, event: Event<'_>) {
        match event {
            Event::Started {
                device,
                clean_samples,
                batches,
                trainable,
                logits,
                batch_note,
            } => {
                self.batches = batches;
                eprintln!(
                    "sanitizing {} on {device:?}: {clean_samples} clean samples in {batches} batches, {} trainable tensors ({} elements, {:.1}% of the float weights)",
                    self.model.display(),
                    trainable.tensors,
                    trainable.elements,
                    100.0 * trainable.share
                );
                if !logits.how.is_plain() {
                    eprintln!("logits: `{}`, the {}", logits.tensor, logits.how);
                }
                if let Some(note) = batch_note {
                    eprintln!("batch: {note}");
                }
                for line in self.legend {
                    eprintln!("{line}");
                }
            }
            Event::Warning(text) => self.say(format!("warning: {text}")),
            Event::Step {
                round,
                rounds,
                phase,
            } => self.step(round, rounds, phase),
            Event::Round(round) => self.say(round_line(round)),
            Event::Rounded { tensors } => self.say(format!(
                "rounded {tensors} trained tensors to their stored precision (float16/bfloat16)"
            )),
            Event::Scanning { when, step, steps } => self.scanning(when, step, steps),
            Event::Scanned { when, verdict } => {
                if let Some(bar) = self.scan_bar.take() {
                    bar.finish_and_clear();
                }
                let line = scanned_line(when, verdict, self.force);
                self.say(line);
            }
        }
    }
}

impl Progress<'_> {
    /// One bar over every step of every round: the search's steps (known
    /// once it starts) and the outer steps.
    fn step(&mut self, round: usize, rounds: usize, phase: Phase) {
        let (search, outer) = match phase {
            Phase::Search { steps, .. } => (steps, self.batches),
            Phase::Unlearn { steps, .. } => (self.search_steps, steps),
        };
        self.search_steps = search;
        let per_round = search + outer;
        let bar = self.bar.get_or_insert_with(|| {
            let bar = ProgressBar::new((rounds * per_round) as u64);
            bar.set_style(
                ProgressStyle::with_template(
                    "{msg} [{bar:30}] {pos}/{len} steps, {elapsed} elapsed, ETA {eta}",
                )
                .expect("a valid template")
                .progress_chars("=> "),
            );
            bar
        });
        bar.set_length((rounds * per_round) as u64);
        let (what, done) = match phase {
            Phase::Search { step, steps } => (format!("search {step}/{steps}"), step),
            Phase::Unlearn { step, steps } => (format!("unlearning {step}/{steps}"), search + step),
        };
        bar.set_message(format!("round {round}/{rounds}, {what}"));
        bar.set_position(((round - 1) * per_round + done) as u64);
    }

    fn scanning(&mut self, when: ScanWhen, step: usize, steps: usize) {
        let bar = self.scan_bar.get_or_insert_with(|| {
            let bar = ProgressBar::new(steps as u64);
            bar.set_style(
                ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} steps, ETA {eta}")
                    .expect("a valid template")
                    .progress_chars("=> "),
            );
            bar
        });
        bar.set_message(format!("scan {}", when_text(when)));
        bar.set_position(step as u64);
    }
}

/// What the accuracy guard did.
fn guard_line(g: &ibau::sanitize::Guard) -> String {
    if g.held_back == 0 {
        return format!(
            "accuracy guard (the scan found no backdoor): the clean set is a single batch ({:.2}% accurate), so nothing can be held back to measure what training costs; no round ran and the weights are written as they came (give more samples than --batch-size, or --force to train anyway)",
            100.0 * g.acc_before
        );
    }
    format!(
        "accuracy guard (the scan found no backdoor): {:.2}% -> {:.2}% on {} held-back clean samples{}",
        100.0 * g.acc_before,
        100.0 * g.acc_after,
        g.held_back,
        match (g.kept_round, g.over_budget.as_slice()) {
            (_, []) => String::new(),
            (0, _) => "; every round lost more than 0.5 points: the weights are written as they came".to_string(),
            (kept, over) => format!(
                "; the weights of round {kept} are written (round(s) {} lost more than 0.5 points)",
                join(&over.iter().map(|&r| r as i64).collect::<Vec<_>>())
            ),
        }
    )
}

/// The line after a round: its search, its perturbation, the mask trigger
/// and ACC/ASR.
fn round_line(round: &ibau::sanitize::Round) -> String {
    let r = &round.stats;
    let targeted = r
        .targeted
        .as_ref()
        .map(|t| {
            let classes = if t.classes.len() > 1 {
                format!("unlearning classes {}: ", join(&t.classes))
            } else {
                String::new()
            };
            format!(
                "{classes}class {} needs radius {:.2} (median of classes {:.2}), ",
                t.class, t.radius, t.median_radius
            )
        })
        .unwrap_or_default();
    let mask = r
        .mask
        .as_ref()
        .map(|m| {
            let does = match m.class {
                Some(c) => format!("sends {:.0}% to class {c}", 100.0 * m.fooled),
                None => format!("moves {:.0}% off their class", 100.0 * m.fooled),
            };
            format!(
                ", mask trigger of {:.1} elements ({:.1}% of the input) {does}",
                m.size,
                100.0 * m.coverage,
            )
        })
        .unwrap_or_default();
    format!(
        "round {}: {:.1} s, {targeted}perturbation norm {:.3} (sends {:.0}% to class {}){mask}{}",
        r.round,
        r.seconds,
        r.perturbation_norm,
        100.0 * r.perturbed_share,
        r.perturbed_class,
        round_metrics(round)
    )
}

fn join(classes: &[i64]) -> String {
    classes
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The line after a scan: the verdict, its evidence, what is left of the
/// targets found before, and what the plan does with a clean verdict.
fn scanned_line(when: ScanWhen, verdict: &ibau::sanitize::ScanVerdict, force: bool) -> String {
    let targets = join(&verdict.targets);
    let what = match (verdict.verdict, &verdict.untargeted) {
        (ibau::scan::Verdict::Backdoor, _) if !targets.is_empty() => {
            format!("backdoor, target class {targets}")
        }
        (ibau::scan::Verdict::Backdoor, Some(u)) => format!(
            "backdoor without one target: a universal mask trigger of {:.1} pixels, {:.1}x smaller than the median class's, moves {:.0}% of the clean images off their class (all-to-all); the mask fallback unlearns it",
            u.mask,
            u.score,
            100.0 * u.moved
        ),
        _ => "clean".to_string(),
    };
    let note = match (when, verdict.verdict, force) {
        (ScanWhen::Before, ibau::scan::Verdict::Backdoor, _) | (ScanWhen::AfterRound(_) | ScanWhen::After, _, _) => "",
        (ScanWhen::Before, _, true) => ": the model shows no backdoor; sanitizing anyway (--force)",
        (ScanWhen::Before, _, false) => ": the model shows no backdoor; training under an accuracy guard (the last round within 0.5 points of the clean accuracy it started with is written; --force trains without it)",
    };
    let residual = verdict
        .residual
        .iter()
        .map(|r| {
            format!(
                "; a trigger of the size found before still sends {:.0}% to class {}",
                100.0 * r.share,
                r.class
            )
        })
        .collect::<String>();
    format!(
        "scan {}: {what} (score {:.2} vs threshold {:.2}, {:.1} s){residual}{note}",
        when_text(when),
        verdict.statistic,
        verdict.threshold,
        verdict.seconds
    )
}
