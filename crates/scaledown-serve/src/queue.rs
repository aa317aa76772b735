//! Dynamic batching: handlers put [`Job`]s in a bounded queue; one thread takes up to
//! `max_batch` of them (waiting at most `max_wait` for more after the first), answers those
//! that share a batch key together, and sends each its tokens and its answer.

use super::engine::{Engine, Prepared};
use super::metrics::Metrics;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedSender;

/// What a job hears back: text as it is generated (streams only), then its answer.
#[derive(Debug)]
pub enum Event {
    Delta(String),
    Done(Result<Done, String>),
}

#[derive(Debug, Clone)]
pub struct Done {
    pub text: String,
    pub completion_tokens: usize,
    /// "stop" (a stop token) or "length" (max_new_tokens reached), as OpenAI says it.
    pub finish_reason: &'static str,
}

pub struct Job {
    pub prepared: Prepared,
    pub stream: bool,
    /// Past this instant the handler has given up: the job is skipped.
    pub deadline: Instant,
    pub events: UnboundedSender<Event>,
}

#[derive(Debug, Clone, Copy)]
pub struct Batching {
    pub max_batch: usize,
    pub max_wait: Duration,
}

/// The handlers' side of the queue.
pub struct Queue {
    sender: SyncSender<Job>,
    metrics: Arc<Metrics>,
}

pub enum Refused {
    Full,
    Closed,
}

impl Queue {
    /// A queue of at most `capacity` waiting jobs, and its receiving end for [`work`].
    pub fn new(capacity: usize, metrics: Arc<Metrics>) -> (Self, Receiver<Job>) {
        let (sender, receiver) = sync_channel(capacity);
        (Self { sender, metrics }, receiver)
    }

    pub fn submit(&self, job: Job) -> Result<(), Refused> {
        // Count first: the worker may take the job before try_send returns.
        self.metrics.queue_depth.fetch_add(1, Ordering::SeqCst);
        self.sender.try_send(job).map_err(|e| {
            self.metrics.queue_depth.fetch_sub(1, Ordering::SeqCst);
            match e {
                TrySendError::Full(_) => Refused::Full,
                TrySendError::Disconnected(_) => Refused::Closed,
            }
        })
    }
}

/// The model thread: runs until every [`Queue`] is dropped and the queue is empty.
pub fn work(engine: Engine, jobs: Receiver<Job>, batching: Batching, metrics: Arc<Metrics>) {
    // Test hook: a slow model, so that tests can fill the queue and pass a timeout.
    let delay = std::env::var("SCALEDOWN_TEST_SERVE_DELAY_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis);
    while let Ok(first) = jobs.recv() {
        if let Some(d) = delay {
            std::thread::sleep(d);
        }
        let mut taken = vec![first];
        let until = Instant::now() + batching.max_wait;
        while taken.len() < batching.max_batch {
            let left = until.saturating_duration_since(Instant::now());
            match jobs.recv_timeout(left) {
                Ok(job) => taken.push(job),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
            }
        }
        metrics.queue_depth.fetch_sub(taken.len(), Ordering::SeqCst);
        let now = Instant::now();
        taken.retain(|j| !j.events.is_closed() && j.deadline > now);
        // Requests of one kind (compressed or not, sampling) go in one batch, in arrival order.
        while !taken.is_empty() {
            let key = taken[0].prepared.batch_key();
            let (group, rest): (Vec<Job>, Vec<Job>) = taken
                .into_iter()
                .partition(|j| j.prepared.batch_key() == key);
            taken = rest;
            metrics.batch(group.len());
            answer_group(&engine, &group, &metrics);
        }
    }
}

/// Answers one batch and sends each job its events; a model error or panic fails the batch's
/// jobs, not the server.
fn answer_group(engine: &Engine, group: &[Job], metrics: &Metrics) {
    let tok = &engine.tokenizers.generator;
    let prepared: Vec<&Prepared> = group.iter().map(|j| &j.prepared).collect();
    let mut streamed: Vec<(Vec<u32>, usize)> = vec![(Vec::new(), 0); group.len()];
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        engine.answer(&prepared, |row, id| {
            let job = &group[row];
            if !job.stream || tok.stop_ids.contains(&id) {
                return;
            }
            let (ids, sent) = &mut streamed[row];
            ids.push(id);
            let text = tok.decode(ids, true);
            // A token may end inside a UTF-8 character: wait for the rest of it.
            if text.len() > *sent && !text.ends_with('\u{FFFD}') && text.is_char_boundary(*sent) {
                let _ = job.events.send(Event::Delta(text[*sent..].to_string()));
                *sent = text.len();
            }
        })
    }));
    let answers = match result {
        Ok(Ok(ids)) => ids,
        Ok(Err(e)) => return fail(group, &format!("the model failed: {e}")),
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            return fail(group, &format!("the model panicked: {what}"));
        }
    };
    for ((job, ids), (_, sent)) in group.iter().zip(answers).zip(&streamed) {
        let stopped = ids.last().is_some_and(|id| tok.stop_ids.contains(id));
        let text = tok.decode(&ids, true);
        if job.stream && text.len() > *sent && text.is_char_boundary(*sent) {
            let _ = job.events.send(Event::Delta(text[*sent..].to_string()));
        }
        metrics.tokens(
            job.prepared.prompt_tokens,
            job.prepared.document_tokens,
            ids.len(),
        );
        let _ = job.events.send(Event::Done(Ok(Done {
            text: text.trim().to_string(),
            completion_tokens: ids.len(),
            finish_reason: if stopped { "stop" } else { "length" },
        })));
    }
}

fn fail(group: &[Job], message: &str) {
    eprintln!("scaledown serve: {message}");
    for job in group {
        let _ = job.events.send(Event::Done(Err(message.to_string())));
    }
}
