//! Models exported for one fixed batch size.
//!
//! An exporter that is not told the batch axis is dynamic (the defaults of
//! `torch.onnx.export`, a concrete shape in jax2onnx) declares the input as
//! `[1, C, H, W]` and bakes the batch into Reshape targets such as `[1, 1152]`.
//! [`free_batch`] rewrites a copy of such a model for import: the input's batch
//! axis becomes symbolic and the leading `B` of each Reshape target on the
//! input's data path becomes `0` ("copy the input's dimension"), so the graph
//! takes any batch. The rewrite is a guess about what the leading `B` meant;
//! the caller checks the result against runs of `B` samples at a time before
//! trusting it. The file itself is never changed.

use std::collections::HashSet;

use tch::{Kind, Tensor};

use super::ValueInfo;
use crate::onnx::proto::{
    tensor_shape_proto::dimension::Value as DimValue, type_proto, AttributeProto, TensorProto,
    ValueInfoProto,
};
use crate::onnx::{tensor_from_proto, write_tensor_data, Model, TensorError};

/// A copy of a fixed-batch model that takes any batch size.
pub struct Rebatched {
    pub model: Model,
    /// How many Reshape target tensors now copy the batch from their data.
    pub reshapes: usize,
}

/// The batch size `value` declares on its first axis, when fixed and positive.
pub fn fixed_batch(value: &ValueInfoProto) -> Option<i64> {
    ValueInfo::from_proto(value)
        .fixed_dims()?
        .first()
        .copied()?
}

/// Makes the first axis of `value` symbolic when it is `batch`.
fn free_first_axis(value: &mut ValueInfoProto, batch: i64) {
    if fixed_batch(value) != Some(batch) {
        return;
    }
    if let Some(type_proto::Value::TensorType(t)) =
        value.r#type.as_mut().and_then(|t| t.value.as_mut())
    {
        if let Some(dim) = t.shape.as_mut().and_then(|s| s.dim.first_mut()) {
            dim.value = Some(DimValue::DimParam("batch".into()));
        }
    }
}

/// The copy of `model` (whose first input declares `batch` samples) described
/// in the module documentation; `None` when the first input does not fix its
/// batch to `batch`.
pub fn free_batch(model: &Model, batch: i64) -> Result<Option<Rebatched>, TensorError> {
    let mut model = model.clone();
    let Some(graph) = model.proto.graph.as_mut() else {
        return Ok(None);
    };
    let Some(input) = graph.input.first_mut() else {
        return Ok(None);
    };
    if fixed_batch(input) != Some(batch) {
        return Ok(None);
    }
    let input_name = input.name().to_string();
    free_first_axis(input, batch);
    for output in &mut graph.output {
        free_first_axis(output, batch);
    }

    // Values computed from the image input (its data path); nodes in file
    // order may not be sorted, so iterate to a fixed point.
    let mut on_path: HashSet<String> = HashSet::from([input_name]);
    loop {
        let before = on_path.len();
        for node in &graph.node {
            if node.input.iter().any(|i| on_path.contains(i)) {
                on_path.extend(node.output.iter().filter(|o| !o.is_empty()).cloned());
            }
        }
        if on_path.len() == before {
            break;
        }
    }

    // Shape tensors read by Reshape nodes on the data path, and whether some
    // other reader forbids changing them.
    let mut targets: HashSet<String> = HashSet::new();
    let mut forbidden: HashSet<String> = HashSet::new();
    for node in &graph.node {
        let is_rewritable_reshape = node.op_type() == "Reshape"
            && node.domain().is_empty()
            && node.input.len() == 2
            && on_path.contains(&node.input[0]);
        for (k, name) in node.input.iter().enumerate() {
            if is_rewritable_reshape && k == 1 {
                targets.insert(name.clone());
            } else {
                forbidden.insert(name.clone());
            }
        }
    }
    for output in &graph.output {
        forbidden.insert(output.name().to_string());
    }
    targets.retain(|t| !forbidden.contains(t));

    // A target holding no zero means the same with or without `allowzero`;
    // rewritten, its leading 0 must copy, so its readers drop `allowzero`.
    let mut rewritten: HashSet<String> = HashSet::new();
    let mut rewrite = |name: &str, t: &mut TensorProto| -> Result<(), TensorError> {
        if t.dims.len() != 1 || t.data_type() != crate::onnx::DataType::INT64.0 {
            return Ok(());
        }
        let shape = tensor_from_proto(t)?;
        let first = shape.int64_value(&[0]);
        if first != batch || shape.size()[0] < 2 {
            return Ok(());
        }
        let mut values = Vec::<i64>::try_from(&shape).map_err(|source| TensorError::Torch {
            name: name.to_string(),
            source,
        })?;
        if values.contains(&0) {
            return Ok(());
        }
        values[0] = 0;
        write_tensor_data(t, &Tensor::from_slice(&values).to_kind(Kind::Int64))?;
        rewritten.insert(name.to_string());
        Ok(())
    };
    for init in &mut graph.initializer {
        if targets.contains(init.name()) {
            let name = init.name().to_string();
            rewrite(&name, init)?;
        }
    }
    for node in &mut graph.node {
        if node.op_type() == "Constant"
            && node.output.len() == 1
            && targets.contains(&node.output[0])
        {
            let name = node.output[0].clone();
            if let Some(AttributeProto { t: Some(t), .. }) =
                node.attribute.iter_mut().find(|a| a.name() == "value")
            {
                rewrite(&name, t)?;
            }
        }
    }
    for node in &mut graph.node {
        if node.op_type() == "Reshape" && node.input.get(1).is_some_and(|t| rewritten.contains(t)) {
            node.attribute.retain(|a| a.name() != "allowzero");
        }
    }
    Ok(Some(Rebatched {
        model,
        reshapes: rewritten.len(),
    }))
}
