"""Compare the C helper build/gpt2 against Hugging Face transformers fixtures.

Run:  /usr/bin/python3 -m pytest tests/test_oracle.py        (numpy + stdlib only)

The binary is $GPT2_BIN, or <repo>/build/gpt2.  The fixtures in tests/fixtures/ are made by
tests/oracle/make_fixtures.py (which needs torch + transformers; these tests do not):

  tests/fixtures/tokenizer.json          {"cases": [{"text", "ids"}]}
  tests/fixtures/models/<name>/          random GPT-2 checkpoints (safetensors)
  tests/fixtures/oracle/<name>.json      per model: cases with prompt "tokens", last-position
                                         "logits" (float32), "greedy" (16 new ids, or null),
                                         "greedy_margins" (top1 - top2 at each greedy step)

CLI contract exercised here:
  gpt2 tokenize --model DIR            text on stdin -> one JSON array of ids on stdout
  gpt2 logits   --model DIR --tokens 1,2,3
                                       -> one JSON array of vocab_size numbers (last position)
  gpt2 complete --model DIR --tokens IDS -n N --max-tokens M --temperature T
                [--top-k K] [--seed S] --stop none
                                       -> JSON object with "suggestions" (N strings) and
                                          "tokens" (N arrays of new ids; 50256 ends a
                                          suggestion and is not included)
  errors: non-zero exit status, a message on stderr, nothing on stdout.
"""

import functools
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures"
MODELS = FIX / "models"
ORACLE = FIX / "oracle"
BIN = Path(os.environ.get("GPT2_BIN") or (ROOT / "build" / "gpt2"))

EOT = 50256
LOGIT_RTOL = 1e-4          # max|c - ref| <= LOGIT_RTOL * max|ref|
TIMEOUT = 120


# ----------------------------------------------------------------------------- fixtures

def _load_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


TOKENIZER_CASES = _load_json(FIX / "tokenizer.json")["cases"]
ORACLES = {p.stem: _load_json(p) for p in sorted(ORACLE.glob("*.json"))}
MODEL_NAMES = sorted(ORACLES)


def _model_dir(name):
    return str(MODELS / name)


def _slug(text, n=24):
    s = "".join(c if (c.isascii() and c.isalnum()) else "_" for c in text[:n])
    return s or "empty"


def _all_cases(pred=lambda c: True):
    out = []
    for name in MODEL_NAMES:
        for i, case in enumerate(ORACLES[name]["cases"]):
            if pred(case):
                label = case.get("label", "case%d" % i)
                out.append(pytest.param(name, i, id="%s-%d-len%d-%s"
                                        % (name, i, len(case["tokens"]), _slug(label, 12))))
    return out


# ----------------------------------------------------------------------------- running

class Result:
    def __init__(self, argv, stdin, rc, stdout, stderr):
        self.argv, self.stdin, self.rc, self.stdout, self.stderr = argv, stdin, rc, stdout, stderr

    def describe(self, limit=2000):
        def clip(b):
            s = b.decode("utf-8", errors="replace")
            return s if len(s) <= limit else s[:limit] + "... [%d bytes total]" % len(b)
        cmd = " ".join(self.argv)
        if len(cmd) > 400:
            cmd = cmd[:400] + "..."
        return ("command: %s\nstdin: %r\nexit status: %s\nstdout: %s\nstderr: %s"
                % (cmd, self.stdin[:200], self.rc, clip(self.stdout), clip(self.stderr)))


def _require_binary():
    if not BIN.is_file() or not os.access(BIN, os.X_OK):
        pytest.fail("gpt2 binary not found or not executable: %s (build it with `make`, or "
                    "set GPT2_BIN)" % BIN, pytrace=False)


def _run_uncached(args, stdin=b""):
    _require_binary()
    argv = [str(BIN)] + list(args)
    try:
        p = subprocess.run(argv, input=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           timeout=TIMEOUT, cwd=str(ROOT))
    except subprocess.TimeoutExpired as e:
        pytest.fail("timed out after %ss: %s\nstderr so far: %r"
                    % (TIMEOUT, " ".join(argv)[:400], (e.stderr or b"")[-2000:]), pytrace=False)
    return Result(argv, stdin, p.returncode, p.stdout, p.stderr)


@functools.lru_cache(maxsize=None)
def _run_cached(args, stdin):
    return _run_uncached(args, stdin)


def run(*args, stdin=b"", cache=True):
    args = tuple(str(a) for a in args)
    return _run_cached(args, stdin) if cache else _run_uncached(args, stdin)


def run_json(*args, stdin=b"", cache=True):
    """Run, require exit 0 and exactly one JSON value on stdout; return (value, Result)."""
    r = run(*args, stdin=stdin, cache=cache)
    if r.rc != 0:
        pytest.fail("gpt2 failed\n" + r.describe(), pytrace=False)
    try:
        val = json.loads(r.stdout.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        pytest.fail("stdout is not a single JSON value (%s)\n%s" % (e, r.describe()),
                    pytrace=False)
    return val, r


def tokens_arg(tokens):
    return ",".join(str(int(t)) for t in tokens)


def expected_greedy(case):
    g = case["greedy"]
    return g[:g.index(EOT)] if EOT in g else list(g)


def complete_json(model, tokens, *extra, n=3, max_tokens=16, cache=True):
    val, r = run_json("complete", "--model", _model_dir(model), "--tokens", tokens_arg(tokens),
                      "-n", n, "--max-tokens", max_tokens, "--stop", "none", *extra, cache=cache)
    problems = []
    if not isinstance(val, dict):
        problems.append("output is not a JSON object")
    else:
        for key in ("suggestions", "tokens"):
            if not isinstance(val.get(key), list) or len(val[key]) != n:
                problems.append("%r must be a list of %d entries" % (key, n))
        if not problems:
            if not all(isinstance(s, str) for s in val["suggestions"]):
                problems.append("'suggestions' must hold strings")
            if not all(isinstance(t, list) and all(isinstance(x, int) for x in t)
                       for t in val["tokens"]):
                problems.append("'tokens' must hold arrays of integers")
    if problems:
        pytest.fail("bad `complete` output: %s\n%s" % ("; ".join(problems), r.describe()),
                    pytrace=False)
    return val, r


def diverge_msg(got, want, case):
    k = next((i for i in range(min(len(got), len(want))) if got[i] != want[i]),
             min(len(got), len(want)))
    margins = case.get("greedy_margins") or []
    m = (" (oracle top1-top2 margin at that step: %.4g)" % margins[k]) if k < len(margins) else ""
    return ("first difference at generated position %d%s\n  got:      %s\n  expected: %s"
            % (k, m, got, want))


# ----------------------------------------------------------------------------- tokenizer

@pytest.mark.parametrize(
    "idx", [pytest.param(i, id="tok%02d-%s" % (i, _slug(c["text"])))
            for i, c in enumerate(TOKENIZER_CASES)])
def test_tokenize(idx):
    case = TOKENIZER_CASES[idx]
    text, want = case["text"], case["ids"]
    got, r = run_json("tokenize", "--model", _model_dir("tiny-f32"),
                      stdin=text.encode("utf-8"))
    if got != want:
        k = next((i for i in range(min(len(got), len(want))) if got[i] != want[i]),
                 min(len(got), len(want))) if isinstance(got, list) else 0
        pytest.fail("tokenize mismatch for %r\n  first difference at index %d\n"
                    "  got:      %s\n  expected: %s\n%s"
                    % (text, k, got, want, r.describe(limit=500)), pytrace=False)


# ----------------------------------------------------------------------------- logits

@pytest.mark.parametrize("model,ci", _all_cases())
def test_logits(model, ci):
    case = ORACLES[model]["cases"][ci]
    vocab = ORACLES[model]["config"]["vocab_size"]
    ref = np.asarray(case["logits"], dtype=np.float64)
    val, r = run_json("logits", "--model", _model_dir(model), "--tokens", tokens_arg(case["tokens"]))
    if not isinstance(val, list) or len(val) != vocab:
        pytest.fail("expected a JSON array of %d numbers, got %s of length %s\n%s"
                    % (vocab, type(val).__name__, len(val) if hasattr(val, "__len__") else "-",
                       r.describe(limit=300)), pytrace=False)
    try:
        got = np.asarray(val, dtype=np.float64)
    except (TypeError, ValueError) as e:
        pytest.fail("non-numeric logits: %s" % e, pytrace=False)
    assert np.all(np.isfinite(got)), "non-finite logits at %s" % np.flatnonzero(~np.isfinite(got))[:10]
    err = np.abs(got - ref)
    scale = float(np.max(np.abs(ref)))
    tol = LOGIT_RTOL * scale
    worst = int(np.argmax(err))
    ga, ra = int(np.argmax(got)), int(np.argmax(ref))
    if err[worst] > tol:
        top = np.argsort(-err)[:5]
        rows = "\n".join("    [%6d] got % .8g  ref % .8g  |diff| %.3g" % (i, got[i], ref[i], err[i])
                         for i in top)
        pytest.fail(
            "%s case %d (%d tokens): max|c-ref| = %.4g > tol %.4g (= %g * max|ref| %.4g)\n"
            "  worst index %d: got %.8g ref %.8g; %d of %d entries over tol\n"
            "  argmax got %d ref %d; mean|diff| %.3g\n  top-5 mismatches:\n%s"
            % (model, ci, len(case["tokens"]), err[worst], tol, LOGIT_RTOL, scale, worst,
               got[worst], ref[worst], int(np.sum(err > tol)), vocab, ga, ra,
               float(np.mean(err)), rows), pytrace=False)
    assert ga == ra, ("argmax differs: got %d (%.8g) ref %d (%.8g); oracle margin %.4g"
                      % (ga, got[ga], ra, ref[ra], case.get("logits_margin", float("nan"))))


# ----------------------------------------------------------------------------- greedy

GREEDY_CASES = _all_cases(lambda c: c.get("greedy") is not None)


def _check_greedy(model, ci, *extra):
    case = ORACLES[model]["cases"][ci]
    want = expected_greedy(case)
    val, r = complete_json(model, case["tokens"], *extra)
    bad = [i for i, t in enumerate(val["tokens"]) if t != want]
    if bad:
        pytest.fail("%s case %d: suggestion(s) %s differ from the greedy oracle\n%s\n%s"
                    % (model, ci, bad, diverge_msg(val["tokens"][bad[0]], want, case),
                       r.describe(limit=600)), pytrace=False)
    return case, val, r


@pytest.mark.parametrize("model,ci", GREEDY_CASES)
def test_greedy_temperature0(model, ci):
    _check_greedy(model, ci, "--temperature", "0")


@pytest.mark.parametrize("model,ci", GREEDY_CASES)
def test_greedy_half_kv(model, ci):
    """fp16 keys and values (fp32 weights) keep the greedy continuations."""
    _check_greedy(model, ci, "--temperature", "0", "--device", "cpu", "--cpu-kv", "fp16")


@pytest.mark.parametrize("model,ci", GREEDY_CASES)
def test_greedy_topk1(model, ci):
    _check_greedy(model, ci, "--top-k", "1", "--temperature", "0.8")


@pytest.mark.parametrize(
    "model,ci", _all_cases(lambda c: c.get("greedy") is not None and c.get("greedy_text_utf8_ok")))
def test_greedy_suggestion_text(model, ci):
    """With --stop none a suggestion is the UTF-8 decoding of its tokens (HF decode)."""
    case, val, r = _check_greedy(model, ci, "--temperature", "0")
    for i, s in enumerate(val["suggestions"]):
        assert s == case["greedy_text"], ("suggestion %d text %r != decoded oracle tokens %r"
                                          % (i, s, case["greedy_text"]))


# ----------------------------------------------------------------------------- sampling

SAMPLE_MODEL = "tiny-f32"


def _sample_prompt():
    return ORACLES[SAMPLE_MODEL]["cases"][1]["tokens"]


def _sample(seed, cache=False):
    return complete_json(SAMPLE_MODEL, _sample_prompt(), "--temperature", "1.0",
                         "--seed", seed, cache=cache)


def test_sampling_same_seed_is_deterministic():
    # compares what is sampled, not the whole object (it may carry timings)
    a, ra = _sample(42)
    b, rb = _sample(42)
    same = (a["tokens"], a["suggestions"]) == (b["tokens"], b["suggestions"])
    assert same, ("same --seed gave different samples:\n--- run 1\n%s\n--- run 2\n%s"
                  % (ra.describe(), rb.describe()))


def test_sampling_output_is_well_formed():
    val, r = _sample(42, cache=True)
    vocab = ORACLES[SAMPLE_MODEL]["config"]["vocab_size"]
    for i, t in enumerate(val["tokens"]):
        assert len(t) <= 16, "suggestion %d has %d > 16 tokens\n%s" % (i, len(t), r.describe())
        assert EOT not in t, "suggestion %d contains end-of-text\n%s" % (i, r.describe())
        assert all(0 <= x < vocab for x in t), "suggestion %d has ids out of range\n%s" % (
            i, r.describe())


def test_sampling_suggestions_differ():
    val, r = _sample(42, cache=True)
    toks = [tuple(t) for t in val["tokens"]]
    assert len(set(toks)) > 1, ("3 samples at temperature 1.0 on a random model are all "
                                "identical (is sampling really random per suggestion?)\n"
                                + r.describe())


def test_sampling_different_seeds_differ():
    a, ra = _sample(42, cache=True)
    b, rb = _sample(4242, cache=True)
    assert a["tokens"] != b["tokens"], ("seeds 42 and 4242 gave identical samples\n%s\n%s"
                                        % (ra.describe(), rb.describe()))


# ----------------------------------------------------------------------------- CLI errors

def _error_cases():
    tiny, odd = _model_dir("tiny-f32"), _model_dir("odd-f32")
    n_pos = ORACLES["tiny-f32"]["config"]["n_positions"]
    return [
        pytest.param(("logits", "--model", tiny, "--tokens", "1,2", "--no-such-flag"),
                     id="unknown-flag"),
        pytest.param(("complete", "--model", tiny, "--tokens", "1,2", "--no-such-flag", "3"),
                     id="unknown-flag-complete"),
        pytest.param(("logits", "--tokens", "1,2"), id="missing-model"),
        pytest.param(("complete", "--tokens", "1,2", "--temperature", "0"),
                     id="missing-model-complete"),
        pytest.param(("logits", "--model", str(MODELS / "does-not-exist"), "--tokens", "1"),
                     id="nonexistent-model-dir"),
        pytest.param(("logits", "--model", tiny, "--tokens", "1,50257"), id="token-eq-vocab"),
        pytest.param(("logits", "--model", tiny, "--tokens", "1,99999"), id="token-gt-vocab"),
        pytest.param(("logits", "--model", odd, "--tokens", "5,1000"),
                     id="token-ge-model-vocab-1000"),
        pytest.param(("logits", "--model", tiny, "--tokens", tokens_arg([11] * (n_pos + 1))),
                     id="tokens-gt-n_positions"),
    ]


@pytest.mark.parametrize("args", _error_cases())
def test_cli_error(args):
    r = run(*args)
    problems = []
    if r.rc == 0:
        problems.append("exit status 0")
    elif r.rc < 0:
        problems.append("killed by signal %d (crash, not a clean error)" % -r.rc)
    if not r.stderr.strip():
        problems.append("no message on stderr")
    if r.stdout:
        problems.append("stdout not empty")
    assert not problems, "; ".join(problems) + "\n" + r.describe(limit=500)

