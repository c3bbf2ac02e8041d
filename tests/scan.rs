//! `ibau scan` and `ibau merge` on real fixtures: pinned verdicts of clean
//! and poisoned models, registry runs (a folder, shards, a merge, the cache
//! after a kill), and sanitize's trigger-free stopping rule.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{self, ibau, stderr, stdout};

const FASHION: &str = "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz";

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// The entry of `name` in a scan report.
fn entry<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["file"].as_str().unwrap().ends_with(name))
        .unwrap_or_else(|| panic!("no entry for {name} in {report}"))
}

/// The verdicts of two clean (PyTorch, JAX) and two poisoned (JAX, Keras)
/// fixtures,
/// with the poisoned ones' true targets (models/fixtures*.json), from the
/// default scan on 1000 clean test images.
#[test]
fn scan_pins_the_verdicts_of_clean_and_poisoned_fixtures() {
    let models = [
        ("clean_resnet.onnx", None),
        ("clean_jax_cnn.onnx", None),
        ("jax_mlp.onnx", Some(8)),
        ("keras_softmax.onnx", Some(3)),
    ];
    let paths: Vec<PathBuf> = models.iter().map(|(m, _)| common::fixture(m)).collect();
    let mut args = vec!["scan", "--clean", FASHION, "--json", "--device", "cpu"];
    args.extend(paths.iter().map(|p| s(p)));
    let out = ibau(&args);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let report = json(&stdout(&out));
    assert_eq!(report["schema"], 1);
    for (name, target) in models {
        let e = entry(&report, name);
        let statistic = e["statistic"].as_f64().unwrap();
        let threshold = e["threshold"].as_f64().unwrap();
        match target {
            None => {
                assert_eq!(e["verdict"], "clean", "{name}: {e}");
                assert!(statistic <= threshold, "{name}: {e}");
            }
            Some(t) => {
                assert_eq!(e["verdict"], "backdoor", "{name}: {e}");
                assert_eq!(e["targets"], serde_json::json!([t]), "{name}: {e}");
                assert!(statistic > threshold, "{name}: {e}");
            }
        }
        assert_eq!(e["classes"].as_array().unwrap().len(), 10, "{name}");
        assert_eq!(e["sha256"].as_str().unwrap().len(), 64, "{name}");
    }
}

/// A registry folder: models in sub-folders, a file that is not a model, an
/// ONNX file that cannot be read. Two shards with a cache, a merge, then a
/// run killed after its first model and started again.
#[test]
fn registry_runs_shard_merge_and_resume_after_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let registry = dir.path().join("registry");
    for (sub, name) in [
        ("a", "jax_mlp.onnx"),
        ("a", "clean_resnet.onnx"),
        ("b", "keras_softmax.onnx"),
    ] {
        std::fs::create_dir_all(registry.join(sub)).unwrap();
        std::fs::copy(common::fixture(name), registry.join(sub).join(name)).unwrap();
    }
    std::fs::write(registry.join("README.md"), "models of the registry\n").unwrap();
    std::fs::write(registry.join("b").join("broken.onnx"), b"\x08\x07\x12").unwrap();
    let cache = dir.path().join("cache");
    // Short searches: this test is about the plumbing, not the verdicts.
    let args = |cache: &Path, extra: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = [
            "scan",
            s(&registry),
            "--clean",
            FASHION,
            "--clean-range",
            "0:300",
            "--steps",
            "20",
            "--device",
            "cpu",
            "--cache",
            s(cache),
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        args.extend(extra.iter().map(|a| a.to_string()));
        args
    };
    let scan = |extra: &[&str]| {
        let a = args(&cache, extra);
        ibau(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let mut shard_reports = Vec::new();
    for i in 0..2 {
        let report = dir.path().join(format!("shard{i}.json"));
        let shard = format!("{i}/2");
        let out = scan(&["--shard", &shard, "--report", s(&report)]);
        assert!(matches!(out.status.code(), Some(0..=2)), "{}", stderr(&out));
        shard_reports.push(report);
    }
    let shard_sizes: Vec<usize> = shard_reports
        .iter()
        .map(|r| {
            json(&std::fs::read_to_string(r).unwrap())["models"]
                .as_array()
                .unwrap()
                .len()
        })
        .collect();
    assert_eq!(shard_sizes.iter().sum::<usize>(), 4, "{shard_sizes:?}");
    let merged = dir.path().join("merged.json");
    let sarif = dir.path().join("merged.sarif");
    let out = ibau(&[
        "merge",
        s(&shard_reports[0]),
        s(&shard_reports[1]),
        "--report",
        s(&merged),
        "--sarif",
        s(&sarif),
    ]);
    // broken.onnx is an error entry: exit 2, but both files are written.
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let report = json(&std::fs::read_to_string(&merged).unwrap());
    let files: Vec<&str> = report["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["file"].as_str().unwrap())
        .collect();
    assert_eq!(files.len(), 4, "{files:?}");
    let mut sorted = files.clone();
    sorted.sort();
    assert_eq!(files, sorted);
    assert_eq!(entry(&report, "broken.onnx")["verdict"], "error");
    assert!(entry(&report, "broken.onnx")["error"]
        .as_str()
        .unwrap()
        .contains("broken.onnx"));
    let skipped = report["skipped"].as_array().unwrap();
    assert!(
        skipped
            .iter()
            .any(|s| s["file"].as_str().unwrap().ends_with("README.md")),
        "{skipped:?}"
    );
    let log = json(&std::fs::read_to_string(&sarif).unwrap());
    assert_eq!(log["version"], "2.1.0");
    // A result per model that is flagged or failed, none for clean ones.
    let flagged = report["models"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["verdict"] != "clean")
        .count();
    assert_eq!(log["runs"][0]["results"].as_array().unwrap().len(), flagged);

    // Every finished model is in the cache: a full run takes them from it.
    let out = scan(&["--json"]);
    let again = json(&stdout(&out));
    for m in again["models"].as_array().unwrap() {
        if m["verdict"] != "error" {
            assert_eq!(m["cached"], true, "{m}");
        }
    }

    // A run killed with SIGKILL once its first model is cached, then run
    // again, scans every model once: the first from the cache.
    let fresh = dir.path().join("cache2");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ibau"))
        .args(args(&fresh, &[]))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let entries = |dir: &Path| {
        std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                    .count()
            })
            .unwrap_or(0)
    };
    while entries(&fresh) == 0 {
        assert!(start.elapsed() < Duration::from_secs(600), "no cache entry");
        std::thread::sleep(Duration::from_millis(100));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let done = entries(&fresh);
    assert!(done < 3, "the run finished before it was killed");
    let resumed_args = args(&fresh, &["--json"]);
    let out = ibau(&resumed_args.iter().map(String::as_str).collect::<Vec<_>>());
    let resumed = json(&stdout(&out));
    let cached = resumed["models"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["cached"] == true)
        .count();
    assert_eq!(cached, done, "{resumed}");
    assert_eq!(resumed["models"].as_array().unwrap().len(), 4);
    // No temporary files are left in the cache.
    for e in std::fs::read_dir(&fresh).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        assert!(name.ends_with(".json") && !name.starts_with('.'), "{name}");
    }
}

/// Outputs that would overwrite an input are refused before any work, and
/// the recovered triggers are written as pictures and arrays.
#[test]
fn scan_outputs_are_checked_and_triggers_saved() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("jax_mlp.onnx");
    std::fs::copy(common::fixture("jax_mlp.onnx"), &model).unwrap();
    let before = std::fs::read(&model).unwrap();
    let out = ibau(&["scan", s(&model), "--clean", FASHION, "--report", s(&model)]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("jax_mlp.onnx"), "{}", stderr(&out));
    assert_eq!(std::fs::read(&model).unwrap(), before);
    let out = ibau(&[
        "scan",
        s(&model),
        "--clean",
        FASHION,
        "--save-triggers",
        s(&model),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--save-triggers"), "{}", stderr(&out));
    assert_eq!(std::fs::read(&model).unwrap(), before);

    // The external data a model names is an input too.
    let ext = dir.path().join("vgg_badnets_external.onnx");
    let data = dir.path().join("vgg_badnets_external.onnx.data");
    std::fs::copy(common::fixture("vgg_badnets_external.onnx"), &ext).unwrap();
    std::fs::copy(common::fixture("vgg_badnets_external.onnx.data"), &data).unwrap();
    let data_before = std::fs::read(&data).unwrap();
    let out = ibau(&[
        "scan",
        s(&ext),
        "--clean",
        FASHION,
        "--clean-range",
        "0:200",
        "--steps",
        "3",
        "--device",
        "cpu",
        "--report",
        s(&data),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("external-data"), "{}", stderr(&out));
    assert_eq!(std::fs::read(&data).unwrap(), data_before);

    let triggers = dir.path().join("triggers");
    let out = ibau(&[
        "scan",
        s(&model),
        "--clean",
        FASHION,
        "--device",
        "cpu",
        "--save-triggers",
        s(&triggers),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    for suffix in ["trigger.png", "strip.png", "trigger.npy"] {
        let path = triggers.join(format!("jax_mlp.onnx.class8.{suffix}"));
        assert!(path.is_file(), "{path:?} missing: {}", stderr(&out));
    }
    assert_eq!(std::fs::read(&model).unwrap(), before);
}

/// `sanitize --until-clean` with no trigger: scans before, after each round,
/// stops at the first clean scan; measured with the trigger afterwards, the
/// backdoor is gone.
#[test]
fn sanitize_until_clean_stops_when_the_scan_says_clean() {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("clean.onnx");
    let report = dir.path().join("report.json");
    let out = ibau(&[
        "sanitize",
        s(&common::fixture("jax_mlp.onnx")),
        "--clean",
        FASHION,
        "--clean-range",
        "0:5000",
        "--until-clean",
        "--device",
        "cpu",
        "-o",
        s(&output),
        "--report",
        s(&report),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let r = json(&std::fs::read_to_string(&report).unwrap());
    assert_eq!(r["scan_before"]["verdict"], "backdoor", "{r}");
    assert_eq!(r["scan_before"]["targets"], serde_json::json!([8]));
    assert_eq!(r["scan_after"]["verdict"], "clean", "{r}");
    let rounds = r["rounds"].as_array().unwrap();
    assert!(rounds.len() < 5, "{} rounds", rounds.len());
    assert_eq!(rounds.last().unwrap()["scan"]["verdict"], "clean");
    let eval = ibau(&[
        "eval",
        s(&output),
        "--data",
        FASHION,
        "--range",
        "5000:10000",
        "--trigger",
        "patch:size=4,value=1,row=12,col=12",
        "--target",
        "8",
        "--json",
    ]);
    let m = json(&stdout(&eval));
    assert!(m["asr"].as_f64().unwrap() < 0.1, "{m}");
}

/// Issue "Beyond one patch", no harm: a model the scan finds clean trains
/// under the accuracy guard, which keeps its accuracy on held-back clean
/// samples within half a point (the last round within it is written), and
/// the report says what happened.
#[test]
fn sanitize_guards_the_accuracy_of_a_model_the_scan_finds_clean() {
    let dir = tempfile::tempdir().unwrap();
    let input = common::fixture("clean_jax_cnn.onnx");
    let output = dir.path().join("guarded.onnx");
    let report = dir.path().join("report.json");
    // The first 1000 clean samples, with `extra`.
    let sanitize = |output: &Path, extra: &[&str]| {
        let mut args = vec![
            "sanitize",
            s(&input),
            "--clean",
            FASHION,
            "--clean-range",
            "0:1000",
            "--device",
            "cpu",
            "-o",
            s(output),
            "--report",
            s(&report),
        ];
        args.extend_from_slice(extra);
        ibau(&args)
    };
    let out = sanitize(&output, &["--rounds", "2"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("accuracy guard"), "{}", stderr(&out));
    let r = json(&std::fs::read_to_string(&report).unwrap());
    assert_eq!(r["scan_before"]["verdict"], "clean", "{r}");
    let g = &r["guard"];
    assert_eq!(g["held_back"], 200, "{r}");
    let (before, after) = (
        g["acc_before"].as_f64().unwrap(),
        g["acc_after"].as_f64().unwrap(),
    );
    assert!(
        after >= before - 0.005,
        "guard let {before} -> {after} through"
    );
    // Every round is run and reported; the guard names the one written.
    assert_eq!(r["rounds"].as_array().unwrap().len(), 2, "{r}");
    let kept = g["kept_round"].as_u64().unwrap();
    let over: Vec<u64> = g["over_budget"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    // Written: the last round within the budget, or the model as it came.
    let within = (1..=2).filter(|r| !over.contains(r)).max().unwrap_or(0);
    assert_eq!(kept, within, "{r}");
    if kept == 0 {
        assert_eq!(r["unlearned"], serde_json::json!([]), "{r}");
        assert_eq!(after, before, "{r}");
    }

    // The same samples as one batch: nothing can be held back, so no round
    // runs and the model is written as it came.
    let single = dir.path().join("single.onnx");
    let out = sanitize(&single, &["--batch-size", "1000"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("single batch"), "{}", stderr(&out));
    let r = json(&std::fs::read_to_string(&report).unwrap());
    assert_eq!(r["scan_before"]["verdict"], "clean", "{r}");
    assert_eq!(r["guard"]["held_back"], 0, "{r}");
    assert_eq!(r["guard"]["kept_round"], 0, "{r}");
    assert_eq!(r["rounds"], serde_json::json!([]), "{r}");
    let acc = |model: &Path| {
        let out = ibau(&[
            "eval",
            s(model),
            "--data",
            FASHION,
            "--range",
            "5000:5200",
            "--json",
        ]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        json(&String::from_utf8_lossy(&out.stdout))["acc"].clone()
    };
    assert_eq!(acc(&single), acc(&input));
}
