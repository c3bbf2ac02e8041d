//! `scan`: is a model backdoored, and towards which class? Answered from the
//! file and clean images alone, without the trigger.
//!
//! For every class, two searches ([`search`]) find the smallest trigger that
//! sends 90% of the clean images to it: an additive perturbation (its L2
//! radius) and a Neural Cleanse-style mask and pattern (its L1 size). A
//! backdoor's target is reachable with a trigger much smaller than the other
//! classes need. See [`rule`] for the verdict.

pub mod merge;
pub mod pictures;
pub mod registry;
pub mod report;
pub mod sarif;
pub mod search;

use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

use crate::data::Dataset;
use crate::error::{bail, Result};
use crate::evaluate;
use crate::ibau::Classifier;
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
    /// On a model with more than twice this many classes, a screen keeps
    /// this many candidates and the same number of random reference classes
    /// is added; only those are searched (`0`: every class).
    pub candidates: usize,
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
            candidates: crate::ibau::DEFAULT_CANDIDATES,
            seed: 0,
        }
    }
}

/// The statistic's default threshold (see [`rule`]).
pub const DEFAULT_THRESHOLD: f64 = 2.5;

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
    /// Mean probability of the class on held-back images with the additive /
    /// mask trigger.
    pub radius_confidence: f64,
    pub mask_confidence: f64,
    /// The smallest share of any true class's held-back images the additive
    /// / mask trigger sends to the class.
    pub radius_worst_source: f64,
    pub mask_worst_source: f64,
    /// The class's anomaly score (see [`rule`]).
    pub score: f64,
    /// The trigger form in which the class stands out more (its pictures).
    pub form: Family,
}

/// What a scan found on one model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScanResult {
    pub verdict: Verdict,
    /// Suspected target classes, most suspect first (empty when clean).
    pub targets: Vec<i64>,
    /// The largest class score, and the threshold it was compared with.
    pub statistic: f64,
    pub threshold: f64,
    /// The classes searched (every class of the model, unless `screen`).
    pub classes: Vec<ClassScan>,
    /// On a many-class model, the classes the screen kept and the random
    /// reference classes whose medians the scores are measured against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub screen: Option<Screen>,
    pub clean_samples: usize,
    pub seconds: f64,
}

/// How a many-class model was narrowed before the searches.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Screen {
    /// The model's number of classes, all of which were screened.
    pub model_classes: i64,
    /// The screen's easiest classes, easiest first.
    pub candidates: Vec<i64>,
    /// Random other classes searched as the reference.
    pub reference: Vec<i64>,
}

/// The recovered triggers of a scan, for pictures and `.npy` files.
pub struct Recovered {
    /// The held-back clean images `[N, C, H, W]` (in `[0, 1]`).
    pub images: Tensor,
    pub additive: Found,
    pub mask: Found,
}

impl Recovered {
    /// The recovered trigger of `class` in the form `family` (`[C, H, W]`:
    /// the additive perturbation, or mask times pattern), the first `n`
    /// held-back images with it applied, and for the mask form the mask
    /// `[1, H, W]` and pattern `[C, H, W]`.
    pub fn for_class(
        &self,
        class: i64,
        family: Family,
        n: i64,
    ) -> Result<(Tensor, Tensor, Option<Tensor>, Option<Tensor>)> {
        let found = match family {
            Family::Additive => &self.additive,
            Family::Mask => &self.mask,
        };
        let x = self.images.f_narrow(0, 0, n.min(self.images.size()[0]))?;
        let triggered = found.apply(family, class, &x)?;
        let (i, j) = found.place(class)?;
        let picture = match family {
            Family::Additive => found.delta[i].f_narrow(0, j, 1)?.f_squeeze_dim(0)?,
            Family::Mask => found.mask[i]
                .f_narrow(0, j, 1)?
                .f_mul(&found.pattern[i].f_narrow(0, j, 1)?)?
                .f_squeeze_dim(0)?,
        };
        let (mask, pattern) = match family {
            Family::Additive => (None, None),
            Family::Mask => (
                Some(found.mask[i].f_narrow(0, j, 1)?.f_squeeze_dim(0)?),
                Some(found.pattern[i].f_narrow(0, j, 1)?.f_squeeze_dim(0)?),
            ),
        };
        Ok((picture, triggered, mask, pattern))
    }
}

/// Progress of a scan: `(step, steps)` over all its steps (the screen's,
/// then the additive search's, then the mask search's).
pub type Progress<'a> = &'a mut dyn FnMut(usize, usize);

/// Scans `model` with the clean images `clean`.
pub fn scan(
    model: &Model,
    clean: &Dataset,
    config: &ScanConfig,
    progress: Progress<'_>,
) -> Result<(ScanResult, Recovered)> {
    let map = InputMap::new(model, &config.preprocess, clean)?;
    scan_classifier(model.classifier(), &map, clean, config, progress)
}

/// [`scan`] of a classifier whose inputs `map` makes (what `sanitize` scans
/// between rounds).
pub fn scan_classifier(
    classifier: &dyn Classifier,
    map: &InputMap,
    clean: &Dataset,
    config: &ScanConfig,
    progress: Progress<'_>,
) -> Result<(ScanResult, Recovered)> {
    let start = Instant::now();
    let classes = evaluate::check_classes(classifier, map, clean, &[], "--clean")?;
    if classes < 3 {
        bail!("the scan needs a model with at least 3 classes; it has {classes}");
    }
    let n = clean.len() as i64;
    if n < 2 {
        bail!(
            "--clean `{}` holds {n} sample(s); the scan needs at least 2",
            clean.source
        );
    }
    let split = Split::new(clean, config.holdout, map.device)?;
    let narrows = crate::ibau::narrows(classes, config.candidates);
    let screen_steps = if narrows {
        crate::ibau::screen_steps(classes, config.max_batch)
    } else {
        0
    };
    let total = screen_steps + 2 * config.steps;
    let screen = if narrows {
        Some(screen(
            classifier,
            map,
            &split.search,
            classes,
            config,
            &mut |s, _| progress(s, total),
        )?)
    } else {
        None
    };
    let searched: Vec<i64> = match &screen {
        Some(s) => {
            let mut v: Vec<i64> = s.candidates.iter().chain(&s.reference).copied().collect();
            v.sort_unstable();
            v
        }
        None => (0..classes).collect(),
    };
    // The medians the scores compare with: of the reference classes after a
    // screen (the candidates are the easiest by construction), else of all.
    let reference: Vec<usize> = match &screen {
        Some(s) => searched
            .iter()
            .enumerate()
            .filter(|(_, c)| s.reference.contains(c))
            .map(|(i, _)| i)
            .collect(),
        None => (0..searched.len()).collect(),
    };
    let settings = SearchSettings {
        steps: config.steps,
        per_class: config.per_class,
        max_batch: config.max_batch,
        seed: config.seed,
        fixed: None,
    };
    let mut run = |family: Family, index: usize| {
        split.run(
            classifier,
            map,
            &searched,
            family,
            &settings,
            &mut |s, _| progress(screen_steps + index * settings.steps + s, total),
        )
    };
    let (additive, radius_transfer) = run(Family::Additive, 0)?;
    let (mask, mask_transfer) = run(Family::Mask, 1)?;
    let scores = rule::scores(&additive.budgets, &mask.budgets, &reference);
    let pick = |v: &[f64]| reference.iter().map(|&i| v[i]).collect::<Vec<f64>>();
    let (mr, mm) = (
        rule::median(&pick(&additive.budgets)),
        rule::median(&pick(&mask.budgets)),
    );
    let class_scans: Vec<ClassScan> = searched
        .iter()
        .enumerate()
        .map(|(c, &class)| ClassScan {
            form: if mr / additive.budgets[c] >= mm / mask.budgets[c] {
                Family::Additive
            } else {
                Family::Mask
            },
            class,
            radius: additive.budgets[c],
            mask: mask.budgets[c],
            radius_transfer: radius_transfer[c].share,
            mask_transfer: mask_transfer[c].share,
            radius_confidence: radius_transfer[c].confidence,
            mask_confidence: mask_transfer[c].confidence,
            radius_worst_source: radius_transfer[c].worst_source,
            mask_worst_source: mask_transfer[c].worst_source,
            score: scores[c],
        })
        .collect();
    let statistic = scores.iter().copied().fold(0.0, f64::max);
    // Most suspect first.
    let mut flagged: Vec<&ClassScan> = class_scans
        .iter()
        .filter(|c| c.score > config.threshold)
        .collect();
    flagged.sort_by(|a, b| b.score.total_cmp(&a.score));
    let targets: Vec<i64> = flagged.iter().map(|c| c.class).collect();
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
        screen,
        clean_samples: clean.len(),
        seconds: start.elapsed().as_secs_f64(),
    };
    Ok((
        result,
        Recovered {
            images: split.held.f_to_device(Device::Cpu)?,
            additive,
            mask,
        },
    ))
}

/// The screen of a many-class model ([`crate::ibau::screen`], additive, in
/// pixels): its `candidates` easiest classes, and as many others drawn at
/// random (seeded) as the reference.
fn screen(
    classifier: &dyn Classifier,
    map: &InputMap,
    images: &Tensor,
    classes: i64,
    config: &ScanConfig,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Screen> {
    let sample = images.size()[1..].iter().product::<i64>() as f64;
    let candidates = crate::ibau::screen(
        &mut |x: &Tensor| -> Result<Tensor> {
            Ok(classifier.logits(&map.apply(&x.f_clamp(0.0, 1.0)?)?)?)
        },
        images,
        classes,
        config.candidates,
        // The additive search's largest budget: every pixel's full swing.
        sample.sqrt(),
        config.max_batch,
        progress,
    )?;
    tch::manual_seed(config.seed);
    let order = Vec::<i64>::try_from(&Tensor::f_randperm(
        classes,
        (tch::Kind::Int64, Device::Cpu),
    )?)?;
    let reference: Vec<i64> = order
        .into_iter()
        .filter(|c| !candidates.contains(c))
        .take(config.candidates)
        .collect();
    Ok(Screen {
        model_classes: classes,
        candidates,
        reference,
    })
}

/// What is left of the backdoor `before` found: for each of its targets,
/// the share of held-back clean images that a trigger no larger than the
/// one found then (the same L2 radius, the same mask size) sends to the
/// target now, the larger of the two forms. A trigger-free estimate of the
/// attack success rate that remains once unlearning has made the target as
/// hard to reach as the others (when the scan's verdict is already
/// `clean`).
pub fn residual(
    classifier: &dyn Classifier,
    map: &InputMap,
    clean: &Dataset,
    config: &ScanConfig,
    before: &ScanResult,
) -> Result<Vec<(i64, f64)>> {
    if before.targets.is_empty() {
        return Ok(Vec::new());
    }
    let split = Split::new(clean, config.holdout, map.device)?;
    let searched: Vec<i64> = before.classes.iter().map(|c| c.class).collect();
    let mut shares = vec![0.0f64; searched.len()];
    for family in [Family::Additive, Family::Mask] {
        let fixed: Vec<f64> = before
            .classes
            .iter()
            .map(|c| match family {
                Family::Additive => c.radius,
                Family::Mask => c.mask,
            })
            .collect();
        let settings = SearchSettings {
            steps: config.steps,
            per_class: config.per_class,
            max_batch: config.max_batch,
            seed: config.seed,
            fixed: Some(fixed),
        };
        let (_, transfer) = split.run(
            classifier,
            map,
            &searched,
            family,
            &settings,
            &mut |_, _| {},
        )?;
        for (s, t) in shares.iter_mut().zip(&transfer) {
            *s = s.max(t.share);
        }
    }
    Ok(before
        .targets
        .iter()
        .filter_map(|&t| {
            let at = searched.iter().position(|&c| c == t)?;
            Some((t, shares[at]))
        })
        .collect())
}

/// The clean images a scan searches on and those it holds back.
struct Split {
    search: Tensor,
    held: Tensor,
    held_labels: Tensor,
}

impl Split {
    /// The last `holdout` share of `clean` (at least one image, and one left
    /// to search on) held back, on `device`.
    fn new(clean: &Dataset, holdout: f64, device: Device) -> Result<Split> {
        let n = clean.len() as i64;
        let held = ((n as f64 * holdout).round() as i64).clamp(1, (n - 1).max(1));
        let images = clean.images.f_to_device(device)?;
        Ok(Split {
            search: images.f_narrow(0, 0, n - held)?,
            held: images.f_narrow(0, n - held, held)?,
            held_labels: clean.labels.f_narrow(0, n - held, held)?,
        })
    }

    /// One search on the search images, and how its triggers transfer to
    /// the held-back ones.
    fn run(
        &self,
        classifier: &dyn Classifier,
        map: &InputMap,
        searched: &[i64],
        family: Family,
        settings: &SearchSettings,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<(Found, Vec<search::Transfer>)> {
        let found = search::search(
            classifier,
            map,
            &self.search,
            searched,
            family,
            settings,
            progress,
        )?;
        let transfer = search::transfer(
            classifier,
            map,
            &self.held,
            &self.held_labels,
            &found,
            family,
            settings.max_batch,
        )?;
        Ok((found, transfer))
    }
}

/// The verdict's rule.
pub mod rule {
    /// Each class's score: how many times smaller than the median class's
    /// its smallest triggers are, the geometric mean over the two forms
    /// (`sqrt(median(r) / r_c * median(m) / m_c)`). A backdoor's target is
    /// easy to reach in both forms; a class that is naturally easy (a bag's
    /// outline) in one at most. The medians are over the classes at the
    /// indices `reference` (all of them, or a random reference after a
    /// screen).
    pub fn scores(radii: &[f64], masks: &[f64], reference: &[usize]) -> Vec<f64> {
        let pick = |v: &[f64]| reference.iter().map(|&i| v[i]).collect::<Vec<f64>>();
        let (mr, mm) = (median(&pick(radii)), median(&pick(masks)));
        radii
            .iter()
            .zip(masks)
            .map(|(r, m)| (mr / r.max(1e-12) * mm / m.max(1e-12)).sqrt())
            .collect()
    }

    /// The median (upper median for an even count).
    pub fn median(values: &[f64]) -> f64 {
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    }
}
