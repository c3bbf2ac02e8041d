//! The one trigger-search engine: the smallest trigger of a family that
//! moves the clean images where a goal says, under an adaptive budget. Used
//! by the scan (every class, in pixels), by sanitize's targeted search (the
//! classes to unlearn, in the model's input space) and by the untargeted
//! mask search (all-to-all).
//!
//! - [`Family::Additive`]: `x + delta`, its budget the L2 radius `||delta||`
//!   (what I-BAU's targeted search measures);
//! - [`Family::Mask`]: `(1 - m) * x + m * p` (Neural Cleanse's trigger
//!   form), its budget the L1 size `sum m` of the mask (one value per pixel,
//!   shared by the channels, or per input element: [`MaskShape`]).
//!
//! Goals ([`Goal`]): each of a set of classes, a trigger per class, judged
//! by the share of the images not already predicted as the class that it
//! sends there (loss `-log p_c`); or untargeted, one trigger judged by the
//! share it moves off the class the model gives each image (loss
//! `-log(1 - p_y)`).
//!
//! The budget schedule, shared by every family and goal: a trigger's budget
//! shrinks by 10% ([`SHRINK`]) after a step that reaches [`FOOLING`] (90%)
//! of the step's images and grows by 10% ([`GROW`]) after one that does
//! not, so it settles near the smallest budget that reaches 90%; the
//! trigger moves by a normalised gradient step of a share of its budget
//! ([`STEP`], a quarter, annealed to [`Budget::final_step`] over the steps)
//! and is projected back into its budget; a mask's pattern moves by a
//! signed step ([`PATTERN_STEP`] of the value range). A trigger's result is
//! its mean budget over the last [`TAIL`] steps. These constants come from
//! the first scan (issue "Scan"): 90% is Neural Cleanse's attack success
//! threshold for a reverse-engineered trigger; the 10% steps and the
//! quarter-budget gradient step let a budget cross its range (from the
//! whole image to a 3x3 patch, a factor of about 90) in about 45 steps;
//! the 10-step tail averages the oscillation of +-10% around the settled
//! value.
//!
//! Triggers go through the model in chunks of at most `max_batch` perturbed
//! images, so memory follows that number, not the number of triggers.

mod penalised;
mod screen;

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

pub use screen::{narrows, screen, screen_steps, DEFAULT_CANDIDATES};

/// Share of the images a trigger must reach (Neural Cleanse's 90%).
pub const FOOLING: f64 = 0.9;
/// Budget change per step: shrink when the trigger reaches [`FOOLING`],
/// grow when not.
pub const SHRINK: f64 = 0.9;
pub const GROW: f64 = 1.1;
/// Gradient step, as a share of the trigger's current budget.
pub const STEP: f64 = 0.25;
/// Signed-gradient step of a mask's pattern, as a share of the value range.
pub const PATTERN_STEP: f64 = 0.05;
/// Steps at the end of a search whose budgets are averaged.
pub const TAIL: usize = 10;

/// Which trigger form a search recovers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Additive,
    Mask,
}

/// What a trigger must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Goal {
    /// One trigger per class, each sending the images to its class.
    Classes(Vec<i64>),
    /// One trigger moving the images off the class the model gives them.
    Untargeted,
}

impl Goal {
    fn triggers(&self) -> usize {
        match self {
            Goal::Classes(c) => c.len(),
            Goal::Untargeted => 1,
        }
    }
}

/// How a mask covers a sample `[C, ...]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaskShape {
    /// One value per pixel, shared by the channels (`[1, H, W]`): images.
    Pixel,
    /// One value per input element: a model input of unknown layout.
    Element,
}

/// Where triggers live.
#[derive(Debug, Clone, Copy)]
pub struct Space {
    /// The range of input values: a mask's pattern stays in it, and with
    /// `clamp` every perturbed input is clamped to it.
    pub bounds: (f64, f64),
    pub clamp: bool,
    pub mask: MaskShape,
}

impl Space {
    /// Images in `[0, 1]`, clamped, masks per pixel (the scan).
    pub const PIXELS: Space = Space {
        bounds: (0.0, 1.0),
        clamp: true,
        mask: MaskShape::Pixel,
    };
}

/// How long and how wide a search is.
#[derive(Debug)]
pub struct Budget {
    pub steps: usize,
    /// Perturbed images per forward pass (bounds memory).
    pub max_batch: i64,
    /// Every trigger's budget at the start and its ceiling (`None`: the
    /// family's: the L2 norm of a full swing of every value, or a mask
    /// over a quarter of the sample, up to all of it).
    pub start: Option<f64>,
    pub max: Option<f64>,
    /// Keep each trigger's budget at these values instead of adapting it
    /// (what a trigger of a known size still does).
    pub fixed: Option<Vec<f64>>,
    /// The gradient step's share of the budget at the last step ([`STEP`]
    /// over the first half of the steps, then linear): a long search
    /// converges.
    pub final_step: f64,
    /// Start each trigger from these (per trigger: its budget and its
    /// tensors as [`Found::trigger`] gives them) instead of zeros or a
    /// uniform mask (refining an earlier search's triggers).
    pub warm: Option<Vec<(f64, Vec<Tensor>)>>,
    /// For the mask family towards classes: Neural Cleanse's penalised
    /// optimiser ([`penalised`]) instead of the budget schedule.
    pub penalised: bool,
}

impl Budget {
    pub fn new(steps: usize, max_batch: i64) -> Budget {
        Budget {
            steps,
            max_batch,
            start: None,
            max: None,
            fixed: None,
            final_step: STEP,
            warm: None,
            penalised: false,
        }
    }
}

/// What a search found.
pub struct Found {
    /// The goal's classes, in order (empty when untargeted).
    pub classes: Vec<i64>,
    /// Each trigger's budget (L2 radius or mask L1 size, in the space's
    /// elements or pixels), as `classes` (one when untargeted).
    pub budgets: Vec<f64>,
    /// Share of the last step's images each trigger reached.
    pub reached: Vec<f64>,
    /// Per chunk of triggers: the additive `delta` `[k, ...]`, or the mask
    /// `[k, 1 or C, ...]` and pattern `[k, C, ...]`.
    pub delta: Vec<Tensor>,
    pub mask: Vec<Tensor>,
    pub pattern: Vec<Tensor>,
    /// Triggers per chunk.
    pub chunk: i64,
    pub family: Family,
    pub space: Space,
}

impl Found {
    /// Where trigger `index` is, as (chunk, row in the chunk).
    fn place(&self, index: usize) -> (usize, i64) {
        (index / self.chunk as usize, index as i64 % self.chunk)
    }

    /// The index of `class`'s trigger.
    pub fn index(&self, class: i64) -> Option<usize> {
        self.classes.iter().position(|&c| c == class)
    }

    /// `x` `[N, ...]` with trigger `index` applied (clamped when the space
    /// says so).
    pub fn apply(&self, index: usize, x: &Tensor) -> Result<Tensor, tch::TchError> {
        let (i, j) = self.place(index);
        let out = match self.family {
            Family::Additive => x.f_add(&self.delta[i].f_narrow(0, j, 1)?)?,
            Family::Mask => stamp(
                x,
                &self.mask[i].f_narrow(0, j, 1)?,
                &self.pattern[i].f_narrow(0, j, 1)?,
            )?,
        };
        self.space.limit(out)
    }

    /// Trigger `index`'s tensors, `[1, ...]` each: the additive delta, or
    /// the mask and the pattern.
    pub fn trigger(&self, index: usize) -> Result<Vec<Tensor>, tch::TchError> {
        let (i, j) = self.place(index);
        Ok(match self.family {
            Family::Additive => vec![self.delta[i].f_narrow(0, j, 1)?.f_detach()?],
            Family::Mask => vec![
                self.mask[i].f_narrow(0, j, 1)?.f_detach()?,
                self.pattern[i].f_narrow(0, j, 1)?.f_detach()?,
            ],
        })
    }
}

impl Space {
    fn limit(&self, x: Tensor) -> Result<Tensor, tch::TchError> {
        if self.clamp {
            x.f_clamp(self.bounds.0, self.bounds.1)
        } else {
            Ok(x)
        }
    }
}

/// `(1 - m) * x + m * p`.
pub fn stamp(x: &Tensor, m: &Tensor, p: &Tensor) -> Result<Tensor, tch::TchError> {
    x.f_mul(&m.f_neg()?.f_add_scalar(1.0)?)?.f_add(&m.f_mul(p)?)
}

/// Runs the `family` search for `goal`. `images(step)` gives the step's
/// clean images `[n, ...]` (every trigger is tried on the same ones; `n`
/// at most `max_batch`); `logits` maps inputs of the space to class scores;
/// `progress(step, steps)` is called after every step. Random starts come
/// from tch's generator (seed it first).
pub fn search<E: From<tch::TchError>>(
    logits: &mut dyn FnMut(&Tensor) -> Result<Tensor, E>,
    images: &mut dyn FnMut(usize) -> Result<Tensor, E>,
    family: Family,
    goal: &Goal,
    space: Space,
    budget: &Budget,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Found, E> {
    if let (Family::Mask, Goal::Classes(classes), true) = (family, goal, budget.penalised) {
        return penalised::search(logits, images, classes, space, budget, progress);
    }
    let first = images(0)?;
    let (kind, device) = (first.kind(), first.device());
    let sample = first.size()[1..].to_vec();
    let n = first.size()[0].max(1);
    let triggers = goal.triggers() as i64;
    let chunk = (budget.max_batch / n).clamp(1, triggers.max(1));
    let chunks = (triggers + chunk - 1) / chunk;
    let elements = sample.iter().product::<i64>() as f64;
    let mask_sample: Vec<i64> = match space.mask {
        MaskShape::Pixel if sample.len() >= 2 => [&[1], &sample[1..]].concat(),
        _ => sample.clone(),
    };
    let mask_elements = mask_sample.iter().product::<i64>() as f64;
    let (lo, hi) = space.bounds;
    let range = (hi - lo).max(1e-6);
    let max_budget = budget.max.unwrap_or(match family {
        Family::Additive => elements.sqrt() * range,
        Family::Mask => mask_elements,
    });
    let start_budget = budget.start.unwrap_or(match family {
        Family::Additive => max_budget,
        Family::Mask => mask_elements / 4.0,
    });
    let mut delta = Vec::new();
    let mut mask = Vec::new();
    let mut pattern = Vec::new();
    for i in 0..chunks {
        let k = chunk.min(triggers - i * chunk);
        let shape = [&[k], sample.as_slice()].concat();
        match family {
            Family::Additive => delta.push(Tensor::f_zeros(shape.as_slice(), (kind, device))?),
            Family::Mask => {
                pattern.push(
                    Tensor::f_rand(shape.as_slice(), (kind, device))?
                        .f_mul_scalar(range)?
                        .f_add_scalar(lo)?,
                );
                let m_shape = [&[k], mask_sample.as_slice()].concat();
                mask.push(Tensor::f_full(
                    m_shape.as_slice(),
                    (start_budget / mask_elements).min(1.0),
                    (kind, device),
                )?);
            }
        }
    }
    let mut budgets = match (&budget.fixed, &budget.warm) {
        (Some(fixed), _) if fixed.len() == triggers as usize => fixed.clone(),
        (_, Some(warm)) if warm.len() == triggers as usize => {
            warm_start(warm, chunk, &mut delta, &mut mask, &mut pattern)?;
            warm.iter().map(|w| w.0.min(max_budget)).collect()
        }
        _ => vec![start_budget.min(max_budget); triggers as usize],
    };
    let mut reached = vec![0.0; triggers as usize];
    let mut history: Vec<Vec<f64>> = Vec::with_capacity(budget.steps);
    for step in 0..budget.steps {
        let (x, own) = step_inputs(&first, images, logits, step)?;
        let count = x.size()[0];
        // STEP over the first half, then linear to `final_step`.
        let half = budget.steps / 2;
        let share = if step > half && budget.steps > half + 1 {
            (step - half) as f64 / (budget.steps - 1 - half) as f64
        } else {
            0.0
        };
        let step_size = STEP + (budget.final_step - STEP) * share;
        for i in 0..chunks as usize {
            let first_trigger = i * chunk as usize;
            let k = chunk.min(triggers - first_trigger as i64);
            let leaves: Vec<Tensor> = match family {
                Family::Additive => vec![delta[i].f_detach()?.set_requires_grad(true)],
                Family::Mask => vec![
                    mask[i].f_detach()?.set_requires_grad(true),
                    pattern[i].f_detach()?.set_requires_grad(true),
                ],
            };
            let xs = x.f_unsqueeze(0)?;
            let perturbed = match family {
                Family::Additive => xs.f_add(&leaves[0].f_unsqueeze(1)?)?,
                Family::Mask => stamp(&xs, &leaves[0].f_unsqueeze(1)?, &leaves[1].f_unsqueeze(1)?)?,
            };
            let flat = [&[k * count], sample.as_slice()].concat();
            let perturbed = space.limit(perturbed.f_reshape(flat.as_slice())?)?;
            let out = logits(&perturbed)?.f_to_kind(Kind::Float)?;
            let (shares, loss) = match goal {
                Goal::Classes(classes) => {
                    let ids =
                        Tensor::f_from_slice(&classes[first_trigger..first_trigger + k as usize])?
                            .f_to_device(device)?;
                    let shares = fooled_shares(&out, &own, &ids)?;
                    let targets = ids.f_repeat_interleave_self_int(count, 0, None)?;
                    let loss = out.f_log_softmax(-1, Kind::Float)?.f_nll_loss::<Tensor>(
                        &targets,
                        None,
                        tch::Reduction::Sum,
                        -100,
                    )?;
                    (shares, loss)
                }
                Goal::Untargeted => untargeted(&out, &own)?,
            };
            for (j, s) in shares.iter().enumerate() {
                reached[first_trigger + j] = *s;
            }
            if budget.fixed.is_none() {
                for (j, s) in shares.iter().enumerate() {
                    let b = &mut budgets[first_trigger + j];
                    *b = (*b * if *s >= FOOLING { SHRINK } else { GROW }).min(max_budget);
                }
            }
            let refs: Vec<&Tensor> = leaves.iter().collect();
            let grads = Tensor::f_run_backward(&[&loss], &refs, false, false)?;
            let b = Tensor::f_from_slice(&budgets[first_trigger..first_trigger + k as usize])?
                .f_to_kind(kind)?
                .f_to_device(device)?;
            tch::no_grad(|| -> Result<(), tch::TchError> {
                let mut per = vec![1i64; sample.len() + 1];
                per[0] = k;
                let r = b.f_view(per.as_slice())?;
                match family {
                    Family::Additive => {
                        let d = leaves[0].f_sub(
                            &normalised(&grads[0], 2.0)?
                                .f_mul(&r)?
                                .f_mul_scalar(step_size)?,
                        )?;
                        delta[i] = d.f_mul(
                            &r.f_div(&norm(&d, 2.0)?.f_clamp_min(1e-12)?)?
                                .f_clamp_max(1.0)?,
                        )?;
                    }
                    Family::Mask => {
                        let m = leaves[0]
                            .f_sub(
                                &normalised(&grads[0], 1.0)?
                                    .f_mul(&r)?
                                    .f_mul_scalar(step_size)?,
                            )?
                            .f_clamp(0.0, 1.0)?;
                        mask[i] = m.f_mul(
                            &r.f_div(&norm(&m, 1.0)?.f_clamp_min(1e-12)?)?
                                .f_clamp_max(1.0)?,
                        )?;
                        pattern[i] = leaves[1]
                            .f_sub(&grads[1].f_sign()?.f_mul_scalar(PATTERN_STEP * range)?)?
                            .f_clamp(lo, hi)?;
                    }
                }
                Ok(())
            })?;
        }
        history.push(budgets.clone());
        progress(step + 1, budget.steps);
    }
    let tail = &history[history.len().saturating_sub(TAIL)..];
    let budgets = (0..triggers as usize)
        .map(|c| tail.iter().map(|h| h[c]).sum::<f64>() / tail.len().max(1) as f64)
        .collect();
    Ok(Found {
        classes: match goal {
            Goal::Classes(c) => c.clone(),
            Goal::Untargeted => Vec::new(),
        },
        budgets,
        reached,
        delta,
        mask,
        pattern,
        chunk,
        family,
        space,
    })
}

/// The images of `step` (`first` for step 0) and the model's own
/// predictions on them.
fn step_inputs<E: From<tch::TchError>>(
    first: &Tensor,
    images: &mut dyn FnMut(usize) -> Result<Tensor, E>,
    logits: &mut dyn FnMut(&Tensor) -> Result<Tensor, E>,
    step: usize,
) -> Result<(Tensor, Tensor), E> {
    let x = if step == 0 {
        first.shallow_clone()
    } else {
        images(step)?
    };
    let own = tch::no_grad(|| logits(&x))?.f_argmax(-1, false)?;
    Ok((x, own))
}

/// Replaces the chunks' starting tensors by `warm`'s (per trigger, in
/// order; `chunk` triggers per chunk).
fn warm_start(
    warm: &[(f64, Vec<Tensor>)],
    chunk: i64,
    delta: &mut [Tensor],
    mask: &mut [Tensor],
    pattern: &mut [Tensor],
) -> Result<(), tch::TchError> {
    for (i, group) in warm.chunks(chunk.max(1) as usize).enumerate() {
        let part = |t: usize| -> Result<Tensor, tch::TchError> {
            let parts: Vec<&Tensor> = group.iter().filter_map(|w| w.1.get(t)).collect();
            Tensor::f_cat(&parts, 0)
        };
        if let Some(d) = delta.get_mut(i) {
            *d = part(0)?.f_to_kind(d.kind())?;
        }
        if let (Some(m), Some(p)) = (mask.get_mut(i), pattern.get_mut(i)) {
            *m = part(0)?.f_to_kind(m.kind())?;
            *p = part(1)?.f_to_kind(p.kind())?;
        }
    }
    Ok(())
}

/// The untargeted goal on one trigger's `[n, classes]` logits: the share
/// of the images moved off `own`, and the loss `-sum log(1 - p_own)`
/// (logsumexp over the other classes minus logsumexp over all).
fn untargeted(out: &Tensor, own: &Tensor) -> Result<(Vec<f64>, Tensor), tch::TchError> {
    let n = own.size()[0];
    let own = own.f_view([n, 1])?;
    let moved = out
        .detach()
        .f_argmax(-1, false)?
        .f_view([n, 1])?
        .f_ne_tensor(&own)?
        .f_to_kind(Kind::Double)?
        .f_mean(Kind::Double)?
        .double_value(&[]);
    let others = out.f_scatter_value(1, &own, f64::NEG_INFINITY)?;
    let leave = others
        .f_logsumexp([1i64].as_slice(), false)?
        .f_sub(&out.f_logsumexp([1i64].as_slice(), false)?)?;
    Ok((vec![moved], leave.f_neg()?.f_sum(Kind::Float)?))
}

/// `g` divided by its `p`-norm, per `[i, ...]` slice.
fn normalised(g: &Tensor, p: f64) -> Result<Tensor, tch::TchError> {
    g.f_div(&norm(g, p)?.f_clamp_min(1e-12)?)
}

/// The `p`-norm (1 or 2) of each `[i, ...]` slice, shaped `[n, 1, ...]`.
fn norm(t: &Tensor, p: f64) -> Result<Tensor, tch::TchError> {
    let dims: Vec<i64> = (1..t.dim() as i64).collect();
    let abs = t.f_abs()?;
    if p == 1.0 {
        abs.f_sum_dim_intlist(dims.as_slice(), true, t.kind())
    } else {
        abs.f_square()?
            .f_sum_dim_intlist(dims.as_slice(), true, t.kind())?
            .f_sqrt()
    }
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
