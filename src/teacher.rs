//! What the uncompressed teachers give the training: the generator's answers and token
//! distributions from the full text, and MiniLM's question-document relevance. Each is
//! computed once, cached in a JSON file and resumable.

use crate::evaluate::Evaluator;
use crate::fsutil::write_atomic;
use crate::{models, progress};
use anyhow::{Context, Result};
use scaledown_data::Example;
use scaledown_model::burn::prelude::Device;
use scaledown_model::burn::tensor::read_sync;
use scaledown_model::distillation;
use scaledown_model::example::{TeacherTokens, TrainExample};
use scaledown_model::llama::Llama;
use scaledown_model::oscar::{OscarTokenizers, full_text_user_turn};
use scaledown_model::questions::documents_of;
use std::collections::BTreeMap;
use std::path::Path;

/// The uncompressed generator's answers from the full text, generated once and cached in
/// `path` (resumable: saved every few examples). An entry is keyed by the example's id
/// and a digest of its prompt, so that other retrieved documents get a new answer.
pub fn labels(
    path: &Path,
    train: &[Example],
    generator: &Llama,
    evaluator: &Evaluator,
) -> Result<Vec<String>> {
    let mut cache: BTreeMap<String, String> = match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .with_context(|| format!("{}: not a label cache", path.display()))?,
        Err(_) => BTreeMap::new(),
    };
    let key = |e: &Example| {
        let prompt = full_text_user_turn(&e.question, &documents_of(e));
        format!("{} {:016x}", e.id, fnv1a(prompt.as_bytes()))
    };
    let todo: Vec<&Example> = train
        .iter()
        .filter(|e| !cache.contains_key(&key(e)))
        .collect();
    if !todo.is_empty() {
        let prefix = evaluator.prefix(generator)?;
        let bar = progress::bar(todo.len() as u64, "teacher labels");
        for (i, ex) in todo.iter().enumerate() {
            let mut answer =
                read_sync(evaluator.answer_uncompressed(generator, &prefix, ex))?.prediction;
            if answer.is_empty() {
                answer = ex.answers[0].clone();
            }
            cache.insert(key(ex), answer);
            bar.inc(1);
            if i % 10 == 9 || i + 1 == todo.len() {
                write_atomic(path, serde_json::to_string_pretty(&cache)?.as_bytes())?;
            }
        }
        bar.finish_and_clear();
    }
    Ok(train.iter().map(|e| cache[&key(e)].clone()).collect())
}

/// 64-bit FNV-1a: a stable digest for cache keys (std's hasher may change between releases).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}

/// Tokens kept of the teacher's distribution at each answer position.
const DISTILL_TOP_K: usize = 16;

/// The uncompressed generator's top tokens at each answer position of each training example,
/// read from the full text (`teacher_tokens.json`, resumable: saved every few examples; an
/// entry is reused only for the same answer ids).
pub fn distributions(
    path: &Path,
    train: &[Example],
    examples: &[TrainExample],
    generator: &Llama,
    tokenizers: &OscarTokenizers,
) -> Result<Vec<TeacherTokens>> {
    type Entry = (Vec<u32>, TeacherTokens);
    let mut cache: BTreeMap<String, Entry> = match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .with_context(|| format!("{}: not a teacher-token cache", path.display()))?,
        Err(_) => BTreeMap::new(),
    };
    let todo: Vec<usize> = (0..train.len())
        .filter(|&i| {
            cache
                .get(&train[i].id)
                .is_none_or(|(a, _)| *a != examples[i].answer)
        })
        .collect();
    if !todo.is_empty() {
        let bar = progress::bar(todo.len() as u64, "teacher token distributions");
        for (n, &i) in todo.iter().enumerate() {
            let (ex, answer) = (&train[i], &examples[i].answer);
            let prompt = tokenizers.full_text_prompt(ex)?;
            let tokens = read_sync(distillation::teacher_tokens(
                generator,
                &prompt,
                answer,
                DISTILL_TOP_K,
            ))?;
            cache.insert(ex.id.clone(), (answer.clone(), tokens));
            bar.inc(1);
            if n % 20 == 19 || n + 1 == todo.len() {
                write_atomic(path, serde_json::to_string(&cache)?.as_bytes())?;
            }
        }
        bar.finish_and_clear();
    }
    Ok(train.iter().map(|e| cache[&e.id].1.clone()).collect())
}

/// The teacher's relevance score of each training document: MiniLM's cosine similarity
/// between the question and the document, cached by example id in `teacher_relevance.json`.
pub fn relevance(
    path: &Path,
    train: &[Example],
    models_dir: &Path,
    device: &Device,
) -> Result<Vec<Vec<f32>>> {
    // Keyed by example id; an entry counts only with one score per document.
    let mut cache: BTreeMap<String, Vec<f32>> = std::fs::read_to_string(path)
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_default();
    let todo: Vec<&Example> = train
        .iter()
        .filter(|e| {
            cache
                .get(&e.id)
                .is_none_or(|s| s.len() != e.documents.len())
        })
        .collect();
    if !todo.is_empty() {
        let (minilm, tokenizer) =
            models::load_encoder(&models::default_encoder(models_dir), device)?;
        let bar = progress::bar(todo.len() as u64, "teacher relevance (MiniLM)");
        for ex in todo {
            let docs = minilm.relevance(&tokenizer, &ex.question, &documents_of(ex), device)?;
            cache.insert(ex.id.clone(), docs);
            bar.inc(1);
        }
        bar.finish_and_clear();
        write_atomic(path, serde_json::to_string(&cache)?.as_bytes())?;
    }
    Ok(train.iter().map(|e| cache[&e.id].clone()).collect())
}
