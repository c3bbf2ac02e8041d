//! The rounds of `sanitize`: I-BAU driven one round at a time
//! ([`ibau::Unlearner`]), each followed by what decides whether to go on:
//! the accuracy guard, ACC/ASR on the test set, and (`--until-clean`) a
//! scan.

use tch::Tensor;

use crate::classifier::{Batch, Classifier};
use crate::error::Result;
use crate::ibau::{self, RoundStats};

use super::plan::Plan;
use super::scanner::Scanner;
use super::{
    batch_accuracy, Event, Guard, Measure, Observer, Round, SanitizeConfig, ScanVerdict, ScanWhen,
    GUARD_LOSS,
};

/// The rounds run and the guard's account of them.
pub(crate) struct Outcome {
    pub rounds: Vec<Round>,
    pub guard: Option<Guard>,
}

impl Outcome {
    /// The rounds whose weights are written: all, or up to the one the
    /// guard kept.
    pub(crate) fn written(&self) -> &[Round] {
        let kept = self
            .guard
            .as_ref()
            .map_or(self.rounds.len(), |g| g.kept_round.min(self.rounds.len()));
        &self.rounds[..kept]
    }
}

/// Runs the plan's rounds; stops early once the measured ASR is below
/// `config.stop_below_asr`, or (`config.until_clean`) once a round's scan
/// says the backdoor is gone. Under the guard, the weights left in the
/// model are those of the last round within budget.
pub(crate) fn run(
    model: &dyn Classifier,
    plan: &Plan,
    config: &SanitizeConfig,
    measure: &Measure<'_>,
    scanner: &mut Scanner<'_>,
    observer: &mut dyn Observer,
) -> Result<Outcome> {
    let mut guard = plan
        .guard_set()
        .map(|held| Guarded::start(model, held))
        .transpose()?;
    let mut unlearner = ibau::Unlearner::new(model, &plan.train, &plan.ibau)?;
    let mut rounds = Vec::new();
    while !unlearner.finished() {
        let (round, total) = (unlearner.rounds_done() + 1, plan.ibau.rounds);
        let stats = unlearner.next_round(&mut |phase| {
            observer.event(Event::Step {
                round,
                rounds: total,
                phase,
            })
        })?;
        if let Some(g) = guard.as_mut() {
            g.after_round(model, round)?;
        }
        let scan = if config.until_clean {
            scanner.run(ScanWhen::AfterRound(round), observer)?
        } else {
            None
        };
        let round = Round::new(stats, measure.run()?, scan);
        let done = round.scan.as_ref().is_some_and(ScanVerdict::gone)
            || config
                .stop_below_asr
                .zip(round.asr)
                .is_some_and(|(limit, asr)| asr < limit);
        observer.event(Event::Round(&round));
        rounds.push(round);
        if done {
            break;
        }
    }
    let guard = guard.map(|g| g.finish(model, rounds.len())).transpose()?;
    Ok(Outcome { rounds, guard })
}

impl Round {
    fn new(
        stats: RoundStats,
        metrics: Option<crate::evaluate::Metrics>,
        scan: Option<ScanVerdict>,
    ) -> Round {
        let (acc, asr, attacks) = match metrics {
            Some(m) => (Some(m.acc), m.asr, m.attacks),
            None => (None, None, Vec::new()),
        };
        Round {
            stats,
            acc,
            asr,
            attacks,
            scan,
        }
    }
}

/// The accuracy guard while the rounds run: its account, the held-back
/// batches, and the weights of the last round within budget.
struct Guarded<'a> {
    guard: Guard,
    held: &'a [Batch],
    saved: Vec<Tensor>,
}

impl<'a> Guarded<'a> {
    fn start(model: &dyn Classifier, held: &'a [Batch]) -> Result<Guarded<'a>> {
        let acc = held_accuracy(model, held)?;
        Ok(Guarded {
            guard: Guard {
                held_back: held.iter().map(|b| b.labels.size()[0] as usize).sum(),
                acc_before: acc,
                acc_after: acc,
                kept_round: 0,
                over_budget: Vec::new(),
            },
            held,
            saved: save_parameters(model)?,
        })
    }

    /// Keeps `round`'s weights when they are within budget.
    fn after_round(&mut self, model: &dyn Classifier, round: usize) -> Result<()> {
        let acc = held_accuracy(model, self.held)?;
        if self.guard.acc_before - acc > GUARD_LOSS {
            self.guard.over_budget.push(round);
        } else {
            self.guard.acc_after = acc;
            self.guard.kept_round = round;
            self.saved = save_parameters(model)?;
        }
        Ok(())
    }

    /// Puts back the kept weights when later rounds were over budget (they
    /// stay in the report; `kept_round` says which was written).
    fn finish(self, model: &dyn Classifier, rounds: usize) -> Result<Guard> {
        if self.guard.kept_round < rounds {
            for (saved, p) in self.saved.iter().zip(model.parameters()) {
                tch::no_grad(|| p.shallow_clone().f_copy_(saved).map(drop))?;
            }
        }
        Ok(self.guard)
    }
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

/// A copy of every trainable tensor.
fn save_parameters(model: &dyn Classifier) -> Result<Vec<Tensor>> {
    Ok(model
        .parameters()
        .iter()
        .map(|p| p.f_detach_copy())
        .collect::<Result<_, _>>()?)
}
