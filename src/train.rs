//! `scaledown train`: evaluate the compressed model before training, train it, evaluate it
//! during and after, compare it with the uncompressed generator, and write the report, the
//! plots and the checkpoints.

use crate::checkpoint::{self, LORA_ALPHA, LORA_RANK, OscarSetup};
use crate::evaluate::{self, EvalRun, answering, describe, documents_of};
use crate::fsutil::{read_text, write_atomic};
use crate::{ceiling, models, passages, plots, prepare, progress, teacher};
use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use scaledown_data::{Example, Scores, parse_examples};
use scaledown_model::backend::BackendKind;
use scaledown_model::burn::module::Module;
use scaledown_model::burn::tensor::read_sync;
use scaledown_model::checkpoint::with_path_param_ids;
use scaledown_model::compressor::{CompressorConfig, CompressorType, Readout};
use scaledown_model::example::TrainExample;
use scaledown_model::oscar::{Oscar, OscarTokenizers};
use scaledown_model::pretraining::{self, PretrainingSet, Reconstruction};
use scaledown_model::training::{TrainSettings, Trainer};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Labels {
    /// The dataset's first answer.
    Gold,
    /// The uncompressed generator's own answer from the full text (`teacher_answer` of
    /// `prepare --teacher`, else generated and cached in the output folder).
    Teacher,
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
    #[arg(long, alias = "compressor_type", default_value = "n_layers")]
    pub compressor_type: String,
    /// Generator layers in the n_layers compressor (k: the memory enters after the generator's
    /// layer k). 20 with rate 4 is the measured best (README, "Rate 4 after layer 20").
    #[arg(long, alias = "num_layers", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub num_layers: u32,
    /// Memory vectors per chunk: L (the pooled readout gives a short last chunk fewer).
    #[arg(long, alias = "num_memory_tokens", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub num_memory_tokens: u32,
    /// Document tokens per memory vector: R. Chunks hold L×R tokens.
    #[arg(long, alias = "compression_rate", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=512))]
    pub compression_rate: u32,
    /// How the compressor's states become memory vectors: pooled (memory vector j is the mean
    /// of the states of the R document tokens it stands for; with n_layers they enter the
    /// generator after its layer N) or memory-tokens (OSCAR's L learned tokens after the
    /// chunk, through an MLP projector, at the generator's input).
    #[arg(long, default_value = "pooled")]
    #[serde(default = "memory_tokens")]
    pub readout: Readout,
    #[arg(long, alias = "batch_size", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub batch_size: u32,
    #[arg(long, alias = "num_epochs", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub num_epochs: u32,
    /// Stop after this many optimiser steps (default: all epochs).
    #[arg(long, alias = "max_steps", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_steps: Option<u32>,
    /// Learning rate of the LoRA factors.
    #[arg(long, alias = "learning_rate", default_value = "1e-4", value_parser = positive)]
    pub learning_rate: f64,
    /// Learning rate of the compressor (default: 5e-5 for n_layers, 1e-4 for encoder).
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
    #[arg(long, value_enum, default_value = "gold")]
    pub labels: Labels,
    #[arg(long, alias = "generator_training", value_enum, default_value = "lora")]
    pub generator_training: GeneratorTraining,
    #[arg(long, alias = "output_dir", default_value = "training_with_eval")]
    pub output_dir: PathBuf,
    /// Evaluate on at most this many eval examples.
    #[arg(long, alias = "max_eval_examples", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_eval_examples: u32,
    /// Longest generated answer, in tokens.
    #[arg(long, alias = "max_new_tokens", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=512))]
    pub max_new_tokens: u32,
    /// Questions answered together in evaluation (left-padded, padding masked): more
    /// questions per second; each question's time is then its batch's time / the batch size.
    #[arg(long, alias = "eval_batch_size", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub eval_batch_size: u32,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// OSCAR's reranking head: an `RR` token in the compressor input whose hidden state a
    /// dense layer turns into each document's relevance score, trained toward the teacher's
    /// (MiniLM's question-document cosine similarity) with --rerank-weight.
    #[arg(long)]
    #[serde(default)]
    pub rerank: bool,
    /// λ of the reranking loss: answer cross-entropy + λ·Σ(score − teacher score)².
    #[arg(long, default_value = "0.05", value_parser = weight)]
    #[serde(default)]
    pub rerank_weight: f64,
    /// In evaluation, answer from the reranking head's M best documents only (0: all; needs
    /// --rerank).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=1000))]
    #[serde(default)]
    pub keep_top: u32,
    /// Distillation from the uncompressed generator: weight of the cross-entropy against its
    /// token distributions over the answer (top 16 per token, read from the full text; 0: off).
    #[arg(long, default_value = "0", value_parser = weight)]
    #[serde(default)]
    pub distill_weight: f64,
    /// After training, also fine-tune the uncompressed generator with the same LoRA recipe,
    /// steps and answers on the full text, and report it as the compressed model's fair
    /// ceiling (takes about twice the compressed training's time).
    #[arg(long)]
    #[serde(default)]
    pub finetuned_ceiling: bool,
    /// Continue from the last checkpoint in --output-dir.
    #[arg(long)]
    pub resume: bool,
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

/// One probe of pretraining after `step` steps (`windows` examples, `seconds` of training):
/// the memory gap, i.e. the auto-encoding loss of held-out passages after their own memory
/// (`own`) and after another passage's (`other`, [`pretraining::memory_gap`]), and held-out
/// question answering from the compressed documents (`qa`). Pretraining has done its job when
/// `own` falls clearly below `other`, and `qa` says what that buys.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PretrainProbe {
    pub step: usize,
    #[serde(default)]
    pub windows: usize,
    #[serde(default)]
    pub seconds: f64,
    pub own: f32,
    pub other: f32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qa: Option<QaProbe>,
}

/// Held-out questions answered by the model under pretraining, before any QA training.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QaProbe {
    pub scores: Scores,
    pub memory_use: evaluate::MemoryUse,
}

/// One evaluation during training.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalPoint {
    pub step: usize,
    pub scores: Scores,
}

/// Training progress, saved with each checkpoint.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TrainState {
    pub step: usize,
    pub total_steps: usize,
    pub losses: Vec<(usize, f32)>,
    pub evals: Vec<EvalPoint>,
    pub train_seconds: f64,
    pub examples_seen: usize,
    /// Pretraining steps done, of `pretrain_total`, with their losses.
    #[serde(default)]
    pub pretrain_step: usize,
    #[serde(default)]
    pub pretrain_total: usize,
    #[serde(default)]
    pub pretrain_losses: Vec<(usize, f32)>,
    #[serde(default)]
    pub pretrain_seconds: f64,
    /// The auto-encoding memory gap during pretraining, on passages of the eval examples.
    #[serde(default)]
    pub pretrain_memory_gap: Vec<PretrainProbe>,
    /// [`evaluate::MemoryUse`] of the untrained model.
    #[serde(default)]
    pub memory_use_before: Option<evaluate::MemoryUse>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Summary {
    pub scores: Scores,
    pub timing: evaluate::Timing,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ranking: Option<evaluate::Ranking>,
}

impl From<&EvalRun> for Summary {
    fn from(r: &EvalRun) -> Self {
        Self {
            scores: r.scores,
            timing: r.timing,
            ranking: r.ranking,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Report {
    pub command: TrainArgs,
    pub setup: OscarSetup,
    pub backend: String,
    pub train_examples: usize,
    pub eval_examples: usize,
    /// Mean document tokens per eval example, and memory vectors that replace them.
    pub mean_document_tokens: f64,
    pub mean_memory_vectors: f64,
    pub baseline_uncompressed: Summary,
    pub before: Summary,
    pub after: Summary,
    /// Baseline mean ms per query / compressed mean ms per query (after training).
    pub speedup: f64,
    /// Whether the trained model's answers depend on its memory vectors (gold-answer loss
    /// with its own documents' memory vs another question's).
    pub memory_use_after: evaluate::MemoryUse,
    /// The uncompressed generator fine-tuned like the compressed model (--finetuned-ceiling).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finetuned_ceiling: Option<ceiling::CeilingSummary>,
    pub training: TrainState,
    pub examples_per_second: f64,
    /// Why training stopped early, if it did.
    pub stopped: Option<String>,
}

/// What both stages of a run start from: the data, the model (fresh or resumed) and its state.
struct Run {
    device: scaledown_model::burn::prelude::Device,
    out: PathBuf,
    train: Vec<Example>,
    /// The evaluated examples (at most --max-eval-examples).
    eval: Vec<Example>,
    /// The whole eval file, whose articles pretraining must not see.
    held_out: Vec<Example>,
    setup: OscarSetup,
    checkpoints: PathBuf,
    loaded: checkpoint::Loaded,
    state: TrainState,
    compressor_lr: f64,
    /// AdamW's state in the checkpoint resumed from, if it has one: (file, bytes).
    resumed_optimizer: Option<(PathBuf, Vec<u8>)>,
}

/// Checks the flags, reads the data and builds the model, or loads it with `--resume`.
fn start(models_dir: &Path, a: &TrainArgs) -> Result<Run> {
    let compressor_type: CompressorType = a
        .compressor_type
        .parse()
        .map_err(|e| anyhow::anyhow!("--compressor-type: {e}"))?;
    let device = a.backend.device().map_err(anyhow::Error::msg)?;
    // The compressor's memory tokens and projector, and the LoRA factors, start random.
    device.seed(a.seed);
    let out = a.output_dir.clone();
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;

    let train = load_examples(&a.train_data)?;
    let eval_file = a
        .eval_data
        .clone()
        .unwrap_or_else(|| prepare::eval_path(&a.train_data));
    // All of the eval file's articles stay out of pretraining, also those not evaluated.
    let held_out = load_examples(&eval_file)?;
    let mut eval = held_out.clone();
    eval.truncate(a.max_eval_examples as usize);

    let generator = a
        .generator
        .clone()
        .unwrap_or_else(|| models::default_generator(models_dir));
    let encoder = (compressor_type == CompressorType::Encoder).then(|| {
        a.encoder
            .clone()
            .unwrap_or_else(|| models::default_encoder(models_dir))
    });
    if let Some(dir) = &encoder {
        let architecture = models::encoder_architecture(dir);
        if a.compressor_type == "modernbert" && architecture != "modernbert" {
            println!(
                "compressor type `modernbert`: {} holds a {architecture} encoder, which runs \
                 (ModernBERT weights are not shipped: give a ModernBERT folder with --encoder)",
                dir.display()
            );
        }
    }
    for p in std::iter::once(&generator).chain(encoder.iter()) {
        if !p.exists() {
            bail!(
                "model not found at {} (run `scaledown models fetch`)",
                p.display()
            );
        }
    }
    if a.finetuned_ceiling && a.generator_training == GeneratorTraining::Frozen {
        bail!(
            "--finetuned-ceiling fine-tunes the generator's LoRA: it needs --generator-training lora"
        );
    }
    if a.keep_top > 0 && !a.rerank {
        bail!(
            "--keep-top {} needs --rerank (a reranking head to choose the documents)",
            a.keep_top
        );
    }
    let setup = OscarSetup {
        compressor: CompressorConfig {
            compressor_type,
            num_layers: a.num_layers as usize,
            num_memory_tokens: a.num_memory_tokens as usize,
            compression_rate: a.compression_rate as usize,
            readout: a.readout,
            // The pooled n_layers states are the generator's own layer-N stream; every other
            // readout needs a map to the generator's input.
            projector: !(compressor_type == CompressorType::NLayers
                && a.readout == Readout::Pooled),
            rerank: a.rerank,
        },
        generator,
        encoder,
        lora_rank: (a.generator_training == GeneratorTraining::Lora).then_some(LORA_RANK),
        lora_alpha: LORA_ALPHA,
        max_new_tokens: a.max_new_tokens as usize,
    };

    let checkpoints = out.join("checkpoints");
    let resume_from = if a.resume {
        checkpoint::latest(&checkpoints)
    } else {
        None
    };
    if a.resume && resume_from.is_none() {
        println!(
            "--resume: no checkpoint in {}; starting from scratch",
            checkpoints.display()
        );
    }
    let (mut loaded, state) = match &resume_from {
        Some((step, dir)) => {
            println!("resuming from {} (step {step})", dir.display());
            let (saved_setup, mut loaded) = checkpoint::load(dir, &device)?;
            if saved_setup.compressor != setup.compressor {
                bail!(
                    "--resume: {} was trained with another compressor configuration",
                    dir.display()
                );
            }
            let state: TrainState =
                serde_json::from_slice(&checkpoint::read_checked(dir, "state.json")?)
                    .with_context(|| format!("{}/state.json", dir.display()))?;
            match (saved_setup.lora_rank, setup.lora_rank) {
                (x, y) if x == y => {}
                // Pretrained with the generator frozen, question answering with LoRA: the
                // pretrained compressor goes on, the generator gets fresh adapters.
                (None, Some(rank)) if state.step == 0 => {
                    println!(
                        "resuming a frozen-generator run with fresh LoRA (r {rank}) on the generator"
                    );
                    loaded.oscar.generator = loaded.oscar.generator.with_lora(rank, LORA_ALPHA);
                }
                _ => bail!(
                    "--resume: {} was trained with --generator-training {}",
                    dir.display(),
                    match saved_setup.lora_rank {
                        Some(_) => "lora",
                        None => "frozen",
                    }
                ),
            }
            (loaded, state)
        }
        None => (checkpoint::build(&setup, &device)?, TrainState::default()),
    };
    // The optimiser state finds its parameters by id: ids from their module paths are the
    // same in every process.
    loaded.oscar = with_path_param_ids(loaded.oscar);
    let resumed_optimizer = match &resume_from {
        Some((_, dir)) => checkpoint::read_optimizer(dir)?
            .map(|bytes| (dir.join(checkpoint::OPTIMIZER_FILE), bytes)),
        None => None,
    };
    let compressor_lr = a.compressor_learning_rate.unwrap_or(match compressor_type {
        CompressorType::NLayers => 5e-5,
        CompressorType::Encoder => 1e-4,
    });
    Ok(Run {
        device,
        out,
        train,
        eval,
        held_out,
        setup,
        checkpoints,
        loaded,
        state,
        compressor_lr,
        resumed_optimizer,
    })
}

/// `scaledown pretrain`: the pretraining stage alone, probed every --eval-steps, with its
/// scaling curve (memory gap and held-out QA against windows seen) in
/// `pretraining_curve.json` and `scaling_curve.png`.
pub fn pretrain(models_dir: &Path, a: TrainArgs) -> Result<()> {
    if a.pretrain_steps == 0 {
        bail!("--pretrain-steps: give the pretraining budget in steps of --batch-size windows");
    }
    let Run {
        out,
        train,
        eval,
        held_out,
        setup,
        checkpoints,
        loaded,
        mut state,
        compressor_lr,
        resumed_optimizer,
        ..
    } = start(models_dir, &a)?;
    let pretrain = Pretraining {
        args: &a,
        setup: &setup,
        tokenizers: &loaded.tokenizers,
        out: &out,
        checkpoints: &checkpoints,
        compressor_lr,
        held_out: &held_out,
        probe_qa: true,
        resumed_optimizer: resumed_optimizer.as_ref(),
    };
    pretrain.run(loaded.oscar.train(), &train, &eval, &mut state)?;
    println!(
        "pretrained {} steps ({} windows) in {:.0} s; curve in {}, checkpoint in {}",
        state.pretrain_step,
        state.pretrain_step * a.batch_size as usize,
        state.pretrain_seconds,
        out.join("scaling_curve.png").display(),
        checkpoints.join("pretrained").display()
    );
    Ok(())
}

pub fn run(models_dir: &Path, a: TrainArgs) -> Result<()> {
    let Run {
        device,
        out,
        train,
        eval,
        held_out,
        setup,
        checkpoints,
        loaded,
        mut state,
        compressor_lr,
        resumed_optimizer,
    } = start(models_dir, &a)?;
    let checkpoint::Loaded {
        oscar,
        base_generator,
        tokenizers,
    } = loaded;
    let max_new = a.max_new_tokens as usize;

    // Labels and tokenised training examples.
    let targets: Vec<String> = match a.labels {
        Labels::Gold => train.iter().map(|e| e.answers[0].clone()).collect(),
        Labels::Teacher => {
            // `prepare --teacher` may have labelled the file already; the rest are generated.
            let unlabelled: Vec<Example> = train
                .iter()
                .filter(|e| e.teacher_answer.is_none())
                .cloned()
                .collect();
            let mut generated = teacher::labels(
                &out.join("teacher_labels.json"),
                &unlabelled,
                &base_generator,
                &tokenizers,
                max_new,
            )?
            .into_iter();
            train
                .iter()
                .map(|e| match &e.teacher_answer {
                    Some(answer) => answer.clone(),
                    None => generated.next().expect("one label per unlabelled example"),
                })
                .collect()
        }
    };
    let relevance = match a.rerank {
        true => teacher::relevance(
            &out.join("teacher_relevance.json"),
            &train,
            models_dir,
            &device,
        )?,
        false => vec![vec![]; train.len()],
    };
    let mut examples = Vec::with_capacity(train.len());
    for ((ex, target), teacher_scores) in train.iter().zip(&targets).zip(relevance) {
        examples.push(TrainExample {
            encoded: tokenizers.encode(&setup.compressor, &ex.question, &documents_of(ex))?,
            answer: tokenizers.encode_answer(target)?,
            teacher_scores,
            teacher_tokens: vec![],
        });
    }
    if a.distill_weight > 0.0 {
        let tokens = teacher::distributions(
            &out.join("teacher_tokens.json"),
            &train,
            &examples,
            &base_generator,
            &tokenizers,
        )?;
        for (ex, t) in examples.iter_mut().zip(tokens) {
            ex.teacher_tokens = t;
        }
    }

    // Baseline and before-training evaluation (skipped on resume when already written).
    let baseline = cached_run(&out.join("baseline_results.json"), || {
        evaluate::uncompressed(
            &base_generator,
            &tokenizers,
            &eval,
            max_new,
            a.eval_batch_size as usize,
            "baseline (uncompressed)",
        )
    })?;
    println!("uncompressed baseline: {}", describe(&baseline));
    let before_model = answering(&oscar, a.keep_top);
    let before = cached_run(&out.join("before_training_results.json"), || {
        evaluate::compressed(
            &before_model,
            &tokenizers,
            &setup.compressor,
            &eval,
            max_new,
            a.eval_batch_size as usize,
            "eval before training",
        )
    })?;
    println!("before training:       {}", describe(&before));
    // Only a model that has not trained yet gives the "before" figure (not a resumed one).
    if state.memory_use_before.is_none() && state.step == 0 && state.pretrain_step == 0 {
        let m = evaluate::memory_use(&before_model, &tokenizers, &setup.compressor, &eval)?;
        println!("memory use, before:    {m}");
        state.memory_use_before = Some(m);
    }
    drop(before_model);

    let mut model = oscar.train();
    let pretrain = Pretraining {
        args: &a,
        setup: &setup,
        tokenizers: &tokenizers,
        out: &out,
        checkpoints: &checkpoints,
        compressor_lr,
        held_out: &held_out,
        probe_qa: false,
        resumed_optimizer: resumed_optimizer.as_ref(),
    };
    model = pretrain.run(model, &train, &eval, &mut state)?;

    // Training.
    let batch = a.batch_size as usize;
    let per_epoch = examples.len().div_ceil(batch);
    let total =
        (per_epoch * a.num_epochs as usize).min(a.max_steps.map_or(usize::MAX, |m| m as usize));
    state.total_steps = total;
    let mut trainer = trainer_for(&a, compressor_lr, total, state.step);
    if state.step > 0 {
        resume_optimizer(&mut trainer, resumed_optimizer.as_ref())?;
    }
    let mut stopped = None;
    let bar = progress::bar(total as u64, "training");
    bar.set_position(state.step as u64);
    let started = Instant::now();
    let seconds_before = state.train_seconds;
    while state.step < total {
        let batch_examples = batch_at(&examples, state.step, batch, a.seed);
        let (m, result) = read_sync(trainer.step(model, &batch_examples));
        model = m;
        let stats = match result {
            Ok(s) => s,
            Err(e) => {
                let msg = format!(
                    "{e}; the last good checkpoint is kept in {}",
                    checkpoints.display()
                );
                eprintln!("error: {msg}");
                stopped = Some(msg);
                break;
            }
        };
        state.step += 1;
        state.examples_seen += batch_examples.len();
        state.losses.push((state.step, stats.loss));
        state.train_seconds = seconds_before + started.elapsed().as_secs_f64();
        bar.set_message(format!("training loss {:.3}", stats.loss));
        bar.inc(1);
        if state.step % a.logging_steps as usize == 0 || state.step == total {
            bar.suspend(|| {
                println!(
                    "step {}/{total} loss {:.4} grad-norm {:.3} lr {:.2e}",
                    state.step, stats.loss, stats.grad_norm, stats.compressor_lr
                )
            });
        }
        if a.eval_steps > 0 && state.step % a.eval_steps as usize == 0 && state.step < total {
            let run = bar.suspend(|| {
                evaluate::compressed(
                    &answering(&model, a.keep_top),
                    &tokenizers,
                    &setup.compressor,
                    &eval,
                    max_new,
                    a.eval_batch_size as usize,
                    "eval",
                )
            })?;
            bar.suspend(|| println!("step {}: {}", state.step, describe(&run)));
            state.evals.push(EvalPoint {
                step: state.step,
                scores: run.scores,
            });
            checkpoint::save(
                &checkpoints.join(format!("step-{}", state.step)),
                &setup,
                &model,
                &state,
                Some(optimizer_state(&trainer)?),
            )?;
            checkpoint::prune(&checkpoints, "step-", 2);
        }
    }
    bar.finish_and_clear();

    let after_model = answering(&model, a.keep_top);
    let after = evaluate::compressed(
        &after_model,
        &tokenizers,
        &setup.compressor,
        &eval,
        max_new,
        a.eval_batch_size as usize,
        "eval after training",
    )?;
    println!("after training:        {}", describe(&after));
    let memory_use_after =
        evaluate::memory_use(&after_model, &tokenizers, &setup.compressor, &eval)?;
    println!("memory use, after:     {memory_use_after}");
    state.evals.push(EvalPoint {
        step: state.step,
        scores: after.scores,
    });
    if stopped.is_none() {
        checkpoint::save(&checkpoints.join("final"), &setup, &model, &state, None)?;
    }
    write_atomic(
        &out.join("after_training_results.json"),
        serde_json::to_string_pretty(&after)?.as_bytes(),
    )?;
    drop((model, after_model));
    let finetuned = match a.finetuned_ceiling && stopped.is_none() {
        true => {
            let answers: Vec<Vec<u32>> = examples.iter().map(|e| e.answer.clone()).collect();
            let c = ceiling::run(
                &a,
                &setup,
                &tokenizers,
                &train,
                &answers,
                &eval,
                total,
                &device,
            )?;
            println!(
                "compressed match / fine-tuned uncompressed match: {:.0} %",
                100.0 * after.scores.match_accuracy / c.run.scores.match_accuracy.max(1e-9)
            );
            Some(c)
        }
        false => None,
    };

    let steps_run = state.examples_seen.max(1);
    let encoded_eval: Vec<_> = eval
        .iter()
        .map(|e| tokenizers.encode(&setup.compressor, &e.question, &documents_of(e)))
        .collect::<Result<_, _>>()?;
    let n_eval = encoded_eval.len().max(1) as f64;
    let report = Report {
        backend: a.backend.to_string(),
        train_examples: train.len(),
        eval_examples: eval.len(),
        mean_document_tokens: encoded_eval
            .iter()
            .map(|e| e.document_tokens as f64)
            .sum::<f64>()
            / n_eval,
        mean_memory_vectors: encoded_eval
            .iter()
            .map(|e| e.memory_vectors(&setup.compressor) as f64)
            .sum::<f64>()
            / n_eval,
        baseline_uncompressed: (&baseline).into(),
        before: (&before).into(),
        after: (&after).into(),
        speedup: baseline.timing.mean_ms / after.timing.mean_ms.max(1e-9),
        memory_use_after,
        finetuned_ceiling: finetuned.as_ref().map(Into::into),
        examples_per_second: steps_run as f64 / state.train_seconds.max(1e-9),
        training: state,
        stopped: stopped.clone(),
        setup,
        command: a.clone(),
    };
    write_atomic(
        &out.join("metrics_report.json"),
        serde_json::to_string_pretty(&report)?.as_bytes(),
    )?;
    let ceiling_run = finetuned.as_ref().map(|c| &c.run);
    plots::write_all(&out, &report, &baseline, &before, &after, ceiling_run)?;
    println!(
        "speed-up {:.2}x ({:.0} ms -> {:.0} ms per query); report, plots and checkpoints in {}",
        report.speedup,
        baseline.timing.mean_ms,
        after.timing.mean_ms,
        out.display()
    );
    if let Some(msg) = stopped {
        bail!("training stopped early: {msg}");
    }
    Ok(())
}

fn load_examples(path: &Path) -> Result<Vec<Example>> {
    let text = read_text(path)
        .with_context(|| "run `scaledown prepare` first, or pass the file".to_string())?;
    Ok(parse_examples(&path.display().to_string(), &text)?)
}

/// Runs `f` once and keeps its result in `path`; later runs (`--resume`) read it back.
fn cached_run(path: &Path, f: impl FnOnce() -> Result<EvalRun>) -> Result<EvalRun> {
    if let Ok(text) = std::fs::read_to_string(path)
        && let Ok(run) = serde_json::from_str(&text)
    {
        return Ok(run);
    }
    let run = f()?;
    write_atomic(path, serde_json::to_string_pretty(&run)?.as_bytes())?;
    Ok(run)
}

/// The pretraining stage: its own step count, schedule, loss curve and checkpoints
/// (`pretrain-K`, then `pretrained`), resumed like question answering, and its scaling curve
/// (a [`PretrainProbe`] every --eval-steps) in `pretraining_curve.json` and `scaling_curve.png`.
struct Pretraining<'a> {
    args: &'a TrainArgs,
    setup: &'a OscarSetup,
    tokenizers: &'a OscarTokenizers,
    out: &'a Path,
    checkpoints: &'a Path,
    compressor_lr: f64,
    /// The whole eval file, whose articles pretraining must not see.
    held_out: &'a [Example],
    /// Whether each probe also answers the held-out questions (`scaledown pretrain`; `train`
    /// evaluates them after question answering instead).
    probe_qa: bool,
    /// AdamW's state in the checkpoint resumed from, if it has one: (file, bytes).
    resumed_optimizer: Option<&'a (PathBuf, Vec<u8>)>,
}

impl Pretraining<'_> {
    fn run(
        &self,
        mut model: Oscar,
        train: &[Example],
        eval: &[Example],
        state: &mut TrainState,
    ) -> Result<Oscar> {
        let a = self.args;
        let total = a.pretrain_steps as usize;
        state.pretrain_total = total;
        let budget = a.pretrain_minutes.map(|m| m * 60.0);
        let out_of_time = |state: &TrainState| budget.is_some_and(|b| state.pretrain_seconds >= b);
        // Pretraining comes first; a run resumed in question answering does not go back.
        if state.pretrain_step >= total || state.step > 0 || out_of_time(state) {
            return Ok(model);
        }
        let passages = match a.pretrain_data.is_empty() {
            true => passages::of_examples(train),
            false => {
                let (kept, left_out) = passages::read_all_outside(&a.pretrain_data, self.held_out)?;
                if left_out > 0 {
                    println!(
                        "pretraining: {left_out} entries of --pretrain-data (repeats counted) belong to eval articles and are left out"
                    );
                }
                kept
            }
        };
        let mut set = PretrainingSet::default();
        for p in &passages {
            set.add_passage(self.tokenizers, &self.setup.compressor, p)?;
        }
        let share = a.pretrain_reconstruction;
        if let Some(objective) = set.missing(share) {
            bail!(
                "--pretrain-reconstruction {}: the passages give no {objective} example",
                share.permille as f64 / 1000.0
            );
        }
        println!(
            "pretraining ({share}): {} passages, {} auto-encoding and {} continuation windows, {total} steps of {}",
            passages.len(),
            set.auto_encoding.len(),
            set.continuation.len(),
            a.batch_size
        );
        let probe = self.probe_examples(eval)?;
        if state.pretrain_step == 0 && state.pretrain_memory_gap.is_empty() {
            self.probe(&model, &probe, eval, state)?;
        }
        let batch = a.batch_size as usize;
        let mut trainer = trainer_for(a, self.compressor_lr, total, state.pretrain_step);
        if state.pretrain_step > 0 {
            resume_optimizer(&mut trainer, self.resumed_optimizer)?;
        }
        let bar = progress::bar(total as u64, "pretraining");
        bar.set_position(state.pretrain_step as u64);
        let started = Instant::now();
        let seconds_before = state.pretrain_seconds;
        let first_step = state.pretrain_step;
        while state.pretrain_step < total && !out_of_time(state) {
            let batch_examples = set.batch(state.pretrain_step, batch, share, a.seed);
            let (m, result) = read_sync(trainer.step(model, &batch_examples));
            model = m;
            let stats = result.map_err(|e| {
                anyhow::anyhow!(
                    "pretraining: {e}; the last good checkpoint is kept in {}",
                    self.checkpoints.display()
                )
            })?;
            state.pretrain_step += 1;
            state
                .pretrain_losses
                .push((state.pretrain_step, stats.loss));
            state.pretrain_seconds = seconds_before + started.elapsed().as_secs_f64();
            // Windows (pretraining examples) per second over this session's steps.
            let windows_per_second = ((state.pretrain_step - first_step) * batch) as f64
                / started.elapsed().as_secs_f64().max(1e-9);
            bar.set_message(format!(
                "pretraining loss {:.3}, {windows_per_second:.2} windows/s",
                stats.loss
            ));
            bar.inc(1);
            let n = state.pretrain_step;
            if n.is_multiple_of(a.logging_steps as usize) || n == total {
                bar.suspend(|| {
                    println!(
                        "pretraining step {n}/{total} ({} windows) loss {:.4}, {windows_per_second:.2} windows/s",
                        n * batch,
                        stats.loss
                    )
                });
            }
            if a.eval_steps > 0 && n.is_multiple_of(a.eval_steps as usize) && n < total {
                bar.suspend(|| self.probe(&model, &probe, eval, state))?;
                let dir = self.checkpoints.join(format!("pretrain-{n}"));
                checkpoint::save(
                    &dir,
                    self.setup,
                    &model,
                    state,
                    Some(optimizer_state(&trainer)?),
                )?;
                checkpoint::prune(self.checkpoints, "pretrain-", 1);
            }
        }
        bar.finish_and_clear();
        if out_of_time(state) && state.pretrain_step < total {
            println!(
                "pretraining: --pretrain-minutes reached after {} of {total} steps",
                state.pretrain_step
            );
        }
        if state.pretrain_memory_gap.last().map(|p| p.step) != Some(state.pretrain_step) {
            self.probe(&model, &probe, eval, state)?;
        }
        // Stopped by --pretrain-minutes, pretraining may go on from here: keep its moments.
        let optimizer = match state.pretrain_step < total {
            true => Some(optimizer_state(&trainer)?),
            false => None,
        };
        checkpoint::save(
            &self.checkpoints.join("pretrained"),
            self.setup,
            &model,
            state,
            optimizer,
        )?;
        checkpoint::prune(self.checkpoints, "pretrain-", 0);
        Ok(model)
    }

    /// Up to [`PROBE_PASSAGES`] auto-encoding examples, the first window of each eval passage
    /// (text that pretraining does not see).
    fn probe_examples(&self, eval: &[Example]) -> Result<Vec<TrainExample>> {
        passages::of_examples(eval)
            .iter()
            .take(PROBE_PASSAGES)
            .map(|p| {
                Ok(pretraining::first_window_auto_encoding(
                    self.tokenizers,
                    &self.setup.compressor,
                    p,
                )?)
            })
            .collect()
    }

    /// Measures and prints the memory gap and held-out QA now, adds them to `state`, and
    /// rewrites the scaling curve.
    fn probe(
        &self,
        model: &Oscar,
        probe: &[TrainExample],
        eval: &[Example],
        state: &mut TrainState,
    ) -> Result<()> {
        if probe.len() < 2 {
            return Ok(());
        }
        let a = self.args;
        let bar = progress::bar(2 * probe.len() as u64, "memory gap");
        let answering = answering(model, a.keep_top);
        let (own, other) =
            pretraining::memory_gap(&answering, probe, |k| bar.set_position(k as u64));
        bar.finish_and_clear();
        let step = state.pretrain_step;
        println!(
            "pretraining step {step}: auto-encoding loss {own:.3} with its own memory, \
             {other:.3} with another passage's ({} passages)",
            probe.len()
        );
        let qa = match self.probe_qa {
            true => Some(self.answer_held_out(&answering, eval, step)?),
            false => None,
        };
        state.pretrain_memory_gap.push(PretrainProbe {
            step,
            windows: step * a.batch_size as usize,
            seconds: state.pretrain_seconds,
            own,
            other,
            qa,
        });
        let curve = ScalingCurve {
            command: a,
            setup: self.setup,
            probes: &state.pretrain_memory_gap,
        };
        write_atomic(
            &self.out.join("pretraining_curve.json"),
            serde_json::to_string_pretty(&curve)?.as_bytes(),
        )?;
        plots::scaling_curve(
            &self.out.join("scaling_curve.png"),
            &state.pretrain_memory_gap,
        )
    }
}

impl Pretraining<'_> {
    /// The held-out questions answered from their compressed documents, and the memory use.
    fn answer_held_out(&self, answering: &Oscar, eval: &[Example], step: usize) -> Result<QaProbe> {
        let compressor = &self.setup.compressor;
        let run = evaluate::compressed(
            answering,
            self.tokenizers,
            compressor,
            eval,
            self.args.max_new_tokens as usize,
            self.args.eval_batch_size as usize,
            "held-out QA",
        )?;
        let memory_use = evaluate::memory_use(answering, self.tokenizers, compressor, eval)?;
        println!(
            "pretraining step {step}: held-out QA {}\n  memory use: {memory_use}",
            describe(&run)
        );
        Ok(QaProbe {
            scores: run.scores,
            memory_use,
        })
    }
}

/// `pretraining_curve.json`: the recipe and its probes so far.
#[derive(Serialize)]
struct ScalingCurve<'a> {
    command: &'a TrainArgs,
    setup: &'a OscarSetup,
    probes: &'a [PretrainProbe],
}

/// Eval passages whose auto-encoding loss gauges the memory during pretraining.
const PROBE_PASSAGES: usize = 16;

/// AdamW with 5 % warm-up and linear decay over `total` steps, `done` of them already taken.
pub(crate) fn trainer_for(a: &TrainArgs, compressor_lr: f64, total: usize, done: usize) -> Trainer {
    let mut trainer = Trainer::new(TrainSettings {
        compressor_lr,
        memory_lr: compressor_lr,
        generator_lr: a.learning_rate,
        weight_decay: 0.1,
        warmup_steps: (total / 20).max(1),
        total_steps: total,
        max_grad_norm: 1.0,
        rerank_weight: a.rerank_weight,
        distill_weight: a.distill_weight,
    });
    trainer.step = done;
    trainer
}

fn optimizer_state(trainer: &Trainer) -> Result<Vec<u8>> {
    trainer.optimizer_state().map_err(anyhow::Error::msg)
}

/// Continues AdamW's moments from the checkpoint resumed (older checkpoints have none: the
/// moments then start again from zero and the run is no longer step-for-step the same).
fn resume_optimizer(trainer: &mut Trainer, state: Option<&(PathBuf, Vec<u8>)>) -> Result<()> {
    match state {
        Some((file, bytes)) => trainer
            .load_optimizer_state(bytes)
            .map_err(|e| anyhow::anyhow!("--resume: {}: {e}", file.display())),
        None => {
            println!(
                "--resume: the checkpoint holds no optimizer state; AdamW's moments start again"
            );
            Ok(())
        }
    }
}

/// The examples of optimiser step `step`: epochs in a seeded shuffled order, `batch` at a time.
pub(crate) fn batch_at(
    examples: &[TrainExample],
    step: usize,
    batch: usize,
    seed: u64,
) -> Vec<&TrainExample> {
    let per_epoch = examples.len().div_ceil(batch);
    let epoch = step / per_epoch;
    let order = scaledown_data::split::shuffled_indices(examples.len(), seed + epoch as u64);
    let at = (step % per_epoch) * batch;
    order[at..(at + batch).min(order.len())]
        .iter()
        .map(|&i| &examples[i])
        .collect()
}
