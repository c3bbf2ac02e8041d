//! The `ibau` binary end to end: bad input, inspect, verify, exit codes.
//! Fixtures are made by tools/make_fixtures.py (see models/README.md).

use std::path::{Path, PathBuf};

use prost::Message;

use ibau::onnx::proto::{ModelProto, NodeProto, StringStringEntryProto};

use crate::common::{self, ibau, stderr, stdout};

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Asserts exit code 2 and a one-line error naming `needle`.
fn assert_error(out: &std::process::Output, needle: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert!(err.starts_with("error: "), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(err.contains(needle), "`{needle}` not in: {err}");
}

#[test]
fn truncated_file_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(common::fixture("vgg_badnets_legacy.onnx")).unwrap();
    let path = dir.path().join("truncated.onnx");
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    assert_error(&ibau(&["inspect", path_str(&path)]), "truncated.onnx");
}

#[test]
fn a_file_that_is_not_onnx_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.onnx");
    std::fs::write(&path, "these are not the weights you are looking for\n").unwrap();
    assert_error(&ibau(&["inspect", path_str(&path)]), "notes.onnx");
    let empty = dir.path().join("empty.onnx");
    std::fs::write(&empty, b"").unwrap();
    assert_error(&ibau(&["verify", path_str(&empty)]), "empty.onnx");
    assert_error(
        &ibau(&["inspect", "/nonexistent/model.onnx"]),
        "/nonexistent/model.onnx",
    );
}

/// The fixture with its first initializer moved to an external file at `location`.
fn with_external_initializer(dir: &Path, location: &str, data: &[u8]) -> PathBuf {
    let bytes = std::fs::read(common::fixture("vgg_badnets_legacy.onnx")).unwrap();
    let mut model = ModelProto::decode(bytes.as_slice()).unwrap();
    let init = &mut model.graph.as_mut().unwrap().initializer[0];
    let raw = init.raw_data.take().expect("raw data");
    let kv = |k: &str, v: String| StringStringEntryProto {
        key: Some(k.into()),
        value: Some(v),
    };
    init.external_data = vec![
        kv("location", location.into()),
        kv("offset", "0".into()),
        kv("length", raw.len().to_string()),
    ];
    init.data_location = Some(1);
    let _ = raw;
    let path = dir.join("model.onnx");
    std::fs::write(&path, model.encode_to_vec()).unwrap();
    if !data.is_empty() {
        std::fs::write(dir.join("weights.bin"), data).unwrap();
    }
    path
}

#[test]
fn external_data_outside_the_model_folder_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let model = with_external_initializer(dir.path(), "../weights.bin", b"");
    assert_error(&ibau(&["inspect", path_str(&model)]), "../weights.bin");
}

#[test]
fn missing_or_short_external_data_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let model = with_external_initializer(dir.path(), "absent.bin", b"");
    assert_error(&ibau(&["inspect", path_str(&model)]), "absent.bin");
    let dir = tempfile::tempdir().unwrap();
    let model = with_external_initializer(dir.path(), "weights.bin", &[0u8; 3]);
    assert_error(&ibau(&["inspect", path_str(&model)]), "too short");
}

#[test]
fn external_data_round_trips_and_stays_external() {
    let dir = tempfile::tempdir().unwrap();
    let original = ibau::onnx::Model::load(common::fixture("vgg_badnets_legacy.onnx")).unwrap();
    let init = &original.graph().initializer[0];
    let raw = init.raw_data.clone().unwrap();
    let model = with_external_initializer(dir.path(), "weights.bin", &raw);
    let loaded = ibau::onnx::Model::load(&model).unwrap();
    assert_eq!(loaded.external.len(), 1);
    assert_eq!(loaded.graph().initializer[0].raw_data.as_ref(), Some(&raw));
    let out = dir.path().join("copy.onnx");
    loaded.save(&out).unwrap();
    let saved = ModelProto::decode(std::fs::read(&out).unwrap().as_slice()).unwrap();
    let t = &saved.graph.as_ref().unwrap().initializer[0];
    assert_eq!(t.data_location, Some(1));
    assert!(t.raw_data.is_none());
    assert!(dir.path().join("copy.onnx.data").exists());
    let reloaded = ibau::onnx::Model::load(&out).unwrap();
    assert_eq!(
        reloaded.graph().initializer[0].raw_data.as_ref(),
        Some(&raw)
    );
    // Saving onto the input is refused.
    assert!(loaded.save(&model).is_err());
}

#[test]
fn inspect_json_works_on_every_fixture_and_the_authors_model() {
    let mut models = common::onnx_fixtures();
    models.extend(common::authors_model());
    for model in models {
        let out = ibau(&["inspect", "--json", path_str(&model)]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}: {}",
            model.display(),
            stderr(&out)
        );
        let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
        assert_eq!(json["schema"], 1);
        assert_eq!(
            json["inputs"].as_array().unwrap().len(),
            1,
            "{}",
            model.display()
        );
        assert!(json["nodes"]["total"].as_u64().unwrap() > 0);
        assert!(
            json["unsupported_ops"].as_array().unwrap().is_empty(),
            "{}",
            model.display()
        );
        let share = json["trainable"]["share"].as_f64().unwrap();
        assert_eq!(share, 1.0, "{}: every weight trainable", model.display());
        // Independently of the importer's differentiable-path rule: every
        // float initializer of more than one element is trainable, except
        // BatchNormalization's running mean and variance.
        let file = ibau::onnx::Model::load(&model).unwrap();
        let graph = file.graph();
        let statistics: std::collections::HashSet<&str> = graph
            .node
            .iter()
            .filter(|n| n.op_type() == "BatchNormalization")
            .flat_map(|n| n.input.iter().skip(3).map(String::as_str))
            .collect();
        let trainable: std::collections::HashSet<&str> = json["trainable"]["list"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        for init in &graph.initializer {
            let float = ibau::onnx::DataType(init.data_type()).is_float();
            let elements: i64 = init.dims.iter().product();
            if float && elements > 1 && !statistics.contains(init.name()) {
                assert!(
                    trainable.contains(init.name()),
                    "{}: weight `{}` ({elements} elements) is not trainable",
                    model.display(),
                    init.name()
                );
            }
        }
    }
}

#[test]
fn batchnorm_running_statistics_stay_frozen() {
    let out = ibau(&[
        "inspect",
        "--json",
        path_str(&common::fixture("vgg_badnets_bn.onnx")),
    ]);
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let frozen: Vec<&str> = json["trainable"]["frozen"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        frozen.iter().filter(|n| n.contains("running_mean")).count(),
        6,
        "{frozen:?}"
    );
    assert_eq!(
        frozen.iter().filter(|n| n.contains("running_var")).count(),
        6,
        "{frozen:?}"
    );
}

#[test]
fn verify_passes_on_every_fixture_and_the_authors_model() {
    let mut models = common::onnx_fixtures();
    models.extend(common::authors_model());
    for model in models {
        let out = ibau(&["verify", "--json", path_str(&model)]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}: {}{}",
            model.display(),
            stdout(&out),
            stderr(&out)
        );
        let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
        assert_eq!(json["passed"], true);
        let tolerance = json["tolerance"].as_f64().unwrap();
        let expected = match json["precision"].as_str().unwrap() {
            "float16" => 1e-2,
            "bfloat16" => 3e-2,
            _ => 1e-4,
        };
        assert_eq!(tolerance, expected, "{}", model.display());
        for o in json["outputs"].as_array().unwrap() {
            let ort = o["max_abs_diff"]["ort"].as_f64().unwrap();
            let scale = o["scale"].as_f64().unwrap().max(1.0);
            assert!(ort <= tolerance * scale, "{}: ort {ort}", model.display());
            eprintln!(
                "{}: ort {ort:.2e} tract {}",
                model.display(),
                o["max_abs_diff"]["tract"]
            );
        }
    }
}

#[test]
fn unsupported_ops_are_listed_together_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(common::fixture("vgg_badnets_legacy.onnx")).unwrap();
    let mut model = ModelProto::decode(bytes.as_slice()).unwrap();
    let graph = model.graph.as_mut().unwrap();
    let first_output = graph.node[0].output[0].clone();
    // Two nodes no importer knows, feeding nothing the outputs need.
    for (name, op, domain) in [
        ("mystery_1", "FrobnicateV2", ""),
        ("mystery_2", "Quantum", "com.example"),
    ] {
        graph.node.push(NodeProto {
            name: Some(name.into()),
            op_type: Some(op.into()),
            domain: Some(domain.into()),
            input: vec![first_output.clone()],
            output: vec![format!("{name}_out")],
            ..Default::default()
        });
    }
    model
        .opset_import
        .push(ibau::onnx::proto::OperatorSetIdProto {
            domain: Some("com.example".into()),
            version: Some(1),
        });
    let path = dir.path().join("unknown_ops.onnx");
    std::fs::write(&path, model.encode_to_vec()).unwrap();
    let out = ibau(&["verify", path_str(&path)]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    for needle in [
        "2 unsupported ops",
        "mystery_1",
        "FrobnicateV2",
        "mystery_2",
        "Quantum",
        "com.example",
    ] {
        assert!(err.contains(needle), "`{needle}` missing from: {err}");
    }
    // inspect still works and lists them.
    let out = ibau(&["inspect", "--json", path_str(&path)]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(json["unsupported_ops"].as_array().unwrap().len(), 2);
}

#[test]
fn bad_options_exit_2() {
    let model = common::fixture("vgg_badnets_legacy.onnx");
    let out = ibau(&[
        "eval",
        path_str(&model),
        "--data",
        "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz",
        "--trigger",
        "patch:size=x",
        "--target",
        "0",
    ]);
    assert_error(&out, "size");
    let out = ibau(&[
        "eval",
        path_str(&model),
        "--data",
        "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz",
        "--range",
        "9000:20000",
    ]);
    assert_error(&out, "9000:20000");
    let out = ibau(&[
        "eval",
        path_str(&model),
        "--data",
        "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz",
        "--device",
        "tpu",
    ]);
    assert_error(&out, "tpu");
    // Options another option would silently disable are refused, naming
    // both, before anything is read.
    let sanitize = |extra: &[&str]| {
        let mut args = vec![
            "sanitize",
            path_str(&model),
            "--clean",
            "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz",
            "-o",
            "/nonexistent/out.onnx",
        ];
        args.extend_from_slice(extra);
        ibau(&args)
    };
    for option in ["--untargeted", "--mask-fallback"] {
        let out = sanitize(&["--search", "paper", option]);
        assert_error(&out, option);
        assert!(stderr(&out).contains("--search paper"), "{}", stderr(&out));
    }
    let out = sanitize(&["--perturbation-lr", "5"]);
    assert_error(&out, "--perturbation-lr");
    assert!(stderr(&out).contains("targeted search"), "{}", stderr(&out));
}

/// `ibau eval MODEL` on the Fashion-MNIST test images `range`, with `extra`
/// options.
fn eval_fashion(model: &Path, range: &str, extra: &[&str]) -> std::process::Output {
    let fashion = "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz";
    let mut args = vec!["eval", path_str(model), "--data", fashion, "--range", range];
    args.extend_from_slice(extra);
    ibau(&args)
}

/// Several trigger/target pairs in one `eval`, one of them all-to-all
/// (`--target next`): one `attacks` entry per pair, in order, and `asr` the
/// highest. The VGG BadNets fixture (models/fixtures.json: the patch, target
/// 0) against an identity warp, which leaves the images as they are, so
/// only the few samples the model already puts in the next class count.
#[test]
fn eval_measures_several_attacks_and_next() {
    let model = common::fixture("vgg_badnets_legacy.onnx");
    let dir = tempfile::tempdir().unwrap();
    let identity = |n: usize| {
        let coord = |i: usize| -1.0 + 2.0 * i as f32 / (n - 1) as f32;
        ndarray::Array3::from_shape_fn((n, n, 2), |(i, j, k)| coord(if k == 0 { j } else { i }))
    };
    let grid = dir.path().join("identity.npy");
    ndarray_npy::write_npy(&grid, &identity(28)).unwrap();
    let warp = format!("warp:grid={}", path_str(&grid));
    let patch = "patch:size=3,value=1,row=24,col=24";
    let eval = |attacks: &[&str]| eval_fashion(&model, "5000:5500", attacks);
    let out = eval(&[
        "--trigger",
        patch,
        "--target",
        "0",
        "--trigger",
        &warp,
        "--target",
        "next",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(json["samples"], 500);
    assert!(json["acc"].as_f64().unwrap() > 0.8, "{json}");
    let attacks = json["attacks"].as_array().unwrap();
    assert_eq!(attacks.len(), 2, "{json}");
    assert_eq!(attacks[0]["trigger"], patch);
    assert_eq!(attacks[0]["target"], 0);
    assert_eq!(attacks[1]["trigger"], warp.as_str());
    assert_eq!(attacks[1]["target"], "next");
    let (badnets, warped) = (
        attacks[0]["asr"].as_f64().unwrap(),
        attacks[1]["asr"].as_f64().unwrap(),
    );
    assert!(badnets > 0.95 && warped < 0.1, "{json}");
    assert_eq!(json["asr"].as_f64(), Some(badnets));

    // Counts that do not pair, and a grid of another size, are one-line
    // errors naming the options or the file.
    let out = eval(&["--trigger", patch, "--target", "0", "--trigger", &warp]);
    assert_error(&out, "2 --trigger and 1 --target");
    let small = dir.path().join("small.npy");
    ndarray_npy::write_npy(&small, &identity(8)).unwrap();
    let out = eval(&[
        "--trigger",
        &format!("warp:grid={}", path_str(&small)),
        "--target",
        "next",
    ]);
    assert_error(&out, "small.npy");
    assert!(stderr(&out).contains("[1, 8, 8, 2]"), "{}", stderr(&out));
}

/// Data prepared differently from training (here a normalisation the model
/// never saw) gets a warning that names the options to check; data prepared
/// right gets none.
#[test]
fn low_clean_accuracy_warns_about_preprocessing() {
    let model = common::fixture("jax_mlp.onnx");
    let run = |extra: &[&str]| {
        let out = eval_fashion(&model, "0:300", extra);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        stderr(&out)
    };
    let wrong = run(&["--mean", "0.5", "--std", "0.1"]);
    assert!(
        wrong.starts_with("warning: ") && wrong.contains("--mean/--std"),
        "{wrong}"
    );
    let right = run(&[]);
    assert!(!right.contains("warning"), "{right}");
}

/// The parity gate refuses a written file that differs from the trained
/// module (tolerance 0: any rounding difference between libtorch and ONNX
/// Runtime): exit 2, nothing at `-o`, no staging folder left.
#[test]
fn a_failed_parity_gate_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("out.onnx");
    let out = ibau(&[
        "sanitize",
        "--no-scan",
        path_str(&common::fixture("vgg_badnets_legacy.onnx")),
        "--clean",
        "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz",
        "--clean-range",
        "0:100",
        "--rounds",
        "1",
        "--search",
        "paper",
        "--parity-tolerance",
        "0",
        "-o",
        path_str(&output),
    ]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    let last = err.trim_end().lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: parity check of `") && last.contains("out.onnx"),
        "{err}"
    );
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}
