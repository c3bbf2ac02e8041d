//! Neural Cleanse's optimiser for the mask family (Wang et al., S&P 2019):
//! mask and pattern are free parameters through `tanh` (`m = (tanh(a) +
//! 1) / 2`, the pattern likewise within the space's bounds), moved by Adam
//! (learning rate 0.1, betas 0.5 and 0.9, Neural Cleanse's) on
//! `CE(f(stamp(x)), c) + lambda_c * |m_c|_1`. Each class's `lambda_c` is 0
//! until its trigger first reaches [`FOOLING`] of a step's images, then
//! 1e-3 (Neural Cleanse's initial cost), and afterwards grows by
//! [`COST_UP`] after a step that reaches [`FOOLING`] and shrinks by
//! `COST_UP^1.5` after one that does not (Neural Cleanse's multipliers,
//! applied every step instead of after a patience of 5). Adam's per-pixel
//! steps let single mask pixels go to 0 or 1, so the mask concentrates on a
//! patch where the budgeted search keeps it diffuse. A class's result is
//! the smallest mask among the steps of the second half that reached
//! [`FOOLING`] (the last mask when none did).

use tch::{Kind, Tensor};

use super::{fooled_shares, Budget, Found, MaskShape, Space, FOOLING};

/// Adam's learning rate and betas (Neural Cleanse's).
const LR: f64 = 0.1;
const BETA1: f64 = 0.5;
const BETA2: f64 = 0.9;
/// The cost once a trigger first reaches [`FOOLING`], and its multiplier.
const INITIAL_COST: f64 = 1e-3;
const COST_UP: f64 = 1.5;

/// Adam's state for one tensor.
struct Adam {
    m: Tensor,
    v: Tensor,
}

impl Adam {
    fn new(like: &Tensor) -> Result<Adam, tch::TchError> {
        Ok(Adam {
            m: like.f_zeros_like()?,
            v: like.f_zeros_like()?,
        })
    }

    /// One step of `param` along `grad` (`t` counts from 1).
    fn step(&mut self, param: &Tensor, grad: &Tensor, t: i32) -> Result<Tensor, tch::TchError> {
        self.m = self
            .m
            .f_mul_scalar(BETA1)?
            .f_add(&grad.f_mul_scalar(1.0 - BETA1)?)?;
        self.v = self
            .v
            .f_mul_scalar(BETA2)?
            .f_add(&grad.f_square()?.f_mul_scalar(1.0 - BETA2)?)?;
        let m_hat = self.m.f_div_scalar(1.0 - BETA1.powi(t))?;
        let v_hat = self.v.f_div_scalar(1.0 - BETA2.powi(t))?;
        param.f_sub(
            &m_hat
                .f_div(&v_hat.f_sqrt()?.f_add_scalar(1e-8)?)?
                .f_mul_scalar(LR)?,
        )
    }
}

/// The mask family for the `classes` goal, optimised as Neural Cleanse
/// does (see the module doc); the arguments are [`super::search`]'s.
pub fn search<E: From<tch::TchError>>(
    logits: &mut dyn FnMut(&Tensor) -> Result<Tensor, E>,
    images: &mut dyn FnMut(usize) -> Result<Tensor, E>,
    classes: &[i64],
    space: Space,
    budget: &Budget,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Found, E> {
    let first = images(0)?;
    let (kind, device) = (first.kind(), first.device());
    let sample = first.size()[1..].to_vec();
    let n = first.size()[0].max(1);
    let triggers = classes.len() as i64;
    let chunk = (budget.max_batch / n).clamp(1, triggers.max(1));
    let chunks = (triggers + chunk - 1) / chunk;
    let mask_sample: Vec<i64> = match space.mask {
        MaskShape::Pixel if sample.len() >= 2 => [&[1], &sample[1..]].concat(),
        _ => sample.clone(),
    };
    let (lo, hi) = space.bounds;
    let range = (hi - lo).max(1e-6);
    // Free parameters, Adam states, costs and the best masks so far.
    let mut a = Vec::new();
    let mut b = Vec::new();
    let mut states = Vec::new();
    for i in 0..chunks {
        let k = chunk.min(triggers - i * chunk);
        let m_shape = [&[k], mask_sample.as_slice()].concat();
        let p_shape = [&[k], sample.as_slice()].concat();
        let ai = Tensor::f_zeros(m_shape.as_slice(), (kind, device))?;
        let bi = Tensor::f_rand(p_shape.as_slice(), (kind, device))?
            .f_mul_scalar(2.0)?
            .f_sub_scalar(1.0)?;
        states.push((Adam::new(&ai)?, Adam::new(&bi)?));
        a.push(ai);
        b.push(bi);
    }
    let mut cost = vec![0.0f64; triggers as usize];
    let mut best = vec![f64::INFINITY; triggers as usize];
    let mut best_mask: Vec<Option<Tensor>> = (0..triggers).map(|_| None).collect();
    let mut best_pattern: Vec<Option<Tensor>> = (0..triggers).map(|_| None).collect();
    let mut last = vec![0.0f64; triggers as usize];
    let mut reached = vec![0.0f64; triggers as usize];
    for step in 0..budget.steps {
        let (x, own) = super::step_inputs(&first, images, logits, step)?;
        let count = x.size()[0];
        for i in 0..chunks as usize {
            let at = i * chunk as usize;
            let k = chunk.min(triggers - at as i64);
            let la = a[i].f_detach()?.set_requires_grad(true);
            let lb = b[i].f_detach()?.set_requires_grad(true);
            let m = la.f_tanh()?.f_add_scalar(1.0)?.f_mul_scalar(0.5)?;
            let p = lb
                .f_tanh()?
                .f_add_scalar(1.0)?
                .f_mul_scalar(0.5 * range)?
                .f_add_scalar(lo)?;
            let stamped = super::stamp(&x.f_unsqueeze(0)?, &m.f_unsqueeze(1)?, &p.f_unsqueeze(1)?)?;
            let flat = [&[k * count], sample.as_slice()].concat();
            let out = logits(&stamped.f_reshape(flat.as_slice())?)?.f_to_kind(Kind::Float)?;
            let ids = Tensor::f_from_slice(&classes[at..at + k as usize])?.f_to_device(device)?;
            let shares = fooled_shares(&out, &own, &ids)?;
            let targets = ids.f_repeat_interleave_self_int(count, 0, None)?;
            let ce = out
                .f_log_softmax(-1, Kind::Float)?
                .f_nll_loss::<Tensor>(&targets, None, tch::Reduction::Sum, -100)?
                .f_div_scalar(count as f64)?;
            let dims: Vec<i64> = (1..m.dim() as i64).collect();
            let sizes = m.f_sum_dim_intlist(dims.as_slice(), false, Kind::Float)?;
            let lambda = Tensor::f_from_slice(&cost[at..at + k as usize])?
                .f_to_kind(Kind::Float)?
                .f_to_device(device)?;
            let loss = ce.f_add(&sizes.f_mul(&lambda)?.f_sum(Kind::Float)?)?;
            let grads = Tensor::f_run_backward(&[&loss], &[&la, &lb], false, false)?;
            let sizes = Vec::<f64>::try_from(
                &sizes
                    .f_detach()?
                    .f_to_kind(Kind::Double)?
                    .f_to_device(tch::Device::Cpu)?,
            )?;
            for (j, (&share, &size)) in shares.iter().zip(&sizes).enumerate() {
                let c = at + j;
                reached[c] = share;
                last[c] = size;
                let hit = share >= FOOLING;
                cost[c] = match (hit, cost[c] == 0.0) {
                    (true, true) => INITIAL_COST,
                    (false, true) => 0.0,
                    (true, false) => cost[c] * COST_UP,
                    (false, false) => cost[c] / COST_UP.powf(1.5),
                };
                if hit && step >= budget.steps / 2 && size < best[c] {
                    best[c] = size;
                    best_mask[c] = Some(m.f_narrow(0, j as i64, 1)?.f_detach()?);
                    best_pattern[c] = Some(p.f_narrow(0, j as i64, 1)?.f_detach()?);
                }
            }
            let t = step as i32 + 1;
            let (sa, sb) = &mut states[i];
            a[i] = tch::no_grad(|| sa.step(&la, &grads[0], t))?;
            b[i] = tch::no_grad(|| sb.step(&lb, &grads[1], t))?;
        }
        progress(step + 1, budget.steps);
    }
    // The best masks (or the last ones), back in chunks.
    let mut mask = Vec::new();
    let mut pattern = Vec::new();
    for i in 0..chunks as usize {
        let at = i * chunk as usize;
        let k = chunk.min(triggers - at as i64) as usize;
        let m_last = a[i].f_tanh()?.f_add_scalar(1.0)?.f_mul_scalar(0.5)?;
        let p_last = b[i]
            .f_tanh()?
            .f_add_scalar(1.0)?
            .f_mul_scalar(0.5 * range)?
            .f_add_scalar(lo)?;
        let mut ms = Vec::new();
        let mut ps = Vec::new();
        for j in 0..k {
            ms.push(match &best_mask[at + j] {
                Some(m) => m.shallow_clone(),
                None => m_last.f_narrow(0, j as i64, 1)?,
            });
            ps.push(match &best_pattern[at + j] {
                Some(p) => p.shallow_clone(),
                None => p_last.f_narrow(0, j as i64, 1)?,
            });
        }
        mask.push(Tensor::f_cat(&ms, 0)?);
        pattern.push(Tensor::f_cat(&ps, 0)?);
    }
    let budgets = (0..triggers as usize)
        .map(|c| {
            if best[c].is_finite() {
                best[c]
            } else {
                last[c]
            }
        })
        .collect();
    Ok(Found {
        classes: classes.to_vec(),
        budgets,
        reached,
        delta: Vec::new(),
        mask,
        pattern,
        chunk,
        family: super::Family::Mask,
        space,
    })
}
