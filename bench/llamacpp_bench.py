#!/usr/bin/env python3
"""llama.cpp side of `scaledown bench`: the same GGUF file through llama-cpp-python (its
quantized CPU kernels, the same thread count), as a worker of worker_protocol.py's protocol.

    {"op": "load", "generator": GGUF, "threads": N, "n_ctx": 4096}  -> {"llama_cpp": VERSION}

It runs what a llama.cpp user runs, the full text: prefill {ids}, decode {prompt, tokens}
(times the decode steps only) and answer {queries: [{ids}], tokens, shared_prefix} (exactly
`tokens` greedy tokens per question, one question at a time, reusing the KV cache of the
first `shared_prefix` tokens, the system turn that scaledown also computes once; not more:
questions on the same passage would otherwise reuse the passage's cache, which the
compressed side does not get). Compressed answers, batches, training and MiniLM
are not llama.cpp's work: prepare answers ok false and scaledown leaves the cell empty.
"""
import os
import time

import numpy as np

import llama_cpp

from worker_protocol import serve


class Worker:
    def load(self, r):
        self.llm = llama_cpp.Llama(
            model_path=os.path.abspath(r["generator"]), n_ctx=r.get("n_ctx", 4096),
            n_batch=512, n_ubatch=512, n_threads=r["threads"], n_threads_batch=r["threads"],
            logits_all=False, verbose=False)
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


if __name__ == "__main__":
    serve(Worker(), supported={"prefill", "decode", "answer"})
