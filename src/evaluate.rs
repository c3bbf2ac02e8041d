//! Clean accuracy (ACC) and attack success rate (ASR) of a model on a test
//! set, and the checks that a data set fits a model's classes.

use tch::{Device, Kind, Tensor};

use crate::classifier::Classifier;
use crate::data::{Attack, Dataset, Target};
use crate::error::{bail, Result};
use crate::model::InputMap;

/// Checks, on the first samples of `data`, that the model's class scores
/// are finite, and that every label of `data` (named by `option` in
/// errors) and every attack's target name one of its classes (`next`
/// needs two). Returns the number of classes.
pub fn check_classes(
    model: &dyn Classifier,
    map: &InputMap,
    data: &Dataset,
    targets: &[Target],
    option: &str,
) -> Result<i64> {
    let Some((images, _)) = data.batches(8).next() else {
        bail!("{option} `{}` holds no samples", data.source);
    };
    let x = map.apply(&images)?;
    let logits = tch::no_grad(|| model.logits(&x))?;
    let classes = logits.size().get(1).copied().unwrap_or(0);
    let finite = logits.f_isfinite()?.f_all()?.int64_value(&[]) != 0;
    if !finite {
        bail!(
            "the model's class scores on {option} `{}` are not finite (NaN or Inf): its weights or graph produce NaN/Inf",
            data.source
        );
    }
    let labels = &data.labels;
    let (lo, hi) = (
        labels.f_min()?.int64_value(&[]),
        labels.f_max()?.int64_value(&[]),
    );
    if lo < 0 || hi >= classes {
        bail!(
            "{option} `{}` has labels from {lo} to {hi}, but the model has {classes} classes (0 to {})",
            data.source,
            classes - 1
        );
    }
    for target in targets {
        match *target {
            Target::Class(t) if !(0..classes).contains(&t) => bail!(
                "--target {t} is not a class of the model: it has {classes} classes (0 to {})",
                classes - 1
            ),
            Target::Next if classes < 2 => {
                bail!("--target next needs a model of at least 2 classes; it has {classes}")
            }
            _ => {}
        }
    }
    Ok(classes)
}

/// Clean accuracy and attack success rates.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Metrics {
    pub acc: f64,
    /// The highest ASR of `attacks` (the worst attack); `null` without a
    /// trigger.
    pub asr: Option<f64>,
    /// One entry per trigger/target pair, in the order given.
    pub attacks: Vec<AttackMetrics>,
    pub samples: usize,
}

/// The success rate of one trigger/target pair.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AttackMetrics {
    /// The trigger as read (every parameter, defaults filled in).
    pub trigger: String,
    pub target: Target,
    pub asr: f64,
}

/// The highest success rate of `attacks`, `None` when there is none.
pub fn worst_asr(attacks: &[AttackMetrics]) -> Option<f64> {
    attacks.iter().map(|a| a.asr).reduce(f64::max)
}

/// A test set with what is needed to measure ACC and ASR.
pub struct TestSet {
    pub data: Dataset,
    /// Trigger/target pairs, each measured on every batch.
    pub attacks: Vec<Attack>,
    pub batch_size: usize,
}

/// The predicted classes (on the CPU) and the number of classes.
fn predictions(model: &dyn Classifier, map: &InputMap, images: &Tensor) -> Result<(Tensor, i64)> {
    let x = map.apply(images)?;
    let logits = tch::no_grad(|| model.logits(&x))?;
    let classes = logits.size().get(1).copied().unwrap_or(0);
    Ok((
        logits.f_argmax(-1, false)?.f_to_device(Device::Cpu)?,
        classes,
    ))
}

/// The number of true elements of a boolean tensor.
fn count(hits: Tensor) -> Result<i64> {
    Ok(hits.f_sum(Kind::Int64)?.int64_value(&[]))
}

/// A hint when a model gets fewer than half of the clean samples right: a
/// poisoned classifier keeps its clean accuracy, so the data most likely
/// reaches it differently from how it was trained.
pub fn low_accuracy_hint(acc: f64, what: &str) -> Option<String> {
    (acc < 0.5).then(|| {
        format!(
            "the model classifies only {:.1}% of {what} correctly: is the data prepared \
             as it was in training? (--mean/--std normalisation, --layout; pixels are \
             scaled to [0,1])",
            100.0 * acc
        )
    })
}

/// ACC over every sample; for each attack, its ASR with the trigger applied
/// to the `[0, 1]` image before normalisation and layout: over the samples
/// whose label is not the target for one class, over every sample (aimed
/// at the next class) for `next`.
pub fn evaluate(model: &dyn Classifier, map: &InputMap, test: &TestSet) -> Result<Metrics> {
    let mut correct = 0i64;
    // (samples attacked, successes) per attack.
    let mut tallies = vec![(0i64, 0i64); test.attacks.len()];
    for (images, labels) in test.data.batches(test.batch_size) {
        let (predicted, _) = predictions(model, map, &images)?;
        correct += count(predicted.f_eq_tensor(&labels)?)?;
        for (attack, (attacked, hits)) in test.attacks.iter().zip(&mut tallies) {
            let (n, h) = attack_batch(model, map, attack, &images, &labels)?;
            *attacked += n;
            *hits += h;
        }
    }
    let share = |part: i64, all: i64| {
        if all == 0 {
            0.0
        } else {
            part as f64 / all as f64
        }
    };
    let n = test.data.len();
    let attacks: Vec<AttackMetrics> = test
        .attacks
        .iter()
        .zip(tallies)
        .map(|(attack, (attacked, hits))| AttackMetrics {
            trigger: attack.trigger.to_string(),
            target: attack.target,
            asr: share(hits, attacked),
        })
        .collect();
    Ok(Metrics {
        acc: share(correct, n as i64),
        asr: worst_asr(&attacks),
        attacks,
        samples: n,
    })
}

/// The samples of one batch that `attack` is measured on and how many of
/// them it sends where it aims.
fn attack_batch(
    model: &dyn Classifier,
    map: &InputMap,
    attack: &Attack,
    images: &Tensor,
    labels: &Tensor,
) -> Result<(i64, i64)> {
    let (images, labels) = match attack.target {
        Target::Class(t) => {
            let keep = labels.f_ne(t)?.f_nonzero()?.f_flatten(0, -1)?;
            if keep.size()[0] == 0 {
                return Ok((0, 0));
            }
            (
                images.f_index_select(0, &keep)?,
                labels.f_index_select(0, &keep)?,
            )
        }
        Target::Next => (images.shallow_clone(), labels.shallow_clone()),
    };
    let triggered = attack.trigger.apply(&images)?;
    let (predicted, classes) = predictions(model, map, &triggered)?;
    let aimed = attack.target.aimed(&labels, classes)?;
    Ok((labels.size()[0], count(predicted.f_eq_tensor(&aimed)?)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{SourceLayout, Trigger};
    use crate::ibau::TrainError;
    use crate::model::InputMap;
    use std::path::PathBuf;

    /// Predicts `round(10 * pixel (0, 0)) mod classes`.
    struct Pixel {
        classes: i64,
    }

    impl Classifier for Pixel {
        fn logits(&self, x: &Tensor) -> Result<Tensor, TrainError> {
            let class = x
                .f_select(1, 0)?
                .f_select(1, 0)?
                .f_select(1, 0)?
                .f_mul_scalar(10.0)?
                .f_round()?
                .f_to_kind(Kind::Int64)?
                .f_remainder(self.classes)?;
            Ok(class.f_one_hot(self.classes)?.f_to_kind(Kind::Float)?)
        }
        fn parameters(&self) -> &[Tensor] {
            &[]
        }
        fn device(&self) -> Device {
            Device::Cpu
        }
        fn float_kind(&self) -> Kind {
            Kind::Float
        }
    }

    /// `[N, 1, 2, 2]` images whose pixel (0, 0) is label / 10.
    fn data(labels: &[i64]) -> Dataset {
        let pixels: Vec<f32> = labels
            .iter()
            .flat_map(|&l| [l as f32 / 10.0, 0.0, 0.0, 0.0])
            .collect();
        let images = Tensor::from_slice(&pixels).reshape([labels.len() as i64, 1, 2, 2]);
        let labels = Tensor::from_slice(labels);
        Dataset::new(images, labels, "pixels", SourceLayout::Nchw).unwrap()
    }

    fn map() -> InputMap {
        InputMap {
            model_shape: vec![None, Some(1), Some(2), Some(2)],
            dtype: crate::onnx::DataType::FLOAT,
            layout: None,
            mean: vec![],
            std: vec![],
            device: Device::Cpu,
        }
    }

    /// Every sample to class 0.
    fn to_zero() -> Trigger {
        "patch:size=1,value=0,row=0,col=0".parse().unwrap()
    }

    /// Label y to y + 1 (mod 3).
    fn plus_one() -> Trigger {
        let pattern = Tensor::zeros([1, 2, 2], (Kind::Float, Device::Cpu));
        let _ = pattern.narrow(1, 0, 1).narrow(2, 0, 1).fill_(0.1);
        Trigger::Additive {
            pattern,
            scale: 1.0,
            pattern_file: PathBuf::from("plus_one.npy"),
        }
    }

    #[test]
    fn asr_per_attack_and_the_worst() {
        let model = Pixel { classes: 3 };
        let attack = |trigger, target| Attack { trigger, target };
        let test = TestSet {
            data: data(&[0, 1, 2, 0, 1, 2]),
            attacks: vec![
                // `next` counts every sample: only label 2 goes to 0.
                attack(to_zero(), Target::Next),
                // One class counts the other labels: all four go to 0.
                attack(to_zero(), Target::Class(0)),
                // Label 2 + 1 wraps round to 0: the two 2s of the four.
                attack(plus_one(), Target::Class(0)),
                attack(plus_one(), Target::Next),
            ],
            // Two batches, 4 + 2.
            batch_size: 4,
        };
        let m = evaluate(&model, &map(), &test).unwrap();
        assert_eq!((m.acc, m.samples), (1.0, 6));
        let rates: Vec<f64> = m.attacks.iter().map(|a| a.asr).collect();
        assert_eq!(rates, vec![2.0 / 6.0, 1.0, 0.5, 1.0]);
        assert_eq!(m.asr, Some(1.0));
        let json = serde_json::to_value(&m).unwrap();
        assert_eq!(json["attacks"][0]["target"], "next");
        assert_eq!(json["attacks"][1]["target"], 0);
        assert_eq!(
            json["attacks"][0]["trigger"],
            "patch:size=1,value=0,row=0,col=0"
        );

        // Without attacks: no ASR, no entries.
        let clean = TestSet {
            data: data(&[0, 1]),
            attacks: vec![],
            batch_size: 4,
        };
        let m = evaluate(&model, &map(), &clean).unwrap();
        assert_eq!((m.asr, m.attacks.len()), (None, 0));
        assert_eq!(worst_asr(&[]), None);
    }

    #[test]
    fn targets_must_be_classes_of_the_model() {
        let three = Pixel { classes: 3 };
        let d = data(&[0, 1, 2]);
        let check = |model: &Pixel, d: &Dataset, targets: &[Target]| {
            check_classes(model, &map(), d, targets, "--data")
        };
        assert_eq!(
            check(&three, &d, &[Target::Next, Target::Class(2)]).unwrap(),
            3
        );
        for (t, needle) in [
            (Target::Class(3), "--target 3"),
            (Target::Class(-1), "--target -1"),
        ] {
            let e = check(&three, &d, &[Target::Next, t])
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle) && e.contains("3 classes"), "{e}");
        }
        let e = check(&Pixel { classes: 1 }, &data(&[0, 0]), &[Target::Next])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--target next needs a model of at least 2 classes"),
            "{e}"
        );
    }
}
