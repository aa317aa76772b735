//! `cargo run --release -p scaledown-web -- bench --backend flex|wgpu`: the page's tiny-model
//! work run natively (the same questions, answer length and steps as the page's test), so that
//! `scripts/bench_web.sh` can set the browser's ms per query beside native wgpu and CPU.

use crate::playground::Playground;
use scaledown_data::parse_examples;
use scaledown_model::backend::BackendKind;
use scaledown_model::burn::tensor::read_sync;
use web_time::Instant;

pub fn run(args: &[String]) -> Result<(), String> {
    let mut backend = BackendKind::Flex;
    let mut questions = 2;
    let mut steps = 12;
    let mut data = "web/data/squad_sample.json".to_string();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--backend" => backend = value()?.parse()?,
            "--questions" => questions = value()?.parse().map_err(|_| "--questions: a count")?,
            "--steps" => steps = value()?.parse().map_err(|_| "--steps: a count")?,
            "--data" => data = value()?,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    let eval_path = data.replace(".json", "_eval.json");
    let read = |p: &str| -> Result<_, String> {
        let text = std::fs::read_to_string(p).map_err(|e| format!("{p}: {e}"))?;
        parse_examples(p, &text).map_err(|e| e.to_string())
    };
    let (train, eval) = (read(&data)?, read(&eval_path)?);
    let device = backend.device()?;
    let all: Vec<_> = train.iter().chain(&eval).cloned().collect();
    let mut p = Playground::tiny(&all, &device, 0)?;
    let eval = &eval[..questions.min(eval.len())];

    let speed = read_sync(p.speed(eval))?;
    let examples = train
        .iter()
        .take(steps)
        .map(|ex| p.train_example(ex))
        .collect::<Result<Vec<_>, _>>()?;
    // Steps after the first (which pays for warm-up), as the page counts them.
    let mut first_done = None;
    read_sync(p.train(&examples, steps, 1e-2, async |_, _| {
        first_done.get_or_insert_with(Instant::now);
    }))?;
    let step_ms =
        first_done.map_or(0.0, |t| t.elapsed().as_secs_f64() * 1000.0) / (steps - 1).max(1) as f64;
    println!(
        "native {backend}: compressed {:.1} ms/query, uncompressed {:.1} ms/query, \
         training {step_ms:.1} ms/step",
        speed.compressed_ms, speed.uncompressed_ms
    );
    Ok(())
}
