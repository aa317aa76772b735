//! The tiny end-to-end setup shared by the CLI test files: a random 2-layer Llama written as a
//! Hugging Face folder, a small synthetic QA set, and `scaledown` runs over them.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn scaledown(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_scaledown"))
        .args(args)
        .output()
        .expect("run scaledown")
}

pub fn ok(o: &Output) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "scaledown failed:\n{text}");
    text
}

pub fn fails_with(o: &Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "expected a failure");
    for n in needles {
        assert!(err.contains(n), "`{n}` not in: {err}");
    }
}

pub const ANIMALS: [&str; 6] = ["cat", "dog", "fox", "owl", "cow", "bee"];
pub const COLORS: [&str; 6] = ["red", "blue", "green", "pink", "gray", "gold"];

/// A word-level tokenizer over the words of the synthetic set and the prompt template.
pub fn tokenizer_json() -> String {
    let template = "the is what color ? . : background question system user assistant document";
    let words = template.split(' ').chain(ANIMALS).chain(COLORS);
    scaledown_model::tokenizer::word_level_json(words)
}

/// A random 2-layer Llama with Hugging Face tensor names.
pub fn write_tiny_generator(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let (vocab, h, inter, heads, kv, layers) = (48usize, 64usize, 128usize, 4usize, 2usize, 2usize);
    let config = serde_json::json!({"vocab_size": vocab, "hidden_size": h, "intermediate_size": inter,
        "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv,
        "rope_theta": 10000.0, "rms_norm_eps": 1e-5, "max_position_embeddings": 512,
        "tie_word_embeddings": true});
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    std::fs::write(dir.join("tokenizer.json"), tokenizer_json()).unwrap();
    let hd = h / heads;
    let mut shapes: Vec<(String, Vec<usize>)> = vec![
        ("model.embed_tokens.weight".into(), vec![vocab, h]),
        ("model.norm.weight".into(), vec![h]),
    ];
    for i in 0..layers {
        let p = |n: &str| format!("model.layers.{i}.{n}.weight");
        shapes.extend([
            (p("input_layernorm"), vec![h]),
            (p("post_attention_layernorm"), vec![h]),
            (p("self_attn.q_proj"), vec![heads * hd, h]),
            (p("self_attn.k_proj"), vec![kv * hd, h]),
            (p("self_attn.v_proj"), vec![kv * hd, h]),
            (p("self_attn.o_proj"), vec![h, heads * hd]),
            (p("mlp.gate_proj"), vec![inter, h]),
            (p("mlp.up_proj"), vec![inter, h]),
            (p("mlp.down_proj"), vec![h, inter]),
        ]);
    }
    let mut state = 12345u64;
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = shapes
        .into_iter()
        .map(|(name, shape)| {
            let n: usize = shape.iter().product();
            let norm = shape.len() == 1;
            let bytes = (0..n)
                .flat_map(|_| {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let u = (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
                    let v = if norm { 1.0 } else { u * 0.2 };
                    v.to_le_bytes()
                })
                .collect();
            (name, shape, bytes)
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = data
        .iter()
        .map(|(n, s, b)| {
            let v = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                .unwrap();
            (n.clone(), v)
        })
        .collect();
    std::fs::write(
        dir.join("model.safetensors"),
        safetensors::serialize(views, None).unwrap(),
    )
    .unwrap();
}

pub fn example(i: usize) -> serde_json::Value {
    let (a, c) = (ANIMALS[i % 6], COLORS[(i * 5 + i / 6) % 6]);
    serde_json::json!({"id": format!("q{i}"), "dataset": "squad",
        "question": format!("what color is the {a} ?"),
        "documents": [{"title": format!("article {}", i % 3), "text": format!("the {a} is {c} .")}],
        "answers": [c]})
}

pub struct Setup {
    _tmp: tempfile::TempDir,
    pub dir: PathBuf,
}

impl Setup {
    pub fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        write_tiny_generator(&dir.join("gen"));
        let lines = |r: std::ops::Range<usize>| -> String {
            let rows: Vec<String> = r.map(|i| example(i).to_string()).collect();
            format!("[\n{}\n]\n", rows.join(",\n"))
        };
        std::fs::write(dir.join("train.json"), lines(0..8)).unwrap();
        std::fs::write(dir.join("train_eval.json"), lines(8..11)).unwrap();
        Setup { _tmp: tmp, dir }
    }

    pub fn p(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// `train` on the tiny model; `extra` flags replace the defaults of the same name.
    pub fn train(&self, out: &str, extra: &[&str]) -> Output {
        self.command("train", out, extra)
    }

    /// `scaledown <command>` (train or pretrain) with the tiny defaults.
    pub fn command(&self, command: &str, out: &str, extra: &[&str]) -> Output {
        let args = self.args(command, out, extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        scaledown(&args)
    }

    /// The arguments of [`Self::command`].
    pub fn args(&self, command: &str, out: &str, extra: &[&str]) -> Vec<String> {
        let (data, generator, out) = (self.p("train.json"), self.p("gen"), self.p(out));
        let defaults = [
            ("--train-data", data.as_str()),
            ("--generator", generator.as_str()),
            ("--output-dir", out.as_str()),
            ("--num-layers", "1"),
            ("--num-memory-tokens", "2"),
            ("--compression-rate", "4"),
            ("--batch-size", "4"),
            ("--learning-rate", "3e-3"),
            ("--compressor-learning-rate", "3e-3"),
            ("--max-new-tokens", "3"),
            ("--logging-steps", "5"),
            ("--num-epochs", "100"),
        ];
        let mut args = vec![command];
        for (flag, value) in defaults {
            if !extra.contains(&flag) {
                args.extend([flag, value]);
            }
        }
        args.extend_from_slice(extra);
        args.into_iter().map(String::from).collect()
    }
}

pub fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn write_corpus(s: &Setup) -> String {
    let passages: Vec<String> = (0..6)
        .map(|i| {
            (0..3 + i % 2)
                .map(|j| {
                    format!(
                        "the {} is {} .",
                        ANIMALS[(i + j) % 6],
                        COLORS[(i * 2 + j) % 6]
                    )
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    let path = s.p("corpus.txt");
    std::fs::write(&path, passages.join("\n\n")).unwrap();
    path
}
