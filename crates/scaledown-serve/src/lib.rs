//! ScaleDown's HTTP API for RAG pipelines (`scaledown serve`). `POST /v1/answer`
//! (ScaleDown's own shape), `POST /v1/chat/completions` (OpenAI's, with `documents`),
//! `GET /health`, `GET /v1/models`, `GET /metrics` (Prometheus). Requests are checked and
//! tokenised on tokio's threads, then answered in dynamic batches by one model thread
//! ([`queue`]). The CLI loads the model and calls [`run`].

pub mod api;
pub mod engine;
pub mod metrics;
pub mod openai;
pub mod queue;

use anyhow::{Context, Result};
use api::{AnswerRequest, AnswerResponse, ApiError, ChatRequest};
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use engine::{Engine, Limits, Prepared, Prompter, Query};
use metrics::Metrics;
use queue::{Batching, Done, Event, Job, Queue, Refused};
use scaledown_model::compressor::CompressorConfig;
use scaledown_model::generation::GenerationConfig;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

/// What is served: the model thread's engine and what the API says of it.
pub struct Served {
    pub engine: Engine,
    /// The compressor's settings; None: the uncompressed generator only.
    pub compressor: Option<CompressorConfig>,
    /// Answer length of a request that does not give one.
    pub default_new_tokens: usize,
    /// The model's name in `/v1/models` and the chat responses.
    pub model_id: String,
    /// One line for the start-up message.
    pub description: String,
}

/// Where the server listens, how it batches and what a request may ask for.
#[derive(Debug, Clone)]
pub struct Settings {
    pub host: String,
    /// 0: any free port (printed at start).
    pub port: u16,
    pub batching: Batching,
    /// Requests that may wait for the model; more get 503 with Retry-After.
    pub max_queue: usize,
    /// Largest request body; larger ones get 413.
    pub max_body_bytes: usize,
    pub limits: Limits,
    /// A request not answered in this time gets 504 and is dropped.
    pub timeout: Duration,
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

/// Serves `served` until SIGTERM or Ctrl-C, then finishes the requests in flight.
pub fn run(served: Served, settings: Settings) -> Result<()> {
    let Served {
        engine,
        compressor,
        default_new_tokens,
        model_id,
        description,
    } = served;
    let metrics = Arc::new(Metrics::default());
    let (queue, jobs) = Queue::new(settings.max_queue, metrics.clone());
    let app = Arc::new(App {
        prompter: Prompter {
            tokenizers: engine.tokenizers.clone(),
            compressor,
            context: engine.generator.max_len(),
            limits: settings.limits,
            default_new_tokens: default_new_tokens.min(settings.limits.max_new_tokens),
        },
        queue,
        metrics: metrics.clone(),
        timeout: settings.timeout,
        model_id,
    });
    let batching = settings.batching;
    let worker = std::thread::Builder::new()
        .name("scaledown-model".into())
        .spawn(move || queue::work(engine, jobs, batching, metrics))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (host, port) = (settings.host.as_str(), settings.port);
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind((host, port))
            .await
            .with_context(|| format!("--host {host} --port {port}: cannot listen"))?;
        println!(
            "scaledown serve: listening on http://{} — {description}; batches of up to {} (waiting {} ms)",
            listener.local_addr()?,
            settings.batching.max_batch,
            settings.batching.max_wait.as_millis()
        );
        axum::serve(listener, router(app, settings.max_body_bytes))
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
