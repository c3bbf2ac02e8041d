//! The cheap first pass of the searches on a many-class model (K-Arm's arm
//! pre-screening): every class gets an additive perturbation of one shared
//! radius for a few steps, and the classes its losses rank easiest are the
//! ones the engine ([`super::search`]) then searches. Used by the scan and
//! by sanitize's targeted search.

use tch::{Device, Kind, Tensor};

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
