//! `scaledown eval` and `scaledown ask`: use a trained checkpoint.

use crate::evaluate::{self, Evaluator, describe};
use anyhow::{Result, bail};
use clap::Args;
use scaledown_data::parse_examples;
use scaledown_files::checkpoint;
use scaledown_files::fs::{read_text, write_atomic};
use scaledown_model::backend::BackendKind;
use scaledown_model::burn::tensor::read_sync;
use scaledown_model::generation::GenerationConfig;
use scaledown_model::oscar::document_text;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args)]
pub struct EvalArgs {
    /// A checkpoint folder (e.g. training_with_eval/checkpoints/final).
    #[arg(long)]
    pub checkpoint: PathBuf,
    #[arg(long, alias = "eval_data")]
    pub eval_data: PathBuf,
    #[arg(long, alias = "max_eval_examples", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_eval_examples: u32,
    /// Questions answered together in evaluation (left-padded, padding masked): more
    /// questions per second; each question's time is then its batch's time / the batch size.
    #[arg(long, alias = "eval_batch_size", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub eval_batch_size: u32,
    /// Answer from the reranking head's M best documents only (0: all; the checkpoint needs a
    /// reranking head).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=1000))]
    pub keep_top: u32,
    /// Also evaluate the uncompressed generator on the full text.
    #[arg(long)]
    pub baseline: bool,
    /// Write the per-example results here (JSON).
    #[arg(long)]
    pub output: Option<PathBuf>,
    #[arg(long, default_value = "flex")]
    pub backend: BackendKind,
}

#[derive(Args)]
pub struct AskArgs {
    #[arg(long)]
    pub checkpoint: PathBuf,
    #[arg(long)]
    pub question: String,
    /// A document to compress; repeat for several.
    #[arg(long = "document", required = true)]
    pub documents: Vec<String>,
    #[arg(long, default_value = "flex")]
    pub backend: BackendKind,
}

pub fn eval(a: EvalArgs) -> Result<()> {
    let device = a.backend.device().map_err(anyhow::Error::msg)?;
    let (setup, loaded) = checkpoint::load(&a.checkpoint, &device)?;
    let mut examples = parse_examples(
        &a.eval_data.display().to_string(),
        &read_text(&a.eval_data)?,
    )?;
    examples.truncate(a.max_eval_examples as usize);
    if a.keep_top > 0 && !setup.compressor.rerank {
        bail!(
            "--keep-top {}: {} has no reranking head (train with --rerank)",
            a.keep_top,
            a.checkpoint.display()
        );
    }
    let checkpoint::Pipeline {
        oscar,
        base_generator,
        tokenizers,
        ..
    } = loaded;
    let model = oscar.into_answering();
    let evaluator = Evaluator::new(&tokenizers, &setup.compressor, setup.max_new_tokens)
        .keep_top(a.keep_top as usize)
        .batch(a.eval_batch_size as usize);
    let run = evaluate::compressed(&evaluator, &model, &examples, "eval")?;
    println!("compressed:   {}", describe(&run));
    let memory_use = evaluate::memory_use(&evaluator, &model, &examples)?;
    println!("memory use:   {memory_use}");
    let mut out = serde_json::json!({ "compressed": run, "memory_use": memory_use });
    if a.baseline {
        let base = evaluate::uncompressed(&evaluator, &base_generator, &examples, "baseline")?;
        println!("uncompressed: {}", describe(&base));
        println!("speed-up {:.2}x", base.timing.speedup_to(&run.timing));
        out["uncompressed"] = serde_json::to_value(&base)?;
    }
    if let Some(path) = a.output {
        write_atomic(&path, serde_json::to_string_pretty(&out)?.as_bytes())?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

pub fn ask(a: AskArgs) -> Result<()> {
    if a.question.trim().is_empty() {
        bail!("--question is empty");
    }
    if let Some(i) = a.documents.iter().position(|d| d.trim().is_empty()) {
        bail!("--document number {} is empty", i + 1);
    }
    let device = a.backend.device().map_err(anyhow::Error::msg)?;
    let (setup, loaded) = checkpoint::load(&a.checkpoint, &device)?;
    let model = loaded.oscar.into_answering();
    let docs: Vec<String> = a.documents.iter().map(|d| document_text("", d)).collect();
    let start = Instant::now();
    let encoded = loaded
        .tokenizers
        .encode(&setup.compressor, &a.question, &docs)?;
    let ids = read_sync(model.answer(
        &encoded,
        &loaded.tokenizers.generator.stop_ids,
        &GenerationConfig {
            max_new_tokens: setup.max_new_tokens,
            ..Default::default()
        },
    ))?;
    let answer = loaded.tokenizers.generator.decode(&ids, true);
    println!("{}", answer.trim());
    eprintln!(
        "({} document tokens -> {} memory vectors, {:.0} ms)",
        encoded.document_tokens,
        encoded.memory_vectors(&setup.compressor),
        start.elapsed().as_secs_f64() * 1000.0
    );
    Ok(())
}
