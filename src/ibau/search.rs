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
//!   every input shares). Measured on Keras, JAX and PyTorch
//!   exports, the paper's search finds a natural universal perturbation (a
//!   "bag" or "sandal" shape that fools 100% of a batch at radius 10) rather
//!   than the trigger, and the backdoor stays; see README.md.

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
const FOOLING: f64 = 0.9;
/// Radius change per step: shrink when fooling, grow when not.
const SHRINK: f64 = 0.9;
const GROW: f64 = 1.1;
/// Gradient step, as a fraction of the class's current radius.
const STEP: f64 = 0.25;
/// Images per search step, spread over the classes.
const IMAGES_PER_STEP: i64 = 200;
/// Steps at the end of the search whose radii are averaged.
const TAIL: usize = 10;
/// Fewest steps of the targeted search when `--perturbation-steps` is not
/// given: the radii need about 30 steps to settle from the L2 radius.
pub const MIN_TARGETED_STEPS: usize = 50;

/// What the targeted search found, for reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TargetedStats {
    /// The class whose perturbation the round unlearns.
    pub class: i64,
    /// Its smallest radius this round, and the median over all classes.
    pub radius: f64,
    pub median_radius: f64,
    /// Every class's radius this round, by class index.
    pub radii: Vec<f64>,
}

/// State carried between rounds by the targeted search: the class chosen in
/// the first round, on the model as it came (the clearest view of a backdoor:
/// after a round of unlearning, the target's radius grows towards the
/// others'). Later rounds search every class again and unlearn a fresh
/// perturbation of that class.
#[derive(Debug, Default)]
pub struct SearchMemory {
    class: Option<usize>,
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
/// round (empty `memory`) the class with the smallest radius is chosen and
/// remembered; every round returns `delta_c` of the remembered class.
pub fn targeted_search(
    model: &dyn Classifier,
    batches: &[Batch],
    config: &Config,
    memory: &mut SearchMemory,
) -> Result<(Tensor, TargetedStats), TrainError> {
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
    let per_class = (IMAGES_PER_STEP / classes).clamp(1, first.images.size()[0]);
    // Classes per forward pass: at most `max_batch` perturbed images, so
    // memory follows the batch size, not the number of classes.
    let max_batch = config.max_batch.unwrap_or(2 * config.batch_size).max(1) as i64;
    let chunk = (max_batch / per_class).clamp(1, classes);
    let chunks = (classes + chunk - 1) / chunk;
    let sample = first.images.size()[1..].to_vec();
    let mut delta: Vec<Tensor> = (0..chunks)
        .map(|i| {
            let mut shape = vec![chunk.min(classes - i * chunk)];
            shape.extend_from_slice(&sample);
            Tensor::f_zeros(shape.as_slice(), (kind, device))
        })
        .collect::<Result<_, _>>()?;
    // Per-class reductions over every dimension but the first.
    let sample_dims: Vec<i64> = (1..=sample.len() as i64).collect();

    let max_radius = config.perturbation_radius;
    let mut radius = vec![max_radius; classes as usize];
    let mut history: Vec<Vec<f64>> = Vec::new();
    let steps = config
        .perturbation_steps
        .unwrap_or(batches.len().max(MIN_TARGETED_STEPS));
    for step in 0..steps {
        let batch = &batches[step % batches.len()];
        let count = per_class.min(batch.images.size()[0]);
        let x = batch.images.f_narrow(0, 0, count)?;
        let clean_prediction = tch::no_grad(|| model.logits(&x))?.f_argmax(-1, false)?;
        for (i, d) in delta.iter_mut().enumerate() {
            let first_class = i as i64 * chunk;
            let k = d.size()[0];
            let leaf = d.f_detach()?.set_requires_grad(true);
            let class_ids =
                Tensor::f_arange_start(first_class, first_class + k, (Kind::Int64, device))?;
            // [k, count, ...] -> [k * count, ...]
            let mut stacked_shape = vec![k * count];
            stacked_shape.extend_from_slice(&x.size()[1..]);
            let perturbed = x
                .f_unsqueeze(0)?
                .f_add(&leaf.f_unsqueeze(1)?)?
                .f_reshape(stacked_shape.as_slice())?;
            let logits = model.logits(&perturbed)?;

            let fooled = fooled_shares(&logits, &clean_prediction, &class_ids)?;
            let radii = &mut radius[first_class as usize..(first_class + k) as usize];
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
    }

    let tail = &history[history.len().saturating_sub(TAIL)..];
    let radii: Vec<f64> = (0..classes as usize)
        .map(|c| tail.iter().map(|h| h[c]).sum::<f64>() / tail.len().max(1) as f64)
        .collect();
    let mut sorted = radii.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    let class = match memory.class {
        Some(class) if class < radii.len() => class,
        _ => {
            let class = (0..radii.len())
                .min_by(|&a, &b| radii[a].total_cmp(&radii[b]))
                .unwrap_or(0);
            memory.class = Some(class);
            class
        }
    };
    let chosen = delta[class / chunk as usize]
        .detach()
        .f_narrow(0, class as i64 % chunk, 1)?;
    Ok((
        chosen,
        TargetedStats {
            class: class as i64,
            radius: radii[class],
            median_radius: median,
            radii,
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
