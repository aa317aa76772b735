//! The JSON that `scaledown serve` takes and gives: `/v1/answer`'s request and response, the
//! OpenAI chat request's fields that matter here, and the error body `{"error": {"message",
//! "type"}}` that every 4xx and 5xx carries, naming the field at fault.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// An error answered as `{"error": {"message", "type"}}`.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// OpenAI's error types: `invalid_request_error`, `server_error`, ...
    pub kind: &'static str,
}

impl ApiError {
    pub fn invalid(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
        }
    }

    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            kind,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"message": self.message, "type": self.kind}});
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// Parses a request body as `T`; errors name the field (`documents[2].text: invalid type ...`).
pub fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let text = std::str::from_utf8(body).map_err(|e| {
        ApiError::invalid(format!(
            "the body is not valid UTF-8 (byte {})",
            e.valid_up_to()
        ))
    })?;
    if text.trim().is_empty() {
        return Err(ApiError::invalid("the body is empty: send a JSON object"));
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        match path.as_str() {
            "." | "" => ApiError::invalid(format!("the body is not a valid request: {inner}")),
            _ => ApiError::invalid(format!("{path}: {inner}")),
        }
    })?;
    de.end()
        .map_err(|e| ApiError::invalid(format!("trailing characters after the JSON: {e}")))?;
    Ok(value)
}

/// A retrieved document: plain text, or a title and a text.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum DocumentIn {
    Text(String),
    Titled {
        #[serde(default)]
        title: String,
        text: String,
    },
}

impl DocumentIn {
    /// How the document enters a prompt (title, newline, text), as in training.
    pub fn joined(&self) -> String {
        match self {
            DocumentIn::Text(t) => t.clone(),
            DocumentIn::Titled { title, text } => {
                scaledown_model::oscar::document_text(title, text)
            }
        }
    }
}

/// `POST /v1/answer`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnswerRequest {
    pub question: String,
    #[serde(default)]
    pub documents: Vec<DocumentIn>,
    pub max_new_tokens: Option<u32>,
    /// Default: true when the server has a compressor.
    pub compressed: Option<bool>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct AnswerResponse {
    pub answer: String,
    pub compressed: bool,
    pub document_tokens: usize,
    pub memory_vectors: usize,
    /// Time in the server, from the request's arrival to its answer.
    pub ms: f64,
}

/// A chat message's content: a string, or OpenAI's list of parts (the text parts are read).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Clone, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

impl Content {
    pub fn text(&self) -> String {
        match self {
            Content::Text(t) => t.clone(),
            Content::Parts(parts) => parts
                .iter()
                .filter(|p| p.kind == "text")
                .filter_map(|p| p.text.clone())
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Message {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
}

/// `POST /v1/chat/completions`: OpenAI's fields that change the answer, plus `documents` (as
/// vLLM and Cohere take them) and `compressed`. Other OpenAI fields (`user`, `stream_options`,
/// `logprobs: false`, ...) are accepted and ignored.
#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    #[serde(default)]
    pub model: Option<String>,
    pub messages: Vec<Message>,
    pub max_tokens: Option<u32>,
    pub max_completion_tokens: Option<u32>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub seed: Option<u64>,
    #[serde(default)]
    pub stream: bool,
    pub n: Option<u32>,
    pub stop: Option<serde_json::Value>,
    #[serde(default)]
    pub documents: Vec<DocumentIn>,
    pub compressed: Option<bool>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_field() {
        let e =
            parse::<AnswerRequest>(br#"{"question": "q", "max_new_tokens": "ten"}"#).unwrap_err();
        assert!(
            e.message.starts_with("max_new_tokens: invalid type"),
            "{e:?}"
        );
        let e = parse::<AnswerRequest>(br#"{"question": "q", "documents": ["a", {"title": "t"}]}"#)
            .unwrap_err();
        assert!(e.message.starts_with("documents[1]"), "{e:?}");
        let e = parse::<AnswerRequest>(br#"{"question": "q", "documnets": []}"#).unwrap_err();
        assert!(e.message.contains("unknown field `documnets`"), "{e:?}");
        let e = parse::<AnswerRequest>(b"{\"question\": \"\xff\"}").unwrap_err();
        assert!(e.message.contains("UTF-8"), "{e:?}");
        let e = parse::<AnswerRequest>(br#"{"question": "q"} x"#).unwrap_err();
        assert!(e.message.contains("trailing"), "{e:?}");
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert_eq!(
            parse::<AnswerRequest>(deep.as_bytes()).unwrap_err().status,
            400
        );
        let r: AnswerRequest =
            parse(br#"{"question": "q", "documents": ["a", {"title": "T", "text": "b"}]}"#)
                .unwrap();
        assert_eq!(r.documents[1].joined(), "T\nb");
    }

    #[test]
    fn chat_content_reads_text_parts() {
        let r: ChatRequest = parse(
            br#"{"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {}}]}], "user": "x"}"#,
        )
        .unwrap();
        assert_eq!(r.messages[0].content.as_ref().unwrap().text(), "hi");
    }
}
