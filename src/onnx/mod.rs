//! The ONNX edge of the pipeline: decode and encode `ModelProto` (our own
//! complete schema in proto/onnx.proto), resolve and write external data, and
//! convert `TensorProto` to and from `tch::Tensor`. Nothing after import sees
//! protobuf types, except the exporter that writes trained weights back.

pub mod build;
pub mod dtype;
pub mod external;
pub mod tensor;

use std::path::{Path, PathBuf};

use prost::Message;

pub use dtype::DataType;
pub use tensor::{tensor_from_proto, write_tensor_data, TensorError};

/// The generated protobuf types.
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
}

/// The encoded `FileDescriptorSet` of proto/onnx.proto, for schema-aware tests.
pub const DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/onnx_descriptor.bin"));

use proto::ModelProto;

/// Errors reading or writing ONNX files.
#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    #[error("`{path}`: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`{path}` is not a valid ONNX model: protobuf decoding failed ({source}); is the file truncated or of another format?")]
    Decode {
        path: PathBuf,
        #[source]
        source: prost::DecodeError,
    },
    #[error("`{path}` is not an ONNX model: {reason}")]
    NotOnnx { path: PathBuf, reason: String },
    #[error("`{model}`, tensor `{tensor}`: external data {reason}")]
    ExternalData {
        model: PathBuf,
        tensor: String,
        reason: String,
    },
    #[error("refusing to write `{path}`: {reason}")]
    Refused { path: PathBuf, reason: String },
}

/// A decoded model with its external data resolved into memory.
///
/// `proto` is the file as decoded, except that tensors stored externally carry
/// their bytes in `raw_data` while loaded; `external` remembers which tensors
/// those were so that saving writes them externally again.
#[derive(Debug, Clone)]
pub struct Model {
    pub proto: ModelProto,
    pub path: PathBuf,
    pub external: external::ExternalTensors,
}

impl Model {
    /// Reads, decodes and checks a model file, loading its external data.
    pub fn load(path: impl AsRef<Path>) -> Result<Model, OnnxError> {
        let path = path.as_ref();
        let io = |source| OnnxError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut file = crate::inputs::open_regular(path).map_err(io)?;
        // Held once as bytes; decoding adds at most about as much again.
        let size = file.metadata().map_err(io)?.len();
        crate::limits::check_bytes(u128::from(size) * 2, "reading and decoding it").map_err(
            |e| {
                io(std::io::Error::new(
                    std::io::ErrorKind::OutOfMemory,
                    e.to_string(),
                ))
            },
        )?;
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut file, &mut bytes).map_err(io)?;
        // One buffer: the initializers' `raw_data` are slices of it.
        let mut proto = decode_model(path, bytes::Bytes::from(bytes))?;
        let dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let external = external::load(&mut proto, path, &dir)?;
        Ok(Model {
            proto,
            path: path.to_path_buf(),
            external,
        })
    }

    /// The external-data files the model reads, each once.
    pub fn external_files(&self) -> Vec<PathBuf> {
        let dir = crate::outputs::parent_folder(&self.path);
        let mut files: Vec<PathBuf> = self
            .external
            .values()
            .flatten()
            .filter(|e| e.key() == "location")
            .filter_map(|e| external::resolve_location(&dir, e.value()).ok())
            .collect();
        files.sort();
        files.dedup();
        files
    }

    /// The graph (every loaded model has one: `decode_model` checks).
    pub fn graph(&self) -> &proto::GraphProto {
        self.proto.graph.as_ref().expect("checked at load")
    }

    /// The opset version of the default (`ai.onnx`) domain.
    pub fn default_opset(&self) -> i64 {
        self.opset("").unwrap_or(1)
    }

    /// The opset version imported for `domain` (`""` and `ai.onnx` are the same).
    pub fn opset(&self, domain: &str) -> Option<i64> {
        let norm = |d: &str| if d == "ai.onnx" { "" } else { d }.to_string();
        self.proto
            .opset_import
            .iter()
            .find(|o| norm(o.domain()) == norm(domain))
            .map(|o| o.version())
    }

    /// Writes the model to `path`, atomically (a temporary file beside it, then
    /// a rename). Tensors that were external in the input are written to
    /// `<file name>.data` beside `path`. Never writes onto `self.path` or onto
    /// any external-data file of the input.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), OnnxError> {
        let path = path.as_ref();
        refuse_input_path(&self.path, path)?;
        let mut proto = self.proto.clone();
        let data_file = external::save(&mut proto, &self.external, &self.path, path)?;
        let bytes = proto.encode_to_vec();
        write_atomically(path, &bytes)?;
        if let Some((data_path, data)) = data_file {
            if let Err(e) = write_atomically(&data_path, &data) {
                let _ = std::fs::remove_file(path);
                return Err(e);
            }
        }
        Ok(())
    }
}

/// Decodes `bytes` as a `ModelProto` and checks that it looks like a model.
pub fn decode_model(path: &Path, bytes: bytes::Bytes) -> Result<ModelProto, OnnxError> {
    let empty = bytes.is_empty();
    let proto = ModelProto::decode(bytes).map_err(|source| OnnxError::Decode {
        path: path.to_path_buf(),
        source,
    })?;
    let not_onnx = |reason: &str| OnnxError::NotOnnx {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    if empty {
        return Err(not_onnx("the file is empty"));
    }
    if proto.ir_version.unwrap_or(0) <= 0 {
        return Err(not_onnx("no IR version (field 1 of ModelProto)"));
    }
    if proto.graph.is_none() {
        return Err(not_onnx("no graph (field 7 of ModelProto)"));
    }
    Ok(proto)
}

/// Fails when `output` is the input model file itself.
pub fn refuse_input_path(input: &Path, output: &Path) -> Result<(), OnnxError> {
    let same = match (input.canonicalize(), output.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if same {
        return Err(OnnxError::Refused {
            path: output.to_path_buf(),
            reason: "it is the input model; choose another output path".into(),
        });
    }
    Ok(())
}

/// The temporary file beside `path` that [`write_atomically`] writes first.
pub fn temporary_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    crate::outputs::parent_folder(path).join(format!(
        ".{name}{}{}",
        crate::outputs::TEMPORARY_MARKER,
        std::process::id()
    ))
}

/// Writes `bytes` to a temporary file beside `path`, then renames it over
/// `path`: readers never see a partly written file.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), OnnxError> {
    crate::outputs::write_atomic(path, bytes).map_err(|e| match e {
        crate::outputs::OutputError::Write { path, source } => OnnxError::Io { path, source },
        other => OnnxError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::other(other.to_string()),
        },
    })
}
