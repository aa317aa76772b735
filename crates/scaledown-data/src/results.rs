//! Scored answers, shared by the CLI's evaluation and the page: one [`Prediction`] per
//! question, an [`EvalRun`] with their mean scores and [`Timing`], and the loss smoothing that
//! both draw beside a training curve.

use crate::metrics::Scores;
use crate::schema::Example;
use serde::{Deserialize, Serialize};

/// One answered question, scored against its gold answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Prediction {
    pub id: String,
    pub question: String,
    pub answers: Vec<String>,
    pub prediction: String,
    pub ms: f64,
    /// Prompt tokens the generator read (documents compressed or not).
    pub prompt_tokens: usize,
    pub scores: Scores,
}

impl Prediction {
    /// `prediction` for `ex`, answered in `ms`, scored against `ex.answers`.
    pub fn of(ex: &Example, prediction: String, ms: f64, prompt_tokens: usize) -> Self {
        Self {
            id: ex.id.clone(),
            question: ex.question.clone(),
            answers: ex.answers.clone(),
            scores: Scores::of(&prediction, &ex.answers),
            prediction,
            ms,
            prompt_tokens,
        }
    }
}

/// Latency over the queries of one evaluation.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Timing {
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub queries_per_second: f64,
}

/// The value at quantile `p` (0..=1) of ascending `sorted` (the nearest rank; 0 when empty).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

impl Timing {
    pub fn of(ms: &[f64]) -> Self {
        if ms.is_empty() {
            return Self::default();
        }
        let mut sorted = ms.to_vec();
        sorted.sort_by(f64::total_cmp);
        let pct = |p: f64| percentile(&sorted, p);
        let mean = ms.iter().sum::<f64>() / ms.len() as f64;
        Self {
            mean_ms: mean,
            p50_ms: pct(0.5),
            p95_ms: pct(0.95),
            queries_per_second: 1000.0 / mean,
        }
    }

    /// How many times faster than `self` (the slower run) `faster` answers: the ratio of their
    /// mean times (the speed-up of a compressed answer over the uncompressed one).
    pub fn speedup_to(&self, faster: &Timing) -> f64 {
        self.mean_ms / faster.mean_ms.max(1e-9)
    }
}

/// The answers to a set of questions, their mean scores and their latency.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EvalRun {
    pub scores: Scores,
    pub timing: Timing,
    pub predictions: Vec<Prediction>,
    /// The reranking head's quality, where the compressor has one and gold documents are
    /// known (HotpotQA supporting titles).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ranking: Option<Ranking>,
}

/// Reranking quality against HotpotQA's supporting titles, averaged over questions.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Ranking {
    pub questions: usize,
    /// M of recall@M: `--keep-top`, or 5 when every document is kept.
    pub keep: usize,
    pub recall_at_keep: f64,
    pub ndcg_at_10: f64,
}

impl EvalRun {
    pub fn of(predictions: Vec<Prediction>) -> Self {
        let scores = Scores::mean(&predictions.iter().map(|p| p.scores).collect::<Vec<_>>());
        let ms: Vec<f64> = predictions.iter().map(|p| p.ms).collect();
        Self {
            scores,
            timing: Timing::of(&ms),
            predictions,
            ranking: None,
        }
    }
}

/// An exponential moving average (weight 0.1 on the new value) of a loss curve, the line
/// drawn over the raw losses in the PNGs and on the page.
pub fn smoothed(losses: &[f64]) -> Vec<f64> {
    let mut ema: Option<f64> = None;
    losses
        .iter()
        .map(|&l| {
            let v = ema.map_or(l, |prev| 0.9 * prev + 0.1 * l);
            ema = Some(v);
            v
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example(answer: &str) -> Example {
        Example {
            id: "q".into(),
            dataset: "squad".into(),
            question: "Where?".into(),
            documents: vec![],
            answers: vec![answer.into()],
            supporting_titles: vec![],
            teacher_answer: None,
        }
    }

    #[test]
    fn run_means_scores_and_times() {
        let ex = example("the Rhine");
        let run = EvalRun::of(vec![
            Prediction::of(&ex, "the Rhine".into(), 100.0, 10),
            Prediction::of(&ex, "Danube".into(), 300.0, 10),
        ]);
        assert!((run.scores.exact_match - 0.5).abs() < 1e-9);
        assert!((run.timing.mean_ms - 200.0).abs() < 1e-9);
        assert_eq!(run.timing.p50_ms, 300.0);
        assert!((run.timing.queries_per_second - 5.0).abs() < 1e-9);
    }

    #[test]
    fn timing_percentiles() {
        let t = Timing::of(&[10.0, 20.0, 30.0, 40.0, 100.0]);
        assert_eq!(t.p50_ms, 30.0);
        assert_eq!(t.p95_ms, 100.0);
        assert_eq!(t.mean_ms, 40.0);
        assert_eq!(t.queries_per_second, 25.0);
    }

    #[test]
    fn empty_run_is_zero_not_nan() {
        let run = EvalRun::of(vec![]);
        assert_eq!(run.timing.mean_ms, 0.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }

    #[test]
    fn smoothing_starts_at_the_first_loss_and_follows_slowly() {
        let s = smoothed(&[2.0, 1.0, 1.0]);
        assert_eq!(s[0], 2.0);
        assert!((s[1] - 1.9).abs() < 1e-12);
        assert!((s[2] - 1.81).abs() < 1e-12);
    }
}

/// Whether the answers lean on the memory vectors: the mean teacher-forced loss of the eval
/// questions' gold answers after memory of their own documents, and after memory of another
/// question's documents (the question itself unchanged). A model that reads its memory loses
/// more with the wrong documents; one that has learnt to ignore it loses the same.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct MemoryUse {
    pub own_documents_loss: f32,
    pub other_documents_loss: f32,
    /// Questions scored (those with an answer and with other documents to swap in).
    pub questions: usize,
}

impl std::fmt::Display for MemoryUse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "answer loss {:.3} with its own documents' memory, {:.3} with another question's ({} questions)",
            self.own_documents_loss, self.other_documents_loss, self.questions
        )
    }
}
