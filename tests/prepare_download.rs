//! `prepare` without --source, against a local HTTP server that answers as the Hugging Face
//! datasets-server `/rows` endpoint documents: `{features, rows: [{row_idx, row,
//! truncated_cells}], num_rows_total, num_rows_per_page, partial}`, at most 100 rows a page.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

const TOTAL: usize = 1000;

/// SQuAD-layout rows, 50 questions per article, in article order as in the real table.
fn row(i: usize) -> serde_json::Value {
    let article = i / 50;
    serde_json::json!({
        "id": format!("id{i}"), "title": format!("Article_{article}"),
        "context": format!("Article {article} says that item {i} is number {i}."),
        "question": format!("Which number is item {i}?"),
        "answers": {"text": [format!("{i}")], "answer_start": [0]}
    })
}

fn query(path: &str, key: &str) -> Option<String> {
    path.split(['?', '&'])
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")).map(str::to_string))
}

/// Serves pages; the first request gets a 503 to exercise the retries. Records the paths asked.
fn serve() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let mut stream = stream.unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request = String::new();
            reader.read_line(&mut request).unwrap();
            loop {
                let mut header = String::new();
                reader.read_line(&mut header).unwrap();
                if header.trim().is_empty() {
                    break;
                }
            }
            let path = request.split(' ').nth(1).unwrap_or("").to_string();
            let first = {
                let mut seen = log.lock().unwrap();
                seen.push(path.clone());
                seen.len() == 1
            };
            let (status, body) = if first {
                (
                    "503 Service Unavailable",
                    "{\"error\":\"busy\"}".to_string(),
                )
            } else if !path.starts_with("/rows?")
                || query(&path, "dataset").as_deref() != Some("rajpurkar%2Fsquad")
            {
                ("404 Not Found", "{\"error\":\"unknown\"}".to_string())
            } else {
                let offset: usize = query(&path, "offset").unwrap().parse().unwrap();
                let length: usize = query(&path, "length").unwrap().parse().unwrap();
                assert!(length <= 100, "the API serves at most 100 rows a page");
                let rows: Vec<_> = (offset..(offset + length).min(TOTAL))
                    .map(
                        |i| serde_json::json!({"row_idx": i, "row": row(i), "truncated_cells": []}),
                    )
                    .collect();
                let page = serde_json::json!({"features": [], "rows": rows, "num_rows_total": TOTAL,
                    "num_rows_per_page": 100, "partial": false});
                ("200 OK", page.to_string())
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (addr, seen)
}

#[test]
fn downloads_pages_with_retries_and_splits_by_article() {
    let (endpoint, seen) = serve();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("squad.json");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_scaledown"))
        .args([
            "prepare",
            "--dataset",
            "squad",
            "--num-examples",
            "150",
            "--output-file",
        ])
        .arg(&out)
        .args(["--hf-endpoint", &endpoint])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let read = |p: &std::path::Path| -> Vec<serde_json::Value> {
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    };
    let train = read(&out);
    let eval = read(&tmp.path().join("squad_eval.json"));
    assert_eq!((train.len(), eval.len()), (135, 15));
    let article = |e: &serde_json::Value| e["documents"][0]["title"].as_str().unwrap().to_string();
    let train_articles: std::collections::HashSet<String> = train.iter().map(article).collect();
    assert!(
        eval.iter().all(|e| !train_articles.contains(&article(e))),
        "no article in both files"
    );
    assert!(
        train_articles.len() >= 3,
        "pages come from across the table"
    );
    // The answer is the row's own: the rows were converted, not invented.
    for e in &train {
        let id = e["id"].as_str().unwrap().trim_start_matches("id");
        assert_eq!(e["answers"][0].as_str().unwrap(), id);
    }
    {
        let seen = seen.lock().unwrap();
        assert!(seen.len() >= 3, "one retry and several pages: {seen:?}");
        assert!(
            seen.iter()
                .all(|p| p.contains("config=plain_text") && p.contains("length=100"))
        );
    }

    // A server that does not know the dataset: a clear error naming the address and status.
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_scaledown"))
        .args([
            "prepare",
            "--dataset",
            "hotpot_qa",
            "--num-examples",
            "20",
            "--output-file",
        ])
        .arg(tmp.path().join("h.json"))
        .args(["--hf-endpoint", &endpoint])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("HTTP 404") && err.contains("hotpot_qa"),
        "{err}"
    );
}
