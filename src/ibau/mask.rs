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

use tch::{Reduction, Tensor};

use super::{cross_entropy, defined_or_zeros, poison_mask, Batch, Classifier, Config, TrainError};
use crate::search::{search, Budget, Family, Goal, MaskShape, Space};

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
    /// Share of the last step's images the trigger moved off their class
    /// (untargeted) or sent to `class`.
    pub fooled: f64,
    /// The class a targeted trigger sends images to; `None`: untargeted.
    pub class: Option<i64>,
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
            class: self.class,
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
    /// Share of the last search step's images it moved off their class
    /// (untargeted) or sent to `class`.
    pub fooled: f64,
    /// The class of a targeted trigger (`--mask-targets`); absent when
    /// untargeted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class: Option<i64>,
}

/// The untargeted mask search on the clean batches, by the one engine
/// ([`crate::search`], mask family, untargeted goal, masks per input
/// element, patterns within the first batch's value range): one step per
/// batch and at least `min_steps` (cycling), or
/// `config.perturbation_steps`, each on up to `max_batch` images of its
/// batch.
pub fn untargeted_mask_search(
    model: &dyn Classifier,
    batches: &[Batch],
    config: &Config,
    min_steps: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<MaskTrigger, TrainError> {
    mask_search(
        model,
        batches,
        config,
        &Goal::Untargeted,
        min_steps,
        progress,
    )?
    .pop()
    .ok_or_else(|| TrainError::Config("the mask search found no mask".into()))
}

/// The mask search of [`untargeted_mask_search`] towards `classes`: one
/// mask trigger per class, each the smallest that sends 90% of the clean
/// images to its class (Neural Cleanse's reverse-engineered trigger).
pub fn targeted_mask_search(
    model: &dyn Classifier,
    batches: &[Batch],
    config: &Config,
    classes: &[i64],
    min_steps: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<MaskTrigger>, TrainError> {
    let goal = Goal::Classes(classes.to_vec());
    mask_search(model, batches, config, &goal, min_steps, progress)
}

fn mask_search(
    model: &dyn Classifier,
    batches: &[Batch],
    config: &Config,
    goal: &Goal,
    min_steps: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<MaskTrigger>, TrainError> {
    let first = batches
        .first()
        .ok_or_else(|| TrainError::Config("the clean set is empty".into()))?;
    let max_batch = config.max_batch_or_default();
    let steps = config
        .perturbation_steps
        .unwrap_or(batches.len().max(min_steps));
    let bounds = tch::no_grad(|| -> Result<(f64, f64), TrainError> {
        Ok((
            first.images.f_min()?.double_value(&[]),
            first.images.f_max()?.double_value(&[]),
        ))
    })?;
    let space = Space {
        bounds,
        clamp: false,
        mask: MaskShape::Element,
    };
    let mut images = |step: usize| -> Result<Tensor, TrainError> {
        let batch = &batches[step % batches.len()];
        let n = batch.images.size()[0].min(max_batch);
        Ok(batch.images.f_narrow(0, 0, n)?)
    };
    let found = search(
        &mut |x: &Tensor| model.logits(x),
        &mut images,
        Family::Mask,
        goal,
        space,
        &Budget::new(steps, max_batch),
        progress,
    )?;
    let classes: Vec<Option<i64>> = match goal {
        Goal::Classes(classes) => classes.iter().copied().map(Some).collect(),
        Goal::Untargeted => vec![None],
    };
    (0..classes.len())
        .map(|i| {
            let [mask, pattern]: [Tensor; 2] = found
                .trigger(i)?
                .try_into()
                .map_err(|_| TrainError::Config("the mask search found no mask".into()))?;
            Ok(MaskTrigger {
                mask,
                pattern,
                size: found.budgets[i],
                fooled: found.reached[i],
                class: classes[i],
            })
        })
        .collect()
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
