//! Clean accuracy (ACC) and attack success rate (ASR) of a model on a test
//! set, and the checks that a data set fits a model's classes.

use tch::{Device, Kind, Tensor};

use crate::data::{Dataset, Trigger};
use crate::error::{bail, Result};
use crate::ibau::Classifier;
use crate::model::InputMap;

/// Checks, on the first samples of `data`, that the model's class scores
/// are finite, and that every label of `data` (named by `option` in
/// errors) and the attack's `target` name one of its classes. Returns the
/// number of classes.
pub fn check_classes(
    model: &dyn Classifier,
    map: &InputMap,
    data: &Dataset,
    target: Option<i64>,
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
    if let Some(t) = target.filter(|t| !(0..classes).contains(t)) {
        bail!(
            "--target {t} is not a class of the model: it has {classes} classes (0 to {})",
            classes - 1
        );
    }
    Ok(classes)
}

/// Clean accuracy and attack success rate.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Metrics {
    pub acc: f64,
    /// `null` without a trigger.
    pub asr: Option<f64>,
    pub samples: usize,
}

/// A test set with what is needed to measure ACC and ASR.
pub struct TestSet {
    pub data: Dataset,
    pub trigger: Option<(Trigger, i64)>,
    pub batch_size: usize,
}

fn predictions(model: &dyn Classifier, map: &InputMap, images: &Tensor) -> Result<Tensor> {
    let x = map.apply(images)?;
    let logits = tch::no_grad(|| model.logits(&x))?;
    Ok(logits.f_argmax(-1, false)?.f_to_device(Device::Cpu)?)
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

/// ACC over every sample; ASR over the samples whose label is not the target,
/// with the trigger applied to the `[0, 1]` image before normalisation and layout.
pub fn evaluate(model: &dyn Classifier, map: &InputMap, test: &TestSet) -> Result<Metrics> {
    let mut correct = 0i64;
    let mut attacked = 0i64;
    let mut hits = 0i64;
    for (images, labels) in test.data.batches(test.batch_size) {
        let predicted = predictions(model, map, &images)?;
        correct += predicted
            .f_eq_tensor(&labels)?
            .f_sum(Kind::Int64)?
            .int64_value(&[]);
        if let Some((trigger, target)) = &test.trigger {
            let keep = labels.f_ne(*target)?.f_nonzero()?.f_flatten(0, -1)?;
            if keep.size()[0] == 0 {
                continue;
            }
            let triggered = trigger.apply(&images.f_index_select(0, &keep)?)?;
            let predicted = predictions(model, map, &triggered)?;
            attacked += keep.size()[0];
            hits += predicted
                .f_eq(*target)?
                .f_sum(Kind::Int64)?
                .int64_value(&[]);
        }
    }
    let n = test.data.len();
    Ok(Metrics {
        acc: if n == 0 {
            0.0
        } else {
            correct as f64 / n as f64
        },
        asr: test.trigger.as_ref().map(|_| {
            if attacked == 0 {
                0.0
            } else {
                hits as f64 / attacked as f64
            }
        }),
        samples: n,
    })
}
