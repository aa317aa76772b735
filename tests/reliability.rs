//! Runs that are interrupted end where uninterrupted ones do: training and pretraining killed
//! with SIGKILL at random steps and while a checkpoint is being written, then resumed, give
//! bit-equal losses and metrics on the CPU backend; a disk that fills up stops a run with a
//! message naming the checkpoint, keeps the last good one, and the run resumes once there is
//! room.

mod tiny;

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tiny::*;

/// Where a run is killed.
#[derive(Debug, Clone, Copy)]
enum Kill {
    /// Once the log line `{prefix} {step}/` is out, i.e. somewhere in the step after it.
    AfterStep(&'static str, usize),
    /// While a checkpoint folder is half written (each file's write is followed by a pause).
    InCheckpoint,
}

/// Runs `scaledown` with `args` and SIGKILLs it at `kill`; panics if it ends before.
fn run_killed(args: &[String], checkpoints: &Path, kill: Kill) {
    let pause = match kill {
        Kill::InCheckpoint => "400",
        Kill::AfterStep(..) => "0",
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_scaledown"))
        .args(args)
        .env("SCALEDOWN_TEST_CHECKPOINT_PAUSE_MS", pause)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run scaledown");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let started = Instant::now();
    let mut log = vec![];
    let hit = loop {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "{kill:?} not reached:\n{}",
            log.join("\n")
        );
        if let Kill::InCheckpoint = kill
            && half_written(checkpoints)
        {
            break true;
        }
        match rx.recv_timeout(Duration::from_millis(10)) {
            Ok(line) => {
                let done = matches!(kill, Kill::AfterStep(prefix, n)
                    if line.starts_with(&format!("{prefix} {n}/")));
                log.push(line);
                if done {
                    break true;
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break false,
        }
    };
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(
        hit && status.signal() == Some(9),
        "the run ended ({status}) before {kill:?}:\n{}",
        log.join("\n")
    );
}

/// Whether a checkpoint is being written: a temporary folder that already holds its tensors.
fn half_written(checkpoints: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(checkpoints) else {
        return false;
    };
    entries.filter_map(|e| e.ok()).any(|e| {
        e.file_name().to_string_lossy().contains(".tmp-")
            && e.path().join("trainable.safetensors").exists()
    })
}

/// Steps drawn from a fixed seed (`SCALEDOWN_TEST_SEED` overrides it), so a failure repeats.
fn draw(seed: &mut u64, range: std::ops::RangeInclusive<usize>) -> usize {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    range.start() + (*seed >> 33) as usize % (range.end() - range.start() + 1)
}

fn test_seed() -> u64 {
    std::env::var("SCALEDOWN_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2026)
}

/// What must come out the same: the loss of every step, the evaluations and the answers.
fn outcome(out: &Path) -> Value {
    let report = read_json(&out.join("metrics_report.json"));
    let after = read_json(&out.join("after_training_results.json"));
    serde_json::json!({
        "losses": report["training"]["losses"],
        "evals": report["training"]["evals"],
        "after": report["after"]["scores"],
        "memory_use_after": report["memory_use_after"],
        "answers": after["predictions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["prediction"].clone())
            .collect::<Vec<_>>(),
    })
}

/// 12 steps, checkpoints after steps 3, 6 and 9.
const QA: [&str; 6] = [
    "--max-steps",
    "12",
    "--eval-steps",
    "3",
    "--logging-steps",
    "1",
];

#[test]
fn training_killed_three_times_ends_as_an_uninterrupted_run() {
    let s = Setup::new();
    ok(&s.train("through", &QA));
    let expected = outcome(&s.dir.join("through"));
    assert_eq!(expected["losses"].as_array().unwrap().len(), 12);

    let mut seed = test_seed();
    let args = s.args("train", "killed", &[&QA[..], &["--resume"]].concat());
    let checkpoints = s.dir.join("killed/checkpoints");
    // Before or after the first checkpoint (step 3), then while the next one is written, then
    // after the one before it (a kill in the middle of writing step 6 resumes from step 3).
    let first = draw(&mut seed, 1..=5);
    let third = draw(&mut seed, 7..=11);
    for kill in [
        Kill::AfterStep("step", first),
        Kill::InCheckpoint,
        Kill::AfterStep("step", third),
    ] {
        run_killed(&args, &checkpoints, kill);
        // What a kill leaves is never taken for a checkpoint.
        for e in std::fs::read_dir(&checkpoints).into_iter().flatten() {
            let name = e.unwrap().file_name().to_string_lossy().to_string();
            assert!(
                name.starts_with('.') || name.starts_with("step-"),
                "{kill:?} left {name}"
            );
        }
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let log = ok(&scaledown(&args));
    assert!(log.contains("resuming from"), "{log}");
    assert!(!log.contains("no optimizer state"), "{log}");
    assert_eq!(
        outcome(&s.dir.join("killed")),
        expected,
        "kills after steps {first}, in a checkpoint and after {third} (seed {})",
        test_seed()
    );
    // The half-written folder of the kill in a checkpoint is gone once that checkpoint is
    // written again.
    let left: Vec<String> = std::fs::read_dir(&checkpoints)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.contains(".tmp-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn pretraining_killed_three_times_ends_as_an_uninterrupted_run() {
    let s = Setup::new();
    let corpus = write_corpus(&s);
    let flags = [
        "--pretrain-data",
        corpus.as_str(),
        "--pretrain-steps",
        "12",
        "--eval-steps",
        "3",
        "--logging-steps",
        "1",
        "--resume",
    ];
    ok(&s.command("pretrain", "through", &flags[..8]));
    let state = |out: &str| {
        let state = read_json(&s.dir.join(out).join("checkpoints/pretrained/state.json"));
        // Each probe's figures, without its wall-clock time.
        let mut probes = state["pretrain_memory_gap"].clone();
        for p in probes.as_array_mut().unwrap() {
            p.as_object_mut().unwrap().remove("seconds");
        }
        serde_json::json!({"losses": state["pretrain_losses"], "memory_gap": probes})
    };
    let expected = state("through");
    assert_eq!(expected["losses"].as_array().unwrap().len(), 12);

    let mut seed = test_seed() + 1;
    let args = s.args("pretrain", "killed", &flags);
    let checkpoints = s.dir.join("killed/checkpoints");
    let first = draw(&mut seed, 1..=5);
    let third = draw(&mut seed, 7..=11);
    for kill in [
        Kill::AfterStep("pretraining step", first),
        Kill::InCheckpoint,
        Kill::AfterStep("pretraining step", third),
    ] {
        run_killed(&args, &checkpoints, kill);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ok(&scaledown(&args));
    assert_eq!(
        state("killed"),
        expected,
        "kills after pretraining steps {first}, in a checkpoint and after {third}"
    );
}

/// Sum of the file sizes under `dir`, each rounded up to a 4 KiB page as tmpfs counts them.
fn pages(dir: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let meta = e.metadata().unwrap();
        total += match meta.is_dir() {
            true => pages(&e.path()),
            false => meta.len().div_ceil(4096) * 4096,
        };
    }
    total
}

/// A disk that fills up while checkpoint step-9 is written: the run stops with a message that
/// names it, step-3 and step-6 stay intact (`eval` reads them), and once there is room
/// `--resume` goes on from step-6 to the losses of a run that had room all along.
#[test]
fn a_full_disk_stops_the_run_keeps_the_last_checkpoint_and_resumes_with_room() {
    let s = Setup::new();
    ok(&s.train("through", &QA));
    let through = s.dir.join("through");
    let expected = outcome(&through)["losses"].clone();
    // Room for what is written before step 9 (results, two checkpoints) and half of step-9.
    let checkpoint = pages(&through.join("checkpoints/step-9"));
    let results: u64 = ["baseline_results.json", "before_training_results.json"]
        .iter()
        .map(|f| {
            std::fs::metadata(through.join(f))
                .unwrap()
                .len()
                .div_ceil(4096)
                * 4096
        })
        .sum();
    let size_kib = (results + 2 * checkpoint + checkpoint / 2) / 1024;

    let disk = s.dir.join("disk");
    std::fs::create_dir_all(&disk).unwrap();
    let args = s.args("train", "disk/run", &[&QA[..], &["--resume"]].concat());
    let quoted: Vec<String> = std::iter::once(env!("CARGO_BIN_EXE_scaledown").to_string())
        .chain(args)
        .map(|a| format!("'{a}'"))
        .collect();
    let command = quoted.join(" ");
    let (disk_s, dir_s) = (disk.display(), s.dir.display());
    // One mount namespace for both runs: the small tmpfs, then the same one with room.
    let script = format!(
        "set -u
         mount -t tmpfs -o size={size_kib}k tmpfs '{disk_s}' || exit 90
         {command} > '{dir_s}/full.log' 2>&1; echo $? > '{dir_s}/full.rc'
         cp -r '{disk_s}/run' '{dir_s}/after_full'
         mount -o remount,size=64m '{disk_s}' || exit 91
         {command} > '{dir_s}/room.log' 2>&1; echo $? > '{dir_s}/room.rc'
         cp -r '{disk_s}/run' '{dir_s}/after_room'"
    );
    // Unprivileged where user namespaces are allowed, else as root.
    let ran = [
        &["--user", "--map-root-user", "--mount"][..],
        &["--mount"][..],
    ]
    .iter()
    .any(|ns| {
        Command::new("unshare")
            .args(*ns)
            .args(["sh", "-c", &script])
            .status()
            .is_ok_and(|st| st.success())
    });
    assert!(
        ran,
        "this test mounts a small tmpfs in a mount namespace (`unshare --user --map-root-user \
         --mount`, or `unshare --mount` as root): neither works here"
    );
    let read = |f: &str| std::fs::read_to_string(s.dir.join(f)).unwrap();
    let full = read("full.log");
    assert_ne!(read("full.rc").trim(), "0", "{full}");
    for needle in [
        "checkpoints/step-9 was not written (earlier checkpoints are kept)",
        "No space left on device",
    ] {
        assert!(full.contains(needle), "`{needle}` not in:\n{full}");
    }
    assert!(!full.contains("panicked"), "{full}");
    let kept = s.dir.join("after_full/checkpoints");
    let names: Vec<String> = std::fs::read_dir(&kept)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert!(
        names.iter().all(|n| n == "step-3" || n == "step-6"),
        "{names:?}"
    );
    for step in ["step-3", "step-6"] {
        let dir = kept.join(step).display().to_string();
        ok(&scaledown(&[
            "eval",
            "--checkpoint",
            &dir,
            "--eval-data",
            &s.p("train_eval.json"),
        ]));
    }
    let room = read("room.log");
    assert_eq!(read("room.rc").trim(), "0", "{room}");
    assert!(
        room.contains("resuming from") && room.contains("step-6"),
        "{room}"
    );
    assert_eq!(outcome(&s.dir.join("after_room"))["losses"], expected);
}

/// One bad-input case: the command, the file it is given, and what the message must say.
struct Case {
    what: &'static str,
    args: Vec<String>,
    /// Every one must be in the message (the file's name first).
    needles: Vec<String>,
}

/// Truncated, hostile and wrong-format models, tokenizers, datasets, corpora and checkpoints:
/// every command exits with an error (not a signal) whose message names the file and what is
/// wrong, never a panic, under a 4 GiB address-space limit (a parser that allocated what a
/// header claims would abort). Run with `--nocapture` for the table of messages.
#[test]
fn hostile_files_are_refused_by_name_within_bounded_memory() {
    let s = Setup::new();
    let dir = &s.dir;
    let write = |name: &str, bytes: &[u8]| -> String {
        let p = dir.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, bytes).unwrap();
        p.display().to_string()
    };
    // Model folders: the tiny generator with one file replaced.
    let model_with = |name: &str, file: &str, bytes: &[u8]| -> String {
        let folder = dir.join(name);
        std::fs::create_dir_all(&folder).unwrap();
        for f in ["config.json", "tokenizer.json", "model.safetensors"] {
            std::fs::copy(dir.join("gen").join(f), folder.join(f)).unwrap();
        }
        std::fs::write(folder.join(file), bytes).unwrap();
        folder.display().to_string()
    };
    let weights = std::fs::read(dir.join("gen/model.safetensors")).unwrap();
    let mut config: Value = read_json(&dir.join("gen/config.json"));
    config["num_hidden_layers"] = 100_000_000.into();
    let mut huge_header = (1u64 << 60).to_le_bytes().to_vec();
    huge_header.extend_from_slice(b"{}");
    let gguf = |n_tensors: u64, n_kv: u64, rest: &[u8]| -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend(n_tensors.to_le_bytes());
        b.extend(n_kv.to_le_bytes());
        b.extend_from_slice(rest);
        b
    };
    let generate = |model: &str| -> Vec<String> {
        [
            "generate",
            "--prompt",
            "the cat",
            "--max-new-tokens",
            "2",
            "--model",
            model,
        ]
        .map(String::from)
        .to_vec()
    };
    let n = |v: &[&str]| -> Vec<String> { v.iter().map(|x| x.to_string()).collect() };
    let mut cases = vec![
        Case {
            what: "model.safetensors cut in half",
            args: generate(&model_with(
                "half",
                "model.safetensors",
                &weights[..weights.len() / 2],
            )),
            needles: n(&["model.safetensors"]),
        },
        Case {
            what: "model.safetensors whose header claims 2^60 bytes",
            args: generate(&model_with("claims", "model.safetensors", &huge_header)),
            needles: n(&["model.safetensors"]),
        },
        Case {
            what: "config.json that is not JSON",
            args: generate(&model_with("config", "config.json", b"{\"hidden_size\": ")),
            needles: n(&["config.json"]),
        },
        Case {
            what: "config.json claiming 10^8 layers",
            args: generate(&model_with(
                "layers",
                "config.json",
                config.to_string().as_bytes(),
            )),
            needles: n(&["config.json", "out of range"]),
        },
        Case {
            what: "tokenizer.json of the wrong shape",
            args: generate(&model_with("tok", "tokenizer.json", b"[1, 2, 3]")),
            needles: n(&["tokenizer.json"]),
        },
        Case {
            what: "GGUF claiming 2^60 tensors",
            args: generate(&write("tensors.gguf", &gguf(1 << 60, 0, &[]))),
            needles: n(&["tensors.gguf"]),
        },
        Case {
            what: "GGUF with a 2^62-byte key",
            args: generate(&write("key.gguf", &gguf(0, 1, &(1u64 << 62).to_le_bytes()))),
            needles: n(&["key.gguf"]),
        },
        Case {
            what: "a text file named .gguf",
            args: generate(&write("text.gguf", b"not a model\n")),
            needles: n(&["text.gguf"]),
        },
    ];
    // Datasets for `prepare` and `train`.
    let prepare = |dataset: &str, file: &str| -> Vec<String> {
        let out = dir.join("prepared.json").display().to_string();
        [
            "prepare",
            "--dataset",
            dataset,
            "--source",
            file,
            "--output-file",
            &out,
        ]
        .map(String::from)
        .to_vec()
    };
    let train_on = |file: &str| -> Vec<String> {
        s.args(
            "train",
            "bad_run",
            &["--train-data", file, "--eval-data", &s.p("train_eval.json")],
        )
    };
    let pretrain_on = |file: &str| -> Vec<String> {
        s.args(
            "pretrain",
            "bad_pre",
            &["--pretrain-data", file, "--pretrain-steps", "2"],
        )
    };
    cases.extend([
        Case {
            what: "SQuAD file cut mid-JSON",
            args: prepare(
                "squad",
                &write(
                    "squad_cut.json",
                    b"{\"version\": \"v2.0\", \"data\": [{\"title\"",
                ),
            ),
            needles: n(&["squad_cut.json"]),
        },
        Case {
            what: "HotpotQA row whose context is a number",
            args: prepare(
                "hotpot_qa",
                &write(
                    "hotpot.jsonl",
                    b"{\"question\": \"q\", \"answer\": \"a\", \"context\": 5}\n",
                ),
            ),
            needles: n(&["hotpot.jsonl", "line 1"]),
        },
        Case {
            what: "TriviaQA file of binary bytes",
            args: prepare(
                "trivia_qa",
                &write("trivia.json", &[0xff, 0xfe, 0x00, 0x81, 0x9f]),
            ),
            needles: n(&["trivia.json"]),
        },
        Case {
            what: "prepared file with a wrong type",
            args: train_on(&write(
                "wrong.json",
                b"[{\"id\": 1, \"question\": [], \"documents\": 3, \"answers\": []}]",
            )),
            needles: n(&["wrong.json"]),
        },
        Case {
            what: "corpus line that is not JSON",
            args: pretrain_on(&write(
                "corpus.jsonl",
                b"{\"text\": \"the cat is red .\"}\n{\"text\n",
            )),
            needles: n(&["corpus.jsonl", "line 2", "not JSON"]),
        },
        Case {
            what: "corpus of binary bytes",
            args: pretrain_on(&write("corpus.txt", &[0xc3, 0x28, 0xa0, 0xa1])),
            needles: n(&["corpus.txt"]),
        },
    ]);
    // Checkpoints: a trained one, then copies with one file damaged.
    ok(&s.train("ckpt", &["--max-steps", "2", "--eval-steps", "1"]));
    let step = dir.join("ckpt/checkpoints/step-1");
    let damaged_copy = |name: &str, file: &str, bytes: &[u8], fix_manifest: bool| -> String {
        let to = dir.join("ckpt/checkpoints").join(name);
        std::fs::create_dir_all(&to).unwrap();
        for e in std::fs::read_dir(&step).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
        std::fs::write(to.join(file), bytes).unwrap();
        if fix_manifest {
            // As if written so: the manifest agrees with the hostile file.
            let mut m = read_json(&to.join("manifest.json"));
            let digest = scaledown_model::checkpoint::FileDigest::of(bytes);
            m["files"][file] = serde_json::to_value(digest).unwrap();
            std::fs::write(to.join("manifest.json"), m.to_string()).unwrap();
        }
        to.display().to_string()
    };
    let eval = |checkpoint: &str| -> Vec<String> {
        n(&[
            "eval",
            "--checkpoint",
            checkpoint,
            "--eval-data",
            &s.p("train_eval.json"),
        ])
    };
    let trainable = std::fs::read(step.join("trainable.safetensors")).unwrap();
    let mut flipped = trainable.clone();
    let at = flipped.len() - 10;
    flipped[at] ^= 0x40;
    cases.extend([
        Case {
            what: "checkpoint tensors with one bit flipped",
            args: eval(&damaged_copy(
                "flipped",
                "trainable.safetensors",
                &flipped,
                false,
            )),
            needles: n(&["trainable.safetensors", "SHA-256"]),
        },
        Case {
            what: "checkpoint tensors truncated",
            args: eval(&damaged_copy(
                "cut",
                "trainable.safetensors",
                &trainable[..100],
                false,
            )),
            needles: n(&["trainable.safetensors", "truncated"]),
        },
        Case {
            what: "hostile setup.json that its manifest lists",
            args: eval(&damaged_copy(
                "setup",
                "setup.json",
                b"{\"compressor\": 7}",
                true,
            )),
            needles: n(&["setup.json"]),
        },
        Case {
            what: "hostile tensors that the manifest lists",
            args: eval(&damaged_copy(
                "shapes",
                "trainable.safetensors",
                &huge_header,
                true,
            )),
            needles: n(&["trainable.safetensors"]),
        },
        Case {
            what: "manifest.json that is not JSON",
            args: eval(&damaged_copy(
                "manifest",
                "manifest.json",
                b"{\"files\": ",
                false,
            )),
            needles: n(&["manifest.json"]),
        },
    ]);
    // The optimizer state of the newest checkpoint, hostile but listed: --resume names it.
    ok(&s.train("resumed", &["--max-steps", "2", "--eval-steps", "1"]));
    let step = dir.join("resumed/checkpoints/step-1");
    std::fs::remove_dir_all(dir.join("resumed/checkpoints/final")).unwrap();
    std::fs::write(step.join("optimizer.safetensors"), &huge_header).unwrap();
    let mut m = read_json(&step.join("manifest.json"));
    m["files"]["optimizer.safetensors"] =
        serde_json::to_value(scaledown_model::checkpoint::FileDigest::of(&huge_header)).unwrap();
    std::fs::write(step.join("manifest.json"), m.to_string()).unwrap();
    cases.push(Case {
        what: "hostile optimizer state that the manifest lists (--resume)",
        args: s.args(
            "train",
            "resumed",
            &["--max-steps", "3", "--eval-steps", "1", "--resume"],
        ),
        needles: n(&["optimizer.safetensors"]),
    });

    let mut table = vec![
        "| input | command | message |".to_string(),
        "|---|---|---|".into(),
    ];
    for case in &cases {
        let script = format!(
            "ulimit -v 4194304; exec {} \"$@\"",
            env!("CARGO_BIN_EXE_scaledown")
        );
        let o = Command::new("sh")
            .args(["-c", &script, "scaledown"])
            .args(&case.args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(
            o.status.code().is_some_and(|c| c != 0),
            "{}: expected an error exit, got {} ({err})",
            case.what,
            o.status
        );
        assert!(!err.contains("panicked"), "{}: {err}", case.what);
        for needle in &case.needles {
            assert!(
                err.contains(needle.as_str()),
                "{}: `{needle}` not in: {err}",
                case.what
            );
        }
        let message = err
            .lines()
            .find(|l| l.starts_with("error"))
            .unwrap_or_default()
            .replace(&dir.display().to_string(), "…")
            .replace('|', "\\|");
        table.push(format!(
            "| {} | `{}` | {message} |",
            case.what, case.args[0]
        ));
    }
    println!("{}", table.join("\n"));
}
