//! Unlabelled passages for compressor pretraining: a user's corpus file, or the documents of
//! the training examples.

use anyhow::{Context, Result, bail};
use scaledown_data::{Document, Example};
use scaledown_model::questions::documents_of;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// Passages of `path` for pretraining, each with its title first as documents are.
pub fn read(path: &Path) -> Result<Vec<String>> {
    Ok(read_outside(path, &[])?.0)
}

/// [`read`] without the passages of `held_out`'s articles (a document of theirs with the same
/// title, or the same text when untitled), so that pretraining never sees an eval article;
/// with how many passages were left out.
pub fn read_outside(path: &Path, held_out: &[Example]) -> Result<(Vec<String>, usize)> {
    let documents = held_out.iter().flat_map(|e| &e.documents);
    let titles: HashSet<&str> = documents
        .clone()
        .filter(|d| !d.title.trim().is_empty())
        .map(|d| d.title.as_str())
        .collect();
    let texts: HashSet<&str> = documents.map(|d| d.text.trim()).collect();
    let all = read_documents(path, "--pretrain-data")?;
    let total = all.len();
    let kept: Vec<String> = all
        .iter()
        .filter(|d| !titles.contains(d.title.as_str()) && !texts.contains(d.text.trim()))
        .map(|d| scaledown_model::oscar::document_text(&d.title, &d.text))
        .collect();
    if kept.is_empty() {
        bail!(
            "--pretrain-data {}: every passage belongs to an eval article",
            path.display()
        );
    }
    let left_out = total - kept.len();
    Ok((kept, left_out))
}

/// [`read_outside`] over several files, each distinct passage once (SQuAD's files repeat a
/// paragraph for each of its questions).
pub fn read_all_outside(paths: &[PathBuf], held_out: &[Example]) -> Result<(Vec<String>, usize)> {
    let mut seen = HashSet::new();
    let (mut kept, mut left_out) = (Vec::new(), 0);
    for path in paths {
        let (passages, out) = read_outside(path, held_out)?;
        left_out += out;
        kept.extend(passages.into_iter().filter(|p| seen.insert(p.clone())));
    }
    Ok((kept, left_out))
}

/// The documents of corpus file `path` (given with `flag`): see [`scaledown_data::corpus`];
/// `.jsonl`/`.json` files are JSON Lines, others plain text.
pub fn read_documents(path: &Path, flag: &str) -> Result<Vec<Document>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading {flag} {}", path.display()))?;
    let json_lines = matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("jsonl" | "json")
    );
    let file = format!("{flag} {}", path.display());
    Ok(scaledown_data::parse_corpus(&file, &text, json_lines)?)
}

/// The distinct documents of `examples`, in first-seen order.
pub fn of_examples(examples: &[Example]) -> Vec<String> {
    let mut seen = HashSet::new();
    examples
        .iter()
        .flat_map(documents_of)
        .filter(|d| seen.insert(d.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, text: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("scaledown-passages-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn reads_text_jsonl_and_kilt_and_names_broken_lines() {
        let p = write("a.txt", "first passage\nstill first\n\n\nsecond\n");
        assert_eq!(read(&p).unwrap(), ["first passage\nstill first", "second"]);
        let p = write(
            "b.jsonl",
            "{\"context\": \"c1\"}\n\n{\"wikipedia_title\": \"Paris\", \"paragraphs\": [\"p1\", \"p2\"]}\n",
        );
        assert_eq!(read(&p).unwrap(), ["c1", "Paris\np1", "Paris\np2"]);
        let p = write(
            "hotpot.jsonl",
            "{\"question\": \"q\", \"context\": [[\"Rhine\", [\"A river.\", \" Long.\"]], [\"Empty\", []]]}\n",
        );
        assert_eq!(read(&p).unwrap(), ["Rhine\nA river. Long."]);
        let p = write("bad_hotpot.jsonl", "{\"context\": [[1, []]]}\n");
        let e = format!("{:#}", read(&p).unwrap_err());
        assert!(
            e.contains("bad_hotpot.jsonl: line 1") && e.contains("title"),
            "{e}"
        );
        let p = write("c.jsonl", "{\"text\": \"ok\"}\n{\"text\": \n");
        let e = format!("{:#}", read(&p).unwrap_err());
        assert!(
            e.contains("c.jsonl: line 2") && e.contains("not JSON"),
            "{e}"
        );
        let p = write("d.jsonl", "{\"question\": \"q\"}\n");
        let e = format!("{:#}", read(&p).unwrap_err());
        assert!(
            e.contains("d.jsonl: line 1") && e.contains("no `text`"),
            "{e}"
        );
        // Passages of held-out articles are left out, by title or by text.
        let p = write(
            "f.jsonl",
            "{\"title\": \"Rhine\", \"text\": \"r\"}\n{\"text\": \"held\"}\n{\"title\": \"Oslo\", \"text\": \"o\"}\n",
        );
        let eval = Example {
            id: "e".into(),
            dataset: "squad".into(),
            question: "q".into(),
            documents: vec![
                Document {
                    title: "Rhine".into(),
                    text: "other".into(),
                },
                Document {
                    title: String::new(),
                    text: "held".into(),
                },
            ],
            answers: vec!["a".into()],
            supporting_titles: vec![],
            teacher_answer: None,
        };
        assert_eq!(
            read_outside(&p, std::slice::from_ref(&eval)).unwrap(),
            (vec!["Oslo\no".to_string()], 2)
        );
        let p = write("g.jsonl", "{\"title\": \"Rhine\", \"text\": \"r\"}\n");
        let e = format!("{:#}", read_outside(&p, &[eval]).unwrap_err());
        assert!(e.contains("eval article"), "{e}");
        let p = write("e.txt", "\n\n");
        assert!(format!("{:#}", read(&p).unwrap_err()).contains("no passages"));
    }
}
