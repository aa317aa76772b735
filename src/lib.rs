//! The `scaledown` command line: thin shells over `scaledown-model` and `scaledown-data`.

pub mod bench;
pub mod cli;
pub mod models;
