#![no_main]
//! Any bytes as `tokenizer.json`: refused, or a tokenizer that encodes and decodes text
//! without panicking.
use libfuzzer_sys::fuzz_target;
use scaledown_model::tokenizer::Tokenizer;

fuzz_target!(|data: &[u8]| {
    if let Ok(t) = Tokenizer::from_json(data) {
        if let Ok(ids) = t.encode("The Rhine is a river. Who? 1,230 km") {
            let _ = t.decode(&ids, true);
        }
        let _ = t.vocab_size();
    }
});
