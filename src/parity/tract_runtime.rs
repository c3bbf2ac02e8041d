//! tract as a second, independent runtime for `ibau verify`.

use std::path::Path;

use tch::{Kind, Tensor};
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;

use super::{to_vec, ParityError};

/// How long `verify` waits for tract: its optimiser is superlinear in the
/// graph's length (measured: 400 nodes 2.3 s, 2000 nodes over 120 s).
/// `IBAU_TRACT_SECONDS` sets it (default 60).
pub fn time_budget() -> std::time::Duration {
    let seconds = std::env::var("IBAU_TRACT_SECONDS")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(60);
    std::time::Duration::from_secs(seconds)
}

/// [`run`] in a thread, given up (and reported as an error) after `budget`.
/// The thread cannot be stopped; it ends with the process.
pub fn run_within(
    path: &Path,
    inputs: &[Tensor],
    budget: std::time::Duration,
) -> Result<Vec<Tensor>, ParityError> {
    let (send, receive) = std::sync::mpsc::channel();
    let owned_path = path.to_path_buf();
    let owned: Vec<Tensor> = inputs.iter().map(Tensor::copy).collect();
    std::thread::Builder::new()
        .name("tract".into())
        .spawn(move || {
            let _ = send.send(run(&owned_path, &owned));
        })
        .map_err(|e| ParityError::Tract {
            path: path.display().to_string(),
            message: format!("cannot start a thread: {e}"),
        })?;
    let gave_up = |message: String| ParityError::Tract {
        path: path.display().to_string(),
        message,
    };
    match receive.recv_timeout(budget) {
        Ok(result) => result,
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err(gave_up(format!(
            "gave up after {} s (tract's optimiser is slow on long graphs; IBAU_TRACT_SECONDS sets the budget)",
            budget.as_secs()
        ))),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            Err(gave_up("tract failed inside (a panic)".into()))
        }
    }
}

/// Runs `path` with tract on float32 `inputs`; outputs as f64 tch tensors.
pub fn run(path: &Path, inputs: &[Tensor]) -> Result<Vec<Tensor>, ParityError> {
    let err = |e: &dyn std::fmt::Display| ParityError::Tract {
        path: path.display().to_string(),
        message: format!("{e:#}"),
    };
    let mut model = match stripped_of_declared_shapes(path) {
        // Exporters' value_info (and symbolic output shapes) can contradict
        // the concrete batch we feed; tract then refuses to unify them. The
        // graph determines the shapes: give tract the file without them.
        Some(bytes) => tract_onnx::onnx().model_for_read(&mut bytes.as_slice()),
        None => tract_onnx::onnx().model_for_path(path),
    }
    .map_err(|e| err(&e))?;
    let mut values = TVec::new();
    for (i, input) in inputs.iter().enumerate() {
        // Float16 inputs are fed as float16; everything else as float32.
        let half = model
            .input_fact(i)
            .ok()
            .and_then(|f| f.datum_type.concretize())
            == Some(f16::datum_type());
        let (tensor, dt, shape) = if half {
            let (shape, data) = to_vec::<f16>(input, Kind::Half)?;
            let t = tract_ndarray::ArrayD::from_shape_vec(shape.clone(), data)
                .map_err(|e| err(&e))?
                .into_tensor();
            (t, f16::datum_type(), shape)
        } else {
            let (shape, data) = to_vec::<f32>(input, Kind::Float)?;
            let t = tract_ndarray::ArrayD::from_shape_vec(shape.clone(), data)
                .map_err(|e| err(&e))?
                .into_tensor();
            (t, f32::datum_type(), shape)
        };
        model = model
            .with_input_fact(i, InferenceFact::dt_shape(dt, shape))
            .map_err(|e| err(&e))?;
        values.push(tensor.into_tvalue());
    }
    let plan = model
        .into_optimized()
        .and_then(|m| m.into_runnable())
        .map_err(|e| err(&e))?;
    let outputs = plan.run(values).map_err(|e| err(&e))?;
    outputs
        .iter()
        .map(|value| {
            let value = value.cast_to::<f64>().map_err(|e| err(&e))?;
            let view = value.to_plain_array_view::<f64>().map_err(|e| err(&e))?;
            let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
            let data: Vec<f64> = view.iter().copied().collect();
            Ok(Tensor::f_from_slice(&data)?.f_view(shape.as_slice())?)
        })
        .collect()
}

/// The model file without `value_info` and output shapes, when it has no
/// external data (tract reads external data relative to a path).
fn stripped_of_declared_shapes(path: &Path) -> Option<Vec<u8>> {
    use prost::Message;
    let bytes = std::fs::read(path).ok()?;
    let mut model = crate::onnx::proto::ModelProto::decode(bytes.as_slice()).ok()?;
    let graph = model.graph.as_mut()?;
    if graph.initializer.iter().any(|t| t.data_location == Some(1)) {
        return None;
    }
    graph.value_info.clear();
    for output in &mut graph.output {
        if let Some(crate::onnx::proto::type_proto::Value::TensorType(t)) =
            output.r#type.as_mut().and_then(|t| t.value.as_mut())
        {
            t.shape = None;
        }
    }
    Some(model.encode_to_vec())
}
