//! Burn's own quantization against this crate's blocks (`quant.rs`) on the CPU: the products a
//! decoding step (1 row) and a prompt (128 rows) make with SmolLM2's MLP weight shape.
//!
//! `cargo run --release -p scaledown-model --features flex --example quantized_products`
//!
//! Prints the median time of each product and its ratio against f32 (Burn's matmul). Issue 20
//! asked for Burn's quantization to be measured before writing kernels; this is that
//! measurement, kept so that it can be rerun when Burn's CPU backend gains quantized kernels.

use burn::prelude::*;
use burn::tensor::quantization::{QuantScheme, QuantStore, QuantValue, ScaleDtype};
use scaledown_model::quant::BlockMatrix;
use std::time::Instant;

/// Median seconds of `runs` calls after one warm-up.
fn median(runs: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut t: Vec<f64> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[runs / 2]
}

fn main() {
    let device = Device::flex();
    // SmolLM2's MLP shape, 24 such matrices (85 MB in f32): each product reads its weights
    // from memory, as a decoding step does, not from a warm cache.
    let (inputs, outputs, layers, runs) = (576, 1536, 24, 11);
    let weights: Vec<Vec<f32>> = (0..layers)
        .map(|l| q4_1_grid(inputs, outputs, l as u64))
        .collect();
    let dense: Vec<Tensor<2>> = weights
        .iter()
        .map(|w| Tensor::from_data(TensorData::new(w.clone(), [inputs, outputs]), &device))
        .collect();
    let burn = |value| -> Vec<Tensor<2>> {
        let scheme = QuantScheme::default()
            .with_value(value)
            .per_block([32], ScaleDtype::F32)
            .with_store(QuantStore::Native);
        dense
            .iter()
            .map(|w| w.clone().quantize_dynamic(&scheme))
            .collect()
    };
    let (burn_q8, burn_q4) = (burn(QuantValue::Q8S), burn(QuantValue::Q4S));
    let ours: Vec<_> = weights
        .iter()
        .map(|w| BlockMatrix::from_in_out(w, inputs, outputs).expect("576 is 18 blocks"))
        .collect();
    assert!(
        ours.iter().all(|q| q.bits() == 4),
        "Q4_1-grid weights stay at 4 bits"
    );
    println!(
        "{layers} products [rows, {inputs}] x [{inputs}, {outputs}] per run, {} threads, median of {runs} runs",
        rayon::current_num_threads()
    );
    println!(
        "| rows | f32 (Burn) | Burn Q8S, blocks of 32 | Burn Q4S, blocks of 32 | ours, 4-bit blocks |"
    );
    println!("|---|---|---|---|---|");
    for rows in [1, 128] {
        let x = uniform(rows * inputs, 99);
        let xt = Tensor::<2>::from_data(TensorData::new(x.clone(), [rows, inputs]), &device);
        let burn_run = |ws: &[Tensor<2>]| {
            median(runs, || {
                for w in ws {
                    xt.clone().matmul(w.clone()).into_data();
                }
            })
        };
        let f32_s = burn_run(&dense);
        let (q8_s, q4_s) = (burn_run(&burn_q8), burn_run(&burn_q4));
        let ours_s = median(runs, || {
            for q in &ours {
                std::hint::black_box(q.matmul(&x, rows));
            }
        });
        let cell = |s: f64| format!("{:.2} ms ({:.2}x)", s * 1e3, f32_s / s);
        println!(
            "| {rows} | {:.2} ms | {} | {} | {} |",
            f32_s * 1e3,
            cell(q8_s),
            cell(q4_s),
            cell(ours_s)
        );
    }
}

/// `n` values in [-0.1, 0.1) from a fixed LCG.
fn uniform(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_add(1);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.2
        })
        .collect()
}

/// `[inputs, outputs]` weights on GGUF Q4_1's grid (per block of 32 inputs of an output:
/// `m + d·k`, k = 0..15, f16 `m` and `d`), as SmolLM2's file holds its layers.
fn q4_1_grid(inputs: usize, outputs: usize, seed: u64) -> Vec<f32> {
    let r = uniform(inputs * outputs, seed);
    let mut w = vec![0f32; inputs * outputs];
    let f16 = |v: f32| half::f16::from_f32(v).to_f32();
    for o in 0..outputs {
        for b in 0..inputs / 32 {
            let block: Vec<f32> = (0..32).map(|j| r[(b * 32 + j) * outputs + o]).collect();
            let min = block.iter().copied().fold(f32::INFINITY, f32::min);
            let max = block.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let (m, d) = (f16(min), f16((max - min) / 15.0));
            for (j, v) in block.iter().enumerate() {
                let k = ((v - m) / d).round().clamp(0.0, 15.0);
                w[(b * 32 + j) * outputs + o] = m + d * k;
            }
        }
    }
    w
}
