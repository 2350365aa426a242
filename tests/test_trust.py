"""Trust per language: λ scaled by how much a language's teacher beats the student on dev."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from e2e_project import (
    TEACHERS,
    Project,
    cli,
    copy_project,
    read_params,
    shared_project,
    write_params,
)
from safetensors.torch import load_file
from test_losses import make_case

from structkd.errors import ConfigError, StructkdError
from structkd.pipeline.data import Split
from structkd.pipeline.evaluation import evaluate_split
from structkd.pipeline.export_teachers import KnowledgeSource
from structkd.pipeline.labels import LabelSet
from structkd.pipeline.layout import Layout
from structkd.pipeline.losses import gold_nll, sentence_weighted_loss, student_loss
from structkd.pipeline.metrics import headline
from structkd.pipeline.models import Tagger, TaggerConfig
from structkd.pipeline.params import METHODS, StudentParams, parse_params
from structkd.pipeline.student import StudentObjective, Trust, teacher_dev_scores, trust_weight


def rows(batch: dict, b: int) -> dict:
    return {name: value[b : b + 1] for name, value in batch.items()}


@pytest.mark.parametrize("method", METHODS)
def test_each_sentence_gets_its_own_lambda(method: str) -> None:
    """``1/B Σ_b [λ_b KD_b + (1 − λ_b) gold_b]``, value and gradient, one sentence at a time."""
    case = make_case(21, k=4)
    lams = torch.tensor([0.0, 0.4, 1.0, 0.4], dtype=torch.float64)
    got = sentence_weighted_loss(
        method, case.student, case.emissions, case.batch, lams=lams, temperature=2.0
    )
    (got_grad,) = torch.autograd.grad(got, case.emissions)
    want = sum(
        student_loss(
            method,
            case.student,
            case.emissions[b : b + 1],
            rows(case.batch, b),
            lam=float(lams[b]),
            temperature=2.0,
        )
        for b in range(len(lams))
    ) / len(lams)
    (want_grad,) = torch.autograd.grad(want, case.emissions)
    assert got.item() == pytest.approx(want.item(), rel=1e-12)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("method", METHODS)
def test_one_lambda_for_all_is_student_loss_bit_for_bit(method: str) -> None:
    case = make_case(22, k=4)
    for lam in (0.0, 0.3, 1.0):
        lams = torch.full((4,), lam, dtype=torch.float64)
        got = sentence_weighted_loss(method, case.student, case.emissions, case.batch, lams=lams)
        want = student_loss(method, case.student, case.emissions, case.batch, lam=lam)
        assert torch.equal(got, want)


@pytest.mark.parametrize("method", ["posterior", "topwk", "structural", "emission"])
def test_each_sentence_gets_its_own_lambda_and_weight(method: str) -> None:
    """``1/B Σ_b w_b [λ_b KD_b + (1 − λ_b) gold_b]``: unlabeled sentences are (λ 1, w), no gold."""
    case = make_case(24, k=4)
    lams = torch.tensor([0.5, 1.0, 1.0, 0.5], dtype=torch.float64)
    weights = torch.tensor([1.0, 0.3, 0.0, 1.0], dtype=torch.float64)
    got = sentence_weighted_loss(
        method, case.student, case.emissions, case.batch, lams=lams, weights=weights
    )
    want = sum(
        float(weights[b])
        * student_loss(
            method, case.student, case.emissions[b : b + 1], rows(case.batch, b), lam=float(lams[b])
        )
        for b in range(len(lams))
    ) / len(lams)
    assert got.item() == pytest.approx(want.item(), rel=1e-12)


def objective(trust: dict[str, float] | None, unlabeled_weight: float = 0.5) -> StudentObjective:
    """A student objective over en, de and French unlabeled text labelled 3 : 1 by en and de."""
    sources = [
        KnowledgeSource("en", "en", "train", {"en": 1.0}),
        KnowledgeSource("de", "de", "train", {"de": 1.0}),
        KnowledgeSource("unlabeled/fr", "fr", "unlabeled", {"en": 0.75, "de": 0.25}),
    ]
    measured = None
    if trust is not None:
        measured = Trust(None, {}, {}, 1.0)  # type: ignore[arg-type]
        measured._weights[0] = trust
    cfg = StudentParams(unlabeled_weight=unlabeled_weight)
    return StudentObjective(
        None,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        "posterior",
        cfg,
        trust_by_language=measured,
        sources=sources,
    )


def test_unlabeled_text_is_kd_only_with_its_teachers_trust() -> None:
    """A training split: λ times its teacher's trust, weight 1. Unlabeled text: KD alone
    (λ 1, not annealed), weight unlabeled_weight times its teachers' weighted mean trust."""
    lams, weights = objective({"en": 1.0, "de": 0.2}).source_weights(0, 0.8)  # type: ignore[misc]
    assert lams.tolist() == pytest.approx([0.8, 0.16, 1.0])
    assert weights.tolist() == pytest.approx([1.0, 1.0, 0.5 * (0.75 * 1.0 + 0.25 * 0.2)])
    lams, weights = objective(None).source_weights(0, 0.8)  # type: ignore[misc]
    assert lams.tolist() == pytest.approx([0.8, 0.8, 1.0]) and weights.tolist()[2] == 0.5


def test_a_teacher_with_weight_zero_leaves_the_gold_loss() -> None:
    case = make_case(23, k=4)
    for method in ("posterior", "structural", "topwk"):
        lams = torch.zeros(4, dtype=torch.float64)  # λ·w with w = 0 for every language
        got = sentence_weighted_loss(method, case.student, case.emissions, case.batch, lams=lams)
        gold = gold_nll(case.student, case.emissions, case.batch["tags"], case.batch["mask"])
        assert got.item() == pytest.approx(gold.item(), rel=1e-12)


def test_trust_weight_is_the_clipped_lead_over_the_margin() -> None:
    assert trust_weight(80.0, 81.0, 2.0) == 0.0  # worse teacher: no say
    assert trust_weight(80.0, 80.0, 2.0) == 0.0  # no better: none either
    assert trust_weight(81.0, 80.0, 2.0) == 0.5
    assert trust_weight(90.0, 80.0, 2.0) == 1.0


def tiny_split(lang: str, seed: int) -> Split:
    rng = np.random.default_rng(seed)
    lengths = [3, 5, 2, 4]
    return Split(
        lang=lang,
        name="dev",
        scheme="none",
        sent_ids=np.arange(len(lengths)),
        tokens=[["w"] * n for n in lengths],
        tags=[rng.integers(0, 3, n) for n in lengths],
        features=[rng.normal(size=(n, 4)).astype(np.float32) for n in lengths],
    )


def test_weights_are_measured_on_each_languages_dev_from_the_second_epoch() -> None:
    torch.manual_seed(0)
    model = Tagger(TaggerConfig(feature_dim=4, n_tags=3, hidden=4), LabelSet(("A", "B", "C")))
    dev = {"en": tiny_split("en", 1), "de": tiny_split("de", 2)}
    student = {lang: headline(evaluate_split(model, split)) for lang, split in dev.items()}
    teacher = {"en": student["en"] - 5.0, "de": student["de"] + 1.0}
    trust = Trust(model, dev, teacher, margin=4.0)
    assert trust.weights(0) == {"en": 1.0, "de": 1.0}  # no student to measure yet
    assert trust.weights(1) == {"en": 0.0, "de": pytest.approx(0.25)}
    assert model.training  # measuring leaves the model in training mode


def test_a_missing_teacher_score_is_one_error_naming_the_file(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    (layout.teacher("en")).mkdir(parents=True)
    (layout.teacher("en") / "metrics.json").write_text(json.dumps({"dev": {"accuracy": 91.5}}))
    assert teacher_dev_scores(layout, ["en"], (1,)) == {"en": 91.5}
    with pytest.raises(StructkdError, match=r"teachers/de/metrics.json: no teacher dev score"):
        teacher_dev_scores(layout, ["en", "de"], (1,))


# --- on the tiny real project (tests/e2e_project.py) -------------------------------------------


@pytest.fixture(scope="session")
def project(tmp_path_factory: pytest.TempPathFactory, tiny_encoder_dir: Path) -> Project:
    return shared_project(tmp_path_factory.getbasetemp() / "e2e-project", tiny_encoder_dir)


def train_posterior(
    project: Project, target: Path, teacher_dev: float | None = None, **student: object
) -> tuple[dict, list]:
    """Train the posterior student (2 epochs) on a copy, the teachers' dev scores optionally
    replaced by ``teacher_dev``; its best weights and history."""
    params = copy_project(project.root, target)
    for lang in TEACHERS if teacher_dev is not None else ():
        path = params.parent / "models" / "teachers" / lang / "metrics.json"
        path.write_text(json.dumps({"lang": lang, "dev": {"accuracy": teacher_dev}}))
    settings = read_params(params)
    settings["student"].update(max_epochs=2, **student)
    write_params(params, settings)
    cli("stage", "train-student", "posterior", "--params", str(params))
    out = params.parent / "models" / "students" / "posterior"
    with (out / "history.csv").open() as handle:
        history = [
            {k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(handle)
        ]
    return load_file(str(out / "model.safetensors")), history


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_trust_in_teachers_far_better_trains_as_without_trust(
    project: Project, tmp_path: Path
) -> None:
    """Teachers that lead by more than the margin get w = 1: the run is the untrusting one, bit for
    bit; the history records the weights."""
    plain, plain_history = train_posterior(project, tmp_path / "none")
    trusting, history = train_posterior(
        project, tmp_path / "dev", teacher_dev=1000.0, trust="dev", trust_margin=1.0
    )
    assert plain.keys() == trusting.keys()
    assert all(torch.equal(plain[k], trusting[k]) for k in plain)
    assert [row["trust"] for row in plain_history] == ["", ""]
    assert [row["trust"] for row in history] == ["en=1.000 de=1.000"] * 2
    assert [{**row, "trust": ""} for row in history] == plain_history


@pytest.mark.parametrize(
    ("section", "key", "value", "problem"),
    [
        ("student", "trust_margin", 0.0, r"student.trust_margin: 0.0 is not in \(0, inf\)"),
        ("student", "trust", "always", "student.trust: 'always' is not one of none, dev"),
        ("teacher", "ensemble", 0, r"teacher.ensemble: 0 is not in \[1, inf\)"),
    ],
)
def test_bad_trust_and_ensemble_settings_are_one_line(
    section: str, key: str, value: object, problem: str
) -> None:
    raw = {
        "data": {
            "task": "upos",
            "languages": {
                "en": {"format": "conllu", "scheme": "none", "train": "a", "dev": "b", "test": "c"}
            },
        },
        section: {key: value},
    }
    with pytest.raises(ConfigError, match=f"params.yaml: {problem}"):
        parse_params(raw)
