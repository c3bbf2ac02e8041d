//! `sanitize`: I-BAU on a loaded [`Model`], the cleaned weights written
//! back into the same file format, gated by a second runtime (ONNX Runtime
//! for ONNX, a libtorch reload for TorchScript) on the clean set.
//!
//! Long work reports through an [`Observer`]: the command line's progress
//! bar and round table are one; a test can collect the events instead.

mod plan;
mod rounds;
mod scanner;

use std::time::Instant;

use serde::Serialize;
use tch::{Device, Kind, Tensor};

use crate::data::Dataset;
use crate::error::{bail, Result};
use crate::evaluate::{self, AttackMetrics, Metrics, TestSet};
use crate::ibau::{self, Batch, Classifier, Config, RoundStats};
use crate::model::{InputMap, LogitsSource, Model, Preprocess, TrainableShare};
use crate::outputs::OutputPlan;
use crate::parity::gate;
pub use crate::parity::gate::{GateError, Parity};
use crate::scan::{self, ScanConfig, ScanResult, Verdict};
use plan::Plan;
use scanner::Scanner;

/// What [`sanitize`] does beyond I-BAU's own hyper-parameters.
#[derive(Default)]
pub struct SanitizeConfig {
    /// I-BAU's hyper-parameters (the paper's defaults, the targeted search).
    pub ibau: Config,
    /// How the clean (and test) images reach the model.
    pub preprocess: Preprocess,
    /// Measure ACC (and ASR with a trigger) before, after every round and
    /// after.
    pub test: Option<TestSet>,
    /// Stop once a round ends with the measured ASR (the highest over the
    /// test set's attacks) below this share.
    pub stop_below_asr: Option<f64>,
    /// Tolerance of the parity gate; `None` = what suits the precision.
    pub parity_tolerance: Option<f64>,
    /// Scan the model before and after (the trigger-free "did it work?"),
    /// on at most [`SCAN_SAMPLES`] of the clean samples; `None`: no scan.
    pub scan: Option<ScanConfig>,
    /// Scan after every round and stop after the first that scans clean.
    pub until_clean: bool,
    /// Train even when the scan before says clean (by default the weights
    /// are then left as they are: unlearning a backdoor that is not there
    /// only costs accuracy).
    pub force: bool,
    /// Unlearn a mask trigger of its own for each class the scan before
    /// flags ([`Config::mask_targets`]).
    pub mask_targets: bool,
}

/// A model the scan finds clean may not end more than this share of clean
/// accuracy (on held-back clean samples) below where it started.
pub const GUARD_LOSS: f64 = 0.005;

/// The accuracy guard of a model the scan before found clean: the last
/// fifth of the clean samples (at most [`GUARD_SAMPLES`]) is held back from
/// training and its accuracy measured after every round; the weights
/// written are those of the last round that is within [`GUARD_LOSS`] of
/// the start (the model as it came when none is), so that a round that
/// costs accuracy can be made good by the next one. A clean set of a single
/// batch leaves nothing to hold back: then no round runs and the model is
/// written as it came (`held_back` 0).
#[derive(Debug, Clone, Serialize)]
pub struct Guard {
    /// Clean samples held back (`0`: a single batch, no round ran).
    pub held_back: usize,
    /// Accuracy on the held-back samples (on the single batch when none
    /// are) before any round, and of the weights written.
    pub acc_before: f64,
    pub acc_after: f64,
    /// The round whose weights are written (`0`: the model as it came).
    pub kept_round: usize,
    /// The rounds past the budget (undone unless a later round was within).
    pub over_budget: Vec<usize>,
}

/// Most clean samples the guard holds back.
pub const GUARD_SAMPLES: usize = 1000;

/// Clean samples a scan inside `sanitize` uses (the first ones).
pub const SCAN_SAMPLES: usize = 1000;

/// A scan's verdict in the sanitize report.
#[derive(Debug, Clone, Serialize)]
pub struct ScanVerdict {
    pub verdict: Verdict,
    pub targets: Vec<i64>,
    pub statistic: f64,
    pub threshold: f64,
    pub seconds: f64,
    /// When the scan before found targets and this one says clean: for each
    /// of them, the share of held-back clean images that a trigger no larger
    /// than the one found before still sends there ([`scan::residual`]).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub residual: Vec<Residual>,
    /// The scan's untargeted mask measurement ([`scan::Untargeted`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub untargeted: Option<scan::Untargeted>,
}

/// What is left of a target the scan before found.
#[derive(Debug, Clone, Serialize)]
pub struct Residual {
    pub class: i64,
    pub share: f64,
}

/// `--until-clean` stops once a round scans clean and no target found
/// before is still reached by more than this share of held-back images with
/// a trigger of the size found before.
pub const RESIDUAL_LIMIT: f64 = 0.05;

impl ScanVerdict {
    /// Whether the backdoor found before looks gone: the verdict is clean
    /// and every residual share is under [`RESIDUAL_LIMIT`].
    pub fn gone(&self) -> bool {
        self.verdict == Verdict::Clean && self.residual.iter().all(|r| r.share < RESIDUAL_LIMIT)
    }
}

impl From<&ScanResult> for ScanVerdict {
    fn from(r: &ScanResult) -> Self {
        ScanVerdict {
            verdict: r.verdict,
            targets: r.targets.clone(),
            statistic: r.statistic,
            threshold: r.threshold,
            seconds: r.seconds,
            residual: Vec::new(),
            untargeted: r.untargeted,
        }
    }
}

/// When a scan inside `sanitize` ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanWhen {
    Before,
    AfterRound(usize),
    After,
}

/// What happens during [`sanitize`], in order.
#[derive(Debug)]
pub enum Event<'a> {
    /// The model and data are ready; training starts.
    Started {
        device: Device,
        clean_samples: usize,
        batches: usize,
        trainable: TrainableShare,
        logits: &'a LogitsSource,
        /// How a batch size fixed by the file is handled.
        batch_note: Option<&'a str>,
    },
    /// Something the user should know (data prepared differently from
    /// training, say).
    Warning(String),
    /// One step of a round is done: of its perturbation search, or one
    /// outer step of unlearning (one per clean batch).
    Step {
        round: usize,
        rounds: usize,
        phase: ibau::Phase,
    },
    /// A round is done (with its ACC/ASR when a test set is given).
    Round(&'a Round),
    /// float16/bfloat16 weights were rounded to their stored precision.
    Rounded { tensors: usize },
    /// A scan is under way: `step` of its `steps` as [`crate::scan::Progress`].
    Scanning {
        when: ScanWhen,
        step: usize,
        steps: usize,
    },
    /// A scan is done.
    Scanned {
        when: ScanWhen,
        verdict: &'a ScanVerdict,
    },
}

/// Receives [`Event`]s.
pub trait Observer {
    fn event(&mut self, event: Event<'_>);
}

/// Any closure taking events is an observer.
impl<F: FnMut(Event<'_>)> Observer for F {
    fn event(&mut self, event: Event<'_>) {
        self(event)
    }
}

/// An observer that ignores everything.
pub struct Silent;

impl Observer for Silent {
    fn event(&mut self, _: Event<'_>) {}
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
    pub logits: LogitsSource,
    /// How a batch size fixed by the file was handled (absent when the
    /// file's batch axis is dynamic).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch: Option<String>,
    pub config: Config,
    pub before: Option<Metrics>,
    pub after: Option<Metrics>,
    /// The scan's verdict on the model as it came and on the cleaned
    /// weights (`null` with `--no-scan`).
    pub scan_before: Option<ScanVerdict>,
    pub scan_after: Option<ScanVerdict>,
    /// When the scan before said clean (and no `--force`): the accuracy
    /// guard the rounds ran under; absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guard: Option<Guard>,
    /// The classes unlearned: the scan's targets, or the class the targeted
    /// search found easiest.
    pub unlearned: Vec<i64>,
    pub rounds: Vec<Round>,
    pub parity: Parity,
}

#[derive(Debug, Serialize)]
pub struct Trainable {
    pub tensors: usize,
    pub elements: i64,
    pub share: f64,
}

/// One round in the report: what I-BAU did (its fields inline in the JSON)
/// and the ACC/ASR measured after it (`null` without a test set; `asr` is
/// the highest of `attacks`, one per trigger/target pair).
#[derive(Debug, Serialize)]
pub struct Round {
    #[serde(flatten)]
    pub stats: RoundStats,
    pub acc: Option<f64>,
    pub asr: Option<f64>,
    pub attacks: Vec<AttackMetrics>,
    /// The scan of the weights after this round (`--until-clean` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scan: Option<ScanVerdict>,
}

/// Runs I-BAU on `model` with the clean samples `clean` and writes the
/// cleaned model to `output.model` (with its external data beside it when
/// the input had some), only after a second runtime has run the written
/// file on the clean set and matched the trained module. `model` is trained
/// in place. Nothing is written when anything fails.
///
/// The steps: the clean batches ([`prepare`]), ACC/ASR and the scan before,
/// the plan that follows from the verdict ([`plan::Plan`]), the rounds
/// ([`rounds::run`]), the weights rounded to their stored precision, the
/// scan after, and the parity gate ([`crate::parity::gate`]).
pub fn sanitize(
    model: &mut Model,
    clean: &Dataset,
    config: &SanitizeConfig,
    output: &OutputPlan,
    observer: &mut dyn Observer,
) -> Result<Report> {
    let start = Instant::now();
    let (map, batches) = prepare(model, clean, config, observer)?;
    let classifier = model.classifier();
    let measure = Measure {
        classifier,
        map: &map,
        test: config.test.as_ref(),
    };
    let before = measure.run()?;
    let mut scanner = Scanner::new(classifier, &map, clean, config)?;
    let scan_before = scanner.run(ScanWhen::Before, observer)?;
    let plan = Plan::new(config, scan_before.as_ref(), clean, &batches, &map)?;
    let mut outcome = rounds::run(classifier, &plan, config, &measure, &mut scanner, observer)?;
    let written = outcome.written();
    let unlearned = written
        .last()
        .and_then(|r| r.stats.targeted.as_ref())
        .map(|t| t.classes.clone())
        .unwrap_or_default();
    let mut after = match written.last() {
        None => before.clone(),
        Some(r) => r.metrics(config.test.as_ref()),
    };
    // Weights stored in float16/bfloat16 were trained as float32 master
    // weights; round them to what the file will hold, and measure that.
    let rounded = round_to_stored_precision(model, observer)?;
    if rounded && config.test.is_some() {
        after = measure.run()?;
    }
    // The last round's scan saw the written weights unless they were rounded.
    let scan_after = match written.last().and_then(|r| r.scan.clone()) {
        Some(v) if !rounded => Some(v),
        _ => scanner.run(ScanWhen::After, observer)?,
    };
    let parity_inputs: Vec<Tensor> = batches.iter().map(|b| b.images.shallow_clone()).collect();
    let parity = gate::write_checked(model, &parity_inputs, config.parity_tolerance, output)?;
    if let (true, Some(g)) = (plan.declined(), outcome.guard.as_mut()) {
        // Its accuracies are those of the one batch; nothing was held back.
        g.held_back = 0;
    }
    let trainable = model.trainable();
    Ok(Report {
        schema: 1,
        input: model.path().display().to_string(),
        output: output.model.display().to_string(),
        device: format!("{:?}", classifier.device()).to_lowercase(),
        seconds: start.elapsed().as_secs_f64(),
        clean_samples: clean.len(),
        trainable: Trainable {
            tensors: trainable.tensors,
            elements: trainable.elements,
            share: trainable.share,
        },
        logits: model.logits_source(),
        batch: model.batch_note(),
        config: plan.ibau,
        before,
        after,
        scan_before,
        scan_after,
        guard: outcome.guard,
        unlearned,
        rounds: outcome.rounds,
        parity,
    })
}

/// Step 1: the clean set as batches on the model's device, checked (the
/// model has weights to train, the labels are within its classes, the first
/// batch is classified about right), and the `Started` event.
fn prepare(
    model: &mut Model,
    clean: &Dataset,
    config: &SanitizeConfig,
    observer: &mut dyn Observer,
) -> Result<(InputMap, Vec<Batch>)> {
    if model.classifier().parameters().is_empty() {
        bail!(
            "`{}` has no trainable weights: nothing to sanitize",
            model.path().display()
        );
    }
    let map = InputMap::new(model, &config.preprocess, clean)?;
    let batches = to_batches(clean, config.ibau.batch_size, &map)?;
    if let Some(first) = batches.first() {
        model.detect_probabilities(&first.images)?;
        let acc = batch_accuracy(model.classifier(), first)?;
        if let Some(hint) = evaluate::low_accuracy_hint(acc, "the first clean batch") {
            observer.event(Event::Warning(hint));
        }
    }
    let classifier = model.classifier();
    evaluate::check_classes(classifier, &map, clean, &[], "--clean")?;
    if let Some(test) = &config.test {
        let targets: Vec<_> = test.attacks.iter().map(|a| a.target).collect();
        evaluate::check_classes(classifier, &map, &test.data, &targets, "--test")?;
    }
    let logits = model.logits_source();
    let batch_note = model.batch_note();
    observer.event(Event::Started {
        device: classifier.device(),
        clean_samples: clean.len(),
        batches: batches.len(),
        trainable: model.trainable(),
        logits: &logits,
        batch_note: batch_note.as_deref(),
    });
    Ok((map, batches))
}

/// `data` in batches of `batch_size`, mapped to the model's input.
fn to_batches(data: &Dataset, batch_size: usize, map: &InputMap) -> Result<Vec<Batch>> {
    data.batches(batch_size)
        .map(|(images, labels)| {
            Ok(Batch {
                images: map.apply(&images)?,
                labels: labels.f_to_device(map.device)?,
            })
        })
        .collect()
}

/// ACC and ASR on the test set, when one is given.
pub(crate) struct Measure<'a> {
    classifier: &'a dyn Classifier,
    map: &'a InputMap,
    test: Option<&'a TestSet>,
}

impl Measure<'_> {
    fn run(&self) -> Result<Option<Metrics>> {
        self.test
            .map(|t| evaluate::evaluate(self.classifier, self.map, t))
            .transpose()
    }
}

impl Round {
    /// The round's ACC/ASR as the report's `after`.
    fn metrics(&self, test: Option<&TestSet>) -> Option<Metrics> {
        test.map(|t| Metrics {
            acc: self.acc.unwrap_or(0.0),
            asr: self.asr,
            attacks: self.attacks.clone(),
            samples: t.data.len(),
        })
    }
}

/// Rounds float16/bfloat16 weights (trained as float32 master weights) to
/// what the file will hold; whether any were.
fn round_to_stored_precision(model: &Model, observer: &mut dyn Observer) -> Result<bool> {
    let Model::Onnx { model: graph, .. } = model else {
        return Ok(false);
    };
    let rounded = graph.graph.params.round_to_stored_precision()?;
    if rounded > 0 {
        observer.event(Event::Rounded { tensors: rounded });
    }
    Ok(rounded > 0)
}

/// The share of a batch the model gets right.
fn batch_accuracy(model: &dyn Classifier, batch: &Batch) -> Result<f64> {
    let predicted = tch::no_grad(|| model.logits(&batch.images))?.f_argmax(-1, false)?;
    Ok(predicted
        .f_eq_tensor(&batch.labels)?
        .f_to_kind(Kind::Double)?
        .f_mean(Kind::Double)?
        .double_value(&[]))
}
