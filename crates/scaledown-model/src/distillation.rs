//! Distillation from the uncompressed generator: its token distributions over the answer,
//! read from the full text, become soft targets for the compressed model (KL on the answer
//! tokens, up to the teacher's entropy, which does not depend on the student).

use crate::example::{TeacherTokens, TrainExample, ids_tensor};
use crate::llama::{KvCache, Llama};
use burn::prelude::*;
use burn::tensor::ExecutionError;
use burn::tensor::activation::softmax;

/// The generator's `k` most likely next tokens at each position of `answer`, teacher-forced
/// after `prompt` (the uncompressed prompt with the documents' full text).
pub async fn teacher_tokens(
    generator: &Llama,
    prompt: &[u32],
    answer: &[u32],
    k: usize,
) -> Result<TeacherTokens, ExecutionError> {
    let a = answer.len();
    if a == 0 {
        return Ok(vec![]);
    }
    let device = generator.device();
    let ids = [prompt, &answer[..a - 1]].concat();
    let n = ids.len();
    let mut cache = KvCache::new(generator.layers.len());
    let hidden = generator.forward_embeds(
        generator.embed(ids_tensor(&ids, &device)),
        &mut cache,
        None,
        |_, _| {},
    );
    let d = hidden.dims()[2];
    // Position t predicts token t + 1: the last `a` positions predict the answer.
    let logits = generator.logits(hidden.slice([0..1, n - a..n, 0..d]));
    let vocab = generator.vocab_size();
    let probs = softmax(logits.reshape([a, vocab]), 1);
    let values: Vec<f32> = probs.into_data_async().await?.iter::<f32>().collect();
    Ok(values.chunks(vocab).map(|row| top_k(row, k)).collect())
}

/// Cross-entropy of the answer positions' log-probabilities `[Σ answer tokens, vocab]` against
/// the teacher's top-k distributions, each renormalised over its k tokens: `[1]`, or None when
/// no example has teacher tokens.
pub(crate) fn soft_cross_entropy(
    log_probs: Tensor<2>,
    examples: &[&TrainExample],
    device: &Device,
) -> Option<Tensor<1>> {
    let k = examples
        .iter()
        .flat_map(|ex| ex.teacher_tokens.iter().map(Vec::len))
        .max()?;
    let total = log_probs.dims()[0];
    let (mut ids, mut probs) = (Vec::with_capacity(total * k), Vec::with_capacity(total * k));
    for ex in examples {
        let w = 1.0 / (ex.answer.len() * examples.len()) as f32;
        for t in 0..ex.answer.len() {
            // Positions without teacher tokens get weight 0 (token 0 is only a placeholder).
            let row = ex.teacher_tokens.get(t).map_or(&[][..], Vec::as_slice);
            let mass: f32 = row.iter().map(|&(_, p)| p).sum();
            for j in 0..k {
                let (id, p) = row.get(j).copied().unwrap_or((0, 0.0));
                ids.push(id as i64);
                probs.push(if mass > 0.0 { w * p / mass } else { 0.0 });
            }
        }
    }
    let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [total, k]), device);
    let probs = Tensor::<2>::from_data(TensorData::new(probs, [total, k]), device);
    Some((log_probs.gather(1, ids) * probs).sum().neg().reshape([1]))
}

/// The `k` largest entries of `row` as (index, value), largest first.
fn top_k(row: &[f32], k: usize) -> Vec<(u32, f32)> {
    let mut idx: Vec<u32> = (0..row.len() as u32).collect();
    let k = k.min(row.len());
    if k == 0 {
        return vec![];
    }
    idx.select_nth_unstable_by(k - 1, |&a, &b| row[b as usize].total_cmp(&row[a as usize]));
    idx.truncate(k);
    idx.sort_by(|&a, &b| row[b as usize].total_cmp(&row[a as usize]));
    idx.into_iter().map(|i| (i, row[i as usize])).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_keeps_the_largest_in_order() {
        let row = [0.1, 0.5, 0.05, 0.3, 0.05];
        assert_eq!(top_k(&row, 2), vec![(1, 0.5), (3, 0.3)]);
        assert_eq!(top_k(&row, 9).len(), 5);
        assert!(top_k(&row, 0).is_empty());
    }
}

#[cfg(test)]
mod loss_tests {
    use super::*;
    use crate::compressor::CompressorType;
    use crate::oscar_tests::tiny_oscar;
    use crate::tiny::example;
    use crate::training::LossWeights;
    use burn::module::Module;
    use burn::tensor::read_sync;

    #[test]
    fn teacher_tokens_are_the_generators_next_token_distribution() {
        let model = tiny_oscar(CompressorType::NLayers, 21).for_inference();
        let answer = [20, 21, 22];
        let all = read_sync(teacher_tokens(&model.generator, &[10, 11, 12], &answer, 40)).unwrap();
        assert_eq!(all.len(), 3);
        for row in &all {
            let mass: f32 = row.iter().map(|&(_, p)| p).sum();
            assert!(
                (mass - 1.0).abs() < 1e-4,
                "the whole vocabulary sums to 1: {mass}"
            );
            assert!(row.windows(2).all(|w| w[0].1 >= w[1].1), "largest first");
        }
        let top = read_sync(teacher_tokens(&model.generator, &[10, 11, 12], &answer, 4)).unwrap();
        assert_eq!(top[1], all[1][..4].to_vec());
    }

    #[test]
    fn a_one_hot_teacher_on_the_answer_doubles_the_answer_loss() {
        let model = tiny_oscar(CompressorType::NLayers, 22).valid();
        let plain: f32 = model.answer_loss(&[&example()]).into_scalar();
        // The teacher is certain of each gold token: its cross-entropy is the answer's own.
        let answer = example().answer;
        let ex = example()
            .with_teacher_tokens(answer.iter().map(|&t| vec![(t, 1.0), (5, 0.0)]).collect());
        let distill = LossWeights {
            distill: 1.0,
            ..LossWeights::ANSWER
        };
        let distilled: f32 = model.training_loss(&[&ex], distill).into_scalar();
        assert!(
            (distilled - 2.0 * plain).abs() < 1e-4,
            "{distilled} vs 2 × {plain}"
        );
        // Any other teacher gives another loss; weight 0 turns it off.
        let ex = example()
            .with_teacher_tokens(answer.iter().map(|_| vec![(7, 0.6), (8, 0.4)]).collect());
        let other: f32 = model.training_loss(&[&ex], distill).into_scalar();
        assert!((other - 2.0 * plain).abs() > 1e-3);
        let off: f32 = model
            .training_loss(&[&ex], LossWeights::ANSWER)
            .into_scalar();
        assert!((off - plain).abs() < 1e-6);
    }
}
