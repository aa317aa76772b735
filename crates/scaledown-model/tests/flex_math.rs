//! The patched Flex kernels (vendor/burn-flex: vectorised exp and erf, the attention row
//! softmax) against plain f64 arithmetic, through Burn's public ops. Flex's own tests live
//! in the vendored crate, which is not a workspace member, so these are what CI runs.
#![cfg(not(target_arch = "wasm32"))]

use burn::prelude::*;
use burn::tensor::activation::{gelu, sigmoid, softmax};
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;

fn device() -> Device {
    Device::flex()
}

/// `n` values spread over [lo, hi] (enough of them to take the multi-threaded path).
fn spread(n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n)
        .map(|i| lo + (hi - lo) * i as f32 / (n - 1) as f32)
        .collect()
}

fn run(values: &[f32], op: impl Fn(Tensor<1>) -> Tensor<1>) -> Vec<f32> {
    let x = Tensor::<1>::from_data(TensorData::new(values.to_vec(), [values.len()]), &device());
    op(x).into_data().iter::<f32>().collect()
}

/// A deterministic pseudo-random sequence in [-1, 1).
fn noise(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

#[test]
fn exp_is_within_two_ulp_and_saturates() {
    let xs = spread(100_003, -100.0, 100.0);
    for (&x, &got) in xs.iter().zip(&run(&xs, |t| t.exp())) {
        let want = (x as f64).exp() as f32;
        if x < -87.4 {
            assert_eq!(got, 0.0, "exp({x})");
        } else if x > 88.8 {
            assert_eq!(got, f32::INFINITY, "exp({x})");
        } else if want.is_normal() {
            let ulp = (got.to_bits() as i64 - want.to_bits() as i64).abs();
            assert!(ulp <= 2, "exp({x}) = {got}, want {want}");
        }
    }
    let ends = run(&[f32::NEG_INFINITY, f32::INFINITY, f32::NAN, 0.0], |t| {
        t.exp()
    });
    assert_eq!(&ends[..2], &[0.0, f32::INFINITY]);
    assert!(ends[2].is_nan());
    assert_eq!(ends[3], 1.0);
}

#[test]
fn erf_gelu_and_sigmoid_match_f64() {
    let xs = spread(100_003, -9.0, 9.0);
    let erf = run(&xs, |t| t.erf());
    let gelu_out = run(&xs, gelu);
    let sig = run(&xs, sigmoid);
    for (i, &x) in xs.iter().enumerate() {
        let e = erf_f64(x as f64);
        assert!((erf[i] as f64 - e).abs() < 2e-7, "erf({x}) = {}", erf[i]);
        let g = 0.5 * x as f64 * (1.0 + erf_f64(x as f64 / 2f64.sqrt()));
        assert!(
            (gelu_out[i] as f64 - g).abs() < 1e-6 * (1.0 + g.abs()),
            "gelu({x}) = {}, want {g}",
            gelu_out[i]
        );
        let s = 1.0 / (1.0 + (-x as f64).exp());
        assert!(
            (sig[i] as f64 - s).abs() < 2e-7,
            "sigmoid({x}) = {}",
            sig[i]
        );
    }
}

/// erf by its Maclaurin series (|x| < 3) or its asymptotic continued fraction, in f64: a
/// reference that does not share code with the kernel under test.
fn erf_f64(x: f64) -> f64 {
    let a = x.abs();
    let r = if a < 3.0 {
        let (mut term, mut sum, mut n) = (a, a, 0.0f64);
        while term.abs() > 1e-17 * sum.abs() {
            n += 1.0;
            term *= -a * a / n;
            sum += term / (2.0 * n + 1.0);
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    } else {
        // erfc(a) = e^{-a²}/√π · 1/(a + 1/2/(a + 1/(a + 3/2/(a + ...))))
        let mut f = a;
        for k in (1..60).rev() {
            f = a + (k as f64 / 2.0) / f;
        }
        1.0 - (-a * a).exp() / std::f64::consts::PI.sqrt() / f
    };
    r.copysign(x)
}

#[test]
fn softmax_rows_match_f64() {
    // An odd row length exercises the lanes' tail.
    let (rows, len) = (300, 137);
    let xs: Vec<f32> = noise(rows * len, 7).iter().map(|v| v * 30.0).collect();
    let x = Tensor::<2>::from_data(TensorData::new(xs.clone(), [rows, len]), &device());
    let got: Vec<f32> = softmax(x, 1).into_data().iter::<f32>().collect();
    for r in 0..rows {
        let row = &xs[r * len..(r + 1) * len];
        let max = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
        let sum: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
        for (k, &v) in row.iter().enumerate() {
            let want = (v as f64 - max).exp() / sum;
            let g = got[r * len + k] as f64;
            assert!((g - want).abs() < 1e-6, "row {r} key {k}: {g} vs {want}");
        }
    }
}

/// Attention `[b, h, q, d]` in f64 with a padding mask (true = masked key) and, when
/// `causal`, keys after `i + kv - q` hidden from query i.
fn attention_f64(
    [b, h, q, kv, d]: [usize; 5],
    (qs, ks, vs): (&[f32], &[f32], &[f32]),
    pad: &[bool],
    causal: bool,
) -> Vec<f64> {
    let scale = 1.0 / (d as f64).sqrt();
    let mut out = vec![0.0; b * h * q * d];
    for bi in 0..b {
        for hi in 0..h {
            let head = (bi * h + hi) * q * d;
            let kv_head = (bi * h + hi) * kv * d;
            for i in 0..q {
                let scores: Vec<f64> = (0..kv)
                    .map(|j| {
                        let hidden = pad[bi * kv + j]
                            || (causal && j as isize > i as isize + kv as isize - q as isize);
                        if hidden {
                            return f64::NEG_INFINITY;
                        }
                        (0..d)
                            .map(|c| qs[head + i * d + c] as f64 * ks[kv_head + j * d + c] as f64)
                            .sum::<f64>()
                            * scale
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let sum: f64 = weights.iter().sum();
                for c in 0..d {
                    out[head + i * d + c] = (0..kv)
                        .map(|j| weights[j] / sum * vs[kv_head + j * d + c] as f64)
                        .sum();
                }
            }
        }
    }
    out
}

#[test]
fn attention_with_padding_and_causal_masks_matches_f64() {
    let dev = device();
    // seq_q < seq_kv is a prompt continuing after cached keys.
    for (q, kv, causal) in [(37, 37, false), (37, 37, true), (21, 45, true)] {
        let (b, h, d) = (2, 3, 16);
        let qs = noise(b * h * q * d, 1);
        let ks = noise(b * h * kv * d, 2);
        let vs = noise(b * h * kv * d, 3);
        // The second sequence ends in 5 padding keys.
        let pad: Vec<bool> = (0..b * kv)
            .map(|i| i / kv == 1 && i % kv >= kv - 5)
            .collect();
        let t = |v: &[f32], s: usize| {
            Tensor::<4>::from_data(TensorData::new(v.to_vec(), [b, h, s, d]), &dev)
        };
        let mask = Tensor::<4, Bool>::from_data(TensorData::new(pad.clone(), [b, 1, 1, kv]), &dev)
            .expand([b, h, q, kv]);
        let options = AttentionModuleOptions {
            is_causal: causal,
            ..Default::default()
        };
        let got: Vec<f32> = attention(t(&qs, q), t(&ks, kv), t(&vs, kv), Some(mask), None, options)
            .into_data()
            .iter::<f32>()
            .collect();
        let want = attention_f64([b, h, q, kv, d], (&qs, &ks, &vs), &pad, causal);
        for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (g as f64 - w).abs() < 1e-5,
                "q {q} kv {kv} causal {causal}, element {i}: {g} vs {w}"
            );
        }
    }
}
