#!/usr/bin/env python3
"""PyTorch side of `scaledown bench`: the same work in transformers (float32, eager attention,
on the CPU or a CUDA GPU), run as a worker so that scaledown can alternate single runs between
the two sides.

Protocol: one JSON request per line on stdin, one JSON answer per line on stdout.
    {"op": "load", "generator": GGUF_OR_DIR, "minilm": DIR, "random_weights": false,
     "device": "cpu"|"cuda", "threads": N, "num_layers": 5, "memory_tokens": 8,
     "lora_rank": 16, "lora_alpha": 32}                              -> {"torch": VERSION}
    {"op": "prepare", "key": K, "work": {...}}                     -> {"ok": true}
    {"op": "run", "key": K}                                        -> {"seconds": S}
    {"op": "peak"}                                                 -> {"peak_rss_mb": MB}
scaledown sends token ids, so both sides run the same shapes. Work kinds: prefill {ids};
decode {prompt, tokens} (times the decode steps only); answer {queries: [{ids}], tokens};
answer_compressed {queries: [{prefix, chunks, suffix}], tokens}; answer_batch and
answer_compressed_batch (the same, all questions in one left-padded batch); train_step {examples:
[{prefix, chunks, suffix, answer}]}; encode {batch: [[ids]]} (MiniLM, mean pooling).
"""
import contextlib
import copy
import json
import math
import os
import resource
import sys
import time

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, LlamaModel


def sync():
    """Waits for the GPU's queued work, so that the clock reads finished work."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def reply(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


class LoraLinear(nn.Module):
    """y = W x + (alpha / r) B A x with W frozen: the generator's LoRA, as in scaledown."""

    def __init__(self, base, rank, alpha):
        super().__init__()
        self.base = base
        base.weight.requires_grad_(False)
        self.a = nn.Parameter(torch.randn(rank, base.in_features) / math.sqrt(base.in_features))
        self.b = nn.Parameter(torch.zeros(base.out_features, rank))
        self.scale = alpha / rank

    def forward(self, x):
        return self.base(x) + (x @ self.a.t() @ self.b.t()) * self.scale


class Oscar:
    """OSCAR's n_layers compressor (a trainable copy of the generator's first layers, memory
    tokens, an MLP projector) over the generator, as scaledown builds it."""

    def __init__(self, generator, num_layers, memory_tokens, lora=None):
        cfg = copy.deepcopy(generator.config)
        cfg.num_hidden_layers = num_layers
        d = cfg.hidden_size
        self.compressor = LlamaModel(cfg)
        self.compressor.layers.load_state_dict(generator.model.layers[:num_layers].state_dict())
        self.compressor.norm = nn.Identity()  # the memory states are read before any final norm
        self.compressor.embed_tokens = None  # inputs come as embeddings of the generator's table
        self.memory = nn.Parameter(torch.randn(memory_tokens, d) * 0.02)
        self.projector = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, d))
        self.generator = generator
        self.embed = generator.model.embed_tokens
        if lora is not None:
            generator.requires_grad_(False)
            for layer in generator.model.layers:
                for parent in (layer.self_attn, layer.mlp):
                    for name, child in list(parent.named_children()):
                        if name.endswith("_proj"):
                            setattr(parent, name, LoraLinear(child, *lora))

    def compressor_params(self):
        return list(self.compressor.parameters()) + [self.memory] + list(self.projector.parameters())

    def memory_vectors(self, chunks):
        """All chunks in one batch, padded after the memory tokens (as scaledown does)."""
        L = self.memory.shape[0]
        width = max(len(c) for c in chunks) + L
        rows = []
        for ids in chunks:
            x = self.embed(torch.tensor([ids]))
            pad = torch.zeros(1, width - len(ids) - L, x.shape[-1])
            rows.append(torch.cat([x, self.memory[None], pad], 1))
        h = self.compressor(inputs_embeds=torch.cat(rows, 0), use_cache=False).last_hidden_state
        states = [h[i, len(ids):len(ids) + L] for i, ids in enumerate(chunks)]
        return self.projector(torch.cat(states, 0))

    def prompt(self, q, continuation=()):
        return torch.cat([
            self.embed(torch.tensor([q["prefix"]])),
            self.memory_vectors(q["chunks"])[None],
            self.embed(torch.tensor([list(q["suffix"]) + list(continuation)])),
        ], 1)


def greedy(model, tokens, **first):
    """Prefill (`first` holds input_ids or inputs_embeds), then tokens - 1 decode steps."""
    out = model(use_cache=True, logits_to_keep=1, **first)
    past, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
    for _ in range(tokens - 1):
        out = model(input_ids=nxt, past_key_values=past, use_cache=True)
        past, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)


def greedy_batch(model, tokens, prompts):
    """`greedy` for several prompt embeddings `[1, n_i, d]`: left-padded, padding masked."""
    n = max(p.shape[1] for p in prompts)
    x = torch.cat([torch.cat([torch.zeros(1, n - p.shape[1], p.shape[2]), p], 1) for p in prompts])
    mask = torch.tensor([[0] * (n - p.shape[1]) + [1] * p.shape[1] for p in prompts])
    out = model(inputs_embeds=x, attention_mask=mask, use_cache=True, logits_to_keep=1)
    past, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
    for _ in range(tokens - 1):
        mask = torch.cat([mask, torch.ones(len(prompts), 1, dtype=mask.dtype)], 1)
        out = model(input_ids=nxt, attention_mask=mask, past_key_values=past, use_cache=True)
        past, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)


class Worker:
    def load(self, r):
        torch.set_num_threads(r["threads"])
        torch.manual_seed(0)
        # Every tensor below (weights, ids, masks, padding) is made on this device.
        torch.set_default_device(r["device"])
        path = os.path.abspath(r["generator"])
        eager = dict(dtype=torch.float32, attn_implementation="eager")
        if r["random_weights"]:  # the architectures of config.json, for times only
            load = lambda: AutoModelForCausalLM.from_config(
                AutoConfig.from_pretrained(path), **eager).eval()
            load_minilm = lambda: AutoModel.from_config(
                AutoConfig.from_pretrained(r["minilm"]), **eager).eval()
        else:
            d, f = (path, None) if os.path.isdir(path) else os.path.split(path)
            load = lambda: AutoModelForCausalLM.from_pretrained(d, gguf_file=f, **eager).eval()
            load_minilm = lambda: AutoModel.from_pretrained(
                r["minilm"], attn_implementation="eager").eval()
        with contextlib.redirect_stdout(sys.stderr):
            self.generator = load().to(r["device"])
            self.oscar = Oscar(self.generator, r["num_layers"], r["memory_tokens"])
            # Training gets its own generator copy: LoRA wraps its projections.
            self.train_oscar = Oscar(load().to(r["device"]), r["num_layers"],
                                     r["memory_tokens"], lora=(r["lora_rank"], r["lora_alpha"]))
            self.minilm = load_minilm().to(r["device"])
        t = self.train_oscar
        lora = [p for p in t.generator.parameters() if p.requires_grad]
        self.params = t.compressor_params() + lora
        adamw = lambda ps, lr: torch.optim.AdamW(ps, lr=lr, weight_decay=0.1)
        self.optims = [adamw(t.compressor_params(), 5e-5), adamw(lora, 1e-4)]
        self.work = {}
        return {"torch": torch.__version__}

    def run(self, w):
        kind = w["kind"]
        if kind == "train_step":
            return self.train_step(w["examples"])
        with torch.inference_mode():
            sync()
            start = time.perf_counter()
            if kind == "prefill":
                self.generator(torch.tensor([w["ids"]]), use_cache=False, logits_to_keep=1)
            elif kind == "decode":
                out = self.generator(torch.tensor([w["prompt"]]), use_cache=True, logits_to_keep=1)
                past, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
                sync()
                start = time.perf_counter()
                for _ in range(w["tokens"]):
                    out = self.generator(nxt, past_key_values=past, use_cache=True)
                    past, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
            elif kind == "answer":
                for q in w["queries"]:
                    greedy(self.generator, w["tokens"], input_ids=torch.tensor([q["ids"]]))
            elif kind == "answer_compressed":
                for q in w["queries"]:
                    greedy(self.generator, w["tokens"], inputs_embeds=self.oscar.prompt(q))
            elif kind == "answer_batch":
                embed = self.generator.model.embed_tokens
                prompts = [embed(torch.tensor([q["ids"]])) for q in w["queries"]]
                greedy_batch(self.generator, w["tokens"], prompts)
            elif kind == "answer_compressed_batch":
                prompts = [self.oscar.prompt(q) for q in w["queries"]]
                greedy_batch(self.generator, w["tokens"], prompts)
            elif kind == "encode":
                ids = torch.tensor(w["batch"])
                mask = torch.ones_like(ids)
                h = self.minilm(input_ids=ids, attention_mask=mask).last_hidden_state
                (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
            else:
                raise ValueError(f"unknown work kind {kind}")
            sync()
            return time.perf_counter() - start

    def train_step(self, examples):
        """One padded batch, as scaledown runs it: every chunk of the batch in one compressor
        batch, the prompts right-padded (causal attention keeps the padding out of each
        prompt's rows), each answer's mean cross-entropy averaged over the examples."""
        t = self.train_oscar
        sync()
        start = time.perf_counter()
        L = t.memory.shape[0]
        memory = t.memory_vectors([c for ex in examples for c in ex["chunks"]])
        prompts, offset = [], 0
        for ex in examples:
            rows = len(ex["chunks"]) * L
            prompts.append(torch.cat([
                t.embed(torch.tensor([ex["prefix"]])),
                memory[offset:offset + rows][None],
                t.embed(torch.tensor([list(ex["suffix"]) + list(ex["answer"][:-1])])),
            ], 1))
            offset += rows
        n = max(p.shape[1] for p in prompts)
        x = torch.cat([torch.cat([p, torch.zeros(1, n - p.shape[1], p.shape[2])], 1) for p in prompts])
        hidden = t.generator.model(inputs_embeds=x, use_cache=False).last_hidden_state
        answers = [ex["answer"] for ex in examples]
        rows = torch.cat([hidden[i, p.shape[1] - len(a):p.shape[1]]
                          for i, (p, a) in enumerate(zip(prompts, answers))])
        log_probs = torch.log_softmax(t.generator.lm_head(rows), -1)
        targets = torch.tensor([tok for a in answers for tok in a])
        weights = torch.tensor([1 / (len(a) * len(answers)) for a in answers for _ in a])
        loss = -(log_probs.gather(1, targets[:, None])[:, 0] * weights).sum()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        for o in self.optims:
            o.step()
            o.zero_grad(set_to_none=True)
        sync()
        return time.perf_counter() - start


def main():
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    worker = Worker()
    for line in sys.stdin:
        try:
            r = json.loads(line)
            op = r["op"]
            if op == "load":
                reply(worker.load(r))
            elif op == "prepare":
                worker.work[r["key"]] = r["work"]
                reply({"ok": True})
            elif op == "run":
                reply({"seconds": worker.run(worker.work[r["key"]])})
            elif op == "peak":
                reply({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})
            else:
                raise ValueError(f"unknown op {op}")
        except Exception as e:  # the Rust side prints it and goes on without PyTorch
            reply({"error": f"{type(e).__name__}: {e}"})


if __name__ == "__main__":
    main()
