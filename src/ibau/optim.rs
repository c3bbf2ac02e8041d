//! The outer optimisers, written out so that they match PyTorch's
//! `torch.optim.Adam` / `torch.optim.SGD` (defaults: betas 0.9/0.999, eps 1e-8,
//! no weight decay, no momentum) step for step, on gradients we computed
//! ourselves (the hypergradient), without a tch VarStore (whose paths cannot
//! hold ONNX names).

use tch::Tensor;

use super::TrainError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    Adam,
    Sgd,
}

pub struct Optimizer {
    kind: OptimizerKind,
    lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    step: i32,
    exp_avg: Vec<Tensor>,
    exp_avg_sq: Vec<Tensor>,
}

impl Optimizer {
    pub fn new(kind: OptimizerKind, lr: f64, params: &[Tensor]) -> Result<Optimizer, TrainError> {
        let zeros = || -> Result<Vec<Tensor>, TrainError> {
            Ok(params
                .iter()
                .map(|p| p.f_zeros_like())
                .collect::<Result<_, _>>()?)
        };
        let adam = kind == OptimizerKind::Adam;
        Ok(Optimizer {
            kind,
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            step: 0,
            exp_avg: if adam { zeros()? } else { Vec::new() },
            exp_avg_sq: if adam { zeros()? } else { Vec::new() },
        })
    }

    /// One step of every parameter along its gradient.
    pub fn step(&mut self, params: &[Tensor], grads: &[Tensor]) -> Result<(), TrainError> {
        self.step += 1;
        tch::no_grad(|| -> Result<(), TrainError> {
            for (i, (p, g)) in params.iter().zip(grads).enumerate() {
                let mut p = p.shallow_clone();
                match self.kind {
                    OptimizerKind::Sgd => {
                        let _ = p.f_sub_(&g.f_mul_scalar(self.lr)?)?;
                    }
                    OptimizerKind::Adam => {
                        let m = &mut self.exp_avg[i];
                        let v = &mut self.exp_avg_sq[i];
                        // m = b1 m + (1 - b1) g ; v = b2 v + (1 - b2) g^2
                        let _ = m.f_mul_scalar_(self.beta1)?;
                        let _ = m.f_add_(&g.f_mul_scalar(1.0 - self.beta1)?)?;
                        let _ = v.f_mul_scalar_(self.beta2)?;
                        let _ = v.f_add_(&g.f_mul(g)?.f_mul_scalar(1.0 - self.beta2)?)?;
                        let bias1 = 1.0 - self.beta1.powi(self.step);
                        let bias2 = 1.0 - self.beta2.powi(self.step);
                        let denom = v
                            .f_sqrt()?
                            .f_div_scalar(bias2.sqrt())?
                            .f_add_scalar(self.eps)?;
                        let _ = p.f_sub_(&m.f_div(&denom)?.f_mul_scalar(self.lr / bias1)?)?;
                    }
                }
            }
            Ok(())
        })
    }
}
