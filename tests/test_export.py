"""export-teachers end to end on a tiny real project: the shards' contract and content, and reuse.

Content: the stored emissions are the teacher's, and the stored top-k, log Z, marginals and edge
marginals agree with brute-force enumeration (short sentences) and with the torch CRF layer
(every sentence) recomputed from the stored emissions and the CRF in the shard metadata.
Reuse (through the real command): hit, changed teacher, corrupt or truncated shard, interrupted
export, and 2 dask workers against 1.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from crf_oracle import brute_force, path_score
from e2e_project import (
    TEACHERS,
    Project,
    cli,
    cli_error,
    copy_project,
    read_params,
    shared_project,
    write_params,
)

from structkd.pipeline import crf_kernels
from structkd.pipeline.crf import CRF
from structkd.pipeline.data import load_split, shard_paths
from structkd.pipeline.labels import LabelSet
from structkd.pipeline.models import load_tagger
from structkd.storage.arrays import KnowledgeArrays
from structkd.storage.manifest import read_manifest, verify
from structkd.storage.schemas import KnowledgeMeta, knowledge_schema
from structkd.storage.shards import read_shard, shard_metadata

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(scope="session")
def project(tmp_path_factory: pytest.TempPathFactory, tiny_encoder_dir: Path) -> Project:
    return shared_project(tmp_path_factory.getbasetemp() / "e2e-project", tiny_encoder_dir)


def knowledge_dir(root: Path, lang: str) -> Path:
    return root / "knowledge" / lang


def load_shard(path: Path) -> tuple[KnowledgeMeta, KnowledgeArrays]:
    meta = KnowledgeMeta.from_metadata(shard_metadata(path))
    table = read_shard(path, expect_table="knowledge")
    return meta, KnowledgeArrays.from_table(table, k=meta.k, n_tags=meta.n_tags)


def tables(directory: Path) -> dict[str, pa.Table]:
    """Every shard of a knowledge directory, by name."""
    return {p.name: read_shard(p) for p in sorted(directory.glob("part-*.parquet"))}


def file_stamps(directory: Path) -> dict[str, tuple[int, int]]:
    """(inode, mtime_ns) of every shard: unchanged means the file was not rewritten."""
    return {
        p.name: (p.stat().st_ino, p.stat().st_mtime_ns)
        for p in sorted(directory.glob("part-*.parquet"))
    }


def sentences(meta: KnowledgeMeta, arrays: KnowledgeArrays) -> Iterator[dict]:
    """Per sentence: its stored knowledge, as float64 arrays."""
    lengths = np.asarray(arrays.lengths, np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    for i, n in enumerate(lengths):
        lo, hi = offsets[i], offsets[i + 1]
        yield {
            "n": int(n),
            "emissions": arrays.emissions[lo:hi].astype(np.float64),
            "log_marginals": arrays.log_marginals[lo:hi].astype(np.float64),
            "edge_sums": arrays.edge_sums[i].astype(np.float64),
            "log_z": float(arrays.log_z[i]),
            "paths": arrays.topk_tags[meta.k * lo : meta.k * hi].reshape(meta.k, n),
            "scores": np.asarray(arrays.topk_scores[i], np.float64),
            "k_valid": int(arrays.k_valid[i]),
        }


def all_shards(root: Path) -> Iterator[tuple[str, Path]]:
    for lang in TEACHERS:
        for path in shard_paths(knowledge_dir(root, lang)):
            yield lang, path


# --- the shards' contract (schemas.KNOWLEDGE_COLUMNS) ---------------------------------------


def test_shards_follow_the_contract(project: Project) -> None:
    labels = LabelSet.load(project.root / "data" / "prepared" / "labels.json")
    schema = knowledge_schema(
        marginals_dtype="float32", emissions_dtype="float32", edge_marginals=True
    )
    for lang in TEACHERS:
        directory = knowledge_dir(project.root, lang)
        assert verify(directory) == []
        manifest = read_manifest(directory)
        prepared = shard_paths(project.root / "data" / "prepared" / lang / "train")
        assert len(prepared) == 3  # 60 sentences in shards of 25
        assert [r.name for r in manifest.shards] == [p.name for p in prepared]
        assert manifest.complete
        assert set(manifest.inputs) == {"teacher", "teacher_config", "prepared", "features"}
        crf = load_tagger(project.root / "models" / "teachers" / lang).crf.numpy_params()
        for prepared_path, record in zip(prepared, manifest.shards, strict=True):
            path = directory / record.name
            table = read_shard(path, expect_table="knowledge")
            assert table.schema.remove_metadata().equals(schema)
            meta, arrays = load_shard(path)
            arrays.validate(meta)
            assert meta.labels == labels.labels
            assert (meta.k, meta.edge_marginals, meta.cache_key) == (5, True, manifest.key)
            assert dict(meta.digests) == manifest.inputs
            for name in ("transitions", "start", "end"):
                np.testing.assert_array_equal(getattr(meta, name), crf[name])
            gold = read_shard(prepared_path).to_pydict()
            assert arrays.sent_id.tolist() == gold["sent_id"]
            assert arrays.lengths.tolist() == gold["length"]
            assert record.rows == len(gold["sent_id"])
            # 17 labels: every sentence has at least K = 5 paths
            assert (arrays.k_valid == meta.k).all()


def test_emissions_are_the_teachers(project: Project) -> None:
    """Recompute each teacher's emissions sentence by sentence (no batching, no padding)."""
    for lang in TEACHERS:
        teacher = load_tagger(project.root / "models" / "teachers" / lang)
        split = load_split(
            project.root / "data" / "prepared" / lang / "train",
            project.root / "data" / "features" / lang / "train",
            lang,
            "train",
        )
        stored = np.concatenate(
            [load_shard(p)[1].emissions for p in shard_paths(knowledge_dir(project.root, lang))]
        )
        offsets = np.concatenate([[0], np.cumsum([len(t) for t in split.tokens])])
        assert stored.shape == (offsets[-1], len(teacher.labels.labels))
        with torch.inference_mode():
            for i, (tokens, features) in enumerate(zip(split.tokens, split.features, strict=True)):
                x = torch.from_numpy(features.astype(np.float32))[None]
                mask = torch.ones(1, len(tokens), dtype=torch.bool)
                mine = teacher.emissions(x, mask, [tokens])[0].double().numpy()
                np.testing.assert_allclose(
                    stored[offsets[i] : offsets[i + 1]], mine, rtol=1e-5, atol=1e-5
                )


def test_short_sentences_equal_brute_force(project: Project) -> None:
    """Top-K, log Z, marginals and edge marginals of every sentence of <= 4 tokens (17^4 paths)."""
    checked = 0
    for _, path in all_shards(project.root):
        meta, arrays = load_shard(path)
        crf = (meta.transitions, meta.start, meta.end)
        for s in sentences(meta, arrays):
            if s["n"] > 4:
                continue
            checked += 1
            brute = brute_force(s["emissions"], *crf)
            k = meta.k
            assert s["k_valid"] == k
            np.testing.assert_allclose(s["scores"], brute.scores[:k], rtol=1e-6, atol=1e-4)
            for rank, tags in enumerate(s["paths"]):
                assert path_score(s["emissions"], tags, *crf) == pytest.approx(
                    s["scores"][rank], abs=1e-4
                )
                # the exact path too, unless a neighbour scores the same (float32 emissions)
                gaps = np.abs(np.array(brute.scores[: k + 1]) - brute.scores[rank])
                if np.sort(gaps)[1] > 1e-3:
                    assert tuple(tags) == brute.paths[rank]
            assert len({tuple(p) for p in s["paths"]}) == k
            assert s["log_z"] == pytest.approx(brute.log_z, abs=1e-4)
            np.testing.assert_allclose(np.exp(s["log_marginals"]), brute.marginals, atol=1e-5)
            np.testing.assert_allclose(s["edge_sums"], brute.edges.sum(0), atol=1e-5)
    assert checked >= 5  # 6 in the sliced corpora


def crf_from_meta(meta: KnowledgeMeta) -> CRF:
    """The torch CRF layer with the teacher's transitions/start/end (-inf = forbidden)."""
    crf = CRF(
        meta.n_tags,
        allowed=torch.as_tensor(np.isfinite(meta.transitions)),
        start_allowed=torch.as_tensor(np.isfinite(meta.start)),
        end_allowed=torch.as_tensor(np.isfinite(meta.end)),
    ).double()
    with torch.no_grad():
        for name in ("transitions", "start", "end"):
            value = getattr(meta, name)
            getattr(crf, name).copy_(torch.from_numpy(np.where(np.isfinite(value), value, 0.0)))
    return crf


def test_posteriors_match_the_torch_crf(project: Project) -> None:
    """Every sentence: log Z and marginals by the torch CRF layer, edge marginals by the kernels
    (summed per sentence), all from the stored emissions; the sums agree with the unary ones."""
    for _, path in all_shards(project.root):
        meta, arrays = load_shard(path)
        rows = list(sentences(meta, arrays))
        n_max = max(s["n"] for s in rows)
        emissions = torch.zeros(len(rows), n_max, meta.n_tags, dtype=torch.float64)
        mask = torch.zeros(len(rows), n_max, dtype=torch.bool)
        for b, s in enumerate(rows):
            emissions[b, : s["n"]] = torch.from_numpy(s["emissions"])
            mask[b, : s["n"]] = True
        crf = crf_from_meta(meta)
        with torch.no_grad():
            log_z = crf.log_partition(emissions, mask).numpy()
            marginals = crf.log_marginals(emissions, mask).exp().numpy()
        np.testing.assert_allclose(arrays.log_z, log_z, rtol=1e-6, atol=1e-4)
        flat = np.exp(arrays.log_marginals.astype(np.float64))
        np.testing.assert_allclose(flat, marginals[mask.numpy()], atol=1e-5)
        offsets = np.concatenate([[0], np.cumsum(arrays.lengths)]).astype(np.int64)
        edges = crf_kernels.edge_marginals(
            emissions=arrays.emissions.astype(np.float64),
            offsets=offsets,
            transitions=meta.transitions,
            start=meta.start,
            end=meta.end,
        )
        for s, a in zip(rows, offsets[:-1] - np.arange(len(rows)), strict=True):
            # the stored sums are the per-position edge marginals summed over the sentence
            per_position = edges[a : a + s["n"] - 1]
            np.testing.assert_allclose(s["edge_sums"], per_position.sum(0), atol=1e-5)
            unary = np.exp(s["log_marginals"])  # row sums: tokens 0..n-2; columns: 1..n-1
            np.testing.assert_allclose(s["edge_sums"].sum(1), unary[:-1].sum(0), atol=1e-4)
            np.testing.assert_allclose(s["edge_sums"].sum(0), unary[1:].sum(0), atol=1e-4)


def test_knowledge_show(project: Project) -> None:
    path = knowledge_dir(project.root, "en") / "part-00000.parquet"
    meta, arrays = load_shard(path)
    row = next(i for i, n in enumerate(arrays.lengths) if 3 <= n <= 8)
    out = cli("knowledge", "show", str(path), "--sentence", str(row), "--top", "3")
    assert f"rows {len(arrays.sent_id)}" in out and "K 5" in out and "labels 17" in out
    schema = read_shard(path).schema
    assert [f"    {f.name}: {f.type}" for f in schema] == [
        line for line in out.splitlines() if line.startswith("    ")
    ]
    assert "edge_sums" in schema.names
    s = list(sentences(meta, arrays))[row]
    prepared = read_shard(project.root / "data" / "prepared" / "en" / "train" / path.name)
    assert "  tokens: " + " ".join(prepared.column("tokens")[row].as_py()) in out.splitlines()
    ranked = [line for line in out.splitlines() if line.startswith("  #")]
    assert len(ranked) == 3
    for rank, line in enumerate(ranked):
        head, tags = line.split(": ", 1)
        assert tags.split() == [meta.labels[t] for t in s["paths"][rank]]
        prob = float(head.split("p=")[1].split()[0])
        assert prob == pytest.approx(np.exp(s["scores"][rank] - s["log_z"]), abs=1e-4)
    assert cli_error("knowledge", "show", str(path), "--sentence", "999").startswith("Error: ")


def test_knowledge_show_outside_the_project(project: Project, tmp_path: Path) -> None:
    """A shard copied away from ``<root>/knowledge/<lang>/`` says in one line why it shows no
    words (never ``?``), and shows them again when given its prepared shard."""
    path = knowledge_dir(project.root, "en") / "part-00000.parquet"
    meta, arrays = load_shard(path)
    assert meta.prepared == f"../../data/prepared/en/train/{path.name}"
    copy = tmp_path / "elsewhere" / path.name
    copy.parent.mkdir()
    copy.write_bytes(path.read_bytes())
    out = cli("knowledge", "show", str(copy), "--sentence", "0")
    missing = copy.parent / meta.prepared
    assert (
        f"  tokens not shown: its prepared shard {missing} is not there; "
        "pass --prepared <its prepared shard> to show them"
    ) in out.splitlines()
    assert "?" not in out
    prepared = project.root / "data" / "prepared" / "en" / "train" / path.name
    out = cli("knowledge", "show", str(copy), "--sentence", "0", "--prepared", str(prepared))
    words = read_shard(prepared).column("tokens")[0].as_py()
    assert "  tokens: " + " ".join(words) in out.splitlines()
    wrong = project.root / "data" / "prepared" / "en" / "train" / "part-00001.parquet"
    out = cli("knowledge", "show", str(copy), "--sentence", "0", "--prepared", str(wrong))
    n = int(arrays.lengths[0])
    assert (
        f"  tokens not shown: {wrong} has no sentence {int(arrays.sent_id[0])} of {n} tokens"
    ) in out.splitlines()


# --- reuse through the real command -----------------------------------------------------------


def test_second_export_is_a_hit(project: Project) -> None:
    again = project.logs["export-teachers again"]
    first = project.logs["export-teachers"]
    for lang in TEACHERS:
        assert f"knowledge {lang}: computing 3 of 3 shards" in first
        assert f"knowledge {lang}: up to date, no teacher run" in again
    assert "computing" not in again
    stamps = {lang: file_stamps(knowledge_dir(project.root, lang)) for lang in TEACHERS}
    out = cli("stage", "export-teachers", "--params", str(project.params))
    assert out.count("up to date, no teacher run") == len(TEACHERS) + 1  # + unlabeled/fr
    assert {lang: file_stamps(knowledge_dir(project.root, lang)) for lang in TEACHERS} == stamps


def test_changed_teacher_recomputes_only_its_language(project: Project, tmp_path: Path) -> None:
    params = copy_project(project.root, tmp_path / "p")
    root = params.parent
    en_before, de_before = file_stamps(knowledge_dir(root, "en")), tables(knowledge_dir(root, "de"))
    settings = read_params(params)
    settings["teacher"]["seed"] = 11
    write_params(params, settings)
    cli("stage", "train-teacher", "de", "--params", str(params))
    out = cli("stage", "export-teachers", "--params", str(params))
    assert "knowledge en: up to date, no teacher run" in out
    assert "knowledge de: computing 3 of 3 shards" in out and "made for key" in out
    assert file_stamps(knowledge_dir(root, "en")) == en_before
    de_after = tables(knowledge_dir(root, "de"))
    assert de_after.keys() == de_before.keys()
    for name, table in de_after.items():
        assert table.column("sent_id").equals(de_before[name].column("sent_id"))
        assert not table.column("emissions").equals(de_before[name].column("emissions"))
    assert verify(knowledge_dir(root, "de")) == []


def test_corrupt_and_truncated_shards_are_refused_then_recomputed(
    project: Project, tmp_path: Path
) -> None:
    params = copy_project(project.root, tmp_path / "p")
    root = params.parent
    before = {lang: tables(knowledge_dir(root, lang)) for lang in TEACHERS}
    flipped = knowledge_dir(root, "en") / "part-00001.parquet"
    data = bytearray(flipped.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 16] = bytes(b ^ 0xFF for b in data[middle : middle + 16])
    flipped.write_bytes(bytes(data))
    truncated = knowledge_dir(root, "de") / "part-00002.parquet"
    truncated.write_bytes(truncated.read_bytes()[:-100])
    untouched = {
        lang: {n: s for n, s in file_stamps(knowledge_dir(root, lang)).items() if n != bad.name}
        for lang, bad in (("en", flipped), ("de", truncated))
    }

    error = cli_error("stage", "train-student", "posterior", "--params", str(params))
    assert f"{knowledge_dir(root, 'en')}: knowledge is corrupt" in error
    assert "sha256 differs from the manifest" in error
    assert "rerun `structkd stage export-teachers`" in error
    assert len(error.strip().splitlines()) == 1

    out = cli("stage", "export-teachers", "--params", str(params))
    assert "knowledge en: computing 1 of 3 shards" in out and "sha256 differs" in out
    assert "knowledge de: computing 1 of 3 shards" in out and "truncated or changed" in out
    for lang in TEACHERS:
        assert verify(knowledge_dir(root, lang)) == []
        stamps = file_stamps(knowledge_dir(root, lang))
        assert {n: stamps[n] for n in untouched[lang]} == untouched[lang]
        after = tables(knowledge_dir(root, lang))
        assert after.keys() == before[lang].keys()
        for name, table in after.items():
            assert table.equals(before[lang][name]), f"{lang}/{name} differs after recompute"


def test_export_killed_before_its_commit_runs_no_teacher(project: Project, tmp_path: Path) -> None:
    """Every shard written and verified, but the manifest never marked complete: the rerun
    commits it without computing anything or touching a shard."""
    params = copy_project(project.root, tmp_path / "p")
    directory = knowledge_dir(params.parent, "de")
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["complete"] = False
    (directory / "manifest.json").write_text(json.dumps(manifest))
    kept = file_stamps(directory)

    out = cli("stage", "export-teachers", "--params", str(params))
    assert "knowledge de: computing 0 of 3 shards" in out
    assert json.loads((directory / "manifest.json").read_text())["complete"]
    assert file_stamps(directory) == kept
    assert verify(directory) == []
    again = cli("stage", "export-teachers", "--params", str(params))
    assert "knowledge de: up to date, no teacher run" in again


def test_interrupted_export_computes_only_the_missing_shard(
    project: Project, tmp_path: Path
) -> None:
    """What a killed export leaves: a manifest marked incomplete that lists the shards finished
    so far, a missing shard, and a writer's temporary file."""
    params = copy_project(project.root, tmp_path / "p")
    directory = knowledge_dir(params.parent, "de")
    before = tables(directory)
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["shards"] = [r for r in manifest["shards"] if r["name"] != "part-00001.parquet"]
    manifest["complete"] = False
    (directory / "manifest.json").write_text(json.dumps(manifest))
    (directory / "part-00001.parquet").unlink()
    leftover = directory / ".part-00001.parquet.999-1.tmp"
    leftover.write_bytes(b"half a shard")
    kept = file_stamps(directory)

    error = cli_error("stage", "train-student", "topwk", "--params", str(params))
    assert "knowledge is partial" in error and "interrupted export" in error

    out = cli("stage", "export-teachers", "--params", str(params))
    assert "knowledge en: up to date, no teacher run" in out
    assert "knowledge de: computing 1 of 3 shards" in out and "interrupted export" in out
    assert not leftover.exists()
    stamps = file_stamps(directory)
    assert {n: stamps[n] for n in kept} == kept
    assert verify(directory) == []
    after = tables(directory)
    assert after.keys() == before.keys()
    assert all(after[n].equals(before[n]) for n in before)


def test_two_dask_workers_equal_one(project: Project, tmp_path: Path) -> None:
    params = copy_project(project.root, tmp_path / "p")
    for lang in TEACHERS:
        for path in knowledge_dir(params.parent, lang).iterdir():
            path.unlink()
    out = cli("stage", "export-teachers", "--workers", "2", "--params", str(params))
    for lang in TEACHERS:
        assert f"knowledge {lang}: computing 3 of 3 shards" in out
        one, two = (
            tables(knowledge_dir(project.root, lang)),
            tables(knowledge_dir(params.parent, lang)),
        )
        assert one.keys() == two.keys()
        for name in one:
            assert one[name].equals(two[name]), f"{lang}/{name}: 2 workers differ from 1"
            assert one[name].schema.metadata == two[name].schema.metadata
        assert (
            read_manifest(knowledge_dir(params.parent, lang)).key
            == read_manifest(knowledge_dir(project.root, lang)).key
        )
