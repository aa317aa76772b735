//! `scaledown load`: a bounded load test of a running `scaledown serve` (loopback or any URL):
//! a fixed number of `/v1/answer` requests from a prepared QA file at each concurrency, with
//! queries/s and latency percentiles; `--hostile N` sends N generated malformed bodies between
//! valid ones and checks that each bad one gets a 4xx, each valid one its answer, and that the
//! server's memory comes back.

use anyhow::{Context, Result, bail};
use clap::Args;
use scaledown_data::percentile;
use scaledown_data::{Example, parse_examples};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[derive(Args, Debug)]
pub struct LoadArgs {
    /// The server, e.g. http://127.0.0.1:8080.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Questions and their documents (a prepared file, e.g. data/squad_eval.json).
    #[arg(long)]
    pub data: PathBuf,
    /// Requests per concurrency level (questions repeat when the file has fewer).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub requests: u32,
    /// Concurrent clients, comma-separated: one run per value.
    #[arg(long, default_value = "1,4,16", value_delimiter = ',')]
    pub concurrency: Vec<usize>,
    /// Ask for compressed answers (false: the full text).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub compressed: bool,
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub max_new_tokens: u32,
    /// Instead of the timed runs: this many generated malformed or hostile bodies, one valid
    /// request after every 10.
    #[arg(long, default_value_t = 0)]
    pub hostile: u32,
    /// Per-request client timeout in seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout_s: u64,
    /// Print the results as JSON too.
    #[arg(long)]
    pub json: bool,
}

fn agent(timeout_s: u64) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(timeout_s)))
        .build()
        .into()
}

/// Status and body of a POST; status 0 when the connection failed.
fn post(agent: &ureq::Agent, url: &str, body: &[u8]) -> (u16, String) {
    let mut request = agent.post(url).header("content-type", "application/json");
    // As curl does for large bodies: the server may refuse one (413) before it is sent,
    // instead of closing the connection while it is being written.
    if body.len() > 1 << 20 {
        request = request.header("expect", "100-continue");
    }
    match request.send(body) {
        Ok(mut r) => {
            let status = r.status().as_u16();
            let text = r
                .body_mut()
                .with_config()
                .limit(16 << 20)
                .read_to_string()
                .unwrap_or_default();
            (status, text)
        }
        Err(e) => (0, e.to_string()),
    }
}

fn body_of(ex: &Example, compressed: bool, max_new_tokens: u32) -> Vec<u8> {
    let documents: Vec<Value> = ex
        .documents
        .iter()
        .map(|d| json!({"title": d.title, "text": d.text}))
        .collect();
    json!({"question": ex.question, "documents": documents, "compressed": compressed,
        "max_new_tokens": max_new_tokens})
    .to_string()
    .into_bytes()
}

#[derive(Debug, serde::Serialize)]
pub struct LevelResult {
    pub concurrency: usize,
    pub requests: usize,
    pub failed: usize,
    pub queries_per_second: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    /// The server's own time per request (`ms` in its answers), median.
    pub server_p50_ms: f64,
}

/// `requests` POSTs from `concurrency` threads.
fn level(a: &LoadArgs, bodies: &[Vec<u8>], concurrency: usize) -> LevelResult {
    let url = format!("{}/v1/answer", a.url.trim_end_matches('/'));
    let next = AtomicUsize::new(0);
    let results = Mutex::new(Vec::new());
    let n = a.requests as usize;
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..concurrency {
            s.spawn(|| {
                let agent = agent(a.timeout_s);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    let t = Instant::now();
                    let (status, text) = post(&agent, &url, &bodies[i % bodies.len()]);
                    let ms = t.elapsed().as_secs_f64() * 1000.0;
                    let server_ms = serde_json::from_str::<Value>(&text)
                        .ok()
                        .and_then(|v| v["ms"].as_f64());
                    results.lock().unwrap().push((status, ms, server_ms));
                }
            });
        }
    });
    let seconds = started.elapsed().as_secs_f64();
    let results = results.into_inner().unwrap();
    let mut ms: Vec<f64> = results.iter().map(|r| r.1).collect();
    ms.sort_by(f64::total_cmp);
    let mut server: Vec<f64> = results.iter().filter_map(|r| r.2).collect();
    server.sort_by(f64::total_cmp);
    LevelResult {
        concurrency,
        requests: n,
        failed: results.iter().filter(|r| r.0 != 200).count(),
        queries_per_second: n as f64 / seconds,
        p50_ms: percentile(&ms, 0.5),
        p95_ms: percentile(&ms, 0.95),
        p99_ms: percentile(&ms, 0.99),
        server_p50_ms: percentile(&server, 0.5),
    }
}

/// The server's resident memory from its /metrics.
fn server_memory(a: &LoadArgs) -> Result<u64> {
    let url = format!("{}/metrics", a.url.trim_end_matches('/'));
    let mut r = agent(60)
        .get(&url)
        .call()
        .with_context(|| format!("GET {url}"))?;
    let text = r.body_mut().read_to_string()?;
    text.lines()
        .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("{url}: no process_resident_memory_bytes"))
}

/// The `i`-th generated bad body: truncated JSON, wrong types, huge numbers, deep nesting,
/// a 10 MB string, invalid UTF-8, unknown fields, over-limit values.
pub fn hostile_body(i: usize, valid: &[u8]) -> Vec<u8> {
    let mut state = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    let mut rand = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    match i % 12 {
        0 => valid[..(rand() as usize % valid.len().max(1)).max(1) - 1].to_vec(),
        1 => br#"{"question": 42, "documents": []}"#.to_vec(),
        2 => br#"{"question": "q", "documents": "not a list"}"#.to_vec(),
        3 => format!(
            r#"{{"question": "q", "max_new_tokens": {}}}"#,
            "9".repeat(40)
        )
        .into_bytes(),
        4 => format!(
            r#"{{"question": "q", "documents": [{}"x"{}]}}"#,
            "[".repeat(5_000),
            "]".repeat(5_000)
        )
        .into_bytes(),
        5 => format!(r#"{{"question": "{}"}}"#, "a".repeat(10 << 20)).into_bytes(),
        6 => b"{\"question\": \"\xff\xfe\", \"documents\": []}".to_vec(),
        7 => br#"{"question": "q", "documents": [], "sneaky": true}"#.to_vec(),
        8 => br#"{"question": "q", "documents": ["text"], "max_new_tokens": 0}"#.to_vec(),
        9 => br#"{"question": "   ", "documents": ["text"]}"#.to_vec(),
        10 => {
            let mut v = valid.to_vec();
            let k = rand() as usize % v.len().max(1);
            v[k] = b"{}[]\",:\\\x00"[rand() as usize % 9];
            // A flip that leaves valid JSON is possible; make it invalid for sure.
            v.extend_from_slice(b" }");
            v
        }
        _ => br#"{"question": "q", "documents": [{"title": 1, "text": null}]}"#.to_vec(),
    }
}

fn hostile(a: &LoadArgs, bodies: &[Vec<u8>]) -> Result<()> {
    let url = format!("{}/v1/answer", a.url.trim_end_matches('/'));
    let agent = agent(a.timeout_s);
    // Warm the allocator's pools with valid answers before the first reading.
    for b in bodies.iter().cycle().take(4) {
        post(&agent, &url, b);
    }
    let before = server_memory(a)?;
    let (mut bad_4xx, mut bad_other, mut valid_ok, mut valid_failed) = (0, 0, 0, 0);
    let mut other = Vec::new();
    let started = Instant::now();
    for i in 0..a.hostile as usize {
        let valid = &bodies[i % bodies.len()];
        let (status, text) = post(&agent, &url, &hostile_body(i, valid));
        if (400..500).contains(&status) && text.contains("\"error\"") {
            bad_4xx += 1;
        } else {
            bad_other += 1;
            if other.len() < 5 {
                other.push(format!(
                    "body {i}: {status} {}",
                    text.chars().take(200).collect::<String>()
                ));
            }
        }
        if i % 10 == 9 {
            match post(&agent, &url, valid).0 {
                200 => valid_ok += 1,
                _ => valid_failed += 1,
            }
        }
    }
    let after = server_memory(a)?;
    let change = after as f64 / before as f64 - 1.0;
    println!(
        "hostile: {} bad bodies in {:.0} s: {bad_4xx} got a 4xx with an error body, {bad_other} did not; {valid_ok} valid requests between them answered, {valid_failed} failed; server memory {:.1} MiB before, {:.1} MiB after ({:+.1} %)",
        a.hostile,
        started.elapsed().as_secs_f64(),
        before as f64 / (1 << 20) as f64,
        after as f64 / (1 << 20) as f64,
        change * 100.0
    );
    for o in &other {
        println!("  {o}");
    }
    if a.json {
        println!(
            "{}",
            json!({"hostile": a.hostile, "bad_4xx": bad_4xx, "bad_other": bad_other,
                "valid_ok": valid_ok, "valid_failed": valid_failed,
                "memory_before": before, "memory_after": after})
        );
    }
    if bad_other > 0 || valid_failed > 0 || change.abs() > 0.10 {
        bail!("the server failed the hostile run (see above)");
    }
    Ok(())
}

pub fn load(a: LoadArgs) -> Result<()> {
    let text = std::fs::read_to_string(&a.data)
        .with_context(|| format!("--data {}: cannot read", a.data.display()))?;
    let examples = parse_examples(&a.data.display().to_string(), &text)?;
    if examples.is_empty() {
        bail!("--data {}: no examples", a.data.display());
    }
    if let Some(c) = a.concurrency.iter().find(|&&c| c == 0 || c > 1024) {
        bail!("--concurrency {c}: give 1 to 1024 clients");
    }
    let bodies: Vec<Vec<u8>> = examples
        .iter()
        .map(|e| body_of(e, a.compressed, a.max_new_tokens))
        .collect();
    if a.hostile > 0 {
        return hostile(&a, &bodies);
    }
    let mut results = Vec::new();
    println!(
        "| clients | requests | failed | queries/s | p50 ms | p95 ms | p99 ms | server p50 ms |\n|---|---|---|---|---|---|---|---|"
    );
    for &c in &a.concurrency {
        let r = level(&a, &bodies, c);
        println!(
            "| {} | {} | {} | {:.2} | {:.0} | {:.0} | {:.0} | {:.0} |",
            r.concurrency,
            r.requests,
            r.failed,
            r.queries_per_second,
            r.p50_ms,
            r.p95_ms,
            r.p99_ms,
            r.server_p50_ms
        );
        results.push(r);
    }
    if a.json {
        println!("{}", serde_json::to_string(&results)?);
    }
    if results.iter().any(|r| r.failed > 0) {
        bail!("some requests failed");
    }
    Ok(())
}
