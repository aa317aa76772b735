//! The PyTorch side: bench/pytorch_bench.py as a worker process, one JSON request and one
//! JSON answer per line, so that single runs can alternate with ours.

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

pub struct PyTorch {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    pub version: String,
}

impl PyTorch {
    /// Starts the worker and loads SmolLM2, the OSCAR models and MiniLM into it.
    pub fn start(python: &str, threads: usize, load: Value) -> Result<Self> {
        // The checkout the command runs in, else the one this binary was built from (a binary
        // copied to another machine runs from its checkout there).
        let here = Path::new("bench/pytorch_bench.py");
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
            child,
            stdin,
            stdout,
            version: String::new(),
        };
        let loaded = worker
            .request(load)
            .context("loading the models in PyTorch (bench/setup.sh installs its packages)")?;
        worker.version = loaded["torch"].as_str().unwrap_or("?").to_string();
        Ok(worker)
    }

    fn request(&mut self, request: Value) -> Result<Value> {
        writeln!(self.stdin, "{request}").context("writing to the PyTorch worker")?;
        self.stdin.flush()?;
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .context("reading from the PyTorch worker")?;
        if line.is_empty() {
            bail!("the PyTorch worker exited (is torch installed? see bench/setup.sh)");
        }
        let answer: Value = serde_json::from_str(&line)
            .with_context(|| format!("the PyTorch worker answered `{}`", line.trim()))?;
        match answer.get("error") {
            Some(e) => Err(anyhow!("PyTorch: {}", e.as_str().unwrap_or("?"))),
            None => Ok(answer),
        }
    }

    pub fn prepare(&mut self, key: &str, work: Value) -> Result<()> {
        self.request(json!({"op": "prepare", "key": key, "work": work}))
            .map(|_| ())
    }

    /// One run of prepared work: seconds.
    pub fn run(&mut self, key: &str) -> Result<f64> {
        let answer = self.request(json!({"op": "run", "key": key}))?;
        answer["seconds"]
            .as_f64()
            .ok_or_else(|| anyhow!("the PyTorch worker gave no time"))
    }

    pub fn peak_rss_mb(&mut self) -> Option<f64> {
        self.request(json!({"op": "peak"})).ok()?["peak_rss_mb"].as_f64()
    }
}

impl Drop for PyTorch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
