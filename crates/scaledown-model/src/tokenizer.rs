//! Tokenizers: any `tokenizer.json` through the `tokenizers` crate, and SmolLM2's byte-level
//! BPE rebuilt from GGUF metadata; plus the ChatML prompt template.

use crate::weights::WeightError;
use crate::weights::gguf::{GgufFile, MetaValue};
use serde_json::{Value, json};

/// SmolLM2's default system prompt, inserted by its chat template when none is given.
pub const SMOLLM2_SYSTEM_PROMPT: &str =
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face";

/// GGUF token types (llama.cpp `llama_token_type`).
const TOKEN_TYPE_CONTROL: u64 = 3;
const TOKEN_TYPE_USER_DEFINED: u64 = 4;

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// Tokens that end a generation (`<|im_end|>`, `<|endoftext|>`, `[SEP]`, ...).
    pub stop_ids: Vec<u32>,
}

impl Tokenizer {
    /// From the text of a `tokenizer.json`. Padding and truncation presets are removed: callers
    /// decide both.
    pub fn from_json(bytes: &[u8]) -> Result<Self, WeightError> {
        // The tokenizers crate panics on some malformed sections (a decoder whose JSON does
        // not parse, found by fuzzing): such a file is refused like any other bad one.
        let mut inner = crate::guard::catch_quietly(|| tokenizers::Tokenizer::from_bytes(bytes))
            .ok_or_else(|| {
                WeightError::Format("tokenizer.json: malformed (its reader panicked)".into())
            })?
            .map_err(|e| WeightError::Format(format!("tokenizer.json: {e}")))?;
        inner.with_padding(None);
        inner
            .with_truncation(None)
            .map_err(|e| WeightError::Format(format!("tokenizer.json: {e}")))?;
        let stop_ids = ["<|im_end|>", "<|endoftext|>", "</s>", "[SEP]"]
            .iter()
            .filter_map(|t| inner.token_to_id(t))
            .collect();
        Ok(Self { inner, stop_ids })
    }

    /// SmolLM2's byte-level BPE from GGUF metadata (`tokenizer.ggml.*`): control tokens such as
    /// `<|im_start|>` become special added tokens, digits are split one by one (its
    /// pre-tokenizer), and no BOS is added.
    pub fn from_gguf(file: &GgufFile) -> Result<Self, WeightError> {
        let get = |k: &str| {
            file.meta(k)
                .ok_or_else(|| WeightError::Config(format!("GGUF lacks {k}")))
        };
        let model = get("tokenizer.ggml.model")?.as_str().unwrap_or_default();
        if model != "gpt2" {
            return Err(WeightError::Config(format!(
                "GGUF tokenizer model `{model}` is not supported (only byte-level BPE, `gpt2`)"
            )));
        }
        let strings = |k: &str| -> Result<Vec<&str>, WeightError> {
            get(k)?
                .as_array()
                .and_then(|a| a.iter().map(MetaValue::as_str).collect::<Option<Vec<_>>>())
                .ok_or_else(|| WeightError::Config(format!("{k} is not an array of strings")))
        };
        let tokens = strings("tokenizer.ggml.tokens")?;
        let merges = strings("tokenizer.ggml.merges")?;
        let types: Vec<u64> = match file
            .meta("tokenizer.ggml.token_type")
            .and_then(|v| v.as_array())
        {
            Some(a) => a.iter().map(|v| v.as_u64().unwrap_or(1)).collect(),
            None => vec![1; tokens.len()],
        };
        let vocab: serde_json::Map<String, Value> = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.to_string(), json!(i)))
            .collect();
        let added: Vec<Value> = tokens
            .iter()
            .zip(&types)
            .enumerate()
            .filter(|(_, (_, ty))| **ty == TOKEN_TYPE_CONTROL || **ty == TOKEN_TYPE_USER_DEFINED)
            .map(|(id, (t, ty))| {
                json!({"id": id, "content": t, "single_word": false, "lstrip": false,
                       "rstrip": false, "normalized": false, "special": *ty == TOKEN_TYPE_CONTROL})
            })
            .collect();
        let spec = json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true},
                {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}
            ]},
            "post_processor": null,
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": null,
                      "continuing_subword_prefix": null, "end_of_word_suffix": null,
                      "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                      "vocab": vocab, "merges": merges}
        });
        let mut tok = Self::from_json(spec.to_string().as_bytes())?;
        if let Some(eos) = file
            .meta("tokenizer.ggml.eos_token_id")
            .and_then(|v| v.as_u64())
            && !tok.stop_ids.contains(&(eos as u32))
        {
            tok.stop_ids.push(eos as u32);
        }
        Ok(tok)
    }

    /// Token ids of `text`; special tokens written in the text are matched, nothing is added.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, WeightError> {
        self.encode_with(text, false)
    }

    /// With the model's own additions (BERT's `[CLS]` ... `[SEP]`).
    pub fn encode_with(&self, text: &str, add_special: bool) -> Result<Vec<u32>, WeightError> {
        let enc = self
            .inner
            .encode(text, add_special)
            .map_err(|e| WeightError::Format(format!("tokenizer: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// `text` cut into consecutive pieces of at most `max_tokens` tokens, each cut where a
    /// token starts (trimmed; empty pieces dropped): the passages of a retrieval corpus.
    pub fn windows(&self, text: &str, max_tokens: usize) -> Result<Vec<String>, WeightError> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| WeightError::Format(format!("tokenizer: {e}")))?;
        let mut cuts: Vec<usize> = enc
            .get_offsets()
            .iter()
            .step_by(max_tokens.max(1))
            .skip(1)
            .map(|&(start, _)| {
                // Offsets are bytes; a byte-level token may start inside a character.
                let mut at = start.min(text.len());
                while !text.is_char_boundary(at) {
                    at -= 1;
                }
                at
            })
            .collect();
        cuts.push(text.len());
        let mut start = 0;
        let mut out = Vec::new();
        for end in cuts {
            let piece = text[start..end.max(start)].trim();
            if !piece.is_empty() {
                out.push(piece.to_string());
            }
            start = end.max(start);
        }
        Ok(out)
    }

    pub fn decode(&self, ids: &[u32], skip_special: bool) -> String {
        self.inner.decode(ids, skip_special).unwrap_or_default()
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }
}

/// A ChatML prompt for one user turn, with SmolLM2's default system prompt, ending where the
/// assistant's answer begins.
pub fn chat_prompt(user: &str) -> String {
    format!(
        "<|im_start|>system\n{SMOLLM2_SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
    )
}

/// The control tokens of a word-level tokenizer: unknown words, then ChatML's turn markers.
const WORD_LEVEL_SPECIAL: [&str; 3] = ["[UNK]", "<|im_start|>", "<|im_end|>"];

/// Lower-cased words and punctuation runs of `text`, as the `Whitespace` pre-tokenizer of a
/// word-level tokenizer splits it (`\w+|[^\w\s]+`).
pub fn words_of(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut current_is_word = false;
    for c in text.chars().flat_map(char::to_lowercase) {
        let is_word = c.is_alphanumeric() || c == '_';
        if !current.is_empty() && (c.is_whitespace() || is_word != current_is_word) {
            out.push(std::mem::take(&mut current));
        }
        if !c.is_whitespace() {
            current_is_word = is_word;
            current.push(c);
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// A word-level `tokenizer.json` over `words` (after `[UNK]` and the ChatML markers; repeated
/// words are kept once): the tokenizer of tiny random models in tests and the browser demo.
pub fn word_level_json<'a>(words: impl IntoIterator<Item = &'a str>) -> String {
    let mut vocab = serde_json::Map::new();
    for w in WORD_LEVEL_SPECIAL.into_iter().chain(words) {
        let id = vocab.len();
        vocab.entry(w.to_string()).or_insert(id.into());
    }
    let added: Vec<Value> = WORD_LEVEL_SPECIAL
        .iter()
        .enumerate()
        .map(|(id, content)| {
            json!({"id": id, "content": content, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": added,
        "normalizer": {"type": "Lowercase"},
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"}
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_level_tokenizer_splits_like_its_words() {
        let text = "Background: The cat's color is RED.";
        let words = words_of(text);
        assert_eq!(
            words,
            [
                "background",
                ":",
                "the",
                "cat",
                "'",
                "s",
                "color",
                "is",
                "red",
                "."
            ]
        );
        let tok = Tokenizer::from_json(
            word_level_json(words.iter().map(String::as_str).chain(["the"])).as_bytes(),
        )
        .unwrap();
        assert_eq!(tok.vocab_size(), 3 + 10, "`the` is kept once");
        let ids = tok
            .encode(&format!("<|im_start|>{text} dog<|im_end|>"))
            .unwrap();
        assert_eq!(ids.len(), 1 + words.len() + 2);
        assert_eq!(ids[0], 1);
        assert_eq!(ids[ids.len() - 2], 0, "an unknown word is [UNK]");
        assert_eq!(tok.stop_ids, vec![2]);
    }
}
