#!/usr/bin/env python3
"""The bench workload through Hugging Face transformers (the reference).

usage: hf_reference.py MODEL_DIR TOKENS RUNS [--device cpu|cuda] [--dtype fp32|fp16|bf16]
  -> JSON {median_ms, prefill512_ms, torch, transformers, threads, device, dtype}
Timed: model.generate(3 sequences sharing the prompt, 24 new tokens, sampling,
KV cache on), as a user of transformers would write it; and one forward pass
over a cold 512-token prompt. The load is not timed; the median of RUNS after
warm-up runs (1 on the CPU, 3 on the GPU) is reported.

The default (cpu, fp32, every core) is what tests/bench/bench.py runs;
tests/bench/bench_gpu.py runs --device cuda --dtype fp16, timed between
torch.cuda.synchronize() calls (kernels are queued asynchronously). When the
device is not available: one line on stderr and exit status 3.
"""
import argparse
import json
import os
import statistics
import sys
import time

ap = argparse.ArgumentParser()
ap.add_argument("model_dir")
ap.add_argument("tokens", help="comma-separated prompt token ids")
ap.add_argument("runs", type=int)
ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
ap.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), default="fp32")
a = ap.parse_args()

import torch  # noqa: E402 (after the arguments: --help works without torch)
import transformers  # noqa: E402
from transformers import GPT2LMHeadModel  # noqa: E402

if a.device == "cuda" and not torch.cuda.is_available():
    print(f"torch {torch.__version__} sees no CUDA device (built for CUDA "
          f"{torch.version.cuda or 'none'})", file=sys.stderr)
    sys.exit(3)
dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[a.dtype]
# from_pretrained's `torch_dtype` became `dtype` in transformers 4.56 (the old name warns)
ver = tuple(int(x) for x in transformers.__version__.split(".")[:2] if x.isdigit())
dtype_kw = {"dtype": dtype} if ver >= (4, 56) else {"torch_dtype": dtype}

if a.device == "cpu":
    torch.set_num_threads(os.cpu_count())  # the engine uses every core too
    sync = lambda: None  # noqa: E731
    warmup = 1
else:
    sync = torch.cuda.synchronize
    warmup = 3
dev = torch.device(a.device)
ids = torch.tensor([[int(t) for t in a.tokens.split(",")]], device=dev)
model = GPT2LMHeadModel.from_pretrained(a.model_dir, **dtype_kw).to(dev).eval()
times = []
with torch.no_grad():
    for i in range(a.runs + warmup):
        torch.manual_seed(i)
        sync()
        t0 = time.perf_counter()
        out = model.generate(ids, do_sample=True, top_k=40, top_p=0.95, temperature=0.8,
                             max_new_tokens=24, min_new_tokens=24, num_return_sequences=3,
                             pad_token_id=50256, synced_gpus=False)
        sync()
        times.append((time.perf_counter() - t0) * 1000)
        assert out.shape == (3, ids.shape[1] + 24)
    long_ids = torch.tensor([[(7919 * i) % 50000 for i in range(512)]], device=dev)
    prefill = []
    for i in range(a.runs + warmup):
        sync()
        t0 = time.perf_counter()
        model(long_ids, use_cache=True)
        sync()
        prefill.append((time.perf_counter() - t0) * 1000)
print(json.dumps({"median_ms": statistics.median(times[warmup:]),
                  "prefill512_ms": statistics.median(prefill[warmup:]), "torch": torch.__version__,
                  "transformers": transformers.__version__, "threads": torch.get_num_threads(),
                  "device": torch.cuda.get_device_name(dev) if a.device == "cuda" else "cpu",
                  "dtype": a.dtype}))
