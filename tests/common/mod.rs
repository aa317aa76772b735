//! Paths shared by the integration tests: the models folder and ../shared.
#![allow(dead_code)]

pub mod server;

use std::path::PathBuf;

/// `$SCALEDOWN_SHARED`, else `../shared` beside the repository.
pub fn shared_dir() -> PathBuf {
    std::env::var_os("SCALEDOWN_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared"))
}

pub fn reference(name: &str) -> serde_json::Value {
    let path = shared_dir().join("reference").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "reading {}: {e} (is ../shared beside the repository?)",
            path.display()
        )
    });
    serde_json::from_str(&text).expect("reference JSON")
}

/// The models folder; the real-model tests need `scaledown models fetch` to have run
/// (`.ci/run` does it). They fail, rather than skip, when the models are missing.
pub fn models_dir() -> PathBuf {
    let dir = scaledown_files::models::models_dir(None);
    assert!(
        scaledown_files::models::default_generator(&dir).exists(),
        "models missing in {}: run `cargo run --release -- models fetch` first",
        dir.display()
    );
    dir
}

pub fn f32s(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number") as f32)
        .collect()
}

pub fn u32s(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_u64().expect("integer") as u32)
        .collect()
}
