//! ibau: remove backdoors from ONNX image classifiers with I-BAU.
//!
//! Pipeline: [`onnx`] (read/write `ModelProto`) -> graph import -> I-BAU ->
//! export -> parity check.

pub mod graph;
pub mod onnx;
