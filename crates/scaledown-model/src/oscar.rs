//! OSCAR: compress each document chunk into memory vectors, splice them into the generator's
//! ChatML prompt as input embeddings, and either score an answer (training loss) or generate one.
//!
//! Generator prompt: `<system>…<|im_start|>user\nBackground: <vectors of doc 1> … <vectors of
//! doc n>\nQuestion: q<|im_end|>\n<|im_start|>assistant\n`; the uncompressed baseline has the
//! documents' text where the vectors are.

use crate::bert::Bert;
use crate::compressor::{Compressor, CompressorConfig, CompressorType};
use crate::generation::{GenerationConfig, PrefixCache, continue_from, generate_batch};
use crate::llama::{KvCache, Llama};
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
#[derive(Debug, Clone, Copy)]
pub struct LoraSettings {
    pub rank: usize,
    pub alpha: f64,
}

impl Oscar {
    /// OSCAR around a published generator: a fresh compressor of `config` (a copy of the
    /// generator's first layers, or `encoder` with a projector) and LoRA adapters on the
    /// generator, or a frozen generator when `lora` is None. Plain modules: call `.train()`
    /// to train them.
    pub fn assemble(
        config: &CompressorConfig,
        generator: Llama,
        encoder: Option<Bert>,
        lora: Option<LoraSettings>,
        device: &Device,
    ) -> Result<Self, WeightError> {
        config
            .validate(generator.layers.len())
            .map_err(WeightError::Config)?;
        let compressor = match (config.compressor_type, encoder) {
            (CompressorType::NLayers, _) => Compressor::from_generator(config, &generator, device),
            (CompressorType::Encoder, Some(bert)) => {
                let room = bert.max_positions();
                let needed = config.chunk_tokens() + config.num_memory_tokens + MAX_QUERY_TOKENS;
                if needed > room {
                    return Err(WeightError::Config(format!(
                        "chunks of {} tokens plus {} memory tokens and the question do not fit \
                         the encoder's {room} positions: lower the memory tokens or the rate",
                        config.chunk_tokens(),
                        config.num_memory_tokens
                    )));
                }
                Compressor::from_encoder(config, bert, generator.hidden_size(), device)
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
}

/// The tokenizers OSCAR needs: the generator's, and the encoder's for an encoder compressor.
pub struct OscarTokenizers {
    pub generator: Tokenizer,
    pub encoder: Option<Tokenizer>,
}

/// One question and its documents, tokenised for the compressor and the generator.
#[derive(Debug, Clone)]
pub struct Encoded {
    /// Per chunk: the compressor's input ids `[query; chunk]`.
    pub chunks: Vec<Vec<u32>>,
    /// Generator ids before and after the memory vectors.
    pub prefix: Vec<u32>,
    pub suffix: Vec<u32>,
    /// Document tokens that the chunks hold (for the compression report).
    pub document_tokens: usize,
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
        for doc in documents {
            let ids = match config.compressor_type {
                CompressorType::NLayers => gen_tok.encode(doc)?,
                CompressorType::Encoder => self.encoder.as_ref().expect("checked").encode(doc)?,
            };
            document_tokens += ids.len();
            for piece in ids.chunks(per_chunk) {
                chunks.push([query.as_slice(), piece, tail.as_slice()].concat());
            }
        }
        Ok(Encoded {
            chunks,
            prefix: gen_tok.encode(&chat_prefix())?,
            suffix: gen_tok.encode(&chat_suffix(question))?,
            document_tokens,
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

/// `[n]` ids -> `[1, n]` tensor.
pub fn ids_tensor(ids: &[u32], device: &Device) -> Tensor<2, Int> {
    let data = TensorData::new(ids.iter().map(|&i| i as i64).collect(), [1, ids.len()]);
    Tensor::from_data(data, device)
}

impl Oscar {
    fn device(&self) -> Device {
        self.generator.embed_tokens.weight.device()
    }

    /// All chunks' memory vectors, in order: `[chunks × L, generator width]`.
    pub fn memory_vectors(&self, encoded: &Encoded) -> Tensor<2> {
        self.memory_vectors_of(&[encoded]).pop().expect("one input")
    }

    /// The memory vectors of several inputs, their chunks compressed together (fewer, larger
    /// batches): one `[chunks_i × L, generator width]` per input.
    pub fn memory_vectors_of(&self, encoded: &[&Encoded]) -> Vec<Tensor<2>> {
        let device = self.device();
        let tokens = encoded
            .iter()
            .flat_map(|e| &e.chunks)
            .map(|ids| {
                self.compressor
                    .embed(&self.generator, ids_tensor(ids, &device))
            })
            .collect();
        let all = self.compressor.compress(tokens);
        let [_, d] = all.dims();
        let l = self.compressor.num_memory_tokens();
        let mut start = 0;
        encoded
            .iter()
            .map(|e| {
                let end = start + e.chunks.len() * l;
                let rows = all.clone().slice([start..end, 0..d]);
                start = end;
                rows
            })
            .collect()
    }

    /// The generator's input embeddings `[1, n, width]`: prefix, memory vectors, suffix, then
    /// `continuation` (teacher-forced answer tokens) when given.
    pub fn prompt_embeds(&self, encoded: &Encoded, continuation: &[u32]) -> Tensor<3> {
        self.prompt_around(encoded, self.memory_vectors(encoded), continuation)
    }

    /// [`Oscar::prompt_embeds`] around memory vectors already computed.
    fn prompt_around(
        &self,
        encoded: &Encoded,
        memory: Tensor<2>,
        continuation: &[u32],
    ) -> Tensor<3> {
        let device = self.device();
        let rest = [encoded.suffix.as_slice(), continuation].concat();
        Tensor::cat(
            vec![
                self.generator.embed(ids_tensor(&encoded.prefix, &device)),
                memory.unsqueeze::<3>(),
                self.generator.embed(ids_tensor(&rest, &device)),
            ],
            1,
        )
    }

    /// Cross-entropy of each answer (ids, ending with `<|im_end|>`) after its compressed
    /// prompt, averaged over the answer's tokens and then over the examples: `[1]`. Only the
    /// answer positions are scored.
    ///
    /// The examples run as one right-padded batch through the compressor and the generator:
    /// causal attention keeps each prompt's rows from seeing the padding after it, and the
    /// weights are packed once per product instead of once per example.
    pub fn answer_loss(&self, examples: &[(&Encoded, &[u32])]) -> Tensor<1> {
        let device = self.device();
        let encoded: Vec<&Encoded> = examples.iter().map(|(e, _)| *e).collect();
        let prompts: Vec<Tensor<3>> = self
            .memory_vectors_of(&encoded)
            .into_iter()
            .zip(examples)
            .map(|(memory, (e, answer))| self.prompt_around(e, memory, &answer[..answer.len() - 1]))
            .collect();
        let lens: Vec<usize> = prompts.iter().map(|p| p.dims()[1]).collect();
        let n = lens.iter().copied().max().unwrap_or(0);
        let d = self.generator.hidden_size();
        let padded = prompts
            .into_iter()
            .map(|p| match n - p.dims()[1] {
                0 => p,
                pad => Tensor::cat(vec![p, Tensor::zeros([1, pad, d], &device)], 1),
            })
            .collect();
        let mut cache = KvCache::new(self.generator.layers.len());
        let hidden =
            self.generator
                .forward_embeds(Tensor::cat(padded, 0), &mut cache, None, |_, _| {});
        // Position t predicts token t + 1: the last `a` positions of a prompt predict its answer.
        let rows = examples
            .iter()
            .zip(&lens)
            .enumerate()
            .map(|(i, ((_, answer), &len))| {
                let a = answer.len();
                hidden
                    .clone()
                    .slice([i..i + 1, len - a..len, 0..d])
                    .reshape([a, d])
            })
            .collect();
        let rows: Tensor<2> = Tensor::cat(rows, 0);
        let total = rows.dims()[0];
        let logits = self.generator.logits(rows.unsqueeze::<3>());
        let log_probs = log_softmax(logits.reshape([total, self.generator.vocab_size()]), 1);
        let (targets, weights): (Vec<i64>, Vec<f32>) = examples
            .iter()
            .flat_map(|(_, answer)| {
                let w = 1.0 / (answer.len() * examples.len()) as f32;
                answer.iter().map(move |&t| (t as i64, w))
            })
            .unzip();
        let targets = Tensor::<1, Int>::from_data(TensorData::new(targets, [total]), &device);
        let weights = Tensor::<1>::from_data(TensorData::new(weights, [total]), &device);
        let picked = log_probs
            .gather(1, targets.reshape([total, 1]))
            .reshape([total]);
        (picked * weights).sum().neg().reshape([1])
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

    /// Answers several questions at once ([`generate_batch`]): ids per question.
    pub async fn answer_batch(
        &self,
        encoded: &[Encoded],
        stop_ids: &[u32],
        config: &GenerationConfig,
    ) -> Result<Vec<Vec<u32>>, ExecutionError> {
        let prompts = encoded.iter().map(|e| self.prompt_embeds(e, &[])).collect();
        generate_batch(&self.generator, prompts, stop_ids, config).await
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
        let mut parts = Vec::new();
        if !rest.is_empty() {
            parts.push(self.generator.embed(ids_tensor(rest, &device)));
        }
        parts.push(self.memory_vectors(encoded).unsqueeze::<3>());
        parts.push(self.generator.embed(ids_tensor(&encoded.suffix, &device)));
        let x = Tensor::cat(parts, 1);
        let hidden = self
            .generator
            .forward_embeds(x, &mut cache, None, |_, _| {});
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
