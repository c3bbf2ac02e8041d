//! What `eval` and `sanitize` share: loading a model onto a device, preparing
//! data in the model's input space, and measuring ACC / ASR.

use std::path::{Path, PathBuf};

use anyhow::Context;
use tch::{Device, Kind, Tensor};

use crate::data::{self, Dataset, Layout, Trigger};
use crate::graph::{ops::Registry, Graph, ImportOptions};
use crate::ibau::{Classifier, TrainError};
use crate::onnx::Model;

/// Data options shared by the commands.
#[derive(Debug, Clone, clap::Args)]
pub struct Preprocess {
    /// How images map onto the model input; by default the one layout that
    /// fits the model's declared input shape.
    #[arg(long, value_name = "nchw|nhwc|flat")]
    pub layout: Option<Layout>,
    /// Per-channel mean subtracted after scaling to [0,1] (e.g. 0.5 or 0.49,0.48,0.45).
    #[arg(long, value_delimiter = ',', num_args = 1.., value_name = "M[,M..]")]
    pub mean: Vec<f64>,
    /// Per-channel standard deviation divided by after the mean.
    #[arg(long, value_delimiter = ',', num_args = 1.., value_name = "S[,S..]")]
    pub std: Vec<f64>,
}

/// An imported ONNX graph as an I-BAU classifier (first output = logits).
pub struct GraphClassifier {
    pub graph: Graph,
    pub output: usize,
}

impl Classifier for GraphClassifier {
    fn logits(&self, x: &Tensor) -> Result<Tensor, TrainError> {
        let mut outputs = self
            .graph
            .forward(std::slice::from_ref(x))
            .map_err(|e| TrainError::Model(e.to_string()))?;
        Ok(outputs.swap_remove(self.output))
    }
    fn parameters(&self) -> &[Tensor] {
        &self.graph.params.tensors
    }
    fn device(&self) -> Device {
        self.graph.device
    }
    fn float_kind(&self) -> Kind {
        self.graph.float_kind
    }
}

/// Loads and imports `path` for `device`.
pub fn load_classifier(
    path: &Path,
    options: &ImportOptions,
) -> anyhow::Result<(Model, GraphClassifier)> {
    let model = Model::load(path)?;
    let graph = Graph::import(&model, &Registry::standard(), options)
        .with_context(|| format!("importing `{}`", path.display()))?;
    if graph.inputs.len() != 1 {
        anyhow::bail!(
            "`{}` has {} graph inputs ({}); ibau handles classifiers with one image input",
            path.display(),
            graph.inputs.len(),
            graph
                .inputs
                .iter()
                .map(|i| i.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok((model, GraphClassifier { graph, output: 0 }))
}

/// A dataset file with an optional `A:B` range.
pub fn load_data(path: &Path, range: Option<&str>) -> anyhow::Result<Dataset> {
    let dataset = data::load(path)?;
    match range {
        Some(r) => Ok(dataset.slice(data::parse_range(r)?)?),
        None => Ok(dataset),
    }
}

/// Images in [0,1] `[N,C,H,W]` -> the model's input space: normalised, laid
/// out as the model declares, on the model's device.
pub struct InputMap {
    pub model_shape: Vec<Option<i64>>,
    pub layout: Option<Layout>,
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
    pub device: Device,
}

impl InputMap {
    pub fn new(graph: &Graph, pre: &Preprocess) -> InputMap {
        let model_shape = graph.inputs[0]
            .shape
            .as_ref()
            .map(|dims| {
                dims.iter()
                    .map(|d| match d {
                        crate::graph::Dim::Fixed(n) if *n > 0 => Some(*n),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        InputMap {
            model_shape,
            layout: pre.layout,
            mean: pre.mean.clone(),
            std: pre.std.clone(),
            device: graph.device,
        }
    }

    pub fn apply(&self, images: &Tensor) -> anyhow::Result<Tensor> {
        let normalised = if self.mean.is_empty() && self.std.is_empty() {
            images.shallow_clone()
        } else {
            data::normalize(images, &self.mean, &self.std)?
        };
        let (mapped, _) = data::fit_to_input(&normalised, &self.model_shape, self.layout)?;
        Ok(mapped.f_to_device(self.device)?)
    }
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

fn predictions(model: &dyn Classifier, map: &InputMap, images: &Tensor) -> anyhow::Result<Tensor> {
    let x = map.apply(images)?;
    let logits = tch::no_grad(|| model.logits(&x))?;
    Ok(logits.f_argmax(-1, false)?.f_to_device(Device::Cpu)?)
}

/// ACC over every sample; ASR over the samples whose label is not the target,
/// with the trigger applied to the [0,1] image before normalisation and layout.
pub fn evaluate(model: &dyn Classifier, map: &InputMap, test: &TestSet) -> anyhow::Result<Metrics> {
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

/// Parses a trigger option, naming it in the error.
pub fn parse_trigger(spec: &str) -> Result<Trigger, String> {
    spec.parse::<Trigger>().map_err(|e| e.to_string())
}

/// A data path, checked to exist.
pub fn existing_path(s: &str) -> Result<PathBuf, String> {
    let p = PathBuf::from(s);
    if p.exists() {
        Ok(p)
    } else {
        Err(format!("`{s}` does not exist"))
    }
}
