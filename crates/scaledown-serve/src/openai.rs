//! `POST /v1/chat/completions` in OpenAI's shapes: the request's last user message is the
//! question, its `documents` the retrieved documents; the answer comes back as a
//! `chat.completion`, or as `chat.completion.chunk` server-sent events with `stream: true`.

use super::api::{ApiError, ChatRequest};
use super::engine::Query;
use super::queue::{Done, Event};
use super::{App, Outcome};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use scaledown_model::generation::GenerationConfig;
use serde_json::{Value, json};
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc::UnboundedReceiver;

pub const ENDPOINT: &str = "/v1/chat/completions";

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// The request's question, documents and sampling, checked.
pub fn query_of(r: &ChatRequest, default_new_tokens: usize) -> Result<Query, ApiError> {
    if let Some(n) = r.n.filter(|&n| n != 1) {
        return Err(ApiError::invalid(format!(
            "n: {n}; one choice per request is supported"
        )));
    }
    if r.stop.as_ref().is_some_and(|s| !s.is_null()) {
        return Err(ApiError::invalid(
            "stop: stop sequences are not supported (answers end at the generator's own stop token)",
        ));
    }
    if r.messages.is_empty() {
        return Err(ApiError::invalid("messages: empty"));
    }
    let question = r
        .messages
        .iter()
        .rev()
        .find(|m| m.role == "user")
        .and_then(|m| m.content.as_ref())
        .map(|c| c.text())
        .ok_or_else(|| ApiError::invalid("messages: no user message with content"))?;
    // Greedy unless asked (OpenAI's default is 1.0; QA answers are better greedy).
    let temperature = r.temperature.unwrap_or(0.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid(format!(
            "temperature: {temperature}, give 0 to 2"
        )));
    }
    let top_p = r.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::invalid(format!(
            "top_p: {top_p}, give a number in (0, 1]"
        )));
    }
    let max_new_tokens = r
        .max_completion_tokens
        .or(r.max_tokens)
        .map_or(default_new_tokens, |n| n as usize);
    Ok(Query {
        question,
        documents: r.documents.iter().map(|d| d.joined()).collect(),
        compressed: r.compressed,
        generation: GenerationConfig {
            max_new_tokens,
            temperature,
            top_p,
            seed: r.seed.unwrap_or(0),
            ..Default::default()
        },
    })
}

/// The fields every response and chunk shares.
struct Head {
    id: String,
    created: u64,
    model: String,
}

impl Head {
    fn new(model: &str) -> Self {
        let created = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Self {
            id: format!("chatcmpl-{}", NEXT_ID.fetch_add(1, Ordering::Relaxed)),
            created,
            model: model.to_string(),
        }
    }

    fn chunk(&self, delta: Value, finish_reason: Option<&str>) -> Value {
        json!({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}]})
    }
}

/// The non-streaming answer.
pub fn completion(app: &App, outcome: &Outcome, done: &Done) -> Response {
    let head = Head::new(&app.model_id);
    let p = &outcome.prepared;
    let body = json!({"id": head.id, "object": "chat.completion", "created": head.created,
        "model": head.model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": done.text},
            "logprobs": null, "finish_reason": done.finish_reason}],
        "usage": {"prompt_tokens": p.prompt_tokens, "completion_tokens": done.completion_tokens,
            "total_tokens": p.prompt_tokens + done.completion_tokens},
        "scaledown": outcome.summary(app, done)});
    axum::Json(body).into_response()
}

/// The streaming answer: a role chunk, a chunk per piece of text, a finish chunk, `[DONE]`.
/// The request's latency is recorded when the stream ends.
pub fn stream(app: Arc<App>, events: UnboundedReceiver<Event>, outcome: Outcome) -> Response {
    let head = Head::new(&app.model_id);
    let first = head.chunk(json!({"role": "assistant", "content": ""}), None);
    struct State {
        app: Arc<App>,
        head: Head,
        events: UnboundedReceiver<Event>,
        outcome: Outcome,
        pending: Vec<String>,
        finished: bool,
    }
    let state = State {
        app,
        head,
        events,
        outcome,
        pending: vec![first.to_string()],
        finished: false,
    };
    let stream = futures_util::stream::unfold(state, |mut s| async move {
        loop {
            if let Some(data) = s.pending.pop() {
                return Some((Ok::<_, Infallible>(SseEvent::default().data(data)), s));
            }
            if s.finished {
                return None;
            }
            let next = tokio::time::timeout_at(s.outcome.deadline.into(), s.events.recv()).await;
            let status = match next {
                Ok(Some(Event::Delta(text))) => {
                    s.pending
                        .push(s.head.chunk(json!({"content": text}), None).to_string());
                    continue;
                }
                Ok(Some(Event::Done(Ok(done)))) => {
                    // Popped from the back: [DONE] last.
                    s.pending.push("[DONE]".into());
                    let mut last = s.head.chunk(json!({}), Some(done.finish_reason));
                    last["scaledown"] = s.outcome.summary(&s.app, &done);
                    last["usage"] = json!({"prompt_tokens": s.outcome.prepared.prompt_tokens,
                        "completion_tokens": done.completion_tokens,
                        "total_tokens": s.outcome.prepared.prompt_tokens + done.completion_tokens});
                    s.pending.push(last.to_string());
                    200
                }
                Ok(Some(Event::Done(Err(message)))) => {
                    s.pending.push(error_data(&message, "server_error"));
                    500
                }
                Ok(None) => {
                    s.pending
                        .push(error_data("the model thread stopped", "server_error"));
                    500
                }
                Err(_) => {
                    s.pending.push(error_data(
                        "the request ran past the server's --timeout-s",
                        "timeout",
                    ));
                    504
                }
            };
            s.finished = true;
            s.app
                .metrics
                .request(ENDPOINT, status, s.outcome.started.elapsed().as_secs_f64());
        }
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

fn error_data(message: &str, kind: &str) -> String {
    json!({"error": {"message": message, "type": kind}}).to_string()
}
