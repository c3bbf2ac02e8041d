//! Normalizations: BatchNormalization (opsets 1..=23, inference form),
//! InstanceNormalization (1..=23), LayerNormalization (17..=23), LRN (1..=23).
//!
//! All are written as elementwise arithmetic and means (no fused tch kernel),
//! so that their second derivatives are plain autograd through every input.
//!
//! Known deviations from the spec:
//! - BatchNormalization runs in inference form only: `training_mode=1`
//!   (opset 14+) and the training outputs (more than one output) are rejected
//!   when the kernel is built, and so is `is_test=0` in opsets 1 and 6
//!   (the spec's default there: training mode; exporters of that era wrote
//!   `is_test=1`); `momentum` and `consumed_inputs` are unused. Gradients flow
//!   through X, scale and B; the running mean and variance are constants.
//!   `spatial=0` (opsets before 9) is supported: scale, B, mean and var then
//!   have the shape of one example.
//! - LayerNormalization computes in the graph's float kind whatever
//!   `stash_type` says; its optional Mean and InvStdDev outputs are returned
//!   (shape `X.shape[:axis] + [1] * (rank - axis)`).

use super::input_error;
use tch::Tensor;

use super::util::{input, input_opt, norm_axis};
use super::{Differentiable, Kernel, NodeInfo, OpError, OpResult, OpSpec, Registry};

pub fn register(reg: &mut Registry) {
    reg.insert(
        OpSpec::new("BatchNormalization", build_batch_norm)
            .inputs(5..=5)
            .outputs(1..=5)
            .differentiable(Differentiable::Only(&[0, 1, 2])),
    );
    reg.insert(OpSpec::new("InstanceNormalization", build_instance_norm).inputs(3..=3));
    reg.insert(
        OpSpec::new("LayerNormalization", build_layer_norm)
            .opsets(17..=super::MAX_OPSET)
            .inputs(2..=3)
            .outputs(1..=3),
    );
    reg.insert(OpSpec::new("LRN", build_lrn));
}

fn epsilon(info: &NodeInfo) -> OpResult<f64> {
    let eps = f64::from(info.attrs.float("epsilon", 1e-5)?);
    if eps < 0.0 || !eps.is_finite() {
        return Err(OpError::Attribute {
            name: "epsilon".into(),
            reason: format!("must be a finite number >= 0, got {eps}"),
        });
    }
    Ok(eps)
}

/// The shape that puts a per-channel vector on axis 1 of a rank-`rank` input.
fn channel_shape(rank: usize) -> Vec<i64> {
    let mut shape = vec![1, -1];
    shape.extend(std::iter::repeat_n(1, rank.saturating_sub(2)));
    shape
}

fn build_batch_norm(info: &NodeInfo) -> OpResult<Kernel> {
    let eps = epsilon(info)?;
    if info.opset >= 14 && info.attrs.int("training_mode", 0)? != 0 {
        return Err(OpError::Attribute {
            name: "training_mode".into(),
            reason: "training mode (batch statistics) is not supported; export the model \
                     in inference mode"
                .into(),
        });
    }
    if info.opset < 7 && info.attrs.int("is_test", 0)? == 0 {
        return Err(OpError::Attribute {
            name: "is_test".into(),
            reason: "0 (the default before opset 7) means training mode, which is not \
                     supported; only is_test=1 is"
                .into(),
        });
    }
    if info.num_outputs > 1 {
        return Err(OpError::Unsupported(format!(
            "{} outputs: only Y is supported (the others exist in training mode only)",
            info.num_outputs
        )));
    }
    let per_activation = info.opset < 9 && info.attrs.int("spatial", 1)? == 0;
    Ok(Box::new(move |inputs| {
        let x = input(inputs, 0)?;
        if x.dim() < 2 {
            return Err(input_error(
                0,
                format!("expected rank 2 or more (N, C, ...), got rank {}", x.dim()),
            ));
        }
        let shape = if per_activation {
            let mut shape = x.size();
            shape[0] = 1;
            shape
        } else {
            channel_shape(x.dim())
        };
        let param =
            |index: usize| -> OpResult<Tensor> { Ok(input(inputs, index)?.f_reshape(&shape)?) };
        let (scale, bias, mean, var) = (param(1)?, param(2)?, param(3)?, param(4)?);
        let gain = scale.f_mul(&var.f_add_scalar(eps)?.f_rsqrt()?)?;
        let y = x.f_sub(&mean)?.f_mul(&gain)?.f_add(&bias)?;
        Ok(vec![y])
    }))
}

/// `(x - mean) / sqrt(var + eps)` over `axes`, with the mean and the inverse
/// standard deviation (both keeping the reduced axes).
fn standardize(
    x: &Tensor,
    axes: &[i64],
    eps: f64,
) -> Result<(Tensor, Tensor, Tensor), tch::TchError> {
    let mean = x.f_mean_dim(axes, true, None)?;
    let centered = x.f_sub(&mean)?;
    let var = centered.f_mul(&centered)?.f_mean_dim(axes, true, None)?;
    let inv_std = var.f_add_scalar(eps)?.f_rsqrt()?;
    Ok((centered.f_mul(&inv_std)?, mean, inv_std))
}

fn build_instance_norm(info: &NodeInfo) -> OpResult<Kernel> {
    let eps = epsilon(info)?;
    Ok(Box::new(move |inputs| {
        let x = input(inputs, 0)?;
        let rank = x.dim();
        if rank < 3 {
            return Err(input_error(
                0,
                format!("expected rank 3 or more (N, C, D1, ...), got rank {rank}"),
            ));
        }
        let axes: Vec<i64> = (2..rank as i64).collect();
        let (normalized, _, _) = standardize(x, &axes, eps)?;
        let shape = channel_shape(rank);
        let scale = input(inputs, 1)?.f_reshape(&shape)?;
        let bias = input(inputs, 2)?.f_reshape(&shape)?;
        Ok(vec![normalized.f_mul(&scale)?.f_add(&bias)?])
    }))
}

fn build_layer_norm(info: &NodeInfo) -> OpResult<Kernel> {
    let eps = epsilon(info)?;
    let axis = info.attrs.int("axis", -1)?;
    let num_outputs = info.num_outputs;
    Ok(Box::new(move |inputs| {
        let x = input(inputs, 0)?;
        let rank = x.dim() as i64;
        let axis = norm_axis(axis, rank).map_err(|_| OpError::Attribute {
            name: "axis".into(),
            reason: format!("{axis} is out of range for an input of rank {rank}"),
        })?;
        let axes: Vec<i64> = (axis..rank).collect();
        let (normalized, mean, inv_std) = standardize(x, &axes, eps)?;
        // Scale and B broadcast (numpy rules) to X.shape[axis:].
        let mut y = normalized.f_mul(input(inputs, 1)?)?;
        if let Some(bias) = input_opt(inputs, 2) {
            y = y.f_add(bias)?;
        }
        let mut outputs = vec![y, mean, inv_std];
        outputs.truncate(num_outputs.max(1));
        Ok(outputs)
    }))
}

fn build_lrn(info: &NodeInfo) -> OpResult<Kernel> {
    let size = info.attrs.int_req("size")?;
    if size < 1 {
        return Err(OpError::Attribute {
            name: "size".into(),
            reason: format!("must be >= 1, got {size}"),
        });
    }
    let alpha = f64::from(info.attrs.float("alpha", 1e-4)?);
    let beta = f64::from(info.attrs.float("beta", 0.75)?);
    let bias = f64::from(info.attrs.float("bias", 1.0)?);
    Ok(Box::new(move |inputs| {
        let x = input(inputs, 0)?;
        let rank = x.dim();
        if rank < 2 {
            return Err(input_error(
                0,
                format!("expected rank 2 or more (N, C, ...), got rank {rank}"),
            ));
        }
        let channels = x.size()[1];
        // Channel c sums the squares of channels c - floor((size-1)/2) to
        // c + ceil((size-1)/2): pad the channel axis, add `size` shifted views.
        let before = (size - 1) / 2;
        let after = size - 1 - before;
        let mut pad = vec![0; 2 * (rank - 2)];
        pad.extend([before, after]);
        let squares = x.f_mul(x)?.f_constant_pad_nd(pad)?;
        let mut square_sum = squares.f_narrow(1, 0, channels)?;
        for shift in 1..size {
            square_sum = square_sum.f_add(&squares.f_narrow(1, shift, channels)?)?;
        }
        let denominator = square_sum
            .f_mul_scalar(alpha / size as f64)?
            .f_add_scalar(bias)?
            .f_pow_tensor_scalar(beta)?;
        Ok(vec![x.f_div(&denominator)?])
    }))
}

#[cfg(test)]
mod tests {
    use super::super::gradcheck::{self, Head};
    use super::super::testing::{
        assert_close, attr, build, build_error, build_with_outputs, call_all, seeded, values,
    };
    use super::*;
    use tch::Kind;

    fn t(v: &[f64], shape: &[i64]) -> Tensor {
        Tensor::from_slice(v).reshape(shape)
    }

    #[test]
    fn batch_norm_uses_running_statistics() {
        let x = t(&[1., 2., 3., 4., 5., 6., 7., 8.], &[2, 2, 2]);
        let scale = t(&[2., 0.5], &[2]);
        let bias = t(&[1., -1.], &[2]);
        let mean = t(&[1., 5.], &[2]);
        let var = t(&[4., 0.25], &[2]);
        let eps = 0.5f32;
        let kernel = build("BatchNormalization", 15, &[attr::float("epsilon", eps)], 5);
        let y = call_all(&kernel, &[x, scale, bias, mean, var]).remove(0);
        let e = f64::from(eps);
        let ch = |v: f64, c: usize| {
            let (s, b, m, var) = [(2., 1., 1., 4.), (0.5, -1., 5., 0.25)][c];
            s * (v - m) / (var + e).sqrt() + b
        };
        let expected: Vec<f64> = [
            (1., 0),
            (2., 0),
            (3., 1),
            (4., 1),
            (5., 0),
            (6., 0),
            (7., 1),
            (8., 1),
        ]
        .iter()
        .map(|&(v, c)| ch(v, c))
        .collect();
        assert_close(&y, &expected);
    }

    #[test]
    fn batch_norm_per_activation_and_training_rejections() {
        // spatial=0 (opset 7): one scale per activation.
        let x = t(&[1., 2., 3., 4.], &[2, 2]);
        let ones = t(&[1., 1.], &[2]);
        let kernel = build(
            "BatchNormalization",
            7,
            &[attr::int("spatial", 0), attr::float("epsilon", 0.0)],
            5,
        );
        let y = call_all(
            &kernel,
            &[
                x,
                t(&[1., 2.], &[2]),
                t(&[0., 1.], &[2]),
                ones.shallow_clone(),
                ones,
            ],
        )
        .remove(0);
        assert_close(&y, &[0., 3., 2., 7.]);
        let err = build_error(
            "BatchNormalization",
            15,
            &[attr::int("training_mode", 1)],
            5,
            3,
        );
        assert!(err.contains("training_mode"), "{err}");
        let err = build_error("BatchNormalization", 9, &[], 5, 5);
        assert!(err.contains("only Y"), "{err}");
        let err = build_error("BatchNormalization", 6, &[], 5, 1);
        assert!(err.contains("is_test"), "{err}");
        let kernel = build("BatchNormalization", 6, &[attr::int("is_test", 1)], 5);
        let x = t(&[1., 2.], &[1, 2]);
        let two = t(&[2., 2.], &[2]);
        let y = call_all(
            &kernel,
            &[
                x,
                two.shallow_clone(),
                two.shallow_clone(),
                two.shallow_clone(),
                two,
            ],
        )
        .remove(0);
        let expected = |v: f64| 2.0 * (v - 2.0) / (2.0 + f64::from(1e-5f32)).sqrt() + 2.0;
        assert_close(&y, &[expected(1.0), expected(2.0)]);
    }

    #[test]
    fn instance_norm_matches_the_spec_example() {
        let x = t(&[-1., 0., 1., 2., 3., 4.], &[1, 2, 1, 3]);
        let kernel = build("InstanceNormalization", 6, &[], 3);
        let y = call_all(&kernel, &[x, t(&[1.0, 1.5], &[2]), t(&[0., 1.], &[2])]).remove(0);
        let z = 1.0 / (2.0f64 / 3.0 + f64::from(1e-5f32)).sqrt();
        assert_close(&y, &[-z, 0., z, 1. - 1.5 * z, 1., 1. + 1.5 * z]);
    }

    #[test]
    fn layer_norm_normalizes_trailing_axes_and_returns_statistics() {
        let x = t(&[1., 2., 3., 4., 6., 8.], &[2, 3]);
        let kernel = build("LayerNormalization", 17, &[attr::float("epsilon", 0.0)], 3);
        let scale = t(&[1., 2., 3.], &[3]);
        let bias = t(&[0., 0., 1.], &[3]);
        let y = call_all(&kernel, &[x.shallow_clone(), scale.shallow_clone(), bias]).remove(0);
        let z = (1.5f64).sqrt(); // (x - mean) / std for [1, 2, 3]: -z, 0, z
        assert_close(&y, &[-z, 0., 3. * z + 1., -z, 0., 3. * z + 1.]);
        // axis 0 normalizes everything; three outputs.
        let attrs = [attr::int("axis", 0), attr::float("epsilon", 0.0)];
        let kernel = build_with_outputs("LayerNormalization", 17, &attrs, 2, 3);
        let out = call_all(
            &kernel,
            &[x, Tensor::ones([2, 3], (Kind::Double, tch::Device::Cpu))],
        );
        assert_eq!(out.len(), 3);
        assert_eq!(out[1].size(), [1, 1]);
        assert_close(&out[1], &[4.]);
        // var of [1,2,3,4,6,8] around 4: (9+4+1+0+4+16)/6 = 34/6.
        assert_close(&out[2], &[1.0 / (34.0f64 / 6.0).sqrt()]);
        assert_close(
            &out[0].get(0),
            &[
                -3.0 * out[2].double_value(&[0, 0]),
                -2.0 * out[2].double_value(&[0, 0]),
                -out[2].double_value(&[0, 0]),
            ],
        );
    }

    #[test]
    fn lrn_matches_a_direct_sum() {
        let x = seeded(&[1, 5, 2], 1);
        let (size, alpha, beta, bias) = (4i64, 0.2f32, 0.6f32, 2.0f32);
        let kernel = build(
            "LRN",
            13,
            &[
                attr::int("size", size),
                attr::float("alpha", alpha),
                attr::float("beta", beta),
                attr::float("bias", bias),
            ],
            1,
        );
        let y = call_all(&kernel, &[x.shallow_clone()]).remove(0);
        let xv = values(&x);
        let mut expected = Vec::new();
        for c in 0..5i64 {
            for d in 0..2i64 {
                // channels c - 1 ..= c + 2 for size 4.
                let sum: f64 = (c - 1..=c + 2)
                    .filter(|i| (0..5).contains(i))
                    .map(|i| xv[(i * 2 + d) as usize].powi(2))
                    .sum();
                let denom =
                    (f64::from(bias) + f64::from(alpha) / size as f64 * sum).powf(f64::from(beta));
                expected.push(xv[(c * 2 + d) as usize] / denom);
            }
        }
        assert_close(&y, &expected);
    }

    #[test]
    fn norm_second_derivatives() {
        let bn = build("BatchNormalization", 15, &[], 5);
        let var = seeded(&[2], 5).abs() + 0.5;
        gradcheck::check_joint(
            &bn,
            &[
                seeded(&[2, 2, 2], 1),
                seeded(&[2], 2),
                seeded(&[2], 3),
                seeded(&[2], 4),
                var,
            ],
            3,
            Head::Tanh,
        );
        let instance = build("InstanceNormalization", 6, &[], 3);
        gradcheck::check_joint(
            &instance,
            &[seeded(&[2, 2, 3], 6), seeded(&[2], 7), seeded(&[2], 8)],
            3,
            Head::Tanh,
        );
        let layer = build("LayerNormalization", 17, &[attr::int("axis", 1)], 3);
        gradcheck::check_joint(
            &layer,
            &[seeded(&[2, 2, 2], 9), seeded(&[2, 2], 10), seeded(&[2], 11)],
            3,
            Head::Tanh,
        );
        let lrn = build(
            "LRN",
            13,
            &[attr::int("size", 3), attr::float("alpha", 0.5)],
            1,
        );
        let x = [seeded(&[1, 4, 2], 12)];
        let f = gradcheck::kernel_fn(&lrn, &x, 0);
        gradcheck::check_second_derivative(f, &x[0]).expect("LRN second derivatives");
    }
}
