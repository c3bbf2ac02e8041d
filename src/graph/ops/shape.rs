//! Shape and data-movement ops: everything that reshapes, reorders, selects
//! or pads values without arithmetic of its own, plus the integer
//! shape chains that exporters write around them (Shape, Gather, Concat,
//! Slice, Unsqueeze, Reshape, ...). Registered from [`super::Registry::standard`];
//! Resize and Upsample are in [`super::resize`].
//!
//! | op | opsets | notes |
//! |----|--------|-------|
//! | Flatten | 1-23 | |
//! | Reshape | 1-4 (`shape` attribute), 5-23 | `allowzero` (14+) |
//! | Squeeze, Unsqueeze | 1-12 (`axes` attribute), 13-23 (`axes` input) | |
//! | Transpose | 1-23 | default `perm` reverses the axes |
//! | Concat | 1-3 (`axis` defaults to 1), 4-23 | |
//! | Split | 1 (`split` input or attribute), 2-12 (attribute), 13-17 (input), 18-23 (`num_outputs`) | |
//! | Slice | 1-9 (attributes), 10-23 (inputs, `steps`) | huge or negative bounds clamped as the spec says |
//! | Gather, GatherElements | 1-23, 11-23 | negative indices; indices are read on the CPU and checked |
//! | Shape | 1-14, 15-23 (`start`, `end`) | |
//! | Size | 1-23 | |
//! | Expand | 8-23 | bidirectional broadcast |
//! | Tile | 6-23 | |
//! | Pad | 1 (`paddings`), 2-10 (`pads`, `value`), 11-17 (inputs), 18-23 (`axes` input) | constant, reflect, edge, wrap |
//! | Constant | 1-23 | `value`, `value_float(s)`, `value_int(s)` |
//! | ConstantOfShape | 9-23 | |
//! | Range | 11-23 | |
//! | DepthToSpace | 1-10 (DCR), 11-23 (`mode`) | |
//! | SpaceToDepth | 1-23 | |
//!
//! Only data inputs are differentiable: the shape, axes, indices, pads and
//! repeats inputs are read as integers on the CPU each run, so they can come
//! from graph inputs or shape chains.
//!
//! Deviations from the spec:
//! - Split without sizes before opset 18 accepts a dimension that the number of
//!   outputs does not divide and splits it as opset 18 does (last chunk smaller)
//!   instead of rejecting the model.
//! - Squeeze-13 with an empty `axes` tensor squeezes every unit dimension, as
//!   with `axes` omitted.
//! - Constant: `sparse_value`, `value_string` and `value_strings` are rejected.
//! - Gather and GatherElements copy their indices to the CPU to check them
//!   (an out-of-range index is an error, never a device assert).

use super::{attr_error, input_error};
use std::sync::Mutex;

use tch::{Kind, Tensor};

use super::util::{check_dims, index_tensor, is_float, resolve_axes, resolve_axis};
use super::{util, Differentiable, Kernel, NodeInfo, OpError, OpResult, OpSpec, Registry};
use crate::onnx::tensor_from_proto;

pub fn register(reg: &mut Registry) {
    use Differentiable::{None as NoInput, Only};
    let data_only = Only(&[0]);

    reg.insert(OpSpec::new("Flatten", flatten));
    reg.insert(
        OpSpec::new("Reshape", reshape)
            .opsets(1..=4)
            .differentiable(data_only),
    );
    reg.insert(
        OpSpec::new("Reshape", reshape)
            .opsets(5..=23)
            .inputs(2..=2)
            .differentiable(data_only),
    );
    for (op, build) in [("Squeeze", squeeze as Builder), ("Unsqueeze", unsqueeze)] {
        reg.insert(OpSpec::new(op, build).opsets(1..=12));
        let inputs = if op == "Squeeze" { 1..=2 } else { 2..=2 };
        reg.insert(
            OpSpec::new(op, build)
                .opsets(13..=23)
                .inputs(inputs)
                .differentiable(data_only),
        );
    }
    reg.insert(OpSpec::new("Transpose", transpose));
    reg.insert(
        OpSpec::new("Concat", concat)
            .opsets(1..=3)
            .inputs(1..=usize::MAX),
    );
    reg.insert(
        OpSpec::new("Concat", concat)
            .opsets(4..=23)
            .inputs(1..=usize::MAX),
    );
    for (opsets, inputs) in [
        (1..=1, 1..=2),
        (2..=12, 1..=1),
        (13..=17, 1..=2),
        (18..=23, 1..=2),
    ] {
        reg.insert(
            OpSpec::new("Split", split)
                .opsets(opsets)
                .inputs(inputs)
                .outputs(1..=usize::MAX)
                .differentiable(data_only),
        );
    }
    reg.insert(OpSpec::new("Slice", slice).opsets(1..=9));
    reg.insert(
        OpSpec::new("Slice", slice)
            .opsets(10..=23)
            .inputs(3..=5)
            .differentiable(data_only),
    );
    reg.insert(
        OpSpec::new("Gather", gather)
            .inputs(2..=2)
            .differentiable(data_only),
    );
    reg.insert(
        OpSpec::new("GatherElements", gather_elements)
            .opsets(11..=23)
            .inputs(2..=2)
            .differentiable(data_only),
    );
    reg.insert(
        OpSpec::new("Shape", shape)
            .opsets(1..=14)
            .differentiable(NoInput),
    );
    reg.insert(
        OpSpec::new("Shape", shape)
            .opsets(15..=23)
            .differentiable(NoInput),
    );
    reg.insert(OpSpec::new("Size", size).differentiable(NoInput));
    reg.insert(
        OpSpec::new("Expand", expand)
            .opsets(8..=23)
            .inputs(2..=2)
            .differentiable(data_only),
    );
    reg.insert(
        OpSpec::new("Tile", tile)
            .opsets(6..=23)
            .inputs(2..=2)
            .differentiable(data_only),
    );
    reg.insert(OpSpec::new("Pad", pad).opsets(1..=10));
    reg.insert(
        OpSpec::new("Pad", pad)
            .opsets(11..=17)
            .inputs(2..=3)
            .differentiable(Only(&[0, 2])),
    );
    reg.insert(
        OpSpec::new("Pad", pad)
            .opsets(18..=23)
            .inputs(2..=4)
            .differentiable(Only(&[0, 2])),
    );
    reg.insert(
        OpSpec::new("Constant", constant)
            .inputs(0..=0)
            .differentiable(NoInput),
    );
    reg.insert(
        OpSpec::new("ConstantOfShape", constant_of_shape)
            .opsets(9..=23)
            .differentiable(NoInput),
    );
    reg.insert(
        OpSpec::new("Range", range)
            .opsets(11..=23)
            .inputs(3..=3)
            .differentiable(NoInput),
    );
    reg.insert(OpSpec::new("DepthToSpace", depth_to_space).opsets(1..=10));
    reg.insert(OpSpec::new("DepthToSpace", depth_to_space).opsets(11..=23));
    reg.insert(OpSpec::new("SpaceToDepth", space_to_depth));
}

type Builder = fn(&NodeInfo) -> OpResult<Kernel>;

// --- Helpers ------------------------------------------------------------------

/// The integer values of optional input `index`; `None` when omitted.
fn ints_opt(inputs: &[Option<&Tensor>], index: usize) -> OpResult<Option<Vec<i64>>> {
    util::input_opt(inputs, index).map(util::ints).transpose()
}

// --- Flatten, Reshape, Squeeze, Unsqueeze, Transpose ---------------------------

fn flatten(info: &NodeInfo) -> OpResult<Kernel> {
    let axis = info.attrs.int("axis", 1)?;
    Ok(Box::new(move |inputs| {
        let x = util::input(inputs, 0)?;
        let dims = x.size();
        let rank = dims.len() as i64;
        let a = if axis < 0 { axis + rank } else { axis };
        if !(0..=rank).contains(&a) {
            return Err(attr_error(
                "axis",
                format!("{axis} is out of range for rank {rank}"),
            ));
        }
        let (outer, inner) = dims.split_at(a as usize);
        let shape = [outer.iter().product::<i64>(), inner.iter().product()];
        Ok(vec![x.f_reshape(shape)?])
    }))
}

/// The target of Reshape: zeros copy the input dimension unless `allowzero`;
/// one -1 is left for libtorch to infer.
fn reshape_target(dims: &[i64], target: &[i64], allowzero: bool) -> OpResult<Vec<i64>> {
    let mut out = Vec::with_capacity(target.len());
    for (i, &d) in target.iter().enumerate() {
        out.push(match d {
            0 if !allowzero => *dims.get(i).ok_or_else(|| {
                input_error(
                    1,
                    format!("shape {target:?}: 0 at position {i} copies a dimension the input (shape {dims:?}) lacks"),
                )
            })?,
            d if d < -1 => {
                return Err(input_error(1, format!("shape {target:?}: invalid dimension {d}")))
            }
            d => d,
        });
    }
    if out.iter().filter(|&&d| d == -1).count() > 1 {
        return Err(input_error(
            1,
            format!("shape {target:?}: more than one -1"),
        ));
    }
    Ok(out)
}

fn reshape(info: &NodeInfo) -> OpResult<Kernel> {
    let allowzero = info.attrs.int("allowzero", 0)? != 0;
    let shape_attr = if info.opset < 5 {
        Some(
            info.attrs
                .ints_opt("shape")?
                .ok_or_else(|| attr_error("shape", "required but missing"))?,
        )
    } else {
        None
    };
    Ok(Box::new(move |inputs| {
        let x = util::input(inputs, 0)?;
        let target = match &shape_attr {
            Some(s) => s.clone(),
            None => util::ints(util::input(inputs, 1)?)?,
        };
        let shape = reshape_target(&x.size(), &target, allowzero)?;
        Ok(vec![x.f_reshape(shape)?])
    }))
}

/// Where the `axes` of Squeeze/Unsqueeze come from.
#[derive(Clone)]
enum AxesSource {
    Attribute(Option<Vec<i64>>),
    Input(usize),
}

impl AxesSource {
    fn of(info: &NodeInfo, input: usize) -> OpResult<AxesSource> {
        Ok(if info.opset < 13 {
            AxesSource::Attribute(info.attrs.ints_opt("axes")?)
        } else {
            AxesSource::Input(input)
        })
    }

    fn read(&self, inputs: &[Option<&Tensor>]) -> OpResult<Option<Vec<i64>>> {
        match self {
            AxesSource::Attribute(a) => Ok(a.clone()),
            AxesSource::Input(i) => ints_opt(inputs, *i),
        }
    }

    fn error(&self, reason: String) -> OpError {
        match self {
            AxesSource::Attribute(_) => attr_error("axes", reason),
            AxesSource::Input(i) => input_error(*i, reason),
        }
    }
}

fn squeeze(info: &NodeInfo) -> OpResult<Kernel> {
    let source = AxesSource::of(info, 1)?;
    Ok(Box::new(move |inputs| {
        let x = util::input(inputs, 0)?;
        let dims = x.size();
        // An empty axes list squeezes every unit dimension, as omitted axes do
        // (ONNX Runtime reads it so).
        let shape: Vec<i64> = match source.read(inputs)?.filter(|a| !a.is_empty()) {
            None => dims.iter().copied().filter(|&d| d != 1).collect(),
            Some(axes) => {
                let axes = resolve_axes(&axes, dims.len()).map_err(|e| source.error(e))?;
                if let Some(&a) = axes.iter().find(|&&a| dims[a] != 1) {
                    return Err(source.error(format!(
                        "dimension {a} of shape {dims:?} is {}, not 1",
                        dims[a]
                    )));
                }
                (0..dims.len())
                    .filter(|i| !axes.contains(i))
                    .map(|i| dims[i])
                    .collect()
            }
        };
        Ok(vec![x.f_reshape(shape)?])
    }))
}

fn unsqueeze(info: &NodeInfo) -> OpResult<Kernel> {
    let source = AxesSource::of(info, 1)?;
    if let AxesSource::Attribute(None) = source {
        return Err(attr_error("axes", "required but missing"));
    }
    Ok(Box::new(move |inputs| {
        let x = util::input(inputs, 0)?;
        let dims = x.size();
        let axes = source
            .read(inputs)?
            .ok_or_else(|| source.error("required but missing".into()))?;
        let out_rank = dims.len() + axes.len();
        let axes = resolve_axes(&axes, out_rank).map_err(|e| source.error(e))?;
        let mut rest = dims.iter();
        let shape: Vec<i64> = (0..out_rank)
            .map(|i| match axes.contains(&i) {
                true => 1,
                false => rest.next().copied().unwrap_or(1),
            })
            .collect();
        Ok(vec![x.f_reshape(shape)?])
    }))
}

fn transpose(info: &NodeInfo) -> OpResult<Kernel> {
    let perm = info.attrs.ints_opt("perm")?;
    Ok(Box::new(move |inputs| {
        let x = util::input(inputs, 0)?;
        let rank = x.dim();
        let perm: Vec<i64> = match &perm {
            None => (0..rank as i64).rev().collect(),
            Some(p) => {
                let resolved = resolve_axes(p, rank).map_err(|e| attr_error("perm", e))?;
                if resolved.len() != rank {
                    return Err(attr_error(
                        "perm",
                        format!("{p:?} does not permute the {rank} axes of the input"),
                    ));
                }
                resolved.into_iter().map(|a| a as i64).collect()
            }
        };
        Ok(vec![x.f_permute(perm)?])
    }))
}

// --- Concat, Split, Slice --------------------------------------------------------

fn concat(info: &NodeInfo) -> OpResult<Kernel> {
    let axis = if info.opset < 4 {
        info.attrs.int("axis", 1)?
    } else {
        info.attrs.int_req("axis")?
    };
    Ok(Box::new(move |inputs| {
        let tensors: Vec<&Tensor> = (0..inputs.len())
            .map(|i| util::input(inputs, i))
            .collect::<OpResult<_>>()?;
        let rank = tensors.first().map_or(0, |t| t.dim());
        let a = resolve_axis(axis, rank)
            .ok_or_else(|| attr_error("axis", format!("{axis} is out of range for rank {rank}")))?;
        Ok(vec![Tensor::f_cat(&tensors, a as i64)?])
    }))
}

fn split(info: &NodeInfo) -> OpResult<Kernel> {
    let axis = info.attrs.int("axis", 0)?;
    let split_attr = match info.opset {
        ..=12 => info.attrs.ints_opt("split")?,
        _ if info.attrs.has("split") => {
            return Err(attr_error(
                "split",
                format!(
                    "not an attribute of Split-{} (sizes are the second input)",
                    info.opset
                ),
            ))
        }
        _ => None,
    };
    // Split-1 and Split-13+ take the sizes as an optional second input.
    let split_input = info.opset == 1 || info.opset >= 13;
    let num_outputs = info.num_outputs;
    if info.opset >= 18 {
        if let Some(n) = info.attrs.int_opt("num_outputs")? {
            if n != num_outputs as i64 {
                return Err(attr_error(
                    "num_outputs",
                    format!("{n}, but the node has {num_outputs} outputs"),
                ));
            }
        }
    }
    Ok(Box::new(move |inputs| {
        let x = util::input(inputs, 0)?;
        let dims = x.size();
        let a = resolve_axis(axis, dims.len()).ok_or_else(|| {
            attr_error("axis", format!("{axis} is out of range for shape {dims:?}"))
        })?;
        let length = dims[a];
        let from_input = match split_input {
            true => ints_opt(inputs, 1)?,
            false => None,
        };
        let sizes = match from_input.or_else(|| split_attr.clone()) {
            Some(sizes) => {
                check_dims(&sizes, 1, "split size")?;
                let total = sizes.iter().try_fold(0i64, |sum, &s| sum.checked_add(s));
                if sizes.len() != num_outputs || total != Some(length) {
                    return Err(OpError::Unsupported(format!(
                        "split sizes {sizes:?} do not cut dimension {a} (length {length}) into {num_outputs} outputs"
                    )));
                }
                sizes
            }
            None => {
                // Equal chunks, the last one smaller (Split-18's rule).
                let n = num_outputs as i64;
                let chunk = (length + n - 1) / n;
                let last = length - chunk * (n - 1);
                if last < 0 {
                    return Err(OpError::Unsupported(format!(
                        "dimension {a} (length {length}) cannot be split into {n} outputs"
                    )));
                }
                let mut sizes = vec![chunk; num_outputs - 1];
                sizes.push(last);
                sizes
            }
        };
        Ok(x.f_split_with_sizes(sizes, a as i64)?)
    }))
}

/// Applies one axis of Slice, with ONNX's clamping of out-of-range bounds.
fn slice_axis(x: &Tensor, axis: usize, start: i64, end: i64, step: i64) -> OpResult<Tensor> {
    let dim = x.size()[axis];
    let a = axis as i64;
    let start = if start < 0 {
        start.saturating_add(dim)
    } else {
        start
    };
    let end = if end < 0 {
        end.saturating_add(dim)
    } else {
        end
    };
    // A step longer than the axis takes one element, as the axis length does
    // (libtorch overflows on huge steps).
    if step > 0 {
        let start = start.max(0).min(dim);
        let end = end.max(0).min(dim).max(start);
        Ok(x.f_slice(a, start, end, step.min(dim.max(1)))?)
    } else {
        if dim == 0 {
            return Ok(x.shallow_clone());
        }
        // Negative steps: slice the flipped tensor with a positive step.
        let start = start.max(0).min(dim - 1);
        let end = end.max(-1).min(dim - 1);
        let (flipped_start, flipped_end) = (dim - 1 - start, dim - 1 - end);
        let step = step.checked_neg().unwrap_or(i64::MAX).min(dim);
        Ok(x.f_flip([a])?
            .f_slice(a, flipped_start, flipped_end.max(flipped_start), step)?)
    }
}

fn slice(info: &NodeInfo) -> OpResult<Kernel> {
    let attrs = if info.opset < 10 {
        let starts = info.attrs.ints_opt("starts")?;
        let ends = info.attrs.ints_opt("ends")?;
        let (Some(starts), Some(ends)) = (starts, ends) else {
            let missing = if info.attrs.has("starts") {
                "ends"
            } else {
                "starts"
            };
            return Err(attr_error(missing, "required but missing"));
        };
        Some((starts, ends, info.attrs.ints_opt("axes")?))
    } else {
        None
    };
    Ok(Box::new(move |inputs| {
        let x = util::input(inputs, 0)?;
        let (starts, ends, axes, steps) = match &attrs {
            Some((s, e, a)) => (s.clone(), e.clone(), a.clone(), None),
            None => (
                util::ints(util::input(inputs, 1)?)?,
                util::ints(util::input(inputs, 2)?)?,
                ints_opt(inputs, 3)?,
                ints_opt(inputs, 4)?,
            ),
        };
        let n = starts.len();
        let axes = axes.unwrap_or_else(|| (0..n as i64).collect());
        let steps = steps.unwrap_or_else(|| vec![1; n]);
        if ends.len() != n || axes.len() != n || steps.len() != n {
            return Err(OpError::Unsupported(format!(
                "starts {starts:?}, ends {ends:?}, axes {axes:?} and steps {steps:?} differ in length"
            )));
        }
        let axes = resolve_axes(&axes, x.dim()).map_err(|e| match &attrs {
            Some(_) => attr_error("axes", e),
            None => input_error(3, e),
        })?;
        let mut y = x.shallow_clone();
        for i in 0..n {
            if steps[i] == 0 {
                return Err(input_error(4, "a step is 0"));
            }
            y = slice_axis(&y, axes[i], starts[i], ends[i], steps[i])?;
        }
        Ok(vec![y])
    }))
}

// --- Gather, GatherElements --------------------------------------------------------

/// Indices as int64 in `0..len` (negative ones counted from the end), checked.
fn resolve_indices(indices: &Tensor, len: i64) -> OpResult<Vec<i64>> {
    let mut values = util::ints(indices)?;
    for v in values.iter_mut() {
        if *v < -len || *v >= len {
            return Err(input_error(
                1,
                format!("index {v} is out of range for a dimension of length {len}"),
            ));
        }
        if *v < 0 {
            *v += len;
        }
    }
    Ok(values)
}

fn gather(info: &NodeInfo) -> OpResult<Kernel> {
    let axis = info.attrs.int("axis", 0)?;
    Ok(Box::new(move |inputs| {
        let x = util::input(inputs, 0)?;
        let indices = util::input(inputs, 1)?;
        let dims = x.size();
        let a = resolve_axis(axis, dims.len()).ok_or_else(|| {
            attr_error("axis", format!("{axis} is out of range for shape {dims:?}"))
        })?;
        let values = resolve_indices(indices, dims[a])?;
        let picked = x.f_index_select(a as i64, &index_tensor(&values, x.device())?)?;
        let shape: Vec<i64> = dims[..a]
            .iter()
            .chain(&indices.size())
            .chain(&dims[a + 1..])
            .copied()
            .collect();
        Ok(vec![picked.f_reshape(shape)?])
    }))
}

fn gather_elements(info: &NodeInfo) -> OpResult<Kernel> {
    let axis = info.attrs.int("axis", 0)?;
    Ok(Box::new(move |inputs| {
        let x = util::input(inputs, 0)?;
        let indices = util::input(inputs, 1)?;
        let dims = x.size();
        let a = resolve_axis(axis, dims.len()).ok_or_else(|| {
            attr_error("axis", format!("{axis} is out of range for shape {dims:?}"))
        })?;
        if indices.dim() != dims.len() {
            return Err(input_error(
                1,
                format!(
                    "indices of rank {} for data of rank {}",
                    indices.dim(),
                    dims.len()
                ),
            ));
        }
        let values = resolve_indices(indices, dims[a])?;
        let index = index_tensor(&values, x.device())?.f_reshape(indices.size())?;
        Ok(vec![x.f_gather(a as i64, &index, false)?])
    }))
}

// --- Shape, Size, Expand, Tile ------------------------------------------------------

fn shape(info: &NodeInfo) -> OpResult<Kernel> {
    let (start, end) = match info.opset {
        15.. => (info.attrs.int("start", 0)?, info.attrs.int_opt("end")?),
        _ => (0, None),
    };
    Ok(Box::new(move |inputs| {
        let x = util::input(inputs, 0)?;
        let dims = x.size();
        let rank = dims.len() as i64;
        let clamp = |v: i64| (if v < 0 { v + rank } else { v }).max(0).min(rank) as usize;
        let (s, e) = (clamp(start), clamp(end.unwrap_or(rank)));
        Ok(vec![index_tensor(&dims[s..e.max(s)], x.device())?])
    }))
}

fn size(_info: &NodeInfo) -> OpResult<Kernel> {
    Ok(Box::new(|inputs| {
        let x = util::input(inputs, 0)?;
        let n = x.size().iter().product::<i64>();
        Ok(vec![index_tensor(&[n], x.device())?.f_reshape([0i64; 0])?])
    }))
}

/// Numpy-style broadcast of two shapes.
fn broadcast_shape(a: &[i64], b: &[i64]) -> Option<Vec<i64>> {
    let rank = a.len().max(b.len());
    let at = |s: &[i64], i: usize| (i + s.len()).checked_sub(rank).map_or(1, |k| s[k]);
    (0..rank)
        .map(|i| match (at(a, i), at(b, i)) {
            (x, y) if x == y => Some(x),
            (1, y) => Some(y),
            (x, 1) => Some(x),
            _ => None,
        })
        .collect()
}

fn expand(_info: &NodeInfo) -> OpResult<Kernel> {
    Ok(Box::new(|inputs| {
        let x = util::input(inputs, 0)?;
        let target = util::ints(util::input(inputs, 1)?)?;
        check_dims(&target, 1, "dimension")?;
        let dims = x.size();
        let out = broadcast_shape(&dims, &target).ok_or_else(|| {
            input_error(
                1,
                format!("shape {target:?} does not broadcast with the input's {dims:?}"),
            )
        })?;
        util::check_output(&out, x.kind())?;
        Ok(vec![x.f_expand(out, false)?])
    }))
}

fn tile(_info: &NodeInfo) -> OpResult<Kernel> {
    Ok(Box::new(|inputs| {
        let x = util::input(inputs, 0)?;
        let repeats = util::ints(util::input(inputs, 1)?)?;
        check_dims(&repeats, 1, "repeat count")?;
        if repeats.len() != x.dim() {
            return Err(input_error(
                1,
                format!(
                    "{} repeat counts for an input of rank {}",
                    repeats.len(),
                    x.dim()
                ),
            ));
        }
        let out: Vec<i64> = x
            .size()
            .iter()
            .zip(&repeats)
            .map(|(d, r)| d.saturating_mul(*r))
            .collect();
        util::check_output(&out, x.kind())?;
        Ok(vec![x.f_repeat(repeats)?])
    }))
}

// --- Pad ------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Debug)]
enum PadMode {
    Constant,
    Reflect,
    Edge,
    Wrap,
}

/// Where Pad reads its pads and constant from.
#[derive(Clone)]
enum PadSource {
    Attributes { pads: Vec<i64>, value: f64 },
    Inputs,
}

/// The source index that output position `i` (counted from the original
/// start, so negative in the leading pad) reads along an axis of length `n`.
fn pad_source_index(mode: PadMode, i: i64, n: i64) -> i64 {
    match mode {
        PadMode::Edge | PadMode::Constant => i.max(0).min(n - 1),
        PadMode::Wrap => i.rem_euclid(n),
        PadMode::Reflect if n == 1 => 0,
        PadMode::Reflect => {
            let period = 2 * (n - 1);
            let j = i.rem_euclid(period);
            if j < n {
                j
            } else {
                period - j
            }
        }
    }
}

fn pad(info: &NodeInfo) -> OpResult<Kernel> {
    let mode = match info.attrs.string("mode", "constant")?.as_str() {
        "constant" => PadMode::Constant,
        "reflect" => PadMode::Reflect,
        "edge" => PadMode::Edge,
        "wrap" => PadMode::Wrap,
        other => return Err(attr_error("mode", format!("unknown mode `{other}`"))),
    };
    let source = if info.opset < 11 {
        let name = if info.opset == 1 { "paddings" } else { "pads" };
        let pads = info
            .attrs
            .ints_opt(name)?
            .ok_or_else(|| attr_error(name, "required but missing"))?;
        let value = f64::from(info.attrs.float("value", 0.0)?);
        PadSource::Attributes { pads, value }
    } else {
        PadSource::Inputs
    };
    Ok(Box::new(move |inputs| {
        let x = util::input(inputs, 0)?;
        let dims = x.size();
        let rank = dims.len();
        let (pads, constant, axes) = match &source {
            PadSource::Attributes { pads, .. } => (pads.clone(), None, None),
            PadSource::Inputs => (
                util::ints(util::input(inputs, 1)?)?,
                util::input_opt(inputs, 2).filter(|t| t.numel() > 0),
                ints_opt(inputs, 3)?,
            ),
        };
        let axes = match axes {
            Some(a) => resolve_axes(&a, rank).map_err(|e| input_error(3, e))?,
            None => (0..rank).collect(),
        };
        if pads.len() != 2 * axes.len() {
            return Err(input_error(
                1,
                format!(
                    "{} pads for {} axes (needs 2 per axis)",
                    pads.len(),
                    axes.len()
                ),
            ));
        }
        // (begin, end) per axis of the input.
        let mut per_axis = vec![(0i64, 0i64); rank];
        for (k, &a) in axes.iter().enumerate() {
            per_axis[a] = (pads[k], pads[k + axes.len()]);
        }
        let mut out_dims = Vec::with_capacity(rank);
        for (a, &(b, e)) in per_axis.iter().enumerate() {
            let Some(size) = dims[a].checked_add(b).and_then(|v| v.checked_add(e)) else {
                return Err(input_error(
                    1,
                    format!("pads ({b}, {e}) overflow dimension {a}"),
                ));
            };
            out_dims.push(size.max(0));
            if size < 0 {
                return Err(input_error(
                    1,
                    format!(
                        "pads ({b}, {e}) crop more than dimension {a} (length {})",
                        dims[a]
                    ),
                ));
            }
        }
        util::check_output(&out_dims, x.kind())?;
        // The gather indices of the other modes: one i64 per output position.
        util::check_output(
            &out_dims
                .iter()
                .copied()
                .max()
                .into_iter()
                .collect::<Vec<_>>(),
            Kind::Int64,
        )?;
        if mode == PadMode::Constant {
            // libtorch lists pads from the last axis back.
            let flat: Vec<i64> = per_axis.iter().rev().flat_map(|&(b, e)| [b, e]).collect();
            return Ok(vec![match constant {
                Some(v) if v.requires_grad() => {
                    // Keep the gradient of a trainable constant: pad with zeros,
                    // then add the value where the padding is.
                    let padded = x.f_pad(&flat, "constant", 0.0)?;
                    let inside = x.f_ones_like()?.f_pad(&flat, "constant", 0.0)?;
                    let v = v.f_reshape([0i64; 0])?;
                    padded.f_add(&inside.f_neg()?.f_add_scalar(1.0)?.f_mul(&v)?)?
                }
                Some(v) => x.f_pad(&flat, "constant", util::scalar(v)?)?,
                None => {
                    let value = match &source {
                        PadSource::Attributes { value, .. } => *value,
                        PadSource::Inputs => 0.0,
                    };
                    x.f_pad(&flat, "constant", value)?
                }
            }]);
        }
        // Reflect, edge and wrap: gather along each padded axis.
        let mut y = x.shallow_clone();
        for (a, &(b, e)) in per_axis.iter().enumerate() {
            if (b, e) == (0, 0) {
                continue;
            }
            let n = dims[a];
            if n == 0 {
                return Err(OpError::Unsupported(format!(
                    "{mode:?} padding of the empty dimension {a}"
                )));
            }
            let index: Vec<i64> = (-b..n + e).map(|i| pad_source_index(mode, i, n)).collect();
            y = y.f_index_select(a as i64, &index_tensor(&index, x.device())?)?;
        }
        Ok(vec![y])
    }))
}

// --- Constant, ConstantOfShape, Range --------------------------------------------

/// A tensor computed once at build time (tch tensors are `Send` but not `Sync`).
struct Held(Mutex<Tensor>);

impl Held {
    fn get(&self) -> OpResult<Tensor> {
        let t = self
            .0
            .lock()
            .map_err(|_| OpError::Unsupported("constant lock poisoned".into()))?;
        Ok(t.shallow_clone())
    }
}

/// `t` in the graph's float kind when it is a float, on the graph's device.
fn to_graph(t: Tensor, info: &NodeInfo) -> OpResult<Tensor> {
    let t = if is_float(t.kind()) {
        t.f_to_kind(info.float_kind)?
    } else {
        t
    };
    Ok(t.f_to_device(info.device)?)
}

fn constant(info: &NodeInfo) -> OpResult<Kernel> {
    for unsupported in ["sparse_value", "value_string", "value_strings"] {
        if info.attrs.has(unsupported) {
            return Err(attr_error(unsupported, "not supported"));
        }
    }
    let a = &info.attrs;
    let mut found = Vec::new();
    if let Some(t) = a.tensor_opt("value")? {
        found.push(tensor_from_proto(t)?);
    }
    if let Some(v) = a.float_opt("value_float")? {
        found.push(Tensor::f_from_slice(&[v])?.f_reshape([0i64; 0])?);
    }
    if let Some(v) = a.floats_opt("value_floats")? {
        found.push(Tensor::f_from_slice(&v)?);
    }
    if let Some(v) = a.int_opt("value_int")? {
        found.push(Tensor::f_from_slice(&[v])?.f_reshape([0i64; 0])?);
    }
    if let Some(v) = a.ints_opt("value_ints")? {
        found.push(Tensor::f_from_slice(&v)?);
    }
    if found.len() != 1 {
        return Err(attr_error(
            "value",
            format!(
                "exactly one of value, value_float(s), value_int(s) must be set, found {}",
                found.len()
            ),
        ));
    }
    let held = Held(Mutex::new(to_graph(found.remove(0), info)?));
    Ok(Box::new(move |_| Ok(vec![held.get()?])))
}

fn constant_of_shape(info: &NodeInfo) -> OpResult<Kernel> {
    let value = match info.attrs.tensor_opt("value")? {
        Some(t) => {
            let v = tensor_from_proto(t)?;
            if v.numel() != 1 {
                return Err(attr_error(
                    "value",
                    format!("expected one element, got shape {:?}", v.size()),
                ));
            }
            v.f_reshape([0i64; 0])?
        }
        None => Tensor::f_from_slice(&[0f32])?.f_reshape([0i64; 0])?,
    };
    let held = Held(Mutex::new(to_graph(value, info)?));
    Ok(Box::new(move |inputs| {
        let shape = util::ints(util::input(inputs, 0)?)?;
        check_dims(&shape, 0, "dimension")?;
        let value = held.get()?;
        util::check_output(&shape, value.kind())?;
        Ok(vec![value.f_expand(shape, false)?.f_contiguous()?])
    }))
}

fn range(_info: &NodeInfo) -> OpResult<Kernel> {
    Ok(Box::new(|inputs| {
        let start = util::input(inputs, 0)?;
        let limit = util::input(inputs, 1)?;
        let delta = util::input(inputs, 2)?;
        for (i, t) in [start, limit, delta].iter().enumerate() {
            if t.numel() != 1 {
                return Err(input_error(
                    i,
                    format!("expected a scalar, got shape {:?}", t.size()),
                ));
            }
        }
        let count = if is_float(start.kind()) {
            let (s, l, d) = (
                util::scalar(start)?,
                util::scalar(limit)?,
                util::scalar(delta)?,
            );
            if d == 0.0 || !d.is_finite() {
                return Err(input_error(2, format!("delta is {d}")));
            }
            ((l - s) / d).ceil().max(0.0) as i64
        } else {
            let (s, l, d) = (
                util::ints(start)?[0],
                util::ints(limit)?[0],
                util::ints(delta)?[0],
            );
            if d == 0 {
                return Err(input_error(2, "delta is 0"));
            }
            let span = i128::from(l) - i128::from(s);
            let d = i128::from(d);
            // ceil(span / d), for either sign of d.
            let n = span / d + i128::from(span % d != 0 && (span < 0) == (d < 0));
            i64::try_from(n.max(0)).unwrap_or(i64::MAX)
        };
        util::check_output(&[count], start.kind())?;
        let steps = Tensor::f_arange(count, (start.kind(), start.device()))?;
        let values = steps
            .f_mul(&delta.f_reshape([0i64; 0])?)?
            .f_add(&start.f_reshape([0i64; 0])?)?
            .f_to_kind(start.kind())?;
        Ok(vec![values])
    }))
}

// --- DepthToSpace, SpaceToDepth --------------------------------------------------

fn blocksize(info: &NodeInfo) -> OpResult<i64> {
    let b = info.attrs.int_req("blocksize")?;
    // blocksize² multiplies the channels: keep it far from overflow.
    if !(1..=1 << 16).contains(&b) {
        return Err(attr_error(
            "blocksize",
            format!("{b} is not from 1 to 65536"),
        ));
    }
    Ok(b)
}

fn nchw(x: &Tensor, op: &str) -> OpResult<[i64; 4]> {
    <[i64; 4]>::try_from(x.size())
        .map_err(|s| input_error(0, format!("{op} needs a rank-4 input, got shape {s:?}")))
}

fn depth_to_space(info: &NodeInfo) -> OpResult<Kernel> {
    let b = blocksize(info)?;
    let crd = match info.opset {
        ..=10 => false,
        _ => match info.attrs.string("mode", "DCR")?.as_str() {
            "DCR" => false,
            "CRD" => true,
            other => return Err(attr_error("mode", format!("unknown mode `{other}`"))),
        },
    };
    Ok(Box::new(move |inputs| {
        let x = util::input(inputs, 0)?;
        let [n, c, h, w] = nchw(x, "DepthToSpace")?;
        if c % (b * b) != 0 {
            return Err(input_error(
                0,
                format!("{c} channels are not a multiple of blocksize² = {}", b * b),
            ));
        }
        let c_out = c / (b * b);
        let (split, perm) = match crd {
            false => ([n, b, b, c_out, h, w], [0, 3, 4, 1, 5, 2]),
            true => ([n, c_out, b, b, h, w], [0, 1, 4, 2, 5, 3]),
        };
        let y = x
            .f_reshape(split)?
            .f_permute(perm)?
            .f_reshape([n, c_out, h * b, w * b])?;
        Ok(vec![y])
    }))
}

fn space_to_depth(info: &NodeInfo) -> OpResult<Kernel> {
    let b = blocksize(info)?;
    Ok(Box::new(move |inputs| {
        let x = util::input(inputs, 0)?;
        let [n, c, h, w] = nchw(x, "SpaceToDepth")?;
        if h % b != 0 || w % b != 0 {
            return Err(input_error(
                0,
                format!("spatial size {h}x{w} is not a multiple of blocksize {b}"),
            ));
        }
        let y = x
            .f_reshape([n, c, h / b, b, w / b, b])?
            .f_permute([0, 3, 5, 1, 2, 4])?
            .f_reshape([n, c * b * b, h / b, w / b])?;
        Ok(vec![y])
    }))
}

#[cfg(test)]
mod tests {
    use tch::{Kind, Tensor};

    use super::super::gradcheck::{self, check_input, Head};
    use super::super::testing::{
        arange, assert_close, attr, floats, int_values, ints, omitted, run, try_build, try_run,
        values, NO_INPUTS,
    };
    use crate::onnx::proto::AttributeProto;

    #[test]
    fn flatten_reshape() {
        let x = arange(&[2, 3, 4]);
        assert_eq!(
            run("Flatten", 13, &[attr::int("axis", 2)], &[x.shallow_clone()]).size(),
            [6, 4]
        );
        assert_eq!(
            run(
                "Flatten",
                13,
                &[attr::int("axis", -1)],
                &[x.shallow_clone()]
            )
            .size(),
            [6, 4]
        );
        assert_eq!(run("Flatten", 1, &[], &[x.shallow_clone()]).size(), [2, 12]);
        assert_eq!(
            run("Flatten", 13, &[attr::int("axis", 0)], &[x.shallow_clone()]).size(),
            [1, 24]
        );
        assert_eq!(
            run("Flatten", 13, &[attr::int("axis", 3)], &[x.shallow_clone()]).size(),
            [24, 1]
        );
        assert!(try_run(
            "Flatten",
            13,
            &[attr::int("axis", 4)],
            &[x.shallow_clone()],
            1
        )
        .is_err());

        let y = run("Reshape", 14, &[], &[x.shallow_clone(), ints(&[0, -1])]);
        assert_eq!(y.size(), [2, 12]);
        assert_eq!(values(&y), values(&x));
        let y = run("Reshape", 5, &[], &[x.shallow_clone(), ints(&[4, 0, 2])]);
        assert_eq!(y.size(), [4, 3, 2]);
        let y = run(
            "Reshape",
            1,
            &[attr::ints("shape", &[-1, 2])],
            &[x.shallow_clone()],
        );
        assert_eq!(y.size(), [12, 2]);
        // allowzero: 0 is a real zero.
        let empty = Tensor::zeros([0, 3], (Kind::Double, tch::Device::Cpu));
        let y = run(
            "Reshape",
            14,
            &[attr::int("allowzero", 1)],
            &[empty, ints(&[3, 0])],
        );
        assert_eq!(y.size(), [3, 0]);
        assert!(try_run("Reshape", 14, &[], &[x.shallow_clone(), ints(&[-1, -1])], 1).is_err());
        assert!(try_run("Reshape", 14, &[], &[x.shallow_clone(), ints(&[5, -1])], 1).is_err());
        assert!(try_run("Reshape", 14, &[], &[x, ints(&[1, 1, 1, 0])], 1).is_err());
    }

    #[test]
    fn squeeze_unsqueeze_transpose() {
        let x = arange(&[1, 3, 1, 2]);
        assert_eq!(run("Squeeze", 11, &[], &[x.shallow_clone()]).size(), [3, 2]);
        assert_eq!(
            run(
                "Squeeze",
                11,
                &[attr::ints("axes", &[-2])],
                &[x.shallow_clone()]
            )
            .size(),
            [1, 3, 2]
        );
        assert_eq!(
            run("Squeeze", 13, &[], &[x.shallow_clone(), ints(&[0])]).size(),
            [3, 1, 2]
        );
        assert_eq!(run("Squeeze", 13, &[], &[x.shallow_clone()]).size(), [3, 2]);
        assert!(try_run("Squeeze", 13, &[], &[x.shallow_clone(), ints(&[1])], 1).is_err());

        let v = floats(&[1.0, 2.0, 3.0]);
        assert_eq!(
            run(
                "Unsqueeze",
                11,
                &[attr::ints("axes", &[0, 2])],
                &[v.shallow_clone()]
            )
            .size(),
            [1, 3, 1]
        );
        assert_eq!(
            run("Unsqueeze", 13, &[], &[v.shallow_clone(), ints(&[-1, 0])]).size(),
            [1, 3, 1]
        );
        assert_eq!(
            run("Unsqueeze", 13, &[], &[v.shallow_clone(), ints(&[2, 1])]).size(),
            [3, 1, 1]
        );
        assert!(try_run("Unsqueeze", 13, &[], &[v.shallow_clone(), ints(&[0, 0])], 1).is_err());
        assert!(try_build("Unsqueeze", 11, &[], 1, 1).is_err());
        // A scalar gets one axis.
        let s = Tensor::from(5i64);
        assert_eq!(
            int_values(&run("Unsqueeze", 13, &[], &[s, ints(&[0])])),
            [5]
        );

        let x = arange(&[2, 3, 4]);
        let y = run("Transpose", 13, &[], &[x.shallow_clone()]);
        assert_close(&y, &x.permute([2, 1, 0]));
        let y = run(
            "Transpose",
            13,
            &[attr::ints("perm", &[1, 0, 2])],
            &[x.shallow_clone()],
        );
        assert_close(&y, &x.permute([1, 0, 2]));
        assert!(try_run("Transpose", 13, &[attr::ints("perm", &[1, 0])], &[x], 1).is_err());
    }

    #[test]
    fn concat_split() {
        let a = arange(&[2, 2]);
        let b = arange(&[2, 1]) + 10.0;
        let y = run(
            "Concat",
            13,
            &[attr::int("axis", -1)],
            &[a.shallow_clone(), b.shallow_clone()],
        );
        assert_eq!(values(&y), [0.0, 1.0, 10.0, 2.0, 3.0, 11.0]);
        assert!(
            try_build("Concat", 13, &[], 2, 1).is_err(),
            "axis is required from opset 4"
        );
        let y = run("Concat", 1, &[], &[a, b]);
        assert_eq!(y.size(), [2, 3]);
        // Shape chains: int64 vectors, one of them empty.
        let y = run(
            "Concat",
            13,
            &[attr::int("axis", 0)],
            &[ints(&[-1]), ints(&[]), ints(&[4, 5])],
        );
        assert_eq!(int_values(&y), [-1, 4, 5]);

        let x = arange(&[7]);
        let parts = try_run(
            "Split",
            18,
            &[attr::int("num_outputs", 3)],
            &[x.shallow_clone()],
            3,
        )
        .unwrap();
        let sizes: Vec<i64> = parts.iter().map(|p| p.size()[0]).collect();
        assert_eq!(sizes, [3, 3, 1]);
        let parts = try_run("Split", 13, &[], &[x.shallow_clone(), ints(&[2, 0, 5])], 3).unwrap();
        assert_eq!(values(&parts[2]), [2.0, 3.0, 4.0, 5.0, 6.0]);
        assert_eq!(parts[1].size(), [0]);
        let parts = try_run(
            "Split",
            11,
            &[attr::ints("split", &[4, 3])],
            &[x.shallow_clone()],
            2,
        )
        .unwrap();
        assert_eq!(values(&parts[1]), [4.0, 5.0, 6.0]);
        let parts = try_run("Split", 1, &[], &[x.shallow_clone(), ints(&[1, 6])], 2).unwrap();
        assert_eq!(parts[1].size(), [6]);
        let m = arange(&[2, 4]);
        let parts = try_run("Split", 13, &[attr::int("axis", 1)], &[m], 2).unwrap();
        assert_eq!(values(&parts[1]), [2.0, 3.0, 6.0, 7.0]);
        assert!(try_run("Split", 13, &[], &[x.shallow_clone(), ints(&[2, 2])], 2).is_err());
        assert!(try_build("Split", 13, &[attr::ints("split", &[4, 3])], 1, 2).is_err());
        assert!(try_build("Split", 18, &[attr::int("num_outputs", 3)], 1, 2).is_err());
    }

    #[test]
    fn slice_bounds_and_steps() {
        let x = arange(&[10]);
        let slice = |starts: &[i64], ends: &[i64], steps: &[i64]| {
            values(&run(
                "Slice",
                13,
                &[],
                &[
                    x.shallow_clone(),
                    ints(starts),
                    ints(ends),
                    ints(&[0]),
                    ints(steps),
                ],
            ))
        };
        assert_eq!(slice(&[1], &[i64::MAX], &[3]), [1.0, 4.0, 7.0]);
        assert_eq!(slice(&[-3], &[i64::MAX], &[1]), [7.0, 8.0, 9.0]);
        assert_eq!(
            slice(&[-1], &[i64::MIN], &[-1]),
            [9.0, 8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0, 0.0]
        );
        assert_eq!(slice(&[8], &[1], &[-3]), [8.0, 5.0, 2.0]);
        assert_eq!(slice(&[20], &[-20], &[-4]), [9.0, 5.0, 1.0]);
        assert_eq!(slice(&[5], &[2], &[1]), Vec::<f64>::new());
        assert_eq!(slice(&[2], &[5], &[-1]), Vec::<f64>::new());
        assert_eq!(slice(&[0], &[3], &[i64::MAX]), [0.0]);
        assert_eq!(slice(&[9], &[0], &[i64::MIN]), [9.0]);
        assert!(try_run(
            "Slice",
            13,
            &[],
            &[
                x.shallow_clone(),
                ints(&[0]),
                ints(&[3]),
                ints(&[0]),
                ints(&[0])
            ],
            1
        )
        .is_err());

        let m = arange(&[3, 4]);
        // Default axes and steps; negative axes.
        let y = run(
            "Slice",
            10,
            &[],
            &[m.shallow_clone(), ints(&[1, 1]), ints(&[3, 3])],
        );
        assert_eq!(values(&y), [5.0, 6.0, 9.0, 10.0]);
        let y = run(
            "Slice",
            13,
            &[],
            &[
                m.shallow_clone(),
                ints(&[-1]),
                ints(&[-5]),
                ints(&[-1]),
                ints(&[-2]),
            ],
        );
        assert_eq!(values(&y), [3.0, 1.0, 7.0, 5.0, 11.0, 9.0]);
        let y = run(
            "Slice",
            9,
            &[
                attr::ints("starts", &[1]),
                attr::ints("ends", &[1000]),
                attr::ints("axes", &[1]),
            ],
            &[m.shallow_clone()],
        );
        assert_eq!(y.size(), [3, 3]);
        assert!(try_build("Slice", 9, &[attr::ints("starts", &[1])], 1, 1).is_err());
    }

    #[test]
    fn gather_and_gather_elements() {
        let x = arange(&[3, 2]);
        let y = run("Gather", 13, &[], &[x.shallow_clone(), ints(&[2, -3])]);
        assert_eq!(values(&y), [4.0, 5.0, 0.0, 1.0]);
        let y = run(
            "Gather",
            13,
            &[attr::int("axis", 1)],
            &[x.shallow_clone(), Tensor::from(-1i64)],
        );
        assert_eq!(y.size(), [3]);
        assert_eq!(values(&y), [1.0, 3.0, 5.0]);
        let idx = Tensor::from_slice(&[0i32, 1, 1, 0]).reshape([2, 2]);
        let y = run(
            "Gather",
            13,
            &[attr::int("axis", 1)],
            &[x.shallow_clone(), idx],
        );
        assert_eq!(y.size(), [3, 2, 2]);
        assert!(try_run("Gather", 13, &[], &[x.shallow_clone(), ints(&[3])], 1).is_err());
        assert!(try_run("Gather", 13, &[], &[x.shallow_clone(), ints(&[-4])], 1).is_err());
        // Shape-chain use: pick one dimension of a shape.
        let y = run(
            "Gather",
            13,
            &[],
            &[ints(&[1, 3, 224, 224]), Tensor::from(0i64)],
        );
        assert_eq!((y.size(), int_values(&y)), (vec![], vec![1]));

        let idx = ints(&[1, -1, 0, 0]).reshape([2, 2]);
        let y = run(
            "GatherElements",
            13,
            &[attr::int("axis", 1)],
            &[arange(&[2, 2]), idx],
        );
        assert_eq!(values(&y), [1.0, 1.0, 2.0, 2.0]);
    }

    #[test]
    fn shape_size_expand_tile() {
        let x = arange(&[2, 3, 4]);
        assert_eq!(
            int_values(&run("Shape", 13, &[], &[x.shallow_clone()])),
            [2, 3, 4]
        );
        let y = run("Shape", 15, &[attr::int("start", -2)], &[x.shallow_clone()]);
        assert_eq!(int_values(&y), [3, 4]);
        let y = run(
            "Shape",
            15,
            &[attr::int("start", 1), attr::int("end", -1)],
            &[x.shallow_clone()],
        );
        assert_eq!(int_values(&y), [3]);
        let y = run(
            "Shape",
            15,
            &[attr::int("start", 10), attr::int("end", -10)],
            &[x.shallow_clone()],
        );
        assert_eq!(y.size(), [0]);
        assert_eq!(y.kind(), Kind::Int64);
        let y = run("Size", 13, &[], &[x]);
        assert_eq!((y.size(), int_values(&y)), (vec![], vec![24]));

        let v = arange(&[3, 1]);
        let y = run("Expand", 13, &[], &[v.shallow_clone(), ints(&[2, 1, 4])]);
        assert_eq!(y.size(), [2, 3, 4]);
        let y = run("Expand", 13, &[], &[v.shallow_clone(), ints(&[1])]);
        assert_eq!(y.size(), [3, 1]);
        assert!(try_run("Expand", 13, &[], &[v.shallow_clone(), ints(&[2, 2])], 1).is_err());

        let y = run("Tile", 13, &[], &[arange(&[2, 2]), ints(&[1, 2])]);
        assert_eq!(values(&y), [0.0, 1.0, 0.0, 1.0, 2.0, 3.0, 2.0, 3.0]);
        assert!(try_run("Tile", 13, &[], &[v, ints(&[2])], 1).is_err());
    }

    #[test]
    fn pad_modes() {
        let x = floats(&[1.0, 2.0, 3.0]);
        let pad = |mode: &str, pads: &[i64]| {
            values(&run(
                "Pad",
                13,
                &[attr::string("mode", mode)],
                &[x.shallow_clone(), ints(pads)],
            ))
        };
        assert_eq!(pad("constant", &[2, 1]), [0.0, 0.0, 1.0, 2.0, 3.0, 0.0]);
        assert_eq!(pad("reflect", &[2, 2]), [3.0, 2.0, 1.0, 2.0, 3.0, 2.0, 1.0]);
        // Repeated reflection, as numpy does for pads longer than the axis.
        assert_eq!(
            pad("reflect", &[5, 0]),
            [2.0, 1.0, 2.0, 3.0, 2.0, 1.0, 2.0, 3.0]
        );
        assert_eq!(pad("edge", &[2, 1]), [1.0, 1.0, 1.0, 2.0, 3.0, 3.0]);
        assert_eq!(
            pad("wrap", &[2, 4]),
            [2.0, 3.0, 1.0, 2.0, 3.0, 1.0, 2.0, 3.0, 1.0]
        );
        assert_eq!(pad("edge", &[-1, 1]), [2.0, 3.0, 3.0]);
        assert_eq!(pad("constant", &[-1, -1]), [2.0]);
        assert!(try_run("Pad", 13, &[], &[x.shallow_clone(), ints(&[-2, -2])], 1).is_err());

        let m = arange(&[2, 2]);
        let y = run(
            "Pad",
            11,
            &[],
            &[m.shallow_clone(), ints(&[0, 1, 0, 0]), floats(&[7.0])],
        );
        assert_eq!(values(&y), [7.0, 0.0, 1.0, 7.0, 2.0, 3.0]);
        let y = run(
            "Pad",
            2,
            &[attr::ints("pads", &[1, 0, 0, 0]), attr::float("value", 5.0)],
            &[m.shallow_clone()],
        );
        assert_eq!(values(&y), [5.0, 5.0, 0.0, 1.0, 2.0, 3.0]);
        let y = run(
            "Pad",
            1,
            &[attr::ints("paddings", &[0, 0, 1, 0])],
            &[m.shallow_clone()],
        );
        assert_eq!(y.size(), [3, 2]);
        // Opset 18: pads for the listed axes only; constant_value omitted.
        let y = run(
            "Pad",
            18,
            &[attr::string("mode", "edge")],
            &[m.shallow_clone(), ints(&[1, 0]), omitted(), ints(&[-1])],
        );
        assert_eq!(values(&y), [0.0, 0.0, 1.0, 2.0, 2.0, 3.0]);
        assert!(try_build("Pad", 13, &[attr::string("mode", "mirror")], 2, 1).is_err());
        assert!(try_build("Pad", 2, &[], 1, 1).is_err());
    }

    #[test]
    fn pad_constant_value_keeps_its_gradient() {
        let x = arange(&[2]);
        let v = floats(&[3.0]).reshape([0i64; 0]).set_requires_grad(true);
        let y = run("Pad", 13, &[], &[x, ints(&[1, 2]), v.shallow_clone()]);
        assert_eq!(values(&y), [3.0, 0.0, 1.0, 3.0, 3.0]);
        let g = Tensor::run_backward(&[y.sum(Kind::Double)], &[&v], false, false);
        assert_eq!(values(&g[0]), [3.0]);
    }

    #[test]
    fn constants_and_range() {
        let t = crate::onnx::proto::TensorProto {
            dims: vec![2],
            data_type: Some(1),
            float_data: vec![1.5, -2.0],
            ..Default::default()
        };
        let value = AttributeProto {
            name: Some("value".into()),
            t: Some(t),
            r#type: Some(crate::onnx::proto::attribute_proto::AttributeType::Tensor as i32),
            ..Default::default()
        };
        let y = run("Constant", 13, &[value], NO_INPUTS);
        assert_eq!((y.kind(), values(&y)), (Kind::Double, vec![1.5, -2.0]));
        let y = run(
            "Constant",
            13,
            &[attr::ints("value_ints", &[1, -1])],
            NO_INPUTS,
        );
        assert_eq!((y.kind(), int_values(&y)), (Kind::Int64, vec![1, -1]));
        let y = run(
            "Constant",
            13,
            &[attr::float("value_float", 0.5)],
            NO_INPUTS,
        );
        assert_eq!((y.size(), y.kind()), (vec![], Kind::Double));
        let y = run("Constant", 13, &[attr::int("value_int", 3)], NO_INPUTS);
        assert_eq!((y.size(), int_values(&y)), (vec![], vec![3]));
        assert!(try_build("Constant", 13, &[], 0, 1).is_err());
        assert!(try_build(
            "Constant",
            13,
            &[attr::int("value_int", 3), attr::float("value_float", 1.0)],
            0,
            1
        )
        .is_err());
        assert!(try_build("Constant", 13, &[attr::string("value_string", "x")], 0, 1).is_err());

        let y = run("ConstantOfShape", 9, &[], &[ints(&[2, 3])]);
        assert_eq!((y.size(), y.kind()), (vec![2, 3], Kind::Double));
        assert_eq!(values(&y), [0.0; 6]);
        let one = crate::onnx::proto::TensorProto {
            dims: vec![1],
            data_type: Some(7),
            int64_data: vec![-4],
            ..Default::default()
        };
        let value = AttributeProto {
            name: Some("value".into()),
            t: Some(one),
            r#type: Some(crate::onnx::proto::attribute_proto::AttributeType::Tensor as i32),
            ..Default::default()
        };
        let y = run("ConstantOfShape", 9, &[value], &[ints(&[2])]);
        assert_eq!((y.kind(), int_values(&y)), (Kind::Int64, vec![-4, -4]));
        let y = run("ConstantOfShape", 9, &[], &[ints(&[])]);
        assert_eq!(y.size(), Vec::<i64>::new());

        let scalar = |v: f64| Tensor::from(v);
        let y = run("Range", 11, &[], &[scalar(1.0), scalar(2.0), scalar(0.3)]);
        assert_eq!(y.size(), [4]);
        assert!((values(&y)[3] - 1.9).abs() < 1e-12);
        let y = run(
            "Range",
            11,
            &[],
            &[Tensor::from(10i32), Tensor::from(4i32), Tensor::from(-3i32)],
        );
        assert_eq!((y.kind(), int_values(&y)), (Kind::Int, vec![10, 7]));
        let y = run(
            "Range",
            11,
            &[],
            &[Tensor::from(10i64), Tensor::from(6i64), Tensor::from(-3i64)],
        );
        assert_eq!(int_values(&y), [10, 7]);
        let y = run(
            "Range",
            11,
            &[],
            &[Tensor::from(0i64), Tensor::from(-1i64), Tensor::from(1i64)],
        );
        assert_eq!(y.size(), [0]);
        assert!(try_run(
            "Range",
            11,
            &[],
            &[scalar(0.0), scalar(1.0), scalar(0.0)],
            1
        )
        .is_err());
    }

    #[test]
    fn depth_to_space_and_back() {
        let x = arange(&[1, 8, 2, 3]);
        for mode in ["DCR", "CRD"] {
            let y = run(
                "DepthToSpace",
                13,
                &[attr::int("blocksize", 2), attr::string("mode", mode)],
                &[x.shallow_clone()],
            );
            assert_eq!(y.size(), [1, 2, 4, 6]);
        }
        let y = run(
            "DepthToSpace",
            13,
            &[attr::int("blocksize", 2)],
            &[x.shallow_clone()],
        );
        // DCR: output channel 0, row 0 interleaves input channels 0 and 2.
        assert_eq!(
            values(&y.get(0).get(0).get(0)),
            [0.0, 12.0, 1.0, 13.0, 2.0, 14.0]
        );
        let z = run("SpaceToDepth", 13, &[attr::int("blocksize", 2)], &[y]);
        assert_close(&z, &x);
        let y = run(
            "DepthToSpace",
            13,
            &[attr::int("blocksize", 2), attr::string("mode", "CRD")],
            &[x.shallow_clone()],
        );
        assert_eq!(
            values(&y.get(0).get(0).get(0)),
            // CRD: input channels 0 and 1.
            [0.0, 6.0, 1.0, 7.0, 2.0, 8.0]
        );
        assert!(try_run("DepthToSpace", 13, &[attr::int("blocksize", 3)], &[x], 1).is_err());
    }

    #[test]
    fn second_derivatives() {
        let x = Tensor::randn([1, 1, 3, 4], (Kind::Double, tch::Device::Cpu));
        let k = try_build("Pad", 13, &[attr::string("mode", "reflect")], 2, 1).unwrap();
        check_input(
            &k,
            &[x.shallow_clone(), ints(&[0, 0, 2, 1, 0, 0, 1, 3])],
            0,
            Head::Square,
        );
        let k = try_build("Pad", 19, &[attr::string("mode", "wrap")], 2, 1).unwrap();
        check_input(
            &k,
            &[x.shallow_clone(), ints(&[0, 0, 1, 2, 0, 0, 1, 1])],
            0,
            Head::Square,
        );
        let k = try_build("Pad", 13, &[], 3, 1).unwrap();
        check_input(
            &k,
            &[
                x.shallow_clone(),
                ints(&[0, 0, 1, -1, 0, 0, 1, 1]),
                floats(&[0.5]),
            ],
            0,
            Head::Square,
        );

        let k = try_build("Slice", 13, &[], 5, 1).unwrap();
        check_input(
            &k,
            &[
                x.shallow_clone(),
                ints(&[-1, 0]),
                ints(&[i64::MIN, 3]),
                ints(&[3, 2]),
                ints(&[-2, 2]),
            ],
            0,
            Head::Square,
        );
        let k = try_build("Gather", 13, &[attr::int("axis", 3)], 2, 1).unwrap();
        check_input(
            &k,
            &[x.shallow_clone(), ints(&[0, -1, 0, 2])],
            0,
            Head::Square,
        );
        let k = try_build("GatherElements", 13, &[attr::int("axis", 2)], 2, 1).unwrap();
        check_input(
            &k,
            &[
                x.shallow_clone(),
                ints(&[0, 2, 2, 1, 1, 1, 0, 0]).reshape([1, 1, 2, 4]),
            ],
            0,
            Head::Square,
        );
        let k = try_build("Expand", 13, &[], 2, 1).unwrap();
        check_input(
            &k,
            &[x.shallow_clone(), ints(&[2, 1, 3, 1])],
            0,
            Head::Square,
        );
        let k = try_build("Tile", 13, &[], 2, 1).unwrap();
        check_input(
            &k,
            &[x.shallow_clone(), ints(&[1, 2, 1, 2])],
            0,
            Head::Square,
        );
        let k = try_build("Concat", 13, &[attr::int("axis", 2)], 2, 1).unwrap();
        let other = Tensor::randn([1, 1, 2, 4], (Kind::Double, tch::Device::Cpu));
        check_input(
            &k,
            &[x.shallow_clone(), other.shallow_clone()],
            0,
            Head::Square,
        );
        check_input(&k, &[x.shallow_clone(), other], 1, Head::Square);
        let k = try_build("Transpose", 13, &[attr::ints("perm", &[0, 3, 1, 2])], 1, 1).unwrap();
        check_input(&k, &[x.shallow_clone()], 0, Head::Square);
        let k = try_build("Reshape", 14, &[], 2, 1).unwrap();
        check_input(&k, &[x.shallow_clone(), ints(&[0, -1])], 0, Head::Square);
        let k = try_build("DepthToSpace", 13, &[attr::int("blocksize", 2)], 1, 1).unwrap();
        check_input(
            &k,
            &[Tensor::randn(
                [1, 4, 1, 2],
                (Kind::Double, tch::Device::Cpu),
            )],
            0,
            Head::Square,
        );

        // Split: second derivatives through the second output.
        let k = try_build("Split", 13, &[attr::int("axis", 3)], 2, 2).unwrap();
        let split_sizes = ints(&[1, 3]);
        gradcheck::check_second_derivative(
            |x| {
                let y = k(&[Some(x), Some(&split_sizes)]).unwrap().remove(1);
                &y * &y
            },
            &x,
        )
        .unwrap();
    }
}
