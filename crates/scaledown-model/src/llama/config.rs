//! Llama-family hyper-parameters, read from GGUF metadata or a Hugging Face `config.json`.

use crate::weights::WeightError;
use crate::weights::gguf::GgufFile;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub rope_theta: f32,
    pub rms_norm_eps: f64,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
}

impl LlamaConfig {
    /// Positions covered by the RoPE tables: the context length, capped so that a file claiming
    /// a huge context cannot size a huge allocation.
    pub fn rope_table_len(&self) -> usize {
        self.max_position_embeddings.min(32_768)
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// SmolLM2-135M's shape; the real values come from the model file.
    pub fn smollm2_135m() -> Self {
        Self {
            vocab_size: 49152,
            hidden_size: 576,
            intermediate_size: 1536,
            num_hidden_layers: 30,
            num_attention_heads: 9,
            num_key_value_heads: 3,
            rope_theta: 100_000.0,
            rms_norm_eps: 1e-5,
            max_position_embeddings: 8192,
            tie_word_embeddings: true,
        }
    }

    /// A tiny random-weight configuration for fast tests and the browser demo.
    pub fn tiny(vocab_size: usize) -> Self {
        Self {
            vocab_size,
            hidden_size: 64,
            intermediate_size: 128,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            rope_theta: 10_000.0,
            rms_norm_eps: 1e-5,
            max_position_embeddings: 512,
            tie_word_embeddings: true,
        }
    }

    pub fn validate(&self) -> Result<(), WeightError> {
        let bad = |m: String| Err(WeightError::Config(m));
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return bad(format!(
                "hidden size {} is not a multiple of {} heads",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.num_key_value_heads == 0
            || !self
                .num_attention_heads
                .is_multiple_of(self.num_key_value_heads)
        {
            return bad(format!(
                "{} attention heads are not a multiple of {} key-value heads",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if !self.head_dim().is_multiple_of(2) {
            return bad(format!(
                "head dim {} must be even for RoPE",
                self.head_dim()
            ));
        }
        // Bounds that no real Llama exceeds; they stop a hostile header from sizing allocations.
        let dims = [
            ("vocab size", self.vocab_size, 1 << 20),
            ("hidden size", self.hidden_size, 1 << 16),
            ("intermediate size", self.intermediate_size, 1 << 18),
            ("layer count", self.num_hidden_layers, 512),
            ("context length", self.max_position_embeddings, 1 << 20),
        ];
        for (what, v, max) in dims {
            if v == 0 || v > max {
                return bad(format!("{what} {v} is out of range (1..={max})"));
            }
        }
        Ok(())
    }

    pub fn from_gguf(file: &GgufFile) -> Result<Self, WeightError> {
        let arch = file
            .meta("general.architecture")
            .and_then(|v| v.as_str())
            .ok_or_else(|| WeightError::Config("GGUF lacks general.architecture".into()))?;
        if arch != "llama" {
            return Err(WeightError::Config(format!(
                "GGUF architecture `{arch}` is not supported (only `llama`)"
            )));
        }
        let int = |key: &str| -> Result<usize, WeightError> {
            file.meta(&format!("llama.{key}"))
                .and_then(|v| v.as_u64())
                .map(|v| v as usize)
                .ok_or_else(|| WeightError::Config(format!("GGUF lacks llama.{key}")))
        };
        let heads = int("attention.head_count")?;
        let vocab_size = match file.meta("llama.vocab_size").and_then(|v| v.as_u64()) {
            Some(v) => v as usize,
            None => file
                .tensor_info("token_embd.weight")
                .map(|t| t.shape[0])
                .ok_or_else(|| WeightError::Missing("token_embd.weight".into()))?,
        };
        let cfg = Self {
            vocab_size,
            hidden_size: int("embedding_length")?,
            intermediate_size: int("feed_forward_length")?,
            num_hidden_layers: int("block_count")?,
            num_attention_heads: heads,
            num_key_value_heads: int("attention.head_count_kv").unwrap_or(heads),
            rope_theta: file
                .meta("llama.rope.freq_base")
                .and_then(|v| v.as_f64())
                .unwrap_or(10_000.0) as f32,
            rms_norm_eps: file
                .meta("llama.attention.layer_norm_rms_epsilon")
                .and_then(|v| v.as_f64())
                .unwrap_or(1e-5),
            max_position_embeddings: int("context_length").unwrap_or(2048),
            tie_word_embeddings: file.tensor_info("output.weight").is_none(),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads a Hugging Face `config.json` of a `LlamaForCausalLM`.
    pub fn from_hf_json(json: &str) -> Result<Self, WeightError> {
        #[derive(Deserialize)]
        struct Hf {
            vocab_size: usize,
            hidden_size: usize,
            intermediate_size: usize,
            num_hidden_layers: usize,
            num_attention_heads: usize,
            num_key_value_heads: Option<usize>,
            rope_theta: Option<f32>,
            /// transformers 5 moved `rope_theta` in here.
            rope_parameters: Option<RopeParameters>,
            rms_norm_eps: Option<f64>,
            max_position_embeddings: Option<usize>,
            tie_word_embeddings: Option<bool>,
        }
        #[derive(Deserialize)]
        struct RopeParameters {
            rope_theta: Option<f32>,
        }
        let hf: Hf = serde_json::from_str(json)
            .map_err(|e| WeightError::Config(format!("config.json: {e}")))?;
        let cfg = Self {
            vocab_size: hf.vocab_size,
            hidden_size: hf.hidden_size,
            intermediate_size: hf.intermediate_size,
            num_hidden_layers: hf.num_hidden_layers,
            num_attention_heads: hf.num_attention_heads,
            num_key_value_heads: hf.num_key_value_heads.unwrap_or(hf.num_attention_heads),
            rope_theta: hf
                .rope_theta
                .or(hf.rope_parameters.and_then(|r| r.rope_theta))
                .unwrap_or(10_000.0),
            rms_norm_eps: hf.rms_norm_eps.unwrap_or(1e-6),
            max_position_embeddings: hf.max_position_embeddings.unwrap_or(2048),
            tie_word_embeddings: hf.tie_word_embeddings.unwrap_or(false),
        };
        cfg.validate()?;
        Ok(cfg)
    }
}
