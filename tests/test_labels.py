"""LabelSet: deterministic order, encoding errors, JSON round trip, transition constraints."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from structkd.errors import InputError
from structkd.pipeline.corpus import Sentence, read_conllu
from structkd.pipeline.labels import LabelSet
from structkd.pipeline.schemes import validate

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample"
# The 17 Universal POS tags (https://universaldependencies.org/u/pos/), sorted.
UPOS_NAMES = "ADJ ADP ADV AUX CCONJ DET INTJ NOUN NUM PART PRON PROPN PUNCT SCONJ SYM VERB X"
UPOS = tuple(UPOS_NAMES.split())
NER = LabelSet.from_tags(["I-PER", "O", "B-MISC", "B-LOC"], "iob2")


def test_bioes_order_is_o_then_types_then_bies() -> None:
    assert NER.labels == (
        "O",
        *("B-LOC", "I-LOC", "E-LOC", "S-LOC"),
        *("B-MISC", "I-MISC", "E-MISC", "S-MISC"),
        *("B-PER", "I-PER", "E-PER", "S-PER"),
    )
    assert NER.scheme == "bioes" and NER.n_tags == 13 and NER.types == ("LOC", "MISC", "PER")
    shuffled = LabelSet.from_tags(["B-LOC", "B-MISC", "O", "I-PER"], "iob1")
    assert shuffled == NER and shuffled.digest() == NER.digest()


def test_from_sentences_token_task_and_span_task() -> None:
    sentences = [Sentence(("a", "b"), ("NOUN", "ADJ"), 1), Sentence(("c",), ("ADP",), 3)]
    assert LabelSet.from_sentences(sentences, "none").labels == ("ADJ", "ADP", "NOUN")
    spans = [["B-ORG", "I-ORG"], ["O"]]
    assert LabelSet.from_sentences(spans, "bio") == LabelSet.from_types(["ORG"])
    with pytest.raises(InputError, match="tag 'X-ORG' does not belong to IOB2"):
        LabelSet.from_sentences([["X-ORG"]], "iob2")


def test_sample_label_set_is_the_17_upos_tags() -> None:
    sentences = [
        s for lang in ("en", "de", "es", "nl") for s in read_conllu(SAMPLE / lang / "train.conllu")
    ]
    labels = LabelSet.from_sentences(sentences, "none")
    assert labels.labels == UPOS


def test_encode_decode_and_unknown_label() -> None:
    ids = NER.encode(["O", "B-PER", "E-PER", "S-LOC"])
    assert ids.dtype == np.int16 and ids.tolist() == [0, 9, 11, 4]
    assert NER.decode(ids) == ["O", "B-PER", "E-PER", "S-LOC"]
    assert NER.index("S-MISC") == 8 and "S-MISC" in NER and "B-ORG" not in NER
    with pytest.raises(InputError) as error:
        NER.encode(["O", "B-ORG"], where="train.iob:12")
    assert str(error.value).startswith("train.iob:12: unknown label 'B-ORG' (label set: O, B-LOC,")
    with pytest.raises(InputError, match="^x: unknown label 'PER'"):
        NER.index("PER", where="x")
    with pytest.raises(InputError, match="^label ids: label id 13 is out of range for 13 labels$"):
        NER.decode([0, 13])
    assert NER.encode([]).shape == (0,)


def test_json_round_trip_atomic_and_digest(tmp_path: Path) -> None:
    path = tmp_path / "prepared" / "labels.json"
    NER.save(path)
    assert LabelSet.load(path) == NER
    assert [p.name for p in path.parent.iterdir()] == ["labels.json"]
    assert json.loads(path.read_text()) == {"labels": list(NER.labels), "scheme": "bioes"}
    assert LabelSet.load(path).digest() == NER.digest()
    reordered = LabelSet(tuple(reversed(NER.labels)), "bioes")
    assert reordered.digest() != NER.digest()
    assert LabelSet(NER.labels, "bioes").digest() == NER.digest()


@pytest.mark.parametrize(
    ("text", "where", "problem"),
    [
        ("{", ":1", "not valid JSON (Expecting property name enclosed in double quotes)"),
        ('{"labels": ["O"]}', "", "expected an object with 'labels' (a list) and 'scheme'"),
        (
            '{"labels": ["O", "B-PER"], "scheme": "bioes"}',
            "",
            "label set has 'B-PER' but not 'I-PER'",
        ),
        ('{"labels": ["NOUN", "NOUN"], "scheme": "none"}', "", "label 'NOUN' occurs twice"),
        (
            '{"labels": ["O"], "scheme": "iob2"}',
            "",
            "label set scheme must be one of bioes, none, got 'iob2'",
        ),
    ],
)
def test_load_errors_name_the_file(tmp_path: Path, text: str, where: str, problem: str) -> None:
    path = tmp_path / "labels.json"
    path.write_text(text)
    with pytest.raises(InputError) as error:
        LabelSet.load(path)
    assert str(error.value) == f"{path}{where}: {problem}"


def test_check_same() -> None:
    NER.check_same(LabelSet.from_types(["PER", "LOC", "MISC"]), "teacher en")
    with pytest.raises(
        InputError, match="^teacher en: label set differs .*same labels in a different order$"
    ):
        NER.check_same(LabelSet(tuple(reversed(NER.labels)), "bioes"), "teacher en")
    with pytest.raises(InputError, match=r"missing \[.*'S-MISC'\], extra \[\]$"):
        NER.check_same(LabelSet.from_types(["PER", "LOC"]), "teacher en")


def test_transition_constraints_bioes() -> None:
    allowed, start, end = NER.allowed_transitions()
    assert allowed.shape == (13, 13) and allowed.dtype == bool
    i = NER.index

    def successors(tag: str) -> set[str]:
        return {NER.labels[j] for j in np.flatnonzero(allowed[i(tag)])}

    openers = {"O", "B-LOC", "S-LOC", "B-MISC", "S-MISC", "B-PER", "S-PER"}
    assert successors("O") == successors("E-PER") == successors("S-LOC") == openers
    assert successors("B-PER") == successors("I-PER") == {"I-PER", "E-PER"}
    assert not allowed[i("O"), i("I-PER")] and not allowed[i("B-PER"), i("E-LOC")]
    assert {NER.labels[j] for j in np.flatnonzero(start)} == openers
    assert {NER.labels[j] for j in np.flatnonzero(end)} == {
        "O",
        "E-LOC",
        "S-LOC",
        "E-MISC",
        "S-MISC",
        "E-PER",
        "S-PER",
    }


def test_transition_constraints_match_bioes_validation() -> None:
    """A sequence is allowed by (start, allowed, end) iff validate(bioes) accepts it."""
    small = LabelSet.from_types(["A", "B"])
    allowed, start, end = small.allowed_transitions()
    for length in (1, 2, 3):
        for ids in itertools.product(range(small.n_tags), repeat=length):
            ok = (
                start[ids[0]]
                and end[ids[-1]]
                and all(allowed[a, b] for a, b in itertools.pairwise(ids))
            )
            try:
                validate(small.decode(ids), "bioes")
                valid = True
            except InputError:
                valid = False
            assert ok == valid, small.decode(ids)


def test_token_task_allows_everything() -> None:
    upos = LabelSet(("ADJ", "NOUN", "VERB"))
    allowed, start, end = upos.allowed_transitions()
    assert allowed.all() and start.all() and end.all() and allowed.shape == (3, 3)
    assert upos.types == ()
