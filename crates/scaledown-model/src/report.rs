//! What a run records: its progress (saved with each checkpoint), its pretraining probes and
//! its report (`metrics_report.json`), which the CLI draws its plots from and the page reads.

use crate::checkpoint::OscarSetup;
use crate::compressor::CompressorConfig;
use crate::oscar::OscarTokenizers;
use crate::recipe::{PretrainingConfig, RunConfig};
use crate::weights::WeightError;
use scaledown_data::{EvalRun, Example, MemoryUse, Scores, Timing};
use serde::{Deserialize, Serialize};

/// One probe of pretraining after `step` steps (`windows` examples, `seconds` of training):
/// the memory gap, i.e. the auto-encoding loss of held-out passages after their own memory
/// (`own`) and after another passage's (`other`, [`crate::pretraining::memory_gap`]), and held-out
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
    pub memory_use: MemoryUse,
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
    /// Where this pretraining phase began (`pretrain --init-from`: after the phases of the
    /// weights it started from); its schedule and budget count from here.
    #[serde(default)]
    pub pretrain_phase: PhaseStart,
    /// [`MemoryUse`] of the untrained model.
    #[serde(default)]
    pub memory_use_before: Option<MemoryUse>,
}

impl TrainState {
    /// Records a question-answering step on `examples` examples, `seconds` into training.
    pub fn record_step(&mut self, examples: usize, loss: f32, seconds: f64) {
        self.step += 1;
        self.examples_seen += examples;
        self.losses.push((self.step, loss));
        self.train_seconds = seconds;
    }

    /// Records a pretraining step, `seconds` into pretraining.
    pub fn record_pretraining_step(&mut self, loss: f32, seconds: f64) {
        self.pretrain_step += 1;
        self.pretrain_losses.push((self.pretrain_step, loss));
        self.pretrain_seconds = seconds;
    }

    /// Whether pretraining is over at this point: its steps done, its minutes spent, or
    /// question answering begun (a run resumed there does not go back).
    pub fn pretraining_is_over(&self, pretraining: &PretrainingConfig) -> bool {
        self.pretrain_step >= self.pretrain_phase.step + pretraining.steps
            || self.step > 0
            || self.pretraining_out_of_time(pretraining)
    }

    /// Whether pretraining has spent the minutes it was given.
    pub fn pretraining_out_of_time(&self, pretraining: &PretrainingConfig) -> bool {
        pretraining
            .minutes
            .is_some_and(|m| self.pretrain_seconds - self.pretrain_phase.seconds >= m * 60.0)
    }

    /// Pretraining steps done in this phase.
    pub fn pretrain_phase_step(&self) -> usize {
        self.pretrain_step - self.pretrain_phase.step
    }

    /// Training examples per second of question answering.
    pub fn examples_per_second(&self) -> f64 {
        self.examples_seen.max(1) as f64 / self.train_seconds.max(1e-9)
    }

    /// What a run started from these weights (`--init-from`) keeps of this progress: the
    /// record of the pretraining they went through (so that it is not run again, and the
    /// report shows it), not their question-answering steps.
    pub fn pretraining_record(self) -> TrainState {
        TrainState {
            pretrain_step: self.pretrain_step,
            pretrain_total: self.pretrain_total,
            pretrain_losses: self.pretrain_losses,
            pretrain_seconds: self.pretrain_seconds,
            pretrain_memory_gap: self.pretrain_memory_gap,
            memory_use_before: self.memory_use_before,
            ..TrainState::default()
        }
    }

    /// What `pretrain --init-from` keeps of this progress: the pretraining record, with a new
    /// phase (its own warm-up, decay and budget) starting after the steps done. Its windows
    /// follow the ones already seen, and the curve goes on in windows seen.
    pub fn new_pretraining_phase(self) -> TrainState {
        let pretrain_phase = PhaseStart {
            step: self.pretrain_step,
            seconds: self.pretrain_seconds,
        };
        TrainState {
            pretrain_phase,
            ..self.pretraining_record()
        }
    }
}

/// Pretraining steps and seconds done before a phase began.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct PhaseStart {
    pub step: usize,
    pub seconds: f64,
}

/// How much an eval set is compressed: mean document tokens per example and the memory
/// vectors that replace them.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Compression {
    pub mean_document_tokens: f64,
    pub mean_memory_vectors: f64,
}

impl Compression {
    pub fn of(
        tokenizers: &OscarTokenizers,
        config: &CompressorConfig,
        examples: &[Example],
    ) -> Result<Self, WeightError> {
        let n = examples.len().max(1) as f64;
        let mut c = Compression::default();
        for e in examples {
            let encoded = tokenizers.encode_example(config, e)?;
            c.mean_document_tokens += encoded.document_tokens as f64 / n;
            c.mean_memory_vectors += encoded.memory_vectors(config) as f64 / n;
        }
        Ok(c)
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Summary {
    pub scores: Scores,
    pub timing: Timing,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ranking: Option<scaledown_data::Ranking>,
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
    /// The command's flags as given (files, logging; the CLI's), and the recipe they make.
    pub command: serde_json::Value,
    #[serde(default)]
    pub recipe: RunConfig,
    pub setup: OscarSetup,
    pub backend: String,
    pub train_examples: usize,
    pub eval_examples: usize,
    /// Mean document tokens per eval example, and memory vectors that replace them.
    #[serde(flatten)]
    pub compression: Compression,
    pub baseline_uncompressed: Summary,
    pub before: Summary,
    pub after: Summary,
    /// Baseline mean ms per query / compressed mean ms per query (after training).
    pub speedup: f64,
    /// Whether the trained model's answers depend on its memory vectors (gold-answer loss
    /// with its own documents' memory vs another question's).
    pub memory_use_after: MemoryUse,
    /// The uncompressed generator fine-tuned like the compressed model (--finetuned-ceiling).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finetuned_ceiling: Option<CeilingSummary>,
    pub training: TrainState,
    pub examples_per_second: f64,
    /// Why training stopped early, if it did.
    pub stopped: Option<String>,
}

/// What the report keeps of the ceiling (its predictions stay in `finetuned_ceiling.json`).
#[derive(Debug, Serialize, Deserialize)]
pub struct CeilingSummary {
    pub scores: scaledown_data::Scores,
    pub timing: Timing,
    pub train_seconds: f64,
    pub examples_per_second: f64,
    pub losses: Vec<(usize, f32)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_records_steps_and_knows_when_pretraining_is_over() {
        let pretraining = PretrainingConfig {
            steps: 2,
            minutes: Some(1.0),
            ..Default::default()
        };
        let mut state = TrainState::default();
        assert!(!state.pretraining_is_over(&pretraining));
        state.record_pretraining_step(3.0, 20.0);
        assert!(!state.pretraining_is_over(&pretraining));
        // The minutes run out before the steps do.
        state.record_pretraining_step(2.5, 61.0);
        assert!(state.pretraining_out_of_time(&pretraining));
        assert_eq!(state.pretrain_losses, vec![(1, 3.0), (2, 2.5)]);

        state.record_step(4, 1.5, 2.0);
        state.record_step(2, 1.0, 3.0);
        assert_eq!((state.step, state.examples_seen), (2, 6));
        assert_eq!(state.losses, vec![(1, 1.5), (2, 1.0)]);
        assert_eq!(state.examples_per_second(), 2.0);
        // Question answering begun: pretraining does not come back, whatever its budget.
        let longer = PretrainingConfig {
            steps: 100,
            minutes: None,
            ..Default::default()
        };
        assert!(state.pretraining_is_over(&longer));

        // --init-from keeps the pretraining's record, not the question answering's.
        let record = state.pretraining_record();
        assert_eq!((record.step, record.examples_seen), (0, 0));
        assert!(record.losses.is_empty());
        assert_eq!((record.pretrain_step, record.pretrain_seconds), (2, 61.0));
        assert!(!record.pretraining_is_over(&longer));

        // `pretrain --init-from`: a new phase of its own steps and minutes after the 2 done.
        let phase = record.new_pretraining_phase();
        let two = PretrainingConfig {
            steps: 2,
            minutes: Some(1.0),
            ..Default::default()
        };
        assert_eq!(phase.pretrain_phase_step(), 0);
        assert!(!phase.pretraining_is_over(&two));
        let mut phase = phase;
        phase.record_pretraining_step(0.5, 100.0);
        assert!(!phase.pretraining_is_over(&two), "39 s of its minute");
        phase.record_pretraining_step(0.5, 110.0);
        assert_eq!((phase.pretrain_step, phase.pretrain_phase_step()), (4, 2));
        assert!(phase.pretraining_is_over(&two));
        assert!(!phase.pretraining_out_of_time(&two), "49 s of its minute");
        phase.record_pretraining_step(0.5, 122.0);
        assert!(phase.pretraining_out_of_time(&two));
        // `train --init-from` those weights: their 5 steps are done pretraining, phases or not.
        let record = phase.pretraining_record();
        assert_eq!(record.pretrain_phase, PhaseStart::default());
        assert!(record.pretraining_is_over(&PretrainingConfig {
            steps: 4,
            ..Default::default()
        }));
    }
}
