//! A pipeline: OSCAR's compressor and generator with their tokenizers and the compressor's
//! settings, built from a checkpoint's setup and the models its files hold. The CLI reads
//! the files from disk, the page gets them from its user; both build the model here.

use crate::checkpoint::{OscarSetup, load_trainable};
use crate::compressor::{CompressorConfig, CompressorType};
use crate::encoder::Encoder;
use crate::evaluation::Evaluator;
use crate::llama::Llama;
use crate::oscar::{LoraSettings, Oscar, OscarTokenizers};
use crate::tokenizer::Tokenizer;
use crate::weights::WeightError;

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(
        "this checkpoint's compressor is an encoder: also give its encoder's config.json, \
         model.safetensors and tokenizer.json"
    )]
    MissingEncoder,
    #[error("trainable.safetensors: {0}")]
    Trainable(WeightError),
    #[error(transparent)]
    Setup(#[from] WeightError),
}

/// What the compressed answers need, together.
pub struct Pipeline {
    /// Compressor and generator (plain modules, LoRA adapters unmerged): `.train()` to train,
    /// `for_inference()` to answer.
    pub oscar: Oscar,
    /// The generator as published, without LoRA: the uncompressed baseline and the teacher.
    pub base_generator: Llama,
    pub tokenizers: OscarTokenizers,
    /// The compressor's settings (chunks, memory vectors per chunk).
    pub config: CompressorConfig,
}

impl OscarSetup {
    /// The generator's LoRA adapters; None when it is frozen.
    pub fn lora(&self) -> Option<LoraSettings> {
        self.lora_rank.map(|rank| LoraSettings {
            rank,
            alpha: self.lora_alpha,
        })
    }
}

/// Why a checkpoint cannot go on training under another run's setup.
#[derive(Debug, thiserror::Error)]
pub enum SetupMismatch {
    #[error("was trained with another compressor configuration")]
    Compressor,
    #[error("was trained with --generator-training {0}")]
    GeneratorTraining(&'static str),
}

impl Pipeline {
    /// This checkpoint's pipeline (trained under `saved`) made ready to train under `setup`:
    /// the same compressor; the same generator training, or, where `fresh_lora` allows it
    /// (before any question answering, or a fresh epoch), fresh LoRA on a generator that was
    /// frozen in pretraining. Returns the pipeline and the rank of the LoRA added, if any.
    pub fn continued_as(
        mut self,
        saved: &OscarSetup,
        setup: &OscarSetup,
        fresh_lora: bool,
    ) -> Result<(Self, Option<usize>), SetupMismatch> {
        // Where the segments lie is a setting of the readout, not of its weights.
        let placed = CompressorConfig {
            adaptive_segments: setup.compressor.adaptive_segments,
            ..saved.compressor.clone()
        };
        if placed != setup.compressor {
            return Err(SetupMismatch::Compressor);
        }
        self.oscar.compressor.adaptive_segments = setup.compressor.adaptive_segments;
        match (saved.lora_rank, setup.lora_rank) {
            (x, y) if x == y => Ok((self, None)),
            (None, Some(rank)) if fresh_lora => {
                self.oscar.generator = self.oscar.generator.with_lora(rank, setup.lora_alpha);
                Ok((self, Some(rank)))
            }
            (Some(_), _) => Err(SetupMismatch::GeneratorTraining("lora")),
            (None, _) => Err(SetupMismatch::GeneratorTraining("frozen")),
        }
    }

    /// The model of `setup` around `generator` and its tokenizer (with `encoder` and its
    /// tokenizer for an encoder compressor), carrying a checkpoint's `trainable` tensors or,
    /// without them, fresh compressor weights. The base generator is `generator` as given.
    pub fn assemble(
        setup: &OscarSetup,
        generator: Llama,
        tokenizer: Tokenizer,
        encoder: Option<(Encoder, Tokenizer)>,
        trainable: Option<&[u8]>,
    ) -> Result<Self, PipelineError> {
        let config = setup.compressor.clone();
        let (encoder, encoder_tokenizer) = match (config.compressor_type, encoder) {
            (CompressorType::NLayers, _) => (None, None),
            (CompressorType::Encoder, Some((encoder, tokenizer))) => {
                (Some(encoder), Some(tokenizer))
            }
            (CompressorType::Encoder, None) => return Err(PipelineError::MissingEncoder),
        };
        let device = generator.device();
        let base_generator = generator.clone();
        let mut oscar = Oscar::assemble(&config, generator, encoder, setup.lora(), &device)?;
        if let Some(bytes) = trainable {
            oscar = load_trainable(oscar, bytes).map_err(PipelineError::Trainable)?;
        }
        Ok(Self {
            oscar,
            base_generator,
            tokenizers: OscarTokenizers {
                generator: tokenizer,
                encoder: encoder_tokenizer,
            },
            config,
        })
    }

    /// Greedy answers of at most `max_new_tokens`, one question at a time (see
    /// [`Evaluator`] for keep-top and batching).
    pub fn evaluator(&self, max_new_tokens: usize) -> Evaluator<'_> {
        Evaluator::new(&self.tokenizers, &self.config, max_new_tokens)
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use crate::checkpoint::trainable_to_safetensors;
    use crate::compressor::Readout;
    use crate::llama::LlamaConfig;
    use crate::tiny::{VOCAB, compressor_config, example};
    use crate::tokenizer::word_level_json;
    use burn::prelude::*;

    fn setup(compressor_type: CompressorType) -> OscarSetup {
        OscarSetup {
            compressor: compressor_config(compressor_type, Readout::Pooled),
            generator: "tiny".into(),
            encoder: None,
            lora_rank: Some(4),
            lora_alpha: 8.0,
            max_new_tokens: 4,
        }
    }

    fn parts() -> (Llama, Tokenizer) {
        let device = Device::flex();
        device.seed(1);
        (LlamaConfig::tiny(VOCAB).init(&device), tokenizer())
    }

    fn tokenizer() -> Tokenizer {
        let words: Vec<String> = (0..VOCAB).map(|i| format!("w{i}")).collect();
        let json = word_level_json(words.iter().map(String::as_str));
        Tokenizer::from_json(json.as_bytes()).unwrap()
    }

    #[test]
    fn a_checkpoints_tensors_rebuild_its_trained_model() {
        let setup = setup(CompressorType::NLayers);
        let (generator, first) = parts();
        let fresh = Pipeline::assemble(&setup, generator.clone(), first, None, None).unwrap();
        let model = crate::tiny::trained(fresh.oscar.clone(), 5);
        // Saved as training saves it: the trainable tensors are the ones that take gradients.
        let bytes = trainable_to_safetensors(&model);
        let trained = model.valid();
        let rebuilt =
            Pipeline::assemble(&setup, generator, tokenizer(), None, Some(&bytes)).unwrap();
        let loss = |m: &Oscar| m.answer_loss(&[&example()]).into_scalar::<f32>();
        assert_eq!(loss(&rebuilt.oscar), loss(&trained));
        assert_ne!(
            loss(&fresh.oscar),
            loss(&trained),
            "training moved the model"
        );
        assert_eq!(rebuilt.config, setup.compressor);
        assert_eq!(
            rebuilt.tokenizers.generator.vocab_size(),
            tokenizer().vocab_size()
        );
    }

    #[test]
    fn a_missing_encoder_or_damaged_tensors_are_refused_by_name() {
        let (generator, first) = parts();
        let encoder = setup(CompressorType::Encoder);
        let e = Pipeline::assemble(&encoder, generator.clone(), first, None, None);
        assert!(matches!(e, Err(PipelineError::MissingEncoder)));
        let setup = setup(CompressorType::NLayers);
        let e = Pipeline::assemble(&setup, generator, tokenizer(), None, Some(b"not tensors"));
        let message = e.err().unwrap().to_string();
        assert!(message.starts_with("trainable.safetensors:"), "{message}");
    }

    #[test]
    fn a_frozen_generator_checkpoint_goes_on_with_fresh_lora_only_where_allowed() {
        let with_lora = setup(CompressorType::NLayers);
        let frozen = OscarSetup {
            lora_rank: None,
            ..with_lora.clone()
        };
        let pretrained = || {
            let (generator, tokenizer) = parts();
            Pipeline::assemble(&frozen, generator, tokenizer, None, None).unwrap()
        };
        let params = |p: &Pipeline| p.oscar.generator.num_params();
        let before = params(&pretrained());
        let (same, added) = pretrained().continued_as(&frozen, &frozen, false).unwrap();
        assert_eq!((added, params(&same)), (None, before));
        let (lora, added) = pretrained()
            .continued_as(&frozen, &with_lora, true)
            .unwrap();
        assert_eq!(added, Some(4));
        assert!(params(&lora) > before, "the adapters are new parameters");
        // After question answering has begun, a frozen run does not turn into a LoRA run.
        let e = pretrained()
            .continued_as(&frozen, &with_lora, false)
            .err()
            .unwrap();
        assert_eq!(
            e.to_string(),
            "was trained with --generator-training frozen"
        );
        let other = OscarSetup {
            compressor: CompressorConfig {
                compression_rate: 2,
                ..frozen.compressor.clone()
            },
            ..frozen.clone()
        };
        let e = pretrained()
            .continued_as(&frozen, &other, true)
            .err()
            .unwrap();
        assert!(matches!(e, SetupMismatch::Compressor));
    }
}
