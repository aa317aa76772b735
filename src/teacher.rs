//! What the uncompressed teachers give the training: the generator's answers and token
//! distributions from the full text, and MiniLM's question-document relevance. Each is
//! computed once per example, cached in a JSON file and resumable.

use crate::evaluate::Evaluator;
use crate::progress;
use anyhow::{Context, Result};
use scaledown_data::Example;
use scaledown_files::fs::write_atomic;
use scaledown_files::models;
use scaledown_model::burn::prelude::Device;
use scaledown_model::burn::tensor::read_sync;
use scaledown_model::distillation;
use scaledown_model::example::{TeacherTokens, TrainExample};
use scaledown_model::llama::Llama;
use scaledown_model::oscar::{OscarTokenizers, full_text_user_turn};
use scaledown_model::questions::documents_of;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::path::Path;

/// The uncompressed generator's answers from the full text. An entry is keyed by the
/// example's id and a digest of its prompt, so that other retrieved documents get a new answer.
pub fn labels(
    path: &Path,
    train: &[Example],
    generator: &Llama,
    evaluator: &Evaluator,
) -> Result<Vec<String>> {
    let key = |e: &Example| {
        let prompt = full_text_user_turn(&e.question, &documents_of(e));
        format!("{} {:016x}", e.id, fnv1a(prompt.as_bytes()))
    };
    let keys: Vec<String> = train.iter().map(key).collect();
    let mut prefix = None;
    cached(
        path,
        "teacher labels",
        &keys,
        |_, _: &String| true,
        |i| {
            let prefix = match &mut prefix {
                Some(p) => p,
                None => prefix.insert(evaluator.prefix(generator)?),
            };
            let ex = &train[i];
            let answer =
                read_sync(evaluator.answer_uncompressed(generator, prefix, ex))?.prediction;
            Ok(match answer.is_empty() {
                true => ex.answers[0].clone(),
                false => answer,
            })
        },
    )
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
/// read from the full text (an entry is reused only for the same answer ids).
pub fn distributions(
    path: &Path,
    train: &[Example],
    examples: &[TrainExample],
    generator: &Llama,
    tokenizers: &OscarTokenizers,
) -> Result<Vec<TeacherTokens>> {
    let keys: Vec<String> = train.iter().map(|e| e.id.clone()).collect();
    let entries = cached(
        path,
        "teacher token distributions",
        &keys,
        |i, (answer, _): &(Vec<u32>, TeacherTokens)| *answer == examples[i].answer,
        |i| {
            let answer = &examples[i].answer;
            let prompt = tokenizers.full_text_prompt(&train[i])?;
            let tokens = distillation::teacher_tokens(generator, &prompt, answer, DISTILL_TOP_K);
            Ok((answer.clone(), read_sync(tokens)?))
        },
    )?;
    Ok(entries.into_iter().map(|(_, tokens)| tokens).collect())
}

/// The teacher's relevance score of each training document: MiniLM's cosine similarity
/// between the question and the document (an entry counts only with one score per document).
pub fn relevance(
    path: &Path,
    train: &[Example],
    models_dir: &Path,
    device: &Device,
) -> Result<Vec<Vec<f32>>> {
    let keys: Vec<String> = train.iter().map(|e| e.id.clone()).collect();
    let mut minilm = None;
    let valid = |i: usize, scores: &Vec<f32>| scores.len() == train[i].documents.len();
    cached(path, "teacher relevance (MiniLM)", &keys, valid, |i| {
        let (bert, tokenizer) = match &minilm {
            Some(m) => m,
            None => minilm.insert(models::load_encoder(
                &models::default_encoder(models_dir),
                device,
            )?),
        };
        let ex = &train[i];
        Ok(bert.relevance(tokenizer, &ex.question, &documents_of(ex), device)?)
    })
}

/// The value of each of `keys`: from the cache file at `path` where it holds a `valid` one,
/// else computed (with a progress bar labelled `what`) and saved every few values, so that an
/// interrupted run picks up where it stopped.
fn cached<V: Serialize + DeserializeOwned + Clone>(
    path: &Path,
    what: &str,
    keys: &[String],
    valid: impl Fn(usize, &V) -> bool,
    mut compute: impl FnMut(usize) -> Result<V>,
) -> Result<Vec<V>> {
    let mut cache: BTreeMap<String, V> = match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .with_context(|| format!("{}: not a cache of {what}", path.display()))?,
        Err(_) => BTreeMap::new(),
    };
    let todo: Vec<usize> = (0..keys.len())
        .filter(|&i| cache.get(&keys[i]).is_none_or(|v| !valid(i, v)))
        .collect();
    if !todo.is_empty() {
        let bar = progress::bar(todo.len() as u64, what);
        for (n, &i) in todo.iter().enumerate() {
            cache.insert(keys[i].clone(), compute(i)?);
            bar.inc(1);
            if n % 10 == 9 || n + 1 == todo.len() {
                write_atomic(path, serde_json::to_string(&cache)?.as_bytes())?;
            }
        }
        bar.finish_and_clear();
    }
    Ok(keys.iter().map(|k| cache[k].clone()).collect())
}
