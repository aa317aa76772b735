//! The OSCAR compressor: it reads `[query; document chunk]` and turns the chunk's L×R tokens
//! into at most L memory vectors (compression rate R), which replace them in the generator's
//! prompt. Two readouts:
//! - pooled (the default): memory vector j is a weighted mean of the backbone's states over the
//!   R document tokens it stands for, the weights a softmax of a learned score per token (zero
//!   at the start: the plain mean). The n_layers backbone is a copy of the generator's first
//!   k layers, so its layer-k states are what the generator's layer k + 1 reads: they enter
//!   the generator's residual stream after its layer k, without a projector.
//! - memory tokens (OSCAR's): the backbone reads `[query; chunk; MEM_1..MEM_L]` and the
//!   states at the L memory tokens, projected, enter at the generator's input.

use crate::encoder::Encoder;
use crate::llama::model::Block;
use crate::llama::rope::Rope;
use crate::llama::{KvCache, LayerStep, Llama};
use burn::module::{ModuleMapper, Param};
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::Distribution;
use burn::tensor::activation::{gelu, softmax};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::ops::Range;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CompressorType {
    /// A trainable copy of the generator's first N layers.
    NLayers,
    /// A separate bidirectional encoder: BERT (MiniLM, shipped) or ModernBERT.
    Encoder,
}

impl fmt::Display for CompressorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NLayers => "n_layers",
            Self::Encoder => "encoder",
        })
    }
}

/// How the compressor's states become memory vectors (see the module's doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Readout {
    /// Weighted segment means of the backbone's states; for n_layers they enter the generator
    /// after its layer k.
    Pooled,
    /// OSCAR's learned memory tokens, projected, at the generator's input.
    MemoryTokens,
}

impl Readout {
    /// Checkpoints written before the readout was a setting used memory tokens.
    fn before_the_setting() -> Self {
        Self::MemoryTokens
    }
}

impl FromStr for Readout {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "pooled" => Ok(Self::Pooled),
            "memory-tokens" | "memory_tokens" => Ok(Self::MemoryTokens),
            other => Err(format!(
                "unknown readout `{other}` (pooled or memory-tokens)"
            )),
        }
    }
}

impl fmt::Display for Readout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Pooled => "pooled",
            Self::MemoryTokens => "memory-tokens",
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
    /// How states become memory vectors.
    #[serde(default = "Readout::before_the_setting")]
    pub readout: Readout,
    /// A 2-layer MLP after the backbone (always used by the encoder compressor; never by the
    /// pooled n_layers readout, whose states are already the generator's own stream).
    pub projector: bool,
    /// OSCAR's reranking head: an `RR` token after the chunk (and the memory tokens) whose
    /// hidden state a dense layer turns into the chunk's relevance score.
    #[serde(default)]
    pub rerank: bool,
    /// The factor on the pooled readout's scores (see [`Compressor::pool_scorer`]); a setup
    /// written before it was recorded trained its scorer with 4.
    #[serde(default = "CompressorConfig::first_pool_score_scale")]
    pub pool_score_scale: f32,
    /// Segments placed by the scorer instead of every R tokens: a chunk's v memory vectors end
    /// at its v top-scoring tokens, so that an answer of several tokens can get several
    /// vectors and filler shares one (pooled readout with a scorer; same v as fixed segments).
    #[serde(default)]
    pub adaptive_segments: bool,
}

/// The measured best recipe at the seed's scale (README, "Rate 2"): a copy of the
/// generator's first 20 layers, up to 64 memory vectors per 128-token chunk, each a weighted
/// mean of 2 tokens' layer-20 states, entering the generator after its layer 20. `scaledown
/// train`'s defaults and the page's fresh compressor.
impl Default for CompressorConfig {
    fn default() -> Self {
        let compression_rate = 2;
        Self {
            compressor_type: CompressorType::NLayers,
            num_layers: 20,
            num_memory_tokens: 64,
            compression_rate,
            readout: Readout::Pooled,
            projector: false,
            rerank: false,
            pool_score_scale: Self::measured_pool_score_scale(compression_rate),
            adaptive_segments: false,
        }
    }
}

impl CompressorConfig {
    /// The pooled readout at rate 16: a copy of the generator's first 5 layers, at most 8
    /// memory vectors per 128-token chunk, each the mean of 16 tokens' layer-5 states, entering
    /// the generator after its layer 5: what the benchmark's PyTorch twin runs. (`train`
    /// and the page start from [`CompressorConfig::default`].)
    pub fn oscar() -> Self {
        let compression_rate = 16;
        Self {
            compressor_type: CompressorType::NLayers,
            num_layers: 5,
            num_memory_tokens: 8,
            compression_rate,
            readout: Readout::Pooled,
            projector: false,
            rerank: false,
            pool_score_scale: Self::measured_pool_score_scale(compression_rate),
            adaptive_segments: false,
        }
    }

    fn first_pool_score_scale() -> f32 {
        4.0
    }

    /// The measured factor on the scorer's logits at `compression_rate` (README, "The scorer's
    /// factor"): with Adam the scorer moves about one learning rate per step, so the factor is
    /// its pace. 16 at rate 16, where a segment must keep one of 16 tokens; 4 below, where
    /// rate 2 answered better with it (its segments have 2 tokens, both worth keeping).
    fn measured_pool_score_scale(compression_rate: usize) -> f32 {
        if compression_rate >= 16 { 16.0 } else { 4.0 }
    }

    /// This config with the measured factor of its own rate (one place for the rate, not two).
    pub fn with_measured_pool_score_scale(self) -> Self {
        Self {
            pool_score_scale: Self::measured_pool_score_scale(self.compression_rate),
            ..self
        }
    }

    /// Whether the readout needs a map to the generator's input: the pooled n_layers states
    /// are the generator's own layer-N stream; every other readout's are not.
    pub fn needs_projector(compressor_type: CompressorType, readout: Readout) -> bool {
        !(compressor_type == CompressorType::NLayers && readout == Readout::Pooled)
    }

    /// The generator layers that the memory vectors skip: they enter its residual stream
    /// after this layer (0: at its input).
    pub fn memory_layer(&self) -> usize {
        match (self.compressor_type, self.readout) {
            (CompressorType::NLayers, Readout::Pooled) => self.num_layers,
            _ => 0,
        }
    }

    /// Memory vectors of a chunk of `document_tokens` tokens: one per R tokens when pooled
    /// (a short last chunk gets fewer), always L with memory tokens.
    pub fn vectors_for(&self, document_tokens: usize) -> usize {
        match self.readout {
            Readout::Pooled => document_tokens.div_ceil(self.compression_rate).max(1),
            Readout::MemoryTokens => self.num_memory_tokens,
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
    Encoder(Encoder),
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
    /// `[Σ vectors, generator width]`, in chunk order.
    pub memory: Tensor<2>,
    /// How many of those rows each chunk has, in order.
    pub chunk_vectors: Vec<usize>,
    /// The reranking head's score of each chunk `[chunks]`, when the compressor has one.
    pub scores: Option<Tensor<1>>,
    /// The pooled readout's score (logit) of every document token `[Σ document tokens]`, in
    /// chunk order: what the span loss trains to point at the answer. None without a scorer.
    pub token_scores: Option<Tensor<1>>,
}

/// One chunk's compressor input: the embeddings `[1, n, backbone width]` of `[query; chunk]`
/// (with the encoder's `[SEP]` after it) and where the chunk's tokens lie in it.
pub struct ChunkInput {
    pub embeds: Tensor<3>,
    pub document: Range<usize>,
}

#[derive(Module, Debug)]
pub struct Compressor {
    pub backbone: Backbone,
    /// OSCAR's learned memory-token embeddings `[L, backbone width]` (memory-token readout
    /// only).
    pub memory: Option<Param<Tensor<2>>>,
    pub projector: Option<Projector>,
    pub rerank: Option<RerankHead>,
    /// L: the most memory vectors a chunk gets. A setting, not a weight.
    pub max_vectors: usize,
    /// R of the pooled readout (memory vector j pools document tokens jR..(j+1)R); 0 with
    /// memory tokens. A setting, not a weight.
    pub pool_rate: usize,
    /// Generator layers the memory vectors skip (see [`CompressorConfig::memory_layer`]).
    /// A setting, not a weight.
    pub memory_layer: usize,
    /// The pooled readout's scorer `[d]`: a segment's weights are the softmax of
    /// `pool_score_scale * w · rmsnorm(state)` over its tokens. Zero at the start, so the
    /// pooled vectors begin as plain means; training lets a segment keep the tokens a question
    /// needs instead of their blur. (A checkpoint without it loads with the zero start.)
    pub pool_scorer: Option<Param<Tensor<1>>>,
    /// [`CompressorConfig::pool_score_scale`]. A setting, not a weight.
    pub pool_score_scale: f32,
    /// [`CompressorConfig::adaptive_segments`]. A setting, not a weight.
    pub adaptive_segments: bool,
}

impl Compressor {
    fn new(
        config: &CompressorConfig,
        backbone: Backbone,
        d: usize,
        projector: Option<Projector>,
        device: &Device,
    ) -> Self {
        let pooled = config.readout == Readout::Pooled;
        Self {
            backbone,
            memory: (!pooled)
                .then(|| Param::from_tensor(memory_init(config.num_memory_tokens, d, device))),
            projector,
            rerank: config.rerank.then(|| RerankHead::new(d, device)),
            max_vectors: config.num_memory_tokens,
            pool_rate: if pooled { config.compression_rate } else { 0 },
            memory_layer: config.memory_layer(),
            pool_scorer: pooled.then(|| Param::from_tensor(Tensor::zeros([d], device))),
            pool_score_scale: config.pool_score_scale,
            adaptive_segments: config.adaptive_segments,
        }
    }

    /// A compressor whose backbone is a copy of `generator`'s first `config.num_layers` layers.
    pub fn from_generator(config: &CompressorConfig, generator: &Llama, device: &Device) -> Self {
        // A copy with its own tensors and parameter ids: the generator's layers stay frozen
        // while these train.
        let layers: Vec<Block> = generator.layers[..config.num_layers]
            .iter()
            .map(|b| b.clone().map(&mut FreshCopy))
            .collect();
        let d = generator.hidden_size();
        let backbone = Backbone::Decoder(DecoderStack {
            layers,
            rope: generator.rope.clone(),
        });
        let projector = config.projector.then(|| Projector::new(d, d, device));
        Self::new(config, backbone, d, projector, device)
    }

    /// An encoder compressor over `encoder` with a projector to `generator`'s width.
    pub fn from_encoder(
        config: &CompressorConfig,
        encoder: Encoder,
        generator: &Llama,
        device: &Device,
    ) -> Self {
        let d = encoder.hidden_size();
        let projector = Some(Projector::new(d, generator.hidden_size(), device));
        Self::new(config, Backbone::Encoder(encoder), d, projector, device)
    }

    /// Memory vectors of a chunk of `document_tokens` tokens ([`CompressorConfig::vectors_for`]).
    pub fn vectors_for(&self, document_tokens: usize) -> usize {
        match self.pool_rate {
            0 => self.max_vectors,
            r => document_tokens.div_ceil(r).max(1),
        }
    }

    fn device(&self) -> Device {
        match &self.backbone {
            Backbone::Decoder(stack) => stack.rope.device(),
            Backbone::Encoder(encoder) => encoder.device(),
        }
    }

    /// The chunks' memory vectors, in order (`[Σ vectors, generator width]`), with the
    /// reranking head's score of each chunk when the compressor has one. For the `n_layers`
    /// backbone the input embeddings come from the generator's (frozen) table; for the
    /// encoder, from the encoder's own word embeddings.
    ///
    /// Chunks of similar length run as one batch (see [`Compressor::padded_batch`]); grouping
    /// by length keeps the padding small (one batch for all ten documents of a HotpotQA
    /// question spent 40 % of its rows on padding).
    pub fn compress_scored(&self, chunks: Vec<ChunkInput>) -> Compressed {
        let states = self.padded_batches(chunks);
        self.scored(states)
    }

    /// [`Compressor::compress_scored`] of chunks that all continue the same `query`
    /// embeddings `[1, q, width]` (one question's chunks, each given without the query, its
    /// document range counted from the chunk's start). The decoder backbone runs them as one
    /// row, `[query; chunk 1; chunk 2; ...]`, each chunk masked from the others and its
    /// positions running on from the query's, as if it followed the query alone: the query
    /// once, no padding, and one pass over the layers (each pass costs about what 50 more
    /// positions do, the weights being packed anew for every product). The same memory as
    /// each `[query; chunk]` compressed alone; a SQuAD question's two or three chunks in 15-20 %
    /// less time. The encoder backbone, whose query sees its chunk, compresses each
    /// `[query; chunk]` as [`Compressor::compress_scored`] would.
    pub fn compress_after_query(&self, query: Tensor<3>, chunks: Vec<ChunkInput>) -> Compressed {
        self.compress_in_rows(query, chunks, PACKED_WIDTH)
    }

    /// [`Compressor::compress_after_query`] in rows of at most `max_width` positions.
    pub(crate) fn compress_in_rows(
        &self,
        query: Tensor<3>,
        chunks: Vec<ChunkInput>,
        max_width: usize,
    ) -> Compressed {
        let q = query.dims()[1];
        let Backbone::Decoder(stack) = &self.backbone else {
            let whole = chunks
                .into_iter()
                .map(|c| ChunkInput {
                    embeds: Tensor::cat(vec![query.clone(), c.embeds], 1),
                    document: c.document.start + q..c.document.end + q,
                })
                .collect();
            return self.compress_scored(whole);
        };
        // Rows of at most `max_width` positions (at least one chunk each): in a longer row
        // the attention over the masked pairs would cost more than a pass saves.
        let t = self.tail().map_or(0, |t| t.dims()[1]);
        let mut packs: Vec<Vec<ChunkInput>> = Vec::new();
        let mut width = 0;
        for c in chunks {
            let n = c.embeds.dims()[1] + t;
            match packs.last_mut() {
                Some(pack) if width + n <= max_width => pack.push(c),
                _ => {
                    packs.push(vec![c]);
                    width = q;
                }
            }
            width += n;
        }
        let states = packs
            .into_iter()
            .flat_map(|pack| self.packed_row(stack, query.clone(), pack))
            .collect();
        self.scored(states)
    }

    /// The states of `chunks` run as one row `[query; chunk 1; chunk 2; ...]` (see
    /// [`Compressor::compress_after_query`]).
    fn packed_row(
        &self,
        stack: &DecoderStack,
        query: Tensor<3>,
        chunks: Vec<ChunkInput>,
    ) -> Vec<ChunkStates> {
        let q = query.dims()[1];
        let device = self.device();
        let tail = self.tail();
        let t = tail.as_ref().map_or(0, |t| t.dims()[1]);
        let mut parts = vec![query];
        let mut positions: Vec<i64> = (0..q as i64).collect();
        let mut placements = Vec::with_capacity(chunks.len());
        for c in chunks {
            let n = c.embeds.dims()[1];
            let start = positions.len();
            positions.extend((q..q + n + t).map(|p| p as i64));
            placements.push(Placement {
                row: 0,
                start,
                len: n,
                document: c.document,
            });
            parts.push(c.embeds);
            parts.extend(tail.clone());
        }
        let width = positions.len();
        // Query rows see the query (causally); a chunk's rows see the query and their own chunk.
        let segment: Vec<usize> = {
            let mut s = vec![0; width];
            for (i, p) in placements.iter().enumerate() {
                s[p.start..p.start + p.len + t].fill(i + 1);
            }
            s
        };
        let hidden: Vec<bool> = (0..width)
            .flat_map(|i| {
                let segment = &segment;
                (0..width).map(move |j| segment[j] != 0 && segment[j] != segment[i])
            })
            .collect();
        let mask =
            Tensor::<4, Bool>::from_data(TensorData::new(hidden, [1, 1, width, width]), &device);
        let positions = Tensor::<1, Int>::from_data(TensorData::new(positions, [width]), &device);
        let mut cache = KvCache::new(stack.layers.len());
        let mut h = Tensor::cat(parts, 1);
        for (i, block) in stack.layers.iter().enumerate() {
            let step = LayerStep {
                rope: &stack.rope,
                start: 0,
                positions: Some(&positions),
                layer: i,
                cache: &mut cache,
            };
            h = block.forward(h, step, Some(mask.clone()));
        }
        self.readout(h, &placements)
    }

    /// Each chunk's states from runs of chunks of similar length, each run one padded batch.
    fn padded_batches(&self, chunks: Vec<ChunkInput>) -> Vec<ChunkStates> {
        let lens: Vec<usize> = chunks.iter().map(|c| c.embeds.dims()[1]).collect();
        let mut order: Vec<usize> = (0..chunks.len()).collect();
        order.sort_by_key(|&i| lens[i]);
        let mut chunks: Vec<Option<ChunkInput>> = chunks.into_iter().map(Some).collect();
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
        states
            .into_iter()
            .map(|s| s.expect("every chunk"))
            .collect()
    }

    /// The memory (after the projector) and reranking scores of chunks' states.
    fn scored(&self, states: Vec<ChunkStates>) -> Compressed {
        let chunk_vectors = states.iter().map(|s| s.memory.dims()[0]).collect();
        let token_scores: Option<Vec<Tensor<1>>> =
            states.iter().map(|s| s.token_scores.clone()).collect();
        let token_scores = token_scores.map(|t| Tensor::cat(t, 0));
        let (memory_states, rr_states): (Vec<Tensor<2>>, Vec<Option<Tensor<2>>>) =
            states.into_iter().map(|s| (s.memory, s.rr)).unzip();
        let memory_states = Tensor::cat(memory_states, 0);
        let memory = match &self.projector {
            Some(p) => p.forward(memory_states),
            None => memory_states,
        };
        let scores = self.rerank.as_ref().map(|head| {
            let rr: Vec<Tensor<2>> = rr_states.into_iter().map(|r| r.expect("RR")).collect();
            head.score(Tensor::cat(rr, 0))
        });
        Compressed {
            memory,
            chunk_vectors,
            scores,
            token_scores,
        }
    }

    /// The memory states (and the `RR` state) of each chunk, run as one batch of rows
    /// `[query; chunk; MEM_1..MEM_L (memory tokens only); RR; padding]`: padding after them
    /// leaves them where a lone chunk would have them (causal layers never see it; the
    /// encoder masks it), so a batch gives a lone chunk's states. `RR` comes last, so that in
    /// the decoder it sees the chunk and the memory tokens and they do not see it.
    fn padded_batch(&self, chunks: Vec<ChunkInput>) -> Vec<ChunkStates> {
        let device = self.device();
        let tail = self.tail();
        let t = tail.as_ref().map_or(0, |t| t.dims()[1]);
        let lens: Vec<usize> = chunks.iter().map(|c| c.embeds.dims()[1]).collect();
        let placements: Vec<Placement> = chunks
            .iter()
            .enumerate()
            .map(|(row, c)| Placement {
                row,
                start: 0,
                len: c.embeds.dims()[1],
                document: c.document.clone(),
            })
            .collect();
        let width = lens.iter().max().copied().unwrap_or(0) + t;
        let rows: Vec<Tensor<3>> = chunks
            .into_iter()
            .map(|c| {
                let [_, n, d] = c.embeds.dims();
                let mut parts = vec![c.embeds];
                parts.extend(tail.clone());
                if n + t < width {
                    parts.push(Tensor::zeros([1, width - n - t, d], &device));
                }
                Tensor::cat(parts, 1)
            })
            .collect();
        let x = Tensor::cat(rows, 0);
        let batch = x.dims()[0];
        let hidden = match &self.backbone {
            Backbone::Decoder(stack) => {
                let mut cache = KvCache::new(stack.layers.len());
                let mut h = x;
                for (i, block) in stack.layers.iter().enumerate() {
                    let step = LayerStep {
                        rope: &stack.rope,
                        start: 0,
                        positions: None,
                        layer: i,
                        cache: &mut cache,
                    };
                    h = block.forward(h, step, None);
                }
                h
            }
            Backbone::Encoder(encoder) => {
                let seen: Vec<i64> = lens
                    .iter()
                    .flat_map(|&n| (0..width).map(move |j| (j < n + t) as i64))
                    .collect();
                let mask =
                    Tensor::<2, Int>::from_data(TensorData::new(seen, [batch, width]), &device);
                encoder.forward_word_embeds(x, mask)
            }
        };
        self.readout(hidden, &placements)
    }

    /// What follows each chunk in the backbone's input: `[1, L and/or 1, d]` for
    /// `MEM_1..MEM_L` (memory tokens only) and `RR` (with a reranking head), or None.
    fn tail(&self) -> Option<Tensor<3>> {
        let mut tail = Vec::new();
        if let Some(memory) = &self.memory {
            tail.push(memory.val().unsqueeze::<3>());
        }
        if let Some(head) = &self.rerank {
            tail.push(head.token.val().unsqueeze::<3>());
        }
        (!tail.is_empty()).then(|| Tensor::cat(tail, 1))
    }

    /// Each chunk's memory states (and `RR` state) read off the backbone's states
    /// `[rows, width, d]`: the weighted means of its document's segments (pooled readout) or the
    /// states at its memory tokens.
    fn readout(&self, hidden: Tensor<3>, placements: &[Placement]) -> Vec<ChunkStates> {
        let d = hidden.dims()[2];
        let at = |p: &Placement, from: usize, n: usize| {
            let from = p.start + p.len + from;
            hidden
                .clone()
                .slice([p.row..p.row + 1, from..from + n, 0..d])
                .reshape([n, d])
        };
        let [rows, width, _] = hidden.dims();
        // Every position's score `[rows * width]` (pooled readout with a scorer).
        let logits = match (self.pool_rate, &self.pool_scorer) {
            (0, _) | (_, None) => None,
            (_, Some(w)) => Some(token_logits(hidden.clone(), w, self.pool_score_scale)),
        };
        let memory: Vec<Tensor<2>> = match self.pool_rate {
            0 => placements
                .iter()
                .map(|p| at(p, 0, self.max_vectors))
                .collect(),
            r => {
                let documents: Vec<(usize, Range<usize>)> = placements
                    .iter()
                    .map(|p| (p.row, p.start + p.document.start..p.start + p.document.end))
                    .collect();
                let member = match (&logits, self.adaptive_segments) {
                    (Some(l), true) => scored_segments(l.clone(), &documents, r, rows, width),
                    _ => fixed_segments(&documents, r, rows, width, &hidden.device()),
                };
                let pooled = segment_pool(hidden.clone(), member, logits.clone());
                let mut start = 0;
                placements
                    .iter()
                    .map(|p| {
                        let v = self.vectors_for(p.document.len());
                        start += v;
                        pooled.clone().slice([start - v..start, 0..d])
                    })
                    .collect()
            }
        };
        let rr_at = self.memory.as_ref().map_or(0, |_| self.max_vectors);
        memory
            .into_iter()
            .zip(placements)
            .map(|(memory, p)| ChunkStates {
                memory,
                rr: self.rerank.as_ref().map(|_| at(p, rr_at, 1)),
                token_scores: logits.as_ref().map(|l| {
                    let from = p.row * width + p.start;
                    l.clone()
                        .slice(from + p.document.start..from + p.document.end)
                }),
            })
            .collect()
    }

    /// Token ids `[1, n]` -> the backbone's input embeddings `[1, n, width]`.
    pub fn embed(&self, generator: &Llama, ids: Tensor<2, Int>) -> Tensor<3> {
        match &self.backbone {
            Backbone::Decoder(_) => generator.embed(ids),
            Backbone::Encoder(encoder) => encoder.embed(ids),
        }
    }
}

/// Which of `batch * width` positions each segment pools, `[segments, batch * width]`:
/// segments of `r` positions of each `(row, document range)`, in order (a shorter last
/// segment holds what is left; an empty document one position).
fn fixed_segments(
    documents: &[(usize, Range<usize>)],
    r: usize,
    batch: usize,
    width: usize,
    device: &Device,
) -> Tensor<2, Bool> {
    let total = batch * width;
    let mut member = Vec::new();
    for (row, doc) in documents {
        let end = doc.end.max(doc.start + 1);
        for seg in (doc.start..end).step_by(r) {
            let mut positions = vec![false; total];
            for t in seg..(seg + r).min(end) {
                positions[row * width + t] = true;
            }
            member.extend(positions);
        }
    }
    let n = member.len() / total;
    Tensor::from_data(TensorData::new(member, [n, total]), device)
}

/// As [`fixed_segments`], with as many segments per document, placed by `scores`
/// (`[batch * width]`, [`token_logits`]): each ends at one of the document's top-scoring
/// tokens (all tokens tied with the last of them count as on top), the last runs to the
/// document's end, so every token still pools somewhere. On the device (no read of the
/// scores, which the browser's WebGPU could not do synchronously); the boundaries are not
/// differentiable, the pooling weights within them are.
fn scored_segments(
    scores: Tensor<1>,
    documents: &[(usize, Range<usize>)],
    r: usize,
    batch: usize,
    width: usize,
) -> Tensor<2, Bool> {
    let device = scores.device();
    let scores = scores.detach();
    let total = batch * width;
    let rows: Vec<Tensor<2, Int>> = documents
        .iter()
        .map(|(row, doc)| {
            let v = doc.len().div_ceil(r);
            if v <= 1 {
                let one = [(*row, doc.clone())];
                return fixed_segments(&one, doc.len().max(1), batch, width, &device).int();
            }
            let (from, len) = (row * width + doc.start, doc.len());
            let own = scores.clone().slice(from..from + len);
            let last_top = own.clone().topk(v, 0).slice(v - 1..v);
            let top = own.greater_equal(last_top.expand([len])).int();
            // A token's segment: how many top tokens come before it (the tail after the last
            // one joins the last segment).
            let segment = (top.clone().cumsum(0) - top).clamp_max(v as i64 - 1);
            let k = Tensor::<1, Int>::arange(0..v as i64, &device).reshape([v, 1]);
            let member = segment
                .reshape([1, len])
                .expand([v, len])
                .equal(k.expand([v, len]));
            Tensor::cat(
                vec![
                    Tensor::zeros([v, from], &device),
                    member.int(),
                    Tensor::zeros([v, total - from - len], &device),
                ],
                1,
            )
        })
        .collect();
    Tensor::cat(rows, 0).bool()
}

/// The weighted means of `hidden` `[batch, width, d]` over the segments of `member`
/// (`[segments, batch * width]`, [`fixed_segments`] or [`scored_segments`]), in order:
/// `[segments, d]`. Without `scores` (`[batch * width]`, [`token_logits`]) every token of a
/// segment weighs the same; with them, a segment's weights are the softmax of its tokens'. One
/// product with a matrix of weights, so that the gradient of every state is one pass.
fn segment_pool(
    hidden: Tensor<3>,
    member: Tensor<2, Bool>,
    scores: Option<Tensor<1>>,
) -> Tensor<2> {
    let [batch, width, d] = hidden.dims();
    let n = member.dims()[0];
    let device = hidden.device();
    let flat = hidden.reshape([batch * width, d]);
    let outside = member.bool_not();
    let scores = match scores {
        // `[batch * width]` -> `[1, batch * width]`, the same for every segment.
        Some(scores) => scores
            .reshape([1, batch * width])
            .expand([n, batch * width]),
        None => Tensor::zeros([n, batch * width], &device),
    };
    // Finite, so that no backend meets inf - inf; exp(-1e9) is 0 in f32 all the same.
    let weights = softmax(scores.mask_fill(outside, -1.0e9), 1);
    weights.matmul(flat)
}

/// Each position's pooling score `scale · w · rmsnorm(state)` of `hidden` `[batch, width, d]`:
/// `[batch * width]`.
fn token_logits(hidden: Tensor<3>, w: &Param<Tensor<1>>, scale: f32) -> Tensor<1> {
    let [batch, width, d] = hidden.dims();
    let flat = hidden.reshape([batch * width, d]);
    let normed = flat.clone() / (flat.powf_scalar(2.0).mean_dim(1) + 1e-6).sqrt();
    normed
        .matmul(w.val().reshape([d, 1]))
        .mul_scalar(scale)
        .reshape([batch * width])
}

/// The most positions in a row of one question's chunks ([`Compressor::compress_after_query`]).
const PACKED_WIDTH: usize = 512;

/// Where a chunk's input lies in the backbone's states `[rows, width, d]`: its row, its first
/// position there, its length (before the tail) and its document tokens (from its start).
struct Placement {
    row: usize,
    start: usize,
    len: usize,
    document: Range<usize>,
}

/// One chunk's backbone states: `[vectors, d]` for its memory, `[1, d]` at `RR`.
#[derive(Clone)]
struct ChunkStates {
    memory: Tensor<2>,
    rr: Option<Tensor<2>>,
    /// The scores of its document tokens `[document tokens]` (pooled readout with a scorer).
    token_scores: Option<Tensor<1>>,
}

struct FreshCopy;

impl ModuleMapper for FreshCopy {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        // A new parameter over the same (immutable) values: no device read, which the
        // browser's WebGPU could not do synchronously.
        Param::from_tensor(param.val())
    }
}

/// Memory tokens start as small random vectors (the scale of token embeddings).
fn memory_init(l: usize, d: usize, device: &Device) -> Tensor<2> {
    Tensor::random([l, d], Distribution::Normal(0.0, 0.02), device)
}

#[cfg(test)]
mod segment_tests {
    use super::*;

    /// The positions of each segment of `member` `[segments, batch * width]`.
    fn positions(member: Tensor<2, Bool>) -> Vec<Vec<usize>> {
        let [n, total] = member.dims();
        let flags = member.into_data().try_into_vec::<bool>().expect("bool");
        (0..n)
            .map(|k| (0..total).filter(|&p| flags[k * total + p]).collect())
            .collect()
    }

    #[test]
    fn scored_segments_end_at_the_top_tokens_and_cover_the_document() {
        // Row 1 of width 10, document positions 1..9 (8 tokens), R = 4: two segments, the
        // first ending at the better of the two top tokens' first (position 3), the second
        // running to the end.
        let device = Device::flex();
        let mut scores = vec![0.0f32; 20];
        scores[10 + 6] = 5.0;
        scores[10 + 3] = 4.0;
        scores[10] = 9.0; // position 0 of row 1: outside the document
        let scores = Tensor::<1>::from_data(TensorData::new(scores, [20]), &device);
        let member = scored_segments(scores, &[(1, 1..9)], 4, 2, 10);
        assert_eq!(
            positions(member),
            vec![vec![11, 12, 13], (14..19).collect()]
        );
        // Fixed segments of the same document: every 4 tokens.
        let member = fixed_segments(&[(1, 1..9)], 4, 2, 10, &device);
        assert_eq!(
            positions(member),
            vec![vec![11, 12, 13, 14], vec![15, 16, 17, 18]]
        );
        // Three segments of a 9-token document at R = 4, and a lone one of a short document.
        let mut scores = vec![0.0f32; 20];
        for (t, s) in [(2, 3.0), (5, 2.0), (8, 1.0)] {
            scores[t] = s;
        }
        let scores = Tensor::<1>::from_data(TensorData::new(scores, [20]), &device);
        let member = scored_segments(scores, &[(0, 0..9), (1, 0..3)], 4, 2, 10);
        assert_eq!(
            positions(member),
            vec![
                vec![0, 1, 2],
                vec![3, 4, 5],
                vec![6, 7, 8],
                vec![10, 11, 12]
            ]
        );
    }
}
