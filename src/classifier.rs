//! The neutral model layer between the back ends (an imported ONNX graph,
//! a TorchScript module: [`crate::model`]) and what computes on them (the
//! trigger searches, the scan, I-BAU): a [`Classifier`] gives logits and
//! its trainable tensors, a [`Batch`] is clean images with labels, and the
//! predict helpers run images through a classifier in bounded chunks.

use tch::{Device, Kind, Tensor};

use crate::model::InputMap;

/// Errors while computing on a classifier.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model: {0}")]
    Model(String),
    #[error(transparent)]
    Graph(#[from] Box<crate::graph::GraphError>),
    #[error("{0}")]
    Torch(#[from] tch::TchError),
    #[error("{0}")]
    Config(String),
}

/// A classifier the searches and I-BAU compute on: logits of a batch, and
/// its trainable tensors. Implemented by the imported ONNX graph and the
/// TorchScript module.
pub trait Classifier {
    /// Logits `[N, classes]` of a batch, differentiable (twice) w.r.t. the
    /// input and the parameters.
    fn logits(&self, x: &Tensor) -> Result<Tensor, ModelError>;
    /// The trainable tensors (`requires_grad`).
    fn parameters(&self) -> &[Tensor];
    /// The device the model computes on.
    fn device(&self) -> Device;
    /// The float kind the model computes in.
    fn float_kind(&self) -> Kind;
}

/// A clean batch: images in the model's input space and integer labels.
pub struct Batch {
    pub images: Tensor,
    pub labels: Tensor,
}

impl Batch {
    /// The same tensors, shared (no copy).
    pub fn shallow_clone(&self) -> Batch {
        Batch {
            images: self.images.shallow_clone(),
            labels: self.labels.shallow_clone(),
        }
    }
}

/// Predicted classes and class probabilities of `images` (pixels, mapped
/// by `map`), `max_batch` at a time.
pub fn predict_with_probabilities(
    model: &dyn Classifier,
    map: &InputMap,
    images: &Tensor,
    max_batch: i64,
) -> crate::Result<(Tensor, Tensor)> {
    let n = images.size()[0];
    let mut classes = Vec::new();
    let mut probs = Vec::new();
    let mut start = 0;
    while start < n {
        let len = max_batch.max(1).min(n - start);
        let x = map.apply(&images.f_narrow(0, start, len)?)?;
        let logits = tch::no_grad(|| model.logits(&x))?;
        classes.push(logits.f_argmax(-1, false)?);
        probs.push(logits.f_softmax(-1, Kind::Float)?);
        start += len;
    }
    Ok((Tensor::f_cat(&classes, 0)?, Tensor::f_cat(&probs, 0)?))
}

/// Predicted classes of `images` (pixels, mapped by `map`), `max_batch` at
/// a time, on the images' device.
pub fn predict(
    model: &dyn Classifier,
    map: &InputMap,
    images: &Tensor,
    max_batch: i64,
) -> crate::Result<Tensor> {
    let (classes, _) = predict_with_probabilities(model, map, images, max_batch)?;
    Ok(classes.f_to_device(images.device())?)
}
