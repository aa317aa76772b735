//! Checkpoint folders: `setup.json` (how to rebuild the model: compressor shapes, generator
//! and encoder files, LoRA), `trainable.safetensors` (compressor, memory tokens, projector, LoRA
//! factors) and `state.json` (training progress, for `--resume`). A checkpoint is written into
//! a temporary folder and renamed into place, so a crash never leaves half of one.

use crate::fsutil::{read_text, write_atomic};
use crate::models;
use anyhow::{Context, Result, bail};

use scaledown_model::burn::prelude::*;
use scaledown_model::checkpoint::{load_trainable, trainable_to_safetensors};
use scaledown_model::compressor::CompressorType;
use scaledown_model::llama::Llama;
use scaledown_model::oscar::{LoraSettings, Oscar, OscarTokenizers};
use serde::Serialize;
use std::path::{Path, PathBuf};

pub const LORA_RANK: usize = 16;
pub const LORA_ALPHA: f64 = 32.0;

pub use scaledown_model::checkpoint::OscarSetup;

/// The built model and what comes with it.
pub struct Loaded {
    pub oscar: Oscar,
    /// The generator as published (no LoRA): the uncompressed baseline and the teacher.
    pub base_generator: Llama,
    pub tokenizers: OscarTokenizers,
}

/// Builds the model of `setup` on `device` (plain; call `.train()` for training), with fresh
/// compressor weights.
pub fn build(setup: &OscarSetup, device: &Device) -> Result<Loaded> {
    let g = models::load_generator(&setup.generator, device)?;
    let (encoder, encoder_tokenizer) = match setup.compressor.compressor_type {
        CompressorType::NLayers => (None, None),
        CompressorType::Encoder => {
            let path = setup
                .encoder
                .as_ref()
                .context("the encoder compressor needs an encoder")?;
            let (bert, tok) = models::load_encoder(path, device)?;
            (Some(bert), Some(tok))
        }
    };
    let base_generator = g.model.clone();
    let lora = setup.lora_rank.map(|rank| LoraSettings {
        rank,
        alpha: setup.lora_alpha,
    });
    let oscar = Oscar::assemble(&setup.compressor, g.model, encoder, lora, device)?;
    Ok(Loaded {
        oscar,
        base_generator,
        tokenizers: OscarTokenizers {
            generator: g.tokenizer,
            encoder: encoder_tokenizer,
        },
    })
}

pub fn read_setup(dir: &Path) -> Result<OscarSetup> {
    let path = dir.join("setup.json");
    serde_json::from_str(&read_text(&path)?)
        .with_context(|| format!("{}: not a checkpoint setup", path.display()))
}

/// Rebuilds a checkpoint's model: the setup's files plus its trained tensors.
pub fn load(dir: &Path, device: &Device) -> Result<(OscarSetup, Loaded)> {
    if !dir.join("trainable.safetensors").exists() {
        bail!(
            "{} is not a checkpoint folder (no trainable.safetensors)",
            dir.display()
        );
    }
    let setup = read_setup(dir)?;
    let mut loaded = build(&setup, device)?;
    let path = dir.join("trainable.safetensors");
    let bytes = crate::fsutil::read(&path)?;
    loaded.oscar = load_trainable(loaded.oscar, &bytes)
        .with_context(|| format!("loading {}", path.display()))?;
    Ok((setup, loaded))
}

/// Writes `dir` (e.g. `checkpoints/step-50`) atomically: a hidden temporary folder, renamed.
pub fn save(dir: &Path, setup: &OscarSetup, model: &Oscar, state: &impl Serialize) -> Result<()> {
    let parent = dir.parent().context("checkpoint folder has no parent")?;
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let name = dir
        .file_name()
        .context("checkpoint folder has no name")?
        .to_string_lossy();
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let write = || -> Result<()> {
        write_atomic(
            &tmp.join("setup.json"),
            serde_json::to_string_pretty(setup)?.as_bytes(),
        )?;
        write_atomic(
            &tmp.join("trainable.safetensors"),
            &trainable_to_safetensors(model),
        )?;
        write_atomic(
            &tmp.join("state.json"),
            serde_json::to_string_pretty(state)?.as_bytes(),
        )?;
        Ok(())
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let old = parent.join(format!(".{name}.old-{}", std::process::id()));
    if dir.exists() {
        std::fs::rename(dir, &old)?;
    }
    std::fs::rename(&tmp, dir)
        .with_context(|| format!("moving checkpoint into {}", dir.display()))?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}

/// The checkpoint that got furthest under `checkpoints/` (`pretrain-K`, `pretrained`,
/// `step-K` and `final` folders), by the pretraining and training steps their `state.json`
/// records: (training step, folder).
pub fn latest(checkpoints: &Path) -> Option<(usize, PathBuf)> {
    std::fs::read_dir(checkpoints)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let known = ["final", "pretrained"].contains(&name.as_str())
                || name.starts_with("step-")
                || name.starts_with("pretrain-");
            if !known {
                return None;
            }
            let dir = e.path();
            let state: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(dir.join("state.json")).ok()?)
                    .ok()?;
            let step = state["step"].as_u64()? as usize;
            let pretrain_step = state["pretrain_step"].as_u64().unwrap_or(0) as usize;
            dir.join("trainable.safetensors")
                .exists()
                .then_some(((pretrain_step, step), dir))
        })
        .max_by_key(|(k, _)| *k)
        .map(|((_, step), dir)| (step, dir))
}

/// Keeps the newest `keep` folders named `{prefix}K`.
pub fn prune(checkpoints: &Path, prefix: &str, keep: usize) {
    let Ok(entries) = std::fs::read_dir(checkpoints) else {
        return;
    };
    let mut steps: Vec<(usize, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let k = e
                .file_name()
                .to_string_lossy()
                .strip_prefix(prefix)?
                .parse()
                .ok()?;
            Some((k, e.path()))
        })
        .collect();
    steps.sort();
    let n = steps.len();
    for (_, p) in steps.into_iter().take(n.saturating_sub(keep)) {
        let _ = std::fs::remove_dir_all(p);
    }
}
