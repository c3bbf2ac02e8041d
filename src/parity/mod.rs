//! Parity: run an ONNX file in other runtimes (ONNX Runtime through ort, and
//! tract) and compare with the tch import. ONNX Runtime is the reference every
//! written file is checked against; tract is a second opinion.

pub mod ort_runtime;
pub mod tract_runtime;

use tch::{Device, Kind, Tensor};

pub use ort_runtime::OrtSession;

/// Errors of the parity runtimes.
#[derive(Debug, thiserror::Error)]
pub enum ParityError {
    #[error("ONNX Runtime library not found: {0}")]
    OrtLibrary(String),
    #[error("ONNX Runtime, `{path}`: {message}")]
    Ort { path: String, message: String },
    #[error("tract, `{path}`: {message}")]
    Tract { path: String, message: String },
    #[error("{0}")]
    Torch(#[from] tch::TchError),
}

/// The largest absolute difference between two tensors of the same shape
/// (compared in f64 on the CPU); infinite when shapes differ.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    let to64 = |t: &Tensor| t.detach().to_device(Device::Cpu).to_kind(Kind::Double);
    let (a, b) = (to64(a), to64(b));
    if a.size() != b.size() {
        return f64::INFINITY;
    }
    if a.numel() == 0 {
        return 0.0;
    }
    let diff = (a - b).abs();
    // NaN in either output is a disagreement.
    if diff.isnan().any().int64_value(&[]) != 0 {
        return f64::INFINITY;
    }
    diff.max().double_value(&[])
}

/// Whether two runs agree: their largest absolute difference `diff` is
/// within `tolerance` times the reference's `scale` when that is above 1
/// (absolute below). The one comparison behind `verify` and the parity gate
/// of `sanitize`.
pub fn within(diff: f64, scale: f64, tolerance: f64) -> bool {
    diff <= tolerance * scale.max(1.0)
}

/// The largest absolute difference of `ours` and `reference`, relative to
/// the reference's scale when that is above 1 (what [`within`] compares).
pub fn relative_difference(ours: &Tensor, reference: &Tensor) -> f64 {
    max_abs_diff(ours, reference) / max_abs(reference).max(1.0)
}

/// The largest absolute value of a tensor (its scale, for relative tolerances).
pub fn max_abs(t: &Tensor) -> f64 {
    if t.numel() == 0 {
        return 0.0;
    }
    t.detach()
        .to_device(Device::Cpu)
        .to_kind(Kind::Double)
        .abs()
        .max()
        .double_value(&[])
}

/// A tch tensor's values as a flat Vec and its shape (CPU copy).
pub(crate) fn to_vec<T: tch::kind::Element>(
    t: &Tensor,
    kind: Kind,
) -> Result<(Vec<usize>, Vec<T>), tch::TchError> {
    let t = t
        .f_detach()?
        .f_to_device(Device::Cpu)?
        .f_to_kind(kind)?
        .f_contiguous()?;
    let shape = t.size().iter().map(|&d| d as usize).collect();
    let n = t.numel();
    let mut data = vec![T::ZERO; n];
    t.f_copy_data(&mut data, n)?;
    Ok((shape, data))
}
