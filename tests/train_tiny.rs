//! The main job end to end on a tiny random Llama (written here as a Hugging Face folder) and a
//! small synthetic QA set: training lowers the loss, every output file exists and parses, the
//! checkpoint reloads for `eval` and `ask`, `--resume` continues, and bad input is named.

mod tiny;

use std::path::Path;
use tiny::*;

#[test]
fn training_lowers_the_loss_and_writes_every_output() {
    let s = Setup::new();
    let log = ok(&s.train("run", &["--max-steps", "80", "--eval-steps", "40"]));
    let out = s.dir.join("run");
    for f in [
        "before_after_comparison.png",
        "training_curves.png",
        "speed_comparison.png",
    ] {
        let bytes = std::fs::read(out.join(f)).unwrap();
        assert!(bytes.starts_with(b"\x89PNG") && bytes.len() > 10_000, "{f}");
    }
    let report = read_json(&out.join("metrics_report.json"));
    for r in [
        "before_training_results.json",
        "after_training_results.json",
    ] {
        let run = read_json(&out.join(r));
        assert_eq!(run["predictions"].as_array().unwrap().len(), 3, "{r}");
    }
    let losses: Vec<f64> = report["training"]["losses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l[1].as_f64().unwrap())
        .collect();
    assert_eq!(losses.len(), 80);
    let first = losses[..5].iter().sum::<f64>() / 5.0;
    let last = losses[75..].iter().sum::<f64>() / 5.0;
    assert!(last < 0.5 * first, "loss {first} -> {last}\n{log}");
    assert!(report["speedup"].as_f64().unwrap() > 0.0);
    assert!(
        report["baseline_uncompressed"]["timing"]["p95_ms"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    assert_eq!(
        report["training"]["evals"].as_array().unwrap().len(),
        2,
        "step 40 and the end"
    );
    // The report is the model crate's typed Report, as the page reads it.
    let text = std::fs::read_to_string(out.join("metrics_report.json")).unwrap();
    let typed: scaledown_model::report::Report = serde_json::from_str(&text).unwrap();
    assert_eq!(typed.training.step, 80);
    assert_eq!(typed.recipe.optimiser.learning_rate, 3e-3);
    assert_eq!(
        Some(typed.after.timing.mean_ms),
        report["after"]["timing"]["mean_ms"].as_f64()
    );
    for c in ["checkpoints/step-40", "checkpoints/final"] {
        let c = out.join(c);
        assert!(c.join("trainable.safetensors").exists(), "{}", c.display());
        read_json(&c.join("setup.json"));
        assert_eq!(
            read_json(&c.join("state.json"))["step"].as_u64().unwrap() % 20,
            0
        );
    }

    // The checkpoint reloads: `eval` reproduces the after-training scores; `ask` answers.
    let final_dir = out.join("checkpoints/final").display().to_string();
    let eval_out = s.p("eval.json");
    ok(&scaledown(&[
        "eval",
        "--checkpoint",
        &final_dir,
        "--eval-data",
        &s.p("train_eval.json"),
        "--output",
        &eval_out,
    ]));
    let after = read_json(&out.join("after_training_results.json"));
    let again = read_json(Path::new(&eval_out));
    // The memory-use probe: every eval question scored with its own documents and another's,
    // before and after training, and the reloaded checkpoint gives the same losses.
    let memory_use = &report["memory_use_after"];
    let before_use = &report["training"]["memory_use_before"];
    for m in [memory_use, before_use, &again["memory_use"]] {
        assert_eq!(m["questions"].as_u64(), Some(3), "{m}");
    }
    for key in ["own_documents_loss", "other_documents_loss"] {
        let (trained, reloaded) = (
            memory_use[key].as_f64().unwrap(),
            again["memory_use"][key].as_f64().unwrap(),
        );
        assert!(
            trained.is_finite() && (trained - reloaded).abs() < 1e-3,
            "{key}: {trained} vs {reloaded}"
        );
    }
    eprintln!("memory use before {before_use}, after {memory_use}");
    for (a, b) in after["predictions"]
        .as_array()
        .unwrap()
        .iter()
        .zip(again["compressed"]["predictions"].as_array().unwrap())
    {
        assert_eq!(a["prediction"], b["prediction"]);
    }
    // Questions answered in left-padded batches give the same answers, compressed or not.
    let batched_out = s.p("eval_batched.json");
    ok(&scaledown(&[
        "eval",
        "--checkpoint",
        &final_dir,
        "--eval-data",
        &s.p("train_eval.json"),
        "--baseline",
        "--eval-batch-size",
        "3",
        "--output",
        &batched_out,
    ]));
    let batched = read_json(Path::new(&batched_out));
    let predictions = |v: &serde_json::Value| -> Vec<serde_json::Value> {
        v["predictions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["prediction"].clone())
            .collect()
    };
    assert_eq!(
        predictions(&batched["compressed"]),
        predictions(&again["compressed"])
    );
    let baseline = read_json(&out.join("baseline_results.json"));
    assert_eq!(
        predictions(&batched["uncompressed"]),
        predictions(&baseline)
    );
    let answer = ok(&scaledown(&[
        "ask",
        "--checkpoint",
        &final_dir,
        "--question",
        "what color is the cat ?",
        "--document",
        "the cat is red .",
    ]));
    assert!(answer.contains("memory vectors"), "{answer}");
}

#[test]
fn an_interrupted_training_resumes_from_its_last_checkpoint() {
    let s = Setup::new();
    ok(&s.train("run", &["--max-steps", "10", "--eval-steps", "5"]));
    let out = s.dir.join("run");
    // As if stopped after step 5: only step-5 is left.
    std::fs::remove_dir_all(out.join("checkpoints/final")).unwrap();
    std::fs::remove_dir_all(out.join("checkpoints/step-10")).ok();
    let log = ok(&s.train(
        "run",
        &["--max-steps", "10", "--eval-steps", "5", "--resume"],
    ));
    assert!(
        log.contains("resuming from") && log.contains("step 5"),
        "{log}"
    );
    let report = read_json(&out.join("metrics_report.json"));
    let steps = logged_steps(&report, "losses");
    assert_eq!(steps, (1..=10).collect::<Vec<_>>());
    assert!(out.join("checkpoints/final/trainable.safetensors").exists());
    // Every checkpoint keeps the run's recipe, the report's.
    let recipe = read_json(&out.join("checkpoints/final/recipe.json"));
    assert_eq!(recipe, report["recipe"]);
    assert_eq!(recipe["optimiser"]["batch_size"], 4, "{recipe}");
    // Resumed with other flags, the run says which fields of the recipe they change.
    std::fs::remove_dir_all(out.join("checkpoints/final")).unwrap();
    let log = ok(&s.train(
        "run",
        &[
            "--max-steps",
            "10",
            "--resume",
            "--learning-rate",
            "0.0002",
            "--seed",
            "5",
        ],
    ));
    assert!(
        log.contains(
            "the flags change the checkpoint's recipe: optimiser.learning_rate: 0.003 -> 0.0002"
        ) && log.contains("recipe: seed: 42 -> 5"),
        "{log}"
    );
    // Another compressor configuration refuses to resume from it.
    let o = s.train(
        "run",
        &["--max-steps", "10", "--resume", "--num-memory-tokens", "3"],
    );
    fails_with(&o, &["another compressor configuration"]);
}

/// `--init-from` starts a fresh epoch from another run's weights: its answers before the
/// epoch are the other run's final answers, its steps count from 1 again, and a checkpoint of
/// another compressor configuration or a folder without one is refused by name.
#[test]
fn init_from_starts_a_fresh_epoch_from_another_runs_weights() {
    let s = Setup::new();
    ok(&s.train("stage1", &["--max-steps", "20"]));
    let log = ok(&s.train(
        "stage2",
        &["--max-steps", "5", "--init-from", &s.p("stage1")],
    ));
    assert!(
        log.contains("starting from the weights of") && log.contains("20 question-answering steps"),
        "{log}"
    );
    let answers = |run: &str, file: &str| -> Vec<String> {
        read_json(&s.dir.join(run).join(file))["predictions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["prediction"].as_str().unwrap().to_string())
            .collect()
    };
    let (trained, untrained) = (
        answers("stage1", "after_training_results.json"),
        answers("stage1", "before_training_results.json"),
    );
    assert_ne!(
        trained, untrained,
        "20 steps changed no answer: the test cannot tell"
    );
    assert_eq!(answers("stage2", "before_training_results.json"), trained);
    let report = read_json(&s.dir.join("stage2/metrics_report.json"));
    let steps = logged_steps(&report, "losses");
    assert_eq!(steps, (1..=5).collect::<Vec<_>>());
    // A checkpoint folder works as well; another compressor configuration does not.
    let final_dir = s.p("stage1/checkpoints/final");
    let o = s.train(
        "stage3",
        &[
            "--max-steps",
            "5",
            "--init-from",
            &final_dir,
            "--num-memory-tokens",
            "3",
        ],
    );
    fails_with(&o, &["--init-from", "another compressor configuration"]);
    let o = s.train(
        "stage4",
        &["--max-steps", "5", "--init-from", &s.p("nowhere")],
    );
    fails_with(&o, &["--init-from", "nowhere"]);

    // A checkpoint from before the scores' factor was recorded (no such field in its setup,
    // no manifest) goes on with the factor its scorer trained with, 4, not the 16 of its rate.
    let rate_16 = ["--compression-rate", "16", "--num-memory-tokens", "2"];
    ok(&s.train("r16", &[&["--max-steps", "2"][..], &rate_16].concat()));
    let older = s.dir.join("older/checkpoints/final");
    std::fs::create_dir_all(&older).unwrap();
    for file in [
        "setup.json",
        "recipe.json",
        "state.json",
        "trainable.safetensors",
    ] {
        std::fs::copy(
            s.dir.join("r16/checkpoints/final").join(file),
            older.join(file),
        )
        .unwrap();
    }
    let mut setup = read_json(&older.join("setup.json"));
    let factor = |setup: &serde_json::Value| setup["compressor"]["pool_score_scale"].as_f64();
    assert_eq!(factor(&setup), Some(16.0));
    setup["compressor"]
        .as_object_mut()
        .unwrap()
        .remove("pool_score_scale");
    std::fs::write(older.join("setup.json"), setup.to_string()).unwrap();
    let older_run = s.p("older");
    let from_older = [
        &["--max-steps", "1", "--init-from", &older_run][..],
        &rate_16,
    ]
    .concat();
    ok(&s.train("stage5", &from_older));
    let continued = read_json(&s.dir.join("stage5/checkpoints/final/setup.json"));
    assert_eq!(factor(&continued), Some(4.0));
}

/// The span loss finds each answer in its documents and trains beside the answer's loss;
/// segments placed by the scorer (`--adaptive-segments`) go on from a run with fixed ones, are
/// recorded in the checkpoint, and the reloaded checkpoint answers as the run did.
#[test]
fn the_span_loss_and_scored_segments_train_and_reload() {
    let s = Setup::new();
    ok(&s.train("fixed", &["--max-steps", "5"]));
    let scored = [
        "--max-steps",
        "10",
        "--span-weight",
        "1",
        "--adaptive-segments",
        "--init-from",
        &s.p("fixed"),
    ];
    let log = ok(&s.train("scored", &scored));
    assert!(
        log.contains("span loss: the answer found in the documents of 8 of 8 examples"),
        "{log}"
    );
    let out = s.dir.join("scored");
    let setup = read_json(&out.join("checkpoints/final/setup.json"));
    assert_eq!(setup["compressor"]["adaptive_segments"], true);
    let report = read_json(&out.join("metrics_report.json"));
    let losses = report["training"]["losses"].as_array().unwrap();
    assert_eq!(losses.len(), 10, "{log}");
    assert!(losses.iter().all(|l| l[1].as_f64().unwrap().is_finite()));
    eval_answers_as_the_run_did(&s, "scored");
    fails_with(
        &s.train("bad", &["--span-weight", "nan"]),
        &["--span-weight"],
    );
}

/// Every checkpoint carries a manifest (each file's SHA-256 and size): `eval` refuses a
/// checkpoint whose tensors were damaged on disk, naming the file, and `--resume` passes over
/// damaged checkpoints to the newest intact one and says so.
#[test]
fn a_damaged_checkpoint_is_refused_and_resume_falls_back() {
    let s = Setup::new();
    ok(&s.train("run", &["--max-steps", "15", "--eval-steps", "5"]));
    let checkpoints = s.dir.join("run/checkpoints");
    let manifest = read_json(&checkpoints.join("final/manifest.json"));
    for f in ["setup.json", "trainable.safetensors", "state.json"] {
        let entry = &manifest["files"][f];
        let len = std::fs::metadata(checkpoints.join("final").join(f))
            .unwrap()
            .len();
        assert_eq!(entry["bytes"].as_u64(), Some(len), "{f}");
        assert_eq!(entry["sha256"].as_str().map(str::len), Some(64), "{f}");
    }
    let tensors = |c: &str| checkpoints.join(c).join("trainable.safetensors");
    let mut bytes = std::fs::read(tensors("final")).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01; // one bit, in the tensor data
    std::fs::write(tensors("final"), &bytes).unwrap();
    let o = scaledown(&[
        "eval",
        "--checkpoint",
        &checkpoints.join("final").display().to_string(),
        "--eval-data",
        &s.p("train_eval.json"),
    ]);
    fails_with(&o, &["final", "trainable.safetensors", "SHA-256"]);
    // step-10 truncated as well: resuming passes over both and goes on from step 5.
    let bytes = std::fs::read(tensors("step-10")).unwrap();
    std::fs::write(tensors("step-10"), &bytes[..bytes.len() - 100]).unwrap();
    let log = ok(&s.train(
        "run",
        &["--max-steps", "15", "--eval-steps", "5", "--resume"],
    ));
    for needle in [
        "passing over",
        "SHA-256",
        "truncated",
        "resuming from",
        "step 5",
    ] {
        assert!(log.contains(needle), "`{needle}` not in: {log}");
    }
    // The run wrote a new, intact final checkpoint.
    ok(&scaledown(&[
        "eval",
        "--checkpoint",
        &checkpoints.join("final").display().to_string(),
        "--eval-data",
        &s.p("train_eval.json"),
        "--output",
        &s.p("again.json"),
    ]));
}

#[test]
fn bad_input_is_named() {
    let s = Setup::new();
    let good = example(0).to_string();
    let mut no_doc = example(1);
    no_doc["documents"][0]["text"] = "".into();
    let mut no_answers = example(2);
    no_answers["answers"] = serde_json::json!([]);
    for (name, body, needles) in [
        (
            "broken.jsonl",
            format!("{good}\n{{\"id\": \"x\"\n"),
            vec!["broken.jsonl", "line 2"],
        ),
        (
            "empty_doc.jsonl",
            format!("{good}\n{no_doc}\n"),
            vec!["empty_doc.jsonl", "line 2", "documents[0].text"],
        ),
        (
            "no_answers.jsonl",
            format!("{no_answers}\n"),
            vec!["no_answers.jsonl", "answers"],
        ),
    ] {
        std::fs::write(s.dir.join(name), body).unwrap();
        let o = scaledown(&[
            "train",
            "--train-data",
            &s.p(name),
            "--eval-data",
            &s.p("train_eval.json"),
            "--generator",
            &s.p("gen"),
            "--output-dir",
            &s.p("bad"),
        ]);
        fails_with(&o, &needles);
    }
    for (flag, value) in [
        ("--num-memory-tokens", "0"),
        ("--learning-rate", "5"),
        ("--batch-size", "0"),
        ("--compression-rate", "x"),
    ] {
        let o = scaledown(&["train", "--train-data", &s.p("train.json"), flag, value]);
        fails_with(&o, &[flag, value]);
    }
    let o = s.train("bad", &["--num-layers", "9"]);
    fails_with(&o, &["--num-layers 9", "2 layers"]);
    let o = s.train("bad", &["--compressor-type", "lstm"]);
    fails_with(&o, &["--compressor-type", "lstm"]);
    let o = scaledown(&[
        "prepare",
        "--dataset",
        "wikiqa",
        "--source",
        &s.p("train.json"),
        "--output-file",
        &s.p("x.json"),
    ]);
    fails_with(&o, &["--dataset", "wikiqa"]);
    let o = scaledown(&[
        "prepare",
        "--dataset",
        "squad",
        "--num-examples",
        "5",
        "--output-file",
        &s.p("x.json"),
    ]);
    fails_with(&o, &["--num-examples"]);
    let o = scaledown(&[
        "ask",
        "--checkpoint",
        &s.p("gen"),
        "--question",
        "q",
        "--document",
        "d",
    ]);
    fails_with(&o, &["not a checkpoint folder"]);
}

#[test]
fn underscore_spellings_of_the_seed_tool_are_accepted() {
    let s = Setup::new();
    let o = scaledown(&[
        "train",
        "--train_data",
        &s.p("train.json"),
        "--generator",
        &s.p("gen"),
        "--output_dir",
        &s.p("u"),
        "--compressor_type",
        "n_layers",
        "--num_layers",
        "1",
        "--num_memory_tokens",
        "2",
        "--compression_rate",
        "4",
        "--batch_size",
        "4",
        "--max_steps",
        "1",
        "--max_new_tokens",
        "2",
        "--generator_training",
        "frozen",
    ]);
    ok(&o);
    // Frozen generator: the checkpoint holds no LoRA factors.
    let bytes = std::fs::read(s.dir.join("u/checkpoints/final/trainable.safetensors")).unwrap();
    let names = safetensors::SafeTensors::deserialize(&bytes)
        .unwrap()
        .names()
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
    assert!(
        names.iter().all(|n| n.starts_with("compressor.")),
        "{names:?}"
    );
}

/// Unlabelled passages of 12-16 tokens from the test vocabulary: windows of 8 tokens with text
/// after them, for both pretraining objectives.
#[test]
fn pretraining_lowers_its_loss_reloads_and_resumes() {
    let s = Setup::new();
    let corpus = write_corpus(&s);
    let pretrain = |out: &str, steps: &str, extra: &[&str]| {
        let mut args = vec![
            "--pretrain-data",
            corpus.as_str(),
            "--pretrain-steps",
            steps,
            "--max-steps",
            "2",
            "--eval-steps",
            "10",
        ];
        args.extend_from_slice(extra);
        s.train(out, &args)
    };
    let log = ok(&pretrain("pt", "30", &[]));
    assert!(
        log.contains("pretraining (50 % reconstruction): 6 passages"),
        "{log}"
    );
    let out = s.dir.join("pt");
    let report = read_json(&out.join("metrics_report.json"));
    let losses: Vec<f64> = report["training"]["pretrain_losses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l[1].as_f64().unwrap())
        .collect();
    assert_eq!(losses.len(), 30);
    let first = losses[..5].iter().sum::<f64>() / 5.0;
    let last = losses[25..].iter().sum::<f64>() / 5.0;
    assert!(
        last < 0.7 * first,
        "pretraining loss {first} -> {last}\n{log}"
    );
    let png = std::fs::read(out.join("pretraining_curve.png")).unwrap();
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000);
    // The memory gap on held-out passages: before pretraining, at its checkpoints and after.
    let gap = report["training"]["pretrain_memory_gap"]
        .as_array()
        .unwrap();
    let steps: Vec<u64> = gap.iter().map(|g| g["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, [0, 10, 20, 30], "{log}");
    assert!(gap.iter().all(|g| g["own"].as_f64().unwrap() > 0.0));
    assert!(
        log.contains("pretraining step 30: auto-encoding loss"),
        "{log}"
    );
    // The pretrained compressor is a checkpoint of its own; the intermediate ones are gone.
    let pretrained = out.join("checkpoints/pretrained");
    assert!(!out.join("checkpoints/pretrain-10").exists());
    let o = scaledown(&[
        "eval",
        "--checkpoint",
        &pretrained.display().to_string(),
        "--eval-data",
        &s.p("train_eval.json"),
    ]);
    ok(&o);

    // Stopped after 20 of 30 pretraining steps: --resume goes on from there.
    ok(&pretrain("pt2", "20", &[]));
    let out2 = s.dir.join("pt2");
    std::fs::remove_dir_all(out2.join("checkpoints/final")).unwrap();
    let log = ok(&pretrain("pt2", "30", &["--resume"]));
    assert!(log.contains("pretraining step 30/30"), "{log}");
    let report = read_json(&out2.join("metrics_report.json"));
    let steps = logged_steps(&report, "pretrain_losses");
    assert_eq!(steps, (1..=30).collect::<Vec<_>>());

    // A broken corpus line is named.
    let bad = s.p("bad.jsonl");
    std::fs::write(&bad, "{\"text\": \"the cat is red .\"}\n{\"text\": \n").unwrap();
    let o = s.train("pt3", &["--pretrain-data", &bad, "--pretrain-steps", "2"]);
    fails_with(&o, &["bad.jsonl: line 2", "not JSON"]);
}

/// `scaledown pretrain`: pretraining alone, its probes (memory gap and held-out QA) in the
/// scaling curve, the objectives mixed as asked, and a budget in minutes that ends it early.
#[test]
fn pretrain_writes_the_scaling_curve_and_keeps_its_budget() {
    let s = Setup::new();
    let corpus = write_corpus(&s);
    let base = ["--pretrain-data", corpus.as_str(), "--eval-steps", "4"];
    let run = |out: &str, extra: &[&str]| {
        let args: Vec<&str> = base.iter().chain(extra).copied().collect();
        s.command("pretrain", out, &args)
    };
    let log = ok(&run(
        "curve",
        &["--pretrain-steps", "8", "--pretrain-reconstruction", "0.25"],
    ));
    assert!(log.contains("pretraining (25 % reconstruction)"), "{log}");
    let out = s.dir.join("curve");
    let curve = read_json(&out.join("pretraining_curve.json"));
    let probes = curve["probes"].as_array().unwrap();
    let windows: Vec<u64> = probes
        .iter()
        .map(|p| p["windows"].as_u64().unwrap())
        .collect();
    assert_eq!(windows, [0, 16, 32], "{log}");
    for p in probes {
        let qa = &p["qa"];
        let f1 = qa["scores"]["f1"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&f1), "{p}");
        assert!(qa["memory_use"]["own_documents_loss"].as_f64().unwrap() > 0.0);
        assert!(p["own"].as_f64().unwrap() > 0.0);
    }
    assert_eq!(curve["command"]["pretrain_reconstruction"]["permille"], 250);
    let png = std::fs::read(out.join("scaling_curve.png")).unwrap();
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000);
    assert!(
        out.join("checkpoints/pretrained/trainable.safetensors")
            .exists()
    );
    // No question answering: no QA training, no report.
    assert!(!out.join("metrics_report.json").exists());
    // Continuing the run for 4 more steps adds a probe, and `train --resume` goes on from
    // the pretrained compressor to question answering.
    ok(&run("curve", &["--pretrain-steps", "12", "--resume"]));
    let curve = read_json(&out.join("pretraining_curve.json"));
    assert_eq!(curve["probes"].as_array().unwrap().len(), 4);
    let log = ok(&s.train(
        "curve",
        &[
            "--pretrain-data",
            corpus.as_str(),
            "--pretrain-steps",
            "12",
            "--max-steps",
            "2",
            "--resume",
        ],
    ));
    assert!(!log.contains("pretraining step"), "{log}");
    let report = read_json(&out.join("metrics_report.json"));
    assert_eq!(report["training"]["step"], 2);
    assert_eq!(report["training"]["pretrain_step"], 12);

    // `pretrain --init-from`: a new phase of 8 steps after those 12, with its own warm-up
    // and decay (the old schedule would go on at 8/19 of the peak), its curve going on.
    let log = ok(&run(
        "phase",
        &[
            "--init-from",
            &out.display().to_string(),
            "--pretrain-steps",
            "8",
            "--logging-steps",
            "1",
        ],
    ));
    assert!(log.contains("a new pretraining phase"), "{log}");
    let lr = |step: &str| -> f64 {
        let line = log
            .lines()
            .find(|l| l.starts_with(&format!("pretraining step {step}/20 ")))
            .unwrap_or_else(|| panic!("no step {step}\n{log}"));
        let after = line.split(", lr ").nth(1).unwrap();
        after.split(',').next().unwrap().parse().unwrap()
    };
    // (the tiny runs' --compressor-learning-rate; the log prints three digits)
    let peak = lr("13");
    assert!((peak / 3e-3 - 1.0).abs() < 0.01, "{log}");
    assert!((lr("20") / (peak / 7.0) - 1.0).abs() < 0.01, "{log}");
    let phase = read_json(&s.dir.join("phase/pretraining_curve.json"));
    let windows: Vec<u64> = phase["probes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["windows"].as_u64().unwrap())
        .collect();
    assert_eq!(windows, [0, 16, 32, 48, 64, 80], "{log}");

    // A LoRA run does not resume as a frozen one.
    let o = run(
        "curve",
        &[
            "--pretrain-steps",
            "16",
            "--resume",
            "--generator-training",
            "frozen",
        ],
    );
    fails_with(&o, &["--generator-training lora"]);
    // Pretrained with the generator frozen, question answering gets fresh LoRA factors.
    ok(&run(
        "frozen",
        &["--pretrain-steps", "4", "--generator-training", "frozen"],
    ));
    let log = ok(&s.train(
        "frozen",
        &[
            "--pretrain-data",
            corpus.as_str(),
            "--pretrain-steps",
            "4",
            "--max-steps",
            "1",
            "--resume",
        ],
    ));
    assert!(log.contains("fresh LoRA (r 16)"), "{log}");
    let bytes =
        std::fs::read(s.dir.join("frozen/checkpoints/final/trainable.safetensors")).unwrap();
    let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert!(
        tensors.names().iter().any(|n| n.contains("lora")),
        "{:?}",
        tensors.names()
    );

    // A budget of 1/100,000 of a minute ends pretraining after its first step.
    let log = ok(&run(
        "budget",
        &["--pretrain-steps", "50", "--pretrain-minutes", "0.00001"],
    ));
    assert!(
        log.contains("--pretrain-minutes reached after 1 of 50 steps"),
        "{log}"
    );
    // Continuation only needs windows with text after them; the flag is checked.
    let o = run(
        "bad",
        &["--pretrain-steps", "2", "--pretrain-reconstruction", "1.5"],
    );
    fails_with(&o, &["--pretrain-reconstruction", "1.5"]);
    let o = s.command("pretrain", "none", &["--eval-steps", "4"]);
    fails_with(&o, &["--pretrain-steps"]);
}

/// A HotpotQA-like question with three documents, the second one supporting.
fn multi_document_example(i: usize) -> serde_json::Value {
    let (a, c) = (ANIMALS[i % 6], COLORS[(i * 5 + i / 6) % 6]);
    let (b, d) = (ANIMALS[(i + 1) % 6], COLORS[(i + 2) % 6]);
    serde_json::json!({"id": format!("h{i}"), "dataset": "hotpot_qa",
        "question": format!("what color is the {a} ?"),
        "documents": [
            {"title": format!("other {i}"), "text": format!("the {b} is {d} .")},
            {"title": format!("fact {i}"), "text": format!("the {a} is {c} .")},
            {"title": format!("more {i}"), "text": "the sky is far .".to_string()}],
        "answers": [c],
        "supporting_titles": [format!("fact {i}")]})
}

#[test]
fn the_reranking_head_trains_on_several_documents_and_keeps_the_best() {
    let s = Setup::new();
    let rows = |r: std::ops::Range<usize>| -> String {
        let rows: Vec<String> = r.map(|i| multi_document_example(i).to_string()).collect();
        format!("[\n{}\n]\n", rows.join(",\n"))
    };
    std::fs::write(s.dir.join("hotpot.json"), rows(0..8)).unwrap();
    std::fs::write(s.dir.join("hotpot_eval.json"), rows(8..11)).unwrap();
    let data = s.p("hotpot.json");
    let extra = [
        "--train-data",
        &data,
        "--rerank",
        "--keep-top",
        "1",
        "--max-steps",
        "30",
    ];
    let log = ok(&s.train("rr", &extra));
    let out = s.dir.join("rr");

    // The teacher's relevance: MiniLM prefers the document that answers.
    let relevance = read_json(&out.join("teacher_relevance.json"));
    let relevance = relevance.as_object().unwrap();
    assert_eq!(relevance.len(), 8);
    let best_is_supporting = relevance
        .values()
        .filter(|r| {
            let r: Vec<f64> = r
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            r[1] > r[0] && r[1] > r[2]
        })
        .count();
    assert!(best_is_supporting >= 6, "{relevance:?}");

    // Evaluation keeps one document and reports the head's ranking quality.
    let after = read_json(&out.join("after_training_results.json"));
    let ranking = &after["ranking"];
    assert_eq!(ranking["questions"], 3, "{log}");
    assert_eq!(ranking["keep"], 1);
    let report = read_json(&out.join("metrics_report.json"));
    assert!(log.contains("reranking: recall@1"), "{log}");
    assert!(report.to_string().contains("ndcg_at_10"));

    // `eval` reloads the head: the same ranking quality and the same answers from the
    // document it keeps. A checkpoint without a head refuses --keep-top.
    let final_dir = out.join("checkpoints/final").display().to_string();
    let eval_data = s.p("hotpot_eval.json");
    let eval_out = s.p("rr_eval.json");
    ok(&scaledown(&[
        "eval",
        "--checkpoint",
        &final_dir,
        "--eval-data",
        &eval_data,
        "--keep-top",
        "1",
        "--output",
        &eval_out,
    ]));
    let again = read_json(Path::new(&eval_out));
    assert_eq!(again["compressed"]["ranking"], after["ranking"]);
    let predictions = |run: &serde_json::Value| -> Vec<String> {
        run["predictions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["prediction"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(predictions(&again["compressed"]), predictions(&after));
    ok(&s.train("plain", &["--max-steps", "2"]));
    let plain = s.dir.join("plain/checkpoints/final").display().to_string();
    fails_with(
        &scaledown(&[
            "eval",
            "--checkpoint",
            &plain,
            "--eval-data",
            &eval_data,
            "--keep-top",
            "1",
        ]),
        &["--keep-top", "reranking head"],
    );
    fails_with(
        &s.train("bad", &["--keep-top", "2"]),
        &["--keep-top", "--rerank"],
    );
}

#[test]
fn distillation_caches_the_teachers_token_distributions_and_trains() {
    let s = Setup::new();
    let log = ok(&s.train("kd", &["--distill-weight", "1", "--max-steps", "20"]));
    let out = s.dir.join("kd");
    let cache = read_json(&out.join("teacher_tokens.json"));
    let cache = cache.as_object().unwrap();
    assert_eq!(cache.len(), 8, "one entry per training example");
    for (id, entry) in cache {
        let answer = entry[0].as_array().unwrap();
        let rows = entry[1].as_array().unwrap();
        assert_eq!(rows.len(), answer.len(), "{id}: one row per answer token");
        for row in rows {
            let row = row.as_array().unwrap();
            assert_eq!(row.len(), 16, "{id}: the teacher's top 16");
            let mass: f64 = row.iter().map(|p| p[1].as_f64().unwrap()).sum();
            assert!(mass > 0.0 && mass <= 1.0 + 1e-4, "{id}: {mass}");
        }
    }
    let report = read_json(&out.join("metrics_report.json"));
    let losses = report["training"]["losses"].as_array().unwrap();
    assert_eq!(losses.len(), 20, "{log}");
    assert!(losses.iter().all(|l| l[1].as_f64().unwrap().is_finite()));
    fails_with(
        &s.train("bad", &["--distill-weight", "nan"]),
        &["--distill-weight"],
    );
}

#[test]
fn the_finetuned_ceiling_trains_the_uncompressed_generator_and_is_reported() {
    let s = Setup::new();
    let log = ok(&s.train("ceil", &["--max-steps", "40", "--finetuned-ceiling"]));
    let out = s.dir.join("ceil");
    let ceiling = read_json(&out.join("finetuned_ceiling.json"));
    let losses: Vec<f64> = ceiling["losses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l[1].as_f64().unwrap())
        .collect();
    assert_eq!(losses.len(), 40, "as many steps as the compressed run");
    let first = losses[..5].iter().sum::<f64>() / 5.0;
    let last = losses[35..].iter().sum::<f64>() / 5.0;
    assert!(last < 0.5 * first, "loss {first} -> {last}\n{log}");
    // Fine-tuned on the full text, the generator answers with a colour word.
    let predictions = ceiling["run"]["predictions"].as_array().unwrap();
    assert_eq!(predictions.len(), 3);
    for p in predictions {
        let answer = p["prediction"].as_str().unwrap();
        assert!(COLORS.contains(&answer.trim()), "{answer:?}\n{log}");
    }
    let report = read_json(&out.join("metrics_report.json"));
    assert_eq!(
        report["finetuned_ceiling"]["scores"],
        ceiling["run"]["scores"]
    );
    assert!(log.contains("fine-tuned uncompressed (ceiling)"), "{log}");

    // A resumed run reads the ceiling back instead of fine-tuning again.
    let again = ok(&s.train(
        "ceil",
        &["--max-steps", "40", "--finetuned-ceiling", "--resume"],
    ));
    assert!(!again.contains("ceiling step"), "{again}");
    fails_with(
        &s.train(
            "bad",
            &["--finetuned-ceiling", "--generator-training", "frozen"],
        ),
        &["--finetuned-ceiling", "lora"],
    );
}

#[test]
fn teacher_labels_from_prepare_are_used_and_only_the_rest_generated() {
    let s = Setup::new();
    let rows: Vec<String> = (0..8)
        .map(|i| {
            let mut ex = example(i);
            if i < 5 {
                ex["teacher_answer"] = serde_json::json!(format!("the {} one", COLORS[i % 6]));
            }
            ex.to_string()
        })
        .collect();
    let data = s.p("labelled.json");
    std::fs::write(&data, format!("[\n{}\n]\n", rows.join(",\n"))).unwrap();
    std::fs::copy(
        s.dir.join("train_eval.json"),
        s.dir.join("labelled_eval.json"),
    )
    .unwrap();
    ok(&s.train(
        "teach",
        &[
            "--train-data",
            &data,
            "--labels",
            "teacher",
            "--max-steps",
            "2",
        ],
    ));
    let cache = read_json(&s.dir.join("teach/teacher_labels.json"));
    let ids: Vec<&str> = cache
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.split(' ').next().unwrap())
        .collect();
    assert_eq!(ids, ["q5", "q6", "q7"], "only the unlabelled examples");
}

/// A ModernBERT folder (the model crate's random parity fixture, with a word-level tokenizer
/// that adds `[CLS]` and `[SEP]` as ModernBERT's does) as the encoder compressor's backbone:
/// `--compressor-type modernbert` trains it, the loss falls, and `eval` reloads the checkpoint
/// to the same scores.
#[test]
fn a_modernbert_folder_trains_as_the_encoder_compressor() {
    let s = Setup::new();
    let encoder = s.dir.join("modernbert");
    std::fs::create_dir_all(&encoder).unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("crates/scaledown-model/tests/fixtures/modernbert_tiny");
    std::fs::copy(fixture.join("config.json"), encoder.join("config.json")).unwrap();
    // The fixture keeps its weights as JSON (name -> shape, values): written as safetensors.
    let weights: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture.join("weights.json")).unwrap()).unwrap();
    let tensors: Vec<(String, Vec<usize>, Vec<u8>)> = weights
        .as_object()
        .unwrap()
        .iter()
        .map(|(name, t)| {
            let shape: Vec<usize> = serde_json::from_value(t["shape"].clone()).unwrap();
            let values: Vec<f32> = serde_json::from_value(t["values"].clone()).unwrap();
            (
                name.clone(),
                shape,
                values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            )
        })
        .collect();
    let views = tensors.iter().map(|(name, shape, bytes)| {
        let view =
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes);
        (name.clone(), view.unwrap())
    });
    std::fs::write(
        encoder.join("model.safetensors"),
        safetensors::serialize(views, None).unwrap(),
    )
    .unwrap();
    let mut tokenizer: serde_json::Value = serde_json::from_str(&tokenizer_json()).unwrap();
    let vocab = tokenizer["model"]["vocab"].as_object_mut().unwrap();
    let (cls, sep) = (vocab.len(), vocab.len() + 1);
    vocab.insert("[CLS]".into(), cls.into());
    vocab.insert("[SEP]".into(), sep.into());
    let added = tokenizer["added_tokens"].as_array_mut().unwrap();
    for (id, content) in [(cls, "[CLS]"), (sep, "[SEP]")] {
        added.push(
            serde_json::json!({"id": id, "content": content, "single_word": false,
            "lstrip": false, "rstrip": false, "normalized": false, "special": true}),
        );
    }
    tokenizer["post_processor"] = serde_json::json!({
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}},
                   {"Sequence": {"id": "A", "type_id": 0}},
                   {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
        "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {
            "[CLS]": {"id": "[CLS]", "ids": [cls], "tokens": ["[CLS]"]},
            "[SEP]": {"id": "[SEP]", "ids": [sep], "tokens": ["[SEP]"]}
        }
    });
    std::fs::write(encoder.join("tokenizer.json"), tokenizer.to_string()).unwrap();

    let encoder = encoder.display().to_string();
    let flags = [
        "--compressor-type",
        "modernbert",
        "--encoder",
        encoder.as_str(),
        "--max-steps",
        "40",
    ];
    let log = ok(&s.train("mb", &flags));
    assert!(
        !log.contains("holds a"),
        "a ModernBERT folder runs as given: {log}"
    );
    let out = s.dir.join("mb");
    let report = read_json(&out.join("metrics_report.json"));
    let losses: Vec<f64> = report["training"]["losses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l[1].as_f64().unwrap())
        .collect();
    let head: f64 = losses[..5].iter().sum::<f64>() / 5.0;
    let tail: f64 = losses[losses.len() - 5..].iter().sum::<f64>() / 5.0;
    assert!(tail < 0.7 * head, "loss {head} -> {tail}");
    eval_answers_as_the_run_did(&s, "mb");
}

/// `eval` of run `run`'s final checkpoint gives the answers its own after-training
/// evaluation gave: the checkpoint reloads what the run trained.
fn eval_answers_as_the_run_did(s: &Setup, run: &str) {
    let out = s.dir.join(run);
    let eval_out = s.p(&format!("{run}_eval.json"));
    ok(&scaledown(&[
        "eval",
        "--checkpoint",
        &out.join("checkpoints/final").display().to_string(),
        "--eval-data",
        &s.p("train_eval.json"),
        "--output",
        &eval_out,
    ]));
    let answers = |v: &serde_json::Value| -> Vec<serde_json::Value> {
        let list = v["predictions"].as_array().expect("predictions");
        list.iter().map(|p| p["prediction"].clone()).collect()
    };
    let after = read_json(&out.join("after_training_results.json"));
    let again = read_json(Path::new(&eval_out));
    assert_eq!(answers(&after), answers(&again["compressed"]));
}

/// The step numbers of the report's `training.<key>` series ([step, value] pairs).
fn logged_steps(report: &serde_json::Value, key: &str) -> Vec<u64> {
    report["training"][key]
        .as_array()
        .unwrap_or_else(|| panic!("no training.{key} in the report"))
        .iter()
        .map(|l| l[0].as_u64().unwrap())
        .collect()
}
