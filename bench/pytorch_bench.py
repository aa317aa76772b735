#!/usr/bin/env python3
"""PyTorch side of `scaledown bench`: the same SmolLM2 work in transformers (float32, eager
attention, CPU), timed the same way. Prints one JSON object on stdout.

    python bench/pytorch_bench.py --gguf PATH --threads N --runs R --prefill 32,128,512 --decode 32
"""
import argparse
import json
import os
import statistics
import time


def stats(samples):
    return {"median_ms": statistics.median(samples) * 1e3, "min_ms": min(samples) * 1e3,
            "max_ms": max(samples) * 1e3}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--prefill", default="32,128,512")
    ap.add_argument("--decode", type=int, default=32)
    a = ap.parse_args()

    import resource

    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(a.threads)
    d, f = os.path.split(os.path.abspath(a.gguf))
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32,
                                                 attn_implementation="eager")
    model.eval()
    out = {"torch": torch.__version__, "threads": a.threads, "prefill": {}}
    # Deterministic ids, the same formula as the Rust side.
    ids_for = lambda n: torch.tensor([[(7 * i + 11) % 40000 + 100 for i in range(n)]])
    with torch.inference_mode():
        for n in [int(x) for x in a.prefill.split(",")]:
            x = ids_for(n)
            model(x, use_cache=False, logits_to_keep=1)  # warm-up
            samples = []
            for _ in range(a.runs):
                t = time.perf_counter()
                model(x, use_cache=False, logits_to_keep=1)
                samples.append(time.perf_counter() - t)
            out["prefill"][str(n)] = stats(samples)
        x = ids_for(32)
        samples = []
        for r in range(a.runs + 1):
            o = model(x, use_cache=True, logits_to_keep=1)
            past, nxt = o.past_key_values, o.logits[:, -1:].argmax(-1)
            t = time.perf_counter()
            for _ in range(a.decode):
                o = model(nxt, past_key_values=past, use_cache=True)
                past, nxt = o.past_key_values, o.logits[:, -1:].argmax(-1)
            if r > 0:  # the first round is the warm-up
                samples.append(time.perf_counter() - t)
        tps = [a.decode / s for s in samples]
        out["decode"] = {"tokens": a.decode, "median_tok_s": statistics.median(tps),
                         "min_tok_s": min(tps), "max_tok_s": max(tps)}
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(out))


if __name__ == "__main__":
    main()
