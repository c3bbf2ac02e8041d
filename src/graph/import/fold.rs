//! Import phase 4: constant folding.
//!
//! A node whose inputs are all constant (frozen initializers, or results
//! folded before it: shape chains, `Constant` nodes) is evaluated once at
//! import, without autograd, and its results become constants. Results of
//! more than [`MAX_FOLDED_ELEMENTS`] elements are not kept: the node runs with
//! the rest, so that import never holds a huge tensor the forward pass would
//! make anyway.

use std::collections::HashMap;

use tch::Tensor;

use crate::graph::ops::{Kernel, OpResult};
use crate::limits::MAX_FOLDED_ELEMENTS;

/// The constant values of a graph by slot: frozen initializers and folded
/// results, in the order they were made.
#[derive(Debug, Default)]
pub(super) struct Constants {
    list: Vec<(usize, Tensor)>,
    /// Where each slot's tensor is in `list` (the latest, should a slot be
    /// written twice).
    index: HashMap<usize, usize>,
}

impl Constants {
    pub fn insert(&mut self, slot: usize, tensor: Tensor) {
        self.index.insert(slot, self.list.len());
        self.list.push((slot, tensor));
    }

    /// Stores `tensors` in `slots`, pairwise.
    pub fn insert_all(&mut self, slots: &[usize], tensors: Vec<Tensor>) {
        for (&s, t) in slots.iter().zip(tensors) {
            self.insert(s, t);
        }
    }

    pub fn get(&self, slot: usize) -> Option<&Tensor> {
        self.index.get(&slot).map(|&k| &self.list[k].1)
    }

    pub fn contains(&self, slot: usize) -> bool {
        self.index.contains_key(&slot)
    }

    /// Every constant with its slot, in the order inserted.
    pub fn into_list(self) -> Vec<(usize, Tensor)> {
        self.list
    }
}

/// Runs `kernel` once when every input it reads (`inputs`, slots; `None` for
/// an omitted input) is constant. `None` when some input is not, or when a
/// result has more than [`MAX_FOLDED_ELEMENTS`] elements.
pub(super) fn evaluate_if_constant(
    kernel: &Kernel,
    inputs: &[Option<usize>],
    constants: &Constants,
) -> OpResult<Option<Vec<Tensor>>> {
    if !inputs.iter().flatten().all(|&s| constants.contains(s)) {
        return Ok(None);
    }
    let args: Vec<Option<&Tensor>> = inputs
        .iter()
        .map(|s| s.and_then(|s| constants.get(s)))
        .collect();
    let results = tch::no_grad(|| kernel(&args))?;
    let small = results
        .iter()
        .all(|t| t.numel() as u128 <= MAX_FOLDED_ELEMENTS as u128);
    Ok(small.then_some(results))
}

#[cfg(test)]
mod tests {
    use tch::Kind;

    use super::*;
    use crate::graph::import::kernels::build_kernel;
    use crate::graph::ops::Registry;
    use crate::graph::{Graph, ImportOptions};
    use crate::onnx::build::{int64s, model, node};
    use crate::onnx::Model;

    fn kernel(m: &Model, index: usize) -> Kernel {
        build_kernel(m, &Registry::standard(), index, &ImportOptions::default())
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// x[2, 3] -> Reshape by (`a` + `b`) -> y: the Add is folded.
    fn shape_chain() -> Model {
        model(
            vec![
                node("target", "Add", &["a", "b"], &["target"]),
                node("reshape", "Reshape", &["x", "target"], &["y"]),
            ],
            vec![int64s("a", &[2], &[1, 2]), int64s("b", &[2], &[2, 1])],
            &[("x", &[2, 3])],
            &[("y", &[3, 3])],
        )
    }

    #[test]
    fn a_node_on_constants_is_evaluated_once() {
        let m = shape_chain();
        let add = kernel(&m, 0);
        let mut constants = Constants::default();
        constants.insert(0, Tensor::from_slice(&[1i64, 2]));
        constants.insert(1, Tensor::from_slice(&[2i64, 1]));
        let folded = evaluate_if_constant(&add, &[Some(0), Some(1)], &constants)
            .unwrap()
            .expect("folded");
        assert_eq!(Vec::<i64>::try_from(&folded[0]).unwrap(), [3, 3]);
        // One input not constant: not folded.
        assert!(evaluate_if_constant(&add, &[Some(0), Some(2)], &constants)
            .unwrap()
            .is_none());

        let g = Graph::import(&m, &Registry::standard(), &ImportOptions::default()).unwrap();
        assert_eq!(g.runtime_node_count(), 1);
        assert_eq!(g.constants.len(), 3);
        let x = Tensor::arange(9, (Kind::Float, tch::Device::Cpu));
        let y = g.forward(&[x]).unwrap();
        assert_eq!(y[0].size(), [3, 3]);
    }

    #[test]
    fn results_over_the_element_limit_are_not_kept() {
        let m = model(
            vec![node("fill", "ConstantOfShape", &["shape"], &["y"])],
            vec![],
            &[],
            &[("y", &[])],
        );
        let fill = kernel(&m, 0);
        let side = 1i64 << 12;
        assert_eq!(side * side, MAX_FOLDED_ELEMENTS);
        let mut constants = Constants::default();
        constants.insert(0, Tensor::from_slice(&[side, side]));
        constants.insert(1, Tensor::from_slice(&[side + 1, side]));
        let at_limit = evaluate_if_constant(&fill, &[Some(0)], &constants).unwrap();
        assert_eq!(at_limit.expect("folded")[0].size(), [side, side]);
        assert!(evaluate_if_constant(&fill, &[Some(1)], &constants)
            .unwrap()
            .is_none());
    }

    #[test]
    fn folding_errors_name_the_node() {
        // Reshape of a constant to a shape it cannot take, found at import.
        let m = model(
            vec![node("bad", "Reshape", &["data", "shape"], &["y"])],
            vec![
                int64s("data", &[4], &[1, 2, 3, 4]),
                int64s("shape", &[1], &[3]),
            ],
            &[],
            &[("y", &[3])],
        );
        let err = Graph::import(&m, &Registry::standard(), &ImportOptions::default())
            .err()
            .expect("the import fails");
        assert!(
            err.to_string().starts_with("node `bad` (Reshape): "),
            "{err}"
        );
    }
}
