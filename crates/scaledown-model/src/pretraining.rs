//! Compressor pretraining on unlabelled passages, as PISCO and COCOM do before question
//! answering: the compressor learns to keep a passage's content, not only what one answer
//! needs. Both objectives are teacher-forced answers after a compressed prompt, so they train
//! through `Oscar::answer_loss` and the same optimisation step:
//! - auto-encoding: the generator restates the compressed chunk;
//! - text continuation: it writes the text that follows the compressed chunk.

use crate::compressor::CompressorConfig;
use crate::example::TrainExample;
use crate::oscar::{Oscar, OscarTokenizers};
use crate::training::mean_answer_loss;
use crate::weights::WeightError;
use std::fmt;
use std::str::FromStr;

/// The instruction in place of a question (compressor input and generator prompt).
pub const AUTO_ENCODE_INSTRUCTION: &str = "Repeat the background text.";
pub const CONTINUE_INSTRUCTION: &str = "Continue the background text.";

/// Target tokens of a continuation: at most this many, at least `MIN_CONTINUATION`.
pub const CONTINUATION_TOKENS: usize = 64;
const MIN_CONTINUATION: usize = 8;

/// The pretraining examples of a run, one pool per objective, mixed step by step in the
/// proportion the run asks for (ARC-Encoder found 20-50 % reconstruction best).
#[derive(Default)]
pub struct PretrainingSet {
    /// Restate the compressed window.
    pub auto_encoding: Vec<TrainExample>,
    /// Write the text after the compressed window.
    pub continuation: Vec<TrainExample>,
}

impl PretrainingSet {
    /// Adds a passage's examples: one auto-encoding example per window of
    /// `config.chunk_tokens()` generator tokens, and a continuation example for each window
    /// with at least `MIN_CONTINUATION` tokens after it.
    pub fn add_passage(
        &mut self,
        tokenizers: &OscarTokenizers,
        config: &CompressorConfig,
        passage: &str,
    ) -> Result<(), WeightError> {
        let tok = &tokenizers.generator;
        let ids = tok.encode(passage.trim())?;
        let window = config.chunk_tokens();
        let mut start = 0;
        while ids.len() - start >= MIN_CONTINUATION {
            let end = (start + window).min(ids.len());
            let chunk = tok.decode(&ids[start..end], true);
            self.auto_encoding.push(example(
                tokenizers,
                config,
                AUTO_ENCODE_INSTRUCTION,
                &chunk,
                &chunk,
            )?);
            let rest = &ids[end..(end + CONTINUATION_TOKENS).min(ids.len())];
            if rest.len() >= MIN_CONTINUATION {
                let target = tok.decode(rest, true);
                self.continuation.push(example(
                    tokenizers,
                    config,
                    CONTINUE_INSTRUCTION,
                    &chunk,
                    &target,
                )?);
            }
            start = end;
        }
        Ok(())
    }

    /// The objective that `share` asks for but no passage gave an example of, if any.
    pub fn missing(&self, share: Reconstruction) -> Option<&'static str> {
        if share.permille > 0 && self.auto_encoding.is_empty() {
            Some("auto-encoding")
        } else if share.permille < 1000 && self.continuation.is_empty() {
            Some("continuation (no window has text after it)")
        } else {
            None
        }
    }

    /// The examples of optimiser step `step`, `batch` of them. Slot k of the run
    /// (k = step·batch + i) auto-encodes when ⌊(k+1)·share⌋ > ⌊k·share⌋, so any stretch of
    /// slots holds `share` of reconstruction, evenly spread; each pool is read in its own
    /// seeded shuffled order, epoch after epoch, so a window comes back only once its pool
    /// is used up. Slots of an empty pool ([`Self::missing`]) are left out.
    pub fn batch(
        &self,
        step: usize,
        batch: usize,
        share: Reconstruction,
        seed: u64,
    ) -> Vec<&TrainExample> {
        let s = share.permille as usize;
        (step * batch..(step + 1) * batch)
            .filter_map(|k| {
                let (pool, j, salt) = match (k + 1) * s / 1000 > k * s / 1000 {
                    true => (&self.auto_encoding, k * s / 1000, 0),
                    false => (&self.continuation, k - k * s / 1000, 1 << 32),
                };
                (!pool.is_empty()).then(|| {
                    let epoch = (j / pool.len()) as u64;
                    &pool[shuffled(pool.len(), seed ^ salt, epoch)[j % pool.len()]]
                })
            })
            .collect()
    }
}

/// `0..n` in the seeded order of `epoch`.
fn shuffled(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    use rand::{SeedableRng, seq::SliceRandom};
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed.wrapping_add(epoch));
    order.shuffle(&mut rng);
    order
}

/// The share of pretraining examples that auto-encode (the rest continue), in per mille so
/// that the mix is exact and the same on every machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Reconstruction {
    pub permille: u16,
}

impl Reconstruction {
    pub const ALL: Self = Self { permille: 1000 };
}

impl FromStr for Reconstruction {
    type Err = String;
    /// A fraction (`0.2`) or a percentage (`20%`).
    fn from_str(s: &str) -> Result<Self, String> {
        let (number, scale) = match s.strip_suffix('%') {
            Some(p) => (p, 10.0),
            None => (s, 1000.0),
        };
        match number.trim().parse::<f64>() {
            Ok(v) if (0.0..=1000.0 / scale).contains(&v) => Ok(Self {
                permille: (v * scale).round() as u16,
            }),
            _ => Err(format!(
                "`{s}` is not a share of reconstruction: a fraction in [0, 1] or a percentage"
            )),
        }
    }
}

impl fmt::Display for Reconstruction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} % reconstruction", self.permille as f64 / 10.0)
    }
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
    Ok(TrainExample::new(
        tokenizers.encode(config, instruction, &[document.to_string()])?,
        tokenizers.encode_answer(target)?,
    ))
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
        .map(|i| {
            TrainExample::new(
                examples[(i + n / 2) % n].encoded.clone(),
                examples[i].answer.clone(),
            )
        })
        .collect();
    let own = mean_answer_loss(model, examples, &mut progress);
    let other = mean_answer_loss(model, &swapped, |k| progress(n + k));
    (own, other)
}
