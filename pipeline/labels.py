"""The label set of a task: one ordered list of internal tags shared by every teacher and student.

The paper's code keeps one tag dictionary for all models (paper §8 item 9); here it is
``labels.json``, written once by ``prepare``. Its content digest goes into every cache key, so
knowledge made with another label set is never served, and a teacher/student mismatch is an error.

Internal scheme: ``bioes`` for span tasks (NER, aspects; paper §8 item 10), ``none`` for token
tasks (UPOS). There are no pseudo-labels (``<START>``, ``<STOP>``, ``<unk>``): the CRF has explicit
start/end vectors.

Order (deterministic, independent of corpus order):

- ``bioes``: ``O`` first, then for each type in sorted (code point) order its ``B-``, ``I-``,
  ``E-``, ``S-`` tags. Every type always has all four, so any valid BIOES sequence over the
  types can be represented and the transition constraints never strand a span.
- ``none``: the tags sorted by code point (for UPOS: ADJ, ADP, ..., X).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import numpy as np

from structkd.errors import InputError
from structkd.pipeline.corpus import Sentence
from structkd.pipeline.schemes import OUTSIDE, canonical, split_tag, types_of
from structkd.storage.io import atomic_write_text

INTERNAL_SCHEMES: tuple[str, ...] = ("bioes", "none")
_BIOES_PREFIXES = ("B", "I", "E", "S")
_MAX_LABELS = int(np.iinfo(np.int16).max)


def _problem(labels: tuple[str, ...], scheme: str) -> str | None:
    """Why (labels, scheme) is not a valid label set, or None."""
    if scheme not in INTERNAL_SCHEMES:
        return f"label set scheme must be one of {', '.join(INTERNAL_SCHEMES)}, got {scheme!r}"
    if not labels:
        return "label set is empty"
    if len(labels) > _MAX_LABELS:
        return f"{len(labels)} labels do not fit int16 ids"
    if not all(isinstance(label, str) and label for label in labels):
        return "labels must be non-empty strings"
    seen: set[str] = set()
    for label in labels:
        if label in seen:
            return f"label {label!r} occurs twice"
        seen.add(label)
    if scheme == "none":
        return None
    if OUTSIDE not in seen:
        return "BIOES label set has no 'O'"
    for label in labels:
        prefix, kind = split_tag(label)
        if label != OUTSIDE and (prefix not in _BIOES_PREFIXES or not kind):
            return f"label {label!r} is not a BIOES tag"
        for needed in _BIOES_PREFIXES:
            if label != OUTSIDE and f"{needed}-{kind}" not in seen:
                return f"label set has {label!r} but not '{needed}-{kind}'"
    return None


@dataclass(frozen=True)
class LabelSet:
    """An ordered, immutable set of internal tags; label id = position in ``labels``.

    Attributes:
        labels: the tags in id order (see the module doc for the canonical order).
        scheme: ``"bioes"`` (span task) or ``"none"`` (token task).
    """

    labels: tuple[str, ...]
    scheme: str = "none"
    _ids: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", tuple(self.labels))
        problem = _problem(self.labels, self.scheme)
        if problem is not None:
            raise InputError("label set", problem)
        object.__setattr__(self, "_ids", {label: i for i, label in enumerate(self.labels)})

    @classmethod
    def from_types(cls, types: Iterable[str]) -> LabelSet:
        """The BIOES set of the span ``types`` (``O`` plus B/I/E/S of each, canonical order)."""
        labels = [OUTSIDE]
        for kind in sorted(set(types)):
            labels.extend(f"{prefix}-{kind}" for prefix in _BIOES_PREFIXES)
        return cls(tuple(labels), "bioes")

    @classmethod
    def from_tags(cls, tags: Iterable[str], scheme: str, *, where: str = "labels") -> LabelSet:
        """The label set for tags written in the corpus ``scheme`` (e.g. params.yaml ``labels``).

        Span schemes give the BIOES set of the types they name; ``none`` gives the sorted tags.
        A tag that does not belong to ``scheme`` raises ``InputError(where, ...)``.
        """
        scheme = canonical(scheme)
        tags = list(tags)
        if scheme == "none":
            if not tags:
                raise InputError(where, "no labels")
            types_of(tags, scheme, where=where)
            return cls(tuple(sorted(set(tags))), "none")
        return cls.from_types(types_of(tags, scheme, where=where))

    @classmethod
    def from_sentences(
        cls,
        sentences: Iterable[Sentence] | Iterable[Sequence[str]],
        scheme: str,
        *,
        where: str = "labels",
    ) -> LabelSet:
        """The label set of every tag in ``sentences`` (objects with ``.tags``, or tag lists)."""
        tags: set[str] = set()
        for sentence in sentences:
            tags.update(cast("Iterable[str]", getattr(sentence, "tags", sentence)))
        if not tags:
            raise InputError(where, "no labels: the sentences carry no tags")
        return cls.from_tags(tags, scheme, where=where)

    @property
    def n_tags(self) -> int:
        """Number of labels (the CRF's ``n_tags``)."""
        return len(self.labels)

    def __len__(self) -> int:
        return len(self.labels)

    def __contains__(self, tag: object) -> bool:
        return tag in self._ids

    @property
    def types(self) -> tuple[str, ...]:
        """Span types in order (empty for token tasks)."""
        if self.scheme == "none":
            return ()
        return tuple(dict.fromkeys(split_tag(t)[1] for t in self.labels if t != OUTSIDE))

    def index(self, tag: str, *, where: str = "tags") -> int:
        """The id of ``tag``; an unknown tag raises ``InputError(where, ...)`` naming it."""
        try:
            return self._ids[tag]
        except KeyError:
            raise InputError(where, self._unknown(tag)) from None

    def _unknown(self, tag: str) -> str:
        shown = ", ".join(self.labels[:30]) + (", ..." if len(self.labels) > 30 else "")
        return f"unknown label {tag!r} (label set: {shown})"

    def encode(self, tags: Sequence[str], *, where: str = "tags") -> np.ndarray:
        """Tags -> ids, ``(n,)`` int16. An unknown tag raises ``InputError(where, ...)``."""
        ids = self._ids
        try:
            return np.array([ids[tag] for tag in tags], dtype=np.int16)
        except KeyError as error:
            raise InputError(where, self._unknown(error.args[0])) from None

    def decode(self, ids: Sequence[int] | np.ndarray, *, where: str = "label ids") -> list[str]:
        """Ids ``(n,)`` -> tags; an id outside ``[0, n_tags)`` raises ``InputError(where, ...)``."""
        array = np.asarray(ids)
        if array.size and (array.min() < 0 or array.max() >= len(self.labels)):
            bad = int(array[(array < 0) | (array >= len(self.labels))][0])
            raise InputError(where, f"label id {bad} is out of range for {len(self.labels)} labels")
        labels = self.labels
        return [labels[i] for i in array.tolist()]

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, no spaces, UTF-8 text): what :meth:`digest` hashes."""
        payload = {"labels": list(self.labels), "scheme": self.scheme}
        return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    def digest(self) -> str:
        """sha256 hex digest of :meth:`to_json`: equal digests <=> equal label sets and order."""
        return hashlib.sha256(self.to_json().encode("utf-8")).hexdigest()

    def save(self, path: str | Path) -> None:
        """Write ``labels.json`` durably (:func:`~structkd.storage.io.atomic_write`)."""
        path = Path(path)
        text = json.dumps(
            {"labels": list(self.labels), "scheme": self.scheme}, indent=1, ensure_ascii=False
        )
        atomic_write_text(path, text + "\n")

    @classmethod
    def load(cls, path: str | Path) -> LabelSet:
        """Read a file written by :meth:`save`; any problem is an ``InputError`` naming the file."""
        where = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise InputError(where, "no such file") from None
        except (OSError, UnicodeDecodeError) as error:
            raise InputError(where, f"cannot read label set ({error})") from None
        try:
            payload = json.loads(text)
        except json.JSONDecodeError as error:
            raise InputError(f"{where}:{error.lineno}", f"not valid JSON ({error.msg})") from None
        if (
            not isinstance(payload, dict)
            or set(payload) != {"labels", "scheme"}
            or not isinstance(payload["labels"], list)
            or not isinstance(payload["scheme"], str)
        ):
            raise InputError(where, "expected an object with 'labels' (a list) and 'scheme'")
        try:
            return cls(tuple(payload["labels"]), payload["scheme"])
        except InputError as error:
            raise InputError(where, error.problem) from None

    def check_same(self, other: LabelSet, where: str) -> None:
        """Raise ``InputError(where, ...)`` unless ``other`` has the same labels in the same order.

        Used where a teacher's knowledge meets the student: ids are positions, so a reordered set
        would silently swap labels.
        """
        if other == self:
            return
        if other.scheme != self.scheme:
            problem = f"scheme {other.scheme!r} instead of {self.scheme!r}"
        elif set(other.labels) == set(self.labels):
            problem = "same labels in a different order"
        else:
            missing = sorted(set(self.labels) - set(other.labels))
            extra = sorted(set(other.labels) - set(self.labels))
            problem = f"missing {missing}, extra {extra}"
        raise InputError(where, f"label set differs from the task's labels.json: {problem}")

    def allowed_transitions(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The scheme's hard constraints in the project convention (``allowed[i, j]``: i -> j).

        Returns:
            ``allowed (n_tags, n_tags)``, ``start_allowed (n_tags,)``, ``end_allowed (n_tags,)``,
            all bool. BIOES: ``O``/``E-*``/``S-*`` -> ``O``, ``B-*``, ``S-*``; ``B-X``/``I-X`` ->
            ``I-X``, ``E-X``; start in ``O``/``B-*``/``S-*``; end in ``O``/``E-*``/``S-*``.
            ``none``: everything allowed.
        """
        n = len(self.labels)
        if self.scheme == "none":
            return np.ones((n, n), bool), np.ones(n, bool), np.ones(n, bool)
        parts = [split_tag(label) for label in self.labels]
        prefixes = np.array([prefix for prefix, _ in parts])
        kinds = np.array([kind for _, kind in parts])
        opens = np.isin(prefixes, ["O", "B", "S"])
        closes = np.isin(prefixes, ["O", "E", "S"])
        inside = np.isin(prefixes, ["B", "I"])
        continues = np.isin(prefixes, ["I", "E"])
        same_kind = kinds[:, None] == kinds[None, :]
        allowed = (closes[:, None] & opens[None, :]) | (
            inside[:, None] & continues[None, :] & same_kind
        )
        return allowed, opens.copy(), closes.copy()
