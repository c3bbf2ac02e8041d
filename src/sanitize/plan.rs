//! What follows from the scan's verdict before any round: which samples
//! train, which are held back for the accuracy guard, and the I-BAU
//! configuration (the classes to unlearn, the mask trigger for a backdoor
//! without one target, no round when nothing can be guarded).

use crate::classifier::Batch;
use crate::data::Dataset;
use crate::error::Result;
use crate::ibau::Config;
use crate::model::InputMap;
use crate::scan::Verdict;

use super::{to_batches, SanitizeConfig, ScanVerdict, GUARD_SAMPLES};

/// The plan of the rounds.
pub(crate) struct Plan {
    /// I-BAU's configuration as it runs (and as the report states it).
    pub ibau: Config,
    /// The scan before said clean and `--force` is not given: the rounds
    /// run under the accuracy guard ([`super::Guard`]).
    pub guarded: bool,
    /// The batches that train.
    pub train: Vec<Batch>,
    /// The batches the guard measures (empty when unguarded, or when a
    /// single clean batch leaves nothing to hold back).
    pub held: Vec<Batch>,
}

impl Plan {
    pub(crate) fn new(
        config: &SanitizeConfig,
        scan_before: Option<&ScanVerdict>,
        clean: &Dataset,
        batches: &[Batch],
        map: &InputMap,
    ) -> Result<Plan> {
        let guarded = !config.force && scan_before.is_some_and(|v| v.verdict == Verdict::Clean);
        let (train, held) = if guarded && batches.len() > 1 {
            // The last fifth (at most GUARD_SAMPLES) is held back.
            let n = clean.len();
            let held = (n / 5).clamp(1, GUARD_SAMPLES);
            let size = config.ibau.batch_size;
            (
                to_batches(&clean.slice(0..n - held)?, size, map)?,
                to_batches(&clean.slice(n - held..n)?, size, map)?,
            )
        } else {
            // Unguarded: every sample trains. Guarded with one batch:
            // nothing can be held back to measure what training costs, so
            // no round runs (the guard says so; --force trains).
            (
                batches.iter().map(Batch::shallow_clone).collect(),
                Vec::new(),
            )
        };
        let declined = guarded && held.is_empty();
        // A backdoor without one target (the scan's untargeted mask
        // flagged, no class): the mask fallback unlearns a universal mask
        // trigger too. Every class the scan flags is unlearned.
        let all_to_all =
            scan_before.is_some_and(|v| v.verdict == Verdict::Backdoor && v.targets.is_empty());
        let targets = scan_before.map(|v| v.targets.clone()).unwrap_or_default();
        let ibau = Config {
            rounds: if declined { 0 } else { config.ibau.rounds },
            mask_fallback: config.ibau.mask_fallback || all_to_all,
            mask_targets: if config.mask_targets {
                targets.clone()
            } else {
                Vec::new()
            },
            targets,
            ..config.ibau.clone()
        };
        Ok(Plan {
            ibau,
            guarded,
            train,
            held,
        })
    }

    /// Guarded, but nothing could be held back: no round runs.
    pub(crate) fn declined(&self) -> bool {
        self.guarded && self.held.is_empty()
    }

    /// The batches the guard measures: the held-back ones, or the one batch
    /// when the plan declined; `None` when unguarded.
    pub(crate) fn guard_set(&self) -> Option<&[Batch]> {
        self.guarded.then_some(if self.declined() {
            self.train.as_slice()
        } else {
            self.held.as_slice()
        })
    }
}
