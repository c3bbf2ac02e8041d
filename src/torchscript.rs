//! TorchScript models: files written by `torch.jit.save` of a traced or
//! scripted module, run and differentiated by libtorch's interpreter (tch's
//! `CModule`) with no Python class and no conversion.
//!
//! - [`detect`] tells an ONNX file, a TorchScript archive, a PyTorch state
//!   dict and a pickled `nn.Module` apart by their bytes alone: ibau never
//!   unpickles a file (unpickling runs arbitrary code).
//! - [`TorchScript`] is the module in eval mode with its floating-point
//!   parameters trainable (buffers, such as BatchNorm running statistics, are
//!   not parameters and stay as they are); it implements
//!   [`crate::ibau::Classifier`] so I-BAU runs on it through the
//!   same code as on an imported ONNX graph.
//! - [`TorchScript::save_trained`] writes the original archive again (same
//!   modules, code, parameter names and dtypes, same devices) with only the
//!   trained parameters' values changed.
//!
//! The graph executor's optimisations are switched off when a module is
//! loaded: the module then runs op by op under plain autograd, which is what
//! I-BAU's second derivatives need (the fused differentiable graphs of the
//! profiling executor are not meant for double backward).

use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};

use regex::Regex;
use tch::{CModule, Device, IValue, Kind, TchError, Tensor};

use crate::classifier::Classifier;
use crate::ibau::TrainError;

/// What a model file is, judged from its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// Anything that is not one of the PyTorch formats below; the ONNX loader
    /// decides whether it really is ONNX.
    Onnx,
    /// A `torch.jit.save` archive: a zip with `code/` and `constants.pkl`.
    TorchScript,
    /// A `torch.save` zip archive holding tensors only (a state dict).
    StateDict,
    /// A `torch.save` zip archive of a pickled `nn.Module` (its class is
    /// referenced by name, its code is not in the file).
    PickledModule,
    /// A `torch.save` file in the legacy (pre-1.6) pickle format.
    LegacyPickle,
}

/// Errors of the TorchScript back end.
#[derive(Debug, thiserror::Error)]
pub enum TorchScriptError {
    #[error("`{path}`: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`{path}` is {what}, not a TorchScript or ONNX model; ibau never unpickles files (that would run arbitrary code). {HOW_TO_CONVERT}")]
    NotTorchScript { path: PathBuf, what: &'static str },
    #[error(transparent)]
    Limit(Box<crate::limits::LimitError>),
    #[error("`{path}`: libtorch cannot load it as TorchScript: {source}")]
    Load {
        path: PathBuf,
        #[source]
        source: TchError,
    },
    #[error("`{path}`: {what}: {source}")]
    Torch {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: TchError,
    },
    #[error("`{path}`: `forward` returned {what}; ibau needs a tensor of logits (or a tuple whose first element is one)")]
    Output { path: PathBuf, what: String },
}

const HOW_TO_CONVERT: &str = "In Python, build the model from its class, load the weights, call `model.eval()`, then either \
`torch.jit.save(torch.jit.trace(model, example_input), \"model.pt\")` (or `torch.jit.script(model)`) \
or `torch.onnx.export(model, (example_input,), \"model.onnx\")`, and pass that file to ibau.";

fn io_error(path: &Path) -> impl Fn(std::io::Error) -> TorchScriptError + '_ {
    move |source| TorchScriptError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Tells the PyTorch formats apart from everything else by content: zip
/// archives are looked into (entry names, and the pickle's text for class
/// references), never unpickled.
pub fn detect(path: &Path) -> Result<FileKind, TorchScriptError> {
    let io = io_error(path);
    let mut head = [0u8; 4];
    let mut file = crate::inputs::open_regular(path).map_err(&io)?;
    let n = file.read(&mut head).map_err(&io)?;
    if n >= 2 && head[0] == 0x80 && (2..=5).contains(&head[1]) {
        return Ok(FileKind::LegacyPickle);
    }
    if n < 4 || head != *b"PK\x03\x04" {
        return Ok(FileKind::Onnx);
    }
    let file = crate::inputs::open_regular(path).map_err(&io)?;
    let mut archive = zip::ZipArchive::new(file).map_err(|e| TorchScriptError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()),
    })?;
    let names: Vec<String> = archive.file_names().map(str::to_string).collect();
    let is_entry = |suffix: &str| names.iter().any(|n| n.ends_with(suffix));
    if names.iter().any(|n| n.contains("/code/")) && is_entry("constants.pkl") {
        return Ok(FileKind::TorchScript);
    }
    let Some(data_pkl) = names.iter().find(|n| n.ends_with("data.pkl")).cloned() else {
        // A zip that is no PyTorch archive: let the ONNX loader say what it is not.
        return Ok(FileKind::Onnx);
    };
    let pickle = archive
        .by_name(&data_pkl)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))
        .map_err(&io)?;
    // A pickle names a module's class near its start; a state dict's pickle
    // is read to its end (or to the scan limit) to know it names none.
    let module = mentions_any(
        pickle.take(PICKLE_SCAN_LIMIT),
        &[b"torch.nn.modules", b"__main__", b"_parameters"],
    )
    .map_err(&io)?;
    Ok(if module {
        FileKind::PickledModule
    } else {
        FileKind::StateDict
    })
}

/// Checks what libtorch's loader would inflate before it opens the archive:
/// it reads each record it needs into a buffer of the size the zip's central
/// directory declares, so the sum of the declared sizes (and the largest
/// one, named in the message) must fit the memory budget. Nothing is
/// inflated here.
pub fn check_archive_sizes(path: &Path) -> Result<(), TorchScriptError> {
    let io = io_error(path);
    let invalid = |e: zip::result::ZipError| {
        io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            e.to_string(),
        ))
    };
    let file = crate::inputs::open_regular(path).map_err(&io)?;
    let mut archive = zip::ZipArchive::new(file).map_err(invalid)?;
    let mut total: u128 = 0;
    let mut largest = (0u64, String::new());
    for i in 0..archive.len() {
        let entry = archive.by_index_raw(i).map_err(invalid)?;
        total += u128::from(entry.size());
        if entry.size() >= largest.0 {
            largest = (entry.size(), entry.name().to_string());
        }
    }
    let what = format!(
        "`{}`: loading its archive entries (the largest, `{}`, inflates to {})",
        path.display(),
        largest.1,
        crate::limits::human_bytes(largest.0)
    );
    crate::limits::check_bytes(total, &what).map_err(|e| TorchScriptError::Limit(Box::new(e)))
}

/// How much of an archive's `data.pkl` [`detect`] reads. The pickle holds
/// the structure only (tensor data are other entries), a few KB to a few MB
/// in real files; a larger one is judged by its first 64 MiB, so that a zip
/// bomb posing as a checkpoint is never inflated in full.
const PICKLE_SCAN_LIMIT: u64 = 64 << 20;

/// Whether any of `needles` occurs in `reader`, read in chunks (memory stays
/// one chunk) and no further than the first match.
fn mentions_any(mut reader: impl Read, needles: &[&[u8]]) -> std::io::Result<bool> {
    const CHUNK: usize = 64 << 10;
    // Bytes kept from the previous chunk, so that a match across two is seen.
    let overlap = needles.iter().map(|n| n.len()).max().unwrap_or(1) - 1;
    let mut window = Vec::with_capacity(CHUNK + overlap);
    let mut chunk = vec![0u8; CHUNK];
    loop {
        let n = match reader.read(&mut chunk) {
            Ok(0) => return Ok(false),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        window.extend_from_slice(&chunk[..n]);
        if needles.iter().any(|needle| contains(&window, needle)) {
            return Ok(true);
        }
        window.drain(..window.len().saturating_sub(overlap));
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    // The slice's own byte search (memchr) rules out most chunks quickly.
    let Some(first) = needle.first() else {
        return true;
    };
    haystack.contains(first) && haystack.windows(needle.len()).any(|w| w == needle)
}

/// The error for a PyTorch file that is not TorchScript, if `kind` is one.
pub fn refuse_pickles(path: &Path, kind: FileKind) -> Result<(), TorchScriptError> {
    let what = match kind {
        FileKind::Onnx | FileKind::TorchScript => return Ok(()),
        FileKind::StateDict => "a PyTorch state dict (`torch.save` of tensors, no model graph)",
        FileKind::PickledModule => {
            "a pickled PyTorch nn.Module (`torch.save(model)`: it names a Python class whose code is not in the file)"
        }
        FileKind::LegacyPickle => "a Python pickle (`torch.save` in the legacy format)",
    };
    Err(TorchScriptError::NotTorchScript {
        path: path.to_path_buf(),
        what,
    })
}

/// One parameter of the module.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ParamInfo {
    pub name: String,
    pub shape: Vec<i64>,
    pub dtype: String,
    pub elements: i64,
    pub trainable: bool,
    /// Why a parameter is not trained (`null` when it is).
    pub reason: Option<FrozenParameter>,
}

/// Why a TorchScript parameter is not trained; serialized as its sentence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrozenParameter {
    NotFloat,
    SharedStorage,
    FrozenByOption,
}

impl std::fmt::Display for FrozenParameter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FrozenParameter::NotFloat => "not a float tensor",
            FrozenParameter::SharedStorage => {
                "shares its storage with an earlier parameter (trained once)"
            }
            FrozenParameter::FrozenByOption => "frozen by --freeze",
        })
    }
}

impl serde::Serialize for FrozenParameter {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// A TorchScript module in eval mode, ready for I-BAU.
pub struct TorchScript {
    pub path: PathBuf,
    module: CModule,
    /// Names of the trainable parameters, in `params` order.
    pub names: Vec<String>,
    /// The trainable parameters: the module's own tensors, so training them
    /// changes the module.
    pub params: Vec<Tensor>,
    /// Every parameter with its role.
    pub infos: Vec<ParamInfo>,
    device: Device,
    float_kind: Kind,
}

fn is_float(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16
    )
}

pub fn kind_name(kind: Kind) -> String {
    match kind {
        Kind::Float => "float32".into(),
        Kind::Double => "float64".into(),
        Kind::Half => "float16".into(),
        Kind::BFloat16 => "bfloat16".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}

impl TorchScript {
    /// Loads `path` onto `device` in eval mode. Float parameters are trainable
    /// unless `freeze` matches their name (`train` re-enables a match).
    pub fn load(
        path: &Path,
        device: Device,
        freeze: Option<&Regex>,
        train: Option<&Regex>,
    ) -> Result<TorchScript, TorchScriptError> {
        refuse_pickles(path, detect(path)?)?;
        check_archive_sizes(path)?;
        tch::jit::set_graph_executor_optimize(false);
        let mut module =
            CModule::load_on_device(path, device).map_err(|source| TorchScriptError::Load {
                path: path.to_path_buf(),
                source,
            })?;
        module
            .f_set_eval()
            .map_err(|source| TorchScriptError::Torch {
                path: path.to_path_buf(),
                what: "setting eval mode",
                source,
            })?;
        let named = module
            .named_parameters()
            .map_err(|source| TorchScriptError::Torch {
                path: path.to_path_buf(),
                what: "listing parameters",
                source,
            })?;
        let mut names = Vec::new();
        let mut params = Vec::new();
        let mut infos = Vec::new();
        let mut seen = HashSet::new();
        let mut float_kind = None;
        for (name, tensor) in named {
            let kind = tensor.kind();
            let frozen_by = |r: Option<&Regex>| r.is_some_and(|r| r.is_match(&name));
            let reason = if !is_float(kind) {
                Some(FrozenParameter::NotFloat)
            } else if !seen.insert(tensor.data_ptr() as usize) {
                Some(FrozenParameter::SharedStorage)
            } else if frozen_by(freeze) && !frozen_by(train) {
                Some(FrozenParameter::FrozenByOption)
            } else {
                None
            };
            if reason.is_none() {
                float_kind.get_or_insert(kind);
                let _ = tensor.set_requires_grad(true);
                names.push(name.clone());
                params.push(tensor.shallow_clone());
            } else if is_float(kind) {
                let _ = tensor.set_requires_grad(false);
            }
            infos.push(ParamInfo {
                name,
                shape: tensor.size(),
                dtype: kind_name(kind),
                elements: tensor.numel() as i64,
                trainable: reason.is_none(),
                reason,
            });
        }
        Ok(TorchScript {
            path: path.to_path_buf(),
            module,
            names,
            params,
            infos,
            device,
            float_kind: match float_kind {
                // Inputs are fed in f32 (or f64) even to half-precision
                // modules' callers; the module decides what it accepts.
                Some(Kind::Double) => Kind::Double,
                _ => Kind::Float,
            },
        })
    }

    /// The module's output for `x`: a tensor, or the first tensor of a tuple
    /// or list.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor, TorchScriptError> {
        let out = self
            .module
            .forward_is(&[IValue::Tensor(x.shallow_clone())])
            .map_err(|source| TorchScriptError::Torch {
                path: self.path.clone(),
                what: "running forward",
                source,
            })?;
        let first = match out {
            IValue::Tensor(t) => return Ok(t),
            IValue::Tuple(items) | IValue::GenericList(items) => items.into_iter().next(),
            IValue::TensorList(items) => items.into_iter().next().map(IValue::Tensor),
            other => {
                return Err(TorchScriptError::Output {
                    path: self.path.clone(),
                    what: format!("{other:?}").chars().take(60).collect(),
                })
            }
        };
        match first {
            Some(IValue::Tensor(t)) => Ok(t),
            other => Err(TorchScriptError::Output {
                path: self.path.clone(),
                what: format!(
                    "a sequence whose first element is {}",
                    other.map_or("missing".to_string(), |v| format!("{v:?}")
                        .chars()
                        .take(60)
                        .collect())
                ),
            }),
        }
    }

    /// Writes the original archive again with the trained parameters' values:
    /// the file is reloaded from `self.path` on the devices it was saved for,
    /// each trained parameter is copied in (cast to its dtype), and the module
    /// is saved to `out`.
    pub fn save_trained(&self, out: &Path) -> Result<(), TorchScriptError> {
        let torch = |what: &'static str| {
            move |source| TorchScriptError::Torch {
                path: out.to_path_buf(),
                what,
                source,
            }
        };
        let fresh = CModule::load(&self.path).map_err(|source| TorchScriptError::Load {
            path: self.path.clone(),
            source,
        })?;
        let named = fresh
            .named_parameters()
            .map_err(torch("listing parameters"))?;
        tch::no_grad(|| -> Result<(), TorchScriptError> {
            for (name, mut target) in named {
                if let Some(i) = self.names.iter().position(|n| *n == name) {
                    target
                        .f_copy_(&self.params[i])
                        .map_err(torch("copying a trained parameter"))?;
                }
            }
            Ok(())
        })?;
        fresh.save(out).map_err(torch("saving"))
    }
}

impl Classifier for TorchScript {
    fn logits(&self, x: &Tensor) -> Result<Tensor, TrainError> {
        self.forward(x)
            .map_err(|e| TrainError::Model(e.to_string()))
    }
    fn parameters(&self) -> &[Tensor] {
        &self.params
    }
    fn device(&self) -> Device {
        self.device
    }
    fn float_kind(&self) -> Kind {
        self.float_kind
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn zip_options() -> zip::write::FileOptions {
        zip::write::FileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .compression_level(Some(1))
    }

    fn write_zip(path: &Path, members: &[(&str, &[u8])]) {
        let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
        for (name, bytes) in members {
            zip.start_file(*name, zip_options()).unwrap();
            zip.write_all(bytes).unwrap();
        }
        zip.finish().unwrap();
    }

    #[test]
    fn detect_tells_formats_apart() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.pt");
        type Members<'a> = &'a [(&'a str, &'a [u8])];
        let cases: [(Members, FileKind); 4] = [
            (
                &[("m/code/m.py", b""), ("m/constants.pkl", b"")],
                FileKind::TorchScript,
            ),
            (
                &[("m/data.pkl", b"\x80\x02ctorch._utils\n_rebuild_tensor_v2")],
                FileKind::StateDict,
            ),
            (
                &[("m/data.pkl", b"\x80\x02c__main__\nNet\nq\x00")],
                FileKind::PickledModule,
            ),
            (&[("m/weights.bin", b"")], FileKind::Onnx),
        ];
        for (members, kind) in cases {
            write_zip(&p, members);
            assert_eq!(detect(&p).unwrap(), kind, "{:?}", members[0].0);
        }
        std::fs::write(&p, b"\x80\x02}q\x00.").unwrap();
        assert_eq!(detect(&p).unwrap(), FileKind::LegacyPickle);
        std::fs::write(&p, b"\x08\x07\x12\x04onnx").unwrap();
        assert_eq!(detect(&p).unwrap(), FileKind::Onnx);
    }

    #[test]
    fn mentions_are_found_across_chunks() {
        let needles: &[&[u8]] = &[b"torch.nn.modules", b"__main__"];
        for at in [0, (64 << 10) - 3, (64 << 10) + 5, 200_000] {
            let mut pickle = vec![0u8; 300_000];
            pickle[at..at + 8].copy_from_slice(b"__main__");
            assert!(mentions_any(&pickle[..], needles).unwrap(), "at {at}");
        }
        assert!(!mentions_any(&[0u8; 300_000][..], needles).unwrap());
    }

    /// A `.pt` zip bomb: a `data.pkl` of 65 MiB of zeros (under 1 MB
    /// compressed), then a class reference. Detection reads the first 64 MiB
    /// only, so it never sees the reference (reading it all did, after
    /// inflating it whole).
    #[test]
    fn detect_reads_a_bounded_prefix_of_data_pkl() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bomb.pt");
        let mut zip = zip::ZipWriter::new(std::fs::File::create(&p).unwrap());
        zip.start_file("bomb/data.pkl", zip_options()).unwrap();
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..(PICKLE_SCAN_LIMIT >> 20) + 1 {
            zip.write_all(&zeros).unwrap();
        }
        zip.write_all(b"c__main__\nNet\n").unwrap();
        zip.finish().unwrap();
        assert!(std::fs::metadata(&p).unwrap().len() < 1 << 20);
        assert_eq!(detect(&p).unwrap(), FileKind::StateDict);
    }
}
