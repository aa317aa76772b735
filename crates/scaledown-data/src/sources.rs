//! Readers for the datasets' own formats: the official SQuAD v1.1/v2.0, HotpotQA and TriviaQA
//! JSON files, the JSON Lines files of `../shared/data`, and the rows of the Hugging Face
//! datasets-server API (`rajpurkar/squad`, `hotpotqa/hotpot_qa`, `mandarjoshi/trivia_qa`).

use crate::schema::{DataError, Document, Example, for_each_json_line};
use serde_json::Value;
use std::fmt;
use std::str::FromStr;

/// TriviaQA evidence pages are whole Wikipedia articles; keep their beginning only.
const MAX_EVIDENCE_WORDS: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dataset {
    Squad,
    TriviaQa,
    HotpotQa,
}

impl Dataset {
    pub const ALL: [Dataset; 3] = [Dataset::Squad, Dataset::TriviaQa, Dataset::HotpotQa];

    pub fn name(self) -> &'static str {
        match self {
            Self::Squad => "squad",
            Self::TriviaQa => "trivia_qa",
            Self::HotpotQa => "hotpot_qa",
        }
    }

    /// How a dataset's file in a folder begins (`squad*.json[l]`, `hotpot*`, `trivia*`).
    pub fn file_prefix(self) -> &'static str {
        match self {
            Self::Squad => "squad",
            Self::HotpotQa => "hotpot",
            Self::TriviaQa => "trivia",
        }
    }

    /// The Hugging Face datasets-server table that holds it: (dataset, config, split).
    pub fn hf_table(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Self::Squad => ("rajpurkar/squad", "plain_text", "train"),
            Self::HotpotQa => ("hotpotqa/hotpot_qa", "distractor", "train"),
            Self::TriviaQa => ("mandarjoshi/trivia_qa", "rc.wikipedia", "train"),
        }
    }
}

/// Rows per datasets-server page.
pub const HF_PAGE: usize = 100;

/// The offsets of the pages to download for `wanted` examples from a table of `total` rows:
/// twice the rows needed, so that the split can keep eval articles apart, spread evenly over
/// the whole table (SQuAD's rows are ordered by article, and the split needs many articles),
/// shifted by `seed`.
pub fn hf_page_offsets(total: usize, wanted: usize, seed: u64) -> Vec<usize> {
    let pages_total = total.div_ceil(HF_PAGE);
    let pages = (2 * wanted).div_ceil(HF_PAGE).clamp(1, pages_total.max(1));
    let stride = (pages_total / pages).max(1);
    (0..pages)
        .map(|i| (i * stride + seed as usize % stride) * HF_PAGE)
        .filter(|&o| o < total)
        .collect()
}

/// The rows of one datasets-server page (its `rows` list, each `{"row": …}`) into `parsed`;
/// an error names the row by its offset in the table.
pub fn push_hf_page(
    dataset: Dataset,
    page: &Value,
    offset: usize,
    parsed: &mut Parsed,
) -> Result<(), String> {
    let rows = page["rows"]
        .as_array()
        .ok_or("the answer has no `rows` list")?;
    for (i, r) in rows.iter().enumerate() {
        push_row(dataset, r.get("row").unwrap_or(r), parsed)
            .map_err(|e| format!("row {}: {e}", offset + i))?;
    }
    Ok(())
}

impl fmt::Display for Dataset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Dataset {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "squad" => Ok(Self::Squad),
            "trivia_qa" | "triviaqa" => Ok(Self::TriviaQa),
            "hotpot_qa" | "hotpotqa" => Ok(Self::HotpotQa),
            other => Err(format!(
                "unknown dataset `{other}` (squad, trivia_qa, hotpot_qa, all)"
            )),
        }
    }
}

/// What a source file held.
#[derive(Debug, Default)]
pub struct Parsed {
    pub examples: Vec<Example>,
    /// SQuAD v2.0 questions without an answer (the method needs an answer to learn from).
    pub unanswerable: usize,
    /// Questions that come without any evidence text (TriviaQA's open-domain files): they need
    /// retrieval over a corpus first.
    pub without_documents: Vec<Example>,
}

/// Reads one source file of `dataset` in any of the supported layouts.
pub fn parse_source(dataset: Dataset, file: &str, text: &str) -> Result<Parsed, DataError> {
    let trimmed = text.trim_start();
    let mut parsed = Parsed::default();
    let mut whole_row = None;
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        // One JSON document, unless it is JSON Lines whose first line is an object.
        let whole = serde_json::from_str::<Value>(text).ok();
        // A single row object is read as JSON Lines below, so that errors name line 1.
        let container = whole.as_ref().filter(|d| {
            d.is_array() || ["data", "Data", "rows"].iter().any(|k| d.get(k).is_some())
        });
        if let Some(doc) = container {
            let rows: Vec<&Value> = match (doc, dataset) {
                (Value::Object(o), Dataset::Squad) if o.contains_key("data") => {
                    return squad_official(file, doc);
                }
                (Value::Object(o), Dataset::TriviaQa) if o.contains_key("Data") => o["Data"]
                    .as_array()
                    .map(|a| a.iter().collect())
                    .unwrap_or_default(),
                (Value::Object(o), _) if o.contains_key("rows") => {
                    // A saved datasets-server page.
                    o["rows"]
                        .as_array()
                        .map(|a| a.iter().map(|r| r.get("row").unwrap_or(r)).collect())
                        .unwrap_or_default()
                }
                (Value::Array(a), _) => a.iter().collect(),
                _ => return Err(DataError::file(file, "unexpected layout for this dataset")),
            };
            for (i, row) in rows.iter().enumerate() {
                push_row(dataset, row, &mut parsed)
                    .map_err(|m| DataError::file(file, format!("record {i}: {m}")))?;
            }
            return finish(dataset, file, parsed);
        }
        whole_row = whole.filter(Value::is_object);
    }
    let lines: Vec<&str> = match whole_row {
        // One (possibly pretty-printed) row object.
        Some(_) => vec![text],
        None => text.lines().collect(),
    };
    for_each_json_line(file, lines, |row: Value| {
        push_row(dataset, &row, &mut parsed)
    })?;
    finish(dataset, file, parsed)
}

/// Converts one record (a shared JSON Lines row, an official record or a datasets-server row).
pub fn push_row(dataset: Dataset, row: &Value, parsed: &mut Parsed) -> Result<(), String> {
    let ex = match dataset {
        Dataset::Squad => squad_row(row)?,
        Dataset::HotpotQa => hotpot_row(row)?,
        Dataset::TriviaQa => trivia_row(row)?,
    };
    if ex.answers.is_empty() {
        parsed.unanswerable += 1;
    } else if ex.documents.is_empty() {
        parsed.without_documents.push(ex);
    } else {
        parsed.examples.push(ex);
    }
    Ok(())
}

fn finish(dataset: Dataset, file: &str, parsed: Parsed) -> Result<Parsed, DataError> {
    if parsed.examples.is_empty() && parsed.without_documents.is_empty() {
        let why = format!("no answerable {dataset} examples found");
        return Err(DataError::file(file, why));
    }
    Ok(parsed)
}

impl Parsed {
    /// The examples that come with their documents: an error naming `file` when none does
    /// (their questions need `prepare --corpus`).
    pub fn with_documents(self, dataset: Dataset, file: &str) -> Result<Vec<Example>, DataError> {
        if self.examples.is_empty() {
            return Err(DataError::file(
                file,
                format!(
                    "none of its {} {dataset} questions comes with evidence text; they need \
                     retrieval over a corpus (`prepare --corpus`) before they can be compressed",
                    self.without_documents.len()
                ),
            ));
        }
        Ok(self.examples)
    }
}

fn string(row: &Value, key: &str) -> Result<String, String> {
    match row.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Number(n)) => Ok(n.to_string()),
        Some(_) => Err(format!("field `{key}` is not a string")),
        None => Err(format!("missing field `{key}`")),
    }
}

fn strings(v: &Value, what: &str) -> Result<Vec<String>, String> {
    match v {
        Value::Array(a) => a
            .iter()
            .map(|x| x.as_str().map(str::to_string))
            .collect::<Option<_>>()
            .ok_or_else(|| format!("`{what}` holds a non-string")),
        Value::String(s) => Ok(vec![s.clone()]),
        _ => Err(format!("`{what}` is not a list of strings")),
    }
}

fn nonempty(answers: Vec<String>) -> Vec<String> {
    answers
        .into_iter()
        .filter(|a| !a.trim().is_empty())
        .collect()
}

/// Shared JSONL `{id,title,question,context,answers}` or HF `answers: {text: [..]}`.
fn squad_row(row: &Value) -> Result<Example, String> {
    let answers = match row.get("answers") {
        Some(Value::Object(o)) => strings(o.get("text").unwrap_or(&Value::Null), "answers.text")?,
        Some(Value::Array(a)) if a.iter().all(Value::is_object) => a
            .iter()
            .map(|x| string(x, "text"))
            .collect::<Result<_, _>>()?,
        Some(v) => strings(v, "answers")?,
        None => return Err("missing field `answers`".into()),
    };
    Ok(Example {
        id: string(row, "id")?,
        dataset: Dataset::Squad.name().into(),
        question: string(row, "question")?,
        documents: vec![Document {
            title: string(row, "title")?,
            text: string(row, "context")?,
        }],
        answers: nonempty(answers),
        supporting_titles: vec![],
        teacher_answer: None,
    })
}

/// Official SQuAD v1.1 / v2.0: `data[].paragraphs[].qas[]`.
fn squad_official(file: &str, doc: &Value) -> Result<Parsed, DataError> {
    let err = |m: String| DataError::file(file, m);
    let mut parsed = Parsed::default();
    let articles = doc["data"]
        .as_array()
        .ok_or_else(|| err("`data` is not a list".into()))?;
    for (ai, article) in articles.iter().enumerate() {
        let at = |m: String| err(format!("data[{ai}]: {m}"));
        let title = string(article, "title").map_err(at)?;
        let paragraphs = article["paragraphs"]
            .as_array()
            .ok_or_else(|| at("`paragraphs` is not a list".into()))?;
        for (pi, paragraph) in paragraphs.iter().enumerate() {
            let at = |m: String| err(format!("data[{ai}].paragraphs[{pi}]: {m}"));
            let context = string(paragraph, "context").map_err(at)?;
            let qas = paragraph["qas"]
                .as_array()
                .ok_or_else(|| at("`qas` is not a list".into()))?;
            for qa in qas {
                let answers: Vec<String> = match qa.get("answers") {
                    Some(Value::Array(a)) => a
                        .iter()
                        .map(|x| string(x, "text"))
                        .collect::<Result<_, _>>()
                        .map_err(at)?,
                    _ => return Err(at("a question has no `answers` list".into())),
                };
                let ex = Example {
                    id: string(qa, "id").map_err(at)?,
                    dataset: Dataset::Squad.name().into(),
                    question: string(qa, "question").map_err(at)?,
                    documents: vec![Document {
                        title: title.clone(),
                        text: context.clone(),
                    }],
                    answers: nonempty(answers),
                    supporting_titles: vec![],
                    teacher_answer: None,
                };
                if ex.answers.is_empty() {
                    parsed.unanswerable += 1;
                } else {
                    parsed.examples.push(ex);
                }
            }
        }
    }
    finish(Dataset::Squad, file, parsed)
}

/// The paragraphs of a HotpotQA `context`, in either layout (see [`hotpot_row`]), each titled;
/// empty ones left out.
pub fn hotpot_documents(context: &Value) -> Result<Vec<Document>, String> {
    let mut documents = Vec::new();
    match context {
        Value::Array(pairs) => {
            for p in pairs {
                let title = p
                    .get(0)
                    .and_then(Value::as_str)
                    .ok_or("`context` pair without a title")?;
                let sentences = strings(p.get(1).unwrap_or(&Value::Null), "context sentences")?;
                documents.push(Document {
                    title: title.into(),
                    text: sentences.concat().trim().to_string(),
                });
            }
        }
        Value::Object(o) => {
            let titles = strings(o.get("title").unwrap_or(&Value::Null), "context.title")?;
            let sentences = o
                .get("sentences")
                .and_then(Value::as_array)
                .ok_or("`context.sentences` is not a list")?;
            for (title, s) in titles.iter().zip(sentences) {
                documents.push(Document {
                    title: title.clone(),
                    text: strings(s, "context.sentences")?.concat().trim().to_string(),
                });
            }
        }
        _ => return Err("`context` is neither a list of [title, sentences] nor an object".into()),
    }
    documents.retain(|d| !d.text.is_empty());
    Ok(documents)
}

/// Official/shared `context: [[title, [sentences]]]` or HF `context: {title: [], sentences: [[]]}`.
fn hotpot_row(row: &Value) -> Result<Example, String> {
    let id = string(row, "_id").or_else(|_| string(row, "id"))?;
    let documents = hotpot_documents(row.get("context").ok_or("missing field `context`")?)?;
    Ok(Example {
        id,
        dataset: Dataset::HotpotQa.name().into(),
        question: string(row, "question")?,
        documents,
        answers: nonempty(vec![string(row, "answer")?]),
        supporting_titles: supporting_titles(row)?,
        teacher_answer: None,
    })
}

/// The distinct titles of HotpotQA's `supporting_facts` (`[[title, sentence], ..]`, or the
/// Hugging Face `{title: [..], sent_id: [..]}`); none when the row has no such field.
fn supporting_titles(row: &Value) -> Result<Vec<String>, String> {
    let titles: Vec<String> = match row.get("supporting_facts") {
        None | Some(Value::Null) => vec![],
        Some(Value::Array(facts)) => facts
            .iter()
            .map(|f| f.get(0).and_then(Value::as_str).map(str::to_string))
            .collect::<Option<_>>()
            .ok_or("`supporting_facts` holds an entry without a title")?,
        Some(Value::Object(o)) => strings(
            o.get("title").unwrap_or(&Value::Null),
            "supporting_facts.title",
        )?,
        Some(_) => return Err("`supporting_facts` is not a list".into()),
    };
    let mut seen = std::collections::HashSet::new();
    Ok(titles
        .into_iter()
        .filter(|t| seen.insert(t.clone()))
        .collect())
}

/// Shared JSONL `{id, question, answer, aliases, contexts}`, official `{Question, QuestionId,
/// Answer: {Value, Aliases}, EntityPages}` or HF `{question, question_id, answer: {value,
/// aliases}, entity_pages: {title, wiki_context}, search_results: {title, search_context}}`.
fn trivia_row(row: &Value) -> Result<Example, String> {
    let get = |a: &str, b: &str| row.get(a).or_else(|| row.get(b));
    let id = string(row, "id")
        .or_else(|_| string(row, "question_id"))
        .or_else(|_| string(row, "QuestionId"))?;
    let question = string(row, "question").or_else(|_| string(row, "Question"))?;
    let mut answers = Vec::new();
    match get("answer", "Answer") {
        Some(Value::String(s)) => answers.push(s.clone()),
        Some(Value::Object(o)) => {
            for key in ["value", "Value"] {
                if let Some(Value::String(s)) = o.get(key) {
                    answers.push(s.clone());
                }
            }
            for key in ["aliases", "Aliases"] {
                if let Some(v) = o.get(key) {
                    answers.extend(strings(v, "answer.aliases")?);
                }
            }
        }
        _ => {}
    }
    if let Some(v) = row.get("aliases") {
        answers.extend(strings(v, "aliases")?);
    }
    let mut seen = std::collections::HashSet::new();
    answers.retain(|a| seen.insert(a.clone()));

    let mut documents = Vec::new();
    if let Some(Value::Array(cs)) = row.get("contexts") {
        for (i, c) in cs.iter().enumerate() {
            let text = c
                .as_str()
                .map(str::to_string)
                .or_else(|| string(c, "text").ok());
            let title = string(c, "title").unwrap_or_else(|_| format!("context {i}"));
            documents.extend(text.map(|text| Document { title, text }));
        }
    }
    for (pages, title_key, text_key) in [
        ("entity_pages", "title", "wiki_context"),
        ("search_results", "title", "search_context"),
    ] {
        if let Some(Value::Object(o)) = row.get(pages) {
            let titles = strings(o.get(title_key).unwrap_or(&Value::Array(vec![])), pages)?;
            let texts = strings(o.get(text_key).unwrap_or(&Value::Array(vec![])), pages)?;
            for (title, text) in titles.into_iter().zip(texts) {
                documents.push(Document { title, text });
            }
        }
    }
    for d in &mut documents {
        let words: Vec<&str> = d.text.split_whitespace().collect();
        if words.len() > MAX_EVIDENCE_WORDS {
            d.text = words[..MAX_EVIDENCE_WORDS].join(" ");
        }
    }
    documents.retain(|d| !d.text.trim().is_empty());
    Ok(Example {
        id,
        dataset: Dataset::TriviaQa.name().into(),
        question,
        documents,
        answers: nonempty(answers),
        supporting_titles: vec![],
        teacher_answer: None,
    })
}

#[cfg(test)]
mod tests {

    #[test]
    fn pages_spread_over_the_table_and_stay_inside_it() {
        // SQuAD's train table: 87,599 rows; 200 examples need 4 pages of 100.
        let offsets = hf_page_offsets(87_599, 200, 0);
        assert_eq!(offsets, [0, 21_900, 43_800, 65_700]);
        assert_eq!(
            hf_page_offsets(87_599, 200, 5),
            [500, 22_400, 44_300, 66_200]
        );
        // More wanted than the table holds: every page once.
        assert_eq!(hf_page_offsets(250, 1_000, 3), [0, 100, 200]);
        assert_eq!(hf_page_offsets(0, 10, 0), Vec::<usize>::new());
    }

    #[test]
    fn a_page_of_rows_is_parsed_and_a_bad_row_named_by_offset() {
        let row = serde_json::json!({"row": {"id": "a", "title": "T", "context": "Paris is in France.",
            "question": "Where is Paris?", "answers": {"text": ["France"], "answer_start": [12]}}});
        let page = serde_json::json!({"rows": [row.clone(), {"row": {"id": 3}}]});
        let mut parsed = Parsed::default();
        let e = push_hf_page(Dataset::Squad, &page, 200, &mut parsed).unwrap_err();
        assert!(e.starts_with("row 201: "), "{e}");
        assert_eq!(parsed.examples.len(), 1);
        let e = push_hf_page(Dataset::Squad, &serde_json::json!({}), 0, &mut parsed).unwrap_err();
        assert!(e.contains("`rows`"), "{e}");
    }

    use super::*;

    #[test]
    fn squad_official_v2_and_jsonl() {
        let official = r#"{"version":"v2.0","data":[{"title":"Art","paragraphs":[{"context":"Paris is big.",
            "qas":[{"id":"a","question":"What is big?","answers":[{"text":"Paris","answer_start":0}]},
                   {"id":"b","question":"Unanswerable?","answers":[],"is_impossible":true}]}]}]}"#;
        let p = parse_source(Dataset::Squad, "dev.json", official).unwrap();
        assert_eq!(p.examples.len(), 1);
        assert_eq!(p.unanswerable, 1);
        assert_eq!(p.examples[0].documents[0].title, "Art");
        assert_eq!(p.examples[0].answers, vec!["Paris"]);

        let hf = r#"{"id":"x","title":"T","context":"C c.","question":"Q?","answers":{"text":["C"],"answer_start":[0]}}"#;
        let shared = r#"{"id":"y","title":"T","context":"C c.","question":"Q?","answers":["C","c"],"answer_starts":[0,2]}"#;
        let p = parse_source(Dataset::Squad, "f.jsonl", &format!("{hf}\n{shared}\n")).unwrap();
        assert_eq!(p.examples.len(), 2);
        assert_eq!(p.examples[1].answers, vec!["C", "c"]);
    }

    #[test]
    fn hotpot_both_layouts() {
        let shared = r#"{"id":"h","question":"Q?","answer":"yes","supporting_facts":[["B",0],["A",1],["B",2]],"context":[["A",["One."," Two."]],["B",["Three."]]]}"#;
        let hf = r#"{"id":"h2","question":"Q?","answer":"no","supporting_facts":{"title":["A"],"sent_id":[0]},"context":{"title":["A"],"sentences":[["S1."," S2."]]}}"#;
        let p = parse_source(Dataset::HotpotQa, "h.jsonl", &format!("{shared}\n{hf}")).unwrap();
        assert_eq!(p.examples[0].documents.len(), 2);
        assert_eq!(p.examples[0].supporting_titles, ["B", "A"]);
        assert_eq!(p.examples[1].supporting_titles, ["A"]);
        assert_eq!(p.examples[0].documents[0].text, "One. Two.");
        assert_eq!(p.examples[1].documents[0].text, "S1. S2.");
        let official = format!("[{}]", shared.replace("\"id\"", "\"_id\""));
        assert_eq!(
            parse_source(Dataset::HotpotQa, "h.json", &official)
                .unwrap()
                .examples
                .len(),
            1
        );
    }

    #[test]
    fn trivia_without_evidence_says_it_needs_retrieval() {
        let rows = r#"{"id":"t","question":"Q?","answer":null,"aliases":["A","B"],"contexts":[]}"#;
        let parsed = parse_source(Dataset::TriviaQa, "t.jsonl", rows).unwrap();
        assert_eq!(parsed.without_documents[0].answers, ["A", "B"]);
        let err = parsed
            .with_documents(Dataset::TriviaQa, "t.jsonl")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("t.jsonl") && err.contains("retrieval"),
            "{err}"
        );
        let hf = r#"{"question":"Q?","question_id":"tq1","answer":{"value":"A","aliases":["A","Ay"]},
            "entity_pages":{"title":["P"],"wiki_context":["A is here."]},"search_results":{"title":[],"search_context":[]}}"#;
        let p = parse_source(Dataset::TriviaQa, "t.json", hf).unwrap();
        assert_eq!(p.examples[0].answers, vec!["A", "Ay"]);
        assert_eq!(p.examples[0].documents[0].text, "A is here.");
    }

    #[test]
    fn malformed_lines_are_named() {
        let good = r#"{"id":"x","title":"T","context":"C","question":"Q?","answers":["C"]}"#;
        let err = parse_source(Dataset::Squad, "s.jsonl", &format!("{good}\n{{oops\n"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("s.jsonl: line 2:"), "{err}");
        let missing = r#"{"id":"x","title":"T","question":"Q?","answers":["C"]}"#;
        let err = parse_source(Dataset::Squad, "s.jsonl", missing)
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 1") && err.contains("`context`"), "{err}");
    }
}
