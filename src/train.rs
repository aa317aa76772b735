//! `scaledown train`: evaluate the compressed model before training, train it, evaluate it
//! during and after, compare it with the uncompressed generator, and write the report, the
//! plots and the checkpoints.

use crate::checkpoint::{self, OscarSetup};
use crate::evaluate::{self, EvalRun, Evaluator, describe};
use crate::fsutil::{read_text, write_atomic};
use crate::train_args::{CompressorFlag, TrainArgs};
use crate::{ceiling, models, passages, plots, prepare, progress, teacher};
use anyhow::{Context, Result, bail};
use scaledown_data::{Example, parse_examples};
use scaledown_model::burn::module::Module;
use scaledown_model::burn::tensor::read_sync;
use scaledown_model::checkpoint::with_path_param_ids;
use scaledown_model::compressor::CompressorType;
use scaledown_model::example::TrainExample;
use scaledown_model::llama::Llama;
use scaledown_model::oscar::{Oscar, OscarTokenizers};
use scaledown_model::pretraining::{self, PretrainingSet};
use scaledown_model::recipe::{Labels, RunConfig};
use scaledown_model::report::{Compression, EvalPoint, PretrainProbe, QaProbe, Report, TrainState};
use scaledown_model::training::{RunError, Trainer, batch_at};
use serde::Serialize;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

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
    resumed_optimizer: Option<(PathBuf, Vec<u8>)>,
}

/// Checks the flags, reads the data and builds the model, or loads it with `--resume`: the
/// run, its model and its progress so far.
fn start(models_dir: &Path, a: &TrainArgs) -> Result<(Run, checkpoint::Pipeline, TrainState)> {
    let recipe = a.recipe();
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
    let setup = recipe.setup(generator, encoder);

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
    let init_from = match (&resume_from, &a.init_from) {
        (None, Some(path)) => Some(init_checkpoint(path)?),
        _ => None,
    };
    let (mut loaded, state) = match (&resume_from, &init_from) {
        (Some((step, dir)), _) => {
            println!("resuming from {} (step {step})", dir.display());
            if let Some(saved) = checkpoint::read_recipe(dir)? {
                for change in saved.differences(&recipe) {
                    println!("--resume: the flags change the checkpoint's recipe: {change}");
                }
            }
            let (loaded, state) = load_trained(dir, &setup, "--resume", &device)?;
            (loaded, state)
        }
        (None, Some(dir)) => {
            let (loaded, from) = load_trained(dir, &setup, "--init-from", &device)?;
            println!(
                "starting from the weights of {} ({} pretraining and {} question-answering steps): a fresh epoch",
                dir.display(),
                from.pretrain_step,
                from.step
            );
            (loaded, from.pretraining_record())
        }
        (None, None) => (checkpoint::build(&setup, &device)?, TrainState::default()),
    };
    // The optimiser state finds its parameters by id: ids from their module paths are the
    // same in every process.
    loaded.oscar = with_path_param_ids(loaded.oscar);
    // --init-from starts the optimiser afresh: its moments belong to another schedule.
    let resumed_optimizer = match &resume_from {
        Some((_, dir)) => checkpoint::read_optimizer(dir)?
            .map(|bytes| (dir.join(checkpoint::OPTIMIZER_FILE), bytes)),
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
    /// The pretraining stage of this run (`probe_qa`: also answer the held-out questions at
    /// each probe, as `scaledown pretrain` does).
    fn pretraining<'a>(
        &'a self,
        args: &'a TrainArgs,
        tokenizers: &'a OscarTokenizers,
        probe_qa: bool,
    ) -> Pretraining<'a> {
        Pretraining {
            args,
            run: self,
            tokenizers,
            probe_qa,
        }
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
        for ((ex, target), teacher_scores) in train.iter().zip(&targets).zip(relevance) {
            let mut example = tokenizers.answer_example(&self.setup.compressor, ex, target)?;
            example.teacher_scores = teacher_scores;
            examples.push(example);
        }
        if self.recipe.loss.distill > 0.0 {
            let tokens = teacher::distributions(
                &out.join("teacher_tokens.json"),
                train,
                &examples,
                base_generator,
                tokenizers,
            )?;
            for (ex, t) in examples.iter_mut().zip(tokens) {
                ex.teacher_tokens = t;
            }
        }
        Ok(examples)
    }

    /// Question answering: the optimiser steps over `examples` from `state.step` on,
    /// logging, evaluating and checkpointing every --eval-steps. Returns the model as the last
    /// good step left it and, when a step failed (a NaN loss), why.
    fn answer_steps(
        &self,
        a: &TrainArgs,
        model: Oscar,
        examples: &[TrainExample],
        evaluator: &Evaluator,
        state: &mut TrainState,
    ) -> Result<(Oscar, Option<String>)> {
        let Run {
            eval,
            recipe,
            setup,
            checkpoints,
            ..
        } = self;
        let batch = recipe.optimiser.batch_size;
        let total = recipe.total_steps(examples.len());
        state.total_steps = total;
        let mut trainer = recipe.trainer(total, state.step);
        if state.step > 0 {
            resume_optimizer(&mut trainer, self.resumed_optimizer.as_ref())?;
        }
        let bar = progress::bar(total as u64, "training");
        bar.set_position(state.step as u64);
        let started = Instant::now();
        let seconds_before = state.train_seconds;
        let (model, result) = read_sync(trainer.run(
            model,
            total,
            |step| batch_at(examples, step, batch, recipe.seed),
            async |trainer, model, batch_examples, stats| -> Result<ControlFlow<()>> {
                let seconds = seconds_before + started.elapsed().as_secs_f64();
                state.record_step(batch_examples.len(), stats.loss, seconds);
                bar.set_message(format!("training loss {:.3}", stats.loss));
                bar.inc(1);
                if state.step.is_multiple_of(a.logging_steps as usize) || state.step == total {
                    bar.suspend(|| {
                        println!(
                            "step {}/{total} loss {:.4} grad-norm {:.3} lr {:.2e}",
                            state.step, stats.loss, stats.grad_norm, stats.compressor_lr
                        )
                    });
                }
                if a.eval_steps > 0
                    && state.step.is_multiple_of(a.eval_steps as usize)
                    && state.step < total
                {
                    let run = bar.suspend(|| {
                        evaluate::compressed(
                            evaluator,
                            &model.for_inference().in_blocks(),
                            eval,
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
                        setup,
                        recipe,
                        model,
                        state,
                        Some(optimizer_state(trainer)?),
                    )?;
                    checkpoint::prune(checkpoints, "step-", 2);
                }
                Ok(ControlFlow::Continue(()))
            },
        ));
        let stopped = match result {
            Ok(()) => None,
            Err(RunError::Step(e)) => {
                let msg = format!(
                    "{e}; the last good checkpoint is kept in {}",
                    checkpoints.display()
                );
                eprintln!("error: {msg}");
                Some(msg)
            }
            Err(RunError::After(e)) => return Err(e),
        };
        bar.finish_and_clear();
        Ok((model, stopped))
    }
}

/// The checkpoint that `--init-from PATH` names: PATH itself, or the latest under
/// PATH/checkpoints when PATH is a run's output folder.
fn init_checkpoint(path: &Path) -> Result<PathBuf> {
    if path.join("manifest.json").is_file() {
        checkpoint::verify(path).with_context(|| format!("--init-from {}", path.display()))?;
        return Ok(path.to_path_buf());
    }
    match checkpoint::latest(&path.join("checkpoints")) {
        Some((_, dir)) => Ok(dir),
        None => bail!(
            "--init-from {}: neither a checkpoint (no manifest.json) nor a run's output folder with one under checkpoints/",
            path.display()
        ),
    }
}

/// A trained checkpoint and its progress, checked against this run's setup: the same
/// compressor; the same generator training, or LoRA added to a frozen-generator checkpoint
/// before any question answering.
fn load_trained(
    dir: &Path,
    setup: &OscarSetup,
    flag: &str,
    device: &scaledown_model::burn::prelude::Device,
) -> Result<(checkpoint::Pipeline, TrainState)> {
    let (saved_setup, loaded) = checkpoint::load(dir, device)?;
    let state: TrainState = serde_json::from_slice(&checkpoint::read_checked(dir, "state.json")?)
        .with_context(|| format!("{}/state.json", dir.display()))?;
    // Pretrained with the generator frozen, question answering with LoRA: the pretrained
    // compressor goes on, the generator gets fresh adapters.
    let fresh_lora = state.step == 0 || flag == "--init-from";
    let (loaded, added) = loaded
        .continued_as(&saved_setup, setup, fresh_lora)
        .map_err(|e| anyhow::anyhow!("{flag}: {} {e}", dir.display()))?;
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
    let (run, loaded, mut state) = start(models_dir, &a)?;
    run.pretraining(&a, &loaded.tokenizers, true)
        .run(loaded.oscar.train(), &mut state)?;
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
    let (run, loaded, mut state) = start(models_dir, &a)?;
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

    let model = run
        .pretraining(&a, &tokenizers, false)
        .run(oscar.train(), &mut state)?;
    let total = recipe.total_steps(examples.len());
    let (model, stopped) = run.answer_steps(&a, model, &examples, &evaluator, &mut state)?;

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
                &a,
                recipe,
                setup,
                &tokenizers,
                train,
                &answers,
                eval,
                total,
                device,
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

/// The pretraining stage: its own step count, schedule, loss curve and checkpoints
/// (`pretrain-K`, then `pretrained`), resumed like question answering, and its scaling curve
/// (a [`PretrainProbe`] every --eval-steps) in `pretraining_curve.json` and `scaling_curve.png`.
struct Pretraining<'a> {
    /// The flags that name files and logging.
    args: &'a TrainArgs,
    run: &'a Run,
    tokenizers: &'a OscarTokenizers,
    /// Whether each probe also answers the held-out questions (`scaledown pretrain`; `train`
    /// evaluates them after question answering instead).
    probe_qa: bool,
}

impl Pretraining<'_> {
    fn run(&self, mut model: Oscar, state: &mut TrainState) -> Result<Oscar> {
        let (train, eval) = (&self.run.train, &self.run.eval);
        let a = self.args;
        let r = &self.run.recipe;
        let total = r.pretraining.steps;
        let out_of_time = |state: &TrainState| state.pretraining_out_of_time(&r.pretraining);
        // A run started --init-from keeps the record of its weights' pretraining.
        if state.pretraining_is_over(&r.pretraining) {
            return Ok(model);
        }
        state.pretrain_total = total;
        let passages = match a.pretrain_data.is_empty() {
            true => passages::of_examples(train),
            false => {
                let (kept, left_out) =
                    passages::read_all_outside(&a.pretrain_data, &self.run.held_out)?;
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
            set.add_passage(self.tokenizers, &self.run.setup.compressor, p)?;
        }
        let share = r.pretraining.reconstruction;
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
            r.optimiser.batch_size
        );
        let probe = self.probe_examples(eval)?;
        if state.pretrain_step == 0 && state.pretrain_memory_gap.is_empty() {
            self.probe(&model, &probe, eval, state)?;
        }
        let batch = r.optimiser.batch_size;
        let mut trainer = r.trainer(total, state.pretrain_step);
        if state.pretrain_step > 0 {
            resume_optimizer(&mut trainer, self.run.resumed_optimizer.as_ref())?;
        }
        let bar = progress::bar(total as u64, "pretraining");
        bar.set_position(state.pretrain_step as u64);
        let started = Instant::now();
        let seconds_before = state.pretrain_seconds;
        let first_step = state.pretrain_step;
        let (m, result) = match out_of_time(state) {
            true => (model, Ok(())),
            false => read_sync(trainer.run(
                model,
                total,
                |step| set.batch(step, batch, share, r.seed),
                async |trainer, model, _, stats| -> Result<ControlFlow<()>> {
                    let seconds = seconds_before + started.elapsed().as_secs_f64();
                    state.record_pretraining_step(stats.loss, seconds);
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
                        bar.suspend(|| self.probe(model, &probe, eval, state))?;
                        let dir = &self.run.checkpoints.join(format!("pretrain-{n}"));
                        checkpoint::save(
                            dir,
                            &self.run.setup,
                            &self.run.recipe,
                            model,
                            state,
                            Some(optimizer_state(trainer)?),
                        )?;
                        checkpoint::prune(&self.run.checkpoints, "pretrain-", 1);
                    }
                    Ok(match out_of_time(state) {
                        true => ControlFlow::Break(()),
                        false => ControlFlow::Continue(()),
                    })
                },
            )),
        };
        model = m;
        match result {
            Ok(()) => {}
            Err(RunError::Step(e)) => bail!(
                "pretraining: {e}; the last good checkpoint is kept in {}",
                &self.run.checkpoints.display()
            ),
            Err(RunError::After(e)) => return Err(e),
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
            &self.run.checkpoints.join("pretrained"),
            &self.run.setup,
            &self.run.recipe,
            &model,
            state,
            optimizer,
        )?;
        checkpoint::prune(&self.run.checkpoints, "pretrain-", 0);
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
                    &self.run.setup.compressor,
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
        let answering = model.for_inference();
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
            windows: step * self.run.recipe.optimiser.batch_size,
            seconds: state.pretrain_seconds,
            own,
            other,
            qa,
        });
        let curve = ScalingCurve {
            command: a,
            recipe: &self.run.recipe,
            setup: &self.run.setup,
            probes: &state.pretrain_memory_gap,
        };
        write_atomic(
            &self.run.out.join("pretraining_curve.json"),
            serde_json::to_string_pretty(&curve)?.as_bytes(),
        )?;
        plots::scaling_curve(
            &self.run.out.join("scaling_curve.png"),
            &state.pretrain_memory_gap,
        )
    }
}

impl Pretraining<'_> {
    /// The held-out questions answered from their compressed documents, and the memory use.
    fn answer_held_out(&self, answering: &Oscar, eval: &[Example], step: usize) -> Result<QaProbe> {
        let evaluator = self.run.recipe.evaluator(self.tokenizers);
        let run = evaluate::compressed(&evaluator, answering, eval, "held-out QA")?;
        let memory_use = evaluate::memory_use(&evaluator, answering, eval)?;
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
    recipe: &'a RunConfig,
    setup: &'a OscarSetup,
    probes: &'a [PretrainProbe],
}

/// Eval passages whose auto-encoding loss gauges the memory during pretraining.
const PROBE_PASSAGES: usize = 16;

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
