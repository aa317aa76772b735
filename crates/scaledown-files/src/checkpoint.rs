//! Checkpoint folders: `setup.json` (how to rebuild the model: compressor shapes, generator
//! and encoder files, LoRA), `recipe.json` (the run's whole recipe), `trainable.safetensors`
//! (compressor, memory tokens, projector, LoRA factors), `state.json` (training progress, for `--resume`) and `manifest.json` (each
//! file's SHA-256 and size, written last). A checkpoint is written into a temporary folder and
//! renamed into place, so a crash never leaves half of one; a file damaged later is refused
//! when read, by name.

use crate::fs::{read_text, write_atomic};
use crate::models;
use anyhow::{Context, Result, bail};

use scaledown_model::burn::prelude::*;
use scaledown_model::checkpoint::{Manifest, trainable_to_safetensors};
use scaledown_model::compressor::CompressorType;
use scaledown_model::oscar::Oscar;
use scaledown_model::recipe::RunConfig;
use scaledown_model::report::TrainState;
use serde::Serialize;
use std::path::{Path, PathBuf};

pub use scaledown_model::checkpoint::OscarSetup;

pub use scaledown_model::pipeline::Pipeline;

/// Builds the model of `setup` on `device` (plain; call `.train()` for training), with fresh
/// compressor weights.
pub fn build(setup: &OscarSetup, device: &Device) -> Result<Pipeline> {
    build_with(setup, device, None)
}

/// [`build`] with a checkpoint's trained tensors when given.
fn build_with(setup: &OscarSetup, device: &Device, trainable: Option<&[u8]>) -> Result<Pipeline> {
    let g = models::load_generator(&setup.generator, device)?;
    let encoder = match setup.compressor.compressor_type {
        CompressorType::NLayers => None,
        CompressorType::Encoder => {
            let path = setup
                .encoder
                .as_ref()
                .context("the encoder compressor needs an encoder")?;
            Some(models::load_compressor_encoder(path, device)?)
        }
    };
    let mut pipeline = Pipeline::assemble(setup, g.model, g.tokenizer, encoder, trainable)?;
    // Never trained: it answers from the full text, held in its 4- and 8-bit blocks only.
    pipeline.base_generator = pipeline.base_generator.in_blocks();
    Ok(pipeline)
}

pub fn read_setup(dir: &Path) -> Result<OscarSetup> {
    let path = dir.join(SETUP_FILE);
    serde_json::from_slice(&read_checked(dir, SETUP_FILE)?)
        .with_context(|| format!("{}: not a checkpoint setup", path.display()))
}

/// The checkpoint's `manifest.json`; None for a folder written before manifests existed.
fn manifest(dir: &Path) -> Result<Option<Manifest>> {
    let path = dir.join(Manifest::FILE);
    if !path.exists() {
        return Ok(None);
    }
    Manifest::from_json(&read_text(&path)?)
        .map(Some)
        .map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))
}

/// The bytes of `dir/name`, refused (naming the file) when they are not what the
/// checkpoint's manifest records.
pub fn read_checked(dir: &Path, name: &str) -> Result<Vec<u8>> {
    let bytes = crate::fs::read(&dir.join(name))?;
    if let Some(m) = manifest(dir)? {
        m.check(name, &bytes)
            .map_err(|e| anyhow::anyhow!("checkpoint {} is damaged: {e}", dir.display()))?;
    }
    Ok(bytes)
}

/// Every file of the checkpoint against its manifest (a folder without one passes).
pub fn verify(dir: &Path) -> Result<()> {
    let Some(m) = manifest(dir)? else {
        return Ok(());
    };
    for name in m.files.keys() {
        read_checked(dir, name)?;
    }
    Ok(())
}

/// Rebuilds a checkpoint's model: the setup's files plus its trained tensors.
pub fn load(dir: &Path, device: &Device) -> Result<(OscarSetup, Pipeline)> {
    if !dir.join(TRAINABLE_FILE).exists() {
        bail!(
            "{} is not a checkpoint folder (no trainable.safetensors)",
            dir.display()
        );
    }
    let setup = read_setup(dir)?;
    let bytes = read_checked(dir, TRAINABLE_FILE)?;
    let pipeline = build_with(&setup, device, Some(&bytes))
        .with_context(|| format!("loading checkpoint {}", dir.display()))?;
    Ok((setup, pipeline))
}

/// The checkpoint that `path` names (as `--init-from` takes it): `path` itself, or the latest
/// under `path/checkpoints` when `path` is a run's output folder.
pub fn named_by(path: &Path) -> Result<PathBuf> {
    if path.join(Manifest::FILE).is_file() {
        verify(path)?;
        return Ok(path.to_path_buf());
    }
    match latest(&path.join("checkpoints")) {
        Some((_, dir)) => Ok(dir),
        None => bail!(
            "{}: neither a checkpoint (no {}) nor a run's output folder with one under checkpoints/",
            path.display(),
            Manifest::FILE
        ),
    }
}

/// A trained checkpoint and its progress, to go on from with `setup`: the same compressor;
/// the same generator training, or LoRA added to a frozen-generator checkpoint. The
/// generator gets fresh adapters when `fresh_lora` (a new run from these weights) or when
/// the checkpoint has not trained on questions yet (pretrained with the generator frozen,
/// question answering with LoRA). The rank of LoRA added, if any, comes third.
pub fn load_continued(
    dir: &Path,
    setup: &OscarSetup,
    fresh_lora: bool,
    device: &Device,
) -> Result<(Pipeline, TrainState, Option<usize>)> {
    let (saved_setup, loaded) = load(dir, device)?;
    let state: TrainState = serde_json::from_slice(&read_checked(dir, STATE_FILE)?)
        .with_context(|| format!("{}/state.json", dir.display()))?;
    let (loaded, added) = loaded
        .continued_as(&saved_setup, setup, fresh_lora || state.step == 0)
        .map_err(|e| anyhow::anyhow!("{} {e}", dir.display()))?;
    Ok((loaded, state, added))
}

/// Writes `dir` (e.g. `checkpoints/step-50`) atomically: a hidden temporary folder, renamed.
/// `optimizer` (AdamW's moments, [`Trainer::optimizer_state`]) goes in checkpoints that a run
/// may continue from, so that the resumed steps equal the uninterrupted ones.
///
/// [`Trainer::optimizer_state`]: scaledown_model::training::Trainer::optimizer_state
pub fn save(
    dir: &Path,
    setup: &OscarSetup,
    recipe: &RunConfig,
    model: &Oscar,
    state: &impl Serialize,
    optimizer: Option<Vec<u8>>,
) -> Result<()> {
    let parent = dir.parent().context("checkpoint folder has no parent")?;
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let name = dir
        .file_name()
        .context("checkpoint folder has no name")?
        .to_string_lossy();
    remove_leftovers(parent, &name);
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    let write = || -> Result<()> {
        let mut files = vec![
            (SETUP_FILE, serde_json::to_vec_pretty(setup)?),
            (RECIPE_FILE, serde_json::to_vec_pretty(recipe)?),
            (TRAINABLE_FILE, trainable_to_safetensors(model)),
            (STATE_FILE, serde_json::to_vec_pretty(state)?),
        ];
        if let Some(bytes) = optimizer {
            files.push((OPTIMIZER_FILE, bytes));
        }
        for (name, bytes) in &files {
            write_atomic(&tmp.join(name), bytes)?;
            test_pause();
        }
        let manifest = Manifest::of(files.iter().map(|(n, b)| (*n, b.as_slice())));
        write_atomic(
            &tmp.join(Manifest::FILE),
            &serde_json::to_vec_pretty(&manifest)?,
        )?;
        Ok(())
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e.context(format!(
            "checkpoint {} was not written (earlier checkpoints are kept)",
            dir.display()
        )));
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

// The files of a checkpoint folder (besides the manifest).
/// The compressor's shapes, the model files, LoRA: what rebuilds the model
/// ([`scaledown_model::checkpoint::OscarSetup`]).
pub const SETUP_FILE: &str = "setup.json";
/// The trained tensors (compressor, LoRA factors) by module path.
pub const TRAINABLE_FILE: &str = "trainable.safetensors";
/// Where the run stood: steps, losses, evaluations ([`TrainState`]).
pub const STATE_FILE: &str = "state.json";
/// The run's settings, so that `--resume` and `--init-from` go on with them.
pub const RECIPE_FILE: &str = "recipe.json";
/// AdamW's moments, for `--resume`.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";

/// The recipe the checkpoint was trained with (None for checkpoints older than the file).
pub fn read_recipe(dir: &Path) -> Result<Option<RunConfig>> {
    if !dir.join(RECIPE_FILE).exists() {
        return Ok(None);
    }
    let bytes = read_checked(dir, RECIPE_FILE)?;
    serde_json::from_slice(&bytes)
        .map(Some)
        .with_context(|| format!("{}/{RECIPE_FILE}", dir.display()))
}

/// The optimiser state of a checkpoint, checked against its manifest; None when it has none.
pub fn read_optimizer(dir: &Path) -> Result<Option<Vec<u8>>> {
    match dir.join(OPTIMIZER_FILE).exists() {
        true => read_checked(dir, OPTIMIZER_FILE).map(Some),
        false => Ok(None),
    }
}

/// Temporary folders of `name` left by a process killed while writing it (a replaced copy
/// only once `name` itself is back: until then it is the last good one).
fn remove_leftovers(parent: &Path, name: &str) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    let mut prefixes = vec![format!(".{name}.tmp-")];
    if parent.join(name).exists() {
        prefixes.push(format!(".{name}.old-"));
    }
    for e in entries.filter_map(|e| e.ok()) {
        let file = e.file_name().to_string_lossy().to_string();
        if prefixes.iter().any(|p| file.starts_with(p.as_str())) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Tests set `SCALEDOWN_TEST_CHECKPOINT_PAUSE_MS` to kill a run while it writes a checkpoint.
fn test_pause() {
    if let Some(ms) = std::env::var("SCALEDOWN_TEST_CHECKPOINT_PAUSE_MS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
}

/// The intact checkpoint that got furthest under `checkpoints/` (`pretrain-K`, `pretrained`,
/// `step-K` and `final` folders), by the pretraining and training steps their `state.json`
/// records: (training step, folder). A newer one whose files do not match its manifest is
/// passed over, and said so.
pub fn latest(checkpoints: &Path) -> Option<(usize, PathBuf)> {
    let mut found = candidates(checkpoints);
    found.sort_by_key(|(k, _)| std::cmp::Reverse(*k));
    found
        .into_iter()
        .find_map(|((_, step), dir)| match verify(&dir) {
            Ok(()) => Some((step, dir)),
            Err(e) => {
                println!("--resume: passing over {}: {e:#}", dir.display());
                None
            }
        })
}

/// Checkpoint folders under `checkpoints/` with their (pretraining step, training step).
fn candidates(checkpoints: &Path) -> Vec<((usize, usize), PathBuf)> {
    let Ok(entries) = std::fs::read_dir(checkpoints) else {
        return vec![];
    };
    entries
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
                serde_json::from_str(&std::fs::read_to_string(dir.join(STATE_FILE)).ok()?).ok()?;
            let step = state["step"].as_u64()? as usize;
            let pretrain_step = state["pretrain_step"].as_u64().unwrap_or(0) as usize;
            dir.join(TRAINABLE_FILE)
                .exists()
                .then_some(((pretrain_step, step), dir))
        })
        .collect()
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
