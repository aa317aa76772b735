//! The recipe of a run as one typed value: compressor, LoRA, optimiser, labels and loss,
//! evaluation and pretraining. Its `Default` is the measured best recipe at the seed's scale;
//! the CLI maps its flags onto it, the page builds it from its form, and the report and every
//! checkpoint store it (`recipe.json`), so that a run says exactly how it was made.

use crate::checkpoint::OscarSetup;
use crate::compressor::{CompressorConfig, CompressorType};
use crate::evaluation::Evaluator;
use crate::oscar::{LoraSettings, LossWeights, OscarTokenizers};
use crate::pretraining::Reconstruction;
use crate::training::{TrainSettings, Trainer};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// How a run is made. Missing fields (a recipe written by an older version) take their
/// defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RunConfig {
    pub compressor: CompressorConfig,
    /// LoRA on the generator's linear layers; None: the generator stays as published.
    pub lora: Option<LoraSettings>,
    pub optimiser: OptimiserConfig,
    /// What the answers are trained towards.
    pub labels: Labels,
    /// The loss's terms besides the answer's cross-entropy.
    pub loss: LossWeights,
    pub evaluation: EvaluationConfig,
    pub pretraining: PretrainingConfig,
    /// Seeds the fresh weights (compressor parts, LoRA factors) and the order of the batches.
    pub seed: u64,
}

/// AdamW with linear warm-up and decay, global grad-norm clipping.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct OptimiserConfig {
    /// Learning rate of the LoRA factors.
    pub learning_rate: f64,
    /// Learning rate of the compressor (its backbone and the parts that start from scratch).
    pub compressor_learning_rate: f64,
    /// Examples per optimiser step.
    pub batch_size: usize,
    pub epochs: usize,
    /// Stop after this many steps (None: all epochs).
    pub max_steps: Option<usize>,
    pub weight_decay: f32,
    /// Share of the steps that warm the learning rate up.
    pub warmup: f64,
    pub max_grad_norm: f32,
}

/// How the questions are answered when a run evaluates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EvaluationConfig {
    /// Longest greedy answer, in tokens.
    pub max_new_tokens: usize,
    /// Questions answered together (left-padded).
    pub batch_size: usize,
    /// Answer from the reranking head's best documents only (0: all).
    pub keep_top: usize,
    /// Evaluate at most this many questions.
    pub max_examples: usize,
}

/// The compressor's pretraining before question answering (auto-encoding and continuation).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PretrainingConfig {
    /// Steps of `optimiser.batch_size` windows; 0: no pretraining.
    pub steps: usize,
    /// Share of the windows that auto-encode; the rest continue.
    pub reconstruction: Reconstruction,
    /// Stop after this many minutes (the schedule still spans `steps`).
    pub minutes: Option<f64>,
}

/// The answers the compressed model learns to give.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Labels {
    /// The dataset's first answer.
    #[default]
    Gold,
    /// The uncompressed generator's own answer from the full text.
    Teacher,
}

impl Default for RunConfig {
    /// The measured best recipe at the seed's scale (README, "Rate 2" and "The learning
    /// rates"): [`CompressorConfig::default`], OSCAR's LoRA, 3x OSCAR's learning rates for one
    /// epoch of a few hundred questions, batches of 4, gold answers.
    fn default() -> Self {
        let compressor = CompressorConfig::default();
        Self {
            optimiser: OptimiserConfig::for_compressor(compressor.compressor_type),
            compressor,
            lora: Some(LoraSettings::OSCAR),
            labels: Labels::Gold,
            loss: LossWeights::OSCAR,
            evaluation: EvaluationConfig::default(),
            pretraining: PretrainingConfig::default(),
            seed: 42,
        }
    }
}

impl OptimiserConfig {
    /// The default optimiser with the compressor's learning rate for `compressor_type`:
    /// 1.5e-4 for a copy of the generator's layers, 1e-4 for an encoder.
    pub fn for_compressor(compressor_type: CompressorType) -> Self {
        Self {
            compressor_learning_rate: Self::compressor_learning_rate(compressor_type),
            ..Self::default()
        }
    }

    pub fn compressor_learning_rate(compressor_type: CompressorType) -> f64 {
        match compressor_type {
            CompressorType::NLayers => 1.5e-4,
            CompressorType::Encoder => 1e-4,
        }
    }
}

impl Default for OptimiserConfig {
    /// OSCAR's AdamW (weight decay 0.1, 5 % warm-up, clipping at 1.0) at 3x its rates.
    fn default() -> Self {
        Self {
            learning_rate: 3e-4,
            compressor_learning_rate: Self::compressor_learning_rate(CompressorType::NLayers),
            batch_size: 4,
            epochs: 1,
            max_steps: None,
            weight_decay: 0.1,
            warmup: 0.05,
            max_grad_norm: 1.0,
        }
    }
}

impl Default for EvaluationConfig {
    fn default() -> Self {
        Self {
            max_new_tokens: 32,
            batch_size: 1,
            keep_top: 0,
            max_examples: 100,
        }
    }
}

impl Default for PretrainingConfig {
    fn default() -> Self {
        Self {
            steps: 0,
            reconstruction: Reconstruction { permille: 500 },
            minutes: None,
        }
    }
}

impl RunConfig {
    /// The optimiser's settings for a schedule of `total_steps`.
    pub fn train_settings(&self, total_steps: usize) -> TrainSettings {
        let o = &self.optimiser;
        TrainSettings {
            compressor_lr: o.compressor_learning_rate,
            memory_lr: o.compressor_learning_rate,
            generator_lr: o.learning_rate,
            weight_decay: o.weight_decay,
            warmup_steps: ((total_steps as f64 * o.warmup) as usize).max(1),
            total_steps,
            max_grad_norm: o.max_grad_norm,
            loss: self.loss,
        }
    }

    /// AdamW for a schedule of `total_steps`, `done` of them already taken (a resumed run).
    pub fn trainer(&self, total_steps: usize, done: usize) -> Trainer {
        let mut trainer = Trainer::new(self.train_settings(total_steps));
        trainer.step = done;
        trainer
    }

    /// How a run of this recipe answers its evaluation questions.
    pub fn evaluator<'a>(&'a self, tokenizers: &'a OscarTokenizers) -> Evaluator<'a> {
        let e = &self.evaluation;
        Evaluator::new(tokenizers, &self.compressor, e.max_new_tokens)
            .keep_top(e.keep_top)
            .batch(e.batch_size)
    }

    /// Optimiser steps of one run over `examples` training examples.
    pub fn total_steps(&self, examples: usize) -> usize {
        let o = &self.optimiser;
        let epochs = (examples * o.epochs).div_ceil(o.batch_size.max(1));
        o.max_steps.map_or(epochs, |m| m.min(epochs))
    }

    /// The model this recipe trains, around the generator (and encoder) found at these paths.
    pub fn setup(&self, generator: PathBuf, encoder: Option<PathBuf>) -> OscarSetup {
        OscarSetup {
            compressor: self.compressor.clone(),
            generator,
            encoder,
            lora_rank: self.lora.map(|l| l.rank),
            lora_alpha: self.lora.unwrap_or(LoraSettings::OSCAR).alpha,
            max_new_tokens: self.evaluation.max_new_tokens,
        }
    }

    /// The fields in which `other` differs from this recipe, as `path: ours -> theirs`
    /// (e.g. `optimiser.learning_rate: 0.0003 -> 0.0001`).
    pub fn differences(&self, other: &RunConfig) -> Vec<String> {
        let (ours, theirs) = match (serde_json::to_value(self), serde_json::to_value(other)) {
            (Ok(a), Ok(b)) => (a, b),
            _ => return vec![],
        };
        let mut out = vec![];
        diff("", &ours, &theirs, &mut out);
        out
    }
}

impl From<&OscarSetup> for RunConfig {
    /// What a checkpoint's `setup.json` says of its recipe (its compressor, LoRA and answer
    /// length), the defaults otherwise: for checkpoints without `recipe.json`, and the page.
    fn from(setup: &OscarSetup) -> Self {
        let mut recipe = Self {
            compressor: setup.compressor.clone(),
            lora: setup.lora(),
            optimiser: OptimiserConfig::for_compressor(setup.compressor.compressor_type),
            ..Self::default()
        };
        recipe.evaluation.max_new_tokens = setup.max_new_tokens;
        recipe
    }
}

fn diff(path: &str, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<String>) {
    use serde_json::Value;
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let p = match path {
                    "" => k.clone(),
                    _ => format!("{path}.{k}"),
                };
                diff(
                    &p,
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                    out,
                );
            }
        }
        _ if a != b => out.push(format!("{path}: {a} -> {b}")),
        _ => {}
    }
}

impl FromStr for Labels {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "gold" => Ok(Self::Gold),
            "teacher" => Ok(Self::Teacher),
            _ => Err(format!("`{s}` is not gold or teacher")),
        }
    }
}

impl fmt::Display for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Gold => "gold",
            Self::Teacher => "teacher",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_the_measured_recipe_and_survives_json() {
        let r = RunConfig::default();
        assert_eq!(r.compressor, CompressorConfig::default());
        assert_eq!(r.optimiser.learning_rate, 3e-4);
        assert_eq!(r.optimiser.compressor_learning_rate, 1.5e-4);
        assert_eq!(r.lora, Some(LoraSettings::OSCAR));
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<RunConfig>(&json).unwrap(), r);
        // A recipe of an older version, with fields missing, takes the defaults.
        let partial: RunConfig =
            serde_json::from_str(r#"{"optimiser": {"learning_rate": 0.001}, "seed": 7}"#).unwrap();
        assert_eq!(partial.optimiser.learning_rate, 1e-3);
        assert_eq!(partial.optimiser.batch_size, 4);
        assert_eq!(partial.seed, 7);
        assert_eq!(partial.compressor, CompressorConfig::default());
    }

    #[test]
    fn differences_name_the_changed_fields() {
        let a = RunConfig::default();
        assert!(a.differences(&a.clone()).is_empty());
        let mut b = a.clone();
        b.optimiser.learning_rate = 1e-4;
        b.compressor.compression_rate = 16;
        b.lora = None;
        assert_eq!(
            a.differences(&b),
            vec![
                "compressor.compression_rate: 2 -> 16".to_string(),
                "lora: {\"alpha\":32.0,\"rank\":16} -> null".to_string(),
                "optimiser.learning_rate: 0.0003 -> 0.0001".to_string(),
            ]
        );
    }

    #[test]
    fn settings_and_steps_follow_the_recipe() {
        let mut r = RunConfig::default();
        r.optimiser.warmup = 0.1;
        r.loss.distill = 0.5;
        let s = r.train_settings(100);
        assert_eq!(
            (
                s.warmup_steps,
                s.total_steps,
                s.generator_lr,
                s.compressor_lr
            ),
            (10, 100, 3e-4, 1.5e-4)
        );
        assert_eq!(s.loss.distill, 0.5);
        assert_eq!(r.train_settings(3).warmup_steps, 1);
        // 450 examples, batches of 4: 113 steps an epoch.
        assert_eq!(r.total_steps(450), 113);
        r.optimiser.epochs = 2;
        assert_eq!(r.total_steps(450), 225);
        r.optimiser.max_steps = Some(50);
        assert_eq!(r.total_steps(450), 50);
        let setup = r.setup("g.gguf".into(), None);
        assert_eq!((setup.lora_rank, setup.lora_alpha), (Some(16), 32.0));
        r.lora = None;
        assert_eq!(r.setup("g.gguf".into(), None).lora_rank, None);
        // A setup and the recipe it implies make each other.
        r.evaluation.max_new_tokens = 7;
        r.optimiser = OptimiserConfig::default();
        r.loss = LossWeights::OSCAR;
        let back = RunConfig::from(&r.setup("g.gguf".into(), None));
        assert_eq!(back, r);
    }
}
