//! Export: the trained parameters written back into the original ModelProto.
//! Only the data of the trained initializers changes; their element type and
//! storage form (raw_data or typed field, inline or external) stay, and every
//! other field of the file decodes identical.

use std::path::{Path, PathBuf};

use crate::graph::Parameters;
use crate::onnx::{write_tensor_data, Model, OnnxError, TensorError};

/// Errors writing a trained model.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("parameter `{0}` has no initializer of that name in the model")]
    MissingInitializer(String),
    #[error("{0}")]
    Tensor(#[from] TensorError),
    #[error("{0}")]
    Onnx(#[from] OnnxError),
    #[error("parity check of the written file failed, nothing was written: {0}")]
    Parity(String),
    #[error("{0}")]
    TorchScript(#[from] crate::torchscript::TorchScriptError),
}

/// A copy of `model` with every parameter's current value written into its
/// initializer.
pub fn with_parameters(model: &Model, params: &Parameters) -> Result<Model, ExportError> {
    let mut out = model.clone();
    let graph = out
        .proto
        .graph
        .as_mut()
        .expect("a loaded model has a graph");
    for (name, tensor) in params.names.iter().zip(&params.tensors) {
        let init = graph
            .initializer
            .iter_mut()
            .find(|t| t.name() == name)
            .ok_or_else(|| ExportError::MissingInitializer(name.clone()))?;
        write_tensor_data(init, &tensor.detach())?;
    }
    Ok(out)
}

/// Writes `model` to `output` only if `check` accepts the written file (see
/// [`write_checked_with`]).
pub fn write_checked<T>(
    model: &Model,
    output: &Path,
    check: impl FnOnce(&Path) -> Result<T, String>,
) -> Result<T, ExportError> {
    write_checked_with(&model.path, output, |p| Ok(model.save(p)?), check)
}

/// Writes a model with `save` to `output` only if `check` accepts the written
/// file: `save` writes into a temporary folder beside `output` (with any
/// companion files, such as external data, next to it), `check` runs there,
/// then the companions and finally the model are moved into place. On any
/// failure nothing is left at `output`. Never writes onto `input`.
pub fn write_checked_with<T>(
    input: &Path,
    output: &Path,
    save: impl FnOnce(&Path) -> Result<(), ExportError>,
    check: impl FnOnce(&Path) -> Result<T, String>,
) -> Result<T, ExportError> {
    crate::onnx::refuse_input_path(input, output)?;
    let dir = match output.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let io = |source| OnnxError::Io {
        path: output.to_path_buf(),
        source,
    };
    let staging = dir.join(format!(".ibau-staging-{}", std::process::id()));
    std::fs::create_dir_all(&staging).map_err(io)?;
    let name = output.file_name().ok_or_else(|| OnnxError::Refused {
        path: output.to_path_buf(),
        reason: "the output path has no file name".into(),
    })?;
    let staged = staging.join(name);
    let result = (|| {
        save(&staged)?;
        let value = check(&staged).map_err(ExportError::Parity)?;
        // Companion files first, so the model never points at a missing file.
        for entry in std::fs::read_dir(&staging).map_err(io)? {
            let entry = entry.map_err(io)?;
            if entry.file_name() != name {
                crate::onnx::refuse_input_path(input, &dir.join(entry.file_name()))?;
                std::fs::rename(entry.path(), dir.join(entry.file_name())).map_err(io)?;
            }
        }
        std::fs::rename(&staged, output).map_err(io)?;
        Ok(value)
    })();
    let _ = std::fs::remove_dir_all(&staging);
    result
}
