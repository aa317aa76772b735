//! The one tiny random OSCAR that the unit tests, the parser smoke test, the fuzz targets and
//! the browser test share: the real model code on a 40-token vocabulary (a 2-layer Llama, a
//! 1-layer compressor, chunks of 8 tokens read as 2 memory vectors at rate 4, LoRA r 4).

use crate::bert::BertConfig;
use crate::compressor::{CompressorConfig, CompressorType, Readout};
use crate::encoder::Encoder;
use crate::example::{Encoded, TrainExample};
use crate::llama::Llama;
#[cfg(feature = "flex")]
use crate::llama::LlamaConfig;
use crate::oscar::{LoraSettings, Oscar, OscarTokenizers};
use crate::pretraining::{AUTO_ENCODE_INSTRUCTION, CONTINUE_INSTRUCTION};
use crate::tokenizer::{Tokenizer, word_level_json, words_of};
use crate::training::{LossWeights, TrainSettings};
#[cfg(feature = "flex")]
use burn::prelude::*;

/// Tokens of the tiny generator's (and encoder's) vocabulary.
pub const VOCAB: usize = 40;

/// The tiny adapters: small enough to train in a few steps.
pub const LORA: LoraSettings = LoraSettings {
    rank: 4,
    alpha: 8.0,
};

/// One compressor layer, 2 memory vectors per chunk at rate 4 (chunks of 8 tokens), no
/// reranking head; a projector wherever the real runs have one.
pub fn compressor_config(compressor_type: CompressorType, readout: Readout) -> CompressorConfig {
    CompressorConfig {
        compressor_type,
        num_layers: 1,
        num_memory_tokens: 2,
        compression_rate: 4,
        projector: CompressorConfig::needs_projector(compressor_type, readout),
        rerank: false,
        readout,
        ..CompressorConfig::default()
    }
    .with_measured_pool_score_scale()
}

/// A tiny OSCAR of `config` on the plain device, every random value drawn from `seed`.
#[cfg(feature = "flex")]
pub fn oscar(config: &CompressorConfig, seed: u64) -> Oscar {
    let device = Device::flex();
    device.seed(seed);
    oscar_over(LlamaConfig::tiny(VOCAB).init(&device), config)
}

/// A fresh compressor of `config` (over a tiny random BERT for the encoder type) and tiny LoRA
/// adapters over `generator`, on the generator's device.
pub fn oscar_over(generator: Llama, config: &CompressorConfig) -> Oscar {
    let encoder = (config.compressor_type == CompressorType::Encoder)
        .then(|| Encoder::Bert(BertConfig::tiny(VOCAB).init(&generator.device())));
    assemble(generator, config, encoder)
}

/// [`oscar_over`] with a given encoder (for an encoder compressor).
pub fn oscar_with_encoder(generator: Llama, config: &CompressorConfig, encoder: Encoder) -> Oscar {
    assemble(generator, config, Some(encoder))
}

fn assemble(generator: Llama, config: &CompressorConfig, encoder: Option<Encoder>) -> Oscar {
    let device = generator.device();
    Oscar::assemble(config, generator, encoder, Some(LORA), &device)
        .expect("the tiny configs are valid")
}

/// A question over two one-chunk documents (6 and 2 document tokens) with a 4-token answer.
pub fn example() -> TrainExample {
    TrainExample::new(
        Encoded {
            query_tokens: 0,
            tail_tokens: 0,
            chunks: vec![vec![1, 2, 3, 4, 5, 6], vec![1, 2, 7, 8]],
            prefix: vec![10, 11],
            suffix: vec![12, 13, 14],
            document_tokens: 8,
            chunk_documents: vec![0, 1],
        },
        vec![20, 21, 22, 23],
    )
}

/// Questions of 1, 2 and 3 chunks (`chunk(c)` each) in [`example`]'s prompt: prompts of
/// different lengths, for the batching and caching tests.
pub fn questions_of_1_2_3_chunks(chunk: impl Fn(u32) -> Vec<u32>) -> Vec<Encoded> {
    [1u32, 2, 3]
        .iter()
        .map(|&chunks| Encoded {
            chunks: (0..chunks).map(&chunk).collect(),
            chunk_documents: (0..chunks as usize).collect(),
            ..example().encoded
        })
        .collect()
}

/// `model` (a plain one) after `steps` optimiser steps on [`example`], scheduled over
/// `steps`, in training mode.
#[cfg(feature = "flex")]
pub fn trained(model: Oscar, steps: usize) -> Oscar {
    let mut trainer = crate::training::Trainer::new(settings(steps));
    let mut model = model.train();
    for _ in 0..steps {
        let (m, stats) = burn::tensor::read_sync(trainer.step(model, &[&example()]));
        model = m;
        stats.expect("a finite loss");
    }
    model
}

/// AdamW fast enough to move the tiny model within `steps` steps.
pub fn settings(steps: usize) -> TrainSettings {
    TrainSettings {
        compressor_lr: 3e-3,
        memory_lr: 3e-3,
        generator_lr: 3e-3,
        weight_decay: 0.1,
        warmup_steps: 2,
        total_steps: steps,
        max_grad_norm: 1.0,
        loss: LossWeights::OSCAR,
    }
}

/// Word-level tokenizers (no encoder tokenizer) that know every word of `text`, of the
/// pretraining instructions and of the prompt's labels: for the pretraining tests over
/// real-looking text.
pub fn word_tokenizers(text: &str) -> OscarTokenizers {
    let words =
        format!("{AUTO_ENCODE_INSTRUCTION} {CONTINUE_INSTRUCTION} question document {text}");
    let json = word_level_json(words_of(&words).iter().map(String::as_str));
    OscarTokenizers {
        generator: Tokenizer::from_json(json.as_bytes()).expect("a word-level tokenizer"),
        encoder: None,
    }
}
