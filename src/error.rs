//! The library's error: one variant per layer, each keeping its source, so
//! that `main` prints the chain once (`a: b: c`) and callers can match on
//! what failed.

use std::path::PathBuf;

/// Everything a library call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Onnx(#[from] crate::onnx::OnnxError),
    #[error(transparent)]
    Tensor(#[from] crate::onnx::TensorError),
    #[error(transparent)]
    Graph(Box<crate::graph::GraphError>),
    #[error("importing `{path}`: {source}")]
    Import {
        path: PathBuf,
        #[source]
        source: Box<crate::graph::GraphError>,
    },
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    #[error(transparent)]
    Train(#[from] crate::ibau::TrainError),
    #[error(transparent)]
    Parity(#[from] crate::parity::ParityError),
    #[error(transparent)]
    Export(#[from] crate::export::ExportError),
    #[error(transparent)]
    TorchScript(#[from] crate::torchscript::TorchScriptError),
    #[error(transparent)]
    Output(#[from] crate::outputs::OutputError),
    #[error(transparent)]
    Merge(#[from] crate::scan::merge::MergeError),
    #[error(transparent)]
    Limit(#[from] crate::limits::LimitError),
    #[error(transparent)]
    Torch(#[from] tch::TchError),
    /// A model, its data and the options do not fit together (several
    /// inputs, labels beyond the model's classes, no layout that fits...).
    #[error("{0}")]
    Model(String),
}

impl From<crate::graph::GraphError> for Error {
    fn from(e: crate::graph::GraphError) -> Self {
        Error::Graph(Box::new(e))
    }
}

impl Error {
    /// An import error of the model at `path`.
    pub fn import(path: &std::path::Path, source: crate::graph::GraphError) -> Error {
        Error::Import {
            path: path.to_path_buf(),
            source: Box::new(source),
        }
    }
}

/// `Result` with the library's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `return Err(Error::Model(format!(...)))`.
macro_rules! bail {
    ($($arg:tt)*) => {
        return Err($crate::Error::Model(format!($($arg)*)))
    };
}
pub(crate) use bail;
