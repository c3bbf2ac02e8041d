//! Shape and data-movement ops: everything that reshapes, reorders, selects,
//! pads or resamples values without arithmetic of its own, plus the integer
//! shape chains that exporters write around them (Shape, Gather, Concat,
//! Slice, Unsqueeze, Reshape, ...). Registered from [`super::Registry::standard`].
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
//! | Resize | 10, 11-23 | nearest, linear, cubic; every coordinate mode; `antialias`, `axes`, `keep_aspect_ratio_policy` (18+) |
//! | Upsample | 7-8 (`scales` attribute), 9 (`scales` input) | nearest, linear |
//! | DepthToSpace | 1-10 (DCR), 11-23 (`mode`) | |
//! | SpaceToDepth | 1-23 | |
//!
//! Only data inputs are differentiable: the shape, axes, indices, pads,
//! repeats, scales and sizes inputs are read as integers or floats on the CPU
//! each run, so they can come from graph inputs or shape chains.
//!
//! Deviations from the spec:
//! - Split without sizes before opset 18 accepts a dimension that the number of
//!   outputs does not divide and splits it as opset 18 does (last chunk smaller)
//!   instead of rejecting the model.
//! - Resize and Upsample compute source coordinates in f64 (ONNX Runtime uses
//!   f32; a nearest-neighbour tie can round the other way). When
//!   `scale * input_length` is not a whole number, the `align_corners`,
//!   `pytorch_half_pixel` and `tf_crop_and_resize` modes use that unrounded
//!   length, as the reference implementation and the ONNX test data do;
//!   ONNX Runtime 1.32 uses the rounded output length and differs there.
//! - Resize-10 and Upsample nearest round as ONNX Runtime does (down when
//!   upsampling, up when downsampling); the spec leaves it open.
//! - Squeeze-13 with an empty `axes` tensor squeezes every unit dimension, as
//!   with `axes` omitted.
//! - Constant: `sparse_value`, `value_string` and `value_strings` are rejected.
//! - Gather and GatherElements copy their indices to the CPU to check them
//!   (an out-of-range index is an error, never a device assert).

use super::{attr_error, input_error};
use std::sync::Mutex;

use tch::{Device, Kind, Tensor};

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
    reg.insert(
        OpSpec::new("Resize", resize)
            .opsets(10..=10)
            .inputs(2..=2)
            .differentiable(data_only),
    );
    // 11..=23: opsets 13, 18 and 19 only add optional inputs, attributes
    // (antialias, axes, keep_aspect_ratio_policy) and a coordinate mode
    // (half_pixel_symmetric), whose defaults keep the opset-11 behaviour.
    reg.insert(
        OpSpec::new("Resize", resize)
            .opsets(11..=23)
            .inputs(1..=4)
            .differentiable(data_only),
    );
    reg.insert(OpSpec::new("Upsample", upsample).opsets(7..=8));
    reg.insert(
        OpSpec::new("Upsample", upsample)
            .opsets(9..=9)
            .inputs(2..=2)
            .differentiable(data_only),
    );
    reg.insert(OpSpec::new("DepthToSpace", depth_to_space).opsets(1..=10));
    reg.insert(OpSpec::new("DepthToSpace", depth_to_space).opsets(11..=23));
    reg.insert(OpSpec::new("SpaceToDepth", space_to_depth));
}

type Builder = fn(&NodeInfo) -> OpResult<Kernel>;

// --- Helpers ------------------------------------------------------------------

/// `axis` counted from the end when negative; `None` when outside `0..rank`.
fn resolve_axis(axis: i64, rank: usize) -> Option<usize> {
    let rank = rank as i64;
    let a = if axis < 0 { axis + rank } else { axis };
    (0..rank).contains(&a).then_some(a as usize)
}

/// Resolves every axis of `axes` against `rank`; duplicates are an error.
fn resolve_axes(axes: &[i64], rank: usize) -> Result<Vec<usize>, String> {
    let mut out = Vec::with_capacity(axes.len());
    for &a in axes {
        let r = resolve_axis(a, rank)
            .ok_or_else(|| format!("axis {a} is out of range for rank {rank}"))?;
        if out.contains(&r) {
            return Err(format!("axis {a} is repeated"));
        }
        out.push(r);
    }
    Ok(out)
}

/// An int64 index tensor on `device`.
fn index_tensor(values: &[i64], device: Device) -> OpResult<Tensor> {
    Ok(Tensor::f_from_slice(values)?.f_to_device(device)?)
}

fn is_float(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::Half | Kind::BFloat16 | Kind::Float | Kind::Double
    )
}

/// The integer values of optional input `index`; `None` when omitted.
fn ints_opt(inputs: &[Option<&Tensor>], index: usize) -> OpResult<Option<Vec<i64>>> {
    util::input_opt(inputs, index).map(util::ints).transpose()
}

/// Checks that `values` holds no negative dimension.
fn check_dims(values: &[i64], index: usize, what: &str) -> OpResult<()> {
    match values.iter().find(|&&d| d < 0) {
        Some(d) => Err(input_error(
            index,
            format!("negative {what} {d} in {values:?}"),
        )),
        None => Ok(()),
    }
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

// --- Resize, Upsample ------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq)]
enum CoordMode {
    HalfPixel,
    HalfPixelSymmetric,
    PytorchHalfPixel,
    AlignCorners,
    Asymmetric,
    TfHalfPixelForNn,
    TfCropAndResize,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum NearestMode {
    RoundPreferFloor,
    RoundPreferCeil,
    Floor,
    Ceil,
    /// Resize-10 and Upsample as ONNX Runtime runs them: down when
    /// upsampling, up when downsampling.
    Legacy,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Interpolation {
    Nearest(NearestMode),
    Linear,
    Cubic { a: f64 },
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum AspectPolicy {
    Stretch,
    NotLarger,
    NotSmaller,
}

/// Where Resize/Upsample read the scales and sizes from.
#[derive(Clone, Debug)]
enum ResizeInputs {
    /// Upsample-7/8: a `scales` attribute.
    ScalesAttribute(Vec<f64>),
    /// Upsample-9, Resize-10: `scales` is input 1.
    Scales,
    /// Resize-11+: roi (1), scales (2), sizes (3).
    RoiScalesSizes,
}

#[derive(Clone, Debug)]
struct ResizeConfig {
    interpolation: Interpolation,
    coord: CoordMode,
    exclude_outside: bool,
    extrapolation_value: f64,
    antialias: bool,
    axes: Option<Vec<i64>>,
    policy: AspectPolicy,
    inputs: ResizeInputs,
}

/// The taps of one resized axis: output position `o` is
/// `sum_k weights[k][o] * x[indices[k][o]]`, plus the extrapolation value
/// where `outside[o]` (tf_crop_and_resize).
struct AxisTaps {
    indices: Vec<Vec<i64>>,
    weights: Vec<Vec<f64>>,
    outside: Vec<bool>,
}

impl ResizeConfig {
    /// The source coordinate of output position `x` along an axis.
    fn source_coord(&self, x: f64, in_len: i64, out_len: i64, scale: f64, roi: (f64, f64)) -> f64 {
        let input = in_len as f64;
        // The reference implementation's resized length: `scale * input`,
        // not the rounded output length.
        let resized = scale * input;
        match self.coord {
            CoordMode::HalfPixel => (x + 0.5) / scale - 0.5,
            CoordMode::HalfPixelSymmetric => {
                let adjustment = out_len as f64 / resized;
                let offset = input / 2.0 * (1.0 - adjustment);
                offset + (x + 0.5) / scale - 0.5
            }
            CoordMode::PytorchHalfPixel if resized == 1.0 => -0.5,
            CoordMode::PytorchHalfPixel => (x + 0.5) / scale - 0.5,
            CoordMode::AlignCorners if resized == 1.0 => 0.0,
            CoordMode::AlignCorners => x * (input - 1.0) / (resized - 1.0),
            CoordMode::Asymmetric => x / scale,
            CoordMode::TfHalfPixelForNn => (x + 0.5) / scale,
            CoordMode::TfCropAndResize => {
                let span = (roi.1 - roi.0) * (input - 1.0);
                let offset = roi.0 * (input - 1.0);
                if resized == 1.0 {
                    offset + span / 2.0
                } else {
                    offset + x * span / (resized - 1.0)
                }
            }
        }
    }

    /// Weights of the taps `base + start + k` around a source coordinate
    /// `base + ratio` (`ratio` in (0, 1]); returns `start` and the weights.
    fn coefficients(&self, ratio: f64, scale: f64) -> (i64, Vec<f64>) {
        match self.interpolation {
            Interpolation::Nearest(mode) => {
                let upper = ratio == 1.0
                    || match mode {
                        NearestMode::RoundPreferFloor => ratio > 0.5,
                        NearestMode::RoundPreferCeil => ratio >= 0.5,
                        NearestMode::Floor => false,
                        NearestMode::Ceil => true,
                        NearestMode::Legacy => scale < 1.0,
                    };
                (i64::from(upper), vec![1.0])
            }
            Interpolation::Linear if !self.antialias || scale >= 1.0 => {
                (0, vec![1.0 - ratio, ratio])
            }
            Interpolation::Linear => {
                let start = (-1.0 / scale).floor() as i64 + 1;
                let weights = (start..2 - start)
                    .map(|i| (1.0 - ((i as f64 - ratio) * scale).abs()).clamp(0.0, 1.0))
                    .collect();
                (start, normalized(weights))
            }
            Interpolation::Cubic { a } => {
                let s = if self.antialias { scale.min(1.0) } else { 1.0 };
                let start = (-2.0 / s).floor() as i64 + 1;
                let weights = (start..2 - start)
                    .map(|i| cubic_kernel(s * (i as f64 - ratio), a))
                    .collect();
                (start, normalized(weights))
            }
        }
    }

    fn axis_taps(&self, in_len: i64, out_len: i64, scale: f64, roi: (f64, f64)) -> AxisTaps {
        let mut taps = AxisTaps {
            indices: Vec::new(),
            weights: Vec::new(),
            outside: vec![false; out_len as usize],
        };
        for o in 0..out_len {
            let x = self.source_coord(o as f64, in_len, out_len, scale, roi);
            let (start, mut weights) = if self.coord == CoordMode::TfCropAndResize
                && !(0.0..=(in_len - 1) as f64).contains(&x)
            {
                taps.outside[o as usize] = true;
                (0, Vec::new())
            } else {
                // The taps lie around `base + ratio`, ratio in (0, 1] (the
                // reference implementation prefers the left neighbour).
                let base = x.ceil() as i64 - 1;
                let (start, weights) = self.coefficients(x - base as f64, scale);
                (base + start, weights)
            };
            let mut indices: Vec<i64> = (0..weights.len() as i64).map(|k| start + k).collect();
            if self.exclude_outside {
                for (w, &i) in weights.iter_mut().zip(&indices) {
                    if !(0..in_len).contains(&i) {
                        *w = 0.0;
                    }
                }
                weights = normalized(weights);
            }
            for i in indices.iter_mut() {
                *i = (*i).max(0).min(in_len - 1);
            }
            while taps.indices.len() < weights.len() {
                taps.indices.push(vec![0; out_len as usize]);
                taps.weights.push(vec![0.0; out_len as usize]);
            }
            for (k, (w, i)) in weights.into_iter().zip(indices).enumerate() {
                taps.weights[k][o as usize] = w;
                taps.indices[k][o as usize] = i;
            }
        }
        // Taps that never contribute (nearest's unused side, integer
        // positions) cost a gather each: drop them.
        let (indices, weights) = taps
            .indices
            .into_iter()
            .zip(taps.weights)
            .filter(|(_, w)| w.iter().any(|&v| v != 0.0))
            .unzip();
        AxisTaps {
            indices,
            weights,
            outside: taps.outside,
        }
    }
}

fn normalized(weights: Vec<f64>) -> Vec<f64> {
    let sum: f64 = weights.iter().sum();
    if sum == 0.0 || sum == 1.0 {
        weights
    } else {
        weights.into_iter().map(|w| w / sum).collect()
    }
}

/// Keys' cubic convolution kernel with coefficient `a`.
fn cubic_kernel(x: f64, a: f64) -> f64 {
    let x = x.abs();
    if x <= 1.0 {
        ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a
    } else {
        0.0
    }
}

fn resize(info: &NodeInfo) -> OpResult<Kernel> {
    let a = &info.attrs;
    let legacy = info.opset < 11;
    let interpolation = match a.string("mode", "nearest")?.as_str() {
        "nearest" if legacy => Interpolation::Nearest(NearestMode::Legacy),
        "nearest" => Interpolation::Nearest(
            match a.string("nearest_mode", "round_prefer_floor")?.as_str() {
                "round_prefer_floor" => NearestMode::RoundPreferFloor,
                "round_prefer_ceil" => NearestMode::RoundPreferCeil,
                "floor" => NearestMode::Floor,
                "ceil" => NearestMode::Ceil,
                other => {
                    return Err(attr_error(
                        "nearest_mode",
                        format!("unknown mode `{other}`"),
                    ))
                }
            },
        ),
        "linear" => Interpolation::Linear,
        "cubic" if !legacy => Interpolation::Cubic {
            a: f64::from(a.float("cubic_coeff_a", -0.75)?),
        },
        other => return Err(attr_error("mode", format!("unknown mode `{other}`"))),
    };
    let coord = match legacy {
        true => CoordMode::Asymmetric,
        false => match a
            .string("coordinate_transformation_mode", "half_pixel")?
            .as_str()
        {
            "half_pixel" => CoordMode::HalfPixel,
            "half_pixel_symmetric" => CoordMode::HalfPixelSymmetric,
            "pytorch_half_pixel" => CoordMode::PytorchHalfPixel,
            "align_corners" => CoordMode::AlignCorners,
            "asymmetric" => CoordMode::Asymmetric,
            "tf_half_pixel_for_nn" => CoordMode::TfHalfPixelForNn,
            "tf_crop_and_resize" => CoordMode::TfCropAndResize,
            other => {
                return Err(attr_error(
                    "coordinate_transformation_mode",
                    format!("unknown mode `{other}`"),
                ))
            }
        },
    };
    let antialias = a.int("antialias", 0)? != 0;
    if antialias && matches!(interpolation, Interpolation::Nearest(_)) {
        return Err(attr_error("antialias", "not defined for mode nearest"));
    }
    let policy = match a.string("keep_aspect_ratio_policy", "stretch")?.as_str() {
        "stretch" => AspectPolicy::Stretch,
        "not_larger" => AspectPolicy::NotLarger,
        "not_smaller" => AspectPolicy::NotSmaller,
        other => {
            return Err(attr_error(
                "keep_aspect_ratio_policy",
                format!("unknown policy `{other}`"),
            ))
        }
    };
    let config = ResizeConfig {
        interpolation,
        coord,
        exclude_outside: a.int("exclude_outside", 0)? != 0,
        extrapolation_value: f64::from(a.float("extrapolation_value", 0.0)?),
        antialias,
        axes: a.ints_opt("axes")?,
        policy,
        inputs: if legacy {
            ResizeInputs::Scales
        } else {
            ResizeInputs::RoiScalesSizes
        },
    };
    Ok(Box::new(move |inputs| {
        Ok(vec![run_resize(&config, inputs)?])
    }))
}

fn upsample(info: &NodeInfo) -> OpResult<Kernel> {
    let interpolation = match info.attrs.string("mode", "nearest")?.as_str() {
        "nearest" => Interpolation::Nearest(NearestMode::Legacy),
        "linear" | "bilinear" => Interpolation::Linear,
        other => return Err(attr_error("mode", format!("unknown mode `{other}`"))),
    };
    let inputs = if info.opset < 9 {
        let scales = info
            .attrs
            .floats_opt("scales")?
            .ok_or_else(|| attr_error("scales", "required but missing"))?;
        ResizeInputs::ScalesAttribute(scales.into_iter().map(f64::from).collect())
    } else {
        ResizeInputs::Scales
    };
    let config = ResizeConfig {
        interpolation,
        coord: CoordMode::Asymmetric,
        exclude_outside: false,
        extrapolation_value: 0.0,
        antialias: false,
        axes: None,
        policy: AspectPolicy::Stretch,
        inputs,
    };
    Ok(Box::new(move |inputs| {
        Ok(vec![run_resize(&config, inputs)?])
    }))
}

/// Non-empty float values of optional input `index`.
fn floats_nonempty(inputs: &[Option<&Tensor>], index: usize) -> OpResult<Option<Vec<f64>>> {
    match util::input_opt(inputs, index) {
        Some(t) if t.numel() > 0 => Ok(Some(util::floats(t)?)),
        _ => Ok(None),
    }
}

fn run_resize(config: &ResizeConfig, inputs: &[Option<&Tensor>]) -> OpResult<Tensor> {
    let x = util::input(inputs, 0)?;
    let dims = x.size();
    let rank = dims.len();
    let axes = match &config.axes {
        Some(a) => resolve_axes(a, rank).map_err(|e| attr_error("axes", e))?,
        None => (0..rank).collect(),
    };
    let (scales_index, scales, sizes, roi) = match &config.inputs {
        ResizeInputs::ScalesAttribute(s) => (None, Some(s.clone()), None, None),
        ResizeInputs::Scales => (Some(1), floats_nonempty(inputs, 1)?, None, None),
        ResizeInputs::RoiScalesSizes => {
            let sizes = match util::input_opt(inputs, 3) {
                Some(t) if t.numel() > 0 => Some(util::ints(t)?),
                _ => None,
            };
            (
                Some(2),
                floats_nonempty(inputs, 2)?,
                sizes,
                floats_nonempty(inputs, 1)?,
            )
        }
    };
    let scale_err = |reason: String| match scales_index {
        Some(i) => input_error(i, reason),
        None => attr_error("scales", reason),
    };
    // Output length and scale of every axis.
    let mut out_dims = dims.clone();
    let mut axis_scales = vec![1.0f64; rank];
    match (scales, sizes) {
        (Some(_), Some(_)) => {
            return Err(OpError::Unsupported(
                "both scales and sizes are given; only one may be".into(),
            ))
        }
        (None, None) => {
            return Err(OpError::Unsupported(
                "neither scales nor sizes is given".into(),
            ))
        }
        (Some(scales), None) => {
            if scales.len() != axes.len() {
                return Err(scale_err(format!(
                    "{} scales for {} axes",
                    scales.len(),
                    axes.len()
                )));
            }
            for (&a, &s) in axes.iter().zip(&scales) {
                if !(s > 0.0 && s.is_finite()) {
                    return Err(scale_err(format!("scale {s} is not positive")));
                }
                axis_scales[a] = s;
                out_dims[a] = (dims[a] as f64 * s).floor() as i64;
            }
        }
        (None, Some(sizes)) => {
            if sizes.len() != axes.len() {
                return Err(input_error(
                    3,
                    format!("{} sizes for {} axes", sizes.len(), axes.len()),
                ));
            }
            check_dims(&sizes, 3, "size")?;
            if let Some(&a) = axes.iter().find(|&&a| dims[a] == 0) {
                return Err(OpError::Unsupported(format!(
                    "cannot resize the empty dimension {a}"
                )));
            }
            let ratios: Vec<f64> = axes
                .iter()
                .zip(&sizes)
                .map(|(&a, &s)| s as f64 / dims[a] as f64)
                .collect();
            let common = match config.policy {
                AspectPolicy::Stretch => None,
                AspectPolicy::NotLarger => ratios.iter().copied().reduce(f64::min),
                AspectPolicy::NotSmaller => ratios.iter().copied().reduce(f64::max),
            };
            for (k, &a) in axes.iter().enumerate() {
                match common {
                    None => {
                        axis_scales[a] = ratios[k];
                        out_dims[a] = sizes[k];
                    }
                    Some(s) => {
                        axis_scales[a] = s;
                        out_dims[a] = (s * dims[a] as f64 + 0.5).floor() as i64;
                    }
                }
            }
        }
    }
    // Region of interest per axis (tf_crop_and_resize only).
    let mut rois = vec![(0.0, 1.0); rank];
    if config.coord == CoordMode::TfCropAndResize {
        let roi = roi.ok_or_else(|| input_error(1, "tf_crop_and_resize needs a roi"))?;
        if roi.len() != 2 * axes.len() {
            return Err(input_error(
                1,
                format!("{} roi values for {} axes", roi.len(), axes.len()),
            ));
        }
        for (k, &a) in axes.iter().enumerate() {
            rois[a] = (roi[k], roi[k + axes.len()]);
        }
    }
    let float_input = is_float(x.kind());
    let mut y = x.shallow_clone();
    for &a in &axes {
        let (in_len, out_len) = (dims[a], out_dims[a]);
        if in_len == 0 || out_len == 0 {
            if in_len != out_len {
                let mut shape = y.size();
                shape[a] = out_len;
                y = Tensor::f_full(shape, config.extrapolation_value, (x.kind(), x.device()))?;
            }
            continue;
        }
        let taps = config.axis_taps(in_len, out_len, axis_scales[a], rois[a]);
        let identity = in_len == out_len
            && !taps.outside.contains(&true)
            && taps.weights.len() == 1
            && taps.weights[0].iter().all(|&w| w == 1.0)
            && taps.indices[0].iter().copied().eq(0..in_len);
        if identity {
            continue;
        }
        if !float_input && taps.weights.iter().flatten().any(|&w| w != 0.0 && w != 1.0) {
            return Err(OpError::Unsupported(format!(
                "interpolating a {:?} tensor (only nearest works on integers)",
                x.kind()
            )));
        }
        // Weights broadcast along axis `a`.
        let mut weight_shape = vec![1i64; rank];
        weight_shape[a] = out_len;
        let as_weights = |w: &[f64]| -> OpResult<Tensor> {
            Ok(Tensor::f_from_slice(w)?
                .f_to_kind(x.kind())?
                .f_to_device(x.device())?
                .f_reshape(weight_shape.as_slice())?)
        };
        let mut acc: Option<Tensor> = None;
        for (indices, weights) in taps.indices.iter().zip(&taps.weights) {
            let picked = y.f_index_select(a as i64, &index_tensor(indices, x.device())?)?;
            let term = if weights.iter().all(|&w| w == 1.0) {
                picked
            } else {
                picked.f_mul(&as_weights(weights)?)?
            };
            acc = Some(match acc {
                None => term,
                Some(acc) => acc.f_add(&term)?,
            });
        }
        if taps.outside.contains(&true) {
            let mask: Vec<f64> = taps
                .outside
                .iter()
                .map(|&o| if o { config.extrapolation_value } else { 0.0 })
                .collect();
            let fill = as_weights(&mask)?;
            acc = Some(match acc {
                Some(acc) => acc.f_add(&fill)?,
                None => {
                    let mut shape = y.size();
                    shape[a] = out_len;
                    fill.f_expand(shape, false)?.f_contiguous()?
                }
            });
        }
        y = match acc {
            Some(acc) => acc,
            None => {
                return Err(OpError::Unsupported(format!(
                    "resizing axis {a} selects nothing"
                )))
            }
        };
    }
    Ok(y)
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

    fn resize(attrs: &[AttributeProto], x: &Tensor, scales: &[f64], sizes: &[i64]) -> Tensor {
        let scales = if scales.is_empty() {
            omitted()
        } else {
            floats(scales)
        };
        let sizes = if sizes.is_empty() {
            omitted()
        } else {
            ints(sizes)
        };
        run(
            "Resize",
            19,
            attrs,
            &[x.shallow_clone(), omitted(), scales, sizes],
        )
    }

    #[test]
    fn resize_matches_libtorch_interpolation() {
        let x = Tensor::randn([1, 2, 3, 4], (Kind::Double, tch::Device::Cpu));
        let linear = [attr::string("mode", "linear")];
        for (h, w) in [(6, 8), (5, 7), (2, 3), (3, 4), (1, 1)] {
            let y = resize(&linear, &x, &[], &[1, 2, h, w]);
            assert_close(&y, &x.upsample_bilinear2d([h, w], false, None, None));
            let y = resize(
                &[
                    linear[0].clone(),
                    attr::string("coordinate_transformation_mode", "align_corners"),
                ],
                &x,
                &[],
                &[1, 2, h, w],
            );
            assert_close(&y, &x.upsample_bilinear2d([h, w], true, None, None));
            let y = resize(&[attr::string("mode", "cubic")], &x, &[], &[1, 2, h, w]);
            assert_close(&y, &x.upsample_bicubic2d([h, w], false, None, None));
            // libtorch's "nearest" is asymmetric + floor.
            let y = resize(
                &[
                    attr::string("coordinate_transformation_mode", "asymmetric"),
                    attr::string("nearest_mode", "floor"),
                ],
                &x,
                &[],
                &[1, 2, h, w],
            );
            assert_close(&y, &x.upsample_nearest2d([h, w], None, None));
        }
        // Scales, and axes (opset 18+).
        let y = resize(&linear, &x, &[1.0, 1.0, 2.0, 2.0], &[]);
        assert_close(&y, &x.upsample_bilinear2d([6, 8], false, None, None));
        let y = resize(
            &[linear[0].clone(), attr::ints("axes", &[-1, 2])],
            &x,
            &[2.0, 2.0],
            &[],
        );
        assert_close(&y, &x.upsample_bilinear2d([6, 8], false, None, None));
        // Same size: the input itself.
        assert_close(&resize(&linear, &x, &[1.0; 4], &[]), &x);
    }

    #[test]
    fn resize_modes_by_hand() {
        let x = floats(&[1.0, 2.0, 3.0, 4.0]).reshape([1, 1, 1, 4]);
        let nearest = |mode: &str, coord: &str, scale: f64| {
            values(&resize(
                &[
                    attr::string("nearest_mode", mode),
                    attr::string("coordinate_transformation_mode", coord),
                ],
                &x,
                &[1.0, 1.0, 1.0, scale],
                &[],
            ))
        };
        // half_pixel, x2: sources -0.25, 0.25, 0.75, 1.25, ...
        assert_eq!(
            nearest("round_prefer_floor", "half_pixel", 2.0),
            [1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 4.0, 4.0]
        );
        // half_pixel, x0.5: sources 0.5, 2.5: ties.
        assert_eq!(nearest("round_prefer_floor", "half_pixel", 0.5), [1.0, 3.0]);
        assert_eq!(nearest("round_prefer_ceil", "half_pixel", 0.5), [2.0, 4.0]);
        assert_eq!(nearest("ceil", "asymmetric", 0.75), [1.0, 3.0, 4.0]);
        assert_eq!(nearest("floor", "tf_half_pixel_for_nn", 0.5), [2.0, 4.0]);
        // pytorch_half_pixel to one output: source -0.5.
        let y = resize(
            &[
                attr::string("mode", "linear"),
                attr::string("coordinate_transformation_mode", "pytorch_half_pixel"),
            ],
            &x,
            &[],
            &[1, 1, 1, 1],
        );
        assert_eq!(values(&y), [1.0]);
        // tf_crop_and_resize: the roi's outside is the extrapolation value.
        let roi = floats(&[0.0, 0.0, 0.0, 0.5, 1.0, 1.0, 1.0, 1.5]);
        let y = run(
            "Resize",
            13,
            &[
                attr::string("mode", "linear"),
                attr::string("coordinate_transformation_mode", "tf_crop_and_resize"),
                attr::float("extrapolation_value", 9.0),
            ],
            &[x.shallow_clone(), roi, omitted(), ints(&[1, 1, 1, 4])],
        );
        assert_eq!(values(&y), [2.5, 3.5, 9.0, 9.0]);
        // keep_aspect_ratio_policy: one common scale.
        let m = arange(&[1, 1, 2, 4]);
        let policy = |p: &str| {
            [
                attr::string("keep_aspect_ratio_policy", p),
                attr::ints("axes", &[2, 3]),
            ]
        };
        let y = resize(&policy("not_larger"), &m, &[], &[4, 4]);
        assert_eq!(y.size(), [1, 1, 2, 4]);
        let y = resize(&policy("not_smaller"), &m, &[], &[4, 4]);
        assert_eq!(y.size(), [1, 1, 4, 8]);
        // Nearest on integers works; interpolating them does not.
        let i = ints(&[1, 2]).reshape([1, 2]);
        assert_eq!(int_values(&resize(&[], &i, &[1.0, 2.0], &[])), [1, 1, 2, 2]);
        let linear = [attr::string("mode", "linear")];
        assert!(try_run(
            "Resize",
            19,
            &linear,
            &[i, omitted(), floats(&[1.0, 1.5])],
            1
        )
        .is_err());
        assert!(try_run(
            "Resize",
            19,
            &[],
            &[
                x.shallow_clone(),
                omitted(),
                floats(&[1.0, 2.0, 1.0, 1.0]),
                ints(&[1, 1, 1, 4])
            ],
            1
        )
        .is_err());
        assert!(try_run(
            "Resize",
            19,
            &[],
            &[x.shallow_clone(), omitted(), floats(&[2.0])],
            1
        )
        .is_err());
        assert!(try_build("Resize", 19, &[attr::string("mode", "area")], 3, 1).is_err());
        assert!(try_build("Resize", 19, &[attr::int("antialias", 1)], 3, 1).is_err());
    }

    #[test]
    fn resize_antialias_matches_the_reference() {
        // Expected values from onnx.reference (ONNX Runtime 1.32 agrees to
        // f32 precision); libtorch's antialiasing differs at the borders.
        let x = arange(&[1, 1, 8, 9]).pow_tensor_scalar(1.5) / 10.0;
        let expected = [
            (
                "linear",
                [
                    3.8082828521728516,
                    4.746607780456543,
                    5.902872562408447,
                    7.0857954025268555,
                    18.950834274291992,
                    20.772974014282227,
                    22.800485610961914,
                    24.741304397583008,
                    41.077701568603516,
                    43.461490631103516,
                    46.07802200317383,
                    48.55210494995117,
                ],
            ),
            (
                "cubic",
                [
                    2.4118294715881348,
                    3.34322190284729,
                    4.4423089027404785,
                    5.661374568939209,
                    18.008541107177734,
                    19.987802505493164,
                    22.0379581451416,
                    24.13897132873535,
                    42.44552230834961,
                    45.02818298339844,
                    47.67638397216797,
                    50.36058807373047,
                ],
            ),
        ];
        for (mode, expected) in expected {
            let attrs = [attr::string("mode", mode), attr::int("antialias", 1)];
            let y = resize(&attrs, &x, &[], &[1, 1, 3, 4]);
            for (a, e) in values(&y).iter().zip(expected) {
                assert!((a - e).abs() < 1e-5 * e.abs(), "{mode}: {a} vs {e}");
            }
        }
    }

    #[test]
    fn legacy_resize_and_upsample() {
        let x = floats(&[1.0, 2.0, 3.0]).reshape([1, 3]);
        let y = run(
            "Upsample",
            7,
            &[attr::floats("scales", &[1.0, 2.0])],
            &[x.shallow_clone()],
        );
        assert_eq!(values(&y), [1.0, 1.0, 2.0, 2.0, 3.0, 3.0]);
        let y = run(
            "Upsample",
            9,
            &[attr::string("mode", "linear")],
            &[x.shallow_clone(), floats(&[1.0, 2.0])],
        );
        assert_eq!(values(&y), [1.0, 1.5, 2.0, 2.5, 3.0, 3.0]);
        let y = run("Resize", 10, &[], &[x.shallow_clone(), floats(&[1.0, 2.0])]);
        assert_eq!(values(&y), [1.0, 1.0, 2.0, 2.0, 3.0, 3.0]);
        // Downsampling rounds up, as ONNX Runtime does.
        let y = run(
            "Resize",
            10,
            &[],
            &[
                floats(&[1.0, 2.0, 3.0, 4.0]).reshape([1, 4]),
                floats(&[1.0, 0.6]),
            ],
        );
        assert_eq!(values(&y), [1.0, 3.0]);
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

        let k = try_build("Resize", 19, &[attr::string("mode", "linear")], 4, 1).unwrap();
        check_input(
            &k,
            &[
                x.shallow_clone(),
                omitted(),
                floats(&[1.0, 1.0, 1.5, 0.75]),
                omitted(),
            ],
            0,
            Head::Square,
        );
        let k = try_build(
            "Resize",
            19,
            &[
                attr::string("mode", "cubic"),
                attr::int("exclude_outside", 1),
            ],
            4,
            1,
        )
        .unwrap();
        check_input(
            &k,
            &[x.shallow_clone(), omitted(), omitted(), ints(&[1, 1, 5, 3])],
            0,
            Head::Square,
        );
        let k = try_build(
            "Resize",
            19,
            &[attr::string("mode", "linear"), attr::int("antialias", 1)],
            4,
            1,
        )
        .unwrap();
        check_input(
            &k,
            &[x.shallow_clone(), omitted(), omitted(), ints(&[1, 1, 2, 2])],
            0,
            Head::Square,
        );
        let k = try_build("Resize", 13, &[], 3, 1).unwrap();
        check_input(
            &k,
            &[x.shallow_clone(), omitted(), floats(&[1.0, 1.0, 2.0, 2.0])],
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
