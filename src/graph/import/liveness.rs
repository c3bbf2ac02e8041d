//! Import phase 5: liveness.
//!
//! [`Graph::forward`](crate::graph::Graph::forward) drops each value after
//! the last node that reads it, so that a forward pass holds only the
//! activations still needed (autograd keeps what backward needs on its own).
//! Graph outputs are never freed.

use std::collections::HashMap;

/// For each node (given by the slots it reads, in run order), the slots whose
/// last reader it is, sorted; `outputs` are left out.
pub(super) fn frees(reads: &[&[Option<usize>]], outputs: &[usize]) -> Vec<Vec<usize>> {
    let mut last_reader: HashMap<usize, usize> = HashMap::new();
    for (k, inputs) in reads.iter().enumerate() {
        for &s in inputs.iter().flatten() {
            last_reader.insert(s, k);
        }
    }
    let mut frees = vec![Vec::new(); reads.len()];
    for (s, k) in last_reader {
        if !outputs.contains(&s) {
            frees[k].push(s);
        }
    }
    for slots in &mut frees {
        slots.sort_unstable();
    }
    frees
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_freed_after_their_last_reader_but_outputs_never() {
        // Slot 0 is read by nodes 0 and 1, slot 1 by node 2, slot 2 (an
        // output) by node 2; node 1 omits an input.
        let reads: [&[Option<usize>]; 3] = [&[Some(0)], &[Some(0), None], &[Some(1), Some(2)]];
        assert_eq!(frees(&reads, &[2]), [vec![], vec![0], vec![1]]);
        assert_eq!(frees(&reads, &[]), [vec![], vec![0], vec![1, 2]]);
        assert_eq!(frees(&[], &[0]), Vec::<Vec<usize>>::new());
    }
}
