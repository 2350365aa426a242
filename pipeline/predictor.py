"""Tag new text with a trained model: the Python API behind ``structkd predict``.

A model directory records the encoder settings it was trained with, so the predictor rebuilds
the same frozen features before decoding::

    from structkd.pipeline.predictor import Predictor
    tagger = Predictor.load("models/students/posterior")
    tagger.tag([["The", "cat", "sat", "."]])   # -> [["DET", "NOUN", "VERB", "PUNCT"]]
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from structkd.errors import StructkdError
from structkd.pipeline.data import Split, iterate
from structkd.pipeline.encoder import EncoderConfig, WordEncoder
from structkd.pipeline.models import Tagger, load_tagger
from structkd.pipeline.schemes import from_bioes

ENCODER_KEYS = ("encoder", "layer", "window", "dtype", "cache_dir")


def encoder_settings(embed: object, cache_dir: Path) -> dict[str, str]:
    """What a model must remember about its features (stored in ``TaggerConfig.extra``)."""
    return {
        "encoder": str(embed.encoder),  # type: ignore[attr-defined]
        "layer": str(embed.layer),  # type: ignore[attr-defined]
        "window": str(embed.window),  # type: ignore[attr-defined]
        "dtype": str(embed.dtype),  # type: ignore[attr-defined]
        "cache_dir": str(cache_dir.resolve()),
    }


class Predictor:
    """A model plus the encoder that makes its features.

    Args:
        model: a trained tagger (teacher or student).
        encoder: the word encoder it was trained on.
        scheme: tag scheme of the output for span tasks (``iob2``, ``iob1`` or ``bioes``).
    """

    def __init__(self, model: Tagger, encoder: WordEncoder, scheme: str = "iob2") -> None:
        self.model = model
        self.encoder = encoder
        self.scheme = scheme

    @classmethod
    def load(cls, directory: str | Path, scheme: str = "iob2") -> Predictor:
        """Load a model directory and the encoder recorded in it."""
        model = load_tagger(Path(directory))
        extra = model.config.extra
        missing = [k for k in ENCODER_KEYS if k not in extra]
        if missing:
            raise StructkdError(f"{directory}: config.json lacks encoder setting '{missing[0]}'")
        config = EncoderConfig(
            name_or_path=extra["encoder"],
            layer=int(extra["layer"]),
            window=int(extra["window"]),
            dtype=extra["dtype"],  # type: ignore[arg-type]
        )
        return cls(model, WordEncoder(config, cache_dir=Path(extra["cache_dir"])), scheme)

    def tag(self, sentences: Sequence[Sequence[str]], max_tokens: int = 4000) -> list[list[str]]:
        """Tags for each sentence (a list of words), in the output scheme."""
        if not sentences:
            return []
        empty = next((i for i, s in enumerate(sentences) if not s), None)
        if empty is not None:
            raise StructkdError(f"sentence {empty} is empty; give at least one token")
        features = self.encoder.encode(sentences)
        split = Split(
            lang="",
            name="predict",
            scheme="none",
            sent_ids=np.arange(len(sentences)),
            tokens=[list(s) for s in sentences],
            tags=[np.zeros(len(s), np.int64) for s in sentences],
            features=features,
        )
        out: list[list[str]] = [[] for _ in sentences]
        with torch.inference_mode():
            for batch in iterate(split, max_tokens):
                words = batch.tokens if self.model.config.has_lexicon else None
                paths = self.model.decode(batch.features, batch.mask, words)
                for i, path in zip(batch.index, paths, strict=True):
                    tags = self.model.labels.decode(path)
                    if self.model.labels.scheme != "none":
                        tags = from_bioes(tags, self.scheme)
                    out[i] = list(tags)
        return out
