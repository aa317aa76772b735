//! OSCAR on tiny random configs: the training step lowers the loss, LoRA leaves the base frozen,
//! checkpoints round-trip, a NaN loss stops the step.

use crate::checkpoint::{load_trainable, trainable_to_safetensors, with_path_param_ids};
use crate::compressor::{CompressorConfig, CompressorType, Readout};
use crate::example::{Encoded, TrainExample};
use crate::generation::GenerationConfig;
use crate::llama::LlamaConfig;
use crate::oscar::Oscar;
use crate::tiny::{self, example, settings};
use crate::training::{TrainError, TrainSettings, Trainer};
use burn::module::Module;
use burn::prelude::*;
use burn::tensor::read_sync;
use std::ops::ControlFlow;

/// The tiny OSCAR's memory-token readout (these tests' default).
pub(crate) fn config(compressor_type: CompressorType) -> CompressorConfig {
    tiny::compressor_config(compressor_type, Readout::MemoryTokens)
}

pub(crate) fn tiny_oscar(compressor_type: CompressorType, seed: u64) -> Oscar {
    tiny::oscar(&config(compressor_type), seed)
}

fn oscar_over(generator: crate::llama::Llama, compressor_type: CompressorType) -> Oscar {
    tiny::oscar_over(generator, &config(compressor_type))
}

/// Each chunk of `encoded` compressed on its own, the memory vectors concatenated: what
/// compressing them in one padded batch must give.
pub(crate) fn memory_of_each_chunk_alone(model: &Oscar, encoded: &Encoded) -> Tensor<2> {
    let alone = encoded.chunks.iter().map(|ids| {
        model.memory_vectors(&Encoded {
            chunks: vec![ids.clone()],
            chunk_documents: vec![0],
            ..encoded.clone()
        })
    });
    Tensor::cat(alone.collect(), 0)
}

pub(crate) fn loss_of(model: &Oscar, ex: &TrainExample) -> f32 {
    model.valid().answer_loss(&[ex]).into_scalar::<f32>()
}

#[test]
fn training_lowers_the_loss_for_both_compressors() {
    for kind in [CompressorType::NLayers, CompressorType::Encoder] {
        let mut model = tiny_oscar(kind, 1).train();
        let (a, b) = (example(), example());
        let batch = vec![&a, &b];
        let before = loss_of(&model, batch[0]);
        let mut trainer = Trainer::new(settings(40));
        for _ in 0..40 {
            let (m, stats) = read_sync(trainer.step(model, &batch));
            model = m;
            let stats = stats.unwrap();
            assert!(stats.grad_norm.is_finite());
        }
        let after = loss_of(&model, batch[0]);
        assert!(after < 0.5 * before, "{kind}: loss {before} -> {after}");
    }
}

#[test]
fn memory_tokens_and_projector_follow_their_own_learning_rate() {
    fn flat<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.inner().to_data().try_into_vec().unwrap()
    }
    let backbone = |m: &Oscar| match &m.compressor.backbone {
        crate::compressor::Backbone::Decoder(stack) => {
            flat(stack.layers[0].self_attn.q_proj.weight.val())
        }
        crate::compressor::Backbone::Encoder(_) => unreachable!("n_layers"),
    };
    let memory = |m: &Oscar| flat(m.compressor.memory.as_ref().unwrap().val());
    let projector = |m: &Oscar| flat(m.compressor.projector.as_ref().unwrap().fc1.weight.val());
    for (compressor_lr, memory_lr) in [(0.0, 3e-3), (3e-3, 0.0)] {
        let model = tiny_oscar(CompressorType::NLayers, 5).train();
        let before = (backbone(&model), memory(&model), projector(&model));
        let mut trainer = Trainer::new(TrainSettings {
            compressor_lr,
            memory_lr,
            ..settings(4)
        });
        let (model, stats) = read_sync(trainer.step(model, &[&example()]));
        stats.unwrap();
        let moved = |a: &Vec<f32>, b: &Vec<f32>| a != b;
        assert_eq!(moved(&backbone(&model), &before.0), compressor_lr > 0.0);
        assert_eq!(moved(&memory(&model), &before.1), memory_lr > 0.0);
        assert_eq!(moved(&projector(&model), &before.2), memory_lr > 0.0);
    }
}

#[test]
fn lora_trains_adapters_only_and_the_schedule_warms_up_then_decays() {
    let model = tiny_oscar(CompressorType::NLayers, 2).train();
    let q = |m: &Oscar| -> Vec<f32> {
        let w = m.generator.layers[0].self_attn.q_proj.weight.val().inner();
        w.to_data().try_into_vec().unwrap()
    };
    let embed = |m: &Oscar| -> Vec<f32> {
        let w = m.generator.embed_tokens.weight.val().inner();
        w.to_data().try_into_vec().unwrap()
    };
    let (q_before, embed_before) = (q(&model), embed(&model));
    let mut trainer = Trainer::new(settings(4));
    let (model, stats) = read_sync(trainer.step(model, &[&example()]));
    stats.unwrap();
    assert_eq!(q(&model), q_before, "the base weight is frozen");
    assert_eq!(embed(&model), embed_before, "embeddings are frozen");
    // The adapter's B factor starts at zero; one step moves it, and so the merged weight.
    let merged = model.for_inference().generator.layers[0]
        .self_attn
        .q_proj
        .weight
        .val();
    let merged: Vec<f32> = merged.to_data().try_into_vec().unwrap();
    assert_ne!(merged, q_before, "the merged weight moved");
    let adapter = model.generator.layers[0]
        .self_attn
        .q_proj
        .lora
        .as_ref()
        .unwrap();
    assert_eq!(adapter.a.dims(), [64, 4]);
    let b: Vec<f32> = adapter.b.val().inner().to_data().try_into_vec().unwrap();
    assert!(
        b.iter().any(|&v| v != 0.0),
        "the B factor (zero at the start) trained"
    );
    assert!((trainer.lr_factor(0) - 0.5).abs() < 1e-12);
    assert!((trainer.lr_factor(1) - 1.0).abs() < 1e-12);
    assert!((trainer.lr_factor(3) - 0.5).abs() < 1e-12);
    assert_eq!(trainer.lr_factor(4), 0.0);
}

#[test]
fn checkpoint_round_trip_and_refusals() {
    // The frozen generator is not in checkpoints: both sides share it, as they share its file.
    let generator = LlamaConfig::tiny(tiny::VOCAB).init(&Device::flex());
    let model = tiny::trained(oscar_over(generator.clone(), CompressorType::NLayers), 3);
    let bytes = trainable_to_safetensors(&model);
    // A fresh model with other random compressor weights gets the trained ones back.
    let fresh = oscar_over(generator.clone(), CompressorType::NLayers);
    assert_ne!(loss_of(&fresh, &example()), loss_of(&model, &example()));
    let reloaded = load_trainable(fresh, &bytes).unwrap();
    let (a, b) = (loss_of(&model, &example()), loss_of(&reloaded, &example()));
    assert!((a - b).abs() < 1e-5, "{a} vs {b}");

    // Another configuration refuses the file; so does garbage.
    let other = oscar_over(generator.clone(), CompressorType::Encoder);
    assert!(load_trainable(other, &bytes).is_err());
    let half = &bytes[..bytes.len() / 2];
    assert!(load_trainable(oscar_over(generator, CompressorType::NLayers), half).is_err());
}

/// A run stopped after 3 steps and resumed from its checkpoint (trained tensors and optimiser
/// state, in a model whose random parameter ids differ) takes the same steps as one that ran
/// through: the losses are bit-equal. Without the optimiser state they are not.
#[test]
fn a_resumed_trainer_takes_the_steps_of_an_uninterrupted_one() {
    let generator = LlamaConfig::tiny(tiny::VOCAB).init(&Device::flex());
    let (a, b) = (example(), example());
    let batch = [&a, &b];
    let steps = |model: Oscar, trainer: &mut Trainer, n: usize| {
        let mut model = model;
        let mut losses = vec![];
        for _ in 0..n {
            let (m, s) = read_sync(trainer.step(model, &batch));
            model = m;
            losses.push(s.unwrap().loss);
        }
        (model, losses)
    };
    Device::flex().seed(9);
    let start = with_path_param_ids(oscar_over(generator.clone(), CompressorType::NLayers));
    let (_, through) = steps(start.clone().train(), &mut Trainer::new(settings(6)), 6);

    let mut first = Trainer::new(settings(6));
    let (stopped, head) = steps(start.train(), &mut first, 3);
    assert_eq!(head, through[..3]);
    let (weights, optimizer) = (
        trainable_to_safetensors(&stopped),
        first.optimizer_state().unwrap(),
    );
    let resume = |with_state: bool| {
        let fresh = oscar_over(generator.clone(), CompressorType::NLayers);
        let model = with_path_param_ids(load_trainable(fresh, &weights).unwrap()).train();
        let mut trainer = Trainer::new(settings(6));
        trainer.step = 3;
        if with_state {
            trainer.load_optimizer_state(&optimizer).unwrap();
        }
        steps(model, &mut trainer, 3).1
    };
    assert_eq!(resume(true), through[3..]);
    assert_ne!(resume(false), through[3..]);

    // Bytes that are not such a file are refused, not a panic.
    let mut trainer = Trainer::new(settings(6));
    assert!(
        trainer
            .load_optimizer_state(&optimizer[..optimizer.len() / 2])
            .is_err()
    );
    assert!(trainer.load_optimizer_state(&weights).is_err());
}

#[test]
fn a_nan_loss_stops_the_step_and_keeps_the_model() {
    let mut model = tiny_oscar(CompressorType::NLayers, 4);
    let l = model.compressor.max_vectors;
    let d = model.generator.hidden_size();
    let memory = model.compressor.memory.take().unwrap();
    model.compressor.memory = Some(memory.map(|m| m.mul_scalar(f32::NAN)));
    assert_eq!(model.compressor.memory.as_ref().unwrap().dims(), [l, d]);
    let mut trainer = Trainer::new(settings(5));
    let (_, result) = read_sync(trainer.step(model.train(), &[&example()]));
    assert!(
        matches!(result, Err(TrainError::NonFinite { step: 1, .. })),
        "{result:?}"
    );
    assert_eq!(trainer.step, 0);
}

#[test]
fn compressed_generation_runs_and_stops() {
    let model = tiny_oscar(CompressorType::Encoder, 5);
    let cfg = GenerationConfig {
        max_new_tokens: 5,
        ..Default::default()
    };
    let out = read_sync(model.answer(&example().encoded, &[], &cfg)).unwrap();
    assert_eq!(out.len(), 5);
    assert!(out.iter().all(|&t| t < 40));
}

/// The fine-tuned ceiling's loss is the generator's own cross-entropy of the answer after the
/// uncompressed prompt, and training on it moves only the LoRA factors.
#[test]
fn full_text_examples_fine_tune_the_generator_alone() {
    let mut model = tiny_oscar(CompressorType::NLayers, 13).train();
    let prompt: Vec<u32> = vec![10, 11, 1, 2, 3, 4, 5, 6, 7, 8, 12, 13, 14];
    let ex = TrainExample {
        encoded: Encoded::full_text(prompt.clone()),
        ..example()
    };
    let a = ex.answer.len();
    let direct = {
        let g = &model.generator;
        let device = g.device();
        let ids = [prompt.as_slice(), &ex.answer[..a - 1]].concat();
        let n = ids.len();
        let mut cache = crate::llama::KvCache::new(g.layers.len());
        let hidden = g.forward_embeds(
            g.embed(crate::example::ids_tensor(&ids, &device)),
            &mut cache,
            None,
            |_, _| {},
        );
        let logits = g
            .logits(hidden.slice([0..1, n - a..n, 0..64]))
            .reshape([a, 40]);
        let log_probs = burn::tensor::activation::log_softmax(logits, 1);
        let rows: Vec<f32> = log_probs.into_data().iter::<f32>().collect();
        let picked: f32 = (0..a).map(|t| rows[t * 40 + ex.answer[t] as usize]).sum();
        -picked / a as f32
    };
    let loss = loss_of(&model, &ex);
    assert!((loss - direct).abs() < 1e-5, "{loss} vs {direct}");

    let memory = |m: &Oscar| -> Vec<f32> {
        m.compressor
            .memory
            .as_ref()
            .unwrap()
            .val()
            .inner()
            .to_data()
            .try_into_vec()
            .unwrap()
    };
    let memory_before = memory(&model);
    let mut trainer = Trainer::new(settings(30));
    for _ in 0..30 {
        let (m, stats) = read_sync(trainer.step(model, &[&ex]));
        model = m;
        stats.unwrap();
    }
    let after = loss_of(&model, &ex);
    assert!(after < 0.5 * loss, "loss {loss} -> {after}");
    assert_eq!(memory(&model), memory_before, "the compressor is not used");
}

#[test]
fn answer_logits_pick_the_greedy_answer_token_by_token() {
    let model = tiny_oscar(CompressorType::NLayers, 12);
    let encoded = example().encoded;
    let cfg = GenerationConfig {
        max_new_tokens: 4,
        ..Default::default()
    };
    let greedy = read_sync(model.answer(&encoded, &[], &cfg)).unwrap();
    let logits = read_sync(model.answer_logits(&encoded, &greedy)).unwrap();
    assert_eq!(logits.dims(), [5, 40]);
    let argmax: Vec<u32> = logits
        .argmax(1)
        .into_data()
        .iter::<i64>()
        .map(|t| t as u32)
        .collect();
    assert_eq!(&argmax[..4], &greedy[..]);
}

#[test]
fn the_n_layers_compressor_trains_its_own_copy_of_the_generator_layers() {
    let device = Device::flex();
    device.seed(6);
    let generator = LlamaConfig::tiny(tiny::VOCAB).init(&device);
    let model = Oscar::assemble(
        &config(CompressorType::NLayers),
        generator,
        None,
        None,
        &device,
    )
    .unwrap()
    .train();
    let weights = |m: &Oscar| -> (Vec<f32>, Vec<f32>) {
        let g = m.generator.layers[0].mlp.up_proj.weight.val().inner();
        let crate::compressor::Backbone::Decoder(stack) = &m.compressor.backbone else {
            unreachable!()
        };
        let c = stack.layers[0].mlp.up_proj.weight.val().inner();
        (
            g.to_data().try_into_vec().unwrap(),
            c.to_data().try_into_vec().unwrap(),
        )
    };
    let (gen_before, comp_before) = weights(&model);
    assert_eq!(
        gen_before, comp_before,
        "the copy starts from the generator's layer"
    );
    let mut trainer = Trainer::new(settings(4));
    let (model, stats) = read_sync(trainer.step(model, &[&example()]));
    stats.unwrap();
    let (gen_after, comp_after) = weights(&model);
    assert_eq!(gen_after, gen_before, "the frozen generator is untouched");
    assert_ne!(comp_after, comp_before, "the compressor's copy trains");
}

#[test]
fn chunks_compressed_in_one_padded_batch_equal_chunks_compressed_alone() {
    for compressor_type in [CompressorType::NLayers, CompressorType::Encoder] {
        let model = tiny_oscar(compressor_type, 3).for_inference();
        // Unequal lengths: the shorter chunks are padded after their memory tokens.
        let encoded = Encoded {
            chunks: vec![vec![1, 2, 3, 4, 5, 6], vec![1, 2, 7], vec![9, 8, 7, 6, 5]],
            chunk_documents: vec![0, 0, 1],
            ..example().encoded
        };
        let batched = model.memory_vectors(&encoded);
        let alone = memory_of_each_chunk_alone(&model, &encoded);
        assert_eq!(batched.dims(), [6, model.generator.hidden_size()]);
        let diff: f32 = (batched - alone).abs().max().into_scalar();
        assert!(diff < 1e-5, "{compressor_type}: batched differs by {diff}");
    }
}

#[test]
fn a_padded_batch_loss_is_the_mean_of_the_examples_losses() {
    for compressor_type in [CompressorType::NLayers, CompressorType::Encoder] {
        let model = tiny_oscar(compressor_type, 4).valid();
        let long = example();
        // Shorter prompt, fewer chunks and a longer answer: padded in both the compressor
        // and the generator batch.
        let short = TrainExample::new(
            Encoded {
                chunks: vec![vec![1, 9, 9]],
                chunk_documents: vec![0],
                suffix: vec![12],
                ..example().encoded
            },
            vec![25, 26, 27, 28, 29, 30],
        );
        let alone: Vec<f32> = [&long, &short]
            .iter()
            .map(|ex| loss_of(&model, ex))
            .collect();
        let batched: f32 = model.answer_loss(&[&long, &short]).into_scalar();
        let mean = (alone[0] + alone[1]) / 2.0;
        assert!(
            (batched - mean).abs() < 1e-4,
            "{compressor_type}: batched {batched}, examples alone {alone:?}"
        );
    }
}

#[test]
fn answers_after_a_cached_prefix_equal_answers_from_scratch() {
    use crate::generation::{PrefixCache, generate, generate_after};
    let model = tiny_oscar(CompressorType::NLayers, 5).for_inference();
    let device = Device::flex();
    let encoded = example().encoded;
    let config = GenerationConfig {
        max_new_tokens: 6,
        ..Default::default()
    };
    let prefix = PrefixCache::new(&model.generator, &encoded.prefix, &device);
    let scratch = read_sync(model.answer(&encoded, &[], &config)).unwrap();
    let cached = read_sync(model.answer_after(&prefix, &encoded, &[], &config)).unwrap();
    assert_eq!(scratch, cached);
    let prompt = [10, 11, 5, 6, 7];
    let g = &model.generator;
    let scratch = read_sync(generate(g, &prompt, &[], &config, &device)).unwrap();
    let cached = read_sync(generate_after(g, &prefix, &prompt, &[], &config, &device)).unwrap();
    assert_eq!(scratch, cached);
    // A prompt that is only the prefix, or does not start with it, falls back to a full prefill.
    for other in [&[10, 11][..], &[11, 10, 3][..]] {
        let a = read_sync(generate(g, other, &[], &config, &device)).unwrap();
        let b = read_sync(generate_after(g, &prefix, other, &[], &config, &device)).unwrap();
        assert_eq!(a, b);
    }
}

#[test]
fn a_padded_batch_answers_as_each_question_alone() {
    use crate::generation::{generate, generate_batch, generate_in_groups, prefill_groups};
    let model = tiny_oscar(CompressorType::NLayers, 9).for_inference();
    let device = Device::flex();
    let config = GenerationConfig {
        max_new_tokens: 5,
        ..Default::default()
    };
    // Compressed prompts of different lengths (1, 2 and 3 chunks); a stop token ends one row.
    let questions = tiny::questions_of_1_2_3_chunks(|c| vec![1, 2, 3 + c, 9]);
    let alone: Vec<Vec<u32>> = questions
        .iter()
        .map(|e| read_sync(model.answer(e, &[], &config)).unwrap())
        .collect();
    let stop = [alone[1][1]];
    let batched = read_sync(model.answer_batch(&questions, &stop, &config)).unwrap();
    for (b, a) in batched.iter().zip(&alone) {
        let until_stop = a
            .iter()
            .position(|t| stop.contains(t))
            .map_or(a.len(), |i| i + 1);
        assert_eq!(b, &a[..until_stop]);
    }
    // Token prompts of different lengths, prefilled as the CPU groups them (padded inside
    // a group, a group's cache moved on to the longest), all together, and each alone.
    let g = &model.generator;
    let prompts: [&[u32]; 6] = [
        &[5, 6, 7],
        &[8],
        &[9, 10, 11, 12, 13, 14],
        &[15, 16, 17, 18, 19],
        &[20, 21, 22, 23, 24, 25],
        &[26, 27, 28, 29, 30, 31, 32],
    ];
    let alone: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| read_sync(generate(g, p, &[], &config, &device)).unwrap())
        .collect();
    let embeds = || {
        prompts
            .iter()
            .map(|p| {
                crate::llama::PromptInput::tokens(g.embed(crate::example::ids_tensor(p, &device)))
            })
            .collect::<Vec<_>>()
    };
    let lens: Vec<usize> = prompts.iter().map(|p| p.len()).collect();
    let grouped = prefill_groups(&lens, true);
    assert!(grouped.iter().any(|g| g.len() > 1) && grouped.len() > 1);
    let stop = [alone[3][2]];
    for groups in [grouped, prefill_groups(&lens, false)] {
        let batched = read_sync(generate_in_groups(
            g,
            embeds(),
            groups.clone(),
            &stop,
            &config,
            |_, _| {},
        ))
        .unwrap();
        for (b, a) in batched.iter().zip(&alone) {
            let until_stop = a
                .iter()
                .position(|t| stop.contains(t))
                .map_or(a.len(), |i| i + 1);
            assert_eq!(b, &a[..until_stop], "groups {groups:?}");
        }
    }
    let batched = read_sync(generate_batch(g, embeds(), &[], &config)).unwrap();
    assert_eq!(batched, alone);
}

/// The one step loop: `after` sees every step in order, stops the run early when it breaks,
/// and a caller's error ends it; every example comes once per epoch.
#[test]
fn the_step_loop_calls_after_each_step_and_stops_when_told() {
    let examples: Vec<TrainExample> = (0..5).map(|_| example()).collect();
    let epoch: Vec<*const TrainExample> = (0..3)
        .flat_map(|s| crate::training::batch_at(&examples, s, 2, 9))
        .map(|e| e as *const _)
        .collect();
    let mut unique = epoch.clone();
    unique.sort();
    unique.dedup();
    assert_eq!((epoch.len(), unique.len()), (5, 5), "3 batches of 2, 2, 1");

    let model = tiny_oscar(CompressorType::NLayers, 4).train();
    let mut trainer = Trainer::new(settings(6));
    let mut seen = vec![];
    let (model, result) = read_sync(trainer.run(
        model,
        6,
        |s| crate::training::batch_at(&examples, s, 2, 9),
        async |t, _, batch, stats| -> Result<ControlFlow<()>, String> {
            seen.push((t.step, batch.len(), stats.loss.is_finite()));
            Ok(match t.step {
                4 => ControlFlow::Break(()),
                _ => ControlFlow::Continue(()),
            })
        },
    ));
    result.unwrap();
    let sizes: Vec<_> = seen.iter().map(|s| (s.0, s.1)).collect();
    assert_eq!(sizes, [(1, 2), (2, 2), (3, 1), (4, 2)]);
    assert!(seen.iter().all(|s| s.2));
    assert_eq!(trainer.step, 4);

    let (_, result) = read_sync(trainer.run(
        model,
        6,
        |s| crate::training::batch_at(&examples, s, 2, 9),
        async |_, _, _, _| -> Result<ControlFlow<()>, String> { Err("disk full".into()) },
    ));
    assert!(matches!(result, Err(crate::training::RunError::After(ref e)) if e == "disk full"));
    assert_eq!(trainer.step, 5, "the step ran; its caller failed after it");
}

/// The fine-tuned ceiling trains a generator alone: on a full-text example its loss is OSCAR's
/// for the same input (no memory vectors either way), its steps move only its LoRA, and the
/// loss falls.
#[test]
fn a_generator_alone_trains_on_full_text_as_oscar_would() {
    use crate::training::Trainable;
    let model = tiny_oscar(CompressorType::NLayers, 4);
    let full_text = TrainExample::new(
        Encoded::full_text(vec![10, 11, 1, 2, 3, 4, 5, 6, 12, 13, 14]),
        vec![20, 21, 22, 23],
    );
    let weights = crate::training::LossWeights::ANSWER;
    let generator = model.generator.clone();
    let (a, b) = (
        model.loss(&[&full_text], weights).into_scalar::<f32>(),
        generator.loss(&[&full_text], weights).into_scalar::<f32>(),
    );
    assert!((a - b).abs() < 1e-5, "{a} vs {b}");
    let base_before = generator.layers[0].mlp.down_proj.weight.val().into_data();
    let mut trainer = Trainer::new(settings(8));
    let mut g = generator.train();
    let first = g.loss(&[&full_text], weights).into_scalar::<f32>();
    for _ in 0..8 {
        let (m, stats) = read_sync(trainer.step(g, &[&full_text]));
        g = m;
        stats.unwrap();
    }
    let last = g.loss(&[&full_text], weights).into_scalar::<f32>();
    assert!(last < 0.5 * first, "{first} -> {last}");
    // The published weights stay as they were: only the adapters learn.
    assert_eq!(
        g.valid().layers[0].mlp.down_proj.weight.val().into_data(),
        base_before
    );
}
