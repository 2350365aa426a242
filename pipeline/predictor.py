"""Tag new text with a trained model: the Python API behind ``structkd predict``.

A model directory records the encoder it was trained with by name, settings and digest (never
by a path of the training machine), so the predictor rebuilds the same frozen features
wherever the directory is copied, and refuses an encoder whose digest differs::

    from structkd.pipeline.predictor import Predictor
    tagger = Predictor.load("models/students/posterior")
    tagger.tag([["The", "cat", "sat", "."]])   # -> [["DET", "NOUN", "VERB", "PUNCT"]]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from structkd.errors import StructkdError, first_line
from structkd.pipeline.data import Split, iterate
from structkd.pipeline.encoder import EncoderConfig, WordEncoder, default_cache_dir
from structkd.pipeline.layout import Layout
from structkd.pipeline.models import Tagger, load_tagger
from structkd.pipeline.params import EmbedParams
from structkd.pipeline.runtime import resolve_device
from structkd.pipeline.schemes import from_bioes

ENCODER_KEYS = ("encoder", "layer", "window", "dtype")


def encoder_settings(embed: EmbedParams, encoder_digest: str) -> dict[str, str]:
    """What a model must remember about its features (stored in ``TaggerConfig.extra``).

    Args:
        embed: the encoder settings of params.yaml.
        encoder_digest: :meth:`WordEncoder.digest` of the encoder that made the features.
    """
    return {
        "encoder": embed.encoder,
        "layer": str(embed.layer),
        "window": str(embed.window),
        "dtype": embed.dtype,
        "encoder_digest": encoder_digest,
    }


def encoder_caches(directory: Path) -> list[Path]:
    """Where to look for a model's encoder: its project's ``data/encoders``, then the default.

    The project is the nearest folder above ``directory`` holding a params.yaml (a model still
    in the project that trained it); a copy elsewhere uses :func:`default_cache_dir`.
    """
    project = next(
        (p for p in Path(directory).resolve().parents if (p / "params.yaml").is_file()), None
    )
    caches = [] if project is None else [Layout(project).encoders]
    return [*caches, default_cache_dir()]


def load_encoder(
    directory: Path,
    extra: Mapping[str, str],
    cache_dir: Path | None = None,
    device: torch.device | str = "cpu",
) -> WordEncoder:
    """The encoder a model directory was trained on, rebuilt or found by name and digest.

    Args:
        directory: the model directory (for messages and :func:`encoder_caches`).
        extra: its ``TaggerConfig.extra``.
        cache_dir: where converted encoders live; None tries :func:`encoder_caches`.
        device: where it runs (not part of its digest).

    Raises:
        StructkdError: a setting is missing, or no cache gives an encoder of the recorded digest.
    """
    missing = [k for k in ENCODER_KEYS if k not in extra]
    if missing:
        raise StructkdError(f"{directory}: config.json lacks encoder setting '{missing[0]}'")
    config = EncoderConfig(
        name_or_path=extra["encoder"],
        layer=int(extra["layer"]),
        window=int(extra["window"]),
        dtype=extra["dtype"],  # type: ignore[arg-type]
        device=str(device),
    )
    wanted = extra.get("encoder_digest")  # absent in models written before it was recorded
    problems = []
    for cache in [cache_dir] if cache_dir is not None else encoder_caches(directory):
        try:
            encoder = WordEncoder(config, cache_dir=cache)
        except (OSError, StructkdError) as e:  # e.g. an unwritable cache folder
            problems.append(f"{cache}: {first_line(e)}")
            continue
        if wanted is None or encoder.digest() == wanted:
            return encoder
        problems.append(f"{cache}: its digest is {encoder.digest()[:12]}")
    digest = f" with digest {wanted[:12]}" if wanted else ""
    raise StructkdError(
        f"{directory}: cannot rebuild its encoder {config.name_or_path!r}{digest} "
        f"({'; '.join(problems)}); set STRUCTKD_CACHE to a writable folder or install the encoder"
    )


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
    def load(
        cls,
        directory: str | Path,
        scheme: str = "iob2",
        cache_dir: Path | None = None,
        device: str = "auto",
    ) -> Predictor:
        """Load a model directory and the encoder recorded in it (see :func:`load_encoder`),
        both on ``device`` (``auto``: cuda when available, else cpu)."""
        where = resolve_device(device)
        model = load_tagger(Path(directory)).to(where)
        encoder = load_encoder(Path(directory), model.config.extra, cache_dir, where)
        return cls(model, encoder, scheme)

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
                assert batch.index is not None  # iterate() numbers every batch's sentences
                for i, path in zip(batch.index, paths, strict=True):
                    tags = self.model.labels.decode(path)
                    if self.model.labels.scheme != "none":
                        tags = from_bioes(tags, self.scheme)
                    out[i] = list(tags)
        return out
