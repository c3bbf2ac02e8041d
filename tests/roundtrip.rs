//! Decode -> encode -> decode of every libonnx-testdata model loses nothing:
//! no field of any file is unknown to proto/onnx.proto (checked with a
//! schema-aware decoder that keeps unknown fields), the two decodes are equal,
//! and Python's onnx.checker accepts a sample of the re-encoded files.

use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, Value};

use ibau::onnx::proto::ModelProto;

use crate::common;

/// Paths of unknown fields inside `msg` (empty when the schema knows every field).
fn unknown_fields(msg: &DynamicMessage, path: &str, found: &mut Vec<String>) {
    for field in msg.unknown_fields() {
        found.push(format!("{path}: field number {}", field.number()));
    }
    for (desc, value) in msg.fields() {
        let here = format!("{path}.{}", desc.name());
        match value {
            Value::Message(m) => unknown_fields(m, &here, found),
            Value::List(items) => {
                for (i, item) in items.iter().enumerate() {
                    if let Value::Message(m) = item {
                        unknown_fields(m, &format!("{here}[{i}]"), found);
                    }
                }
            }
            _ => {}
        }
    }
}

#[test]
fn every_testdata_model_round_trips_without_loss() {
    let pool = DescriptorPool::decode(ibau::onnx::DESCRIPTOR_SET).expect("descriptor set");
    let model_desc = pool
        .get_message_by_name("onnx.ModelProto")
        .expect("ModelProto");
    let models = common::testdata_models();
    assert!(
        models.len() >= 1000,
        "expected the full test data, found {} models",
        models.len()
    );

    let mut byte_exact = 0;
    let mut failures = Vec::new();
    let sample_dir = tempfile::tempdir().unwrap();
    let mut sample = Vec::new();
    for (i, path) in models.iter().enumerate() {
        let bytes = std::fs::read(path).unwrap();
        let first = match ModelProto::decode(bytes.as_slice()) {
            Ok(m) => m,
            Err(e) => {
                failures.push(format!("{}: decode: {e}", path.display()));
                continue;
            }
        };
        let encoded = first.encode_to_vec();
        let second = ModelProto::decode(encoded.as_slice()).unwrap();
        if first != second {
            failures.push(format!("{}: second decode differs", path.display()));
        }
        if encoded == bytes {
            byte_exact += 1;
        }
        let dynamic = DynamicMessage::decode(model_desc.clone(), bytes.as_slice()).unwrap();
        let mut unknown = Vec::new();
        unknown_fields(&dynamic, "ModelProto", &mut unknown);
        if !unknown.is_empty() {
            failures.push(format!(
                "{}: fields unknown to our schema: {unknown:?}",
                path.display()
            ));
        }
        // Re-encoded files are the ones onnx.checker must accept: every 25th.
        if i % 25 == 0 {
            let out = sample_dir.path().join(format!("{i}.onnx"));
            std::fs::write(&out, &encoded).unwrap();
            sample.push(out);
        }
    }
    eprintln!(
        "round trip: {} models, {} failures, {byte_exact} re-encoded byte for byte",
        models.len(),
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    let script = "import sys, onnx\nfor p in sys.argv[1:]:\n    onnx.checker.check_model(onnx.load(p))\nprint(len(sys.argv) - 1)";
    let out = std::process::Command::new(common::python())
        .arg("-c")
        .arg(script)
        .args(&sample)
        .output()
        .expect("the project's Python runs (tools/setup.sh)");
    assert!(
        out.status.success(),
        "onnx.checker rejected a re-encoded file:\n{}",
        common::stderr(&out)
    );
    eprintln!(
        "onnx.checker accepted {} re-encoded models",
        common::stdout(&out).trim()
    );
}
