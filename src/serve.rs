//! `scaledown serve`: the flags, and the model they name loaded for the HTTP API
//! (`scaledown_serve`); `scaledown load` (`scaledown_bench::load`) is its load test.

use anyhow::Result;
use clap::Args;
use scaledown_files::{checkpoint, models};
use scaledown_model::backend::BackendKind;
use scaledown_model::oscar::OscarTokenizers;
use scaledown_serve::engine::{Engine, Limits};
use scaledown_serve::queue::Batching;
use scaledown_serve::{Served, Settings};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// A trained checkpoint folder: answers are compressed by default. Without one the server
    /// answers from the full text with the uncompressed generator only.
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// The generator to serve without --checkpoint (default: SmolLM2-135M-Instruct in the
    /// models folder).
    #[arg(long)]
    pub generator: Option<PathBuf>,
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// 0: any free port (printed at start).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    #[arg(long, default_value = "flex")]
    pub backend: BackendKind,
    /// Most requests answered together in one batch (1: one at a time). On a 2-core CPU 16
    /// gave 1.1-1.25x the queries/s of one at a time with compressed answers at 16 clients,
    /// and 0.95-1.0x with full text (README, "HTTP API").
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub max_batch: u32,
    /// Longest wait for a batch to fill after its first request (milliseconds).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(0..=10_000))]
    pub max_wait_ms: u32,
    /// Requests that may wait for the model; more get 503 with Retry-After.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_queue: u32,
    /// Largest request body; larger ones get 413.
    #[arg(long, default_value_t = 4 << 20, value_parser = clap::value_parser!(u32).range(1024..=(1 << 30)))]
    pub max_body_bytes: u32,
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub max_documents: u32,
    /// Most generator tokens in one document.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_document_tokens: u32,
    /// Most tokens a request may ask to generate (max_new_tokens, max_tokens).
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_new_tokens_limit: u32,
    /// A request not answered after this many seconds gets 504 and is dropped.
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u32).range(1..=86_400))]
    pub timeout_s: u32,
}

pub fn serve(models_dir: &Path, a: ServeArgs) -> Result<()> {
    let device = a.backend.device().map_err(anyhow::Error::msg)?;
    let (engine, compressor, default_new_tokens, model_id, description) = match &a.checkpoint {
        Some(dir) => {
            let (setup, loaded) = checkpoint::load(dir, &device)?;
            let tokenizers = Arc::new(loaded.tokenizers);
            let engine = Engine {
                oscar: Some(loaded.oscar.into_answering()),
                generator: loaded.base_generator,
                tokenizers,
            };
            let description = format!(
                "compressed answers from {} (rate {}, memory after layer {}), full text on request",
                dir.display(),
                setup.compressor.compression_rate,
                setup.compressor.num_layers
            );
            (
                engine,
                Some(setup.compressor),
                setup.max_new_tokens,
                "scaledown".to_string(),
                description,
            )
        }
        None => {
            let path = a
                .generator
                .clone()
                .unwrap_or_else(|| models::default_generator(models_dir));
            let g = models::load_generator_in_blocks(&path, &device)?;
            let name = path
                .file_name()
                .map_or("generator".into(), |n| n.to_string_lossy().to_string());
            let engine = Engine {
                oscar: None,
                generator: g.model,
                tokenizers: Arc::new(OscarTokenizers {
                    generator: g.tokenizer,
                    encoder: None,
                }),
            };
            let description = format!(
                "the uncompressed generator only ({}; no --checkpoint, so no compression)",
                path.display()
            );
            (engine, None, 32, name, description)
        }
    };
    let served = Served {
        engine,
        compressor,
        default_new_tokens,
        model_id,
        description,
    };
    scaledown_serve::run(
        served,
        Settings {
            host: a.host,
            port: a.port,
            batching: Batching {
                max_batch: a.max_batch as usize,
                max_wait: Duration::from_millis(a.max_wait_ms as u64),
            },
            max_queue: a.max_queue as usize,
            max_body_bytes: a.max_body_bytes as usize,
            limits: Limits {
                max_documents: a.max_documents as usize,
                max_document_tokens: a.max_document_tokens as usize,
                max_new_tokens: a.max_new_tokens_limit as usize,
            },
            timeout: Duration::from_secs(a.timeout_s as u64),
        },
    )
}
