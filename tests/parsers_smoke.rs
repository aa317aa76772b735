//! A bounded mutation smoke run of every parser of outside bytes, inside the test suite: valid
//! files (written here, or the first rows of `../shared/data`) are truncated, have bytes
//! flipped, spliced and overwritten with extreme values by a seeded generator, and each parser
//! must return Ok or Err, never panic. No coverage guidance: the coverage-guided campaigns are
//! `scripts/fuzz.sh` (cargo-fuzz, figures in the README); crashes they find go in
//! `REGRESSIONS` below.

use scaledown_data::{Dataset, parse_corpus, parse_examples, parse_source};
use scaledown_model::burn::module::Module;
use scaledown_model::burn::tensor::read_sync;
use scaledown_model::checkpoint::{
    Manifest, OscarSetup, load_trainable, trainable_to_safetensors, with_path_param_ids,
};
use scaledown_model::compressor::{CompressorType, Readout};
use scaledown_model::oscar::Oscar;
use scaledown_model::tiny;
use scaledown_model::tokenizer::Tokenizer;
use scaledown_model::training::Trainer;
use scaledown_model::weights::WeightSource;
use scaledown_model::weights::gguf::GgufFile;
use scaledown_model::weights::safetensors::SafetensorsFile;

/// Mutated copies of a seed per parser.
const MUTANTS: usize = 3000;

/// Inputs that once crashed a parser, by target: found by `scripts/fuzz.sh`.
const REGRESSIONS: &[(&str, &[u8])] = &[(
    // tokenizers 0.22 `expect`s on a decoder section that does not parse (2026-12-03).
    "tokenizer",
    include_bytes!("regressions/tokenizer_decoder_panics.json"),
)];

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 11
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One mutant of `seed`: a few edits of the kinds that break parsers.
fn mutate(seed: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut b = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        if b.is_empty() {
            b.push(rng.next() as u8);
            continue;
        }
        let at = rng.below(b.len());
        match rng.below(6) {
            0 => b.truncate(at),
            1 => b[at] ^= 1 << rng.below(8),
            2 => b[at] = [0x00, 0xff, 0x7f, 0x80, b'"', b'{', b'[', b'9'][rng.below(8)],
            3 => {
                // An extreme little-endian u64 (a count or a length a header claims).
                let v = [u64::MAX, 1 << 62, 1 << 60, u32::MAX as u64, 0][rng.below(5)];
                for (i, byte) in v.to_le_bytes().iter().enumerate() {
                    if let Some(x) = b.get_mut(at + i) {
                        *x = *byte;
                    }
                }
            }
            4 => {
                let from = rng.below(b.len());
                let len = rng.below(64).min(b.len() - from);
                let piece = b[from..from + len].to_vec();
                b.splice(at..at, piece);
            }
            _ => {
                b.remove(at);
            }
        }
    }
    b
}

/// Runs `parse` on the seeds, their mutants and the regressions of `target`.
fn smoke(target: &str, seeds: &[Vec<u8>], parse: impl Fn(&[u8])) {
    let mut rng = Rng(0x5eed ^ target.len() as u64);
    let regressions = REGRESSIONS.iter().filter(|(t, _)| *t == target);
    for input in seeds
        .iter()
        .cloned()
        .chain(regressions.map(|(_, b)| b.to_vec()))
        .chain((0..MUTANTS).map(|i| mutate(&seeds[i % seeds.len()], &mut rng)))
    {
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| parse(&input)));
        assert!(
            caught.is_ok(),
            "{target} panicked on {} bytes: {:?}",
            input.len(),
            &input[..input.len().min(200)]
        );
    }
}

fn small_gguf() -> Vec<u8> {
    fn s(b: &mut Vec<u8>, text: &str) {
        b.extend((text.len() as u64).to_le_bytes());
        b.extend(text.as_bytes());
    }
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(2u64.to_le_bytes()); // tensors
    b.extend(2u64.to_le_bytes()); // metadata
    s(&mut b, "general.architecture");
    b.extend(8u32.to_le_bytes());
    s(&mut b, "llama");
    s(&mut b, "tokenizer.ggml.tokens");
    b.extend(9u32.to_le_bytes());
    b.extend(8u32.to_le_bytes());
    b.extend(2u64.to_le_bytes());
    s(&mut b, "a");
    s(&mut b, "b");
    for (name, ty, offset) in [("a.weight", 0u32, 0u64), ("b.weight", 8, 128)] {
        s(&mut b, name);
        b.extend(1u32.to_le_bytes());
        b.extend(32u64.to_le_bytes());
        b.extend(ty.to_le_bytes());
        b.extend(offset.to_le_bytes());
    }
    b.resize(b.len().next_multiple_of(32), 0);
    b.extend((0..32).flat_map(|i| (i as f32 / 8.0).to_le_bytes()));
    b.extend([0x00, 0x38]); // f16 0.5
    b.extend(0..32u8);
    b
}

fn shared_rows(file: &str, lines: usize) -> Option<Vec<u8>> {
    let text = std::fs::read_to_string(format!("../shared/data/{file}")).ok()?;
    Some(
        text.lines()
            .take(lines)
            .collect::<Vec<_>>()
            .join("\n")
            .into_bytes(),
    )
}

#[test]
fn gguf_and_safetensors_readers_never_panic() {
    smoke("gguf", &[small_gguf()], |b| {
        if let Ok(file) = GgufFile::parse(b) {
            for info in &file.tensors {
                let t = file.dequantize(info);
                assert_eq!(t.values.len(), t.shape.iter().product::<usize>());
            }
        }
    });
    let data: Vec<u8> = (0..6).flat_map(|i| (i as f32).to_le_bytes()).collect();
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2, 3], &data).unwrap();
    let file = safetensors::serialize([("w", view)], None).unwrap();
    smoke("safetensors", &[file], |b| {
        if let Ok(file) = SafetensorsFile::parse(b) {
            for name in file.names() {
                let _ = file.tensor(&name);
            }
        }
    });
}

#[test]
fn tokenizer_dataset_and_corpus_readers_never_panic() {
    let words = ["the", "cat", "is", "red", "?", "."];
    let tokenizer = scaledown_model::tokenizer::word_level_json(words).into_bytes();
    let crash = include_bytes!("regressions/tokenizer_decoder_panics.json");
    let refused = Tokenizer::from_json(crash).err().map(|e| e.to_string());
    assert!(refused.is_some_and(|e| e.contains("tokenizer.json")));
    smoke("tokenizer", &[tokenizer], |b| {
        if let Ok(t) = Tokenizer::from_json(b)
            && let Ok(ids) = t.encode("the cat is red ?")
        {
            let _ = t.decode(&ids, true);
        }
    });
    let mut rows: Vec<(Dataset, Vec<u8>)> = vec![(
        Dataset::Squad,
        br#"{"version": "v2.0", "data": [{"title": "Rhine", "paragraphs": [{"context": "The Rhine is a river.", "qas": [{"id": "q1", "question": "What is it?", "answers": [{"text": "a river", "answer_start": 12}]}]}]}]}"#.to_vec(),
    )];
    for (dataset, file) in [
        (Dataset::Squad, "squad_dev.jsonl"),
        (Dataset::HotpotQa, "hotpotqa_dev.jsonl"),
        (Dataset::TriviaQa, "triviaqa.jsonl"),
    ] {
        if let Some(b) = shared_rows(file, 2) {
            rows.push((dataset, b));
        }
    }
    for (dataset, seed) in rows {
        smoke(dataset.name(), &[seed], |b| {
            if let Ok(text) = std::str::from_utf8(b) {
                let _ = parse_source(dataset, "fuzz.json", text);
                let _ = parse_examples("fuzz.json", text);
            }
        });
    }
    let corpus = br#"{"text": "The Rhine."}
{"wikipedia_title": "Oslo", "paragraphs": ["p1", "p2"]}
{"context": [["Rhine", ["A river.", " Long."]]]}"#;
    smoke("corpus", &[corpus.to_vec()], |b| {
        if let Ok(text) = std::str::from_utf8(b) {
            for json_lines in [true, false] {
                if let Ok(d) = parse_corpus("fuzz.jsonl", text, json_lines) {
                    assert!(!d.is_empty());
                }
            }
        }
    });
}

#[test]
fn checkpoint_files_are_refused_never_panic() {
    let config = tiny::compressor_config(CompressorType::NLayers, Readout::Pooled);
    let model: Oscar = with_path_param_ids(tiny::oscar(&config, 0));
    let settings = tiny::settings(10);
    let mut trainer = Trainer::new(settings.clone());
    let (trained, stats) = read_sync(trainer.step(model.clone().train(), &[&tiny::example()]));
    stats.unwrap();
    let weights = trainable_to_safetensors(&trained);
    smoke("trainable", std::slice::from_ref(&weights), |b| {
        let _ = load_trainable(model.clone(), b);
    });
    // Burn's record reader sits behind `catch_unwind` in `load_optimizer_state`: a panic
    // of its own comes back as an error there.
    smoke("optimizer", &[trainer.optimizer_state().unwrap()], |b| {
        let _ = Trainer::new(settings.clone()).load_optimizer_state(b);
    });
    let manifest = serde_json::to_vec(&Manifest::of([("trainable.safetensors", &weights[..])]));
    let setup = br#"{"compressor": {"compressor_type": "n_layers", "num_layers": 1, "num_memory_tokens": 2, "compression_rate": 4, "projector": false, "rerank": false, "readout": "pooled"}, "generator": "g", "encoder": null, "lora_rank": 4, "lora_alpha": 8.0, "max_new_tokens": 4}"#;
    smoke(
        "checkpoint json",
        &[manifest.unwrap(), setup.to_vec()],
        |b| {
            let _ = serde_json::from_slice::<OscarSetup>(b);
            if let Ok(text) = std::str::from_utf8(b)
                && let Ok(m) = Manifest::from_json(text)
            {
                let _ = m.check("trainable.safetensors", &weights);
            }
        },
    );
}
