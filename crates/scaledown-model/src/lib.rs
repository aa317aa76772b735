//! ScaleDown's model crate: SmolLM2 (Llama), MiniLM (BERT) and ModernBERT in Burn, loaded from the bytes
//! of their published files, with tokenizers and generation. No file-system or network code,
//! so that it builds for `wasm32-unknown-unknown` too.

pub mod backend;
pub mod bert;
pub mod checkpoint;
pub mod compressor;
pub mod distillation;
pub mod encoder;
pub mod evaluation;
pub mod example;
pub mod generation;
mod guard;
pub mod llama;
pub mod modernbert;
pub mod oscar;
pub mod pipeline;
pub mod pretraining;
pub mod quant;
pub mod questions;
pub mod recipe;
pub mod report;
#[cfg(not(target_arch = "wasm32"))]
mod spin_pool;
pub mod stages;
pub mod tiny;
pub mod tokenizer;
pub mod training;
pub mod weights;

#[cfg(test)]
mod oscar_tests;
#[cfg(test)]
mod pretraining_tests;
#[cfg(test)]
mod readout_tests;
#[cfg(test)]
mod rerank_tests;
#[cfg(test)]
mod stages_tests;

pub use burn;
