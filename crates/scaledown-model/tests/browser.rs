//! The model crate in a real browser (wasm-bindgen-test in headless Chromium): Burn's CPU
//! backend compiled to wasm, and WebGPU, where every read of a result must be async.
//! `scripts/test.sh` runs them; natively this file is empty.
#![cfg(target_arch = "wasm32")]

use burn::module::Module;
use burn::prelude::*;
use scaledown_model::compressor::{CompressorType, Readout};
use scaledown_model::example::{Encoded, TrainExample};
use scaledown_model::generation::{GenerationConfig, generate, read_floats};
use scaledown_model::llama::{KvCache, LlamaConfig};
use scaledown_model::oscar::Oscar;
use scaledown_model::tiny;
use scaledown_model::training::{TrainSettings, Trainer};
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

fn ids(v: &[i64]) -> TensorData {
    TensorData::new(v.to_vec(), [1, v.len()])
}

/// Same weights, same logits: the wasm CPU backend against WebGPU; then greedy decoding and
/// training steps on WebGPU, through async reads. (One test: WebGPU starts once per page.)
#[wasm_bindgen_test]
async fn webgpu_matches_the_cpu_backend_generates_and_trains() {
    let cpu = Device::flex();
    cpu.seed(1);
    let model = LlamaConfig::tiny(50).init(&cpu);
    let prompt = [3i64, 17, 4, 9, 22];
    let mut cache = KvCache::new(model.layers.len());
    let on_cpu = model.forward_last(Tensor::from_data(ids(&prompt), &cpu), &mut cache);
    let on_cpu = read_floats(on_cpu).await.unwrap();

    let gpu = Device::wgpu_options()
        .init_async()
        .await
        .expect("the browser gives a WebGPU adapter");
    let model = model.to_device(&gpu);
    let mut cache = KvCache::new(model.layers.len());
    let on_gpu = model.forward_last(Tensor::from_data(ids(&prompt), &gpu), &mut cache);
    let on_gpu = read_floats(on_gpu).await.unwrap();
    assert_eq!(on_cpu.len(), 50);
    for (a, b) in on_cpu.iter().zip(&on_gpu) {
        assert!((a - b).abs() < 1e-3, "{a} vs {b}");
    }

    let config = GenerationConfig {
        max_new_tokens: 6,
        ..Default::default()
    };
    let prompt: Vec<u32> = prompt.iter().map(|&t| t as u32).collect();
    let out = generate(&model, &prompt, &[], &config, &gpu).await.unwrap();
    assert_eq!(out.len(), 6);
    assert!(out.iter().all(|&t| t < 50));

    // The training step on WebGPU: the answer's cross-entropy falls.
    let config = tiny::compressor_config(CompressorType::NLayers, Readout::MemoryTokens);
    let oscar = tiny::oscar_over(model, &config);
    let example = TrainExample::new(
        Encoded {
            query_tokens: 0,
            tail_tokens: 0,
            chunks: vec![vec![5, 6, 7, 8, 9, 10, 11, 12, 13], vec![5, 6, 14, 15]],
            prefix: vec![1, 2, 3],
            suffix: vec![4, 5],
            document_tokens: 10,
            chunk_documents: vec![0, 0],
        },
        vec![30, 31, 2],
    );
    let loss = async |m: &Oscar| {
        let l = m.valid().answer_loss(&[&example]);
        l.into_scalar_async::<f32>().await.unwrap()
    };
    let before = loss(&oscar).await;
    let mut trainer = Trainer::new(TrainSettings {
        warmup_steps: 1,
        ..tiny::settings(15)
    });
    let mut model = oscar.train();
    for _ in 0..15 {
        let (m, stats) = trainer.step(model, &[&example]).await;
        model = m;
        assert!(stats.unwrap().loss.is_finite());
    }
    let after = loss(&model).await;
    assert!(after < 0.7 * before, "loss {before} -> {after}");
}

/// The page's CPU fallback: Burn's Flex backend in wasm, where reads are immediate.
#[wasm_bindgen_test]
fn flex_decodes_with_its_cache_as_a_full_forward() {
    let device = Device::flex();
    device.seed(2);
    let model = LlamaConfig::tiny(30).init(&device);
    let prompt = [1i64, 2, 3, 4, 5, 6];
    let mut cache = KvCache::new(model.layers.len());
    let full = model.forward_last(Tensor::from_data(ids(&prompt), &device), &mut cache);
    let mut cache = KvCache::new(model.layers.len());
    model.forward_last(Tensor::from_data(ids(&prompt[..5]), &device), &mut cache);
    let step = model.forward_last(Tensor::from_data(ids(&prompt[5..]), &device), &mut cache);
    let a: Vec<f32> = full.into_data().try_into_vec().unwrap();
    let b: Vec<f32> = step.into_data().try_into_vec().unwrap();
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() < 1e-4, "{x} vs {y}");
    }
}
