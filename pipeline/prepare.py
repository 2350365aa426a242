"""Prepare: every configured corpus into Parquet shards plus the task's labels.json.

Writes ``data/prepared/<lang>/<split>/part-NNNNN.parquet`` (tokens, BIOES label ids for span
tasks) and ``data/prepared/labels.json``. Any bad line stops the stage with ``file:line: problem``
before anything is written: every split is read, validated and encoded first, then written to a
temporary folder, and only then do the new folders replace the old ones.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple, TypeVar

import numpy as np

from structkd.errors import InputError
from structkd.pipeline.corpus import Sentence, read_corpus
from structkd.pipeline.labels import LabelSet
from structkd.pipeline.layout import Layout
from structkd.pipeline.params import CorpusSpec, Params
from structkd.pipeline.schemes import to_bioes, validate_sentences
from structkd.storage.arrays import PreparedArrays
from structkd.storage.schemas import PreparedMeta, labels_digest
from structkd.storage.shards import shard_name, write_table_atomic

T = TypeVar("T")


class Corpus(NamedTuple):
    """One split as read and validated: where from, its scheme, sentences and (BIOES) tags."""

    path: Path
    scheme: str
    sentences: list[Sentence]
    tags: list[list[str]]


def select(sentences: Sequence[T], split: str, spec: CorpusSpec) -> list[T]:
    """Apply ``dev_split`` (dev = the last fraction of train), then the split's limit (spread)."""
    sentences = list(sentences)
    if spec.dev_split and split in ("train", "dev"):
        cut = len(sentences) - max(1, round(spec.dev_split * len(sentences)))
        sentences = sentences[:cut] if split == "train" else sentences[cut:]
    k, n = spec.limit(split), len(sentences)
    if k is not None and k < n:
        sentences = [sentences[j * n // k] for j in range(k)]
    return sentences


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
    labels.save(layout.labels)
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
    return corpora


def task_labels(
    params: Params, corpora: dict[tuple[str, str], Corpus], params_path: Path
) -> LabelSet:
    """The label set of params.yaml ``data.labels``, or else of the teachers' train splits."""
    data = params.data
    if data.labels:
        first_scheme = next(iter(data.languages.values())).scheme
        return LabelSet.from_tags(data.labels, first_scheme, where=f"{params_path}: data.labels")
    train_tags = [t for lang in data.languages for t in corpora[lang, "train"].tags]
    return LabelSet.from_sentences(train_tags, "bioes" if data.span_task else "none")


def encode(
    corpora: dict[tuple[str, str], Corpus], labels: LabelSet, source: str
) -> dict[tuple[str, str], list[np.ndarray]]:
    """Label ids of every sentence; an unknown label stops with ``file:line`` (from ``source``)."""
    encoded = {}
    for split_key, corpus in corpora.items():
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
    """Write every split to a temporary folder, then swap them all in; one line per split.

    A failure while writing removes the temporary folders and replaces nothing.
    """
    staged = []
    try:
        for (lang, split), corpus in corpora.items():
            sentences, ids = corpus.sentences, encoded[lang, split]
            meta = PreparedMeta(
                lang, split, str(corpus.path), corpus.scheme, labels_digest(labels.labels)
            )
            final = layout.prepared(lang, split)
            tmp = final.with_name(f".{split}.tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            done = f"prepared {lang}/{split}: {len(sentences)} sentences from {corpus.path}"
            staged.append((tmp, final, done))
            size = params.prepare.shard_size
            for shard, lo in enumerate(range(0, len(sentences), size)):
                chunk = range(lo, min(lo + size, len(sentences)))
                arrays = PreparedArrays(
                    sent_id=np.arange(chunk.start, chunk.stop, dtype=np.int64),
                    lengths=np.array([len(sentences[i]) for i in chunk], np.int64),
                    tokens=np.array([w for i in chunk for w in sentences[i].tokens], dtype=object),
                    tags=np.concatenate([ids[i] for i in chunk]).astype(np.int16),
                )
                write_table_atomic(arrays.to_table(meta), tmp / shard_name(shard))
    except BaseException:
        for tmp, _, _ in staged:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    messages = []
    for tmp, final, message in staged:
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        messages.append(message)
    return messages
