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
pub mod thorough;

use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

use crate::classifier::Classifier;
use crate::data::Dataset;
use crate::error::{bail, Result};
use crate::evaluate;
use crate::model::{InputMap, Model, Preprocess};
use crate::search::Found;
use search::{Family, SearchSettings};

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
    /// The verdict's threshold on the untargeted mask's score
    /// ([`Untargeted::score`]): above it, a model is a backdoor without one
    /// target (all-to-all).
    pub untargeted_threshold: f64,
    /// On a model with more than twice this many classes, a screen keeps
    /// this many candidates and the same number of random reference classes
    /// is added; only those are searched (`0`: every class).
    pub candidates: usize,
    /// The thorough pass ([`thorough`]): the `focus` most suspect classes
    /// of the cheap pass and as many reference classes, each searched
    /// `restarts` times for `thorough_steps` steps of
    /// `thorough_per_class` images (`thorough_steps` 0: no thorough pass,
    /// the verdict is the cheap pass's).
    pub focus: usize,
    pub thorough_steps: usize,
    pub thorough_per_class: i64,
    pub restarts: usize,
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
            untargeted_threshold: rule::UNTARGETED_THRESHOLD,
            candidates: crate::search::DEFAULT_CANDIDATES,
            focus: 0,
            thorough_steps: thorough::STEPS,
            thorough_per_class: thorough::PER_CLASS,
            restarts: thorough::RESTARTS,
            seed: 0,
        }
    }
}

/// The statistic's default threshold (see [`rule`]): fitted on the
/// calibration half of the zoo (`tools/bench_zoo.py rule --tag v2`: 14
/// clean models, 7 with targets, 2 all-to-all), the midpoint that
/// maximises the true minus the false positive rate there (Youden's J);
/// the validation half's figures are in docs/scan.md. It was 2.5, set
/// between the fixtures' scores.
pub const DEFAULT_THRESHOLD: f64 = 2.72;

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
    /// The class's anomaly score in the cheap pass (see [`rule`]).
    pub score: f64,
    /// The trigger form in which the class stands out more (its pictures).
    pub form: Family,
    /// What the thorough pass found for the class, when it searched it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thorough: Option<thorough::ClassThorough>,
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
    /// The universal untargeted mask against the classes' masks (an
    /// all-to-all backdoor has no easiest target but one small trigger).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub untargeted: Option<Untargeted>,
    pub clean_samples: usize,
    pub seconds: f64,
}

/// The smallest universal mask trigger that moves 90% of the clean images
/// off the class the model gives them, whichever class they land in.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Untargeted {
    /// Its L1 size, in pixels.
    pub mask: f64,
    /// Share of the last search step's images it moved off their class.
    pub moved: f64,
    /// How many times smaller it is than the median class's mask.
    pub score: f64,
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
    /// The cheap pass's searches (additive, mask), then the thorough
    /// pass's (every restart of each family).
    pub found: Vec<Found>,
}

impl Recovered {
    /// The search holding `class`'s best trigger of `family` and its index
    /// there: the smallest among the thorough pass's restarts, else the
    /// cheap pass's.
    fn best(&self, class: i64, family: Family) -> Result<(&Found, usize)> {
        fn of(found: &[Found], class: i64, family: Family) -> Option<(&Found, usize)> {
            found
                .iter()
                .filter(|f| f.family == family)
                .filter_map(|f| f.index(class).map(|i| (f, i)))
                .min_by(|a, b| a.0.budgets[a.1].total_cmp(&b.0.budgets[b.1]))
        }
        let cheap = self.found.len().min(2);
        match of(&self.found[cheap..], class, family)
            .or_else(|| of(&self.found[..cheap], class, family))
        {
            Some(best) => Ok(best),
            None => crate::error::bail!("class {class} was not searched"),
        }
    }

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
        let (found, index) = self.best(class, family)?;
        let x = self.images.f_narrow(0, 0, n.min(self.images.size()[0]))?;
        let triggered = found.apply(index, &x)?;
        let trigger = found.trigger(index)?;
        Ok(match family {
            Family::Additive => (trigger[0].f_squeeze_dim(0)?, triggered, None, None),
            Family::Mask => (
                trigger[0].f_mul(&trigger[1])?.f_squeeze_dim(0)?,
                triggered,
                Some(trigger[0].f_squeeze_dim(0)?),
                Some(trigger[1].f_squeeze_dim(0)?),
            ),
        })
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
    let narrows = crate::search::narrows(classes, config.candidates);
    let screen_steps = if narrows {
        crate::search::screen_steps(classes, config.max_batch)
    } else {
        0
    };
    let thorough_steps = thorough::steps(config);
    let total = screen_steps + 3 * config.steps + thorough_steps;
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
    let settings = SearchSettings::new(
        config.steps,
        config.per_class,
        config.max_batch,
        config.seed,
    );
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
            thorough: None,
        })
        .collect();
    let mut class_scans = class_scans;
    let mut found = vec![additive, mask];
    let cheap_end = screen_steps + 2 * config.steps;
    let pass = if thorough_steps > 0 {
        Some(thorough::run(
            classifier,
            map,
            &split,
            &thorough::Cheap {
                classes: &class_scans,
                found: &found,
                reference: &reference,
            },
            config,
            &mut |s, _| progress(cheap_end + s, total),
        )?)
    } else {
        None
    };
    // The verdict: the thorough scores of the suspects when there is a
    // thorough pass, else the cheap scores of every class.
    let judged: Vec<(i64, f64)> = match pass {
        Some(pass) => {
            for (class, t) in pass.classes {
                if let Some(c) = class_scans.iter_mut().find(|c| c.class == class) {
                    c.thorough = Some(t);
                }
            }
            found.extend(pass.found);
            class_scans
                .iter()
                .filter_map(|c| {
                    c.thorough
                        .as_ref()
                        .filter(|t| !t.reference)
                        .map(|t| (c.class, t.score))
                })
                .collect()
        }
        None => class_scans.iter().map(|c| (c.class, c.score)).collect(),
    };
    let statistic = judged.iter().map(|j| j.1).fold(0.0, f64::max);
    // Most suspect first.
    let mut flagged: Vec<(i64, f64)> = judged
        .into_iter()
        .filter(|j| j.1 > config.threshold)
        .collect();
    flagged.sort_by(|a, b| b.1.total_cmp(&a.1));
    let targets: Vec<i64> = flagged.iter().map(|c| c.0).collect();
    // Without a flagged class, the untargeted mask (all-to-all); with one,
    // the verdict is made and the search would be spent for nothing.
    let untargeted = if targets.is_empty() {
        let offset = cheap_end + thorough_steps;
        Some(untargeted(
            classifier,
            map,
            &split,
            config,
            mm,
            &mut |s, _| progress(offset + s, total),
        )?)
    } else {
        progress(total, total);
        None
    };
    let result = ScanResult {
        verdict: if untargeted.is_none_or(|u| u.score > config.untargeted_threshold) {
            Verdict::Backdoor
        } else {
            Verdict::Clean
        },
        targets,
        statistic,
        threshold: config.threshold,
        classes: class_scans,
        screen,
        untargeted,
        clean_samples: clean.len(),
        seconds: start.elapsed().as_secs_f64(),
    };
    Ok((
        result,
        Recovered {
            images: split.held.f_to_device(Device::Cpu)?,
            found,
        },
    ))
}

/// [`Untargeted`]: the untargeted mask search on the search images, as
/// many steps as each per-class search, each on the next
/// `10 * per_class` images (what a per-class step sees of ten classes),
/// against the median class mask `median_mask`.
fn untargeted(
    classifier: &dyn Classifier,
    map: &InputMap,
    split: &Split,
    config: &ScanConfig,
    median_mask: f64,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Untargeted> {
    let settings = SearchSettings::new(
        config.steps,
        10 * config.per_class,
        config.max_batch,
        config.seed,
    );
    let found = search::search_for(
        classifier,
        map,
        &split.search,
        &crate::search::Goal::Untargeted,
        Family::Mask,
        &settings,
        progress,
    )?;
    let mask = found.budgets[0];
    Ok(Untargeted {
        mask,
        moved: found.reached[0],
        score: median_mask / mask.max(1e-12),
    })
}

/// The screen of a many-class model ([`crate::search::screen`], additive, in
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
    let candidates = crate::search::screen(
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
            fixed: Some(fixed),
            ..SearchSettings::new(
                config.steps,
                config.per_class,
                config.max_batch,
                config.seed,
            )
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
pub(crate) struct Split {
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
    pub(crate) fn run(
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
            settings.max_batch,
        )?;
        Ok((found, transfer))
    }
}

/// The verdict's rule.
pub mod rule {
    /// The untargeted mask's score above which a model with no flagged
    /// class is a backdoor all the same (all-to-all). Fitted on the
    /// calibration half of the zoo (`tools/bench_zoo.py rule --tag v2`):
    /// the geometric middle (2.596) of the largest clean model's score
    /// (1.32) and the smallest all-to-all model's (5.09).
    pub const UNTARGETED_THRESHOLD: f64 = 2.6;

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
