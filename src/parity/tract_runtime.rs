//! tract as a second, independent runtime for `ibau verify`.

use std::path::Path;

use tch::{Kind, Tensor};
use tract_onnx::prelude::*;

use super::{to_vec, ParityError};

/// Runs `path` with tract on float32 `inputs`; outputs as f64 tch tensors.
pub fn run(path: &Path, inputs: &[Tensor]) -> Result<Vec<Tensor>, ParityError> {
    let err = |e: &dyn std::fmt::Display| ParityError::Tract {
        path: path.display().to_string(),
        message: format!("{e:#}"),
    };
    let mut model = tract_onnx::onnx()
        .model_for_path(path)
        .map_err(|e| err(&e))?;
    let mut values = TVec::new();
    for (i, input) in inputs.iter().enumerate() {
        let (shape, data) = to_vec::<f32>(input, Kind::Float)?;
        let tensor = tract_ndarray::ArrayD::from_shape_vec(shape.clone(), data)
            .map_err(|e| err(&e))?
            .into_tensor();
        model = model
            .with_input_fact(i, InferenceFact::dt_shape(f32::datum_type(), shape))
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
