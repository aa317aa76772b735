# Reference values for the GGUF K-quant (and 5-bit) dequantisers (crates/scaledown-model/src/weights/
# kquants_reference.json): random blocks of Q4_K, Q5_K and Q6_K dequantised by gguf-py
# (`pip install gguf==0.19.0`, llama.cpp's own Python package), so that the Rust test checks
# against llama.cpp's definition, not against a second copy of ours.
import json, sys
import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T, quants

rng = np.random.default_rng(20261204)
out = {}
for t in (T.Q4_K, T.Q5_K, T.Q6_K, T.Q5_0, T.Q5_1):
    block_values, block_bytes = GGML_QUANT_SIZES[t]
    blocks = 512 // block_values
    raw = rng.integers(0, 256, size=(blocks, block_bytes), dtype=np.uint8)
    # Sane f16 scales (random bytes could be NaN or huge): d first, then dmin (m) for
    # Q4_K, Q5_K and Q5_1; Q6_K keeps d last.
    d = rng.uniform(0.001, 0.05, size=blocks).astype(np.float16).view(np.uint8).reshape(blocks, 2)
    dmin = rng.uniform(0.001, 0.05, size=blocks).astype(np.float16).view(np.uint8).reshape(blocks, 2)
    if t == T.Q6_K:
        raw[:, -2:] = d
    elif t == T.Q5_0:
        raw[:, 0:2] = d
    else:
        raw[:, 0:2] = d
        raw[:, 2:4] = dmin
    values = quants.dequantize(raw.reshape(-1), t).reshape(-1)
    out[t.name] = {"type": int(t.value), "bytes": raw.reshape(-1).tobytes().hex(),
                   "values": [float(v) for v in values]}
json.dump(out, open(sys.argv[1], "w"))
print({k: len(v["values"]) for k, v in out.items()})
