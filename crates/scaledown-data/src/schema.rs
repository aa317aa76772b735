//! The one example schema that `prepare` writes and `train`, `eval` and the web page read.

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{file}: line {line}: {message}")]
    Line {
        file: String,
        line: usize,
        message: String,
    },
    #[error("{file}: {message}")]
    File { file: String, message: String },
}

impl DataError {
    pub fn file(file: &str, message: impl Into<String>) -> Self {
        Self::File {
            file: file.into(),
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Document {
    pub title: String,
    pub text: String,
}

/// One question with its retrieved (or given) documents and every accepted answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Example {
    pub id: String,
    /// `squad`, `hotpot_qa` or `trivia_qa`.
    pub dataset: String,
    pub question: String,
    pub documents: Vec<Document>,
    /// The first answer is the training target for gold labels; all count for the metrics.
    pub answers: Vec<String>,
    /// HotpotQA's supporting-fact titles: the documents that hold the answer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub supporting_titles: Vec<String>,
    /// The uncompressed generator's answer from the full text (`prepare --teacher`): the
    /// training target of `train --labels teacher`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teacher_answer: Option<String>,
}

impl Example {
    /// Why this example cannot be used, if it cannot.
    pub fn problem(&self) -> Option<String> {
        if self.question.trim().is_empty() {
            return Some("empty `question`".into());
        }
        if self.documents.is_empty() {
            return Some("no `documents`".into());
        }
        if let Some(i) = self.documents.iter().position(|d| d.text.trim().is_empty()) {
            return Some(format!("`documents[{i}].text` is empty"));
        }
        if self.answers.iter().all(|a| a.trim().is_empty()) {
            return Some("no non-empty `answers`".into());
        }
        None
    }
}

/// Reads a prepared file: a JSON array of examples, or JSON Lines (one example per line).
/// Every example is checked; the error names the file, the line (or index) and the field.
pub fn parse_examples(file: &str, text: &str) -> Result<Vec<Example>, DataError> {
    let trimmed = text.trim_start();
    if trimmed.is_empty() {
        return Err(DataError::file(file, "the file is empty"));
    }
    let examples: Vec<Example> = if trimmed.starts_with('[') {
        let examples: Vec<Example> = serde_json::from_str(text).map_err(|e| DataError::Line {
            file: file.into(),
            line: e.line(),
            message: format!("not a list of examples: {e}"),
        })?;
        for (i, ex) in examples.iter().enumerate() {
            if let Some(p) = ex.problem() {
                return Err(DataError::file(
                    file,
                    format!("example {i} (id {}): {p}", ex.id),
                ));
            }
        }
        examples
    } else {
        let mut out = Vec::new();
        for_each_json_line(file, text.lines(), |ex: Example| {
            if let Some(p) = ex.problem() {
                return Err(format!("example {}: {p}", ex.id));
            }
            out.push(ex);
            Ok(())
        })?;
        out
    };
    if examples.is_empty() {
        return Err(DataError::file(file, "no examples"));
    }
    Ok(examples)
}

/// Parses each non-blank line as a `T` and hands it to `f`; an error names the file and line.
pub fn for_each_json_line<'a, T: serde::de::DeserializeOwned>(
    file: &str,
    lines: impl IntoIterator<Item = &'a str>,
    mut f: impl FnMut(T) -> Result<(), String>,
) -> Result<(), DataError> {
    for (i, line) in lines.into_iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let line_err = |message: String| DataError::Line {
            file: file.into(),
            line: i + 1,
            message,
        };
        let value: T = serde_json::from_str(line).map_err(|e| line_err(e.to_string()))?;
        f(value).map_err(line_err)?;
    }
    Ok(())
}

/// The prepared-file format: a JSON array with one example per line (diff- and grep-friendly).
pub fn to_json(examples: &[Example]) -> String {
    let mut s = String::from("[\n");
    for (i, ex) in examples.iter().enumerate() {
        s.push_str(&serde_json::to_string(ex).expect("examples serialise"));
        s.push_str(if i + 1 < examples.len() { ",\n" } else { "\n" });
    }
    s.push_str("]\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> Example {
        Example {
            id: "q1".into(),
            dataset: "squad".into(),
            question: "Who?".into(),
            documents: vec![Document {
                title: "T".into(),
                text: "Someone did it.".into(),
            }],
            answers: vec!["Someone".into()],
            supporting_titles: vec![],
            teacher_answer: None,
        }
    }

    #[test]
    fn round_trip_as_array_and_as_lines() {
        let exs = vec![example(), example()];
        assert_eq!(parse_examples("f", &to_json(&exs)).unwrap(), exs);
        let lines: String = exs
            .iter()
            .map(|e| serde_json::to_string(e).unwrap() + "\n")
            .collect();
        assert_eq!(parse_examples("f", &lines).unwrap(), exs);
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let good = serde_json::to_string(&example()).unwrap();
        let err = parse_examples("data.jsonl", &format!("{good}\n{{\"id\": 3\n")).unwrap_err();
        assert!(err.to_string().starts_with("data.jsonl: line 2:"), "{err}");

        let mut empty_doc = example();
        empty_doc.documents[0].text = " ".into();
        let text = format!("{good}\n{}\n", serde_json::to_string(&empty_doc).unwrap());
        let err = parse_examples("d.jsonl", &text).unwrap_err().to_string();
        assert!(
            err.contains("line 2") && err.contains("documents[0].text"),
            "{err}"
        );

        let mut no_answer = example();
        no_answer.answers.clear();
        let err = parse_examples("d.json", &to_json(&[no_answer]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("d.json") && err.contains("answers"), "{err}");

        let missing = r#"{"id":"x","dataset":"squad","question":"q","documents":[]}"#;
        let err = parse_examples("m.jsonl", missing).unwrap_err().to_string();
        assert!(
            err.contains("m.jsonl: line 1") && err.contains("answers"),
            "{err}"
        );
        assert!(parse_examples("e.json", "  \n").is_err());
    }
}
