"""Stage ``prepare``: read every configured corpus into Parquet shards plus the task's labels.json.

Writes ``data/prepared/<lang>/<split>/part-NNNNN.parquet`` (tokens, BIOES label ids for span
tasks) and ``data/prepared/labels.json``. Any bad line stops the stage with ``file:line: problem``
before anything is written.
"""

from __future__ import annotations

from pathlib import Path

import typer

from structkd.pipeline.layout import open_project
from structkd.pipeline.params import CorpusSpec
from structkd.stages.options import ParamsPath


def select(sentences: list, split: str, spec: CorpusSpec) -> list:
    """Apply ``dev_split`` (dev = the last fraction of train), then the split's limit (spread)."""
    if spec.dev_split and split in ("train", "dev"):
        cut = len(sentences) - max(1, round(spec.dev_split * len(sentences)))
        sentences = sentences[:cut] if split == "train" else sentences[cut:]
    k, n = spec.limit(split), len(sentences)
    if k is not None and k < n:
        sentences = [sentences[j * n // k] for j in range(k)]
    return sentences


def main(params_path: ParamsPath = Path("params.yaml")) -> None:
    """Read, validate and shard the corpora of params.yaml ``data``."""
    import shutil

    import numpy as np

    from structkd.errors import InputError
    from structkd.pipeline.corpus import read_corpus
    from structkd.pipeline.labels import LabelSet
    from structkd.pipeline.schemes import to_bioes, validate_sentences
    from structkd.storage.arrays import PreparedArrays
    from structkd.storage.schemas import PreparedMeta, labels_digest
    from structkd.storage.shards import shard_name, write_table_atomic

    params, layout = open_project(params_path)
    data = params.data
    span = data.span_task
    corpora = {}
    for lang, spec in data.all_languages().items():
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
            corpora[lang, split] = (path, spec.scheme, sentences, tags)

    first_scheme = next(iter(data.languages.values())).scheme
    if data.labels:
        labels = LabelSet.from_tags(data.labels, first_scheme, where=f"{params_path}: data.labels")
    else:
        train_tags = [t for lang in data.languages for t in corpora[lang, "train"][3]]
        labels = LabelSet.from_sentences(train_tags, "bioes" if span else "none")

    source = f"{params_path}: data.labels" if data.labels else "the teachers' train splits"
    encoded = {}
    for (lang, split), (path, _, sentences, tags) in corpora.items():
        ids = []
        for sentence, sentence_tags in zip(sentences, tags, strict=True):
            unknown = [i for i, tag in enumerate(sentence_tags) if tag not in labels]
            if unknown:
                i = unknown[0]
                raise InputError(
                    f"{path}:{sentence.line}",
                    f"token {i + 1} {sentence.tokens[i]!r}: label {sentence.tags[i]!r} is not in "
                    f"the task's label set (from {source})",
                )
            ids.append(labels.encode(sentence_tags))
        encoded[lang, split] = ids

    # every split goes to a temporary folder first, so a failure replaces nothing
    staged = []
    try:
        for (lang, split), (path, scheme, sentences, _) in corpora.items():
            ids = encoded[lang, split]
            meta = PreparedMeta(lang, split, str(path), scheme, labels_digest(labels.labels))
            final = layout.prepared(lang, split)
            tmp = final.with_name(f".{split}.tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            done = f"prepared {lang}/{split}: {len(sentences)} sentences from {path}"
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
    for tmp, final, message in staged:
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        typer.echo(message)
    labels.save(layout.labels)
    typer.echo(f"labels ({labels.n_tags}): {' '.join(labels.labels)}")
