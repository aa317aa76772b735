//! What the fuzz targets share: a tiny OSCAR and valid checkpoint files written from it, which
//! the fuzzed bytes damage (so the targets reach deep into the formats without binary seeds).

use scaledown_model::burn::prelude::Device;
use scaledown_model::burn::module::Module;
use scaledown_model::burn::tensor::read_sync;
use scaledown_model::checkpoint::{trainable_to_safetensors, with_path_param_ids};
use scaledown_model::compressor::{CompressorConfig, CompressorType, Readout};
use scaledown_model::llama::LlamaConfig;
use scaledown_model::oscar::{Encoded, LoraSettings, Oscar};
use scaledown_model::training::{TrainExample, TrainSettings, Trainer};
use std::sync::OnceLock;

pub fn settings() -> TrainSettings {
    TrainSettings {
        compressor_lr: 1e-3,
        memory_lr: 1e-3,
        generator_lr: 1e-3,
        weight_decay: 0.1,
        warmup_steps: 1,
        total_steps: 10,
        max_grad_norm: 1.0,
        rerank_weight: 0.0,
        distill_weight: 0.0,
    }
}

/// A tiny OSCAR (a 1-layer pooled compressor, LoRA r 4 on a 2-layer Llama).
pub fn model() -> &'static Oscar {
    static MODEL: OnceLock<Oscar> = OnceLock::new();
    MODEL.get_or_init(|| {
        let device = Device::flex();
        let config = CompressorConfig {
            compressor_type: CompressorType::NLayers,
            num_layers: 1,
            num_memory_tokens: 2,
            compression_rate: 4,
            projector: false,
            rerank: false,
            readout: Readout::Pooled,
        };
        let lora = Some(LoraSettings {
            rank: 4,
            alpha: 8.0,
        });
        let generator = LlamaConfig::tiny(40).init(&device);
        let oscar = Oscar::assemble(&config, generator, None, lora, &device).unwrap();
        with_path_param_ids(oscar)
    })
}

/// `trainable.safetensors` and `optimizer.safetensors` of [`model`] after one training step.
pub fn checkpoint_files() -> &'static (Vec<u8>, Vec<u8>) {
    static FILES: OnceLock<(Vec<u8>, Vec<u8>)> = OnceLock::new();
    FILES.get_or_init(|| {
        let example = TrainExample {
            encoded: Encoded {
                chunks: vec![vec![1, 2, 3, 4, 5, 6]],
                query_tokens: 0,
                tail_tokens: 0,
                prefix: vec![10, 11],
                suffix: vec![12, 13],
                document_tokens: 6,
                chunk_documents: vec![0],
            },
            answer: vec![20, 21],
            teacher_scores: vec![],
            teacher_tokens: vec![],
        };
        let mut trainer = Trainer::new(settings());
        let (trained, stats) = read_sync(trainer.step(model().clone().train(), &[&example]));
        stats.unwrap();
        (
            trainable_to_safetensors(&trained),
            trainer.optimizer_state().unwrap(),
        )
    })
}

/// `valid` damaged as `data` says: its first two bytes give the length kept (as a share of
/// `valid`), then each 3-byte group XORs one byte (a 16-bit position scaled to the file).
pub fn damaged(valid: &[u8], data: &[u8]) -> Vec<u8> {
    let Some((head, edits)) = data.split_first_chunk::<2>() else {
        return valid.to_vec();
    };
    let keep = (u16::from_le_bytes(*head) as usize * (valid.len() + 1)) >> 16;
    let mut out = valid[..keep.min(valid.len())].to_vec();
    if out.is_empty() {
        return out;
    }
    for edit in edits.chunks_exact(3) {
        let at = (u16::from_le_bytes([edit[0], edit[1]]) as usize * out.len()) >> 16;
        out[at] ^= edit[2];
    }
    out
}
