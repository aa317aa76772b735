//! Answer metrics. Exact match and token F1 follow the official SQuAD v1.1 evaluation script
//! (`evaluate-v1.1.py`): normalise (lower case, drop ASCII punctuation, drop the words a/an/the,
//! collapse white space), compare bags of words, take the maximum over the gold answers.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Python's `string.punctuation`, which the official script removes.
const PUNCTUATION: &str = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";

/// `white_space_fix(remove_articles(remove_punc(lower(s))))` of the official script.
pub fn normalize_answer(s: &str) -> String {
    let no_punc: String = s
        .to_lowercase()
        .chars()
        .filter(|c| !PUNCTUATION.contains(*c))
        .collect();
    // `re.sub(r'\b(a|an|the)\b', ' ', text)`: a maximal run of word characters (Unicode
    // alphanumerics and `_`, as Python 3's `\w`) that is exactly an article becomes a space.
    let mut out = String::with_capacity(no_punc.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        if matches!(word.as_str(), "a" | "an" | "the") {
            out.push(' ');
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for c in no_punc.chars() {
        if c.is_alphanumeric() || c == '_' {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push(c);
        }
    }
    flush(&mut word, &mut out);
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn max_over<F: Fn(&str) -> f64>(golds: &[String], f: F) -> f64 {
    golds.iter().map(|g| f(g)).fold(0.0, f64::max)
}

/// 1.0 when the normalised prediction equals a normalised gold answer.
pub fn exact_match(prediction: &str, golds: &[String]) -> f64 {
    let p = normalize_answer(prediction);
    max_over(golds, |g| f64::from(u8::from(normalize_answer(g) == p)))
}

/// Bag-of-words F1 between normalised tokens, maximum over the gold answers.
pub fn token_f1(prediction: &str, golds: &[String]) -> f64 {
    let p = normalize_answer(prediction);
    let p: Vec<&str> = p.split_whitespace().collect();
    max_over(golds, |g| {
        let g = normalize_answer(g);
        let g: Vec<&str> = g.split_whitespace().collect();
        let mut counts: HashMap<&str, i64> = HashMap::new();
        for t in &g {
            *counts.entry(t).or_default() += 1;
        }
        let mut same = 0;
        for t in &p {
            if let Some(c) = counts.get_mut(t)
                && *c > 0
            {
                *c -= 1;
                same += 1;
            }
        }
        if same == 0 {
            return 0.0;
        }
        let precision = same as f64 / p.len() as f64;
        let recall = same as f64 / g.len() as f64;
        2.0 * precision * recall / (precision + recall)
    })
}

/// ROUGE-L F1 (longest common subsequence of lower-cased alphanumeric tokens, as the
/// `rouge-score` package tokenises), maximum over the gold answers.
pub fn rouge_l(prediction: &str, golds: &[String]) -> f64 {
    let tokens = |s: &str| -> Vec<String> {
        s.to_lowercase()
            .split(|c: char| !c.is_alphanumeric())
            .filter(|t| !t.is_empty())
            .map(str::to_string)
            .collect()
    };
    let p = tokens(prediction);
    max_over(golds, |g| {
        let g = tokens(g);
        if p.is_empty() || g.is_empty() {
            return 0.0;
        }
        let lcs = lcs_len(&p, &g) as f64;
        if lcs == 0.0 {
            return 0.0;
        }
        let (precision, recall) = (lcs / p.len() as f64, lcs / g.len() as f64);
        2.0 * precision * recall / (precision + recall)
    })
}

fn lcs_len(a: &[String], b: &[String]) -> usize {
    let mut row = vec![0usize; b.len() + 1];
    for x in a {
        let mut diag = 0;
        for (j, y) in b.iter().enumerate() {
            let up = row[j + 1];
            row[j + 1] = if x == y { diag + 1 } else { up.max(row[j]) };
            diag = up;
        }
    }
    row[b.len()]
}

/// OSCAR's match accuracy: 1.0 when a normalised gold answer occurs in the normalised
/// prediction. It does not punish the verbose answers of small generators.
pub fn match_accuracy(prediction: &str, golds: &[String]) -> f64 {
    let p = normalize_answer(prediction);
    max_over(golds, |g| {
        let g = normalize_answer(g);
        f64::from(u8::from(!g.is_empty() && p.contains(&g)))
    })
}

/// Reranking recall@m: the share of the relevant documents among the `m` best ranked.
/// `ranked` holds each document's relevance, best-ranked first; None when none is relevant.
pub fn recall_at(m: usize, ranked: &[bool]) -> Option<f64> {
    let relevant = ranked.iter().filter(|&&r| r).count();
    let found = ranked.iter().take(m).filter(|&&r| r).count();
    (relevant > 0).then(|| found as f64 / relevant as f64)
}

/// nDCG@k with binary relevance: the discounted gain of the ranking over that of the best
/// possible order of the same documents. None when none is relevant.
pub fn ndcg_at(k: usize, ranked: &[bool]) -> Option<f64> {
    let gain = |i: usize| 1.0 / (i as f64 + 2.0).log2();
    let dcg: f64 = (0..ranked.len().min(k))
        .filter(|&i| ranked[i])
        .map(gain)
        .sum();
    let relevant = ranked.iter().filter(|&&r| r).count();
    let ideal: f64 = (0..relevant.min(k)).map(gain).sum();
    (relevant > 0).then(|| dcg / ideal)
}

/// Mean scores over a set of predictions (each in [0, 1]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    pub exact_match: f64,
    pub f1: f64,
    pub rouge_l: f64,
    pub match_accuracy: f64,
}

impl Scores {
    pub fn of(prediction: &str, golds: &[String]) -> Self {
        Self {
            exact_match: exact_match(prediction, golds),
            f1: token_f1(prediction, golds),
            rouge_l: rouge_l(prediction, golds),
            match_accuracy: match_accuracy(prediction, golds),
        }
    }

    pub fn mean(all: &[Scores]) -> Self {
        let n = all.len().max(1) as f64;
        let sum = |f: fn(&Scores) -> f64| all.iter().map(f).sum::<f64>() / n;
        Self {
            exact_match: sum(|s| s.exact_match),
            f1: sum(|s| s.f1),
            rouge_l: sum(|s| s.rouge_l),
            match_accuracy: sum(|s| s.match_accuracy),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn golds(g: &[&str]) -> Vec<String> {
        g.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn normalisation_as_the_official_script() {
        assert_eq!(normalize_answer("The  Denver Broncos!"), "denver broncos");
        assert_eq!(normalize_answer("an apple, a pear"), "apple pear");
        // Articles inside words stay; punctuation is removed before articles are found.
        assert_eq!(normalize_answer("theatre (a) Anthem"), "theatre anthem");
        assert_eq!(normalize_answer("the–end"), "–end");
        assert_eq!(normalize_answer("Saint-Étienne's"), "saintétiennes");
        assert_eq!(normalize_answer("  "), "");
    }

    #[test]
    fn exact_match_and_f1_on_known_cases() {
        let g = golds(&["Denver Broncos", "The Denver Broncos"]);
        assert_eq!(exact_match("the denver broncos.", &g), 1.0);
        assert_eq!(exact_match("Broncos", &g), 0.0);
        // pred {broncos}, gold {denver, broncos}: p = 1, r = 1/2, F1 = 2/3.
        assert!((token_f1("Broncos", &g) - 2.0 / 3.0).abs() < 1e-12);
        // Duplicates count once per gold occurrence: pred {the->∅, 1 1 1}, gold {1}.
        assert!((token_f1("1 1 1", &golds(&["1"])) - 0.5).abs() < 1e-12);
        assert_eq!(token_f1("Carolina Panthers", &g), 0.0);
        assert_eq!(token_f1("", &g), 0.0);
        // The maximum over the golds is taken.
        let g2 = golds(&["Santa Clara", "Levi's Stadium in Santa Clara"]);
        assert!((token_f1("Santa Clara, California", &g2) - 0.8).abs() < 1e-12);
    }

    #[test]
    fn rouge_l_and_match() {
        // LCS of [denver, won, the, game] and [the, denver, broncos, won] = [denver, won].
        let r = rouge_l("Denver won the game", &golds(&["the Denver Broncos won"]));
        assert!((r - 0.5).abs() < 1e-12, "{r}");
        assert_eq!(rouge_l("x", &golds(&[""])), 0.0);
        let g = golds(&["Denver Broncos"]);
        assert_eq!(
            match_accuracy("It was the Denver Broncos who won.", &g),
            1.0
        );
        assert_eq!(match_accuracy("Denver", &g), 0.0);
        assert_eq!(match_accuracy("anything", &golds(&["the"])), 0.0);
    }

    #[test]
    fn ranking_recall_and_ndcg_on_known_cases() {
        let ranked = [false, true, false, true];
        assert_eq!(recall_at(1, &ranked), Some(0.0));
        assert_eq!(recall_at(2, &ranked), Some(0.5));
        assert_eq!(recall_at(4, &ranked), Some(1.0));
        assert_eq!(recall_at(3, &[false, false]), None);
        // DCG = 1/log2(3) + 1/log2(5); ideal = 1 + 1/log2(3).
        let expected = (1.0 / 3f64.log2() + 1.0 / 5f64.log2()) / (1.0 + 1.0 / 3f64.log2());
        assert!((ndcg_at(10, &ranked).unwrap() - expected).abs() < 1e-12);
        assert_eq!(ndcg_at(10, &[true, true, false]), Some(1.0));
        assert_eq!(ndcg_at(1, &[false, true]), Some(0.0));
        assert_eq!(ndcg_at(10, &[false]), None);
    }

    #[test]
    fn mean_of_scores() {
        let a = Scores::of("Denver Broncos", &golds(&["Denver Broncos"]));
        let b = Scores::of("nothing", &golds(&["Denver Broncos"]));
        let m = Scores::mean(&[a, b]);
        assert_eq!(m.exact_match, 0.5);
        assert_eq!(m.match_accuracy, 0.5);
        assert_eq!(Scores::mean(&[]), Scores::default());
    }
}
