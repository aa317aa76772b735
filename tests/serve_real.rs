//! `scaledown serve` with the real generator (SmolLM2-135M-Instruct, no checkpoint: full
//! text): a right answer, batched answers equal to one-at-a-time answers, and a stream that
//! joins to the plain answer. Needs `scaledown models fetch`.

mod common;

use common::server::Server;
use serde_json::{Value, json};

const DOCUMENTS: [(&str, &str, &str); 3] = [
    (
        "In what year was Dracula published?",
        "Dracula is an 1897 Gothic horror novel by the Irish author Bram Stoker.",
        "1897",
    ),
    (
        "What is the capital of Norway?",
        "Oslo is the capital and most populous city of Norway. It lies at the head of the Oslofjord.",
        "Oslo",
    ),
    (
        "Who wrote the novel Dracula?",
        "Dracula is an 1897 Gothic horror novel by the Irish author Bram Stoker.",
        "Stoker",
    ),
];

fn request(i: usize) -> Value {
    let (question, text, _) = DOCUMENTS[i];
    json!({"question": question, "documents": [{"title": "", "text": text}],
           "max_new_tokens": 12, "compressed": false})
}

#[test]
fn the_real_generator_answers_batches_and_streams() {
    let _ = common::models_dir();
    let server = Server::start(&["--max-batch", "3", "--max-wait-ms", "2000"]);
    let sequential: Vec<Value> = (0..3)
        .map(|i| {
            let (status, body) = server.post("/v1/answer", &request(i));
            assert_eq!(status, 200, "{body}");
            body
        })
        .collect();
    for (body, (_, _, gold)) in sequential.iter().zip(DOCUMENTS) {
        let answer = body["answer"].as_str().unwrap();
        assert!(answer.contains(gold), "`{gold}` not in the answer {body}");
        assert_eq!(body["compressed"], false);
        assert!(body["document_tokens"].as_u64().unwrap() > 10, "{body}");
    }
    // The three at once go through the model as one batch (prefilled in groups of similar
    // length, decoded together).
    let bodies: Vec<Value> = (0..3).map(request).collect();
    let concurrent = server.post_concurrently("/v1/answer", &bodies);
    for (a, b) in sequential.iter().zip(&concurrent) {
        assert_eq!(a["answer"], b["answer"], "batched answer differs");
    }
    let metrics = server.get("/metrics").1;
    assert!(
        metrics.contains("scaledown_batch_size_bucket{le=\"2\"} 3")
            && metrics.contains("scaledown_batch_size_bucket{le=\"4\"} 4"),
        "the concurrent requests were not batched:\n{metrics}"
    );

    // OpenAI's shape, plain and streamed, gives the same words.
    let (question, text, _) = DOCUMENTS[0];
    let chat = json!({"messages": [{"role": "user", "content": question}], "max_tokens": 12,
                      "documents": [text]});
    let (status, plain) = server.post("/v1/chat/completions", &chat);
    assert_eq!(status, 200, "{plain}");
    let content = plain["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(content.contains("1897"), "{plain}");
    let mut streamed = chat.clone();
    streamed["stream"] = json!(true);
    let (status, events) = server.post_raw("/v1/chat/completions", streamed.to_string().as_bytes());
    assert_eq!(status, 200, "{events}");
    let joined: String = events
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .filter_map(|d| {
            let v: Value = serde_json::from_str(d).unwrap();
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    assert_eq!(joined, content, "{events}");
    assert!(server.stop().0);
}
