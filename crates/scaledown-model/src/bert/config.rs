//! BERT hyper-parameters from a Hugging Face `config.json`.

use crate::weights::WeightError;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_act")]
    pub hidden_act: String,
}

fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}
fn default_act() -> String {
    "gelu".into()
}

impl BertConfig {
    pub fn from_hf_json(json: &str) -> Result<Self, WeightError> {
        let c: Self = serde_json::from_str(json)
            .map_err(|e| WeightError::Config(format!("config.json: {e}")))?;
        c.validate()?;
        Ok(c)
    }

    /// A tiny random-weight configuration for tests.
    pub fn tiny(vocab_size: usize) -> Self {
        Self {
            vocab_size,
            hidden_size: 32,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            intermediate_size: 64,
            max_position_embeddings: 128,
            type_vocab_size: 2,
            layer_norm_eps: 1e-12,
            hidden_act: "gelu".into(),
        }
    }

    pub fn validate(&self) -> Result<(), WeightError> {
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return Err(WeightError::Config(format!(
                "hidden size {} is not a multiple of {} heads",
                self.hidden_size, self.num_attention_heads
            )));
        }
        if self.hidden_act != "gelu" {
            return Err(WeightError::Config(format!(
                "activation `{}` is not supported (only exact `gelu`)",
                self.hidden_act
            )));
        }
        for (what, v, max) in [
            ("vocab size", self.vocab_size, 1 << 20),
            ("hidden size", self.hidden_size, 1 << 14),
            ("layer count", self.num_hidden_layers, 256),
            ("intermediate size", self.intermediate_size, 1 << 16),
            ("max positions", self.max_position_embeddings, 1 << 16),
            ("type vocab size", self.type_vocab_size, 16),
        ] {
            if v == 0 || v > max {
                return Err(WeightError::Config(format!(
                    "{what} {v} is out of range (1..={max})"
                )));
            }
        }
        Ok(())
    }
}
