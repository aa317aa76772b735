//! The terminal and the files around a run's stages ([`RunEvents`]): progress bars and log
//! lines, the checkpoint folders the stages ask for, and the scaling curve after each
//! pretraining probe.

use super::Run;
use super::args::TrainArgs;
use crate::evaluate::{EvalRun, describe, describe_scores};
use crate::progress;
use anyhow::Result;
use indicatif::{MultiProgress, ProgressBar};
use scaledown_files::checkpoint::{self, OscarSetup};
use scaledown_files::fs::write_atomic;
use scaledown_model::oscar::Oscar;
use scaledown_model::recipe::RunConfig;
use scaledown_model::report::{PretrainProbe, TrainState};
use scaledown_model::stages::{Checkpoint, RunEvents, Stage};
use scaledown_model::training::StepStats;
use scaledown_plots as plots;
use serde::Serialize;
use std::time::Instant;

pub(super) struct Shell<'a> {
    args: &'a TrainArgs,
    run: &'a Run,
    bars: MultiProgress,
    /// The stage's steps, and an evaluation or probe inside it.
    steps: Option<ProgressBar>,
    inner: Option<(String, ProgressBar)>,
    /// When this session's steps began, and at which step.
    started: (Instant, usize),
}

impl<'a> Shell<'a> {
    pub(super) fn new(args: &'a TrainArgs, run: &'a Run) -> Self {
        Self {
            args,
            run,
            bars: MultiProgress::new(),
            steps: None,
            inner: None,
            started: (Instant::now(), 0),
        }
    }

    fn println(&self, line: &str) {
        self.bars.suspend(|| println!("{line}"));
    }

    fn clear_inner(&mut self) {
        if let Some((_, bar)) = self.inner.take() {
            bar.finish_and_clear();
        }
    }
}

impl RunEvents for Shell<'_> {
    type Error = anyhow::Error;

    fn started(&mut self, stage: Stage, done: usize, total: usize) {
        let label = match stage {
            Stage::Pretraining => "pretraining",
            Stage::QuestionAnswering => "training",
            Stage::Ceiling => "fine-tuning the uncompressed generator",
        };
        let bar = self.bars.add(progress::bar(total as u64, label));
        bar.set_position(done as u64);
        self.steps = Some(bar);
        self.started = (Instant::now(), done);
    }

    fn stepped(&mut self, stage: Stage, state: &TrainState, stats: &StepStats) {
        self.clear_inner();
        let Some(bar) = &self.steps else { return };
        bar.inc(1);
        let every = self.args.logging_steps as usize;
        let line = match stage {
            Stage::Pretraining => {
                let (n, total) = (state.pretrain_step, state.pretrain_total);
                let batch = self.run.recipe.optimiser.batch_size;
                // Windows (pretraining examples) per second over this session's steps.
                let (since, first) = self.started;
                let per_second =
                    ((n - first) * batch) as f64 / since.elapsed().as_secs_f64().max(1e-9);
                bar.set_message(format!(
                    "pretraining loss {:.3}, {per_second:.2} windows/s",
                    stats.loss
                ));
                (n.is_multiple_of(every) || n == total).then(|| {
                    format!(
                        "pretraining step {n}/{total} ({} windows) loss {:.4}, lr {:.2e}, {per_second:.2} windows/s",
                        n * batch,
                        stats.loss,
                        stats.compressor_lr
                    )
                })
            }
            Stage::QuestionAnswering => {
                let (n, total) = (state.step, state.total_steps);
                bar.set_message(format!("training loss {:.3}", stats.loss));
                (n.is_multiple_of(every) || n == total).then(|| {
                    format!(
                        "step {n}/{total} loss {:.4} grad-norm {:.3} lr {:.2e}",
                        stats.loss, stats.grad_norm, stats.compressor_lr
                    )
                })
            }
            Stage::Ceiling => {
                let (n, total) = (state.step, state.total_steps);
                bar.set_message(format!("loss {:.3}", stats.loss));
                (n.is_multiple_of(every) || n == total)
                    .then(|| format!("ceiling step {n}/{total} loss {:.4}", stats.loss))
            }
        };
        if let Some(line) = line {
            self.println(&line);
        }
    }

    fn progress(&mut self, label: &str, done: usize, total: usize) {
        if self.inner.as_ref().is_none_or(|(l, _)| l != label) {
            self.clear_inner();
            let bar = self.bars.add(progress::bar(total as u64, label));
            self.inner = Some((label.to_string(), bar));
        }
        let (_, bar) = self.inner.as_ref().expect("made above");
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    }

    fn note(&mut self, line: &str) {
        self.println(line);
    }

    fn evaluated(&mut self, step: usize, run: &EvalRun) {
        self.clear_inner();
        self.println(&format!("step {step}: {}", describe(run)));
    }

    fn probed(&mut self, state: &TrainState, passages: usize) -> Result<()> {
        self.clear_inner();
        let Some(p) = state.pretrain_memory_gap.last() else {
            return Ok(());
        };
        self.println(&format!(
            "pretraining step {}: auto-encoding loss {:.3} with its own memory, \
             {:.3} with another passage's ({} passages)",
            p.step, p.own, p.other, passages
        ));
        if let Some(qa) = &p.qa {
            self.println(&format!(
                "pretraining step {}: held-out QA {}\n  memory use: {}",
                p.step,
                describe_scores(&qa.scores),
                qa.memory_use
            ));
        }
        let out = &self.run.out;
        let curve = ScalingCurve {
            command: self.args,
            recipe: &self.run.recipe,
            setup: &self.run.setup,
            probes: &state.pretrain_memory_gap,
        };
        write_atomic(
            &out.join("pretraining_curve.json"),
            serde_json::to_string_pretty(&curve)?.as_bytes(),
        )?;
        plots::scaling_curve(&out.join("scaling_curve.png"), &state.pretrain_memory_gap)?;
        Ok(())
    }

    fn checkpoint(
        &mut self,
        at: Checkpoint,
        model: &Oscar,
        state: &TrainState,
        optimizer: Option<Vec<u8>>,
    ) -> Result<()> {
        let Run {
            setup,
            recipe,
            checkpoints,
            ..
        } = self.run;
        let (name, prune, keep) = match at {
            Checkpoint::Pretraining(n) => (format!("pretrain-{n}"), "pretrain-", 1),
            Checkpoint::Pretrained => ("pretrained".to_string(), "pretrain-", 0),
            Checkpoint::Step(n) => (format!("step-{n}"), "step-", 2),
        };
        checkpoint::save(
            &checkpoints.join(name),
            setup,
            recipe,
            model,
            state,
            optimizer,
        )?;
        checkpoint::prune(checkpoints, prune, keep);
        Ok(())
    }

    fn finished(&mut self, _: Stage) {
        self.clear_inner();
        if let Some(bar) = self.steps.take() {
            bar.finish_and_clear();
        }
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
