//! Parity: run an ONNX file in other runtimes (ONNX Runtime through ort, and
//! tract) and compare with the tch import. ONNX Runtime is the reference every
//! written file is checked against; tract is a second opinion.

pub mod gate;
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

/// ONNX Runtime's error text made one readable line: a C++ check's text
/// (`/src/file.cc:294 onnxruntime::Status f(const A&, ...) cond was false.
/// message`) becomes `message (ONNX Runtime's check `cond` in file.cc:294)`;
/// anything else is kept, on one line.
pub fn runtime_text(text: &str) -> String {
    let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let location = line.split(' ').position(|w| {
        w.rsplit_once(':').is_some_and(|(file, n)| {
            [".cc", ".cpp", ".h"].iter().any(|e| file.ends_with(e))
                && !n.is_empty()
                && n.bytes().all(|b| b.is_ascii_digit())
        })
    });
    let Some(at) = location else {
        return line;
    };
    let words: Vec<&str> = line.split(' ').collect();
    let prefix = words[..at].join(" ");
    let source = words[at].rsplit('/').next().unwrap_or(words[at]);
    let rest = words[at + 1..].join(" ");
    // Skip the function's signature: up to the parenthesis that closes its
    // parameter list.
    let mut depth = 0i32;
    let mut end = None;
    for (i, c) in rest.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    end = Some(i + 1);
                    break;
                }
            }
            _ => {}
        }
    }
    let body = end.map_or(rest.as_str(), |e| rest[e..].trim());
    let (check, message) = match body.split_once(" was false.") {
        Some((check, message)) => (Some(check.trim()), message.trim()),
        None => (None, body),
    };
    let message = if message.is_empty() { body } else { message };
    let prefix = if prefix.is_empty() {
        String::new()
    } else {
        format!("{prefix} ")
    };
    match check {
        Some(check) => format!("{prefix}{message} (ONNX Runtime's check `{check}` in {source})"),
        None => format!("{prefix}{message} (in ONNX Runtime's {source})"),
    }
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

#[cfg(test)]
mod runtime_text_tests {
    use super::runtime_text;

    #[test]
    fn onnx_runtime_checks_become_one_readable_line() {
        let raw = "Exception during initialization: /onnxruntime_src/onnxruntime/core/framework/session_state_utils.cc:294 \
onnxruntime::common::Status onnxruntime::session_state_utils::SaveInitializedTensors(const onnxruntime::Env&, \
const std::vector<int>&, const MemoryProfileFunction&) ort_value_name_idx_map.MaxIdx() > -1 was false. \
OrtValue indexes should have been populated.";
        assert_eq!(
            runtime_text(raw),
            "Exception during initialization: OrtValue indexes should have been populated. \
(ONNX Runtime's check `ort_value_name_idx_map.MaxIdx() > -1` in session_state_utils.cc:294)"
        );
        assert_eq!(
            runtime_text("Invalid rank\nfor input"),
            "Invalid rank for input"
        );
    }
}
