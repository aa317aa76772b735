//! The flags of `scaledown train` and `scaledown pretrain`: the recipe of a run, stored in
//! its report.

use anyhow::Result;
use clap::{Args, ValueEnum};
use scaledown_model::backend::BackendKind;
use scaledown_model::compressor::{CompressorConfig, CompressorType, Readout};
use scaledown_model::oscar::{LoraSettings, LossWeights};
use scaledown_model::pretraining::Reconstruction;
use scaledown_model::recipe::{
    EvaluationConfig, Labels, OptimiserConfig, PretrainingConfig, RunConfig,
};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// `--compressor-type`: the flag's four names for the two compressors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CompressorFlag {
    /// A trainable copy of the generator's first --num-layers layers.
    #[value(name = "n_layers", alias = "n-layers")]
    #[serde(alias = "n-layers")]
    NLayers,
    /// The --encoder folder's encoder, BERT or ModernBERT as its config.json says.
    Encoder,
    /// The encoder compressor (the seed tool's name; says which encoder runs).
    Modernbert,
    /// The encoder compressor.
    Bert,
}

impl CompressorFlag {
    pub fn compressor_type(self) -> CompressorType {
        match self {
            Self::NLayers => CompressorType::NLayers,
            Self::Encoder | Self::Modernbert | Self::Bert => CompressorType::Encoder,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GeneratorTraining {
    /// LoRA (r 16, alpha 32) on the generator's linear layers.
    Lora,
    /// The generator stays as published; only the compressor trains.
    Frozen,
}

fn positive(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() && v < 1.0 => Ok(v),
        _ => Err(format!("`{s}` is not a learning rate in (0, 1)")),
    }
}

fn weight(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=1000.0).contains(&v) => Ok(v),
        _ => Err(format!("`{s}` is not a loss weight in [0, 1000]")),
    }
}

#[derive(Args, Debug, Clone, Serialize, Deserialize)]
pub struct TrainArgs {
    /// Training examples (from `scaledown prepare`).
    #[arg(long, alias = "train_data", default_value = "data/train.json")]
    pub train_data: PathBuf,
    /// Evaluation examples (default: `<stem>_eval.json` beside --train-data).
    #[arg(long, alias = "eval_data")]
    pub eval_data: Option<PathBuf>,
    /// n_layers (a copy of the generator's first N layers) or encoder (the --encoder folder,
    /// BERT or ModernBERT as its config.json says, + MLP projector; `modernbert` and `bert`
    /// select it too).
    #[arg(
        long,
        alias = "compressor_type",
        value_enum,
        default_value = "n_layers"
    )]
    pub compressor_type: CompressorFlag,
    /// Generator layers in the n_layers compressor (k: the memory enters after the generator's
    /// layer k). 20 is the measured best (README, "Rate 4 after layer 20" and "Rate 2").
    #[arg(long, alias = "num_layers", default_value_t = CompressorConfig::default().num_layers as u32, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub num_layers: u32,
    /// Memory vectors per chunk: L (the pooled readout gives a short last chunk fewer). 64 at
    /// rate 2: 128-token chunks.
    #[arg(long, alias = "num_memory_tokens", default_value_t = CompressorConfig::default().num_memory_tokens as u32, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub num_memory_tokens: u32,
    /// Document tokens per memory vector: R. Chunks hold L×R tokens. 2 is the measured best
    /// at the seed's scale (README, "Rate 2").
    #[arg(long, alias = "compression_rate", default_value_t = CompressorConfig::default().compression_rate as u32, value_parser = clap::value_parser!(u32).range(1..=512))]
    pub compression_rate: u32,
    /// How the compressor's states become memory vectors: pooled (memory vector j is a
    /// weighted mean of the states of the R document tokens it stands for, the weights learned,
    /// plain at the start; with n_layers they enter the generator after its layer N) or
    /// memory-tokens (OSCAR's L learned tokens after the chunk, through an MLP projector, at the
    /// generator's input).
    #[arg(long, default_value = "pooled")]
    #[serde(default = "memory_tokens")]
    pub readout: Readout,
    #[arg(long, alias = "batch_size", default_value_t = RunConfig::default().optimiser.batch_size as u32, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub batch_size: u32,
    #[arg(long, alias = "num_epochs", default_value_t = RunConfig::default().optimiser.epochs as u32, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub num_epochs: u32,
    /// Stop after this many optimiser steps (default: all epochs).
    #[arg(long, alias = "max_steps", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_steps: Option<u32>,
    /// Learning rate of the LoRA factors. 3e-4 (with 1.5e-4 for the n_layers compressor) is
    /// the measured best for one epoch of a few hundred questions (README, "The learning
    /// rates"); OSCAR's 1e-4 is for epochs of 500k.
    #[arg(long, alias = "learning_rate", default_value_t = RunConfig::default().optimiser.learning_rate, value_parser = positive)]
    pub learning_rate: f64,
    /// Learning rate of the compressor (default: 1.5e-4 for n_layers, 1e-4 for encoder).
    #[arg(long, alias = "compressor_learning_rate", value_parser = positive)]
    pub compressor_learning_rate: Option<f64>,
    /// Evaluate (and checkpoint) every K steps; 0: only before and after.
    #[arg(long, alias = "eval_steps", default_value_t = 0)]
    pub eval_steps: u32,
    /// Compressor pretraining steps before question answering: auto-encoding and text
    /// continuation on unlabelled passages (PISCO, COCOM); 0 skips it. Each step takes
    /// --batch-size passages.
    #[arg(long, default_value_t = 0)]
    pub pretrain_steps: u32,
    /// Passages for pretraining (repeat the flag for several files): JSON Lines with a `text`
    /// or `context` string, HotpotQA's `context` paragraphs or a KILT `paragraphs` field, or
    /// plain text with passages separated by blank lines; repeated passages count once, and
    /// passages of the eval file's articles are left out (default: the documents of the
    /// training examples).
    #[arg(long, value_name = "PATH")]
    #[serde(default, deserialize_with = "one_or_many")]
    pub pretrain_data: Vec<PathBuf>,
    /// Share of pretraining examples that auto-encode (restate the compressed window); the
    /// rest continue it (write the text after it). A fraction or a percentage: 1 is
    /// auto-encoding only, 0 continuation only.
    #[arg(long, default_value = "0.5", value_name = "SHARE")]
    #[serde(default = "half_reconstruction")]
    pub pretrain_reconstruction: Reconstruction,
    /// Stop pretraining after this many minutes (over all resumed sessions), checkpointing
    /// and probing there; the learning-rate schedule still spans --pretrain-steps.
    #[arg(long, value_name = "MINUTES", value_parser = minutes)]
    #[serde(default)]
    pub pretrain_minutes: Option<f64>,
    /// Print the loss every K steps.
    #[arg(long, alias = "logging_steps", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub logging_steps: u32,
    /// gold (the dataset's first answer) or teacher (the uncompressed generator's own answer
    /// from the full text: `teacher_answer` of `prepare --teacher`, else generated and cached
    /// in the output folder).
    #[arg(long, default_value = "gold")]
    pub labels: Labels,
    #[arg(long, alias = "generator_training", value_enum, default_value = "lora")]
    pub generator_training: GeneratorTraining,
    #[arg(long, alias = "output_dir", default_value = "training_with_eval")]
    pub output_dir: PathBuf,
    /// Evaluate on at most this many eval examples.
    #[arg(long, alias = "max_eval_examples", default_value_t = RunConfig::default().evaluation.max_examples as u32, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_eval_examples: u32,
    /// Longest generated answer, in tokens.
    #[arg(long, alias = "max_new_tokens", default_value_t = RunConfig::default().evaluation.max_new_tokens as u32, value_parser = clap::value_parser!(u32).range(1..=512))]
    pub max_new_tokens: u32,
    /// Questions answered together in evaluation (left-padded, padding masked): more
    /// questions per second; each question's time is then its batch's time / the batch size.
    #[arg(long, alias = "eval_batch_size", default_value_t = RunConfig::default().evaluation.batch_size as u32, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub eval_batch_size: u32,
    #[arg(long, default_value_t = RunConfig::default().seed)]
    pub seed: u64,
    /// OSCAR's reranking head: an `RR` token in the compressor input whose hidden state a
    /// dense layer turns into each document's relevance score, trained toward the teacher's
    /// (MiniLM's question-document cosine similarity) with --rerank-weight.
    #[arg(long)]
    #[serde(default)]
    pub rerank: bool,
    /// λ of the reranking loss: answer cross-entropy + λ·Σ(score − teacher score)².
    #[arg(long, default_value_t = RunConfig::default().loss.rerank, value_parser = weight)]
    #[serde(default)]
    pub rerank_weight: f64,
    /// In evaluation, answer from the reranking head's M best documents only (0: all; needs
    /// --rerank).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=1000))]
    #[serde(default)]
    pub keep_top: u32,
    /// Distillation from the uncompressed generator: weight of the cross-entropy against its
    /// token distributions over the answer (top 16 per token, read from the full text; 0: off).
    #[arg(long, default_value_t = RunConfig::default().loss.distill, value_parser = weight)]
    #[serde(default)]
    pub distill_weight: f64,
    /// Span loss: weight of the cross-entropy of the pooled readout's token scores (softmaxed
    /// over a question's document tokens) against each of the answer's tokens there (where the
    /// answer is found; 0: off). With --adaptive-segments at rate 16: README, "Rate 16: segments
    /// placed by the scorer".
    #[arg(long, default_value_t = RunConfig::default().loss.span, value_parser = weight)]
    #[serde(default)]
    pub span_weight: f64,
    /// Pooled readout: place each chunk's segments by the scorer (each ends at one of the chunk's
    /// top-scoring tokens) instead of every --compression-rate tokens; the same number of
    /// memory vectors. Taught where answers lie by --span-weight. May differ from the
    /// --init-from checkpoint's.
    #[arg(long)]
    #[serde(default)]
    pub adaptive_segments: bool,
    /// After training, also fine-tune the uncompressed generator with the same LoRA recipe,
    /// steps and answers on the full text, and report it as the compressed model's fair
    /// ceiling (takes about twice the compressed training's time).
    #[arg(long)]
    #[serde(default)]
    pub finetuned_ceiling: bool,
    /// Continue from the last checkpoint in --output-dir.
    #[arg(long)]
    pub resume: bool,
    /// Start from the weights of another run's checkpoint (a checkpoint folder, or a run's
    /// --output-dir for its latest one): its compressor and LoRA, and the record of its
    /// pretraining, with a fresh optimiser and a fresh question-answering epoch on
    /// --train-data. A stage on one dataset, then the epoch on another. With `pretrain`: a new
    /// pretraining phase of --pretrain-steps (its own warm-up and decay) on the windows after
    /// the ones those weights saw. The compressor flags must match the checkpoint's. Ignored
    /// when --resume finds a checkpoint of this run.
    #[arg(long, value_name = "DIR")]
    #[serde(default)]
    pub init_from: Option<PathBuf>,
    /// Generator GGUF file or Hugging Face folder (default: SmolLM2-135M-Instruct).
    #[arg(long)]
    pub generator: Option<PathBuf>,
    /// Encoder folder for the encoder compressor: config.json, model.safetensors and
    /// tokenizer.json of a BERT or ModernBERT (default: all-MiniLM-L6-v2).
    #[arg(long)]
    pub encoder: Option<PathBuf>,
    #[arg(long, default_value = "flex")]
    #[serde(skip, default = "default_backend")]
    pub backend: BackendKind,
}

impl TrainArgs {
    /// The recipe these flags give (the flags that name files and logging stay here).
    pub fn recipe(&self) -> RunConfig {
        let compressor_type = self.compressor_type.compressor_type();
        let optimiser = OptimiserConfig::for_compressor(compressor_type);
        RunConfig {
            compressor: CompressorConfig {
                compressor_type,
                num_layers: self.num_layers as usize,
                num_memory_tokens: self.num_memory_tokens as usize,
                compression_rate: self.compression_rate as usize,
                readout: self.readout,
                projector: CompressorConfig::needs_projector(compressor_type, self.readout),
                rerank: self.rerank,
                adaptive_segments: self.adaptive_segments,
                ..CompressorConfig::default()
            }
            .with_measured_pool_score_scale(),
            lora: (self.generator_training == GeneratorTraining::Lora)
                .then_some(LoraSettings::OSCAR),
            optimiser: OptimiserConfig {
                learning_rate: self.learning_rate,
                compressor_learning_rate: self
                    .compressor_learning_rate
                    .unwrap_or(optimiser.compressor_learning_rate),
                batch_size: self.batch_size as usize,
                epochs: self.num_epochs as usize,
                max_steps: self.max_steps.map(|m| m as usize),
                ..optimiser
            },
            labels: self.labels,
            loss: LossWeights {
                rerank: self.rerank_weight,
                distill: self.distill_weight,
                span: self.span_weight,
            },
            evaluation: EvaluationConfig {
                max_new_tokens: self.max_new_tokens as usize,
                batch_size: self.eval_batch_size as usize,
                keep_top: self.keep_top as usize,
                max_examples: self.max_eval_examples as usize,
            },
            pretraining: PretrainingConfig {
                steps: self.pretrain_steps as usize,
                reconstruction: self.pretrain_reconstruction,
                minutes: self.pretrain_minutes,
            },
            seed: self.seed,
        }
    }
}

fn minutes(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 1e6 => Ok(v),
        _ => Err(format!("`{s}` is not a number of minutes in (0, 1000000]")),
    }
}

/// Reports written before --pretrain-data could repeat hold one path or null.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<PathBuf>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Paths {
        One(PathBuf),
        Many(Vec<PathBuf>),
    }
    Ok(match Option::<Paths>::deserialize(d)? {
        None => vec![],
        Some(Paths::One(p)) => vec![p],
        Some(Paths::Many(ps)) => ps,
    })
}

/// Reports written before `--pretrain-reconstruction` existed alternated the objectives.
fn half_reconstruction() -> Reconstruction {
    Reconstruction { permille: 500 }
}

/// Reports written before `--readout` existed trained memory tokens.
fn memory_tokens() -> Readout {
    Readout::MemoryTokens
}

fn default_backend() -> BackendKind {
    BackendKind::Flex
}
