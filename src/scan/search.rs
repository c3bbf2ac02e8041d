//! The scan's per-class searches, in image space (`[0, 1]` pixels, before
//! normalisation and layout), for every class at once:
//!
//! - **additive**: `x + delta_c`, the smallest L2 radius `||delta_c||` that
//!   sends 90% of the clean images to `c` (what I-BAU's targeted search
//!   measures);
//! - **mask**: `(1 - m_c) * x + m_c * p_c` (Neural Cleanse's trigger form),
//!   the smallest L1 size `sum m_c` of a mask that does the same.
//!
//! Both adapt a per-class budget the same way: it shrinks by 10% after a step
//! that fools at least 90% of the step's images and grows by 10% after one
//! that does not, so it settles near the smallest budget that fools 90%; a
//! class's value is the mean budget over the last steps. Classes are
//! processed in chunks of at most `max_batch` perturbed images per forward
//! pass, so memory follows the batch size, not the number of classes.

use tch::{Device, Kind, Reduction, Tensor};

use crate::error::Result;
use crate::ibau::Classifier;
use crate::model::InputMap;

/// Share of a class's images a perturbation must send to it.
pub const FOOLING: f64 = 0.9;
const SHRINK: f64 = 0.9;
const GROW: f64 = 1.1;
/// Gradient step, as a fraction of the class's current budget.
const STEP: f64 = 0.25;
/// Signed-gradient step of the mask search's pattern, in pixel units.
const PATTERN_STEP: f64 = 0.05;
/// Steps at the end of a search whose budgets are averaged.
const TAIL: usize = 10;

/// Which trigger form a search recovers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Additive,
    Mask,
}

/// What a search found for every class it searched.
pub struct Found {
    /// The classes searched, in order (every class, or those a screen kept).
    pub classes: Vec<i64>,
    /// The per-class budget (L2 radius or mask L1 size), as `classes`.
    pub budgets: Vec<f64>,
    /// The perturbed image of every class is `apply(class, x)`: the additive
    /// `delta` `[classes, C, H, W]`, or the mask `[classes, 1, H, W]` and
    /// pattern `[classes, C, H, W]`.
    pub delta: Vec<Tensor>,
    pub mask: Vec<Tensor>,
    pub pattern: Vec<Tensor>,
    /// Classes per chunk (`delta`/`mask`/`pattern` hold one tensor per chunk).
    pub chunk: i64,
}

impl Found {
    /// Where `class` is in `classes`, as (chunk, row in the chunk).
    pub fn place(&self, class: i64) -> Result<(usize, i64)> {
        let Some(at) = self.classes.iter().position(|&c| c == class) else {
            crate::error::bail!("class {class} was not searched");
        };
        Ok((at / self.chunk as usize, at as i64 % self.chunk))
    }

    /// `x` `[N, C, H, W]` with class `class`'s trigger applied, clamped to
    /// `[0, 1]`.
    pub fn apply(&self, family: Family, class: i64, x: &Tensor) -> Result<Tensor> {
        let (i, j) = self.place(class)?;
        let out = match family {
            Family::Additive => x.f_add(&self.delta[i].f_narrow(0, j, 1)?)?,
            Family::Mask => {
                let m = self.mask[i].f_narrow(0, j, 1)?;
                let p = self.pattern[i].f_narrow(0, j, 1)?;
                x.f_mul(&m.f_neg()?.f_add_scalar(1.0)?)?
                    .f_add(&m.f_mul(&p)?)?
            }
        };
        Ok(out.f_clamp(0.0, 1.0)?)
    }
}

/// Settings of one search.
pub struct SearchSettings {
    pub steps: usize,
    /// Images per class per step.
    pub per_class: i64,
    /// Perturbed images per forward pass.
    pub max_batch: i64,
    pub seed: i64,
    /// Keep each class's budget at these values (as the classes searched)
    /// instead of adapting it (the residual check: what a trigger of the
    /// size found before still does).
    pub fixed: Option<Vec<f64>>,
}

/// Runs the `family` search for each class of `searched` on `images`
/// (`[N, C, H, W]` in `[0, 1]`, on the model's device); `progress` is called
/// after every step with `(step, steps)`.
pub fn search(
    model: &dyn Classifier,
    map: &InputMap,
    images: &Tensor,
    searched: &[i64],
    family: Family,
    settings: &SearchSettings,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Found> {
    let device = images.device();
    let size = images.size();
    let (n, sample) = (size[0], &size[1..]);
    let classes = searched.len() as i64;
    let per_class = settings
        .per_class
        .clamp(1, n)
        .min(settings.max_batch.max(1));
    let chunk = (settings.max_batch / per_class).clamp(1, classes.max(1));
    let chunks = (classes + chunk - 1) / chunk;
    let pixels = (sample[1] * sample[2]) as f64;
    // Budgets start where any class is reachable: the L2 norm of a full
    // swing of every pixel's value, or a mask over the whole image.
    let max_budget = match family {
        Family::Additive => (sample.iter().product::<i64>() as f64).sqrt(),
        Family::Mask => pixels,
    };
    let start_budget = match family {
        Family::Additive => max_budget,
        Family::Mask => pixels / 4.0,
    };
    tch::manual_seed(settings.seed);
    let order = Tensor::f_randperm(n, (Kind::Int64, device))?;
    let mut delta = Vec::new();
    let mut mask = Vec::new();
    let mut pattern = Vec::new();
    for i in 0..chunks {
        let k = chunk.min(classes - i * chunk);
        let mut shape = vec![k];
        shape.extend_from_slice(sample);
        match family {
            Family::Additive => {
                delta.push(Tensor::f_zeros(shape.as_slice(), (Kind::Float, device))?);
            }
            Family::Mask => {
                pattern.push(Tensor::f_rand(shape.as_slice(), (Kind::Float, device))?);
                let m = start_budget / pixels;
                mask.push(Tensor::f_full(
                    [k, 1, sample[1], sample[2]].as_slice(),
                    m,
                    (Kind::Float, device),
                )?);
            }
        }
    }
    let mut budget = match &settings.fixed {
        Some(fixed) if fixed.len() == classes as usize => fixed.clone(),
        _ => vec![start_budget; classes as usize],
    };
    let mut history: Vec<Vec<f64>> = Vec::new();
    let mut next = 0i64;
    for step in 0..settings.steps {
        // The step's images: the next `per_class` of a fixed shuffle.
        let idx = Tensor::f_arange(per_class, (Kind::Int64, device))?
            .f_add_scalar(next)?
            .f_remainder(n)?;
        next = (next + per_class) % n;
        let x = images.f_index_select(0, &order.f_index_select(0, &idx)?)?;
        let mapped = map.apply(&x)?;
        let clean_prediction = tch::no_grad(|| model.logits(&mapped))?.f_argmax(-1, false)?;
        for i in 0..chunks {
            let first = i * chunk;
            let k = chunk.min(classes - first);
            let ids = Tensor::f_from_slice(&searched[first as usize..(first + k) as usize])?
                .f_to_device(device)?;
            let leaves: Vec<Tensor> = match family {
                Family::Additive => vec![delta[i as usize].f_detach()?.set_requires_grad(true)],
                Family::Mask => vec![
                    mask[i as usize].f_detach()?.set_requires_grad(true),
                    pattern[i as usize].f_detach()?.set_requires_grad(true),
                ],
            };
            let xs = x.f_unsqueeze(0)?;
            let perturbed = match family {
                Family::Additive => xs.f_add(&leaves[0].f_unsqueeze(1)?)?,
                Family::Mask => {
                    let m = leaves[0].f_unsqueeze(1)?;
                    xs.f_mul(&m.f_neg()?.f_add_scalar(1.0)?)?
                        .f_add(&m.f_mul(&leaves[1].f_unsqueeze(1)?)?)?
                }
            };
            let mut flat = vec![k * per_class];
            flat.extend_from_slice(sample);
            let perturbed = perturbed.f_reshape(flat.as_slice())?.f_clamp(0.0, 1.0)?;
            let logits = model.logits(&map.apply(&perturbed)?)?;
            let fooled = crate::ibau::fooled_shares(&logits, &clean_prediction, &ids)?;
            if settings.fixed.is_none() {
                for (j, share) in fooled.iter().enumerate() {
                    let b = &mut budget[(first as usize) + j];
                    *b = (*b * if *share >= FOOLING { SHRINK } else { GROW }).min(max_budget);
                }
            }
            let targets = ids.f_repeat_interleave_self_int(per_class, 0, None)?;
            let log_probs = logits.f_log_softmax(-1, Kind::Float)?;
            let loss = log_probs.f_nll_loss::<Tensor>(&targets, None, Reduction::Sum, -100)?;
            let refs: Vec<&Tensor> = leaves.iter().collect();
            let grads = Tensor::f_run_backward(&[&loss], &refs, false, false)?;
            let b = Tensor::f_from_slice(&budget[first as usize..(first + k) as usize])?
                .f_to_kind(Kind::Float)?
                .f_to_device(device)?;
            tch::no_grad(|| -> Result<()> {
                match family {
                    Family::Additive => {
                        let shape = [k, 1, 1, 1];
                        let r = b.f_view(shape)?;
                        let g = &grads[0];
                        let step = g
                            .f_div(&norm(g, 2.0)?.f_clamp_min(1e-12)?)?
                            .f_mul(&r)?
                            .f_mul_scalar(STEP)?;
                        let d = leaves[0].f_sub(&step)?;
                        let factor = r
                            .f_div(&norm(&d, 2.0)?.f_clamp_min(1e-12)?)?
                            .f_clamp_max(1.0)?;
                        delta[i as usize] = d.f_mul(&factor)?;
                    }
                    Family::Mask => {
                        let r = b.f_view([k, 1, 1, 1])?;
                        let g = &grads[0];
                        let step = g
                            .f_div(&norm(g, 1.0)?.f_clamp_min(1e-12)?)?
                            .f_mul(&r)?
                            .f_mul_scalar(STEP)?;
                        let m = leaves[0].f_sub(&step)?.f_clamp(0.0, 1.0)?;
                        let factor = r
                            .f_div(&norm(&m, 1.0)?.f_clamp_min(1e-12)?)?
                            .f_clamp_max(1.0)?;
                        mask[i as usize] = m.f_mul(&factor)?;
                        pattern[i as usize] = leaves[1]
                            .f_sub(&grads[1].f_sign()?.f_mul_scalar(PATTERN_STEP)?)?
                            .f_clamp(0.0, 1.0)?;
                    }
                }
                Ok(())
            })?;
        }
        history.push(budget.clone());
        progress(step + 1, settings.steps);
    }
    let tail = &history[history.len().saturating_sub(TAIL)..];
    let budgets = (0..classes as usize)
        .map(|c| tail.iter().map(|h| h[c]).sum::<f64>() / tail.len().max(1) as f64)
        .collect();
    Ok(Found {
        classes: searched.to_vec(),
        budgets,
        delta,
        mask,
        pattern,
        chunk,
    })
}

/// The `p`-norm of each `[i, ...]` slice, shaped `[n, 1, 1, 1]`.
fn norm(t: &Tensor, p: f64) -> Result<Tensor> {
    let dims: Vec<i64> = (1..t.dim() as i64).collect();
    let abs = t.f_abs()?;
    Ok(if p == 1.0 {
        abs.f_sum_dim_intlist(dims.as_slice(), true, Kind::Float)?
    } else {
        abs.f_square()?
            .f_sum_dim_intlist(dims.as_slice(), true, Kind::Float)?
            .f_sqrt()?
    })
}

/// How a class's recovered trigger does on held-back clean images.
#[derive(Debug, Clone, Copy, Default)]
pub struct Transfer {
    /// Share of the images not already predicted `class` that the trigger
    /// sends to it.
    pub share: f64,
    /// Mean probability of `class` on those images with the trigger.
    pub confidence: f64,
    /// The smallest share over the images' true classes (other than
    /// `class`) with at least 5 images.
    pub worst_source: f64,
}

/// [`Transfer`] of every searched class's trigger, as `found.classes`
/// (chunks of at most `max_batch`).
pub fn transfer(
    model: &dyn Classifier,
    map: &InputMap,
    images: &Tensor,
    labels: &Tensor,
    found: &Found,
    family: Family,
    max_batch: i64,
) -> Result<Vec<Transfer>> {
    let n = images.size()[0];
    let (clean, _) = predict_with_probabilities(model, map, images, max_batch)?;
    let labels = Vec::<i64>::try_from(&labels.f_to_device(Device::Cpu)?)?;
    let clean = Vec::<i64>::try_from(&clean.f_to_device(Device::Cpu)?)?;
    let mut sources = labels.clone();
    sources.sort_unstable();
    sources.dedup();
    let mut out = Vec::with_capacity(found.classes.len());
    for &c in &found.classes {
        let eligible: Vec<usize> = (0..n as usize).filter(|&i| clean[i] != c).collect();
        if eligible.is_empty() {
            out.push(Transfer::default());
            continue;
        }
        let triggered = found.apply(family, c, images)?;
        let (predicted, probs) = predict_with_probabilities(model, map, &triggered, max_batch)?;
        let predicted = Vec::<i64>::try_from(&predicted.f_to_device(Device::Cpu)?)?;
        let p_c = Vec::<f64>::try_from(
            &probs
                .f_select(1, c)?
                .f_to_kind(Kind::Double)?
                .f_to_device(Device::Cpu)?,
        )?;
        let hits = eligible.iter().filter(|&&i| predicted[i] == c).count();
        let confidence = eligible.iter().map(|&i| p_c[i]).sum::<f64>() / eligible.len() as f64;
        let mut worst: f64 = 1.0;
        for &source in &sources {
            let members: Vec<usize> = eligible
                .iter()
                .copied()
                .filter(|&i| labels[i] == source && source != c)
                .collect();
            if members.len() >= 5 {
                let h = members.iter().filter(|&&i| predicted[i] == c).count();
                worst = worst.min(h as f64 / members.len() as f64);
            }
        }
        out.push(Transfer {
            share: hits as f64 / eligible.len() as f64,
            confidence,
            worst_source: worst,
        });
    }
    Ok(out)
}

/// Predicted classes and class probabilities of `images`, `max_batch` at a
/// time.
fn predict_with_probabilities(
    model: &dyn Classifier,
    map: &InputMap,
    images: &Tensor,
    max_batch: i64,
) -> Result<(Tensor, Tensor)> {
    let n = images.size()[0];
    let mut classes = Vec::new();
    let mut probs = Vec::new();
    let mut start = 0;
    while start < n {
        let len = max_batch.min(n - start);
        let x = map.apply(&images.f_narrow(0, start, len)?)?;
        let logits = tch::no_grad(|| model.logits(&x))?;
        classes.push(logits.f_argmax(-1, false)?);
        probs.push(logits.f_softmax(-1, Kind::Float)?);
        start += len;
    }
    Ok((Tensor::f_cat(&classes, 0)?, Tensor::f_cat(&probs, 0)?))
}

/// Predicted classes of `images`, `max_batch` at a time.
pub fn predict(
    model: &dyn Classifier,
    map: &InputMap,
    images: &Tensor,
    max_batch: i64,
) -> Result<Tensor> {
    let (classes, _) = predict_with_probabilities(model, map, images, max_batch)?;
    Ok(classes.f_to_device(images.device())?)
}
