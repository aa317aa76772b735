#![no_main]
//! Any text: the dataset readers (SQuAD v1.1/v2.0, HotpotQA, TriviaQA official files, JSON
//! Lines, datasets-server rows) and the prepared-file reader return Ok or Err, never panic.
use libfuzzer_sys::fuzz_target;
use scaledown_data::{Dataset, parse_examples, parse_source};

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let dataset = Dataset::ALL[pick as usize % Dataset::ALL.len()];
    if let Ok(parsed) = parse_source(dataset, "fuzz.json", text) {
        for e in parsed.examples.iter().chain(&parsed.without_documents) {
            assert!(!e.question.is_empty() || e.question.is_empty());
        }
    }
    let _ = parse_examples("fuzz.json", text);
});
