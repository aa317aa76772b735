//! `prepare --corpus` end to end: real SQuAD and TriviaQA questions of ../shared/data get
//! their documents from a BM25 index over real Wikipedia paragraphs; a broken corpus line is
//! named and nothing is written.

mod common;

use common::*;
use std::path::Path;
use std::process::{Command, Output};

fn prepare(args: &[&str]) -> Output {
    let models = models_dir();
    Command::new(env!("CARGO_BIN_EXE_scaledown"))
        .arg("prepare")
        .args(args)
        .args(["--models-dir", models.to_str().unwrap()])
        .output()
        .expect("run scaledown")
}

fn examples(path: &Path) -> Vec<scaledown_data::Example> {
    let text = std::fs::read_to_string(path).unwrap();
    scaledown_data::parse_examples(&path.display().to_string(), &text).unwrap()
}

/// `lines` SQuAD questions of ../shared/data, from many articles.
fn squad_sample(dir: &Path, lines: usize) -> std::path::PathBuf {
    let all = std::fs::read_to_string(shared_dir().join("data/squad_dev.jsonl")).unwrap();
    // Every 8th question: many articles, so that the split can keep eval articles apart.
    let sample: Vec<&str> = all.lines().step_by(8).take(lines).collect();
    let path = dir.join("squad_sample.jsonl");
    std::fs::write(&path, sample.join("\n")).unwrap();
    path
}

#[test]
fn squad_questions_retrieve_their_source_paragraph() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus");
    std::fs::create_dir(&corpus).unwrap();
    let source = squad_sample(&corpus, 600);
    let out = dir.path().join("train.json");
    let o = prepare(&[
        "--dataset",
        "squad",
        "--source",
        source.to_str().unwrap(),
        "--corpus",
        corpus.to_str().unwrap(),
        "--num-examples",
        "100",
        "--top-k",
        "3",
        "--eval-top-k",
        "5",
        "--output-file",
        out.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{}{}",
        stdout,
        String::from_utf8_lossy(&o.stderr)
    );
    let train = examples(&out);
    let eval = examples(&dir.path().join("train_eval.json"));
    assert_eq!(
        train.len() + eval.len(),
        100,
        "every question shares words with a passage"
    );
    // OSCAR's shape: fewer documents in training than in evaluation.
    assert!(train.iter().all(|e| (1..=3).contains(&e.documents.len())));
    assert!(eval.iter().all(|e| (1..=5).contains(&e.documents.len())));
    assert!(eval.iter().any(|e| e.documents.len() == 5));
    let report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("train_retrieval.json")).unwrap(),
    )
    .unwrap();
    let squad = &report["datasets"]["squad train"];
    assert_eq!(squad["questions"].as_u64().unwrap() as usize, train.len());
    assert_eq!(
        squad["with_gold"], squad["questions"],
        "every SQuAD paragraph is in the corpus"
    );
    let recall = squad["gold_recall"].as_f64().unwrap();
    // BM25 finds most SQuAD source paragraphs: questions reuse the paragraph's words.
    assert!(recall > 0.6, "recall@3 {recall}");
    assert_eq!(report["datasets"]["squad eval"]["top_k"], 5);
    assert!(
        report["passages"].as_u64().unwrap() > report["paragraphs"].as_u64().unwrap(),
        "long paragraphs are cut into several passages: {report}"
    );
    assert!(stdout.contains("gold passage in the top 3"), "{stdout}");
    assert!(stdout.contains("gold passage in the top 5"), "{stdout}");
}

#[test]
fn trivia_questions_without_evidence_become_usable_with_a_corpus() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus");
    std::fs::create_dir(&corpus).unwrap();
    squad_sample(&corpus, 300);
    let trivia = shared_dir().join("data/triviaqa.jsonl");
    let out = dir.path().join("t.json");
    let args = [
        "--dataset",
        "trivia_qa",
        "--source",
        trivia.to_str().unwrap(),
        "--num-examples",
        "20",
        "--output-file",
        out.to_str().unwrap(),
    ];
    let without = prepare(&args);
    assert!(!without.status.success());
    assert!(
        String::from_utf8_lossy(&without.stderr).contains("--corpus"),
        "{}",
        String::from_utf8_lossy(&without.stderr)
    );
    let with = prepare(&[&args[..], &["--corpus", corpus.to_str().unwrap()]].concat());
    assert!(
        with.status.success(),
        "{}",
        String::from_utf8_lossy(&with.stderr)
    );
    // Written files are valid examples (questions without any matching passage left out).
    let written = examples(&out);
    assert!(!written.is_empty());
}

#[test]
fn a_broken_corpus_line_is_named_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let source = squad_sample(dir.path(), 50);
    let corpus = dir.path().join("kilt.jsonl");
    std::fs::write(
        &corpus,
        "{\"wikipedia_title\": \"A\", \"paragraphs\": [\"p\"]}\n{\"wikipedia_title\": \"B\", \"paragraphs\": [\n",
    )
    .unwrap();
    let out = dir.path().join("train.json");
    let o = prepare(&[
        "--dataset",
        "squad",
        "--source",
        source.to_str().unwrap(),
        "--corpus",
        corpus.to_str().unwrap(),
        "--num-examples",
        "20",
        "--output-file",
        out.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("kilt.jsonl: line 2"), "{err}");
    assert!(!out.exists() && !dir.path().join("train_eval.json").exists());
}

/// `prepare --teacher` labels each retrieved train question with the real generator's answer
/// from the full text, before writing anything; a rerun reuses the cache's entries and
/// regenerates what is missing from it, identically (greedy answers).
#[test]
fn the_teacher_labels_the_retrieved_train_questions_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus");
    std::fs::create_dir(&corpus).unwrap();
    let source = squad_sample(&corpus, 300);
    let out = dir.path().join("kd.json");
    let args = [
        "--dataset",
        "squad",
        "--source",
        source.to_str().unwrap(),
        "--corpus",
        corpus.to_str().unwrap(),
        "--num-examples",
        "10",
        "--top-k",
        "2",
        "--teacher",
        "--max-new-tokens",
        "8",
        "--output-file",
        out.to_str().unwrap(),
    ];
    let o = prepare(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let train = examples(&out);
    let eval = examples(&dir.path().join("kd_eval.json"));
    assert!(train.len() >= 8, "{}", train.len());
    for ex in &train {
        let label = ex.teacher_answer.as_deref().unwrap_or_default();
        assert!(!label.trim().is_empty(), "{}: no teacher answer", ex.id);
    }
    assert!(eval.iter().all(|e| e.teacher_answer.is_none()));

    let cache_file = dir.path().join("kd_teacher_labels.json");
    let mut cache: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(&cache_file).unwrap()).unwrap();
    assert_eq!(cache.len(), train.len());
    // One entry removed (regenerated, identically) and one marked (reused as it is).
    let keys: Vec<String> = cache.keys().cloned().collect();
    cache.remove(&keys[0]);
    cache.insert(keys[1].clone(), serde_json::json!("from the cache"));
    let marked = keys[1].split(' ').next().unwrap().to_string();
    std::fs::write(&cache_file, serde_json::to_string(&cache).unwrap()).unwrap();
    std::fs::remove_file(&out).unwrap();
    let o = prepare(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let again = examples(&out);
    assert_eq!(again.len(), train.len());
    for (a, t) in again.iter().zip(&train) {
        let expected = match a.id == marked {
            true => Some("from the cache".to_string()),
            false => t.teacher_answer.clone(),
        };
        assert_eq!(a.teacher_answer, expected, "{}", a.id);
    }
}
