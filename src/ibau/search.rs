//! Step 1 of a round: the perturbation the unlearning step makes the model
//! robust to.
//!
//! - [`Search::Paper`]: the paper's universal perturbation, SGD (lr 10) on
//!   `-CE(f(x + delta), argmax f(x)) + reg * ||delta||^2`, one step per clean
//!   batch, projected into the L2 ball of radius 10.
//! - [`Search::Targeted`] (ibau's default): one perturbation per class, each
//!   shrunk to the smallest L2 radius that still sends 90% of the samples to
//!   its class; every round unlearns the class that needed the smallest radius
//!   in the first round (the backdoor's target: its trigger is a short cut
//!   every input shares), or the scan's targets, and from the second round
//!   on any class that comes to stand out from the median (a second
//!   target). Measured on Keras, JAX and PyTorch exports, the paper's
//!   search finds a natural universal perturbation (a "bag" or "sandal"
//!   shape that fools 100% of a batch at radius 10) rather than the
//!   trigger, and the backdoor stays; see docs/limits.md.

use tch::{Kind, Reduction, Tensor};

use super::{cross_entropy, squared_norm, Batch, Classifier, Config, TrainError};
use crate::search::{
    self as engine, narrows, screen, screen_steps, Budget, Family, Goal, MaskShape, Space,
};

/// How a round finds its perturbation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Search {
    /// The paper's untargeted universal perturbation.
    Paper,
    /// Per-class smallest perturbations; the class easiest to reach in the
    /// first round (a backdoor's target) is unlearned in every round.
    Targeted,
}

/// Images per search step, spread over the classes.
const IMAGES_PER_STEP: i64 = 200;
/// Fewest steps of the targeted search when `--perturbation-steps` is not
/// given: the radii need about 30 steps to settle from the L2 radius.
pub const MIN_TARGETED_STEPS: usize = 50;
/// A class not yet unlearned joins the unlearned ones when the median
/// radius is at least this many times its radius.
const EXTRA_TARGET_RATIO: f64 = 1.5;
/// What the targeted search found, for reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TargetedStats {
    /// The class whose perturbation the round unlearns (the first of
    /// `classes`).
    pub class: i64,
    /// Every class whose perturbation the round unlearns: the scan's
    /// targets when it flagged any, else the easiest class.
    pub classes: Vec<i64>,
    /// Its smallest radius this round, and the median over the classes
    /// searched.
    pub radius: f64,
    pub median_radius: f64,
    /// Every class's radius this round, by class index (`null` for a class
    /// the screen left out).
    pub radii: Vec<Option<f64>>,
    /// The classes searched after [`screen`], on a model with many classes
    /// (`None`: every class was searched).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub candidates: Option<Vec<i64>>,
}

/// State carried between rounds by the targeted search: the class chosen in
/// the first round, on the model as it came (the clearest view of a backdoor:
/// after a round of unlearning, the target's radius grows towards the
/// others'), and the classes searched. Later rounds search those classes
/// again and unlearn a fresh perturbation of the chosen one.
#[derive(Debug, Default)]
pub struct SearchMemory {
    classes: Option<Vec<i64>>,
    searched: Option<Vec<i64>>,
}

/// Step 1 of the paper: the universal perturbation for this round. Starts from
/// zeros in the shape of one input, takes one SGD step per batch (or `steps`
/// steps cycling over the batches) on
/// `-CE(f(x + delta), argmax f(x)) + reg * ||delta||^2`, then projects into
/// the L2 ball.
pub fn perturbation_search(
    model: &dyn Classifier,
    batches: &[Batch],
    config: &Config,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Tensor, TrainError> {
    let first = first_batch(batches)?;
    let mut shape = first.images.size();
    shape[0] = 1;
    let delta = Tensor::f_zeros(shape.as_slice(), (model.float_kind(), model.device()))?
        .set_requires_grad(true);
    let steps = config.perturbation_steps.unwrap_or(batches.len());
    for step in 0..steps {
        let batch = &batches[step % batches.len()];
        let pseudo_labels = tch::no_grad(|| -> Result<Tensor, TrainError> {
            Ok(model.logits(&batch.images)?.f_argmax(-1, false)?)
        })?;
        let logits = model.logits(&batch.images.f_add(&delta)?)?;
        let loss = cross_entropy(&logits, &pseudo_labels, Reduction::Mean)?
            .f_neg()?
            .f_add(&squared_norm(&delta)?.f_mul_scalar(config.regularization)?)?;
        let grad = Tensor::f_run_backward(&[&loss], &[&delta], false, false)?.remove(0);
        tch::no_grad(|| {
            delta
                .shallow_clone()
                .f_sub_(&grad.f_mul_scalar(config.perturbation_lr)?)
                .map(|_| ())
        })?;
        progress(step + 1, steps);
    }
    project(&delta.detach(), config.perturbation_radius)
}

/// `delta * min(1, radius / ||delta||)`.
pub fn project(delta: &Tensor, radius: f64) -> Result<Tensor, TrainError> {
    let norm = delta
        .f_square()?
        .f_sum(Kind::Double)?
        .f_sqrt()?
        .double_value(&[]);
    let factor = if norm > 0.0 {
        (radius / norm).min(1.0)
    } else {
        1.0
    };
    Ok(delta.f_mul_scalar(factor)?)
}

/// The targeted search, by the one engine ([`crate::search`], additive
/// family, one class per trigger, in the model's input space): for every
/// class `c` a perturbation `delta_c` (zeros at first) with its own radius
/// `r_c` (the L2 radius at first). Each step (one per clean batch and at
/// least 50, cycling over the batches, or `perturbation_steps`) takes the
/// first `200 / classes` images of the step's batch and, for every class at
/// once:
/// 1. measures the share of those images not already predicted `c` that
///    `x + delta_c` sends to `c`; `r_c` shrinks by 10% when it is at least 90%,
///    grows by 10% (up to the L2 radius) otherwise;
/// 2. moves `delta_c` down the gradient of `CE(f(x + delta_c), c)` by a
///    quarter of `r_c` (normalised step) and projects it into the ball of
///    radius `r_c`.
///
/// So `r_c` settles near the smallest radius that sends 90% of the samples to
/// `c` (each class's radius: the mean of the last 10 steps). In the first
/// round (empty `memory`) the classes to unlearn are chosen and remembered:
/// `config.targets` when given (the scan's flagged classes), else the class
/// with the smallest radius; every round returns `delta_c` of each.
///
/// On a model with more than twice `config.candidates` classes, the first
/// round first runs [`screen`] on the first batch and searches only the
/// `candidates` classes it keeps (later rounds search the same ones), so a
/// step costs `200` perturbed images whatever the number of classes.
/// `progress(step, steps)` is called after every step (screen steps count).
pub fn targeted_search(
    model: &dyn Classifier,
    batches: &[Batch],
    config: &Config,
    memory: &mut SearchMemory,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(Vec<Tensor>, TargetedStats), TrainError> {
    let first = first_batch(batches)?;
    let classes = tch::no_grad(|| model.logits(&first.images.narrow(0, 0, 1)))?
        .size()
        .last()
        .copied()
        .unwrap_or(0);
    if classes < 2 {
        return Err(TrainError::Config(format!(
            "the targeted search needs at least 2 classes; the model has {classes} logit(s) (use --search paper)"
        )));
    }
    if let Some(t) = config.targets.iter().find(|t| !(0..classes).contains(*t)) {
        return Err(TrainError::Config(format!(
            "class {t} to unlearn is not a class of the model (0 to {})",
            classes - 1
        )));
    }
    let max_batch = config.max_batch_or_default();
    let steps = config
        .perturbation_steps
        .unwrap_or(batches.len().max(MIN_TARGETED_STEPS));
    let screening = memory.searched.is_none() && narrows(classes, config.candidates);
    let total = steps
        + if screening {
            screen_steps(classes, max_batch)
        } else {
            0
        };
    let searched: Vec<i64> = match &memory.searched {
        Some(s) => s.clone(),
        None if screening => {
            let mut kept = screen(
                &mut |x: &Tensor| model.logits(x),
                &first.images,
                classes,
                config.candidates,
                config.perturbation_radius,
                max_batch,
                &mut |s, _| progress(s, total),
            )?;
            kept.extend_from_slice(&config.targets);
            kept.sort_unstable();
            kept.dedup();
            kept
        }
        None => (0..classes).collect(),
    };
    memory.searched = Some(searched.clone());
    let offset = total - steps;
    let m = searched.len() as i64;
    let per_class = (IMAGES_PER_STEP / m)
        .clamp(1, first.images.size()[0])
        .min(max_batch);
    let mut images = |step: usize| -> Result<Tensor, TrainError> {
        let batch = &batches[step % batches.len()];
        let count = per_class.min(batch.images.size()[0]);
        Ok(batch.images.f_narrow(0, 0, count)?)
    };
    let budget = Budget {
        start: Some(config.perturbation_radius),
        max: Some(config.perturbation_radius),
        ..Budget::new(steps, max_batch)
    };
    let result = engine::search(
        &mut |x: &Tensor| model.logits(x),
        &mut images,
        Family::Additive,
        &Goal::Classes(searched.clone()),
        Space {
            bounds: (0.0, 1.0),
            clamp: false,
            mask: MaskShape::Element,
        },
        &budget,
        &mut |s, _| progress(offset + s, total),
    )?;
    let found = result.budgets.clone();
    let mut sorted = found.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    let mut unlearned = match &memory.classes {
        Some(c) => c.clone(),
        None if !config.targets.is_empty() => config.targets.clone(),
        None => {
            let at = (0..found.len())
                .min_by(|&a, &b| found[a].total_cmp(&found[b]))
                .unwrap_or(0);
            vec![searched[at]]
        }
    };
    // A second target: from the second round on (once the first targets
    // have been unlearned a round), the easiest class not unlearned yet,
    // when it stands out from the median as a trigger's target does (one
    // per round). Not in the first round: there the scan decides, and on
    // the JAX CNN a natural class stands 1.5x under the median then.
    let easiest_other = (0..found.len())
        .filter(|&i| !unlearned.contains(&searched[i]))
        .min_by(|&a, &b| found[a].total_cmp(&found[b]));
    if let (Some(_), Some(at)) = (&memory.classes, easiest_other) {
        if found[at] * EXTRA_TARGET_RATIO <= median {
            unlearned.push(searched[at]);
        }
    }
    memory.classes = Some(unlearned.clone());
    let places: Vec<usize> = unlearned
        .iter()
        .map(|c| searched.iter().position(|s| s == c).unwrap_or(0))
        .collect();
    let chosen = places
        .iter()
        .map(|&at| Ok(result.trigger(at)?.remove(0)))
        .collect::<Result<Vec<_>, TrainError>>()?;
    let at = places[0];
    let mut radii = vec![None; classes as usize];
    for (&c, &r) in searched.iter().zip(&found) {
        radii[c as usize] = Some(r);
    }
    Ok((
        chosen,
        TargetedStats {
            class: searched[at],
            classes: unlearned,
            radius: found[at],
            median_radius: median,
            radii,
            candidates: (m < classes).then(|| searched.clone()),
        },
    ))
}

fn first_batch(batches: &[Batch]) -> Result<&Batch, TrainError> {
    batches
        .first()
        .ok_or_else(|| TrainError::Config("the clean set is empty".into()))
}
