//! A QA example (`scaledown_data::Example`) as the model's inputs: the compressed input, the
//! full-text prompt of the uncompressed generator, and a gold answer as a training example.
//! The CLI, the bench and the page all turn questions into these; the rules live once here.

use crate::compressor::CompressorConfig;
use crate::example::{Encoded, TrainExample};
use crate::oscar::{OscarTokenizers, document_text, full_text_user_turn};
use crate::tokenizer::chat_prompt;
use crate::weights::WeightError;
use scaledown_data::Example;

/// The question's documents as they enter a prompt (title, then text), in order.
pub fn documents_of(ex: &Example) -> Vec<String> {
    ex.documents
        .iter()
        .map(|d| document_text(&d.title, &d.text))
        .collect()
}

impl OscarTokenizers {
    /// The question with its documents to compress.
    pub fn encode_example(
        &self,
        config: &CompressorConfig,
        ex: &Example,
    ) -> Result<Encoded, WeightError> {
        self.encode(config, &ex.question, &documents_of(ex))
    }

    /// The uncompressed generator's prompt: the chat turn with the documents in full text.
    pub fn full_text_prompt(&self, ex: &Example) -> Result<Vec<u32>, WeightError> {
        let user = full_text_user_turn(&ex.question, &documents_of(ex));
        self.generator.encode(&chat_prompt(&user))
    }

    /// A training example that answers `ex` from its compressed documents with `answer` (the
    /// gold answer or a teacher's).
    pub fn answer_example(
        &self,
        config: &CompressorConfig,
        ex: &Example,
        answer: &str,
    ) -> Result<TrainExample, WeightError> {
        let spellings = [
            self.generator.encode(answer.trim())?,
            self.generator.encode(&format!(" {}", answer.trim()))?,
        ];
        Ok(TrainExample::new(
            self.encode_example(config, ex)?,
            self.encode_answer(answer)?,
        )
        .with_answer_span(&spellings))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compressor::{CompressorType, Readout};
    use crate::tokenizer::{Tokenizer, word_level_json, words_of};
    use scaledown_data::schema::Document;

    fn question() -> Example {
        Example {
            id: "q".into(),
            dataset: "test".into(),
            question: "where is the rhine".into(),
            documents: ["Rhine_River", "Alps"]
                .map(|title| Document {
                    title: title.into(),
                    text: format!("the {title} text"),
                })
                .to_vec(),
            answers: vec!["switzerland".into()],
            supporting_titles: vec![],
            teacher_answer: None,
        }
    }

    fn tokenizers(ex: &Example) -> OscarTokenizers {
        let template = chat_prompt(&full_text_user_turn("", &[]));
        let mut words = words_of(&template);
        for text in documents_of(ex).into_iter().chain([ex.question.clone()]) {
            words.extend(words_of(&text));
        }
        words.extend(words_of(&ex.answers[0]));
        let json = word_level_json(words.iter().map(String::as_str));
        OscarTokenizers {
            generator: Tokenizer::from_json(json.as_bytes()).unwrap(),
            encoder: None,
        }
    }

    #[test]
    fn documents_enter_with_their_titles_in_order() {
        assert_eq!(
            documents_of(&question()),
            ["Rhine River\nthe Rhine_River text", "Alps\nthe Alps text"]
        );
    }

    #[test]
    fn a_question_becomes_the_prompt_the_compressed_input_and_a_target() {
        let ex = question();
        let tok = tokenizers(&ex);
        let prompt = tok
            .generator
            .decode(&tok.full_text_prompt(&ex).unwrap(), true);
        let (rhine, alps, q) = (
            prompt.find("rhine river").unwrap(),
            prompt.find("alps text").unwrap(),
            prompt.find("where is the rhine").unwrap(),
        );
        assert!(
            rhine < alps && alps < q,
            "documents in order, then the question: {prompt}"
        );

        let config = crate::tiny::compressor_config(CompressorType::NLayers, Readout::Pooled);
        let encoded = tok.encode_example(&config, &ex).unwrap();
        assert_eq!(encoded.documents(), 2);
        let target = tok.answer_example(&config, &ex, "switzerland").unwrap();
        assert_eq!(target.encoded.documents(), 2);
        assert_eq!(
            tok.generator.decode(&target.answer, false).trim(),
            "switzerland <|im_end|>"
        );
    }
}
