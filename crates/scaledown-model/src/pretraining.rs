//! Compressor pretraining on unlabelled passages, as PISCO and COCOM do before question
//! answering: the compressor learns to keep a passage's content, not only what one answer
//! needs. Both objectives are teacher-forced answers after a compressed prompt, so they train
//! through `Oscar::answer_loss` and the same optimisation step:
//! - auto-encoding: the generator restates the compressed chunk;
//! - text continuation: it writes the text that follows the compressed chunk.

use crate::compressor::CompressorConfig;
use crate::oscar::{Oscar, OscarTokenizers};
use crate::training::{TrainExample, mean_answer_loss};
use crate::weights::WeightError;
use std::fmt;
use std::str::FromStr;

/// The instruction in place of a question (compressor input and generator prompt).
pub const AUTO_ENCODE_INSTRUCTION: &str = "Repeat the background text.";
pub const CONTINUE_INSTRUCTION: &str = "Continue the background text.";

/// Target tokens of a continuation: at most this many, at least `MIN_CONTINUATION`.
pub const CONTINUATION_TOKENS: usize = 64;
const MIN_CONTINUATION: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Objective {
    AutoEncode,
    Continue,
}

/// Which objectives a pretraining run uses; `Both` alternates them example by example.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Objectives {
    AutoEncode,
    Continue,
    Both,
}

impl FromStr for Objectives {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto-encode" => Ok(Self::AutoEncode),
            "continue" => Ok(Self::Continue),
            "both" => Ok(Self::Both),
            other => Err(format!(
                "unknown pretraining objective `{other}` (auto-encode, continue or both)"
            )),
        }
    }
}

impl fmt::Display for Objectives {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::AutoEncode => "auto-encode",
            Self::Continue => "continue",
            Self::Both => "both",
        })
    }
}

impl Objectives {
    fn includes(self, o: Objective) -> bool {
        matches!(
            (self, o),
            (Self::Both, _)
                | (Self::AutoEncode, Objective::AutoEncode)
                | (Self::Continue, Objective::Continue)
        )
    }
}

/// The pretraining examples of one passage: one per window of `config.chunk_tokens()`
/// generator tokens, for each objective in `objectives` that the window allows (a
/// continuation needs text after the window).
pub fn passage_examples(
    tokenizers: &OscarTokenizers,
    config: &CompressorConfig,
    passage: &str,
    objectives: Objectives,
) -> Result<Vec<TrainExample>, WeightError> {
    let tok = &tokenizers.generator;
    let ids = tok.encode(passage.trim())?;
    let window = config.chunk_tokens();
    let mut out = Vec::new();
    let mut start = 0;
    while ids.len() - start >= MIN_CONTINUATION {
        let end = (start + window).min(ids.len());
        let chunk = tok.decode(&ids[start..end], true);
        if objectives.includes(Objective::AutoEncode) {
            out.push(example(
                tokenizers,
                config,
                AUTO_ENCODE_INSTRUCTION,
                &chunk,
                &chunk,
            )?);
        }
        let rest = &ids[end..(end + CONTINUATION_TOKENS).min(ids.len())];
        if objectives.includes(Objective::Continue) && rest.len() >= MIN_CONTINUATION {
            let target = tok.decode(rest, true);
            out.push(example(
                tokenizers,
                config,
                CONTINUE_INSTRUCTION,
                &chunk,
                &target,
            )?);
        }
        start = end;
    }
    Ok(out)
}

/// The auto-encoding example of a passage's first window, however short the passage.
pub fn first_window_auto_encoding(
    tokenizers: &OscarTokenizers,
    config: &CompressorConfig,
    passage: &str,
) -> Result<TrainExample, WeightError> {
    let tok = &tokenizers.generator;
    let mut ids = tok.encode(passage.trim())?;
    ids.truncate(config.chunk_tokens());
    let chunk = tok.decode(&ids, true);
    example(tokenizers, config, AUTO_ENCODE_INSTRUCTION, &chunk, &chunk)
}

fn example(
    tokenizers: &OscarTokenizers,
    config: &CompressorConfig,
    instruction: &str,
    document: &str,
    target: &str,
) -> Result<TrainExample, WeightError> {
    Ok(TrainExample {
        encoded: tokenizers.encode(config, instruction, &[document.to_string()])?,
        answer: tokenizers.encode_answer(target)?,
        teacher_scores: vec![],
        teacher_tokens: vec![],
    })
}

/// Whether the generator reads the memory: the mean loss of `examples` (auto-encoding ones,
/// whose target only the memory can give) after their own memory and after the memory of
/// example i + n/2, the instruction unchanged: `(own, other)`. Equal losses mean the memory is
/// ignored. `progress` is called with the examples scored so far.
pub fn memory_gap(
    model: &Oscar,
    examples: &[TrainExample],
    mut progress: impl FnMut(usize),
) -> (f32, f32) {
    let n = examples.len();
    let swapped: Vec<TrainExample> = (0..n)
        .map(|i| TrainExample {
            encoded: examples[(i + n / 2) % n].encoded.clone(),
            answer: examples[i].answer.clone(),
            teacher_scores: vec![],
            teacher_tokens: vec![],
        })
        .collect();
    let own = mean_answer_loss(model, examples, &mut progress);
    let other = mean_answer_loss(model, &swapped, |k| progress(n + k));
    (own, other)
}
