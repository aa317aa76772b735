#![no_main]
//! A checkpoint's `optimizer.safetensors` (AdamW's state for `--resume`): a valid one,
//! truncated and with bytes flipped as the input says (and the raw input too), is loaded or
//! refused, never a panic that escapes.
use libfuzzer_sys::fuzz_target;
use scaledown_fuzz::{checkpoint_files, damaged, settings};
use scaledown_model::training::Trainer;

fuzz_target!(|data: &[u8]| {
    let mut trainer = Trainer::new(settings());
    let _ = trainer.load_optimizer_state(data);
    let bytes = damaged(&checkpoint_files().1, data);
    let _ = trainer.load_optimizer_state(&bytes);
});
