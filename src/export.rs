//! Export: the trained parameters written back into the original ModelProto.
//! Only the data of the trained initializers changes; their element type and
//! storage form (raw_data or typed field, inline or external) stay, and every
//! other field of the file decodes identical.

use std::path::Path;

use crate::graph::Parameters;
use crate::onnx::{write_tensor_data, Model, OnnxError, TensorError};
use crate::outputs::OutputPlan;

/// Errors writing a trained model.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("parameter `{0}` has no initializer of that name in the model")]
    MissingInitializer(String),
    #[error("{0}")]
    Tensor(#[from] TensorError),
    #[error("{0}")]
    Onnx(#[from] OnnxError),
    #[error("parity check of `{path}` failed, nothing was written: {source}")]
    Parity {
        path: std::path::PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{0}")]
    TorchScript(#[from] crate::torchscript::TorchScriptError),
    #[error("{0}")]
    Output(#[from] crate::outputs::OutputError),
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

/// Writes `model` to the plan's model path only if `check` accepts the
/// written file (see [`write_checked_with`]).
pub fn write_checked<T, E: Into<Box<dyn std::error::Error + Send + Sync>>>(
    model: &Model,
    plan: &OutputPlan,
    check: impl FnOnce(&Path) -> Result<T, E>,
) -> Result<T, ExportError> {
    write_checked_with(plan, |p| Ok(model.save(p)?), check)
}

/// Writes a model with `save` only if `check` accepts the written file:
/// `save` writes into the plan's staging folder (with its external-data
/// companion, if any, next to it), `check` runs there, then the companion
/// and finally the model are moved into place. The plan has checked both
/// paths against every input before any work. On any failure nothing is
/// left at the output.
pub fn write_checked_with<T, E: Into<Box<dyn std::error::Error + Send + Sync>>>(
    plan: &OutputPlan,
    save: impl FnOnce(&Path) -> Result<(), ExportError>,
    check: impl FnOnce(&Path) -> Result<T, E>,
) -> Result<T, ExportError> {
    let io = |path: &Path, source| OnnxError::Io {
        path: path.to_path_buf(),
        source,
    };
    let name = plan.model.file_name().ok_or_else(|| OnnxError::Refused {
        path: plan.model.clone(),
        reason: "the output path has no file name".into(),
    })?;
    let staged = plan.staging().join(name);
    let companion_name = plan.companion.file_name();
    let result = (|| {
        save(&staged)?;
        let value = check(&staged).map_err(|source| ExportError::Parity {
            path: plan.model.clone(),
            source: source.into(),
        })?;
        // The companion first, so the model never points at a missing file.
        for entry in std::fs::read_dir(plan.staging()).map_err(|e| io(plan.staging(), e))? {
            let entry = entry.map_err(|e| io(plan.staging(), e))?;
            let entry_name = entry.file_name();
            if entry_name == name {
                continue;
            }
            if Some(entry_name.as_os_str()) != companion_name {
                return Err(OnnxError::Refused {
                    path: entry.path(),
                    reason: "the writer made a file the output plan did not check".into(),
                }
                .into());
            }
            std::fs::rename(entry.path(), &plan.companion).map_err(|e| io(&plan.companion, e))?;
        }
        std::fs::rename(&staged, &plan.model).map_err(|e| io(&plan.model, e))?;
        Ok(value)
    })();
    if result.is_err() {
        // Whatever was staged goes; the plan removes the folder itself.
        if let Ok(entries) = std::fs::read_dir(plan.staging()) {
            for entry in entries.flatten() {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    result
}
