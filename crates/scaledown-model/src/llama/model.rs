//! Llama-family decoder: grouped-query attention, RoPE, RMSNorm, SwiGLU, tied embeddings.

use super::cache::KvCache;
use super::config::LlamaConfig;
use super::input::{Inserted, PromptInput};
use super::lora::{
    Projection, block_product, decoding_step, dropped, host_rows, stacked_decode_weights,
};
use super::rope::Rope;
use crate::quant::BlockMatrix;
use burn::nn::{
    Embedding, EmbeddingConfig, Initializer, Linear, LinearConfig, RmsNorm, RmsNormConfig,
};
use burn::prelude::*;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use std::ops::Range;
use std::sync::Arc;

#[derive(Module, Debug)]
pub struct Attention {
    pub q_proj: Projection,
    pub k_proj: Projection,
    pub v_proj: Projection,
    pub o_proj: Projection,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    /// q, k and v in one 4- or 8-bit matrix for decoding steps on the CPU
    /// ([`Llama::with_decode_kernels`]); not saved, never trained.
    #[module(skip)]
    pub decode_qkv: Option<Arc<BlockMatrix>>,
}

/// Where a layer's input sits: its first position `start` (the positions cached before it),
/// the layer's index in the stack and the cache it reads and extends.
pub struct LayerStep<'a> {
    pub rope: &'a Rope,
    pub start: usize,
    /// Each input position's own position `[seq]`, in place of `start..start + seq` (several
    /// sequences packed into one row, as the compressor runs one question's chunks).
    pub positions: Option<&'a Tensor<1, Int>>,
    pub layer: usize,
    pub cache: &'a mut KvCache,
}

impl Attention {
    /// - x: `[batch, seq, hidden]` at positions `step.start..step.start + seq`; returns
    ///   `[batch, seq, hidden]`.
    /// - mask: `[batch, 1, seq, past + seq]`, true where a key must not be seen (padding);
    ///   causality is applied on top.
    pub fn forward(
        &self,
        x: Tensor<3>,
        step: LayerStep<'_>,
        mask: Option<Tensor<4, Bool>>,
    ) -> Tensor<3> {
        let LayerStep {
            rope,
            start,
            positions,
            layer,
            cache,
        } = step;
        let rotate = |t: Tensor<4>| match positions {
            Some(p) => rope.apply_at(t, p.clone()),
            None => rope.apply(t, start),
        };
        let [batch, seq, hidden] = x.dims();
        let heads =
            |t: Tensor<3>, n: usize| t.reshape([batch, seq, n, self.head_dim]).swap_dims(1, 2);
        let (q, k, v) = match &self.decode_qkv {
            // A decoding step: one product for the three (fewer hand-offs to the cores).
            // A model held in blocks only: the same for a prompt.
            Some(qkv) if decoding_step(batch, seq) || !self.q_proj.is_dense() => {
                let y = block_product(qkv, x.reshape([batch * seq, hidden]));
                let y = y.reshape([batch, seq, qkv.outputs()]);
                let (nq, nkv) = (
                    self.num_heads * self.head_dim,
                    self.num_kv_heads * self.head_dim,
                );
                let part = |from: usize, n: usize| y.clone().slice_dim(2, from..from + n);
                (part(0, nq), part(nq, nkv), part(nq + nkv, nkv))
            }
            _ => (
                self.q_proj.forward(x.clone()),
                self.k_proj.forward(x.clone()),
                self.v_proj.forward(x),
            ),
        };
        let q = rotate(heads(q, self.num_heads));
        let k = rotate(heads(k, self.num_kv_heads));
        let v = heads(v, self.num_kv_heads);
        let (k, v) = cache.append(layer, k, v);

        let rep = self.num_heads / self.num_kv_heads;
        let out = match seq {
            1 => grouped_step_attention(q, k, v, mask),
            _ => {
                let mask = mask.map(|m| {
                    let [b, _, q_len, k_len] = m.dims();
                    m.expand([b, self.num_heads, q_len, k_len])
                });
                causal_attention(q, repeat_kv(k, rep), repeat_kv(v, rep), mask)
            }
        };
        self.o_proj
            .forward(out.swap_dims(1, 2).reshape([batch, seq, hidden]))
    }
}

/// The positions of `slots` that are true, when they form one run.
fn one_run(slots: &[bool]) -> Option<Range<usize>> {
    let first = slots.iter().position(|&s| s)?;
    let len = slots[first..].iter().take_while(|&&s| s).count();
    let run = first..first + len;
    slots[run.end..].iter().all(|&s| !s).then_some(run)
}

/// Queries per block in [`causal_attention`].
const QUERY_BLOCK: usize = 128;

/// Causal attention of the last `seq` positions over all `kv_len` keys.
/// - q: `[batch, heads, seq, d]`, k/v: `[batch, heads, kv_len, d]`
/// - mask: `[batch, heads, seq, kv_len]`, true where a key must not be seen
///
/// Returns `[batch, heads, seq, d]`. Long prompts go in blocks of queries, each against the
/// keys up to its own end: the fused kernel scores every (query, key) pair before masking, so
/// one call would spend nearly half of its work on the future half of the causal triangle.
pub(crate) fn causal_attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    mask: Option<Tensor<4, Bool>>,
) -> Tensor<4> {
    let options = AttentionModuleOptions {
        is_causal: true,
        ..Default::default()
    };
    let seq = q.dims()[2];
    if seq <= QUERY_BLOCK {
        return attention(q, k, v, mask, None, options);
    }
    let past = k.dims()[2] - seq;
    let blocks = (0..seq)
        .step_by(QUERY_BLOCK)
        .map(|start| {
            let end = (start + QUERY_BLOCK).min(seq);
            let keys = 0..past + end;
            attention(
                q.clone().slice_dim(2, start..end),
                k.clone().slice_dim(2, keys.clone()),
                v.clone().slice_dim(2, keys.clone()),
                mask.clone()
                    .map(|m| m.slice_dim(2, start..end).slice_dim(3, keys)),
                None,
                options,
            )
        })
        .collect();
    Tensor::cat(blocks, 2)
}

/// `[batch, kv_heads, seq, d]` -> `[batch, kv_heads * rep, seq, d]`; query head h reads kv head h / rep.
/// Attention of one decoding step, the query heads that share a key-value head read as
/// that head's rows: the cached keys and values are read in place instead of copied once per
/// query head (that copy took three times the attention's own time at 200 positions).
/// - q: `[batch, heads, 1, d]`, k/v: `[batch, kv_heads, kv_len, d]`
/// - mask: `[batch, 1, 1, kv_len]`, true where a key must not be seen
///
/// Returns `[batch, heads, 1, d]`. Not causal: the step's one position sees every key.
pub(crate) fn grouped_step_attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    mask: Option<Tensor<4, Bool>>,
) -> Tensor<4> {
    let [batch, heads, _, d] = q.dims();
    let [_, kv_heads, kv_len, _] = k.dims();
    let rep = heads / kv_heads;
    let q = q.reshape([batch, kv_heads, rep, d]);
    let mask = mask.map(|m| m.expand([batch, kv_heads, rep, kv_len]));
    let out = attention(q, k, v, mask, None, AttentionModuleOptions::default());
    out.reshape([batch, heads, 1, d])
}

fn repeat_kv(x: Tensor<4>, rep: usize) -> Tensor<4> {
    if rep == 1 {
        return x;
    }
    let [b, kv, s, d] = x.dims();
    x.unsqueeze_dim::<5>(2)
        .expand([b, kv, rep, s, d])
        .reshape([b, kv * rep, s, d])
}

#[derive(Module, Debug)]
pub struct Mlp {
    pub gate_proj: Projection,
    pub up_proj: Projection,
    pub down_proj: Projection,
    /// gate and up in one 4- or 8-bit matrix for decoding steps on the CPU
    /// ([`Llama::with_decode_kernels`]); not saved, never trained.
    #[module(skip)]
    pub decode_gate_up: Option<Arc<BlockMatrix>>,
}

impl Mlp {
    /// SwiGLU: `[batch, seq, hidden]` -> `[batch, seq, hidden]`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [batch, seq, hidden] = x.dims();
        if let (Some(gate_up), Some(down)) = (&self.decode_gate_up, &self.down_proj.decode)
            && decoding_step(batch, seq)
        {
            // A decoding step, all on the host: two products and the gating between them.
            let device = x.device();
            let gu = gate_up.matvec(&host_rows(x.reshape([batch, hidden])), batch);
            let inter = gate_up.outputs() / 2;
            let mut h = Vec::with_capacity(batch * inter);
            for row in gu.chunks_exact(2 * inter) {
                let (gate, up) = row.split_at(inter);
                h.extend(
                    gate.iter()
                        .zip(up)
                        .map(|(&g, &u)| g / (1.0 + (-g).exp()) * u),
                );
            }
            let y = down.matvec(&h, batch);
            return Tensor::from_data(TensorData::new(y, [batch, 1, down.outputs()]), &device);
        }
        if let Some(gate_up) = &self.decode_gate_up
            && !self.gate_proj.is_dense()
        {
            // A model held in blocks only, on a prompt: gate and up in one product.
            let gu = block_product(gate_up, x.reshape([batch * seq, hidden]));
            let inter = gate_up.outputs() / 2;
            let gate = silu(gu.clone().slice_dim(1, 0..inter).unsqueeze_dim(0));
            let up = gu.slice_dim(1, inter..2 * inter).unsqueeze_dim(0);
            return self
                .down_proj
                .forward((gate * up).reshape([batch, seq, inter]));
        }
        let gate = silu(self.gate_proj.forward(x.clone()));
        self.down_proj.forward(gate * self.up_proj.forward(x))
    }
}

/// x·sigmoid(x) as x / (1 + e^-x): the same values as Burn's `silu`, but Burn's sigmoid takes
/// a data-dependent branch per element that made it the costliest op of a CPU prefill after
/// the matmuls. For x → -∞ the quotient goes to -0, as it should.
pub fn silu(x: Tensor<3>) -> Tensor<3> {
    x.clone() / (x.neg().exp() + 1.0)
}

#[derive(Module, Debug)]
pub struct Block {
    pub input_layernorm: RmsNorm,
    pub self_attn: Attention,
    pub post_attention_layernorm: RmsNorm,
    pub mlp: Mlp,
}

impl Block {
    /// Pre-norm attention and MLP, each added to the residual stream:
    /// `[batch, seq, hidden]` -> `[batch, seq, hidden]` (mask as in [`Attention::forward`]).
    pub fn forward(
        &self,
        x: Tensor<3>,
        step: LayerStep<'_>,
        mask: Option<Tensor<4, Bool>>,
    ) -> Tensor<3> {
        let attn_in = self.input_layernorm.forward(x.clone());
        let h = x + self.self_attn.forward(attn_in, step, mask);
        h.clone() + self.mlp.forward(self.post_attention_layernorm.forward(h))
    }
}

#[derive(Module, Debug)]
pub struct Llama {
    pub embed_tokens: Embedding,
    pub layers: Vec<Block>,
    pub norm: RmsNorm,
    /// None when the output head is tied to `embed_tokens`.
    pub lm_head: Option<Linear>,
    pub rope: Rope,
    /// The output head again in 4- or 8-bit blocks for decoding steps on the CPU
    /// ([`Llama::with_decode_kernels`]); not saved, never trained.
    #[module(skip)]
    pub decode_head: Option<Arc<BlockMatrix>>,
}

impl LlamaConfig {
    /// The module tree with random weights (for tests and tiny models). `llama::load` fills
    /// the same tree with real weights: the random ones are lazy and never drawn there.
    pub fn init(&self, device: &Device) -> Llama {
        let linear = |i, o| LinearConfig::new(i, o).with_bias(false).init(device);
        let projection = |i, o| Projection {
            weight: linear(i, o).weight,
            lora: None,
            decode: None,
        };
        let norm = || {
            RmsNormConfig::new(self.hidden_size)
                .with_epsilon(self.rms_norm_eps)
                .init(device)
        };
        let hd = self.head_dim();
        let layers = (0..self.num_hidden_layers)
            .map(|_| Block {
                input_layernorm: norm(),
                self_attn: Attention {
                    q_proj: projection(self.hidden_size, self.num_attention_heads * hd),
                    k_proj: projection(self.hidden_size, self.num_key_value_heads * hd),
                    v_proj: projection(self.hidden_size, self.num_key_value_heads * hd),
                    o_proj: projection(self.num_attention_heads * hd, self.hidden_size),
                    num_heads: self.num_attention_heads,
                    num_kv_heads: self.num_key_value_heads,
                    head_dim: hd,
                    decode_qkv: None,
                },
                post_attention_layernorm: norm(),
                mlp: Mlp {
                    gate_proj: projection(self.hidden_size, self.intermediate_size),
                    up_proj: projection(self.hidden_size, self.intermediate_size),
                    down_proj: projection(self.intermediate_size, self.hidden_size),
                    decode_gate_up: None,
                },
            })
            .collect();
        Llama {
            // Random models only (loaded ones overwrite it): with tied embeddings, std
            // 1/sqrt(width) gives unit-scale logits, so a random model starts near ln(vocab)
            // (Burn's N(0, 1) starts it far above) and a frozen head can still express answers.
            embed_tokens: EmbeddingConfig::new(self.vocab_size, self.hidden_size)
                .with_initializer(Initializer::Normal {
                    mean: 0.0,
                    std: (self.hidden_size as f64).powf(-0.5),
                })
                .init(device),
            layers,
            norm: norm(),
            lm_head: (!self.tie_word_embeddings).then(|| linear(self.hidden_size, self.vocab_size)),
            rope: Rope::new(hd, self.rope_table_len(), self.rope_theta, device),
            decode_head: None,
        }
    }
}

impl Block {
    /// The layer's decoding-step copies ([`Llama::with_decode_kernels`]): q, k and v as one
    /// matrix, gate and up as one, o and down each on their own.
    fn with_decode_kernels(self) -> Self {
        let (a, m) = (self.self_attn, self.mlp);
        Block {
            self_attn: Attention {
                decode_qkv: stacked_decode_weights(&[&a.q_proj, &a.k_proj, &a.v_proj]),
                o_proj: a.o_proj.with_decode_weights(),
                ..a
            },
            mlp: Mlp {
                decode_gate_up: stacked_decode_weights(&[&m.gate_proj, &m.up_proj]),
                down_proj: m.down_proj.with_decode_weights(),
                ..m
            },
            ..self
        }
    }

    /// The layer held in its blocks only ([`Llama::in_blocks`]): every f32 weight that a block
    /// copy holds is dropped.
    fn without_dense(self) -> Self {
        let (a, m) = (self.self_attn, self.mlp);
        // q, k and v (gate and up) live in the fused copy, not in a copy of their own.
        let held = |p: Projection, fused: bool| match fused && p.lora.is_none() {
            true => Projection {
                weight: dropped(&p.weight.device()),
                ..p
            },
            false => p,
        };
        let (qkv, gate_up) = (a.decode_qkv.is_some(), m.decode_gate_up.is_some());
        Block {
            self_attn: Attention {
                q_proj: held(a.q_proj, qkv),
                k_proj: held(a.k_proj, qkv),
                v_proj: held(a.v_proj, qkv),
                o_proj: a.o_proj.without_dense(),
                ..a
            },
            mlp: Mlp {
                gate_proj: held(m.gate_proj, gate_up),
                up_proj: held(m.up_proj, gate_up),
                down_proj: m.down_proj.without_dense(),
                ..m
            },
            ..self
        }
    }

    /// [`Block::with_decode_kernels`], then [`Block::without_dense`]: what loading a model
    /// in blocks does layer by layer, so that its f32 weights are never all held at once.
    pub(crate) fn in_blocks(self) -> Self {
        self.with_decode_kernels().without_dense()
    }

    fn map_projections(self, f: &impl Fn(Projection) -> Projection) -> Self {
        let Block {
            input_layernorm,
            self_attn: a,
            post_attention_layernorm,
            mlp: m,
        } = self;
        Block {
            input_layernorm,
            self_attn: Attention {
                q_proj: f(a.q_proj),
                k_proj: f(a.k_proj),
                v_proj: f(a.v_proj),
                o_proj: f(a.o_proj),
                // Stale once the projections change (LoRA added or merged).
                decode_qkv: None,
                ..a
            },
            post_attention_layernorm,
            mlp: Mlp {
                gate_proj: f(m.gate_proj),
                up_proj: f(m.up_proj),
                down_proj: f(m.down_proj),
                decode_gate_up: None,
            },
        }
    }
}

impl Llama {
    /// The device the weights live on.
    pub fn device(&self) -> Device {
        self.embed_tokens.weight.device()
    }

    /// LoRA adapters of `rank` on every projection of every layer (OSCAR: rank 16, alpha 32).
    pub fn with_lora(self, rank: usize, alpha: f64) -> Self {
        assert!(
            self.layers.iter().all(|b| b.self_attn.o_proj.is_dense()),
            "Llama::with_lora: the model is held in blocks only (for answering)"
        );
        self.map_layers(&|p: Projection| p.with_lora(rank, alpha))
    }

    /// The adapters merged into the weights: a plain model for answering.
    pub fn merge_lora(self) -> Self {
        let adapted = self
            .layers
            .iter()
            .any(|b| b.self_attn.q_proj.lora.is_some());
        match adapted {
            true => self.map_layers(&Projection::merged),
            // Nothing to merge: the model (and any decoding copies) as it is.
            false => self,
        }
    }

    /// [`Llama::merge_lora`], then [`Llama::in_blocks`], a layer at a time: the merged f32
    /// weights of one layer exist at once, not the whole merged model's (540 MB for SmolLM2).
    pub fn merged_in_blocks(self) -> Self {
        let device = self.device();
        if !crate::backend::is_native_cpu(&device) {
            return self.merge_lora();
        }
        let decode_head = self.head_blocks();
        let layers = self
            .layers
            .into_iter()
            .map(|b| b.map_projections(&Projection::merged).in_blocks())
            .collect();
        Self {
            decode_head,
            layers,
            ..self
        }
        .without_head(&device)
    }

    /// 4- or 8-bit copies of every projection and of the output head for decoding steps, which
    /// then read 3.2-5.3x fewer bytes per token ([`crate::quant`]); prefill keeps f32. Native CPU
    /// backend only: elsewhere (wgpu, the browser) the model is returned as it is. Call it
    /// after [`Llama::merge_lora`]: a projection with LoRA factors stays f32.
    pub fn with_decode_kernels(self) -> Self {
        if !crate::backend::is_native_cpu(&self.device()) {
            return self;
        }
        let decode_head = self.head_blocks();
        let layers = self
            .layers
            .into_iter()
            .map(Block::with_decode_kernels)
            .collect();
        Self {
            decode_head,
            layers,
            ..self
        }
    }

    /// The model for answering held in its 4- and 8-bit blocks only: [`Llama::with_decode_kernels`],
    /// then every f32 weight that a block copy holds is dropped (the tied embedding too: tokens
    /// are embedded from the output head's blocks). Prompts then run on the blocks as well
    /// ([`crate::quant::BlockMatrix::matmul`]); memory falls from the f32 model's 540 MB to
    /// about 115 MB for SmolLM2-135M. Native CPU only (elsewhere: the model as it is); not for
    /// training.
    pub fn in_blocks(self) -> Self {
        let device = self.device();
        self.with_decode_kernels().without_dense(&device)
    }

    /// Drops what [`Llama::in_blocks`] drops, layer by layer and then the head. The device is
    /// given: asking a lazily initialised weight for it would draw that weight.
    pub(crate) fn without_dense(self, device: &Device) -> Self {
        let layers = self.layers.into_iter().map(Block::without_dense).collect();
        Self { layers, ..self }.without_head(device)
    }

    /// Drops the output head's f32 weight (the embedding table when tied) when its block
    /// copy is held.
    fn without_head(self, device: &Device) -> Self {
        let (mut embed_tokens, mut lm_head) = (self.embed_tokens, self.lm_head);
        if self.decode_head.is_some() {
            match &mut lm_head {
                Some(head) => head.weight = dropped(device),
                None => embed_tokens.weight = dropped(device),
            }
        }
        Self {
            embed_tokens,
            lm_head,
            ..self
        }
    }

    /// The output head (the embedding table when tied) in blocks; None off the native CPU
    /// or when its width is not a multiple of 32.
    pub(crate) fn head_blocks(&self) -> Option<Arc<BlockMatrix>> {
        if !crate::backend::is_native_cpu(&self.device()) {
            return None;
        }
        match &self.lm_head {
            Some(head) => {
                let [inp, out] = head.weight.dims();
                (head.weight.val().into_data().try_into_vec::<f32>().ok())
                    .and_then(|w| BlockMatrix::from_in_out(&w, inp, out))
            }
            None => {
                let [vocab, hidden] = self.embed_tokens.weight.dims();
                (self
                    .embed_tokens
                    .weight
                    .val()
                    .into_data()
                    .try_into_vec::<f32>()
                    .ok())
                .and_then(|w| BlockMatrix::from_out_in(&w, vocab, hidden))
            }
        }
    }

    /// Whether the output head's f32 weight is held (not after [`Llama::in_blocks`]).
    fn head_is_dense(&self) -> bool {
        let w = match &self.lm_head {
            Some(head) => &head.weight,
            None => &self.embed_tokens.weight,
        };
        w.shape().num_elements() > 0
    }

    fn map_layers(self, f: &impl Fn(Projection) -> Projection) -> Self {
        Self {
            layers: self
                .layers
                .into_iter()
                .map(|b| b.map_projections(f))
                .collect(),
            ..self
        }
    }

    pub fn hidden_size(&self) -> usize {
        self.norm.gamma.dims()[0]
    }

    /// `cache` moved `pad` positions on, behind `pad` placeholders ([`KvCache::left_padded`]).
    pub fn left_padded_cache(&self, cache: KvCache, pad: usize) -> KvCache {
        let len = cache.len();
        let device = self.device();
        let by =
            Tensor::<1, Int>::from_data(TensorData::new(vec![pad as i64; len], [len]), &device);
        cache.left_padded(pad, |k| self.rope.apply_at(k, by.clone()))
    }

    /// The longest sequence (prompt + generated tokens) this model can run.
    pub fn max_len(&self) -> usize {
        self.rope.max_len()
    }

    pub fn vocab_size(&self) -> usize {
        match &self.decode_head {
            Some(q) if !self.head_is_dense() => q.outputs(),
            _ => self.embed_tokens.weight.dims()[0],
        }
    }

    /// Token ids `[batch, seq]` -> input embeddings `[batch, seq, hidden]`.
    pub fn embed(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        match &self.decode_head {
            // Held in blocks only, with a tied head: the table is the head's blocks.
            Some(q) if self.lm_head.is_none() && !self.head_is_dense() => {
                let [batch, seq] = ids.dims();
                let device = ids.device();
                let ids: Vec<usize> = ids
                    .into_data()
                    .convert::<i64>()
                    .try_into_vec::<i64>()
                    .expect("converted to i64 just above")
                    .into_iter()
                    .map(|id| id as usize)
                    .collect();
                let hidden = self.hidden_size();
                Tensor::from_data(TensorData::new(q.rows(&ids), [batch, seq, hidden]), &device)
            }
            _ => self.embed_tokens.forward(ids),
        }
    }

    /// Runs the decoder on input embeddings (token embeddings, or compressed document vectors
    /// spliced among them) and returns the final-normed hidden states `[batch, seq, hidden]`.
    /// `observe(i, h)` sees the residual stream after layer i (1-based; 0 = the input).
    pub fn forward_embeds(
        &self,
        x: Tensor<3>,
        cache: &mut KvCache,
        mask: Option<Tensor<4, Bool>>,
        observe: impl FnMut(usize, &Tensor<3>),
    ) -> Tensor<3> {
        self.forward_input(x, None, cache, mask, observe)
    }

    /// [`Llama::forward_embeds`] with vectors that enter the residual stream after layer
    /// `inserted.layer` instead of at the input (`x` is zero at their positions). The layers
    /// below never see those positions, in this pass or in later ones over `cache`; the
    /// layers from `inserted.layer` on read them as any other position.
    /// - x: `[batch, seq, hidden]`; mask: `[batch, 1, seq, past + seq]`, true where a key must
    ///   not be seen (padding).
    pub fn forward_input(
        &self,
        x: Tensor<3>,
        inserted: Option<Inserted>,
        cache: &mut KvCache,
        mask: Option<Tensor<4, Bool>>,
        mut observe: impl FnMut(usize, &Tensor<3>),
    ) -> Tensor<3> {
        // Read once: the cache grows layer by layer during this pass.
        let start = cache.len();
        let [batch, seq, _] = x.dims();
        let end = start + seq;
        assert!(
            end <= self.rope.max_len(),
            "sequence of {end} tokens exceeds the context length {}",
            self.rope.max_len()
        );
        let device = x.device();
        let (mut h, late) = match inserted {
            Some(ins) if ins.layer == 0 => (x + ins.values, None),
            Some(ins) => (x, Some(ins)),
            None => (x, None),
        };
        let below = cache.late_mask(
            batch,
            seq,
            late.as_ref().map(|l| (l.layer, l.slots.as_slice())),
            &device,
        );
        let below = below.map(|(layer, late_keys)| {
            let m = match &mask {
                Some(m) => m.clone().bool_or(late_keys),
                None => late_keys,
            };
            (layer, m)
        });
        observe(0, &h);
        // One prompt whose late vectors form one run: the layers below theirs skip the run
        // (placeholder keys that no query sees), instead of computing states there that the
        // late vectors then replace: the memory positions cost no compute below layer k.
        let run = match &late {
            Some(l) if batch == 1 => one_run(&l.slots),
            _ => None,
        };
        for (i, block) in self.layers.iter().enumerate() {
            if let Some(l) = late.as_ref().filter(|l| l.layer == i) {
                h = h * l.keep(batch, seq, &device) + l.values.clone();
            }
            let m = match &below {
                Some((layer, m)) if i < *layer => Some(m.clone()),
                _ => mask.clone(),
            };
            h = match (&run, &below) {
                (Some(run), Some((layer, _))) if i < *layer => {
                    let m = m.expect("the layers below late vectors have a mask");
                    self.skipping_run(block, h, run.clone(), i, start, cache, m)
                }
                _ => {
                    let step = LayerStep {
                        rope: &self.rope,
                        start,
                        positions: None,
                        layer: i,
                        cache,
                    };
                    block.forward(h, step, m)
                }
            };
            observe(i + 1, &h);
        }
        self.norm.forward(h)
    }

    /// Layer `layer` of [`Self::forward_input`] on one prompt `h` `[1, seq, hidden]` at
    /// positions `start..`, over the positions before and after `run` only: the run's
    /// positions get zero keys and values in `cache` (hidden by `mask`, `[1, 1, seq, past +
    /// seq]`, as the late keys are) and keep their states.
    #[allow(clippy::too_many_arguments)]
    fn skipping_run(
        &self,
        block: &Block,
        h: Tensor<3>,
        run: Range<usize>,
        layer: usize,
        start: usize,
        cache: &mut KvCache,
        mask: Tensor<4, Bool>,
    ) -> Tensor<3> {
        let [_, seq, _] = h.dims();
        let past = mask.dims()[3] - seq;
        let mut parts = Vec::with_capacity(3);
        if run.start > 0 {
            let before = 0..run.start;
            let m = mask
                .clone()
                .slice_dim(2, before.clone())
                .slice_dim(3, 0..past + run.start);
            let step = LayerStep {
                rope: &self.rope,
                start,
                positions: None,
                layer,
                cache,
            };
            parts.push(block.forward(h.clone().slice_dim(1, before), step, Some(m)));
        }
        let attn = &block.self_attn;
        let zeros = Tensor::zeros(
            [1, attn.num_kv_heads, run.len(), attn.head_dim],
            &h.device(),
        );
        cache.append(layer, zeros.clone(), zeros);
        parts.push(h.clone().slice_dim(1, run.clone()));
        if run.end < seq {
            let after = run.end..seq;
            let m = mask.slice_dim(2, after.clone());
            let step = LayerStep {
                rope: &self.rope,
                start: start + run.end,
                positions: None,
                layer,
                cache,
            };
            parts.push(block.forward(h.slice_dim(1, after), step, Some(m)));
        }
        Tensor::cat(parts, 1)
    }

    /// One prompt's final-normed hidden states `[1, n, hidden]`, continuing `cache`.
    pub fn forward_prompt(&self, prompt: PromptInput, cache: &mut KvCache) -> Tensor<3> {
        self.forward_input(prompt.embeds, prompt.inserted, cache, None, |_, _| {})
    }

    /// Hidden states `[batch, seq, hidden]` -> logits `[batch, seq, vocab]`.
    pub fn logits(&self, hidden: Tensor<3>) -> Tensor<3> {
        let [b, s, h] = hidden.dims();
        if let Some(q) = &self.decode_head
            && (decoding_step(b, s) || !self.head_is_dense())
        {
            return block_product(q, hidden.reshape([b * s, h])).reshape([b, s, q.outputs()]);
        }
        match &self.lm_head {
            Some(head) => head.forward(hidden),
            None => {
                // W·hᵀ rather than h·Wᵀ: transposing the [vocab, hidden] embedding would copy
                // all of it on every call; transposing the hidden states is cheap.
                let w = self.embed_tokens.weight.val(); // [vocab, hidden]
                let logits_t = w.matmul(hidden.reshape([b * s, h]).transpose()); // [vocab, b*s]
                logits_t.transpose().reshape([b, s, self.vocab_size()])
            }
        }
    }

    /// Token ids `[batch, seq]` -> logits of the last position `[batch, vocab]`.
    pub fn forward_last(&self, ids: Tensor<2, Int>, cache: &mut KvCache) -> Tensor<2> {
        let hidden = self.forward_embeds(self.embed(ids), cache, None, |_, _| {});
        let [b, s, h] = hidden.dims();
        let last = hidden.slice([0..b, s - 1..s, 0..h]);
        self.logits(last).reshape([b as i32, -1])
    }
}
