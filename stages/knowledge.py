"""Command ``knowledge show``: what a knowledge shard holds, readable for a person."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def show(
    path: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="A knowledge shard.")],
    sentence: Annotated[
        int | None, typer.Option(help="Row to show: its tokens and top-k paths with probabilities.")
    ] = None,
    top: Annotated[int, typer.Option(help="How many of the k-best paths to print.")] = 5,
) -> None:
    """Schema, metadata and counts of a knowledge shard; optionally one sentence's top-k paths."""
    import numpy as np

    from structkd.storage.arrays import KnowledgeArrays
    from structkd.storage.schemas import KnowledgeMeta
    from structkd.storage.shards import read_shard, shard_metadata

    meta = KnowledgeMeta.from_metadata(shard_metadata(path))
    table = read_shard(path, expect_table="knowledge")
    arrays = KnowledgeArrays.from_table(table, k=meta.k, n_tags=meta.n_tags)
    lengths = np.asarray(arrays.lengths, np.int64)
    typer.echo(
        f"{path}\n  rows {table.num_rows}, tokens {int(lengths.sum())}, K {meta.k}, "
        f"labels {meta.n_tags}, edge marginals {meta.edge_marginals}"
    )
    typer.echo(
        f"  cache key {meta.cache_key[:16]}…  inputs: "
        + ", ".join(f"{k}={v[:12]}" for k, v in sorted(meta.digests.items()))
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
        from structkd.errors import StructkdError

        raise StructkdError(f"{path}: sentence {sentence} out of range 0..{table.num_rows - 1}")
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    n, lo = int(lengths[sentence]), int(offsets[sentence])
    paths = arrays.topk_tags[meta.k * lo : meta.k * (lo + n)].reshape(meta.k, n)
    scores = np.asarray(arrays.topk_scores[sentence], np.float64)
    tokens = _tokens(path, int(arrays.sent_id[sentence]))
    typer.echo(
        f"\nsentence {sentence} (sent_id {int(arrays.sent_id[sentence])}, {n} tokens, "
        f"log Z {float(arrays.log_z[sentence]):.3f}, {int(arrays.k_valid[sentence])} paths)"
    )
    typer.echo("  tokens: " + " ".join(tokens or ["?"] * n))
    for rank in range(min(top, int(arrays.k_valid[sentence]))):
        prob = float(np.exp(scores[rank] - arrays.log_z[sentence]))
        tags = " ".join(meta.labels[t] for t in paths[rank])
        typer.echo(f"  #{rank + 1} p={prob:.4f} score={scores[rank]:.3f}: {tags}")
    marg = np.exp(arrays.log_marginals[lo : lo + n].astype(np.float64))
    best = marg.argmax(1)
    typer.echo(
        "  max marginals: "
        + " ".join(f"{meta.labels[b]}:{marg[t, b]:.2f}" for t, b in enumerate(best))
    )


def _tokens(path: Path, sent_id: int) -> list[str] | None:
    """The sentence's words from the prepared shard of the same name, if the project has it."""
    import numpy as np

    from structkd.storage.arrays import PreparedArrays
    from structkd.storage.shards import read_shard

    prepared = (
        path.resolve().parents[2] / "data" / "prepared" / path.parent.name / "train" / path.name
    )
    if not prepared.exists():
        return None
    arrays = PreparedArrays.from_table(read_shard(prepared, expect_table="prepared"))
    row = int(np.searchsorted(arrays.sent_id, sent_id))
    if row >= len(arrays.sent_id) or arrays.sent_id[row] != sent_id:
        return None
    offsets = np.concatenate([[0], np.cumsum(arrays.lengths)])
    return [str(t) for t in arrays.tokens[offsets[row] : offsets[row + 1]]]
