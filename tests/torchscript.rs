//! TorchScript in, TorchScript out: detection by content, refusal of pickles,
//! the back end against the ONNX export of the same weights, and a short
//! sanitize whose written file Python's `torch.jit.load` reads back with the
//! same parameter names, dtypes, buffers and code, and the same predictions
//! as ibau's module.

use std::path::Path;
use std::process::Command;

use ibau::graph::ImportOptions;
use ibau::ibau::{hypergradient, perturbation_search, Batch, Classifier, Config, Search};
use ibau::model::{load_classifier, Model};
use tch::{Device, Kind, Tensor};

use crate::common::{self, ibau, stderr, stdout};

const FASHION: &str = "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz";

fn python(script: &str, args: &[&str]) -> String {
    let python = common::python();
    assert!(
        python.exists(),
        "{} is missing: run tools/setup.sh",
        python.display()
    );
    let out = Command::new(&python)
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "python failed: {}{}",
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

fn cpu() -> ImportOptions {
    ImportOptions {
        device: Device::Cpu,
        ..Default::default()
    }
}

#[test]
fn a_torchscript_file_is_recognised_by_content_not_extension() {
    let dir = tempfile::tempdir().unwrap();
    let disguised = dir.path().join("model.onnx");
    std::fs::copy(common::fixture("vgg_badnets_traced.pt"), &disguised).unwrap();
    let out = ibau(&["inspect", "--json", disguised.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["format"], "torchscript");
    assert_eq!(json["trainable"]["tensors"], 26);
    assert_eq!(json["trainable"]["share"], 1.0);
    // BatchNorm running statistics are buffers, not parameters.
    let names: Vec<&str> = json["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"features.1.weight"), "{names:?}");
    assert!(!names.iter().any(|n| n.contains("running")), "{names:?}");
}

#[test]
fn state_dicts_and_pickled_modules_are_refused_with_advice() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    python(
        "import sys, torch, torch.nn as nn\n\
         d = sys.argv[1]\n\
         m = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))\n\
         torch.save(m.state_dict(), d + '/state_dict.pt')\n\
         torch.save(m, d + '/module.pt')\n\
         torch.save(m.state_dict(), d + '/legacy.pt', _use_new_zipfile_serialization=False)\n",
        &[d],
    );
    for (file, what) in [
        ("state_dict.pt", "state dict"),
        ("module.pt", "pickled PyTorch nn.Module"),
        ("legacy.pt", "Python pickle"),
    ] {
        let path = dir.path().join(file);
        let p = path.to_str().unwrap();
        let out_path = dir.path().join("out.pt");
        for args in [
            vec!["inspect", p],
            vec!["eval", p, "--data", FASHION, "--range", "0:10"],
            vec![
                "sanitize",
                "--no-scan",
                p,
                "--clean",
                FASHION,
                "--clean-range",
                "0:10",
                "-o",
                out_path.to_str().unwrap(),
            ],
        ] {
            let out = ibau(&args);
            let err = stderr(&out);
            assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
            assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
            for needle in [
                file,
                what,
                "never unpickles",
                "torch.jit.save",
                "torch.onnx.export",
            ] {
                assert!(err.contains(needle), "`{needle}` not in: {err}");
            }
            assert!(!out_path.exists());
        }
    }
}

/// The traced VGG and its ONNX export with BatchNormalization kept hold the
/// same weights: same parameter names, same logits, and I-BAU's first steps
/// (perturbation, hypergradient) run through TorchScript's interpreter with
/// second derivatives and land close to the ONNX back end's.
#[test]
fn torchscript_back_end_agrees_with_the_onnx_export() {
    let ts = match Model::load(&common::fixture("vgg_badnets_traced.pt"), &cpu()).unwrap() {
        Model::TorchScript(ts) => ts,
        Model::Onnx { .. } => panic!("the traced fixture is TorchScript"),
    };
    let (_, onnx) = load_classifier(&common::fixture("vgg_badnets_bn.onnx"), &cpu()).unwrap();
    assert_eq!(ts.names, onnx.graph.params.names);

    let data = ibau::data::load(Path::new(FASHION)).unwrap();
    let batches: Vec<Batch> = data
        .slice(0..200)
        .unwrap()
        .batches(100)
        .map(|(images, labels)| Batch { images, labels })
        .collect();
    let a = tch::no_grad(|| ts.logits(&batches[0].images)).unwrap();
    let b = tch::no_grad(|| onnx.logits(&batches[0].images)).unwrap();
    let diff = (&a - &b).abs().max().double_value(&[]);
    assert!(diff < 1e-4, "logits differ by {diff}");

    let config = Config {
        search: Search::Paper,
        ..Config::default()
    };
    let mask = Tensor::zeros([100, 1, 1, 1], (Kind::Float, Device::Cpu));
    let _ = mask.narrow(0, 7, 1).fill_(1.0);
    let delta_ts = perturbation_search(&ts, &batches, &config, &mut |_, _| {}).unwrap();
    let delta_onnx = perturbation_search(&onnx, &batches, &config, &mut |_, _| {}).unwrap();
    let rel = |x: &Tensor, y: &Tensor| {
        (x - y).abs().max().double_value(&[]) / y.abs().max().double_value(&[]).max(1e-12)
    };
    // Float32 and max-pool ties: close, not equal (fused BatchNorm rounds
    // differently from the ONNX formula).
    assert!(
        rel(&delta_ts, &delta_onnx) < 0.1,
        "perturbations differ: {}",
        rel(&delta_ts, &delta_onnx)
    );
    let g_ts = hypergradient(&ts, &delta_onnx, &batches[1], &mask, &batches[0], &config).unwrap();
    let g_onnx =
        hypergradient(&onnx, &delta_onnx, &batches[1], &mask, &batches[0], &config).unwrap();
    assert_eq!(g_ts.len(), 26);
    for ((name, x), y) in ts.names.iter().zip(&g_ts).zip(&g_onnx) {
        assert!(
            x.isfinite().all().int64_value(&[]) == 1
                && x.abs().sum(Kind::Double).double_value(&[]) > 0.0,
            "hypergradient of `{name}` is zero or not finite"
        );
        assert!(
            rel(x, y) < 0.1,
            "hypergradient of `{name}` differs: {}",
            rel(x, y)
        );
    }
}

const CHECK_WRITTEN: &str = r#"
import json, sys, gzip
import numpy as np, torch
src, out, images, report = sys.argv[1:5]
a, b = torch.jit.load(src), torch.jit.load(out)
def params(m): return [(n, str(p.dtype), tuple(p.shape)) for n, p in m.named_parameters()]
assert params(a) == params(b), "parameter names, dtypes or shapes differ"
assert [n for n, _ in a.named_buffers()] == [n for n, _ in b.named_buffers()]
assert all(torch.equal(x, y) for (_, x), (_, y) in zip(a.named_buffers(), b.named_buffers())), "buffers changed"
assert a.code == b.code, "code differs"
changed = sum(not torch.equal(x, y) for (_, x), (_, y) in zip(a.named_parameters(), b.named_parameters()))
assert changed == len(params(a)), f"only {changed} parameters changed"
raw = gzip.open(images, "rb").read()
x = torch.from_numpy(np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 1, 28, 28)[5000:5500].astype(np.float32) / 255)
labels = np.frombuffer(gzip.open(images.replace("images-idx3", "labels-idx1"), "rb").read(), np.uint8, offset=8)[5000:5500]
b.eval()
with torch.no_grad():
    acc = float((b(x).argmax(1).numpy() == labels).mean())
r = json.load(open(report))
print(json.dumps({"acc": acc, "ibau_acc": r["after"]["acc"]}))
"#;

#[test]
fn sanitize_writes_a_torchscript_file_python_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let input = common::fixture("vgg_badnets_scripted.pt");
    let output = dir.path().join("clean.pt");
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
        "5000:5500",
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
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(json["parity"]["runtime"], "libtorch");
    assert_eq!(json["trainable"]["share"], 1.0);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        leftovers.len(),
        2,
        "only the model and the report: {leftovers:?}"
    );

    let checked = python(
        CHECK_WRITTEN,
        &[
            input.to_str().unwrap(),
            output.to_str().unwrap(),
            FASHION,
            report.to_str().unwrap(),
        ],
    );
    let v: serde_json::Value = serde_json::from_str(checked.trim()).unwrap();
    assert_eq!(
        v["acc"], v["ibau_acc"],
        "Python's torch.jit.load predicts differently: {v}"
    );

    // The written file is a TorchScript file ibau reads like the input.
    let out = ibau(&["inspect", output.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // And never onto the input.
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
}

#[test]
fn verify_compares_a_torchscript_file_with_an_onnx_file() {
    let ts = common::fixture("vgg_badnets_traced.pt");
    let same = common::fixture("vgg_badnets_legacy.onnx");
    let other = common::fixture("resnet_blend_legacy.onnx");
    let out = ibau(&[
        "verify",
        ts.to_str().unwrap(),
        "--onnx",
        same.to_str().unwrap(),
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    let out = ibau(&[
        "verify",
        same.to_str().unwrap(),
        "--torchscript",
        common::fixture("vgg_badnets_scripted.pt").to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(json["reference"]
        .as_str()
        .unwrap()
        .starts_with("torchscript"));
    // A different model is a finding (exit 1), not an error.
    let out = ibau(&[
        "verify",
        ts.to_str().unwrap(),
        "--onnx",
        other.to_str().unwrap(),
    ]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    // A TorchScript file alone has nothing to be compared with.
    let out = ibau(&["verify", ts.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--onnx"), "{}", stderr(&out));
}
