"""Fuzz the corpus readers, scheme checks and label encoding with mutated real files.

    python benchmarks/fuzz_readers.py [--seconds 60] [--seed 0] [--source /work/shared/data]

Seeds are the first lines of every real corpus file (the shared data when present, else the
shipped data/sample). Each case applies 1-3 random mutations (byte flips, insertions, truncation,
deleted/duplicated columns, invalid UTF-8, random tags, stray DOCSTART/comment/blank lines, CRLF,
gzip and corrupt gzip) and runs the whole read path: read_corpus (in the seed's format and in the
other formats), scheme validation and BIOES round trip, LabelSet building and encoding.

The contract: every case either succeeds with well-formed sentences or raises a StructkdError
(InputError / ConfigError) with a one-line message. Any other exception, or a multi-line
message, is a bug: the input is saved, the traceback printed, and the exit status is 1.
Not part of the test suite (it runs for a fixed time, not a fixed amount of work).
"""

from __future__ import annotations

import argparse
import collections
import gzip
import random
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from structkd.errors import StructkdError
from structkd.pipeline.corpus import read_corpus, read_lines
from structkd.pipeline.labels import LabelSet
from structkd.pipeline.schemes import from_bioes, to_bioes, validate_sentences

ROOT = Path(__file__).resolve().parents[1]
SEED_LINES = 120
RANDOM_TAGS = ["O", "B-", "I-X", "E-PER", "S-LOC", "B-PER-X", "X-PER", "o", "B-PER B-LOC", "_", "#"]
BAD_BYTES = [b"\xff", b"\xc3", b"\xe2\x82", b"\xed\xa0\x80", b"\xc0\xaf", b"\x00", b"\x80"]


@dataclass(frozen=True)
class Seed:
    """A slice of one real file and how to read it."""

    name: str
    text: bytes
    format: str
    scheme: str


def load_seeds(source: Path) -> list[Seed]:
    """First lines of each real file (whole sentences), with their format and scheme."""
    files = sorted(source.glob("*/*/*.gz")) or sorted((ROOT / "data" / "sample").glob("*/*.conllu"))
    seeds = []
    for path in files:
        lines = read_lines(path)[:SEED_LINES]
        conllu = ".conllu" in path.name
        span = path.parent.parent.name in ("conll", "wikiann", "semeval16")
        iob1 = path.parent.parent.name == "conll" and path.parent.name == "de"
        scheme = ("iob1" if iob1 else "iob2") if span else "none"
        text = ("\n".join(lines) + "\n").encode("utf-8")
        name = "/".join(path.parts[-3:])
        seeds.append(Seed(name, text, "conllu" if conllu else "conll", scheme))
    return seeds


def _lines(data: bytes) -> list[bytes]:
    return data.split(b"\n")


def flip_byte(rng: random.Random, data: bytes) -> bytes:
    if not data:
        return data
    i = rng.randrange(len(data))
    return data[:i] + bytes([data[i] ^ (1 << rng.randrange(8))]) + data[i + 1 :]


def insert_bad_utf8(rng: random.Random, data: bytes) -> bytes:
    i = rng.randrange(len(data) + 1)
    return data[:i] + rng.choice(BAD_BYTES) + data[i:]


def truncate(rng: random.Random, data: bytes) -> bytes:
    return data[: rng.randrange(len(data) + 1)]


def delete_span(rng: random.Random, data: bytes) -> bytes:
    i = rng.randrange(len(data) + 1)
    return data[:i] + data[i + rng.randrange(1, 40) :]


def _edit_fields(rng: random.Random, data: bytes, edit: Callable[[list[bytes]], None]) -> bytes:
    lines = _lines(data)
    i = rng.randrange(len(lines))
    separator = b"\t" if b"\t" in lines[i] else b" "
    fields = lines[i].split(separator)
    edit(fields)
    lines[i] = separator.join(fields)
    return b"\n".join(lines)


def delete_column(rng: random.Random, data: bytes) -> bytes:
    return _edit_fields(rng, data, lambda f: f.pop(rng.randrange(len(f))))


def duplicate_column(rng: random.Random, data: bytes) -> bytes:
    return _edit_fields(rng, data, lambda f: f.insert(0, f[rng.randrange(len(f))]))


def empty_column(rng: random.Random, data: bytes) -> bytes:
    def edit(fields: list[bytes]) -> None:
        fields[rng.randrange(len(fields))] = rng.choice([b"", b" ", b"_"])

    return _edit_fields(rng, data, edit)


def random_tag(rng: random.Random, data: bytes) -> bytes:
    def edit(fields: list[bytes]) -> None:
        column = rng.choice([-1, 3]) if len(fields) == 10 else -1
        fields[column] = rng.choice(RANDOM_TAGS).encode()

    return _edit_fields(rng, data, edit)


def insert_line(rng: random.Random, data: bytes) -> bytes:
    lines = _lines(data)
    extra = rng.choice(
        [b"", b" \t ", b"-DOCSTART- -X- O", b"# comment", b"#", b"1-2\tx\t_\t_\t_\t_\t_\t_\t_\t_"]
    )
    lines.insert(rng.randrange(len(lines) + 1), extra)
    return b"\n".join(lines)


def delete_line(rng: random.Random, data: bytes) -> bytes:
    lines = _lines(data)
    lines.pop(rng.randrange(len(lines)))
    return b"\n".join(lines)


def crlf_or_bom(rng: random.Random, data: bytes) -> bytes:
    return rng.choice(
        [data.replace(b"\n", b"\r\n"), b"\xef\xbb\xbf" + data, data.replace(b"\t", b" ")]
    )


MUTATIONS: dict[str, Callable[[random.Random, bytes], bytes]] = {
    f.__name__: f
    for f in (
        flip_byte,
        insert_bad_utf8,
        truncate,
        delete_span,
        delete_column,
        duplicate_column,
        empty_column,
        random_tag,
        insert_line,
        delete_line,
        crlf_or_bom,
    )
}


def compress(rng: random.Random, data: bytes) -> bytes:
    """gzip the case, sometimes corrupting or truncating the compressed stream."""
    packed = gzip.compress(data, mtime=0)
    choice = rng.randrange(4)
    if choice == 1:
        return packed[: rng.randrange(len(packed) + 1)]
    if choice == 2:
        return flip_byte(rng, packed)
    return packed


def check(seed: Seed, path: Path) -> None:
    """Run the read path; returns normally or raises (StructkdError = handled correctly)."""
    formats = [seed.format] + [f for f in ("conll", "conllu", "bio") if f != seed.format]
    sentences, first_error = None, None
    for format in formats:
        try:
            sentences = read_corpus(path, format=format)
        except StructkdError as error:
            first_error = first_error or error
            continue
        previous = 0
        for sentence in sentences:
            assert sentence.tokens and len(sentence.tags) == len(sentence.tokens)
            assert all(sentence.tokens) and all(sentence.tags)
            assert sentence.line > previous
            previous = sentence.line
        break
    if sentences is None:
        raise first_error
    validate_sentences(sentences, seed.scheme, path)
    labels = LabelSet.from_sentences(sentences, seed.scheme)
    for sentence in sentences:
        internal = to_bioes(sentence.tags, seed.scheme)
        assert len(from_bioes(internal, seed.scheme)) == len(sentence)
        ids = labels.encode(internal)
        assert labels.decode(ids) == internal


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--source", type=Path, default=Path("/work/shared/data"))
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    seeds = load_seeds(args.source)
    outcomes: collections.Counter = collections.Counter()
    problems: collections.Counter = collections.Counter()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "case"
        while time.perf_counter() - start < args.seconds:
            seed = rng.choice(seeds)
            data, applied = seed.text, []
            for _ in range(rng.randint(1, 3)):
                name = rng.choice(list(MUTATIONS))
                data = MUTATIONS[name](rng, data)
                applied.append(name)
            if rng.random() < 0.2:
                data = compress(rng, data)
                applied.append("gzip")
            path.write_bytes(data)
            try:
                check(seed, path)
                outcomes["accepted"] += 1
            except StructkdError as error:
                message = str(error)
                if "\n" in message or not message:
                    return report_bug(seed, applied, data, f"bad message {message!r}")
                outcomes["rejected"] += 1
                problems[message.split(": ", 1)[-1].split(" (")[0][:60]] += 1
            except Exception:  # any other exception is the bug we are hunting
                return report_bug(seed, applied, data, traceback.format_exc())
    elapsed = time.perf_counter() - start
    total = sum(outcomes.values())
    print(
        f"{total} cases in {elapsed:.1f} s ({total / elapsed:.0f}/s) from {len(seeds)} seed files"
    )
    print(f"accepted {outcomes['accepted']}, rejected with StructkdError {outcomes['rejected']}")
    for problem, count in problems.most_common(15):
        print(f"  {count:7d}  {problem}")
    print("no unexpected exception")
    return 0


def report_bug(seed: Seed, applied: list[str], data: bytes, detail: str) -> int:
    saved = Path(tempfile.gettempdir()) / "fuzz_readers_failure.bin"
    saved.write_bytes(data)
    print(f"BUG on {seed.name} after {', '.join(applied)}; input saved to {saved}")
    print(detail)
    return 1


if __name__ == "__main__":
    sys.exit(main())
