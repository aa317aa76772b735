//! What the fuzz targets share: a tiny OSCAR and valid checkpoint files written from it, which
//! the fuzzed bytes damage (so the targets reach deep into the formats without binary seeds).

use scaledown_model::burn::module::Module;
use scaledown_model::burn::tensor::read_sync;
use scaledown_model::checkpoint::{trainable_to_safetensors, with_path_param_ids};
use scaledown_model::compressor::{CompressorType, Readout};
use scaledown_model::oscar::Oscar;
use scaledown_model::tiny;
use scaledown_model::training::{TrainSettings, Trainer};
use std::sync::OnceLock;

/// A tiny OSCAR (a 1-layer pooled compressor, LoRA r 4 on a 2-layer Llama): the model crate's
/// shared fixture.
pub fn model() -> &'static Oscar {
    static MODEL: OnceLock<Oscar> = OnceLock::new();
    MODEL.get_or_init(|| {
        let config = tiny::compressor_config(CompressorType::NLayers, Readout::Pooled);
        with_path_param_ids(tiny::oscar(&config, 0))
    })
}

/// The fixture's optimiser settings over 10 steps.
pub fn settings() -> TrainSettings {
    tiny::settings(10)
}

/// `trainable.safetensors` and `optimizer.safetensors` of [`model`] after one training step.
pub fn checkpoint_files() -> &'static (Vec<u8>, Vec<u8>) {
    static FILES: OnceLock<(Vec<u8>, Vec<u8>)> = OnceLock::new();
    FILES.get_or_init(|| {
        let mut trainer = Trainer::new(settings());
        let (trained, stats) =
            read_sync(trainer.step(model().clone().train(), &[&tiny::example()]));
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
