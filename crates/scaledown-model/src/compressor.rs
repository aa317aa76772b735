//! The OSCAR compressor: it reads `[query; document chunk; MEM_1..MEM_L]` and returns the
//! hidden states at the L memory-token positions, projected to the generator's width. Those
//! L vectors replace the chunk's L×R tokens in the generator's prompt (compression rate R).

use crate::bert::Bert;
use crate::llama::model::Block;
use crate::llama::rope::Rope;
use crate::llama::{KvCache, Llama};
use burn::module::{ModuleMapper, Param};
use burn::nn::{Linear, LinearConfig, RmsNorm, RmsNormConfig};
use burn::prelude::*;
use burn::tensor::Distribution;
use burn::tensor::activation::{gelu, softmax};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CompressorType {
    /// A trainable copy of the generator's first N layers.
    NLayers,
    /// A separate encoder (MiniLM, any BERT checkpoint).
    Encoder,
}

impl FromStr for CompressorType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "n_layers" | "n-layers" => Ok(Self::NLayers),
            // The seed tool's ModernBERT choice maps to the encoder compressor we ship.
            "encoder" | "modernbert" | "bert" => Ok(Self::Encoder),
            other => Err(format!(
                "unknown compressor type `{other}` (n_layers, encoder, modernbert)"
            )),
        }
    }
}

impl fmt::Display for CompressorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NLayers => "n_layers",
            Self::Encoder => "encoder",
        })
    }
}

/// Shapes of a compressor; saved with every checkpoint so that it can be rebuilt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompressorConfig {
    pub compressor_type: CompressorType,
    /// Generator layers copied (`n_layers` only).
    pub num_layers: usize,
    /// L: vectors per chunk.
    pub num_memory_tokens: usize,
    /// R: document tokens per vector; chunks hold L×R tokens.
    pub compression_rate: usize,
    /// A 2-layer MLP after the backbone (always used by the encoder compressor).
    pub projector: bool,
    /// OSCAR's reranking head: an `RR` token after the memory tokens whose hidden state a
    /// dense layer turns into the chunk's relevance score.
    #[serde(default)]
    pub rerank: bool,
    /// Bring each memory vector to the scale of the generator's token embeddings (see
    /// [`memory_norm`]).
    #[serde(default)]
    pub memory_norm: bool,
    /// Read each memory vector out as a soft token (see [`SoftTokens`]).
    #[serde(default)]
    pub soft_tokens: bool,
    /// Add to memory vector j the mean token embedding of the R document tokens it stands
    /// for (`n_layers` only; see `Oscar::compress_all`).
    #[serde(default)]
    pub pooled_segments: bool,
}

impl CompressorConfig {
    /// OSCAR's recipe, the CLI's defaults: a copy of the generator's first 5 layers, 8 memory
    /// tokens per 128-token chunk (rate 16), MLP projector.
    pub fn oscar() -> Self {
        Self {
            compressor_type: CompressorType::NLayers,
            num_layers: 5,
            num_memory_tokens: 8,
            compression_rate: 16,
            projector: true,
            rerank: false,
            memory_norm: false,
            soft_tokens: false,
            pooled_segments: false,
        }
    }

    pub fn chunk_tokens(&self) -> usize {
        self.num_memory_tokens * self.compression_rate
    }

    pub fn validate(&self, generator_layers: usize) -> Result<(), String> {
        if self.compressor_type == CompressorType::NLayers
            && !(1..=generator_layers).contains(&self.num_layers)
        {
            return Err(format!(
                "--num-layers {} is out of range: the generator has {generator_layers} layers",
                self.num_layers
            ));
        }
        if self.pooled_segments && self.compressor_type != CompressorType::NLayers {
            return Err(
                "--pooled-segments needs the n_layers compressor (it pools generator embeddings)"
                    .into(),
            );
        }
        if !(1..=256).contains(&self.num_memory_tokens) {
            return Err(format!(
                "--num-memory-tokens {} is out of range (1..=256)",
                self.num_memory_tokens
            ));
        }
        if !(1..=512).contains(&self.compression_rate) {
            return Err(format!(
                "--compression-rate {} is out of range (1..=512)",
                self.compression_rate
            ));
        }
        Ok(())
    }
}

/// The first N generator layers, trained as the compressor's backbone.
#[derive(Module, Debug)]
pub struct DecoderStack {
    pub layers: Vec<Block>,
    pub rope: Rope,
}

#[derive(Module, Debug)]
#[allow(clippy::large_enum_variant)] // one per compressor, built once
pub enum Backbone {
    Decoder(DecoderStack),
    Encoder(Bert),
}

/// Backbone width -> generator width.
#[derive(Module, Debug)]
pub struct Projector {
    pub fc1: Linear,
    pub fc2: Linear,
}

impl Projector {
    pub fn new(d_in: usize, d_out: usize, device: &Device) -> Self {
        Self {
            fc1: LinearConfig::new(d_in, d_out).init(device),
            fc2: LinearConfig::new(d_out, d_out).init(device),
        }
    }

    /// `[n, d_in]` -> `[n, d_out]`.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.fc2.forward(gelu(self.fc1.forward(x)))
    }
}

/// OSCAR's reranking head: the `RR` token's embedding and the dense layer that scores its
/// hidden state.
#[derive(Module, Debug)]
pub struct RerankHead {
    /// `[1, backbone width]`.
    pub token: Param<Tensor<2>>,
    /// backbone width -> 1.
    pub dense: Linear,
}

impl RerankHead {
    pub fn new(d: usize, device: &Device) -> Self {
        Self {
            token: Param::from_tensor(memory_init(1, d, device)),
            dense: LinearConfig::new(d, 1).init(device),
        }
    }

    /// The `RR` hidden states `[n, d]` -> relevance scores `[n]`.
    pub fn score(&self, states: Tensor<2>) -> Tensor<1> {
        let n = states.dims()[0];
        self.dense.forward(states).reshape([n])
    }
}

/// What the compressor makes of a question's chunks.
pub struct Compressed {
    /// `[chunks × L, generator width]`, in chunk order.
    pub memory: Tensor<2>,
    /// The reranking head's score of each chunk `[chunks]`, when the compressor has one.
    pub scores: Option<Tensor<1>>,
}

#[derive(Module, Debug)]
pub struct Compressor {
    pub backbone: Backbone,
    /// Learned memory-token embeddings `[L, backbone width]`.
    pub memory: Param<Tensor<2>>,
    pub projector: Option<Projector>,
    pub rerank: Option<RerankHead>,
    pub memory_norm: Option<RmsNorm>,
    pub soft_tokens: Option<SoftTokens>,
    /// R when memory vectors get their segment's mean token embedding added (0: not). A
    /// setting, not a weight.
    pub pooled_segments: usize,
    /// At answering time, keep only the chunks of this many best-scored documents (0: all;
    /// needs the reranking head). A setting, not a weight.
    pub keep_top: usize,
}

impl Compressor {
    /// A compressor whose backbone is a copy of `generator`'s first `config.num_layers` layers.
    pub fn from_generator(config: &CompressorConfig, generator: &Llama, device: &Device) -> Self {
        // A copy with its own tensors and parameter ids: the generator's layers stay frozen
        // while these train.
        let layers: Vec<Block> = generator.layers[..config.num_layers]
            .iter()
            .map(|b| b.clone().map(&mut FreshCopy))
            .collect();
        let d = generator.hidden_size();
        Self {
            backbone: Backbone::Decoder(DecoderStack {
                layers,
                rope: generator.rope.clone(),
            }),
            memory: Param::from_tensor(memory_init(config.num_memory_tokens, d, device)),
            projector: config.projector.then(|| Projector::new(d, d, device)),
            rerank: config.rerank.then(|| RerankHead::new(d, device)),
            memory_norm: config.memory_norm.then(|| memory_norm(generator, device)),
            soft_tokens: config.soft_tokens.then(|| SoftTokens::new(generator)),
            pooled_segments: if config.pooled_segments {
                config.compression_rate
            } else {
                0
            },
            keep_top: 0,
        }
    }

    /// An encoder compressor over `encoder` with a projector to `generator`'s width.
    pub fn from_encoder(
        config: &CompressorConfig,
        encoder: Bert,
        generator: &Llama,
        device: &Device,
    ) -> Self {
        let generator_width = generator.hidden_size();
        let d = encoder.hidden_size();
        Self {
            backbone: Backbone::Encoder(encoder),
            memory: Param::from_tensor(memory_init(config.num_memory_tokens, d, device)),
            projector: Some(Projector::new(d, generator_width, device)),
            rerank: config.rerank.then(|| RerankHead::new(d, device)),
            memory_norm: config.memory_norm.then(|| memory_norm(generator, device)),
            soft_tokens: config.soft_tokens.then(|| SoftTokens::new(generator)),
            pooled_segments: 0,
            keep_top: 0,
        }
    }

    pub fn num_memory_tokens(&self) -> usize {
        self.memory.dims()[0]
    }

    /// Input token embeddings `[1, n_i, backbone width]` of each chunk's `[query; chunk]` ->
    /// the chunks' memory vectors, in order: `[chunks × L, generator width]`. For the
    /// `n_layers` backbone the embeddings come from the generator's (frozen) table; for the
    /// encoder, from the encoder's own word embeddings.
    ///
    /// Chunks of similar length run as one batch (see [`Compressor::padded_batch`]); grouping
    /// by length keeps the padding small (one batch for all ten documents of a HotpotQA
    /// question spent 40 % of its rows on padding).
    pub fn compress(&self, chunks: Vec<Tensor<3>>) -> Tensor<2> {
        self.compress_scored(chunks).memory
    }

    /// [`Compressor::compress`], with the reranking head's score of each chunk when the
    /// compressor has one.
    pub fn compress_scored(&self, chunks: Vec<Tensor<3>>) -> Compressed {
        let lens: Vec<usize> = chunks.iter().map(|t| t.dims()[1]).collect();
        let mut order: Vec<usize> = (0..chunks.len()).collect();
        order.sort_by_key(|&i| lens[i]);
        let mut chunks: Vec<Option<Tensor<3>>> = chunks.into_iter().map(Some).collect();
        let mut states: Vec<Option<ChunkStates>> = vec![None; chunks.len()];
        let mut rest = order.as_slice();
        while let Some(&first) = rest.first() {
            // Up to 25 % longer than the group's shortest chunk shares its batch.
            let cut = rest
                .iter()
                .position(|&i| 4 * lens[i] > 5 * lens[first])
                .unwrap_or(rest.len());
            let (group, tail) = rest.split_at(cut);
            let inputs = group
                .iter()
                .map(|&i| chunks[i].take().expect("once"))
                .collect();
            for (&i, state) in group.iter().zip(self.padded_batch(inputs)) {
                states[i] = Some(state);
            }
            rest = tail;
        }
        let (memory_states, rr_states): (Vec<Tensor<2>>, Vec<Option<Tensor<2>>>) = states
            .into_iter()
            .map(|s| {
                let s = s.expect("every chunk");
                (s.memory, s.rr)
            })
            .unzip();
        let memory_states = Tensor::cat(memory_states, 0);
        let mut memory = match &self.projector {
            Some(p) => p.forward(memory_states),
            None => memory_states,
        };
        if let Some(norm) = &self.memory_norm {
            memory = norm.forward(memory);
        }
        let scores = self.rerank.as_ref().map(|head| {
            let rr: Vec<Tensor<2>> = rr_states.into_iter().map(|r| r.expect("RR")).collect();
            head.score(Tensor::cat(rr, 0))
        });
        Compressed { memory, scores }
    }

    /// The hidden states at the memory tokens (and at `RR`) of each chunk, run as one batch of
    /// rows `[query; chunk; MEM_1..MEM_L; RR; padding]`: padding after them leaves them where
    /// a lone chunk would have them (causal layers never see it; the encoder masks it), so a
    /// batch gives a lone chunk's states. `RR` comes after the memory tokens, so that in the
    /// decoder it sees them and they do not see it.
    fn padded_batch(&self, chunks: Vec<Tensor<3>>) -> Vec<ChunkStates> {
        let l = self.num_memory_tokens();
        let mut tail = vec![self.memory.val().unsqueeze::<3>()];
        if let Some(head) = &self.rerank {
            tail.push(head.token.val().unsqueeze::<3>());
        }
        let tail = Tensor::cat(tail, 1); // [1, L (+ 1), d]
        let t = tail.dims()[1];
        let lens: Vec<usize> = chunks.iter().map(|t| t.dims()[1]).collect();
        let width = lens.iter().max().copied().unwrap_or(0) + t;
        let device = self.memory.device();
        let rows: Vec<Tensor<3>> = chunks
            .into_iter()
            .map(|tokens| {
                let [_, n, d] = tokens.dims();
                let mut parts = vec![tokens, tail.clone()];
                if n + t < width {
                    parts.push(Tensor::zeros([1, width - n - t, d], &device));
                }
                Tensor::cat(parts, 1)
            })
            .collect();
        let x = Tensor::cat(rows, 0);
        let [batch, _, d] = x.dims();
        let hidden = match &self.backbone {
            Backbone::Decoder(stack) => {
                let mut cache = KvCache::new(stack.layers.len());
                let mut h = x;
                for (i, block) in stack.layers.iter().enumerate() {
                    h = block.forward(h, &stack.rope, 0, i, &mut cache, None);
                }
                h
            }
            Backbone::Encoder(bert) => {
                let seen: Vec<i64> = lens
                    .iter()
                    .flat_map(|&n| (0..width).map(move |j| (j < n + t) as i64))
                    .collect();
                let mask =
                    Tensor::<2, Int>::from_data(TensorData::new(seen, [batch, width]), &device);
                bert.forward_word_embeds(x, mask)
            }
        };
        lens.iter()
            .enumerate()
            .map(|(i, &n)| ChunkStates {
                memory: hidden
                    .clone()
                    .slice([i..i + 1, n..n + l, 0..d])
                    .reshape([l, d]),
                rr: (t > l).then(|| {
                    hidden
                        .clone()
                        .slice([i..i + 1, n + l..n + l + 1, 0..d])
                        .reshape([1, d])
                }),
            })
            .collect()
    }

    /// Token ids `[1, n]` -> the backbone's input embeddings `[1, n, width]`.
    pub fn embed(&self, generator: &Llama, ids: Tensor<2, Int>) -> Tensor<3> {
        match &self.backbone {
            Backbone::Decoder(_) => generator.embed(ids),
            Backbone::Encoder(bert) => bert.embeddings.word.forward(ids),
        }
    }
}

/// One chunk's backbone states: `[L, d]` at the memory tokens, `[1, d]` at `RR`.
#[derive(Clone)]
struct ChunkStates {
    memory: Tensor<2>,
    rr: Option<Tensor<2>>,
}

struct FreshCopy;

impl ModuleMapper for FreshCopy {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        // A new parameter over the same (immutable) values: no device read, which the
        // browser's WebGPU could not do synchronously.
        Param::from_tensor(param.val())
    }
}

/// Memory vectors read out as soft tokens: each becomes the mean of the generator's token
/// embeddings under the distribution `softmax(norm(h) · Eᵀ)`, the generator's own output
/// head applied to the compressor's state (a logit lens; SmolLM2 ties its head to its
/// embeddings E). The untrained generator ignores the compressor's raw states (its loss is
/// the same without them); a mixture of its own token embeddings it reads as text.
#[derive(Module, Debug)]
pub struct SoftTokens {
    /// Starts as the generator's final norm and trains with the compressor.
    pub norm: RmsNorm,
}

impl SoftTokens {
    fn new(generator: &Llama) -> Self {
        Self {
            norm: generator.norm.clone().map(&mut FreshCopy),
        }
    }

    /// `[n, d]` states and the generator's embeddings `[vocab, d]` -> `[n, d]` soft tokens.
    pub fn forward(&self, states: Tensor<2>, embeddings: Tensor<2>) -> Tensor<2> {
        let logits = self
            .norm
            .forward(states)
            .matmul(embeddings.clone().transpose());
        softmax(logits, 1).matmul(embeddings)
    }
}

/// An RMS norm whose gain starts at the RMS of `generator`'s token embeddings. The backbone's
/// hidden states at the memory tokens are 10-40x longer than token embeddings, so the
/// generator's residual stream at the memory positions stays what the compressor wrote
/// through all its layers instead of evolving as a token's would. Computed on the device
/// (no read), so that the browser can build it too.
fn memory_norm(generator: &Llama, device: &Device) -> RmsNorm {
    let d = generator.hidden_size();
    let mut norm = RmsNormConfig::new(d).init(device);
    let rms = generator.embed_tokens.weight.val().square().mean().sqrt();
    norm.gamma = Param::from_tensor(Tensor::ones([d], device) * rms.expand([d]));
    norm
}

/// Memory tokens start as small random vectors (the scale of token embeddings).
fn memory_init(l: usize, d: usize, device: &Device) -> Tensor<2> {
    Tensor::random([l, d], Distribution::Normal(0.0, 0.02), device)
}
