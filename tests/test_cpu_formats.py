"""The CPU path's compact weight formats against fp32 (the oracle-checked path).

bf16 keeps 8 significant bits of each weight (and, in prompts of more than
8 rows on a CPU with AVX-512 BF16, of each activation going into a product);
int8 is symmetric with one scale per 64 inputs of each output column (the
embedding too), and the activations are quantized the same way; products
accumulate in fp32 either way. Bounds, over every position and over the last
positions of the oracle cases (both the prefill path), with what was
measured on these random fixtures:
  bf16: top-1 agreement >= 94% (measured 96.9-100% with bf16 activations,
        98.3-100% without), max |diff| <= 3% of the row's largest |logit|
        (measured <= 2.0%, <= 1.2% without);
  int8: top-1 agreement >= 90% (measured 90.8-100% with groups of 64), max |diff| <= 6%
        (measured <= 4.6%);
  int4: top-1 agreement >= 50% (measured 53.3-100%), max |diff| <= 65% (measured <= 58.9%):
        4-bit codes move these random fixtures' flat logits far, so the bounds only catch a
        broken format; its arithmetic is checked exactly (test_int4_paths, the unit tests);
both with their default keys and values (--cpu-kv auto: fp16, but int8 for
int8 weights with 64-float heads on AVX-512). fp16 keys and values alone
(fp32 weights): top-1 >= 99% (measured 100%), max |diff| <= 0.3% (measured
<= 0.10%); int8 ones alone: top-1 >= 95% (measured 97.5-100%), max |diff|
<= 3% (measured <= 2.4%).
A random checkpoint with GPT-2's head size (64) checks a prompt's bf16
attention (bf16 probabilities and values, AVX-512 BF16) against fp32.
A checkpoint stored as BF16 must give the fp32 path's logits in bf16 where
the activations stay fp32 (rows of a decode step, up to 8; fp32 keys and
values), up to summation order.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "tools"))
import checkpoint as ck  # noqa: E402

GPT2 = os.environ.get("GPT2_BIN", os.path.join(ROOT, "build", "gpt2"))
MODELS = os.path.join(ROOT, "tests", "fixtures", "models")
NAMES = ["tiny-f32", "tiny-f16", "tiny-bf16", "odd-f32", "scaled-f32", "hub-f32"]


def logits(model, tokens, dtype, out=None, kv="auto", isa=None, attn=None, fuse=None, bf16=None,
           prefetch=None):
    args = [GPT2, "logits", "--model", model, "--tokens", ",".join(map(str, tokens)),
            "--cpu-dtype", dtype, "--device", "cpu", "--cpu-kv", kv]
    if out:
        args += ["--all", "--out", out]
    env = dict(os.environ)
    if isa:
        env["GPT2_CPU_ISA"] = isa
    if attn:
        env["GPT2_CPU_ATTN"] = attn
    if fuse is not None:
        env["GPT2_CPU_FUSE"] = fuse
    if bf16:
        env["GPT2_CPU_BF16"] = bf16
    if prefetch is not None:
        env["GPT2_CPU_PREFETCH"] = prefetch
    r = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    if out:
        info = json.loads(r.stdout)
        return np.fromfile(out, dtype="<f4").reshape(info["rows"], info["vocab"])
    return np.array(json.loads(r.stdout), dtype=np.float32)[None, :]


BOUNDS = {"bf16": (0.94, 0.03), "int8": (0.90, 0.06), "fp16-kv": (0.99, 0.003),
          "int8-kv": (0.95, 0.03), "int4": (0.50, 0.65)}


def check(ref, got, label, dtype):
    top1 = float((ref.argmax(1) == got.argmax(1)).mean())
    rel = float((np.abs(ref - got).max(1) / np.abs(ref).max(1)).max())
    print(f"{label} {dtype}: {ref.shape[0]} rows, top-1 agreement {top1 * 100:.1f}%, "
          f"max |diff| {rel * 100:.2f}% of max|logit|")
    want_top1, want_rel = BOUNDS[dtype]
    assert top1 >= want_top1, f"{label}: top-1 agreement {top1:.3f}"
    assert rel <= want_rel, f"{label}: max |diff| {rel:.4f}"


@pytest.mark.parametrize("dtype", ["bf16", "int8", "int4"])
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


@pytest.mark.parametrize("name", NAMES)
def test_int8_kv(name, tmp_path):
    """fp32 weights with int8 keys and values (a scale per position and head) against fp32
    throughout: every position of a prompt, and 8 tokens, whose rows take decode's attention."""
    model = os.path.join(MODELS, name)
    cfg = json.load(open(os.path.join(model, "config.json")))
    n = min(120, cfg.get("n_positions", cfg.get("n_ctx")))
    toks = np.random.default_rng(7).integers(0, cfg["vocab_size"], n).tolist()
    for part, t in (("all positions", toks), ("8 rows", toks[:8])):
        ref = logits(model, t, "fp32", str(tmp_path / "a.bin"), kv="fp32")
        got = logits(model, t, "fp32", str(tmp_path / "b.bin"), kv="int8")
        check(ref, got, f"{name} {part}", "int8-kv")


@pytest.mark.parametrize("isa", ["avx2", "avxvnni", "portable"])
def test_int8_without_vnni(isa, tmp_path):
    """The int8 kernels of a CPU without AVX-512 VNNI (forced by GPT2_CPU_ISA): the AVX2 kernel's
    sums are exact, and so are those of the AVX-VNNI kernel (where the CPU has AVX-VNNI; else
    avxvnni runs the AVX2 one), so their logits are the default path's bits, decode rows and
    prompts alike; the portable loops give those bits for decode rows, and prompts there (weights
    widened for sgemm) keep int8's bounds."""
    model = os.path.join(MODELS, "odd-f32")  # tile and group tails
    toks = np.random.default_rng(9).integers(0, 300, 64).tolist()
    want = logits(model, toks[:8], "int8", str(tmp_path / "a.bin"))
    got = logits(model, toks[:8], "int8", str(tmp_path / "b.bin"), isa=isa)
    assert np.array_equal(want, got), f"{isa}: max diff {np.abs(want - got).max():.3g}"
    prompt = logits(model, toks, "int8", str(tmp_path / "d.bin"), isa=isa)
    if isa != "portable":
        want = logits(model, toks, "int8", str(tmp_path / "e.bin"))
        assert np.array_equal(want, prompt), f"{isa} prompt: max diff {np.abs(want - prompt).max():.3g}"
    ref = logits(model, toks, "fp32", str(tmp_path / "c.bin"))
    check(ref, prompt, f"odd-f32 ({isa})", "int8")


@pytest.mark.parametrize("isa", ["avx2", "portable"])
def test_int4_paths(isa, tmp_path):
    """int4's AVX2 kernel and its portable loops sum each group exactly in int32 and scale it
    as int8 does, and its AVX2 packer writes the portable packer's bytes: the same logits, bit
    for bit, for decode rows (8) on every path and for a prompt (64, tile and group tails) on
    AVX2; the portable path's prompt attention runs on sgemm, whose order of summing is its
    own, so there within rounding."""
    model = os.path.join(MODELS, "odd-f32")
    toks = np.random.default_rng(9).integers(0, 300, 64).tolist()
    for t in (toks[:8], toks):
        want = logits(model, t, "int4", str(tmp_path / "a.bin"))
        got = logits(model, t, "int4", str(tmp_path / "b.bin"), isa=isa)
        if isa == "portable" and len(t) > 8:
            rel = float((np.abs(want - got).max(1) / np.abs(want).max(1)).max())
            assert rel < 1e-5, f"portable prompt: max |diff| {rel:.3g} of max|logit|"
        else:
            assert np.array_equal(want, got), f"{isa}, {len(t)} rows: max diff {np.abs(want - got).max():.3g}"


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_float_avx2(dtype, tmp_path):
    """The AVX2 fp32 and bf16 kernels (forced by GPT2_CPU_ISA=avx2 where the CPU has AVX-512) sum
    each output in the generic kernel's order with the same fma: rows that stream the tiles give
    its bits, one row (its own one-pass kernel), 8 (two passes of half a tile) and 20 (8 at a
    time, a short prompt)."""
    model = os.path.join(MODELS, "odd-f32")
    toks = np.random.default_rng(10).integers(0, 300, 20).tolist()
    for n in (1, 8, 20):
        want = logits(model, toks[:n], dtype, str(tmp_path / "a.bin"), bf16="fp32")  # fp32 inputs, as there
        got = logits(model, toks[:n], dtype, str(tmp_path / "b.bin"), isa="avx2")
        assert np.array_equal(want, got), f"{dtype}, {n} rows: max diff {np.abs(want - got).max():.3g}"


def has_cpu_flag(flag):
    try:
        return flag in open("/proc/cpuinfo").read().split()
    except OSError:
        return False


def head64_model(tmp_path_factory, std):
    """GPT-2's head size (64), which the fixtures above lack: prompts of bf16 and int8 weights on
    AVX-512 BF16 take the bf16 weighted sum of values (forward.c, attn_block_task)."""
    d = tmp_path_factory.mktemp("head64")
    ck.write_checkpoint(d, ck.GPT2Shape(n_layer=2, n_embd=128, n_head=2, n_positions=640,
                                        vocab_size=512), dtype="f32", seed=3, std=std)
    return str(d)


@pytest.fixture(scope="module")
def head64(tmp_path_factory):
    """Weights large enough (std 0.2) for peaked attention, where rounding matters most (and
    too chaotic for the formats' bounds: int8 alone moves logits by 15% there)."""
    return head64_model(tmp_path_factory, 0.2)


@pytest.fixture(scope="module")
def head64_mild(tmp_path_factory):
    return head64_model(tmp_path_factory, 0.05)


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "int8", "int4"])
def test_prompt_qkv_in_attention_tasks(head64_mild, dtype, tmp_path):
    """A prompt's q, k, v computed head by head inside the attention tasks (64-float heads,
    packed products or fp32 panels) give the bits of the qkv product run as a pass of its own
    (GPT2_CPU_FUSE=0): 300 positions, two chunks, every logit."""
    # packed products: int8 on VNNI or AVX2; fp32 and bf16 on the AVX-512 panels (or
    # vdpbf16ps) or the AVX2 kernels
    if dtype != "int4" and not (has_cpu_flag("avx512_vnni" if dtype == "int8" else "avx512f") or
            all(has_cpu_flag(f) for f in ("avx2", "fma", "f16c"))):
        pytest.skip(f"{dtype} prompts: this CPU has neither AVX-512 nor AVX2 with FMA and F16C, "
                    "so their products are not packed and nothing is fused")
    toks = np.random.default_rng(5).integers(0, 512, 300).tolist()
    want = logits(head64_mild, toks, dtype, str(tmp_path / "a.bin"), fuse="0")
    got = logits(head64_mild, toks, dtype, str(tmp_path / "b.bin"))
    assert want.shape == got.shape == (300, 512)
    assert np.array_equal(want, got), f"max |diff| {np.abs(want - got).max()}"


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "int8", "int4"])
def test_last_layer_on_the_output_rows(head64_mild, dtype, tmp_path):
    """A prompt's last layer runs attention, its projection and the MLP on the rows that give
    logits alone (forward.c, last_layer): 300 positions in two chunks, the first giving none,
    so its last layer only stores keys and values, which the second chunk's rows attend to.
    The last row's logits against every row's (--all: the whole last layer, as the layers
    below), with the qkv product fused into the heads' tasks and as a pass of its own. The
    wanted row then takes decode's kernels: fp32 differs by rounding alone, bf16 by its prompts'
    bf16 activations (fp32 in decode's), bf16 and int8 by a prompt's bf16 weighted values. Without
    the first chunk's keys and values the second's logits move by far more (37-133%)."""
    toks = np.random.default_rng(6).integers(0, 512, 300).tolist()
    every = logits(head64_mild, toks, dtype, str(tmp_path / "a.bin"))
    bound = 1e-5 if dtype == "fp32" else 2e-2
    for fuse in (None, "0"):
        last = logits(head64_mild, toks, dtype, fuse=fuse)
        rel = float(np.abs(every[-1] - last[0]).max() / np.abs(every[-1]).max())
        print(f"{dtype} fuse={fuse or 'auto'}: max |diff| {rel:.2e} of max|logit|")
        assert rel <= bound, f"fuse={fuse}: {rel:.3g}"


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "int8", "int4"])
def test_prefetch_on_and_off(head64_mild, dtype, tmp_path):
    """The streaming kernels fetch weights ahead where GPT2_CPU_PREFETCH (or the CPU's vendor)
    says, the assembly ones past a branch: on or off, the same bits. 21 positions stream the
    tiles as decode does (int8 on AVX-512 VNNI: 3 x 6 rows and one call of 3), 300 take the
    prompt kernels (two chunks)."""
    for n in (21, 300):
        toks = np.random.default_rng(n).integers(0, 512, n).tolist()
        want = logits(head64_mild, toks, dtype, str(tmp_path / "a.bin"), prefetch="1")
        got = logits(head64_mild, toks, dtype, str(tmp_path / "b.bin"), prefetch="0")
        assert want.shape == got.shape == (n, 512)
        assert np.array_equal(want, got), f"{n} positions: max |diff| {np.abs(want - got).max()}"


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "int8", "int4"])
def test_short_prompts_stream(head64_mild, dtype, tmp_path):
    """Products of a few rows stream the packed tiles as decode does (forward.c, STREAM_ROWS),
    longer prompts take the prompt kernels (AVX-512 panels or AVX2's 6-row blocks, int8 tiles
    a task each), and a prompt block's attention pk_f32_product. All sum every output in input
    order with one fma each (int8: exact int32 groups), so a 20-token prompt gives the bits of
    the first 20 positions of a 40-token one."""
    if not (has_cpu_flag("avx512f") or has_cpu_flag("avx2")):
        pytest.skip("without AVX-512 or AVX2 a prompt block's attention runs on sgemm, which sums "
                    "in an order of its own: 20 and 40 tokens differ by rounding there (1e-6)")
    if dtype == "bf16" and has_cpu_flag("avx512_bf16"):
        # where vdpbf16ps wins the timing, prompts above 8 rows round their activations to bf16
        # on either route; force the fp32 route so the rows differ only in their products' route
        bf16 = "fp32"
    else:
        bf16 = None
    toks = np.random.default_rng(17).integers(0, 512, 40).tolist()
    want = logits(head64_mild, toks, dtype, str(tmp_path / "a.bin"), bf16=bf16)[:20]
    got = logits(head64_mild, toks[:20], dtype, str(tmp_path / "b.bin"), bf16=bf16)
    assert np.array_equal(want, got), f"max |diff| {np.abs(want - got).max()}"


def test_prompt_attention_in_bf16(head64, tmp_path):
    """601 positions: three prompt chunks of up to 256 rows, the later ones over the earlier
    ones' keys, in 64-row causal blocks, odd contexts included. fp32 weights with the bf16
    weighted values forced (GPT2_CPU_ATTN=bf16), so nothing else rounds, against fp32: every
    position within 1.5% of the row's largest logit (measured 0.64%, mean 0.28%)."""
    if not has_cpu_flag("avx512_bf16"):
        pytest.skip("bf16 prompt attention: this CPU has no AVX-512 BF16 (fp32 sgemm runs)")
    toks = np.random.default_rng(11).integers(0, 512, 601).tolist()
    want = logits(head64, toks, "fp32", str(tmp_path / "a.bin"))
    got = logits(head64, toks, "fp32", str(tmp_path / "b.bin"), attn="bf16")
    rel = np.abs(want - got).max(1) / np.abs(want).max(1)
    print(f"head64: bf16 against fp32 weighted values, max |diff| {rel.max() * 100:.2f}% "
          f"(mean {rel.mean() * 100:.3f}%)")
    assert rel.max() <= 0.015, f"max |diff| {rel.max():.4f} at position {int(rel.argmax())}"
    assert rel.mean() <= 0.006, f"mean |diff| {rel.mean():.4f}"


@pytest.mark.parametrize("route", ["dp", "fp32"])
def test_bf16_prompt_routes(head64_mild, route, tmp_path):
    """bf16 prompts take bf16 activations (vdpbf16ps) where that outruns fp32 fmas (timed at
    load), else fp32 ones against widened tiles; GPT2_CPU_BF16 forces either. Each keeps bf16's
    bounds against fp32 weights at every position of three prompt chunks, and the fp32 route
    is the closer one (only the weights round there)."""
    if route == "dp" and not has_cpu_flag("avx512_bf16"):
        pytest.skip("bf16 activations: this CPU has no AVX-512 BF16")
    toks = np.random.default_rng(13).integers(0, 512, 601).tolist()
    ref = logits(head64_mild, toks, "fp32", str(tmp_path / "a.bin"))
    got = logits(head64_mild, toks, "bf16", str(tmp_path / "b.bin"), bf16=route)
    check(ref, got, f"head64 bf16 prompts ({route})", "bf16")
    if route == "dp":
        fp = logits(head64_mild, toks, "bf16", str(tmp_path / "c.bin"), bf16="fp32")
        assert np.abs(fp - ref).mean() < np.abs(got - ref).mean()


@pytest.mark.parametrize("dtype", ["bf16", "int8", "int4"])
def test_head64_formats(head64_mild, dtype, tmp_path):
    """The formats' bounds where their prompts take the bf16 weighted values (on AVX-512 BF16)."""
    toks = np.random.default_rng(12).integers(0, 512, 601).tolist()
    ref = logits(head64_mild, toks, "fp32", str(tmp_path / "a.bin"))
    check(ref, logits(head64_mild, toks, dtype, str(tmp_path / "b.bin")), "head64 all positions",
          dtype)


@pytest.mark.parametrize("dtype", ["bf16", "int8", "int4"])
@pytest.mark.parametrize("name", NAMES)
def test_last_position(name, dtype):
    model = os.path.join(MODELS, name)
    cases = json.load(open(os.path.join(ROOT, "tests", "fixtures", "oracle", name + ".json")))["cases"]
    ref = np.concatenate([logits(model, c["tokens"], "fp32") for c in cases])
    got = np.concatenate([logits(model, c["tokens"], dtype) for c in cases])
    check(ref, got, f"{name} last positions", dtype)


@pytest.mark.parametrize("dtype", ["bf16", "int8", "int4"])
def test_completion_runs_and_is_reported(dtype):
    r = subprocess.run([GPT2, "complete", "--model", os.path.join(MODELS, "tiny-f32"), "--prompt",
                        "Hello world", "--cpu-dtype", dtype, "--device", "cpu", "--seed", "1",
                        "--stop", "none"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["device"] == f"cpu ({dtype})" and all(len(t) == 24 for t in out["tokens"])
    assert out["cpu_kernels"] in KERNELS, out
    # tiny-f32's heads are 8 wide: int8 keys and values only for 64 (test_auto_kv)
    assert out["cpu_kv"] == ("fp16" if has_cpu_flag("f16c") else "fp32"), out
    print(f"{dtype}: cpu kernels {out['cpu_kernels']}")


@pytest.mark.parametrize("dtype,kv", [("fp32", "auto"), ("bf16", "auto"), ("int8", "auto"),
                                      ("int4", "auto"), ("fp32", "int8"), ("int8", "int8"),
                                      ("int8", "fp32"), ("int4", "fp16")])
def test_auto_kv(head64_mild, dtype, kv):
    """`cpu_kv` names what the caches hold: --cpu-kv, or auto's choice (fp32 for fp32 weights;
    int8 for int8 and int4 weights with 64-float heads where decode reads them in place, on AVX-512 or
    AVX2 with FMA and F16C; else fp16 where the CPU converts half floats in hardware)."""
    r = subprocess.run([GPT2, "complete", "--model", head64_mild, "--tokens", "1,2,3", "--cpu-dtype",
                        dtype, "--cpu-kv", kv, "--device", "cpu", "--max-tokens", "4"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    half = "fp16" if has_cpu_flag("f16c") else "fp32"
    want = kv if kv != "auto" else "fp32" if dtype == "fp32" else \
        "int8" if dtype in ("int8", "int4") and (has_cpu_flag("avx512f") or all(
            has_cpu_flag(f) for f in ("avx2", "fma", "f16c"))) else half
    assert json.loads(r.stdout)["cpu_kv"] == want


def test_int8_kv_head64(head64_mild, tmp_path):
    """int8 keys and values of 64-float heads (read in place by decode's AVX-512 kernel) against
    fp32 ones, fp32 weights: 601 positions of a prompt, and 8 rows (decode's attention); and
    int8 weights with them keep int8's bounds."""
    toks = np.random.default_rng(13).integers(0, 512, 601).tolist()
    for part, t in (("all positions", toks), ("8 rows", toks[:8])):
        ref = logits(head64_mild, t, "fp32", str(tmp_path / "a.bin"), kv="fp32")
        got = logits(head64_mild, t, "fp32", str(tmp_path / "b.bin"), kv="int8")
        check(ref, got, f"head64 {part}", "int8-kv")
        got = logits(head64_mild, t, "int8", str(tmp_path / "c.bin"), kv="int8")
        check(ref, got, f"head64 {part}, int8 weights", "int8")


KERNELS = {"amx-int8", "amx-bf16", "avx512-vnni", "avx512-bf16", "avx512", "avx-vnni", "avx2", "portable"}


def cpu_flags():
    with open("/proc/cpuinfo") as f:
        return next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])


@pytest.mark.parametrize("isa", [None, "avx2", "avxvnni", "portable"])
@pytest.mark.parametrize("dtype", ["fp32", "bf16", "int8", "int4"])
def test_cpu_kernels_are_reported(dtype, isa):
    """`cpu_kernels` names the path the products take: what GPT2_CPU_ISA forces, else what
    the CPU offers for the format (AMX only for bf16 and int8, VNNI only for int8; int4 has
    its AVX2 kernel wherever AVX2 is)."""
    env = dict(os.environ)
    env.pop("GPT2_CPU_AMX", None)
    if isa:
        env["GPT2_CPU_ISA"] = isa
    r = subprocess.run([GPT2, "complete", "--model", os.path.join(MODELS, "tiny-f32"), "--prompt", "Hello",
                        "--cpu-dtype", dtype, "--device", "cpu", "--max-tokens", "2"],
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)["cpu_kernels"]
    flags = cpu_flags()
    if isa == "portable":
        assert got == "portable"
    elif dtype == "int4":
        assert got == ("avx2" if all(f in flags for f in ("avx2", "fma", "f16c")) else "portable")
    elif isa == "avx2":
        assert got == ("avx2" if "avx2" in flags else "portable")
    elif isa == "avxvnni":
        assert got == ("portable" if "avx2" not in flags
                       else "avx-vnni" if dtype == "int8" and "avx_vnni" in flags else "avx2")
    elif "amx_tile" in flags and dtype != "fp32" and got.startswith("amx"):
        assert got == "amx-" + dtype
    elif "avx512f" in flags:
        want = {"fp32": {"avx512"}, "bf16": {"avx512", "avx512-bf16"},
                "int8": {"avx512-vnni"} if "avx512_vnni" in flags else {"avx512"}}[dtype]
        assert got in want, got
    else:
        assert got == ("portable" if "avx2" not in flags
                       else "avx-vnni" if dtype == "int8" and "avx_vnni" in flags else "avx2")


@pytest.mark.parametrize("opt,val", [("--cpu-dtype", "int2"), ("--cpu-kv", "int4")])
def test_bad_cpu_option_is_a_usage_error(opt, val):
    r = subprocess.run([GPT2, "complete", "--model", os.path.join(MODELS, "tiny-f32"), "--prompt",
                        "hi", opt, val], capture_output=True, text=True)
    assert r.returncode == 2 and opt in r.stderr
