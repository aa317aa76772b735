//! Unlabelled passages for compressor pretraining: a user's corpus file, or the documents of
//! the training examples.

use anyhow::{Context, Result, bail};
use scaledown_data::{Document, Example};
use scaledown_model::oscar::document_text;
use scaledown_model::questions::documents_of;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// Passages of `path` for pretraining, each with its title first as documents are.
pub fn read(path: &Path) -> Result<Vec<String>> {
    Ok(read_outside(path, &[])?.0)
}

/// [`read`] without the passages of `held_out`'s articles
/// ([`scaledown_data::outside_articles`]), with how many were left out.
pub fn read_outside(path: &Path, held_out: &[Example]) -> Result<(Vec<String>, usize)> {
    let all = read_documents(path, "--pretrain-data")?;
    let (kept, left_out) = scaledown_data::outside_articles(all, held_out);
    if kept.is_empty() {
        bail!(
            "--pretrain-data {}: every passage belongs to an eval article",
            path.display()
        );
    }
    let kept = kept
        .iter()
        .map(|d| document_text(&d.title, &d.text))
        .collect();
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

    /// The file side of reading a corpus (its parsing and filtering are scaledown-data's).
    #[test]
    fn reads_a_file_by_its_extension_and_names_it_in_errors() {
        let dir = std::env::temp_dir().join(format!("scaledown-passages-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (txt, jsonl) = (dir.join("a.txt"), dir.join("b.jsonl"));
        std::fs::write(&txt, "first\n\nsecond {\"text\": 1}\n").unwrap();
        std::fs::write(&jsonl, "{\"title\": \"Oslo\", \"text\": \"o\"}\n").unwrap();
        assert_eq!(read(&txt).unwrap(), ["first", "second {\"text\": 1}"]);
        assert_eq!(read(&jsonl).unwrap(), ["Oslo\no"]);
        let e = format!("{:#}", read(&dir.join("missing.jsonl")).unwrap_err());
        assert!(
            e.contains("--pretrain-data") && e.contains("missing.jsonl"),
            "{e}"
        );
    }
}
