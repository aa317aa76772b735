//! `scaledown serve`: an HTTP API over a checkpoint for RAG pipelines. `POST /v1/answer`
//! (ScaleDown's own shape), `POST /v1/chat/completions` (OpenAI's, with `documents`),
//! `GET /health`, `GET /v1/models`, `GET /metrics` (Prometheus). Requests are checked and
//! tokenised on tokio's threads, then answered in dynamic batches by one model thread
//! ([`queue`]).

pub mod api;
pub mod engine;
pub mod load;
pub mod metrics;
pub mod openai;
pub mod queue;

use crate::{checkpoint, models};
use anyhow::{Context, Result};
use api::{AnswerRequest, AnswerResponse, ApiError, ChatRequest};
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use clap::Args;
use engine::{Engine, Limits, Prepared, Prompter, Query};
use metrics::Metrics;
use queue::{Batching, Done, Event, Job, Queue, Refused};
use scaledown_model::backend::BackendKind;
use scaledown_model::generation::GenerationConfig;
use scaledown_model::oscar::OscarTokenizers;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// A trained checkpoint folder: answers are compressed by default. Without one the server
    /// answers from the full text with the uncompressed generator only.
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// The generator to serve without --checkpoint (default: SmolLM2-135M-Instruct in the
    /// models folder).
    #[arg(long)]
    pub generator: Option<PathBuf>,
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// 0: any free port (printed at start).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    #[arg(long, default_value = "flex")]
    pub backend: BackendKind,
    /// Most requests answered together in one batch (1: one at a time). 1 by default: on a
    /// 2-core CPU a QA answer is prefill-bound and batches did not raise queries/s (README,
    /// "HTTP API"); try 8-32 where matrix products have room (a GPU).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub max_batch: u32,
    /// Longest wait for a batch to fill after its first request (milliseconds).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(0..=10_000))]
    pub max_wait_ms: u32,
    /// Requests that may wait for the model; more get 503 with Retry-After.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_queue: u32,
    /// Largest request body; larger ones get 413.
    #[arg(long, default_value_t = 4 << 20, value_parser = clap::value_parser!(u32).range(1024..=(1 << 30)))]
    pub max_body_bytes: u32,
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub max_documents: u32,
    /// Most generator tokens in one document.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_document_tokens: u32,
    /// Most tokens a request may ask to generate (max_new_tokens, max_tokens).
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_new_tokens_limit: u32,
    /// A request not answered after this many seconds gets 504 and is dropped.
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u32).range(1..=86_400))]
    pub timeout_s: u32,
}

/// What the handlers share.
pub struct App {
    prompter: Prompter,
    queue: Queue,
    metrics: Arc<Metrics>,
    timeout: Duration,
    model_id: String,
}

/// A queued request: what it asked, when it came, when it is given up.
pub struct Outcome {
    prepared: Prepared,
    started: Instant,
    deadline: Instant,
}

impl Outcome {
    /// ScaleDown's figures for one answer (also in the chat responses, as `scaledown`).
    fn summary(&self, app: &App, done: &Done) -> serde_json::Value {
        let p = &self.prepared;
        json!(AnswerResponse {
            answer: done.text.clone(),
            compressed: p.compressed(),
            document_tokens: p.document_tokens,
            memory_vectors: p.memory_vectors(app.prompter.compressor.as_ref()),
            ms: self.started.elapsed().as_secs_f64() * 1000.0,
        })
    }
}

pub fn serve(models_dir: &Path, a: ServeArgs) -> Result<()> {
    let device = a.backend.device().map_err(anyhow::Error::msg)?;
    let (engine, compressor, default_new_tokens, model_id, what) = match &a.checkpoint {
        Some(dir) => {
            let (setup, loaded) = checkpoint::load(dir, &device)?;
            let tokenizers = Arc::new(loaded.tokenizers);
            let engine = Engine {
                oscar: Some(loaded.oscar.into_answering()),
                generator: loaded.base_generator,
                tokenizers,
            };
            let what = format!(
                "compressed answers from {} (rate {}, memory after layer {}), full text on request",
                dir.display(),
                setup.compressor.compression_rate,
                setup.compressor.num_layers
            );
            (
                engine,
                Some(setup.compressor),
                setup.max_new_tokens,
                "scaledown".to_string(),
                what,
            )
        }
        None => {
            let path = a
                .generator
                .clone()
                .unwrap_or_else(|| models::default_generator(models_dir));
            let g = models::load_generator_in_blocks(&path, &device)?;
            let name = path
                .file_name()
                .map_or("generator".into(), |n| n.to_string_lossy().to_string());
            let engine = Engine {
                oscar: None,
                generator: g.model,
                tokenizers: Arc::new(OscarTokenizers {
                    generator: g.tokenizer,
                    encoder: None,
                }),
            };
            let what = format!(
                "the uncompressed generator only ({}; no --checkpoint, so no compression)",
                path.display()
            );
            (engine, None, 32, name, what)
        }
    };
    let metrics = Arc::new(Metrics::default());
    let (queue, jobs) = Queue::new(a.max_queue as usize, metrics.clone());
    let app = Arc::new(App {
        prompter: Prompter {
            tokenizers: engine.tokenizers.clone(),
            compressor,
            context: engine.generator.max_len(),
            limits: Limits {
                max_documents: a.max_documents as usize,
                max_document_tokens: a.max_document_tokens as usize,
                max_new_tokens: a.max_new_tokens_limit as usize,
            },
            default_new_tokens: default_new_tokens.min(a.max_new_tokens_limit as usize),
        },
        queue,
        metrics: metrics.clone(),
        timeout: Duration::from_secs(a.timeout_s as u64),
        model_id,
    });
    let batching = Batching {
        max_batch: a.max_batch as usize,
        max_wait: Duration::from_millis(a.max_wait_ms as u64),
    };
    let worker = std::thread::Builder::new()
        .name("scaledown-model".into())
        .spawn(move || queue::work(engine, jobs, batching, metrics))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind((a.host.as_str(), a.port))
            .await
            .with_context(|| format!("--host {} --port {}: cannot listen", a.host, a.port))?;
        println!(
            "scaledown serve: listening on http://{} — {what}; batches of up to {} (waiting {} ms)",
            listener.local_addr()?,
            a.max_batch,
            a.max_wait_ms
        );
        axum::serve(listener, router(app, a.max_body_bytes as usize))
            .with_graceful_shutdown(shutdown_signal())
            .await
            .context("serving")
    })?;
    // The router (and with it the queue's sender) is gone: the model thread finishes what it
    // holds and stops.
    worker
        .join()
        .map_err(|_| anyhow::anyhow!("the model thread panicked"))?;
    println!("scaledown serve: stopped");
    Ok(())
}

pub fn router(app: Arc<App>, max_body_bytes: usize) -> Router {
    let counts = app.metrics.clone();
    Router::new()
        .route("/v1/answer", post(answer))
        .route(openai::ENDPOINT, post(chat))
        .route("/health", get(health))
        .route("/v1/models", get(list_models))
        .route("/metrics", get(metrics))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "invalid_request_error",
                "wrong method for this endpoint",
            )
        })
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(axum::middleware::from_fn(
            move |request: axum::extract::Request, next: axum::middleware::Next| {
                let counts = counts.clone();
                async move { refuse_declared_oversize(request, next, max_body_bytes, &counts).await }
            },
        ))
        .with_state(app)
}

/// A body whose Content-Length is over the limit gets its 413 before any of it is read, so
/// that a client sending `Expect: 100-continue` hears it instead of a closed connection.
async fn refuse_declared_oversize(
    request: axum::extract::Request,
    next: axum::middleware::Next,
    max_body_bytes: usize,
    metrics: &Metrics,
) -> Response {
    let declared = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max_body_bytes as u64) {
        // Known endpoints by name, anything else under one label (a client's paths must not
        // grow the metrics without bound).
        let path = request.uri().path();
        let endpoint = match path {
            "/v1/answer" | openai::ENDPOINT => path,
            _ => "other",
        };
        metrics.request(endpoint, 413, 0.0);
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            "the body is larger than the server's --max-body-bytes",
        )
        .into_response();
    }
    next.run(request).await
}

async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = terminate => {},
    }
    println!("scaledown serve: finishing the requests in flight, then stopping");
}

/// The body, or the error for a body that could not be read (413 over --max-body-bytes).
fn body_of(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|e| {
        let status = e.status();
        let message = match status {
            StatusCode::PAYLOAD_TOO_LARGE => {
                "the body is larger than the server's --max-body-bytes".to_string()
            }
            _ => format!("the body could not be read: {}", e.body_text()),
        };
        ApiError::new(status, "invalid_request_error", message)
    })
}

impl App {
    /// Checks, tokenises and queues `query`; returns its events.
    fn submit(
        &self,
        query: Query,
        stream: bool,
        started: Instant,
    ) -> Result<(UnboundedReceiver<Event>, Outcome), ApiError> {
        let prepared = self.prompter.prepare(query)?;
        let deadline = started + self.timeout;
        let (events, receiver) = unbounded_channel();
        let job = Job {
            prepared: prepared.clone(),
            stream,
            deadline,
            events,
        };
        self.queue.submit(job).map_err(|r| match r {
            Refused::Full => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                "the queue is full (--max-queue): retry later",
            ),
            Refused::Closed => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the server is stopping",
            ),
        })?;
        Ok((
            receiver,
            Outcome {
                prepared,
                started,
                deadline,
            },
        ))
    }
}

/// Waits for a job's answer until its deadline.
async fn finished(
    mut events: UnboundedReceiver<Event>,
    outcome: &Outcome,
) -> Result<Done, ApiError> {
    let wait = async {
        while let Some(event) = events.recv().await {
            if let Event::Done(result) = event {
                return Some(result);
            }
        }
        None
    };
    match tokio::time::timeout_at(outcome.deadline.into(), wait).await {
        Err(_) => Err(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            "the request ran past the server's --timeout-s and was dropped",
        )),
        Ok(None) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "the model thread stopped",
        )),
        Ok(Some(Err(message))) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            message,
        )),
        Ok(Some(Ok(done))) => Ok(done),
    }
}

async fn answer(State(app): State<Arc<App>>, body: Result<Bytes, BytesRejection>) -> Response {
    let started = Instant::now();
    let result = async {
        let r: AnswerRequest = api::parse(&body_of(body)?)?;
        let query = Query {
            question: r.question,
            documents: r.documents.iter().map(|d| d.joined()).collect(),
            compressed: r.compressed,
            generation: GenerationConfig {
                max_new_tokens: r
                    .max_new_tokens
                    .map_or(app.prompter.default_new_tokens, |n| n as usize),
                ..Default::default()
            },
        };
        let (events, outcome) = app.submit(query, false, started)?;
        let done = finished(events, &outcome).await?;
        Ok::<_, ApiError>(axum::Json(outcome.summary(&app, &done)).into_response())
    }
    .await;
    let response = result.unwrap_or_else(IntoResponse::into_response);
    app.metrics.request(
        "/v1/answer",
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}

async fn chat(State(app): State<Arc<App>>, body: Result<Bytes, BytesRejection>) -> Response {
    let started = Instant::now();
    let result = async {
        let r: ChatRequest = api::parse(&body_of(body)?)?;
        let query = openai::query_of(&r, app.prompter.default_new_tokens)?;
        let (events, outcome) = app.submit(query, r.stream, started)?;
        if r.stream {
            // A stream records its request in the metrics itself, when it ends.
            return Ok(openai::stream(app.clone(), events, outcome));
        }
        let done = finished(events, &outcome).await?;
        let response = openai::completion(&app, &outcome, &done);
        app.metrics
            .request(openai::ENDPOINT, 200, started.elapsed().as_secs_f64());
        Ok::<_, ApiError>(response)
    }
    .await;
    result.unwrap_or_else(|e| {
        app.metrics.request(
            openai::ENDPOINT,
            e.status.as_u16(),
            started.elapsed().as_secs_f64(),
        );
        e.into_response()
    })
}

async fn health(State(app): State<Arc<App>>) -> Response {
    axum::Json(
        json!({"status": "ok", "compressor": app.prompter.compressor.is_some(),
        "queue_depth": app.metrics.queue_depth.load(std::sync::atomic::Ordering::Relaxed)}),
    )
    .into_response()
}

async fn list_models(State(app): State<Arc<App>>) -> Response {
    axum::Json(
        json!({"object": "list", "data": [{"id": app.model_id, "object": "model",
        "created": 0, "owned_by": "scaledown"}]}),
    )
    .into_response()
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        app.metrics.render(),
    )
        .into_response()
}
