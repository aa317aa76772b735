//! The measured work, built from real questions, and how this project runs it.

use anyhow::{Context, Result, anyhow, bail};
use scaledown_data::{Dataset, Example, parse_source};
use scaledown_model::bert::Bert;
use scaledown_model::burn::prelude::*;
use scaledown_model::burn::tensor::read_sync;
use scaledown_model::compressor::CompressorConfig;
use scaledown_model::example::{Encoded, TrainExample};
use scaledown_model::generation::{
    GenerationConfig, PrefixCache, argmax, generate_after, generate_batch,
};
use scaledown_model::llama::{KvCache, Llama, PromptInput};
use scaledown_model::oscar::{LoraSettings, Oscar, OscarTokenizers};
use scaledown_model::pretraining::PretrainingSet;
use scaledown_model::questions::documents_of;
use scaledown_model::tokenizer::{Tokenizer, chat_prompt};
use scaledown_model::training::{TrainSettings, Trainer};
use serde_json::{Value, json};
use std::path::Path;
use std::time::Instant;

pub const LORA: LoraSettings = LoraSettings::OSCAR;

pub enum Work {
    Prefill(Vec<u32>),
    /// Times `tokens` greedy decode steps after the prompt.
    Decode {
        prompt: Vec<u32>,
        tokens: usize,
    },
    /// Exactly `tokens` greedy tokens per question, from the full-text prompt; one question
    /// at a time, or all in one left-padded batch.
    Answer {
        prompts: Vec<Vec<u32>>,
        tokens: usize,
        batched: bool,
        /// Leading tokens that every prompt shares (the chat's system turn), whose KV cache
        /// this side computes once; llama.cpp may reuse its cache that far and no further.
        shared_prefix: usize,
    },
    /// The same from the compressed prompt.
    AnswerCompressed {
        queries: Vec<Encoded>,
        tokens: usize,
        batched: bool,
    },
    /// One optimisation step over the batch: the compressor and the generator's LoRA
    /// (question answering), or the compressor alone over the frozen generator (pretraining).
    TrainStep {
        batch: Vec<TrainExample>,
        generator: Trained,
    },
    /// MiniLM sentence embeddings of a batch of equal-length inputs.
    Encode(Vec<Vec<u32>>),
}

/// What a training step updates besides the compressor.
#[derive(Clone, Copy)]
pub enum Trained {
    /// LoRA factors on the generator (question answering).
    Lora,
    /// Nothing: the generator is frozen (pretraining).
    Frozen,
}

fn encoded_json(e: &Encoded) -> Value {
    json!({
        "prefix": e.prefix, "chunks": e.chunks, "query_tokens": e.query_tokens,
        "suffix": e.suffix,
    })
}

impl Work {
    /// The same work for bench/pytorch_bench.py.
    pub fn to_json(&self) -> Value {
        match self {
            Work::Prefill(ids) => json!({"kind": "prefill", "ids": ids}),
            Work::Decode { prompt, tokens } => {
                json!({"kind": "decode", "prompt": prompt, "tokens": tokens})
            }
            Work::Answer {
                prompts,
                tokens,
                batched,
                shared_prefix,
            } => json!({
                "kind": if *batched { "answer_batch" } else { "answer" },
                "queries": prompts.iter().map(|ids| json!({"ids": ids})).collect::<Vec<_>>(),
                "tokens": tokens,
                "shared_prefix": shared_prefix,
            }),
            Work::AnswerCompressed {
                queries,
                tokens,
                batched,
            } => json!({
                "kind": if *batched { "answer_compressed_batch" } else { "answer_compressed" },
                "queries": queries.iter().map(encoded_json).collect::<Vec<_>>(),
                "tokens": tokens,
            }),
            Work::TrainStep { batch, generator } => json!({
                "kind": "train_step",
                "generator": match generator {
                    Trained::Lora => "lora",
                    Trained::Frozen => "frozen",
                },
                "examples": batch.iter().map(|ex| {
                    let mut v = encoded_json(&ex.encoded);
                    v["answer"] = json!(ex.answer);
                    v
                }).collect::<Vec<_>>(),
            }),
            Work::Encode(batch) => json!({"kind": "encode", "batch": batch}),
        }
    }
}

/// Deterministic token ids, the same on both sides.
pub fn synthetic_ids(n: usize) -> Vec<u32> {
    (0..n as u32).map(|i| (7 * i + 11) % 40000 + 100).collect()
}

/// The first `n` questions of a `../shared/data` JSON Lines file.
pub fn questions(dir: &Path, dataset: Dataset, file: &str, n: usize) -> Result<Vec<Example>> {
    let path = dir.join(file);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading {} (--data-dir)", path.display()))?;
    let parsed = parse_source(dataset, &path.display().to_string(), &text)?;
    if parsed.examples.len() < n {
        bail!(
            "{}: {} questions, {n} needed",
            path.display(),
            parsed.examples.len()
        );
    }
    Ok(parsed.examples.into_iter().take(n).collect())
}

/// Full-text prompts and compressed inputs of `examples`, answered one by one or `batched`.
pub fn answer_work(
    tokenizers: &OscarTokenizers,
    examples: &[Example],
    tokens: usize,
    batched: bool,
) -> Result<(Work, Work)> {
    let config = bench_compressor();
    let mut prompts = Vec::new();
    let mut queries = Vec::new();
    for ex in examples {
        let documents = documents_of(ex);
        let user = scaledown_model::oscar::full_text_user_turn(&ex.question, &documents);
        prompts.push(tokenizers.generator.encode(&chat_prompt(&user))?);
        queries.push(tokenizers.encode(&config, &ex.question, &documents)?);
    }
    let prefix = tokenizers.shared_prefix()?;
    let shared_prefix = if prompts.iter().all(|p| p.starts_with(&prefix)) {
        prefix.len()
    } else {
        0
    };
    Ok((
        Work::Answer {
            prompts,
            tokens,
            batched,
            shared_prefix,
        },
        Work::AnswerCompressed {
            queries,
            tokens,
            batched,
        },
    ))
}

/// The compressor that both sides run: the pooled layer-5 readout at rate 16
/// (bench/pytorch_bench.py's `Pooled` is its twin). Not `train`'s default (k = 20, rate 4),
/// which does about four times the compressor's work per chunk.
pub fn bench_compressor() -> CompressorConfig {
    CompressorConfig::oscar()
}

/// A training batch of real questions with their gold answers.
pub fn train_work(tokenizers: &OscarTokenizers, examples: &[Example]) -> Result<Work> {
    let config = bench_compressor();
    let batch = examples
        .iter()
        .map(|ex| Ok(tokenizers.answer_example(&config, ex, &ex.answers[0])?))
        .collect::<Result<Vec<_>>>()?;
    Ok(Work::TrainStep {
        batch,
        generator: Trained::Lora,
    })
}

/// A pretraining batch: `n` auto-encoding windows of the questions' passages, the fullest
/// first (128 tokens with real weights).
pub fn pretrain_work(tokenizers: &OscarTokenizers, examples: &[Example], n: usize) -> Result<Work> {
    let config = bench_compressor();
    let mut set = PretrainingSet::default();
    for ex in examples {
        for document in documents_of(ex) {
            set.add_passage(tokenizers, &config, &document)?;
        }
    }
    let mut windows = set.auto_encoding;
    if windows.len() < n {
        bail!(
            "{} pretraining windows among the questions' passages, {n} needed",
            windows.len()
        );
    }
    // Stable: equally full windows keep the passages' order.
    windows.sort_by_key(|ex| std::cmp::Reverse(ex.encoded.document_tokens));
    windows.truncate(n);
    Ok(Work::TrainStep {
        batch: windows,
        generator: Trained::Frozen,
    })
}

/// `batch` MiniLM inputs of exactly `len` tokens (`[CLS] text… [SEP]`) from the documents.
pub fn encode_work(
    tokenizer: &Tokenizer,
    examples: &[Example],
    batch: usize,
    len: usize,
) -> Result<Work> {
    let sep = tokenizer
        .token_to_id("[SEP]")
        .ok_or_else(|| anyhow!("the MiniLM tokenizer has no [SEP]"))?;
    let mut inputs = Vec::new();
    for ex in examples.iter().cycle().take(examples.len() * batch) {
        let mut ids = tokenizer.encode_with(&documents_of(ex).join("\n"), true)?;
        if ids.len() < len {
            continue;
        }
        ids.truncate(len - 1);
        ids.push(sep);
        inputs.push(ids);
        if inputs.len() == batch {
            return Ok(Work::Encode(inputs));
        }
    }
    bail!("no {batch} documents of {len} MiniLM tokens among the questions")
}

/// This project's side: the models, loaded once.
pub struct Ours {
    device: Device,
    generator: Llama,
    prefix: PrefixCache,
    oscar: Oscar,
    /// Question answering (LoRA) and pretraining (frozen generator).
    training: Training,
    pretraining: Training,
    minilm: Option<Bert>,
}

/// A model in training with its trainer.
struct Training {
    /// Taken out for each step (the optimizer consumes and returns it).
    model: Option<Oscar>,
    trainer: Trainer,
}

impl Training {
    fn step(&mut self, batch: &[TrainExample]) -> Result<()> {
        let model = self
            .model
            .take()
            .expect("the training model is back after each step");
        let refs: Vec<&TrainExample> = batch.iter().collect();
        let (model, stats) = read_sync(self.trainer.step(model, &refs));
        self.model = Some(model);
        stats?;
        Ok(())
    }
}

impl Ours {
    pub fn new(
        generator: Llama,
        tokenizers: &OscarTokenizers,
        minilm: Option<Bert>,
        device: &Device,
    ) -> Result<Self> {
        let config = bench_compressor();
        let training =
            Oscar::assemble(&config, generator.clone(), None, Some(LORA), device)?.train();
        let pretraining = Oscar::assemble(&config, generator.clone(), None, None, device)?.train();
        // Answering as a user's run does: the plain generator and the compressed model held in
        // their 4- and 8-bit blocks (`generate`, `ask`, `eval`, `serve`).
        let oscar =
            Oscar::assemble(&config, generator.clone(), None, None, device)?.into_answering();
        let generator = generator.in_blocks();
        // A schedule that stays at the full rates over the steps measured.
        let settings = TrainSettings {
            warmup_steps: 1,
            ..TrainSettings::oscar(5e-5, 1e-4, 1_000_000)
        };
        let pretrainer = Trainer::new(TrainSettings {
            compressor_lr: 1e-4,
            ..settings.clone()
        });
        let prefix = PrefixCache::new(&generator, &tokenizers.shared_prefix()?, device);
        Ok(Self {
            device: device.clone(),
            generator,
            prefix,
            oscar,
            training: Training {
                model: Some(training),
                trainer: Trainer::new(settings),
            },
            pretraining: Training {
                model: Some(pretraining),
                trainer: pretrainer,
            },
            minilm,
        })
    }

    fn ids(&self, ids: &[u32], batch: usize) -> Tensor<2, Int> {
        let v = ids.iter().map(|&i| i as i64).collect();
        Tensor::from_data(TensorData::new(v, [batch, ids.len() / batch]), &self.device)
    }

    /// One run of `work`: seconds.
    pub fn run(&mut self, work: &Work) -> Result<f64> {
        let greedy = |tokens| GenerationConfig {
            max_new_tokens: tokens,
            ..Default::default()
        };
        let mut start = Instant::now();
        match work {
            Work::Prefill(ids) => {
                let mut cache = KvCache::new(self.generator.layers.len());
                let logits = self.generator.forward_last(self.ids(ids, 1), &mut cache);
                let _ = logits.into_data(); // waits for the backend
            }
            Work::Decode { prompt, tokens } => {
                let mut cache = KvCache::new(self.generator.layers.len());
                let logits = self.generator.forward_last(self.ids(prompt, 1), &mut cache);
                let _ = logits.into_data();
                start = Instant::now();
                let mut next = prompt[prompt.len() - 1];
                for _ in 0..*tokens {
                    let logits = self
                        .generator
                        .forward_last(self.ids(&[next], 1), &mut cache);
                    let values = logits.into_data().convert::<f32>().try_into_vec::<f32>();
                    next = argmax(&values.map_err(|e| anyhow!("reading logits: {e:?}"))?);
                }
            }
            Work::Answer {
                prompts,
                tokens,
                batched: false,
                ..
            } => {
                for ids in prompts {
                    read_sync(generate_after(
                        &self.generator,
                        &self.prefix,
                        ids,
                        &[],
                        &greedy(*tokens),
                        &self.device,
                    ))?;
                }
            }
            Work::Answer {
                prompts,
                tokens,
                batched: true,
                ..
            } => {
                let embeds = prompts
                    .iter()
                    .map(|p| PromptInput::tokens(self.generator.embed(self.ids(p, 1))))
                    .collect();
                read_sync(generate_batch(
                    &self.generator,
                    embeds,
                    &[],
                    &greedy(*tokens),
                ))?;
            }
            Work::AnswerCompressed {
                queries,
                tokens,
                batched: false,
            } => {
                for encoded in queries {
                    read_sync(self.oscar.answer_after(
                        &self.prefix,
                        encoded,
                        &[],
                        &greedy(*tokens),
                    ))?;
                }
            }
            Work::AnswerCompressed {
                queries,
                tokens,
                batched: true,
            } => {
                read_sync(self.oscar.answer_batch(queries, &[], &greedy(*tokens)))?;
            }
            Work::TrainStep { batch, generator } => match generator {
                Trained::Lora => self.training.step(batch)?,
                Trained::Frozen => self.pretraining.step(batch)?,
            },
            Work::Encode(batch) => {
                let bert = self
                    .minilm
                    .as_ref()
                    .ok_or_else(|| anyhow!("MiniLM is not loaded"))?;
                let flat: Vec<u32> = batch.concat();
                let ids = self.ids(&flat, batch.len());
                let mask = ids.ones_like();
                let _ = Bert::pool(bert.forward(ids, mask.clone()), mask).into_data();
            }
        }
        Ok(start.elapsed().as_secs_f64())
    }
}
