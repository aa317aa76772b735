//! What a run records: its progress (saved with each checkpoint), its pretraining probes and
//! its report (`metrics_report.json`), which the CLI draws its plots from and the page reads.

use crate::checkpoint::OscarSetup;
use crate::recipe::RunConfig;
use scaledown_data::{EvalRun, MemoryUse, Scores, Timing};
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
    /// [`MemoryUse`] of the untrained model.
    #[serde(default)]
    pub memory_use_before: Option<MemoryUse>,
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
    pub mean_document_tokens: f64,
    pub mean_memory_vectors: f64,
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
