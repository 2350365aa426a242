"""Corpus readers: CoNLL-style column files (CoNLL-2002/2003, BIO/TSV) and CoNLL-U.

Every reader returns ``list[Sentence]`` and either reads the whole file or raises one
:class:`~structkd.errors.InputError` that names the file, the line and the problem. Nothing
is dropped silently: a line that is neither a token line, a blank line, a ``-DOCSTART-`` marker nor
(in CoNLL-U) a comment, multiword-token range or empty node is an error.

Common rules:

- ``.gz`` files are recognised by their magic bytes (not their name) and decompressed in memory.
- Text must be strict UTF-8 (a leading byte-order mark is ignored); the error names the line of the
  first bad byte. ``\\r\\n`` line ends are accepted.
- A line holding only spaces/tabs counts as blank, i.e. it ends the sentence.
- ``Sentence.line`` is the 1-based line of the sentence's first token, for error messages.
- A file without a single sentence is an error ("no sentences"): an empty split is always a mistake.
"""

from __future__ import annotations

import gzip
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from structkd.errors import ConfigError, InputError
from structkd.pipeline.params import Format, UnlabeledFormat

FORMATS: tuple[str, ...] = ("conll", "conllu", "bio")
DOCSTART = "-DOCSTART-"
CONLLU_COLUMNS = 10
_CONLLU_TAG_COLUMNS = {"upos": 3, "xpos": 4}
_SPACES = re.compile(r"[ \t]+")
_WORD_ID = re.compile(r"[0-9]+")
_RANGE_ID = re.compile(r"[0-9]+-[0-9]+")
_EMPTY_NODE_ID = re.compile(r"[0-9]+\.[0-9]+")


@dataclass(frozen=True)
class Sentence:
    """One sentence: its tokens, their tags (``()`` when read without tags) and where it starts.

    Attributes:
        tokens: the words, in order; never empty strings.
        tags: one tag per token in the corpus' own scheme, or ``()`` when the reader was asked for
            tokens only (``tag_column=None`` / ``column=None``).
        line: 1-based line of the first token in its file (error messages point there).
    """

    tokens: tuple[str, ...]
    tags: tuple[str, ...]
    line: int

    def __len__(self) -> int:
        return len(self.tokens)


def read_lines(path: str | Path) -> list[str]:
    """The file's lines (without line ends), gunzipped and strictly UTF-8 decoded.

    Decoding the whole file at once is ~10x faster than line by line; on failure the offending
    line is recovered from the byte offset so that the error still points at it.
    """
    where = str(path)
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise InputError(where, "no such file") from None
    except IsADirectoryError:
        raise InputError(where, "is a directory, expected a corpus file") from None
    except OSError as error:
        raise InputError(where, f"cannot read: {error.strerror or error}") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as error:
            raise InputError(where, f"corrupt or truncated gzip data ({error})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        bad = raw[error.start]
        raise InputError(f"{where}:{line}", f"not valid UTF-8 (byte 0x{bad:02x})") from None
    if text.startswith("\ufeff"):
        text = text[1:]
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def _is_blank(line: str) -> bool:
    return not line.strip(" \t")


def _resolve_column(column: int, n_columns: int, name: str, where: str) -> int:
    if not -n_columns <= column < n_columns:
        raise InputError(where, f"{name} column {column} is out of range for {n_columns} columns")
    return column % n_columns


class _SentenceBuilder:
    """Collects tokens until a sentence boundary; keeps the first token's line."""

    def __init__(self) -> None:
        self.sentences: list[Sentence] = []
        self.tokens: list[str] = []
        self.tags: list[str] = []
        self.line = 0

    def add(self, token: str, tag: str | None, line: int) -> None:
        if not self.tokens:
            self.line = line
        self.tokens.append(token)
        if tag is not None:
            self.tags.append(tag)

    def flush(self) -> None:
        if self.tokens:
            self.sentences.append(Sentence(tuple(self.tokens), tuple(self.tags), self.line))
            self.tokens, self.tags = [], []

    def finish(self, path: str | Path) -> list[Sentence]:
        self.flush()
        if not self.sentences:
            raise InputError(str(path), "no sentences")
        return self.sentences


def read_conll(
    path: str | Path,
    *,
    token_column: int = 0,
    tag_column: int | None = -1,
    n_columns: int | None = None,
    comments: bool = False,
) -> list[Sentence]:
    """Read a column file: one token per line, blank line between sentences.

    The delimiter is decided once per file from its first token line: a tab there means
    tab-separated columns (tokens may then contain spaces, as in some WikiANN/XTREME files),
    otherwise runs of spaces/tabs separate columns (CoNLL-2002/2003). The column count is fixed per
    file (``n_columns``, or that of the first token line); any other count is an error.

    ``-DOCSTART-`` lines (first column) end the current sentence and are skipped, whether or not a
    blank line follows them (the CoNLL-2002 Dutch files have none).

    Lines starting with ``#`` are tokens by default, because ``#`` is a real token in CoNLL and
    WikiANN files (``# O``). Pass ``comments=True`` only for files known to carry ``#`` comment
    lines; they are then skipped between sentences.

    Args:
        path: the file, plain or gzip.
        token_column: column of the word (negative counts from the end).
        tag_column: column of the tag (default: last); ``None`` reads tokens only (tags ``()``).
        n_columns: expected column count; ``None`` infers it from the first token line.
        comments: treat ``#`` lines outside sentences as comments.

    Returns:
        The sentences in file order.

    Raises:
        InputError: unreadable/non-UTF-8 file, wrong column count, empty token or tag, no sentences.
        ConfigError: token and tag column are the same column.
    """
    builder = _SentenceBuilder()
    tab_separated: bool | None = None
    width = n_columns
    token_at = tag_at = -1
    for number, line in enumerate(read_lines(path), 1):
        if _is_blank(line):
            builder.flush()
            continue
        if comments and not builder.tokens and line.startswith("#"):
            continue
        if _SPACES.split(line.lstrip(" \t"), maxsplit=1)[0] == DOCSTART:
            builder.flush()
            continue
        if tab_separated is None:
            tab_separated = "\t" in line
        fields = line.split("\t") if tab_separated else _SPACES.split(line.strip(" \t"))
        where = f"{path}:{number}"
        if width is None:
            width = len(fields)
        if token_at < 0:
            token_at = _resolve_column(token_column, width, "token", where)
            if tag_column is not None:
                tag_at = _resolve_column(tag_column, width, "tag", where)
                if tag_at == token_at:
                    raise ConfigError(f"{path}: token and tag column are both column {tag_at}")
        if len(fields) != width:
            raise InputError(where, f"expected {width} columns, got {len(fields)}")
        token = fields[token_at].strip(" ")
        if not token:
            raise InputError(where, "empty token")
        tag = None
        if tag_column is not None:
            tag = fields[tag_at].strip(" ")
            if not tag:
                raise InputError(where, "empty tag")
        builder.add(token, tag, number)
    return builder.finish(path)


def read_conllu(
    path: str | Path, *, column: Literal["upos", "xpos"] | None = "upos"
) -> list[Sentence]:
    """Read CoNLL-U: tokens are the syntactic words (FORM), tags the UPOS (or XPOS) column.

    Comment lines (``#``) before a sentence, multiword-token ranges (``1-2``) and empty nodes
    (``3.1``) are skipped: the tagger labels syntactic words, as UD's own POS evaluation does.
    Word IDs must count 1, 2, 3, ... within a sentence, which also catches a missing blank line
    between two sentences. Lines must have exactly 10 tab-separated columns (FORM may contain
    spaces). A ``_`` in the tag column means the tag is missing and is an error.

    Args:
        path: the file, plain or gzip.
        column: ``"upos"`` (column 4), ``"xpos"`` (column 5), or ``None`` for tokens only.

    Raises:
        InputError: naming file, line and problem.
    """
    if column is not None and column not in _CONLLU_TAG_COLUMNS:
        raise ConfigError(f"{path}: CoNLL-U tag column must be upos or xpos, got {column!r}")
    tag_at = None if column is None else _CONLLU_TAG_COLUMNS[column]
    tag_name = "" if column is None else column.upper()
    builder = _SentenceBuilder()
    for number, line in enumerate(read_lines(path), 1):
        if _is_blank(line):
            builder.flush()
            continue
        where = f"{path}:{number}"
        if line.startswith("#"):
            if builder.tokens:
                raise InputError(where, "comment inside a sentence (missing blank line before it?)")
            continue
        fields = line.split("\t")
        if len(fields) != CONLLU_COLUMNS:
            raise InputError(where, f"expected {CONLLU_COLUMNS} columns, got {len(fields)}")
        word_id = fields[0]
        if _RANGE_ID.fullmatch(word_id) or _EMPTY_NODE_ID.fullmatch(word_id):
            continue
        if not _WORD_ID.fullmatch(word_id):
            raise InputError(where, f"bad word ID {word_id!r}")
        expected = len(builder.tokens) + 1
        if int(word_id) != expected:
            raise InputError(where, f"word ID {word_id} out of sequence (expected {expected})")
        token = fields[1]
        if not token.strip(" "):
            raise InputError(where, "empty token")
        tag = None
        if tag_at is not None:
            tag = fields[tag_at]
            if not tag.strip(" "):
                raise InputError(where, "empty tag")
            if tag == "_":
                raise InputError(where, f"no {tag_name} tag ('_')")
        builder.add(token, tag, number)
    return builder.finish(path)


def read_corpus(
    path: str | Path,
    *,
    format: Format,
    token_column: int = 0,
    tag_column: int | None = -1,
) -> list[Sentence]:
    """Read ``path`` with the reader of ``format`` (the ``format`` of a params.yaml corpus entry).

    ``conll`` and ``bio`` are the same column reader (``bio`` names the two-column token/tag files
    of WikiANN, SemEval and XTREME UD). For ``conllu`` the token is always FORM; ``tag_column`` is
    -1 (the default) or 3 for UPOS, 4 for XPOS, ``None`` for tokens only, and ``token_column``
    must be 0 (the default) or 1 (FORM), so that one default works for every format.

    Raises:
        ConfigError: unknown format or a column that the format does not have.
        InputError: from the reader.
    """
    if format in ("conll", "bio"):
        return read_conll(path, token_column=token_column, tag_column=tag_column)
    if format == "conllu":
        if token_column not in (0, 1):
            raise ConfigError(f"{path}: CoNLL-U tokens are FORM (column 1), got {token_column}")
        columns: dict[int | None, Literal["upos", "xpos"] | None] = {
            -1: "upos",
            3: "upos",
            4: "xpos",
            None: None,
        }
        if tag_column not in columns:
            raise ConfigError(
                f"{path}: CoNLL-U tag column must be 3 (UPOS) or 4 (XPOS), got {tag_column}"
            )
        return read_conllu(path, column=columns[tag_column])
    raise ConfigError(
        f"{path}: unknown corpus format {format!r}; expected one of conll, conllu, bio"
    )


def read_text(path: str | Path) -> list[Sentence]:
    """Read tokens-only text: one sentence per line, words separated by spaces or tabs.

    Blank lines are skipped (they separate nothing: every line is a sentence of its own), so
    ``Sentence.line`` is the sentence's own line. Tags are ``()``.

    Raises:
        InputError: unreadable or non-UTF-8 file (naming the line), or no sentences.
    """
    sentences = [
        Sentence(tuple(_SPACES.split(line.strip(" \t"))), (), number)
        for number, line in enumerate(read_lines(path), 1)
        if not _is_blank(line)
    ]
    if not sentences:
        raise InputError(str(path), "no sentences")
    return sentences


def read_tokens(
    path: str | Path, *, format: UnlabeledFormat, token_column: int = 0
) -> list[Sentence]:
    """The sentences of an unlabeled corpus: ``text`` (:func:`read_text`), or a labelled format
    read without its tags (:func:`read_corpus` with ``tag_column=None``)."""
    if format == "text":
        return read_text(path)
    return read_corpus(path, format=format, token_column=token_column, tag_column=None)
