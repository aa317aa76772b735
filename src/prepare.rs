//! `scaledown prepare`: real QA data, from the Hugging Face datasets-server rows API or from a
//! local file in the official formats, split 90/10 into train and eval files.

use crate::fsutil::{read_text, write_atomic};
use crate::progress;
use anyhow::{Context, Result, bail};
use clap::Args;
use scaledown_data::{Dataset, Example, Parsed, parse_source, push_row, split_train_eval, to_json};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Args)]
pub struct PrepareArgs {
    /// squad, trivia_qa, hotpot_qa, or all (a mix of the three).
    #[arg(long, default_value = "squad")]
    pub dataset: String,
    /// Examples in train + eval together.
    #[arg(long, alias = "num_examples", default_value_t = 200,
          value_parser = clap::value_parser!(u32).range(10..=1_000_000))]
    pub num_examples: u32,
    /// Train file; the eval file is written beside it as `<stem>_eval.json`.
    #[arg(long, alias = "output_file", default_value = "data/train.json")]
    pub output_file: PathBuf,
    /// A local file (official SQuAD/HotpotQA/TriviaQA JSON, or JSON Lines as in ../shared/data)
    /// instead of downloading. With `--dataset all`: a folder whose files are named after their
    /// dataset (squad*, hotpot*, trivia*).
    #[arg(long)]
    pub source: Option<PathBuf>,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Base address of the datasets-server API.
    #[arg(
        long,
        env = "SCALEDOWN_HF_ENDPOINT",
        default_value = "https://datasets-server.huggingface.co"
    )]
    pub hf_endpoint: String,
}

pub fn eval_path(train: &Path) -> PathBuf {
    let stem = train
        .file_stem()
        .map(|s| s.to_string_lossy())
        .unwrap_or_default();
    train.with_file_name(format!("{stem}_eval.json"))
}

pub fn run(a: PrepareArgs) -> Result<()> {
    let datasets: Vec<Dataset> = if a.dataset == "all" {
        Dataset::ALL.to_vec()
    } else {
        vec![
            a.dataset
                .parse::<Dataset>()
                .map_err(|e| anyhow::anyhow!("--dataset: {e}"))?,
        ]
    };
    let n = a.num_examples as usize;
    let share = n.div_ceil(datasets.len());
    let (mut train, mut eval) = (Vec::new(), Vec::new());
    for &dataset in &datasets {
        let pool = match &a.source {
            Some(src) => from_file(dataset, src, datasets.len() > 1),
            None => download(dataset, share, &a.hf_endpoint, a.seed),
        };
        let pool = match pool {
            Ok(p) => p,
            // In a mix, a dataset that cannot be used is reported and left out.
            Err(e) if datasets.len() > 1 => {
                eprintln!("warning: {dataset} left out of the mix: {e:#}");
                continue;
            }
            Err(e) => return Err(e),
        };
        let (t, e) = split_train_eval(pool, share, a.seed)
            .map_err(|e| anyhow::anyhow!("splitting {dataset}: {e}"))?;
        println!("{dataset}: {} train, {} eval", t.len(), e.len());
        train.extend(t);
        eval.extend(e);
    }
    if train.is_empty() {
        bail!("no usable examples for --dataset {}", a.dataset);
    }
    let eval_file = eval_path(&a.output_file);
    write_atomic(&a.output_file, to_json(&train).as_bytes())?;
    write_atomic(&eval_file, to_json(&eval).as_bytes())?;
    println!(
        "wrote {} ({} examples) and {} ({} examples)",
        a.output_file.display(),
        train.len(),
        eval_file.display(),
        eval.len()
    );
    Ok(())
}

fn from_file(dataset: Dataset, src: &Path, mixed: bool) -> Result<Vec<Example>> {
    let file = if mixed || src.is_dir() {
        find_in_dir(dataset, src)?
    } else {
        src.to_path_buf()
    };
    let parsed = parse_source(dataset, &file.display().to_string(), &read_text(&file)?)?;
    report_skips(dataset, &file.display().to_string(), &parsed);
    Ok(parsed.examples)
}

fn find_in_dir(dataset: Dataset, dir: &Path) -> Result<PathBuf> {
    let key = match dataset {
        Dataset::Squad => "squad",
        Dataset::HotpotQa => "hotpot",
        Dataset::TriviaQa => "trivia",
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("--source {}: not a readable folder", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().to_lowercase())
                .unwrap_or_default();
            name.starts_with(key) && (name.ends_with(".json") || name.ends_with(".jsonl"))
        })
        .collect();
    files.sort();
    files
        .into_iter()
        .next()
        .with_context(|| format!("no {key}*.json[l] file in {}", dir.display()))
}

fn report_skips(dataset: Dataset, file: &str, p: &Parsed) {
    if p.unanswerable > 0 {
        eprintln!(
            "{file}: skipped {} unanswerable {dataset} questions",
            p.unanswerable
        );
    }
    if p.without_documents > 0 {
        eprintln!(
            "{file}: skipped {} {dataset} questions without evidence text (they need retrieval)",
            p.without_documents
        );
    }
}

/// Which datasets-server table holds each dataset.
fn hf_table(dataset: Dataset) -> (&'static str, &'static str, &'static str) {
    match dataset {
        Dataset::Squad => ("rajpurkar/squad", "plain_text", "train"),
        Dataset::HotpotQa => ("hotpotqa/hotpot_qa", "distractor", "train"),
        Dataset::TriviaQa => ("mandarjoshi/trivia_qa", "rc.wikipedia", "train"),
    }
}

const PAGE: usize = 100;

/// Downloads enough rows for `n` examples: pages spread over the whole table (SQuAD's rows are
/// ordered by article, and the split needs many articles), with retries.
fn download(dataset: Dataset, n: usize, endpoint: &str, seed: u64) -> Result<Vec<Example>> {
    let (name, config, split) = hf_table(dataset);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into();
    let url = |offset: usize| {
        format!(
            "{}/rows?dataset={}&config={config}&split={split}&offset={offset}&length={PAGE}",
            endpoint.trim_end_matches('/'),
            name.replace('/', "%2F")
        )
    };
    let first = fetch_json(&agent, &url(0))?;
    let total = first["num_rows_total"]
        .as_u64()
        .with_context(|| format!("{}: the answer has no `num_rows_total`", url(0)))?
        as usize;
    // Twice the rows needed, so that the split can keep eval articles apart.
    let pages = (2 * n).div_ceil(PAGE).clamp(1, total.div_ceil(PAGE));
    let stride = total.div_ceil(PAGE) / pages;
    let offsets: Vec<usize> = (0..pages)
        .map(|i| (i * stride.max(1) + (seed as usize % stride.max(1))) * PAGE)
        .filter(|&o| o < total)
        .collect();
    let bar = progress::bar(offsets.len() as u64, &format!("downloading {name}"));
    let mut parsed = Parsed::default();
    for &offset in &offsets {
        let page = if offset == 0 {
            first.clone()
        } else {
            fetch_json(&agent, &url(offset))?
        };
        let rows = page["rows"]
            .as_array()
            .with_context(|| format!("{}: the answer has no `rows` list", url(offset)))?;
        for (i, r) in rows.iter().enumerate() {
            let row = r.get("row").unwrap_or(r);
            push_row(dataset, row, &mut parsed)
                .map_err(|e| anyhow::anyhow!("{}: row {}: {e}", url(offset), offset + i))?;
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    report_skips(dataset, name, &parsed);
    if parsed.examples.is_empty() {
        bail!(
            "{name}: no usable examples in {} rows",
            offsets.len() * PAGE
        );
    }
    Ok(parsed.examples)
}

/// GET with 4 tries and growing pauses; 4xx other than 429 fail at once.
fn fetch_json(agent: &ureq::Agent, url: &str) -> Result<serde_json::Value> {
    let mut last = String::new();
    for attempt in 0..4u32 {
        if attempt > 0 {
            std::thread::sleep(Duration::from_millis(500 * 2u64.pow(attempt)));
        }
        match agent.get(url).call() {
            Ok(mut resp) => {
                let text = resp
                    .body_mut()
                    .with_config()
                    .limit(64 << 20)
                    .read_to_string()
                    .with_context(|| format!("reading {url}"))?;
                return serde_json::from_str(&text).with_context(|| format!("{url}: not JSON"));
            }
            Err(ureq::Error::StatusCode(code)) if code != 429 && code < 500 => {
                bail!("{url}: HTTP {code}");
            }
            Err(e) => last = e.to_string(),
        }
    }
    bail!("{url}: failed after 4 tries: {last}")
}
