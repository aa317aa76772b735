//! The model side of `scaledown serve`. [`Prompter`] (shared by the HTTP handlers) tokenises a
//! query and checks it against the limits before it is queued; [`Engine`] (owned by the one
//! thread that runs the model) answers a batch of such queries together.

use super::api::ApiError;
use anyhow::Result;
use scaledown_model::burn::tensor::read_sync;
use scaledown_model::compressor::CompressorConfig;
use scaledown_model::example::{Encoded, ids_tensor};
use scaledown_model::generation::{GenerationConfig, generate_batch_streaming};
use scaledown_model::llama::{Llama, PromptInput};
use scaledown_model::oscar::{Oscar, OscarTokenizers, full_text_user_turn};
use scaledown_model::tokenizer::chat_prompt;
use std::sync::Arc;

/// What a request may ask for (flags of `scaledown serve`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_documents: usize,
    pub max_document_tokens: usize,
    pub max_new_tokens: usize,
}

/// A question with its documents (each already `title\ntext`), as a request gives it.
#[derive(Debug, Clone)]
pub struct Query {
    pub question: String,
    pub documents: Vec<String>,
    /// None: the server's default (compressed when it has a compressor).
    pub compressed: Option<bool>,
    pub generation: GenerationConfig,
}

/// A query tokenised and checked, ready for the model.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub input: Input,
    pub generation: GenerationConfig,
    pub document_tokens: usize,
    /// Positions the generator reads before answering (memory vectors count one each).
    pub prompt_tokens: usize,
}

#[derive(Debug, Clone)]
pub enum Input {
    /// The compressor's chunks and the generator's ids around the memory vectors.
    Compressed(Box<Encoded>),
    /// The full-text prompt's ids.
    FullText(Vec<u32>),
}

impl Prepared {
    pub fn compressed(&self) -> bool {
        matches!(self.input, Input::Compressed(_))
    }

    pub fn memory_vectors(&self, config: Option<&CompressorConfig>) -> usize {
        match (&self.input, config) {
            (Input::Compressed(e), Some(c)) => e.memory_vectors(c),
            _ => 0,
        }
    }

    /// Requests answered in one batch must share how they are answered (one generation
    /// config, except the length: each row is cut at its own `max_new_tokens`).
    pub fn batch_key(&self) -> (bool, u32, u32, u64) {
        let g = &self.generation;
        (
            self.compressed(),
            g.temperature.to_bits(),
            g.top_p.to_bits(),
            g.seed,
        )
    }
}

/// Tokenisation and limits, shared by the handlers (the tokenizers are `Sync`).
pub struct Prompter {
    pub tokenizers: Arc<OscarTokenizers>,
    pub compressor: Option<CompressorConfig>,
    /// The generator's longest sequence (its RoPE table).
    pub context: usize,
    pub limits: Limits,
    /// `max_new_tokens` of a request that does not say.
    pub default_new_tokens: usize,
}

impl Prompter {
    pub fn prepare(&self, q: Query) -> Result<Prepared, ApiError> {
        let l = &self.limits;
        if q.question.trim().is_empty() {
            return Err(ApiError::invalid("question: empty"));
        }
        if q.documents.len() > l.max_documents {
            return Err(ApiError::invalid(format!(
                "documents: {} documents, at most {} per request (--max-documents)",
                q.documents.len(),
                l.max_documents
            )));
        }
        let new_tokens = q.generation.max_new_tokens;
        if new_tokens == 0 || new_tokens > l.max_new_tokens {
            return Err(ApiError::invalid(format!(
                "max_new_tokens: {new_tokens}, give 1 to {} (--max-new-tokens-limit)",
                l.max_new_tokens
            )));
        }
        let tok = &self.tokenizers.generator;
        let mut document_tokens = 0;
        for (i, d) in q.documents.iter().enumerate() {
            if d.trim().is_empty() {
                return Err(ApiError::invalid(format!("documents[{i}]: empty")));
            }
            let n = tok.encode(d).map_err(server_error)?.len();
            if n > l.max_document_tokens {
                return Err(ApiError::invalid(format!(
                    "documents[{i}]: {n} tokens, at most {} (--max-document-tokens)",
                    l.max_document_tokens
                )));
            }
            document_tokens += n;
        }
        // Nothing to compress: the question alone, as the generator reads it.
        let compressed =
            q.compressed.unwrap_or(self.compressor.is_some()) && !q.documents.is_empty();
        let (input, prompt_tokens) = match (compressed, &self.compressor) {
            (true, None) => {
                return Err(ApiError::invalid(
                    "compressed: this server has no compressor (it was started without --checkpoint); send \"compressed\": false",
                ));
            }
            (true, Some(config)) => {
                let e = self
                    .tokenizers
                    .encode(config, &q.question, &q.documents)
                    .map_err(server_error)?;
                let n = e.prompt_tokens(config);
                (Input::Compressed(Box::new(e)), n)
            }
            (false, _) => {
                let user = match q.documents.is_empty() {
                    true => q.question.clone(),
                    false => full_text_user_turn(&q.question, &q.documents),
                };
                let ids = tok.encode(&chat_prompt(&user)).map_err(server_error)?;
                let n = ids.len();
                (Input::FullText(ids), n)
            }
        };
        if prompt_tokens + new_tokens > self.context {
            return Err(ApiError::invalid(format!(
                "documents: the prompt takes {prompt_tokens} positions and max_new_tokens {new_tokens}; the generator reads at most {}",
                self.context
            )));
        }
        Ok(Prepared {
            input,
            generation: q.generation,
            document_tokens,
            prompt_tokens,
        })
    }
}

fn server_error(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
        "server_error",
        format!("tokenizing: {e}"),
    )
}

/// The models, on the thread that runs them.
pub struct Engine {
    /// The compressed model (LoRA merged), when the server has a checkpoint.
    pub oscar: Option<Oscar>,
    /// The generator as published: the full-text answers.
    pub generator: Llama,
    pub tokenizers: Arc<OscarTokenizers>,
}

impl Engine {
    /// Answers `batch` (all of one [`Prepared::batch_key`]) together, calling
    /// `on_token(row, id)` as tokens are picked; ids per row, each cut at its own length.
    pub fn answer(
        &self,
        batch: &[&Prepared],
        mut on_token: impl FnMut(usize, u32),
    ) -> Result<Vec<Vec<u32>>> {
        let Some(first) = batch.first() else {
            return Ok(Vec::new());
        };
        let longest = batch
            .iter()
            .map(|p| p.generation.max_new_tokens)
            .max()
            .unwrap_or(1);
        let config = GenerationConfig {
            max_new_tokens: longest,
            ..first.generation.clone()
        };
        let stop = &self.tokenizers.generator.stop_ids;
        let limits: Vec<usize> = batch.iter().map(|p| p.generation.max_new_tokens).collect();
        let mut counted = vec![0usize; batch.len()];
        let on_token = |row: usize, id: u32| {
            counted[row] += 1;
            if counted[row] <= limits[row] {
                on_token(row, id);
            }
        };
        let mut ids = match first.compressed() {
            true => {
                let oscar = self
                    .oscar
                    .as_ref()
                    .ok_or_else(|| anyhow::anyhow!("no compressor"))?;
                let encoded: Vec<Encoded> = batch
                    .iter()
                    .map(|p| match &p.input {
                        Input::Compressed(e) => Ok((**e).clone()),
                        Input::FullText(_) => Err(anyhow::anyhow!("mixed batch")),
                    })
                    .collect::<Result<_>>()?;
                read_sync(oscar.answer_batch_streaming(&encoded, stop, &config, on_token))?
            }
            false => {
                let device = self.generator.device();
                let prompts = batch
                    .iter()
                    .map(|p| match &p.input {
                        Input::FullText(ids) => Ok(PromptInput::tokens(
                            self.generator.embed(ids_tensor(ids, &device)),
                        )),
                        Input::Compressed(_) => Err(anyhow::anyhow!("mixed batch")),
                    })
                    .collect::<Result<_>>()?;
                read_sync(generate_batch_streaming(
                    &self.generator,
                    prompts,
                    stop,
                    &config,
                    on_token,
                ))?
            }
        };
        for (row, limit) in ids.iter_mut().zip(limits) {
            row.truncate(limit);
        }
        Ok(ids)
    }
}
