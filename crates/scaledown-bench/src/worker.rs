//! The other sides of the bench: bench/pytorch_bench.py (PyTorch) and
//! bench/llamacpp_bench.py (llama.cpp) as worker processes, one JSON request and one JSON
//! answer per line, so that single runs can alternate with ours.

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

/// What runs on the other side.
#[derive(Clone, Copy, PartialEq)]
pub enum Side {
    PyTorch,
    LlamaCpp,
}

impl Side {
    pub fn name(self) -> &'static str {
        match self {
            Side::PyTorch => "PyTorch",
            Side::LlamaCpp => "llama.cpp",
        }
    }

    /// The JSON key of its figures in `--json`.
    pub fn key(self) -> &'static str {
        match self {
            Side::PyTorch => "pytorch",
            Side::LlamaCpp => "llama_cpp",
        }
    }

    fn script(self) -> &'static str {
        match self {
            Side::PyTorch => "bench/pytorch_bench.py",
            Side::LlamaCpp => "bench/llamacpp_bench.py",
        }
    }

    /// The key of the version in the worker's answer to `load`.
    fn version_key(self) -> &'static str {
        match self {
            Side::PyTorch => "torch",
            Side::LlamaCpp => "llama_cpp",
        }
    }
}

pub struct Worker {
    pub side: Side,
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    pub version: String,
}

impl Worker {
    /// Starts the worker and loads its models (`load`, the side's own load request).
    pub fn start(side: Side, python: &str, threads: usize, load: Value) -> Result<Self> {
        // The checkout the command runs in, else the one this binary was built from (a binary
        // copied to another machine runs from its checkout there).
        let here = Path::new(side.script());
        let script = if here.is_file() {
            here.to_path_buf()
        } else {
            Path::new(env!("CARGO_MANIFEST_DIR")).join(here)
        };
        let mut child = Command::new(python)
            .arg(&script)
            .env("OMP_NUM_THREADS", threads.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {python} {}", script.display()))?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = BufReader::new(child.stdout.take().expect("piped"));
        let mut worker = Self {
            side,
            child,
            stdin,
            stdout,
            version: String::new(),
        };
        let loaded = worker.request(load).with_context(|| {
            format!(
                "loading the models in {} (bench/setup.sh installs its packages)",
                side.name()
            )
        })?;
        worker.version = loaded[side.version_key()]
            .as_str()
            .unwrap_or("?")
            .to_string();
        Ok(worker)
    }

    fn request(&mut self, request: Value) -> Result<Value> {
        let name = self.side.name();
        writeln!(self.stdin, "{request}")
            .with_context(|| format!("writing to the {name} worker"))?;
        self.stdin.flush()?;
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .with_context(|| format!("reading from the {name} worker"))?;
        if line.is_empty() {
            bail!("the {name} worker exited (are its packages installed? see bench/setup.sh)");
        }
        let answer: Value = serde_json::from_str(&line)
            .with_context(|| format!("the {name} worker answered `{}`", line.trim()))?;
        match answer.get("error") {
            Some(e) => Err(anyhow!("{name}: {}", e.as_str().unwrap_or("?"))),
            None => Ok(answer),
        }
    }

    /// Hands `work` to the worker: false when it is not this side's work (llama.cpp runs
    /// neither compressed answers nor training).
    pub fn prepare(&mut self, key: &str, work: Value) -> Result<bool> {
        let answer = self.request(json!({"op": "prepare", "key": key, "work": work}))?;
        Ok(answer["ok"].as_bool().unwrap_or(false))
    }

    /// One run of prepared work: seconds.
    pub fn run(&mut self, key: &str) -> Result<f64> {
        let answer = self.request(json!({"op": "run", "key": key}))?;
        answer["seconds"]
            .as_f64()
            .ok_or_else(|| anyhow!("the {} worker gave no time", self.side.name()))
    }

    pub fn peak_rss_mb(&mut self) -> Option<f64> {
        self.request(json!({"op": "peak"})).ok()?["peak_rss_mb"].as_f64()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
