#!/usr/bin/python3
"""Write random GPT-2 checkpoints in Hugging Face layout, without torch.

A checkpoint directory holds config.json, model.safetensors, vocab.json and
merges.txt, as `GPT2LMHeadModel.save_pretrained` plus the tokenizer would
leave them.  The weights are random (numpy's default_rng), so the files are
only good for testing loaders and kernels, not for generating text.

Library use (tests import this module by path):

    import checkpoint as ck
    cfg = ck.GPT2Shape(n_layer=2, n_embd=16, n_head=2, n_positions=32)
    ck.write_checkpoint(out_dir, cfg, dtype="f32", seed=1)

    tensors = ck.gpt2_tensors(cfg, dtype="f32", seed=1)   # name -> Tensor
    header, data = ck.build_file(tensors)                 # dict, bytes
    header["transformer.wpe.weight"]["dtype"] = "F33"     # tamper ...
    ck.write_raw(out_dir / "model.safetensors", header, data)

    header, data = ck.read_safetensors(path)              # raw, not validated

CLI:

    /usr/bin/python3 tests/tools/checkpoint.py --out DIR --layers 12 --embd 768 \\
        --heads 12 --positions 1024 --vocab 50257 --dtype f32 --seed 1

The safetensors format: an 8-byte little-endian unsigned header length N,
then N bytes of UTF-8 JSON (padded with spaces to a multiple of 8 here),
then the tensor data.  The JSON maps each tensor name to {"dtype", "shape",
"data_offsets": [begin, end]} with offsets relative to the start of the
data; an optional "__metadata__" maps strings to strings.

Only the Python standard library and numpy are used.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[2]
TOKENIZER_DIR = REPO_ROOT / "data" / "gpt2-tokenizer"
TOKENIZER_FILES = ("vocab.json", "merges.txt")

# Element sizes of every dtype the safetensors format defines.
DTYPE_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}

# CLI / API dtype names of the weight dtypes this tool writes.
WEIGHT_DTYPES = {"f32": "F32", "f16": "F16", "bf16": "BF16"}

DEFAULT_METADATA = {"format": "pt"}
EOT_TOKEN_ID = 50256

# Bytes generated per chunk, so a 124M (or 1.5B) model never needs the
# whole tensor in memory at once besides its output buffer.
_CHUNK_ELEMS = 1 << 22


# --------------------------------------------------------------------------
# Model shape and tensor naming
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class GPT2Shape:
    n_layer: int = 2
    n_embd: int = 16
    n_head: int = 2
    n_positions: int = 32
    vocab_size: int = 50257
    n_inner: Optional[int] = None  # None: 4 * n_embd, written as null

    @property
    def inner(self) -> int:
        return self.n_inner if self.n_inner is not None else 4 * self.n_embd


@dataclass(frozen=True)
class TensorSpec:
    """One tensor to generate.

    `key` is the name without any "transformer." prefix; values are derived
    from (seed, key) alone, so the prefix, the mask buffers, lm_head and the
    file order never change the values of the other tensors.
    kind: "normal" (N(0, std)), "ln_weight" (1 + N(0, std)), "bias"
    (N(0, std/2)), "tril" (lower-triangular ones), "masked_bias" (-1e4),
    "tied_wte" (a copy of wte).
    """
    name: str
    key: str
    shape: Tuple[int, ...]
    dtype: str  # safetensors dtype string
    kind: str

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * DTYPE_SIZES[self.dtype]


def tensor_specs(cfg: GPT2Shape, dtype: str = "f32", prefix: bool = True,
                 mask_buffers: bool = False, lm_head: bool = False) -> List[TensorSpec]:
    """The tensors of GPT2LMHeadModel.save_pretrained, in model order."""
    st = _st_dtype(dtype)
    C, P, V, I = cfg.n_embd, cfg.n_positions, cfg.vocab_size, cfg.inner
    pre = "transformer." if prefix else ""
    specs: List[TensorSpec] = []

    def add(key: str, shape: Sequence[int], kind: str, dt: str = st) -> None:
        specs.append(TensorSpec(pre + key, key, tuple(shape), dt, kind))

    add("wte.weight", (V, C), "normal")
    add("wpe.weight", (P, C), "normal")
    for i in range(cfg.n_layer):
        h = f"h.{i}."
        add(h + "ln_1.weight", (C,), "ln_weight")
        add(h + "ln_1.bias", (C,), "bias")
        if mask_buffers:
            add(h + "attn.bias", (1, 1, P, P), "tril", "F32")
            add(h + "attn.masked_bias", (), "masked_bias", "F32")
        add(h + "attn.c_attn.weight", (C, 3 * C), "normal")
        add(h + "attn.c_attn.bias", (3 * C,), "bias")
        add(h + "attn.c_proj.weight", (C, C), "normal")
        add(h + "attn.c_proj.bias", (C,), "bias")
        add(h + "ln_2.weight", (C,), "ln_weight")
        add(h + "ln_2.bias", (C,), "bias")
        add(h + "mlp.c_fc.weight", (C, I), "normal")
        add(h + "mlp.c_fc.bias", (I,), "bias")
        add(h + "mlp.c_proj.weight", (I, C), "normal")
        add(h + "mlp.c_proj.bias", (C,), "bias")
    add("ln_f.weight", (C,), "ln_weight")
    add("ln_f.bias", (C,), "bias")
    if lm_head:
        specs.append(TensorSpec("lm_head.weight", "lm_head.weight", (V, C), st, "tied_wte"))
    return specs


def file_order(specs: Iterable[TensorSpec], order: str = "sorted") -> List[TensorSpec]:
    """Order tensors in the file.

    "sorted": like the safetensors library (larger dtypes first, then by
    name), which is what files on the Hugging Face hub look like.
    "model": the order of tensor_specs().
    """
    specs = list(specs)
    if order == "model":
        return specs
    if order == "sorted":
        return sorted(specs, key=lambda s: (-DTYPE_SIZES[s.dtype], s.name))
    raise ValueError(f"unknown order {order!r}")


def _st_dtype(dtype: str) -> str:
    d = dtype.lower()
    if d in WEIGHT_DTYPES:
        return WEIGHT_DTYPES[d]
    if dtype.upper() in ("F32", "F16", "BF16"):
        return dtype.upper()
    raise ValueError(f"unsupported weight dtype {dtype!r} (use f32, f16 or bf16)")


# --------------------------------------------------------------------------
# Value generation and dtype conversion
# --------------------------------------------------------------------------

def _rng(seed: int, key: str) -> np.random.Generator:
    # Tied lm_head uses wte's stream so it is an exact copy.
    return np.random.default_rng([seed & 0xFFFFFFFF, zlib.crc32(key.encode())])


def f32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), round to nearest even."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounding = np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))
    out = ((u + rounding) >> np.uint32(16)).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():  # keep NaNs NaN (rounding could carry into the exponent)
        out[nan] = ((u[nan] >> np.uint32(16)) | np.uint32(0x0040)).astype(np.uint16)
    return out


def bf16_bits_to_f32(b: np.ndarray) -> np.ndarray:
    return (np.asarray(b, dtype=np.uint16).astype(np.uint32) << np.uint32(16)).view(np.float32)


def encode_values(x: np.ndarray, st_dtype: str) -> np.ndarray:
    """float32 values -> little-endian array in the given safetensors dtype."""
    x = np.asarray(x, dtype=np.float32)
    if st_dtype == "F32":
        return x.astype("<f4", copy=False)
    if st_dtype == "F16":
        return x.astype("<f2")
    if st_dtype == "BF16":
        return f32_to_bf16_bits(x).astype("<u2", copy=False)
    raise ValueError(f"cannot encode floats as {st_dtype}")


def decode_values(raw: bytes, st_dtype: str, shape: Sequence[int]) -> np.ndarray:
    """Bytes of a float tensor -> float32 numpy array of the given shape."""
    if st_dtype == "F32":
        a = np.frombuffer(raw, dtype="<f4").astype(np.float32)
    elif st_dtype == "F16":
        a = np.frombuffer(raw, dtype="<f2").astype(np.float32)
    elif st_dtype == "BF16":
        a = bf16_bits_to_f32(np.frombuffer(raw, dtype="<u2"))
    else:
        raise ValueError(f"cannot decode {st_dtype}")
    return a.reshape(tuple(shape))


def generate_chunks(spec: TensorSpec, seed: int, std: float) -> Iterator[np.ndarray]:
    """Yield the tensor's data, flattened, as encoded numpy arrays."""
    n = spec.numel
    if spec.kind == "tril":
        P = spec.shape[-1]
        yield encode_values(np.tril(np.ones((P, P), dtype=np.float32)).ravel(), spec.dtype)
        return
    if spec.kind == "masked_bias":
        yield encode_values(np.full(n, -1e4, dtype=np.float32), spec.dtype)
        return
    key = "wte.weight" if spec.kind == "tied_wte" else spec.key
    kind = "normal" if spec.kind == "tied_wte" else spec.kind
    scale = {"normal": std, "ln_weight": std, "bias": std / 2}[kind]
    rng = _rng(seed, key)
    done = 0
    while done < n:
        m = min(_CHUNK_ELEMS, n - done)
        x = rng.standard_normal(m, dtype=np.float32)
        x *= np.float32(scale)
        if kind == "ln_weight":
            x += np.float32(1.0)
        yield encode_values(x, spec.dtype)
        done += m


def tensor_bytes(spec: TensorSpec, seed: int, std: float) -> bytes:
    return b"".join(c.tobytes() for c in generate_chunks(spec, seed, std))


# --------------------------------------------------------------------------
# safetensors writing
# --------------------------------------------------------------------------

@dataclass
class Tensor:
    dtype: str
    shape: Tuple[int, ...]
    data: bytes


TensorLike = Union[Tensor, Tuple[str, Sequence[int], bytes]]


def _as_tensor(t: TensorLike) -> Tensor:
    if isinstance(t, Tensor):
        return t
    dtype, shape, data = t
    return Tensor(dtype, tuple(shape), bytes(data))


def build_header(entries: Union[Dict[str, TensorLike], Sequence[Tuple[str, str, Sequence[int], int]]],
                 metadata: Optional[Dict[str, str]] = DEFAULT_METADATA) -> Tuple[dict, int]:
    """Header dict with contiguous data_offsets in the given order.

    entries: either {name: Tensor | (dtype, shape, bytes)} or a sequence of
    (name, dtype, shape, nbytes).  Returns (header, total data size).  The
    header dict keeps insertion order; "__metadata__" comes first when given.
    """
    header: dict = {}
    if metadata is not None:
        header["__metadata__"] = dict(metadata)
    off = 0
    if isinstance(entries, dict):
        items = [(name, t.dtype, t.shape, len(t.data))
                 for name, t in ((n, _as_tensor(v)) for n, v in entries.items())]
    else:
        items = list(entries)
    for name, dtype, shape, nbytes in items:
        header[name] = {"dtype": dtype, "shape": [int(d) for d in shape],
                        "data_offsets": [off, off + int(nbytes)]}
        off += int(nbytes)
    return header, off


def encode_header(header: Union[dict, str, bytes], pad: bool = True) -> bytes:
    """Header dict (or raw JSON text/bytes, e.g. with duplicate keys) -> bytes,
    padded with spaces to a multiple of 8 unless pad=False."""
    if isinstance(header, dict):
        raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    elif isinstance(header, str):
        raw = header.encode("utf-8")
    else:
        raw = bytes(header)
    if pad and len(raw) % 8:
        raw += b" " * (8 - len(raw) % 8)
    return raw


def encode_header_pairs(pairs: Sequence[Tuple[str, object]]) -> bytes:
    """JSON object text from (key, value) pairs; keys may repeat."""
    body = ",".join(json.dumps(k) + ":" + json.dumps(v, separators=(",", ":")) for k, v in pairs)
    return ("{" + body + "}").encode("utf-8")


def raw_file_bytes(header: Union[dict, str, bytes], data: bytes, pad: bool = True,
                   header_len: Optional[int] = None) -> bytes:
    """Whole-file bytes; header_len overrides the 8-byte length prefix."""
    hb = encode_header(header, pad=pad)
    n = len(hb) if header_len is None else header_len
    return struct.pack("<Q", n) + hb + bytes(data)


def write_raw(path: Union[str, Path], header: Union[dict, str, bytes], data: bytes = b"",
              pad: bool = True, header_len: Optional[int] = None) -> None:
    """Write a safetensors file from a (possibly tampered) header and data,
    without any validation."""
    Path(path).write_bytes(raw_file_bytes(header, data, pad=pad, header_len=header_len))


def build_file(tensors: Dict[str, TensorLike],
               metadata: Optional[Dict[str, str]] = DEFAULT_METADATA,
               gap_before: Optional[Dict[str, int]] = None) -> Tuple[dict, bytes]:
    """(header dict, data bytes) laying the tensors out contiguously in dict
    order; gap_before {name: n} leaves n zero bytes before that tensor."""
    ts = {n: _as_tensor(t) for n, t in tensors.items()}
    gap_before = dict(gap_before or {})
    unknown = set(gap_before) - set(ts)
    if unknown:
        raise KeyError(f"gap_before names unknown tensors: {sorted(unknown)}")
    header: dict = {}
    if metadata is not None:
        header["__metadata__"] = dict(metadata)
    parts = []
    off = 0
    for name, t in ts.items():
        gap = gap_before.get(name, 0)
        if gap:
            parts.append(bytes(gap))
            off += gap
        header[name] = {"dtype": t.dtype, "shape": list(t.shape),
                        "data_offsets": [off, off + len(t.data)]}
        parts.append(t.data)
        off += len(t.data)
    data = b"".join(parts)
    assert len(data) == off
    return header, data


def write_safetensors(path: Union[str, Path], tensors: Dict[str, TensorLike],
                      metadata: Optional[Dict[str, str]] = DEFAULT_METADATA) -> None:
    """Write a valid safetensors file; tensors: {name: (dtype, shape, bytes)}
    (or Tensor), laid out in dict order."""
    for name, t in tensors.items():
        t = _as_tensor(t)
        if t.dtype not in DTYPE_SIZES:
            raise ValueError(f"{name}: unknown dtype {t.dtype}")
        n = 1
        for d in t.shape:
            n *= d
        if n * DTYPE_SIZES[t.dtype] != len(t.data):
            raise ValueError(f"{name}: shape {list(t.shape)} x {t.dtype} != {len(t.data)} bytes")
    header, data = build_file(tensors, metadata)
    write_raw(path, header, data)


def read_safetensors(path: Union[str, Path]) -> Tuple[dict, bytes]:
    """(header dict, data bytes) of a file this module wrote (no validation;
    "__metadata__" included, duplicate keys collapse)."""
    blob = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n].decode("utf-8"))
    return header, blob[8 + n:]


def tensors_from_file(header: dict, data: bytes) -> Dict[str, Tensor]:
    """Split (header, data) back into {name: Tensor}, in data_offsets order."""
    items = [(k, v) for k, v in header.items() if k != "__metadata__"]
    items.sort(key=lambda kv: tuple(kv[1]["data_offsets"]))
    return {k: Tensor(v["dtype"], tuple(v["shape"]), data[v["data_offsets"][0]:v["data_offsets"][1]])
            for k, v in items}


def streamed_write(path: Union[str, Path], specs: Sequence[TensorSpec], seed: int, std: float,
                   metadata: Optional[Dict[str, str]] = DEFAULT_METADATA) -> int:
    """Write model.safetensors generating one chunk at a time; returns size."""
    header, total = build_header([(s.name, s.dtype, s.shape, s.nbytes) for s in specs], metadata)
    hb = encode_header(header)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for s in specs:
            written = 0
            for chunk in generate_chunks(s, seed, std):
                chunk.tofile(f)
                written += chunk.nbytes
            assert written == s.nbytes, (s.name, written, s.nbytes)
    os.replace(tmp, path)
    return 8 + len(hb) + total


# --------------------------------------------------------------------------
# Whole checkpoints
# --------------------------------------------------------------------------

def config_dict(cfg: GPT2Shape, std: float = 0.02) -> dict:
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "activation_function": "gelu_new",
        "n_layer": cfg.n_layer,
        "n_embd": cfg.n_embd,
        "n_head": cfg.n_head,
        "n_positions": cfg.n_positions,
        "n_ctx": cfg.n_positions,
        "n_inner": cfg.n_inner,
        "vocab_size": cfg.vocab_size,
        "layer_norm_epsilon": 1e-5,
        "initializer_range": std,
        "attn_pdrop": 0.1,
        "embd_pdrop": 0.1,
        "resid_pdrop": 0.1,
        "bos_token_id": EOT_TOKEN_ID,
        "eos_token_id": EOT_TOKEN_ID,
        "tie_word_embeddings": True,
    }


def write_config(out_dir: Union[str, Path], cfg: GPT2Shape, std: float = 0.02, **overrides) -> dict:
    d = config_dict(cfg, std)
    d.update(overrides)
    Path(out_dir, "config.json").write_text(json.dumps(d, indent=2) + "\n")
    return d


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


def install_tokenizer(out_dir: Union[str, Path], mode: str = "auto",
                      src: Path = TOKENIZER_DIR) -> None:
    """Put vocab.json and merges.txt into out_dir.

    mode: "symlink" (relative link), "copy", "none", or "auto": a relative
    symlink when out_dir is inside the repository, a copy otherwise.
    """
    out = Path(out_dir)
    if mode == "none":
        return
    if mode == "auto":
        mode = "symlink" if _inside(out, REPO_ROOT) else "copy"
    for name in TOKENIZER_FILES:
        target = out / name
        if target.is_symlink() or target.exists():
            target.unlink()
        source = src / name
        if mode == "copy":
            shutil.copyfile(source, target)
        elif mode == "symlink":
            rel = os.path.relpath(source.resolve(), out.resolve())
            os.symlink(rel, target)
        else:
            raise ValueError(f"unknown tokenizer mode {mode!r}")


def gpt2_tensors(cfg: GPT2Shape, dtype: str = "f32", seed: int = 1, std: float = 0.02,
                 prefix: bool = True, mask_buffers: bool = False, lm_head: bool = False,
                 order: str = "sorted") -> Dict[str, Tensor]:
    """All tensors of a random GPT-2 in memory, {name: Tensor} in file order.
    Meant for small models (tests)."""
    specs = file_order(tensor_specs(cfg, dtype, prefix, mask_buffers, lm_head), order)
    return {s.name: Tensor(s.dtype, s.shape, tensor_bytes(s, seed, std)) for s in specs}


def weights_f32(cfg: GPT2Shape, dtype: str = "f32", seed: int = 1, std: float = 0.02) -> Dict[str, np.ndarray]:
    """The weights as float32 arrays keyed without prefix, after rounding to
    `dtype` (what a correct loader sees).  For reference computations."""
    out = {}
    for s in tensor_specs(cfg, dtype, prefix=False):
        out[s.key] = decode_values(tensor_bytes(s, seed, std), s.dtype, s.shape)
    return out


def write_checkpoint(out_dir: Union[str, Path], cfg: GPT2Shape, dtype: str = "f32", seed: int = 1,
                     std: float = 0.02, prefix: bool = True, mask_buffers: bool = False,
                     lm_head: bool = False, order: str = "sorted", tokenizer: str = "auto",
                     metadata: Optional[Dict[str, str]] = DEFAULT_METADATA) -> Path:
    """Write a complete random checkpoint directory; returns its path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.n_embd % cfg.n_head:
        raise ValueError("n_embd must be divisible by n_head")
    specs = file_order(tensor_specs(cfg, dtype, prefix, mask_buffers, lm_head), order)
    streamed_write(out / "model.safetensors", specs, seed, std, metadata)
    write_config(out, cfg, std)
    install_tokenizer(out, tokenizer)
    return out


# --------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------

def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(
        description="Write a random GPT-2 checkpoint in Hugging Face layout "
                    "(config.json, model.safetensors, vocab.json, merges.txt).")
    p.add_argument("--out", required=True, help="output directory (created)")
    p.add_argument("--layers", type=int, default=2, help="n_layer (default 2)")
    p.add_argument("--embd", type=int, default=16, help="n_embd (default 16)")
    p.add_argument("--heads", type=int, default=2, help="n_head (default 2)")
    p.add_argument("--positions", type=int, default=32, help="n_positions = n_ctx (default 32)")
    p.add_argument("--vocab", type=int, default=50257, help="vocab_size (default 50257)")
    p.add_argument("--inner", type=int, default=None,
                   help="n_inner (default: null in config.json, i.e. 4*embd)")
    p.add_argument("--dtype", choices=sorted(WEIGHT_DTYPES), default="f32")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--std", type=float, default=0.02,
                   help="weights ~ N(0, std); layernorm weights ~ 1 + N(0, std); biases ~ N(0, std/2)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--prefix", dest="prefix", action="store_true", default=True,
                   help='names start with "transformer." (HF save_pretrained; default)')
    g.add_argument("--no-prefix", dest="prefix", action="store_false",
                   help='names without "transformer." (OpenAI-converted repos such as gpt2)')
    p.add_argument("--with-mask-buffers", action="store_true",
                   help="add h.N.attn.bias (F32 [1,1,P,P] tril) and h.N.attn.masked_bias (F32 [])")
    p.add_argument("--with-lm-head", action="store_true",
                   help="add lm_head.weight, an exact copy of wte (tied)")
    p.add_argument("--order", choices=["sorted", "model"], default="sorted",
                   help="tensor order in the file: sorted like the safetensors library (default) "
                        "or model order")
    p.add_argument("--no-metadata", action="store_true", help='omit "__metadata__"')
    t = p.add_mutually_exclusive_group()
    t.add_argument("--tokenizer-copy", dest="tokenizer", action="store_const", const="copy",
                   help="copy vocab.json and merges.txt")
    t.add_argument("--tokenizer-symlink", dest="tokenizer", action="store_const", const="symlink",
                   help="relative symlinks to data/gpt2-tokenizer/")
    t.add_argument("--no-tokenizer", dest="tokenizer", action="store_const", const="none")
    p.set_defaults(tokenizer="auto")
    p.add_argument("-q", "--quiet", action="store_true")
    a = p.parse_args(argv)

    for name in ("layers", "embd", "heads", "positions", "vocab"):
        if getattr(a, name) <= 0:
            p.error(f"--{name} must be positive")
    if a.inner is not None and a.inner <= 0:
        p.error("--inner must be positive")
    if a.embd % a.heads:
        p.error("--embd must be divisible by --heads")

    cfg = GPT2Shape(a.layers, a.embd, a.heads, a.positions, a.vocab, a.inner)
    t0 = time.perf_counter()
    out = write_checkpoint(a.out, cfg, a.dtype, a.seed, a.std, a.prefix, a.with_mask_buffers,
                           a.with_lm_head, a.order, a.tokenizer,
                           None if a.no_metadata else DEFAULT_METADATA)
    dt = time.perf_counter() - t0
    if not a.quiet:
        size = (out / "model.safetensors").stat().st_size
        nparams = sum(s.numel for s in tensor_specs(cfg, a.dtype, a.prefix, False, False))
        print(f"wrote {out}: {nparams:,} parameters, model.safetensors {size:,} bytes "
              f"({a.dtype}), {dt:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
