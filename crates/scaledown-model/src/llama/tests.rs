//! Tiny random-config tests of the Llama code path.

use super::*;
use crate::weights::gguf::tests::Writer;
use burn::prelude::*;

fn ids(v: &[i64], device: &Device) -> Tensor<2, Int> {
    Tensor::from_data(TensorData::new(v.to_vec(), [1, v.len()]), device)
}

fn close(a: &Tensor<2>, b: &Tensor<2>, tol: f32) {
    assert_eq!(a.dims(), b.dims());
    let a: Vec<f32> = a.clone().into_data().try_into_vec::<f32>().unwrap();
    let b: Vec<f32> = b.clone().into_data().try_into_vec::<f32>().unwrap();
    let worst = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max);
    assert!(worst <= tol, "max difference {worst}");
}

/// ‖a − b‖ / ‖a‖.
fn relative_difference(a: Tensor<2>, b: Tensor<2>) -> f32 {
    let values = |t: Tensor<2>| -> Vec<f32> { t.into_data().try_into_vec::<f32>().unwrap() };
    let (a, b) = (values(a), values(b));
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    let diff: Vec<f32> = a.iter().zip(&b).map(|(x, y)| x - y).collect();
    norm(&diff) / norm(&a)
}

#[test]
fn kv_cache_decoding_equals_full_forward() {
    let device = Device::flex();
    let model = LlamaConfig::tiny(50).init(&device);
    let seq = [3, 7, 1, 42, 9, 15];
    let full = model.forward_last(ids(&seq, &device), &mut KvCache::new(2));
    let mut cache = KvCache::new(2);
    model.forward_last(ids(&seq[..4], &device), &mut cache);
    model.forward_last(ids(&seq[4..5], &device), &mut cache);
    let step = model.forward_last(ids(&seq[5..], &device), &mut cache);
    assert_eq!(cache.len(), 6);
    close(&full, &step, 1e-4);
}

#[test]
fn decoding_on_block_weights_stays_near_f32_and_prefill_is_untouched() {
    let device = Device::flex();
    let model = LlamaConfig::tiny(50).init(&device);
    let quantized = model.clone().with_decode_kernels();
    assert!(quantized.decode_head.is_some());
    assert!(quantized.layers[1].mlp.down_proj.decode.is_some());
    assert!(quantized.layers[1].mlp.decode_gate_up.is_some());
    assert!(quantized.layers[1].self_attn.decode_qkv.is_some());
    // Merging nothing keeps the copies; adding LoRA drops them (they would be stale).
    assert!(
        quantized.clone().merge_lora().layers[1]
            .self_attn
            .decode_qkv
            .is_some()
    );
    let adapted = quantized.clone().with_lora(4, 8.0);
    assert!(adapted.layers[1].self_attn.decode_qkv.is_none());
    assert!(adapted.layers[1].mlp.down_proj.decode.is_none());
    let seq = [3, 7, 1, 42, 9, 15];
    let (mut f32_cache, mut block_cache) = (KvCache::new(2), KvCache::new(2));
    // Prefill (several tokens) runs the f32 projections in both.
    let prefill = |m: &Llama, cache: &mut KvCache| {
        let h = m.forward_embeds(m.embed(ids(&seq[..5], &device)), cache, None, |_, _| {});
        h.reshape([5, 64])
    };
    close(
        &prefill(&model, &mut f32_cache),
        &prefill(&quantized, &mut block_cache),
        0.0,
    );
    // A decoding step (one token) runs the block copies (8 bits for random weights): near,
    // not equal.
    let a = model.forward_last(ids(&seq[5..], &device), &mut f32_cache);
    let b = quantized.forward_last(ids(&seq[5..], &device), &mut block_cache);
    let relative = relative_difference(a, b);
    assert!(
        relative > 0.0 && relative < 0.03,
        "relative difference {relative}"
    );
    // A batch of sequences decodes each row as it would alone.
    let mut batch_cache = KvCache::new(2);
    let two = Tensor::<2, Int>::from_data(TensorData::new(vec![3i64, 7, 8, 1], [2, 2]), &device);
    quantized.forward_last(two.clone().slice([0..2, 0..1]), &mut batch_cache);
    let both = quantized.forward_last(two.slice([0..2, 1..2]), &mut batch_cache);
    let mut lone_cache = KvCache::new(2);
    quantized.forward_last(ids(&[8], &device), &mut lone_cache);
    let lone = quantized.forward_last(ids(&[1], &device), &mut lone_cache);
    close(&both.slice([1..2, 0..50]), &lone, 1e-5);
}

#[test]
fn a_model_held_in_blocks_runs_prompts_and_steps_on_them_near_f32() {
    let device = Device::flex();
    let model = LlamaConfig::tiny(50).init(&device);
    let lean = model.clone().in_blocks();
    let (a, m) = (&lean.layers[1].self_attn, &lean.layers[1].mlp);
    for p in [&a.q_proj, &a.v_proj, &a.o_proj, &m.gate_proj, &m.down_proj] {
        assert!(!p.is_dense(), "an f32 weight is still held");
    }
    assert_eq!(
        lean.embed_tokens.weight.dims(),
        [0, 0],
        "the tied table too"
    );
    assert_eq!(lean.vocab_size(), 50);
    // 20 tokens: more rows than a decoding step, so prompts run on the blocks too (8 bits
    // for random weights): near f32, not equal.
    let seq: Vec<i64> = (0..20).map(|i| (i * 7 + 3) % 50).collect();
    let exact = model.forward_last(ids(&seq, &device), &mut KvCache::new(2));
    let full = lean.forward_last(ids(&seq, &device), &mut KvCache::new(2));
    let relative = relative_difference(exact, full.clone());
    assert!(
        relative > 0.0 && relative < 0.03,
        "relative difference {relative}"
    );
    // Cached steps after a prompt equal one pass over the whole sequence.
    let mut cache = KvCache::new(2);
    lean.forward_last(ids(&seq[..18], &device), &mut cache);
    lean.forward_last(ids(&seq[18..19], &device), &mut cache);
    let step = lean.forward_last(ids(&seq[19..], &device), &mut cache);
    close(&full, &step, 1e-4);
}

#[test]
fn lora_merged_a_layer_at_a_time_into_blocks_answers_as_the_merged_model() {
    let device = Device::flex();
    device.seed(3);
    let mut adapted = LlamaConfig::tiny(50).init(&device).with_lora(4, 8.0);
    // Trained-looking adapters: B is zero when fresh, which would merge nothing.
    for block in &mut adapted.layers {
        for p in [&mut block.self_attn.q_proj, &mut block.mlp.down_proj] {
            let lora = p.lora.as_mut().expect("with_lora adds factors");
            let b = lora.b.val();
            lora.b = burn::module::Param::from_tensor(Tensor::random(
                b.dims(),
                burn::tensor::Distribution::Normal(0.0, 0.1),
                &device,
            ));
        }
    }
    let merged = adapted.clone().merge_lora();
    let lean = adapted.merged_in_blocks();
    let q = &lean.layers[0].self_attn.q_proj;
    assert!(
        !q.is_dense() && q.lora.is_none(),
        "merged, then held in blocks only"
    );
    let seq: Vec<i64> = (0..20).map(|i| (i * 5 + 1) % 50).collect();
    let run = |m: &Llama| {
        let hidden = m.forward_embeds(
            m.embed(ids(&seq, &device)),
            &mut KvCache::new(2),
            None,
            |_, _| {},
        );
        // Every position's logits (the memory-use probe reads them all), not the last only.
        m.logits(hidden).reshape([20, 50])
    };
    let relative = relative_difference(run(&merged), run(&lean));
    assert!(
        relative > 0.0 && relative < 0.03,
        "relative difference {relative}"
    );
}

#[test]
#[should_panic(expected = "held in blocks only")]
fn a_model_held_in_blocks_takes_no_lora() {
    let device = Device::flex();
    let _ = LlamaConfig::tiny(50)
        .init(&device)
        .in_blocks()
        .with_lora(4, 8.0);
}

#[test]
fn causal_attention_ignores_later_tokens() {
    let device = Device::flex();
    let model = LlamaConfig::tiny(50).init(&device);
    let a = model.forward_last(ids(&[5, 6, 7], &device), &mut KvCache::new(2));
    let hidden = model.forward_embeds(
        model.embed(ids(&[5, 6, 7, 8], &device)),
        &mut KvCache::new(2),
        None,
        |_, _| {},
    );
    let b = model
        .logits(hidden.slice([0..1, 2..3, 0..64]))
        .reshape([1, 50]);
    close(&a, &b, 1e-4);
}

/// Writes a tiny model into GGUF the way llama.cpp does (Q/K rows permuted for adjacent-pair
/// RoPE) and checks that loading it gives the same logits: the loader must undo the permutation.
#[test]
fn gguf_round_trip_undoes_the_rope_permutation() {
    let device = Device::flex();
    let cfg = LlamaConfig::tiny(50);
    let model = cfg.init(&device);
    let values = |t: Tensor<2>| -> Vec<f32> { t.into_data().try_into_vec::<f32>().unwrap() };
    // Linear [in, out] -> stored [out, in], GGUF ne = [in, out].
    let linear = |w: &super::lora::Projection, permute_heads: Option<usize>| {
        let [inp, out] = w.weight.dims();
        let mut rows = values(w.weight.val().transpose());
        if let Some(n) = permute_heads {
            let d = out / n;
            let mut p = vec![0.0; rows.len()];
            for h in 0..n {
                for i in 0..d / 2 {
                    for j in 0..2 {
                        let hf = (h * d + j * d / 2 + i) * inp;
                        let gg = (h * d + 2 * i + j) * inp;
                        p[gg..gg + inp].copy_from_slice(&rows[hf..hf + inp]);
                    }
                }
            }
            rows = p;
        }
        (vec![inp as u64, out as u64], rows)
    };
    let mut w = Writer::new()
        .string("general.architecture", "llama")
        .u32("llama.block_count", cfg.num_hidden_layers as u32)
        .u32("llama.embedding_length", cfg.hidden_size as u32)
        .u32("llama.feed_forward_length", cfg.intermediate_size as u32)
        .u32("llama.attention.head_count", cfg.num_attention_heads as u32)
        .u32(
            "llama.attention.head_count_kv",
            cfg.num_key_value_heads as u32,
        )
        .u32("llama.context_length", cfg.max_position_embeddings as u32);
    w.meta.push((
        "llama.rope.freq_base".into(),
        6,
        cfg.rope_theta.to_le_bytes().to_vec(),
    ));
    let h = cfg.hidden_size as u64;
    w = w.f32_tensor(
        "token_embd.weight",
        &[h, 50],
        &values(model.embed_tokens.weight.val()),
    );
    w = w.f32_tensor(
        "output_norm.weight",
        &[h],
        &model
            .norm
            .gamma
            .val()
            .into_data()
            .try_into_vec::<f32>()
            .unwrap(),
    );
    for (i, b) in model.layers.iter().enumerate() {
        let a = &b.self_attn;
        for (name, lin, perm) in [
            ("attn_q", &a.q_proj, Some(a.num_heads)),
            ("attn_k", &a.k_proj, Some(a.num_kv_heads)),
            ("attn_v", &a.v_proj, None),
            ("attn_output", &a.o_proj, None),
            ("ffn_gate", &b.mlp.gate_proj, None),
            ("ffn_up", &b.mlp.up_proj, None),
            ("ffn_down", &b.mlp.down_proj, None),
        ] {
            let (ne, v) = linear(lin, perm);
            w = w.f32_tensor(&format!("blk.{i}.{name}.weight"), &ne, &v);
        }
        for (name, norm) in [
            ("attn_norm", &b.input_layernorm),
            ("ffn_norm", &b.post_attention_layernorm),
        ] {
            w = w.f32_tensor(
                &format!("blk.{i}.{name}.weight"),
                &[h],
                &norm.gamma.val().into_data().try_into_vec::<f32>().unwrap(),
            );
        }
    }
    let (loaded_cfg, loaded) = llama_from_gguf(&w.bytes(), &device).unwrap();
    assert_eq!(loaded_cfg, cfg);
    let seq = [1, 2, 3, 4, 5, 6, 7];
    let a = model.forward_last(ids(&seq, &device), &mut KvCache::new(2));
    let b = loaded.forward_last(ids(&seq, &device), &mut KvCache::new(2));
    close(&a, &b, 1e-5);
}

#[test]
fn config_rejects_impossible_shapes() {
    let mut c = LlamaConfig::tiny(50);
    c.num_key_value_heads = 3;
    assert!(
        c.validate()
            .unwrap_err()
            .to_string()
            .contains("key-value heads")
    );
    let mut c = LlamaConfig::tiny(50);
    c.vocab_size = usize::MAX;
    assert!(c.validate().unwrap_err().to_string().contains("vocab size"));
}

/// SmolLM2's config.json as transformers 4 and 5 write it (5 nests `rope_theta`).
#[test]
fn hf_config_reads_rope_theta_of_both_layouts() {
    let fields = r#""vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536,
        "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3"#;
    let v4 = format!(r#"{{{fields}, "rope_theta": 100000.0}}"#);
    let v5 = format!(
        r#"{{{fields}, "rope_parameters": {{"rope_theta": 100000.0, "rope_type": "default"}}}}"#
    );
    for json in [v4, v5] {
        let c = LlamaConfig::from_hf_json(&json).unwrap();
        assert_eq!(c.rope_theta, 100_000.0, "{json}");
        assert_eq!((c.num_key_value_heads, c.head_dim()), (3, 64));
    }
    let none = format!("{{{fields}}}");
    assert_eq!(
        LlamaConfig::from_hf_json(&none).unwrap().rope_theta,
        10_000.0
    );
}

/// The same tiny model through Hugging Face names and safetensors bytes.
#[test]
fn safetensors_round_trip_with_hf_names() {
    use safetensors::tensor::{Dtype, TensorView};
    let device = Device::flex();
    let cfg = LlamaConfig::tiny(50);
    let model = cfg.init(&device);
    let bytes_of = |t: Tensor<2>| -> (Vec<usize>, Vec<u8>) {
        let shape = t.dims().to_vec();
        let v: Vec<f32> = t.into_data().try_into_vec::<f32>().unwrap();
        (shape, v.iter().flat_map(|x| x.to_le_bytes()).collect())
    };
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut push = |name: String, t: Tensor<2>| {
        let (s, b) = bytes_of(t);
        tensors.push((name, s, b));
    };
    push(
        "model.embed_tokens.weight".into(),
        model.embed_tokens.weight.val(),
    );
    push(
        "model.norm.weight".into(),
        model.norm.gamma.val().unsqueeze(),
    );
    for (i, b) in model.layers.iter().enumerate() {
        let a = &b.self_attn;
        for (name, lin) in [
            ("self_attn.q_proj", &a.q_proj),
            ("self_attn.k_proj", &a.k_proj),
            ("self_attn.v_proj", &a.v_proj),
            ("self_attn.o_proj", &a.o_proj),
            ("mlp.gate_proj", &b.mlp.gate_proj),
            ("mlp.up_proj", &b.mlp.up_proj),
            ("mlp.down_proj", &b.mlp.down_proj),
        ] {
            push(
                format!("model.layers.{i}.{name}.weight"),
                lin.weight.val().transpose(),
            );
        }
        push(
            format!("model.layers.{i}.input_layernorm.weight"),
            b.input_layernorm.gamma.val().unsqueeze(),
        );
        push(
            format!("model.layers.{i}.post_attention_layernorm.weight"),
            b.post_attention_layernorm.gamma.val().unsqueeze(),
        );
    }
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, s, b)| {
            // Norm weights went through a [1, h] tensor; HF stores them as [h].
            let shape = if s[0] == 1 { vec![s[1]] } else { s.clone() };
            (n.clone(), TensorView::new(Dtype::F32, shape, b).unwrap())
        })
        .collect();
    let bytes = safetensors::serialize(views, None).unwrap();
    let config = serde_json::json!({
        "vocab_size": 50, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "rope_theta": 10000.0,
        "rms_norm_eps": 1e-5, "max_position_embeddings": 512, "tie_word_embeddings": true
    });
    let (loaded_cfg, loaded) =
        llama_from_safetensors(&config.to_string(), &bytes, &device).unwrap();
    assert_eq!(loaded_cfg, cfg);
    let seq = [4, 8, 15, 16, 23, 42];
    let a = model.forward_last(ids(&seq, &device), &mut KvCache::new(2));
    let b = loaded.forward_last(ids(&seq, &device), &mut KvCache::new(2));
    close(&a, &b, 1e-5);

    // Cut short, the file is refused by the safetensors parser, with its name in the error.
    let err = llama_from_safetensors(&config.to_string(), &bytes[..bytes.len() - 10], &device)
        .unwrap_err();
    assert!(err.to_string().contains("safetensors"), "{err}");
}

#[test]
fn attention_in_query_blocks_equals_one_fused_call() {
    use super::model::causal_attention;
    use burn::tensor::module::attention;
    use burn::tensor::ops::AttentionModuleOptions;
    use burn::tensor::{Distribution, Tensor};
    let device = Device::flex();
    // 40 cached positions, then 300 new ones: three query blocks, the last one partial.
    let (past, seq) = (40, 300);
    let q = Tensor::<4>::random([2, 4, seq, 8], Distribution::Default, &device);
    let k = Tensor::<4>::random([2, 4, past + seq, 8], Distribution::Default, &device);
    let v = Tensor::<4>::random([2, 4, past + seq, 8], Distribution::Default, &device);
    // Padding: the second sequence does not see its first 25 keys.
    let mut hidden = vec![false; 2 * (past + seq)];
    hidden[past + seq..past + seq + 25].fill(true);
    let mask = Tensor::<2, Bool>::from_data(TensorData::new(hidden, [2, past + seq]), &device)
        .reshape([2, 1, 1, past + seq])
        .expand([2, 4, seq, past + seq]);
    let options = AttentionModuleOptions {
        is_causal: true,
        ..Default::default()
    };
    let fused = attention(
        q.clone(),
        k.clone(),
        v.clone(),
        Some(mask.clone()),
        None,
        options,
    );
    let blocked = causal_attention(q, k, v, Some(mask));
    let flat = |t: Tensor<4>| t.reshape([2 * 4 * seq, 8]);
    close(&flat(fused), &flat(blocked), 1e-5);
}

#[test]
fn silu_equals_burns() {
    use burn::tensor::Distribution;
    let device = Device::flex();
    let x = Tensor::<3>::random([1, 64, 32], Distribution::Normal(0.0, 8.0), &device);
    let ours = super::model::silu(x.clone()).reshape([64, 32]);
    let burns = burn::tensor::activation::silu(x).reshape([64, 32]);
    close(&ours, &burns, 1e-5);
}
