#!/usr/bin/env python3
"""The bench workload through Hugging Face transformers (the reference).

usage: hf_reference.py MODEL_DIR TOKENS RUNS
  -> JSON {median_ms, prefill512_ms, torch, threads}
Timed: model.generate(3 sequences sharing the prompt, 24 new tokens, sampling,
KV cache on), as a user of transformers would write it; and one forward pass
over a cold 512-token prompt. The load is not timed.
"""
import json
import os
import statistics
import sys
import time

import torch
from transformers import GPT2LMHeadModel

model_dir, tokens, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
torch.set_num_threads(os.cpu_count())  # the engine uses every core too
ids = torch.tensor([[int(t) for t in tokens.split(",")]])
model = GPT2LMHeadModel.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
times = []
with torch.no_grad():
    for i in range(runs + 1):  # the first run warms up
        torch.manual_seed(i)
        t0 = time.perf_counter()
        out = model.generate(ids, do_sample=True, top_k=40, top_p=0.95, temperature=0.8,
                             max_new_tokens=24, min_new_tokens=24, num_return_sequences=3,
                             pad_token_id=50256, synced_gpus=False)
        times.append((time.perf_counter() - t0) * 1000)
        assert out.shape == (3, ids.shape[1] + 24)
    long_ids = torch.tensor([[(7919 * i) % 50000 for i in range(512)]])
    prefill = []
    for i in range(runs + 1):
        t0 = time.perf_counter()
        model(long_ids, use_cache=True)
        prefill.append((time.perf_counter() - t0) * 1000)
print(json.dumps({"median_ms": statistics.median(times[1:]),
                  "prefill512_ms": statistics.median(prefill[1:]), "torch": torch.__version__,
                  "threads": torch.get_num_threads()}))
