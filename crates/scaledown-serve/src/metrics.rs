//! The server's load figures in Prometheus' text format (`GET /metrics`).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Cumulative histogram buckets, Prometheus style.
struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, v: f64) {
        for (b, c) in self.bounds.iter().zip(&mut self.counts) {
            if v <= *b {
                *c += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {c}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}\n{name}_count {}", self.sum, self.count);
    }
}

const LATENCY_S: &[f64] = &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
const BATCH: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0];

pub struct Metrics {
    /// (endpoint, status) -> requests.
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    latency: Mutex<Histogram>,
    batches: Mutex<Histogram>,
    pub queue_depth: AtomicUsize,
    prompt_tokens: AtomicU64,
    document_tokens: AtomicU64,
    completion_tokens: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            requests: Mutex::default(),
            latency: Mutex::new(Histogram::new(LATENCY_S)),
            batches: Mutex::new(Histogram::new(BATCH)),
            queue_depth: AtomicUsize::new(0),
            prompt_tokens: AtomicU64::new(0),
            document_tokens: AtomicU64::new(0),
            completion_tokens: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    pub fn request(&self, endpoint: &str, status: u16, seconds: f64) {
        let mut r = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        *r.entry((endpoint.to_string(), status)).or_default() += 1;
        drop(r);
        self.latency
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .observe(seconds);
    }

    pub fn batch(&self, size: usize) {
        self.batches
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .observe(size as f64);
    }

    pub fn tokens(&self, prompt: usize, documents: usize, completion: usize) {
        self.prompt_tokens
            .fetch_add(prompt as u64, Ordering::Relaxed);
        self.document_tokens
            .fetch_add(documents as u64, Ordering::Relaxed);
        self.completion_tokens
            .fetch_add(completion as u64, Ordering::Relaxed);
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP scaledown_requests_total Requests answered, by endpoint and HTTP status.\n# TYPE scaledown_requests_total counter\n");
        for ((endpoint, status), n) in self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "scaledown_requests_total{{endpoint=\"{endpoint}\",status=\"{status}\"}} {n}"
            );
        }
        self.latency
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .render(
                &mut out,
                "scaledown_request_duration_seconds",
                "Time from a request's arrival to its response (streams: to the last token).",
            );
        self.batches
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .render(
                &mut out,
                "scaledown_batch_size",
                "Requests answered together in one model batch.",
            );
        let gauge = |out: &mut String, name: &str, kind: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        };
        gauge(
            &mut out,
            "scaledown_queue_depth",
            "gauge",
            "Requests waiting for the model.",
            self.queue_depth.load(Ordering::Relaxed) as u64,
        );
        for (name, help, v) in [
            (
                "scaledown_prompt_tokens_total",
                "Positions the generator read before answering (a memory vector counts one).",
                &self.prompt_tokens,
            ),
            (
                "scaledown_document_tokens_total",
                "Tokens of the documents received.",
                &self.document_tokens,
            ),
            (
                "scaledown_completion_tokens_total",
                "Tokens generated.",
                &self.completion_tokens,
            ),
        ] {
            gauge(&mut out, name, "counter", help, v.load(Ordering::Relaxed));
        }
        if let Some(rss) = resident_bytes() {
            gauge(
                &mut out,
                "process_resident_memory_bytes",
                "gauge",
                "Resident memory of the server process.",
                rss,
            );
        }
        out
    }
}

/// The process's resident set (Linux: /proc/self/statm), None elsewhere.
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_counters_labelled() {
        let m = Metrics::default();
        m.request("/v1/answer", 200, 0.3);
        m.request("/v1/answer", 200, 7.0);
        m.request("/v1/answer", 400, 0.01);
        m.batch(3);
        let text = m.render();
        assert!(
            text.contains("scaledown_requests_total{endpoint=\"/v1/answer\",status=\"200\"} 2")
        );
        assert!(
            text.contains("scaledown_requests_total{endpoint=\"/v1/answer\",status=\"400\"} 1")
        );
        assert!(text.contains("scaledown_request_duration_seconds_bucket{le=\"0.5\"} 2"));
        assert!(text.contains("scaledown_request_duration_seconds_bucket{le=\"10\"} 3"));
        assert!(text.contains("scaledown_request_duration_seconds_count 3"));
        assert!(text.contains("scaledown_batch_size_bucket{le=\"2\"} 0"));
        assert!(text.contains("scaledown_batch_size_bucket{le=\"4\"} 1"));
    }
}
