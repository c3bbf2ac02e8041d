//! Shapes other than `[N, C, H, W] -> [N, classes]`: files whose batch size is
//! fixed (`torch.onnx.export` with its defaults: `vgg_badnets_batch1.onnx` is
//! the VGG of the other `vgg_badnets_*` fixtures exported that way, by
//! tools/make_fixed_batch_fixture.py), images without a channel axis
//! (`[N, 28, 28]`), and logits shaped `[N, classes, 1, 1]`.

use prost::Message;
use tch::{Device, Kind, Tensor};

use ibau::graph::{rebatch, ImportOptions};
use ibau::ibau::Classifier;
use ibau::model::load_classifier;
use ibau::onnx::proto::{
    tensor_shape_proto::dimension::Value as DimValue, type_proto, GraphProto, NodeProto,
    TensorProto, ValueInfoProto,
};

use std::path::Path;

use crate::common::{self, decode_fixture, dims_mut, ibau, stderr, stdout, write_model};

const FASHION: &str = "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz";

/// The VGG fixtures' trigger and target (models/fixtures.json).
const VGG_ATTACK: (&str, &str) = ("patch:size=3,value=1,row=24,col=24", "0");
/// The JAX MLP's (models/fixtures_jax.json).
const MLP_ATTACK: (&str, &str) = ("patch:size=4,value=1,row=12,col=12", "8");

/// `ibau eval --json` on Fashion-MNIST test images `range` with `attack`:
/// the metrics and stderr.
fn eval_json(
    model: &Path,
    range: &str,
    (trigger, target): (&str, &str),
) -> (serde_json::Value, String) {
    let out = ibau(&[
        "eval",
        model.to_str().unwrap(),
        "--data",
        FASHION,
        "--range",
        range,
        "--trigger",
        trigger,
        "--target",
        target,
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    (serde_json::from_str(&stdout(&out)).unwrap(), stderr(&out))
}

/// A Reshape node `name` from `input` to `output` with the int64 target
/// `shape`, stored as an initializer `<name>_shape`.
fn reshape(
    graph: &mut GraphProto,
    name: &str,
    input: &str,
    shape: &[i64],
    output: &str,
) -> NodeProto {
    let target = format!("{name}_shape");
    graph.initializer.push(TensorProto {
        name: Some(target.clone()),
        data_type: Some(7),
        dims: vec![shape.len() as i64],
        int64_data: shape.to_vec(),
        ..Default::default()
    });
    NodeProto {
        name: Some(name.into()),
        op_type: Some("Reshape".into()),
        input: vec![input.into(), target],
        output: vec![output.into()],
        ..Default::default()
    }
}

/// The batch-1 export gives the same ACC and ASR as the dynamic-batch export
/// of the same weights, in batches of 500, and says how it got there.
#[test]
fn a_model_exported_for_batch_one_evaluates_like_the_dynamic_export() {
    let (fixed, note) = eval_json(
        &common::fixture("vgg_badnets_batch1.onnx"),
        "5000:5600",
        VGG_ATTACK,
    );
    let (dynamic, _) = eval_json(
        &common::fixture("vgg_badnets_dynamo.onnx"),
        "5000:5600",
        VGG_ATTACK,
    );
    assert_eq!(fixed["acc"], dynamic["acc"]);
    assert_eq!(fixed["asr"], dynamic["asr"]);
    assert!(fixed["asr"].as_f64().unwrap() > 0.9, "{fixed}");
    assert!(
        note.contains("fixes the batch to 1") && note.contains("1 Reshape target follow"),
        "{note}"
    );
}

/// The rewrite for import: the input's batch axis becomes symbolic, the one
/// Reshape target `[1, 1152]` becomes `[0, 1152]` without `allowzero`; the
/// model it was made from is not touched.
#[test]
fn free_batch_rewrites_a_copy_of_the_reshape_target() {
    let model = ibau::onnx::Model::load(common::fixture("vgg_badnets_batch1.onnx")).unwrap();
    let before = model.proto.encode_to_vec();
    assert_eq!(rebatch::fixed_batch(&model.graph().input[0]), Some(1));
    let freed = rebatch::free_batch(&model, 1)
        .unwrap()
        .expect("batch 1 is fixed");
    assert_eq!(freed.reshapes, 1);
    assert_eq!(
        model.proto.encode_to_vec(),
        before,
        "the original is unchanged"
    );
    let graph = freed.model.graph();
    assert_eq!(rebatch::fixed_batch(&graph.input[0]), None);
    let Some(type_proto::Value::TensorType(t)) =
        graph.input[0].r#type.as_ref().unwrap().value.as_ref()
    else {
        panic!("tensor input")
    };
    assert!(matches!(
        t.shape.as_ref().unwrap().dim[0].value,
        Some(DimValue::DimParam(_))
    ));
    let reshape = graph
        .node
        .iter()
        .find(|n| n.op_type() == "Reshape")
        .unwrap();
    assert!(reshape.attribute.iter().all(|a| a.name() != "allowzero"));
    // A batch the file does not declare is not rewritten.
    assert!(rebatch::free_batch(&model, 2).unwrap().is_none());
}

/// The fallback for graphs the rewrite cannot free: runs of `b` samples,
/// the last one padded, give what one run of the whole batch gives.
#[test]
fn chunked_runs_match_one_run() {
    let options = ImportOptions {
        device: Device::Cpu,
        ..Default::default()
    };
    let (_, mut model) =
        load_classifier(&common::fixture("vgg_badnets_legacy.onnx"), &options).unwrap();
    assert_eq!(
        model.fixed_batch, None,
        "the legacy export has a dynamic batch"
    );
    tch::manual_seed(0);
    let x = Tensor::rand([7, 1, 28, 28], (Kind::Float, Device::Cpu));
    let whole = tch::no_grad(|| model.logits(&x)).unwrap();
    model.fixed_batch = Some(3);
    model.chunked = true;
    let chunks = ibau::model::fixed_batch_chunks(&x, 3).unwrap();
    assert_eq!(
        chunks
            .iter()
            .map(|(c, n)| (c.size()[0], *n))
            .collect::<Vec<_>>(),
        [(3, 3), (3, 3), (3, 1)]
    );
    let chunked = tch::no_grad(|| model.logits(&x)).unwrap();
    assert_eq!(chunked.size(), [7, 10]);
    let diff = (whole - chunked).abs().max().double_value(&[]);
    assert!(diff < 1e-5, "{diff}");
}

/// A file whose declared batch contradicts its own Reshape target fails with
/// one line naming the node, not libtorch's C++ backtrace.
#[test]
fn a_torch_error_inside_a_node_is_one_line_naming_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let mut proto = decode_fixture("vgg_badnets_batch1.onnx");
    dims_mut(&mut proto.graph.as_mut().unwrap().input[0])[0].value = Some(DimValue::DimValue(2));
    let path = write_model(dir.path(), "batch2.onnx", &proto);
    let out = ibau(&[
        "eval",
        path.to_str().unwrap(),
        "--data",
        FASHION,
        "--range",
        "0:10",
    ]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    // The note on how the batch is run, then the error on one line.
    let lines: Vec<&str> = err.trim_end().lines().collect();
    assert_eq!(lines.len(), 2, "{err}");
    assert!(lines[0].starts_with("batch: "), "{err}");
    assert!(lines[1].starts_with("error: "), "{err}");
    assert!(
        lines[1].contains("node_view") && lines[1].contains("Reshape"),
        "{err}"
    );
    assert!(!err.contains("frame #"), "{err}");
}

/// A head that ends in a 1x1 convolution without Flatten gives logits
/// `[N, classes, 1, 1]`: the VGG with its output reshaped that way evaluates
/// like the VGG (it used to report an ACC of thousands of percent).
#[test]
fn logits_with_trailing_unit_axes_are_class_scores() {
    let dir = tempfile::tempdir().unwrap();
    let mut proto = decode_fixture("vgg_badnets_legacy.onnx");
    let graph = proto.graph.as_mut().unwrap();
    let logits = graph.output[0].name().to_string();
    let node = reshape(graph, "to_4d", &logits, &[0, 10, 1, 1], "logits_4d");
    graph.node.push(node);
    graph.output = vec![ValueInfoProto {
        name: Some("logits_4d".into()),
        ..Default::default()
    }];
    let path = write_model(dir.path(), "vgg_4d.onnx", &proto);
    let (four, _) = eval_json(&path, "5000:5300", VGG_ATTACK);
    let (two, _) = eval_json(
        &common::fixture("vgg_badnets_legacy.onnx"),
        "5000:5300",
        VGG_ATTACK,
    );
    assert_eq!(four, two);
}

/// A model whose input is `[N, 28, 28]` (Keras's `Flatten(input_shape=(28,
/// 28))` first layer) takes one-channel images without a channel axis, with
/// no layout flag: the JAX MLP behind a Reshape from `[N, 28, 28]` to its
/// `[N, 784]` input evaluates like the JAX MLP.
#[test]
fn a_model_without_a_channel_axis_takes_images_as_hw() {
    let dir = tempfile::tempdir().unwrap();
    let mut proto = decode_fixture("jax_mlp.onnx");
    let graph = proto.graph.as_mut().unwrap();
    let flat = graph.input[0].name().to_string();
    let mut image = graph.input[0].clone();
    image.name = Some("image".into());
    let dims = dims_mut(&mut image);
    dims.truncate(1);
    for _ in 0..2 {
        let mut d = dims[0].clone();
        d.value = Some(DimValue::DimValue(28));
        dims.push(d);
    }
    graph.input = vec![image];
    let node = reshape(graph, "flatten_image", "image", &[0, 784], &flat);
    graph.node.insert(0, node);
    let path = write_model(dir.path(), "mlp_hw.onnx", &proto);
    let (hw, _) = eval_json(&path, "5000:5300", MLP_ATTACK);
    let (flat, _) = eval_json(&common::fixture("jax_mlp.onnx"), "5000:5300", MLP_ATTACK);
    assert_eq!(hw, flat);
    assert!(hw["asr"].as_f64().unwrap() > 0.8, "{hw}");
}
