//! `scaledown prepare`: real QA data, from the Hugging Face datasets-server rows API or from a
//! local file in the official formats, split 90/10 into train and eval files.

use crate::progress;
use crate::teacher;
use anyhow::{Context, Result, bail};
use clap::Args;
use scaledown_data::{
    Dataset, Example, HF_PAGE, Parsed, hf_page_offsets, parse_source, push_hf_page,
    split_train_eval, to_json,
};
use scaledown_files::fs::{read_text, write_atomic};
use scaledown_files::{models, passages};
use scaledown_model::burn::prelude::Device;
use scaledown_model::compressor::CompressorConfig;
use scaledown_model::evaluation::Evaluator;
use scaledown_model::oscar::OscarTokenizers;
use scaledown_retrieval::{Recall, Retriever};
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
    /// A local file of questions (official SQuAD/HotpotQA/TriviaQA JSON, or JSON Lines as in
    /// ../shared/data) instead of downloading. With `--dataset all`: a folder whose files are
    /// named after their dataset (squad*, hotpot*, trivia*).
    #[arg(long, alias = "queries")]
    pub source: Option<PathBuf>,
    /// Retrieve each question's documents from this corpus instead of using its own (questions
    /// without evidence text, as TriviaQA's, become usable): a folder (the documents of its
    /// squad*/hotpot*/trivia* files, e.g. ../shared/data) or a JSON Lines file (KILT
    /// `wikipedia_title` + `paragraphs`, or `text`/`context` lines).
    #[arg(long)]
    pub corpus: Option<PathBuf>,
    /// Passages retrieved per question (with --corpus).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub top_k: u32,
    /// Passages retrieved per eval question (default: --top-k); OSCAR trains with 5 and
    /// evaluates with 10.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub eval_top_k: Option<u32>,
    /// Generator tokens per corpus passage (with --corpus).
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(16..=4096))]
    pub chunk_tokens: u32,
    /// Folder holding downloaded models: the generator's tokenizer cuts the corpus into
    /// passages (default: $SCALEDOWN_MODELS or ~/.cache/scaledown/models).
    #[arg(long)]
    pub models_dir: Option<PathBuf>,
    /// Label the train questions with the uncompressed generator's answer from their full
    /// (retrieved) text, for `train --labels teacher` (cached in `<stem>_teacher_labels.json`
    /// beside the train file, resumable).
    #[arg(long)]
    pub teacher: bool,
    /// Longest teacher answer, in tokens (with --teacher).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=512))]
    pub max_new_tokens: u32,
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

/// `<stem>_<suffix>` beside the train file `train`.
fn beside(train: &Path, suffix: &str) -> PathBuf {
    let stem = train
        .file_stem()
        .map(|s| s.to_string_lossy())
        .unwrap_or_default();
    train.with_file_name(format!("{stem}_{suffix}"))
}

/// `<stem>_retrieval.json` beside the train file: the corpus and recall@K of `--corpus`.
pub fn retrieval_report_path(train: &Path) -> PathBuf {
    beside(train, "retrieval.json")
}

pub fn eval_path(train: &Path) -> PathBuf {
    beside(train, "eval.json")
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
    let retriever = match &a.corpus {
        Some(corpus) => Some(open_retriever(corpus, &a)?),
        None => None,
    };
    let (mut train, mut eval) = (Vec::new(), Vec::new());
    let mut recall = Vec::new();
    for &dataset in &datasets {
        let pool = match &a.source {
            Some(src) => from_file(dataset, src, datasets.len() > 1),
            None => download(dataset, share, &a.hf_endpoint, a.seed),
        }
        .and_then(|(parsed, file)| match &retriever {
            // Questions without evidence join: retrieval gives them their documents.
            Some(_) => Ok([parsed.examples, parsed.without_documents].concat()),
            None => Ok(parsed.with_documents(dataset, &file)?),
        });
        let pool = match pool {
            Ok(p) => p,
            // In a mix, a dataset that cannot be used is reported and left out.
            Err(e) if datasets.len() > 1 => {
                eprintln!("warning: {dataset} left out of the mix: {e:#}");
                continue;
            }
            Err(e) => return Err(e),
        };
        // Split on the questions' own documents (SQuAD by article), then retrieve.
        let (mut t, mut e) = split_train_eval(pool, share, a.seed)
            .map_err(|e| anyhow::anyhow!("splitting {dataset}: {e}"))?;
        println!("{dataset}: {} train, {} eval", t.len(), e.len());
        if let Some(r) = &retriever {
            let k = a.top_k as usize;
            let eval_k = a.eval_top_k.unwrap_or(a.top_k) as usize;
            if eval_k == k {
                let found = attach(r, &dataset.to_string(), k, [&mut t, &mut e]);
                println!("{dataset}: {}", found.summary(k));
                recall.push((dataset.to_string(), k, found));
            } else {
                let found = attach(r, &dataset.to_string(), k, [&mut t]);
                let eval_found = attach(r, &dataset.to_string(), eval_k, [&mut e]);
                println!("{dataset} train: {}", found.summary(k));
                println!("{dataset} eval: {}", eval_found.summary(eval_k));
                recall.push((format!("{dataset} train"), k, found));
                recall.push((format!("{dataset} eval"), eval_k, eval_found));
            }
        }
        train.extend(t);
        eval.extend(e);
    }
    if train.is_empty() {
        bail!("no usable examples for --dataset {}", a.dataset);
    }
    // Labelled before anything is written: an interrupted run leaves no unlabelled file and
    // picks up from the label cache.
    if a.teacher {
        label_with_teacher(&a, &mut train)?;
    }
    let eval_file = eval_path(&a.output_file);
    write_atomic(&a.output_file, to_json(&train).as_bytes())?;
    write_atomic(&eval_file, to_json(&eval).as_bytes())?;
    if let Some(r) = &retriever {
        let report = retrieval_report_path(&a.output_file);
        write_atomic(&report, r.report(&recall).as_bytes())?;
        println!("wrote {}", report.display());
    }
    println!(
        "wrote {} ({} examples) and {} ({} examples)",
        a.output_file.display(),
        train.len(),
        eval_file.display(),
        eval.len()
    );
    Ok(())
}

/// `--teacher`: each train example's `teacher_answer`, from the default generator reading
/// the full text.
fn label_with_teacher(a: &PrepareArgs, train: &mut [Example]) -> Result<()> {
    let dir = models::models_dir(a.models_dir.as_deref());
    let file = models::default_generator(&dir);
    if !file.exists() {
        models::fetch(&dir)?;
    }
    let g = models::load_generator(&file, &Device::flex())?;
    let tokenizers = OscarTokenizers {
        generator: g.tokenizer,
        encoder: None,
    };
    let cache = beside(&a.output_file, "teacher_labels.json");
    // Full-text answers: the compressor's settings are not read.
    let compressor = CompressorConfig::oscar();
    let evaluator = Evaluator::new(&tokenizers, &compressor, a.max_new_tokens as usize);
    let labels = teacher::labels(&cache, train, &g.model, &evaluator)?;
    for (ex, label) in train.iter_mut().zip(labels) {
        ex.teacher_answer = Some(label);
    }
    println!(
        "teacher labels: {} (cache {})",
        train.len(),
        cache.display()
    );
    Ok(())
}

/// [`Retriever::attach`] with a progress bar.
fn attach<const N: usize>(
    r: &Retriever,
    dataset: &str,
    k: usize,
    sides: [&mut Vec<Example>; N],
) -> Recall {
    let total = sides.iter().map(|s| s.len()).sum::<usize>();
    let bar = progress::bar(total as u64, &format!("retrieving for {dataset}"));
    let recall = r.attach(k, sides, || bar.inc(1));
    bar.finish_and_clear();
    recall
}

/// The `--corpus` paragraphs, cut by the generator's tokenizer and indexed.
fn open_retriever(corpus: &Path, a: &PrepareArgs) -> Result<Retriever> {
    let paragraphs = if corpus.is_dir() {
        // The documents of every dataset file in the folder.
        let mut docs = Vec::new();
        for dataset in Dataset::ALL {
            if let Ok(file) = find_in_dir(dataset, corpus) {
                let name = file.display().to_string();
                let parsed = parse_source(dataset, &name, &read_text(&file)?)?;
                docs.extend(parsed.examples.into_iter().flat_map(|e| e.documents));
            }
        }
        if docs.is_empty() {
            bail!(
                "--corpus {}: no squad*, hotpot* or trivia* file with documents",
                corpus.display()
            );
        }
        docs
    } else {
        passages::read_documents(corpus, "--corpus")?
    };
    let tokenizer = models::generator_tokenizer(&models::models_dir(a.models_dir.as_deref()))?;
    let bar = progress::bar(1, &format!("indexing {} paragraphs", paragraphs.len()));
    let r = Retriever::new(paragraphs, &tokenizer, a.chunk_tokens as usize)
        .with_context(|| format!("--corpus {}", corpus.display()))?;
    bar.finish_and_clear();
    println!(
        "corpus {}: {} paragraphs, {} passages of at most {} tokens",
        corpus.display(),
        r.paragraphs(),
        r.passages(),
        a.chunk_tokens
    );
    Ok(r)
}

/// The questions of `dataset` in `src` (a file, or the dataset's file in a folder), and the
/// file's name.
fn from_file(dataset: Dataset, src: &Path, mixed: bool) -> Result<(Parsed, String)> {
    let file = if mixed || src.is_dir() {
        find_in_dir(dataset, src)?
    } else {
        src.to_path_buf()
    };
    let name = file.display().to_string();
    let parsed = parse_source(dataset, &name, &read_text(&file)?)?;
    report_skips(dataset, &name, &parsed);
    Ok((parsed, name))
}

fn find_in_dir(dataset: Dataset, dir: &Path) -> Result<PathBuf> {
    let key = dataset.file_prefix();
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
    if !p.without_documents.is_empty() {
        eprintln!(
            "{file}: {} {dataset} questions come without evidence text (usable with --corpus)",
            p.without_documents.len()
        );
    }
}

/// Downloads enough rows for `n` examples from the Hugging Face datasets-server, with
/// retries (which pages: [`hf_page_offsets`]).
fn download(dataset: Dataset, n: usize, endpoint: &str, seed: u64) -> Result<(Parsed, String)> {
    let (name, config, split) = dataset.hf_table();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into();
    let url = |offset: usize| {
        format!(
            "{}/rows?dataset={}&config={config}&split={split}&offset={offset}&length={HF_PAGE}",
            endpoint.trim_end_matches('/'),
            name.replace('/', "%2F")
        )
    };
    let first = fetch_json(&agent, &url(0))?;
    let total = first["num_rows_total"]
        .as_u64()
        .with_context(|| format!("{}: the answer has no `num_rows_total`", url(0)))?;
    let offsets = hf_page_offsets(total as usize, n, seed);
    let bar = progress::bar(offsets.len() as u64, &format!("downloading {name}"));
    let mut parsed = Parsed::default();
    for &offset in &offsets {
        let page = match offset {
            0 => first.clone(),
            _ => fetch_json(&agent, &url(offset))?,
        };
        push_hf_page(dataset, &page, offset, &mut parsed)
            .map_err(|e| anyhow::anyhow!("{}: {e}", url(offset)))?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    report_skips(dataset, name, &parsed);
    if parsed.examples.is_empty() && parsed.without_documents.is_empty() {
        bail!(
            "{name}: no usable examples in {} rows",
            offsets.len() * HF_PAGE
        );
    }
    Ok((parsed, name.to_string()))
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
