"""params.yaml is validated strictly: unknown keys are named with a suggestion."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from structkd.errors import ConfigError
from structkd.pipeline.params import Params, load_params, parse_params

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
        with pytest.raises(ConfigError, match="data.languages.en.test_limit must be a positive"):
            parse_params(raw)
    del spec["test_limit"]
    spec["dev"] = "b"
    with pytest.raises(ConfigError, match="has both dev and dev_split"):
        parse_params(raw)
