//! ibau: remove backdoors from ONNX image classifiers with I-BAU.
//!
//! Pipeline: [`onnx`] (read/write `ModelProto`) -> graph import -> I-BAU ->
//! export -> parity check.

pub mod classifier;
pub mod data;
pub mod error;
pub mod evaluate;
pub mod export;
pub mod graph;
pub mod ibau;
pub mod inputs;
pub mod inspect;
pub mod limits;
pub mod model;
pub mod onnx;
pub mod outputs;
pub mod parity;
pub mod sanitize;
pub mod scan;
pub mod search;
pub mod torchscript;
pub mod verify;

pub use error::{Error, Result};
pub use evaluate::{evaluate, AttackMetrics, Metrics, TestSet};
pub use model::{InputMap, Model, Preprocess};
pub use sanitize::{sanitize, Event, Observer, SanitizeConfig};
pub use verify::verify;

/// Serializes a value as its `Display` text (report fields whose type is an
/// enum but whose documented JSON form is a sentence).
pub(crate) fn serialize_display<T: std::fmt::Display, S: serde::Serializer>(
    value: &T,
    serializer: S,
) -> std::result::Result<S::Ok, S::Error> {
    serializer.collect_str(value)
}
