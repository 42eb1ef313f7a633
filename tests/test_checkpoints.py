"""Checkpoint loading: corrupt files must fail cleanly, valid variants must load.

Every case writes a fresh small random GPT-2 checkpoint (Hugging Face layout)
into tmp_path with tests/tools/checkpoint.py, damages it, and runs

    build/gpt2 logits --model DIR --tokens 1,2,3

A damaged checkpoint must give exit code 1 (not a signal), nothing on stdout,
and exactly one line on stderr naming the file and the problem.  Valid
variants (no "transformer." prefix, mask buffers, F16, BF16, tied lm_head,
other file orders) must print a JSON array of vocab_size logits.

The binary is $GPT2_BIN or <repo>/build/gpt2; the tests skip when it is absent.
Only the standard library, numpy and pytest are used.
"""

from __future__ import annotations

import functools
import json
import math
import os
import struct
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "tools"))
import checkpoint as ck  # noqa: E402

BIN = Path(os.environ.get("GPT2_BIN", str(ROOT / "build" / "gpt2")))
CFG = ck.GPT2Shape(n_layer=2, n_embd=16, n_head=2, n_positions=32, vocab_size=50257)
TOKENS = [1, 2, 3]
SEED = 1
TIMEOUT = 120
ST = "model.safetensors"
P = "transformer."

pytestmark = pytest.mark.skipif(
    not (BIN.is_file() and os.access(BIN, os.X_OK)),
    reason=f"{BIN} not built (set GPT2_BIN or run make)")


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _base_tensors(dtype: str, prefix: bool, mask: bool, lm_head: bool, order: str, std: float):
    return ck.gpt2_tensors(CFG, dtype=dtype, seed=SEED, std=std, prefix=prefix, mask_buffers=mask,
                           lm_head=lm_head, order=order)


def make_ckpt(tmp_path: Path, name: str = "ckpt", dtype: str = "f32", prefix: bool = True,
              mask: bool = False, lm_head: bool = False, order: str = "sorted",
              metadata: Optional[dict] = ck.DEFAULT_METADATA, std: float = 0.02) -> Path:
    d = tmp_path / name
    d.mkdir(parents=True)
    ck.write_safetensors(d / ST, dict(_base_tensors(dtype, prefix, mask, lm_head, order, std)),
                         metadata)
    ck.write_config(d, CFG)
    ck.install_tokenizer(d, "symlink")
    return d


def run_gpt2(d: Path, tokens: Sequence[int] = TOKENS):
    cmd = [str(BIN), "logits", "--model", str(d), "--tokens", ",".join(map(str, tokens))]
    try:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"timed out after {TIMEOUT} s: {' '.join(cmd)}\n"
                    f"stderr: {(e.stderr or b'')[-2000:]!r}")
    return cmd, proc


def describe(cmd, proc) -> str:
    out = proc.stdout.decode("utf-8", "replace")
    err = proc.stderr.decode("utf-8", "replace")
    rc = proc.returncode
    sig = f" (signal {-rc})" if rc < 0 else ""
    return (f"\ncommand: {' '.join(cmd)}\nexit code: {rc}{sig}\n"
            f"stdout ({len(out)} chars), head: {out[:400]!r}\nstderr: {err[-3000:]!r}")


def load(d: Path):
    return ck.read_safetensors(d / ST)


def save(d: Path, header, data: bytes = b"", **kw) -> None:
    ck.write_raw(d / ST, header, data, **kw)


def tensors(d: Path) -> Dict[str, ck.Tensor]:
    """Tensors of the checkpoint in data order."""
    return ck.tensors_from_file(*load(d))


def save_tensors(d: Path, ts: Dict[str, ck.Tensor], **kw) -> None:
    header, data = ck.build_file(ts, **kw)
    save(d, header, data)


def edit_config(d: Path, **changes) -> None:
    cfg = json.loads((d / "config.json").read_text())
    for k, v in changes.items():
        if v is DELETE:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    (d / "config.json").write_text(json.dumps(cfg, indent=2))


DELETE = object()


def quoted(*names: str) -> List[str]:
    return [f"'{n}'" for n in names]


# --------------------------------------------------------------------------
# damaged checkpoints
# --------------------------------------------------------------------------

@dataclass
class Bad:
    id: str
    mutate: Callable[[Path], None]
    expect: Sequence[str] = ()          # every one must appear
    file: str = ST                       # must appear too
    any_of: Sequence[str] = ()           # at least one must appear (tensor names)
    ckpt: dict = field(default_factory=dict)


def _blob(d: Path) -> bytes:
    return (d / ST).read_bytes()


def m_write(data: bytes):
    def f(d: Path):
        (d / ST).write_bytes(data)
    return f


def m_header_len(n: int):
    def f(d: Path):
        b = _blob(d)
        (d / ST).write_bytes(struct.pack("<Q", n) + b[8:])
    return f


def m_header_len_past_end(extra: int):
    def f(d: Path):
        b = _blob(d)
        (d / ST).write_bytes(struct.pack("<Q", len(b) - 8 + extra) + b[8:])
    return f


def m_raw_header(text: bytes, pad: bool = True, keep_data: bool = True):
    def f(d: Path):
        _, data = load(d)
        save(d, text, data if keep_data else b"", pad=pad)
    return f


def m_header_bytes_replace(old: bytes, new: bytes):
    """Replace bytes inside the real header JSON (re-padded, data kept)."""
    def f(d: Path):
        header, data = load(d)
        raw = ck.encode_header(header, pad=False)
        assert old in raw, (old, raw[:200])
        save(d, raw.replace(old, new, 1), data)
    return f


def m_entry(name: str, fn: Callable[[dict], object]):
    """Edit the header entry of one tensor in place (data unchanged)."""
    def f(d: Path):
        header, data = load(d)
        r = fn(header[name])
        if r is not None:
            header[name] = r
        save(d, header, data)
    return f


def m_del_key(name: str, key: str):
    return m_entry(name, lambda e: e.pop(key) and None)


def m_set_key(name: str, key: str, value):
    def fn(e):
        e[key] = value
    return m_entry(name, fn)


def m_overlap_alias(name: str, onto: str):
    """`name` points at exactly the bytes of `onto`; its own bytes are dropped,
    so nothing else is wrong (no gap, no trailing bytes)."""
    def f(d: Path):
        ts = tensors(d)
        assert len(ts[name].data) == len(ts[onto].data)
        moved = ts.pop(name)
        header, data = ck.build_file(ts)
        header[name] = {"dtype": moved.dtype, "shape": list(moved.shape),
                        "data_offsets": list(header[onto]["data_offsets"])}
        save(d, header, data)
    return f


def m_overlap_partial(name: str, first: str, second: str):
    """`name` straddles the second half of `first` and the first half of the
    adjacent `second` (all three the same size)."""
    def f(d: Path):
        ts = tensors(d)
        moved = ts.pop(name)
        header, data = ck.build_file(ts)
        b1, e1 = header[first]["data_offsets"]
        b2, e2 = header[second]["data_offsets"]
        n = len(moved.data)
        assert e1 == b2 and e1 - b1 == n == e2 - b2
        header[name] = {"dtype": moved.dtype, "shape": list(moved.shape),
                        "data_offsets": [b1 + n // 2, b1 + n // 2 + n]}
        save(d, header, data)
    return f


def m_move_last_out_of_range(begin: int):
    """Point the last tensor (in data order) at [begin, begin+size] and drop its
    bytes, so the rest stays contiguous and complete."""
    def f(d: Path):
        ts = tensors(d)
        name = list(ts)[-1]
        moved = ts.pop(name)
        header, data = ck.build_file(ts)
        header[name] = {"dtype": moved.dtype, "shape": list(moved.shape),
                        "data_offsets": [begin, begin + len(moved.data)]}
        save(d, header, data)
    return f


def m_reverse(name: str):
    def fn(e):
        e["data_offsets"] = list(reversed(e["data_offsets"]))
    return m_entry(name, fn)


def m_truncate(cut: Optional[int]):
    """Cut `cut` bytes off the end (None: keep only the header)."""
    def f(d: Path):
        b = _blob(d)
        if cut is None:
            (n,) = struct.unpack("<Q", b[:8])
            b = b[:8 + n]
        else:
            b = b[:-cut]
        (d / ST).write_bytes(b)
    return f


def m_append(n: int):
    def f(d: Path):
        with open(d / ST, "ab") as fh:
            fh.write(b"\0" * n)
    return f


def m_gap(which: int, n: int):
    """n zero bytes before the which-th tensor in data order."""
    def f(d: Path):
        ts = tensors(d)
        save_tensors(d, ts, gap_before={list(ts)[which]: n})
    return f


def m_duplicate(name: str):
    def f(d: Path):
        header, data = load(d)
        pairs = []
        for k, v in header.items():
            pairs.append((k, v))
            if k == name:
                pairs.append((k, v))
        save(d, ck.encode_header_pairs(pairs), data)
    return f


def m_drop(name: str):
    def f(d: Path):
        ts = tensors(d)
        del ts[name]
        save_tensors(d, ts)
    return f


def m_reshape(name: str, shape: Sequence[int], nbytes: Optional[int] = None):
    """Give a tensor another shape; its bytes are cut to fit (nbytes) so the
    file stays consistent."""
    def f(d: Path):
        ts = tensors(d)
        t = ts[name]
        n = len(t.data) if nbytes is None else nbytes
        ts[name] = ck.Tensor(t.dtype, tuple(shape), t.data[:n])
        save_tensors(d, ts)
    return f


def m_unlink(fname: str):
    def f(d: Path):
        (d / fname).unlink()
    return f


def m_config_text(text: str):
    def f(d: Path):
        (d / "config.json").write_text(text)
    return f


def m_config(**changes):
    def f(d: Path):
        edit_config(d, **changes)
    return f


def m_config_raw_value(key: str, literal: str):
    """Set a config key to a raw JSON literal (e.g. 1e9)."""
    def f(d: Path):
        cfg = json.loads((d / "config.json").read_text())
        cfg[key] = "@@VALUE@@"
        text = json.dumps(cfg, indent=2).replace('"@@VALUE@@"', literal)
        (d / "config.json").write_text(text)
    return f


C = CFG.n_embd
WPE, WTE = P + "wpe.weight", P + "wte.weight"
F32 = 4

BAD: List[Bad] = [
    # --- the 8-byte length prefix
    Bad("too_short_empty", m_write(b""), ["too short"]),
    Bad("too_short_7_bytes", m_write(b"\x10\x00\x00\x00\x00\x00\x00"), ["too short"]),
    Bad("header_len_over_limit", m_header_len(100_000_001), ["exceeds the 100 MB limit"]),
    Bad("header_len_2pow63", m_header_len(2 ** 63), ["exceeds the 100 MB limit"]),
    Bad("header_len_max_u64", m_header_len(2 ** 64 - 1), ["exceeds the 100 MB limit"]),
    Bad("header_len_at_limit_past_end", m_header_len(100_000_000),
        ["runs past the end of the file"]),
    Bad("header_len_past_end_by_1", m_header_len_past_end(1), ["runs past the end of the file"]),
    # --- header text
    Bad("header_invalid_utf8_ff", m_header_bytes_replace(b'"pt"', b'"p\xfft"'), ["not valid UTF-8"]),
    Bad("header_invalid_utf8_cut_sequence", m_header_bytes_replace(b'"pt"', b'"pt\xc3"'),
        ["not valid UTF-8"]),
    Bad("header_invalid_utf8_overlong", m_header_bytes_replace(b'"pt"', b'"p\xc0\xaft"'),
        ["not valid UTF-8"]),
    Bad("header_invalid_utf8_surrogate", m_header_bytes_replace(b'"pt"', b'"p\xed\xa0\x80t"'),
        ["not valid UTF-8"]),
    Bad("header_json_truncated", m_raw_header(b'{"a": '), ["not valid JSON"]),
    Bad("header_json_missing_brace", m_header_bytes_replace(b"]}}", b"]}"), ["not valid JSON"]),
    Bad("header_json_trailing_garbage", m_header_bytes_replace(b"]}}", b"]}} x"),
        ["not valid JSON"]),
    Bad("header_json_empty", m_raw_header(b"        "), ["not valid JSON"]),
    Bad("header_not_object_array", m_raw_header(b"[]"), ["malformed"]),
    Bad("header_not_object_string", m_raw_header(b'"abc"'), ["malformed"]),
    Bad("entry_not_object", m_entry(WPE, lambda e: 5), ["malformed"], any_of=quoted(WPE)),
    Bad("entry_missing_dtype", m_del_key(WPE, "dtype"), ["malformed"], any_of=quoted(WPE)),
    Bad("entry_missing_shape", m_del_key(WPE, "shape"), ["malformed"], any_of=quoted(WPE)),
    Bad("entry_missing_data_offsets", m_del_key(WPE, "data_offsets"), ["malformed"],
        any_of=quoted(WPE)),
    Bad("entry_shape_not_list", m_set_key(WPE, "shape", "32x16"), ["malformed"],
        any_of=quoted(WPE)),
    Bad("entry_offsets_three_numbers", m_entry(WPE, lambda e: e["data_offsets"].append(0)),
        ["malformed"], any_of=quoted(WPE)),
    # --- dtypes and sizes
    Bad("dtype_unknown_F33", m_set_key(WPE, "dtype", "F33"), ["unknown dtype"], any_of=quoted(WPE)),
    Bad("dtype_unsupported_I32", m_set_key(P + "h.0.attn.c_proj.weight", "dtype", "I32"),
        ["unsupported dtype"], any_of=quoted(P + "h.0.attn.c_proj.weight")),
    Bad("size_mismatch_shape", m_set_key(P + "ln_f.bias", "shape", [C + 1]), ["does not match"],
        any_of=quoted(P + "ln_f.bias")),
    Bad("size_mismatch_dtype", m_set_key(P + "ln_f.bias", "dtype", "F16"), ["does not match"],
        any_of=quoted(P + "ln_f.bias")),
    # --- data_offsets
    Bad("overlap_alias", m_overlap_alias(P + "ln_f.bias", onto=P + "h.0.ln_1.weight"), ["overlaps"],
        any_of=quoted(P + "ln_f.bias", P + "h.0.ln_1.weight")),
    Bad("overlap_partial", m_overlap_partial(P + "ln_f.bias", P + "h.0.ln_1.bias",
                                             P + "h.0.ln_1.weight"), ["overlaps"],
        any_of=quoted(P + "ln_f.bias", P + "h.0.ln_1.bias", P + "h.0.ln_1.weight")),
    Bad("offsets_out_of_range", m_move_last_out_of_range(10 ** 9), ["out of range"],
        any_of=quoted(WTE)),
    Bad("offsets_reversed", m_reverse(P + "h.1.attn.c_proj.bias"), ["reversed"],
        any_of=quoted(P + "h.1.attn.c_proj.bias")),
    Bad("truncated_1_byte", m_truncate(1), ["truncated"]),
    Bad("truncated_100_bytes", m_truncate(100), ["truncated"]),
    Bad("truncated_all_data", m_truncate(None), ["truncated"]),
    Bad("trailing_bytes", m_append(8), ["trailing bytes"]),
    Bad("gap_between_tensors", m_gap(1, 4), ["gap"]),
    Bad("gap_at_start", m_gap(0, 8), ["gap"]),
    Bad("duplicate_name", m_duplicate(P + "h.0.mlp.c_fc.bias"), ["duplicate"],
        any_of=quoted(P + "h.0.mlp.c_fc.bias")),
    # --- model-level checks
    Bad("missing_h1_mlp_c_fc_bias", m_drop(P + "h.1.mlp.c_fc.bias"), ["missing tensor"],
        any_of=quoted(P + "h.1.mlp.c_fc.bias", "h.1.mlp.c_fc.bias")),
    Bad("missing_wte", m_drop(WTE), ["missing tensor"], any_of=quoted(WTE, "wte.weight")),
    Bad("missing_ln_f_weight", m_drop(P + "ln_f.weight"), ["missing tensor"],
        any_of=quoted(P + "ln_f.weight", "ln_f.weight")),
    Bad("missing_c_attn_bias_with_mask_buffers", m_drop("h.0.attn.c_attn.bias"), ["missing tensor"],
        any_of=quoted(P + "h.0.attn.c_attn.bias", "h.0.attn.c_attn.bias"),
        ckpt=dict(prefix=False, mask=True)),
    Bad("missing_no_prefix", m_drop("h.1.ln_2.weight"), ["missing tensor"],
        any_of=quoted(P + "h.1.ln_2.weight", "h.1.ln_2.weight"), ckpt=dict(prefix=False)),
    Bad("no_tensors_at_all", m_raw_header(b"{}", keep_data=False), ["missing tensor"]),
    Bad("config_more_layers_than_file", m_config(n_layer=3), ["missing tensor", "h.2."]),
    Bad("shape_c_attn_transposed", m_reshape(P + "h.0.attn.c_attn.weight", [3 * C, C]),
        [f"has shape [{3 * C}, {C}], expected [{C}, {3 * C}]"],
        any_of=quoted(P + "h.0.attn.c_attn.weight")),
    Bad("shape_wpe_too_few_positions", m_reshape(WPE, [16, C], 16 * C * F32),
        [f"has shape [16, {C}], expected [{CFG.n_positions}, {C}]"], any_of=quoted(WPE)),
    Bad("shape_wte_vocab_short", m_reshape(WTE, [CFG.vocab_size - 1, C], (CFG.vocab_size - 1) * C * F32),
        [f"has shape [{CFG.vocab_size - 1}, {C}], expected [{CFG.vocab_size}, {C}]"],
        any_of=quoted(WTE)),
    Bad("shape_bias_2d", m_reshape(P + "h.1.ln_1.weight", [1, C]),
        [f"has shape [1, {C}], expected [{C}]"], any_of=quoted(P + "h.1.ln_1.weight")),
    Bad("config_embd_disagrees_with_file", m_config(n_embd=32), ["expected ["]),
    # --- files and config.json
    Bad("safetensors_missing", m_unlink(ST), ["cannot open"]),
    Bad("config_missing", m_unlink("config.json"), ["cannot open"], file="config.json"),
    Bad("config_invalid_json", m_config_text('{"n_layer": 2,'), ["not valid JSON"],
        file="config.json"),
    Bad("config_missing_n_layer", m_config(n_layer=DELETE), ["n_layer"], file="config.json"),
    Bad("config_embd_not_divisible", m_config(n_head=3), ["divisible"], file="config.json"),
    Bad("config_n_layer_0", m_config(n_layer=0), ["n_layer"], file="config.json"),
    Bad("config_n_layer_negative", m_config(n_layer=-1), ["n_layer"], file="config.json"),
    Bad("config_n_layer_1e9", m_config_raw_value("n_layer", "1e9"), ["n_layer"], file="config.json"),
    Bad("config_n_layer_1000000000", m_config(n_layer=1_000_000_000), ["n_layer"],
        file="config.json"),
    Bad("config_n_layer_string", m_config(n_layer="2"), ["n_layer"], file="config.json"),
    Bad("config_n_layer_fraction", m_config_raw_value("n_layer", "2.5"), ["n_layer"],
        file="config.json"),
    Bad("vocab_missing", m_unlink("vocab.json"), ["cannot open"], file="vocab.json"),
    Bad("merges_missing", m_unlink("merges.txt"), ["cannot open"], file="merges.txt"),
]

# Damage for which no particular wording is required: the engine must still
# fail cleanly (exit 1, one stderr line naming model.safetensors, no stdout).
ROBUST: List[Bad] = [
    Bad("header_len_zero", m_header_len(0)),
    Bad("header_deeply_nested", m_raw_header(b"[" * 200_000, keep_data=False)),
    Bad("header_nested_objects", m_raw_header(b'{"a":' * 100_000, keep_data=False)),
    Bad("header_raw_nul_in_json_string", m_header_bytes_replace(b'"pt"', b'"p\x00t"')),
    Bad("metadata_not_object", m_raw_header(b'{"__metadata__": 5}', keep_data=False)),
    Bad("offsets_strings", m_set_key(WPE, "data_offsets", ["0", "2048"])),
    Bad("offsets_negative", m_set_key(WPE, "data_offsets", [-2048, 0])),
    Bad("offsets_fractional", m_entry(WPE, lambda e: {**e, "data_offsets": [
        e["data_offsets"][0] + 0.5, e["data_offsets"][1] + 0.5]})),
    Bad("offsets_2pow63", m_move_last_out_of_range(2 ** 63)),
    Bad("offsets_beyond_u64", m_set_key(WPE, "data_offsets", [2 ** 64, 2 ** 64 + 2048])),
    Bad("shape_negative_dim", m_set_key(P + "ln_f.bias", "shape", [-C])),
    Bad("shape_overflowing_numel", m_set_key(P + "ln_f.bias", "shape", [2 ** 32, 2 ** 32, 4])),
    # numel = 2**64 + C: wraps to exactly the right byte count in 64-bit math
    Bad("shape_numel_wraps_to_size", m_set_key(P + "ln_f.bias", "shape", [2 ** 62 + C // 4, 4])),
    Bad("dtype_not_string", m_set_key(WPE, "dtype", 32)),
    Bad("safetensors_is_directory", lambda d: ((d / ST).unlink(), (d / ST).mkdir())),
]


def check_clean_failure(d: Path, case: Bad) -> None:
    cmd, proc = run_gpt2(d)
    info = describe(cmd, proc)
    assert proc.returncode == 1, "expected exit code 1" + info
    assert proc.stdout == b"", "expected nothing on stdout" + info
    err = proc.stderr.decode("utf-8", "replace")
    line = err[:-1] if err.endswith("\n") else err
    assert line.strip() and "\n" not in line, "expected exactly one line on stderr" + info
    for s in [case.file, *case.expect]:
        assert s in line, f"expected {s!r} in the error message" + info
    if case.any_of:
        assert any(s in line for s in case.any_of), \
            f"expected one of {list(case.any_of)} in the error message" + info


@pytest.mark.parametrize("case", BAD, ids=[c.id for c in BAD])
def test_damaged_checkpoint(tmp_path, case: Bad):
    d = make_ckpt(tmp_path, **case.ckpt)
    case.mutate(d)
    check_clean_failure(d, case)


@pytest.mark.parametrize("case", ROBUST, ids=[c.id for c in ROBUST])
def test_damaged_checkpoint_fails_cleanly(tmp_path, case: Bad):
    d = make_ckpt(tmp_path, **case.ckpt)
    case.mutate(d)
    check_clean_failure(d, case)


# --------------------------------------------------------------------------
# valid variants
# --------------------------------------------------------------------------

def logits_of(d: Path) -> List[float]:
    cmd, proc = run_gpt2(d)
    info = describe(cmd, proc)
    assert proc.returncode == 0, "expected exit code 0" + info
    try:
        values = json.loads(proc.stdout)
    except ValueError as e:
        pytest.fail(f"stdout is not JSON ({e})" + info)
    assert isinstance(values, list) and len(values) == CFG.vocab_size, \
        f"expected a JSON array of {CFG.vocab_size} numbers" + info
    assert all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
               for v in values), "expected finite numbers" + info
    return values


def shuffled_header_order(d: Path) -> None:
    """Header keys in reverse order while the data stays where it is."""
    header, data = load(d)
    items = list(header.items())
    meta = [kv for kv in items if kv[0] == "__metadata__"]
    rest = [kv for kv in items if kv[0] != "__metadata__"]
    save(d, dict(rest[::-1] + meta), data)


VARIANTS = {
    # id: (make_ckpt kwargs, extra mutation)
    "prefix": ({}, None),
    "no_prefix": (dict(prefix=False), None),
    "mask_buffers": (dict(mask=True), None),
    "no_prefix_mask_buffers": (dict(prefix=False, mask=True), None),
    "lm_head_tied": (dict(lm_head=True), None),
    "model_order": (dict(order="model"), None),
    "header_order_not_data_order": ({}, shuffled_header_order),
    "no_metadata": (dict(metadata=None), None),
    "more_metadata": (dict(metadata={"format": "pt", "note": "x" * 100}), None),
}


@pytest.fixture(scope="module")
def reference_logits(tmp_path_factory):
    return logits_of(make_ckpt(tmp_path_factory.mktemp("ref"), name="reference"))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_valid_variant_matches_prefix_checkpoint(tmp_path, variant, reference_logits):
    """Same weights in another valid layout give exactly the same logits."""
    kw, mutate = VARIANTS[variant]
    d = make_ckpt(tmp_path, **kw)
    if mutate:
        mutate(d)
    got = logits_of(d)
    if got != reference_logits:
        diff = max(abs(a - b) for a, b in zip(got, reference_logits))
        pytest.fail(f"{variant}: logits differ from the 'transformer.'-prefixed F32 "
                    f"checkpoint (max abs diff {diff:g})")


def _gelu_new(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def _layer_norm(x, w, b, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def reference_forward(dtype: str, tokens: Sequence[int], std: float = 0.02) -> np.ndarray:
    """Logits of the last position in float64 numpy, from the same weights
    after rounding to `dtype`."""
    W = {k: v.astype(np.float64) for k, v in ck.weights_f32(CFG, dtype, SEED, std).items()}
    T, C, H = len(tokens), CFG.n_embd, CFG.n_head
    x = W["wte.weight"][list(tokens)] + W["wpe.weight"][:T]
    mask = np.triu(np.full((T, T), -np.inf), 1)
    for i in range(CFG.n_layer):
        h = f"h.{i}."
        a = _layer_norm(x, W[h + "ln_1.weight"], W[h + "ln_1.bias"])
        qkv = a @ W[h + "attn.c_attn.weight"] + W[h + "attn.c_attn.bias"]
        q, k, v = (qkv[:, j * C:(j + 1) * C].reshape(T, H, C // H).transpose(1, 0, 2)
                   for j in range(3))
        att = q @ k.transpose(0, 2, 1) / math.sqrt(C // H) + mask
        att = np.exp(att - att.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        y = (att @ v).transpose(1, 0, 2).reshape(T, C)
        x = x + y @ W[h + "attn.c_proj.weight"] + W[h + "attn.c_proj.bias"]
        m = _layer_norm(x, W[h + "ln_2.weight"], W[h + "ln_2.bias"])
        m = _gelu_new(m @ W[h + "mlp.c_fc.weight"] + W[h + "mlp.c_fc.bias"])
        x = x + m @ W[h + "mlp.c_proj.weight"] + W[h + "mlp.c_proj.bias"]
    x = _layer_norm(x, W["ln_f.weight"], W["ln_f.bias"])
    return x[-1] @ W["wte.weight"].T


# Larger weights than the default 0.02 so activations leave the linear range
# of GELU: with std 0.2, the exact erf GELU instead of the tanh "gelu_new"
# moves logits by ~1e-3, 20x the tolerance below; F32 engines agree to ~1e-6.
REF_STD = 0.2
REF_RTOL = 5e-5


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
def test_logits_match_numpy_reference(tmp_path, dtype):
    """F32, F16 and BF16 checkpoints load, and the last position's logits agree
    with a float64 numpy GPT-2 on the same (rounded) weights."""
    d = make_ckpt(tmp_path, dtype=dtype, std=REF_STD)
    got = np.array(logits_of(d))
    want = reference_forward(dtype, TOKENS, REF_STD)
    scale = float(np.abs(want).max())
    err = float(np.abs(got - want).max())
    assert err <= REF_RTOL * scale + 1e-6, (
        f"{dtype}: max abs diff {err:g} vs max |logit| {scale:g}; "
        f"argmax got {int(got.argmax())} want {int(want.argmax())}")
