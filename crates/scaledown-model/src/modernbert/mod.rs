//! ModernBERT encoder (answerdotai/ModernBERT-base and -large): config, model and weight
//! loading. The seed tool's default compressor backbone.

pub mod config;
pub mod load;
pub mod model;

pub use config::{AttentionSpan, ModernBertConfig};
pub use load::modernbert_from_safetensors;
pub use model::ModernBert;

#[cfg(test)]
mod tests;
