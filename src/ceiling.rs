//! The compressed model's fair ceiling (`train --finetuned-ceiling`): the uncompressed
//! generator alone (no compressor) fine-tuned with the same LoRA recipe, steps, batches and
//! target answers, reading the documents' full text instead of their memory vectors, then
//! evaluated like the baseline.

use crate::checkpoint::OscarSetup;
use crate::evaluate::{self, EvalRun, Evaluator, describe};
use crate::fsutil::write_atomic;
use crate::train_args::TrainArgs;
use crate::{models, progress};
use anyhow::{Context, Result, anyhow};
use scaledown_data::Example;
use scaledown_model::burn::module::Module;
use scaledown_model::burn::prelude::Device;
use scaledown_model::burn::tensor::read_sync;
use scaledown_model::example::{Encoded, TrainExample};
use scaledown_model::oscar::OscarTokenizers;
use scaledown_model::recipe::RunConfig;
use scaledown_model::report::{CeilingSummary, TrainState};
use scaledown_model::training::batch_at;
use serde::{Deserialize, Serialize};
use std::convert::Infallible;
use std::ops::ControlFlow;
use std::time::Instant;

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
    a: &TrainArgs,
    recipe: &RunConfig,
    setup: &OscarSetup,
    tokenizers: &OscarTokenizers,
    train: &[Example],
    answers: &[Vec<u32>],
    eval: &[Example],
    total: usize,
    device: &Device,
) -> Result<Ceiling> {
    let path = a.output_dir.join("finetuned_ceiling.json");
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
    let mut trainer = recipe.trainer(total, 0);
    let batch = recipe.optimiser.batch_size;
    let mut state = TrainState::default();
    let bar = progress::bar(total as u64, "fine-tuning the uncompressed generator");
    let started = Instant::now();
    let (model, result) = read_sync(trainer.run(
        model,
        total,
        |step| batch_at(&examples, step, batch, recipe.seed),
        async |trainer, _, batch_examples, stats| -> Result<ControlFlow<()>, Infallible> {
            let step = trainer.step;
            let seconds = started.elapsed().as_secs_f64();
            state.record_step(batch_examples.len(), stats.loss, seconds);
            bar.set_message(format!("loss {:.3}", stats.loss));
            bar.inc(1);
            if step % a.logging_steps as usize == 0 || step == total {
                bar.suspend(|| println!("ceiling step {step}/{total} loss {:.4}", stats.loss));
            }
            Ok(ControlFlow::Continue(()))
        },
    ));
    result.map_err(|e| anyhow!("fine-tuning the uncompressed generator: {e}"))?;
    bar.finish_and_clear();
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
