#![no_main]
//! Any text: the corpus reader (`--pretrain-data`, `prepare --corpus`), as JSON Lines or plain
//! text, returns passages or an error, never panics; it never returns an empty list.
use libfuzzer_sys::fuzz_target;
use scaledown_data::parse_corpus;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    if let Ok(documents) = parse_corpus("fuzz.jsonl", text, mode & 1 == 1) {
        assert!(!documents.is_empty());
    }
});
