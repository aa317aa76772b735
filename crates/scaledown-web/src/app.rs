//! The page: wires `index.html`'s controls to the playground. Long work runs as one task at a
//! time, yielding to the browser between steps so that charts and numbers update live.

use crate::playground::{ModelFiles, Playground};
use crate::{charts, dom};
use scaledown_data::results::{EvalRun, Prediction};
use scaledown_data::{Dataset, Example, Scores, parse_examples, parse_source, split_train_eval};
use scaledown_model::burn::prelude::*;
use scaledown_model::evaluation::Speed;
use scaledown_model::oscar::Oscar;
use scaledown_model::report::Report;
use std::cell::RefCell;
use std::rc::Rc;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::spawn_local;
use web_sys::{DragEvent, File};

/// Where `trunk build` puts the default sample (copied from `web/data/`).
const DEFAULT_TRAIN: &str = "data/squad_sample.json";
const DEFAULT_EVAL: &str = "data/squad_sample_eval.json";
/// Examples kept from a user's file (the page trains for minutes, not hours).
const MAX_EXAMPLES: usize = 2000;

#[derive(Default)]
struct State {
    device: Option<Device>,
    train: Vec<Example>,
    eval: Vec<Example>,
    /// Taken out while a task works with it.
    playground: Option<Playground>,
    losses: Vec<f32>,
    before: Option<EvalRun>,
    after: Option<EvalRun>,
    full_text: Option<EvalRun>,
    /// Fixed-length answering speed in this browser, once measured.
    speed: Option<Speed>,
    /// From a loaded `metrics_report.json`: (backend, compressed ms, uncompressed ms).
    native: Option<(String, f64, f64)>,
    busy: bool,
}

type Shared = Rc<RefCell<State>>;

pub fn start() {
    std::panic::set_hook(Box::new(|info| {
        console_error_panic_hook::hook(info);
        // A panic stops the wasm module: say so on the page rather than leave it dead.
        show_error(&format!("the page stopped on an internal error: {info}"));
        dom::set_state("phase", "failed");
    }));
    let state: Shared = Rc::default();
    wire(&state);
    spawn_local(async move {
        let (device, backend) = init_device().await;
        dom::set_text("backend", &backend);
        dom::set_state("backend", &backend);
        state.borrow_mut().device = Some(device);
        load_default_sample(&state).await;
        dom::set_state("phase", "ready");
    });
}

/// WebGPU when the browser gives an adapter, otherwise Burn's CPU backend compiled to wasm.
async fn init_device() -> (Device, String) {
    let navigator = web_sys::window().expect("a window").navigator();
    let has_gpu = js_sys::Reflect::get(&navigator, &"gpu".into())
        .map(|g| !g.is_undefined() && !g.is_null())
        .unwrap_or(false);
    let why_not = if has_gpu {
        match Device::wgpu_options().init_with_setup_async().await {
            Ok((device, setup)) => {
                let name = setup.adapter.get_info().name;
                let name = if name.is_empty() {
                    adapter_info().await
                } else {
                    name
                };
                return (device, format!("WebGPU ({name})"));
            }
            Err(e) => format!("WebGPU failed: {e}"),
        }
    } else {
        "this browser has no WebGPU".to_string()
    };
    (
        Device::flex(),
        format!("CPU (Burn Flex in wasm; {why_not})"),
    )
}

/// The adapter's vendor and architecture as the browser reports them (wgpu leaves the name
/// empty in browsers), e.g. `google swiftshader`.
async fn adapter_info() -> String {
    let get = |v: &wasm_bindgen::JsValue, k: &str| js_sys::Reflect::get(v, &k.into()).ok();
    let info = async {
        let navigator = web_sys::window()?.navigator();
        let gpu = get(&navigator, "gpu")?;
        let request: js_sys::Function = get(&gpu, "requestAdapter")?.dyn_into().ok()?;
        let promise: js_sys::Promise = request.call0(&gpu).ok()?.dyn_into().ok()?;
        let adapter = wasm_bindgen_futures::JsFuture::from(promise).await.ok()?;
        let info = get(&adapter, "info")?;
        let parts: Vec<String> = ["vendor", "architecture", "description"]
            .iter()
            .filter_map(|k| get(&info, k)?.as_string())
            .filter(|s| !s.is_empty())
            .collect();
        Some(parts.join(" "))
    }
    .await;
    info.filter(|s| !s.is_empty())
        .unwrap_or_else(|| "adapter not named by the browser".into())
}

fn show_error(message: &str) {
    dom::set_text("error", message);
    dom::element::<web_sys::HtmlElement>("error").set_hidden(false);
}

fn clear_error() {
    dom::element::<web_sys::HtmlElement>("error").set_hidden(true);
}

fn status(text: &str) {
    dom::set_text("status", text);
}

/// Runs `work` as the page's one task: refuses a second, shows its error, frees the page.
fn task<F>(state: &Shared, work: impl FnOnce(Shared) -> F + 'static)
where
    F: Future<Output = Result<(), String>> + 'static,
{
    if std::mem::replace(&mut state.borrow_mut().busy, true) {
        status("busy: wait for the current task to end");
        return;
    }
    clear_error();
    let state = state.clone();
    spawn_local(async move {
        let result = work(state.clone()).await;
        state.borrow_mut().busy = false;
        match result {
            Ok(()) => {}
            Err(e) => {
                show_error(&e);
                status("stopped");
                dom::set_state("phase", "error");
            }
        }
    });
}

fn wire(state: &Shared) {
    let s = state.clone();
    dom::on("data-file", "change", move |_| {
        let files = dom::chosen_files("data-file");
        task(&s, |st| load_files(st, files));
    });
    let s = state.clone();
    dom::on("drop", "dragover", move |e| e.prevent_default());
    dom::on("drop", "drop", move |e| {
        e.prevent_default();
        let files: Vec<File> = e
            .dyn_ref::<DragEvent>()
            .and_then(|d| d.data_transfer())
            .and_then(|t| t.files())
            .map(|l| (0..l.length()).filter_map(|i| l.get(i)).collect())
            .unwrap_or_default();
        task(&s, |st| load_files(st, files));
    });
    let s = state.clone();
    dom::on("load-model", "click", move |_| task(&s, load_real_model));
    let s = state.clone();
    dom::on("use-tiny", "click", move |_| task(&s, use_tiny_model));
    let s = state.clone();
    dom::on("train", "click", move |_| task(&s, train));
    let s = state.clone();
    dom::on("evaluate", "click", move |_| task(&s, evaluate_only));
    let s = state.clone();
    dom::on("measure-speed", "click", move |_| task(&s, measure_speed));
    let s = state.clone();
    dom::on("compress", "click", move |_| task(&s, compress_own_text));
    let s = state.clone();
    dom::on("report-file", "change", move |_| {
        let files = dom::chosen_files("report-file");
        task(&s, |st| load_report(st, files));
    });
}

async fn load_default_sample(state: &Shared) {
    let loaded = async {
        let train = parse_examples(DEFAULT_TRAIN, &dom::fetch_text(DEFAULT_TRAIN).await?)
            .map_err(|e| e.to_string())?;
        let eval = parse_examples(DEFAULT_EVAL, &dom::fetch_text(DEFAULT_EVAL).await?)
            .map_err(|e| e.to_string())?;
        Ok::<_, String>((train, eval))
    }
    .await;
    match loaded {
        Ok((train, eval)) => set_data(state, train, eval, "built-in SQuAD sample"),
        Err(e) => {
            dom::set_text(
                "data-info",
                &format!("no built-in sample ({e}); choose or drop a file"),
            );
        }
    }
}

fn set_data(state: &Shared, train: Vec<Example>, eval: Vec<Example>, source: &str) {
    dom::set_text(
        "data-info",
        &format!(
            "{source}: {} training and {} evaluation questions",
            train.len(),
            eval.len()
        ),
    );
    dom::set_state("examples", &format!("{}/{}", train.len(), eval.len()));
    let mut st = state.borrow_mut();
    st.train = train;
    st.eval = eval;
    // A tiny model's vocabulary comes from the data: a new sample needs a new one.
    st.playground = None;
    st.before = None;
    st.after = None;
    st.full_text = None;
}

/// A `prepare` file (train and `_eval`, or one file split 90/10 here) or official SQuAD JSON.
async fn load_files(state: Shared, files: Vec<File>) -> Result<(), String> {
    if files.is_empty() {
        return Ok(());
    }
    status("reading data");
    let mut train = vec![];
    let mut eval = vec![];
    let mut names = vec![];
    for file in &files {
        let name = file.name();
        let text = dom::read_text(file).await?;
        let examples = match parse_examples(&name, &text) {
            Ok(e) => e,
            Err(prepared) => match parse_source(Dataset::Squad, &name, &text) {
                Ok(parsed) if !parsed.examples.is_empty() => parsed.examples,
                _ => {
                    return Err(format!(
                        "{prepared} (neither a `scaledown prepare` file nor official SQuAD JSON)"
                    ));
                }
            },
        };
        if name.ends_with("_eval.json") {
            eval.extend(examples);
        } else {
            train.extend(examples);
        }
        names.push(name);
    }
    if eval.is_empty() {
        let n = train.len().min(MAX_EXAMPLES);
        (train, eval) = split_train_eval(train, n, 0)?;
    }
    set_data(&state, train, eval, &names.join(", "));
    status("data loaded");
    Ok(())
}

fn device(state: &Shared) -> Result<Device, String> {
    state
        .borrow()
        .device
        .clone()
        .ok_or_else(|| "the compute backend is still starting".into())
}

fn show_model(p: &Playground) {
    dom::set_text("model-info", &p.description);
    let c = &p.pipeline.config;
    dom::set_text(
        "compression",
        &format!(
            "up to {} memory vectors per {}-token chunk: rate {}",
            c.num_memory_tokens,
            c.chunk_tokens(),
            c.compression_rate
        ),
    );
}

async fn use_tiny_model(state: Shared) -> Result<(), String> {
    let device = device(&state)?;
    let p = {
        let st = state.borrow();
        if st.train.is_empty() {
            return Err("load data first: the tiny model's words come from it".into());
        }
        let all: Vec<Example> = st.train.iter().chain(&st.eval).cloned().collect();
        Playground::tiny(&all, &device, 0)?
    };
    set_model(&state, p);
    Ok(())
}

/// A new model: its results so far belong to the old one.
fn set_model(state: &Shared, p: Playground) {
    show_model(&p);
    let mut st = state.borrow_mut();
    st.playground = Some(p);
    st.before = None;
    st.after = None;
    st.full_text = None;
    st.speed = None;
    st.losses.clear();
}

/// SmolLM2 GGUF plus a `scaledown train` checkpoint, from chosen files or URLs.
async fn load_real_model(state: Shared) -> Result<(), String> {
    let device = device(&state)?;
    let mut files = ModelFiles::default();
    let mut encoder = (None, None, None);
    status("reading model files");
    for file in dom::chosen_files("model-files") {
        let name = file.name();
        match name.as_str() {
            n if n.ends_with(".gguf") => files.gguf = dom::read_file(&file).await?,
            "setup.json" => files.setup = Some(dom::read_text(&file).await?),
            "trainable.safetensors" => files.trainable = Some(dom::read_file(&file).await?),
            "manifest.json" => files.manifest = Some(dom::read_text(&file).await?),
            // Training state for `--resume` (AdamW's moments, state.json): answering needs
            // neither, so a whole checkpoint folder can be chosen.
            "optimizer.safetensors" | "state.json" => {}
            "config.json" => encoder.0 = Some(dom::read_text(&file).await?),
            "model.safetensors" => encoder.1 = Some(dom::read_file(&file).await?),
            "tokenizer.json" => encoder.2 = Some(dom::read_file(&file).await?),
            other => {
                return Err(format!(
                    "{other}: not a model file (a .gguf, setup.json, trainable.safetensors, manifest.json, or \
                     an encoder's config.json, model.safetensors, tokenizer.json)"
                ));
            }
        }
    }
    let gguf_url = dom::value("gguf-url");
    if files.gguf.is_empty() && !gguf_url.trim().is_empty() {
        status("downloading the generator");
        files.gguf = dom::fetch_bytes(gguf_url.trim()).await?;
    }
    let checkpoint_url = dom::value("checkpoint-url");
    let checkpoint_url = checkpoint_url.trim().trim_end_matches('/');
    if files.setup.is_none() && !checkpoint_url.is_empty() {
        status("downloading the checkpoint");
        files.setup = Some(dom::fetch_text(&format!("{checkpoint_url}/setup.json")).await?);
        files.trainable =
            Some(dom::fetch_bytes(&format!("{checkpoint_url}/trainable.safetensors")).await?);
        // Checkpoints written before manifests have none: only a missing one is passed over.
        files.manifest = match dom::fetch_text(&format!("{checkpoint_url}/manifest.json")).await {
            Ok(text) => Some(text),
            Err(e) if e.contains("HTTP 404") => None,
            Err(e) => return Err(e),
        };
    }
    if files.gguf.is_empty() {
        return Err("choose the generator's .gguf file (or give its URL)".into());
    }
    if let (Some(c), Some(w), Some(t)) = encoder {
        files.encoder = Some((c, w, t));
    }
    status("building the model");
    dom::yield_now().await;
    let p = Playground::from_files(files, &device)?;
    set_model(&state, p);
    status("model loaded");
    dom::set_state("phase", "model-loaded");
    Ok(())
}

/// The playground, taken out of the state for the task (the task puts it back); a tiny
/// model is made when none is loaded.
async fn take_playground(state: &Shared) -> Result<Playground, String> {
    if state.borrow().playground.is_none() {
        use_tiny_model(state.clone()).await?;
    }
    Ok(state.borrow_mut().playground.take().expect("made above"))
}

fn eval_examples(state: &Shared) -> Result<Vec<Example>, String> {
    let n = dom::number("eval-count", "questions to evaluate", 1.0, 500.0)? as usize;
    let st = state.borrow();
    if st.eval.is_empty() {
        return Err("load data first".into());
    }
    Ok(st.eval.iter().take(n).cloned().collect())
}

/// Answers `examples` compressed (and from the full text when `full_text`), updating the page.
async fn evaluate(
    p: &Playground,
    examples: &[Example],
    label: &str,
    full_text: bool,
) -> Result<(EvalRun, Option<EvalRun>), String> {
    let model: Oscar = p.pipeline.oscar.for_inference();
    let evaluator = p.evaluator();
    let n = examples.len();
    // Redraw after each answer: the browser paints only when the page yields.
    let compressed = evaluator
        .compressed(&model, examples, async |k| {
            status(&format!("{label}: question {k} of {n}"));
            dom::yield_now().await
        })
        .await
        .map_err(|e| e.to_string())?;
    let full = match full_text {
        true => Some(
            evaluator
                .uncompressed(&p.pipeline.base_generator, examples, async |k| {
                    status(&format!("{label}, full text: question {k} of {n}"));
                    dom::yield_now().await
                })
                .await
                .map_err(|e| e.to_string())?,
        ),
        false => None,
    };
    Ok((compressed, full))
}

async fn train(state: Shared) -> Result<(), String> {
    let steps = dom::number("steps", "steps", 1.0, 100_000.0)? as usize;
    let lr = dom::number("learning-rate", "learning rate", 1e-7, 1.0)?;
    let examples = eval_examples(&state)?;
    let mut p = take_playground(&state).await?;
    let result = train_with(&state, &mut p, &examples, steps, lr).await;
    state.borrow_mut().playground = Some(p);
    result
}

async fn train_with(
    state: &Shared,
    p: &mut Playground,
    examples: &[Example],
    steps: usize,
    lr: f64,
) -> Result<(), String> {
    dom::set_state("phase", "evaluating");
    let need_full = state.borrow().full_text.is_none();
    let (before, full) = evaluate(p, examples, "before training", need_full).await?;
    {
        let mut st = state.borrow_mut();
        st.before = Some(before);
        if full.is_some() {
            st.full_text = full;
        }
        st.after = None;
    }
    redraw(state);

    dom::set_state("phase", "training");
    let train: Vec<_> = {
        let st = state.borrow();
        st.train
            .iter()
            .take(steps.max(1))
            .map(|ex| p.train_example(ex))
            .collect::<Result<_, _>>()?
    };
    state.borrow_mut().losses.clear();
    let started = dom::now_ms();
    let mut first_done = None;
    p.train(&train, steps, lr, async |step, stats| {
        first_done.get_or_insert_with(dom::now_ms);
        let losses = {
            let mut st = state.borrow_mut();
            st.losses.push(stats.loss);
            st.losses.clone()
        };
        let secs = (dom::now_ms() - started) / 1000.0;
        status(&format!(
            "training: step {} of {steps}, loss {:.3}, {:.2} steps/s",
            step + 1,
            stats.loss,
            (step + 1) as f64 / secs.max(1e-9)
        ));
        show_losses(&losses);
        let _ = charts::loss_curve("loss-chart", &losses);
        dom::yield_now().await;
    })
    .await?;
    // Steps after the first, which pays for shader compilation.
    let step_ms = first_done.map_or(0.0, |t| dom::now_ms() - t) / (steps - 1).max(1) as f64;
    dom::set_state("step-ms", &format!("{step_ms:.1}"));

    dom::set_state("phase", "evaluating");
    let (after, _) = evaluate(p, examples, "after training", false).await?;
    state.borrow_mut().after = Some(after);
    redraw(state);
    status(&format!("trained {steps} steps"));
    dom::set_state("phase", "trained");
    Ok(())
}

/// First and last losses (means of up to 3 steps), which the page and its test read.
fn show_losses(losses: &[f32]) {
    let k = 3.min(losses.len());
    let mean = |w: &[f32]| w.iter().sum::<f32>() / w.len().max(1) as f32;
    let first = mean(&losses[..k]);
    let last = mean(&losses[losses.len() - k..]);
    dom::set_text("loss-first", &format!("{first:.4}"));
    dom::set_text("loss-last", &format!("{last:.4}"));
}

async fn evaluate_only(state: Shared) -> Result<(), String> {
    let examples = eval_examples(&state)?;
    let p = take_playground(&state).await?;
    dom::set_state("phase", "evaluating");
    let result = evaluate(&p, &examples, "evaluating", true).await;
    state.borrow_mut().playground = Some(p);
    let (run, full) = result?;
    {
        let mut st = state.borrow_mut();
        st.after = Some(run);
        st.full_text = full;
    }
    redraw(&state);
    status("evaluated");
    dom::set_state("phase", "evaluated");
    Ok(())
}

/// Fixed-length answers, compressed and uncompressed, after a warm-up: the speed chart's
/// figures for this browser.
async fn measure_speed(state: Shared) -> Result<(), String> {
    let examples = eval_examples(&state)?;
    let p = take_playground(&state).await?;
    dom::set_state("phase", "timing");
    status("measuring speed");
    dom::yield_now().await;
    let result = p.speed(&examples).await;
    state.borrow_mut().playground = Some(p);
    let speed = result?;
    dom::set_state("compressed-ms", &format!("{:.1}", speed.compressed_ms));
    dom::set_state("uncompressed-ms", &format!("{:.1}", speed.uncompressed_ms));
    state.borrow_mut().speed = Some(speed);
    redraw(&state);
    status(&format!(
        "{:.0} ms per compressed query, {:.0} ms uncompressed: {:.1}x faster",
        speed.compressed_ms,
        speed.uncompressed_ms,
        speed.uncompressed_ms / speed.compressed_ms
    ));
    dom::set_state("phase", "timed");
    Ok(())
}

async fn compress_own_text(state: Shared) -> Result<(), String> {
    let document = dom::element::<web_sys::HtmlTextAreaElement>("own-document").value();
    let question = dom::value("own-question");
    let p = take_playground(&state).await?;
    status("compressing");
    let model = p.pipeline.oscar.for_inference();
    let result = p.compress_text(&model, &question, &document).await;
    state.borrow_mut().playground = Some(p);
    let c = result?;
    dom::set_html(
        "own-result",
        &format!(
            "<p>{} document tokens → {} chunk(s) → <b>{} memory vectors</b> of width {} \
             (rate {:.1} tokens per vector)</p><p>answer ({:.0} ms): <b>{}</b></p>",
            c.document_tokens,
            c.chunks,
            c.vectors,
            c.width,
            c.rate,
            c.ms,
            dom::escape(&c.answer)
        ),
    );
    status("compressed");
    dom::set_state("phase", "compressed");
    Ok(())
}

/// Native figures from a `metrics_report.json` of `scaledown train`.
async fn load_report(state: Shared, files: Vec<File>) -> Result<(), String> {
    let Some(file) = files.first() else {
        return Ok(());
    };
    let text = dom::read_text(file).await?;
    let report: Report = serde_json::from_str(&text)
        .map_err(|e| format!("{}: not a metrics_report.json: {e}", file.name()))?;
    state.borrow_mut().native = Some((
        report.backend,
        report.after.timing.mean_ms,
        report.baseline_uncompressed.timing.mean_ms,
    ));
    redraw(&state);
    Ok(())
}

fn redraw(state: &Shared) {
    let st = state.borrow();
    let mut runs: Vec<(&str, Scores)> = vec![];
    if let Some(r) = &st.before {
        runs.push(("compressed, before", r.scores));
    }
    if let Some(r) = &st.after {
        runs.push(("compressed, after", r.scores));
    }
    if let Some(r) = &st.full_text {
        runs.push(("full text", r.scores));
    }
    if !runs.is_empty() {
        let _ = charts::metric_bars("metrics-chart", &runs);
        let summary: Vec<String> = runs
            .iter()
            .map(|(label, s)| {
                format!(
                    "{label}: EM {:.1} F1 {:.1} ROUGE-L {:.1} match {:.1}",
                    s.exact_match * 100.0,
                    s.f1 * 100.0,
                    s.rouge_l * 100.0,
                    s.match_accuracy * 100.0
                )
            })
            .collect();
        dom::set_text("metrics", &summary.join(" · "));
    }
    let mut speed = vec![];
    if let Some(s) = &st.speed {
        speed.push(("compressed (this browser)".to_string(), s.compressed_ms));
        speed.push(("uncompressed (this browser)".to_string(), s.uncompressed_ms));
    } else {
        if let Some(r) = st.after.as_ref().or(st.before.as_ref()) {
            speed.push((
                "compressed (this browser, eval)".to_string(),
                r.timing.mean_ms,
            ));
        }
        if let Some(r) = &st.full_text {
            speed.push((
                "uncompressed (this browser, eval)".to_string(),
                r.timing.mean_ms,
            ));
        }
    }
    if let Some((backend, compressed, full)) = &st.native {
        speed.push((format!("compressed (native {backend})"), *compressed));
        speed.push((format!("uncompressed (native {backend})"), *full));
    }
    if !speed.is_empty() {
        let _ = charts::speed_bars("speed-chart", &speed);
    }
    let latest = st.after.as_ref().or(st.before.as_ref());
    if let Some(run) = latest {
        results_table(
            &run.predictions,
            st.full_text.as_ref().map(|r| &r.predictions[..]),
        );
    }
}

fn results_table(compressed: &[Prediction], full: Option<&[Prediction]>) {
    let mut html = String::from(
        "<tr><th>question</th><th>gold answer</th><th>compressed answer</th>\
         <th>full-context answer</th></tr>",
    );
    for (i, a) in compressed.iter().enumerate() {
        let full_text = full
            .and_then(|f| f.get(i))
            .map_or(String::new(), |f| dom::escape(&f.prediction));
        html.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            dom::escape(&a.question),
            dom::escape(&a.answers.join(" | ")),
            dom::escape(&a.prediction),
            full_text
        ));
    }
    dom::set_html("results", &html);
}
