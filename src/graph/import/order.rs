//! Import phase 1: validation and topological order.
//!
//! Every value a node or a graph output reads must come from a node, an
//! initializer or a graph input, and no two node outputs may share a name
//! (ONNX graphs are in single static assignment form); nodes are then sorted
//! so that each runs after the nodes it reads from (the file's order is not
//! trusted).

use std::collections::{BTreeSet, HashMap, HashSet};

use crate::graph::{node_name, GraphError};
use crate::onnx::proto::GraphProto;

/// Checks that every value read is produced, by one node at most, and
/// returns the node indices in an order where each node follows its
/// producers, keeping file order among nodes that are ready together. Errors
/// name the first offending node in file order.
pub(super) fn validate_and_order(graph: &GraphProto) -> Result<Vec<usize>, GraphError> {
    let producer = producers(graph)?;
    check_reads(graph, &producer)?;
    topological_order(graph, &producer)
}

/// The node that writes each value; a value written twice (by two nodes, or
/// twice by one) is an error naming the second writer and the first.
fn producers(graph: &GraphProto) -> Result<HashMap<&str, usize>, GraphError> {
    let mut producer: HashMap<&str, usize> = HashMap::new();
    for (i, node) in graph.node.iter().enumerate() {
        for out in node.output.iter().filter(|o| !o.is_empty()) {
            if let Some(&first) = producer.get(out.as_str()) {
                let first_node = &graph.node[first];
                return Err(GraphError::DuplicateOutput {
                    node: node_name(node.name(), i),
                    op_type: node.op_type().to_string(),
                    value: out.clone(),
                    first: node_name(first_node.name(), first),
                    first_op_type: first_node.op_type().to_string(),
                });
            }
            producer.insert(out.as_str(), i);
        }
    }
    Ok(producer)
}

/// Fails on the first node input, then the first graph output, that no node,
/// initializer or graph input produces.
fn check_reads(graph: &GraphProto, producer: &HashMap<&str, usize>) -> Result<(), GraphError> {
    let available: HashSet<&str> = graph
        .input
        .iter()
        .map(|v| v.name())
        .chain(graph.initializer.iter().map(|t| t.name()))
        .collect();
    let produced = |name: &str| producer.contains_key(name) || available.contains(name);
    for (i, node) in graph.node.iter().enumerate() {
        for input in node.input.iter().filter(|n| !n.is_empty()) {
            if !produced(input) {
                return Err(GraphError::MissingValue {
                    node: node_name(node.name(), i),
                    op_type: node.op_type().to_string(),
                    value: input.clone(),
                });
            }
        }
    }
    for out in &graph.output {
        if !produced(out.name()) {
            return Err(GraphError::MissingOutput(out.name().to_string()));
        }
    }
    Ok(())
}

/// Kahn's algorithm, keeping file order among ready nodes; a cycle is an
/// error naming the first node on it (or after it) in file order.
fn topological_order(
    graph: &GraphProto,
    producer: &HashMap<&str, usize>,
) -> Result<Vec<usize>, GraphError> {
    let n = graph.node.len();
    let mut indegree = vec![0usize; n];
    let mut readers: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, node) in graph.node.iter().enumerate() {
        let deps: HashSet<usize> = node
            .input
            .iter()
            .filter_map(|name| producer.get(name.as_str()).copied())
            .collect();
        indegree[i] = deps.len();
        for d in deps {
            readers[d].push(i);
        }
    }
    let mut ready: BTreeSet<usize> = (0..n).filter(|&i| indegree[i] == 0).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(i) = ready.pop_first() {
        order.push(i);
        for &r in &readers[i] {
            indegree[r] -= 1;
            if indegree[r] == 0 {
                ready.insert(r);
            }
        }
    }
    if order.len() < n {
        let stuck = (0..n).find(|&i| indegree[i] > 0).unwrap_or(0);
        let node = &graph.node[stuck];
        return Err(GraphError::Cycle {
            node: node_name(node.name(), stuck),
            op_type: node.op_type().to_string(),
        });
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::ops::Registry;
    use crate::graph::{Graph, ImportOptions};
    use crate::onnx::build::{model, node};
    use crate::onnx::Model;

    const X: (&str, &[i64]) = ("x", &[1, 3]);
    const Y: (&str, &[i64]) = ("y", &[1, 3]);

    /// The message `Graph::import` fails with.
    fn import_error(model: &Model) -> String {
        match Graph::import(model, &Registry::standard(), &ImportOptions::default()) {
            Ok(_) => panic!("the import succeeds"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn nodes_run_after_their_producers_whatever_the_file_order() {
        let m = model(
            vec![
                node("last", "Relu", &["b"], &["y"]),
                node("middle", "Sigmoid", &["a"], &["b"]),
                node("first", "Neg", &["x"], &["a"]),
                node("independent", "Abs", &["x"], &["unused"]),
            ],
            vec![],
            &[X],
            &[Y],
        );
        // Of the nodes ready together, the earliest in the file runs first:
        // `middle` (1) before `independent` (3) once `first` has run.
        assert_eq!(validate_and_order(m.graph()).unwrap(), [2, 1, 0, 3]);
    }

    #[test]
    fn a_cycle_is_an_error_naming_a_node_on_it() {
        let m = model(
            vec![
                node("entry", "Add", &["x", "back"], &["loop"]),
                node("back_edge", "Relu", &["loop"], &["back"]),
                node("exit", "Sigmoid", &["loop"], &["y"]),
            ],
            vec![],
            &[X],
            &[Y],
        );
        let message = "the graph has a cycle through node `entry` (Add)";
        assert_eq!(
            validate_and_order(m.graph()).unwrap_err().to_string(),
            message
        );
        assert_eq!(import_error(&m), message);
    }

    #[test]
    fn a_value_nothing_produces_is_an_error_naming_the_reader() {
        let m = model(
            vec![
                node("fine", "Relu", &["x"], &["a"]),
                node("reader", "Add", &["a", "ghost"], &["y"]),
            ],
            vec![],
            &[X],
            &[Y],
        );
        let message = "node `reader` (Add): input `ghost` is not produced by any node, \
                       initializer or graph input";
        assert_eq!(
            validate_and_order(m.graph()).unwrap_err().to_string(),
            message
        );
        assert_eq!(import_error(&m), message);
    }

    #[test]
    fn an_output_nothing_produces_is_an_error() {
        let m = model(vec![node("r", "Relu", &["x"], &["a"])], vec![], &[X], &[Y]);
        assert_eq!(
            import_error(&m),
            "graph output `y` is not produced by any node, initializer or graph input"
        );
    }

    #[test]
    fn a_value_written_twice_is_an_error_naming_both_writers() {
        let m = model(
            vec![
                node("first", "Relu", &["x"], &["h"]),
                node("second", "Sigmoid", &["x"], &["h"]),
                node("out", "Neg", &["h"], &["y"]),
            ],
            vec![],
            &[X],
            &[Y],
        );
        let message =
            "node `second` (Sigmoid): output `h` is already written by node `first` (Relu)";
        assert_eq!(
            validate_and_order(m.graph()).unwrap_err().to_string(),
            message
        );
        assert_eq!(import_error(&m), message);

        // Unnamed nodes are named by their index; one node writing a value
        // twice is the same error.
        let m = model(
            vec![
                node("", "Relu", &["x"], &["h"]),
                node("", "Split", &["h"], &["y", "y"]),
            ],
            vec![],
            &[X],
            &[Y],
        );
        assert_eq!(
            import_error(&m),
            "node `#1` (Split): output `y` is already written by node `#1` (Split)"
        );
    }
}
