//! The scan's searches, in image space (`[0, 1]` pixels, before
//! normalisation and layout), through the one engine ([`crate::search`]):
//! for every class searched, the smallest additive trigger (L2 radius) and
//! the smallest mask trigger (L1 size in pixels) that send 90% of the clean
//! images to it, each step on the next `per_class` images of a seeded
//! shuffle of the search images; and how each recovered trigger transfers
//! to held-back images.

use tch::{Device, Kind, Tensor};

use crate::classifier::{predict_with_probabilities, Classifier};
use crate::error::Result;
use crate::model::InputMap;
use crate::search::{Budget, Found, Goal, Space};

pub use crate::search::Family;

/// Settings of one search.
#[derive(Debug)]
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
    /// The gradient step's share of the budget at the last step
    /// ([`Budget::final_step`]).
    pub final_step: f64,
    /// Start from these triggers ([`Budget::warm`]).
    pub warm: Option<Vec<(f64, Vec<Tensor>)>>,
    /// Neural Cleanse's optimiser for masks ([`Budget::penalised`]).
    pub penalised: bool,
}

impl SearchSettings {
    /// A search of `steps` steps of `per_class` images, the budget schedule
    /// as it is, from fresh triggers.
    pub fn new(steps: usize, per_class: i64, max_batch: i64, seed: i64) -> SearchSettings {
        SearchSettings {
            steps,
            per_class,
            max_batch,
            seed,
            fixed: None,
            final_step: crate::search::STEP,
            warm: None,
            penalised: false,
        }
    }
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
    search_for(
        model,
        map,
        images,
        &Goal::Classes(searched.to_vec()),
        family,
        settings,
        progress,
    )
}

/// [`search`] for any goal (`per_class`: the images of each step).
pub fn search_for(
    model: &dyn Classifier,
    map: &InputMap,
    images: &Tensor,
    goal: &Goal,
    family: Family,
    settings: &SearchSettings,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Found> {
    let device = images.device();
    let n = images.size()[0];
    let per_class = settings
        .per_class
        .clamp(1, n.max(1))
        .min(settings.max_batch.max(1));
    tch::manual_seed(settings.seed);
    let order = Tensor::f_randperm(n, (Kind::Int64, device))?;
    let mut images_at = |step: usize| -> Result<Tensor> {
        // The step's images: the next `per_class` of a fixed shuffle.
        let idx = Tensor::f_arange(per_class, (Kind::Int64, device))?
            .f_add_scalar((step as i64 * per_class) % n)?
            .f_remainder(n)?;
        Ok(images.f_index_select(0, &order.f_index_select(0, &idx)?)?)
    };
    let budget = Budget {
        fixed: settings.fixed.clone(),
        final_step: settings.final_step,
        warm: settings.warm.as_ref().map(|w| {
            w.iter()
                .map(|(b, t)| (*b, t.iter().map(Tensor::shallow_clone).collect()))
                .collect()
        }),
        penalised: settings.penalised,
        ..Budget::new(settings.steps, settings.max_batch)
    };
    crate::search::search(
        &mut |x: &Tensor| -> Result<Tensor> { Ok(model.logits(&map.apply(x)?)?) },
        &mut images_at,
        family,
        goal,
        Space::PIXELS,
        &budget,
        progress,
    )
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
    for (index, &c) in found.classes.iter().enumerate() {
        let eligible: Vec<usize> = (0..n as usize).filter(|&i| clean[i] != c).collect();
        if eligible.is_empty() {
            out.push(Transfer::default());
            continue;
        }
        let triggered = found.apply(index, images)?;
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
