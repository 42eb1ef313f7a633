"""The CPU head's int8 screen (native/cpu/topk.h) through the real helper.

With fp32 or bf16 weights and the head tied to the embedding, a decode step
that samples from the top_k best logits (top_k 1..256, greedy counting as 1)
computes exact logits only for the columns an int8 copy of the head cannot
rule out, with the product the whole head uses. Its k best are the whole
head's bit for bit, so every continuation must be the one GPT2_CPU_SCREEN=0
(every logit, every step) gives: the CLI over seeds, top_k and n, and
`gpt2 serve`, whose status counts the rows the screen served
(head_screened_rows) and those it left to the whole head
(head_fallback_rows). int8 weights and top_k 0 (every token) never screen.
"""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
from test_serve import Helper  # noqa: E402

GPT2 = os.environ.get("GPT2_BIN", os.path.join(ROOT, "build", "gpt2"))
PY = "/usr/bin/python3"
PROMPT = "464,2068,7586,21831,18045,625,262,16931,3290,13,632,373"

pytestmark = pytest.mark.skipif(not os.path.exists(GPT2), reason=f"{GPT2} is not built (make)")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A random tied checkpoint, 4 layers of 128 with GPT-2's vocabulary (50257 columns)."""
    out = str(tmp_path_factory.mktemp("topk") / "m")
    r = subprocess.run([PY, os.path.join(ROOT, "tests", "tools", "checkpoint.py"), "--out", out,
                        "--layers", "4", "--embd", "128", "--heads", "4", "--positions", "256",
                        "--seed", "7", "--std", "0.08", "-q"], capture_output=True, timeout=300)
    assert r.returncode == 0, r.stderr.decode()
    return out


def complete(model, dtype, screen, seed, top_k, n=3, temperature=0.8):
    env = dict(os.environ, GPT2_CPU_SCREEN=screen)
    r = subprocess.run([GPT2, "complete", "--model", model, "--tokens", PROMPT, "-n", str(n),
                        "--max-tokens", "24", "--stop", "none", "--seed", str(seed),
                        "--top-k", str(top_k), "--temperature", str(temperature),
                        "--device", "cpu", "--cpu-dtype", dtype],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["tokens"]


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_cli_continuations_match_every_logit(model, dtype):
    cases = [(seed, 40, 3, 0.8) for seed in range(4)]
    cases += [(5, 1, 3, 0.8), (6, 256, 2, 1.0), (7, 40, 8, 1.5), (8, 257, 3, 0.8),
              (9, 0, 3, 0.8), (10, 40, 1, 0.0)]
    for seed, top_k, n, temp in cases:
        want = complete(model, dtype, "0", seed, top_k, n, temp)
        got = complete(model, dtype, "1", seed, top_k, n, temp)
        assert got == want, f"{dtype} seed {seed} top_k {top_k} n {n} temperature {temp}"


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "int8"])
def test_serve_counts_screened_rows(model, dtype):
    results, stats = {}, {}
    for screen in ("0", "1"):
        os.environ["GPT2_CPU_SCREEN"] = screen
        try:
            h = Helper((model,), ["--cpu-dtype", dtype])
        finally:
            del os.environ["GPT2_CPU_SCREEN"]
        try:
            results[screen] = [h.complete(text="The quick brown fox", n=3, max_tokens=24,
                                          stop="none", seed=s, top_k=k)["suggestions"]
                               for s, k in ((1, 40), (2, 40), (3, 1), (4, 0))]
            m = h.ok("status")["models"][0]
            stats[screen] = (m["head_screened_rows"], m["head_fallback_rows"])
            assert m["cpu_kernels"] and isinstance(m["cpu_kernels"], str), m
            assert m["cpu_kv"] in ("fp32", "fp16", "int8"), m
        finally:
            h.close_stdin()
            assert h.wait_exit() == 0, h.describe()
    print(f"{dtype}: screened rows {stats['1'][0]}, past the screen {stats['1'][1]}")
    assert results["1"] == results["0"]
    assert stats["0"] == (0, 0), "GPT2_CPU_SCREEN=0 turns the screen off"
    if dtype == "int8":
        assert stats["1"] == (0, 0), "int8 heads are read whole"
    else:
        # three requests of top_k <= 256: a first token and 23 steps of 3 rows each; top_k 0 none
        assert sum(stats["1"]) == 3 * (1 + 23 * 3), stats["1"]
        assert stats["1"][0] >= sum(stats["1"]) // 2, stats["1"]
