//! The playground's work, free of browser glue: build a tiny or a real OSCAR, train it a few
//! steps, answer questions compressed and from the full text, compress a pasted document.
//! Async because WebGPU reads results without blocking; it also builds natively, for its tests.

use scaledown_data::schema::Example;
use scaledown_model::burn::prelude::*;
use scaledown_model::checkpoint::{Manifest, OscarSetup};
use scaledown_model::compressor::{CompressorConfig, CompressorType, Readout};
use scaledown_model::encoder::Encoder;
use scaledown_model::evaluation::{Evaluator, Speed};
use scaledown_model::example::TrainExample;
use scaledown_model::llama::{LlamaConfig, generator_from_gguf};
use scaledown_model::oscar::{LoraSettings, Oscar, full_text_user_turn};
use scaledown_model::pipeline::Pipeline;
use scaledown_model::questions::documents_of;
use scaledown_model::recipe::{OptimiserConfig, RunConfig};
use scaledown_model::tokenizer::{Tokenizer, chat_prompt, word_level_json, words_of};
use scaledown_model::training::StepStats;
use std::collections::HashMap;
use std::convert::Infallible;
use std::ops::ControlFlow;

/// Words in the tiny model's vocabulary (besides the prompt template's).
pub const TINY_VOCAB: usize = 3000;

/// The tiny model: a 2-layer generator, a 1-layer compressor copy, up to 4 pooled memory vectors per
/// 64-token chunk (rate 16), LoRA rank 4.
pub fn tiny_recipe() -> RunConfig {
    let mut recipe = RunConfig {
        compressor: tiny_compressor(),
        lora: Some(LoraSettings {
            rank: 4,
            alpha: 8.0,
        }),
        ..RunConfig::default()
    };
    recipe.evaluation.max_new_tokens = 8;
    recipe
}

fn tiny_compressor() -> CompressorConfig {
    CompressorConfig {
        compressor_type: CompressorType::NLayers,
        num_layers: 1,
        num_memory_tokens: 4,
        compression_rate: 16,
        readout: Readout::Pooled,
        projector: false,
        rerank: false,
        ..CompressorConfig::default()
    }
    .with_measured_pool_score_scale()
}

/// The files of a real model, as the user picked or fetched them.
#[derive(Default)]
pub struct ModelFiles {
    /// The generator (SmolLM2 GGUF).
    pub gguf: Vec<u8>,
    /// A checkpoint of `scaledown train`: `setup.json` and `trainable.safetensors`.
    pub setup: Option<String>,
    pub trainable: Option<Vec<u8>>,
    /// The checkpoint's `manifest.json`, when given: setup and tensors must match it.
    pub manifest: Option<String>,
    /// The encoder of an `encoder` checkpoint: `config.json`, `model.safetensors`,
    /// `tokenizer.json`.
    pub encoder: Option<(String, Vec<u8>, Vec<u8>)>,
}

pub struct Playground {
    /// The model, the published generator (the uncompressed baseline), their tokenizers and
    /// the compressor's settings; trained with `pipeline.oscar.train()`.
    pub pipeline: Pipeline,
    /// How it answers and trains: the page's form sets the optimiser.
    pub recipe: RunConfig,
    /// What was loaded, for the page.
    pub description: String,
}

/// What "compress your own text" shows.
#[derive(Debug, Clone)]
pub struct Compressed {
    pub document_tokens: usize,
    pub chunks: usize,
    pub vectors: usize,
    pub width: usize,
    /// Document tokens per memory vector.
    pub rate: f64,
    pub answer: String,
    pub ms: f64,
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

impl Playground {
    /// A random tiny model whose word-level vocabulary comes from `examples`: it trains in
    /// seconds, even on a software WebGPU.
    pub fn tiny(examples: &[Example], device: &Device, seed: u64) -> Result<Self, String> {
        device.seed(seed);
        let template = words_of(&chat_prompt(&full_text_user_turn("", &[])));
        let mut counts: HashMap<String, usize> = HashMap::new();
        for ex in examples {
            let texts = documents_of(ex)
                .into_iter()
                .chain([ex.question.clone()])
                .chain(ex.answers.iter().cloned());
            for text in texts {
                for w in words_of(&text) {
                    *counts.entry(w).or_default() += 1;
                }
            }
        }
        let mut words: Vec<(String, usize)> = counts.into_iter().collect();
        words.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let vocab = template
            .iter()
            .map(String::as_str)
            .chain(words.iter().take(TINY_VOCAB).map(|(w, _)| w.as_str()));
        let tokenizer = Tokenizer::from_json(word_level_json(vocab).as_bytes()).map_err(err)?;
        let generator = LlamaConfig::tiny(tokenizer.vocab_size()).init(device);
        let recipe = tiny_recipe();
        let setup = recipe.setup("tiny".into(), None);
        let words = tokenizer.vocab_size();
        let pipeline = Pipeline::assemble(&setup, generator, tokenizer, None, None).map_err(err)?;
        let config = &pipeline.config;
        Ok(Self {
            description: format!(
                "tiny random model: 2 layers, width 64, {words} words; compressor: 1 layer, up to \
                 {} memory vectors per {}-token chunk",
                config.num_memory_tokens,
                config.chunk_tokens()
            ),
            pipeline,
            recipe,
        })
    }

    /// SmolLM2 from its GGUF, with a checkpoint of `scaledown train` when given (otherwise a
    /// fresh compressor of the CLI's defaults). The file bytes are dropped once loaded.
    pub fn from_files(files: ModelFiles, device: &Device) -> Result<Self, String> {
        if let Some(text) = &files.manifest {
            let manifest = Manifest::from_json(text)?;
            if let Some(setup) = &files.setup {
                manifest.check("setup.json", setup.as_bytes())?;
            }
            if let Some(bytes) = &files.trainable {
                manifest.check("trainable.safetensors", bytes)?;
            }
        }
        let (gen_config, generator, tokenizer) =
            generator_from_gguf(&files.gguf, device).map_err(|e| format!("GGUF: {e}"))?;
        drop(files.gguf);
        let setup: Option<OscarSetup> = match &files.setup {
            Some(text) => Some(
                serde_json::from_str(text)
                    .map_err(|e| format!("setup.json is not a checkpoint setup: {e}"))?,
            ),
            None => None,
        };
        let checkpoint = match (&setup, &files.trainable) {
            (Some(_), Some(_)) => "trained checkpoint",
            (Some(_), None) => return Err("setup.json needs its trainable.safetensors".into()),
            (None, Some(_)) => return Err("trainable.safetensors needs its setup.json".into()),
            (None, None) => "fresh compressor (untrained)",
        };
        let setup =
            setup.unwrap_or_else(|| RunConfig::default().setup("SmolLM2 GGUF".into(), None));
        let recipe = RunConfig::from(&setup);
        let encoder = match files.encoder {
            Some((config_json, weights, tokenizer_json)) => {
                let encoder = Encoder::from_safetensors(&config_json, &weights, device)
                    .map_err(|e| format!("encoder model.safetensors: {e}"))?;
                let tok = Tokenizer::from_json(&tokenizer_json)
                    .map_err(|e| format!("encoder tokenizer.json: {e}"))?;
                Some((encoder, tok))
            }
            None => None,
        };
        let pipeline = Pipeline::assemble(
            &setup,
            generator,
            tokenizer,
            encoder,
            files.trainable.as_deref(),
        )
        .map_err(err)?;
        let config = &pipeline.config;
        Ok(Self {
            description: format!(
                "generator: {} layers, width {}; {} {} compressor, {} readout, up to {} memory vectors per \
                 {}-token chunk",
                gen_config.num_hidden_layers,
                gen_config.hidden_size,
                checkpoint,
                config.compressor_type,
                config.readout,
                config.num_memory_tokens,
                config.chunk_tokens()
            ),
            pipeline,
            recipe,
        })
    }

    /// The gold answer as a teacher-forced target.
    pub fn train_example(&self, ex: &Example) -> Result<TrainExample, String> {
        let answer = ex.answers.first().map_or("", String::as_str);
        self.pipeline
            .tokenizers
            .answer_example(&self.pipeline.config, ex, answer)
            .map_err(err)
    }

    /// Trains `steps` steps of batch 1 over `examples` in turn, AdamW at `learning_rate` for
    /// the compressor and the LoRA factors with a 10 % warm-up; `on_step` sees each step
    /// (and is where the page redraws and yields to the browser).
    pub async fn train(
        &mut self,
        examples: &[TrainExample],
        steps: usize,
        learning_rate: f64,
        mut on_step: impl AsyncFnMut(usize, StepStats),
    ) -> Result<(), String> {
        if examples.is_empty() {
            return Err("no training examples".into());
        }
        // The page's form: one rate for all, batches of 1, a short run's 10 % warm-up.
        self.recipe.optimiser = OptimiserConfig {
            learning_rate,
            compressor_learning_rate: learning_rate,
            batch_size: 1,
            max_steps: Some(steps),
            warmup: 0.1,
            ..OptimiserConfig::default()
        };
        let mut trainer = self.recipe.trainer(steps, 0);
        let model = self.pipeline.oscar.clone().train();
        let (model, result) = trainer
            .run(
                model,
                steps,
                |step| vec![&examples[step % examples.len()]],
                async |trainer, _, _, stats| -> Result<ControlFlow<()>, Infallible> {
                    on_step(trainer.step - 1, stats).await;
                    Ok(ControlFlow::Continue(()))
                },
            )
            .await;
        self.pipeline.oscar = model.valid();
        result.map_err(err)
    }

    /// How the page answers: greedy, at most the recipe's answer length, one question at a
    /// time.
    pub fn evaluator(&self) -> Evaluator<'_> {
        Evaluator::new(
            &self.pipeline.tokenizers,
            &self.pipeline.config,
            self.recipe.evaluation.max_new_tokens,
        )
    }

    /// Speed of compressed against uncompressed answering on `examples` (see
    /// [`Evaluator::speed`]).
    pub async fn speed(&self, examples: &[Example]) -> Result<Speed, String> {
        if examples.is_empty() {
            return Err("no questions to time".into());
        }
        let model = self.pipeline.oscar.for_inference();
        self.evaluator()
            .speed(&model, &self.pipeline.base_generator, examples)
            .await
            .map_err(err)
    }

    /// Compresses a pasted document for `question` and answers from its memory vectors.
    pub async fn compress_text(
        &self,
        model: &Oscar,
        question: &str,
        document: &str,
    ) -> Result<Compressed, String> {
        if document.trim().is_empty() || question.trim().is_empty() {
            return Err("paste a document and write a question".into());
        }
        let ex = Example {
            id: "pasted".into(),
            dataset: "pasted".into(),
            question: question.into(),
            documents: vec![scaledown_data::schema::Document {
                title: String::new(),
                text: document.into(),
            }],
            answers: vec![],
            supporting_titles: vec![],
            teacher_answer: None,
        };
        let encoded = self
            .pipeline
            .tokenizers
            .encode_example(&self.pipeline.config, &ex)
            .map_err(err)?;
        let evaluator = self.evaluator();
        let prefix = evaluator.prefix(&model.generator).map_err(err)?;
        let answer = evaluator
            .answer_compressed(model, &prefix, &ex)
            .await
            .map_err(err)?;
        let vectors = encoded.memory_vectors(&self.pipeline.config);
        Ok(Compressed {
            document_tokens: encoded.document_tokens,
            chunks: encoded.chunks.len(),
            vectors,
            width: self.pipeline.base_generator.hidden_size(),
            rate: encoded.document_tokens as f64 / vectors.max(1) as f64,
            answer: answer.prediction,
            ms: answer.ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use scaledown_data::schema::Document;
    use scaledown_model::burn::tensor::read_sync;

    fn examples() -> Vec<Example> {
        let colors = ["red", "green", "blue", "yellow"];
        let animals = ["cat", "dog", "fox", "owl"];
        (0..8)
            .map(|i| {
                let (a, c) = (animals[i % 4], colors[(i / 2) % 4]);
                Example {
                    id: format!("q{i}"),
                    dataset: "squad".into(),
                    question: format!("What color is the {a}?"),
                    documents: vec![Document {
                        title: "Animals".into(),
                        text: format!("The {a} is {c}. The other animals are not {c}."),
                    }],
                    answers: vec![c.into()],
                    supporting_titles: vec![],
                    teacher_answer: None,
                }
            })
            .collect()
    }

    #[test]
    fn the_tiny_model_trains_answers_and_compresses() {
        let device = Device::flex();
        let data = examples();
        let mut p = Playground::tiny(&data, &device, 3).unwrap();
        assert!(
            p.pipeline.tokenizers.generator.vocab_size() < 3 + 40,
            "vocabulary from the data"
        );
        let train: Vec<TrainExample> = data.iter().map(|e| p.train_example(e).unwrap()).collect();
        let mut losses = vec![];
        read_sync(p.train(&train, 40, 1e-2, async |_, s| losses.push(s.loss))).unwrap();
        let first: f32 = losses[..4].iter().sum();
        let last: f32 = losses[36..].iter().sum();
        assert!(last < 0.5 * first, "loss {first} -> {last}");

        let model = p.pipeline.oscar.for_inference();
        let mut answered = vec![];
        let run = read_sync(
            p.evaluator()
                .compressed(&model, &data[..2], async |k| answered.push(k)),
        )
        .unwrap();
        assert_eq!(answered, [1, 2], "progress after each question");
        assert_eq!(run.predictions[0].answers, ["red"]);
        assert!(run.predictions[0].ms > 0.0);
        assert!((0.0..=1.0).contains(&run.scores.f1));
        let full = read_sync(p.evaluator().uncompressed(
            &p.pipeline.base_generator,
            &data[..2],
            async |_| {},
        ))
        .unwrap();
        assert_eq!(full.predictions.len(), 2);

        let speed = read_sync(p.speed(&data[..2])).unwrap();
        assert!(speed.compressed_ms > 0.0 && speed.uncompressed_ms > 0.0);

        let c = read_sync(p.compress_text(&model, "What color?", &"red fox ".repeat(40))).unwrap();
        assert_eq!(c.document_tokens, 80);
        assert_eq!(
            (c.chunks, c.vectors),
            (2, 5),
            "64-token chunks, one pooled vector per 16 tokens"
        );
        assert_eq!(c.rate, 16.0);
        assert!(read_sync(p.compress_text(&model, "q", " ")).is_err());
    }

    #[test]
    fn bad_model_files_are_refused_with_their_name() {
        let device = Device::flex();
        let garbage = ModelFiles {
            gguf: b"GGUF but not really".to_vec(),
            ..Default::default()
        };
        let e = Playground::from_files(garbage, &device).err().unwrap();
        assert!(e.starts_with("GGUF"), "{e}");
    }

    /// A checkpoint whose tensors do not match its manifest is refused, naming the file.
    #[test]
    fn a_damaged_checkpoint_is_refused_by_its_manifest() {
        let device = Device::flex();
        let setup = "{}".to_string();
        let trainable = vec![7u8; 4096];
        let manifest = Manifest::of([
            ("setup.json", setup.as_bytes()),
            ("trainable.safetensors", &trainable[..]),
        ]);
        let mut damaged = trainable.clone();
        *damaged.last_mut().unwrap() ^= 0x40;
        let files = ModelFiles {
            gguf: b"not read: the manifest is checked first".to_vec(),
            setup: Some(setup),
            trainable: Some(damaged),
            manifest: Some(serde_json::to_string(&manifest).unwrap()),
            ..Default::default()
        };
        let e = Playground::from_files(files, &device).err().unwrap();
        assert!(
            e.contains("trainable.safetensors") && e.contains("SHA-256"),
            "{e}"
        );
    }
}
