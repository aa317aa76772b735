//! Evaluation in the terminal: [`Evaluator`]'s runs with a progress bar, and one line per
//! run. The evaluation itself lives in the model crate, shared with the page.

use crate::progress;
use anyhow::Result;
use scaledown_data::Example;
pub use scaledown_data::{EvalRun, MemoryUse, Prediction, Ranking, Scores};
use scaledown_model::burn::tensor::read_sync;
pub use scaledown_model::evaluation::Evaluator;
use scaledown_model::llama::Llama;
use scaledown_model::oscar::Oscar;

/// `model` (an inference model) answering `examples` from their memory vectors.
pub fn compressed(
    evaluator: &Evaluator,
    model: &Oscar,
    examples: &[Example],
    label: &str,
) -> Result<EvalRun> {
    let bar = progress::bar(examples.len() as u64, label);
    let run =
        read_sync(evaluator.compressed(model, examples, async |k| bar.set_position(k as u64)))?;
    bar.finish_and_clear();
    Ok(run)
}

/// `generator` answering `examples` from their documents' full text.
pub fn uncompressed(
    evaluator: &Evaluator,
    generator: &Llama,
    examples: &[Example],
    label: &str,
) -> Result<EvalRun> {
    let bar = progress::bar(examples.len() as u64, label);
    let run = read_sync(
        evaluator.uncompressed(generator, examples, async |k| bar.set_position(k as u64)),
    )?;
    bar.finish_and_clear();
    Ok(run)
}

/// [`MemoryUse`] of `model` (an inference model) on `examples`.
pub fn memory_use(evaluator: &Evaluator, model: &Oscar, examples: &[Example]) -> Result<MemoryUse> {
    let bar = progress::bar(0, "memory use");
    let result = evaluator.memory_use(model, examples, |k, total| {
        bar.set_length(total as u64);
        bar.set_position(k as u64)
    })?;
    bar.finish_and_clear();
    Ok(result)
}

/// One line of an evaluation: scores, timing and, with reranking, its quality.
pub fn describe(r: &EvalRun) -> String {
    let mut line = format!(
        "{}  {:.0} ms/query (p50 {:.0}, p95 {:.0})",
        describe_scores(&r.scores),
        r.timing.mean_ms,
        r.timing.p50_ms,
        r.timing.p95_ms
    );
    if let Some(k) = r.ranking {
        line += &format!(
            "  reranking: recall@{} {:.3}  nDCG@10 {:.3} ({} questions)",
            k.keep, k.recall_at_keep, k.ndcg_at_10, k.questions
        );
    }
    line
}

/// The scores of an evaluation, on one line.
pub fn describe_scores(s: &Scores) -> String {
    format!(
        "EM {:.3}  F1 {:.3}  ROUGE-L {:.3}  match {:.3}",
        s.exact_match, s.f1, s.rouge_l, s.match_accuracy
    )
}
