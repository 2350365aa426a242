"""Corpus readers: every real file loads (counts checked against its SOURCE.md), bad input fails
with one exact message, and the shipped sample is real CoNLL-U that make_sample.py reproduces."""

from __future__ import annotations

import collections
import gzip
import importlib.util
import re
import sys
from pathlib import Path

import pytest

from structkd.errors import ConfigError, InputError
from structkd.pipeline.corpus import (
    Sentence,
    read_conll,
    read_conllu,
    read_corpus,
    read_text,
    read_tokens,
)

SHARED = Path("/work/shared/data")
SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample"
# The 17 Universal POS tags (https://universaldependencies.org/u/pos/), sorted.
UPOS_NAMES = "ADJ ADP ADV AUX CCONJ DET INTJ NOUN NUM PART PRON PROPN PUNCT SCONJ SYM VERB X"
UPOS = tuple(UPOS_NAMES.split())
REAL_FILES = sorted(SHARED.glob("*/*/*.gz")) if SHARED.is_dir() else []


def _real(files: list[Path]) -> list:
    if files:
        return [
            pytest.param(f, id=f"{f.parent.parent.name}/{f.parent.name}/{f.name}") for f in files
        ]
    return [pytest.param(None, marks=pytest.mark.skip(reason="shared data absent"))]


def _format(path: Path) -> str:
    return "conllu" if ".conllu" in path.name else "conll"


def _source_table(path: Path) -> tuple[int, int, collections.Counter]:
    """Sentences, tokens and tag counts of ``path``'s split as recorded in its SOURCE.md."""
    split = path.name.split(".")[0]
    text = (path.parent / "SOURCE.md").read_text(encoding="utf-8")
    row = re.search(rf"^\| {split} \| (\d+) \| (\d+) \|", text, re.M)
    assert row, f"no size row for {split}"
    header = re.search(r"^\| tag \|(.*)\|$", text, re.M)
    column = [c.strip() for c in header.group(1).split("|")].index(split)
    tags: collections.Counter = collections.Counter()
    for line in text[header.end() :].splitlines()[2:]:
        if not line.startswith("| "):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        if int(cells[1 + column]):
            tags[cells[0]] = int(cells[1 + column])
    return int(row.group(1)), int(row.group(2)), tags


@pytest.mark.parametrize("path", _real(REAL_FILES))
def test_every_real_file_loads_with_documented_counts(path: Path) -> None:
    sentences = read_corpus(path, format=_format(path))
    n_sentences, n_tokens, tag_counts = _source_table(path)
    assert len(sentences) == n_sentences
    assert sum(len(s) for s in sentences) == n_tokens
    assert collections.Counter(t for s in sentences for t in s.tags) == tag_counts
    assert all(len(s.tags) == len(s.tokens) > 0 and s.line >= 1 for s in sentences)


def write(tmp_path: Path, text: str | bytes, name: str = "x.conll") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return path


def test_conll_columns_sentences_and_lines(tmp_path: Path) -> None:
    path = write(tmp_path, "EU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\n\nPeter NNP B-NP B-PER\n")
    assert read_conll(path) == [
        Sentence(("EU", "rejects"), ("B-ORG", "O"), 1),
        Sentence(("Peter",), ("B-PER",), 5),
    ]
    assert read_conll(path, tag_column=1)[0].tags == ("NNP", "VBZ")
    assert read_conll(path, tag_column=None)[1] == Sentence(("Peter",), (), 5)


def test_wrong_column_count(tmp_path: Path) -> None:
    path = write(tmp_path, "EU NNP B-NP B-ORG\nrejects VBZ O\n")
    with pytest.raises(InputError) as error:
        read_conll(path)
    assert str(error.value) == f"{path}:2: expected 4 columns, got 3"


def test_given_column_count_is_enforced(tmp_path: Path) -> None:
    path = write(tmp_path, "EU B-ORG\n")
    with pytest.raises(InputError, match=r"x\.conll:1: expected 4 columns, got 2$"):
        read_conll(path, n_columns=4)


def test_column_out_of_range(tmp_path: Path) -> None:
    path = write(tmp_path, "EU B-ORG\n")
    with pytest.raises(InputError) as error:
        read_conll(path, tag_column=3)
    assert str(error.value) == f"{path}:1: tag column 3 is out of range for 2 columns"
    with pytest.raises(ConfigError, match="token and tag column are both column 1"):
        read_conll(path, token_column=1)


def test_empty_token_in_tab_separated_file(tmp_path: Path) -> None:
    path = write(tmp_path, "Sioux\tB-ORG\n\tI-ORG\n")
    with pytest.raises(InputError) as error:
        read_conll(path)
    assert str(error.value) == f"{path}:2: empty token"


def test_empty_tag_in_tab_separated_file(tmp_path: Path) -> None:
    path = write(tmp_path, "Sioux\tB-ORG\nFalls\t \n")
    with pytest.raises(InputError) as error:
        read_conll(path)
    assert str(error.value) == f"{path}:2: empty tag"


def test_tab_separated_tokens_may_hold_spaces(tmp_path: Path) -> None:
    path = write(tmp_path, "New York\tB-LOC\nCity\tI-LOC\n")
    assert read_conll(path)[0].tokens == ("New York", "City")


def test_non_utf8_file(tmp_path: Path) -> None:
    path = write(tmp_path, b"Gro\xdfer O\n\nM\xfcller B-PER\n")
    with pytest.raises(InputError) as error:
        read_conll(path)
    assert str(error.value) == f"{path}:1: not valid UTF-8 (byte 0xdf)"
    gz = write(tmp_path, gzip.compress(b"ok O\n\nM\xfcller B-PER\n"), "y.iob.gz")
    with pytest.raises(InputError) as error:
        read_conll(gz)
    assert str(error.value) == f"{gz}:3: not valid UTF-8 (byte 0xfc)"


def test_empty_file_and_file_without_sentences(tmp_path: Path) -> None:
    for text in ("", "\n\n  \n", "-DOCSTART- -X- O\n\n"):
        path = write(tmp_path, text)
        with pytest.raises(InputError) as error:
            read_conll(path)
        assert str(error.value) == f"{path}: no sentences"
    path = write(tmp_path, "# sent_id = 1\n\n", "x.conllu")
    with pytest.raises(InputError) as error:
        read_conllu(path)
    assert str(error.value) == f"{path}: no sentences"


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError) as error:
        read_conll(tmp_path / "nope.conll")
    assert str(error.value) == f"{tmp_path / 'nope.conll'}: no such file"


def test_gzip_read_transparently_by_content(tmp_path: Path) -> None:
    text = "-DOCSTART- -X- O\n\nEU B-ORG\nrejects O\n\nPeter B-PER\n"
    plain = read_conll(write(tmp_path, text))
    assert read_conll(write(tmp_path, gzip.compress(text.encode()), "a.iob.gz")) == plain
    assert read_conll(write(tmp_path, gzip.compress(text.encode()), "no_suffix")) == plain
    truncated = write(tmp_path, gzip.compress(text.encode())[:-9], "t.gz")
    with pytest.raises(InputError) as error:
        read_conll(truncated)
    assert str(error.value).startswith(f"{truncated}: corrupt or truncated gzip data")


def test_docstart_with_and_without_blank_line(tmp_path: Path) -> None:
    # CoNLL-2003 puts a blank line after -DOCSTART-; the CoNLL-2002 Dutch files do not.
    path = write(
        tmp_path,
        "-DOCSTART- -X- O\n\nDe Art O\n-DOCSTART- -X- O\nHet Art O\nis V O\n\n-DOCSTART- -X- O\n",
    )
    assert read_conll(path) == [
        Sentence(("De",), ("O",), 3),
        Sentence(("Het", "is"), ("O", "O"), 5),
    ]


def test_hash_lines_are_tokens_unless_comments_requested(tmp_path: Path) -> None:
    path = write(tmp_path, "# O\nfoo O\n\n# a comment here\nbar O\n")
    with pytest.raises(InputError, match=r"x\.conll:4: expected 2 columns, got 4$"):
        read_conll(path)
    path = write(tmp_path, "# O\nfoo O\n\nbar O\n")
    assert read_conll(path)[0].tokens == ("#", "foo")
    path = write(tmp_path, "# newdoc\nfoo O\n\n# a comment here\nbar O\n")
    assert read_conll(path, comments=True) == [
        Sentence(("foo",), ("O",), 2),
        Sentence(("bar",), ("O",), 5),
    ]


def test_crlf_bom_and_whitespace_only_lines(tmp_path: Path) -> None:
    path = write(tmp_path, "\ufeffEU B-ORG\r\nrejects O\r\n \t \r\nPeter B-PER\r\n")
    assert read_conll(path) == [
        Sentence(("EU", "rejects"), ("B-ORG", "O"), 1),
        Sentence(("Peter",), ("B-PER",), 4),
    ]


CONLLU = (
    "# sent_id = 1\n"
    "# text = Don't go.\n"
    "1-2\tDon't\t_\t_\t_\t_\t_\t_\t_\t_\n"
    "1\tDo\tdo\tAUX\tVBP\t_\t3\taux\t_\t_\n"
    "2\tn't\tnot\tPART\tRB\t_\t3\tadvmod\t_\t_\n"
    "3\tgo\tgo\tVERB\tVB\t_\t0\troot\t_\t_\n"
    "3.1\tgo\tgo\tVERB\tVB\t_\t_\t_\t3:conj\t_\n"
    "4\t.\t.\tPUNCT\t.\t_\t3\tpunct\t_\t_\n"
    "\n"
    "# sent_id = 2\n"
    "1\tNew York\tNew York\tPROPN\tNNP\t_\t0\troot\t_\t_\n"
    "\n"
)


def test_conllu_skips_comments_multiword_ranges_and_empty_nodes(tmp_path: Path) -> None:
    path = write(tmp_path, CONLLU, "x.conllu")
    assert read_conllu(path) == [
        Sentence(("Do", "n't", "go", "."), ("AUX", "PART", "VERB", "PUNCT"), 4),
        Sentence(("New York",), ("PROPN",), 11),
    ]
    assert read_conllu(path, column="xpos")[0].tags == ("VBP", "RB", "VB", ".")
    assert read_corpus(path, format="conllu", tag_column=4)[0].tags == ("VBP", "RB", "VB", ".")
    assert read_corpus(path, format="conllu") == read_conllu(path)


@pytest.mark.parametrize(
    ("old", "new", "line", "problem"),
    [
        (
            "3\tgo\tgo\tVERB\tVB\t_\t0\troot\t_\t_\n",
            "3\tgo\tgo\tVERB\n",
            6,
            "expected 10 columns, got 4",
        ),
        ("4\t.\t.", "5\t.\t.", 8, "word ID 5 out of sequence (expected 4)"),
        ("4\t.\t.", "four\t.\t.", 8, "bad word ID 'four'"),
        ("2\tn't\tnot\tPART", "2\t\tnot\tPART", 5, "empty token"),
        ("2\tn't\tnot\tPART", "2\tn't\tnot\t_", 5, "no UPOS tag ('_')"),
        (
            "\n\n# sent_id = 2",
            "\n# sent_id = 2",
            9,
            "comment inside a sentence (missing blank line before it?)",
        ),
    ],
)
def test_conllu_bad_lines(tmp_path: Path, old: str, new: str, line: int, problem: str) -> None:
    assert old in CONLLU
    path = write(tmp_path, CONLLU.replace(old, new, 1), "x.conllu")
    with pytest.raises(InputError) as error:
        read_conllu(path)
    assert str(error.value) == f"{path}:{line}: {problem}"


def test_read_corpus_rejects_columns_the_format_lacks(tmp_path: Path) -> None:
    path = write(tmp_path, CONLLU, "x.conllu")
    with pytest.raises(ConfigError, match="CoNLL-U tag column must be 3 .UPOS. or 4 .XPOS., got 7"):
        read_corpus(path, format="conllu", tag_column=7)
    with pytest.raises(ConfigError, match="unknown corpus format 'csv'"):
        read_corpus(path, format="csv")  # type: ignore[arg-type]
    bio = write(tmp_path, "Sioux\tB-ORG\n")
    assert read_corpus(bio, format="bio") == read_corpus(bio, format="conll")


SAMPLE_FILES = sorted(SAMPLE.glob("*/*.conllu"))


@pytest.mark.parametrize("path", SAMPLE_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_sample_is_real_conllu(path: Path) -> None:
    sentences = read_conllu(path)
    expected = {"train": 600, "dev": 150, "test": 200 if path.parent.name == "fr" else 150}
    assert len(sentences) == expected[path.stem]
    assert {t for s in sentences for t in s.tags} <= set(UPOS)


def test_sample_layout_and_licenses() -> None:
    assert {p.relative_to(SAMPLE).as_posix() for p in SAMPLE_FILES} == {
        f"{lang}/{split}.conllu"
        for lang in ("en", "de", "es", "nl")
        for split in ("train", "dev", "test")
    } | {"fr/test.conllu"}
    for lang in ("en", "de", "es", "nl", "fr"):
        assert (SAMPLE / lang / "LICENSE.txt").stat().st_size > 1000
    train_tags = {
        t
        for lang in ("en", "de", "es", "nl")
        for s in read_conllu(SAMPLE / lang / "train.conllu")
        for t in s.tags
    }
    assert len(train_tags) == 17


@pytest.mark.skipif(not SHARED.is_dir(), reason="shared data absent")
def test_make_sample_reproduces_the_shipped_sample(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = importlib.util.spec_from_file_location("make_sample", SAMPLE / "make_sample.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "make_sample", module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    assert module.main(["--source", str(SHARED), "--out", str(SAMPLE), "--check"]) == 0


def test_one_sentence_per_line_text(tmp_path: Path) -> None:
    """Tokens-only text: every non-blank line is a sentence (its own line number), blank and
    whitespace-only lines are skipped, runs of spaces and tabs separate words."""
    path = write(tmp_path, "Le chat dort .\n\n  \nIl  pleut\t!\r\n", "u.txt")
    assert read_text(path) == [
        Sentence(("Le", "chat", "dort", "."), (), 1),
        Sentence(("Il", "pleut", "!"), (), 4),
    ]
    assert read_tokens(path, format="text") == read_text(path)


def test_one_sentence_per_line_text_errors(tmp_path: Path) -> None:
    bad = write(tmp_path, "Le chat .\nun caf\xe9 .\n".encode("latin-1"), "bad.txt")
    with pytest.raises(InputError) as caught:
        read_text(bad)
    assert str(caught.value) == f"{bad}:2: not valid UTF-8 (byte 0xe9)"
    blank = write(tmp_path, "\n \n", "blank.txt")
    with pytest.raises(InputError, match="no sentences"):
        read_text(blank)


def test_a_labelled_format_is_read_without_its_labels(tmp_path: Path) -> None:
    path = write(tmp_path, "Le DET\nchat NOUN\n\nIl PRON\n")
    sentences = read_tokens(path, format="conll")
    assert [(s.tokens, s.tags) for s in sentences] == [(("Le", "chat"), ()), (("Il",), ())]
