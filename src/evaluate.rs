//! Evaluation: answers from the compressed model or from the uncompressed generator reading
//! the full text, scored (EM, F1, ROUGE-L, match) and timed per query.

use crate::progress;
use anyhow::Result;
use scaledown_data::Example;
pub use scaledown_data::{EvalRun, Prediction, Ranking, Timing, percentile};
use scaledown_model::burn::tensor::read_sync;
use scaledown_model::compressor::CompressorConfig;
use scaledown_model::example::{TrainExample, ids_tensor};
use scaledown_model::generation::{GenerationConfig, PrefixCache, generate_after, generate_batch};
use scaledown_model::llama::{Llama, PromptInput};
use scaledown_model::oscar::{Oscar, OscarTokenizers};
use scaledown_model::questions::documents_of;
use scaledown_model::training::mean_answer_loss;
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// Greedy answers, short enough for QA, from the memory of the reranking head's `keep_top`
/// best documents (0: all documents').
pub fn answer_config(max_new_tokens: usize, keep_top: u32) -> GenerationConfig {
    GenerationConfig {
        max_new_tokens,
        keep_top: keep_top as usize,
        ..Default::default()
    }
}

/// The compressed model (an inference model: plain device, LoRA merged) on `examples`,
/// answering with `answer` (see [`answer_config`]).
pub fn compressed(
    model: &Oscar,
    tokenizers: &OscarTokenizers,
    config: &CompressorConfig,
    examples: &[Example],
    answer: &GenerationConfig,
    batch: usize,
    label: &str,
) -> Result<EvalRun> {
    let mut run = answer_compressed(model, tokenizers, config, examples, answer, batch, label)?;
    run.ranking = ranking(model, tokenizers, config, examples, answer.keep_top)?;
    Ok(run)
}

/// The reranking head's recall@M and nDCG@10 on the examples with supporting titles (None
/// without a head or without such examples). Not timed: it compresses each question again.
fn ranking(
    model: &Oscar,
    tokenizers: &OscarTokenizers,
    config: &CompressorConfig,
    examples: &[Example],
    keep_top: usize,
) -> Result<Option<Ranking>> {
    if model.compressor.rerank.is_none() {
        return Ok(None);
    }
    let keep = match keep_top {
        0 => 5,
        m => m,
    };
    let (mut recall, mut ndcg) = (Vec::new(), Vec::new());
    for ex in examples.iter().filter(|e| !e.supporting_titles.is_empty()) {
        let encoded = tokenizers.encode_example(config, ex)?;
        let Some(scores) = read_sync(model.rank(&encoded))? else {
            return Ok(None);
        };
        let mut order: Vec<usize> = (0..scores.len()).collect();
        order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
        let relevant: Vec<bool> = order
            .iter()
            .map(|&d| ex.supporting_titles.contains(&ex.documents[d].title))
            .collect();
        recall.extend(scaledown_data::recall_at(keep, &relevant));
        ndcg.extend(scaledown_data::ndcg_at(10, &relevant));
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    Ok((!recall.is_empty()).then(|| Ranking {
        questions: recall.len(),
        keep,
        recall_at_keep: mean(&recall),
        ndcg_at_10: mean(&ndcg),
    }))
}

fn answer_compressed(
    model: &Oscar,
    tokenizers: &OscarTokenizers,
    config: &CompressorConfig,
    examples: &[Example],
    answer: &GenerationConfig,
    batch: usize,
    label: &str,
) -> Result<EvalRun> {
    let stop = &tokenizers.generator.stop_ids;
    if batch > 1 {
        return batched(examples, batch, label, |group| {
            let encoded = group
                .iter()
                .map(|ex| tokenizers.encode_example(config, ex))
                .collect::<Result<Vec<_>, _>>()?;
            let ids = read_sync(model.answer_batch(&encoded, stop, answer))?;
            Ok(encoded
                .iter()
                .zip(ids)
                .map(|(e, ids)| {
                    let prompt_tokens = e.prompt_tokens(config);
                    (tokenizers.generator.decode(&ids, true), prompt_tokens)
                })
                .collect())
        });
    }
    let prefix = shared_prefix(&model.generator, tokenizers)?;
    let bar = progress::bar(examples.len() as u64, label);
    let mut out = Vec::with_capacity(examples.len());
    for ex in examples {
        let start = Instant::now();
        let encoded = tokenizers.encode_example(config, ex)?;
        let ids = read_sync(model.answer_after(&prefix, &encoded, stop, answer))?;
        let ms = start.elapsed().as_secs_f64() * 1000.0;
        let prediction = tokenizers.generator.decode(&ids, true).trim().to_string();
        let prompt_tokens = encoded.prompt_tokens(config);
        out.push(Prediction::of(ex, prediction, ms, prompt_tokens));
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(EvalRun::of(out))
}

/// The KV cache of the chat prefix that all prompts share, computed once per evaluation.
pub fn shared_prefix(generator: &Llama, tokenizers: &OscarTokenizers) -> Result<PrefixCache> {
    let device = generator.device();
    Ok(PrefixCache::new(
        generator,
        &tokenizers.shared_prefix()?,
        &device,
    ))
}

/// The uncompressed generator's answer from the documents' full text, and the prompt length:
/// the baseline's and the teacher's answer.
pub fn answer_uncompressed(
    generator: &Llama,
    prefix: &PrefixCache,
    tokenizers: &OscarTokenizers,
    ex: &Example,
    config: &GenerationConfig,
) -> Result<(String, usize)> {
    let tok = &tokenizers.generator;
    let device = generator.device();
    let prompt = tokenizers.full_text_prompt(ex)?;
    let ids = read_sync(generate_after(
        generator,
        prefix,
        &prompt,
        &tok.stop_ids,
        config,
        &device,
    ))?;
    Ok((tok.decode(&ids, true).trim().to_string(), prompt.len()))
}

/// The uncompressed generator reading the documents' full text (the baseline).
pub fn uncompressed(
    generator: &Llama,
    tokenizers: &OscarTokenizers,
    examples: &[Example],
    max_new_tokens: usize,
    batch: usize,
    label: &str,
) -> Result<EvalRun> {
    let config = answer_config(max_new_tokens, 0);
    if batch > 1 {
        let tok = &tokenizers.generator;
        let device = generator.device();
        return batched(examples, batch, label, |group| {
            let prompts = group
                .iter()
                .map(|ex| Ok(tokenizers.full_text_prompt(ex)?))
                .collect::<Result<Vec<_>>>()?;
            let embeds = prompts
                .iter()
                .map(|p| PromptInput::tokens(generator.embed(ids_tensor(p, &device))))
                .collect();
            let ids = read_sync(generate_batch(generator, embeds, &tok.stop_ids, &config))?;
            Ok(ids
                .iter()
                .zip(&prompts)
                .map(|(ids, p)| (tok.decode(ids, true), p.len()))
                .collect())
        });
    }
    let prefix = shared_prefix(generator, tokenizers)?;
    let bar = progress::bar(examples.len() as u64, label);
    let mut out = Vec::with_capacity(examples.len());
    for ex in examples {
        let start = Instant::now();
        let (prediction, prompt_tokens) =
            answer_uncompressed(generator, &prefix, tokenizers, ex, &config)?;
        let ms = start.elapsed().as_secs_f64() * 1000.0;
        out.push(Prediction::of(ex, prediction, ms, prompt_tokens));
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(EvalRun::of(out))
}

/// Answers `examples` `batch` at a time with `answer(group) -> (text, prompt tokens)`; each
/// question's time is its batch's time divided by the batch size (throughput, not latency).
fn batched(
    examples: &[Example],
    batch: usize,
    label: &str,
    mut answer: impl FnMut(&[Example]) -> Result<Vec<(String, usize)>>,
) -> Result<EvalRun> {
    let bar = progress::bar(examples.len() as u64, label);
    let mut out = Vec::with_capacity(examples.len());
    for group in examples.chunks(batch) {
        let start = Instant::now();
        let answers = answer(group)?;
        let ms = start.elapsed().as_secs_f64() * 1000.0 / group.len() as f64;
        for (ex, (text, prompt_tokens)) in group.iter().zip(answers) {
            out.push(Prediction::of(
                ex,
                text.trim().to_string(),
                ms,
                prompt_tokens,
            ));
        }
        bar.inc(group.len() as u64);
    }
    bar.finish_and_clear();
    Ok(EvalRun::of(out))
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

/// [`MemoryUse`] of `model` (an inference model) on `eval`: question i is paired with the
/// documents of question i + n/2, which in a file ordered by article come from elsewhere;
/// pairs whose documents are the same are skipped.
pub fn memory_use(
    model: &Oscar,
    tokenizers: &OscarTokenizers,
    config: &CompressorConfig,
    eval: &[Example],
) -> Result<MemoryUse> {
    let n = eval.len();
    let (mut own, mut other) = (Vec::new(), Vec::new());
    for (i, ex) in eval.iter().enumerate() {
        let swapped = &eval[(i + n / 2) % n];
        let (documents, elsewhere) = (documents_of(ex), documents_of(swapped));
        let Some(answer) = ex.answers.first() else {
            continue;
        };
        if documents == elsewhere {
            continue;
        }
        let answer = tokenizers.encode_answer(answer)?;
        for (docs, into) in [(&documents, &mut own), (&elsewhere, &mut other)] {
            into.push(TrainExample::new(
                tokenizers.encode(config, &ex.question, docs)?,
                answer.clone(),
            ));
        }
    }
    let bar = progress::bar(2 * own.len() as u64, "memory use");
    let result = MemoryUse {
        own_documents_loss: mean_answer_loss(model, &own, |k| bar.set_position(k as u64)),
        other_documents_loss: mean_answer_loss(model, &other, |k| {
            bar.set_position((own.len() + k) as u64)
        }),
        questions: own.len(),
    };
    bar.finish_and_clear();
    Ok(result)
}

/// One line of an evaluation: scores, timing and, with reranking, its quality.
pub fn describe(r: &EvalRun) -> String {
    let s = r.scores;
    let mut line = format!(
        "EM {:.3}  F1 {:.3}  ROUGE-L {:.3}  match {:.3}  {:.0} ms/query (p50 {:.0}, p95 {:.0})",
        s.exact_match,
        s.f1,
        s.rouge_l,
        s.match_accuracy,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timing_percentiles() {
        let t = Timing::of(&[10.0, 20.0, 30.0, 40.0, 100.0]);
        assert_eq!(t.p50_ms, 30.0);
        assert_eq!(t.p95_ms, 100.0);
        assert_eq!(t.mean_ms, 40.0);
        assert_eq!(t.queries_per_second, 25.0);
    }
}
