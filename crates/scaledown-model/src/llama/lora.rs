//! The decoder's projections, with OSCAR's LoRA adapters kept factored:
//! `y = x·W + (alpha / rank)·(x·A)·B`, W frozen, A and B trained.
//!
//! Burn's own LoRA reparameterisation composes the dense `W + s·A·B` on every forward and
//! takes a weight-sized gradient before reaching the factors; factored, a CPU training step
//! skips both (see the README's benchmark).

use burn::module::Param;
use burn::prelude::*;
use burn::tensor::Distribution;

/// The trainable low-rank update of one projection.
#[derive(Module, Debug)]
pub struct LoraFactors {
    /// `[in, rank]`, random.
    pub a: Param<Tensor<2>>,
    /// `[rank, out]`, zero at the start, so a fresh adapter leaves the model unchanged.
    pub b: Param<Tensor<2>>,
    /// alpha / rank.
    pub scale: f64,
}

/// A bias-free linear projection `[.., in] -> [.., out]`, optionally with LoRA.
#[derive(Module, Debug)]
pub struct Projection {
    /// `[in, out]`.
    pub weight: Param<Tensor<2>>,
    pub lora: Option<LoraFactors>,
}

impl Projection {
    pub fn new(weight: Tensor<2>) -> Self {
        Self {
            weight: Param::from_tensor(weight),
            lora: None,
        }
    }

    /// `[batch, seq, in]` -> `[batch, seq, out]`.
    ///
    /// The batch is folded into the rows of one 2D product: a batched product with a
    /// broadcast weight would pack the weight once per batch element (forward and backward).
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [batch, seq, inp] = x.dims();
        let x = x.reshape([batch * seq, inp]);
        let y = x.clone().matmul(self.weight.val());
        let y = match &self.lora {
            Some(l) => y + x.matmul(l.a.val()).matmul(l.b.val()) * l.scale,
            None => y,
        };
        let out = y.dims()[1];
        y.reshape([batch, seq, out])
    }

    /// Adds fresh factors of `rank` (A ~ N(0, 1/rank²) as Burn's LoRA, B = 0).
    pub fn with_lora(self, rank: usize, alpha: f64) -> Self {
        let [inp, out] = self.weight.dims();
        let device = self.weight.device();
        let a = Tensor::random(
            [inp, rank],
            Distribution::Normal(0.0, 1.0 / rank as f64),
            &device,
        );
        Self {
            lora: Some(LoraFactors {
                a: Param::from_tensor(a),
                b: Param::from_tensor(Tensor::zeros([rank, out], &device)),
                scale: alpha / rank as f64,
            }),
            ..self
        }
    }

    /// The plain projection `W + s·A·B` (for answering: one matmul instead of three).
    pub fn merged(self) -> Self {
        match self.lora {
            Some(l) => {
                let delta = l.a.val().matmul(l.b.val()) * l.scale;
                Self::new(self.weight.val() + delta)
            }
            None => self,
        }
    }
}
