//! OSCAR's reranking head on a tiny random config: the reranking loss moves the scores
//! toward the teacher's order, and answers that keep the top documents read only theirs.

use crate::compressor::{CompressorConfig, CompressorType, Readout};
use crate::example::{Encoded, TrainExample};
use crate::generation::GenerationConfig;
use crate::llama::{Llama, LlamaConfig};
use crate::oscar::Oscar;
use crate::tiny;
use crate::training::{LossWeights, TrainSettings, Trainer};
use burn::module::Module;
use burn::prelude::*;
use burn::tensor::read_sync;

/// The tiny OSCAR with a reranking head.
fn reranking() -> CompressorConfig {
    CompressorConfig {
        rerank: true,
        ..tiny::compressor_config(CompressorType::NLayers, Readout::MemoryTokens)
    }
}

fn reranking_oscar(seed: u64) -> Oscar {
    tiny::oscar(&reranking(), seed)
}

/// A reranking OSCAR with fresh random compressor, head and adapters over `generator`.
fn reranking_oscar_over(generator: Llama) -> Oscar {
    tiny::oscar_over(generator, &reranking())
}

/// A question with `documents` one-chunk documents of different words.
fn encoded(documents: usize) -> Encoded {
    Encoded {
        query_tokens: 0,
        tail_tokens: 0,
        chunks: (0..documents)
            .map(|d| vec![1, 2, 5 + (d as u32 * 3) % 30, 6 + d as u32, 9])
            .collect(),
        prefix: vec![10, 11],
        suffix: vec![12, 13],
        document_tokens: 3 * documents,
        chunk_documents: (0..documents).collect(),
    }
}

/// `encoded` with only the chunks of the documents `keep`, in that order.
fn keeping(encoded: &Encoded, keep: &[usize]) -> Encoded {
    let (chunks, chunk_documents) = keep
        .iter()
        .flat_map(|&d| {
            encoded
                .chunks
                .iter()
                .zip(&encoded.chunk_documents)
                .filter(move |&(_, &c)| c == d)
        })
        .map(|(ids, &d)| (ids.clone(), d))
        .unzip();
    Encoded {
        chunks,
        chunk_documents,
        ..encoded.clone()
    }
}

fn argmax(v: &[f32]) -> usize {
    (0..v.len()).max_by(|&a, &b| v[a].total_cmp(&v[b])).unwrap()
}

#[test]
fn the_reranking_loss_puts_the_teachers_best_document_first() {
    let mut model = reranking_oscar(11).train();
    let e = encoded(4);
    let before = read_sync(model.valid().rank(&e)).unwrap().expect("a head");
    assert_eq!(before.len(), 4);
    // The teacher prefers the document that the untrained head scores lowest.
    let target = (0..4)
        .min_by(|&a, &b| before[a].total_cmp(&before[b]))
        .unwrap();
    assert_ne!(argmax(&before), target);
    let teacher: Vec<f32> = (0..4)
        .map(|d| if d == target { 1.0 } else { 0.0 })
        .collect();
    let ex = TrainExample::new(e.clone(), vec![20, 21, 2]).with_relevance(teacher);
    let mut trainer = Trainer::new(TrainSettings {
        compressor_lr: 3e-3,
        memory_lr: 3e-3,
        generator_lr: 3e-3,
        weight_decay: 0.0,
        warmup_steps: 1,
        total_steps: 40,
        max_grad_norm: 1.0,
        loss: LossWeights {
            rerank: 1.0,
            ..LossWeights::ANSWER
        },
    });
    for _ in 0..40 {
        let (m, stats) = read_sync(trainer.step(model, &[&ex]));
        model = m;
        stats.unwrap();
    }
    let after = read_sync(model.valid().rank(&e)).unwrap().unwrap();
    assert_eq!(argmax(&after), target, "before {before:?}, after {after:?}");
}

#[test]
fn ten_document_questions_train_and_answer_from_the_kept_top_documents() {
    let generator = LlamaConfig::tiny(tiny::VOCAB).init(&Device::flex());
    let mut model = reranking_oscar_over(generator.clone()).train();
    let examples: Vec<TrainExample> = (0..2)
        .map(|i| {
            TrainExample::new(encoded(10), vec![20 + i, 21, 2])
                .with_relevance((0..10).map(|d| d as f32 / 10.0).collect())
        })
        .collect();
    let mut trainer = Trainer::new(TrainSettings {
        compressor_lr: 1e-3,
        memory_lr: 1e-3,
        generator_lr: 1e-3,
        weight_decay: 0.0,
        warmup_steps: 1,
        total_steps: 2,
        max_grad_norm: 1.0,
        loss: LossWeights::OSCAR,
    });
    for _ in 0..2 {
        let (m, stats) = read_sync(trainer.step(model, &[&examples[0], &examples[1]]));
        model = m;
        assert!(stats.unwrap().loss.is_finite());
    }
    // The head is saved with the trainable weights and reloads.
    let e = encoded(10);
    let bytes = crate::checkpoint::trainable_to_safetensors(&model);
    let fresh = reranking_oscar_over(generator);
    let untrained = read_sync(fresh.rank(&e)).unwrap().unwrap();
    let reloaded = crate::checkpoint::load_trainable(fresh, &bytes).unwrap();
    let model = model.for_inference();
    let scores = read_sync(model.rank(&e)).unwrap().unwrap();
    assert_ne!(untrained, scores);
    assert_eq!(read_sync(reloaded.rank(&e)).unwrap().unwrap(), scores);
    let mut best: Vec<usize> = (0..10).collect();
    best.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let mut top5 = best[..5].to_vec();
    top5.sort();
    let config = GenerationConfig {
        max_new_tokens: 6,
        ..Default::default()
    };
    let all = read_sync(model.answer(&e, &[], &config)).unwrap();
    let from_top5 = read_sync(model.answer(&keeping(&e, &top5), &[], &config)).unwrap();
    let keep5 = GenerationConfig {
        keep_top: 5,
        ..config.clone()
    };
    let kept = read_sync(model.answer(&e, &[], &keep5)).unwrap();
    assert_eq!(kept, from_top5, "keep-top 5 reads the five best documents");
    let batched = read_sync(model.answer_batch(std::slice::from_ref(&e), &[], &keep5)).unwrap();
    assert_eq!(batched[0], from_top5);
    assert_eq!(all.len(), 6);
    // What the answer read: the five best documents' memory vectors, nothing else.
    let kept_memory = read_sync(model.answer_memory(&e, 5)).unwrap();
    let top5_memory = model.memory_vectors(&keeping(&e, &top5));
    assert_eq!(kept_memory.dims(), [5 * 2, model.generator.hidden_size()]);
    let diff: f32 = (kept_memory - top5_memory).abs().max().into_scalar();
    assert!(diff < 1e-5, "{diff}");
}
