//! Corpus files of unlabelled passages (`pretrain --pretrain-data`, `prepare --corpus`): JSON
//! Lines with a `text` or `context` string, HotpotQA's `context` paragraphs or a KILT-style
//! `paragraphs` list (titled by `wikipedia_title` or `title`), or plain text with passages
//! separated by blank lines (untitled).

use crate::schema::{DataError, Document, Example};
use crate::sources::hotpot_documents;
use serde_json::Value;
use std::collections::HashSet;

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

/// `documents` without those of `held_out`'s articles (a document of theirs with the same
/// title, or the same text when untitled), so that pretraining never sees an eval article;
/// with how many were left out.
pub fn outside_articles(documents: Vec<Document>, held_out: &[Example]) -> (Vec<Document>, usize) {
    let theirs = held_out.iter().flat_map(|e| &e.documents);
    let titles: HashSet<&str> = theirs
        .clone()
        .filter(|d| !d.title.trim().is_empty())
        .map(|d| d.title.as_str())
        .collect();
    let texts: HashSet<&str> = theirs.map(|d| d.text.trim()).collect();
    let total = documents.len();
    let kept: Vec<Document> = documents
        .into_iter()
        .filter(|d| !titles.contains(d.title.as_str()) && !texts.contains(d.text.trim()))
        .collect();
    let left_out = total - kept.len();
    (kept, left_out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(file: &str, text: &str) -> Result<Vec<String>, String> {
        let documents =
            parse_corpus(file, text, file.ends_with(".jsonl")).map_err(|e| e.to_string())?;
        Ok(documents
            .into_iter()
            .map(|d| match d.title.is_empty() {
                true => d.text,
                false => format!("{}\n{}", d.title, d.text),
            })
            .collect())
    }

    #[test]
    fn reads_text_jsonl_and_kilt_and_names_broken_lines() {
        let t = texts("a.txt", "first passage\nstill first\n\n\nsecond\n");
        assert_eq!(t.unwrap(), ["first passage\nstill first", "second"]);
        let kilt = "{\"context\": \"c1\"}\n\n{\"wikipedia_title\": \"Paris\", \"paragraphs\": [\"p1\", \"p2\"]}\n";
        assert_eq!(
            texts("b.jsonl", kilt).unwrap(),
            ["c1", "Paris\np1", "Paris\np2"]
        );
        let hotpot = "{\"question\": \"q\", \"context\": [[\"Rhine\", [\"A river.\", \" Long.\"]], [\"Empty\", []]]}\n";
        assert_eq!(
            texts("hotpot.jsonl", hotpot).unwrap(),
            ["Rhine\nA river. Long."]
        );
        let e = texts("bad_hotpot.jsonl", "{\"context\": [[1, []]]}\n").unwrap_err();
        assert!(
            e.contains("bad_hotpot.jsonl: line 1") && e.contains("title"),
            "{e}"
        );
        let e = texts("c.jsonl", "{\"text\": \"ok\"}\n{\"text\": \n").unwrap_err();
        assert!(
            e.contains("c.jsonl: line 2") && e.contains("not JSON"),
            "{e}"
        );
        let e = texts("d.jsonl", "{\"question\": \"q\"}\n").unwrap_err();
        assert!(
            e.contains("d.jsonl: line 1") && e.contains("no `text`"),
            "{e}"
        );
        assert!(texts("e.txt", "\n\n").unwrap_err().contains("no passages"));
    }

    #[test]
    fn passages_of_held_out_articles_are_left_out_by_title_or_text() {
        let doc = |title: &str, text: &str| Document {
            title: title.into(),
            text: text.into(),
        };
        let eval = Example {
            id: "e".into(),
            dataset: "squad".into(),
            question: "q".into(),
            documents: vec![doc("Rhine", "other"), doc("", "held")],
            answers: vec!["a".into()],
            supporting_titles: vec![],
            teacher_answer: None,
        };
        let corpus = vec![doc("Rhine", "r"), doc("", "held"), doc("Oslo", "o")];
        let (kept, left_out) = outside_articles(corpus, &[eval]);
        assert_eq!((kept, left_out), (vec![doc("Oslo", "o")], 2));
    }
}
