//! ibau: remove backdoors from ONNX image classifiers with I-BAU.
//!
//! Pipeline: [`onnx`] (read/write `ModelProto`) -> graph import -> I-BAU ->
//! export -> parity check.

pub mod cli;
pub mod data;
pub mod export;
pub mod graph;
pub mod ibau;
pub mod limits;
pub mod onnx;
pub mod outputs;
pub mod parity;
pub mod torchscript;
