//! Corpus files of unlabelled passages (`pretrain --pretrain-data`, `prepare --corpus`): JSON
//! Lines with a `text` or `context` string, HotpotQA's `context` paragraphs or a KILT-style
//! `paragraphs` list (titled by `wikipedia_title` or `title`), or plain text with passages
//! separated by blank lines (untitled).

use crate::schema::{DataError, Document};
use crate::sources::hotpot_documents;
use serde_json::Value;

/// The documents of corpus `file` holding `text`, read as JSON Lines when `json_lines`. A
/// malformed line is an error naming the file and the line; a file without passages too.
pub fn parse_corpus(file: &str, text: &str, json_lines: bool) -> Result<Vec<Document>, DataError> {
    let documents = if json_lines {
        let mut out = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let at = |message: String| DataError::Line {
                file: file.to_string(),
                line: i + 1,
                message,
            };
            let v: Value = serde_json::from_str(line).map_err(|e| at(format!("not JSON: {e}")))?;
            out.extend(line_documents(&v).map_err(at)?);
        }
        out
    } else {
        text.split("\n\n")
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| Document {
                title: String::new(),
                text: p.to_string(),
            })
            .collect()
    };
    if documents.is_empty() {
        return Err(DataError::file(file, "no passages"));
    }
    Ok(documents)
}

fn line_documents(v: &Value) -> Result<Vec<Document>, String> {
    let title = ["wikipedia_title", "title"]
        .iter()
        .find_map(|k| v.get(k).and_then(Value::as_str))
        .unwrap_or("");
    let titled = |text: &str| Document {
        title: title.to_string(),
        text: text.to_string(),
    };
    if let Some(t) = ["text", "context"]
        .iter()
        .find_map(|k| v.get(k).and_then(Value::as_str))
    {
        return Ok(vec![titled(t)]);
    }
    if let Some(context) = v.get("context").filter(|c| !c.is_string()) {
        // HotpotQA's paragraphs, each with its own title.
        return hotpot_documents(context);
    }
    match v.get("paragraphs").and_then(Value::as_array) {
        Some(ps) => ps
            .iter()
            .map(|p| match p.as_str() {
                Some(s) => Ok(titled(s)),
                None => Err("`paragraphs` holds a non-string".to_string()),
            })
            .collect(),
        None => Err("no `text`, `context` or `paragraphs` field".to_string()),
    }
}
