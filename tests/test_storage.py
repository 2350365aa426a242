"""Schemas, atomic shard writing, shard validation and manifests."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
from pathlib import Path
from typing import get_args

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from structkd.errors import InputError, StructkdError
from structkd.storage import ragged
from structkd.storage.arrays import (
    FeaturesArrays,
    KnowledgeArrays,
    PreparedArrays,
    binary_array,
    binary_values,
    list_array,
    list_values,
    read_knowledge,
)
from structkd.storage.cache import content_digest
from structkd.storage.io import atomic_write, parquet_errors, tree_digest
from structkd.storage.manifest import (
    MANIFEST_NAME,
    Manifest,
    ShardRecord,
    read_manifest,
    sha256_file,
    verify,
    write_manifest,
)
from structkd.storage.schemas import (
    FEATURES_SCHEMA,
    KNOWLEDGE_COLUMNS,
    KNOWLEDGE_SCHEMA,
    PREPARED_SCHEMA,
    FeaturesMeta,
    KnowledgeColumn,
    KnowledgeMeta,
    PreparedMeta,
    knowledge_schema,
    labels_digest,
)
from structkd.storage.shards import read_shard, shard_metadata, shard_name, write_table_atomic

LABELS = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC")


def make_knowledge(
    rng: np.random.Generator, n_sent: int, *, k: int = 3, edges: bool = True
) -> KnowledgeArrays:
    """Random knowledge that follows the contract: -inf scores and -1 tags for missing paths."""
    n_tags = len(LABELS)
    lengths = rng.integers(1, 9, n_sent)
    n_tok = int(lengths.sum())
    k_valid = rng.integers(1, k + 1, n_sent)
    scores = -np.sort(rng.exponential(3.0, (n_sent, k)), axis=1).astype(np.float32)
    scores[np.arange(k)[None, :] >= k_valid[:, None]] = -np.inf
    blocks = []
    for n, kv in zip(lengths, k_valid, strict=True):
        block = rng.integers(0, n_tags, (k, n))
        block[kv:] = -1
        blocks.append(block.reshape(-1))
    marginals = np.log(rng.dirichlet(np.ones(n_tags), n_tok))
    marginals[0, 1] = -np.inf  # a forbidden tag has probability exactly 0
    return KnowledgeArrays(
        sent_id=np.arange(100, 100 + n_sent),
        lengths=lengths,
        log_z=rng.normal(10.0, 3.0, n_sent),
        topk_tags=np.concatenate(blocks),
        topk_scores=scores,
        k_valid=k_valid,
        log_marginals=marginals,
        emissions=rng.normal(0.0, 2.0, (n_tok, n_tags)),
        edge_sums=(  # each sentence's matrix sums to its n - 1 edges
            (rng.dirichlet(np.ones(n_tags * n_tags), n_sent) * (lengths - 1)[:, None]).reshape(
                -1, n_tags, n_tags
            )
            if edges
            else None
        ),
    )


def make_meta(k: int = 3, dtype: str = "float32", edges: bool = True) -> KnowledgeMeta:
    n_tags = len(LABELS)
    transitions = np.arange(n_tags * n_tags, dtype=float).reshape(n_tags, n_tags) / 7
    transitions[0, 2] = -np.inf  # O -> I-PER forbidden
    return KnowledgeMeta(
        labels=LABELS,
        transitions=transitions,
        start=np.linspace(-1, 1, n_tags),
        end=np.zeros(n_tags),
        k=k,
        cache_key="abc123",
        digests={"teacher": "t", "prepared": "p", "features": "f"},
        marginals_dtype=dtype,  # type: ignore[arg-type]
        emissions_dtype=dtype,  # type: ignore[arg-type]
        edge_marginals=edges,
    )


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


class TestRoundTrip:
    @pytest.mark.parametrize(("dtype", "edges"), [("float32", True), ("float16", False)])
    def test_knowledge(self, tmp_path: Path, rng: np.random.Generator, dtype: str, edges: bool):
        arrays, meta = make_knowledge(rng, 40, edges=edges), make_meta(dtype=dtype, edges=edges)
        path = tmp_path / shard_name(0)
        record = write_table_atomic(arrays.to_table(meta), path, row_group_rows=16)
        assert record == ShardRecord(path.name, 40, sha256_file(path), path.stat().st_size)
        assert record == ShardRecord.of_file(path)
        assert pq.ParquetFile(path).metadata.num_row_groups == 3
        table = read_shard(path, expect_table="knowledge")
        back = KnowledgeArrays.from_table(table, k=3, n_tags=len(LABELS))
        for name in ("sent_id", "lengths", "log_z", "topk_tags", "k_valid"):
            np.testing.assert_array_equal(getattr(back, name), getattr(arrays, name))
        np.testing.assert_array_equal(back.topk_scores, arrays.topk_scores)  # incl. -inf
        assert np.isneginf(back.topk_scores).sum() == (3 - arrays.k_valid).sum()
        assert (back.topk_tags == -1).sum() == ((3 - arrays.k_valid) * arrays.lengths).sum()
        for name in ("log_marginals", "emissions"):
            assert getattr(back, name).dtype == np.dtype(dtype)
            want = getattr(arrays, name).astype(dtype)
            np.testing.assert_array_equal(getattr(back, name), want)
        assert back.log_marginals[0, 1] == -np.inf
        if edges:
            assert back.edge_sums is not None and back.edge_sums.dtype == np.float32
            assert back.edge_sums.shape == (40, len(LABELS), len(LABELS))
            np.testing.assert_array_equal(back.edge_sums, arrays.edge_sums.astype(np.float32))
        else:
            assert back.edge_sums is None and "edge_sums" not in table.column_names

    def test_knowledge_metadata(self, tmp_path: Path, rng: np.random.Generator):
        meta = make_meta()
        path = tmp_path / "k.parquet"
        write_table_atomic(make_knowledge(rng, 5).to_table(meta), path)
        back = KnowledgeMeta.from_metadata(shard_metadata(path))
        assert back.labels == LABELS and back.k == 3 and back.cache_key == "abc123"
        assert back.digests == meta.digests and back.edge_marginals
        np.testing.assert_array_equal(back.transitions, meta.transitions)  # -inf survives
        np.testing.assert_array_equal(back.start, meta.start)
        assert shard_metadata(path)["schema_version"] == "2"

    def test_prepared_and_features(self, tmp_path: Path, rng: np.random.Generator):
        lengths = np.array([3, 1, 2])
        prepared = PreparedArrays(
            sent_id=np.array([0, 1, 2]),
            lengths=lengths,
            tokens=np.array(["Die", "Katze", "schläft", ".", "Ja", "!"]),
            tags=np.array([0, 1, 2, 0, 3, 4]),
        )
        meta = PreparedMeta("de", "train", "de/train.conll", "BIO", labels_digest(LABELS))
        write_table_atomic(prepared.to_table(meta), tmp_path / "p.parquet")
        table = read_shard(tmp_path / "p.parquet", expect_table="prepared")
        assert table.schema.remove_metadata() == PREPARED_SCHEMA.remove_metadata()
        back = PreparedArrays.from_table(table)
        assert list(back.tokens) == list(prepared.tokens)
        np.testing.assert_array_equal(back.tags, prepared.tags)
        assert PreparedMeta.from_metadata(table.schema.metadata) == meta

        feats = rng.standard_normal((6, 4)).astype(np.float32)
        fmeta = FeaturesMeta(dim=4, encoder_digest="e", layer="4")
        table = FeaturesArrays(np.array([0, 1, 2]), lengths, feats).to_table(fmeta)
        assert table.schema.remove_metadata() == FEATURES_SCHEMA.remove_metadata()
        write_table_atomic(table, tmp_path / "f.parquet")
        back_f = FeaturesArrays.from_table(read_shard(tmp_path / "f.parquet"), dim=4)
        assert back_f.features.dtype == np.float16 and back_f.features.shape == (6, 4)
        np.testing.assert_array_equal(back_f.features, feats.astype(np.float16))
        # each row holds its sentence's float16 bytes, row-major
        second = table.column("features")[1].as_py()
        assert second == feats[3:4].astype("<f2").tobytes()
        assert FeaturesMeta.from_metadata(shard_metadata(tmp_path / "f.parquet")) == fmeta

    def test_knowledge_schema_is_the_contract(self):
        types = {f.name: str(f.type) for f in KNOWLEDGE_SCHEMA}
        assert types == {
            "sent_id": "int64",
            "length": "int32",
            "log_z": "double",
            "topk_tags": "list<item: int16>",
            "topk_scores": "list<item: float>",
            "k_valid": "int16",
            "log_marginals": "list<item: float>",
            "emissions": "list<item: float>",
        }
        assert KNOWLEDGE_SCHEMA.metadata[b"schema_version"] == b"2"


class TestListColumns:
    def test_sliced_and_chunked(self):
        values = np.arange(10, dtype=np.float32)
        column = list_array(values, np.array([2, 3, 0, 5]), pa.float32())
        flat, offsets = list_values(column)
        assert not flat.flags.owndata  # a view of the Arrow buffer
        np.testing.assert_array_equal(offsets, [0, 2, 5, 5, 10])
        flat, offsets = list_values(column.slice(1, 2))
        np.testing.assert_array_equal(flat, [2, 3, 4])
        np.testing.assert_array_equal(offsets, [0, 3, 3])
        chunked = pa.chunked_array([column.slice(0, 2), column.slice(3, 1)])
        flat, offsets = list_values(chunked)
        np.testing.assert_array_equal(flat, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
        np.testing.assert_array_equal(offsets, [0, 2, 5, 10])
        empty, offsets = list_values(pa.chunked_array([], pa.list_(pa.int16())))
        assert len(empty) == 0 and list(offsets) == [0]

    def test_sizes_must_match_values(self):
        with pytest.raises(ValueError, match="sum\\(sizes\\)=5"):
            list_array(np.arange(4), np.array([2, 3]), pa.int64())
        with pytest.raises(ValueError, match="sum\\(sizes\\)=10 bytes"):
            binary_array(np.arange(4, dtype=np.float16), np.array([2, 3]))

    def test_binary_sliced_and_chunked(self):
        values = np.arange(10, dtype=np.float16)
        column = binary_array(values, np.array([2, 3, 0, 5]))
        flat, offsets = binary_values(column, np.dtype(np.float16))
        assert not flat.flags.owndata  # a view of the Arrow buffer
        np.testing.assert_array_equal(flat, values)
        np.testing.assert_array_equal(offsets, [0, 2, 5, 5, 10])
        flat, offsets = binary_values(column.slice(1, 2), np.dtype(np.float16))
        np.testing.assert_array_equal(flat, [2, 3, 4])
        np.testing.assert_array_equal(offsets, [0, 3, 3])
        chunked = pa.chunked_array([column.slice(0, 2), column.slice(3, 1)])
        flat, offsets = binary_values(chunked, np.dtype(np.float16))
        np.testing.assert_array_equal(flat, values)
        np.testing.assert_array_equal(offsets, [0, 2, 5, 10])
        empty, offsets = binary_values(pa.chunked_array([], pa.binary()), np.dtype(np.float16))
        assert len(empty) == 0 and list(offsets) == [0]
        with pytest.raises(ValueError, match="not whole float16 values"):
            binary_values(pa.array([b"abc"]), np.dtype(np.float16))


class TestValidation:
    def test_nan_emissions_name_the_sentence(self, rng: np.random.Generator):
        arrays = make_knowledge(rng, 4)
        arrays.emissions[int(arrays.lengths[0]) + 1, 2] = np.nan
        with pytest.raises(InputError, match="sent_id 101: emissions contain NaN or inf"):
            arrays.to_table(make_meta())

    def test_emissions_overflowing_their_float16_column(self, rng: np.random.Generator):
        arrays = make_knowledge(rng, 4)
        arrays.emissions[0, 0] = 7e4
        arrays.to_table(make_meta(dtype="float32"))  # fits float32
        with pytest.raises(InputError, match="sent_id 100: emissions contain NaN or inf"):
            arrays.to_table(make_meta(dtype="float16"))

    def test_padding_by_repeating_a_path_is_rejected(self, rng: np.random.Generator):
        arrays = make_knowledge(rng, 30)
        i = int(np.flatnonzero(arrays.k_valid < 3)[0])
        arrays.topk_scores[i, 2] = arrays.topk_scores[i, 0]  # a repeated path instead of -inf
        with pytest.raises(InputError, match=f"sent_id {100 + i}: topk_scores must be finite"):
            arrays.to_table(make_meta())

    def test_features_beyond_float16(self):
        features = np.ones((3, 2), np.float32)
        features[2, 1] = 1e6
        arrays = FeaturesArrays(np.array([7, 8]), np.array([2, 1]), features)
        with pytest.raises(InputError, match="sent_id 8: features NaN or beyond float16"):
            arrays.to_table(FeaturesMeta(dim=2, encoder_digest="e", layer="4"))

    def test_wrong_shape(self, rng: np.random.Generator):
        arrays = make_knowledge(rng, 4, edges=False)
        with pytest.raises(ValueError, match="edge_sums must have shape"):
            arrays.to_table(make_meta(edges=True))

    def test_per_position_edges_are_refused(self, rng: np.random.Generator):
        """Version 1's layout (one matrix per edge) does not pass for the summed one."""
        arrays = make_knowledge(rng, 6)
        n_edges = int((arrays.lengths - 1).sum())
        per_edge = np.full((n_edges, len(LABELS), len(LABELS)), 1 / len(LABELS) ** 2)
        with pytest.raises(ValueError, match=r"edge_sums must have shape \(6, 5, 5\)"):
            dataclasses.replace(arrays, edge_sums=per_edge).to_table(make_meta())

    def test_edge_sums_count_the_edges(self, rng: np.random.Generator):
        arrays = make_knowledge(rng, 6)
        i = int(np.flatnonzero(arrays.lengths > 1)[0])
        assert arrays.edge_sums is not None
        arrays.edge_sums[i] *= 0.5
        with pytest.raises(InputError, match=f"sent_id {100 + i}: edge_sums do not sum"):
            arrays.to_table(make_meta())
        arrays.edge_sums[i, 0, 0] = np.inf
        with pytest.raises(InputError, match=f"sent_id {100 + i}: edge_sums contain NaN or inf"):
            arrays.to_table(make_meta())


class TestShardFiles:
    def write(self, tmp_path: Path, rng: np.random.Generator, **meta: str) -> Path:
        path = tmp_path / shard_name(3)
        write_table_atomic(make_knowledge(rng, 200).to_table(make_meta()), path, metadata=meta)
        return path

    def test_failed_write_leaves_no_partial_file(self, tmp_path, rng, monkeypatch):
        path = self.write(tmp_path, rng)
        before = path.read_bytes()
        calls = []
        original = pq.ParquetWriter.write_table

        def disk_full_on_second_row_group(self, table, *args, **kwargs):
            calls.append(len(table))
            if len(calls) == 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return original(self, table, *args, **kwargs)

        monkeypatch.setattr(pq.ParquetWriter, "write_table", disk_full_on_second_row_group)
        table = make_knowledge(rng, 50).to_table(make_meta())
        with pytest.raises(StructkdError) as err:
            write_table_atomic(table, path, row_group_rows=20)
        assert str(err.value) == f"{path}: cannot write shard (No space left on device)"
        assert calls == [20, 20]
        assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary left
        assert path.read_bytes() == before  # the old complete shard is untouched

    @pytest.mark.parametrize("keep", [0.0, 0.5, 0.97])
    def test_truncated_file(self, tmp_path, rng, keep):
        path = self.write(tmp_path, rng)
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * keep)])
        with pytest.raises(StructkdError) as err:
            read_shard(path)
        assert str(err.value) == f"{path}: not a valid Parquet file (truncated or corrupt)"

    def test_flipped_bytes_inside_a_page(self, tmp_path, rng):
        path = self.write(tmp_path, rng)
        data = bytearray(path.read_bytes())
        middle = len(data) // 2
        data[middle : middle + 8] = bytes(b ^ 0xFF for b in data[middle : middle + 8])
        path.write_bytes(bytes(data))
        with pytest.raises(StructkdError, match="not a valid Parquet file"):
            read_shard(path)

    def test_schema_version_mismatch(self, tmp_path, rng):
        path = self.write(tmp_path, rng, schema_version="1")
        with pytest.raises(StructkdError) as err:
            read_shard(path)
        assert str(err.value).startswith(f"{path}: schema version 1, expected 2")
        assert read_shard(path, expect_schema_version=None).num_rows == 200

    def test_wrong_table_kind(self, tmp_path, rng):
        path = self.write(tmp_path, rng)
        with pytest.raises(StructkdError, match="holds a knowledge table, expected features"):
            read_shard(path, expect_table="features")

    def test_missing_file(self, tmp_path):
        with pytest.raises(StructkdError, match="file not found"):
            read_shard(tmp_path / "nope.parquet")


class TestManifest:
    def make_dir(self, tmp_path: Path, rng: np.random.Generator) -> Path:
        records = [
            write_table_atomic(
                make_knowledge(rng, 30).to_table(make_meta()), tmp_path / shard_name(i)
            )
            for i in range(3)
        ]
        write_manifest(tmp_path, Manifest("key", {"teacher": "t"}, records, complete=True))
        return tmp_path

    def test_round_trip_and_verify_clean(self, tmp_path, rng):
        directory = self.make_dir(tmp_path, rng)
        manifest = read_manifest(directory)
        assert manifest is not None and manifest.complete and len(manifest.shards) == 3
        assert json.loads((directory / MANIFEST_NAME).read_text())["shards"][0]["rows"] == 30
        assert verify(directory) == []
        assert not list(directory.glob(".*tmp"))

    def test_same_size_corruption_is_a_checksum_mismatch(self, tmp_path, rng):
        directory = self.make_dir(tmp_path, rng)
        path = directory / shard_name(1)
        data = bytearray(path.read_bytes())
        data[100] ^= 0x01
        path.write_bytes(bytes(data))
        assert verify(directory) == [
            f"{path}: sha256 differs from the manifest (corrupt or changed)"
        ]
        assert verify(directory, deep=False) == []  # size-only check cannot see it

    def test_missing_truncated_and_row_count(self, tmp_path, rng):
        directory = self.make_dir(tmp_path, rng)
        (directory / shard_name(0)).unlink()
        (directory / shard_name(2)).write_bytes(b"PAR1")
        manifest = read_manifest(directory)
        assert manifest is not None
        manifest.shards[1] = ShardRecord(
            shard_name(1), 31, manifest.shards[1].sha256, manifest.shards[1].bytes
        )
        manifest.complete = False
        write_manifest(directory, manifest)
        problems = verify(directory)
        assert problems[0] == f"{directory / shard_name(0)}: missing"
        assert problems[1] == f"{directory / shard_name(1)}: 30 rows, manifest says 31"
        assert problems[2].startswith(f"{directory / shard_name(2)}: 4 bytes, manifest says")
        assert problems[3] == f"{directory / MANIFEST_NAME}: incomplete (3 shards written so far)"

    def test_malformed_and_absent_manifest(self, tmp_path):
        assert verify(tmp_path) == [f"{tmp_path / MANIFEST_NAME}: missing"]
        (tmp_path / MANIFEST_NAME).write_text('{"key": "k"')
        with pytest.raises(StructkdError, match="not a valid manifest"):
            read_manifest(tmp_path)
        assert "not a valid manifest" in verify(tmp_path)[0]


class TestKnowledgeContract:
    def test_the_column_table_declares_every_column_once(self):
        assert tuple(KNOWLEDGE_COLUMNS) == get_args(KnowledgeColumn)
        assert all(name == spec.name for name, spec in KNOWLEDGE_COLUMNS.items())
        assert [f.name for f in knowledge_schema(edge_marginals=True)][2:] == list(
            KNOWLEDGE_COLUMNS
        )
        assert KNOWLEDGE_SCHEMA.names == ["sent_id", "length", *make_meta(edges=False).columns]

    def test_schema_types_come_from_the_table(self):
        schema = knowledge_schema(marginals_dtype="float16", edge_marginals=True)
        assert schema.field("log_z").type == pa.float64()
        assert schema.field("k_valid").type == pa.int16()
        assert schema.field("topk_tags").type == pa.list_(pa.int16())
        assert schema.field("topk_scores").type == pa.list_(pa.float32())
        assert schema.field("log_marginals").type == pa.list_(pa.float16())
        assert schema.field("emissions").type == pa.list_(pa.float32())
        assert schema.field("edge_sums").type == pa.list_(pa.float32())

    def test_sizes_and_shapes(self):
        lengths, k, n_tags = np.array([1, 3, 2]), 4, 5
        want = {
            "log_z": ([1, 1, 1], (3,), (3,)),
            "topk_tags": ([4, 12, 8], (24,), (3, 4, 7)),
            "topk_scores": ([4, 4, 4], (3, 4), (3, 4)),
            "k_valid": ([1, 1, 1], (3,), (3,)),
            "log_marginals": ([5, 15, 10], (6, 5), (3, 7, 5)),
            "emissions": ([5, 15, 10], (6, 5), (3, 7, 5)),
            "edge_sums": ([25, 25, 25], (3, 5, 5), (3, 5, 5)),
        }
        for name, (sizes, flat, padded) in want.items():
            spec = KNOWLEDGE_COLUMNS[name]
            assert spec.sizes(lengths, k, n_tags).tolist() == sizes, name
            assert spec.flat_shape(lengths, k, n_tags) == flat, name
            assert spec.padded_shape(3, 7, k, n_tags) == padded, name

    def test_read_knowledge_keeps_the_best_k_paths(self, rng):
        arrays = make_knowledge(rng, 30)
        meta = make_meta()
        table = arrays.to_table(meta)
        full = KnowledgeArrays.from_table(table, k=meta.k, n_tags=meta.n_tags)
        two = read_knowledge(
            table,
            ["topk_tags", "topk_scores", "k_valid"],
            lengths=full.lengths,
            k=meta.k,
            n_tags=meta.n_tags,
            k_out=2,
        )
        for i in range(30):
            n = int(full.lengths[i])
            start = 2 * int(np.sum(full.lengths[:i]))
            np.testing.assert_array_equal(
                two["topk_tags"][start : start + 2 * n].reshape(2, n), full.paths(i)[:2]
            )
        np.testing.assert_array_equal(two["topk_scores"], full.topk_scores[:, :2])
        np.testing.assert_array_equal(two["k_valid"], np.minimum(full.k_valid, 2))


class TestIo:
    def test_atomic_write_replaces_whole_or_not_at_all(self, tmp_path):
        path = tmp_path / "sub" / "f.bin"
        atomic_write(path, lambda f: f.write(b"old"))
        assert path.read_bytes() == b"old"

        def fails(f):
            f.write(b"half")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        with pytest.raises(OSError, match="No space left"):
            atomic_write(path, fails)
        assert path.read_bytes() == b"old"
        assert sorted(p.name for p in path.parent.iterdir()) == ["f.bin"]

    def test_tree_digest_is_the_cache_digest(self, tmp_path):
        (tmp_path / "a").mkdir()
        (tmp_path / "a" / "x.bin").write_bytes(b"x")
        (tmp_path / ".lock").write_bytes(b"")
        assert tree_digest(tmp_path) == content_digest(tmp_path)
        assert tree_digest(tmp_path / "a" / "x.bin") == sha256_file(tmp_path / "a" / "x.bin")

    def test_parquet_errors(self, tmp_path):
        bad = tmp_path / "bad.parquet"
        bad.write_bytes(b"not parquet")
        with pytest.raises(StructkdError) as err, parquet_errors(bad):
            pq.read_metadata(bad)
        assert str(err.value) == f"{bad}: not a valid Parquet file (truncated or corrupt)"
        with pytest.raises(StructkdError) as err, parquet_errors(tmp_path / "none"):
            pq.read_metadata(tmp_path / "none")
        assert str(err.value) == f"{tmp_path / 'none'}: file not found"


def test_ragged_helpers():
    lengths = np.array([2, 0, 3])
    offs = ragged.offsets(lengths)
    assert offs.tolist() == [0, 2, 2, 5] and offs.dtype == np.int64
    values = np.arange(5)
    assert ragged.row(values, offs, 2).tolist() == [2, 3, 4]
    padded = ragged.pad(values, lengths, offs[:-1], width=3, fill=-1, dtype=np.int64)
    assert padded.tolist() == [[0, 1, -1], [-1, -1, -1], [2, 3, 4]]
    assert ragged.mask(lengths, 3).sum(1).tolist() == [2, 0, 3]
