//! Parity of the real models with the PyTorch reference outputs in ../shared/reference
//! (transformers, float32). Tolerances: the 1e-3 absolute on logits and 1e-3 relative
//! on hidden-state norms, 1e-4 on MiniLM; f32 sums in another order differ by ~1e-6 relative
//! per layer, which stays well inside these over 30 layers.

mod common;

use common::*;
use scaledown_files::models;
use scaledown_model::burn::prelude::*;
use scaledown_model::burn::tensor::read_sync;
use scaledown_model::generation::{GenerationConfig, generate};
use scaledown_model::llama::KvCache;

fn check_smollm2(device: &Device, logit_tol: f32, norm_rel_tol: f32) {
    let reference = reference("smollm2_ref.json");
    let dir = models_dir();
    let g = models::load_generator(&models::default_generator(&dir), device).expect("load SmolLM2");
    assert_eq!(g.config.num_hidden_layers, 30);
    assert_eq!(g.config.num_key_value_heads, 3);
    for p in reference["prompts"].as_array().unwrap() {
        let name = p["name"].as_str().unwrap();
        let ids = g.tokenizer.encode(p["text"].as_str().unwrap()).unwrap();
        assert_eq!(ids, u32s(&p["input_ids"]), "{name}: token ids");

        let n = ids.len();
        let x = Tensor::<2, Int>::from_data(
            TensorData::new(ids.iter().map(|&i| i as i64).collect(), [1, n]),
            device,
        );
        let last_norm = |h: &Tensor<3>| {
            let d = h.dims()[2];
            let v: Vec<f32> = h
                .clone()
                .slice([0..1, n - 1..n, 0..d])
                .into_data()
                .try_into_vec::<f32>()
                .unwrap();
            v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt()
        };
        let mut norms = Vec::new();
        let mut cache = KvCache::new(g.model.layers.len());
        let hidden = g
            .model
            .forward_embeds(g.model.embed(x), &mut cache, None, |_, h| {
                norms.push(last_norm(h))
            });
        // HF replaces the last layer's output with the final-normed states.
        norms.pop();
        norms.push(last_norm(&hidden));
        let expected_norms = f32s(&p["hidden_norms_last_pos"]);
        assert_eq!(norms.len(), expected_norms.len());
        for (i, (got, want)) in norms.iter().zip(&expected_norms).enumerate() {
            let rel = (*got as f32 - want).abs() / want.abs();
            assert!(
                rel < norm_rel_tol,
                "{name}: hidden norm {i}: {got} vs {want} (rel {rel})"
            );
        }

        let d = hidden.dims()[2];
        let logits: Vec<f32> = g
            .model
            .logits(hidden.slice([0..1, n - 1..n, 0..d]))
            .into_data()
            .try_into_vec::<f32>()
            .unwrap();
        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
        let top: Vec<u32> = order[..20].iter().map(|&i| i as u32).collect();
        assert_eq!(top, u32s(&p["last_logits_top20_ids"]), "{name}: top-20 ids");
        for (id, want) in top.iter().zip(f32s(&p["last_logits_top20_values"])) {
            let got = logits[*id as usize];
            assert!(
                (got - want).abs() < logit_tol,
                "{name}: logit {id}: {got} vs {want}"
            );
        }

        let config = GenerationConfig {
            max_new_tokens: 24,
            ..Default::default()
        };
        let out = read_sync(generate(&g.model, &ids, &[2], &config, device)).unwrap();
        assert_eq!(out, u32s(&p["greedy_ids"]), "{name}: greedy continuation");
        assert_eq!(
            g.tokenizer.decode(&out, false),
            p["greedy_text"].as_str().unwrap()
        );
    }
}

fn check_minilm(device: &Device, tol: f32) {
    let reference = reference("minilm_ref.json");
    let dir = models_dir();
    let (bert, tokenizer) =
        models::load_encoder(&models::default_encoder(&dir), device).expect("load MiniLM");
    for s in reference["sentences"].as_array().unwrap() {
        let text = s["text"].as_str().unwrap();
        let ids = tokenizer.encode_with(text, true).unwrap();
        assert_eq!(ids, u32s(&s["input_ids"]), "{text}: token ids");
        let n = ids.len();
        let x = Tensor::<2, Int>::from_data(
            TensorData::new(ids.iter().map(|&i| i as i64).collect(), [1, n]),
            device,
        );
        let hidden = bert.forward(x.clone(), x.ones_like());
        let all: Vec<f32> = hidden.clone().into_data().try_into_vec::<f32>().unwrap();
        let l2 = all.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt() as f32;
        let want_l2 = s["last_hidden_state_l2"].as_f64().unwrap() as f32;
        assert!(
            (l2 - want_l2).abs() / want_l2 < tol,
            "{text}: hidden L2 {l2} vs {want_l2}"
        );
        for (i, want) in f32s(&s["last_hidden_state_tok0_first16"])
            .iter()
            .enumerate()
        {
            assert!(
                (all[i] - want).abs() < tol,
                "{text}: hidden[0,{i}] {} vs {want}",
                all[i]
            );
        }
        let emb: Vec<f32> = bert
            .sentence_embedding(&ids, device)
            .into_data()
            .try_into_vec::<f32>()
            .unwrap();
        let want = f32s(&s["embedding"]);
        assert_eq!(emb.len(), want.len());
        for (i, (g, w)) in emb.iter().zip(&want).enumerate() {
            assert!((g - w).abs() < tol, "{text}: embedding[{i}] {g} vs {w}");
        }
    }
}

#[test]
fn smollm2_matches_pytorch_on_flex() {
    check_smollm2(&Device::flex(), 1e-3, 1e-3);
}

/// Token ids by logit, best first.
fn best_first(logits: &[f32]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    order
}

/// The largest difference between `a` and `b` over the candidates: the first 20 of `order`
/// (the f32 model's top 20, as the f32 parity test checks).
fn top20_difference(order: &[usize], a: &[f32], b: &[f32]) -> f32 {
    order[..20]
        .iter()
        .map(|&i| (a[i] - b[i]).abs())
        .fold(0f32, f32::max)
}

/// Decoding steps on 4- and 8-bit weights (`with_decode_kernels`: what `ask`, `eval`, `serve` and
/// `bench` run on the CPU), fed PyTorch's greedy continuations token by token: their logits
/// (the f32 model's top 20) stay within `LOGIT_TOL` of the f32 model's, and they pick PyTorch's next token wherever
/// the f32 model's best two logits are further apart than twice that (the head's rounding may
/// only reorder near ties; the raw prompt's continuation has one, a made-up date's digits).
#[test]
fn smollm2_decodes_on_block_quantized_weights_as_pytorch_does() {
    const LOGIT_TOL: f32 = 0.15;
    let reference = reference("smollm2_ref.json");
    let device = Device::flex();
    let g = models::load_generator(&models::default_generator(&models_dir()), &device)
        .expect("load SmolLM2");
    let quantized = g.model.clone().with_decode_kernels();
    assert!(quantized.decode_head.is_some());
    let bits = |m: &Option<std::sync::Arc<scaledown_model::quant::BlockMatrix>>| {
        m.as_ref().expect("a decoding copy").bits()
    };
    // The file's Q4_1 layers are kept at 4 bits (exactly their values); its output head,
    // tied to the embeddings and not Q4_1, at 8.
    for layer in &quantized.layers {
        let (a, m) = (&layer.self_attn, &layer.mlp);
        for matrix in [
            &a.decode_qkv,
            &a.o_proj.decode,
            &m.decode_gate_up,
            &m.down_proj.decode,
        ] {
            assert_eq!(bits(matrix), 4);
        }
    }
    assert_eq!(bits(&quantized.decode_head), 8);
    let logits = |m: &scaledown_model::llama::Llama, ids: &[u32], cache: &mut KvCache| {
        let x = Tensor::<2, Int>::from_data(
            TensorData::new(ids.iter().map(|&i| i as i64).collect(), [1, ids.len()]),
            &device,
        );
        m.forward_last(x, cache)
            .into_data()
            .try_into_vec::<f32>()
            .unwrap()
    };
    let (mut steps, mut worst) = (0, 0f32);
    for p in reference["prompts"].as_array().unwrap() {
        let name = p["name"].as_str().unwrap();
        let prompt = g.tokenizer.encode(p["text"].as_str().unwrap()).unwrap();
        let greedy = u32s(&p["greedy_ids"]);
        let (mut f32_cache, mut q8_cache) = (KvCache::new(30), KvCache::new(30));
        logits(&g.model, &prompt, &mut f32_cache);
        logits(&quantized, &prompt, &mut q8_cache);
        for t in 1..greedy.len() {
            let exact = logits(&g.model, &greedy[t - 1..t], &mut f32_cache);
            let q8 = logits(&quantized, &greedy[t - 1..t], &mut q8_cache);
            let order = best_first(&exact);
            let diff = top20_difference(&order, &exact, &q8);
            worst = worst.max(diff);
            assert!(
                diff < LOGIT_TOL,
                "{name}, step {t}: logits differ by {diff}"
            );
            let margin = exact[order[0]] - exact[order[1]];
            let pick = order
                .iter()
                .copied()
                .max_by(|&a, &b| q8[a].total_cmp(&q8[b]))
                .unwrap();
            if margin > 2.0 * LOGIT_TOL {
                assert_eq!(pick as u32, greedy[t], "{name}, step {t}: margin {margin}");
            }
            steps += 1;
        }
    }
    println!("{steps} decoding steps, logits within {worst} of f32");

    // The model held in blocks only, as `generate` and `serve` load it: the same blocks at
    // every decoding step, and prompts longer than a step (the reference prompts joined) on
    // them too, through the dequantizing GEMM.
    let lean = models::load_generator_in_blocks(&models::default_generator(&models_dir()), &device)
        .expect("load SmolLM2 in blocks")
        .model;
    assert!(!lean.layers[0].self_attn.q_proj.is_dense());
    let joined: Vec<String> = reference["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["text"].as_str().unwrap().to_string())
        .collect();
    let prompt = g.tokenizer.encode(&joined.join(" ")).unwrap();
    assert!(prompt.len() > 16, "a prompt of {} tokens", prompt.len());
    let (mut f32_cache, mut lean_cache, mut q_cache) =
        (KvCache::new(30), KvCache::new(30), KvCache::new(30));
    let exact = logits(&g.model, &prompt, &mut f32_cache);
    let held = logits(&lean, &prompt, &mut lean_cache);
    logits(&quantized, &prompt, &mut q_cache);
    let order = best_first(&exact);
    let diff = top20_difference(&order, &exact, &held);
    assert!(
        diff < LOGIT_TOL,
        "a {}-token prompt in blocks: logits differ by {diff}",
        prompt.len()
    );
    // The step after it reads the same blocks as the f32 model's decoding copies.
    let next = [order[0] as u32];
    let (a, b) = (
        logits(&lean, &next, &mut lean_cache),
        logits(&quantized, &next, &mut q_cache),
    );
    let step = top20_difference(&order, &a, &b);
    assert!(step < LOGIT_TOL, "the step after: {step}");
    println!(
        "a {}-token prompt in blocks: logits within {diff} of f32",
        prompt.len()
    );
}

#[test]
fn minilm_matches_pytorch_on_flex() {
    check_minilm(&Device::flex(), 1e-4);
}

// wgpu runs here on Mesa's llvmpipe (a CPU Vulkan device; the test script installs
// mesa-vulkan-drivers). Its WGSL matmul and reduction kernels sum in other orders and tiles
// than Flex and PyTorch; the same tolerances hold, with the margins printed by the failures
// when they do not.
#[test]
fn smollm2_matches_pytorch_on_wgpu() {
    check_smollm2(&Device::wgpu(Default::default()), 1e-3, 1e-3);
}

#[test]
fn minilm_matches_pytorch_on_wgpu() {
    check_minilm(&Device::wgpu(Default::default()), 1e-4);
}

/// The pooled readout on wgpu (the browser's backend, here on llvmpipe): the memory vectors,
/// their insertion after the compressor's layer (memory positions masked in the layers below,
/// also in the KV cache while decoding) and the greedy answer agree with Flex.
#[test]
fn the_pooled_readout_answers_alike_on_wgpu_and_flex() {
    use scaledown_model::burn::module::Module;
    use scaledown_model::compressor::{CompressorConfig, CompressorType, Readout};
    use scaledown_model::example::Encoded;
    use scaledown_model::llama::LlamaConfig;
    use scaledown_model::oscar::Oscar;
    let flex = Device::flex();
    flex.seed(3);
    let config = CompressorConfig {
        compressor_type: CompressorType::NLayers,
        num_layers: 1,
        num_memory_tokens: 2,
        compression_rate: 4,
        readout: Readout::Pooled,
        projector: false,
        rerank: false,
        ..CompressorConfig::default()
    };
    let generator = LlamaConfig::tiny(40).init(&flex);
    let model = Oscar::assemble(&config, generator, None, None, &flex)
        .unwrap()
        .for_inference();
    let gpu = Device::wgpu(Default::default());
    let on_gpu = model.clone().to_device(&gpu);
    let encoded = Encoded {
        chunks: vec![vec![1, 2, 3, 4, 5, 6, 7], vec![1, 2, 8, 9]],
        query_tokens: 2,
        tail_tokens: 0,
        prefix: vec![10, 11],
        suffix: vec![12, 13],
        document_tokens: 7,
        chunk_documents: vec![0, 1],
    };
    let values = |t: Tensor<2>| {
        t.into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap()
    };
    let memory = (
        values(model.memory_vectors(&encoded)),
        values(on_gpu.memory_vectors(&encoded)),
    );
    assert_eq!(memory.0.len(), 3 * 64, "2 + 1 pooled vectors");
    let diff = memory
        .0
        .iter()
        .zip(&memory.1)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(diff < 1e-4, "memory vectors differ by {diff}");
    let cfg = GenerationConfig {
        max_new_tokens: 6,
        ..Default::default()
    };
    let a = read_sync(model.answer(&encoded, &[], &cfg)).unwrap();
    let logits = values(read_sync(on_gpu.answer_logits(&encoded, &a)).unwrap());
    let cpu_logits = values(read_sync(model.answer_logits(&encoded, &a)).unwrap());
    let diff = logits
        .iter()
        .zip(&cpu_logits)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max);
    assert!(diff < 1e-3, "logits differ by {diff}");
    // The cached decoding on wgpu picks, at every step, a token that Flex scores within the
    // rounding noise of its best one (so that a near-tie may go either way).
    let b = read_sync(on_gpu.answer(&encoded, &[], &cfg)).unwrap();
    let rows = values(read_sync(model.answer_logits(&encoded, &b)).unwrap());
    for (t, row) in rows.chunks(40).take(b.len()).enumerate() {
        let best = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        assert!(
            best - row[b[t] as usize] < 1e-3,
            "step {t}: {b:?} vs Flex's {a:?}"
        );
    }
}
