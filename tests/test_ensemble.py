"""Teacher mixtures against enumeration: p_mix(y) = Σ_i w_i p_i(y) over every tag sequence."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from crf_oracle import apply_constraints, brute_force, random_constraints
from e2e_project import Project, cli, copy_project, read_params, shared_project, write_params
from safetensors.torch import load_file

from structkd.pipeline import crf_kernels
from structkd.pipeline.crf import CRF
from structkd.pipeline.data import Split
from structkd.pipeline.ensemble import TeacherKnowledge, mix, path_log_probs, teacher_knowledge
from structkd.pipeline.evaluate import predict_split_ensemble
from structkd.pipeline.evaluation import predict_split
from structkd.pipeline.export import ShardJob, export_shard, teacher_emissions
from structkd.pipeline.export_teachers import knowledge_inputs, plan_export
from structkd.pipeline.labels import LabelSet
from structkd.pipeline.layout import open_project
from structkd.pipeline.losses import emission_kd, posterior_kd, structural_kd, topwk_kd
from structkd.pipeline.models import Tagger, TaggerConfig, load_tagger
from structkd.storage import ragged
from structkd.storage.arrays import FeaturesArrays, KnowledgeArrays, PreparedArrays
from structkd.storage.schemas import FeaturesMeta, KnowledgeMeta
from structkd.storage.shards import read_shard, shard_metadata, write_table_atomic

LENGTHS = np.array([3, 1, 4, 2])
N_TAGS = 3


def random_crf(rng: np.random.Generator, constrained: bool) -> dict[str, np.ndarray]:
    """A teacher CRF (-inf = forbidden) that keeps tag 0 feasible everywhere."""
    trans, start, end = (
        rng.normal(size=(N_TAGS, N_TAGS)),
        rng.normal(size=N_TAGS),
        rng.normal(size=N_TAGS),
    )
    if constrained:
        allowed, start_ok, end_ok = random_constraints(rng, N_TAGS, 0.3)
        allowed[0, 0] = start_ok[0] = end_ok[0] = True
        trans, start, end = apply_constraints(trans, start, end, allowed, start_ok, end_ok)
    return {"transitions": trans, "start": start, "end": end}


def members(seed: int, m: int, k: int, constrained: bool = True) -> list[TeacherKnowledge]:
    rng = np.random.default_rng(seed)
    return [
        teacher_knowledge(
            rng.normal(size=(int(LENGTHS.sum()), N_TAGS)) * 2,
            LENGTHS,
            random_crf(rng, constrained),
            k=k,
            edges=True,
        )
        for _ in range(m)
    ]


def brute_mixture(parts: list[TeacherKnowledge], weights: np.ndarray, i: int) -> dict:
    """Every path of sentence ``i`` with its mixture probability, and the mixture's marginals."""
    offs = ragged.offsets(LENGTHS)
    lo, hi = offs[i], offs[i + 1]
    probs: dict[tuple, float] = {}
    marg, edges = 0.0, 0.0
    for w, part in zip(weights, parts, strict=True):
        assert part.crf is not None
        brute = brute_force(part.emissions[lo:hi], **part.crf)
        marg, edges = marg + w * brute.marginals, edges + w * brute.edges
        for path, score in zip(brute.paths, brute.scores, strict=True):
            probs[path] = probs.get(path, 0.0) + w * np.exp(score - brute.log_z)
    return {"probs": probs, "marginals": marg, "edges": edges}


WEIGHTS = np.array([0.5, 0.3, 0.2])


@pytest.mark.parametrize("constrained", [False, True])
def test_marginals_and_emissions_are_the_mixtures(constrained: bool) -> None:
    parts = members(1, 3, k=2, constrained=constrained)
    mixed = mix(parts, LENGTHS, k=2, weights=WEIGHTS * 10)  # normalised by mix
    offs = ragged.offsets(LENGTHS)
    for i in range(len(LENGTHS)):
        lo, hi = offs[i], offs[i + 1]
        want = brute_mixture(parts, WEIGHTS, i)
        np.testing.assert_allclose(
            np.exp(mixed.log_marginals[lo:hi]), want["marginals"], atol=1e-12
        )
        np.testing.assert_allclose(mixed.edge_sums[i], want["edges"].sum(axis=0), atol=1e-12)
        soft = [
            np.exp(p.emissions[lo:hi]) / np.exp(p.emissions[lo:hi]).sum(1, keepdims=True)
            for p in parts
        ]
        np.testing.assert_allclose(
            np.exp(mixed.emissions[lo:hi]),
            sum(w * s for w, s in zip(WEIGHTS, soft, strict=True)),
            atol=1e-12,
        )
    assert mixed.crf is None and (mixed.log_z == 0).all()


@pytest.mark.parametrize("k", [1, 3, 100])
def test_paths_are_the_most_probable_of_the_union_with_exact_probabilities(k: int) -> None:
    parts = members(2, 3, k=k)
    mixed = mix(parts, LENGTHS, k=k, weights=WEIGHTS)
    offs = ragged.offsets(LENGTHS)
    for i, n in enumerate(LENGTHS):
        lo, hi = offs[i], offs[i + 1]
        probs = brute_mixture(parts, WEIGHTS, i)["probs"]
        union = {
            tuple(int(t) for t in row)
            for p in parts
            for row in p.kbest_tags[
                p.kbest_scores.shape[1] * lo : p.kbest_scores.shape[1] * hi
            ].reshape(-1, n)[: p.k_valid[i]]
        }
        kept = mixed.kbest_tags[k * lo : k * hi].reshape(k, n)[: mixed.k_valid[i]]
        got = [tuple(int(t) for t in row) for row in kept]
        assert mixed.k_valid[i] == min(k, len(union)) and set(got) <= union
        np.testing.assert_allclose(
            np.exp(mixed.kbest_scores[i, : len(got)]), [probs[p] for p in got]
        )
        best_left_out = max((probs[p] for p in union - set(got)), default=0.0)
        assert min(probs[p] for p in got) >= best_left_out - 1e-12
        assert (np.diff(mixed.kbest_scores[i, : len(got)]) <= 0).all()
        assert (mixed.kbest_scores[i, len(got) :] == -np.inf).all()
        assert (mixed.kbest_tags[k * lo : k * hi].reshape(k, n)[len(got) :] == -1).all()
        if k == 100:  # k beyond every path: the union is every path, the mixture in full
            assert set(got) == set(probs)
            np.testing.assert_allclose(np.exp(mixed.kbest_scores[i]).sum(), 1.0)


def test_path_log_probs_match_enumeration() -> None:
    (part,) = members(3, 1, k=50)
    assert part.crf is not None
    brute = brute_force(part.emissions[:3], **part.crf)
    paths = np.array(brute.paths)
    np.testing.assert_allclose(
        path_log_probs(paths, part.emissions[:3], part.crf, float(part.log_z[0])),
        np.array(brute.scores) - brute.log_z,
    )


def test_a_mixture_of_one_is_that_teacher() -> None:
    (part,) = members(4, 1, k=3)
    assert mix([part], LENGTHS, k=3) is part


def test_zero_weight_members_change_nothing() -> None:
    parts = members(5, 2, k=3)
    alone, mixed = parts[0], mix(parts, LENGTHS, k=3, weights=[1.0, 0.0])
    np.testing.assert_allclose(mixed.log_marginals, alone.log_marginals, atol=1e-12)
    np.testing.assert_array_equal(mixed.k_valid, alone.k_valid)
    np.testing.assert_array_equal(mixed.kbest_tags, alone.kbest_tags)
    np.testing.assert_allclose(mixed.kbest_scores, alone.kbest_scores - alone.log_z[:, None])


@pytest.mark.parametrize("bad", [[1.0], [1.0, -1.0], [0.0, 0.0], [np.nan, 1.0]])
def test_bad_weights_are_refused(bad: list[float]) -> None:
    with pytest.raises(ValueError, match="weights"):
        mix(members(6, 2, k=1), LENGTHS, k=1, weights=bad)


# --- each loss against the mixture distribution (the student side in torch) -------------------


def padded(values: np.ndarray) -> torch.Tensor:
    """Flat per-token values as ``(B, N, L)`` float64 (0 at padding)."""
    return torch.from_numpy(
        ragged.pad(
            values,
            LENGTHS,
            ragged.offsets(LENGTHS)[:-1],
            width=int(LENGTHS.max()),
            dtype=np.float64,
        )
    )


def student(seed: int) -> tuple[CRF, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    crf = CRF(N_TAGS).double().requires_grad_(False)
    with torch.no_grad():
        for p in (crf.transitions, crf.start, crf.end):
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64))
    emissions = torch.randn(
        len(LENGTHS), int(LENGTHS.max()), N_TAGS, generator=gen, dtype=torch.float64
    )
    mask = torch.from_numpy(ragged.mask(LENGTHS, int(LENGTHS.max())))
    return crf, emissions, mask


def student_log_probs(crf: CRF, emissions: torch.Tensor, i: int) -> dict[tuple, float]:
    n = int(LENGTHS[i])
    params = {name: getattr(crf, name).detach().numpy() for name in ("transitions", "start", "end")}
    brute = brute_force(emissions[i, :n].numpy(), **params)
    return {p: s - brute.log_z for p, s in zip(brute.paths, brute.scores, strict=True)}


def test_structural_kd_of_the_mixture_is_the_mean_of_the_members_and_exact() -> None:
    parts = members(7, 3, k=1)
    mixed = mix(parts, LENGTHS, k=1, weights=WEIGHTS)
    crf, emissions, mask = student(8)

    def structural(part: TeacherKnowledge) -> float:
        unary = padded(np.exp(part.log_marginals))
        return float(structural_kd(crf, emissions, unary, torch.from_numpy(part.edge_sums), mask))

    per_member = sum(w * structural(p) for w, p in zip(WEIGHTS, parts, strict=True))
    brute = 0.0
    for i in range(len(LENGTHS)):
        log_ps = student_log_probs(crf, emissions, i)
        brute -= sum(q * log_ps[y] for y, q in brute_mixture(parts, WEIGHTS, i)["probs"].items())
    np.testing.assert_allclose(structural(mixed), per_member, rtol=1e-10)
    np.testing.assert_allclose(structural(mixed), brute / len(LENGTHS), rtol=1e-10)


def test_topwk_over_the_whole_union_is_the_mixture_cross_entropy() -> None:
    k = 100  # every path of every sentence
    parts = members(9, 3, k=k)
    mixed = mix(parts, LENGTHS, k=k, weights=WEIGHTS)
    crf, emissions, mask = student(10)
    width = int(LENGTHS.max())
    offs = ragged.offsets(LENGTHS)
    tags = torch.full((len(LENGTHS), k, width), -1, dtype=torch.long)
    for i, n in enumerate(LENGTHS):
        block = mixed.kbest_tags[k * offs[i] : k * offs[i + 1]].reshape(k, n)
        tags[i, :, :n] = torch.from_numpy(block.astype(np.int64))
    got = topwk_kd(
        crf,
        emissions,
        tags,
        torch.from_numpy(mixed.kbest_scores),
        torch.from_numpy(mixed.k_valid),
        mask,
    )
    brute = 0.0
    for i in range(len(LENGTHS)):
        log_ps = student_log_probs(crf, emissions, i)
        brute -= sum(q * log_ps[y] for y, q in brute_mixture(parts, WEIGHTS, i)["probs"].items())
    np.testing.assert_allclose(float(got), brute / len(LENGTHS), rtol=1e-10)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_posterior_and_emission_kd_target_the_mixture(temperature: float) -> None:
    parts = members(11, 3, k=1)
    mixed = mix(parts, LENGTHS, k=1, weights=WEIGHTS)
    crf, emissions, mask = student(12)
    offs = ragged.offsets(LENGTHS)
    marg = np.concatenate(
        [brute_mixture(parts, WEIGHTS, i)["marginals"] for i in range(len(LENGTHS))]
    )
    np.testing.assert_allclose(
        float(posterior_kd(crf, emissions, padded(mixed.log_marginals), mask, temperature)),
        float(posterior_kd(crf, emissions, padded(np.log(marg)), mask, temperature)),
        rtol=1e-10,
    )
    soft = sum(
        w * np.exp(p.emissions) / np.exp(p.emissions).sum(1, keepdims=True)
        for w, p in zip(WEIGHTS, parts, strict=True)
    )
    assert offs[-1] == len(soft)
    np.testing.assert_allclose(
        float(emission_kd(emissions, padded(mixed.emissions), mask, temperature)),
        float(emission_kd(emissions, padded(np.log(soft)), mask, temperature)),
        rtol=1e-10,
    )


# --- the export on the tiny real project (tests/e2e_project.py) --------------------------------


@pytest.fixture(scope="session")
def project(tmp_path_factory: pytest.TempPathFactory, tiny_encoder_dir: Path) -> Project:
    return shared_project(tmp_path_factory.getbasetemp() / "e2e-project", tiny_encoder_dir)


def one_teacher_shard(job: ShardJob, out: Path) -> bytes:
    """The shard of one teacher as the export wrote it before ensembles (the kernels' output,
    straight into the knowledge arrays), written to ``out``; its bytes."""
    (teacher_dir,) = job.teacher_dirs
    model = load_tagger(Path(teacher_dir))
    prepared = PreparedArrays.from_table(read_shard(Path(job.prepared)))
    dim = FeaturesMeta.from_metadata(shard_metadata(Path(job.features))).dim
    feats = FeaturesArrays.from_table(read_shard(Path(job.features)), dim=dim)
    lengths = np.asarray(prepared.lengths, np.int64)
    emissions = teacher_emissions(model, prepared.tokens, feats.features, lengths)
    crf = model.crf.numpy_params()
    kwargs = {"emissions": emissions, "offsets": ragged.offsets(lengths), **crf}
    log_z, log_marginals, edge_sums = crf_kernels.posteriors(**kwargs, edge_sums=True)
    tags, scores, k_valid = crf_kernels.kbest(**kwargs, k=job.settings.k)
    meta = KnowledgeMeta(
        labels=model.labels.labels,
        transitions=crf["transitions"],
        start=crf["start"],
        end=crf["end"],
        k=job.settings.k,
        cache_key=job.cache_key,
        digests=dict(job.digests),
        prepared=os.path.relpath(job.prepared, Path(job.output).parent),
        marginals_dtype=job.settings.marginals_dtype,
        emissions_dtype=job.settings.emissions_dtype,
        edge_marginals=True,
    )
    arrays = KnowledgeArrays(
        sent_id=prepared.sent_id,
        lengths=lengths,
        log_z=log_z,
        topk_tags=tags.astype(np.int16),
        topk_scores=scores.astype(np.float32),
        k_valid=k_valid.astype(np.int16),
        log_marginals=log_marginals,
        emissions=emissions,
        edge_sums=edge_sums,
    )
    write_table_atomic(arrays.to_table(meta), out)
    return out.read_bytes()


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_one_teacher_exports_the_bytes_it_always_did(project: Project, tmp_path: Path) -> None:
    params, layout = open_project(project.params)
    for language in plan_export(params, layout):
        (job, *_) = language.jobs(language.names, params.export, params.runtime)
        assert job.teacher_dirs == (str(layout.teacher(language.lang)),)
        want = one_teacher_shard(job, tmp_path / language.lang / "part.parquet")
        assert Path(job.output).read_bytes() == want


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_an_ensemble_is_trained_exported_as_the_mixture_and_distilled(
    project: Project, tmp_path: Path
) -> None:
    params_path = copy_project(project.root, tmp_path / "ensemble")
    settings = read_params(params_path)
    settings["teacher"]["ensemble"] = 2
    write_params(params_path, settings)
    out = cli("stage", "train-teacher", "en", "--params", str(params_path))
    assert "teacher en seed 3:" in out and "teacher en seed 4:" in out and "members' mean" in out
    cli("stage", "train-teacher", "de", "--params", str(params_path))
    params, layout = open_project(params_path)
    members = layout.teacher_members("en", params.teacher.seeds)
    assert members[1] == layout.teacher("en") / "members" / "seed-4"
    single = load_file(str(project.root / "models/teachers/en/model.safetensors"))
    first = load_file(str(members[0] / "model.safetensors"))  # member 0 is the one teacher
    assert all(torch.equal(single[k], first[k]) for k in single)
    assert "computing" in cli("stage", "export-teachers", "--params", str(params_path))

    shard = layout.knowledge("en") / "part-00000.parquet"
    meta = KnowledgeMeta.from_metadata(shard_metadata(shard))
    mixed = KnowledgeArrays.from_table(read_shard(shard), k=meta.k, n_tags=meta.n_tags)
    assert sorted(meta.digests) == sorted(knowledge_inputs(layout, "en", params.teacher.seeds))
    assert (mixed.log_z == 0).all()
    alone = []
    for member in members:  # each member exported on its own
        (job, *_) = next(p for p in plan_export(params, layout) if p.lang == "en").jobs(
            ["part-00000.parquet"], params.export, params.runtime
        )
        target = tmp_path / member.name / "part-00000.parquet"
        export_shard(replace(job, teacher_dirs=(str(member),), output=str(target)))
        m = KnowledgeMeta.from_metadata(shard_metadata(target))
        alone.append(KnowledgeArrays.from_table(read_shard(target), k=m.k, n_tags=m.n_tags))
    mean = (np.exp(alone[0].log_marginals) + np.exp(alone[1].log_marginals)) / 2
    np.testing.assert_allclose(np.exp(mixed.log_marginals), mean, atol=1e-6)
    np.testing.assert_allclose(
        mixed.edge_sums, (alone[0].edge_sums + alone[1].edge_sums) / 2, atol=1e-5
    )  # float32 column
    for i in range(len(mixed.sent_id)):  # the best path of the mixture is one of the members'
        best = tuple(mixed.paths(i)[0])
        assert best in {tuple(p) for a in alone for p in a.paths(i)[: a.k_valid[i]]}

    shown = cli("knowledge", "show", str(shard))
    assert "teachers: 2 (their exact mixture" in shown and "teacher@seed-4" in shown
    cli("stage", "train-student", "posterior", "--params", str(params_path))
    cli("stage", "train-student", "topwk", "--params", str(params_path))


def test_an_ensemble_decodes_to_the_mixtures_most_probable_path() -> None:
    """With every path in the members' k-best, the decoded path is the mixture's exact MAP path
    (by enumeration); a single member decodes by its own Viterbi."""
    torch.manual_seed(0)
    labels = LabelSet(("A", "B", "C"))
    taggers = [Tagger(TaggerConfig(feature_dim=4, n_tags=3, hidden=4), labels) for _ in range(3)]
    rng = np.random.default_rng(5)
    lengths = [3, 1, 4, 2]
    split = Split(
        lang="en",
        name="test",
        scheme="none",
        sent_ids=np.arange(len(lengths)),
        tokens=[["w"] * n for n in lengths],
        tags=[rng.integers(0, 3, n) for n in lengths],
        features=[rng.normal(size=(n, 4)).astype(np.float32) * 3 for n in lengths],
    )
    predicted = predict_split_ensemble(taggers, split, k=3**4)
    for i, n in enumerate(lengths):
        feats = torch.from_numpy(split.features[i])[None]
        mask = torch.ones(1, n, dtype=torch.bool)
        mixture: dict[tuple[int, ...], float] = {}
        for tagger in taggers:
            tagger.eval()
            with torch.no_grad():
                emissions = tagger.emissions(feats, mask)[0].double().numpy()
            exact = brute_force(emissions, **tagger.crf.numpy_params())
            for path, score in zip(exact.paths, exact.scores, strict=True):
                mixture[path] = mixture.get(path, 0.0) + np.exp(score - exact.log_z) / 3
        assert tuple(predicted[i].tolist()) == max(mixture, key=mixture.__getitem__)
    single = predict_split_ensemble(taggers[:1], split, k=3)
    viterbi = predict_split(taggers[0], split)
    assert all(np.array_equal(a, b) for a, b in zip(single, viterbi, strict=True))
