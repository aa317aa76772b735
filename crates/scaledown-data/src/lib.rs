//! ScaleDown's data crate: the example schema shared by every command, readers for the
//! official dataset formats, the leakage-free train/eval split, the QA metrics and scored answers.
//! No Burn and no file system: callers pass text, so it builds for wasm32 as well.

pub mod corpus;
pub mod metrics;
pub mod results;
pub mod schema;
pub mod sources;
pub mod split;

pub use corpus::{outside_articles, parse_corpus};
pub use metrics::{
    Scores, exact_match, match_accuracy, ndcg_at, normalize_answer, recall_at, rouge_l, token_f1,
};
pub use results::{EvalRun, MemoryUse, Prediction, Ranking, Timing, percentile, smoothed};
pub use schema::{DataError, Document, Example, parse_examples, to_json};
pub use sources::{
    Dataset, HF_PAGE, Parsed, hf_page_offsets, parse_source, push_hf_page, push_row,
};
pub use split::split_train_eval;
