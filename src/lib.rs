//! The `scaledown` command line: thin shells over `scaledown-model` and `scaledown-data`.

pub mod ask;
pub mod ceiling;
pub mod cli;
pub mod evaluate;
pub mod prepare;
pub mod progress;
pub mod serve;
pub mod teacher;
pub mod train;
