//! The encoder compressor's backbone: a bidirectional encoder from a Hugging Face folder,
//! BERT (all-MiniLM-L6-v2, the shipped one) or ModernBERT (the seed tool's default), chosen
//! by the `model_type` of its `config.json`.

use crate::bert::{Bert, bert_from_safetensors};
use crate::modernbert::{ModernBert, modernbert_from_safetensors};
use crate::weights::WeightError;
use burn::prelude::*;

#[derive(Module, Debug)]
#[allow(clippy::large_enum_variant)] // one per compressor, built once
pub enum Encoder {
    Bert(Bert),
    ModernBert(ModernBert),
}

impl Encoder {
    /// Loads the architecture that `config_json` names (`model_type` `bert`, the default, or
    /// `modernbert`) from `model.safetensors` bytes.
    pub fn from_safetensors(
        config_json: &str,
        bytes: &[u8],
        device: &Device,
    ) -> Result<Self, WeightError> {
        #[derive(serde::Deserialize)]
        struct Kind {
            model_type: Option<String>,
        }
        let kind: Kind = serde_json::from_str(config_json)
            .map_err(|e| WeightError::Config(format!("config.json: {e}")))?;
        match kind.model_type.as_deref().unwrap_or("bert") {
            "bert" => Ok(Self::Bert(
                bert_from_safetensors(config_json, bytes, device)?.1,
            )),
            "modernbert" => Ok(Self::ModernBert(
                modernbert_from_safetensors(config_json, bytes, device)?.1,
            )),
            other => Err(WeightError::Config(format!(
                "config.json: encoder model_type `{other}` is not supported (bert, modernbert)"
            ))),
        }
    }

    /// The architecture's name, for messages.
    pub fn architecture(&self) -> &'static str {
        match self {
            Self::Bert(_) => "BERT",
            Self::ModernBert(_) => "ModernBERT",
        }
    }

    pub fn hidden_size(&self) -> usize {
        match self {
            Self::Bert(m) => m.hidden_size(),
            Self::ModernBert(m) => m.hidden_size(),
        }
    }

    pub fn max_positions(&self) -> usize {
        match self {
            Self::Bert(m) => m.max_positions(),
            Self::ModernBert(m) => m.max_positions(),
        }
    }

    pub fn device(&self) -> Device {
        match self {
            Self::Bert(m) => m.embeddings.word.weight.device(),
            Self::ModernBert(m) => m.tok_embeddings.weight.device(),
        }
    }

    /// Token ids `[batch, seq]` -> word embeddings `[batch, seq, hidden]`.
    pub fn embed(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        match self {
            Self::Bert(m) => m.embeddings.word.forward(ids),
            Self::ModernBert(m) => m.tok_embeddings.forward(ids),
        }
    }

    /// Word embeddings `[batch, seq, hidden]` (token embeddings, or learned vectors spliced
    /// among them) and the attention mask `[batch, seq]` (1 for tokens, 0 for padding) -> the
    /// last hidden states `[batch, seq, hidden]`.
    pub fn forward_word_embeds(
        &self,
        words: Tensor<3>,
        attention_mask: Tensor<2, Int>,
    ) -> Tensor<3> {
        match self {
            Self::Bert(m) => m.forward_word_embeds(words, attention_mask),
            Self::ModernBert(m) => m.forward_word_embeds(words, attention_mask),
        }
    }
}
