//! I-BAU (Zeng et al., "Adversarial Unlearning of Backdoors via Implicit
//! Hypergradient", ICLR 2022), exactly as ../shared/DESIGN.md states it:
//!
//! per round, (1) a universal perturbation found by SGD (lr 10) against the
//! model's own predictions, projected into an L2 ball (radius 10); (2) per clean
//! batch, one outer optimiser step along the implicit hypergradient, computed
//! from K fixed-point iterations of vector-Jacobian products through a
//! differentiable gradient step of the inner loss (double backward).
//!
//! That is `Search::Paper`. ibau's default, `Search::Targeted` (see
//! `search.rs`), replaces step (1) by per-class smallest perturbations and
//! guards the fixed-point iterations against divergence; step (2) is the same.
//!
//! The model stays in inference mode throughout: the imported graph has no
//! training behaviour (BatchNorm uses running statistics, Dropout is identity).

mod mask;
pub mod optim;
mod search;

use tch::{Device, Kind, Reduction, Tensor};

pub use crate::search::{fooled_shares, narrows, screen, screen_steps, DEFAULT_CANDIDATES};
pub use mask::{
    mask_gradient, targeted_mask_search, untargeted_mask_search, MaskStats, MaskTrigger, MASK_SHARE,
};
pub use optim::{Optimizer, OptimizerKind};
pub use search::{
    perturbation_search, project, targeted_search, Search, SearchMemory, TargetedStats,
};

/// Errors while training: the classifier layer's ([`ModelError`]).
pub use crate::classifier::ModelError as TrainError;
pub use crate::classifier::{Batch, Classifier};

/// Every I-BAU hyper-parameter; the defaults are the paper's.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Config {
    /// Rounds R (perturbation search + one pass of unlearning).
    pub rounds: usize,
    /// How step 1 finds the round's perturbation.
    pub search: Search,
    /// Fixed-point iterations K of the hypergradient.
    pub k: usize,
    /// Outer optimiser and its learning rate.
    pub optimizer: OptimizerKind,
    pub lr: f64,
    /// Clean batch size B.
    pub batch_size: usize,
    /// Perturbed images per forward pass of the targeted search (its classes
    /// go through the model in chunks of at most this many images); `None`
    /// = twice the batch size.
    pub max_batch: Option<usize>,
    /// On a model with more than twice this many classes, the targeted
    /// search first screens every class cheaply and searches only this many
    /// (`0`: always search every class).
    pub candidates: usize,
    /// Classes the targeted search unlearns, each with its own perturbation
    /// in every round (the scan's flagged classes); empty: the class it finds
    /// easiest to reach.
    pub targets: Vec<i64>,
    /// Also unlearn the paper's untargeted universal perturbation in every
    /// round of the targeted search (attacks without one easiest target:
    /// all-to-all, sample-specific triggers).
    pub untargeted: bool,
    /// Also unlearn a universal mask trigger found by an untargeted search
    /// in every round of the targeted search ([`untargeted_mask_search`]):
    /// the fallback for a backdoor the scan does not see (all-to-all).
    pub mask_fallback: bool,
    /// Classes to unlearn a mask trigger of their own for, in every round
    /// of the targeted search, besides their additive perturbation
    /// ([`targeted_mask_search`]: Neural Cleanse's reverse-engineered
    /// trigger, for patch backdoors). Empty: none, as before.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mask_targets: Vec<i64>,
    /// SGD learning rate of the perturbation search.
    pub perturbation_lr: f64,
    /// Radius of the L2 ball the perturbation is projected into.
    pub perturbation_radius: f64,
    /// SGD steps of the perturbation search per round; `None` = one pass over
    /// the clean batches (the paper's schedule).
    pub perturbation_steps: Option<usize>,
    /// Weight of `||delta||^2` in the perturbation and inner losses.
    pub regularization: f64,
    /// Step size of the fixed-point map `delta - step * grad L2`.
    pub inner_step: f64,
    /// Share of each outer batch that receives the perturbation (int(share * B) samples).
    pub poison_share: f64,
    /// Early stop of the fixed-point iterations.
    pub tolerance: f64,
    pub seed: i64,
    /// Weight `lambda` of `lambda / 2 * ||theta - theta_0||^2`, a pull of
    /// every trained tensor back towards its value before the first round,
    /// added to each outer step's gradient (`0`: none, the paper).
    #[serde(skip_serializing_if = "is_zero")]
    pub anchor: f64,
    /// Shift each outer batch's images by a random translation of up to
    /// [`AUGMENT_SHIFT`] pixels (edges replicated) before the perturbation
    /// goes on (`false`: the paper). Images that are not `[N, C, H, W]`
    /// are left as they are.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub augment: bool,
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

/// The largest shift, in pixels, of [`Config::augment`].
pub const AUGMENT_SHIFT: i64 = 2;

impl Config {
    /// Perturbed images per forward pass of the searches: `max_batch`, or
    /// twice the batch size.
    pub fn max_batch_or_default(&self) -> i64 {
        self.max_batch.unwrap_or(2 * self.batch_size).max(1) as i64
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            rounds: 5,
            search: Search::Targeted,
            k: 5,
            optimizer: OptimizerKind::Adam,
            lr: 1e-3,
            batch_size: 100,
            max_batch: None,
            candidates: DEFAULT_CANDIDATES,
            targets: Vec::new(),
            untargeted: false,
            mask_fallback: false,
            mask_targets: Vec::new(),
            perturbation_lr: 10.0,
            perturbation_radius: 10.0,
            perturbation_steps: None,
            regularization: 0.001,
            inner_step: 0.1,
            poison_share: 0.01,
            tolerance: 1e-10,
            seed: 0,
            anchor: 0.0,
            augment: false,
        }
    }
}

pub(crate) fn cross_entropy(
    logits: &Tensor,
    labels: &Tensor,
    reduction: Reduction,
) -> Result<Tensor, TrainError> {
    // log_softmax in the logits' own kind (tch's cross_entropy_for_logits
    // would compute in f32 whatever the input), then NLL.
    Ok(logits
        .f_log_softmax(-1, logits.kind())?
        .f_nll_loss::<Tensor>(labels, None, reduction, -100)?)
}

fn squared_norm(t: &Tensor) -> Result<Tensor, TrainError> {
    Ok(t.f_square()?.f_sum(t.kind())?)
}

/// The samples of a batch that receive the perturbation: int(share * B)
/// distinct indices drawn at random (tch's seeded RNG), as a `[B, 1, ...]`
/// 0/1 mask of the images' rank.
pub fn poison_mask(images: &Tensor, share: f64) -> Result<Tensor, TrainError> {
    let size = images.size();
    let batch_size = size[0];
    let count = (share * batch_size as f64) as i64;
    let chosen =
        Tensor::f_randperm(batch_size, (Kind::Int64, Device::Cpu))?.f_narrow(0, 0, count)?;
    let mask = Tensor::f_zeros([batch_size], (images.kind(), Device::Cpu))?
        .f_index_fill(0, &chosen, 1.0)?;
    let mut shape = vec![1i64; size.len()];
    shape[0] = batch_size;
    Ok(mask
        .f_view(shape.as_slice())?
        .f_to_device(images.device())?)
}

/// The implicit hypergradient of the outer loss w.r.t. every parameter, for one
/// outer batch: `grad_theta L1 + J_theta(Phi)^T v_K`, where
/// `v_k = J_delta(Phi)^T v_{k-1} + grad_delta L1` and
/// `Phi(delta) = delta - inner_step * grad_delta L2(delta)` (built with
/// create_graph, so the Jacobian products are second derivatives). With the
/// targeted search the iterations also stop once their increments grow (the
/// series diverges); with the paper's search they run as published.
///
/// `mask` is `[B, 1, ...]` with ones on the samples that receive `delta`.
pub fn hypergradient(
    model: &dyn Classifier,
    perturbation: &Tensor,
    outer: &Batch,
    mask: &Tensor,
    inner: &Batch,
    config: &Config,
) -> Result<Vec<Tensor>, TrainError> {
    let params = model.parameters();
    let delta = perturbation.detach().set_requires_grad(true);

    // Outer loss and its gradients.
    let poisoned = outer.images.f_add(&mask.f_mul(&delta)?)?;
    let outer_loss = cross_entropy(&model.logits(&poisoned)?, &outer.labels, Reduction::Mean)?;
    let mut wrt: Vec<&Tensor> = vec![&delta];
    wrt.extend(params.iter());
    let mut outer_grads = Tensor::f_run_backward(&[&outer_loss], &wrt, false, false)?;
    let grad_delta_outer = defined_or_zeros(outer_grads.remove(0), &delta)?;

    // The fixed-point map, differentiable in delta and theta.
    let inner_logits = model.logits(&inner.images.f_add(&delta)?)?;
    let inner_loss = cross_entropy(&inner_logits, &inner.labels, Reduction::None)?
        .f_neg()?
        .f_mean(inner_logits.kind())?
        .f_add(&squared_norm(&delta)?.f_mul_scalar(config.regularization)?)?;
    let inner_grad = Tensor::f_run_backward(&[&inner_loss], &[&delta], true, true)?.remove(0);
    let phi = delta.f_sub(&inner_grad.f_mul_scalar(config.inner_step)?)?;

    // v_k = J^T v_{k-1} + grad_delta L1 sums the Neumann series of
    // (I - J^T)^-1 grad_delta L1, which converges only where Phi contracts.
    // Where it does not (a perturbation on a sharp decision boundary: measured
    // on the ViT fixture, the increments grow ninefold per iteration and the
    // hypergradient swamps the outer loss), the targeted search stops at the
    // last iterate whose increment shrank; `--search paper` keeps the paper's
    // K iterations whatever they do.
    let guard = config.search == Search::Targeted;
    let norm = |t: &Tensor| -> Result<f64, TrainError> {
        Ok(t.f_square()?
            .f_sum(Kind::Double)?
            .f_sqrt()?
            .double_value(&[]))
    };
    // The first iteration from v_0 = 0 is v_1 = grad_delta L1 exactly (the
    // vector-Jacobian product of zero is zero): skip its backward pass.
    let (mut v, mut last_change) = if config.k == 0 {
        (delta.f_zeros_like()?, 0.0)
    } else {
        (grad_delta_outer.shallow_clone(), norm(&grad_delta_outer)?)
    };
    let remaining = if last_change < config.tolerance {
        0
    } else {
        config.k.saturating_sub(1)
    };
    for _ in 0..remaining {
        let vjp = Tensor::f_run_backward(
            &[&phi.f_mul(&v)?.f_sum(phi.kind())?],
            &[&delta],
            true,
            false,
        )?
        .remove(0);
        let next = defined_or_zeros(vjp, &delta)?.f_add(&grad_delta_outer)?;
        let change = norm(&next.f_sub(&v)?)?;
        if guard && change > last_change {
            break;
        }
        v = next;
        last_change = change;
        if change < config.tolerance {
            break;
        }
    }
    let implicit =
        Tensor::f_run_backward(&[&phi.f_mul(&v)?.f_sum(phi.kind())?], params, false, false)?;
    params
        .iter()
        .zip(outer_grads)
        .zip(implicit)
        .map(|((p, direct), indirect)| {
            let direct = defined_or_zeros(direct, p)?;
            Ok(if indirect.defined() {
                direct.f_add(&indirect)?
            } else {
                direct
            })
        })
        .collect()
}

pub(crate) fn defined_or_zeros(grad: Tensor, like: &Tensor) -> Result<Tensor, TrainError> {
    if grad.defined() {
        Ok(grad)
    } else {
        Ok(like.f_zeros_like()?)
    }
}

/// What one round did, for progress and reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RoundStats {
    pub round: usize,
    pub seconds: f64,
    pub perturbation_norm: f64,
    /// The class the round's perturbation sends most clean samples of the
    /// first batch to (before that round's unlearning), and the share sent
    /// there: a perturbation that found a backdoor points at its target.
    pub perturbed_class: i64,
    pub perturbed_share: f64,
    /// What the targeted search found (`None` with the paper's search).
    pub targeted: Option<TargetedStats>,
    /// What the fallback mask search found (`None` without it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mask: Option<MaskStats>,
}

/// The most frequent prediction on `images + perturbation`, and its share.
fn perturbed_majority(
    model: &dyn Classifier,
    images: &Tensor,
    perturbation: &Tensor,
) -> Result<(i64, f64), TrainError> {
    tch::no_grad(|| {
        let predicted = model
            .logits(&(images + perturbation))?
            .f_argmax(-1, false)?;
        let counts = predicted.f_bincount::<Tensor>(None, 0)?;
        let top = counts.f_argmax(0, false)?.int64_value(&[]);
        let share = counts.int64_value(&[top]) as f64 / predicted.size()[0].max(1) as f64;
        Ok((top, share))
    })
}

/// Which part of a round a step belongs to, for progress: `step` of `steps`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The perturbation search (the screen's steps included).
    Search { step: usize, steps: usize },
    /// The outer steps, one per clean batch.
    Unlearn { step: usize, steps: usize },
}

/// I-BAU driven round by round: [`Unlearner::next_round`] runs one round
/// (the perturbation search, then one outer step per clean batch) and
/// returns what it did; the caller decides between rounds whether to go on
/// (evaluation, a scan, an accuracy guard), with no callback in between.
/// The first batch is the inner-loss batch, as in the paper.
pub struct Unlearner<'a> {
    model: &'a dyn Classifier,
    clean: &'a [Batch],
    config: &'a Config,
    optimizer: Optimizer,
    memory: SearchMemory,
    round: usize,
    /// The trained tensors before the first round (with `anchor`).
    initial: Vec<Tensor>,
}

impl<'a> Unlearner<'a> {
    /// Seeds tch's generator with `config.seed` and makes the optimiser.
    pub fn new(
        model: &'a dyn Classifier,
        clean: &'a [Batch],
        config: &'a Config,
    ) -> Result<Unlearner<'a>, TrainError> {
        if clean.is_empty() {
            return Err(TrainError::Config("the clean set is empty".into()));
        }
        tch::manual_seed(config.seed);
        let initial = if config.anchor > 0.0 {
            model
                .parameters()
                .iter()
                .map(|p| p.f_detach_copy())
                .collect::<Result<_, _>>()?
        } else {
            Vec::new()
        };
        Ok(Unlearner {
            model,
            clean,
            config,
            optimizer: Optimizer::new(config.optimizer, config.lr, model.parameters())?,
            memory: SearchMemory::default(),
            round: 0,
            initial,
        })
    }

    /// Rounds run so far.
    pub fn rounds_done(&self) -> usize {
        self.round
    }

    /// Whether `config.rounds` rounds have run.
    pub fn finished(&self) -> bool {
        self.round >= self.config.rounds
    }

    /// Runs the next round; `on_step(phase)` hears of each search step and
    /// each outer step (progress only: it cannot fail or stop the round).
    pub fn next_round(&mut self, on_step: &mut dyn FnMut(Phase)) -> Result<RoundStats, TrainError> {
        self.round += 1;
        let start = std::time::Instant::now();
        let RoundSearch {
            perturbations,
            targeted,
            triggers,
        } = self.search(on_step)?;
        let perturbation = &perturbations[0];
        let (perturbed_class, perturbed_share) =
            perturbed_majority(self.model, &self.clean[0].images, perturbation)?;
        self.unlearn(&perturbations, &triggers, on_step)?;
        let norm = perturbation
            .f_square()?
            .f_sum(Kind::Double)?
            .f_sqrt()?
            .double_value(&[]);
        Ok(RoundStats {
            round: self.round,
            seconds: start.elapsed().as_secs_f64(),
            perturbation_norm: norm,
            perturbed_class,
            perturbed_share,
            targeted,
            mask: triggers.first().map(MaskTrigger::stats),
        })
    }

    /// Step 1: the round's perturbations (one, or one per target, and the
    /// paper's untargeted one with `untargeted`) and the mask trigger (with
    /// `mask_fallback`).
    fn search(&mut self, on_step: &mut dyn FnMut(Phase)) -> Result<RoundSearch, TrainError> {
        let (model, clean, config) = (self.model, self.clean, self.config);
        let mut progress = |step, steps| on_step(Phase::Search { step, steps });
        let (mut perturbations, targeted) = match config.search {
            Search::Paper => (
                vec![perturbation_search(model, clean, config, &mut progress)?],
                None,
            ),
            Search::Targeted => {
                let (deltas, found) =
                    targeted_search(model, clean, config, &mut self.memory, &mut progress)?;
                (deltas, Some(found))
            }
        };
        if config.untargeted && config.search == Search::Targeted {
            perturbations.push(perturbation_search(model, clean, config, &mut |_, _| {})?);
        }
        let targeted_search_on = config.search == Search::Targeted;
        let mut triggers = Vec::new();
        if config.mask_fallback && targeted_search_on {
            triggers.push(untargeted_mask_search(
                model,
                clean,
                config,
                search::MIN_TARGETED_STEPS,
                &mut progress,
            )?);
        }
        if !config.mask_targets.is_empty() && targeted_search_on {
            triggers.extend(targeted_mask_search(
                model,
                clean,
                config,
                &config.mask_targets,
                search::MIN_TARGETED_STEPS,
                &mut progress,
            )?);
        }
        Ok(RoundSearch {
            perturbations,
            targeted,
            triggers,
        })
    }

    /// Step 2: one outer step per clean batch. Several perturbations
    /// (several targets, the mask trigger) take turns over the batches, and
    /// a clean set of fewer batches than perturbations goes round again, so
    /// that every perturbation is unlearned in every round.
    fn unlearn(
        &mut self,
        perturbations: &[Tensor],
        triggers: &[MaskTrigger],
        on_step: &mut dyn FnMut(Phase),
    ) -> Result<(), TrainError> {
        let (model, clean, config) = (self.model, self.clean, self.config);
        let turns = perturbations.len() + triggers.len();
        let outer_steps = clean.len().max(turns);
        for b in 0..outer_steps {
            let shifted;
            let batch = match config.augment {
                true => {
                    shifted = augment(&clean[b % clean.len()])?;
                    &shifted
                }
                false => &clean[b % clean.len()],
            };
            let turn = b % turns;
            let mut grads = match perturbations.get(turn) {
                Some(perturbation) => {
                    let mask = poison_mask(&batch.images, config.poison_share)?;
                    hypergradient(model, perturbation, batch, &mask, &clean[0], config)?
                }
                // The turns after the perturbations' are the mask triggers'.
                None => mask_gradient(model, &triggers[turn - perturbations.len()], batch)?,
            };
            for ((g, p), p0) in grads.iter_mut().zip(model.parameters()).zip(&self.initial) {
                let pull = tch::no_grad(|| p.f_sub(p0))?.f_mul_scalar(config.anchor)?;
                *g = g.f_add(&pull)?;
            }
            self.optimizer.step(model.parameters(), &grads)?;
            on_step(Phase::Unlearn {
                step: b + 1,
                steps: outer_steps,
            });
        }
        Ok(())
    }
}

/// `batch` with its images shifted by one random translation of up to
/// [`AUGMENT_SHIFT`] pixels in each direction, edges replicated (tch's
/// seeded generator draws the shift); images that are not `[N, C, H, W]`
/// come back as they are.
fn augment(batch: &Batch) -> Result<Batch, TrainError> {
    let size = batch.images.size();
    if size.len() != 4 {
        return Ok(batch.shallow_clone());
    }
    let s = AUGMENT_SHIFT;
    let shift = Tensor::f_randint_low(0, 2 * s + 1, [2], (Kind::Int64, Device::Cpu))?;
    let (dy, dx) = (shift.int64_value(&[0]), shift.int64_value(&[1]));
    let padded = batch.images.f_pad([s, s, s, s], "replicate", None)?;
    let images = padded
        .f_narrow(2, dy, size[2])?
        .f_narrow(3, dx, size[3])?
        .f_contiguous()?;
    Ok(Batch {
        images,
        labels: batch.labels.shallow_clone(),
    })
}

/// What step 1 of a round found.
struct RoundSearch {
    perturbations: Vec<Tensor>,
    targeted: Option<TargetedStats>,
    /// The untargeted mask trigger (`mask_fallback`) first, then one per
    /// `mask_targets` class.
    triggers: Vec<MaskTrigger>,
}

/// Runs every round of I-BAU on `model` with the clean batches
/// ([`Unlearner`] without decisions between rounds); `on_step(round, phase)`
/// hears of each step.
pub fn unlearn(
    model: &dyn Classifier,
    clean: &[Batch],
    config: &Config,
    on_step: &mut dyn FnMut(usize, Phase),
) -> Result<Vec<RoundStats>, TrainError> {
    let mut unlearner = Unlearner::new(model, clean, config)?;
    let mut stats = Vec::new();
    while !unlearner.finished() {
        let round = unlearner.rounds_done() + 1;
        stats.push(unlearner.next_round(&mut |phase| on_step(round, phase))?);
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn augment_shifts_images_by_at_most_two_pixels() {
        tch::manual_seed(3);
        // A single bright pixel in the middle of a 9x9 image.
        let images = Tensor::zeros([1, 1, 9, 9], (Kind::Float, Device::Cpu));
        let _ = images.narrow(2, 4, 1).narrow(3, 4, 1).fill_(1.0);
        let batch = Batch {
            images,
            labels: Tensor::from_slice(&[3i64]),
        };
        let mut moved = false;
        for _ in 0..20 {
            let shifted = augment(&batch).unwrap();
            assert_eq!(shifted.images.size(), vec![1, 1, 9, 9]);
            assert_eq!(shifted.labels.int64_value(&[0]), 3);
            let at = shifted.images.view([-1]).argmax(0, false).int64_value(&[]);
            let (row, col) = (at / 9, at % 9);
            assert!((row - 4).abs() <= AUGMENT_SHIFT && (col - 4).abs() <= AUGMENT_SHIFT);
            assert_eq!(shifted.images.sum(Kind::Float).double_value(&[]), 1.0);
            moved |= (row, col) != (4, 4);
        }
        assert!(moved, "twenty draws never shifted");
        // Flat inputs are left alone.
        let flat = Batch {
            images: Tensor::ones([2, 81], (Kind::Float, Device::Cpu)),
            labels: Tensor::from_slice(&[0i64, 1]),
        };
        assert_eq!(augment(&flat).unwrap().images.size(), vec![2, 81]);
    }
}
