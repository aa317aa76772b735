//! What the model reads: a question and its documents tokenised for the compressor and the
//! generator ([`Encoded`]), and a teacher-forced training example built on it
//! ([`TrainExample`]). Plain data, so that OSCAR, its training step and distillation all
//! depend on this module and not on one another.

use crate::compressor::CompressorConfig;
use burn::prelude::*;

/// One question and its documents, tokenised for the compressor and the generator.
#[derive(Debug, Clone)]
pub struct Encoded {
    /// Per chunk: the compressor's input ids `[query; chunk]`.
    pub chunks: Vec<Vec<u32>>,
    /// Length of the query before each chunk's document tokens.
    pub query_tokens: usize,
    /// Tokens after each chunk's document tokens (the encoder's `[SEP]`).
    pub tail_tokens: usize,
    /// Generator ids before and after the memory vectors.
    pub prefix: Vec<u32>,
    pub suffix: Vec<u32>,
    /// Document tokens that the chunks hold (for the compression report).
    pub document_tokens: usize,
    /// The document each chunk comes from (indices into the question's documents).
    pub chunk_documents: Vec<usize>,
}

impl Encoded {
    /// Where each chunk's document tokens lie in its compressor input.
    pub fn document_ranges(&self) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
        self.chunks
            .iter()
            .map(|c| self.query_tokens..c.len().saturating_sub(self.tail_tokens))
    }

    /// The query ids that every chunk begins with, when there are several chunks (the
    /// compressor's work worth sharing).
    pub fn shared_query(&self) -> Option<&[u32]> {
        let first = self.chunks.first()?.get(..self.query_tokens)?;
        let shared = self.chunks.len() > 1
            && self.query_tokens > 0
            && self.chunks.iter().all(|c| c.starts_with(first));
        shared.then_some(first)
    }

    /// How many memory vectors `config`'s compressor makes of this input's chunks.
    pub fn memory_vectors(&self, config: &CompressorConfig) -> usize {
        self.document_ranges()
            .map(|doc| config.vectors_for(doc.len()))
            .sum()
    }

    /// The positions the generator reads: prompt tokens around the memory vectors.
    pub fn prompt_tokens(&self, config: &CompressorConfig) -> usize {
        self.prefix.len() + self.memory_vectors(config) + self.suffix.len()
    }

    /// The first chunk of each document (None for a document without tokens): the chunk
    /// whose reranking score stands for the document, as it holds the title and opening.
    pub fn first_chunks(&self, documents: usize) -> Vec<Option<usize>> {
        (0..documents)
            .map(|d| self.chunk_documents.iter().position(|&c| c == d))
            .collect()
    }

    /// The document tokens of all chunks, in order (what [`TrainExample::answer_tokens`]
    /// index).
    pub fn document_ids(&self) -> Vec<u32> {
        self.chunks
            .iter()
            .zip(self.document_ranges())
            .flat_map(|(c, r)| c[r].iter().copied())
            .collect()
    }

    /// How many documents the chunks come from.
    pub fn documents(&self) -> usize {
        self.chunk_documents.iter().max().map_or(0, |&d| d + 1)
    }

    /// The uncompressed prompt (the documents' full text) as an input without chunks: the
    /// generator reads it whole. Training on these fine-tunes the uncompressed generator, the
    /// fair ceiling of the compressed model.
    pub fn full_text(prompt: Vec<u32>) -> Self {
        Self {
            chunks: vec![],
            query_tokens: 0,
            tail_tokens: 0,
            prefix: prompt,
            suffix: vec![],
            document_tokens: 0,
            chunk_documents: vec![],
        }
    }
}

/// A teacher-forced example: the compressed input and the target answer ids.
pub struct TrainExample {
    pub encoded: Encoded,
    pub answer: Vec<u32>,
    /// The teacher's relevance score of each document, for the reranking loss (empty: none).
    pub teacher_scores: Vec<f32>,
    /// The uncompressed teacher's top tokens at each answer position, for distillation
    /// (empty: none).
    pub teacher_tokens: TeacherTokens,
    /// Where the answer lies in the document tokens ([`Encoded::document_ids`]), for the span
    /// loss (empty: not found, or not looked for).
    pub answer_tokens: Vec<usize>,
}

impl TrainExample {
    /// An example without reranking or distillation targets.
    pub fn new(encoded: Encoded, answer: Vec<u32>) -> Self {
        Self {
            encoded,
            answer,
            teacher_scores: vec![],
            teacher_tokens: vec![],
            answer_tokens: vec![],
        }
    }

    /// With the answer's place in the document tokens (the span loss's target): the first
    /// occurrence of any of `answers` (token ids, e.g. the answer with and without a leading
    /// space), or none.
    pub fn with_answer_span(self, answers: &[Vec<u32>]) -> Self {
        let ids = self.encoded.document_ids();
        let found = answers
            .iter()
            .filter(|a| !a.is_empty())
            .filter_map(|a| {
                let at = ids.windows(a.len()).position(|w| w == a.as_slice())?;
                Some(at..at + a.len())
            })
            .min_by_key(|r| r.start);
        Self {
            answer_tokens: found.map(|r| r.collect()).unwrap_or_default(),
            ..self
        }
    }

    /// With the teacher's relevance score of each document (the reranking loss's target).
    pub fn with_relevance(self, teacher_scores: Vec<f32>) -> Self {
        Self {
            teacher_scores,
            ..self
        }
    }

    /// With the uncompressed teacher's top tokens at each answer position (distillation's
    /// target).
    pub fn with_teacher_tokens(self, teacher_tokens: TeacherTokens) -> Self {
        Self {
            teacher_tokens,
            ..self
        }
    }
}

/// The teacher's `k` most likely tokens and their probabilities at each answer position.
pub type TeacherTokens = Vec<Vec<(u32, f32)>>;

/// `[n]` ids -> `[1, n]` tensor.
pub fn ids_tensor(ids: &[u32], device: &Device) -> Tensor<2, Int> {
    let data = TensorData::new(ids.iter().map(|&i| i as i64).collect(), [1, ids.len()]);
    Tensor::from_data(data, device)
}
