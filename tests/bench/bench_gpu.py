#!/usr/bin/env python3
"""GPU benchmark on random checkpoints shaped like gpt2 (124M) and
gpt2-medium (355M), F16 files. Figures only: nothing here asserts a time.

Per model:
1. Per GPU weight format (fp16, bf16), from build/bench_cpu: the device copy
   bandwidth measured in the same run, the floor of a decode step (the bytes
   it must stream / that bandwidth), the decode step at batch 1 and 3 after a
   512-token context and its ratio to the floor, and cold prefill of 128, 512
   and 1000 tokens.
2. End to end through `gpt2 serve --device cuda` (msgpack-RPC, as the plugin
   talks to it), per format: 3 suggestions x 24 new tokens (stop "none")
   after a 512-token text, each request a different text and --cache-slots 0
   so no prefix cache or answer cache helps; timed from writing the request
   to reading its reply: p50, p95, min. Then "warm prefix": the same text
   with a new seed each time (prefix reuse on, the plugin's case), p50.
3. The same workload through Hugging Face transformers in fp16 on the same
   GPU (generate() of 3 sequences sharing the prompt, and one forward over a
   cold 512-token prompt), and the ratios. A SKIP line says why when torch,
   transformers or CUDA is missing.

Without a usable GPU every part prints the reason (and bench_cpu's error)
and the script exits 0; with one, a part that fails makes it exit 1 at the
end, after every other figure was printed.

usage: bench_gpu.py [--runs N] [--models gpt2,gpt2-medium]
The helper is $GPT2_BIN (default build/gpt2); the transformers Python is
$GPT2_REF_PYTHON, .venv-oracle, this Python or python3 on PATH, the first
that imports torch and transformers.
"""
import argparse
import json
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import typing_session  # its rpc client, beside this file

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GPT2 = os.environ.get("GPT2_BIN", os.path.join(ROOT, "build", "gpt2"))
BENCH_CPU = os.path.join(ROOT, "build", "bench_cpu")
FORMATS = ("fp16", "bf16")
# name -> (file label, layers, embd, heads)
MODELS = {"gpt2": ("124m", 12, 768, 12), "gpt2-medium": ("355m", 24, 1024, 16)}
CONTEXT = 512     # prompt tokens of every workload
N, NEW = 3, 24    # suggestions x new tokens per request
WARMUP = 3        # untimed requests per helper (model load, first allocations)

failures = []     # what failed while a GPU was usable -> exit 1


def checkpoint(name):
    label, layers, embd, heads = MODELS[name]
    out = os.path.join(ROOT, "build", "bench", f"gpt2-{label}-f16")
    if not os.path.exists(os.path.join(out, "model.safetensors")):
        print(f"writing a random {name}-shaped checkpoint to {os.path.relpath(out, ROOT)} ...",
              flush=True)
        subprocess.run([sys.executable, os.path.join(ROOT, "tests", "tools", "checkpoint.py"),
                        "--out", out, "--layers", str(layers), "--embd", str(embd),
                        "--heads", str(heads), "--positions", "1024", "--vocab", "50257",
                        "--dtype", "f16", "--seed", "1", "--tokenizer-copy", "-q"], check=True)
    return out


def gpu_reason(model):
    """None when the helper can use a GPU, else why not (its one-line error)."""
    tiny = os.path.join(ROOT, "tests", "fixtures", "models", "tiny-f32")
    r = subprocess.run([GPT2, "complete", "--model", tiny if os.path.isdir(tiny) else model,
                        "--prompt", "hi", "--max-tokens", "1", "--device", "cuda"],
                       capture_output=True, text=True, timeout=300)
    return None if r.returncode == 0 else (r.stderr.strip() or f"exit status {r.returncode}")


def fail(what, gpu_ok):
    if gpu_ok:
        failures.append(what)


# ==== 1. Kernels (bench_cpu) ====

def kernels(model, gpu_ok):
    out = {}
    for fmt in FORMATS:
        cmd = [BENCH_CPU, model, f"gpu-{fmt}", "--context", str(CONTEXT), "--steps", "200"]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as e:
            print(f"  {fmt}: {' '.join(cmd[1:])} failed: {e}")
            fail(f"bench_cpu gpu-{fmt}", gpu_ok)
            continue
        if r.returncode != 0:
            print(f"  {fmt}: bench_cpu gpu-{fmt} exited with status {r.returncode}:")
            for line in (r.stderr.strip() or "(no stderr)").splitlines()[-10:]:
                print(f"      {line}")
            fail(f"bench_cpu gpu-{fmt}", gpu_ok)
            continue
        try:
            res = json.loads(r.stdout)
        except ValueError:
            print(f"  {fmt}: bench_cpu printed no JSON: {r.stdout[-300:]!r}")
            fail(f"bench_cpu gpu-{fmt}", gpu_ok)
            continue
        if not str(res.get("device", "")).startswith("cuda"):  # an older bench_cpu ran the CPU
            print(f"  {fmt}: bench_cpu gpu-{fmt} ran on {res.get('device', 'an unnamed device')!r}, "
                  "not a GPU: figures left out")
            fail(f"bench_cpu gpu-{fmt}", gpu_ok)
            continue
        out[fmt] = res
    return out


def print_kernels(k):
    if not k:
        return
    dev = next(iter(k.values())).get("device", "?")
    print(f"  on {dev}: decode step after a {CONTEXT}-token context (median of 200) and cold "
          "prefill; floor = bytes per step / device copy bandwidth measured in this run")
    print(f"  {'format':6s} {'bytes/step':>10s} {'bandwidth':>11s} {'floor':>8s} {'step b=1':>8s} "
          f"{'ratio':>6s} {'step b=3':>8s} {'ratio':>6s}  {'prefill 128':>21s}  "
          f"{'prefill 512':>21s}  {'prefill 1000':>21s}")
    for fmt, r in k.items():
        pre = []
        for n in (128, 512, 1000):
            ms = r.get(f"prefill{n}_ms")
            pre.append(f"{ms:7.2f} ms {n * 1e3 / ms:6.0f} t/s" if ms else f"{'-':>21s}")
        print(f"  {fmt:6s} {r['step_bytes'] / 1e6:7.0f} MB {r['bandwidth_gbs']:6.0f} GB/s "
              f"{r['floor_ms']:5.3f} ms {r['step1_ms']:5.3f} ms {r['step1_ms'] / r['floor_ms']:5.2f}x "
              f"{r['step3_ms']:5.3f} ms {r['step3_ms'] / r['floor_ms']:5.2f}x  " + "  ".join(pre))


# ==== 2. End to end through `gpt2 serve` ====

class Helper(typing_session.Helper):
    """One `gpt2 serve` on the GPU; call() gives (ms from writing the request to reading its
    reply, result)."""

    def __init__(self, model, fmt, extra):
        super().__init__(model, ["--device", "cuda", "--gpu-dtype", fmt, "--log-level", "error",
                                 *extra], stderr=tempfile.TemporaryFile())

    def call(self, method, params, timeout=300):
        t0 = time.perf_counter()
        result = super().call(method, params, timeout)
        return (time.perf_counter() - t0) * 1000, result


def word_list(model):
    """Whole-word tokens (" word", 3-10 ASCII letters): a text of k of them is k tokens, since
    the pre-tokenizer splits at each space and each such piece is one vocabulary entry."""
    with open(os.path.join(model, "vocab.json"), encoding="utf-8") as f:
        vocab = json.load(f)
    return sorted(w[1:] for w in vocab
                  if w.startswith("\u0120") and 3 <= len(w) - 1 <= 10 and w[1:].isascii()
                  and w[1:].isalpha() and w[1:].islower())


def prompt_text(words, seed):
    rnd = random.Random(seed)
    return "".join(" " + rnd.choice(words) for _ in range(CONTEXT))


def tokenize(model, text):
    r = subprocess.run([GPT2, "tokenize", "--model", model], input=text, capture_output=True,
                       text=True, check=True)
    return json.loads(r.stdout)


def pct(xs, p):
    """Nearest-rank percentile."""
    s = sorted(xs)
    return s[max(0, math.ceil(p / 100 * len(s)) - 1)]


def request(text, seed, **extra):
    return {"text": text, "n": N, "max_tokens": NEW, "stop": "none", "seed": seed, **extra}


def helper_cold(model, fmt, words, runs):
    """Different texts, no prefix cache, no answer cache. -> (latencies ms, replies)"""
    h = Helper(model, fmt, ["--cache-slots", "0", "--lru", "0"])
    try:
        for i in range(WARMUP):
            h.call("complete", request(prompt_text(words, 900 + i), 900 + i))
        lat, replies = [], []
        for i in range(runs):
            ms, r = h.call("complete", request(prompt_text(words, 1000 + i), i))
            lat.append(ms)
            replies.append(r)
        return lat, replies
    finally:
        h.close()


def helper_warm(model, fmt, words, runs):
    """The same text (one buffer's prefix cache) with a new seed each time."""
    h = Helper(model, fmt, [])
    try:
        text = prompt_text(words, 1000)
        for i in range(WARMUP):
            h.call("complete", request(text, 900 + i, buffer=1))
        lat, cached = [], []
        for i in range(runs):
            ms, r = h.call("complete", request(text, i, buffer=1))
            lat.append(ms)
            cached.append(r["cached_tokens"])
        return lat, cached
    finally:
        h.close()


def bench_helper(model, words, runs, gpu_ok):
    """Prints the figures; -> {format: p50 ms} of the cold workload."""
    if not gpu_ok:
        return {}
    p50 = {}
    for fmt in FORMATS:
        try:
            lat, rep = helper_cold(model, fmt, words, runs)
            warm, cached = helper_warm(model, fmt, words, max(10, runs // 2))
        except Exception as e:  # one format's failure must not hide the others' figures
            print(f"  {fmt}: FAILED: {e}")
            fail(f"gpt2 serve --gpu-dtype {fmt}", gpu_ok)
            continue
        p50[fmt] = statistics.median(lat)

        def med(key):
            return statistics.median(r["timings"][key] for r in rep)
        toks = sorted({r["prompt_tokens"] for r in rep})
        gen = statistics.mean(r["generated_tokens"] for r in rep)
        print(f"  {fmt}: {rep[0]['device']}, prompts of {'/'.join(map(str, toks))} tokens, "
              f"{gen:.0f} tokens generated per request")
        print(f"    cold (a new text each time, {runs} requests): p50 {p50[fmt]:7.1f} ms  "
              f"p95 {pct(lat, 95):7.1f} ms  min {min(lat):7.1f} ms   [helper's own median: "
              f"queue {med('queue_ms'):.1f} + prefill {med('prefill_ms'):.1f} + decode "
              f"{med('decode_ms'):.1f} = total {med('total_ms'):.1f} ms]")
        print(f"    warm prefix (same text, new seed, {len(warm)} requests): p50 "
              f"{statistics.median(warm):7.1f} ms  min {min(warm):7.1f} ms   "
              f"[cached tokens median {statistics.median(cached):.0f} of {toks[-1]}]")
    return p50


# ==== 3. Hugging Face transformers on the same GPU ====

def reference_python():
    """(python, None) or (None, why not)."""
    cands = [os.environ.get("GPT2_REF_PYTHON"), os.path.join(ROOT, ".venv-oracle", "bin", "python"),
             sys.executable, shutil.which("python3")]
    tried = []
    for py in dict.fromkeys(filter(None, cands)):
        if not os.path.exists(py):
            continue
        ok = subprocess.run([py, "-c", "import torch, transformers"], capture_output=True, text=True)
        if ok.returncode == 0:
            return py, None
        tried.append(f"{py}: {(ok.stderr.strip().splitlines() or ['?'])[-1]}")
    return None, "no Python with torch + transformers (" + "; ".join(tried) + "; or set GPT2_REF_PYTHON)"


def bench_hf(py, model, words, runs, k, p50, gpu_ok):
    toks = tokenize(model, prompt_text(words, 1000))
    try:
        r = subprocess.run([py, os.path.join(ROOT, "tests", "bench", "hf_reference.py"), model,
                            ",".join(map(str, toks)), str(runs), "--device", "cuda",
                            "--dtype", "fp16"], capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired:
        print("  transformers: FAILED: no result in 900 s")
        fail("transformers reference", gpu_ok)
        return
    if r.returncode == 3:  # hf_reference.py: the device is not available
        print(f"  SKIP: transformers: {r.stderr.strip().splitlines()[-1]}")
        return
    if r.returncode != 0:
        print(f"  transformers: FAILED (exit status {r.returncode}):")
        for line in r.stderr.strip().splitlines()[-8:]:
            print(f"      {line}")
        fail("transformers reference", gpu_ok)
        return
    hf = json.loads(r.stdout)
    print(f"  transformers {hf['transformers']} (torch {hf['torch']}, fp16, {hf['device']}), "
          f"median of {runs}:")
    line = (f"    generate() {N} x {NEW} from {len(toks)} tokens: {hf['median_ms']:7.1f} ms")
    if p50:
        line += (" -> ours end to end (rpc included) is "
                 + ", ".join(f"{hf['median_ms'] / p50[f]:.1f}x ({f})" for f in p50) + " faster")
    print(line)
    line = f"    forward over a cold 512-token prompt: {hf['prefill512_ms']:7.2f} ms"
    if k:
        line += (" -> our prefill is "
                 + ", ".join(f"{hf['prefill512_ms'] / k[f]['prefill512_ms']:.1f}x ({f})" for f in k)
                 + " faster")
    print(line)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=20, help="timed requests per figure (default 20)")
    ap.add_argument("--models", default="gpt2,gpt2-medium",
                    help="comma-separated, of: " + ", ".join(MODELS))
    a = ap.parse_args()
    names = [m for m in a.models.split(",") if m]
    for m in names:
        if m not in MODELS:
            ap.error(f"unknown model {m!r} (known: {', '.join(MODELS)})")
    models = {m: checkpoint(m) for m in names}
    reason = gpu_reason(models[names[0]])
    gpu_ok = reason is None
    if not gpu_ok:
        print(f"SKIP: no usable GPU: {reason}")
    py, why = reference_python()
    for name, model in models.items():
        print(f"\n{name} ({MODELS[name][0].upper()}-shaped random checkpoint, F16 file)")
        print("1. kernels (build/bench_cpu)")
        k = kernels(model, gpu_ok)
        if not gpu_ok:
            print(f"  SKIP: kernel figures: no usable GPU ({reason})")
        print_kernels(k)
        print(f"2. `gpt2 serve --device cuda`: {N} suggestions x {NEW} new tokens, stop \"none\", "
              f"after a {CONTEXT}-token text")
        words = word_list(model)
        if not gpu_ok:
            print(f"  SKIP: the helper on the GPU: no usable GPU ({reason})")
        p50 = bench_helper(model, words, a.runs, gpu_ok)
        print("3. the same workload through Hugging Face transformers")
        if not py:
            print(f"  SKIP: transformers: {why}")
        else:
            bench_hf(py, model, words, min(a.runs, 10), k, p50, gpu_ok)
    if failures:
        print(f"\nbench-gpu: {len(failures)} part(s) failed on a usable GPU: " + ", ".join(failures))
        sys.exit(1)


if __name__ == "__main__":
    main()
