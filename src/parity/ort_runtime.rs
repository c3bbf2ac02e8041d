//! ONNX Runtime through ort, loaded at run time from the onnxruntime wheel of
//! the project's virtual environment (`ORT_DYLIB_PATH` overrides).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::session::Session;
use ort::value::{DynValue, TensorElementType, ValueType};
use tch::{Kind, Tensor};

use super::{to_vec, ParityError};

static ENVIRONMENT: OnceLock<Result<ort::environment::Environment, String>> = OnceLock::new();

/// The onnxruntime shared library: `ORT_DYLIB_PATH`, else the one found in
/// the virtual environment when ibau was built.
pub fn library_path() -> Result<PathBuf, ParityError> {
    let path = std::env::var_os("ORT_DYLIB_PATH")
        .map(PathBuf::from)
        .or_else(|| {
            let baked = env!("IBAU_ORT_DYLIB");
            (!baked.is_empty()).then(|| PathBuf::from(baked))
        })
        .ok_or_else(|| {
            ParityError::OrtLibrary(
                "set ORT_DYLIB_PATH to libonnxruntime.so.1.N.M, or run tools/setup.sh and rebuild"
                    .into(),
            )
        })?;
    // ort panics when the file cannot be loaded: check first.
    if !path.is_file() {
        return Err(ParityError::OrtLibrary(format!(
            "`{}` does not exist (set ORT_DYLIB_PATH, or run tools/setup.sh)",
            path.display()
        )));
    }
    Ok(path)
}

fn environment() -> Result<&'static ort::environment::Environment, ParityError> {
    let env = ENVIRONMENT.get_or_init(|| {
        let path = library_path().map_err(|e| e.to_string())?;
        ort::init_from(&path)
            .map_err(|e| format!("loading `{}`: {e}", path.display()))?
            .with_name("ibau")
            // ONNX Runtime's own log lines (coloured warnings about the
            // file) would break the one-line error rule; its errors come
            // back through the API and are reported there.
            .with_logger(std::sync::Arc::new(|_, _, _, _, _| {}))
            .build()
            .map_err(|e| e.to_string())
    });
    env.as_ref().map_err(|e| ParityError::OrtLibrary(e.clone()))
}

/// An ONNX Runtime session on one model file (CPU execution provider).
pub struct OrtSession {
    session: Session,
    path: String,
    input_types: Vec<Option<TensorElementType>>,
}

impl OrtSession {
    pub fn open(path: &Path) -> Result<OrtSession, ParityError> {
        let env = environment()?;
        let err = |e: &dyn std::fmt::Display| ParityError::Ort {
            path: path.display().to_string(),
            message: super::runtime_text(&e.to_string()),
        };
        let session = Session::builder(env)
            .map_err(|e| err(&e))?
            .commit_from_file(path)
            .map_err(|e| err(&e))?;
        let input_types = session
            .inputs()
            .iter()
            .map(|i| match i.dtype() {
                ValueType::Tensor { ty, .. } => Some(*ty),
                _ => None,
            })
            .collect();
        Ok(OrtSession {
            session,
            path: path.display().to_string(),
            input_types,
        })
    }

    fn err(&self, e: impl std::fmt::Display) -> ParityError {
        ParityError::Ort {
            path: self.path.clone(),
            message: super::runtime_text(&e.to_string()),
        }
    }

    /// Runs the model; inputs are converted to the element types the model
    /// declares. Float outputs come back as f64 tensors, integer ones as int64.
    pub fn run(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>, ParityError> {
        let mut values: Vec<(String, DynValue)> = Vec::new();
        for ((input, outlet), ty) in inputs
            .iter()
            .zip(self.session.inputs())
            .zip(&self.input_types)
        {
            let value: DynValue = match ty {
                Some(TensorElementType::Float64) => {
                    ort::value::Tensor::from_array(to_vec::<f64>(input, Kind::Double)?)
                        .map(|t| t.into_dyn())
                }
                Some(TensorElementType::Float16) => {
                    ort::value::Tensor::from_array(to_vec::<half::f16>(input, Kind::Half)?)
                        .map(|t| t.into_dyn())
                }
                Some(TensorElementType::Bfloat16) => {
                    ort::value::Tensor::from_array(to_vec::<half::bf16>(input, Kind::BFloat16)?)
                        .map(|t| t.into_dyn())
                }
                Some(TensorElementType::Int64) => {
                    ort::value::Tensor::from_array(to_vec::<i64>(input, Kind::Int64)?)
                        .map(|t| t.into_dyn())
                }
                Some(TensorElementType::Int32) => {
                    ort::value::Tensor::from_array(to_vec::<i32>(input, Kind::Int)?)
                        .map(|t| t.into_dyn())
                }
                Some(TensorElementType::Uint8) => {
                    ort::value::Tensor::from_array(to_vec::<u8>(input, Kind::Uint8)?)
                        .map(|t| t.into_dyn())
                }
                _ => ort::value::Tensor::from_array(to_vec::<f32>(input, Kind::Float)?)
                    .map(|t| t.into_dyn()),
            }
            .map_err(|e| self.err(e))?;
            values.push((outlet.name().to_string(), value));
        }
        let path = self.path.clone();
        let err = |e: &dyn std::fmt::Display| ParityError::Ort {
            path: path.clone(),
            message: super::runtime_text(&e.to_string()),
        };
        let outputs = self.session.run(values).map_err(|e| err(&e))?;
        let mut result = Vec::new();
        for (_, value) in outputs.iter() {
            let tensor = if let Ok((shape, data)) = value.try_extract_tensor::<f32>() {
                Tensor::f_from_slice(data)?
                    .f_view(shape.as_ref())?
                    .f_to_kind(Kind::Double)?
            } else if let Ok((shape, data)) = value.try_extract_tensor::<f64>() {
                Tensor::f_from_slice(data)?.f_view(shape.as_ref())?
            } else if let Ok((shape, data)) = value.try_extract_tensor::<half::f16>() {
                Tensor::f_from_slice(data)?
                    .f_view(shape.as_ref())?
                    .f_to_kind(Kind::Double)?
            } else if let Ok((shape, data)) = value.try_extract_tensor::<half::bf16>() {
                Tensor::f_from_slice(data)?
                    .f_view(shape.as_ref())?
                    .f_to_kind(Kind::Double)?
            } else if let Ok((shape, data)) = value.try_extract_tensor::<i64>() {
                Tensor::f_from_slice(data)?.f_view(shape.as_ref())?
            } else if let Ok((shape, data)) = value.try_extract_tensor::<bool>() {
                let bytes: Vec<u8> = data.iter().map(|&b| b as u8).collect();
                Tensor::f_from_slice(&bytes)?
                    .f_view(shape.as_ref())?
                    .f_to_kind(Kind::Int64)?
            } else {
                return Err(err(&"an output is not a float, int64 or bool tensor"));
            };
            result.push(tensor);
        }
        Ok(result)
    }
}
