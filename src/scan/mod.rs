//! `scan`: is a model backdoored, and towards which class? Answered from the
//! file and clean images alone, without the trigger.
//!
//! For every class, two searches ([`search`]) find the smallest trigger that
//! sends 90% of the clean images to it: an additive perturbation (its L2
//! radius) and a Neural Cleanse-style mask and pattern (its L1 size). A
//! backdoor's target is reachable with a trigger much smaller than the other
//! classes need. See [`rule`] for the verdict.

pub mod pictures;
pub mod report;
pub mod search;

use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

use crate::data::Dataset;
use crate::error::{bail, Result};
use crate::evaluate;
use crate::model::{InputMap, Model, Preprocess};
use search::{Family, Found, SearchSettings};

pub use report::{ModelEntry, ScanReport, Skipped, SCHEMA};

/// What [`scan`] does.
#[derive(Debug, Clone, Serialize)]
pub struct ScanConfig {
    #[serde(skip)]
    pub preprocess: Preprocess,
    /// Steps of each search.
    pub steps: usize,
    /// Clean images per class per search step.
    pub per_class: i64,
    /// Perturbed images per forward pass (bounds memory).
    pub max_batch: i64,
    /// Share of the clean images held back to measure how the recovered
    /// triggers transfer.
    pub holdout: f64,
    /// The verdict's threshold on the statistic.
    pub threshold: f64,
    pub seed: i64,
}

impl Default for ScanConfig {
    fn default() -> Self {
        ScanConfig {
            preprocess: Preprocess::default(),
            steps: 60,
            per_class: 10,
            max_batch: 200,
            holdout: 0.2,
            threshold: DEFAULT_THRESHOLD,
            seed: 0,
        }
    }
}

/// The statistic's default threshold (see [`rule`]).
pub const DEFAULT_THRESHOLD: f64 = 2.0;

/// A scan's verdict on one model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Clean,
    Backdoor,
    Error,
}

/// One class's measurements.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClassScan {
    pub class: i64,
    /// Smallest L2 radius of an additive trigger sending 90% of the clean
    /// images to the class (pixels in [0, 1]).
    pub radius: f64,
    /// Smallest L1 size of a mask trigger doing the same (in pixels).
    pub mask: f64,
    /// Share of held-back clean images the recovered additive / mask trigger
    /// sends to the class.
    pub radius_transfer: f64,
    pub mask_transfer: f64,
    /// The class's anomaly score (see [`rule`]).
    pub score: f64,
}

/// What a scan found on one model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScanResult {
    pub verdict: Verdict,
    /// Suspected target classes (empty when clean).
    pub targets: Vec<i64>,
    /// The largest class score, and the threshold it was compared with.
    pub statistic: f64,
    pub threshold: f64,
    pub classes: Vec<ClassScan>,
    pub clean_samples: usize,
    pub seconds: f64,
}

/// The recovered triggers of a scan, for pictures and `.npy` files.
pub struct Recovered {
    /// The held-back clean images `[N, C, H, W]` (in `[0, 1]`).
    pub images: Tensor,
    pub additive: Found,
    pub mask: Found,
}

impl Recovered {
    /// The recovered trigger of `class` in the form that scored it, and the
    /// first `n` held-back images with it applied.
    pub fn for_class(&self, class: i64, family: Family, n: i64) -> Result<(Tensor, Tensor)> {
        let found = match family {
            Family::Additive => &self.additive,
            Family::Mask => &self.mask,
        };
        let x = self.images.f_narrow(0, 0, n.min(self.images.size()[0]))?;
        let triggered = found.apply(family, class, &x)?;
        let (i, j) = ((class / found.chunk) as usize, class % found.chunk);
        let picture = match family {
            Family::Additive => found.delta[i].f_narrow(0, j, 1)?.f_squeeze_dim(0)?,
            Family::Mask => found.mask[i]
                .f_narrow(0, j, 1)?
                .f_mul(&found.pattern[i].f_narrow(0, j, 1)?)?
                .f_squeeze_dim(0)?,
        };
        Ok((picture, triggered))
    }
}

/// Progress of a scan: `(search, step, steps)`, search 0 additive, 1 mask.
pub type Progress<'a> = &'a mut dyn FnMut(usize, usize, usize);

/// Scans `model` with the clean images `clean`.
pub fn scan(
    model: &Model,
    clean: &Dataset,
    config: &ScanConfig,
    progress: Progress<'_>,
) -> Result<(ScanResult, Recovered)> {
    let start = Instant::now();
    let classifier = model.classifier();
    let map = InputMap::new(model, &config.preprocess, clean)?;
    let classes = evaluate::check_classes(classifier, &map, clean, None, "--clean")?;
    if classes < 3 {
        bail!("the scan needs a model with at least 3 classes; it has {classes}");
    }
    let n = clean.len() as i64;
    let held = ((n as f64 * config.holdout).round() as i64).clamp(1, (n - 1).max(1));
    if n < 2 {
        bail!(
            "--clean `{}` holds {n} sample(s); the scan needs at least 2",
            clean.source
        );
    }
    let device: Device = map.device;
    let images = clean.images.f_to_device(device)?;
    let search_images = images.f_narrow(0, 0, n - held)?;
    let held_images = images.f_narrow(0, n - held, held)?;
    let settings = SearchSettings {
        steps: config.steps,
        per_class: config.per_class,
        max_batch: config.max_batch,
        seed: config.seed,
    };
    let additive = search::search(
        classifier,
        &map,
        &search_images,
        classes,
        Family::Additive,
        &settings,
        &mut |s, t| progress(0, s, t),
    )?;
    let mask = search::search(
        classifier,
        &map,
        &search_images,
        classes,
        Family::Mask,
        &settings,
        &mut |s, t| progress(1, s, t),
    )?;
    let radius_transfer = search::transfer(
        classifier,
        &map,
        &held_images,
        &additive,
        Family::Additive,
        config.max_batch,
    )?;
    let mask_transfer = search::transfer(
        classifier,
        &map,
        &held_images,
        &mask,
        Family::Mask,
        config.max_batch,
    )?;
    let scores = rule::scores(&additive.budgets, &mask.budgets);
    let class_scans: Vec<ClassScan> = (0..classes as usize)
        .map(|c| ClassScan {
            class: c as i64,
            radius: additive.budgets[c],
            mask: mask.budgets[c],
            radius_transfer: radius_transfer[c],
            mask_transfer: mask_transfer[c],
            score: scores[c],
        })
        .collect();
    let statistic = scores.iter().copied().fold(0.0, f64::max);
    let targets: Vec<i64> = class_scans
        .iter()
        .filter(|c| c.score > config.threshold)
        .map(|c| c.class)
        .collect();
    let result = ScanResult {
        verdict: if targets.is_empty() {
            Verdict::Clean
        } else {
            Verdict::Backdoor
        },
        targets,
        statistic,
        threshold: config.threshold,
        classes: class_scans,
        clean_samples: clean.len(),
        seconds: start.elapsed().as_secs_f64(),
    };
    Ok((
        result,
        Recovered {
            images: held_images.f_to_device(Device::Cpu)?,
            additive,
            mask,
        },
    ))
}

/// The verdict's rule.
pub mod rule {
    /// Each class's score: how many times smaller than the median class's its
    /// smallest trigger is, in whichever trigger form makes it stand out more.
    pub fn scores(radii: &[f64], masks: &[f64]) -> Vec<f64> {
        let (mr, mm) = (median(radii), median(masks));
        radii
            .iter()
            .zip(masks)
            .map(|(r, m)| (mr / r.max(1e-12)).max(mm / m.max(1e-12)))
            .collect()
    }

    /// The median (upper median for an even count).
    pub fn median(values: &[f64]) -> f64 {
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    }
}
