//! `sanitize`: I-BAU on a loaded [`Model`], the cleaned weights written
//! back into the same file format, gated by a second runtime (ONNX Runtime
//! for ONNX, a libtorch reload for TorchScript) on the clean set.
//!
//! Long work reports through an [`Observer`]: the command line's progress
//! bar and round table are one; a test can collect the events instead.

use std::path::Path;
use std::time::Instant;

use serde::Serialize;
use tch::{Device, Kind, Tensor};

use crate::data::Dataset;
use crate::error::{bail, Error, Result};
use crate::evaluate::{self, AttackMetrics, Metrics, TestSet};
use crate::ibau::{self, Batch, Classifier, Config, RoundStats};
use crate::model::{GraphClassifier, InputMap, LogitsSource, Model, Preprocess, TrainableShare};
use crate::outputs::OutputPlan;
use crate::parity::{self, OrtSession};
use crate::scan::{self, ScanConfig, ScanResult, Verdict};
use crate::torchscript::TorchScript;

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

#[derive(Debug, Clone, Serialize)]
pub struct Parity {
    /// What ran the written file: `onnxruntime` or `libtorch`.
    pub runtime: &'static str,
    pub passed: bool,
    pub max_abs_diff: f64,
    pub tolerance: f64,
}

/// Runs I-BAU on `model` with the clean samples `clean` and writes the
/// cleaned model to `output.model` (with its external data beside it when
/// the input had some), only after a second runtime has run the written
/// file on the clean set and matched the trained module. `model` is trained
/// in place. Nothing is written when anything fails.
pub fn sanitize(
    model: &mut Model,
    clean: &Dataset,
    config: &SanitizeConfig,
    output: &OutputPlan,
    observer: &mut dyn Observer,
) -> Result<Report> {
    let start = Instant::now();
    if model.classifier().parameters().is_empty() {
        bail!(
            "`{}` has no trainable weights: nothing to sanitize",
            model.path().display()
        );
    }
    let map = InputMap::new(model, &config.preprocess, clean)?;
    let train_batches: Vec<Batch>;
    let batches: Vec<Batch> = clean
        .batches(config.ibau.batch_size)
        .map(|(images, labels)| {
            Ok(Batch {
                images: map.apply(&images)?,
                labels: labels.f_to_device(map.device)?,
            })
        })
        .collect::<Result<_>>()?;
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
    let trainable = model.trainable();
    let batch_note = model.batch_note();
    observer.event(Event::Started {
        device: classifier.device(),
        clean_samples: clean.len(),
        batches: batches.len(),
        trainable,
        logits: &logits,
        batch_note: batch_note.as_deref(),
    });
    let measure = || {
        config
            .test
            .as_ref()
            .map(|t| evaluate::evaluate(classifier, &map, t))
            .transpose()
    };
    let before = measure()?;
    let scan_set = clean.slice(0..clean.len().min(SCAN_SAMPLES))?;
    let scan_config = config.scan.as_ref().map(|c| ScanConfig {
        preprocess: config.preprocess.clone(),
        ..c.clone()
    });
    // The full result of the scan before, for the residual checks after.
    let first = std::cell::OnceCell::new();
    let scan = |when: ScanWhen, observer: &mut dyn Observer| -> Result<Option<ScanVerdict>> {
        let Some(scan_config) = &scan_config else {
            return Ok(None);
        };
        let (result, _) = scan::scan_classifier(
            classifier,
            &map,
            &scan_set,
            scan_config,
            &mut |step, steps| observer.event(Event::Scanning { when, step, steps }),
        )?;
        let mut verdict = ScanVerdict::from(&result);
        match first.get() {
            None => {
                let _ = first.set(result);
            }
            Some(before) if result.verdict == Verdict::Clean => {
                verdict.residual =
                    scan::residual(classifier, &map, &scan_set, scan_config, before)?
                        .into_iter()
                        .map(|(class, share)| Residual { class, share })
                        .collect();
            }
            Some(_) => {}
        }
        observer.event(Event::Scanned {
            when,
            verdict: &verdict,
        });
        Ok(Some(verdict))
    };
    let scan_before = scan(ScanWhen::Before, observer)?;
    // A model the scan finds clean trains under the accuracy guard: a
    // backdoor the scan missed can still go, a clean model keeps its
    // accuracy.
    let guarded = !config.force
        && scan_before
            .as_ref()
            .is_some_and(|v| v.verdict == Verdict::Clean);
    let (train, held): (&[Batch], Vec<Batch>) = if guarded && batches.len() > 1 {
        let n = clean.len();
        let held = (n / 5).clamp(1, GUARD_SAMPLES);
        let kept = clean.slice(0..n - held)?;
        let back = clean.slice(n - held..n)?;
        let to_batches = |d: &Dataset| -> Result<Vec<Batch>> {
            d.batches(config.ibau.batch_size)
                .map(|(images, labels)| {
                    Ok(Batch {
                        images: map.apply(&images)?,
                        labels: labels.f_to_device(map.device)?,
                    })
                })
                .collect()
        };
        train_batches = to_batches(&kept)?;
        (&train_batches, to_batches(&back)?)
    } else {
        // Unguarded: every sample trains. Guarded with one batch: nothing
        // can be held back to measure what training costs, so no round runs
        // (the guard says so; --force trains).
        (&batches, Vec::new())
    };
    // Every class the scan flags is unlearned.
    let declined = guarded && held.is_empty();
    // A backdoor without one target (the scan's untargeted mask flagged,
    // no class): the mask fallback unlearns a universal mask trigger too.
    let all_to_all = scan_before
        .as_ref()
        .is_some_and(|v| v.verdict == Verdict::Backdoor && v.targets.is_empty());
    let ibau_config = Config {
        rounds: if declined { 0 } else { config.ibau.rounds },
        mask_fallback: config.ibau.mask_fallback || all_to_all,
        targets: scan_before
            .as_ref()
            .map(|v| v.targets.clone())
            .unwrap_or_default(),
        ..config.ibau.clone()
    };
    let mut guard = None;
    let rounds = unlearn(
        classifier,
        train,
        config,
        &ibau_config,
        guarded.then_some(if declined { train } else { held.as_slice() }),
        &mut guard,
        &measure,
        &scan,
        observer,
    )?;
    if let (true, Some(g)) = (declined, guard.as_mut()) {
        // Its accuracies are those of the one batch; nothing was held back.
        g.held_back = 0;
    }
    // The rounds whose weights are written: all, or up to the one the guard
    // kept.
    let written = &rounds[..guard
        .as_ref()
        .map_or(rounds.len(), |g| g.kept_round.min(rounds.len()))];
    let unlearned = written
        .last()
        .and_then(|r| r.stats.targeted.as_ref())
        .map(|t| t.classes.clone())
        .unwrap_or_default();
    let mut after = match written.last() {
        None => before.clone(),
        Some(r) => config.test.as_ref().map(|t| Metrics {
            acc: r.acc.unwrap_or(0.0),
            asr: r.asr,
            attacks: r.attacks.clone(),
            samples: t.data.len(),
        }),
    };
    // Weights stored in float16/bfloat16 were trained as float32 master
    // weights; round them to what the file will hold, and measure that.
    let mut rounded_any = false;
    if let Model::Onnx { model: graph, .. } = &*model {
        let rounded = graph.graph.params.round_to_stored_precision()?;
        rounded_any = rounded > 0;
        if rounded > 0 {
            observer.event(Event::Rounded { tensors: rounded });
            if config.test.is_some() {
                after = measure()?;
            }
        }
    }
    // The last round's scan saw the written weights unless they were rounded.
    let scan_after = match written.last().and_then(|r| r.scan.clone()) {
        Some(v) if !rounded_any => Some(v),
        _ => scan(ScanWhen::After, observer)?,
    };
    let parity_inputs: Vec<Tensor> = batches.iter().map(|b| b.images.shallow_clone()).collect();
    let parity = write_checked(model, &parity_inputs, config.parity_tolerance, output)?;
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
        logits,
        batch: batch_note,
        config: ibau_config,
        before,
        after,
        scan_before,
        scan_after,
        guard,
        unlearned,
        rounds,
        parity,
    })
}

/// The share of the samples of `batches` the model gets right.
fn held_accuracy(model: &dyn Classifier, batches: &[Batch]) -> Result<f64> {
    let (mut right, mut all) = (0.0, 0.0);
    for b in batches {
        let n = b.labels.size()[0] as f64;
        right += batch_accuracy(model, b)? * n;
        all += n;
    }
    Ok(right / all.max(1.0))
}

/// A copy of every trainable tensor, into `saved`.
fn save_parameters(model: &dyn Classifier, saved: &mut Vec<Tensor>) -> Result<(), tch::TchError> {
    *saved = model
        .parameters()
        .iter()
        .map(|p| p.f_detach_copy())
        .collect::<Result<_, _>>()?;
    Ok(())
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

/// A scan inside `sanitize`, reporting to the observer it is given.
type ScanFn<'a> = dyn Fn(ScanWhen, &mut dyn Observer) -> Result<Option<ScanVerdict>> + 'a;

/// I-BAU's rounds, each measured with `measure` and reported to `observer`;
/// stops early once the measured ASR is below `config.stop_below_asr`, or
/// (`config.until_clean`) once the round's scan says clean.
// Private, called once: its inputs are the pieces `sanitize` has built.
#[allow(clippy::too_many_arguments)]
fn unlearn(
    model: &dyn Classifier,
    batches: &[Batch],
    config: &SanitizeConfig,
    ibau_config: &Config,
    held: Option<&[Batch]>,
    guard: &mut Option<Guard>,
    measure: &dyn Fn() -> Result<Option<Metrics>>,
    scan: &ScanFn<'_>,
    observer: &mut dyn Observer,
) -> Result<Vec<Round>> {
    let mut rounds = Vec::new();
    // An evaluation error inside the round callback, passed out as itself.
    let mut failure = None;
    // The guard's baseline and the weights to go back to.
    let mut saved: Vec<Tensor> = Vec::new();
    if let Some(held) = held {
        let acc = held_accuracy(model, held)?;
        save_parameters(model, &mut saved)?;
        *guard = Some(Guard {
            held_back: held.iter().map(|b| b.labels.size()[0] as usize).sum(),
            acc_before: acc,
            acc_after: acc,
            kept_round: 0,
            over_budget: Vec::new(),
        });
    }
    let rounds_total = ibau_config.rounds;
    let result = {
        let observer = std::cell::RefCell::new(&mut *observer);
        ibau::unlearn(
            model,
            batches,
            ibau_config,
            &mut |round, phase| {
                observer.borrow_mut().event(Event::Step {
                    round,
                    rounds: rounds_total,
                    phase,
                })
            },
            &mut |stats| {
                if let (Some(held), Some(g)) = (held, guard.as_mut()) {
                    match held_accuracy(model, held) {
                        Ok(acc) if g.acc_before - acc > GUARD_LOSS => {
                            g.over_budget.push(stats.round);
                        }
                        Ok(acc) => {
                            g.acc_after = acc;
                            g.kept_round = stats.round;
                            if let Err(e) = save_parameters(model, &mut saved) {
                                failure = Some(e.into());
                                return Ok(std::ops::ControlFlow::Break(()));
                            }
                        }
                        Err(e) => {
                            failure = Some(e);
                            return Ok(std::ops::ControlFlow::Break(()));
                        }
                    }
                }
                let measured = measure().and_then(|m| {
                    let verdict = if config.until_clean {
                        scan(
                            ScanWhen::AfterRound(stats.round),
                            &mut **observer.borrow_mut(),
                        )?
                    } else {
                        None
                    };
                    Ok((m, verdict))
                });
                let (metrics, verdict) = match measured {
                    Ok(m) => m,
                    Err(e) => {
                        failure = Some(e);
                        return Ok(std::ops::ControlFlow::Break(()));
                    }
                };
                let clean = verdict.as_ref().is_some_and(ScanVerdict::gone);
                let (acc, asr, attacks) = match metrics {
                    Some(m) => (Some(m.acc), m.asr, m.attacks),
                    None => (None, None, Vec::new()),
                };
                // The highest ASR of the pairs: every attack must be below.
                let done = clean
                    || config
                        .stop_below_asr
                        .zip(asr)
                        .is_some_and(|(limit, asr)| asr < limit);
                let round = Round {
                    stats: stats.clone(),
                    acc,
                    asr,
                    attacks,
                    scan: verdict,
                };
                observer.borrow_mut().event(Event::Round(&round));
                rounds.push(round);
                Ok(if done {
                    std::ops::ControlFlow::Break(())
                } else {
                    std::ops::ControlFlow::Continue(())
                })
            },
        )
    };
    if let Some(e) = failure {
        return Err(e);
    }
    result?;
    // The guard writes the last round within its budget: the rounds after
    // it are undone (they stay in the report; `kept_round` says which).
    if let Some(g) = guard.as_ref() {
        if g.kept_round < rounds.len() {
            saved
                .iter()
                .zip(model.parameters())
                .try_for_each(|(s, p)| tch::no_grad(|| p.shallow_clone().f_copy_(s).map(drop)))?;
        }
    }
    Ok(rounds)
}

/// Writes the trained `model` through the plan, gated by the parity check.
fn write_checked(
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
