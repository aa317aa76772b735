//! Llama-family decoder (SmolLM2): config, model, RoPE, KV cache and weight loading.

pub mod cache;
pub mod config;
pub mod input;
mod load;
pub mod lora;
pub mod model;
pub mod rope;

pub use cache::KvCache;
pub use config::LlamaConfig;
pub use input::{Inserted, PromptInput};
pub use load::{
    generator_from_gguf, generator_from_gguf_in_blocks, llama_from_gguf, llama_from_safetensors,
};
pub use model::{LayerStep, Llama};

#[cfg(test)]
mod tests;
