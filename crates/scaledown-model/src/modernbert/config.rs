//! ModernBERT hyper-parameters from a Hugging Face `config.json`, in either of transformers'
//! spellings: the published one (`global_attn_every_n_layers`, `global_rope_theta`,
//! `local_rope_theta`) or the one transformers 5 writes (`layer_types`, `rope_parameters`).

use crate::weights::WeightError;
use serde::Deserialize;
use std::collections::BTreeMap;

/// Where a layer's attention looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionSpan {
    /// Every token sees every token (RoPE with the global theta).
    Global,
    /// Every token sees the tokens at most `local_attention / 2` positions away (RoPE with the
    /// local theta).
    Local,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModernBertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    pub norm_eps: f64,
    pub norm_bias: bool,
    pub attention_bias: bool,
    pub mlp_bias: bool,
    /// The full local window; a token sees `local_attention / 2` positions either side.
    pub local_attention: usize,
    pub global_rope_theta: f32,
    pub local_rope_theta: f32,
    pub layers: Vec<AttentionSpan>,
}

/// `config.json` as written, before the two spellings are reconciled.
#[derive(Deserialize)]
struct RawConfig {
    model_type: Option<String>,
    vocab_size: usize,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    #[serde(default = "default_max_positions")]
    max_position_embeddings: usize,
    #[serde(default = "default_eps")]
    norm_eps: f64,
    #[serde(default)]
    norm_bias: bool,
    #[serde(default)]
    attention_bias: bool,
    #[serde(default)]
    mlp_bias: bool,
    #[serde(default = "default_local_attention")]
    local_attention: usize,
    #[serde(default = "default_act")]
    hidden_activation: String,
    #[serde(default = "default_every")]
    global_attn_every_n_layers: usize,
    global_rope_theta: Option<f32>,
    local_rope_theta: Option<f32>,
    layer_types: Option<Vec<String>>,
    rope_parameters: Option<BTreeMap<String, RopeParameters>>,
}

#[derive(Deserialize)]
struct RopeParameters {
    rope_theta: Option<f32>,
    rope_type: Option<String>,
}

fn default_max_positions() -> usize {
    8192
}
fn default_eps() -> f64 {
    1e-5
}
fn default_local_attention() -> usize {
    128
}
fn default_act() -> String {
    "gelu".into()
}
fn default_every() -> usize {
    3
}

impl ModernBertConfig {
    pub fn from_hf_json(json: &str) -> Result<Self, WeightError> {
        let bad = |m: String| WeightError::Config(format!("config.json: {m}"));
        let raw: RawConfig = serde_json::from_str(json).map_err(|e| bad(e.to_string()))?;
        if let Some(t) = raw.model_type.as_deref()
            && t != "modernbert"
        {
            return Err(bad(format!("model_type `{t}` is not `modernbert`")));
        }
        if raw.hidden_activation != "gelu" {
            return Err(bad(format!(
                "hidden_activation `{}` is not supported (only exact `gelu`)",
                raw.hidden_activation
            )));
        }
        if raw.num_hidden_layers > 256 {
            return Err(bad(format!(
                "layer count {} is out of range (1..=256)",
                raw.num_hidden_layers
            )));
        }
        let layers = match &raw.layer_types {
            Some(types) => {
                if types.len() != raw.num_hidden_layers {
                    return Err(bad(format!(
                        "layer_types has {} entries for {} layers",
                        types.len(),
                        raw.num_hidden_layers
                    )));
                }
                types
                    .iter()
                    .map(|t| match t.as_str() {
                        "full_attention" => Ok(AttentionSpan::Global),
                        "sliding_attention" => Ok(AttentionSpan::Local),
                        other => Err(bad(format!("layer type `{other}` is not supported"))),
                    })
                    .collect::<Result<_, _>>()?
            }
            None => {
                if raw.global_attn_every_n_layers == 0 {
                    return Err(bad("global_attn_every_n_layers is 0".into()));
                }
                (0..raw.num_hidden_layers)
                    .map(|i| match i % raw.global_attn_every_n_layers {
                        0 => AttentionSpan::Global,
                        _ => AttentionSpan::Local,
                    })
                    .collect()
            }
        };
        let theta = |kind: &str, old: Option<f32>, default: f32| -> Result<f32, WeightError> {
            let given = raw.rope_parameters.as_ref().and_then(|p| p.get(kind));
            if let Some(t) = given.and_then(|p| p.rope_type.as_deref())
                && t != "default"
            {
                return Err(bad(format!("rope_type `{t}` of {kind} is not supported")));
            }
            Ok(given.and_then(|p| p.rope_theta).or(old).unwrap_or(default))
        };
        let c = Self {
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            num_hidden_layers: raw.num_hidden_layers,
            num_attention_heads: raw.num_attention_heads,
            intermediate_size: raw.intermediate_size,
            max_position_embeddings: raw.max_position_embeddings,
            norm_eps: raw.norm_eps,
            norm_bias: raw.norm_bias,
            attention_bias: raw.attention_bias,
            mlp_bias: raw.mlp_bias,
            local_attention: raw.local_attention,
            global_rope_theta: theta("full_attention", raw.global_rope_theta, 160_000.0)?,
            local_rope_theta: theta("sliding_attention", raw.local_rope_theta, 10_000.0)?,
            layers,
        };
        c.validate()?;
        Ok(c)
    }

    /// A tiny random-weight configuration for tests: 3 layers (global, local, local) and a
    /// local window shorter than the test inputs, so that both spans are exercised.
    pub fn tiny(vocab_size: usize) -> Self {
        Self {
            vocab_size,
            hidden_size: 32,
            num_hidden_layers: 3,
            num_attention_heads: 4,
            intermediate_size: 48,
            max_position_embeddings: 128,
            norm_eps: 1e-5,
            norm_bias: false,
            attention_bias: false,
            mlp_bias: false,
            local_attention: 4,
            global_rope_theta: 160_000.0,
            local_rope_theta: 10_000.0,
            layers: vec![
                AttentionSpan::Global,
                AttentionSpan::Local,
                AttentionSpan::Local,
            ],
        }
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    pub fn validate(&self) -> Result<(), WeightError> {
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
            || !self.head_dim().is_multiple_of(2)
        {
            return Err(WeightError::Config(format!(
                "hidden size {} is not an even head width times {} heads",
                self.hidden_size, self.num_attention_heads
            )));
        }
        for (what, v, max) in [
            ("vocab size", self.vocab_size, 1 << 20),
            ("hidden size", self.hidden_size, 1 << 14),
            ("layer count", self.num_hidden_layers, 256),
            ("intermediate size", self.intermediate_size, 1 << 16),
            ("max positions", self.max_position_embeddings, 1 << 16),
            ("local attention", self.local_attention, 1 << 16),
        ] {
            if v == 0 || v > max {
                return Err(WeightError::Config(format!(
                    "{what} {v} is out of range (1..={max})"
                )));
            }
        }
        if self.local_attention < 2 {
            return Err(WeightError::Config(format!(
                "local attention {} is under 2 (a token would see nothing but itself)",
                self.local_attention
            )));
        }
        for (what, t) in [
            ("global_rope_theta", self.global_rope_theta),
            ("local_rope_theta", self.local_rope_theta),
        ] {
            if !(t.is_finite() && t > 1.0) {
                return Err(WeightError::Config(format!("{what} {t} is not above 1")));
            }
        }
        Ok(())
    }
}
