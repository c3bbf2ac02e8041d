//! The fallback for attacks without one easiest target (all-to-all, say):
//! a universal Neural Cleanse-style trigger `(1 - m) * x + m * p`, searched
//! untargeted (it only has to move an image off the class the model gives
//! it, whichever class that lands in), with the smallest L1 mask size that
//! does so for 90% of the clean images.
//!
//! A patch trigger that sends every class somewhere is a small mask in this
//! form, while the additive searches rank the model's natural directions
//! first (a 4x4 patch of ones has an L2 radius of 4 but covers only 16
//! pixels). Unlearning stamps the round's trigger on a share of every outer
//! batch, with the true labels (Neural Cleanse's unlearning); the trigger
//! is fixed during the outer step, so the step is the direct gradient.
//!
//! Everything is in the model's input space (after normalisation and
//! layout): the mask has one value per input element and the pattern stays
//! within the range of the clean inputs' values.

use tch::{Kind, Reduction, Tensor};

use super::search::{FOOLING, GROW, SHRINK, STEP, TAIL};
use super::{cross_entropy, defined_or_zeros, poison_mask, Batch, Classifier, Config, TrainError};

/// Signed-gradient step of the pattern, as a share of the inputs' range (the
/// budget schedule is the targeted search's).
const PATTERN_STEP: f64 = 0.05;
/// Share of every outer batch stamped with the trigger while unlearning
/// (Neural Cleanse unlearns with 20% of the clean data stamped).
pub const MASK_SHARE: f64 = 0.2;

/// The round's universal mask trigger, in the model's input space.
pub struct MaskTrigger {
    /// `[1, ...]` in `[0, 1]`, the sample's shape.
    pub mask: Tensor,
    /// `[1, ...]`, within the clean inputs' range.
    pub pattern: Tensor,
    /// The mask's L1 size the search settled at (mean of its last steps), in
    /// input elements.
    pub size: f64,
    /// Share of the last step's images the trigger moved off their class.
    pub fooled: f64,
}

impl MaskTrigger {
    /// `x` with the trigger stamped on the samples where `which` (`[B, 1,
    /// ...]`, 0 or 1) is 1.
    pub fn stamp(&self, x: &Tensor, which: &Tensor) -> Result<Tensor, TrainError> {
        let m = which.f_mul(&self.mask)?;
        Ok(x.f_mul(&m.f_neg()?.f_add_scalar(1.0)?)?
            .f_add(&m.f_mul(&self.pattern)?)?)
    }

    pub fn stats(&self) -> MaskStats {
        let elements = self.mask.numel().max(1) as f64;
        MaskStats {
            size: self.size,
            coverage: self.size / elements,
            fooled: self.fooled,
        }
    }
}

/// What the fallback search found in a round, for reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MaskStats {
    /// The trigger's L1 size (input elements) and the share of the input it
    /// covers.
    pub size: f64,
    pub coverage: f64,
    /// Share of the last search step's images it moved off their class.
    pub fooled: f64,
}

/// The untargeted mask search on the clean batches: one step per batch and
/// at least `min_steps` (cycling), or `config.perturbation_steps`; each step
/// takes up to `max_batch` images of its batch, measures the share the
/// trigger moves off the model's own prediction (the budget shrinks by 10%
/// when it is at least 90%, grows by 10% otherwise), then moves the mask
/// down the gradient of `-log(1 - p_y)` by a quarter of the budget (L1-
/// normalised), projects it into the L1 ball of the budget and moves the
/// pattern by a signed step.
pub fn untargeted_mask_search(
    model: &dyn Classifier,
    batches: &[Batch],
    config: &Config,
    min_steps: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<MaskTrigger, TrainError> {
    let first = batches
        .first()
        .ok_or_else(|| TrainError::Config("the clean set is empty".into()))?;
    let device = model.device();
    let kind = model.float_kind();
    let mut sample = first.images.size();
    sample[0] = 1;
    let elements = sample.iter().product::<i64>() as f64;
    let max_batch = config.max_batch.unwrap_or(2 * config.batch_size).max(1) as i64;
    let steps = config
        .perturbation_steps
        .unwrap_or(batches.len().max(min_steps));
    let (lo, hi) = tch::no_grad(|| -> Result<(f64, f64), TrainError> {
        Ok((
            first.images.f_min()?.double_value(&[]),
            first.images.f_max()?.double_value(&[]),
        ))
    })?;
    let range = (hi - lo).max(1e-6);
    let mut budget = elements / 4.0;
    let mut mask = Tensor::f_full(sample.as_slice(), budget / elements, (kind, device))?;
    let mut pattern = Tensor::f_rand(sample.as_slice(), (kind, device))?
        .f_mul_scalar(range)?
        .f_add_scalar(lo)?;
    let mut history = Vec::with_capacity(steps);
    let mut fooled = 0.0;
    for step in 0..steps {
        let batch = &batches[step % batches.len()];
        let n = batch.images.size()[0].min(max_batch);
        let x = batch.images.f_narrow(0, 0, n)?;
        let own = tch::no_grad(|| model.logits(&x))?
            .f_argmax(-1, false)?
            .f_view([n, 1])?;
        let m = mask.f_detach()?.set_requires_grad(true);
        let p = pattern.f_detach()?.set_requires_grad(true);
        let stamped = x
            .f_mul(&m.f_neg()?.f_add_scalar(1.0)?)?
            .f_add(&m.f_mul(&p)?)?;
        let logits = model.logits(&stamped)?.f_to_kind(Kind::Float)?;
        fooled = logits
            .detach()
            .f_argmax(-1, false)?
            .f_view([n, 1])?
            .f_ne_tensor(&own)?
            .f_to_kind(Kind::Double)?
            .f_mean(Kind::Double)?
            .double_value(&[]);
        budget = (budget * if fooled >= FOOLING { SHRINK } else { GROW }).min(elements);
        history.push(budget);
        // log(1 - p_y) = logsumexp over the other classes - logsumexp.
        let others = logits.f_scatter_value(1, &own, f64::NEG_INFINITY)?;
        let leave = others
            .f_logsumexp([1i64].as_slice(), false)?
            .f_sub(&logits.f_logsumexp([1i64].as_slice(), false)?)?;
        let loss = leave.f_neg()?.f_sum(Kind::Float)?;
        let grads = Tensor::f_run_backward(&[&loss], &[&m, &p], false, false)?;
        tch::no_grad(|| -> Result<(), TrainError> {
            let g = &grads[0];
            let l1 = g.f_abs()?.f_sum(Kind::Float)?.f_clamp_min(1e-12)?;
            let moved = m
                .f_sub(&g.f_div(&l1)?.f_mul_scalar(budget * STEP)?)?
                .f_clamp(0.0, 1.0)?;
            let size = moved.f_sum(Kind::Float)?.double_value(&[]);
            mask = if size > budget {
                moved.f_mul_scalar(budget / size)?
            } else {
                moved
            };
            pattern = p
                .f_sub(&grads[1].f_sign()?.f_mul_scalar(PATTERN_STEP * range)?)?
                .f_clamp(lo, hi)?;
            Ok(())
        })?;
        progress(step + 1, steps);
    }
    let tail = &history[history.len().saturating_sub(TAIL)..];
    Ok(MaskTrigger {
        mask,
        pattern,
        size: tail.iter().sum::<f64>() / tail.len().max(1) as f64,
        fooled,
    })
}

/// The outer step's gradient for a mask trigger: the clean loss of `batch`
/// with the trigger stamped on [`MASK_SHARE`] of its samples, w.r.t. every
/// parameter.
pub fn mask_gradient(
    model: &dyn Classifier,
    trigger: &MaskTrigger,
    batch: &Batch,
) -> Result<Vec<Tensor>, TrainError> {
    let which = poison_mask(&batch.images, MASK_SHARE)?;
    let x = trigger.stamp(&batch.images, &which)?;
    let loss = cross_entropy(&model.logits(&x)?, &batch.labels, Reduction::Mean)?;
    let params = model.parameters();
    let grads = Tensor::f_run_backward(&[&loss], params, false, false)?;
    params
        .iter()
        .zip(grads)
        .map(|(p, g)| defined_or_zeros(g, p))
        .collect()
}
