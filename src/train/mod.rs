//! `scaledown train`: evaluate the compressed model before training, train it, evaluate it
//! during and after, compare it with the uncompressed generator, and write the report, the
//! plots and the checkpoints.

use crate::evaluate::{self, EvalRun, Evaluator, describe};
mod args;
mod shell;

use crate::{ceiling, prepare, teacher};
use anyhow::{Context, Result, bail};
pub use args::{CompressorFlag, TrainArgs};
use scaledown_data::{Example, parse_examples};
use scaledown_files::checkpoint::{self, OscarSetup};
use scaledown_files::fs::{read_text, write_atomic};
use scaledown_files::{models, passages};
use scaledown_model::burn::module::Module;
use scaledown_model::burn::tensor::read_sync;
use scaledown_model::checkpoint::with_path_param_ids;
use scaledown_model::compressor::CompressorType;
use scaledown_model::example::TrainExample;
use scaledown_model::llama::Llama;
use scaledown_model::oscar::{Oscar, OscarTokenizers};
use scaledown_model::recipe::{Labels, RunConfig};
use scaledown_model::report::{Compression, EvalPoint, Report, TrainState};
use scaledown_model::stages::{self, Every, ResumedOptimizer, StageError};
use scaledown_plots as plots;
use shell::Shell;
use std::path::{Path, PathBuf};

/// What both stages of a run start from: the data, the model (fresh or resumed) and its state.
struct Run {
    device: scaledown_model::burn::prelude::Device,
    out: PathBuf,
    train: Vec<Example>,
    /// The evaluated examples (at most --max-eval-examples).
    eval: Vec<Example>,
    /// The whole eval file, whose articles pretraining must not see.
    held_out: Vec<Example>,
    recipe: RunConfig,
    setup: OscarSetup,
    checkpoints: PathBuf,
    /// AdamW's state in the checkpoint resumed from, if it has one: (file, bytes).
    resumed_optimizer: Option<(String, Vec<u8>)>,
}

/// What `--init-from` starts: question answering after the weights' pretraining (`train`), or
/// a new pretraining phase (`pretrain`).
#[derive(Clone, Copy)]
enum Command {
    Train,
    Pretrain,
}

/// Checks the flags, reads the data and builds the model, or loads it with `--resume`: the
/// run, its model and its progress so far.
fn start(
    models_dir: &Path,
    a: &TrainArgs,
    command: Command,
) -> Result<(Run, checkpoint::Pipeline, TrainState)> {
    let mut recipe = a.recipe();
    let compressor_type = recipe.compressor.compressor_type;
    let device = a.backend.device().map_err(anyhow::Error::msg)?;
    // The compressor's memory tokens and projector, and the LoRA factors, start random.
    device.seed(recipe.seed);
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
    eval.truncate(recipe.evaluation.max_examples);

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
        if a.compressor_type == CompressorFlag::Modernbert && architecture != "modernbert" {
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
    if a.finetuned_ceiling && recipe.lora.is_none() {
        bail!(
            "--finetuned-ceiling fine-tunes the generator's LoRA: it needs --generator-training lora"
        );
    }
    if recipe.evaluation.keep_top > 0 && !recipe.compressor.rerank {
        bail!(
            "--keep-top {} needs --rerank (a reranking head to choose the documents)",
            a.keep_top
        );
    }
    let mut setup = recipe.setup(generator, encoder);

    let checkpoints = out.join("checkpoints");
    let resume_from = if a.resume {
        checkpoint::latest(&checkpoints)
    } else {
        None
    };
    if a.resume && resume_from.is_none() {
        let from = match a.init_from {
            Some(_) => "--init-from",
            None => "scratch",
        };
        println!(
            "--resume: no checkpoint in {}; starting from {from}",
            checkpoints.display()
        );
    }
    let init_from = match (&resume_from, &a.init_from) {
        (None, Some(path)) => Some(checkpoint::named_by(path).context("--init-from")?),
        _ => None,
    };
    // A trained scorer is read with the factor it was trained with (4 in checkpoints from
    // before the factor was recorded), whatever this binary's default.
    if let Some(dir) = resume_from.as_ref().map(|(_, d)| d).or(init_from.as_ref()) {
        let scale = checkpoint::read_setup(dir)?.compressor.pool_score_scale;
        setup.compressor.pool_score_scale = scale;
        recipe.compressor.pool_score_scale = scale;
    }
    let (mut loaded, state) = match (&resume_from, &init_from) {
        (Some((step, dir)), _) => {
            println!("resuming from {} (step {step})", dir.display());
            if let Some(saved) = checkpoint::read_recipe(dir)? {
                for change in saved.differences(&recipe) {
                    println!("--resume: the flags change the checkpoint's recipe: {change}");
                }
            }
            let (loaded, state) = load_trained(dir, &setup, false, &device)?;
            (loaded, state)
        }
        (None, Some(dir)) => {
            let (loaded, from) = load_trained(dir, &setup, true, &device)?;
            let done = format!(
                "{} pretraining and {} question-answering steps",
                from.pretrain_step, from.step
            );
            let (next, state) = match command {
                Command::Train => ("a fresh epoch", from.pretraining_record()),
                Command::Pretrain => ("a new pretraining phase", from.new_pretraining_phase()),
            };
            println!(
                "starting from the weights of {} ({done}): {next}",
                dir.display()
            );
            (loaded, state)
        }
        (None, None) => (checkpoint::build(&setup, &device)?, TrainState::default()),
    };
    // The optimiser state finds its parameters by id: ids from their module paths are the
    // same in every process.
    loaded.oscar = with_path_param_ids(loaded.oscar);
    // --init-from starts the optimiser afresh: its moments belong to another schedule.
    let resumed_optimizer = match &resume_from {
        Some((_, dir)) => checkpoint::read_optimizer(dir)?.map(|bytes| {
            let file = dir.join(checkpoint::OPTIMIZER_FILE);
            (format!("--resume: {}", file.display()), bytes)
        }),
        None => None,
    };
    let run = Run {
        device,
        out,
        train,
        eval,
        held_out,
        recipe,
        setup,
        checkpoints,
        resumed_optimizer,
    };
    Ok((run, loaded, state))
}

impl Run {
    /// The pretraining stage of this run over --pretrain-data (or the training passages),
    /// probed on the eval passages; `answer_held_out`: also answer the held-out questions at
    /// each probe, as `scaledown pretrain` does.
    fn pretraining<'a>(
        &'a self,
        a: &TrainArgs,
        tokenizers: &'a OscarTokenizers,
        answer_held_out: bool,
    ) -> Result<stages::Pretraining<'a>> {
        let passages = match a.pretrain_data.is_empty() {
            true => passages::of_examples(&self.train),
            false => {
                let (kept, left_out) =
                    passages::read_all_outside(&a.pretrain_data, &self.held_out)?;
                if left_out > 0 {
                    println!(
                        "pretraining: {left_out} entries of --pretrain-data (repeats counted) belong to eval articles and are left out"
                    );
                }
                kept
            }
        };
        let every = Every {
            eval_steps: a.eval_steps as usize,
        };
        let eval_passages = passages::of_examples(&self.eval);
        let mut stage =
            stages::Pretraining::new(&self.recipe, tokenizers, &passages, &eval_passages, every)
                .map_err(|e| match e {
                    StageError::NoExamples(_) => anyhow::anyhow!(
                        "--pretrain-reconstruction {}: {e}",
                        self.recipe.pretraining.reconstruction.permille as f64 / 1000.0
                    ),
                    e => e.into(),
                })?;
        if answer_held_out {
            stage.answer_held_out = &self.eval;
        }
        Ok(stage)
    }

    /// Runs the pretraining stage on `model` (at once returned when pretraining is over).
    fn pretrain(
        &self,
        a: &TrainArgs,
        tokenizers: &OscarTokenizers,
        answer_held_out: bool,
        model: Oscar,
        state: &mut TrainState,
    ) -> Result<Oscar> {
        if state.pretraining_is_over(&self.recipe.pretraining) {
            return Ok(model);
        }
        let stage = self.pretraining(a, tokenizers, answer_held_out)?;
        let mut shell = Shell::new(a, self);
        let model =
            read_sync(stage.run(model, state, self.resumed(), &mut shell)).map_err(|e| {
                match e.downcast_ref::<StageError>() {
                    // A failed step (a NaN loss) leaves the last good checkpoint to go on from.
                    Some(StageError::Step(_)) => e.context(format!(
                        "pretraining (the last good checkpoint is kept in {})",
                        self.checkpoints.display()
                    )),
                    _ => e,
                }
            })?;
        let total = self.recipe.pretraining.steps;
        if state.pretraining_out_of_time(&self.recipe.pretraining) && state.pretrain_step < total {
            println!(
                "pretraining: --pretrain-minutes reached after {} of {total} steps",
                state.pretrain_step
            );
        }
        Ok(model)
    }

    /// AdamW's state in the checkpoint resumed from, for a stage to continue.
    fn resumed(&self) -> Option<ResumedOptimizer<'_>> {
        self.resumed_optimizer
            .as_ref()
            .map(|(from, bytes)| ResumedOptimizer { from, bytes })
    }

    /// The training examples: each question with its target answer (gold, or the teacher's),
    /// the teacher's relevance scores with --rerank and its token distributions with
    /// --distill-weight (both cached in the output folder).
    fn training_examples(
        &self,
        models_dir: &Path,
        tokenizers: &OscarTokenizers,
        base_generator: &Llama,
        evaluator: &Evaluator,
    ) -> Result<Vec<TrainExample>> {
        let (out, train) = (&self.out, &self.train);
        let targets: Vec<String> = match self.recipe.labels {
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
                    base_generator,
                    evaluator,
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
        let relevance = match self.recipe.compressor.rerank {
            true => teacher::relevance(
                &out.join("teacher_relevance.json"),
                train,
                models_dir,
                &self.device,
            )?,
            false => vec![vec![]; train.len()],
        };
        let mut examples = Vec::with_capacity(train.len());
        for ((ex, target), scores) in train.iter().zip(&targets).zip(relevance) {
            let example = tokenizers.answer_example(&self.setup.compressor, ex, target)?;
            examples.push(example.with_relevance(scores));
        }
        if self.recipe.loss.span > 0.0 {
            let found = examples
                .iter()
                .filter(|e| !e.answer_tokens.is_empty())
                .count();
            println!(
                "span loss: the answer found in the documents of {found} of {} examples",
                examples.len()
            );
        }
        if self.recipe.loss.distill == 0.0 {
            return Ok(examples);
        }
        let tokens = teacher::distributions(
            &out.join("teacher_tokens.json"),
            train,
            &examples,
            base_generator,
            tokenizers,
        )?;
        Ok(examples
            .into_iter()
            .zip(tokens)
            .map(|(ex, t)| ex.with_teacher_tokens(t))
            .collect())
    }
}

/// A trained checkpoint and its progress, checked against this run's setup (see
/// [`checkpoint::load_continued`]); `fresh_epoch`: `--init-from`, else `--resume`.
fn load_trained(
    dir: &Path,
    setup: &OscarSetup,
    fresh_epoch: bool,
    device: &scaledown_model::burn::prelude::Device,
) -> Result<(checkpoint::Pipeline, TrainState)> {
    let flag = if fresh_epoch {
        "--init-from"
    } else {
        "--resume"
    };
    let (loaded, state, added) =
        checkpoint::load_continued(dir, setup, fresh_epoch, device).context(flag)?;
    if let Some(rank) = added {
        println!(
            "{flag}: a frozen-generator checkpoint gets fresh LoRA (r {rank}) on the generator"
        );
    }
    Ok((loaded, state))
}

/// `scaledown pretrain`: the pretraining stage alone, probed every --eval-steps, with its
/// scaling curve (memory gap and held-out QA against windows seen) in
/// `pretraining_curve.json` and `scaling_curve.png`.
pub fn pretrain(models_dir: &Path, a: TrainArgs) -> Result<()> {
    if a.pretrain_steps == 0 {
        bail!("--pretrain-steps: give the pretraining budget in steps of --batch-size windows");
    }
    let (run, loaded, mut state) = start(models_dir, &a, Command::Pretrain)?;
    run.pretrain(
        &a,
        &loaded.tokenizers,
        true,
        loaded.oscar.train(),
        &mut state,
    )?;
    let Run {
        out,
        recipe,
        checkpoints,
        ..
    } = &run;
    println!(
        "pretrained {} steps ({} windows) in {:.0} s; curve in {}, checkpoint in {}",
        state.pretrain_step,
        state.pretrain_step * recipe.optimiser.batch_size,
        state.pretrain_seconds,
        out.join("scaling_curve.png").display(),
        checkpoints.join("pretrained").display()
    );
    Ok(())
}

pub fn run(models_dir: &Path, a: TrainArgs) -> Result<()> {
    let (run, loaded, mut state) = start(models_dir, &a, Command::Train)?;
    let checkpoint::Pipeline {
        oscar,
        base_generator,
        tokenizers,
        ..
    } = loaded;
    let Run {
        device,
        out,
        train,
        eval,
        recipe,
        setup,
        checkpoints,
        ..
    } = &run;
    let evaluator = recipe.evaluator(&tokenizers);
    let examples = run.training_examples(models_dir, &tokenizers, &base_generator, &evaluator)?;

    // Baseline and before-training evaluation (skipped on resume when already written).
    let baseline = cached_run(&out.join("baseline_results.json"), || {
        evaluate::uncompressed(&evaluator, &base_generator, eval, "baseline (uncompressed)")
    })?;
    println!("uncompressed baseline: {}", describe(&baseline));
    let before_model = oscar.for_inference().in_blocks();
    let before = cached_run(&out.join("before_training_results.json"), || {
        evaluate::compressed(&evaluator, &before_model, eval, "eval before training")
    })?;
    println!("before training:       {}", describe(&before));
    // Only a model that has not trained yet gives the "before" figure (not a resumed one).
    if state.memory_use_before.is_none() && state.step == 0 && state.pretrain_step == 0 {
        let m = evaluate::memory_use(&evaluator, &before_model, eval)?;
        println!("memory use, before:    {m}");
        state.memory_use_before = Some(m);
    }
    drop(before_model);

    let model = run.pretrain(&a, &tokenizers, false, oscar.train(), &mut state)?;
    let total = recipe.total_steps(examples.len());
    let every = Every {
        eval_steps: a.eval_steps as usize,
    };
    let stage = stages::QuestionAnswering {
        recipe,
        examples: &examples,
        evaluator: &evaluator,
        eval,
        every,
    };
    let (model, stopped) =
        read_sync(stage.run(model, &mut state, run.resumed(), &mut Shell::new(&a, &run)))?;
    let stopped = stopped.map(|e| {
        let msg = format!(
            "{e}; the last good checkpoint is kept in {}",
            checkpoints.display()
        );
        eprintln!("error: {msg}");
        msg
    });

    let after_model = model.for_inference().in_blocks();
    let after = evaluate::compressed(&evaluator, &after_model, eval, "eval after training")?;
    println!("after training:        {}", describe(&after));
    let memory_use_after = evaluate::memory_use(&evaluator, &after_model, eval)?;
    println!("memory use, after:     {memory_use_after}");
    state.evals.push(EvalPoint {
        step: state.step,
        scores: after.scores,
    });
    if stopped.is_none() {
        checkpoint::save(
            &checkpoints.join("final"),
            setup,
            recipe,
            &model,
            &state,
            None,
        )?;
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
                out,
                recipe,
                setup,
                &tokenizers,
                train,
                &answers,
                eval,
                total,
                device,
                &mut Shell::new(&a, &run),
            )?;
            println!(
                "compressed match / fine-tuned uncompressed match: {:.0} %",
                100.0 * after.scores.match_accuracy / c.run.scores.match_accuracy.max(1e-9)
            );
            Some(c)
        }
        false => None,
    };

    let report = Report {
        backend: a.backend.to_string(),
        train_examples: train.len(),
        eval_examples: eval.len(),
        compression: Compression::of(&tokenizers, &setup.compressor, eval)?,
        baseline_uncompressed: (&baseline).into(),
        before: (&before).into(),
        after: (&after).into(),
        speedup: baseline.timing.speedup_to(&after.timing),
        memory_use_after,
        finetuned_ceiling: finetuned.as_ref().map(Into::into),
        examples_per_second: state.examples_per_second(),
        training: state,
        stopped: stopped.clone(),
        setup: setup.clone(),
        recipe: recipe.clone(),
        command: serde_json::to_value(&a)?,
    };
    write_atomic(
        &out.join("metrics_report.json"),
        serde_json::to_string_pretty(&report)?.as_bytes(),
    )?;
    let ceiling_run = finetuned.as_ref().map(|c| &c.run);
    plots::write_all(out, &report, &baseline, &before, &after, ceiling_run)?;
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
