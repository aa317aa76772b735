//! `scaledown bench`: the same work in this project, in PyTorch (transformers, float32) and
//! in llama.cpp (the same GGUF, its quantized kernels), at the same thread count, measured in
//! one invocation and printed as ratios. Single runs alternate between the sides, so that a
//! busy machine slows them alike. `scaledown load` ([`load`]) loads a running server.

pub mod load;
mod work;
mod worker;

use anyhow::{Result, bail};
use indicatif::ProgressBar;
use scaledown_data::Dataset;
use scaledown_model::bert::Bert;
use scaledown_model::burn::prelude::*;
use scaledown_model::llama::Llama;
use scaledown_model::oscar::OscarTokenizers;
use scaledown_model::tokenizer::Tokenizer;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use work::{Ours, Work};
use worker::{Side, Worker};

pub struct BenchOptions {
    pub runs: usize,
    pub threads: usize,
    pub prefill: Vec<usize>,
    pub decode_tokens: usize,
    /// Greedy tokens per answer in the end-to-end measurements (no early stop).
    pub answer_tokens: usize,
    /// Questions per end-to-end run.
    pub queries: usize,
    /// Batch sizes of the batched answers.
    pub answer_batches: Vec<usize>,
    /// The models hold random weights of their architectures (said in the report; llama.cpp
    /// needs the real GGUF).
    pub random_weights: bool,
    /// "cpu" or "cuda".
    pub pytorch_device: String,
    /// `../shared/data`: SQuAD and HotpotQA questions; None skips the work that needs them.
    pub data_dir: Option<PathBuf>,
    /// Python with torch + transformers + gguf; None skips PyTorch.
    pub python: Option<String>,
    /// Python with llama-cpp-python; None skips llama.cpp.
    pub llama_cpp_python: Option<String>,
    pub json: bool,
    /// Keep only the measurements whose name contains this (case-insensitive).
    pub only: Option<String>,
}

/// How a measurement is reported.
#[derive(Clone, Copy)]
enum Unit {
    /// Milliseconds per run.
    Ms,
    /// Milliseconds per question, `n` questions per run.
    MsPerQuery(usize),
    /// Tokens per second, `n` tokens per run.
    TokPerS(usize),
    /// Questions per second, `n` questions per run.
    QueriesPerS(usize),
}

struct Item {
    name: String,
    work: Work,
    unit: Unit,
}

/// One measured item: our runs and, per other side (in the order of the workers), theirs
/// when that side ran it.
struct Row<'a> {
    item: &'a Item,
    ours: Stat,
    others: Vec<Option<Stat>>,
}

#[derive(Clone, Copy)]
struct Stat {
    median: f64,
    min: f64,
    max: f64,
}

fn stat(mut v: Vec<f64>) -> Stat {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Stat {
        median,
        min: v[0],
        max: v[n - 1],
    }
}

impl Unit {
    /// Seconds per run -> the reported value (larger is better only for tokens/s).
    fn value(self, seconds: f64) -> f64 {
        match self {
            Unit::Ms => seconds * 1e3,
            Unit::MsPerQuery(n) => seconds * 1e3 / n as f64,
            Unit::TokPerS(n) | Unit::QueriesPerS(n) => n as f64 / seconds,
        }
    }

    fn suffix(self) -> &'static str {
        match self {
            Unit::Ms => "ms",
            Unit::MsPerQuery(_) => "ms/query",
            Unit::TokPerS(_) => "tok/s",
            Unit::QueriesPerS(_) => "queries/s",
        }
    }

    /// How many times faster `ours` is than `theirs`.
    fn ratio(self, ours: f64, theirs: f64) -> f64 {
        match self {
            Unit::TokPerS(_) | Unit::QueriesPerS(_) => ours / theirs,
            Unit::Ms | Unit::MsPerQuery(_) => theirs / ours,
        }
    }
}

/// The measurements: prefill, decode, then (with the data) training step, MiniLM and answers.
fn items(
    o: &BenchOptions,
    tokenizers: &OscarTokenizers,
    minilm: Option<&Tokenizer>,
) -> Result<Vec<Item>> {
    let mut items: Vec<Item> = o
        .prefill
        .iter()
        .map(|&n| Item {
            name: format!("prefill {n} tokens"),
            work: Work::Prefill(work::synthetic_ids(n)),
            unit: Unit::Ms,
        })
        .collect();
    items.push(Item {
        name: format!("decode {} tokens", o.decode_tokens),
        work: Work::Decode {
            prompt: work::synthetic_ids(32),
            tokens: o.decode_tokens,
        },
        unit: Unit::TokPerS(o.decode_tokens),
    });
    if let Some(dir) = &o.data_dir {
        data_items(o, dir, tokenizers, minilm, &mut items)?;
    }
    if let Some(only) = &o.only {
        let only = only.to_lowercase();
        items.retain(|i| i.name.to_lowercase().contains(&only));
        if items.is_empty() {
            bail!("--only {only:?} matches no measurement");
        }
    }
    Ok(items)
}

/// The measurements on real questions: training step, MiniLM and answers.
fn data_items(
    o: &BenchOptions,
    dir: &Path,
    tokenizers: &OscarTokenizers,
    minilm: Option<&Tokenizer>,
    items: &mut Vec<Item>,
) -> Result<()> {
    let most = o.answer_batches.iter().copied().fold(o.queries, usize::max);
    let squad = work::questions(dir, Dataset::Squad, "squad_dev.jsonl", most.max(4))?;
    let hotpot = work::questions(dir, Dataset::HotpotQa, "hotpotqa_dev.jsonl", o.queries)?;
    items.push(Item {
        name: "training step, LoRA, batch 4 (SQuAD)".into(),
        work: work::train_work(tokenizers, &squad[..4])?,
        unit: Unit::Ms,
    });
    items.push(Item {
        name: "pretraining step, frozen generator, batch 4 windows".into(),
        work: work::pretrain_work(tokenizers, &squad, 4)?,
        unit: Unit::Ms,
    });
    if let Some(tok) = minilm {
        for batch in [1, 8] {
            items.push(Item {
                name: format!("MiniLM, batch {batch} x 128 tokens"),
                work: work::encode_work(tok, &squad, batch, 128)?,
                unit: Unit::Ms,
            });
        }
    }
    // One question at a time (latency in ms/query), then batches answered together
    // (throughput in queries/s).
    let single = [
        ("SQuAD, 1 document".to_string(), &squad[..o.queries], false),
        ("HotpotQA, 10 documents".to_string(), &hotpot[..], false),
    ];
    let batches = o
        .answer_batches
        .iter()
        .map(|&n| (format!("SQuAD, batch of {n}"), &squad[..n], true));
    for (label, examples, batched) in single.into_iter().chain(batches) {
        let (full, compressed) = work::answer_work(tokenizers, examples, o.answer_tokens, batched)?;
        let unit = if batched {
            Unit::QueriesPerS(examples.len())
        } else {
            Unit::MsPerQuery(examples.len())
        };
        items.push(Item {
            name: format!("answer {label}, uncompressed"),
            work: full,
            unit,
        });
        items.push(Item {
            name: format!("answer {label}, compressed x16"),
            work: compressed,
            unit,
        });
    }
    Ok(())
}

/// The models measured, loaded by the caller, and where their files are (the other sides
/// load the same files).
pub struct BenchModels {
    pub generator_path: PathBuf,
    pub generator: Llama,
    pub tokenizer: Tokenizer,
    /// MiniLM's folder, and MiniLM when the measurements need it (questions from --data-dir).
    pub encoder_dir: PathBuf,
    pub encoder: Option<(Bert, Tokenizer)>,
}

/// Peak resident memory of this process, from /proc (Linux).
pub fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Measures every item on this side and the other sides, alternating, and prints the table
/// (or JSON); `bar` shows the runs.
pub fn run(
    models: BenchModels,
    device: &Device,
    backend: &str,
    o: &BenchOptions,
    bar: ProgressBar,
) -> Result<()> {
    let BenchModels {
        generator_path,
        generator: model,
        tokenizer,
        encoder_dir: minilm_dir,
        encoder: minilm,
    } = models;
    let generator = generator_path.as_path();
    let tokenizers = OscarTokenizers {
        generator: tokenizer,
        encoder: None,
    };
    let items = items(o, &tokenizers, minilm.as_ref().map(|m| &m.1))?;
    let mut ours = Ours::new(model, &tokenizers, minilm.map(|m| m.0), device)?;
    let mut workers = Vec::new();
    if let Some(py) = &o.python {
        let load = json!({
            "op": "load", "generator": generator, "minilm": minilm_dir,
            "random_weights": o.random_weights, "device": o.pytorch_device,
            "threads": o.threads, "num_layers": work::bench_compressor().num_layers,
            "compression_rate": work::bench_compressor().compression_rate,
            "lora_rank": work::LORA.rank, "lora_alpha": work::LORA.alpha,
        });
        match Worker::start(Side::PyTorch, py, o.threads, load) {
            Ok(w) => workers.push(w),
            Err(e) => eprintln!("warning: {e:#}; measuring without PyTorch"),
        }
    }
    if let Some(py) = &o.llama_cpp_python {
        let gguf = generator.extension().is_some_and(|e| e == "gguf");
        if o.random_weights || !gguf {
            eprintln!(
                "warning: llama.cpp needs the generator's GGUF file with its weights; measuring without it"
            );
        } else {
            let load = json!({"op": "load", "generator": generator, "threads": o.threads});
            match Worker::start(Side::LlamaCpp, py, o.threads, load) {
                Ok(w) => workers.push(w),
                Err(e) => eprintln!("warning: {e:#}; measuring without llama.cpp"),
            }
        }
    }
    let sides: Vec<String> = workers
        .iter()
        .map(|w| {
            let on = if w.side == Side::PyTorch {
                format!(" on {}", o.pytorch_device)
            } else {
                String::new()
            };
            format!(", {} {}{on}", w.side.name(), w.version)
        })
        .collect();
    eprintln!(
        "SmolLM2-135M ({}{}), backend {backend}, {} threads, median of {} runs after a warm-up{}",
        generator.display(),
        if o.random_weights {
            ", random weights"
        } else {
            ""
        },
        o.threads,
        o.runs,
        sides.concat()
    );

    bar.set_length((items.len() * (o.runs + 1)) as u64);
    let mut rows = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let key = i.to_string();
        // Per worker: whether it runs this item (false: not its work, or it failed).
        let mut runs_it: Vec<bool> = workers
            .iter_mut()
            .map(|w| match w.prepare(&key, item.work.to_json()) {
                Ok(yes) => yes,
                Err(e) => {
                    bar.suspend(|| eprintln!("warning: {}: {e:#}", item.name));
                    false
                }
            })
            .collect();
        let mut ours_s = Vec::new();
        let mut others_s = vec![Vec::new(); workers.len()];
        for r in 0..=o.runs {
            let a = ours.run(&item.work)?;
            if r > 0 {
                ours_s.push(item.unit.value(a));
            }
            for (w, worker) in workers.iter_mut().enumerate() {
                if !runs_it[w] {
                    continue;
                }
                match worker.run(&key) {
                    Ok(s) if r > 0 => others_s[w].push(item.unit.value(s)),
                    Ok(_) => {}
                    Err(e) => {
                        bar.suspend(|| eprintln!("warning: {}: {e:#}", item.name));
                        runs_it[w] = false;
                    }
                }
            }
            bar.inc(1);
        }
        let others: Vec<Option<Stat>> = others_s
            .into_iter()
            .map(|v| (v.len() == o.runs).then(|| stat(v)))
            .collect();
        let ours = stat(ours_s);
        // A line per measurement as it ends, so that a run cut short still tells something.
        bar.suspend(|| {
            let (name, unit) = (&item.name, item.unit.suffix());
            let theirs: String = workers
                .iter()
                .zip(&others)
                .filter_map(|(w, s)| s.map(|s| format!(", {} {:.1}", w.side.name(), s.median)))
                .collect();
            eprintln!("{name}: {:.1} {unit}{theirs}", ours.median);
        });
        rows.push(Row { item, ours, others });
    }
    bar.finish_and_clear();
    let generate_peak = match o.random_weights {
        false => generate_peak_mb(generator, o.threads),
        true => None,
    };
    let ours_peak = peak_rss_mb();
    let peaks: Vec<Option<f64>> = workers.iter_mut().map(|w| w.peak_rss_mb()).collect();
    let sides: Vec<(Side, &str)> = workers
        .iter()
        .map(|w| (w.side, w.version.as_str()))
        .collect();
    report(&rows, [ours_peak, generate_peak], &peaks, o, &sides)
}

/// Peak memory of `scaledown generate` on `generator` (in a child process, as a user runs it:
/// the model held in its blocks, a prompt of ~500 tokens, 32 new tokens): the figure to set
/// beside llama.cpp's, whose worker only answers. This process also trains, so its own peak
/// is not.
fn generate_peak_mb(generator: &Path, threads: usize) -> Option<f64> {
    let sentence = "The Rhine rises in the Swiss Alps, forms part of the border between \
        Switzerland and Germany, and flows north through Germany and the Netherlands into the \
        North Sea, carrying barges past vineyards, castles and the cities of Basel and Cologne. ";
    let out = std::process::Command::new(std::env::current_exe().ok()?)
        .arg("generate")
        .arg("--model")
        .arg(generator)
        .args(["--max-new-tokens", "32", "--json", "--prompt"])
        .arg(sentence.repeat(10))
        .env("RAYON_NUM_THREADS", threads.to_string())
        .output()
        .ok()?;
    if !out.status.success() {
        eprintln!(
            "warning: `scaledown generate` for the memory row failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        return None;
    }
    serde_json::from_slice::<Value>(&out.stdout).ok()?["peak_memory_mb"].as_f64()
}

fn report(
    rows: &[Row],
    [ours_peak, generate_peak]: [Option<f64>; 2],
    peaks: &[Option<f64>],
    o: &BenchOptions,
    sides: &[(Side, &str)],
) -> Result<()> {
    let fmt = |s: &Stat, unit: Unit| {
        format!(
            "{:.1} {} [{:.1}, {:.1}]",
            s.median,
            unit.suffix(),
            s.min,
            s.max
        )
    };
    // The uncompressed row that a compressed answer row pairs with.
    let full_of = |i: usize| {
        let full_name = rows[i].item.name.replace("compressed x16", "uncompressed");
        rows[..i].iter().rfind(|r| r.item.name == full_name)
    };
    if o.json {
        let json_rows: Vec<Value> = rows
            .iter()
            .enumerate()
            .map(|(i, row)| {
                let mut v = json!({
                    "work": row.item.name, "unit": row.item.unit.suffix(),
                    "ours": {"median": row.ours.median, "min": row.ours.min, "max": row.ours.max},
                });
                for ((side, _), s) in sides.iter().zip(&row.others) {
                    v[side.key()] =
                        json!(s.map(|t| json!({"median": t.median, "min": t.min, "max": t.max})));
                    v[format!("ratio_{}", side.key())] =
                        json!(s.map(|t| row.item.unit.ratio(row.ours.median, t.median)));
                }
                // Our compressed answer against each side's full-text answer.
                if row.item.name.ends_with("compressed x16")
                    && let Some(full) = full_of(i)
                {
                    for ((side, _), s) in sides.iter().zip(&full.others) {
                        v[format!("compressed_vs_{}_full_text", side.key())] =
                            json!(s.map(|t| row.item.unit.ratio(row.ours.median, t.median)));
                    }
                }
                v
            })
            .collect();
        let mut peak = json!({"ours": ours_peak, "ours_generate": generate_peak});
        let mut versions = json!({});
        for ((side, version), p) in sides.iter().zip(peaks) {
            peak[side.key()] = json!(p);
            versions[side.key()] = json!(version);
        }
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "threads": o.threads, "runs": o.runs, "versions": versions,
                "pytorch_device": o.pytorch_device, "random_weights": o.random_weights,
                "rows": json_rows, "peak_rss_mb": peak,
            }))?
        );
        return Ok(());
    }
    let mut header = "| work | scaledown median [min, max] |".to_string();
    let mut rule = "|---|---|".to_string();
    for (side, _) in sides {
        let name = side.name();
        header += &format!(" {name} median [min, max] | x faster than {name} |");
        rule += "---|---|";
    }
    println!("{header}\n{rule}");
    let cells = |row: &Row| -> String {
        row.others
            .iter()
            .map(|s| match s {
                Some(t) => format!(
                    " {} | {:.2}x |",
                    fmt(t, row.item.unit),
                    row.item.unit.ratio(row.ours.median, t.median)
                ),
                None => " - | - |".into(),
            })
            .collect()
    };
    let show = |v: Option<f64>| v.map(|v| format!("{v:.2}x")).unwrap_or("-".into());
    for (i, row) in rows.iter().enumerate() {
        println!(
            "| {} | {} |{}",
            row.item.name,
            fmt(&row.ours, row.item.unit),
            cells(row)
        );
        if row.item.name.ends_with("compressed x16")
            && let Some(full) = full_of(i)
        {
            let unit = row.item.unit;
            // Each side's own compressed speed-up, then ours against each side's full text.
            let own: String = row
                .others
                .iter()
                .zip(&full.others)
                .map(|(c, f)| match (c, f) {
                    (Some(c), Some(f)) => {
                        format!(" {} | |", show(Some(unit.ratio(c.median, f.median))))
                    }
                    _ => " - | |".into(),
                })
                .collect();
            println!(
                "| ↳ compressed speed-up (uncompressed / compressed) | {} |{own}",
                show(Some(unit.ratio(row.ours.median, full.ours.median)))
            );
            for ((side, _), f) in sides.iter().zip(&full.others) {
                if let Some(f) = f {
                    println!(
                        "| ↳ our compressed answer vs {}'s full-text answer (x faster) | {} |{}",
                        side.name(),
                        show(Some(unit.ratio(row.ours.median, f.median))),
                        " | |".repeat(sides.len())
                    );
                }
            }
        }
    }
    let mb = |v: Option<f64>| v.map(|m| format!("{m:.0} MB")).unwrap_or("-".into());
    let peak_cells: String = peaks.iter().map(|p| format!(" {} | |", mb(*p))).collect();
    println!(
        "| peak memory (RSS, whole run) | {} |{peak_cells}",
        mb(ours_peak)
    );
    if generate_peak.is_some() {
        println!(
            "| ↳ ours: `scaledown generate` alone (the generator in blocks, ~500-token prompt, 32 tokens) | {} |{}",
            mb(generate_peak),
            " | |".repeat(sides.len())
        );
    }
    Ok(())
}
