//! The compressed model's fair ceiling (`train --finetuned-ceiling`): the uncompressed
//! generator alone (no compressor) fine-tuned with the same LoRA recipe, steps, batches and
//! target answers, reading the documents' full text instead of their memory vectors, then
//! evaluated like the baseline.

use crate::evaluate::{self, EvalRun, Evaluator, describe};
use anyhow::{Context, Result};
use scaledown_data::Example;
use scaledown_files::checkpoint::OscarSetup;
use scaledown_files::fs::write_atomic;
use scaledown_files::models;
use scaledown_model::burn::module::Module;
use scaledown_model::burn::prelude::Device;
use scaledown_model::burn::tensor::read_sync;
use scaledown_model::example::{Encoded, TrainExample};
use scaledown_model::oscar::OscarTokenizers;
use scaledown_model::recipe::RunConfig;
use scaledown_model::report::CeilingSummary;
use scaledown_model::stages::{self, RunEvents};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The fine-tuned uncompressed generator's evaluation and training cost.
#[derive(Debug, Serialize, Deserialize)]
pub struct Ceiling {
    pub run: EvalRun,
    pub steps: usize,
    pub losses: Vec<(usize, f32)>,
    pub train_seconds: f64,
    pub examples_per_second: f64,
}

impl From<&Ceiling> for CeilingSummary {
    fn from(c: &Ceiling) -> Self {
        Self {
            scores: c.run.scores,
            timing: c.run.timing,
            train_seconds: c.train_seconds,
            examples_per_second: c.examples_per_second,
            losses: c.losses.clone(),
        }
    }
}

/// Fine-tunes a fresh LoRA on the uncompressed generator for `total` steps on `train` with
/// the answers `answers` (ids, as the compressed model trained on) and evaluates it on `eval`.
/// The result is cached in `finetuned_ceiling.json`; an interrupted fine-tuning starts over.
#[allow(clippy::too_many_arguments)]
pub fn run(
    out: &Path,
    recipe: &RunConfig,
    setup: &OscarSetup,
    tokenizers: &OscarTokenizers,
    train: &[Example],
    answers: &[Vec<u32>],
    eval: &[Example],
    total: usize,
    device: &Device,
    events: &mut impl RunEvents<Error = anyhow::Error>,
) -> Result<Ceiling> {
    let path = out.join("finetuned_ceiling.json");
    if let Ok(text) = std::fs::read_to_string(&path)
        && let Ok(ceiling) = serde_json::from_str::<Ceiling>(&text)
        && ceiling.steps == total
    {
        return Ok(ceiling);
    }
    let mut examples = Vec::with_capacity(train.len());
    for (ex, answer) in train.iter().zip(answers) {
        examples.push(TrainExample::new(
            Encoded::full_text(tokenizers.full_text_prompt(ex)?),
            answer.clone(),
        ));
    }
    // The published generator with fresh LoRA of the recipe's shape, drawn from its seed; no
    // compressor.
    let lora = recipe
        .lora
        .context("the fine-tuned ceiling trains the generator's LoRA")?;
    device.seed(recipe.seed);
    let model = models::load_generator(&setup.generator, device)?
        .model
        .no_grad()
        .with_lora(lora.rank, lora.alpha)
        .train();
    let (model, state) = read_sync(stages::fine_tune_generator(
        recipe, model, &examples, total, events,
    ))
    .context("fine-tuning the uncompressed generator")?;
    let generator = model.valid().merged_in_blocks();
    // The uncompressed answers read every document: no keep-top.
    let evaluator = Evaluator::new(tokenizers, &setup.compressor, setup.max_new_tokens)
        .batch(recipe.evaluation.batch_size);
    let run = evaluate::uncompressed(&evaluator, &generator, eval, "eval fine-tuned uncompressed")?;
    println!("fine-tuned uncompressed (ceiling): {}", describe(&run));
    let ceiling = Ceiling {
        run,
        steps: total,
        examples_per_second: state.examples_per_second(),
        losses: state.losses,
        train_seconds: state.train_seconds,
    };
    write_atomic(&path, serde_json::to_string_pretty(&ceiling)?.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(ceiling)
}
