"""DistillationStream: content, exactly-once sharding, shuffling, token budget, errors, memory."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from torch.utils.data import DataLoader

from structkd.errors import ConfigError, StructkdError
from structkd.pipeline.batching import Batch, DistillationStream
from structkd.storage.arrays import FeaturesArrays, KnowledgeArrays, PreparedArrays
from structkd.storage.schemas import (
    SCHEMA_VERSION,
    FeaturesMeta,
    KnowledgeMeta,
    PreparedMeta,
    labels_digest,
)
from structkd.storage.shards import read_shard, shard_name, write_table_atomic
from structkd.storage.stream import LanguageShards, ShardStream

LABELS = ("O", "B-X", "I-X", "B-Y", "I-Y")
K, DIM = 3, 4
ALL_COLUMNS = (
    "log_z",
    "topk_tags",
    "topk_scores",
    "k_valid",
    "log_marginals",
    "emissions",
    "edge_sums",
)


@dataclass
class Written:
    """A synthetic language on disk plus, per sent_id, what the stream must give back."""

    shards: LanguageShards
    ref: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)


def write_language(
    root: Path,
    lang: str,
    sizes: Sequence[int],
    rng: np.random.Generator,
    *,
    row_group_rows: int | dict[str, int] = 8,
    max_len: int = 12,
    first_id: int = 0,
    first_length: int | None = None,
    labels: tuple[str, ...] = LABELS,
    edges: bool = True,
) -> Written:
    n_tags = len(labels)
    meta = KnowledgeMeta(
        labels=labels,
        transitions=np.zeros((n_tags, n_tags)),
        start=np.zeros(n_tags),
        end=np.zeros(n_tags),
        k=K,
        cache_key="key",
        edge_marginals=edges,
    )
    paths: dict[str, list[Path]] = {"prepared": [], "features": [], "knowledge": []}
    out = Written(LanguageShards(lang, paths["prepared"], paths["features"], paths["knowledge"]))
    next_id = first_id
    for index, n in enumerate(sizes):
        lengths = rng.integers(1, max_len + 1, n)
        if first_length is not None and index == 0:
            lengths[0] = first_length
        ids = np.arange(next_id, next_id + n)
        next_id += n
        n_tok = int(lengths.sum())
        tags = rng.integers(0, n_tags, n_tok)
        feats = rng.standard_normal((n_tok, DIM)).astype(np.float16)
        k_valid = rng.integers(1, K + 1, n)
        scores = -np.sort(rng.exponential(2.0, (n, K)), axis=1).astype(np.float32)
        scores[np.arange(K)[None, :] >= k_valid[:, None]] = -np.inf
        paths_k = [rng.integers(0, n_tags, (K, m)) for m in lengths]
        for p, kv in zip(paths_k, k_valid, strict=True):
            p[kv:] = -1
        know = KnowledgeArrays(
            sent_id=ids,
            lengths=lengths,
            log_z=rng.normal(size=n),
            topk_tags=np.concatenate([p.reshape(-1) for p in paths_k]),
            topk_scores=scores,
            k_valid=k_valid,
            log_marginals=rng.standard_normal((n_tok, n_tags)).astype(np.float32),
            emissions=rng.standard_normal((n_tok, n_tags)).astype(np.float32),
            edge_sums=(  # each sentence's matrix sums to its n - 1 edges
                (rng.dirichlet(np.ones(n_tags**2), n) * (lengths - 1)[:, None]).reshape(
                    n, n_tags, n_tags
                )
                if edges
                else None
            ),
        )
        name = shard_name(index)
        tables = {
            "prepared": PreparedArrays(ids, lengths, np.array(["w"] * n_tok), tags).to_table(
                PreparedMeta(lang, "train", "src", "BIO", labels_digest(labels))
            ),
            "features": FeaturesArrays(ids, lengths, feats).to_table(FeaturesMeta(DIM, "enc", "4")),
            "knowledge": know.to_table(meta),
        }
        for kind, table in tables.items():
            paths[kind].append(root / kind / lang / name)
            rows = row_group_rows if isinstance(row_group_rows, int) else row_group_rows[kind]
            write_table_atomic(table, paths[kind][-1], row_group_rows=rows)
        tok = np.concatenate([[0], np.cumsum(lengths)])
        for i, sid in enumerate(ids):
            a, z = tok[i], tok[i + 1]
            out.ref[int(sid)] = {
                "tags": tags[a:z],
                "features": feats[a:z].astype(np.float32),
                "topk_tags": paths_k[i],
                "topk_scores": scores[i],
                "k_valid": k_valid[i],
                "log_z": know.log_z[i],
                "log_marginals": know.log_marginals[a:z],
                "emissions": know.emissions[a:z],
                "edge_sums": know.edge_sums[i].astype(np.float32) if edges else None,
            }
    return out


def seen(batches: Iterable[Batch], langs: Sequence[str]) -> list[tuple[str, int]]:
    return [
        (langs[int(lang)], int(sid))
        for batch in batches
        for lang, sid in zip(batch.lang, batch.sent_id, strict=True)
    ]


def everything(written: Sequence[Written]) -> Counter[tuple[str, int]]:
    return Counter((w.shards.lang, sid) for w in written for sid in w.ref)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


@pytest.fixture
def two_langs(tmp_path: Path, rng: np.random.Generator) -> list[Written]:
    return [
        write_language(tmp_path, "de", [20, 20, 13, 20], rng),
        write_language(tmp_path, "es", [17, 20, 20, 9], rng, first_id=1000),
    ]


def test_batches_hold_the_right_sentences(two_langs: list[Written]):
    stream = DistillationStream(
        [w.shards for w in two_langs], max_tokens=60, knowledge_columns=ALL_COLUMNS, buffer_size=32
    )
    refs = {w.shards.lang: w.ref for w in two_langs}
    got = []
    for batch in DataLoader(stream, batch_size=None):
        size, longest = batch.mask.shape
        assert (
            batch.features.shape == (size, longest, DIM) and batch.features.dtype == torch.float32
        )
        assert batch.topk_tags.shape == (size, K, longest) and batch.topk_tags.dtype == torch.long
        assert batch.edge_sums.shape == (size, len(LABELS), len(LABELS))
        for b in range(size):
            lang, sid, n = (
                stream.langs[int(batch.lang[b])],
                int(batch.sent_id[b]),
                int(batch.lengths[b]),
            )
            ref = refs[lang][sid]
            got.append((lang, sid))
            assert batch.mask[b].tolist() == [True] * n + [False] * (longest - n)
            np.testing.assert_array_equal(batch.tags[b, :n].numpy(), ref["tags"])
            np.testing.assert_array_equal(batch.features[b, :n].numpy(), ref["features"])
            assert not batch.features[b, n:].any() and not batch.tags[b, n:].any()
            np.testing.assert_array_equal(batch.topk_tags[b, :, :n].numpy(), ref["topk_tags"])
            assert (batch.topk_tags[b, :, n:] == -1).all()
            np.testing.assert_array_equal(batch.topk_scores[b].numpy(), ref["topk_scores"])
            assert int(batch.k_valid[b]) == ref["k_valid"] and float(batch.log_z[b]) == ref["log_z"]
            for name in ("log_marginals", "emissions"):
                np.testing.assert_array_equal(getattr(batch, name)[b, :n].numpy(), ref[name])
                assert not getattr(batch, name)[b, n:].any()
            np.testing.assert_array_equal(batch.edge_sums[b].numpy(), ref["edge_sums"])
    assert Counter(got) == everything(two_langs) and len(got) == stream.total_sentences


@pytest.mark.parametrize(
    ("layout", "sizes", "row_group_rows"),
    [
        ("one shard set per consumer", [[20, 20, 13, 20], [17, 20, 20, 9]], 8),
        ("row groups when shards < consumers", [[30], [27]], 8),
        (
            "row groups that differ between the three files",
            [[30], [27]],
            {"prepared": 5, "features": 8, "knowledge": 3},
        ),
        ("every n-th sentence when row groups < consumers", [[10]], 16),
    ],
)
def test_every_sentence_once_across_ranks_and_workers(tmp_path, rng, layout, sizes, row_group_rows):
    written = [
        write_language(tmp_path, lang, s, rng, row_group_rows=row_group_rows, first_id=1000 * i)
        for i, (lang, s) in enumerate(zip(["de", "es"], sizes, strict=False))
    ]
    sources = [w.shards for w in written]
    for epoch in (0, 1):
        parts = []
        for rank in range(2):
            stream = DistillationStream(
                sources,
                max_tokens=50,
                buffer_size=16,
                rank=rank,
                world_size=2,
                knowledge_columns=["topk_tags", "edge_sums"],
            )
            stream.set_epoch(epoch)
            for worker in range(2):
                parts.append(seen(stream.iter_consumer(worker, 2), stream.langs))
        assert Counter(x for part in parts for x in part) == everything(written), layout
        assert all(parts), f"{layout}: a consumer got nothing"


def test_every_sentence_once_with_dataloader_workers(two_langs):
    for rank in range(2):
        stream = DistillationStream(
            [w.shards for w in two_langs], max_tokens=50, rank=rank, world_size=2
        )
        loader = DataLoader(stream, batch_size=None, num_workers=2)
        if rank == 0:
            first = seen(loader, stream.langs)
        else:
            second = seen(loader, stream.langs)
    assert Counter(first + second) == everything(two_langs)
    assert not set(first) & set(second)


def test_shuffle_differs_per_epoch_and_is_deterministic(two_langs):
    sources = [w.shards for w in two_langs]

    def order(seed: int, epoch: int, shuffle: bool = True) -> list[tuple[str, int]]:
        stream = DistillationStream(sources, seed=seed, buffer_size=24, shuffle=shuffle)
        stream.set_epoch(epoch)
        return seen(stream, stream.langs)

    first = order(3, 0)
    assert first == order(3, 0)
    assert first != order(3, 1) and Counter(first) == Counter(order(3, 1))
    assert first != order(4, 0)
    assert order(3, 0, shuffle=False) == order(3, 1, shuffle=False) == order(4, 0, shuffle=False)


def test_token_budget(tmp_path, rng):
    written = [
        write_language(tmp_path, "de", [40, 40], rng, first_length=70),
        write_language(tmp_path, "es", [40], rng, first_id=500),
    ]
    stream = DistillationStream([w.shards for w in written], max_tokens=40, buffer_size=30)
    sizes = []
    for batch in stream:
        size, longest = batch.mask.shape
        assert size * longest <= 40 or size == 1
        assert longest == int(batch.lengths.max())
        sizes.append((size, longest))
    assert (1, 70) in sizes
    assert sum(s for s, _ in sizes) == 120


def test_languages_mix_within_batches(tmp_path, rng):
    written = [
        write_language(tmp_path, lang, [40, 40], rng, first_id=1000 * i)
        for i, lang in enumerate(["de", "es", "nl"])
    ]
    stream = DistillationStream(
        [w.shards for w in written], buffer_size=64, read_rows=8, max_tokens=200
    )
    mixed = [len(set(batch.lang.tolist())) for batch in stream]
    assert max(mixed) == 3 and sum(m > 1 for m in mixed) > len(mixed) / 2


def test_memory_bounded_by_buffer_not_shard_count(tmp_path, rng):
    for n_shards in (4, 40):
        w = write_language(tmp_path / str(n_shards), "de", [25] * n_shards, rng)
        stream = DistillationStream([w.shards], buffer_size=32, read_rows=8)
        assert len(seen(stream, stream.langs)) == 25 * n_shards
        assert 32 <= stream.peak_pool_sentences <= 32 + 8 - 1


def test_column_projection(two_langs):
    stream = DistillationStream([w.shards for w in two_langs], knowledge_columns=["log_marginals"])
    batch = next(iter(stream))
    assert batch.log_marginals is not None and batch.log_marginals.dtype == torch.float32
    assert batch.topk_tags is None and batch.emissions is None and batch.edge_sums is None
    baseline = next(iter(DistillationStream([w.shards for w in two_langs])))
    assert baseline.log_marginals is None and baseline.to("cpu").features.shape[-1] == DIM


def test_row_count_mismatch_names_both_files(tmp_path, rng):
    a = write_language(tmp_path / "a", "de", [20], rng)
    b = write_language(tmp_path / "b", "de", [21], rng)
    bad = LanguageShards("de", a.shards.prepared, b.shards.features)
    with pytest.raises(StructkdError) as err:
        DistillationStream([bad])
    assert str(err.value) == (
        f"{a.shards.prepared[0]} has 20 rows but {b.shards.features[0]} has 21 "
        "(shards must hold the same sentences in the same order)"
    )


def test_sent_id_mismatch_names_both_files(tmp_path, rng):
    a = write_language(tmp_path / "a", "de", [20], rng, max_len=1)
    b = write_language(tmp_path / "b", "de", [20], rng, max_len=1, first_id=5)
    bad = LanguageShards("de", a.shards.prepared, b.shards.features)
    with pytest.raises(StructkdError) as err:
        list(DistillationStream([bad]))
    assert str(err.value).startswith(
        f"{a.shards.prepared[0]}: row 0 has sent_id 0 but {b.shards.features[0]} has sent_id 5"
    )


def test_bad_requests(tmp_path, rng, two_langs):
    de = two_langs[0].shards
    with pytest.raises(ConfigError, match="language 'de' has no knowledge shards"):
        DistillationStream(
            [LanguageShards("de", de.prepared, de.features)], knowledge_columns=["emissions"]
        )
    flat = write_language(tmp_path / "flat", "fr", [5], rng, edges=False)
    with pytest.raises(ConfigError, match="has no column edge_sums"):
        DistillationStream([flat.shards], knowledge_columns=["edge_sums"])
    other = write_language(tmp_path / "other", "it", [5], rng, labels=("O", "B-Z", "I-Z"))
    with pytest.raises(StructkdError, match="label set differs"):
        DistillationStream([de, other.shards])
    with pytest.raises(ConfigError, match="max_tokens must be >= 1, got 0"):
        DistillationStream([de], max_tokens=0)
    with pytest.raises(ConfigError, match="distinct languages"):
        DistillationStream([de, de])


def test_malformed_metadata_names_the_file(tmp_path, rng, two_langs):
    de = two_langs[0].shards
    table = read_shard(de.features[0]).replace_schema_metadata(
        {"schema_version": str(SCHEMA_VERSION), "table": "features"}
    )
    broken = tmp_path / "broken.parquet"
    write_table_atomic(table, broken)
    with pytest.raises(StructkdError, match=f"{broken}: malformed features metadata"):
        DistillationStream([LanguageShards("de", de.prepared[:1], [broken])])


def test_k_projects_the_paths(two_langs):
    """With ``k`` the batches hold only the best k paths, as slicing a full batch would give."""
    sources = [w.shards for w in two_langs]
    columns = ["topk_tags", "topk_scores", "k_valid"]
    full = list(DistillationStream(sources, knowledge_columns=columns, max_tokens=60, seed=5))
    two = DistillationStream(sources, knowledge_columns=columns, max_tokens=60, seed=5, k=2)
    assert two.k == 2 and two.stored_k == K
    projected = list(two)
    assert len(projected) == len(full)
    for a, b in zip(full, projected, strict=True):
        assert b.topk_tags.shape == (a.topk_tags.shape[0], 2, a.topk_tags.shape[2])
        assert torch.equal(b.topk_tags, a.topk_tags[:, :2])
        assert torch.equal(b.topk_scores, a.topk_scores[:, :2])
        assert torch.equal(b.k_valid, a.k_valid.clamp(max=2))
        assert torch.equal(b.sent_id, a.sent_id)
    with pytest.raises(ConfigError, match="k = 4 but the knowledge holds only K = 3 paths"):
        DistillationStream(sources, knowledge_columns=columns, k=4)
    with pytest.raises(ConfigError, match="k must be >= 1, got 0"):
        DistillationStream(sources, knowledge_columns=columns, k=0)


def test_storage_stream_hands_out_numpy_pools(two_langs):
    """The storage layer's stream yields flat numpy pools; only batching makes tensors."""
    stream = ShardStream(
        [w.shards for w in two_langs], knowledge_columns=ALL_COLUMNS, buffer_size=32, k=2
    )
    pools = list(stream.pools(0, 1, stream.consumer_rng(0, 1)))
    assert pools and all(isinstance(v, np.ndarray) for p in pools for v in p.values())
    assert sum(len(p["sent_id"]) for p in pools) == stream.total_sentences
    for pool in pools:
        n, n_tok = len(pool["lengths"]), int(pool["lengths"].sum())
        assert pool["topk_tags"].shape == (2 * n_tok,) and pool["topk_scores"].shape == (n, 2)
        assert pool["log_marginals"].shape == (n_tok, len(LABELS))
        assert pool["edge_sums"].shape == (n, len(LABELS), len(LABELS))
        assert pool["features"].shape == (n_tok * DIM,) and pool["k_valid"].max() <= 2


def test_a_row_with_the_wrong_value_count_names_file_and_row(tmp_path, rng):
    w = write_language(tmp_path, "de", [6], rng)
    table = read_shard(w.shards.knowledge[0])
    column = table.column("log_marginals").combine_chunks()
    offsets = column.offsets.to_numpy().copy()
    offsets[3:] -= 1  # row 2 loses a value, the others keep theirs
    values = column.values.slice(0, int(offsets[-1]))
    broken = pa.ListArray.from_arrays(pa.array(offsets), values)
    index = table.schema.get_field_index("log_marginals")
    write_table_atomic(
        table.set_column(index, table.schema.field(index), broken), w.shards.knowledge[0]
    )
    stream = DistillationStream([w.shards], knowledge_columns=["log_marginals"])
    n = int(read_shard(w.shards.knowledge[0]).column("length")[2].as_py())
    with pytest.raises(StructkdError) as err:
        list(stream)
    assert str(err.value) == (
        f"{w.shards.knowledge[0]}: row 2: log_marginals has {n * len(LABELS) - 1} values, "
        f"expected {n * len(LABELS)}"
    )
