//! Retrieval for `prepare --corpus`: the corpus cut into passages of at most `chunk_tokens`
//! generator tokens (each keeps its title), a BM25 index over them (the `bm25` crate, with
//! English stemming and stop words), the top K passages per question, and recall@K. The
//! CLI reads the corpus and shows the progress.

use bm25::{Language, SearchEngine, SearchEngineBuilder};
use scaledown_data::{Document, Example, normalize_answer};
use scaledown_model::oscar::document_text;
use scaledown_model::tokenizer::Tokenizer;
use std::collections::{HashMap, HashSet};

/// One retrievable window of a corpus paragraph.
#[derive(Debug, Clone, PartialEq)]
pub struct Passage {
    pub document: Document,
    /// Index of the corpus paragraph it was cut from.
    pub paragraph: usize,
}

/// Cuts every paragraph into consecutive windows that hold at most `chunk_tokens` tokens
/// together with their title (so that a passage is one compressor chunk), cut where a token
/// starts, so that no word is lost or doubled.
pub fn passages(
    paragraphs: &[Document],
    tokenizer: &Tokenizer,
    chunk_tokens: usize,
) -> anyhow::Result<Vec<Passage>> {
    let mut out = Vec::new();
    for (i, p) in paragraphs.iter().enumerate() {
        let title = tokenizer.encode(&document_text(&p.title, ""))?.len();
        // A very long title still leaves half of the chunk to the text.
        let budget = chunk_tokens.saturating_sub(title).max(chunk_tokens / 2);
        for text in tokenizer.windows(&p.text, budget)? {
            out.push(Passage {
                document: Document {
                    title: p.title.clone(),
                    text,
                },
                paragraph: i,
            });
        }
    }
    Ok(out)
}

/// A BM25 index over passages (title and text).
pub struct Index {
    engine: SearchEngine<u32>,
    pub passages: Vec<Passage>,
}

impl Index {
    pub fn new(passages: Vec<Passage>) -> Self {
        let contents: Vec<String> = passages
            .iter()
            .map(|p| document_text(&p.document.title, &p.document.text))
            .collect();
        let engine = SearchEngineBuilder::<u32>::with_corpus(Language::English, contents).build();
        Self { engine, passages }
    }

    /// The `k` best passages for `query`, best first (equal scores in corpus order, so that
    /// the result does not depend on hashing). Fewer when fewer passages share a term with it.
    pub fn top(&self, query: &str, k: usize) -> Vec<usize> {
        let mut hits: Vec<(f32, u32)> = self
            .engine
            .search(query, None)
            .into_iter()
            .map(|r| (r.score, r.document.id))
            .collect();
        hits.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        hits.into_iter()
            .take(k)
            .map(|(_, id)| id as usize)
            .collect()
    }
}

/// A corpus cut into passages and indexed: gives questions their documents.
pub struct Retriever {
    paragraphs: Vec<Document>,
    index: Index,
    chunk_tokens: usize,
}

impl Retriever {
    /// Indexes `paragraphs` (repeats dropped) in passages of at most `chunk_tokens` tokens.
    pub fn new(
        paragraphs: Vec<Document>,
        tokenizer: &Tokenizer,
        chunk_tokens: usize,
    ) -> anyhow::Result<Self> {
        let mut seen = HashSet::new();
        let paragraphs: Vec<Document> = paragraphs
            .into_iter()
            .filter(|p| !p.text.trim().is_empty() && seen.insert(p.clone()))
            .collect();
        if paragraphs.is_empty() {
            anyhow::bail!("the corpus holds no text");
        }
        let index = Index::new(passages(&paragraphs, tokenizer, chunk_tokens)?);
        Ok(Self {
            paragraphs,
            index,
            chunk_tokens,
        })
    }

    pub fn paragraphs(&self) -> usize {
        self.paragraphs.len()
    }

    pub fn passages(&self) -> usize {
        self.index.passages.len()
    }

    /// Replaces each example's documents with its `k` best passages and counts recall@k
    /// against the documents it came with, calling `on_question` after each question.
    /// Questions that share no word with any passage are dropped (counted in
    /// `Recall::without_passages`).
    pub fn attach<'a>(
        &self,
        k: usize,
        sides: impl IntoIterator<Item = &'a mut Vec<Example>>,
        mut on_question: impl FnMut(),
    ) -> Recall {
        let by_document: HashMap<&Document, usize> = self
            .paragraphs
            .iter()
            .enumerate()
            .map(|(i, d)| (d, i))
            .collect();
        let mut recall = Recall::default();
        for side in sides.into_iter() {
            for ex in side.iter_mut() {
                let gold = gold_paragraphs(ex, &self.paragraphs, &by_document);
                let top: Vec<&Passage> = self
                    .index
                    .top(&ex.question, k)
                    .into_iter()
                    .map(|i| &self.index.passages[i])
                    .collect();
                recall.add(&gold, &top, &ex.answers);
                ex.documents = top.iter().map(|p| p.document.clone()).collect();
                on_question();
            }
            let before = side.len();
            side.retain(|ex| !ex.documents.is_empty());
            recall.without_passages += before - side.len();
        }
        recall
    }

    /// The retrieval report: corpus size and recall@k per dataset (or dataset and side), as
    /// JSON.
    pub fn report(&self, recall: &[(String, usize, Recall)]) -> String {
        let datasets: serde_json::Map<String, serde_json::Value> = recall
            .iter()
            .map(|(d, k, r)| {
                let mut v = serde_json::to_value(r).expect("plain struct");
                v["top_k"] = serde_json::json!(k);
                v["gold_recall"] = serde_json::json!(r.gold_recall());
                v["all_gold_recall"] = serde_json::json!(r.all_gold_recall());
                v["answer_recall"] = serde_json::json!(r.answer_recall());
                (d.clone(), v)
            })
            .collect();
        serde_json::to_string_pretty(&serde_json::json!({
            "retriever": "bm25",
            "paragraphs": self.paragraphs.len(),
            "passages": self.index.passages.len(),
            "chunk_tokens": self.chunk_tokens,
            "datasets": datasets,
        }))
        .expect("JSON values")
    }
}

/// The corpus paragraphs that answer `example`, where known: its HotpotQA supporting titles,
/// or its own (SQuAD: source) paragraph found in the corpus.
pub fn gold_paragraphs(
    example: &Example,
    paragraphs: &[Document],
    by_document: &HashMap<&Document, usize>,
) -> HashSet<usize> {
    if !example.supporting_titles.is_empty() {
        let titles: HashSet<&str> = example
            .supporting_titles
            .iter()
            .map(String::as_str)
            .collect();
        return (0..paragraphs.len())
            .filter(|&i| titles.contains(paragraphs[i].title.as_str()))
            .collect();
    }
    example
        .documents
        .iter()
        .filter_map(|d| by_document.get(d).copied())
        .collect()
}

/// Whether a passage holds one of the answers (normalised as for exact match).
pub fn holds_answer(passage: &Document, answers: &[String]) -> bool {
    let text = format!(" {} ", normalize_answer(&passage.text));
    answers
        .iter()
        .map(|a| normalize_answer(a))
        .filter(|a| !a.is_empty())
        .any(|a| text.contains(&format!(" {a} ")))
}

/// Recall@K counts of one dataset.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct Recall {
    pub questions: usize,
    /// Questions whose gold paragraph is known.
    pub with_gold: usize,
    /// ... of which one gold passage is among the top K.
    pub gold_found: usize,
    /// ... of which every gold paragraph (both HotpotQA supporting titles) has a passage
    /// among the top K.
    pub all_gold_found: usize,
    /// Questions with an answer string in one of the top K passages.
    pub answer_found: usize,
    /// Questions that no passage shares a word with (left out of the written files).
    pub without_passages: usize,
}

impl Recall {
    pub fn add(&mut self, gold: &HashSet<usize>, retrieved: &[&Passage], answers: &[String]) {
        self.questions += 1;
        if !gold.is_empty() {
            self.with_gold += 1;
            let found: HashSet<usize> = retrieved.iter().map(|p| p.paragraph).collect();
            if !found.is_disjoint(gold) {
                self.gold_found += 1;
            }
            if found.is_superset(gold) {
                self.all_gold_found += 1;
            }
        }
        if retrieved.iter().any(|p| holds_answer(&p.document, answers)) {
            self.answer_found += 1;
        }
    }

    /// Share of questions whose gold passage was retrieved (None without gold labels).
    pub fn gold_recall(&self) -> Option<f64> {
        (self.with_gold > 0).then(|| self.gold_found as f64 / self.with_gold as f64)
    }

    /// Share of questions with all their gold paragraphs retrieved.
    pub fn all_gold_recall(&self) -> Option<f64> {
        (self.with_gold > 0).then(|| self.all_gold_found as f64 / self.with_gold as f64)
    }

    pub fn answer_recall(&self) -> f64 {
        self.answer_found as f64 / self.questions.max(1) as f64
    }

    /// One line for the terminal.
    pub fn summary(&self, k: usize) -> String {
        let gold = match self.gold_recall() {
            Some(r) => format!(
                "gold passage in the top {k} for {:.1} % of {} questions (all gold paragraphs: \
                 {:.1} %)",
                100.0 * r,
                self.with_gold,
                100.0 * self.all_gold_recall().unwrap_or(0.0)
            ),
            None => "no gold passages known".into(),
        };
        let mut line = format!(
            "{gold}; an answer string in the top {k} for {:.1} % of {}",
            100.0 * self.answer_recall(),
            self.questions
        );
        if self.without_passages > 0 {
            line += &format!(
                "; {} left out (no passage shares a word with them)",
                self.without_passages
            );
        }
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use scaledown_model::tokenizer::word_level_json;

    fn doc(title: &str, text: &str) -> Document {
        Document {
            title: title.into(),
            text: text.into(),
        }
    }

    fn corpus() -> Vec<Document> {
        vec![
            doc(
                "Paris",
                "Paris is the capital of France. The Eiffel Tower stands on the Champ de Mars.",
            ),
            doc(
                "Danube",
                "The Danube flows through Vienna, Budapest and Belgrade to the Black Sea.",
            ),
            doc(
                "Photosynthesis",
                "Plants turn light, water and carbon dioxide into sugar and oxygen.",
            ),
        ]
    }

    fn tokenizer(paragraphs: &[Document]) -> Tokenizer {
        let words: Vec<String> = paragraphs
            .iter()
            .flat_map(|p| scaledown_model::tokenizer::words_of(&p.text))
            .collect();
        Tokenizer::from_json(word_level_json(words.iter().map(String::as_str)).as_bytes()).unwrap()
    }

    #[test]
    fn windows_cover_each_paragraph_once_and_keep_titles() {
        let paragraphs = corpus();
        let tok = tokenizer(&paragraphs);
        let ps = passages(&paragraphs, &tok, 6).unwrap();
        for (i, p) in paragraphs.iter().enumerate() {
            let windows: Vec<&Passage> = ps.iter().filter(|w| w.paragraph == i).collect();
            assert!(windows.len() > 1, "{} was not cut", p.title);
            assert!(windows.iter().all(|w| w.document.title == p.title));
            for w in &windows {
                let text = document_text(&w.document.title, &w.document.text);
                let n = tok.encode(&text).unwrap().len();
                assert!(n <= 6, "{n} tokens with the title in {text:?}");
            }
            let joined: Vec<String> = windows
                .iter()
                .flat_map(|w| scaledown_model::tokenizer::words_of(&w.document.text))
                .collect();
            assert_eq!(joined, scaledown_model::tokenizer::words_of(&p.text));
        }
    }

    #[test]
    fn retrieval_finds_the_passage_that_answers() {
        let paragraphs = corpus();
        let ps = passages(&paragraphs, &tokenizer(&paragraphs), 8).unwrap();
        let index = Index::new(ps);
        let top = index.top("Which river flows through Budapest?", 2);
        let best = &index.passages[top[0]];
        assert_eq!(best.document.title, "Danube");
        assert!(best.document.text.contains("Budapest"), "{best:?}");
        let top = index.top("what do plants make from carbon dioxide", 1);
        assert_eq!(index.passages[top[0]].document.title, "Photosynthesis");
        assert!(index.top("zebra", 3).is_empty());
    }

    #[test]
    fn recall_counts_gold_titles_source_paragraphs_and_answers() {
        let paragraphs = corpus();
        let by_document: HashMap<&Document, usize> =
            paragraphs.iter().enumerate().map(|(i, d)| (d, i)).collect();
        let squad = Example {
            id: "s".into(),
            dataset: "squad".into(),
            question: "What is the capital of France?".into(),
            documents: vec![paragraphs[0].clone()],
            answers: vec!["Paris".into()],
            supporting_titles: vec![],
            teacher_answer: None,
        };
        let hotpot = Example {
            id: "h".into(),
            dataset: "hotpot_qa".into(),
            supporting_titles: vec!["Danube".into()],
            teacher_answer: None,
            ..squad.clone()
        };
        assert_eq!(
            gold_paragraphs(&squad, &paragraphs, &by_document),
            HashSet::from([0])
        );
        assert_eq!(
            gold_paragraphs(&hotpot, &paragraphs, &by_document),
            HashSet::from([1])
        );
        let p = |i: usize| Passage {
            document: paragraphs[i].clone(),
            paragraph: i,
        };
        let mut r = Recall::default();
        r.add(&HashSet::from([0]), &[&p(1), &p(0)], &squad.answers);
        r.add(&HashSet::from([1]), &[&p(2)], &["the Black Sea".into()]);
        r.add(&HashSet::new(), &[&p(1)], &["black sea".into()]);
        r.add(&HashSet::from([0, 1]), &[&p(1), &p(2)], &["x".into()]);
        assert_eq!(
            (r.questions, r.with_gold, r.gold_found, r.all_gold_found),
            (4, 3, 2, 1)
        );
        assert_eq!(r.gold_recall(), Some(2.0 / 3.0));
        // "Paris" is in passage 0 and "black sea" (normalised) in passage 1.
        assert_eq!(r.answer_found, 2);
        assert!(
            !holds_answer(&paragraphs[0], &["Par".into()]),
            "whole words only"
        );
    }
}
