"""Command ``knowledge show``: what a knowledge shard holds, readable for a person."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from structkd.errors import StructkdError, first_line
from structkd.pipeline.params import SELF


def show(
    path: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="A knowledge shard.")],
    sentence: Annotated[
        int | None, typer.Option(help="Row to show: its tokens and top-k paths with probabilities.")
    ] = None,
    top: Annotated[int, typer.Option(help="How many of the k-best paths to print.")] = 5,
    prepared: Annotated[
        Path | None,
        typer.Option(
            exists=True,
            dir_okay=False,
            help="The prepared shard holding the words (default: the one the shard records).",
        ),
    ] = None,
) -> None:
    """Schema, metadata and counts of a knowledge shard; optionally one sentence's top-k paths."""
    import numpy as np

    from structkd.pipeline.export_teachers import teacher_members
    from structkd.storage.arrays import KnowledgeArrays
    from structkd.storage.schemas import KnowledgeMeta
    from structkd.storage.shards import read_shard, shard_metadata

    table = read_shard(path, expect_table="knowledge")  # any other Parquet file: one line
    try:
        meta = KnowledgeMeta.from_metadata(shard_metadata(path))
    except (ValueError, KeyError) as e:  # a knowledge footer with keys missing or damaged
        raise StructkdError(f"{path}: damaged knowledge metadata ({first_line(e)})") from None
    arrays = KnowledgeArrays.from_table(table, k=meta.k, n_tags=meta.n_tags)
    lengths = np.asarray(arrays.lengths, np.int64)
    typer.echo(
        f"{path}\n  rows {table.num_rows}, tokens {int(lengths.sum())}, K {meta.k}, "
        f"labels {meta.n_tags}, summed edge marginals {meta.edge_marginals}"
    )
    typer.echo(
        f"  cache key {meta.cache_key[:16]}…  inputs: "
        + ", ".join(f"{k}={v[:12]}" for k, v in sorted(meta.digests.items()))
    )
    if meta.teachers:  # shards of older exports do not record it
        typer.echo(
            "  labelled by: "
            + ", ".join(f"{_labeller(name)} (weight {w:.4g})" for name, w in meta.teachers.items())
        )
    members = teacher_members(meta.digests)  # knowledge made outside the export has none
    if members:
        typer.echo(
            f"  teachers: {len(members)}"
            + (
                " (their exact mixture; path scores are log-probabilities, log Z 0)"
                if len(members) > 1
                else ""
            )
            + ": "
            + ", ".join(f"teacher{tag} {meta.digests[f'teacher{tag}'][:12]}" for tag in members)
        )
    typer.echo("  schema:")
    for field in table.schema:
        typer.echo(f"    {field.name}: {field.type}")
    typer.echo(
        f"  mean k_valid {float(np.mean(arrays.k_valid)):.2f}, "
        f"mean log Z {float(np.mean(arrays.log_z)):.2f}"
    )
    if sentence is None:
        return
    if not 0 <= sentence < table.num_rows:
        raise StructkdError(f"{path}: sentence {sentence} out of range 0..{table.num_rows - 1}")
    span, n = arrays.tokens(sentence), int(lengths[sentence])
    paths = arrays.paths(sentence)
    scores = np.asarray(arrays.topk_scores[sentence], np.float64)
    sent_id = int(arrays.sent_id[sentence])
    typer.echo(
        f"\nsentence {sentence} (sent_id {sent_id}, {n} tokens, "
        f"log Z {float(arrays.log_z[sentence]):.3f}, {int(arrays.k_valid[sentence])} paths)"
    )
    words = _words(path, meta.prepared, prepared, sent_id, n)
    typer.echo(f"  tokens: {' '.join(words)}" if isinstance(words, list) else f"  {words}")
    for rank in range(min(top, int(arrays.k_valid[sentence]))):
        prob = float(np.exp(scores[rank] - arrays.log_z[sentence]))
        tags = " ".join(meta.labels[t] for t in paths[rank])
        typer.echo(f"  #{rank + 1} p={prob:.4f} score={scores[rank]:.3f}: {tags}")
    marg = np.exp(arrays.log_marginals[span].astype(np.float64))
    best = marg.argmax(1)
    typer.echo(
        "  max marginals: "
        + " ".join(f"{meta.labels[b]}:{marg[t, b]:.2f}" for t, b in enumerate(best))
    )


def _words(path: Path, recorded: str, given: Path | None, sent_id: int, n: int) -> list[str] | str:
    """The sentence's words from its prepared shard (``given``, else the one the knowledge
    shard records next to itself), or one line saying why they cannot be shown."""
    import numpy as np

    from structkd.storage import ragged
    from structkd.storage.arrays import PreparedArrays
    from structkd.storage.shards import read_shard

    hint = "pass --prepared <its prepared shard> to show them"
    if given is None:
        if not recorded:
            return f"tokens not shown: {path} does not record its prepared shard; {hint}"
        given = path.parent / recorded
        if not given.is_file():
            return f"tokens not shown: its prepared shard {given} is not there; {hint}"
    arrays = PreparedArrays.from_table(read_shard(given, expect_table="prepared"))
    row = int(np.searchsorted(arrays.sent_id, sent_id))
    offsets = ragged.offsets(np.asarray(arrays.lengths, np.int64))
    if row >= len(arrays.sent_id) or arrays.sent_id[row] != sent_id or arrays.lengths[row] != n:
        return f"tokens not shown: {given} has no sentence {sent_id} of {n} tokens"
    return [str(t) for t in ragged.row(arrays.tokens, offsets, row)]


def _labeller(name: str) -> str:
    """A labeller as ``knowledge show`` names it: a teacher language, or the baseline student."""
    return "the baseline student (self-training)" if name == SELF else name
