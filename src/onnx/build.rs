//! Small ONNX models built in code from the prost types: for unit tests,
//! the hostile-input tests and tools that make models on the fly.

use std::path::PathBuf;

use crate::onnx::proto::{
    tensor_shape_proto::{dimension::Value as DimValue, Dimension},
    type_proto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto,
};
use crate::onnx::{DataType, Model};

/// A float32 tensor value `name` of shape `dims`.
pub fn value(name: &str, dims: &[i64]) -> ValueInfoProto {
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(DataType::FLOAT.0),
                shape: Some(TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|&d| Dimension {
                            value: Some(DimValue::DimValue(d)),
                            ..Default::default()
                        })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A default-domain node (an empty input name is an omitted input).
pub fn node(name: &str, op_type: &str, inputs: &[&str], outputs: &[&str]) -> NodeProto {
    NodeProto {
        name: Some(name.into()),
        op_type: Some(op_type.into()),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// A float32 initializer.
pub fn floats(name: &str, dims: &[i64], values: &[f32]) -> TensorProto {
    TensorProto {
        name: Some(name.into()),
        data_type: Some(DataType::FLOAT.0),
        dims: dims.to_vec(),
        float_data: values.to_vec(),
        ..Default::default()
    }
}

/// An int64 initializer.
pub fn int64s(name: &str, dims: &[i64], values: &[i64]) -> TensorProto {
    TensorProto {
        name: Some(name.into()),
        data_type: Some(DataType::INT64.0),
        dims: dims.to_vec(),
        int64_data: values.to_vec(),
        ..Default::default()
    }
}

/// An opset-17 model of `nodes` with graph inputs `inputs` and outputs
/// `outputs` (float32 values of the shapes given).
pub fn model(
    nodes: Vec<NodeProto>,
    initializer: Vec<TensorProto>,
    inputs: &[(&str, &[i64])],
    outputs: &[(&str, &[i64])],
) -> Model {
    let proto = ModelProto {
        ir_version: Some(8),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(17),
        }],
        graph: Some(GraphProto {
            name: Some("test".into()),
            node: nodes,
            initializer,
            input: inputs.iter().map(|(n, d)| value(n, d)).collect(),
            output: outputs.iter().map(|(n, d)| value(n, d)).collect(),
            ..Default::default()
        }),
        ..Default::default()
    };
    Model {
        proto,
        path: PathBuf::from("test.onnx"),
        external: Default::default(),
    }
}
