"""Prepare: every configured corpus into Parquet shards plus the task's labels.json.

Writes ``data/prepared/<lang>/<split>/part-NNNNN.parquet`` (tokens, BIOES label ids for span
tasks; unlabeled text as split ``unlabeled`` with label id -1) and ``data/prepared/labels.json``.
Any bad line stops the stage with ``file:line: problem`` before anything is written: every split
is read, validated and encoded first, then written to a staging folder, and only then does it
replace ``data/prepared`` as a whole.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple, TypeVar

import numpy as np

from structkd.errors import InputError
from structkd.pipeline.corpus import Sentence, read_corpus, read_tokens
from structkd.pipeline.labels import LabelSet
from structkd.pipeline.layout import Layout
from structkd.pipeline.params import UNLABELED, CorpusSpec, Params
from structkd.pipeline.schemes import to_bioes, validate_sentences
from structkd.storage.arrays import PreparedArrays
from structkd.storage.io import replace_dir, staging_dir
from structkd.storage.schemas import PreparedMeta, labels_digest
from structkd.storage.shards import shard_name, write_table_atomic

T = TypeVar("T")


NO_TAG = -1
"""The label id stored for every token of unlabeled text (it has no gold tags)."""


class Corpus(NamedTuple):
    """One split as read and validated: where from, its scheme, sentences and (BIOES) tags
    (None: unlabeled text)."""

    path: Path
    scheme: str
    sentences: list[Sentence]
    tags: list[list[str]] | None


def spread(items: Sequence[T], k: int | None) -> list[T]:
    """``k`` items evenly spread over ``items`` (positions ``floor(j * n / k)``); None: all."""
    n = len(items)
    return list(items) if k is None or k >= n else [items[j * n // k] for j in range(k)]


def select(sentences: Sequence[T], split: str, spec: CorpusSpec) -> list[T]:
    """Apply ``dev_split`` (dev = the last fraction of train), then the split's limit (spread)."""
    sentences = list(sentences)
    if spec.dev_split and split in ("train", "dev"):
        cut = len(sentences) - max(1, round(spec.dev_split * len(sentences)))
        sentences = sentences[:cut] if split == "train" else sentences[cut:]
    return spread(sentences, spec.limit(split))


def run(
    params: Params, layout: Layout, params_path: Path, echo: Callable[[str], None] = print
) -> LabelSet:
    """Read, validate and shard the corpora of params.yaml ``data``; returns the label set."""
    corpora = read_corpora(params, layout)
    labels = task_labels(params, corpora, params_path)
    source = f"{params_path}: data.labels" if params.data.labels else "the teachers' train splits"
    encoded = encode(corpora, labels, source)
    for message in write_prepared(params, layout, corpora, encoded, labels):
        echo(message)
    echo(f"labels ({labels.n_tags}): {' '.join(labels.labels)}")
    return labels


def read_corpora(params: Params, layout: Layout) -> dict[tuple[str, str], Corpus]:
    """Every (language, split) of params.yaml read, validated, selected and (for spans) BIOES."""
    span = params.data.span_task
    corpora = {}
    for lang, spec in params.data.all_languages().items():
        for split, relative in spec.splits().items():
            path = layout.source(relative)
            sentences = read_corpus(
                path, format=spec.format, token_column=spec.token_column, tag_column=spec.tag_column
            )
            validate_sentences(sentences, spec.scheme, path)
            sentences = select(sentences, split, spec)
            if span:
                tags = [to_bioes(s.tags, spec.scheme, where=f"{path}:{s.line}") for s in sentences]
            else:
                tags = [list(s.tags) for s in sentences]
            corpora[lang, split] = Corpus(path, spec.scheme, sentences, tags)
    for lang, text in params.data.unlabeled.items():
        path = layout.source(text.path)
        sentences = read_tokens(path, format=text.format, token_column=text.token_column)
        corpora[lang, UNLABELED] = Corpus(path, "none", spread(sentences, text.limit), None)
    return corpora


def task_labels(
    params: Params, corpora: dict[tuple[str, str], Corpus], params_path: Path
) -> LabelSet:
    """The label set of params.yaml ``data.labels``, or else of the teachers' train splits."""
    data = params.data
    if data.labels:
        first_scheme = next(iter(data.languages.values())).scheme
        return LabelSet.from_tags(data.labels, first_scheme, where=f"{params_path}: data.labels")
    train_tags = [t for lang in data.languages for t in corpora[lang, "train"].tags or []]
    return LabelSet.from_sentences(train_tags, "bioes" if data.span_task else "none")


def encode(
    corpora: dict[tuple[str, str], Corpus], labels: LabelSet, source: str
) -> dict[tuple[str, str], list[np.ndarray]]:
    """Label ids of every sentence; an unknown label stops with ``file:line`` (from ``source``)."""
    encoded = {}
    for split_key, corpus in corpora.items():
        if corpus.tags is None:
            encoded[split_key] = [np.full(len(s), NO_TAG, np.int16) for s in corpus.sentences]
            continue
        ids = []
        for sentence, sentence_tags in zip(corpus.sentences, corpus.tags, strict=True):
            unknown = [i for i, tag in enumerate(sentence_tags) if tag not in labels]
            if unknown:
                i = unknown[0]
                raise InputError(
                    f"{corpus.path}:{sentence.line}",
                    f"token {i + 1} {sentence.tokens[i]!r}: label {sentence.tags[i]!r} is not in "
                    f"the task's label set (from {source})",
                )
            ids.append(labels.encode(sentence_tags))
        encoded[split_key] = ids
    return encoded


def write_prepared(
    params: Params,
    layout: Layout,
    corpora: dict[tuple[str, str], Corpus],
    encoded: dict[tuple[str, str], list[np.ndarray]],
    labels: LabelSet,
) -> list[str]:
    """Write every split and labels.json into a staging folder, then swap it in for
    ``data/prepared`` as a whole; one line per split.

    A failure or a kill while writing leaves the old ``data/prepared`` untouched (the staging
    folder is removed, or cleared by the next run); a kill during the swap leaves the old one or
    none (:func:`replace_dir`), never some splits of each or a split with some of its shards.
    """
    final = layout.labels.parent
    staged = staging_dir(final)
    shutil.rmtree(staged, ignore_errors=True)
    messages = []
    try:
        for (lang, split), corpus in corpora.items():
            sentences, ids = corpus.sentences, encoded[lang, split]
            meta = PreparedMeta(
                lang, split, str(corpus.path), corpus.scheme, labels_digest(labels.labels)
            )
            folder = staged / layout.prepared(lang, split).relative_to(final)
            size = params.prepare.shard_size
            for shard, lo in enumerate(range(0, len(sentences), size)):
                chunk = range(lo, min(lo + size, len(sentences)))
                arrays = PreparedArrays(
                    sent_id=np.arange(chunk.start, chunk.stop, dtype=np.int64),
                    lengths=np.array([len(sentences[i]) for i in chunk], np.int64),
                    tokens=np.array([w for i in chunk for w in sentences[i].tokens], dtype=object),
                    tags=np.concatenate([ids[i] for i in chunk]).astype(np.int16),
                )
                write_table_atomic(arrays.to_table(meta), folder / shard_name(shard))
            messages.append(
                f"prepared {lang}/{split}: {len(sentences)} sentences from {corpus.path}"
            )
        labels.save(staged / layout.labels.relative_to(final))
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    replace_dir(staged, final)
    return messages
