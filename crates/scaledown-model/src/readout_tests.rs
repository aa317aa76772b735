//! The pooled readout on tiny random configs: what a memory vector is, where it enters the
//! generator, and that batching, caching, training and checkpoints keep it.

use crate::checkpoint::{load_trainable, trainable_to_safetensors};
use crate::compressor::{Backbone, ChunkInput, CompressorConfig, CompressorType, Readout};
use crate::encoder::Encoder;
use crate::example::{Encoded, ids_tensor};
use crate::generation::{GenerationConfig, PrefixCache, argmax};
use crate::llama::{Inserted, KvCache, LlamaConfig};
use crate::modernbert::ModernBertConfig;
use crate::oscar::Oscar;
use crate::oscar_tests::{loss_of, memory_of_each_chunk_alone};
use crate::tiny::{self, example, oscar_over, oscar_with_encoder, settings};
use crate::training::Trainer;
use burn::prelude::*;
use burn::tensor::read_sync;

fn pooled(compressor_type: CompressorType) -> CompressorConfig {
    tiny::compressor_config(compressor_type, Readout::Pooled)
}

fn tiny_pooled(compressor_type: CompressorType, seed: u64) -> Oscar {
    tiny::oscar(&pooled(compressor_type), seed)
}

fn max_diff<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
    (a - b).abs().max().into_scalar()
}

/// One chunk: a query of 2 tokens, then 6 document tokens.
fn query_of_2_then_6_document_tokens() -> Encoded {
    Encoded {
        chunks: vec![vec![1, 2, 3, 4, 5, 6, 7, 8]],
        query_tokens: 2,
        chunk_documents: vec![0],
        ..example().encoded
    }
}

/// The states `[n, 64]` of a tiny n_layers compressor's one copied layer over `tokens` alone.
fn copied_layer_states(model: &Oscar, tokens: &[u32]) -> Tensor<2> {
    let Backbone::Decoder(stack) = &model.compressor.backbone else {
        unreachable!("n_layers")
    };
    let x = model.generator.embed(ids_tensor(tokens, &Device::flex()));
    let step = crate::llama::LayerStep {
        rope: &stack.rope,
        start: 0,
        positions: None,
        layer: 0,
        cache: &mut KvCache::new(1),
    };
    stack.layers[0]
        .forward(x, step, None)
        .reshape([tokens.len(), 64])
}

/// A fresh compressor: its scorer is zero, every token of a segment weighs the same.
#[test]
fn a_pooled_vector_is_the_mean_of_its_segments_layer_k_states() {
    let model = tiny_pooled(CompressorType::NLayers, 2).for_inference();
    assert_eq!(model.compressor.memory_layer, 1, "after the copied layer");
    assert!(model.compressor.memory.is_none() && model.compressor.projector.is_none());
    // Segments of 4 (rate 4) hold 4 and 2 of the 6 document tokens.
    let encoded = query_of_2_then_6_document_tokens();
    let memory = model.memory_vectors(&encoded);
    assert_eq!(
        memory.dims(),
        [2, 64],
        "one vector per 4 tokens, a short last one"
    );
    assert_eq!(encoded.memory_vectors(&pooled(CompressorType::NLayers)), 2);
    let states = copied_layer_states(&model, &encoded.chunks[0]);
    let mean = |r: std::ops::Range<usize>| states.clone().slice([r, 0..64]).mean_dim(0);
    let expected = Tensor::cat(vec![mean(2..6), mean(6..8)], 0);
    let err = max_diff(memory, expected);
    assert!(err < 1e-5, "{err}");
}

/// With a trained scorer a segment's vector is the softmax-weighted mean of its states, its
/// scores scaled by the setup's factor (16 here, not the tiny config's), and the chunks of a
/// batch or of one row still equal each chunk alone.
#[test]
fn a_scored_segment_weighs_its_states_by_the_softmax_of_their_scores() {
    let factor = 16.0;
    assert_ne!(factor, pooled(CompressorType::NLayers).pool_score_scale);
    let config = CompressorConfig {
        pool_score_scale: factor,
        ..pooled(CompressorType::NLayers)
    };
    let mut model = tiny::oscar(&config, 2);
    let device = Device::flex();
    device.seed(11);
    let w = Tensor::<1>::random([64], burn::tensor::Distribution::Normal(0.0, 0.5), &device);
    model.compressor.pool_scorer = Some(burn::module::Param::from_tensor(w.clone()));
    let model = model.for_inference();
    let encoded = query_of_2_then_6_document_tokens();
    let memory = model.memory_vectors(&encoded);
    let states = copied_layer_states(&model, &encoded.chunks[0]);
    let normed = states.clone() / (states.clone().powf_scalar(2.0).mean_dim(1) + 1e-6).sqrt();
    let scores = normed
        .matmul(w.reshape([64, 1]))
        .mul_scalar(factor)
        .reshape([1, 8]);
    let pool = |r: std::ops::Range<usize>| {
        let weights = burn::tensor::activation::softmax(scores.clone().slice([0..1, r.clone()]), 1);
        weights.matmul(states.clone().slice([r, 0..64]))
    };
    let expected = Tensor::cat(vec![pool(2..6), pool(6..8)], 0);
    let plain = Tensor::cat(
        vec![
            states.clone().slice([2..6, 0..64]).mean_dim(0),
            states.clone().slice([6..8, 0..64]).mean_dim(0),
        ],
        0,
    );
    assert!(
        max_diff(memory.clone(), plain) > 1e-3,
        "the scorer changes the vectors"
    );
    let err = max_diff(memory, expected);
    assert!(err < 1e-5, "{err}");

    let encoded = Encoded {
        chunks: vec![vec![1, 2, 3, 4, 5, 6], vec![1, 2, 7], vec![9, 8, 7, 6, 5]],
        query_tokens: 1,
        chunk_documents: vec![0, 0, 1],
        ..example().encoded
    };
    let diff = max_diff(
        model.memory_vectors(&encoded),
        memory_of_each_chunk_alone(&model, &encoded),
    );
    assert!(diff < 1e-5, "batched differs by {diff}");
}

#[test]
fn pooled_chunks_in_one_padded_batch_equal_chunks_alone() {
    for compressor_type in [CompressorType::NLayers, CompressorType::Encoder] {
        let model = tiny_pooled(compressor_type, 3).for_inference();
        let encoded = Encoded {
            chunks: vec![vec![1, 2, 3, 4, 5, 6], vec![1, 2, 7], vec![9, 8, 7, 6, 5]],
            query_tokens: 1,
            chunk_documents: vec![0, 0, 1],
            ..example().encoded
        };
        let batched = model.memory_vectors(&encoded);
        let alone = memory_of_each_chunk_alone(&model, &encoded);
        // 5, 2 and 4 document tokens at rate 4: 2 + 1 + 1 vectors.
        assert_eq!(batched.dims(), [4, model.generator.hidden_size()]);
        let diff = max_diff(batched, alone);
        assert!(diff < 1e-5, "{compressor_type}: batched differs by {diff}");
    }
}

/// The generator's first k layers never see the memory positions: whatever the embeddings
/// hold there, every output is the same; the memory itself changes what follows it.
#[test]
fn memory_positions_skip_the_generators_first_k_layers() {
    let device = Device::flex();
    device.seed(8);
    let g = LlamaConfig::tiny(tiny::VOCAB).init(&device);
    let (before, m, after) = (3, 2, 4);
    let n = before + m + after;
    let slots: Vec<bool> = (0..n).map(|t| (before..before + m).contains(&t)).collect();
    let tokens = g.embed(ids_tensor(&[5, 6, 7, 0, 0, 8, 9, 10, 11], &device));
    let keep = Tensor::<1>::from_data(
        TensorData::new(
            slots
                .iter()
                .map(|&s| if s { 0.0f32 } else { 1.0 })
                .collect(),
            [n],
        ),
        &device,
    )
    .reshape([1, n, 1]);
    let tokens = tokens * keep.clone();
    let values = |seed| {
        device.seed(seed);
        Tensor::<3>::random(
            [1, n, 64],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &device,
        ) * (keep.clone().neg() + 1.0)
    };
    let run = |x: Tensor<3>, memory: Tensor<3>, layer: usize| {
        let inserted = Inserted {
            layer,
            values: memory,
            slots: slots.clone(),
        };
        g.forward_input(x, Some(inserted), &mut KvCache::new(2), None, |_, _| {})
    };
    let garbage = Tensor::<3>::random(
        [1, n, 64],
        burn::tensor::Distribution::Normal(0.0, 5.0),
        &device,
    ) * (keep.clone().neg() + 1.0);
    let real = run(tokens.clone(), values(1), 1);
    let with_garbage = run(tokens.clone() + garbage.clone(), values(1), 1);
    let err = max_diff(real.clone(), with_garbage);
    assert!(
        err < 1e-5,
        "layer 1 saw the memory positions' inputs: {err}"
    );
    // At the input (layer 0) the same garbage would be read.
    let at_input = run(tokens.clone(), values(1), 0);
    assert!(max_diff(at_input, run(tokens.clone() + garbage, values(1), 0)) > 1e-3);
    // Other memory, other outputs after it; the prefix does not see it.
    let other = run(tokens, values(2), 1);
    let tail = |t: Tensor<3>| t.slice([0..1, before + m..n, 0..64]);
    let head = |t: Tensor<3>| t.slice([0..1, 0..before, 0..64]);
    assert!(max_diff(tail(real.clone()), tail(other.clone())) > 1e-3);
    assert!(max_diff(head(real), head(other)) < 1e-6);
}

/// One prompt skips its memory run in the layers below k (no compute there); a batch of two
/// computes every position and masks the run: both give the same states, after a cached
/// prefix and in the decoding step that reads the cache afterwards.
#[test]
fn skipping_the_memory_run_below_layer_k_changes_no_state() {
    let device = Device::flex();
    device.seed(9);
    let mut config = LlamaConfig::tiny(tiny::VOCAB);
    config.num_hidden_layers = 3;
    let g = config.init(&device);
    let (before, m, after) = (2, 3, 4);
    let n = before + m + after;
    let slots: Vec<bool> = (0..n).map(|t| (before..before + m).contains(&t)).collect();
    let tokens = g.embed(ids_tensor(&[5, 6, 0, 0, 0, 8, 9, 10, 11], &device));
    let memory = Tensor::<3>::random(
        [1, n, 64],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        &device,
    );
    let keep: Vec<f32> = slots.iter().map(|&s| if s { 0.0 } else { 1.0 }).collect();
    let keep = Tensor::<1>::from_data(TensorData::new(keep, [n]), &device).reshape([1, n, 1]);
    let memory = memory * (keep.neg() + 1.0);
    let twice = |t: Tensor<3>| Tensor::cat(vec![t.clone(), t], 0);
    let prefix = g.embed(ids_tensor(&[3, 4, 7], &device));
    let next = g.embed(ids_tensor(&[12], &device));
    for layer in [1, 2] {
        // One prompt (the run skipped) and the same prompt twice (every position computed).
        let mut one = KvCache::new(3);
        let mut two = KvCache::new(3);
        g.forward_input(prefix.clone(), None, &mut one, None, |_, _| {});
        g.forward_input(twice(prefix.clone()), None, &mut two, None, |_, _| {});
        let inserted = |batch: usize, values: Tensor<3>| Inserted {
            layer,
            values,
            slots: slots.repeat(batch),
        };
        let a = g.forward_input(
            tokens.clone(),
            Some(inserted(1, memory.clone())),
            &mut one,
            None,
            |_, _| {},
        );
        let b = g.forward_input(
            twice(tokens.clone()),
            Some(inserted(2, twice(memory.clone()))),
            &mut two,
            None,
            |_, _| {},
        );
        let outside = |t: Tensor<3>| {
            Tensor::cat(
                vec![
                    t.clone().slice([0..1, 0..before, 0..64]),
                    t.slice([0..1, before + m..n, 0..64]),
                ],
                1,
            )
        };
        let err = max_diff(
            outside(a.clone()),
            outside(b.clone().slice([0..1, 0..n, 0..64])),
        );
        assert!(err < 1e-4, "layer {layer}: prompt states differ by {err}");
        // The memory positions themselves, from layer k on.
        let run = |t: Tensor<3>| t.slice([0..1, before..before + m, 0..64]);
        let err = max_diff(run(a), run(b.slice([0..1, 0..n, 0..64])));
        assert!(err < 1e-4, "layer {layer}: memory states differ by {err}");
        let a = g.forward_input(next.clone(), None, &mut one, None, |_, _| {});
        let b = g.forward_input(twice(next.clone()), None, &mut two, None, |_, _| {});
        let err = max_diff(a, b.slice([0..1, 0..1, 0..64]));
        assert!(
            err < 1e-4,
            "layer {layer}: the decoding step differs by {err}"
        );
    }
}

/// At rate 1 the memory is every document token's layer-k state, which the untrained
/// compressor (a copy of the generator's first k layers) computes as the generator would: with
/// nothing before the document, the generator's states at the memory positions are then the
/// full text's at the document's tokens, through RoPE positions that run on through the slots.
/// (The tokens after the memory differ: the generator's first k layers never see the memory.)
#[test]
fn at_rate_1_the_memory_positions_carry_the_full_texts_states() {
    let device = Device::flex();
    device.seed(11);
    let config = CompressorConfig {
        compression_rate: 1,
        num_memory_tokens: 6,
        ..pooled(CompressorType::NLayers)
    };
    let model = oscar_over(LlamaConfig::tiny(tiny::VOCAB).init(&device), &config).for_inference();
    let (document, after) = (vec![3u32, 9, 4, 17, 25, 6], vec![12u32, 13, 14]);
    let n = document.len();
    // Nothing before the memory, so that the compressor's positions are the generator's.
    let encoded = Encoded {
        chunks: vec![document.clone()],
        chunk_documents: vec![0],
        prefix: vec![],
        suffix: after.clone(),
        ..example().encoded
    };
    let memory = model.memory_vectors(&encoded);
    assert_eq!(memory.dims(), [n, 64]);
    let g = &model.generator;
    let layers = g.layers.len();
    let prompt = model.prompt_around(&encoded, memory, &[]);
    let compressed = g.forward_prompt(prompt, &mut KvCache::new(layers));
    let full_ids = [document.as_slice(), after.as_slice()].concat();
    let full = g.forward_embeds(
        g.embed(ids_tensor(&full_ids, &device)),
        &mut KvCache::new(layers),
        None,
        |_, _| {},
    );
    let at = |t: Tensor<3>, r: std::ops::Range<usize>| t.slice([0..1, r, 0..64]);
    let err = max_diff(at(compressed.clone(), 0..n), at(full.clone(), 0..n));
    assert!(
        err < 1e-4,
        "memory positions differ from the full text by {err}"
    );
    let tail = max_diff(at(compressed, n..n + 3), at(full, n..n + 3));
    assert!(
        tail > 1e-3,
        "the tokens after the memory read it only above layer k"
    );
}

/// Greedy answers decoded with the KV cache (the memory positions have placeholder keys in
/// the first k layers, hidden from every later token) equal the argmax of one uncached pass
/// over the prompt and the answer; after a cached prefix and in a padded batch too.
#[test]
fn cached_pooled_generation_equals_uncached() {
    let model = tiny_pooled(CompressorType::NLayers, 5).for_inference();
    let device = Device::flex();
    let config = GenerationConfig {
        max_new_tokens: 6,
        ..Default::default()
    };
    let questions = crate::tiny::questions_of_1_2_3_chunks(|c| vec![1, 2, 3 + c, 9, 4, 5]);
    let prefix = PrefixCache::new(&model.generator, &questions[0].prefix, &device);
    let mut alone = Vec::new();
    for e in &questions {
        let cached = read_sync(model.answer(e, &[], &config)).unwrap();
        let logits = read_sync(model.answer_logits(e, &cached)).unwrap();
        let rows: Vec<f32> = logits.into_data().iter::<f32>().collect();
        let uncached: Vec<u32> = rows.chunks(40).take(cached.len()).map(argmax).collect();
        assert_eq!(cached, uncached);
        let after_prefix = read_sync(model.answer_after(&prefix, e, &[], &config)).unwrap();
        assert_eq!(after_prefix, cached);
        alone.push(cached);
    }
    let batched = read_sync(model.answer_batch(&questions, &[], &config)).unwrap();
    assert_eq!(batched, alone);
}

#[test]
fn the_pooled_readout_trains_and_reloads() {
    for compressor_type in [CompressorType::NLayers, CompressorType::Encoder] {
        let device = Device::flex();
        device.seed(1);
        let generator = LlamaConfig::tiny(tiny::VOCAB).init(&device);
        let cfg = pooled(compressor_type);
        let mut model = oscar_over(generator.clone(), &cfg).train();
        let ex = example();
        let before = loss_of(&model, &ex);
        let mut trainer = Trainer::new(settings(40));
        for _ in 0..40 {
            let (m, stats) = read_sync(trainer.step(model, &[&ex, &ex]));
            model = m;
            stats.unwrap();
        }
        let after = loss_of(&model, &ex);
        assert!(
            after < 0.5 * before,
            "{compressor_type}: {before} -> {after}"
        );
        let scorer = |m: &Oscar| m.compressor.pool_scorer.as_ref().expect("pooled").val();
        let moved: f32 = scorer(&model).abs().max().into_scalar();
        assert!(
            moved > 0.0,
            "{compressor_type}: the scorer left its zero start"
        );
        let bytes = trainable_to_safetensors(&model);
        let reloaded = load_trainable(oscar_over(generator.clone(), &cfg), &bytes).unwrap();
        let again = loss_of(&reloaded, &ex);
        assert!((after - again).abs() < 1e-5, "{after} vs {again}");

        // A checkpoint written before the scorer existed loads with the zero start: plain means.
        let mut older = oscar_over(generator.clone(), &cfg);
        older.compressor.pool_scorer = None;
        let bytes = trainable_to_safetensors(&older);
        let loaded = load_trainable(oscar_over(generator, &cfg), &bytes).unwrap();
        let zero: f32 = scorer(&loaded).abs().max().into_scalar();
        assert_eq!(zero, 0.0, "{compressor_type}");
    }
}

/// A setup written before the scores' factor was recorded says its scorer trained with 4; a
/// setup written now records the measured factor of its rate.
#[test]
fn a_setup_records_its_scores_factor() {
    let before = r#"{"compressor_type": "n_layers", "num_layers": 20, "num_memory_tokens": 8,
        "compression_rate": 16, "readout": "pooled", "projector": false, "rerank": false}"#;
    let older: CompressorConfig = serde_json::from_str(before).unwrap();
    assert_eq!(older.pool_score_scale, 4.0);
    assert_eq!(CompressorConfig::default().pool_score_scale, 4.0);
    let now = CompressorConfig::oscar();
    assert_eq!(now.pool_score_scale, 16.0);
    let json = serde_json::to_string(&now).unwrap();
    let read: CompressorConfig = serde_json::from_str(&json).unwrap();
    assert_eq!(read, now);
}

/// ModernBERT behind the same encoder compressor (a local window shorter than the chunks):
/// a chunk's memory in a padded batch equals the lone chunk's, training lowers the loss, and
/// a checkpoint reloads the trained model.
#[test]
fn a_modernbert_encoder_batches_trains_and_reloads() {
    let device = Device::flex();
    device.seed(6);
    let generator = LlamaConfig::tiny(tiny::VOCAB).init(&device);
    let cfg = pooled(CompressorType::Encoder);
    let encoder = || Encoder::ModernBert(ModernBertConfig::tiny(40).init(&device));
    let model = oscar_with_encoder(generator.clone(), &cfg, encoder());
    let encoded = Encoded {
        chunks: vec![
            vec![1, 2, 3, 4, 5, 6, 7, 8, 9],
            vec![1, 2, 7],
            vec![9, 8, 7, 6, 5],
        ],
        query_tokens: 1,
        chunk_documents: vec![0, 0, 1],
        ..example().encoded
    };
    let inference = model.clone().for_inference();
    let batched = inference.memory_vectors(&encoded);
    let alone = memory_of_each_chunk_alone(&inference, &encoded);
    // 8, 2 and 4 document tokens at rate 4: 2 + 1 + 1 vectors.
    assert_eq!(batched.dims(), [4, inference.generator.hidden_size()]);
    let diff = max_diff(batched, alone);
    assert!(diff < 1e-5, "batched differs by {diff}");

    let mut model = model.train();
    let ex = example();
    let before = loss_of(&model, &ex);
    let mut trainer = Trainer::new(settings(40));
    for _ in 0..40 {
        let (m, stats) = read_sync(trainer.step(model, &[&ex, &ex]));
        model = m;
        stats.unwrap();
    }
    let after = loss_of(&model, &ex);
    assert!(after < 0.5 * before, "{before} -> {after}");
    let bytes = trainable_to_safetensors(&model);
    let reloaded = load_trainable(oscar_with_encoder(generator, &cfg, encoder()), &bytes).unwrap();
    let again = loss_of(&reloaded, &ex);
    assert!((after - again).abs() < 1e-5, "{after} vs {again}");
}

/// One question's chunks share its query: the decoder compressor runs it once and every chunk
/// after its cache, which must give each chunk's memory as if compressed whole and alone.
#[test]
fn one_questions_chunks_run_its_query_once_and_equal_each_chunk_alone() {
    for compressor_type in [CompressorType::NLayers, CompressorType::Encoder] {
        let models = [
            tiny_pooled(compressor_type, 4),
            crate::oscar_tests::tiny_oscar(compressor_type, 4),
        ];
        for model in models {
            let model = model.for_inference();
            let encoded = Encoded {
                chunks: vec![
                    vec![1, 2, 3, 4, 5, 6, 7],
                    vec![1, 2, 8, 9],
                    vec![1, 2, 5, 4, 3, 2, 1, 7, 7],
                ],
                query_tokens: 2,
                chunk_documents: vec![0, 0, 1],
                ..example().encoded
            };
            assert_eq!(encoded.shared_query(), Some(&[1u32, 2][..]));
            let alone = memory_of_each_chunk_alone(&model, &encoded);
            let shared = model.memory_vectors(&encoded);
            assert_eq!(shared.dims(), alone.dims());
            let diff = max_diff(shared, alone.clone());
            assert!(diff < 1e-5, "{compressor_type}: one row differs by {diff}");
            // Rows of at most 12 positions: the first two chunks share one, the third its own.
            let device = Device::flex();
            let embed = |ids: &[u32]| {
                model
                    .compressor
                    .embed(&model.generator, ids_tensor(ids, &device))
            };
            let pieces = encoded
                .chunks
                .iter()
                .map(|ids| ChunkInput {
                    embeds: embed(&ids[2..]),
                    document: 0..ids.len() - 2 - encoded.tail_tokens,
                })
                .collect();
            let rows = model
                .compressor
                .compress_in_rows(embed(&[1, 2]), pieces, 12);
            let diff = max_diff(rows.memory, alone);
            assert!(diff < 1e-5, "{compressor_type}: two rows differ by {diff}");
        }
    }
    let other_queries = Encoded {
        chunks: vec![vec![1, 2, 3], vec![1, 5, 3]],
        query_tokens: 2,
        ..example().encoded
    };
    assert_eq!(other_queries.shared_query(), None);
}

/// The answer's place is its first occurrence in the document tokens, across chunks, in any
/// of its spellings; an answer not in the documents has none.
#[test]
fn the_answer_span_is_its_first_occurrence_in_the_document_tokens() {
    // Document tokens: [1, 2, 3, 4, 5, 6] then [1, 2, 7, 8] (no query).
    let found = example().with_answer_span(&[vec![2, 7], vec![9], vec![5, 6]]);
    assert_eq!(found.answer_tokens, vec![4, 5]);
    let across = example().with_answer_span(&[vec![6, 1, 2]]);
    assert_eq!(across.answer_tokens, vec![5, 6, 7]);
    let missing = example().with_answer_span(&[vec![9], vec![]]);
    assert!(missing.answer_tokens.is_empty());
}

/// With the span loss alone the scorer learns to point at the answer's token: the token
/// scores' softmax puts most of its mass there.
#[test]
fn the_span_loss_points_the_scorer_at_the_answer() {
    let device = Device::flex();
    device.seed(3);
    let generator = LlamaConfig::tiny(tiny::VOCAB).init(&device);
    let cfg = pooled(CompressorType::NLayers);
    let mut model = oscar_over(generator, &cfg).train();
    let ex = example().with_answer_span(&[vec![7]]);
    assert_eq!(ex.answer_tokens, vec![8]);
    let share = |m: &Oscar| -> f32 {
        let c = m.compress_all(&[&ex.encoded]).pop().expect("one");
        let p = burn::tensor::activation::softmax(c.token_scores.expect("scorer"), 0);
        p.slice(8..9).into_scalar()
    };
    let before = share(&model);
    assert!(
        (before - 0.1).abs() < 1e-4,
        "uniform over 10 tokens: {before}"
    );
    let mut settings = settings(30);
    settings.loss = crate::oscar::LossWeights {
        span: 1.0,
        ..crate::oscar::LossWeights::ANSWER
    };
    let mut trainer = Trainer::new(settings);
    for _ in 0..30 {
        let (m, stats) = read_sync(trainer.step(model, &[&ex]));
        model = m;
        stats.unwrap();
    }
    let after = share(&model);
    assert!(after > 0.5, "{before} -> {after}");
}
