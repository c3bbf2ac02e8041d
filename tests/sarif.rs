//! `scan`'s SARIF output checked against the SARIF 2.1.0 JSON schema
//! (tests/data/sarif-schema-2.1.0.json, see tests/data/README.md) by a real
//! validator: Python's `jsonschema`, installed into `.venv` by tools/setup.sh.

use std::path::Path;
use std::process::{Command, Output};

use ibau::scan::sarif::to_sarif;
use ibau::scan::ScanReport;
use serde_json::Value;

use crate::common;

/// Validates the document at argv[2] against the schema at argv[1] with the
/// validator the schema's `$schema` names, formats included; prints the
/// validator's name, then one line per error.
const VALIDATE: &str = r#"
import json, sys, jsonschema
schema = json.load(open(sys.argv[1]))
doc = json.load(open(sys.argv[2]))
cls = jsonschema.validators.validator_for(schema)
cls.check_schema(schema)
print(cls.__name__)
errors = list(cls(schema, format_checker=cls.FORMAT_CHECKER).iter_errors(doc))
for e in errors:
    print(e.json_path, e.message)
sys.exit(1 if errors else 0)
"#;

/// A report as `ibau scan --json` writes it: one clean, one backdoored and
/// one unscannable model, and a skipped file.
const REPORT: &str = r#"{
  "schema": 1, "tool": "ibau", "version": "0.1.0",
  "models": [
    {"file": "models/clean.onnx", "sha256": "aa", "verdict": "clean", "targets": [],
     "statistic": 1.3, "threshold": 2.0, "clean": "c.gz[0:500]", "clean_samples": 500,
     "seconds": 12.0},
    {"file": "./models/bad net.onnx", "sha256": "bb", "verdict": "backdoor", "targets": [5, 0],
     "statistic": 7.25, "threshold": 2.0, "clean": "c.gz[0:500]", "clean_samples": 500,
     "seconds": 14.0},
    {"file": "/srv/models/broken.onnx", "verdict": "error", "targets": [], "seconds": 0.1,
     "error": "node `conv_3` (Conv), attribute `pads`: expected 4 values, got 2"}
  ],
  "skipped": [{"file": "models/notes.txt", "reason": "not a model"}]
}"#;

fn validate(dir: &Path, name: &str, doc: &Value) -> Output {
    let python = common::python();
    assert!(
        python.exists(),
        "{} is missing: run tools/setup.sh",
        python.display()
    );
    let path = dir.join(name);
    std::fs::write(&path, serde_json::to_string_pretty(doc).unwrap()).unwrap();
    let schema = common::root().join("tests/data/sarif-schema-2.1.0.json");
    let out = Command::new(python)
        .arg("-c")
        .arg(VALIDATE)
        .arg(&schema)
        .arg(&path)
        .output()
        .expect("python runs");
    assert!(
        !common::stderr(&out).contains("No module named 'jsonschema'"),
        "jsonschema is missing from .venv: run tools/setup.sh"
    );
    out
}

#[test]
fn scan_sarif_validates_against_the_sarif_schema() {
    let report: ScanReport = serde_json::from_str(REPORT).unwrap();
    let doc = serde_json::to_value(to_sarif(&report)).unwrap();
    let results = doc["runs"][0]["results"].as_array().unwrap();
    assert_eq!(results.len(), 2, "no result for the clean model: {doc:#}");

    let dir = tempfile::tempdir().unwrap();
    let out = validate(dir.path(), "scan.sarif", &doc);
    let stdout = common::stdout(&out);
    assert!(
        out.status.success(),
        "{stdout}{}\n{doc:#}",
        common::stderr(&out)
    );
    assert_eq!(stdout.trim(), "Draft7Validator", "the schema's $schema");
}

/// Asserts that the validator rejects `doc` with an error line containing
/// `expected`.
fn assert_rejected(dir: &Path, name: &str, doc: &Value, expected: &str) {
    let out = validate(dir, name, doc);
    let stdout = common::stdout(&out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{stdout}{}",
        common::stderr(&out)
    );
    assert!(stdout.contains(expected), "{stdout}");
}

#[test]
fn the_validator_rejects_a_broken_sarif_document() {
    let report: ScanReport = serde_json::from_str(REPORT).unwrap();
    let doc = serde_json::to_value(to_sarif(&report)).unwrap();
    let dir = tempfile::tempdir().unwrap();

    let mut no_version = doc.clone();
    no_version.as_object_mut().unwrap().remove("version");
    let expected = "'version' is a required property";
    assert_rejected(dir.path(), "no_version.sarif", &no_version, expected);

    // Deep in the document too: a level outside the schema's enum.
    let mut bad_level = doc;
    bad_level["runs"][0]["results"][0]["level"] = "fatal".into();
    let expected = "$.runs[0].results[0].level";
    assert_rejected(dir.path(), "bad_level.sarif", &bad_level, expected);
}
