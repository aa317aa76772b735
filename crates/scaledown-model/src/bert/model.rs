//! BERT: word + position + token-type embeddings, post-LayerNorm blocks, exact GELU,
//! padding mask; mean pooling and L2 normalisation for sentence embeddings.

use super::config::BertConfig;
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::gelu;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;

#[derive(Module, Debug)]
pub struct BertEmbeddings {
    pub word: Embedding,
    pub position: Embedding,
    pub token_type: Embedding,
    pub norm: LayerNorm,
}

#[derive(Module, Debug)]
pub struct BertLayer {
    pub query: Linear,
    pub key: Linear,
    pub value: Linear,
    pub attn_out: Linear,
    pub attn_norm: LayerNorm,
    pub intermediate: Linear,
    pub output: Linear,
    pub out_norm: LayerNorm,
    pub num_heads: usize,
}

impl BertLayer {
    /// - x: `[batch, seq, hidden]`; pad: `[batch, 1, 1, seq]`, true at padding keys.
    pub fn forward(&self, x: Tensor<3>, pad: Option<Tensor<4, Bool>>) -> Tensor<3> {
        let [b, s, h] = x.dims();
        let hd = h / self.num_heads;
        let heads = |t: Tensor<3>| t.reshape([b, s, self.num_heads, hd]).swap_dims(1, 2);
        let q = heads(self.query.forward(x.clone()));
        let k = heads(self.key.forward(x.clone()));
        let v = heads(self.value.forward(x.clone()));
        let mask = pad.map(|m| m.expand([b, self.num_heads, s, s]));
        let ctx = attention(q, k, v, mask, None, AttentionModuleOptions::default());
        let ctx = ctx.swap_dims(1, 2).reshape([b, s, h]);
        let x = self.attn_norm.forward(x + self.attn_out.forward(ctx));
        let ff = self
            .output
            .forward(gelu(self.intermediate.forward(x.clone())));
        self.out_norm.forward(x + ff)
    }
}

#[derive(Module, Debug)]
pub struct Bert {
    pub embeddings: BertEmbeddings,
    pub layers: Vec<BertLayer>,
}

impl BertConfig {
    /// Random weights (for tests); real weights come from `bert::load`.
    pub fn init(&self, device: &Device) -> Bert {
        let h = self.hidden_size;
        let ln = || {
            LayerNormConfig::new(h)
                .with_epsilon(self.layer_norm_eps)
                .init(device)
        };
        let lin = |i, o| LinearConfig::new(i, o).init(device);
        Bert {
            embeddings: BertEmbeddings {
                word: EmbeddingConfig::new(self.vocab_size, h).init(device),
                position: EmbeddingConfig::new(self.max_position_embeddings, h).init(device),
                token_type: EmbeddingConfig::new(self.type_vocab_size, h).init(device),
                norm: ln(),
            },
            layers: (0..self.num_hidden_layers)
                .map(|_| BertLayer {
                    query: lin(h, h),
                    key: lin(h, h),
                    value: lin(h, h),
                    attn_out: lin(h, h),
                    attn_norm: ln(),
                    intermediate: lin(h, self.intermediate_size),
                    output: lin(self.intermediate_size, h),
                    out_norm: ln(),
                    num_heads: self.num_attention_heads,
                })
                .collect(),
        }
    }
}

impl Bert {
    pub fn hidden_size(&self) -> usize {
        self.embeddings.word.weight.dims()[1]
    }

    pub fn max_positions(&self) -> usize {
        self.embeddings.position.weight.dims()[0]
    }

    /// - ids: `[batch, seq]`; attention_mask: `[batch, seq]`, 1 for tokens and 0 for padding.
    /// - returns the last hidden states `[batch, seq, hidden]`.
    pub fn forward(&self, ids: Tensor<2, Int>, attention_mask: Tensor<2, Int>) -> Tensor<3> {
        self.forward_word_embeds(self.embeddings.word.forward(ids), attention_mask)
    }

    /// Like [`Bert::forward`], from word embeddings `[batch, seq, hidden]` (token embeddings, or
    /// learned memory-token vectors spliced among them); positions and token type 0 are added.
    pub fn forward_word_embeds(
        &self,
        words: Tensor<3>,
        attention_mask: Tensor<2, Int>,
    ) -> Tensor<3> {
        let [b, s, _] = words.dims();
        let device = words.device();
        let positions = Tensor::<1, Int>::arange(0..s as i64, &device)
            .unsqueeze::<2>()
            .expand([b, s]);
        let e = &self.embeddings;
        let x = words
            + e.position.forward(positions.clone())
            + e.token_type.forward(positions.zeros_like());
        let mut x = e.norm.forward(x);
        let pad = attention_mask.equal_elem(0).reshape([b, 1, 1, s]);
        for layer in &self.layers {
            x = layer.forward(x, Some(pad.clone()));
        }
        x
    }

    /// Mean over real tokens (padding excluded), L2-normalised: `[batch, seq, hidden]` ->
    /// `[batch, hidden]`, as sentence-transformers pools all-MiniLM-L6-v2.
    pub fn pool(hidden: Tensor<3>, attention_mask: Tensor<2, Int>) -> Tensor<2> {
        let [b, s, _] = hidden.dims();
        let m = attention_mask.float().reshape([b, s, 1]);
        let summed = (hidden * m.clone()).sum_dim(1).squeeze_dim::<2>(1);
        let count = m.sum_dim(1).squeeze_dim::<2>(1).clamp_min(1e-9);
        let mean = summed / count;
        let norm = mean.clone().square().sum_dim(1).sqrt().clamp_min(1e-12);
        mean / norm
    }

    /// Pooled embedding `[1, hidden]` of one tokenised text (with its [CLS]/[SEP]).
    pub fn sentence_embedding(&self, ids: &[u32], device: &Device) -> Tensor<2> {
        let n = ids.len();
        let data = TensorData::new(ids.iter().map(|&i| i as i64).collect(), [1, n]);
        let ids = Tensor::<2, Int>::from_data(data, device);
        let mask = ids.ones_like();
        Self::pool(self.forward(ids, mask.clone()), mask)
    }
}
