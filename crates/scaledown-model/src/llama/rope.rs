//! Rotary position embedding in the Hugging Face "rotate_half" layout: dimension i is paired
//! with i + head_dim/2. (llama.cpp's GGUF permutes Q/K rows for adjacent pairs; the loader
//! undoes that, so one RoPE serves both file formats.)

use burn::prelude::*;

#[derive(Module, Debug)]
pub struct Rope {
    /// cos/sin tables, computed once: [max_len, head_dim].
    cos: Tensor<2>,
    sin: Tensor<2>,
}

impl Rope {
    pub fn new(head_dim: usize, max_len: usize, theta: f32, device: &Device) -> Self {
        let half = head_dim / 2;
        // Computed in f32 exactly as transformers does, so angles at long positions agree.
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| 1.0 / theta.powf((2 * i) as f32 / head_dim as f32))
            .collect();
        let mut cos = Vec::with_capacity(max_len * head_dim);
        let mut sin = Vec::with_capacity(max_len * head_dim);
        for pos in 0..max_len {
            for _ in 0..2 {
                for f in &inv_freq {
                    let angle = pos as f32 * f;
                    cos.push(angle.cos());
                    sin.push(angle.sin());
                }
            }
        }
        let table = |v| Tensor::from_data(TensorData::new(v, [max_len, head_dim]), device);
        Self {
            cos: table(cos),
            sin: table(sin),
        }
    }

    pub fn device(&self) -> Device {
        self.cos.device()
    }

    pub fn max_len(&self) -> usize {
        self.cos.dims()[0]
    }

    /// Rotates queries or keys.
    /// - x: `[batch, heads, seq, head_dim]`, positions `start..start + seq`
    pub fn apply(&self, x: Tensor<4>, start: usize) -> Tensor<4> {
        let seq = x.dims()[2];
        let cos = self.cos.clone().slice_dim(0, start..start + seq);
        let sin = self.sin.clone().slice_dim(0, start..start + seq);
        Self::rotate(x, cos, sin)
    }

    /// Rotates queries or keys at their own `positions` `[seq]`.
    /// - x: `[batch, heads, seq, head_dim]`
    pub fn apply_at(&self, x: Tensor<4>, positions: Tensor<1, Int>) -> Tensor<4> {
        let cos = self.cos.clone().select(0, positions.clone());
        let sin = self.sin.clone().select(0, positions);
        Self::rotate(x, cos, sin)
    }

    /// x `[batch, heads, seq, head_dim]` rotated by the angles' cos and sin `[seq, head_dim]`.
    fn rotate(x: Tensor<4>, cos: Tensor<2>, sin: Tensor<2>) -> Tensor<4> {
        let head_dim = x.dims()[3];
        let (cos, sin) = (cos.unsqueeze::<4>(), sin.unsqueeze::<4>());
        let half = head_dim / 2;
        let x1 = x.clone().slice_dim(3, 0..half);
        let x2 = x.clone().slice_dim(3, half..head_dim);
        let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
        x * cos + rotated * sin
    }
}
