//! [`Graph::import`], in phases: a decoded ONNX model -> our executable graph.
//!
//! One file per phase (burn-onnx's `phases/`), each a function that can be
//! tested on its own; `import` only runs them in turn:
//!
//! 1. [`order`]: every value read is produced exactly once; nodes sorted
//!    topologically (file order is not trusted).
//! 2. [`roles`]: which float initializers are trainable weights, and why the
//!    others are not ([`ParamRole`]); each initializer becomes a parameter
//!    or a constant.
//! 3. [`kernels`]: each node's kernel, built by the registry after its input
//!    and output counts are checked against the op's spec.
//! 4. [`fold`]: nodes whose inputs are all constant are evaluated here, once.
//! 5. [`liveness`]: after which node each value can be freed.
//!
//! Phases 3 and 4 run node by node in topological order, so that a node reads
//! the constants its producers folded.

mod fold;
mod kernels;
mod liveness;
mod order;
mod roles;

use std::collections::{HashMap, HashSet};

use super::ops::Registry;
use super::{node_name, unsupported_ops, ExecNode, Graph, GraphError, ImportOptions, ValueInfo};
use crate::onnx::Model;
pub use roles::{InitializerRole, ParamRole};

/// One slot per value name, numbered in order of first mention.
#[derive(Debug, Default)]
struct Slots(HashMap<String, usize>);

impl Slots {
    /// The slot of value `name`, a new one on first mention.
    fn slot(&mut self, name: &str) -> usize {
        let next = self.0.len();
        *self.0.entry(name.to_string()).or_insert(next)
    }

    fn len(&self) -> usize {
        self.0.len()
    }
}

impl Graph {
    /// Imports `model`. Fails, before computing anything, with the list of every
    /// unsupported op when there is one.
    pub fn import(
        model: &Model,
        registry: &Registry,
        options: &ImportOptions,
    ) -> Result<Graph, GraphError> {
        let unsupported = unsupported_ops(model, registry);
        if !unsupported.is_empty() {
            return Err(GraphError::Unsupported(unsupported));
        }
        let graph = model.graph();
        let initializer_names: HashSet<&str> = graph.initializer.iter().map(|t| t.name()).collect();
        let inputs: Vec<ValueInfo> = graph
            .input
            .iter()
            .filter(|v| !initializer_names.contains(v.name()))
            .map(ValueInfo::from_proto)
            .collect();
        let outputs: Vec<ValueInfo> = graph.output.iter().map(ValueInfo::from_proto).collect();
        let mut slots = Slots::default();
        let input_slots: Vec<usize> = inputs.iter().map(|v| slots.slot(&v.name)).collect();

        let order = order::validate_and_order(graph)?;

        let on_path = roles::differentiable_values(model, registry, &order);
        let roles::Initializers {
            params,
            roles,
            mut constants,
        } = roles::initializers(graph, &on_path, options, &mut slots)?;

        let mut nodes = Vec::new();
        for &i in &order {
            let node = &graph.node[i];
            let name = node_name(node.name(), i);
            let kernel = kernels::build_kernel(model, registry, i, options)?;
            let in_slots: Vec<Option<usize>> = node
                .input
                .iter()
                .map(|n| (!n.is_empty()).then(|| slots.slot(n)))
                .collect();
            let out_slots: Vec<usize> = node.output.iter().map(|n| slots.slot(n)).collect();
            let folded =
                fold::evaluate_if_constant(&kernel, &in_slots, &constants).map_err(|source| {
                    GraphError::Node {
                        node: name.clone(),
                        op_type: node.op_type().to_string(),
                        source: Box::new(source),
                    }
                })?;
            match folded {
                Some(results) => constants.insert_all(&out_slots, results),
                None => nodes.push(ExecNode {
                    name,
                    op_type: node.op_type().to_string(),
                    inputs: in_slots,
                    outputs: out_slots,
                    kernel,
                }),
            }
        }
        let output_slots: Vec<usize> = outputs.iter().map(|o| slots.slot(&o.name)).collect();

        let reads: Vec<&[Option<usize>]> = nodes.iter().map(|n| n.inputs.as_slice()).collect();
        let frees = liveness::frees(&reads, &output_slots);

        Ok(Graph {
            inputs,
            outputs,
            params,
            roles,
            float_kind: options.float_kind,
            device: options.device,
            nodes,
            slot_count: slots.len(),
            constants: constants.into_list(),
            input_slots,
            output_slots,
            frees,
        })
    }
}
