//! `ibau sanitize` end to end on the real poisoned fixtures
//! (tools/make_fixtures.py): what it writes, what it refuses, and (two slow,
//! seeded tests) that it removes backdoors: the paper's search on the BadNets
//! VGG, ibau's default targeted search on the JAX CNN.

use std::path::{Path, PathBuf};

use prost::Message;

use ibau::onnx::proto::ModelProto;

use crate::common::{self, ibau, stderr, stdout};

const FASHION: &str = "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz";

fn decode(path: &Path) -> ModelProto {
    ModelProto::decode(std::fs::read(path).unwrap().as_slice()).unwrap()
}

#[test]
fn sanitize_writes_only_trained_weights_and_the_file_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let input = common::fixture("vgg_badnets_bn.onnx");
    let before = std::fs::read(&input).unwrap();
    let output = dir.path().join("clean.onnx");
    let report = dir.path().join("report.json");
    let out = ibau(&[
        "sanitize",
        "--no-scan",
        input.to_str().unwrap(),
        "--clean",
        FASHION,
        "--clean-range",
        "0:200",
        "--test",
        FASHION,
        "--test-range",
        "9000:9500",
        "--trigger",
        "patch:size=3,value=1,row=24,col=24",
        "--target",
        "0",
        // A second pair, all-to-all: measured alongside, reported per pair.
        "--trigger",
        "patch:size=3,value=1,row=0,col=0",
        "--target",
        "next",
        "--rounds",
        "1",
        "--device",
        "cpu",
        "-o",
        output.to_str().unwrap(),
        "--report",
        report.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("before") && stderr(&out).contains("ASR#2"),
        "before/after table with a column per pair: {}",
        stderr(&out)
    );
    assert_eq!(
        std::fs::read(&input).unwrap(),
        before,
        "the input is untouched"
    );

    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(json["schema"], 1);
    assert_eq!(json["parity"]["passed"], true);
    assert!(json["parity"]["max_abs_diff"].as_f64().unwrap() <= 1e-4);
    assert_eq!(json["rounds"].as_array().unwrap().len(), 1);
    assert_eq!(json["trainable"]["share"], 1.0);
    assert!(
        json["before"]["asr"].as_f64().unwrap() > 0.9,
        "the fixture is poisoned"
    );
    // `asr` is the highest of the pairs, before, in the round and after.
    for m in [&json["before"], &json["rounds"][0], &json["after"]] {
        let attacks = m["attacks"].as_array().unwrap();
        let targets: Vec<_> = attacks.iter().map(|a| a["target"].clone()).collect();
        assert_eq!(targets, [serde_json::json!(0), serde_json::json!("next")]);
        let worst = attacks
            .iter()
            .map(|a| a["asr"].as_f64().unwrap())
            .fold(0.0, f64::max);
        assert_eq!(m["asr"].as_f64(), Some(worst), "{m}");
    }

    // Same graph, same names, same dtypes and storage; only trained data changed.
    let (a, b) = (decode(&input), decode(&output));
    assert_eq!(a.opset_import, b.opset_import);
    assert_eq!(a.ir_version, b.ir_version);
    let (ga, gb) = (a.graph.as_ref().unwrap(), b.graph.as_ref().unwrap());
    assert_eq!(ga.node, gb.node);
    assert_eq!(ga.input, gb.input);
    assert_eq!(ga.output, gb.output);
    assert_eq!(ga.initializer.len(), gb.initializer.len());
    let mut changed = 0;
    for (x, y) in ga.initializer.iter().zip(&gb.initializer) {
        assert_eq!(
            (x.name(), x.data_type(), &x.dims),
            (y.name(), y.data_type(), &y.dims)
        );
        assert_eq!(x.raw_data.is_some(), y.raw_data.is_some());
        let statistics = x.name().contains("running_");
        if statistics {
            assert_eq!(x, y, "{} is frozen", x.name());
        } else if x != y {
            changed += 1;
        }
    }
    assert!(
        changed >= 12,
        "trained weights were written back ({changed} changed)"
    );

    assert_verifies(&output);
}

#[test]
fn sanitize_refuses_to_overwrite_its_input() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("model.onnx");
    std::fs::copy(common::fixture("vgg_badnets_legacy.onnx"), &input).unwrap();
    let before = std::fs::read(&input).unwrap();
    let out = ibau(&[
        "sanitize",
        "--no-scan",
        input.to_str().unwrap(),
        "--clean",
        FASHION,
        "--clean-range",
        "0:100",
        "--rounds",
        "1",
        "-o",
        input.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("input model"), "{}", stderr(&out));
    assert_eq!(std::fs::read(&input).unwrap(), before);
}

#[test]
fn data_that_does_not_fit_the_model_names_both_shapes() {
    let dir = tempfile::tempdir().unwrap();
    // Three-channel 32x32 images against a [batch, 1, 28, 28] model.
    let npz = dir.path().join("rgb.npz");
    let mut writer = ndarray_npy::NpzWriter::new(std::fs::File::create(&npz).unwrap());
    writer
        .add_array("x", &ndarray::Array4::<u8>::zeros((4, 3, 32, 32)))
        .unwrap();
    writer
        .add_array("y", &ndarray::Array1::<i64>::zeros(4))
        .unwrap();
    writer.finish().unwrap();
    let output = dir.path().join("never.onnx");
    let out = ibau(&[
        "sanitize",
        "--no-scan",
        common::fixture("vgg_badnets_legacy.onnx").to_str().unwrap(),
        "--clean",
        npz.to_str().unwrap(),
        "-o",
        output.to_str().unwrap(),
    ]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("[4, 3, 32, 32]") && err.contains("1, 28, 28]"),
        "{err}"
    );
    assert!(!output.exists());
}

/// `ibau sanitize` on Fashion-MNIST as the evaluation protocol says: clean
/// set = test images 0..4999, ACC/ASR on 5000..9999, seed 0, CPU, plus
/// `extra`; exit 0 expected. Returns the report and the written file's path
/// (inside `dir`).
fn sanitize_protocol(
    dir: &Path,
    fixture: &str,
    trigger: &str,
    target: &str,
    extra: &[&str],
) -> (serde_json::Value, PathBuf) {
    let mut args = vec![
        "--no-scan",
        "--clean",
        FASHION,
        "--clean-range",
        "0:5000",
        "--test",
        FASHION,
        "--test-range",
        "5000:10000",
        "--trigger",
        trigger,
        "--target",
        target,
        "--seed",
        "0",
    ];
    args.extend_from_slice(extra);
    let (json, err, output) = sanitize_report(dir, fixture, &args);
    eprintln!("{err}");
    (json, output)
}

/// `ibau sanitize FIXTURE ARGS --device cpu -o DIR/.. --report DIR/..`,
/// which must succeed: its report, stderr and output path.
fn sanitize_report(
    dir: &Path,
    fixture: &str,
    args: &[&str],
) -> (serde_json::Value, String, PathBuf) {
    let output = dir.join(fixture.replace(".onnx", "_clean.onnx"));
    let report = dir.join("report.json");
    let model = common::fixture(fixture);
    let mut all = vec!["sanitize", model.to_str().unwrap()];
    all.extend_from_slice(args);
    all.extend_from_slice(&[
        "--device",
        "cpu",
        "-o",
        output.to_str().unwrap(),
        "--report",
        report.to_str().unwrap(),
    ]);
    let out = ibau(&all);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let json = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    (json, stderr(&out), output)
}

/// The report's ACC/ASR before and after.
fn before_after(json: &serde_json::Value) -> (f64, f64, f64, f64) {
    let get = |when: &str, what: &str| json[when][what].as_f64().unwrap();
    (
        get("before", "acc"),
        get("before", "asr"),
        get("after", "acc"),
        get("after", "asr"),
    )
}

fn assert_verifies(path: &Path) {
    let out = ibau(&["verify", path.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
}

/// Slow (several minutes on 2 cores): the paper's algorithm exactly
/// (`--search paper`), 5000 clean samples, on the BadNets VGG fixture; the
/// backdoor must be gone (ASR < 10%) within 3 rounds with at most 2 points of
/// ACC lost, and the written file must pass `ibau verify`.
#[test]
fn the_papers_search_removes_the_badnets_backdoor_within_three_rounds() {
    let dir = tempfile::tempdir().unwrap();
    let (json, output) = sanitize_protocol(
        dir.path(),
        "vgg_badnets_legacy.onnx",
        "patch:size=3,value=1,row=24,col=24",
        "0",
        &["--search", "paper", "--rounds", "3"],
    );
    let (acc_before, asr_before, acc_after, asr_after) = before_after(&json);
    assert!(
        asr_before > 0.9,
        "the fixture is poisoned: ASR {asr_before}"
    );
    let rounds = json["rounds"].as_array().unwrap();
    assert!(
        rounds.iter().all(|r| r["targeted"].is_null()),
        "the paper's search reports no targeted class: {rounds:?}"
    );
    assert!(
        rounds.iter().any(|r| r["asr"].as_f64().unwrap() < 0.10),
        "ASR under 10% within 3 rounds: {rounds:?}"
    );
    assert!(asr_after < 0.10, "ASR after: {asr_after}");
    assert!(
        acc_before - acc_after <= 0.02,
        "ACC {acc_before} -> {acc_after}"
    );
    assert_verifies(&output);
}

/// Slow (about a minute): ibau's defaults (the targeted search) on the JAX
/// CNN export, where the paper's search leaves ASR at 66% after 5 rounds
/// (docs/limits.md): ASR under 20% within 5 rounds, at most 3 points of ACC lost,
/// every round unlearning the backdoor's target class, and the written file
/// passes `ibau verify`.
#[test]
fn the_default_search_removes_the_backdoor_of_a_jax_export() {
    let dir = tempfile::tempdir().unwrap();
    let (json, output) = sanitize_protocol(
        dir.path(),
        "jax_cnn.onnx",
        "patch:size=3,value=1,row=0,col=24",
        "5",
        &["--rounds", "5", "--stop-below-asr", "0.2"],
    );
    let (acc_before, asr_before, acc_after, asr_after) = before_after(&json);
    assert!(
        asr_before > 0.9,
        "the fixture is poisoned: ASR {asr_before}"
    );
    assert!(asr_after < 0.2, "ASR after: {asr_after}");
    assert!(
        acc_before - acc_after <= 0.03,
        "ACC {acc_before} -> {acc_after}"
    );
    for round in json["rounds"].as_array().unwrap() {
        let targeted = &round["targeted"];
        assert_eq!(targeted["class"], 5, "round {round}");
        assert_eq!(targeted["radii"].as_array().unwrap().len(), 10);
    }
    assert_verifies(&output);
}

/// Every ONNX fixture (PyTorch legacy and dynamo, Keras/tf2onnx, JAX/jax2onnx;
/// float32, float16, bfloat16, external data, opsets 11 to 23): one I-BAU step
/// on one clean batch, no layout flag, and the written file keeps every
/// initializer name, dtype, shape and storage, every node (names included),
/// the opsets and IR version, the graph inputs and outputs; trained weights
/// changed, and the file passes `ibau verify`.
#[test]
fn every_fixture_keeps_names_nodes_opsets_and_dtypes() {
    let fixtures = common::onnx_fixtures();
    let dir = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    for input in &fixtures {
        let name = input.file_name().unwrap().to_str().unwrap();
        let output = dir.path().join(name);
        let out = ibau(&[
            "sanitize",
            "--no-scan",
            input.to_str().unwrap(),
            "--clean",
            FASHION,
            "--clean-range",
            "0:100",
            "--rounds",
            "1",
            "--device",
            "cpu",
            "-o",
            output.to_str().unwrap(),
        ]);
        if out.status.code() != Some(0) {
            failures.push(format!("{name}: sanitize failed: {}", stderr(&out)));
            continue;
        }
        let loaded_in = ibau::onnx::Model::load(input).unwrap();
        let loaded_out = ibau::onnx::Model::load(&output).unwrap();
        assert_eq!(
            loaded_in.external.len(),
            loaded_out.external.len(),
            "{name}: external tensors stay external"
        );
        let (a, b) = (decode(input), decode(&output));
        assert_eq!(a.opset_import, b.opset_import, "{name}");
        assert_eq!(a.ir_version, b.ir_version, "{name}");
        let (ga, gb) = (a.graph.as_ref().unwrap(), b.graph.as_ref().unwrap());
        assert_eq!(ga.node, gb.node, "{name}: nodes");
        assert_eq!(ga.input, gb.input, "{name}");
        assert_eq!(ga.output, gb.output, "{name}");
        assert_eq!(ga.initializer.len(), gb.initializer.len(), "{name}");
        let mut changed = 0;
        for (x, y) in ga.initializer.iter().zip(&gb.initializer) {
            assert_eq!(
                (
                    x.name(),
                    x.data_type(),
                    &x.dims,
                    x.raw_data.is_some(),
                    x.data_location()
                ),
                (
                    y.name(),
                    y.data_type(),
                    &y.dims,
                    y.raw_data.is_some(),
                    y.data_location()
                ),
                "{name}"
            );
            changed += usize::from(x != y);
        }
        // Loaded, external data sits in raw_data: compare what the tensors hold.
        let changed_loaded = loaded_in
            .graph()
            .initializer
            .iter()
            .zip(&loaded_out.graph().initializer)
            .filter(|(x, y)| x != y)
            .count();
        if changed == 0 || changed_loaded == 0 {
            failures.push(format!(
                "{name}: no weight changed ({changed} stored, {changed_loaded} loaded)"
            ));
        }
        let out = ibau(&["verify", output.to_str().unwrap()]);
        if out.status.code() != Some(0) {
            failures.push(format!(
                "{name}: the written file fails verify: {}{}",
                stdout(&out),
                stderr(&out)
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Softmax outputs: the Keras fixture ends in Softmax, so I-BAU's losses use
/// the Softmax's input; the same model with a Reshape after the Softmax hides
/// the node, and the rows summing to one are found at run time (their log
/// is used). Either way the report says which tensor served as logits.
#[test]
fn probability_outputs_are_not_used_as_logits() {
    let dir = tempfile::tempdir().unwrap();
    let input = common::fixture("keras_softmax.onnx");
    let hidden = dir.path().join("softmax_then_reshape.onnx");
    let script = "import sys, onnx\n\
                  from onnx import helper, numpy_helper\n\
                  import numpy as np\n\
                  m = onnx.load(sys.argv[1])\n\
                  g = m.graph\n\
                  out = g.output[0].name\n\
                  for n in g.node:\n\
                  \x20   n.output[:] = [o + '_sm' if o == out else o for o in n.output]\n\
                  g.initializer.append(numpy_helper.from_array(np.array([-1, 10], np.int64), 'hide_shape'))\n\
                  g.node.append(helper.make_node('Reshape', [out + '_sm', 'hide_shape'], [out], name='hide'))\n\
                  onnx.save(m, sys.argv[2])\n";
    let made = std::process::Command::new(common::python())
        .arg("-c")
        .arg(script)
        .arg(&input)
        .arg(&hidden)
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", stderr(&made));
    for (model, tensor, how) in [
        (
            &input,
            "keras_softmax_1/probabilities_1/BiasAdd:0",
            "input of Softmax node",
        ),
        (&hidden, "probabilities", "log of graph output"),
    ] {
        let output = dir.path().join("out.onnx");
        let report = dir.path().join("report.json");
        let out = ibau(&[
            "sanitize",
            "--no-scan",
            model.to_str().unwrap(),
            "--clean",
            FASHION,
            "--clean-range",
            "0:100",
            "--rounds",
            "1",
            "--device",
            "cpu",
            "-o",
            output.to_str().unwrap(),
            "--report",
            report.to_str().unwrap(),
        ]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
        assert_eq!(json["logits"]["tensor"], tensor, "{json}");
        assert!(
            json["logits"]["how"].as_str().unwrap().starts_with(how),
            "{}",
            json["logits"]
        );
        std::fs::remove_file(&output).unwrap();
    }
}

/// Slow (about two minutes): issue "Beyond one patch", two triggers to two
/// targets (models/attack_two_targets.onnx: a 3x3 patch to class 3, a 4x4
/// grey patch to class 7), ibau's defaults on 1000 clean samples. The scan
/// flags one target; the other joins in a later round when the targeted
/// search finds its radius standing out from the median, so both triggers'
/// ASR ends under 20%, every round unlearns class 7, and the report's
/// `unlearned` names both.
#[test]
fn both_targets_of_a_two_trigger_backdoor_are_unlearned() {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("two_clean.onnx");
    let report = dir.path().join("report.json");
    let model = common::fixture("attack_two_targets.onnx");
    let out = ibau(&[
        "sanitize",
        model.to_str().unwrap(),
        "--clean",
        FASHION,
        "--clean-range",
        "0:1000",
        "--test",
        FASHION,
        "--test-range",
        "5000:6000",
        "--trigger",
        "patch:size=3,value=1,row=24,col=24",
        "--target",
        "3",
        "--trigger",
        "patch:size=4,value=0.6,row=0,col=0",
        "--target",
        "7",
        "--device",
        "cpu",
        "-o",
        output.to_str().unwrap(),
        "--report",
        report.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let asr = |when: &str| -> Vec<f64> {
        json[when]["attacks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["asr"].as_f64().unwrap())
            .collect()
    };
    assert!(asr("before").iter().all(|&a| a > 0.9), "{json}");
    assert!(asr("after").iter().all(|&a| a < 0.2), "{json}");
    let mut unlearned: Vec<i64> = json["unlearned"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_i64().unwrap())
        .collect();
    unlearned.sort_unstable();
    assert_eq!(unlearned, [3, 7], "{json}");
    for round in json["rounds"].as_array().unwrap() {
        let classes = round["targeted"]["classes"].as_array().unwrap();
        assert!(classes.contains(&serde_json::json!(7)), "{round}");
    }
    let acc = |when: &str| json[when]["acc"].as_f64().unwrap();
    assert!(acc("before") - acc("after") <= 0.03, "{json}");
}

/// `--mask-fallback` finds the all-to-all fixture's patch, which no
/// additive search ranks first (a 4x4 patch is small in L1, not in L2):
/// one round with 1000 clean samples and no guard brings the all-to-all
/// ASR under 20% with at most 3 points of ACC lost, and the round's
/// report gives the mask trigger's size. Measured when written: ASR 90.70%
/// -> 2.00%, ACC 91.00% -> 89.70%, a mask of 23 input elements (39 s).
#[test]
fn an_all_to_all_backdoor_goes_with_the_mask_fallback() {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("all2all_clean.onnx");
    let report = dir.path().join("report.json");
    let model = common::fixture("attack_all2all.onnx");
    let out = ibau(&[
        "sanitize",
        model.to_str().unwrap(),
        "--clean",
        FASHION,
        "--clean-range",
        "0:1000",
        "--test",
        FASHION,
        "--test-range",
        "5000:6000",
        "--trigger",
        "patch:size=4,value=1,row=1,col=23",
        "--target",
        "next",
        "--rounds",
        "1",
        "--force",
        "--mask-fallback",
        "--device",
        "cpu",
        "-o",
        output.to_str().unwrap(),
        "--report",
        report.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let asr = |when: &str| json[when]["attacks"][0]["asr"].as_f64().unwrap();
    assert!(asr("before") > 0.8, "{json}");
    assert!(asr("after") < 0.2, "{json}");
    let acc = |when: &str| json[when]["acc"].as_f64().unwrap();
    assert!(acc("before") - acc("after") <= 0.03, "{json}");
    let mask = &json["rounds"][0]["mask"];
    let coverage = mask["coverage"].as_f64().unwrap();
    assert!(coverage > 0.0 && coverage < 0.25, "{mask}");
}

/// `--mask-targets` unlearns a mask trigger of the flagged class's own: on
/// the JAX MLP (the scan flags class 8) each round's `mask` names class 8
/// and sends most clean images there; without the option the report's
/// config has no `mask_targets` and the rounds no `mask`.
#[test]
fn mask_targets_unlearn_a_mask_trigger_of_the_flagged_class() {
    let dir = tempfile::tempdir().unwrap();
    let run = |extra: &[&str]| {
        let mut args = vec![
            "--clean",
            FASHION,
            "--clean-range",
            "0:500",
            "--rounds",
            "2",
        ];
        args.extend_from_slice(extra);
        let (json, err, _) = sanitize_report(dir.path(), "jax_mlp.onnx", &args);
        (json, err)
    };
    let (json, err) = run(&["--mask-targets"]);
    assert_eq!(
        json["scan_before"]["targets"],
        serde_json::json!([8]),
        "{json}"
    );
    assert_eq!(json["config"]["mask_targets"], serde_json::json!([8]));
    for round in json["rounds"].as_array().unwrap() {
        let mask = &round["mask"];
        assert_eq!(mask["class"], 8, "{mask}");
        assert!(mask["fooled"].as_f64().unwrap() > 0.5, "{mask}");
    }
    assert!(err.contains("to class 8"), "{err}");
    let (json, _) = run(&[]);
    assert!(json["config"].get("mask_targets").is_none(), "{json}");
    assert!(json["rounds"][0].get("mask").is_none(), "{json}");
}
