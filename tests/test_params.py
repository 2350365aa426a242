"""params.yaml is validated strictly: unknown keys are named with a suggestion, every numeric key
is checked against the range it declares (a generated table covers every key by construction)."""

from __future__ import annotations

import copy
import dataclasses
import math
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args, get_origin

import pytest
import yaml

from structkd.errors import ConfigError
from structkd.pipeline.params import (
    EDGE_METHODS,
    KBEST_METHODS,
    RANGE,
    Params,
    Range,
    load_params,
    parse_params,
)

ROOT = Path(__file__).resolve().parents[1]


def _minimal() -> dict:
    spec = {"format": "conllu", "scheme": "none", "train": "a", "dev": "b", "test": "c"}
    return {"data": {"task": "upos", "languages": {"en": dict(spec)}}}


def test_shipped_params_load() -> None:
    params = load_params(ROOT / "params.yaml")
    assert set(params.data.languages) == {"en", "de", "es", "nl"}
    assert "fr" in params.data.zero_shot
    assert "posterior" in params.student.methods
    assert params.student.anneal_rate > 0


def test_defaults_are_the_shipped_params() -> None:
    """One source of defaults: a key left out of params.yaml runs what the shipped file runs.

    Every section but ``data`` (whose defaults mean "none" or "derive it", not a setting) lists
    every key, each equal to its dataclass default.
    """
    raw = yaml.safe_load((ROOT / "params.yaml").read_text("utf-8"))
    shipped = load_params(ROOT / "params.yaml")
    defaults = Params(data=shipped.data)
    sections = [f.name for f in dataclasses.fields(Params) if f.name != "data"]
    assert set(raw) == {"data", *sections}
    for section in sections:
        want, got = getattr(defaults, section), getattr(shipped, section)
        assert set(raw[section]) == {f.name for f in dataclasses.fields(want)}, section
        for f in dataclasses.fields(want):
            assert getattr(got, f.name) == getattr(want, f.name), f"{section}.{f.name}"
    assert shipped == defaults


def test_defaults_fill_missing_sections() -> None:
    params = parse_params(_minimal())
    assert params.export.k == 10
    assert params.data.languages["en"].tag_column == -1


def test_misspelled_key_is_named_with_suggestion() -> None:
    raw = _minimal()
    raw["student"] = {"temprature": 2.0}
    with pytest.raises(
        ConfigError, match=r"student: unknown key 'temprature'; did you mean 'temperature'\?"
    ):
        parse_params(raw)


def test_wrong_type_and_literal() -> None:
    raw = _minimal()
    raw["export"] = {"k": "ten"}
    with pytest.raises(ConfigError, match=r"export.k: expected int, got 'ten'"):
        parse_params(raw)
    raw = _minimal()
    raw["student"] = {"methods": ["posterior", "magic"]}
    with pytest.raises(ConfigError, match=r"student.methods: 'magic' is not one of"):
        parse_params(raw)


def test_language_configured_twice(tmp_path: Path) -> None:
    raw = _minimal()
    raw["data"]["zero_shot"] = {"en": {"format": "conllu", "scheme": "none", "test": "x"}}
    with pytest.raises(ConfigError, match="language 'en' is configured twice"):
        parse_params(raw)
    path = tmp_path / "params.yaml"
    path.write_text(
        "data:\n  task: t\n  languages:\n"
        "    en: {format: conllu, scheme: none, train: a, dev: b, test: c}\n"
        "    en: {format: conllu, scheme: none, train: a, dev: b, test: c}\n"
    )
    with pytest.raises(ConfigError, match=r"params.yaml:5: key 'en' is given twice"):
        load_params(path)


def test_missing_split_and_missing_file(tmp_path: Path) -> None:
    raw = _minimal()
    del raw["data"]["languages"]["en"]["dev"]
    with pytest.raises(ConfigError, match="data.languages.en has no dev split"):
        parse_params(raw)
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "params.yaml")


def test_dev_split_and_train_limit() -> None:
    from structkd.pipeline.prepare import select

    raw = _minimal()
    spec = raw["data"]["languages"]["en"]
    del spec["dev"]
    spec.update(dev_split=0.1, train_limit=30)
    params = parse_params(raw)
    corpus = params.data.languages["en"]
    assert corpus.splits() == {"train": "a", "dev": "a", "test": "c"}
    sentences = list(range(100))
    dev, train = select(sentences, "dev", corpus), select(sentences, "train", corpus)
    assert dev == list(range(90, 100))
    assert len(train) == 30 and train[0] == 0 and max(train) < 90
    assert select(sentences, "test", corpus) == sentences
    limited = parse_params(
        {
            **raw,
            "data": {
                **raw["data"],
                "languages": {"en": {**spec, "dev_limit": 4, "test_limit": 50}},
            },
        }
    ).data.languages["en"]
    assert select(sentences, "dev", limited) == [90, 92, 95, 97]
    assert select(sentences, "test", limited) == list(range(0, 100, 2))
    assert select(sentences[:3], "test", limited) == [0, 1, 2]
    for bad in (0, -5):
        spec["test_limit"] = bad
        with pytest.raises(
            ConfigError, match=rf"data.languages.en.test_limit: {bad} is not in \[1, inf\)"
        ):
            parse_params(raw)
    del spec["test_limit"]
    spec["dev"] = "b"
    with pytest.raises(ConfigError, match="has both dev and dev_split"):
        parse_params(raw)


# ---- ranges: one declaration per numeric key, one generated row per bound -------------------


def _numeric(hint: Any) -> type | None:
    """``int`` or ``float`` when ``hint`` is one of them (optionally ``| None``), else None."""
    if get_origin(hint) in (typing.Union, types.UnionType):
        options = [a for a in get_args(hint) if a is not type(None)]
        return _numeric(options[0]) if len(options) == 1 else None
    return hint if hint in (int, float) else None


def _sections(cls: type, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], type]]:
    """Every dataclass reachable from ``cls`` with the key path to it (``*`` for a mapping)."""
    yield path, cls
    for f in dataclasses.fields(cls):
        hint = typing.get_type_hints(cls)[f.name]
        sub: tuple[str, ...] = (f.name,)
        if get_origin(hint) is dict:  # a mapping of specs: one entry stands for all
            hint, sub = get_args(hint)[1], (f.name, "en")
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            yield from _sections(hint, path + sub)


def numeric_fields() -> list[tuple[str, type, dataclasses.Field[Any]]]:
    """(dotted key, int or float, field) of every numeric key of params.yaml (corpus keys as
    ``data.languages.en.*``; the zero-shot ones are the same declarations)."""
    found = []
    for path, cls in _sections(Params, ()):
        if path[:2] == ("data", "zero_shot"):
            continue
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            kind = _numeric(hints[f.name])
            if kind is not None:
                found.append((".".join((*path, f.name)), kind, f))
    return found


def outside(allowed: Range, kind: type) -> list[float]:
    """One value just beyond each bound of ``allowed``, plus NaN and inf for a float."""
    values = [
        *([allowed.ge - 1] if allowed.ge is not None else []),
        *([allowed.gt] if allowed.gt is not None else []),
        *([allowed.le + 1] if allowed.le is not None else []),
        *([allowed.lt] if allowed.lt is not None else []),
    ]
    values = [kind(v) for v in values]
    return values + ([math.nan, math.inf, -math.inf] if kind is float else [])


def inside(allowed: Range, kind: type) -> list[float]:
    """The values at (or, for an open bound, just within) each bound of ``allowed``."""
    step = 1 if kind is int else 1e-6
    values = [
        *([allowed.ge] if allowed.ge is not None else []),
        *([allowed.gt + step] if allowed.gt is not None else []),
        *([allowed.le] if allowed.le is not None else []),
        *([allowed.lt - step] if allowed.lt is not None else []),
    ]
    return [kind(v) for v in values]


def with_value(key: str, value: object) -> dict:
    """The minimal params with ``key`` (dotted) set to ``value``; methods without k-best paths
    or edge marginals, so that no cross-key rule applies."""
    raw = copy.deepcopy(_minimal())
    raw["student"] = {"methods": ["posterior"]}
    *parents, name = key.split(".")
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
    node[name] = value
    if parents[:2] == ["data", "unlabeled"]:  # its one required key
        node.setdefault("path", "text.txt")
    if name == "dev_split" and value:  # a held-out dev replaces the dev file
        del node["dev"]
    return raw


def test_every_numeric_key_declares_its_range() -> None:
    """A new int or float key without ``ranged(...)`` fails here, so the table below covers it."""
    fields = numeric_fields()
    assert len(fields) > 25  # the walk reaches every section (and the corpus specs)
    undeclared = [key for key, _, f in fields if not isinstance(f.metadata.get(RANGE), Range)]
    assert undeclared == []


ROWS = [
    (key, value) for key, kind, f in numeric_fields() for value in outside(f.metadata[RANGE], kind)
]


@pytest.mark.parametrize(("key", "value"), ROWS, ids=[f"{k}={v}" for k, v in ROWS])
def test_out_of_range_value_is_one_line(key: str, value: float) -> None:
    allowed = {k: f.metadata[RANGE] for k, _, f in numeric_fields()}[key]
    with pytest.raises(ConfigError) as caught:
        parse_params(with_value(key, value))
    assert str(caught.value) == f"params.yaml: {key}: {value!r} is not in {allowed}"


def test_values_at_the_bounds_load() -> None:
    """Each bound is where the declaration says: the value at a closed bound (or just inside an
    open one) loads, and keeps its value."""
    checked = 0
    for key, kind, f in numeric_fields():
        for value in inside(f.metadata[RANGE], kind):
            node: Any = parse_params(with_value(key, value))
            for part in key.split("."):
                node = node[part] if isinstance(node, dict) else getattr(node, part)
            assert node == value, key
            checked += 1
    assert checked >= len(ROWS) // 2


def test_range_notation() -> None:
    assert str(Range(ge=0, lt=1)) == "[0, 1)"
    assert str(Range(gt=0)) == "(0, inf)"
    assert str(Range(ge=1, le=32767)) == "[1, 32767]"
    assert str(Range()) == "(-inf, inf)"
    assert Range().allows(-7) and not Range().allows(math.nan)


def test_method_groups_match_the_registry() -> None:
    """The cross-key rules know which methods read k-best paths or edge marginals."""
    from structkd.pipeline.losses import KD_METHODS

    assert {m for m, d in KD_METHODS.items() if "topk_tags" in d.columns} == KBEST_METHODS
    assert {m for m, d in KD_METHODS.items() if "edge_sums" in d.columns} == EDGE_METHODS


@pytest.mark.parametrize("method", sorted(KBEST_METHODS))
def test_student_k_above_export_k_is_refused(method: str) -> None:
    raw = _minimal()
    raw["export"] = {"k": 4}
    raw["student"] = {"methods": ["posterior", method], "k": 5}
    with pytest.raises(ConfigError) as caught:
        parse_params(raw)
    assert str(caught.value) == (
        f"params.yaml: student.k: 5 is more than export.k: 4 (method {method} reads the k-best "
        "paths the export keeps); lower student.k or raise export.k"
    )
    raw["student"]["k"] = 4
    assert parse_params(raw).student.k == 4
    raw["student"] = {"methods": ["posterior"], "k": 5}  # no k-best method: k is not read
    assert parse_params(raw).student.k == 5


def test_structural_needs_edge_marginals() -> None:
    raw = _minimal()
    raw["export"] = {"edge_marginals": False}
    with pytest.raises(ConfigError) as caught:
        parse_params(raw)
    assert str(caught.value) == (
        "params.yaml: student.methods lists structural, which needs export.edge_marginals: true"
    )


def test_non_utf8_params_file(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_bytes(b"data:\n  task: caf\xe9\n")
    with pytest.raises(ConfigError) as caught:
        load_params(path)
    assert str(caught.value) == f"{path}:2: not valid UTF-8 (byte 0xe9)"


# ---- unlabeled text ---------------------------------------------------------------------------


def _with_unlabeled(**spec: object) -> dict:
    raw = copy.deepcopy(_minimal())
    raw["data"]["languages"]["de"] = dict(raw["data"]["languages"]["en"])
    raw["data"]["unlabeled"] = {"fr": {"path": "fr.txt", **spec}}
    return raw


def test_unlabeled_teachers_all_list_or_weights() -> None:
    data = parse_params(_with_unlabeled()).data
    assert data.unlabeled["fr"].format == "text" and data.unlabeled["fr"].limit is None
    assert data.unlabeled_weights("fr") == {"en": 0.5, "de": 0.5}
    data = parse_params(_with_unlabeled(teachers=["de"])).data
    assert data.unlabeled_weights("fr") == {"de": 1.0}
    data = parse_params(_with_unlabeled(teachers={"de": 3, "en": 1.0})).data
    assert data.unlabeled_weights("fr") == {"en": 0.25, "de": 0.75}  # params.yaml order
    data = parse_params(_with_unlabeled(teachers={"de": 0.0, "en": 2})).data
    assert data.unlabeled_weights("fr") == {"en": 1.0}  # weight 0: left out
    assert data.prepared_splits()[-1] == ("fr", "unlabeled")


def test_the_baseline_student_labels_text_alone_or_mixed_with_teachers() -> None:
    data = parse_params(_with_unlabeled(teachers="student")).data
    assert data.unlabeled_weights("fr") == {"student": 1.0}
    data = parse_params(_with_unlabeled(teachers=["student", "de"])).data
    assert data.unlabeled_weights("fr") == {"de": 0.5, "student": 0.5}  # teachers, then student
    data = parse_params(_with_unlabeled(teachers={"student": 3, "en": 1})).data
    assert data.unlabeled_weights("fr") == {"en": 0.25, "student": 0.75}


def test_the_baseline_is_always_trained_so_methods_leave_it_out() -> None:
    raw = _minimal()
    raw["student"] = {"methods": ["baseline", "posterior"]}
    with pytest.raises(ConfigError) as caught:
        parse_params(raw)
    assert str(caught.value) == (
        "params.yaml: student.methods: leave 'baseline' out: it is always trained (stage "
        "train-baseline); list the distillation methods (emission, topk, topwk, posterior, "
        "pos+topwk, structural)"
    )
    assert "baseline" not in parse_params(_minimal()).student.methods


def test_student_is_no_language_code() -> None:
    raw = _minimal()
    raw["data"]["zero_shot"] = {"student": {"format": "conllu", "scheme": "none", "test": "t"}}
    with pytest.raises(ConfigError, match="data: 'student' is not a language code"):
        parse_params(raw)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"teachers": ["it"]}, "data.unlabeled.fr.teachers: 'it' is not a teacher language "
         "(data.languages: en, de) or 'student' (the baseline student)"),
        ({"teachers": {"en": -1.0}}, "data.unlabeled.fr.teachers.en: -1.0 is not in [0, inf)"),
        ({"teachers": {"en": math.inf}}, "data.unlabeled.fr.teachers.en: inf is not in [0, inf)"),
        ({"teachers": {"en": 0}}, "data.unlabeled.fr.teachers: no teacher with a positive weight"),
        ({"teachers": []}, "data.unlabeled.fr.teachers: no teacher with a positive weight"),
        ({"limit": 0}, "data.unlabeled.fr.limit: 0 is not in [1, inf)"),
        ({"format": "txt"},
         "data.unlabeled.fr.format: 'txt' is not one of text, conll, conllu, bio"),
        ({"pth": "x"}, "data.unlabeled.fr: unknown key 'pth'; did you mean 'path'?"),
    ],
)  # fmt: skip
def test_bad_unlabeled_settings_are_one_line(spec: dict, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_params(_with_unlabeled(**spec))
    assert str(caught.value) == f"params.yaml: {message}"


def test_unlabeled_text_needs_a_path() -> None:
    raw = _with_unlabeled()
    del raw["data"]["unlabeled"]["fr"]["path"]
    with pytest.raises(ConfigError, match="data.unlabeled.fr: missing required key 'path'"):
        parse_params(raw)
