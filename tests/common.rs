//! Shared helpers of the integration tests.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ibau::onnx::proto::{tensor_shape_proto::Dimension, type_proto, ModelProto, ValueInfoProto};
use prost::Message;

/// The ONNX backend test data of Debian's libonnx-testdata.
pub const TESTDATA: &str = "/usr/share/libonnx-testdata/data";

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A checked-in fixture under models/.
pub fn fixture(name: &str) -> PathBuf {
    root().join("models").join(name)
}

/// Every checked-in ONNX fixture under models/, sorted. The `attack_*`
/// fixtures (tools/make_attack_fixtures.py) share one architecture and
/// exporter, so only `attack_wanet.onnx` stands for them here.
pub fn onnx_fixtures() -> Vec<PathBuf> {
    let mut all: Vec<PathBuf> = std::fs::read_dir(root().join("models"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "onnx"))
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            !name.starts_with("attack_") || name == "attack_wanet.onnx"
        })
        .collect();
    all.sort();
    assert!(all.len() >= 5, "fixtures missing: {all:?}");
    all
}

/// The I-BAU authors' poisoned CIFAR-10 model, when this checkout has the
/// shared folder beside it.
pub fn authors_model() -> Option<PathBuf> {
    let p = root().join("../shared/models/authors/cifar10_badnets_small_vgg16.onnx");
    p.exists().then_some(p)
}

/// Every `model.onnx` of the backend test data, sorted. Fails loudly when the
/// package is missing: a test that silently passes without data proves nothing.
pub fn testdata_models() -> Vec<PathBuf> {
    assert!(
        Path::new(TESTDATA).is_dir(),
        "{TESTDATA} is missing: run tools/setup.sh (installs Debian's libonnx-testdata)"
    );
    let mut models = Vec::new();
    for folder in ["node", "pytorch-converted", "pytorch-operator", "simple"] {
        let Ok(entries) = std::fs::read_dir(Path::new(TESTDATA).join(folder)) else {
            continue;
        };
        for entry in entries.flatten() {
            let model = entry.path().join("model.onnx");
            if model.exists() {
                models.push(model);
            }
        }
    }
    models.sort();
    models
}

/// The project's Python (torch, onnx, onnxruntime), made by tools/setup.sh.
pub fn python() -> PathBuf {
    root().join(".venv/bin/python")
}

/// Runs the `ibau` binary with `args`.
pub fn ibau(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ibau"))
        .args(args)
        .output()
        .expect("the ibau binary runs")
}

/// stderr of a finished command, as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// stdout of a finished command, as text.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A checked-in fixture, decoded for editing.
pub fn decode_fixture(name: &str) -> ModelProto {
    let bytes = std::fs::read(fixture(name)).unwrap();
    ModelProto::decode(bytes.as_slice()).unwrap()
}

/// Writes an edited model into `dir`.
pub fn write_model(dir: &Path, name: &str, proto: &ModelProto) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, proto.encode_to_vec()).unwrap();
    path
}

/// The declared dimensions of a tensor value.
pub fn dims_mut(value: &mut ValueInfoProto) -> &mut Vec<Dimension> {
    let Some(type_proto::Value::TensorType(t)) = value.r#type.as_mut().unwrap().value.as_mut()
    else {
        panic!("not a tensor value")
    };
    &mut t.shape.as_mut().unwrap().dim
}
