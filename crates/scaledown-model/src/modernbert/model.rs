//! ModernBERT (Warner et al., 2024): token embeddings + LayerNorm, pre-norm blocks with RoPE
//! attention that alternates global and local (sliding-window) spans, a GeGLU MLP, a final
//! LayerNorm; biases and norm biases off as in the published models. Bidirectional, with a
//! padding mask.

use super::config::{AttentionSpan, ModernBertConfig};
use crate::llama::rope::Rope;
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::gelu;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;

#[derive(Module, Debug)]
pub struct ModernBertLayer {
    /// None in layer 0, whose input is the embeddings' own norm.
    pub attn_norm: Option<LayerNorm>,
    /// hidden -> 3 x hidden (queries, keys, values).
    pub wqkv: Linear,
    pub wo: Linear,
    pub mlp_norm: LayerNorm,
    /// hidden -> 2 x intermediate (input, gate).
    pub wi: Linear,
    pub mlp_out: Linear,
    pub num_heads: usize,
    /// Local layers: how far either side a token sees; 0 for global layers.
    pub half_window: usize,
}

impl ModernBertLayer {
    /// - x: `[batch, seq, hidden]`; hidden: `[batch, 1, seq, seq]`, true where a query may not
    ///   see a key (padding, and for local layers the keys outside the window).
    pub fn forward(&self, x: Tensor<3>, hidden: Tensor<4, Bool>, rope: &Rope) -> Tensor<3> {
        let [b, s, h] = x.dims();
        let hd = h / self.num_heads;
        let normed = match &self.attn_norm {
            Some(norm) => norm.forward(x.clone()),
            None => x.clone(),
        };
        // [b, s, 3, heads, hd] -> three [b, heads, s, hd]
        let qkv = self
            .wqkv
            .forward(normed)
            .reshape([b, s, 3, self.num_heads, hd]);
        let part = |i: usize| {
            qkv.clone()
                .slice_dim(2, i..i + 1)
                .reshape([b, s, self.num_heads, hd])
                .swap_dims(1, 2)
        };
        let q = rope.apply(part(0), 0);
        let k = rope.apply(part(1), 0);
        let v = part(2);
        let mask = hidden.expand([b, self.num_heads, s, s]);
        let ctx = attention(q, k, v, Some(mask), None, AttentionModuleOptions::default());
        let x = x + self.wo.forward(ctx.swap_dims(1, 2).reshape([b, s, h]));
        let up = self.wi.forward(self.mlp_norm.forward(x.clone()));
        let inter = up.dims()[2] / 2;
        let input = up.clone().slice_dim(2, 0..inter);
        let gate = up.slice_dim(2, inter..2 * inter);
        x.clone() + self.mlp_out.forward(gelu(input) * gate)
    }
}

#[derive(Module, Debug)]
pub struct ModernBert {
    pub tok_embeddings: Embedding,
    pub embed_norm: LayerNorm,
    pub layers: Vec<ModernBertLayer>,
    pub final_norm: LayerNorm,
    pub global_rope: Rope,
    pub local_rope: Rope,
}

impl ModernBertConfig {
    /// Random weights (for tests); real weights come from `modernbert::load`.
    pub fn init(&self, device: &Device) -> ModernBert {
        let h = self.hidden_size;
        let norm = || {
            LayerNormConfig::new(h)
                .with_epsilon(self.norm_eps)
                .with_bias(self.norm_bias)
                .init(device)
        };
        let lin = |i, o, bias| LinearConfig::new(i, o).with_bias(bias).init(device);
        let layers = (0..self.num_hidden_layers)
            .map(|i| ModernBertLayer {
                attn_norm: (i > 0).then(norm),
                wqkv: lin(h, 3 * h, self.attention_bias),
                wo: lin(h, h, self.attention_bias),
                mlp_norm: norm(),
                wi: lin(h, 2 * self.intermediate_size, self.mlp_bias),
                mlp_out: lin(self.intermediate_size, h, self.mlp_bias),
                num_heads: self.num_attention_heads,
                half_window: self.half_window(i),
            })
            .collect();
        ModernBert {
            tok_embeddings: EmbeddingConfig::new(self.vocab_size, h).init(device),
            embed_norm: norm(),
            layers,
            final_norm: norm(),
            global_rope: self.rope(self.global_rope_theta, device),
            local_rope: self.rope(self.local_rope_theta, device),
        }
    }

    /// How far either side a token of layer `i` sees: 0 (everything) for global layers.
    pub fn half_window(&self, i: usize) -> usize {
        match self.layers[i] {
            AttentionSpan::Global => 0,
            AttentionSpan::Local => self.local_attention / 2,
        }
    }

    pub(crate) fn rope(&self, theta: f32, device: &Device) -> Rope {
        Rope::new(self.head_dim(), self.max_position_embeddings, theta, device)
    }
}

impl ModernBert {
    pub fn hidden_size(&self) -> usize {
        self.tok_embeddings.weight.dims()[1]
    }

    pub fn max_positions(&self) -> usize {
        self.global_rope.max_len()
    }

    /// - ids: `[batch, seq]`; attention_mask: `[batch, seq]`, 1 for tokens and 0 for padding.
    /// - returns the last hidden states `[batch, seq, hidden]`.
    pub fn forward(&self, ids: Tensor<2, Int>, attention_mask: Tensor<2, Int>) -> Tensor<3> {
        self.forward_word_embeds(self.tok_embeddings.forward(ids), attention_mask)
    }

    /// Like [`ModernBert::forward`], from token embeddings `[batch, seq, hidden]` (the
    /// embeddings' LayerNorm is applied to them, as transformers does for `inputs_embeds`).
    pub fn forward_word_embeds(
        &self,
        words: Tensor<3>,
        attention_mask: Tensor<2, Int>,
    ) -> Tensor<3> {
        let [b, s, _] = words.dims();
        let device = words.device();
        let padding = attention_mask
            .equal_elem(0)
            .reshape([b, 1, 1, s])
            .expand([b, 1, s, s]);
        let mut x = self.embed_norm.forward(words);
        for layer in &self.layers {
            let (hidden, rope) = match layer.half_window {
                0 => (padding.clone(), &self.global_rope),
                w => (
                    padding
                        .clone()
                        .bool_or(outside_window(s, w, &device).expand([b, 1, s, s])),
                    &self.local_rope,
                ),
            };
            x = layer.forward(x, hidden, rope);
        }
        self.final_norm.forward(x)
    }
}

/// `[1, 1, s, s]`, true where key j is more than `half_window` positions from query i.
fn outside_window(s: usize, half_window: usize, device: &Device) -> Tensor<4, Bool> {
    let far: Vec<bool> = (0..s)
        .flat_map(|i| (0..s).map(move |j| i.abs_diff(j) > half_window))
        .collect();
    Tensor::<2, Bool>::from_data(TensorData::new(far, [s, s]), device).reshape([1, 1, s, s])
}
