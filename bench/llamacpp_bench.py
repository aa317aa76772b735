#!/usr/bin/env python3
"""llama.cpp side of `scaledown bench`: the same GGUF file through llama-cpp-python (its
quantized CPU kernels, the same thread count), as a worker with pytorch_bench.py's protocol.

    {"op": "load", "generator": GGUF, "threads": N, "n_ctx": 4096}  -> {"llama_cpp": VERSION}
    {"op": "prepare", "key": K, "work": {...}}  -> {"ok": true} or {"ok": false, "reason": ...}
    {"op": "run", "key": K}                     -> {"seconds": S}
    {"op": "peak"}                              -> {"peak_rss_mb": MB}

It runs what a llama.cpp user runs, the full text: prefill {ids}, decode {prompt, tokens}
(times the decode steps only) and answer {queries: [{ids}], tokens, shared_prefix} (exactly
`tokens` greedy tokens per question, one question at a time, reusing the KV cache of the
first `shared_prefix` tokens, the system turn that scaledown also computes once; not more:
questions on the same passage would otherwise reuse the passage's cache, which the
compressed side does not get). Compressed answers, batches, training and MiniLM
are not llama.cpp's work: prepare answers ok false and scaledown leaves the cell empty.
"""
import json
import os
import resource
import sys
import time

import numpy as np

import llama_cpp


def reply(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


class Worker:
    def load(self, r):
        self.llm = llama_cpp.Llama(
            model_path=os.path.abspath(r["generator"]), n_ctx=r.get("n_ctx", 4096),
            n_batch=512, n_ubatch=512, n_threads=r["threads"], n_threads_batch=r["threads"],
            logits_all=False, verbose=False)
        self.work = {}
        return {"llama_cpp": llama_cpp.__version__}

    def eval_from_cache(self, ids, shared_prefix):
        """Evaluates `ids`, keeping the cached positions of its first `shared_prefix` tokens
        where the last prompt had the same ones."""
        llm = self.llm
        cached = llm.input_ids[:llm.n_tokens]
        same = 0
        for a, b in zip(cached, ids[:min(shared_prefix, len(ids) - 1)]):
            if a != b:
                break
            same += 1
        llm.n_tokens = same
        llm.eval(ids[same:])

    def next_token(self):
        """Greedy: the argmax of the last evaluated position's logits (llama-cpp-python keeps
        no `scores` without logits_all, so they are read from the context)."""
        logits = np.ctypeslib.as_array(self.llm._ctx.get_logits(), shape=(self.llm.n_vocab(),))
        return int(np.argmax(logits))

    def run(self, w):
        kind = w["kind"]
        llm = self.llm
        start = time.perf_counter()
        if kind == "prefill":
            llm.reset()
            llm.eval(w["ids"])
        elif kind == "decode":
            llm.reset()
            llm.eval(w["prompt"])
            nxt = self.next_token()
            start = time.perf_counter()
            for _ in range(w["tokens"]):
                llm.eval([nxt])
                nxt = self.next_token()
        elif kind == "answer":
            for q in w["queries"]:
                self.eval_from_cache(q["ids"], w.get("shared_prefix", 0))
                nxt = self.next_token()
                for _ in range(w["tokens"] - 1):
                    llm.eval([nxt])
                    nxt = self.next_token()
        return time.perf_counter() - start


SUPPORTED = {"prefill", "decode", "answer"}


def main():
    worker = Worker()
    for line in sys.stdin:
        try:
            r = json.loads(line)
            op = r["op"]
            if op == "load":
                reply(worker.load(r))
            elif op == "prepare":
                kind = r["work"]["kind"]
                if kind in SUPPORTED:
                    worker.work[r["key"]] = r["work"]
                    reply({"ok": True})
                else:
                    reply({"ok": False, "reason": f"{kind} is not llama.cpp's work"})
            elif op == "run":
                reply({"seconds": worker.run(worker.work[r["key"]])})
            elif op == "peak":
                reply({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})
            else:
                raise ValueError(f"unknown op {op}")
        except Exception as e:  # the Rust side prints it and goes on without llama.cpp
            reply({"error": f"{type(e).__name__}: {e}"})


if __name__ == "__main__":
    main()
