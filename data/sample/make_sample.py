"""Rebuild data/sample/ (the repository's small real UPOS sample) from the shared UD corpora.

    python data/sample/make_sample.py [--source /work/shared/data] [--out data/sample] [--check]

Deterministic: the same source files always give byte-identical output (``--check`` rebuilds into
a temporary folder and compares). Sentence blocks are copied verbatim (comments, multiword-token
ranges, empty nodes and all 10 columns), only selected. Selection, for a source of ``n`` sentences
and ``k`` wanted: the sentences at 0-based positions ``floor(j * n / k)`` for ``j = 0 .. k-1``,
i.e. evenly spread over the file (every genre and document of the treebank is represented).

- teachers (en, de, es, nl; the source has dev and test only):
  train = 600 sentences spread over the official dev file;
  300 sentences spread over the official test file, alternately dev (even j) and test (odd j),
  so the sample's dev/test come from the official test split and never overlap train.
- zero-shot French: test = 200 sentences spread over the official test file; unlabeled.txt =
  200 sentences spread over the official train file (never a sentence of the test file, none with
  a word holding a space), its syntactic words only, one sentence per line, space-separated (``data.unlabeled`` text).
"""

from __future__ import annotations

import argparse
import filecmp
import hashlib
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from structkd.pipeline.corpus import read_conllu, read_lines

HERE = Path(__file__).resolve().parent
TRAIN, EVAL, ZERO_SHOT_TEST, UNLABELED = 600, 150, 200, 200
CC_BY_SA = "CC BY-SA 4.0"
CC_BY_SA_URL = "https://creativecommons.org/licenses/by-sa/4.0/legalcode"
LGPL_LR_URL = "http://infolingu.univ-mlv.fr/DonneesLinguistiques/Lexiques-Grammaires/lgpllr.html"


@dataclass(frozen=True)
class Treebank:
    """One sample language and where it comes from (under the shared data folder)."""

    lang: str
    name: str
    folder: str
    license: str
    zero_shot: bool = False


TREEBANKS = (
    Treebank("en", "UD_English-EWT", "ud/en", CC_BY_SA),
    Treebank("de", "UD_German-GSD", "ud/de", CC_BY_SA),
    Treebank("es", "UD_Spanish-GSD", "ud/es", CC_BY_SA),
    Treebank("nl", "UD_Dutch-Alpino", "ud/nl", CC_BY_SA),
    Treebank("fr", "UD_French-Sequoia", "ud/fr", "LGPL-LR", zero_shot=True),
)


def blocks(path: Path) -> list[str]:
    """The sentence blocks of a CoNLL-U file (lines up to a blank line), verbatim."""
    found: list[str] = []
    current: list[str] = []
    for line in read_lines(path) + [""]:
        if line.strip():
            current.append(line)
        elif current:
            found.append("\n".join(current) + "\n")
            current = []
    return found


def spread(items: list[str], k: int) -> list[str]:
    """``k`` items at positions ``floor(j * n / k)``: deterministic and evenly spread."""
    if k > len(items):
        raise SystemExit(f"need {k} sentences, source has {len(items)}")
    return [items[j * len(items) // k] for j in range(k)]


def source_info(folder: Path) -> dict[str, str]:
    """Repository URL, commit and contributors, as recorded in the shared SOURCE.md."""
    text = (folder / "SOURCE.md").read_text(encoding="utf-8")
    info = {
        "repo": re.search(r"Source repository: (\S+)", text).group(1),
        "commit": re.search(r"snapshot commit `([0-9a-f]{40})`", text).group(1),
        "contributors": re.search(r"^Contributors: (.+)$", text, re.M).group(1).strip(),
    }
    for original, ours in re.findall(r"`([^`]+\.conllu)` → `(\w+)\.conllu\.gz`", text):
        info[ours] = original
    return info


def unlabeled_text(train: Path, test: list[str]) -> str:
    """``UNLABELED`` sentences spread over those of ``train`` that are not in ``test`` and have
    no word with a space (``20 000``), as words only: one sentence per line, space-separated."""
    seen = {s.tokens for s in read_conllu_text("\n".join(test))}
    sentences = [
        s.tokens
        for s in read_conllu(train, column=None)
        if s.tokens not in seen and not any(" " in word for word in s.tokens)
    ]
    return "".join(" ".join(words) + "\n" for words in spread(sentences, UNLABELED))


def read_conllu_text(text: str) -> list:
    """The sentences of CoNLL-U ``text`` (through a temporary file: the reader reads files)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "blocks.conllu"
        path.write_text(text + "\n", encoding="utf-8")
        return read_conllu(path, column=None)


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode("utf-8"))


def license_text(bank: Treebank, info: dict[str, str], source: Path) -> str:
    """Attribution header plus the full license text (CC BY-SA 4.0 requires both)."""
    header = (
        f"{bank.name} sample in structkd: data/sample/{bank.lang}/\n"
        f"Source: {info['repo']} (commit {info['commit']})\n"
        f"Contributors: {info['contributors']}\n"
        f"License: {bank.license}\n"
        "Changes: a selection of whole sentences, copied unchanged (see data/sample/README.md).\n"
    )
    if bank.zero_shot:
        header += (
            "unlabeled.txt: the words only (annotation dropped) of a selection of sentences of\n"
            "the official train file, one sentence per line (see data/sample/README.md).\n"
        )
    if bank.license == CC_BY_SA:
        header += f"The selection is shared under the same license: {CC_BY_SA_URL}\n"
        body = (source / "ud" / "en" / "LICENSE.txt").read_text(encoding="utf-8")
    else:
        header += (
            f"Official text: {LGPL_LR_URL}\n"
            "Below: the LICENSE.txt shipped with the treebank, verbatim (it is incomplete there).\n"
        )
        body = (source / bank.folder / "LICENSE.txt").read_text(encoding="utf-8")
    return header + "\n" + "=" * 72 + "\n\n" + body


def build(source: Path, out: Path) -> list[tuple[Treebank, dict[str, str], dict[str, Path]]]:
    """Write every sample file under ``out``; returns what README.md describes."""
    made = []
    for bank in TREEBANKS:
        folder = source / bank.folder
        info = source_info(folder)
        test = blocks(folder / "test.conllu.gz")
        if bank.zero_shot:
            splits = {"test": spread(test, ZERO_SHOT_TEST)}
            unlabeled = out / bank.lang / "unlabeled.txt"
            write_text(unlabeled, unlabeled_text(folder / "train.conllu.gz", splits["test"]))
        else:
            picked = spread(test, 2 * EVAL)
            splits = {
                "train": spread(blocks(folder / "dev.conllu.gz"), TRAIN),
                "dev": picked[0::2],
                "test": picked[1::2],
            }
        paths = {}
        for split, chosen in splits.items():
            paths[split] = out / bank.lang / f"{split}.conllu"
            write_text(paths[split], "\n".join(chosen) + "\n")
        write_text(out / bank.lang / "LICENSE.txt", license_text(bank, info, source))
        made.append((bank, info, paths))
    write_text(out / "README.md", readme(made, out))
    return made


def readme(made: list[tuple[Treebank, dict[str, str], dict[str, Path]]], out: Path) -> str:
    """README.md: sources, licenses, how the slices were made, sizes, label set, checksums."""
    rows, sums, tags_seen = [], [], {}
    for bank, info, paths in made:
        for split, path in paths.items():
            sentences = read_conllu(path)
            words = sum(len(s) for s in sentences)
            lines = read_lines(path)
            ranges = sum(1 for x in lines if re.match(r"[0-9]+-[0-9]+\t", x))
            empty = sum(1 for x in lines if re.match(r"[0-9]+\.[0-9]+\t", x))
            tags = {t for s in sentences for t in s.tags}
            tags_seen[(bank.lang, split)] = tags
            origin = "test" if split != "train" else "dev"
            rows.append(
                f"| {bank.lang} | {split} | {len(sentences)} | {words} | {ranges} | {empty} | "
                f"{len(tags)} | `{info[origin]}` |"
            )
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            sums.append(f"| `{path.relative_to(out).as_posix()}` | `{digest}` |")
    for path in sorted(out.glob("*/unlabeled.txt")):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        sums.append(f"| `{path.relative_to(out).as_posix()}` | `{digest}` |")
    all_tags = sorted(set().union(*tags_seen.values()))
    sources = "\n".join(
        f"| {b.lang} | {b.name} | {'zero-shot (test only)' if b.zero_shot else 'teacher'} | "
        f"{i['repo']} @ `{i['commit'][:7]}` | {b.license} | {i['contributors']} |"
        for b, i, _ in made
    )
    missing = [
        f"{lang}/{split}: {', '.join(sorted(set(all_tags) - tags))}"
        for (lang, split), tags in tags_seen.items()
        if set(all_tags) - tags
    ]
    return f"""# data/sample — the small real default sample (UPOS tagging)

Made by `make_sample.py` in this folder from the UD treebanks below (run
`python data/sample/make_sample.py --source <shared data> --check` to verify the files are
reproduced byte for byte). Everything here is real, unmodified UD annotation: whole sentence blocks
(comments, multiword-token ranges, empty nodes, all 10 CoNLL-U columns) copied verbatim.

## Sources, licenses, attribution

| lang | treebank | role | repository @ commit | license | contributors |
|---|---|---|---|---|---|
{sources}

Each language folder has a `LICENSE.txt` with the attribution and the full license text.
The English, German, Spanish and Dutch slices are adapted material under **CC BY-SA 4.0**
({CC_BY_SA_URL}): the only change is the selection of sentences described below; they are shared
under the same license. German and Spanish GSD: the underlying sentences come from Google, which
claims no copyright over them; the annotations are CC BY-SA 4.0 (see the treebanks' READMEs).
French-Sequoia is under the **LGPL-LR** ({LGPL_LR_URL}). The rest of the repository (code) is
under its own license; these data files are not.

## How the slices were made

For a source file of `n` sentences and `k` wanted, take the sentences at 0-based positions
`floor(j * n / k)`, `j = 0 .. k-1` (evenly spread, so every genre and document is represented).

- en, de, es, nl (the shared copies have the official **dev and test** splits only — the train
  files exceed the snapshot store's 4 MiB limit):
  - `train.conllu`: {TRAIN} sentences spread over the official **dev** file;
  - {2 * EVAL} sentences spread over the official **test** file, alternately to `dev.conllu`
    (even `j`) and `test.conllu` (odd `j`): {EVAL} each; no sentence is in two splits.
- fr (zero-shot): `test.conllu`: {ZERO_SHOT_TEST} sentences spread over the official **test** file;
  `unlabeled.txt` (the pipeline's `data.unlabeled` text, labels dropped): {UNLABELED} sentences
  spread over the official **train** file (none of them in `test.conllu`; sentences with a word
  holding a space, such as `20 000`, left out), their syntactic words
  only, one sentence per line, separated by spaces. Same treebank, commit and license (LGPL-LR).

## Sizes

Words = syntactic words (integer IDs), i.e. what the tagger labels; ranges = multiword-token lines;
empty = empty nodes (both skipped by the reader).

| lang | split | sentences | words | ranges | empty | UPOS tags seen | from |
|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

## Label set

The task's labels are the {len(all_tags)} UPOS tags (scheme `none`, sorted):
{", ".join(all_tags)}.
Tags absent from a split (rare tags in small slices):
{"; ".join(missing) if missing else "none"}.

## Checksums (sha256)

| file | sha256 |
|---|---|
{chr(10).join(sums)}
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=Path("/work/shared/data"))
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--check", action="store_true", help="rebuild in a temp dir and compare")
    args = parser.parse_args(argv)
    if not args.check:
        build(args.source, args.out)
        return 0
    with tempfile.TemporaryDirectory() as temporary:
        fresh = Path(temporary) / "sample"
        build(args.source, fresh)
        names = sorted(p.relative_to(fresh).as_posix() for p in fresh.rglob("*") if p.is_file())
        _, mismatch, errors = filecmp.cmpfiles(fresh, args.out, names, shallow=False)
        for name in mismatch + errors:
            print(f"differs or missing: {args.out / name}", file=sys.stderr)
        return 1 if mismatch or errors else 0


if __name__ == "__main__":
    sys.exit(main())
