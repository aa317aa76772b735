//! Pretraining on a tiny random OSCAR: each objective builds the examples it promises, and
//! training on them lowers their loss.

use crate::compressor::{CompressorConfig, CompressorType, Readout};
use crate::example::TrainExample;
use crate::llama::LlamaConfig;
use crate::oscar::{Oscar, OscarTokenizers};
use crate::pretraining::{PretrainingSet, Reconstruction, memory_gap};
use crate::tiny;
use crate::training::{LossWeights, TrainSettings, Trainer};
use burn::prelude::*;
use burn::tensor::read_sync;

const PASSAGE: &str = "the red fox runs past the old mill and the blue river \
    turns north where green hills meet a gray sky over the quiet town";

fn tokenizers() -> OscarTokenizers {
    tiny::word_tokenizers(PASSAGE)
}

/// Chunks of 8 tokens: 2 memory vectors at rate 4.
fn config() -> CompressorConfig {
    tiny::compressor_config(CompressorType::NLayers, Readout::MemoryTokens)
}

fn pooled() -> CompressorConfig {
    tiny::compressor_config(CompressorType::NLayers, Readout::Pooled)
}

fn mean_loss(model: &Oscar, examples: &[TrainExample]) -> f32 {
    let model = model.valid();
    let sum: f32 = examples
        .iter()
        .map(|e| model.answer_loss(&[e]).into_scalar::<f32>())
        .sum();
    sum / examples.len() as f32
}

fn set_of(tok: &OscarTokenizers, config: &CompressorConfig, passages: &[&str]) -> PretrainingSet {
    let mut set = PretrainingSet::default();
    for p in passages {
        set.add_passage(tok, config, p).unwrap();
    }
    set
}

#[test]
fn windows_give_auto_encoding_and_continuation_examples() {
    let tok = tokenizers();
    let n = tok.generator.encode(PASSAGE).unwrap().len();
    assert_eq!(n, 25);
    let set = set_of(&tok, &config(), &[PASSAGE]);
    let auto = &set.auto_encoding;
    // Windows of 8 tokens: 0..8, 8..16, 16..24; the 1-token tail is too short.
    assert_eq!(auto.len(), 3);
    // Auto-encoding: the target is the window itself, then <|im_end|>.
    let ids = tok.generator.encode(PASSAGE).unwrap();
    assert_eq!(&auto[1].answer[..8], &ids[8..16]);
    assert_eq!(auto[1].encoded.chunks.len(), 1);
    assert!(auto[1].encoded.chunks[0].ends_with(&ids[8..16]));
    // Continuation: the text after the window (the last window has only 1 token after it).
    let cont = &set.continuation;
    assert_eq!(cont.len(), 2);
    assert_eq!(&cont[0].answer[..cont[0].answer.len() - 1], &ids[8..25]);
}

#[test]
fn reconstruction_share_mixes_the_objectives_exactly() {
    let tok = tokenizers();
    // 20 passages of 3 windows: 60 auto-encoding and 40 continuation examples.
    let set = set_of(&tok, &config(), &[PASSAGE; 20]);
    assert_eq!((set.auto_encoding.len(), set.continuation.len()), (60, 40));
    let is_auto = |e: &TrainExample| set.auto_encoding.iter().any(|a| std::ptr::eq(a, e));
    for (share, autos_in_100) in [("0.2", 20), ("50%", 50), ("1", 100), ("0", 0)] {
        let share: Reconstruction = share.parse().unwrap();
        let drawn: Vec<&TrainExample> = (0..25).flat_map(|s| set.batch(s, 4, share, 9)).collect();
        assert_eq!(drawn.len(), 100);
        assert_eq!(
            drawn.iter().filter(|e| is_auto(e)).count(),
            autos_in_100,
            "{share}"
        );
        // Every window of a pool is drawn once before any comes back.
        let first: Vec<&TrainExample> = drawn.iter().copied().filter(|e| is_auto(e)).collect();
        let distinct = first
            .iter()
            .take(60)
            .map(|e| *e as *const _)
            .collect::<std::collections::HashSet<_>>();
        assert_eq!(distinct.len(), first.len().min(60), "{share}");
    }
    assert!("1.5".parse::<Reconstruction>().is_err());
    assert!("-1%".parse::<Reconstruction>().is_err());
    assert_eq!(set.missing(Reconstruction::ALL), None);
    let short = set_of(&tok, &config(), &["red fox runs past the old mill and"]);
    assert_eq!(short.missing(Reconstruction::ALL), None);
    assert!(short.missing("0.5".parse().unwrap()).is_some());
}

#[test]
fn each_objective_lowers_its_loss() {
    let tok = tokenizers();
    let device = Device::flex();
    let readouts = [config(), pooled()];
    for (objective, config) in [true, false]
        .into_iter()
        .flat_map(|o| readouts.iter().map(move |c| (o, c)))
    {
        device.seed(3);
        let vocab = tok.generator.vocab_size();
        let generator = LlamaConfig::tiny(vocab).init(&device);
        let mut model = tiny::oscar_over(generator, config).train();
        let set = set_of(&tok, config, &[PASSAGE]);
        let examples = match objective {
            true => set.auto_encoding,
            false => set.continuation,
        };
        let batch: Vec<&TrainExample> = examples.iter().collect();
        let before = mean_loss(&model, &examples);
        let mut trainer = Trainer::new(tiny::settings(40));
        for _ in 0..40 {
            let (m, stats) = read_sync(trainer.step(model, &batch));
            model = m;
            stats.unwrap();
        }
        let after = mean_loss(&model, &examples);
        assert!(
            after < 0.5 * before,
            "auto-encoding {objective}, {}: loss {before} -> {after}",
            config.readout
        );
    }
}

/// Documents of random words that only the memory can tell apart: after auto-encoding
/// training, a document is restated better from its own memory than from another's (the
/// gradient reaches the compressor through the generator, and the generator learns to read it),
/// with OSCAR's memory tokens and with pooled states entering after the compressor's layer.
#[test]
fn auto_encoding_teaches_the_generator_to_read_its_memory() {
    auto_encoding_opens_the_memory_gap(config());
    auto_encoding_opens_the_memory_gap(pooled());
}

fn auto_encoding_opens_the_memory_gap(config: CompressorConfig) {
    use rand::{Rng, SeedableRng, rngs::StdRng};
    let words: Vec<String> = (0..24).map(|i| format!("w{i}")).collect();
    let mut rng = StdRng::seed_from_u64(7);
    let documents: Vec<String> = (0..32)
        .map(|_| {
            let picked: Vec<&str> = (0..8)
                .map(|_| words[rng.random_range(0..words.len())].as_str())
                .collect();
            picked.join(" ")
        })
        .collect();
    let tok = tiny::word_tokenizers(&words.join(" "));
    let device = Device::flex();
    device.seed(5);
    let generator = LlamaConfig::tiny(tok.generator.vocab_size()).init(&device);
    let mut model = tiny::oscar_over(generator, &config).train();
    let refs: Vec<&str> = documents.iter().map(String::as_str).collect();
    let examples = set_of(&tok, &config, &refs).auto_encoding;
    let (own, other) = memory_gap(&model.valid(), &examples, |_| {});
    assert!((own - other).abs() < 0.1, "untrained: {own} vs {other}");
    let steps = 200;
    let mut trainer = Trainer::new(TrainSettings {
        compressor_lr: 1e-3,
        memory_lr: 1e-3,
        generator_lr: 1e-3,
        weight_decay: 0.0,
        warmup_steps: 10,
        total_steps: steps,
        max_grad_norm: 1.0,
        loss: LossWeights::ANSWER,
    });
    for s in 0..steps {
        let batch: Vec<&TrainExample> = (0..8)
            .map(|i| &examples[(s * 8 + i) % examples.len()])
            .collect();
        let (m, stats) = read_sync(trainer.step(model, &batch));
        model = m;
        stats.unwrap();
    }
    let (own, other) = memory_gap(&model.valid(), &examples, |_| {});
    assert!(
        own < other - 0.5,
        "{config:?}: own memory {own} vs another's {other}"
    );
}
