//! OSCAR: compress each document chunk into memory vectors, splice them into the generator's
//! ChatML prompt as input embeddings, and either score an answer (training loss) or generate one.
//!
//! Generator prompt: `<system>…<|im_start|>user\nBackground: <vectors of doc 1> … <vectors of
//! doc n>\nQuestion: q<|im_end|>\n<|im_start|>assistant\n`; the uncompressed baseline has the
//! documents' text where the vectors are.

use crate::compressor::{
    Backbone, ChunkInput, Compressed, Compressor, CompressorConfig, CompressorType,
};
use crate::encoder::Encoder;
use crate::example::{Encoded, TrainExample, ids_tensor};
use crate::generation::{GenerationConfig, PrefixCache, continue_from, generate_batch_streaming};
use crate::llama::{Inserted, KvCache, Llama, PromptInput};
use crate::tokenizer::{SMOLLM2_SYSTEM_PROMPT, Tokenizer};
use crate::weights::WeightError;
use burn::prelude::*;
use burn::tensor::ExecutionError;
use burn::tensor::activation::log_softmax;

/// Questions longer than this (in compressor tokens) are cut, so a chunk keeps its room.
const MAX_QUERY_TOKENS: usize = 64;

#[derive(Module, Debug)]
pub struct Oscar {
    pub compressor: Compressor,
    pub generator: Llama,
}

/// LoRA on the generator's linear layers (OSCAR: rank 16, alpha 32).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LoraSettings {
    pub rank: usize,
    pub alpha: f64,
}

impl LoraSettings {
    /// OSCAR's adapters, which every training here uses.
    pub const OSCAR: Self = Self {
        rank: 16,
        alpha: 32.0,
    };
}

impl Oscar {
    /// OSCAR around a published generator: a fresh compressor of `config` (a copy of the
    /// generator's first layers, or `encoder` with a projector) and LoRA adapters on the
    /// generator, or a frozen generator when `lora` is None. Plain modules: call `.train()`
    /// to train them.
    pub fn assemble(
        config: &CompressorConfig,
        generator: Llama,
        encoder: Option<Encoder>,
        lora: Option<LoraSettings>,
        device: &Device,
    ) -> Result<Self, WeightError> {
        config
            .validate(generator.layers.len())
            .map_err(WeightError::Config)?;
        let compressor = match (config.compressor_type, encoder) {
            (CompressorType::NLayers, _) => Compressor::from_generator(config, &generator, device),
            (CompressorType::Encoder, Some(encoder)) => {
                let room = encoder.max_positions();
                let needed = config.chunk_tokens() + config.num_memory_tokens + MAX_QUERY_TOKENS;
                if needed > room {
                    return Err(WeightError::Config(format!(
                        "chunks of {} tokens plus {} memory tokens and the question do not fit \
                         the encoder's {room} positions: lower the memory tokens or the rate",
                        config.chunk_tokens(),
                        config.num_memory_tokens
                    )));
                }
                Compressor::from_encoder(config, encoder, &generator, device)
            }
            (CompressorType::Encoder, None) => {
                return Err(WeightError::Config(
                    "the encoder compressor needs an encoder model".into(),
                ));
            }
        };
        // The published weights stay frozen; only the adapters (when any) train.
        let generator = match lora {
            Some(l) => generator.no_grad().with_lora(l.rank, l.alpha),
            None => generator.no_grad(),
        };
        Ok(Self {
            compressor,
            generator,
        })
    }

    /// The model for answering: plain tensors, LoRA merged into the generator's weights.
    pub fn for_inference(&self) -> Self {
        let valid = self.valid();
        Self {
            compressor: valid.compressor,
            generator: valid.generator.merge_lora(),
        }
    }

    /// The model from [`Oscar::for_inference`] with its generator held in 4- and 8-bit blocks
    /// only ([`Llama::in_blocks`]). The compressor stays f32: its layers in blocks answered at
    /// the same speed and saved no resident memory as measured (README, Benchmark). A no-op
    /// off the native CPU backend; not for training.
    pub fn in_blocks(self) -> Self {
        Self {
            generator: self.generator.in_blocks(),
            ..self
        }
    }

    /// [`Oscar::for_inference`], then [`Oscar::in_blocks`], consuming this model: LoRA is
    /// merged a layer at a time, so that the f32 generator and a merged copy of it are never
    /// both held.
    pub fn into_answering(self) -> Self {
        let valid = self.valid();
        drop(self);
        Self {
            generator: valid.generator.merged_in_blocks(),
            ..valid
        }
    }
}

/// The weights of the training loss's terms besides the answer's cross-entropy (weight 1).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LossWeights {
    /// λ of the reranking loss (examples with teacher scores, a compressor with the head).
    pub rerank: f64,
    /// The distillation loss (examples with teacher tokens).
    pub distill: f64,
    /// The span loss (examples whose answer is found in their documents, the pooled readout
    /// with a scorer): the cross-entropy of the scorer's token scores against the answer's
    /// tokens.
    #[serde(default)]
    pub span: f64,
}

impl LossWeights {
    /// The answer's cross-entropy alone.
    pub const ANSWER: Self = Self {
        rerank: 0.0,
        distill: 0.0,
        span: 0.0,
    };
    /// OSCAR's: reranking λ 0.05, no distillation.
    pub const OSCAR: Self = Self {
        rerank: 0.05,
        distill: 0.0,
        span: 0.0,
    };
}

/// The tokenizers OSCAR needs: the generator's, and the encoder's for an encoder compressor.
pub struct OscarTokenizers {
    pub generator: Tokenizer,
    pub encoder: Option<Tokenizer>,
}

/// How a document enters a prompt, compressed or not: its title, then its text.
pub fn document_text(title: &str, text: &str) -> String {
    let title = title.replace('_', " ");
    if title.trim().is_empty() {
        text.to_string()
    } else {
        format!("{title}\n{text}")
    }
}

/// The user turn of the uncompressed baseline and the teacher.
pub fn full_text_user_turn(question: &str, documents: &[String]) -> String {
    format!(
        "Background: {}\nQuestion: {question}",
        documents.join("\n\n")
    )
}

fn chat_prefix() -> String {
    format!("<|im_start|>system\n{SMOLLM2_SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\nBackground:")
}

fn chat_suffix(question: &str) -> String {
    format!("\nQuestion: {question}<|im_end|>\n<|im_start|>assistant\n")
}

impl OscarTokenizers {
    /// Tokenises `question` and `documents` (already joined with their titles) into chunks of
    /// `config.chunk_tokens()` document tokens each.
    pub fn encode(
        &self,
        config: &CompressorConfig,
        question: &str,
        documents: &[String],
    ) -> Result<Encoded, WeightError> {
        let gen_tok = &self.generator;
        let per_chunk = config.chunk_tokens();
        let mut chunks = Vec::new();
        let mut chunk_documents = Vec::new();
        let mut document_tokens = 0;
        let (query, tail): (Vec<u32>, Vec<u32>) = match config.compressor_type {
            CompressorType::NLayers => {
                let mut q = gen_tok.encode(&format!("Question: {question}\nDocument:"))?;
                q.truncate(MAX_QUERY_TOKENS);
                (q, vec![])
            }
            CompressorType::Encoder => {
                let tok = self.encoder.as_ref().ok_or_else(|| {
                    WeightError::Config(
                        "the encoder compressor needs the encoder's tokenizer".into(),
                    )
                })?;
                let sep = tok
                    .token_to_id("[SEP]")
                    .ok_or_else(|| WeightError::Config("encoder tokenizer has no [SEP]".into()))?;
                let mut q = tok.encode_with(question, true)?; // [CLS] q [SEP]
                if q.len() > MAX_QUERY_TOKENS {
                    q.truncate(MAX_QUERY_TOKENS - 1);
                    q.push(sep);
                }
                (q, vec![sep])
            }
        };
        for (d, doc) in documents.iter().enumerate() {
            let ids = match config.compressor_type {
                CompressorType::NLayers => gen_tok.encode(doc)?,
                CompressorType::Encoder => self.encoder.as_ref().expect("checked").encode(doc)?,
            };
            document_tokens += ids.len();
            for piece in ids.chunks(per_chunk) {
                chunks.push([query.as_slice(), piece, tail.as_slice()].concat());
                chunk_documents.push(d);
            }
        }
        Ok(Encoded {
            chunks,
            query_tokens: query.len(),
            tail_tokens: tail.len(),
            prefix: gen_tok.encode(&chat_prefix())?,
            suffix: gen_tok.encode(&chat_suffix(question))?,
            document_tokens,
            chunk_documents,
        })
    }

    /// The generator ids that every prompt starts with, compressed or not (the system turn up
    /// to `Background:`): the prefix worth a [`PrefixCache`].
    pub fn shared_prefix(&self) -> Result<Vec<u32>, WeightError> {
        self.generator.encode(&chat_prefix())
    }

    /// Answer text -> target ids, ending with `<|im_end|>` so that the model learns to stop.
    pub fn encode_answer(&self, answer: &str) -> Result<Vec<u32>, WeightError> {
        let mut ids = self.generator.encode(answer.trim())?;
        ids.extend(self.generator.token_to_id("<|im_end|>"));
        Ok(ids)
    }
}

impl Oscar {
    fn device(&self) -> Device {
        self.generator.device()
    }

    /// All chunks' memory vectors, in order: `[chunks × L, generator width]`.
    pub fn memory_vectors(&self, encoded: &Encoded) -> Tensor<2> {
        self.compress_all(&[encoded])
            .pop()
            .expect("one input")
            .memory
    }

    /// The memory vectors of several inputs, their chunks compressed together (fewer, larger
    /// batches), with the reranking scores of their chunks when the compressor has a head.
    pub fn compress_all(&self, encoded: &[&Encoded]) -> Vec<Compressed> {
        let device = self.device();
        if encoded.iter().all(|e| e.chunks.is_empty()) {
            let d = self.generator.hidden_size();
            let none = || Compressed {
                memory: Tensor::zeros([0, d], &device),
                chunk_vectors: vec![],
                scores: None,
                token_scores: None,
            };
            return encoded.iter().map(|_| none()).collect();
        }
        let embed = |ids: &[u32]| {
            self.compressor
                .embed(&self.generator, ids_tensor(ids, &device))
        };
        let all = match encoded {
            // One question's chunks: its query runs once (the decoder backbone, whose query
            // does not read its chunk).
            [e] if matches!(self.compressor.backbone, Backbone::Decoder(_))
                && let Some(query) = e.shared_query() =>
            {
                let q = query.len();
                let chunks = e
                    .chunks
                    .iter()
                    .zip(e.document_ranges())
                    .map(|(ids, document)| ChunkInput {
                        embeds: embed(&ids[q..]),
                        document: document.start - q..document.end - q,
                    })
                    .collect();
                self.compressor.compress_after_query(embed(query), chunks)
            }
            _ => {
                let inputs = encoded
                    .iter()
                    .flat_map(|e| e.chunks.iter().zip(e.document_ranges()))
                    .map(|(ids, document)| ChunkInput {
                        embeds: embed(ids),
                        document,
                    })
                    .collect();
                self.compressor.compress_scored(inputs)
            }
        };
        let [_, d] = all.memory.dims();
        let (mut chunk, mut row, mut token) = (0, 0, 0);
        encoded
            .iter()
            .map(|e| {
                let n = e.chunks.len();
                let chunk_vectors = all.chunk_vectors[chunk..chunk + n].to_vec();
                let rows: usize = chunk_vectors.iter().sum();
                let tokens: usize = e.document_ranges().map(|r| r.len()).sum();
                let one = Compressed {
                    memory: all.memory.clone().slice([row..row + rows, 0..d]),
                    chunk_vectors,
                    scores: all.scores.clone().map(|s| s.slice(chunk..chunk + n)),
                    token_scores: all
                        .token_scores
                        .clone()
                        .map(|s| s.slice(token..token + tokens)),
                };
                chunk += n;
                row += rows;
                token += tokens;
                one
            })
            .collect()
    }

    /// The reranking head's score of each document `[documents]` (its first chunk's), or None
    /// without a head. Documents without tokens are left out.
    pub fn document_scores(
        compressed: &Compressed,
        encoded: &Encoded,
        documents: usize,
    ) -> Option<Tensor<1>> {
        let scores = compressed.scores.clone()?;
        let device = scores.device();
        let first: Vec<i64> = encoded
            .first_chunks(documents)
            .into_iter()
            .flatten()
            .map(|c| c as i64)
            .collect();
        let n = first.len();
        Some(scores.select(
            0,
            Tensor::<1, Int>::from_data(TensorData::new(first, [n]), &device),
        ))
    }

    /// The generator's input `[1, n, width]`: prefix, `memory` (the question's memory
    /// vectors, entering after the compressor's memory layer), suffix, then `continuation`
    /// (teacher-forced answer tokens) when given.
    pub(crate) fn prompt_around(
        &self,
        encoded: &Encoded,
        memory: Tensor<2>,
        continuation: &[u32],
    ) -> PromptInput {
        let rest = [encoded.suffix.as_slice(), continuation].concat();
        self.prompt_of(&encoded.prefix, memory, &rest)
    }

    /// `before` ids, `memory` `[m, width]`, `after` ids as the generator's input: zeros at
    /// the memory positions in the embeddings, the memory in `inserted`.
    fn prompt_of(&self, before: &[u32], memory: Tensor<2>, after: &[u32]) -> PromptInput {
        let device = self.device();
        let d = self.generator.hidden_size();
        let m = memory.dims()[0];
        let embed = |ids: &[u32]| self.generator.embed(ids_tensor(ids, &device));
        let mut embeds = Vec::new();
        let mut values = Vec::new();
        if !before.is_empty() {
            embeds.push(embed(before));
            values.push(Tensor::zeros([1, before.len(), d], &device));
        }
        // An input without chunks (`Encoded::full_text`) has no memory vectors.
        if m > 0 {
            embeds.push(Tensor::zeros([1, m, d], &device));
            values.push(memory.unsqueeze::<3>());
        }
        if !after.is_empty() {
            embeds.push(embed(after));
            values.push(Tensor::zeros([1, after.len(), d], &device));
        }
        let embeds = Tensor::cat(embeds, 1);
        if m == 0 {
            return PromptInput::tokens(embeds);
        }
        let slots = (0..before.len() + m + after.len())
            .map(|t| (before.len()..before.len() + m).contains(&t))
            .collect();
        PromptInput {
            embeds,
            inserted: Some(Inserted {
                layer: self.compressor.memory_layer,
                values: Tensor::cat(values, 1),
                slots,
            }),
        }
    }

    /// Cross-entropy of each answer (ids, ending with `<|im_end|>`) after its compressed
    /// prompt, averaged over the answer's tokens and then over the examples: `[1]`. Only the
    /// answer positions are scored.
    pub fn answer_loss(&self, examples: &[&TrainExample]) -> Tensor<1> {
        self.training_loss(examples, LossWeights::ANSWER)
    }

    /// [`Oscar::answer_loss`] plus OSCAR's reranking loss, `weights.rerank` × the squared
    /// differences between the head's document scores and the teacher's (`teacher_scores`),
    /// summed over documents and averaged over examples; plus distillation, `weights.distill`
    /// × the cross-entropy against the teacher's token distributions (`teacher_tokens`),
    /// weighted over answer tokens and examples as the answer's cross-entropy is. Examples
    /// without teacher scores or tokens add nothing to those terms.
    ///
    /// The examples run as one right-padded batch through the compressor and the generator:
    /// causal attention keeps each prompt's rows from seeing the padding after it, and the
    /// weights are packed once per product instead of once per example.
    pub fn training_loss(&self, examples: &[&TrainExample], weights: LossWeights) -> Tensor<1> {
        let LossWeights {
            rerank: rerank_weight,
            distill: distill_weight,
            span: span_weight,
        } = weights;
        let device = self.device();
        let encoded: Vec<&Encoded> = examples.iter().map(|ex| &ex.encoded).collect();
        let compressed = self.compress_all(&encoded);
        let mut spans = Vec::new();
        for (c, ex) in compressed.iter().zip(examples) {
            if span_weight == 0.0 || ex.answer_tokens.is_empty() {
                continue;
            }
            if let Some(scores) = &c.token_scores {
                spans.push(span_cross_entropy(scores.clone(), &ex.answer_tokens));
            }
        }
        let mut rerank = Vec::new();
        for (c, ex) in compressed.iter().zip(examples) {
            let (e, teacher) = (&ex.encoded, ex.teacher_scores.as_slice());
            if teacher.is_empty() || rerank_weight == 0.0 {
                continue;
            }
            if let Some(scores) = Self::document_scores(c, e, teacher.len()) {
                let kept: Vec<f32> = e
                    .first_chunks(teacher.len())
                    .iter()
                    .zip(teacher)
                    .filter_map(|(c, &t)| c.map(|_| t))
                    .collect();
                let n = kept.len();
                let target = Tensor::<1>::from_data(TensorData::new(kept, [n]), &device);
                rerank.push((scores - target).square().sum());
            }
        }
        let prompts: Vec<PromptInput> = compressed
            .into_iter()
            .zip(examples)
            .map(|(c, ex)| {
                self.prompt_around(&ex.encoded, c.memory, &ex.answer[..ex.answer.len() - 1])
            })
            .collect();
        let mut loss = answer_cross_entropy(&self.generator, prompts, examples, distill_weight);
        if !rerank.is_empty() {
            let mse = Tensor::cat(rerank, 0).sum() / examples.len() as f64;
            loss = loss + mse * rerank_weight;
        }
        if !spans.is_empty() {
            let n = spans.len() as f64;
            loss = loss + Tensor::cat(spans, 0).sum() * (span_weight / n);
        }
        loss
    }

    /// Generates an answer from the compressed prompt (ids, stop token included when produced).
    pub async fn answer(
        &self,
        encoded: &Encoded,
        stop_ids: &[u32],
        config: &GenerationConfig,
    ) -> Result<Vec<u32>, ExecutionError> {
        let empty = PrefixCache::new(&self.generator, &[], &self.device());
        self.answer_after(&empty, encoded, stop_ids, config).await
    }

    /// Answers several questions at once ([`generate_batch`](crate::generation::generate_batch)): ids per question.
    pub async fn answer_batch(
        &self,
        encoded: &[Encoded],
        stop_ids: &[u32],
        config: &GenerationConfig,
    ) -> Result<Vec<Vec<u32>>, ExecutionError> {
        self.answer_batch_streaming(encoded, stop_ids, config, |_, _| {})
            .await
    }

    /// [`Self::answer_batch`], calling `on_token(question, id)` as each token is picked.
    pub async fn answer_batch_streaming(
        &self,
        encoded: &[Encoded],
        stop_ids: &[u32],
        config: &GenerationConfig,
        on_token: impl FnMut(usize, u32),
    ) -> Result<Vec<Vec<u32>>, ExecutionError> {
        let mut prompts = Vec::with_capacity(encoded.len());
        for e in encoded {
            prompts.push(self.prompt_around(e, self.answer_memory(e, config.keep_top).await?, &[]));
        }
        generate_batch_streaming(&self.generator, prompts, stop_ids, config, on_token).await
    }

    /// The memory vectors an answer reads: all chunks', or, with `keep_top` > 0 and a
    /// reranking head, only the chunks of the `keep_top` best-scored documents (in their given
    /// order).
    pub(crate) async fn answer_memory(
        &self,
        encoded: &Encoded,
        keep_top: usize,
    ) -> Result<Tensor<2>, ExecutionError> {
        let compressed = self.compress_all(&[encoded]).pop().expect("one input");
        let documents = encoded.documents();
        if keep_top == 0 || keep_top >= documents {
            return Ok(compressed.memory);
        }
        let Some(scores) = Self::document_scores(&compressed, encoded, documents) else {
            return Ok(compressed.memory);
        };
        let scores = read_f32s(scores).await?;
        let kept = top_documents(encoded, &scores, keep_top);
        let mut start = 0;
        let mut rows: Vec<i64> = Vec::new();
        for (d, &v) in encoded
            .chunk_documents
            .iter()
            .zip(&compressed.chunk_vectors)
        {
            if kept.contains(d) {
                rows.extend((start..start + v).map(|r| r as i64));
            }
            start += v;
        }
        let n = rows.len();
        let device = self.device();
        let rows = Tensor::<1, Int>::from_data(TensorData::new(rows, [n]), &device);
        Ok(compressed.memory.select(0, rows))
    }

    /// The reranking head's score of each document of `encoded` (its first chunk's; NaN for a
    /// document without tokens), or None when the compressor has no head.
    pub async fn rank(&self, encoded: &Encoded) -> Result<Option<Vec<f32>>, ExecutionError> {
        let compressed = self.compress_all(&[encoded]).pop().expect("one input");
        let documents = encoded.documents();
        let Some(scores) = Self::document_scores(&compressed, encoded, documents) else {
            return Ok(None);
        };
        let mut read = read_f32s(scores).await?.into_iter();
        Ok(Some(
            encoded
                .first_chunks(documents)
                .iter()
                .map(|c| c.and_then(|_| read.next()).unwrap_or(f32::NAN))
                .collect(),
        ))
    }

    /// The generator's next-token logits after the compressed prompt and after each token of
    /// `continuation` (teacher-forced): `[continuation + 1, vocab]`. Lets a caller check a
    /// decoded answer token by token, with a tolerance for near-ties, instead of as one string.
    /// Reads every document's memory (as an answer with `keep_top` 0).
    pub async fn answer_logits(
        &self,
        encoded: &Encoded,
        continuation: &[u32],
    ) -> Result<Tensor<2>, ExecutionError> {
        let prompt =
            self.prompt_around(encoded, self.answer_memory(encoded, 0).await?, continuation);
        let mut cache = KvCache::new(self.generator.layers.len());
        let hidden = self.generator.forward_prompt(prompt, &mut cache);
        let [_, n, d] = hidden.dims();
        let a = continuation.len() + 1;
        let logits = self.generator.logits(hidden.slice([0..1, n - a..n, 0..d]));
        Ok(logits.reshape([a, self.generator.vocab_size()]))
    }

    /// [`Oscar::answer`] with the KV cache of the chat prefix computed once for many questions
    /// (`PrefixCache::new(&model.generator, &encoded.prefix, ..)`).
    pub async fn answer_after(
        &self,
        prefix: &PrefixCache,
        encoded: &Encoded,
        stop_ids: &[u32],
        config: &GenerationConfig,
    ) -> Result<Vec<u32>, ExecutionError> {
        let device = self.device();
        let (mut cache, rest) = prefix.start(&self.generator, &encoded.prefix);
        let prompt = self.prompt_of(
            rest,
            self.answer_memory(encoded, config.keep_top).await?,
            &encoded.suffix,
        );
        let hidden = self.generator.forward_prompt(prompt, &mut cache);
        let [_, n, d] = hidden.dims();
        let logits = self
            .generator
            .logits(hidden.slice([0..1, n - 1..n, 0..d]))
            .reshape([1, self.generator.vocab_size()]);
        continue_from(
            &self.generator,
            logits,
            &mut cache,
            stop_ids,
            config,
            &device,
        )
        .await
    }
}

/// The `keep` best-scored documents of `encoded` (scores of the documents that have chunks,
/// in order), as document indices.
fn top_documents(encoded: &Encoded, scores: &[f32], keep: usize) -> Vec<usize> {
    let with_chunks: Vec<usize> = encoded
        .first_chunks(encoded.documents())
        .iter()
        .enumerate()
        .filter_map(|(d, c)| c.map(|_| d))
        .collect();
    let mut ranked: Vec<(usize, f32)> = with_chunks
        .into_iter()
        .zip(scores.iter().copied())
        .collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    ranked.into_iter().take(keep).map(|(d, _)| d).collect()
}

async fn read_f32s(t: Tensor<1>) -> Result<Vec<f32>, ExecutionError> {
    let data = t.into_data_async().await?;
    Ok(data.iter::<f32>().collect())
}

/// The cross-entropy of each answer (ids, ending with `<|im_end|>`) after its prompt
/// (`prompts[i]`: the prompt and the answer but its last token), averaged over the answer's
/// tokens and then over the examples, plus `distill_weight` × the cross-entropy against the
/// teacher's token distributions: `[1]`. The prompts run as one right-padded batch: causal
/// attention keeps each prompt's rows from seeing the padding after it.
pub(crate) fn answer_cross_entropy(
    generator: &Llama,
    prompts: Vec<PromptInput>,
    examples: &[&TrainExample],
    distill_weight: f64,
) -> Tensor<1> {
    let device = generator.device();
    let lens: Vec<usize> = prompts.iter().map(PromptInput::len).collect();
    let n = lens.iter().copied().max().unwrap_or(0);
    let d = generator.hidden_size();
    let (x, inserted) = PromptInput::stack(prompts, n, false);
    let mut cache = KvCache::new(generator.layers.len());
    let hidden = generator.forward_input(x, inserted, &mut cache, None, |_, _| {});
    // Position t predicts token t + 1: the last `a` positions of a prompt predict its answer.
    let rows = examples
        .iter()
        .zip(&lens)
        .enumerate()
        .map(|(i, (ex, &len))| {
            let a = ex.answer.len();
            hidden
                .clone()
                .slice([i..i + 1, len - a..len, 0..d])
                .reshape([a, d])
        })
        .collect();
    let rows: Tensor<2> = Tensor::cat(rows, 0);
    let total = rows.dims()[0];
    let logits = generator.logits(rows.unsqueeze::<3>());
    let log_probs = log_softmax(logits.reshape([total, generator.vocab_size()]), 1);
    let (targets, weights): (Vec<i64>, Vec<f32>) = examples
        .iter()
        .flat_map(|ex| {
            let w = 1.0 / (ex.answer.len() * examples.len()) as f32;
            ex.answer.iter().map(move |&t| (t as i64, w))
        })
        .unzip();
    let targets = Tensor::<1, Int>::from_data(TensorData::new(targets, [total]), &device);
    let weights = Tensor::<1>::from_data(TensorData::new(weights, [total]), &device);
    let picked = log_probs
        .clone()
        .gather(1, targets.reshape([total, 1]))
        .reshape([total]);
    let mut loss = (picked * weights).sum().neg().reshape([1]);
    if distill_weight > 0.0
        && let Some(soft) = crate::distillation::soft_cross_entropy(log_probs, examples, &device)
    {
        loss = loss + soft * distill_weight;
    }
    loss
}

/// The mean over the answer's tokens (`answer`, indices into the scores `[n]` of a question's
/// document tokens) of `-log softmax(scores)_t`: how far the scores are from pointing at each
/// of them: `[1]`. Each token, not only the one already on top (as `-log Σ_answer softmax`
/// would, branch exp-span-scorer), so that segments placed by the scores
/// ([`CompressorConfig::adaptive_segments`]) can give a number's digits one each.
///
/// [`CompressorConfig::adaptive_segments`]: crate::compressor::CompressorConfig::adaptive_segments
fn span_cross_entropy(scores: Tensor<1>, answer: &[usize]) -> Tensor<1> {
    let device = scores.device();
    let n = answer.len();
    let ids: Vec<i64> = answer.iter().map(|&t| t as i64).collect();
    let ids = Tensor::<1, Int>::from_data(TensorData::new(ids, [n]), &device);
    let picked = scores.clone().select(0, ids);
    log_sum_exp(scores) - picked.mean()
}

/// `log Σ exp(x)` of `x` `[n]`, shifted by its (detached) maximum: `[1]`.
fn log_sum_exp(x: Tensor<1>) -> Tensor<1> {
    let m = x.clone().max().detach();
    (x - m.clone()).exp().sum().log() + m
}

#[cfg(test)]
mod span_tests {
    use super::*;

    /// An answer of two tokens, one far on top: the loss is the mean of both tokens'
    /// `-log softmax`, so the neglected one still counts in full.
    #[test]
    fn the_span_loss_counts_every_answer_token() {
        let device = Device::flex();
        let scores = Tensor::<1>::from_data(TensorData::new(vec![5.0f32, -5.0, 0.0], [3]), &device);
        let loss =
            |answer: &[usize]| -> f32 { span_cross_entropy(scores.clone(), answer).into_scalar() };
        let lse = (5.0f32.exp() + (-5.0f32).exp() + 1.0).ln();
        assert!((loss(&[0]) - (lse - 5.0)).abs() < 1e-4);
        assert!((loss(&[0, 1]) - lse).abs() < 1e-4, "mean of 5 and -5 is 0");
        assert!(loss(&[0, 1]) > 5.0 && loss(&[0]) < 0.01);
    }
}
