//! The 90/10 train/eval split, without leakage: SQuAD questions are grouped by article, so
//! that no eval question's article is in the train file. Other datasets group by question.

use crate::schema::Example;

/// The article (SQuAD) or the question itself: the unit that must not straddle the split.
fn group_of(ex: &Example) -> &str {
    match (ex.dataset.as_str(), ex.documents.first()) {
        ("squad", Some(doc)) => &doc.title,
        _ => &ex.id,
    }
}

/// A small, portable PRNG (splitmix64), so that a seed gives the same split everywhere.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = (self.next() % (i as u64 + 1)) as usize;
            v.swap(i, j);
        }
    }
}

/// A seeded permutation of `0..n` (the training order of an epoch).
pub fn shuffled_indices(n: usize, seed: u64) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    SplitMix(seed).shuffle(&mut v);
    v
}

/// Picks `n` examples (all when fewer) and splits them 90/10 into (train, eval).
///
/// Groups are shuffled and dealt to the eval side until it holds a tenth of the pool, so eval
/// questions come from groups that train never sees; then each side is sampled down to its
/// share of `n`. Errors when the pool has a single group and cannot be split.
pub fn split_train_eval(
    examples: Vec<Example>,
    n: usize,
    seed: u64,
) -> Result<(Vec<Example>, Vec<Example>), String> {
    let mut rng = SplitMix(seed);
    let mut groups: Vec<(String, Vec<Example>)> = Vec::new();
    let mut index = std::collections::HashMap::new();
    for ex in examples {
        let key = group_of(&ex).to_string();
        let at = *index.entry(key.clone()).or_insert_with(|| {
            groups.push((key, Vec::new()));
            groups.len() - 1
        });
        groups[at].1.push(ex);
    }
    if groups.len() < 2 {
        return Err(format!(
            "all examples share one group (`{}`), so eval cannot be kept apart from train",
            groups.first().map(|g| g.0.as_str()).unwrap_or("")
        ));
    }
    rng.shuffle(&mut groups);
    let total: usize = groups.iter().map(|g| g.1.len()).sum();
    let n = n.min(total);
    let n_eval = (n / 10).max(1);
    let n_train = n - n_eval;

    let (mut train, mut eval) = (Vec::new(), Vec::new());
    for (_, members) in groups {
        if eval.len() * 10 < total {
            eval.extend(members);
        } else {
            train.extend(members);
        }
    }
    rng.shuffle(&mut train);
    rng.shuffle(&mut eval);
    train.truncate(n_train);
    eval.truncate(n_eval);
    if train.is_empty() {
        return Err("no examples left for training after the split".into());
    }
    Ok((train, eval))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::Document;
    use std::collections::HashSet;

    fn ex(i: usize, article: usize) -> Example {
        Example {
            id: format!("q{i}"),
            dataset: "squad".into(),
            question: "?".into(),
            documents: vec![Document {
                title: format!("article{article}"),
                text: "t".into(),
            }],
            answers: vec!["a".into()],
            supporting_titles: vec![],
            teacher_answer: None,
        }
    }

    #[test]
    fn squad_articles_do_not_leak_and_the_split_is_seeded() {
        let pool: Vec<Example> = (0..1000).map(|i| ex(i, i % 20)).collect();
        let (train, eval) = split_train_eval(pool.clone(), 200, 7).unwrap();
        assert_eq!((train.len(), eval.len()), (180, 20));
        let train_articles: HashSet<_> = train.iter().map(|e| &e.documents[0].title).collect();
        assert!(
            eval.iter()
                .all(|e| !train_articles.contains(&e.documents[0].title))
        );
        // Train draws from many articles, not the first one only.
        assert!(train_articles.len() > 5);
        let again = split_train_eval(pool.clone(), 200, 7).unwrap();
        assert_eq!(again.0, train);
        assert_ne!(split_train_eval(pool, 200, 8).unwrap().0, train);
    }

    #[test]
    fn one_article_cannot_be_split() {
        let pool: Vec<Example> = (0..10).map(|i| ex(i, 0)).collect();
        assert!(
            split_train_eval(pool, 10, 0)
                .unwrap_err()
                .contains("article0")
        );
    }
}
