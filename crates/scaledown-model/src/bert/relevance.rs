//! OSCAR's reranking teacher: how well each document suits a question, as MiniLM's cosine
//! similarity between their sentence embeddings.

use super::Bert;
use crate::tokenizer::Tokenizer;
use crate::weights::WeightError;
use burn::prelude::*;

/// Tokens of each text MiniLM reads (it reads at most 512 positions): a long document is
/// judged by its beginning.
pub const RELEVANCE_TOKENS: usize = 256;

impl Bert {
    /// The cosine similarity between `question`'s sentence embedding and each document's.
    /// Reads the embeddings synchronously (native backends).
    pub fn relevance(
        &self,
        tokenizer: &Tokenizer,
        question: &str,
        documents: &[String],
        device: &Device,
    ) -> Result<Vec<f32>, WeightError> {
        let embed = |text: &str| -> Result<Vec<f32>, WeightError> {
            let mut ids = tokenizer.encode_with(text, true)?;
            ids.truncate(RELEVANCE_TOKENS);
            let v = self.sentence_embedding(&ids, device).into_data();
            Ok(v.iter::<f32>().collect())
        };
        let q = embed(question)?;
        documents
            .iter()
            .map(|d| Ok(cosine(&q, &embed(d)?)))
            .collect()
    }
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    dot / (norm(a) * norm(b))
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use crate::bert::BertConfig;
    use crate::tokenizer::word_level_json;

    #[test]
    fn a_document_equal_to_the_question_scores_one_and_others_less() {
        let device = Device::flex();
        device.seed(3);
        let words = ["where", "is", "the", "river", "cat", "sleeps", "on", "mat"];
        let tokenizer = Tokenizer::from_json(word_level_json(words).as_bytes()).unwrap();
        let bert = BertConfig::tiny(tokenizer.vocab_size()).init(&device);
        let docs = [
            "where is the river".to_string(),
            "the cat sleeps on the mat".to_string(),
        ];
        let scores = bert
            .relevance(&tokenizer, "where is the river", &docs, &device)
            .unwrap();
        assert_eq!(scores.len(), 2);
        assert!((scores[0] - 1.0).abs() < 1e-4, "{scores:?}");
        assert!(scores[1] < 0.999 && scores[1] > -1.0, "{scores:?}");
    }
}
