//! The decoder's projections, with OSCAR's LoRA adapters kept factored:
//! `y = x·W + (alpha / rank)·(x·A)·B`, W frozen, A and B trained.
//!
//! Burn's own LoRA reparameterisation composes the dense `W + s·A·B` on every forward and
//! takes a weight-sized gradient before reaching the factors; factored, a CPU training step
//! skips both (see the README's benchmark).

use std::sync::Arc;

use burn::module::Param;
use burn::prelude::*;
use burn::tensor::{Distribution, TensorData};

use crate::quant::BlockMatrix;

/// The most rows (sequences) a decoding step hands to the block kernels; larger batches are
/// compute-bound enough for the f32 GEMM.
const DECODE_ROWS: usize = 16;

/// Whether an input `[batch, seq, ..]` is a decoding step that the block kernels take: one
/// token for each of at most [`DECODE_ROWS`] sequences.
pub(crate) fn decoding_step(batch: usize, seq: usize) -> bool {
    seq == 1 && batch <= DECODE_ROWS
}

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
    /// The weight again in 4- or 8-bit blocks for decoding steps on the CPU
    /// ([`Projection::with_decode_weights`]); not saved, never trained.
    #[module(skip)]
    pub decode: Option<Arc<BlockMatrix>>,
}

impl Projection {
    pub fn new(weight: Tensor<2>) -> Self {
        Self {
            weight: Param::from_tensor(weight),
            lora: None,
            decode: None,
        }
    }

    /// `[batch, seq, in]` -> `[batch, seq, out]`.
    ///
    /// The batch is folded into the rows of one 2D product: a batched product with a
    /// broadcast weight would pack the weight once per batch element (forward and backward).
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [batch, seq, inp] = x.dims();
        let x = x.reshape([batch * seq, inp]);
        if let (Some(q), None) = (&self.decode, &self.lora)
            && (decoding_step(batch, seq) || !self.is_dense())
        {
            return block_product(q, x).reshape([batch, seq, q.outputs()]);
        }
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
            decode: None,
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

impl Projection {
    /// Whether the f32 weight is held ([`Projection::without_dense`] drops it).
    pub fn is_dense(&self) -> bool {
        self.weight.shape().num_elements() > 0
    }

    /// Drops the f32 weight when a block copy holds it (a model for answering only: the
    /// blocks then run every product, prompts too). Not for training or LoRA.
    pub fn without_dense(self) -> Self {
        match (&self.decode, &self.lora) {
            (Some(_), None) => Self {
                weight: dropped(&self.weight.device()),
                ..self
            },
            _ => self,
        }
    }

    /// Keeps a 4- or 8-bit copy of the weight for decoding steps (one token per sequence),
    /// which then read 3.2-5.3x fewer bytes ([`crate::quant`]). For the native CPU backend only (the
    /// product runs on the host); a projection with unmerged LoRA, or whose input width is
    /// not a multiple of 32, stays f32.
    pub fn with_decode_weights(self) -> Self {
        let decode = stacked_decode_weights(&[&self]);
        Self { decode, ..self }
    }

    /// The plain weight `[in, out]` on the host (None with LoRA factors).
    fn host_weight(&self) -> Option<Vec<f32>> {
        match self.lora {
            Some(_) => None,
            None => self.weight.val().into_data().try_into_vec::<f32>().ok(),
        }
    }
}

/// The 4- or 8-bit copy of several projections of the same input, their outputs in turn (q, k and
/// v; gate and up): one product for all of them at a decoding step.
pub(crate) fn stacked_decode_weights(projections: &[&Projection]) -> Option<Arc<BlockMatrix>> {
    let inputs = projections.first()?.weight.dims()[0];
    let mut weights = Vec::with_capacity(projections.len());
    for p in projections {
        let [inp, out] = p.weight.dims();
        if inp != inputs {
            return None;
        }
        weights.push((p.host_weight()?, out));
    }
    let parts: Vec<(&[f32], usize)> = weights.iter().map(|(w, o)| (&w[..], *o)).collect();
    BlockMatrix::stacked(&parts, inputs)
}

/// The stand-in for a weight held only in blocks: no values.
pub(crate) fn dropped(device: &Device) -> Param<Tensor<2>> {
    Param::from_tensor(Tensor::empty([0, 0], device))
}

/// `x` on the host: `[rows, in]` row-major f32.
pub(crate) fn host_rows(x: Tensor<2>) -> Vec<f32> {
    x.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("converted to f32 just above")
}

/// `x` `[rows, in]` times a block-quantized weight -> `[rows, out]`, on the host (any rows:
/// [`BlockMatrix::matmul`]).
pub(crate) fn block_product(q: &BlockMatrix, x: Tensor<2>) -> Tensor<2> {
    let device = x.device();
    let [rows, _] = x.dims();
    let y = q.matmul(&host_rows(x), rows);
    Tensor::from_data(TensorData::new(y, [rows, q.outputs()]), &device)
}
