"""Tag schemes: exact messages for bad tags, lossless BIOES round trips on every real span file."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from structkd.errors import ConfigError, InputError
from structkd.pipeline.corpus import read_conll
from structkd.pipeline.schemes import (
    from_bioes,
    render,
    spans,
    to_bioes,
    validate,
    validate_sentences,
)

SHARED = Path("/work/shared/data")
SPAN_FILES = sorted(
    p for task in ("conll", "wikiann", "semeval16") for p in SHARED.glob(f"{task}/*/*.gz")
)


def _scheme(path: Path) -> str:
    """The declared scheme (SOURCE.md): German CoNLL-2003 is IOB1, every other span file IOB2."""
    return "iob1" if path.parent.name == "de" and path.parent.parent.name == "conll" else "iob2"


def _params() -> list:
    if SPAN_FILES:
        return [
            pytest.param(p, id=f"{p.parent.parent.name}/{p.parent.name}/{p.name}")
            for p in SPAN_FILES
        ]
    return [pytest.param(None, marks=pytest.mark.skip(reason="shared data absent"))]


@pytest.mark.parametrize("path", _params())
def test_real_span_file_round_trips_through_bioes(path: Path) -> None:
    """scheme -> BIOES -> scheme keeps every span, and is byte-exact iff the sentence is canonical.

    Non-canonical sentences exist in real files (e.g. ``I-LOC`` starting a CoNLL-2002 Spanish
    sentence); for them the round trip gives the canonical spelling of the same spans.
    """
    scheme = _scheme(path)
    sentences = read_conll(path)
    validate_sentences(sentences, scheme, path)
    for sentence in sentences:
        back = from_bioes(to_bioes(sentence.tags, scheme), scheme)  # from_bioes checks BIOES
        if back != list(sentence.tags):
            assert spans(back, scheme) == spans(sentence.tags, scheme)
            with pytest.raises(InputError):
                validate(sentence.tags, scheme, strict=True)


def test_conversions_on_known_sequences() -> None:
    iob2 = ["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "I-LOC", "B-PER"]
    bioes = ["B-PER", "E-PER", "O", "S-LOC", "B-LOC", "E-LOC", "S-PER"]
    iob1 = ["I-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-LOC", "I-PER"]
    assert to_bioes(iob2, "iob2") == to_bioes(iob2, "bio") == bioes
    assert to_bioes(iob1, "iob1") == bioes
    assert from_bioes(bioes, "iob2") == iob2
    assert from_bioes(bioes, "iob1") == iob1
    assert spans(bioes, "bioes") == [(0, 2, "PER"), (3, 4, "LOC"), (4, 6, "LOC"), (6, 7, "PER")]
    assert (
        to_bioes(["NOUN", "VERB"], "none")
        == from_bioes(["NOUN", "VERB"], "none")
        == ["NOUN", "VERB"]
    )
    assert to_bioes([], "iob2") == []


def test_lenient_reading_of_non_canonical_sequences() -> None:
    # conlleval reading: I-X after O or another type starts a span.
    assert to_bioes(["O", "I-PER", "I-LOC", "I-LOC"], "iob2") == ["O", "S-PER", "B-LOC", "E-LOC"]
    # IOB1 B-LOC after I-MISC (German CoNLL-2003) is a new LOC span either way.
    assert to_bioes(["I-MISC", "B-LOC", "I-LOC"], "iob1") == ["S-MISC", "B-LOC", "E-LOC"]
    assert from_bioes(["S-MISC", "B-LOC", "E-LOC"], "iob1") == ["I-MISC", "I-LOC", "I-LOC"]


def test_tag_not_of_the_scheme() -> None:
    with pytest.raises(InputError) as error:
        validate(["B-PER", "X-PER"], "iob2", where="x.iob:7", tokens=["John", "Smith"])
    assert str(error.value) == (
        "x.iob:7: token 2 'Smith': tag 'X-PER' does not belong to IOB2 "
        "(expected O, B-<type>, I-<type>)"
    )
    for bad in ("E-PER", "PER", "B-", "o", ""):
        with pytest.raises(InputError):
            validate([bad], "iob2")
    with pytest.raises(InputError, match="tag 'E-PER' does not belong to IOB1"):
        to_bioes(["E-PER"], "iob1")


def test_strict_iob2_and_iob1() -> None:
    validate(["O", "I-PER"], "iob2")  # lenient default
    with pytest.raises(InputError) as error:
        validate(["O", "I-PER"], "iob2", strict=True, where="x.iob:3", tokens=["Mr", "Smith"])
    assert str(error.value) == (
        "x.iob:3: token 2 'Smith': tag 'I-PER' follows 'O'; "
        "strict IOB2 starts every span with B-PER"
    )
    with pytest.raises(InputError, match="token 1: tag 'I-LOC' starts the sentence; strict IOB2"):
        validate(["I-LOC"], "iob2", strict=True)
    with pytest.raises(InputError) as error:
        validate(["I-MISC", "B-LOC"], "iob1", strict=True)
    assert str(error.value) == (
        "tags: token 2: tag 'B-LOC' follows 'I-MISC'; "
        "strict IOB1 uses B-LOC only right after a LOC span"
    )
    validate(["I-LOC", "B-LOC", "O", "I-PER"], "iob1", strict=True)


@pytest.mark.parametrize(
    ("tags", "problem"),
    [
        (
            ["O", "I-PER"],
            "token 2: tag 'I-PER' follows 'O'; BIOES starts a span with B-PER or S-PER",
        ),
        (
            ["E-PER"],
            "token 1: tag 'E-PER' starts the sentence; BIOES starts a span with B-PER or S-PER",
        ),
        (
            ["B-PER", "O"],
            "token 2: tag 'O' follows 'B-PER'; BIOES continues a span with I-PER or E-PER",
        ),
        (
            ["B-PER", "E-LOC"],
            "token 2: tag 'E-LOC' follows 'B-PER'; BIOES continues a span with I-PER or E-PER",
        ),
        (
            ["S-PER", "B-PER"],
            "token 2: sentence ends inside a span ('B-PER'); BIOES ends a span with E- or S-",
        ),
    ],
)
def test_bioes_is_checked_strictly(tags: list[str], problem: str) -> None:
    with pytest.raises(InputError) as error:
        validate(tags, "bioes", where="p")
    assert str(error.value) == f"p: {problem}"
    with pytest.raises(InputError):
        from_bioes(tags, "iob2")


def test_unknown_scheme() -> None:
    with pytest.raises(ConfigError, match="unknown tag scheme 'bilou'"):
        validate(["O"], "bilou")
    with pytest.raises(ConfigError, match="no spans"):
        spans(["NOUN"], "none")


def test_validate_sentences_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "x.iob"
    path.write_text("John B-PER\n\nSmith Q-PER\n")
    with pytest.raises(InputError) as error:
        validate_sentences(read_conll(path), "iob2", path)
    assert str(error.value).startswith(f"{path}:3: token 1 'Smith': tag 'Q-PER' does not belong")


@st.composite
def span_sets(draw) -> tuple[list[tuple[int, int, str]], int]:
    """Sorted non-overlapping spans over a sentence, adjacent same-type spans included."""
    cuts = draw(st.lists(st.integers(1, 4), min_size=0, max_size=8))
    found, position = [], draw(st.integers(0, 2))
    for width in cuts:
        if draw(st.booleans()):
            found.append((position, position + width, draw(st.sampled_from(["A", "B-C"]))))
        position += width + draw(st.sampled_from([0, 0, 1]))
    return found, position + draw(st.integers(0, 2))


@given(span_sets(), st.sampled_from(["iob1", "iob2", "bioes"]))
def test_render_then_read_is_exact_in_every_scheme(case, scheme: str) -> None:
    found, length = case
    tags = render(found, length, scheme)
    validate(tags, scheme, strict=True)
    assert spans(tags, scheme) == found
    assert from_bioes(to_bioes(tags, scheme), scheme) == tags
