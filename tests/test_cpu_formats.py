"""The CPU path's compact weight formats against fp32 (the oracle-checked path).

bf16 keeps 8 significant bits of each weight (and, in prompts of more than
8 rows on a CPU with AVX-512 BF16, of each activation going into a product);
int8 is symmetric with one scale per 32 inputs of each output column (the
embedding too), and the activations are quantized the same way; products
accumulate in fp32 either way. Bounds, over every position and over the last
positions of the oracle cases (both the prefill path), with what was
measured on these random fixtures:
  bf16: top-1 agreement >= 94% (measured 96.9-100% with bf16 activations,
        98.3-100% without), max |diff| <= 3% of the row's largest |logit|
        (measured <= 2.0%, <= 1.2% without);
  int8: top-1 agreement >= 90% (measured 90.6-100%), max |diff| <= 6%
        (measured <= 4.8%);
both with their default fp16 keys and values (--cpu-kv auto). fp16 keys and
values alone (fp32 weights): top-1 >= 99% (measured 100%), max |diff| <= 0.3%
(measured <= 0.10%).
A checkpoint stored as BF16 must give the fp32 path's logits in bf16 where
the activations stay fp32 (rows of a decode step, up to 8; fp32 keys and
values), up to summation order.
"""
import json
import os
import subprocess

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GPT2 = os.environ.get("GPT2_BIN", os.path.join(ROOT, "build", "gpt2"))
MODELS = os.path.join(ROOT, "tests", "fixtures", "models")
NAMES = ["tiny-f32", "tiny-f16", "tiny-bf16", "odd-f32", "scaled-f32", "hub-f32"]


def logits(model, tokens, dtype, out=None, kv="auto", int8=None):
    args = [GPT2, "logits", "--model", model, "--tokens", ",".join(map(str, tokens)),
            "--cpu-dtype", dtype, "--device", "cpu", "--cpu-kv", kv]
    if out:
        args += ["--all", "--out", out]
    env = dict(os.environ, GPT2_CPU_INT8=int8) if int8 else None
    r = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    if out:
        info = json.loads(r.stdout)
        return np.fromfile(out, dtype="<f4").reshape(info["rows"], info["vocab"])
    return np.array(json.loads(r.stdout), dtype=np.float32)[None, :]


BOUNDS = {"bf16": (0.94, 0.03), "int8": (0.90, 0.06), "fp16-kv": (0.99, 0.003)}


def check(ref, got, label, dtype):
    top1 = float((ref.argmax(1) == got.argmax(1)).mean())
    rel = float((np.abs(ref - got).max(1) / np.abs(ref).max(1)).max())
    print(f"{label} {dtype}: {ref.shape[0]} rows, top-1 agreement {top1 * 100:.1f}%, "
          f"max |diff| {rel * 100:.2f}% of max|logit|")
    want_top1, want_rel = BOUNDS[dtype]
    assert top1 >= want_top1, f"{label}: top-1 agreement {top1:.3f}"
    assert rel <= want_rel, f"{label}: max |diff| {rel:.4f}"


@pytest.mark.parametrize("dtype", ["bf16", "int8"])
@pytest.mark.parametrize("name", NAMES)
def test_every_position(name, dtype, tmp_path):
    model = os.path.join(MODELS, name)
    cfg = json.load(open(os.path.join(model, "config.json")))
    n = min(120, cfg.get("n_positions", cfg.get("n_ctx")))
    toks = np.random.default_rng(5).integers(0, cfg["vocab_size"], n).tolist()
    ref = logits(model, toks, "fp32", str(tmp_path / "a.bin"))
    got = logits(model, toks, dtype, str(tmp_path / "b.bin"))
    check(ref, got, f"{name} all positions", dtype)
    if name == "tiny-bf16" and dtype == "bf16":  # lossless: only the summation order differs
        ref = logits(model, toks[:8], "fp32", str(tmp_path / "c.bin"), kv="fp32")
        got = logits(model, toks[:8], dtype, str(tmp_path / "d.bin"), kv="fp32")
        rel = float((np.abs(ref - got).max(1) / np.abs(ref).max(1)).max())
        assert rel < 1e-5, f"BF16 weights must stream losslessly (max rel diff {rel:.2e})"


@pytest.mark.parametrize("name", NAMES)
def test_half_kv(name, tmp_path):
    """fp32 weights with fp16 keys and values against fp32 throughout, every position."""
    model = os.path.join(MODELS, name)
    cfg = json.load(open(os.path.join(model, "config.json")))
    n = min(120, cfg.get("n_positions", cfg.get("n_ctx")))
    toks = np.random.default_rng(7).integers(0, cfg["vocab_size"], n).tolist()
    ref = logits(model, toks, "fp32", str(tmp_path / "a.bin"), kv="fp32")
    got = logits(model, toks, "fp32", str(tmp_path / "b.bin"), kv="fp16")
    check(ref, got, f"{name} all positions", "fp16-kv")


@pytest.mark.parametrize("isa", ["avx2", "portable"])
def test_int8_without_vnni(isa, tmp_path):
    """The int8 kernels of a CPU without AVX-512 VNNI (forced by GPT2_CPU_INT8): rows of a decode
    pass give the default kernel's bits; a prompt (weights widened for sgemm) keeps int8's bounds."""
    model = os.path.join(MODELS, "odd-f32")  # tile and group tails
    toks = np.random.default_rng(9).integers(0, 300, 64).tolist()
    want = logits(model, toks[:8], "int8", str(tmp_path / "a.bin"))
    got = logits(model, toks[:8], "int8", str(tmp_path / "b.bin"), int8=isa)
    assert np.array_equal(want, got), f"{isa}: max diff {np.abs(want - got).max():.3g}"
    ref = logits(model, toks, "fp32", str(tmp_path / "c.bin"))
    check(ref, logits(model, toks, "int8", str(tmp_path / "d.bin"), int8=isa), f"odd-f32 ({isa})", "int8")


@pytest.mark.parametrize("dtype", ["bf16", "int8"])
@pytest.mark.parametrize("name", NAMES)
def test_last_position(name, dtype):
    model = os.path.join(MODELS, name)
    cases = json.load(open(os.path.join(ROOT, "tests", "fixtures", "oracle", name + ".json")))["cases"]
    ref = np.concatenate([logits(model, c["tokens"], "fp32") for c in cases])
    got = np.concatenate([logits(model, c["tokens"], dtype) for c in cases])
    check(ref, got, f"{name} last positions", dtype)


@pytest.mark.parametrize("dtype", ["bf16", "int8"])
def test_completion_runs_and_is_reported(dtype):
    r = subprocess.run([GPT2, "complete", "--model", os.path.join(MODELS, "tiny-f32"), "--prompt",
                        "Hello world", "--cpu-dtype", dtype, "--device", "cpu", "--seed", "1",
                        "--stop", "none"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["device"] == f"cpu ({dtype})" and all(len(t) == 24 for t in out["tokens"])


@pytest.mark.parametrize("opt,val", [("--cpu-dtype", "int4"), ("--cpu-kv", "int8")])
def test_bad_cpu_option_is_a_usage_error(opt, val):
    r = subprocess.run([GPT2, "complete", "--model", os.path.join(MODELS, "tiny-f32"), "--prompt",
                        "hi", opt, val], capture_output=True, text=True)
    assert r.returncode == 2 and opt in r.stderr
