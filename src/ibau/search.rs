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
//!   trigger, and the backdoor stays; see README.md.

use tch::{Device, Kind, Reduction, Tensor};

use super::{cross_entropy, squared_norm, Batch, Classifier, Config, TrainError};

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

/// Share of a class's samples its perturbation must send to it.
pub(super) const FOOLING: f64 = 0.9;
/// Radius change per step: shrink when fooling, grow when not.
pub(super) const SHRINK: f64 = 0.9;
pub(super) const GROW: f64 = 1.1;
/// Gradient step, as a fraction of the class's current radius.
pub(super) const STEP: f64 = 0.25;
/// Images per search step, spread over the classes.
const IMAGES_PER_STEP: i64 = 200;
/// Steps at the end of the search whose radii are averaged.
pub(super) const TAIL: usize = 10;
/// Fewest steps of the targeted search when `--perturbation-steps` is not
/// given: the radii need about 30 steps to settle from the L2 radius.
pub const MIN_TARGETED_STEPS: usize = 50;
/// A class not yet unlearned joins the unlearned ones when the median
/// radius is at least this many times its radius.
const EXTRA_TARGET_RATIO: f64 = 1.5;
/// Classes the targeted search and the scan keep after [`screen`] (and the
/// random reference classes the scan adds); `--candidates` overrides.
pub const DEFAULT_CANDIDATES: usize = 10;
/// Steps of [`screen`]: one image each, shared by every class.
const SCREEN_STEPS: usize = 6;
/// Screen steps at the end whose losses rank the classes.
const SCREEN_SCORED: usize = 3;

/// Steps [`screen`] reports for `classes` classes in chunks of `max_batch`.
pub fn screen_steps(classes: i64, max_batch: i64) -> usize {
    (classes.max(0) as usize).div_ceil(max_batch.max(1) as usize) * SCREEN_STEPS
}

/// Whether a model with `classes` classes is screened first: when it has
/// more than twice `candidates` (`0` never screens).
pub fn narrows(classes: i64, candidates: usize) -> bool {
    candidates > 0 && classes > 2 * candidates as i64
}

/// The cheap first pass of the searches on a many-class model, in the
/// spirit of K-Arm's arm pre-screening: every class gets a perturbation,
/// all of one shared L2 radius `r_t` at step `t`, which takes a normalised
/// gradient step of `r_t / 2` towards the class on one image per step and
/// is measured on the next step's image before its own step (so a
/// perturbation counts only as far as it carries over to an image it was
/// not made on: a backdoor's trigger does, a sample-specific adversarial
/// direction does not). The classes are ranked by their mean cross-entropy
/// over the last [`SCREEN_SCORED`] of [`SCREEN_STEPS`] steps; the `keep`
/// lowest are returned, easiest first.
///
/// The radii: the classes go through in chunks of `max_batch` (one image
/// each per pass), in a random order (tch's seeded generator). On the first
/// chunk `r` starts at `radius`, halves after a step that sends more than
/// half of the chunk's images to their class and doubles (up to `radius`)
/// after one that sends none, so the comparison happens where classes
/// differ; every other chunk follows the same radii, so all classes are
/// compared alike and only one chunk's perturbations are held at a time.
///
/// `logits` maps perturbed inputs `[k, ...]` (an image of `images` plus a
/// perturbation) to class scores; the caller decides the space (model
/// input, or pixels it maps itself). Cost: `SCREEN_STEPS` passes of one
/// image per class (all but the last with gradients): memory follows
/// `max_batch`, time grows linearly with the classes at a small constant.
/// `progress(step, steps)` counts screen steps over all chunks.
pub fn screen<E: From<tch::TchError>>(
    logits: &mut dyn FnMut(&Tensor) -> Result<Tensor, E>,
    images: &Tensor,
    classes: i64,
    keep: usize,
    radius: f64,
    max_batch: i64,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<i64>, E> {
    let n = images.size()[0].max(1);
    let sample = images.size()[1..].to_vec();
    let (kind, device) = (images.kind(), images.device());
    let chunk = max_batch.clamp(1, classes.max(1)) as usize;
    let order = Vec::<i64>::try_from(&Tensor::f_randperm(classes, (Kind::Int64, Device::Cpu))?)?;
    let chunks = order.len().div_ceil(chunk);
    let sample_dims: Vec<i64> = (1..=sample.len() as i64).collect();
    // Each step's image, spread over the pool.
    let xs: Vec<Tensor> = (0..SCREEN_STEPS as i64)
        .map(|t| images.f_narrow(0, (t * n / SCREEN_STEPS as i64) % n, 1))
        .collect::<Result<_, _>>()?;
    let mut score = vec![0.0f64; classes as usize];
    let mut schedule: Vec<f64> = Vec::with_capacity(SCREEN_STEPS);
    for (i, ids) in order.chunks(chunk).enumerate() {
        let k = ids.len() as i64;
        let id_tensor = Tensor::f_from_slice(ids)?.f_to_device(device)?;
        let mut shape = vec![k];
        shape.extend_from_slice(&sample);
        let mut d = Tensor::f_zeros(shape.as_slice(), (kind, device))?;
        let mut r = radius;
        for (step, x) in xs.iter().enumerate() {
            if i > 0 {
                let planned = schedule[step];
                if planned != r {
                    d = d.f_mul_scalar(planned / r)?;
                    r = planned;
                }
            }
            let last = step + 1 == SCREEN_STEPS;
            let leaf = d.f_detach()?.set_requires_grad(!last);
            let out = if last {
                tch::no_grad(|| logits(&x.f_add(&leaf)?))?
            } else {
                logits(&x.f_add(&leaf)?)?
            };
            let ce = out
                .f_log_softmax(-1, Kind::Float)?
                .f_gather(1, &id_tensor.f_view([k, 1])?, false)?
                .f_neg()?
                .f_view([k])?;
            if step + SCREEN_SCORED >= SCREEN_STEPS {
                let values = Vec::<f64>::try_from(
                    &ce.f_detach()?
                        .f_to_kind(Kind::Double)?
                        .f_to_device(Device::Cpu)?,
                )?;
                for (&c, v) in ids.iter().zip(&values) {
                    score[c as usize] += v;
                }
            }
            if i == 0 {
                schedule.push(r);
            }
            if !last {
                let grad =
                    Tensor::f_run_backward(&[&ce.f_sum(Kind::Float)?], &[&leaf], false, false)?
                        .remove(0);
                d = tch::no_grad(|| -> Result<Tensor, tch::TchError> {
                    let g_norm = grad
                        .f_square()?
                        .f_sum_dim_intlist(sample_dims.as_slice(), true, kind)?
                        .f_sqrt()?
                        .f_clamp_min(1e-12)?;
                    let moved = leaf.f_sub(&grad.f_div(&g_norm)?.f_mul_scalar(0.5 * r)?)?;
                    let m_norm = moved
                        .f_square()?
                        .f_sum_dim_intlist(sample_dims.as_slice(), true, kind)?
                        .f_sqrt()?
                        .f_clamp_min(1e-12)?;
                    moved.f_mul(&m_norm.f_reciprocal()?.f_mul_scalar(r)?.f_clamp_max(1.0)?)
                })?;
            }
            if i == 0 && !last {
                // The first chunk sets the radii every other chunk follows.
                let fooled = out
                    .f_argmax(-1, false)?
                    .f_eq_tensor(&id_tensor)?
                    .f_sum(Kind::Int64)?
                    .int64_value(&[]);
                let factor = if 2 * fooled > k {
                    0.5
                } else if fooled == 0 {
                    (radius / r).min(2.0)
                } else {
                    1.0
                };
                if factor != 1.0 {
                    r *= factor;
                    d = d.f_mul_scalar(factor)?;
                }
            }
            progress(i * SCREEN_STEPS + step + 1, chunks * SCREEN_STEPS);
        }
    }
    let mut ranked: Vec<i64> = (0..classes).collect();
    ranked.sort_by(|&a, &b| score[a as usize].total_cmp(&score[b as usize]));
    ranked.truncate(keep.max(1));
    Ok(ranked)
}

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

/// The targeted search: for every class `c` a perturbation `delta_c` (zeros
/// at first) with its own radius `r_c` (the L2 radius at first). Each step
/// (one per clean batch and at least 50, cycling over the batches, or
/// `perturbation_steps`) takes the first `200 / classes` images of
/// the step's batch and, for every class at once:
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
    let device = model.device();
    let kind = model.float_kind();
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
    let max_batch = config.max_batch.unwrap_or(2 * config.batch_size).max(1) as i64;
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
    // Classes per forward pass: at most `max_batch` perturbed images, so
    // memory follows the batch size, not the number of classes.
    let chunk = (max_batch / per_class).clamp(1, m);
    let chunks = (m + chunk - 1) / chunk;
    let sample = first.images.size()[1..].to_vec();
    let mut delta: Vec<Tensor> = (0..chunks)
        .map(|i| {
            let mut shape = vec![chunk.min(m - i * chunk)];
            shape.extend_from_slice(&sample);
            Tensor::f_zeros(shape.as_slice(), (kind, device))
        })
        .collect::<Result<_, _>>()?;
    // Per-class reductions over every dimension but the first.
    let sample_dims: Vec<i64> = (1..=sample.len() as i64).collect();

    let max_radius = config.perturbation_radius;
    let mut radius = vec![max_radius; m as usize];
    let mut history: Vec<Vec<f64>> = Vec::new();
    for step in 0..steps {
        let batch = &batches[step % batches.len()];
        let count = per_class.min(batch.images.size()[0]);
        let x = batch.images.f_narrow(0, 0, count)?;
        let clean_prediction = tch::no_grad(|| model.logits(&x))?.f_argmax(-1, false)?;
        for (i, d) in delta.iter_mut().enumerate() {
            let at = i * chunk as usize;
            let k = d.size()[0];
            let leaf = d.f_detach()?.set_requires_grad(true);
            let class_ids =
                Tensor::f_from_slice(&searched[at..at + k as usize])?.f_to_device(device)?;
            // [k, count, ...] -> [k * count, ...]
            let mut stacked_shape = vec![k * count];
            stacked_shape.extend_from_slice(&x.size()[1..]);
            let perturbed = x
                .f_unsqueeze(0)?
                .f_add(&leaf.f_unsqueeze(1)?)?
                .f_reshape(stacked_shape.as_slice())?;
            let logits = model.logits(&perturbed)?;

            let fooled = fooled_shares(&logits, &clean_prediction, &class_ids)?;
            let radii = &mut radius[at..at + k as usize];
            for (r, share) in radii.iter_mut().zip(&fooled) {
                *r = (*r * if *share >= FOOLING { SHRINK } else { GROW }).min(max_radius);
            }

            let targets = class_ids.f_repeat_interleave_self_int(count, 0, None)?;
            let loss = cross_entropy(&logits, &targets, Reduction::Sum)?;
            let grad = Tensor::f_run_backward(&[&loss], &[&leaf], false, false)?.remove(0);
            let mut per_class_shape = vec![1i64; sample.len() + 1];
            per_class_shape[0] = k;
            *d = tch::no_grad(|| -> Result<Tensor, TrainError> {
                let r = Tensor::f_from_slice(radii)?
                    .f_to_kind(kind)?
                    .f_to_device(device)?
                    .f_view(per_class_shape.as_slice())?;
                let step = grad
                    .f_div(&l2_per_class(&grad, &sample_dims, kind)?.f_clamp_min(1e-12)?)?
                    .f_mul(&r)?
                    .f_mul_scalar(STEP)?;
                let moved = leaf.f_sub(&step)?;
                let factor = r
                    .f_div(&l2_per_class(&moved, &sample_dims, kind)?.f_clamp_min(1e-12)?)?
                    .f_clamp_max(1.0)?;
                Ok(moved.f_mul(&factor)?)
            })?;
        }
        history.push(radius.clone());
        progress(offset + step + 1, total);
    }

    let tail = &history[history.len().saturating_sub(TAIL)..];
    let found: Vec<f64> = (0..m as usize)
        .map(|c| tail.iter().map(|h| h[c]).sum::<f64>() / tail.len().max(1) as f64)
        .collect();
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
        .map(|&at| {
            delta[at / chunk as usize]
                .detach()
                .f_narrow(0, at as i64 % chunk, 1)
        })
        .collect::<Result<Vec<_>, _>>()?;
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

/// For `k` classes (`class_ids`, `[k]`) each tried on the same `count`
/// images: the share of the images not already predicted as the class
/// (`clean_prediction`, `[count]`) whose perturbed prediction (`logits` of
/// the `k * count` perturbed images, class-major) is the class.
pub fn fooled_shares(
    logits: &Tensor,
    clean_prediction: &Tensor,
    class_ids: &Tensor,
) -> Result<Vec<f64>, tch::TchError> {
    let k = class_ids.size()[0];
    let count = clean_prediction.size()[0];
    let column = class_ids.f_view([k, 1])?;
    let predicted = logits.detach().f_argmax(-1, false)?.f_view([k, count])?;
    let eligible = clean_prediction.f_view([1, count])?.f_ne_tensor(&column)?;
    let fooled = predicted
        .f_eq_tensor(&column)?
        .f_logical_and(&eligible)?
        .f_sum_dim_intlist([1i64].as_slice(), false, Kind::Double)?
        .f_div(
            &eligible
                .f_sum_dim_intlist([1i64].as_slice(), false, Kind::Double)?
                .f_clamp_min(1.0)?,
        )?
        .f_to_device(Device::Cpu)?;
    Vec::<f64>::try_from(&fooled)
}

fn first_batch(batches: &[Batch]) -> Result<&Batch, TrainError> {
    batches
        .first()
        .ok_or_else(|| TrainError::Config("the clean set is empty".into()))
}

/// L2 norm of each `[i, ...]` slice, shaped `[n, 1, ...]`.
fn l2_per_class(t: &Tensor, dims: &[i64], kind: Kind) -> Result<Tensor, TrainError> {
    Ok(t.f_square()?
        .f_sum_dim_intlist(dims, true, kind)?
        .f_sqrt()?)
}
