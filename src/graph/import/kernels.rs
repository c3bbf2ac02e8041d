//! Import phase 3: kernels.
//!
//! Each node's op spec is found in the registry for the model's opset; the
//! node's input and output counts are checked against the spec (generic code,
//! so that no op builder has to) before the builder reads the attributes.

use crate::graph::ops::{Attrs, Kernel, NodeInfo, OpError, Registry};
use crate::graph::{node_name, unsupported_op, GraphError, ImportOptions};
use crate::onnx::Model;

/// Builds the kernel of node `index` of `model`. Errors name the node and op.
pub(super) fn build_kernel(
    model: &Model,
    registry: &Registry,
    index: usize,
    options: &ImportOptions,
) -> Result<Kernel, GraphError> {
    let node = &model.graph().node[index];
    let name = node_name(node.name(), index);
    let opset = model.opset(node.domain()).unwrap_or(0);
    let spec = match registry.find(node.op_type(), opset) {
        Some(spec) => spec,
        None => {
            let unsupported = unsupported_op(model, registry, index).into_iter().collect();
            return Err(GraphError::Unsupported(unsupported));
        }
    };
    let node_err = |source: OpError| GraphError::Node {
        node: name.clone(),
        op_type: node.op_type().to_string(),
        source: Box::new(source),
    };
    let n_in = node.input.len();
    let n_out = node.output.len();
    if !spec.inputs.contains(&n_in) || !spec.outputs.contains(&n_out) {
        return Err(node_err(OpError::Unsupported(format!(
            "{n_in} inputs and {n_out} outputs; the op takes {:?} inputs and {:?} outputs",
            spec.inputs, spec.outputs
        ))));
    }
    let info = NodeInfo {
        name: &name,
        op_type: node.op_type(),
        opset,
        attrs: Attrs::new(&node.attribute),
        num_inputs: n_in,
        num_outputs: n_out,
        float_kind: options.float_kind,
        device: options.device,
    };
    (spec.build)(&info).map_err(node_err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::build::{model, node};
    use crate::onnx::proto::{attribute_proto::AttributeType, AttributeProto};

    fn build(m: &Model, index: usize) -> Result<Kernel, GraphError> {
        build_kernel(m, &Registry::standard(), index, &ImportOptions::default())
    }

    fn message(result: Result<Kernel, GraphError>) -> String {
        match result {
            Ok(_) => panic!("the kernel builds"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn counts_are_checked_against_the_spec() {
        let m = model(
            vec![
                node("relu", "Relu", &["x", "x"], &["y"]),
                node("split", "Split", &["x"], &["a", "b"]),
            ],
            vec![],
            &[("x", &[2])],
            &[("y", &[2])],
        );
        assert_eq!(
            message(build(&m, 0)),
            "node `relu` (Relu): 2 inputs and 1 outputs; the op takes 1..=1 inputs and \
             1..=1 outputs"
        );
        let split = build(&m, 1).unwrap();
        let x = tch::Tensor::from_slice(&[1.0f32, 2.0]);
        assert_eq!(split(&[Some(&x)]).unwrap().len(), 2);
    }

    #[test]
    fn builder_errors_name_the_node() {
        let mut leaky = node("leaky", "LeakyRelu", &["x"], &["y"]);
        leaky.attribute.push(AttributeProto {
            name: Some("alpha".into()),
            ints: vec![1],
            r#type: Some(AttributeType::Ints as i32),
            ..Default::default()
        });
        let m = model(vec![leaky], vec![], &[("x", &[2])], &[("y", &[2])]);
        assert_eq!(
            message(build(&m, 0)),
            "node `leaky` (LeakyRelu): attribute `alpha`: expected Float, got Ints"
        );
    }

    #[test]
    fn an_unsupported_node_is_an_error_not_a_panic() {
        let m = model(
            vec![node("", "Frobnicate", &["x"], &["y"])],
            vec![],
            &[("x", &[2])],
            &[("y", &[2])],
        );
        match build(&m, 0) {
            Err(GraphError::Unsupported(list)) => {
                assert_eq!(list.len(), 1);
                assert_eq!(list[0].node, "#0");
                assert_eq!(list[0].reason, "op not supported");
            }
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("the kernel builds"),
        }
    }
}
