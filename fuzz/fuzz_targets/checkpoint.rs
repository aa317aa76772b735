#![no_main]
//! The files of a checkpoint folder: any bytes as `setup.json` and `manifest.json` parse or
//! are refused; a valid `trainable.safetensors`, truncated and with bytes flipped as the input
//! says (and the raw input too), is applied to a tiny model or refused (wrong names, shapes,
//! dtypes, offsets), never a panic.
use libfuzzer_sys::fuzz_target;
use scaledown_fuzz::{checkpoint_files, damaged, model};
use scaledown_model::checkpoint::{Manifest, OscarSetup, load_trainable};

fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<OscarSetup>(data);
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(manifest) = Manifest::from_json(text)
    {
        let _ = manifest.check("trainable.safetensors", data);
    }
    let _ = load_trainable(model().clone(), data);
    let bytes = damaged(&checkpoint_files().0, data);
    let _ = load_trainable(model().clone(), &bytes);
});
