#!/usr/bin/env python3
"""PyTorch side of `scaledown bench`: the same work in transformers (float32, eager attention,
on the CPU or a CUDA GPU), run as a worker so that scaledown can alternate single runs between
the two sides.

Protocol (worker_protocol.py): one JSON request per line on stdin, one JSON answer per line.
    {"op": "load", "generator": GGUF_OR_DIR, "minilm": DIR, "random_weights": false,
     "device": "cpu"|"cuda", "threads": N, "num_layers": 5, "compression_rate": 16,
     "lora_rank": 16, "lora_alpha": 32}                              -> {"torch": VERSION}
    {"op": "prepare", "key": K, "work": {...}}                     -> {"ok": true}
    {"op": "run", "key": K}                                        -> {"seconds": S}
    {"op": "peak"}                                                 -> {"peak_rss_mb": MB}
scaledown sends token ids, so both sides run the same shapes. Work kinds: prefill {ids};
decode {prompt, tokens} (times the decode steps only); answer {queries: [{ids}], tokens};
answer_compressed {queries: [{prefix, chunks, query_tokens, suffix}], tokens}; answer_batch and
answer_compressed_batch (the same, all questions in one left-padded batch); train_step {generator: "lora"|"frozen",
examples: [{prefix, chunks, query_tokens, suffix, answer}]}; encode {batch: [[ids]]} (MiniLM, mean pooling).
"""
import contextlib
import copy
import inspect
import math
import os
import sys
import time

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, DynamicCache
from transformers.models.llama.modeling_llama import LlamaDecoderLayer

from worker_protocol import serve

# transformers 5 renamed the KV cache argument and output `past_key_values` to `cache`.
CACHE_KW = "cache" if "cache" in inspect.signature(LlamaDecoderLayer.forward).parameters \
    else "past_key_values"


def cache_of(out):
    return getattr(out, CACHE_KW)


def sync():
    """Waits for the GPU's queued work, so that the clock reads finished work."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


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


def layer_call(layer, h, mask, position_embeddings, position_ids, cache):
    """One decoder layer; transformers 5 calls the KV cache `cache`, 4.x `past_key_value(s)`."""
    kw = {CACHE_KW: cache} if cache is not None else {}
    out = layer(h, attention_mask=mask, position_embeddings=position_embeddings,
                position_ids=position_ids, use_cache=cache is not None, **kw)
    return out[0] if isinstance(out, tuple) else out


def additive(hidden):
    """Bool `[b, 1, q, k]`, True where a key is hidden -> the eager attention's additive mask."""
    return torch.zeros(hidden.shape).masked_fill(hidden, torch.finfo(torch.float32).min)


class Pooled:
    """The pooled readout over the generator, as scaledown builds it (its default): a
    trainable copy of the generator's first k layers reads `[query; chunk]`; memory vector j of
    the chunk is the mean of its layer-k states over document tokens jR..(j+1)R; the vectors
    enter the generator's residual stream after its layer k, and the generator's first k
    layers never see those positions (in the KV cache neither)."""

    def __init__(self, generator, num_layers, rate, lora=None):
        self.k, self.rate = num_layers, rate
        self.layers = copy.deepcopy(generator.model.layers[:num_layers])
        self.layers.requires_grad_(True)
        self.generator = generator
        self.embed = generator.model.embed_tokens
        generator.requires_grad_(False)
        if lora is not None:
            for layer in generator.model.layers:
                for parent in (layer.self_attn, layer.mlp):
                    for name, child in list(parent.named_children()):
                        if name.endswith("_proj"):
                            setattr(parent, name, LoraLinear(child, *lora))

    def compressor_params(self):
        return list(self.layers.parameters())

    def run_layers(self, layers, h, start, hidden_at, cache=None, insert=None):
        """`layers` over `h` `[b, n, d]` at positions start.. ; `hidden_at(i)` is layer i's
        bool key mask `[b, 1, n, start + n]`; `insert` = (layer, keep, values)."""
        pos = torch.arange(start, start + h.shape[1])[None].expand(h.shape[0], -1)
        pe = self.generator.model.rotary_emb(h, pos)
        masks = {}
        for i, layer in enumerate(layers):
            if insert is not None and i == insert[0]:
                h = h * insert[1] + insert[2]
            key = hidden_at(i)
            if id(key) not in masks:
                masks[id(key)] = additive(key)
            h = layer_call(layer, h, masks[id(key)], pe, pos, cache)
        return h

    def chunk_memory(self, chunks, query_tokens):
        """Each chunk's memory vectors `[vectors, d]`, in chunk order; chunks within 25 % of a
        group's shortest run as one right-padded batch, as scaledown groups them.
        `query_tokens[i]`: the length of the query before chunk i's document tokens."""
        order = sorted(range(len(chunks)), key=lambda i: len(chunks[i]))
        states = [None] * len(chunks)
        i = 0
        while i < len(order):
            first = len(chunks[order[i]])
            j = i
            while j < len(order) and 4 * len(chunks[order[j]]) <= 5 * first:
                j += 1
            group = order[i:j]
            width = max(len(chunks[g]) for g in group)
            x = torch.cat([torch.cat([self.embed(torch.tensor([chunks[g]])),
                                      torch.zeros(1, width - len(chunks[g]), self.embed.embedding_dim)], 1)
                           for g in group])
            causal = torch.ones(width, width, dtype=torch.bool).triu(1)[None, None]
            h = self.run_layers(self.layers, x, 0, lambda _: causal)
            for row, g in enumerate(group):
                doc = h[row, query_tokens[g]:len(chunks[g])]
                states[g] = torch.stack([doc[s:s + self.rate].mean(0)
                                         for s in range(0, len(doc), self.rate)])
            i = j
        return states

    def memory_vectors(self, q):
        """One query's memory `[Σ vectors, d]`."""
        return torch.cat(self.chunk_memory(q["chunks"], [q["query_tokens"]] * len(q["chunks"])))

    def prompt(self, q, memory, continuation=()):
        """Embeddings `[1, n, d]` (zeros at the memory slots), the memory values at the slots
        `[1, n, d]` and the slots `[n]` of prefix, memory, suffix + continuation."""
        after = list(q["suffix"]) + list(continuation)
        m, d = memory.shape
        x = torch.cat([self.embed(torch.tensor([q["prefix"]])), torch.zeros(1, m, d),
                       self.embed(torch.tensor([after]))], 1)
        values = torch.cat([torch.zeros(1, len(q["prefix"]), d), memory[None],
                            torch.zeros(1, len(after), d)], 1)
        slots = torch.zeros(x.shape[1], dtype=torch.bool)
        slots[len(q["prefix"]):len(q["prefix"]) + m] = True
        return x, values, slots

    def forward(self, prompts, left_pad, cache=None):
        """The generator over prompts from `prompt`, padded into one batch (left for
        answering, right for training): final-normed states `[b, n, d]` and the memory key
        mask `[b, n]` that later decode steps keep hiding from the first k layers."""
        n = max(x.shape[1] for x, _, _ in prompts)
        pad = lambda t, w, v: torch.cat([torch.full((*t.shape[:1], w), v, dtype=t.dtype), t], 1) \
            if left_pad else torch.cat([t, torch.full((*t.shape[:1], w), v, dtype=t.dtype)], 1)
        pad3 = lambda t, w: torch.cat([torch.zeros(1, w, t.shape[2]), t] if left_pad
                                      else [t, torch.zeros(1, w, t.shape[2])], 1)
        x = torch.cat([pad3(x, n - x.shape[1]) for x, _, _ in prompts])
        values = torch.cat([pad3(v, n - v.shape[1]) for _, v, _ in prompts])
        slots = torch.cat([pad(s[None], n - len(s), False) for _, _, s in prompts])
        padding = torch.cat([pad(torch.zeros(1, len(s), dtype=torch.bool), n - len(s), True)
                             for _, _, s in prompts])
        causal = torch.ones(n, n, dtype=torch.bool).triu(1)[None, None]
        above = causal | padding[:, None, None, :]
        # Memory keys hidden below layer k, except from themselves (no empty rows).
        below = above | (slots[:, None, None, :] & ~torch.eye(n, dtype=torch.bool)[None, None])
        keep = (~slots)[..., None].float()
        h = self.run_layers(self.generator.model.layers, x, 0,
                            lambda i: below if i < self.k else above, cache,
                            insert=(self.k, keep, values))
        return self.generator.model.norm(h), slots, padding

    def greedy(self, tokens, prompts):
        """Exactly `tokens` greedy tokens for each prompt, in one left-padded batch."""
        cache = new_cache(self.generator.config)
        h, slots, padding = self.forward(prompts, True, cache)
        nxt = self.generator.lm_head(h[:, -1:]).argmax(-1)
        b = len(prompts)
        for _ in range(tokens - 1):
            slots = torch.cat([slots, torch.zeros(b, 1, dtype=torch.bool)], 1)
            padding = torch.cat([padding, torch.zeros(b, 1, dtype=torch.bool)], 1)
            above = padding[:, None, None, :]
            below = above | slots[:, None, None, :]
            x = self.embed(nxt)
            h = self.run_layers(self.generator.model.layers, x, slots.shape[1] - 1,
                                lambda i: below if i < self.k else above, cache)
            nxt = self.generator.lm_head(self.generator.model.norm(h)).argmax(-1)


def new_cache(config):
    try:
        return DynamicCache(config=config)
    except TypeError:  # transformers 4.x
        return DynamicCache()


def greedy(model, tokens, **first):
    """Prefill (`first` holds input_ids or inputs_embeds), then tokens - 1 decode steps."""
    out = model(use_cache=True, logits_to_keep=1, **first)
    past, nxt = cache_of(out), out.logits[:, -1:].argmax(-1)
    for _ in range(tokens - 1):
        out = model(input_ids=nxt, use_cache=True, **{CACHE_KW: past})
        past, nxt = cache_of(out), out.logits[:, -1:].argmax(-1)


def greedy_batch(model, tokens, prompts):
    """`greedy` for several prompt embeddings `[1, n_i, d]`: left-padded, padding masked."""
    n = max(p.shape[1] for p in prompts)
    x = torch.cat([torch.cat([torch.zeros(1, n - p.shape[1], p.shape[2]), p], 1) for p in prompts])
    mask = torch.tensor([[0] * (n - p.shape[1]) + [1] * p.shape[1] for p in prompts])
    out = model(inputs_embeds=x, attention_mask=mask, use_cache=True, logits_to_keep=1)
    past, nxt = cache_of(out), out.logits[:, -1:].argmax(-1)
    for _ in range(tokens - 1):
        mask = torch.cat([mask, torch.ones(len(prompts), 1, dtype=mask.dtype)], 1)
        out = model(input_ids=nxt, attention_mask=mask, use_cache=True, **{CACHE_KW: past})
        past, nxt = cache_of(out), out.logits[:, -1:].argmax(-1)


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
            k, rate = r["num_layers"], r["compression_rate"]
            self.oscar = Pooled(self.generator, k, rate)
            # Pretraining trains the compressor alone over the same frozen generator; question
            # answering gets its own generator copy, whose projections LoRA wraps.
            self.frozen = Pooled(self.generator, k, rate)
            self.lora = Pooled(load().to(r["device"]), k, rate,
                               lora=(r["lora_rank"], r["lora_alpha"]))
            self.minilm = load_minilm().to(r["device"])
        adamw = lambda ps, lr: torch.optim.AdamW(ps, lr=lr, weight_decay=0.1)
        lora = [p for p in self.lora.generator.parameters() if p.requires_grad]
        self.training = {
            "lora": (self.lora, self.lora.compressor_params() + lora,
                     [adamw(self.lora.compressor_params(), 5e-5), adamw(lora, 1e-4)]),
            "frozen": (self.frozen, self.frozen.compressor_params(),
                       [adamw(self.frozen.compressor_params(), 1e-4)]),
        }
        return {"torch": torch.__version__}

    def run(self, w):
        kind = w["kind"]
        if kind == "train_step":
            return self.train_step(w["examples"], w["generator"])
        with torch.inference_mode():
            sync()
            start = time.perf_counter()
            if kind == "prefill":
                self.generator(torch.tensor([w["ids"]]), use_cache=False, logits_to_keep=1)
            elif kind == "decode":
                out = self.generator(torch.tensor([w["prompt"]]), use_cache=True, logits_to_keep=1)
                past, nxt = cache_of(out), out.logits[:, -1:].argmax(-1)
                sync()
                start = time.perf_counter()
                for _ in range(w["tokens"]):
                    out = self.generator(nxt, use_cache=True, **{CACHE_KW: past})
                    past, nxt = cache_of(out), out.logits[:, -1:].argmax(-1)
            elif kind == "answer":
                for q in w["queries"]:
                    greedy(self.generator, w["tokens"], input_ids=torch.tensor([q["ids"]]))
            elif kind == "answer_compressed":
                for q in w["queries"]:
                    self.oscar.greedy(w["tokens"], [self.oscar.prompt(q, self.oscar.memory_vectors(q))])
            elif kind == "answer_batch":
                embed = self.generator.model.embed_tokens
                prompts = [embed(torch.tensor([q["ids"]])) for q in w["queries"]]
                greedy_batch(self.generator, w["tokens"], prompts)
            elif kind == "answer_compressed_batch":
                prompts = [self.oscar.prompt(q, self.oscar.memory_vectors(q)) for q in w["queries"]]
                self.oscar.greedy(w["tokens"], prompts)
            elif kind == "encode":
                ids = torch.tensor(w["batch"])
                mask = torch.ones_like(ids)
                h = self.minilm(input_ids=ids, attention_mask=mask).last_hidden_state
                (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
            else:
                raise ValueError(f"unknown work kind {kind}")
            sync()
            return time.perf_counter() - start

    def train_step(self, examples, generator):
        """One padded batch, as scaledown runs it: every chunk of the batch in the compressor's
        length groups, the prompts right-padded (causal attention keeps the padding out of
        each prompt's rows), each answer's mean cross-entropy averaged over the examples.
        `generator` is "lora" (question answering) or "frozen" (pretraining)."""
        t, params, optims = self.training[generator]
        sync()
        start = time.perf_counter()
        # All chunks of the batch in the compressor's length groups, as scaledown runs them.
        memory = iter(t.chunk_memory([c for ex in examples for c in ex["chunks"]],
                                     [ex["query_tokens"] for ex in examples for _ in ex["chunks"]]))
        prompts = [t.prompt(ex, torch.cat([next(memory) for _ in ex["chunks"]]), ex["answer"][:-1])
                   for ex in examples]
        hidden, _, _ = t.forward(prompts, left_pad=False)
        answers = [ex["answer"] for ex in examples]
        rows = torch.cat([hidden[i, p[0].shape[1] - len(a):p[0].shape[1]]
                          for i, (p, a) in enumerate(zip(prompts, answers))])
        log_probs = torch.log_softmax(t.generator.lm_head(rows), -1)
        targets = torch.tensor([tok for a in answers for tok in a])
        weights = torch.tensor([1 / (len(a) * len(answers)) for a in answers for _ in a])
        loss = -(log_probs.gather(1, targets[:, None])[:, 0] * weights).sum()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        for o in optims:
            o.step()
            o.zero_grad(set_to_none=True)
        sync()
        return time.perf_counter() - start


def main():
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    serve(Worker())


if __name__ == "__main__":
    main()
