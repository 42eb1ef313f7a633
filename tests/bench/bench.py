#!/usr/bin/env python3
"""CPU benchmark on a random checkpoint shaped like gpt2 (124M). Figures only:
nothing here asserts a time.

1. Per weight format (fp32, bf16, int8, int4), from build/bench_cpu: the memory
   bandwidth measured between the decode steps (the median of samples; the
   best of the run in brackets), the floor of a decode step (the bytes it
   must stream / that bandwidth), the decode step at batch 1 and 3 (after a
   256-token context) and its ratio to the floor, and cold prefill of 128
   and 512 tokens; then the same steps keeping only the 40 best logits, as
   sampling does (fp32 and bf16 then screen the head with its int8 copy);
   then a prompt's products alone on one thread (bench_cpu --kernels: int8
   and bf16 activations, on AMX tiles where the CPU has them and without),
   as a share of the peak of the multiply-add instruction they use (timed
   there too), and each format's prefill-512 floor: its layers' products at
   one thread's peak times the threads (AMX's peak is not timed: no floor
   there); then, where the CPU has AVX-512, the same decode and prefill on
   the AVX2 kernels (GPT2_CPU_ISA=avx2, OpenBLAS's Haswell sgemm): what a CPU
   without AVX-512 runs, and int8 with AVX-VNNI's kernel where the CPU has it.
2. End to end through the CLI: a 256-token prompt, n=3 continuations of 24
   new tokens (no stop rule, so every run decodes all 24), process included.
3. The accuracy of bf16, int8 and int4 against fp32 over every position of a text.
4. The same generate workload and a 512-token forward pass through Hugging
   Face transformers on the same CPU and checkpoint (GPT2_REF_PYTHON, or the
   .venv-oracle that `make fixtures` creates; otherwise a SKIP line says why),
   and the ratios.

usage: bench.py [--runs N] [--dtype f32|f16|bf16]
"""
import argparse
import json
import os
import random
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GPT2 = os.environ.get("GPT2_BIN", os.path.join(ROOT, "build", "gpt2"))
BENCH_CPU = os.path.join(ROOT, "build", "bench_cpu")
FORMATS = ("fp32", "bf16", "int8", "int4")
# formats whose kernels differ on AVX-512 (int4 takes its AVX2 kernel everywhere)
AVX512_FORMATS = ("fp32", "bf16", "int8")


def checkpoint(dtype):
    out = os.path.join(ROOT, "build", "bench", f"gpt2-124m-{dtype}")
    if not os.path.exists(os.path.join(out, "model.safetensors")):
        subprocess.run([sys.executable, os.path.join(ROOT, "tests", "tools", "checkpoint.py"),
                        "--out", out, "--layers", "12", "--embd", "768", "--heads", "12",
                        "--positions", "1024", "--vocab", "50257", "--dtype", dtype,
                        "--seed", "1", "--tokenizer-copy", "-q"], check=True)
    return out


def run_engine(model, prompt, runs, threads=None, dtype="fp32"):
    rows = []
    for i in range(runs):
        cmd = [GPT2, "complete", "--model", model, "--tokens", ",".join(map(str, prompt)),
               "-n", "3", "--max-tokens", "24", "--stop", "none", "--seed", str(i),
               "--device", "cpu", "--cpu-dtype", dtype]
        if threads:
            cmd += ["--threads", str(threads)]
        r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
        assert all(len(t) == 24 for t in r["tokens"]), "every continuation decodes 24 tokens"
        t = r["timings"]
        rows.append((t["prefill_ms"], t["decode_ms"] / t["decode_steps"],
                     t["prefill_ms"] + t["decode_ms"], t["total_ms"]))
    return [statistics.median(col) for col in zip(*rows)]


def accuracy(model, prompt):
    """bf16, int8 and int4 against fp32 over every position of the prompt."""
    import numpy as np
    out = {}
    for dtype in FORMATS:
        path = os.path.join(ROOT, "build", "bench", f"logits-{dtype}.bin")
        r = json.loads(subprocess.run([GPT2, "logits", "--model", model, "--tokens",
                                       ",".join(map(str, prompt)), "--all", "--out", path,
                                       "--device", "cpu", "--cpu-dtype", dtype],
                                      check=True, capture_output=True, text=True).stdout)
        out[dtype] = np.fromfile(path, dtype="<f4").reshape(r["rows"], r["vocab"]).astype(np.float64)

    def logp(x):
        x = x - x.max(1, keepdims=True)
        return x - np.log(np.exp(x).sum(1, keepdims=True))
    p = logp(out["fp32"])
    for dtype in FORMATS[1:]:
        q = logp(out[dtype])
        kl = float((np.exp(p) * (p - q)).sum(1).mean())
        top1 = float((p.argmax(1) == q.argmax(1)).mean())
        print(f"  {dtype} vs fp32 over {p.shape[0]} positions: top-1 agreement {top1 * 100:.1f}%, "
              f"mean KL {kl:.2e} nats")


def kernels(model, env=None, formats=FORMATS):
    out = {}
    for dtype in formats:
        r = subprocess.run([BENCH_CPU, model, dtype, "--context", "256", "--steps", "40"],
                           check=True, capture_output=True, text=True,
                           env=dict(os.environ, **env) if env else None)
        out[dtype] = json.loads(r.stdout)
    return out


# what a CPU without AVX-512 runs: our AVX2 kernels, and OpenBLAS's sgemm for
# Haswell (else it would pick its AVX-512 one here)
AVX2_ENV = {"GPT2_CPU_ISA": "avx2", "OPENBLAS_CORETYPE": "Haswell"}
# the same with AVX-VNNI's int8 kernel (Intel's cores without AVX-512 since Alder Lake)
AVX_VNNI_ENV = dict(AVX2_ENV, GPT2_CPU_ISA="avxvnni")


def step_rows(k, formats=FORMATS):
    print(f"  {'format':6s} {'bytes/step':>10s} {'bandwidth':>16s} {'floor':>8s} {'batch 1':>8s} "
          f"{'ratio':>6s} {'batch 3':>8s} {'ratio':>6s}  {'prefill 128':>20s}  {'prefill 512':>20s}")
    for dtype in formats:
        r = k[dtype]
        print(f"  {dtype:6s} {r['step_bytes'] / 1e6:7.0f} MB {r['bandwidth_gbs']:5.1f} ({r['bandwidth_best_gbs']:4.1f}) GB/s "
              f"{r['floor_ms']:5.2f} ms {r['step1_ms']:5.2f} ms {r['step1_ms'] / r['floor_ms']:5.2f}x "
              f"{r['step3_ms']:5.2f} ms {r['step3_ms'] / r['floor_ms']:5.2f}x  "
              f"{r['prefill128_ms']:6.1f} ms {128e3 / r['prefill128_ms']:5.0f} tok/s  "
              f"{r['prefill512_ms']:6.1f} ms {512e3 / r['prefill512_ms']:5.0f} tok/s")
    print("  a keystroke's prompt, 20 tokens after the cached rest of the context: " +
          ", ".join(f"{d} {k[d]['extend20_ms']:.1f} ms" for d in formats))


def cpu_has(flag):
    try:
        return flag in open("/proc/cpuinfo").read().split()
    except OSError:
        return False


def has_avx512():
    return cpu_has("avx512f")


# the instruction each format's prompt products multiply-add with, without AMX
# (fp32: OpenBLAS sgemm or the AVX-512 panels, both fmas)
PROMPT_OP = {"fp32": "vfmadd231ps zmm", "bf16": "vdpbf16ps", "int8": "vpdpbusd", "int4": "vpmaddubsw"}


def prefill_floor(k, peaks):
    """A prompt's floor: its layers' matrix products (the checkpoint's shape,
    as checkpoint() makes it) at the peak of the instruction they use, one
    thread's peak times the threads. Not the all-thread figure bench_cpu
    also times: on a shared machine a neighbour on the other core pulled it
    to 74-79% of twice one thread's in one run, and the floor above the
    prefill measured minutes apart. Attention and the rest are left out, so
    no engine reaches it (nor, where threads share a core, would the
    products)."""
    if not peaks:
        print("  SKIP prefill floor: bench_cpu timed no multiply-add instruction here")
        return
    print("the multiply-add instructions' peaks (12 independent sums in registers), G multiply-adds "
          "a second, one thread / all: " +
          ", ".join(f"{n} {x['gmacs']:.1f} / {x['gmacs_all']:.1f} ({x['threads']})" for n, x in peaks.items()))
    L, C, I = 12, 768, 3072
    macs = 512 * L * (4 * C * C + 2 * C * I)
    parts = []
    for dtype in FORMATS:
        name = PROMPT_OP[dtype]
        if dtype == "fp32" and name not in peaks:  # AVX2 without AVX-512
            name = "vfmadd231ps ymm"
        amx = k[dtype].get("cpu_kernels", "").startswith("amx")
        if amx or name not in peaks:
            parts.append(f"{dtype} -- ({'AMX tiles' if amx else 'no ' + name})")
            continue
        floor = macs / (peaks[name]["gmacs"] * peaks[name]["threads"] * 1e9) * 1e3
        parts.append(f"{dtype} {floor:.0f} ms ({k[dtype]['prefill512_ms'] / floor:.2f}x)")
    print(f"  prefill 512's floor, its layers' products ({macs / 1e9:.1f} G multiply-adds) at one "
          f"thread's peak times the threads, and the measured prefill's ratio to it: " + ", ".join(parts))


def cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def reference_python():
    cands = [os.environ.get("GPT2_REF_PYTHON"), os.path.join(ROOT, ".venv-oracle", "bin", "python")]
    for py in filter(None, cands):
        if os.path.exists(py):
            ok = subprocess.run([py, "-c", "import torch, transformers"], capture_output=True)
            if ok.returncode == 0:
                return py
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--dtype", default="f32")
    a = ap.parse_args()
    model = checkpoint(a.dtype)
    rnd = random.Random(3)
    prompt = [rnd.randrange(50000) for _ in range(256)]
    print(f"gpt2 (124M-shaped random checkpoint, {a.dtype} file) on {cpu_name()}, "
          f"{os.cpu_count()} CPUs")

    k = kernels(model)
    print("decode step after a 256-token context (median of 40) and cold prefill; floor = bytes "
          "streamed per step / bandwidth sampled between the steps (best of the run in brackets)")
    step_rows(k)
    if all("step1_top40_ms" in k[d] for d in FORMATS):
        print("  the same steps keeping only the 40 best logits (sampling's default top_k; fp32 and "
              "bf16 screen the head with its int8 copy, bit for bit the same 40):")
        for dtype in FORMATS:
            r = k[dtype]
            print(f"  {dtype:6s} batch 1 {r['step1_top40_ms']:5.2f} ms ({r['step1_top40_ms'] / r['floor_ms']:4.2f}x "
                  f"the whole head's floor)  batch 3 {r['step3_top40_ms']:5.2f} ms "
                  f"({r['step3_top40_ms'] / r['floor_ms']:4.2f}x)")

    print("  kernels: " + ", ".join(f"{d} {k[d].get('cpu_kernels', '?')} ({k[d].get('cpu_kv', '?')} keys "
                                    "and values)" for d in FORMATS) +
          "; streamed weights fetched ahead by prefetch instructions: " +
          {"no": "no (the hardware prefetchers alone)"}.get(k["fp32"].get("cpu_prefetch", "?"),
                                                             k["fp32"].get("cpu_prefetch", "?")))
    print("a prompt's products alone (one thread, 512 rows, a call's rows as the engine's), G multiply-adds a second:")
    r = subprocess.run([BENCH_CPU, "--kernels"], check=True, capture_output=True, text=True)
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    peaks = {x["peak"]: x for x in lines if "peak" in x}
    for x in (x for x in lines if "kernel" in x):
        how = (f"AMX tiles, {x['amx_rows']} rows a call" if x["amx"] else
               f"without AMX, {x['rows_a_call']} rows a call")
        peak = peaks.get(PROMPT_OP[x["kernel"]])
        share = f", {x['gmacs'] / peak['gmacs'] * 100:.0f}% of {peak['peak']}'s peak" if peak and not x["amx"] else ""
        print(f"  {x['kernel']:5s} K {x['K']:4d} x N {x['N']:4d}: {x['gmacs']:6.1f} ({how}{share})")
    prefill_floor(k, peaks)
    if has_avx512():
        print("the same on the AVX2 kernels, as a CPU without AVX-512 runs them (GPT2_CPU_ISA=avx2, "
              "OpenBLAS's Haswell sgemm for fp32 and bf16 prompts):")
        step_rows(kernels(model, AVX2_ENV, AVX512_FORMATS), AVX512_FORMATS)
        if cpu_has("avx_vnni"):
            print("  int8 with AVX-VNNI's kernel (GPT2_CPU_ISA=avxvnni), as Intel's cores without AVX-512 "
                  "since Alder Lake run it:")
            step_rows(kernels(model, AVX_VNNI_ENV, ["int8"]), ["int8"])
        else:
            print("  SKIP int8 with AVX-VNNI's kernel: this CPU has no AVX-VNNI")
    else:
        print("  SKIP the AVX2 rows: this CPU has no AVX-512, so the rows above are its AVX2 kernels")

    print(f"`gpt2 complete`: 256-token prompt, n=3 x 24 new tokens, median of {a.runs} runs")
    med = {}
    for dtype, threads in (("fp32", 1), ("fp32", None), ("bf16", None), ("int8", None), ("int4", None)):
        p, step, gen, total = run_engine(model, prompt, a.runs, threads, dtype)
        label = f"{dtype} {threads} thread" if threads else f"{dtype} all threads"
        med[label] = gen
        print(f"  {label:16s}: prefill {p:7.1f} ms ({256 / p * 1000:6.0f} tok/s)  "
              f"decode step (batch 3) {step:6.1f} ms  prefill+decode {gen:7.1f} ms  "
              f"process total {total:7.1f} ms")
    accuracy(model, prompt)
    py = reference_python()
    if not py:
        print("  SKIP reference: no Python with torch + transformers (run `make fixtures` "
              "to create .venv-oracle, or set GPT2_REF_PYTHON)")
        return
    ref = subprocess.run([py, os.path.join(ROOT, "tests", "bench", "hf_reference.py"), model,
                          ",".join(map(str, prompt)), str(a.runs)],
                         capture_output=True, text=True)
    if ref.returncode != 0:
        print("  SKIP reference: transformers run failed:", ref.stderr.strip().splitlines()[-1:])
        return
    hf = json.loads(ref.stdout)
    print(f"transformers (torch {hf['torch']}, {hf['threads']} threads, fp32) on the same checkpoint:")
    print(f"  generate() 3 x 24 from 256 tokens: {hf['median_ms']:7.1f} ms -> engine is "
          + ", ".join(f"{hf['median_ms'] / med[f'{d} all threads']:.1f}x ({d})" for d in FORMATS)
          + " faster (prefill+decode)")
    print(f"  forward over a cold 512-token prompt: {hf['prefill512_ms']:7.1f} ms -> engine is "
          + ", ".join(f"{hf['prefill512_ms'] / k[d]['prefill512_ms']:.1f}x ({d})" for d in FORMATS)
          + " faster")


if __name__ == "__main__":
    main()
