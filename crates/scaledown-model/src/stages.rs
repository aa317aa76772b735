//! The stages of a run as the library runs them: compressor pretraining (with its memory-gap
//! probes), question answering (with its evaluations) and the fine-tuned ceiling (a plain
//! generator with LoRA). Each keeps the run's [`TrainState`], its schedule and its resume
//! point; what happens around the steps — progress, log lines, checkpoints, curve files — is
//! the caller's, through [`RunEvents`] (the CLI: progress bars and files).

use crate::evaluation::{EvalError, Evaluator};
use crate::example::TrainExample;
use crate::llama::Llama;
use crate::oscar::{Oscar, OscarTokenizers};
use crate::pretraining::{self, PretrainingSet};
use crate::recipe::RunConfig;
use crate::report::{EvalPoint, PretrainProbe, QaProbe, TrainState};
use crate::training::{RunError, StepStats, TrainError, Trainer, batch_at};
use crate::weights::WeightError;
use scaledown_data::{EvalRun, Example};
use std::ops::ControlFlow;
use web_time::Instant;

/// Which stage an event comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Pretraining,
    QuestionAnswering,
    Ceiling,
}

/// A checkpoint a stage asks its caller to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checkpoint {
    /// During pretraining, after this step (only the latest is worth keeping).
    Pretraining(usize),
    /// The end of pretraining (its steps or its minutes).
    Pretrained,
    /// During question answering, after this step.
    Step(usize),
}

/// Why a stage stopped.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error(transparent)]
    Step(#[from] TrainError),
    #[error(transparent)]
    Eval(#[from] EvalError),
    #[error(transparent)]
    Tokenizer(#[from] WeightError),
    #[error("{0}: {1}")]
    Optimizer(String, String),
    #[error("the passages give no {0} example for the pretraining mix")]
    NoExamples(&'static str),
}

/// What the caller of a stage does around its steps. The stage calls these in order:
/// `started`, then per step `stepped` (the state already records it), `evaluated` / `probed`
/// and `checkpoint` when due, and `finished`.
pub trait RunEvents {
    type Error: From<StageError>;
    /// The stage begins at step `done` of `total`.
    fn started(&mut self, stage: Stage, done: usize, total: usize);
    fn stepped(&mut self, stage: Stage, state: &TrainState, stats: &StepStats);
    /// An evaluation or probe inside the stage has scored `done` of `total` items.
    fn progress(&mut self, label: &str, done: usize, total: usize);
    /// A line worth telling the user.
    fn note(&mut self, line: &str);
    /// Question answering evaluated the held-out questions after `step` (in `state.evals`).
    fn evaluated(&mut self, step: usize, run: &EvalRun);
    /// Pretraining added a probe (`state.pretrain_memory_gap`'s last) on `passages` passages.
    fn probed(&mut self, state: &TrainState, passages: usize) -> Result<(), Self::Error>;
    fn checkpoint(
        &mut self,
        at: Checkpoint,
        model: &Oscar,
        state: &TrainState,
        optimizer: Option<Vec<u8>>,
    ) -> Result<(), Self::Error>;
    fn finished(&mut self, stage: Stage);
}

/// AdamW's state saved with the checkpoint a run resumes from: where it came from (for
/// messages) and its bytes.
pub struct ResumedOptimizer<'a> {
    pub from: &'a str,
    pub bytes: &'a [u8],
}

/// How often a stage evaluates (and checkpoints): every `eval_steps` steps, 0 for never.
#[derive(Debug, Clone, Copy)]
pub struct Every {
    pub eval_steps: usize,
}

impl Every {
    fn due(&self, step: usize, total: usize) -> bool {
        self.eval_steps > 0 && step.is_multiple_of(self.eval_steps) && step < total
    }
}

/// Eval passages whose auto-encoding loss gauges the memory during pretraining.
pub const PROBE_PASSAGES: usize = 16;

/// The pretraining stage: its examples (auto-encoding and continuation windows of passages
/// outside the eval articles), its probe (the first window of up to [`PROBE_PASSAGES`] eval
/// passages) and, with `answer_held_out`, held-out question answering at each probe.
pub struct Pretraining<'a> {
    pub recipe: &'a RunConfig,
    pub tokenizers: &'a OscarTokenizers,
    pub set: PretrainingSet,
    /// The passages the set was cut from.
    pub passages: usize,
    pub probe: Vec<TrainExample>,
    /// The held-out questions each probe answers (`scaledown pretrain`), or none.
    pub answer_held_out: &'a [Example],
    pub every: Every,
}

impl<'a> Pretraining<'a> {
    /// The stage over `passages`, probed on `eval_passages`.
    pub fn new(
        recipe: &'a RunConfig,
        tokenizers: &'a OscarTokenizers,
        passages: &[String],
        eval_passages: &[String],
        every: Every,
    ) -> Result<Self, StageError> {
        let config = &recipe.compressor;
        let mut set = PretrainingSet::default();
        for p in passages {
            set.add_passage(tokenizers, config, p)?;
        }
        if let Some(objective) = set.missing(recipe.pretraining.reconstruction) {
            return Err(StageError::NoExamples(objective));
        }
        let probe = eval_passages
            .iter()
            .take(PROBE_PASSAGES)
            .map(|p| pretraining::first_window_auto_encoding(tokenizers, config, p))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            recipe,
            tokenizers,
            set,
            passages: passages.len(),
            probe,
            answer_held_out: &[],
            every,
        })
    }

    /// Pretrains `model` from `state.pretrain_step` to the recipe's steps or minutes, probing
    /// at the start, every `eval_steps` and at the end; checkpoints with each probe and
    /// [`Checkpoint::Pretrained`] at the end. A run past pretraining returns at once.
    pub async fn run<E: RunEvents>(
        &self,
        model: Oscar,
        state: &mut TrainState,
        resumed: Option<ResumedOptimizer<'_>>,
        events: &mut E,
    ) -> Result<Oscar, E::Error> {
        let r = self.recipe;
        if state.pretraining_is_over(&r.pretraining) {
            return Ok(model);
        }
        // A phase started from pretrained weights (`pretrain --init-from`) has its own
        // schedule of `steps`, and its windows follow the ones they saw.
        let (start, steps) = (state.pretrain_phase.step, r.pretraining.steps);
        let total = start + steps;
        state.pretrain_total = total;
        let (batch, share) = (r.optimiser.batch_size, r.pretraining.reconstruction);
        let phase = match start {
            0 => String::new(),
            _ => format!(" (a new phase after the {start} steps of the weights it starts from)"),
        };
        events.note(&format!(
            "pretraining ({share}): {} passages, {} auto-encoding and {} continuation windows, {steps} steps of {batch}{phase}",
            self.passages,
            self.set.auto_encoding.len(),
            self.set.continuation.len(),
        ));
        if state.pretrain_step == 0 && state.pretrain_memory_gap.is_empty() {
            self.probe(&model, state, events).await?;
        }
        let mut trainer = r.trainer(steps, state.pretrain_phase_step());
        if state.pretrain_phase_step() > 0 {
            resume(&mut trainer, resumed, events)?;
        }
        events.started(Stage::Pretraining, state.pretrain_step, total);
        let (started, seconds_before) = (Instant::now(), state.pretrain_seconds);
        let out_of_time = |state: &TrainState| state.pretraining_out_of_time(&r.pretraining);
        let (model, result) = match out_of_time(state) {
            true => (model, Ok(())),
            false => {
                trainer
                    .run(
                        model,
                        steps,
                        |step| self.set.batch(start + step, batch, share, r.seed),
                        async |trainer, model, _, stats| -> Result<ControlFlow<()>, E::Error> {
                            let seconds = seconds_before + started.elapsed().as_secs_f64();
                            state.record_pretraining_step(stats.loss, seconds);
                            events.stepped(Stage::Pretraining, state, &stats);
                            let n = state.pretrain_step;
                            if self.every.due(state.pretrain_phase_step(), steps) {
                                self.probe(model, state, events).await?;
                                let optimizer = optimizer_state(trainer)?;
                                events.checkpoint(
                                    Checkpoint::Pretraining(n),
                                    model,
                                    state,
                                    Some(optimizer),
                                )?;
                            }
                            Ok(match out_of_time(state) {
                                true => ControlFlow::Break(()),
                                false => ControlFlow::Continue(()),
                            })
                        },
                    )
                    .await
            }
        };
        match result {
            Ok(()) => {}
            Err(RunError::Step(e)) => return Err(StageError::Step(e).into()),
            Err(RunError::After(e)) => return Err(e),
        }
        events.finished(Stage::Pretraining);
        if state.pretrain_memory_gap.last().map(|p| p.step) != Some(state.pretrain_step) {
            self.probe(&model, state, events).await?;
        }
        // Stopped by its minutes, pretraining may go on from here: keep its moments.
        let optimizer = match state.pretrain_step < total {
            true => Some(optimizer_state(&trainer)?),
            false => None,
        };
        events.checkpoint(Checkpoint::Pretrained, &model, state, optimizer)?;
        Ok(model)
    }

    /// Measures the memory gap (and held-out QA) now and adds the probe to `state`.
    async fn probe<E: RunEvents>(
        &self,
        model: &Oscar,
        state: &mut TrainState,
        events: &mut E,
    ) -> Result<(), E::Error> {
        let n = self.probe.len();
        if n < 2 {
            return Ok(());
        }
        let answering = model.for_inference();
        let (own, other) = pretraining::memory_gap(&answering, &self.probe, |k| {
            events.progress("memory gap", k, 2 * n)
        });
        let qa = match self.answer_held_out.is_empty() {
            true => None,
            false => {
                let evaluator = self.recipe.evaluator(self.tokenizers);
                let eval = self.answer_held_out;
                let run = compressed(&evaluator, &answering, eval, "held-out QA", events).await?;
                let memory_use = evaluator
                    .memory_use(&answering, eval, |k, t| events.progress("memory use", k, t))
                    .map_err(StageError::from)?;
                Some(QaProbe {
                    scores: run.scores,
                    memory_use,
                })
            }
        };
        let step = state.pretrain_step;
        state.pretrain_memory_gap.push(PretrainProbe {
            step,
            windows: step * self.recipe.optimiser.batch_size,
            seconds: state.pretrain_seconds,
            own,
            other,
            qa,
        });
        events.probed(state, n)
    }
}

/// The question-answering stage: optimiser steps over its examples, evaluating `eval` with
/// `evaluator` and checkpointing every `every.eval_steps`.
pub struct QuestionAnswering<'a> {
    pub recipe: &'a RunConfig,
    pub examples: &'a [TrainExample],
    pub evaluator: &'a Evaluator<'a>,
    pub eval: &'a [Example],
    pub every: Every,
}

impl QuestionAnswering<'_> {
    /// Trains `model` from `state.step` on. Returns the model as the last good step left it
    /// and, when a step failed (a NaN loss), why.
    pub async fn run<E: RunEvents>(
        &self,
        model: Oscar,
        state: &mut TrainState,
        resumed: Option<ResumedOptimizer<'_>>,
        events: &mut E,
    ) -> Result<(Oscar, Option<TrainError>), E::Error> {
        let Self {
            recipe,
            examples,
            evaluator,
            eval,
            every,
        } = *self;
        let batch = recipe.optimiser.batch_size;
        let total = recipe.total_steps(examples.len());
        state.total_steps = total;
        let mut trainer = recipe.trainer(total, state.step);
        if state.step > 0 {
            resume(&mut trainer, resumed, events)?;
        }
        events.started(Stage::QuestionAnswering, state.step, total);
        let (started, seconds_before) = (Instant::now(), state.train_seconds);
        let (model, result) = trainer
            .run(
                model,
                total,
                |step| batch_at(examples, step, batch, recipe.seed),
                async |trainer,
                       model,
                       batch_examples,
                       stats|
                       -> Result<ControlFlow<()>, E::Error> {
                    let seconds = seconds_before + started.elapsed().as_secs_f64();
                    state.record_step(batch_examples.len(), stats.loss, seconds);
                    events.stepped(Stage::QuestionAnswering, state, &stats);
                    if every.due(state.step, total) {
                        let answering = model.for_inference().in_blocks();
                        let run = compressed(evaluator, &answering, eval, "eval", events).await?;
                        state.evals.push(EvalPoint {
                            step: state.step,
                            scores: run.scores,
                        });
                        events.evaluated(state.step, &run);
                        let optimizer = optimizer_state(trainer)?;
                        events.checkpoint(
                            Checkpoint::Step(state.step),
                            model,
                            state,
                            Some(optimizer),
                        )?;
                    }
                    Ok(ControlFlow::Continue(()))
                },
            )
            .await;
        events.finished(Stage::QuestionAnswering);
        match result {
            Ok(()) => Ok((model, None)),
            Err(RunError::Step(e)) => Ok((model, Some(e))),
            Err(RunError::After(e)) => Err(e),
        }
    }
}

/// The fine-tuned ceiling's training: `generator` (with fresh LoRA) fine-tuned for `total`
/// steps on full-text `examples`, with the compressed run's schedule and batches. Returns the
/// trained generator and its record (steps, losses, time).
pub async fn fine_tune_generator<E: RunEvents>(
    recipe: &RunConfig,
    generator: Llama,
    examples: &[TrainExample],
    total: usize,
    events: &mut E,
) -> Result<(Llama, TrainState), E::Error> {
    let mut trainer = recipe.trainer(total, 0);
    let batch = recipe.optimiser.batch_size;
    let mut state = TrainState {
        total_steps: total,
        ..TrainState::default()
    };
    events.started(Stage::Ceiling, 0, total);
    let started = Instant::now();
    let (model, result) = trainer
        .run(
            generator,
            total,
            |step| batch_at(examples, step, batch, recipe.seed),
            async |_, _, batch_examples, stats| -> Result<ControlFlow<()>, E::Error> {
                let seconds = started.elapsed().as_secs_f64();
                state.record_step(batch_examples.len(), stats.loss, seconds);
                events.stepped(Stage::Ceiling, &state, &stats);
                Ok(ControlFlow::Continue(()))
            },
        )
        .await;
    events.finished(Stage::Ceiling);
    match result {
        Ok(()) => Ok((model, state)),
        Err(RunError::Step(e)) => Err(StageError::Step(e).into()),
        Err(RunError::After(e)) => Err(e),
    }
}

/// `model` answering `eval` from memory vectors, its progress reported under `label`.
async fn compressed<E: RunEvents>(
    evaluator: &Evaluator<'_>,
    model: &Oscar,
    eval: &[Example],
    label: &str,
    events: &mut E,
) -> Result<EvalRun, E::Error> {
    let n = eval.len();
    let run = evaluator
        .compressed(model, eval, async |k| events.progress(label, k, n))
        .await
        .map_err(StageError::from)?;
    Ok(run)
}

fn optimizer_state(trainer: &Trainer) -> Result<Vec<u8>, StageError> {
    trainer
        .optimizer_state()
        .map_err(|e| StageError::Optimizer("saving AdamW's state".into(), e))
}

/// Continues AdamW's moments from the checkpoint resumed (older checkpoints have none: the
/// moments then start again from zero and the run is no longer step-for-step the same).
fn resume<E: RunEvents>(
    trainer: &mut Trainer,
    resumed: Option<ResumedOptimizer<'_>>,
    events: &mut E,
) -> Result<(), StageError> {
    match resumed {
        Some(r) => trainer
            .load_optimizer_state(r.bytes)
            .map_err(|e| StageError::Optimizer(r.from.to_string(), e)),
        None => {
            events.note(
                "--resume: the checkpoint holds no optimizer state; AdamW's moments start again",
            );
            Ok(())
        }
    }
}
