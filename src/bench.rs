//! `scaledown bench`: SmolLM2 prefill and decode speed here and in PyTorch (transformers,
//! float32, same thread count), measured in one invocation and printed as ratios.

use crate::models;
use anyhow::{Context, Result, bail};
use scaledown_model::burn::prelude::*;
use scaledown_model::generation::argmax;
use scaledown_model::llama::{KvCache, Llama};
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

pub struct BenchOptions {
    pub runs: usize,
    pub threads: usize,
    pub prefill: Vec<usize>,
    pub decode_tokens: usize,
    /// Python with torch + transformers + gguf; None skips PyTorch.
    pub python: Option<String>,
}

/// Deterministic token ids, the same formula as bench/pytorch_bench.py.
fn ids_for(n: usize, device: &Device) -> Tensor<2, Int> {
    let v: Vec<i64> = (0..n as i64).map(|i| (7 * i + 11) % 40000 + 100).collect();
    Tensor::from_data(TensorData::new(v, [1, n]), device)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

struct Stat {
    median: f64,
    min: f64,
    max: f64,
}

fn stat(v: Vec<f64>) -> Stat {
    let min = v.iter().cloned().fold(f64::INFINITY, f64::min);
    let max = v.iter().cloned().fold(0.0, f64::max);
    Stat {
        median: median(v),
        min,
        max,
    }
}

fn prefill_ms(model: &Llama, n: usize, runs: usize, device: &Device) -> Stat {
    let once = || {
        let t = Instant::now();
        let logits = model.forward_last(ids_for(n, device), &mut KvCache::new(model.layers.len()));
        let _ = logits.into_data(); // waits for the backend
        t.elapsed().as_secs_f64() * 1e3
    };
    once(); // warm-up
    stat((0..runs).map(|_| once()).collect())
}

fn decode_tok_s(model: &Llama, tokens: usize, runs: usize, device: &Device) -> Stat {
    let mut samples = Vec::new();
    for r in 0..=runs {
        let mut cache = KvCache::new(model.layers.len());
        let logits = model.forward_last(ids_for(32, device), &mut cache);
        let mut next = argmax(
            &logits
                .into_data()
                .try_into_vec::<f32>()
                .expect("logits are f32"),
        );
        let t = Instant::now();
        for _ in 0..tokens {
            let ids =
                Tensor::<2, Int>::from_data(TensorData::new(vec![next as i64], [1, 1]), device);
            let logits = model.forward_last(ids, &mut cache);
            next = argmax(
                &logits
                    .into_data()
                    .try_into_vec::<f32>()
                    .expect("logits are f32"),
            );
        }
        if r > 0 {
            samples.push(tokens as f64 / t.elapsed().as_secs_f64());
        }
    }
    stat(samples)
}

/// Peak resident memory of this process, from /proc (Linux).
fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn pytorch(python: &str, gguf: &Path, o: &BenchOptions) -> Result<Value> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/pytorch_bench.py");
    let prefill: Vec<String> = o.prefill.iter().map(|n| n.to_string()).collect();
    let out = Command::new(python)
        .arg(&script)
        .arg("--gguf")
        .arg(gguf)
        .args([
            "--threads",
            &o.threads.to_string(),
            "--runs",
            &o.runs.to_string(),
        ])
        .args([
            "--prefill",
            &prefill.join(","),
            "--decode",
            &o.decode_tokens.to_string(),
        ])
        .env("OMP_NUM_THREADS", o.threads.to_string())
        .output()
        .with_context(|| format!("running {python} {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "the PyTorch benchmark failed (install it with bench/setup.sh):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.lines().last().unwrap_or_default();
    serde_json::from_str(last).context("parsing the PyTorch benchmark's JSON")
}

pub fn run(gguf: &Path, device: &Device, backend: &str, o: &BenchOptions) -> Result<()> {
    let g = models::load_generator(gguf, device)?;
    println!(
        "SmolLM2-135M ({}), backend {backend}, {} threads, median of {} runs after a warm-up",
        gguf.display(),
        o.threads,
        o.runs
    );
    let ours_prefill: Vec<(usize, Stat)> = o
        .prefill
        .iter()
        .map(|&n| (n, prefill_ms(&g.model, n, o.runs, device)))
        .collect();
    let ours_decode = decode_tok_s(&g.model, o.decode_tokens, o.runs, device);
    let ours_rss = peak_rss_mb();
    // Our figures are printed even when the PyTorch side cannot run.
    let torch = o.python.as_ref().and_then(|py| {
        pytorch(py, gguf, o)
            .map_err(|e| eprintln!("warning: {e:#}"))
            .ok()
    });

    println!(
        "\n| work | scaledown (median [min, max]) | PyTorch (median [min, max]) | speed ratio (PyTorch time / ours) |"
    );
    println!("|---|---|---|---|");
    for (n, s) in &ours_prefill {
        let t = torch.as_ref().map(|t| &t["prefill"][n.to_string()]);
        let (theirs, ratio) = match t {
            Some(t) => {
                let m = t["median_ms"].as_f64().unwrap_or(f64::NAN);
                (
                    format!(
                        "{m:.1} ms [{:.1}, {:.1}]",
                        t["min_ms"].as_f64().unwrap_or(f64::NAN),
                        t["max_ms"].as_f64().unwrap_or(f64::NAN)
                    ),
                    format!("{:.2}x", m / s.median),
                )
            }
            None => ("-".into(), "-".into()),
        };
        println!(
            "| prefill {n} tokens | {:.1} ms [{:.1}, {:.1}] | {theirs} | {ratio} |",
            s.median, s.min, s.max
        );
    }
    let (theirs, ratio) = match &torch {
        Some(t) => {
            let d = &t["decode"];
            let m = d["median_tok_s"].as_f64().unwrap_or(f64::NAN);
            (
                format!(
                    "{m:.1} tok/s [{:.1}, {:.1}]",
                    d["min_tok_s"].as_f64().unwrap_or(f64::NAN),
                    d["max_tok_s"].as_f64().unwrap_or(f64::NAN)
                ),
                format!("{:.2}x", ours_decode.median / m),
            )
        }
        None => ("-".into(), "-".into()),
    };
    println!(
        "| decode {} tokens | {:.1} tok/s [{:.1}, {:.1}] | {theirs} | {ratio} |",
        o.decode_tokens, ours_decode.median, ours_decode.min, ours_decode.max
    );
    let fmt_mb = |v: Option<f64>| v.map(|m| format!("{m:.0} MB")).unwrap_or("-".into());
    println!(
        "| peak memory (RSS) | {} | {} | |",
        fmt_mb(ours_rss),
        fmt_mb(torch.as_ref().and_then(|t| t["peak_rss_mb"].as_f64()))
    );
    if let Some(t) = &torch {
        println!(
            "\nPyTorch {} with {} threads.",
            t["torch"].as_str().unwrap_or("?"),
            t["threads"]
        );
    }
    Ok(())
}
