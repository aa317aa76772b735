//! Evaluation: answers from the memory vectors or from the documents' full text, scored (EM,
//! F1, ROUGE-L, match) and timed per query; the reranking head's recall and nDCG; the
//! memory-use probe. One home for the CLI (`train`, `eval`, `ask`, teacher labels) and the
//! page. Async because WebGPU reads results without blocking; native callers block on it
//! with `read_sync`.

use crate::compressor::CompressorConfig;
use crate::example::{TrainExample, ids_tensor};
use crate::generation::{GenerationConfig, PrefixCache, generate_after, generate_batch};
use crate::llama::{Llama, PromptInput};
use crate::oscar::{Oscar, OscarTokenizers};
use crate::questions::documents_of;
use crate::training::mean_answer_loss;
use crate::weights::WeightError;
use burn::tensor::ExecutionError;
use scaledown_data::{EvalRun, Example, MemoryUse, Prediction, Ranking};
use web_time::Instant;

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error(transparent)]
    Tokenizer(#[from] WeightError),
    #[error(transparent)]
    Device(#[from] ExecutionError),
    #[error(
        "the full text of `{id}` takes {tokens} tokens with its answer, more than the generator's {context}"
    )]
    TooLong {
        id: String,
        tokens: usize,
        context: usize,
    },
}

/// Mean ms per query of compressed and of uncompressed answers (see [`Evaluator::speed`]).
#[derive(Debug, Clone, Copy)]
pub struct Speed {
    pub compressed_ms: f64,
    pub uncompressed_ms: f64,
}

/// How an evaluation answers and times its questions.
#[derive(Clone)]
pub struct Evaluator<'a> {
    pub tokenizers: &'a OscarTokenizers,
    /// The compressor's settings (chunks, memory vectors per chunk).
    pub config: &'a CompressorConfig,
    /// Greedy answers of at most `max_new_tokens`; compressed answers read the memory of the
    /// reranking head's `keep_top` best documents (0: every document's).
    pub answer: GenerationConfig,
    /// Questions answered together. 1: each alone after the chat prefix's cached keys and
    /// values, timed alone (latency). More: left-padded batches, each question timed at its
    /// batch's time over the batch's size (throughput).
    pub batch: usize,
    /// Stop at the generator's stop tokens. Off, every answer takes `max_new_tokens` tokens:
    /// the same work for every model and backend, for timing.
    pub stop: bool,
}

impl<'a> Evaluator<'a> {
    /// Greedy answers of at most `max_new_tokens`, one question at a time, from every
    /// document's memory.
    pub fn new(
        tokenizers: &'a OscarTokenizers,
        config: &'a CompressorConfig,
        max_new_tokens: usize,
    ) -> Self {
        Self {
            tokenizers,
            config,
            answer: GenerationConfig {
                max_new_tokens,
                ..Default::default()
            },
            batch: 1,
            stop: true,
        }
    }

    /// Compressed answers read the memory of the `keep_top` best-scored documents only.
    pub fn keep_top(mut self, keep_top: usize) -> Self {
        self.answer.keep_top = keep_top;
        self
    }

    /// `batch` questions answered together (at least 1).
    pub fn batch(mut self, batch: usize) -> Self {
        self.batch = batch.max(1);
        self
    }

    fn stop_ids(&self) -> &'a [u32] {
        match self.stop {
            true => &self.tokenizers.generator.stop_ids,
            false => &[],
        }
    }

    /// The keys and values of the chat prefix that every prompt starts with, computed once
    /// per evaluation.
    pub fn prefix(&self, generator: &Llama) -> Result<PrefixCache, EvalError> {
        let prefix = self.tokenizers.shared_prefix()?;
        Ok(PrefixCache::new(generator, &prefix, &generator.device()))
    }

    /// One question answered from its documents' memory vectors, timed.
    pub async fn answer_compressed(
        &self,
        model: &Oscar,
        prefix: &PrefixCache,
        ex: &Example,
    ) -> Result<Prediction, EvalError> {
        let start = Instant::now();
        let encoded = self.tokenizers.encode_example(self.config, ex)?;
        let ids = model
            .answer_after(prefix, &encoded, self.stop_ids(), &self.answer)
            .await?;
        Ok(self.answered(ex, &ids, start, encoded.prompt_tokens(self.config)))
    }

    /// `ids` decoded as the answer to `ex`, timed from `start`.
    fn answered(
        &self,
        ex: &Example,
        ids: &[u32],
        start: Instant,
        prompt_tokens: usize,
    ) -> Prediction {
        let text = self.tokenizers.generator.decode(ids, true);
        Prediction::of(
            ex,
            text.trim().to_string(),
            elapsed_ms(start),
            prompt_tokens,
        )
    }

    /// One question answered by `generator` reading its documents' full text, timed: the
    /// baseline's answer and the teacher's.
    pub async fn answer_uncompressed(
        &self,
        generator: &Llama,
        prefix: &PrefixCache,
        ex: &Example,
    ) -> Result<Prediction, EvalError> {
        let start = Instant::now();
        let prompt = self.full_text_prompt(generator, ex)?;
        let ids = generate_after(
            generator,
            prefix,
            &prompt,
            self.stop_ids(),
            &self.answer,
            &generator.device(),
        )
        .await?;
        Ok(self.answered(ex, &ids, start, prompt.len()))
    }

    fn full_text_prompt(&self, generator: &Llama, ex: &Example) -> Result<Vec<u32>, EvalError> {
        let prompt = self.tokenizers.full_text_prompt(ex)?;
        let tokens = prompt.len() + self.answer.max_new_tokens;
        if tokens > generator.max_len() {
            return Err(EvalError::TooLong {
                id: ex.id.clone(),
                tokens,
                context: generator.max_len(),
            });
        }
        Ok(prompt)
    }

    /// `model` (an inference model: plain device, LoRA merged) answering `examples` from
    /// their memory vectors, with the reranking head's quality when it has one;
    /// `progress(k)` after each question or batch (k answered so far).
    pub async fn compressed(
        &self,
        model: &Oscar,
        examples: &[Example],
        mut progress: impl AsyncFnMut(usize),
    ) -> Result<EvalRun, EvalError> {
        let mut out = Vec::with_capacity(examples.len());
        if self.batch > 1 {
            for group in examples.chunks(self.batch) {
                let start = Instant::now();
                let encoded = group
                    .iter()
                    .map(|ex| self.tokenizers.encode_example(self.config, ex))
                    .collect::<Result<Vec<_>, _>>()?;
                let ids = model
                    .answer_batch(&encoded, self.stop_ids(), &self.answer)
                    .await?;
                let answers = ids
                    .iter()
                    .zip(&encoded)
                    .map(|(ids, e)| {
                        let text = self.tokenizers.generator.decode(ids, true);
                        (text, e.prompt_tokens(self.config))
                    })
                    .collect();
                push_batch(&mut out, group, answers, start);
                progress(out.len()).await;
            }
        } else {
            let prefix = self.prefix(&model.generator)?;
            for ex in examples {
                out.push(self.answer_compressed(model, &prefix, ex).await?);
                progress(out.len()).await;
            }
        }
        let mut run = EvalRun::of(out);
        run.ranking = self.ranking(model, examples).await?;
        Ok(run)
    }

    /// `generator` answering `examples` from their documents' full text (the baseline);
    /// `progress` as in [`Evaluator::compressed`].
    pub async fn uncompressed(
        &self,
        generator: &Llama,
        examples: &[Example],
        mut progress: impl AsyncFnMut(usize),
    ) -> Result<EvalRun, EvalError> {
        let mut out = Vec::with_capacity(examples.len());
        if self.batch > 1 {
            let device = generator.device();
            for group in examples.chunks(self.batch) {
                let start = Instant::now();
                let prompts = group
                    .iter()
                    .map(|ex| self.full_text_prompt(generator, ex))
                    .collect::<Result<Vec<_>, _>>()?;
                let embeds = prompts
                    .iter()
                    .map(|p| PromptInput::tokens(generator.embed(ids_tensor(p, &device))))
                    .collect();
                let ids = generate_batch(generator, embeds, self.stop_ids(), &self.answer).await?;
                let answers = ids
                    .iter()
                    .zip(&prompts)
                    .map(|(ids, p)| (self.tokenizers.generator.decode(ids, true), p.len()))
                    .collect();
                push_batch(&mut out, group, answers, start);
                progress(out.len()).await;
            }
        } else {
            let prefix = self.prefix(generator)?;
            for ex in examples {
                out.push(self.answer_uncompressed(generator, &prefix, ex).await?);
                progress(out.len()).await;
            }
        }
        Ok(EvalRun::of(out))
    }

    /// The reranking head's recall@M (M = `keep_top`, or 5 when every document is kept) and
    /// nDCG@10 on the examples with supporting titles; None without a head or without such
    /// examples. Not timed: it compresses each question again.
    pub async fn ranking(
        &self,
        model: &Oscar,
        examples: &[Example],
    ) -> Result<Option<Ranking>, EvalError> {
        if model.compressor.rerank.is_none() {
            return Ok(None);
        }
        let keep = match self.answer.keep_top {
            0 => 5,
            m => m,
        };
        let (mut recall, mut ndcg) = (Vec::new(), Vec::new());
        for ex in examples.iter().filter(|e| !e.supporting_titles.is_empty()) {
            let encoded = self.tokenizers.encode_example(self.config, ex)?;
            let Some(scores) = model.rank(&encoded).await? else {
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

    /// [`MemoryUse`] of `model` (an inference model) on `examples`: question i is paired with
    /// the documents of question i + n/2, which in a file ordered by article come from
    /// elsewhere; pairs whose documents are the same are skipped. `progress(k, total)` as the
    /// 2 × questions losses are scored. Reads the losses synchronously (native backends).
    pub fn memory_use(
        &self,
        model: &Oscar,
        examples: &[Example],
        mut progress: impl FnMut(usize, usize),
    ) -> Result<MemoryUse, EvalError> {
        let n = examples.len();
        let (mut own, mut other) = (Vec::new(), Vec::new());
        for (i, ex) in examples.iter().enumerate() {
            let swapped = &examples[(i + n / 2) % n];
            let (documents, elsewhere) = (documents_of(ex), documents_of(swapped));
            let Some(answer) = ex.answers.first() else {
                continue;
            };
            if documents == elsewhere {
                continue;
            }
            let answer = self.tokenizers.encode_answer(answer)?;
            for (docs, into) in [(&documents, &mut own), (&elsewhere, &mut other)] {
                into.push(TrainExample::new(
                    self.tokenizers.encode(self.config, &ex.question, docs)?,
                    answer.clone(),
                ));
            }
        }
        let total = 2 * own.len();
        Ok(MemoryUse {
            own_documents_loss: mean_answer_loss(model, &own, |k| progress(k, total)),
            other_documents_loss: mean_answer_loss(model, &other, |k| {
                progress(own.len() + k, total)
            }),
            questions: own.len(),
        })
    }

    /// Mean time of compressed (`model`) and uncompressed (`generator`) answers on
    /// `examples`, every answer `max_new_tokens` long (no stop token) so that every model and
    /// backend does the same work, after one warm-up answer each way (shader compilation,
    /// allocations).
    pub async fn speed(
        &self,
        model: &Oscar,
        generator: &Llama,
        examples: &[Example],
    ) -> Result<Speed, EvalError> {
        let timed = Self {
            stop: false,
            ..self.clone()
        };
        if let Some(first) = examples.first() {
            timed
                .compressed(model, &examples[..1], async |_| {})
                .await?;
            let prefix = timed.prefix(generator)?;
            timed.answer_uncompressed(generator, &prefix, first).await?;
        }
        let compressed = timed.compressed(model, examples, async |_| {}).await?;
        let uncompressed = timed
            .uncompressed(generator, examples, async |_| {})
            .await?;
        Ok(Speed {
            compressed_ms: compressed.timing.mean_ms,
            uncompressed_ms: uncompressed.timing.mean_ms,
        })
    }
}

/// The answers `(text, prompt tokens)` of one batch, each timed at the batch's time over its
/// size.
fn push_batch(
    out: &mut Vec<Prediction>,
    group: &[Example],
    answers: Vec<(String, usize)>,
    start: Instant,
) {
    let ms = elapsed_ms(start) / group.len() as f64;
    for (ex, (text, prompt_tokens)) in group.iter().zip(answers) {
        out.push(Prediction::of(
            ex,
            text.trim().to_string(),
            ms,
            prompt_tokens,
        ));
    }
}

fn elapsed_ms(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1000.0
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use crate::compressor::{CompressorType, Readout};
    use crate::llama::LlamaConfig;
    use crate::oscar::full_text_user_turn;
    use crate::tokenizer::{Tokenizer, chat_prompt, word_level_json, words_of};
    use burn::prelude::Device;
    use burn::tensor::read_sync;
    use scaledown_data::Document;

    /// Four questions on two articles (documents of different lengths, so that a batch is
    /// padded), a word-level tokenizer over their words, a tiny random OSCAR.
    fn fixture() -> (Vec<Example>, OscarTokenizers, CompressorConfig, Oscar) {
        let examples: Vec<Example> = (0..4)
            .map(|i| Example {
                id: format!("q{i}"),
                dataset: "test".into(),
                question: format!("what color is animal {i}"),
                documents: vec![Document {
                    title: format!("article {}", i % 2),
                    text: "the fox is red and the owl is blue ".repeat(1 + i),
                }],
                answers: vec!["red".into()],
                supporting_titles: vec![],
                teacher_answer: None,
            })
            .collect();
        let mut words = words_of(&chat_prompt(&full_text_user_turn("", &[])));
        for ex in &examples {
            for text in documents_of(ex).iter().chain([&ex.question]) {
                words.extend(words_of(text));
            }
        }
        words.extend(words_of("red"));
        let json = word_level_json(words.iter().map(String::as_str));
        let tokenizers = OscarTokenizers {
            generator: Tokenizer::from_json(json.as_bytes()).unwrap(),
            encoder: None,
        };
        let device = Device::flex();
        device.seed(5);
        let generator = LlamaConfig::tiny(tokenizers.generator.vocab_size()).init(&device);
        let config = crate::tiny::compressor_config(CompressorType::NLayers, Readout::Pooled);
        let model = crate::tiny::oscar_over(generator, &config).for_inference();
        (examples, tokenizers, config, model)
    }

    fn texts(run: &EvalRun) -> Vec<&str> {
        run.predictions
            .iter()
            .map(|p| p.prediction.as_str())
            .collect()
    }

    /// Each answer with its prompt's length (which differs between the fixture's questions).
    fn answers(run: &EvalRun) -> Vec<(&str, usize)> {
        (run.predictions.iter())
            .map(|p| (p.prediction.as_str(), p.prompt_tokens))
            .collect()
    }

    #[test]
    fn batched_answers_equal_one_at_a_time_and_progress_counts_them() {
        let (examples, tokenizers, config, model) = fixture();
        let one = Evaluator::new(&tokenizers, &config, 6);
        let two = one.clone().batch(2);
        for (evaluator, expected) in [(&one, vec![1, 2, 3, 4]), (&two, vec![2, 4])] {
            let mut seen = vec![];
            let run = read_sync(evaluator.compressed(&model, &examples, async |k| seen.push(k)));
            let run = run.unwrap();
            assert_eq!(seen, expected);
            assert_eq!(run.predictions.len(), 4);
            assert!(run.ranking.is_none(), "no reranking head");
        }
        let run = |e: &Evaluator| {
            let compressed = read_sync(e.compressed(&model, &examples, async |_| {})).unwrap();
            let full = read_sync(e.uncompressed(&model.generator, &examples, async |_| {}));
            (compressed, full.unwrap())
        };
        let ((c1, f1), (c2, f2)) = (run(&one), run(&two));
        assert_eq!(answers(&c1), answers(&c2));
        assert_eq!(answers(&f1), answers(&f2));
        assert!(texts(&f1).iter().any(|t| !t.is_empty()), "{:?}", texts(&f1));
        assert!(
            f1.predictions[3].prompt_tokens > c1.predictions[3].prompt_tokens,
            "the full text is longer than its memory"
        );
    }

    #[test]
    fn without_stop_tokens_every_answer_takes_max_new_tokens() {
        let (examples, mut tokenizers, config, model) = fixture();
        // Every token stops an answer that stops: one word each.
        tokenizers.generator.stop_ids = (0..tokenizers.generator.vocab_size() as u32).collect();
        let stopping = Evaluator::new(&tokenizers, &config, 5);
        let timed = Evaluator {
            stop: false,
            ..stopping.clone()
        };
        let words = |e: &Evaluator| {
            let run = read_sync(e.uncompressed(&model.generator, &examples, async |_| {}));
            let run = run.unwrap();
            let counts: Vec<usize> = texts(&run)
                .iter()
                .map(|t| t.split_whitespace().count())
                .collect();
            counts
        };
        assert_eq!(words(&stopping), [1, 1, 1, 1]);
        assert_eq!(words(&timed), [5, 5, 5, 5]);
        let speed = read_sync(timed.speed(&model, &model.generator, &examples[..2])).unwrap();
        assert!(speed.compressed_ms > 0.0 && speed.uncompressed_ms > 0.0);
    }

    #[test]
    fn a_full_text_longer_than_the_context_is_refused_by_its_id() {
        let (mut examples, tokenizers, config, model) = fixture();
        examples[2].documents[0].text = "the fox is red ".repeat(200);
        let e = Evaluator::new(&tokenizers, &config, 6);
        let err = read_sync(e.uncompressed(&model.generator, &examples, async |_| {}));
        let message = err.unwrap_err().to_string();
        assert!(
            message.contains("`q2`") && message.contains("512"),
            "{message}"
        );
    }

    #[test]
    fn memory_use_pairs_each_question_with_another_articles_documents() {
        let (mut examples, tokenizers, config, model) = fixture();
        let e = Evaluator::new(&tokenizers, &config, 6);
        let mut last = (0, 0);
        let m = e
            .memory_use(&model, &examples, |k, n| last = (k, n))
            .unwrap();
        assert_eq!(m.questions, 4);
        assert_eq!(last, (8, 8), "both losses of every question scored");
        assert!(m.own_documents_loss.is_finite() && m.other_documents_loss.is_finite());
        assert_ne!(m.own_documents_loss, m.other_documents_loss);
        // Questions 0 and 2 now share documents (skipped both ways); question 3 has no answer.
        examples[2].documents = examples[0].documents.clone();
        examples[3].answers.clear();
        let m = e.memory_use(&model, &examples, |_, _| {}).unwrap();
        assert_eq!(
            m.questions, 1,
            "only question 1 (with question 3's documents) is left"
        );
    }
}
