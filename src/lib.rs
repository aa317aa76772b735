//! The `scaledown` command line: thin shells over `scaledown-model` and `scaledown-data`.

pub mod ask;
pub mod ceiling;
pub mod checkpoint;
pub mod cli;
pub mod evaluate;
pub mod fsutil;
pub mod models;
pub mod passages;
pub mod prepare;
pub mod progress;
pub mod serve;
pub mod teacher;
pub mod train;
pub mod train_args;
