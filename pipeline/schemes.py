"""Tag schemes: validation and lossless conversion between a corpus' scheme and BIOES.

Span tasks are trained in BIOES (as the paper) and scored in the corpus' own scheme, so every
corpus sequence must go to BIOES and back without changing a single span.

Schemes: ``iob1``, ``iob2`` (alias ``bio``), ``bioes``, and ``none`` for token-level tags such as
UPOS (no structure; the conversions are the identity there, so callers need not branch).

Reading IOB1/IOB2 (the conlleval / seqeval default reading, used by the metrics as well):
``B-X`` always starts a span; ``I-X`` continues a span of type X that ends on the previous token
and otherwise starts a new one; ``O`` is outside. So ``O I-PER`` is one PER span in both schemes.

Validation has two levels:

- always: every tag must belong to the scheme (``O``, or ``P-TYPE`` with a prefix of the scheme and
  a non-empty type). ``X-PER``, ``E-PER`` in IOB2 or a bare ``PER`` are errors.
- ``strict=True`` additionally requires the canonical form: IOB2 starts every span with ``B-``
  (``I-PER`` after ``O`` is an error); IOB1 uses ``B-`` only right after a span of the same type.
  Real corpora are not canonical everywhere (CoNLL-2002 Spanish has an ``I-LOC`` sentence start,
  WikiANN Japanese has ``I-`` after a ``#/O`` inside names, the German CoNLL-2003 IOB1 files have
  ``B-LOC`` after ``I-MISC``), so the default is the lenient reading above, which is what their
  official scorers use. ``from_bioes(to_bioes(tags))`` returns exactly ``tags`` iff ``tags`` is
  canonical, and the spans are the same in every case.

BIOES is always checked strictly (a BIOES file is machine-made, so a broken sequence is a bug):
after ``O``, ``E-*`` or ``S-*`` come ``O``, ``B-*`` or ``S-*``; after ``B-X`` or ``I-X`` come
``I-X`` or ``E-X``; a sentence starts with ``O``, ``B-*`` or ``S-*`` and ends with ``O``, ``E-*``
or ``S-*``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from structkd.errors import ConfigError, InputError

if TYPE_CHECKING:
    from structkd.pipeline.corpus import Sentence

SCHEMES: tuple[str, ...] = ("iob1", "iob2", "bio", "bioes", "none")
OUTSIDE = "O"
_PREFIXES = {"iob1": "BI", "iob2": "BI", "bioes": "BIES"}
Span = tuple[int, int, str]
"""A span: (first token, one past the last token, type)."""


def canonical(scheme: str) -> str:
    """The scheme's canonical name (``bio`` -> ``iob2``); unknown names are a ConfigError."""
    if scheme not in SCHEMES:
        raise ConfigError(f"unknown tag scheme {scheme!r}; expected one of {', '.join(SCHEMES)}")
    return "iob2" if scheme == "bio" else scheme


def split_tag(tag: str) -> tuple[str, str]:
    """``"B-PER"`` -> ``("B", "PER")``, ``"O"`` -> ``("O", "")``; the type may contain ``-``."""
    if tag == OUTSIDE:
        return OUTSIDE, ""
    prefix, _, kind = tag.partition("-")
    return prefix, kind


@lru_cache(maxsize=8192)
def tag_problem(tag: str, scheme: str) -> str | None:
    """Why ``tag`` is not a tag of ``scheme`` (None when it is). Token-level tags: non-empty."""
    scheme = canonical(scheme)
    if scheme == "none":
        return None if tag else "empty tag"
    if tag == OUTSIDE:
        return None
    prefix, kind = split_tag(tag)
    prefixes = _PREFIXES[scheme]
    if len(prefix) != 1 or prefix not in prefixes or not kind:
        expected = ", ".join(f"{p}-<type>" for p in prefixes)
        return f"tag {tag!r} does not belong to {scheme.upper()} (expected O, {expected})"
    return None


def _where_token(index: int, tokens: Sequence[str] | None) -> str:
    return f"token {index + 1}" + (f" {tokens[index]!r}" if tokens is not None else "")


def _bioes_problem(previous: str, tag: str) -> str | None:
    """Why ``previous -> tag`` is not a BIOES transition (``previous`` "" = sentence start)."""
    prefix, kind = split_tag(tag)
    prev_prefix, prev_kind = split_tag(previous) if previous else (OUTSIDE, "")
    inside = prev_prefix in ("B", "I")
    if inside and (prefix not in ("I", "E") or kind != prev_kind):
        return (
            f"tag {tag!r} follows {previous!r}; "
            f"BIOES continues a span with I-{prev_kind} or E-{prev_kind}"
        )
    if not inside and prefix in ("I", "E"):
        after = f"follows {previous!r}" if previous else "starts the sentence"
        return f"tag {tag!r} {after}; BIOES starts a span with B-{kind} or S-{kind}"
    return None


def validate(
    tags: Sequence[str],
    scheme: str,
    *,
    strict: bool = False,
    where: str = "tags",
    tokens: Sequence[str] | None = None,
) -> None:
    """Raise ``InputError(where, ...)`` at the first tag that breaks ``scheme`` (see module doc).

    Args:
        tags: one sentence's tags.
        scheme: the corpus scheme.
        strict: for IOB1/IOB2, also require the canonical form.
        where: location for the error, e.g. ``"train.iob:120"`` (the sentence's first line).
        tokens: the sentence's tokens, quoted in the error next to the token number.
    """
    scheme = canonical(scheme)
    for index, tag in enumerate(tags):
        problem = tag_problem(tag, scheme)
        if problem is not None:
            raise InputError(where, f"{_where_token(index, tokens)}: {problem}")
    if scheme == "bioes":
        previous = ""
        for index, tag in enumerate(tags):
            problem = _bioes_problem(previous, tag)
            if problem is not None:
                raise InputError(where, f"{_where_token(index, tokens)}: {problem}")
            previous = tag
        if tags and tags[-1][:2] in ("B-", "I-"):
            raise InputError(
                where,
                f"{_where_token(len(tags) - 1, tokens)}: sentence ends inside a span "
                f"({tags[-1]!r}); BIOES ends a span with E- or S-",
            )
    elif strict and scheme in ("iob1", "iob2"):
        previous = OUTSIDE
        for index, tag in enumerate(tags):
            prefix, kind = split_tag(tag)
            same = previous != OUTSIDE and split_tag(previous)[1] == kind
            if scheme == "iob2" and prefix == "I" and not same:
                after = f"follows {previous!r}" if index else "starts the sentence"
                raise InputError(
                    where,
                    f"{_where_token(index, tokens)}: tag {tag!r} {after}; "
                    f"strict IOB2 starts every span with B-{kind}",
                )
            if scheme == "iob1" and prefix == "B" and not same:
                after = f"follows {previous!r}" if index else "starts the sentence"
                raise InputError(
                    where,
                    f"{_where_token(index, tokens)}: tag {tag!r} {after}; strict IOB1 uses "
                    f"B-{kind} only right after a {kind} span",
                )
            previous = tag


def validate_sentences(
    sentences: Iterable[Sentence], scheme: str, path: str | Path, *, strict: bool = False
) -> None:
    """Validate every sentence; errors say ``path:line`` (the sentence's first line) and token."""
    for sentence in sentences:
        validate(
            sentence.tags,
            scheme,
            strict=strict,
            where=f"{path}:{sentence.line}",
            tokens=sentence.tokens,
        )


def spans(tags: Sequence[str], scheme: str, *, where: str = "tags") -> list[Span]:
    """The labelled spans ``(start, end_exclusive, type)`` of one sentence, left to right.

    IOB1/IOB2 use the lenient reading of the module doc; BIOES must be valid; ``none`` has no
    spans (raises ConfigError: token-level tags are not spans).
    """
    scheme = canonical(scheme)
    if scheme == "none":
        raise ConfigError("tag scheme 'none' has no spans")
    validate(tags, scheme, where=where)
    found: list[Span] = []
    start, current = -1, ""
    for index, tag in enumerate(tags):
        prefix, kind = split_tag(tag)
        if scheme == "bioes":
            if prefix in ("B", "S"):
                start = index
            if prefix in ("E", "S"):
                found.append((start, index + 1, kind))
            continue
        continues = prefix == "I" and current == kind and start >= 0
        if not continues and start >= 0:
            found.append((start, index, current))
            start, current = -1, ""
        if tag != OUTSIDE and not continues:
            start, current = index, kind
    if scheme != "bioes" and start >= 0:
        found.append((start, len(tags), current))
    return found


def render(found: Sequence[Span], length: int, scheme: str) -> list[str]:
    """Tags of a sentence of ``length`` tokens holding the (non-overlapping, sorted) spans.

    The canonical form of each scheme: IOB2 ``B I I``; IOB1 ``I I I``, with ``B`` only when the
    span touches a preceding span of the same type; BIOES ``B I E`` or ``S``.
    """
    scheme = canonical(scheme)
    if scheme == "none":
        raise ConfigError("tag scheme 'none' has no spans")
    tags = [OUTSIDE] * length
    previous_end, previous_kind = -1, ""
    for start, end, kind in found:
        if scheme == "bioes":
            if end - start == 1:
                tags[start] = f"S-{kind}"
            else:
                tags[start : end - 1] = [f"I-{kind}"] * (end - 1 - start)
                tags[start] = f"B-{kind}"
                tags[end - 1] = f"E-{kind}"
        else:
            tags[start:end] = [f"I-{kind}"] * (end - start)
            touching = previous_end == start and previous_kind == kind
            if scheme == "iob2" or touching:
                tags[start] = f"B-{kind}"
        previous_end, previous_kind = end, kind
    return tags


def to_bioes(tags: Sequence[str], scheme: str, *, where: str = "tags") -> list[str]:
    """Convert one sentence from ``scheme`` to BIOES (identity for ``bioes`` and ``none``)."""
    scheme = canonical(scheme)
    if scheme == "none":
        return list(tags)
    if scheme == "bioes":
        validate(tags, scheme, where=where)
        return list(tags)
    return render(spans(tags, scheme, where=where), len(tags), "bioes")


def from_bioes(tags: Sequence[str], scheme: str, *, where: str = "tags") -> list[str]:
    """Convert one valid BIOES sentence to ``scheme``'s canonical form (identity for ``none``)."""
    scheme = canonical(scheme)
    if scheme == "none":
        return list(tags)
    return render(spans(tags, "bioes", where=where), len(tags), scheme)


def types_of(tags: Iterable[str], scheme: str, *, where: str = "tags") -> set[str]:
    """The span types (``PER``, ...) named by ``tags``; each tag must belong to ``scheme``."""
    scheme = canonical(scheme)
    found: set[str] = set()
    for tag in set(tags):
        problem = tag_problem(tag, scheme)
        if problem is not None:
            raise InputError(where, problem)
        if tag != OUTSIDE:
            found.add(split_tag(tag)[1])
    return found
