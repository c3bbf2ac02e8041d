//! A model file ready to compute on: an imported ONNX graph or a TorchScript
//! module behind one [`Model`] type (the two back ends of [`Classifier`]),
//! with what makes it usable as a classifier decided at load: which tensor
//! holds the logits (a Softmax's input, or the log of probabilities), how a
//! batch size fixed by the file is handled, and how images map onto its
//! input ([`InputMap`]).

use std::fmt;
use std::path::Path;

use tch::{Device, Kind, Tensor};

use crate::classifier::Classifier;
use crate::data::{self, Dataset, Layout};
use crate::error::{bail, Error, Result};
use crate::graph::{ops::Registry, rebatch, Graph, ImportOptions, ValueInfo};
use crate::ibau::TrainError;
use crate::onnx::Model as OnnxFile;
use crate::torchscript::{self, FileKind, TorchScript};

/// How images in [0, 1] reach the model: the layout onto its input (by
/// default the one that fits its declared shape) and a per-channel
/// normalisation `(x - mean) / std` (none when both are empty).
#[derive(Debug, Clone, Default)]
pub struct Preprocess {
    pub layout: Option<Layout>,
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
}

/// Which tensor I-BAU's losses and the predictions use as logits.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LogitsSource {
    /// The tensor's name in the graph (`forward()` for TorchScript).
    pub tensor: String,
    /// Why that tensor (serialized as its sentence, see [`LogitsHow`]).
    #[serde(serialize_with = "crate::serialize_display")]
    pub how: LogitsHow,
}

/// How the logits were found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogitsHow {
    /// The first graph output itself.
    GraphOutput,
    /// The input of the Softmax node `node` that makes graph output `output`.
    SoftmaxInput { node: String, output: String },
    /// The log of the first graph output, whose rows turned out to be
    /// probabilities.
    LogOfOutput { output: String },
    /// A TorchScript module's `forward` result.
    ModuleOutput,
}

impl LogitsHow {
    /// Whether the logits are the model's output as it stands (nothing to
    /// tell the user).
    pub fn is_plain(&self) -> bool {
        matches!(self, LogitsHow::GraphOutput | LogitsHow::ModuleOutput)
    }
}

impl fmt::Display for LogitsHow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LogitsHow::GraphOutput => write!(f, "graph output"),
            LogitsHow::SoftmaxInput { node, output } => write!(
                f,
                "input of Softmax node `{node}` (graph output `{output}` holds probabilities)"
            ),
            LogitsHow::LogOfOutput { output } => {
                write!(
                    f,
                    "log of graph output `{output}` (its rows are probabilities)"
                )
            }
            LogitsHow::ModuleOutput => write!(f, "module output"),
        }
    }
}

/// An imported ONNX graph as an I-BAU classifier. The logits are the first
/// graph output, unless that output is a Softmax's (then the Softmax's input
/// is an extra output of the import) or turns out to hold probabilities
/// (then their log is used: cross-entropy on probabilities would leave a
/// backdoor in place).
pub struct GraphClassifier {
    pub graph: Graph,
    /// Index of the logits among the import's outputs.
    pub output: usize,
    /// Take the log of that output (it holds probabilities).
    pub log: bool,
    pub logits: LogitsSource,
    /// The batch size the file fixes on its input (ONNX Runtime takes only
    /// that many samples per run).
    pub fixed_batch: Option<i64>,
    /// The imported graph also takes only `fixed_batch` samples per run:
    /// other batch sizes run in chunks of it.
    pub chunked: bool,
    /// How a fixed batch size is handled, for the user.
    pub batch_note: Option<String>,
}

impl Classifier for GraphClassifier {
    fn logits(&self, x: &Tensor) -> Result<Tensor, TrainError> {
        let n = x.size().first().copied().unwrap_or(0);
        let out = match self.fixed_batch {
            Some(b) if self.chunked && n != b && n > 0 => self.forward_in_chunks(x, b)?,
            _ => self.forward(x)?,
        };
        let out = class_scores(out, &self.logits.tensor)?;
        if self.log {
            Ok(out.f_clamp_min(1e-30)?.f_log()?)
        } else {
            Ok(out)
        }
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

impl GraphClassifier {
    /// The logits tensor of one graph run.
    fn forward(&self, x: &Tensor) -> Result<Tensor, TrainError> {
        let mut outputs = self
            .graph
            .forward(std::slice::from_ref(x))
            .map_err(|e| TrainError::Graph(Box::new(e)))?;
        Ok(outputs.swap_remove(self.output))
    }

    /// Runs a batch of any size through a graph that only takes `b` samples,
    /// chunk by chunk (see [`fixed_batch_chunks`]); differentiable like one run.
    fn forward_in_chunks(&self, x: &Tensor, b: i64) -> Result<Tensor, TrainError> {
        let outs = fixed_batch_chunks(x, b)?
            .into_iter()
            .map(|(chunk, len)| Ok(self.forward(&chunk)?.f_narrow(0, 0, len)?))
            .collect::<Result<Vec<_>, TrainError>>()?;
        Ok(Tensor::f_cat(&outs, 0)?)
    }

    /// Runs `x` through the model; when the logits come straight from a graph
    /// output whose rows are probabilities (in [0, 1], summing to one), the
    /// classifier switches to their log and says so.
    pub fn detect_probabilities(&mut self, x: &Tensor) -> Result<()> {
        if self.log || self.logits.how != LogitsHow::GraphOutput {
            return Ok(());
        }
        let out = tch::no_grad(|| self.logits(x))?.f_to_kind(Kind::Double)?;
        if out.dim() != 2 || out.size()[1] < 2 {
            return Ok(());
        }
        let min = out.f_min()?.double_value(&[]);
        let max = out.f_max()?.double_value(&[]);
        let sums = out.f_sum_dim_intlist(-1, false, Kind::Double)?;
        let off = (sums - 1.0).f_abs()?.f_max()?.double_value(&[]);
        if min >= 0.0 && max <= 1.0 && off < 1e-3 {
            self.log = true;
            self.logits.how = LogitsHow::LogOfOutput {
                output: self.logits.tensor.clone(),
            };
        }
        Ok(())
    }
}

/// Per-sample class scores as `[N, classes]`: outputs such as `[N, classes,
/// 1, 1]` (a 1x1 convolution head without Flatten) or `[N, 1, classes]` are
/// reshaped; any other shape is an error naming the tensor.
fn class_scores(out: Tensor, name: &str) -> Result<Tensor, TrainError> {
    let dims = out.size();
    if dims.len() == 2 {
        return Ok(out);
    }
    let rest = dims.get(1..).unwrap_or_default();
    let classes: i64 = rest.iter().product();
    if dims.len() > 2 && rest.iter().filter(|&&d| d != 1).count() <= 1 {
        return Ok(out.f_reshape([dims[0], classes])?);
    }
    Err(TrainError::Model(format!(
        "the logits tensor `{name}` has shape {dims:?}; ibau needs one row of class scores \
         per sample ([N, classes], or [N, classes, 1, 1] and the like)"
    )))
}

/// `x` cut along its first axis into chunks of `b` samples, the last one
/// padded with zeros to `b`; each with the number of real samples in it.
pub fn fixed_batch_chunks(x: &Tensor, b: i64) -> Result<Vec<(Tensor, i64)>, tch::TchError> {
    let n = x.size().first().copied().unwrap_or(0);
    let mut chunks = Vec::with_capacity(((n + b - 1) / b.max(1)) as usize);
    let mut start = 0;
    while start < n {
        let len = b.min(n - start);
        let mut chunk = x.f_narrow(0, start, len)?;
        if len < b {
            let mut pad_shape = x.size();
            pad_shape[0] = b - len;
            let pad = Tensor::f_zeros(pad_shape.as_slice(), (x.kind(), x.device()))?;
            chunk = Tensor::f_cat(&[chunk, pad], 0)?;
        }
        chunks.push((chunk, len));
        start += len;
    }
    Ok(chunks)
}

/// The Softmax that makes graph output `output` (through Identity nodes),
/// when it normalises the last axis: its node name and input tensor.
fn softmax_producer(model: &OnnxFile, output: &str) -> Option<(String, String)> {
    let graph = model.graph();
    let mut name = output.to_string();
    loop {
        let (i, node) = graph
            .node
            .iter()
            .enumerate()
            .find(|(_, n)| n.output.contains(&name))?;
        match node.op_type() {
            "Identity" => name = node.input.first()?.clone(),
            "Softmax" => {
                let opset = model.opset(node.domain()).unwrap_or(1);
                let axis = node
                    .attribute
                    .iter()
                    .find(|a| a.name() == "axis")
                    .map(|a| a.i())
                    .unwrap_or(if opset >= 13 { -1 } else { 1 });
                let rank = graph
                    .output
                    .iter()
                    .find(|o| o.name() == output)
                    .and_then(|o| ValueInfo::from_proto(o).shape.map(|s| s.len() as i64));
                let last =
                    axis == -1 || rank.is_some_and(|r| axis == r - 1) || (opset < 13 && axis == 1);
                let input = node.input.first()?.clone();
                return last.then(|| (crate::graph::node_name(node.name(), i), input));
            }
            _ => return None,
        }
    }
}

/// How an import handles a batch size fixed by the file.
#[derive(Default)]
struct FixedBatch {
    size: Option<i64>,
    chunked: bool,
    note: Option<String>,
}

/// Imports a model whose input fixes the batch to `b`: the copy made by
/// [`rebatch::free_batch`] when it computes, on a random probe of `2b + 1`
/// samples, what runs of `b` samples compute; otherwise the file as it is,
/// run in chunks of `b` (correct, slower).
fn import_fixed_batch(
    model: &OnnxFile,
    b: i64,
    options: &ImportOptions,
) -> Result<(Graph, FixedBatch)> {
    let registry = Registry::standard();
    // The probe needs every per-sample dimension.
    let rest: Option<Vec<i64>> = ValueInfo::from_proto(&model.graph().input[0])
        .fixed_dims()
        .and_then(|dims| dims.get(1..)?.iter().copied().collect());
    let tolerance = Graph::default_tolerance(model).0;
    let free = |rest: &[i64]| -> Result<Option<(Graph, usize, f64)>> {
        let Some(rebatched) = rebatch::free_batch(model, b)? else {
            return Ok(None);
        };
        let Ok(graph) = Graph::import(&rebatched.model, &registry, options) else {
            return Ok(None);
        };
        let mut shape = vec![2 * b + 1];
        shape.extend_from_slice(rest);
        let probe = Tensor::f_rand(shape.as_slice(), (Kind::Float, options.device))?;
        // Largest difference between one run of the probe and runs of `b`
        // samples, relative to the output's scale, over every graph output.
        let check = || -> Result<f64> {
            tch::no_grad(|| {
                let whole = graph.forward(std::slice::from_ref(&probe))?;
                let mut parts: Vec<Vec<Tensor>> = whole.iter().map(|_| Vec::new()).collect();
                for (chunk, len) in fixed_batch_chunks(&probe, b)? {
                    for (k, out) in graph.forward(&[chunk])?.into_iter().enumerate() {
                        parts[k].push(out.f_narrow(0, 0, len)?);
                    }
                }
                let mut worst = 0f64;
                for (out, parts) in whole.iter().zip(&parts) {
                    // Shapes that differ count as an infinite difference.
                    let parts = Tensor::f_cat(parts, 0)?;
                    worst = worst.max(crate::parity::relative_difference(out, &parts));
                }
                Ok(worst)
            })
        };
        Ok(check().ok().map(|worst| (graph, rebatched.reshapes, worst)))
    };
    if let Some(rest) = &rest {
        if let Some((graph, reshapes, worst)) = free(rest)? {
            if worst <= tolerance {
                let note = format!(
                    "the file fixes the batch to {b}; ibau runs any batch size after making \
                     {reshapes} Reshape target{} follow the batch (checked against runs of {b}: \
                     relative difference {worst:.1e})",
                    if reshapes == 1 { "" } else { "s" }
                );
                return Ok((
                    graph,
                    FixedBatch {
                        size: Some(b),
                        chunked: false,
                        note: Some(note),
                    },
                ));
            }
        }
    }
    let graph = Graph::import(model, &registry, options)?;
    Ok((
        graph,
        FixedBatch {
            size: Some(b),
            chunked: true,
            note: Some(format!(
                "the file fixes the batch to {b}; ibau runs it {b} sample{} at a time (slower)",
                if b == 1 { "" } else { "s" }
            )),
        },
    ))
}

/// Whether `output` is computed from `input` along the graph's nodes (in
/// any order: passes repeat until nothing new is reached). A node with a
/// subgraph attribute (If, Loop, Scan) reads outer values its inputs do not
/// list, so it counts as depending on the input.
fn depends_on(graph: &crate::onnx::proto::GraphProto, input: &str, output: &str) -> bool {
    let mut reached: std::collections::HashSet<&str> = [input].into_iter().collect();
    loop {
        let before = reached.len();
        for node in &graph.node {
            let subgraph = node
                .attribute
                .iter()
                .any(|a| a.g.is_some() || !a.graphs.is_empty());
            if subgraph || node.input.iter().any(|i| reached.contains(i.as_str())) {
                reached.extend(node.output.iter().map(String::as_str));
            }
        }
        if reached.len() == before {
            return reached.contains(output);
        }
    }
}

/// Loads and imports `path` for `device`.
pub fn load_classifier(
    path: &Path,
    options: &ImportOptions,
) -> Result<(OnnxFile, GraphClassifier)> {
    let model = OnnxFile::load(path)?;
    let first_output = model
        .graph()
        .output
        .first()
        .map(|o| o.name().to_string())
        .ok_or_else(|| Error::Model(format!("`{}` has no graph outputs", path.display())))?;
    let softmax = softmax_producer(&model, &first_output);
    let (graph, batch) = {
        let with_logits;
        let import = match &softmax {
            Some((_, input)) => {
                let mut m = model.clone();
                m.proto
                    .graph
                    .as_mut()
                    .expect("a loaded model has a graph")
                    .output
                    .push(crate::onnx::proto::ValueInfoProto {
                        name: Some(input.clone()),
                        ..Default::default()
                    });
                with_logits = m;
                &with_logits
            }
            None => &model,
        };
        let fixed_batch = model.graph().input.first().and_then(rebatch::fixed_batch);
        match fixed_batch {
            Some(b) => import_fixed_batch(import, b, options).map_err(|e| match e {
                Error::Graph(source) => Error::import(path, *source),
                other => other,
            })?,
            None => (
                Graph::import(import, &Registry::standard(), options)
                    .map_err(|source| Error::import(path, source))?,
                FixedBatch::default(),
            ),
        }
    };
    if graph.inputs.len() == 1 && !depends_on(model.graph(), &graph.inputs[0].name, &first_output) {
        bail!(
            "`{}`: the output `{first_output}` does not depend on the graph input `{}` (the graph computes it from its weights alone): not a classifier of its input",
            path.display(),
            graph.inputs[0].name
        );
    }
    if graph.inputs.len() != 1 {
        bail!(
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
    let (output, logits) = match softmax {
        Some((node, input)) => (
            graph.outputs.len() - 1,
            LogitsSource {
                how: LogitsHow::SoftmaxInput {
                    node,
                    output: first_output,
                },
                tensor: input,
            },
        ),
        None => (
            0,
            LogitsSource {
                tensor: first_output,
                how: LogitsHow::GraphOutput,
            },
        ),
    };
    Ok((
        model,
        GraphClassifier {
            graph,
            output,
            log: false,
            logits,
            fixed_batch: batch.size,
            chunked: batch.chunked,
            batch_note: batch.note,
        },
    ))
}

/// A model file loaded for computing: an imported ONNX graph or a
/// TorchScript module (the two back ends of [`Classifier`]).
pub enum Model {
    Onnx {
        file: Box<OnnxFile>,
        model: Box<GraphClassifier>,
    },
    TorchScript(TorchScript),
}

/// The trainable weights of a model: how many tensors and elements, and
/// their share of the float weight elements.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct TrainableShare {
    pub tensors: usize,
    pub elements: i64,
    pub share: f64,
}

impl Model {
    /// Loads `path` (ONNX or TorchScript, told apart by content) for
    /// `options.device`; PyTorch pickles are refused.
    pub fn load(path: &Path, options: &ImportOptions) -> Result<Model> {
        match torchscript::detect(path)? {
            FileKind::TorchScript => Ok(Model::TorchScript(TorchScript::load(
                path,
                options.device,
                options.freeze.as_ref(),
                options.train.as_ref(),
            )?)),
            FileKind::Onnx => {
                let (file, model) = load_classifier(path, options)?;
                Ok(Model::Onnx {
                    file: Box::new(file),
                    model: Box::new(model),
                })
            }
            other => Err(torchscript::refuse_pickles(path, other).unwrap_err().into()),
        }
    }

    /// The file the model was loaded from.
    pub fn path(&self) -> &Path {
        match self {
            Model::Onnx { file, .. } => &file.path,
            Model::TorchScript(ts) => &ts.path,
        }
    }

    /// The external-data files an ONNX model reads (none for TorchScript).
    pub fn external_files(&self) -> Vec<std::path::PathBuf> {
        match self {
            Model::Onnx { file, .. } => file.external_files(),
            Model::TorchScript(_) => Vec::new(),
        }
    }

    pub fn classifier(&self) -> &dyn Classifier {
        match self {
            Model::Onnx { model, .. } => model.as_ref(),
            Model::TorchScript(ts) => ts,
        }
    }

    /// The input shape the file declares (`None` = symbolic); TorchScript
    /// files declare none.
    pub fn declared_input(&self) -> Option<Vec<Option<i64>>> {
        match self {
            Model::Onnx { model, .. } => {
                Some(model.graph.inputs[0].fixed_dims().unwrap_or_default())
            }
            Model::TorchScript(_) => None,
        }
    }

    pub fn trainable(&self) -> TrainableShare {
        match self {
            Model::Onnx { model, .. } => {
                let t = crate::inspect::trainable_summary(&model.graph.roles);
                TrainableShare {
                    tensors: t.tensors,
                    elements: t.elements,
                    share: t.share,
                }
            }
            Model::TorchScript(ts) => {
                let weights: i64 = ts
                    .infos
                    .iter()
                    .filter(|p| {
                        p.trainable
                            || p.reason == Some(torchscript::FrozenParameter::FrozenByOption)
                    })
                    .map(|p| p.elements)
                    .sum();
                let elements: i64 = ts
                    .infos
                    .iter()
                    .filter(|p| p.trainable)
                    .map(|p| p.elements)
                    .sum();
                TrainableShare {
                    tensors: ts.params.len(),
                    elements,
                    share: if weights == 0 {
                        1.0
                    } else {
                        elements as f64 / weights as f64
                    },
                }
            }
        }
    }

    pub fn device(&self) -> Device {
        self.classifier().device()
    }

    /// The tensor used as logits.
    pub fn logits_source(&self) -> LogitsSource {
        match self {
            Model::Onnx { model, .. } => model.logits.clone(),
            Model::TorchScript(_) => LogitsSource {
                tensor: "forward()".into(),
                how: LogitsHow::ModuleOutput,
            },
        }
    }

    /// How a batch size fixed by the file is handled (ONNX models only).
    pub fn batch_note(&self) -> Option<String> {
        match self {
            Model::Onnx { model, .. } => model.batch_note.clone(),
            Model::TorchScript(_) => None,
        }
    }

    /// See [`GraphClassifier::detect_probabilities`] (ONNX models only).
    pub fn detect_probabilities(&mut self, x: &Tensor) -> Result<()> {
        match self {
            Model::Onnx { model, .. } => model.detect_probabilities(x),
            Model::TorchScript(_) => Ok(()),
        }
    }
}

/// Images in `[0, 1]` `[N,C,H,W]` -> the model's input space: normalised, laid
/// out as the model declares, on the model's device.
pub struct InputMap {
    pub model_shape: Vec<Option<i64>>,
    /// The input's ONNX element type: float16/bfloat16 inputs get data
    /// rounded to that precision.
    pub dtype: crate::onnx::DataType,
    pub layout: Option<Layout>,
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
    pub device: Device,
}

impl InputMap {
    /// The map for `model` and images of `data`'s `[C, H, W]`. A model that
    /// declares no input shape (TorchScript) is probed: each layout is run
    /// on one zero image, and the layouts that give `[1, K]` outputs fit.
    pub fn new(model: &Model, pre: &Preprocess, data: &Dataset) -> Result<InputMap> {
        let model_shape = match model.declared_input() {
            Some(shape) => shape,
            None => probe_input(model.classifier(), &data.images.size(), pre.layout)?,
        };
        let dtype = match model {
            Model::Onnx { model, .. } => model.graph.inputs[0].data_type,
            Model::TorchScript(_) => crate::onnx::DataType::FLOAT,
        };
        Ok(InputMap {
            model_shape,
            dtype,
            layout: pre.layout,
            mean: pre.mean.clone(),
            std: pre.std.clone(),
            device: model.device(),
        })
    }

    pub fn apply(&self, images: &Tensor) -> Result<Tensor> {
        let normalised = if self.mean.is_empty() && self.std.is_empty() {
            images.shallow_clone()
        } else {
            data::normalize(images, &self.mean, &self.std)?
        };
        let (mapped, _) = data::fit_to_input(&normalised, &self.model_shape, self.layout)?;
        Ok(data::round_to(&mapped, self.dtype)?.f_to_device(self.device)?)
    }
}

/// The input shape (batch symbolic) of a model without a declared one: the
/// layouts of `[N, C, H, W]` images under which it runs and returns `[1, K]`.
fn probe_input(
    model: &dyn Classifier,
    images: &[i64],
    forced: Option<Layout>,
) -> Result<Vec<Option<i64>>> {
    let [_, c, h, w] = images else {
        bail!("expected [N, C, H, W] images, got {images:?}");
    };
    let candidates = match forced {
        Some(l) => vec![l],
        // Without a declared shape, [N, H, W] is only tried when asked for:
        // convolutions take an unbatched [C, H, W] and could seem to fit.
        None => vec![Layout::Nchw, Layout::Nhwc, Layout::Flat],
    };
    let mut fitting = Vec::new();
    // Why each layout failed, for the error when none fits.
    let mut failures = Vec::new();
    for layout in candidates {
        let sample = layout.sample_shape([*c, *h, *w]);
        let shape: Vec<i64> = std::iter::once(1).chain(sample.iter().copied()).collect();
        let x = Tensor::f_zeros(shape.as_slice(), (model.float_kind(), model.device()))?;
        match tch::no_grad(|| model.logits(&x)) {
            Ok(y) if y.dim() == 2 && y.size()[0] == 1 => fitting.push((layout, sample)),
            Ok(y) => failures.push(format!("{layout}: returns shape {:?}", y.size())),
            Err(e) => failures.push(format!("{layout}: {}", first_line(&e.to_string()))),
        }
    }
    let why = failures.join("; ");
    match fitting.len() {
        1 => {
            let (_, sample) = fitting.remove(0);
            Ok(std::iter::once(None).chain(sample.into_iter().map(Some)).collect())
        }
        0 => match forced {
            Some(l) => bail!(
                "the model does not run on [1, {c}, {h}, {w}] images laid out as {l} (--layout): {why}"
            ),
            None => bail!(
                "the model runs on none of the layouts nchw, nhwc, flat of [N, {c}, {h}, {w}] images \
                 (it should return [N, classes] logits): {why}"
            ),
        },
        _ => bail!(
            "the model runs on several layouts of [N, {c}, {h}, {w}] images ({}): choose one with --layout",
            fitting
                .iter()
                .map(|(l, _)| l.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// The telling line of a libtorch message: TorchScript errors open with
/// "The following operation failed..." and a traceback, and end with the
/// Python-style error line (`RuntimeError: ...`); others with the message.
fn first_line(text: &str) -> &str {
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let first = lines.clone().next().unwrap_or(text);
    lines.find(|l| l.contains("Error: ")).unwrap_or(first)
}
