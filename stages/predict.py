"""Command ``predict``: tag whitespace-tokenised text or a CoNLL file with a trained model.

Text input: one sentence per line, tokens separated by spaces. CoNLL input (``--conll``): the
first column holds the tokens, blank lines separate sentences. A ``.conllu`` file is read as
CoNLL-U (FORM column; comments, multiword-token ranges and empty nodes skipped). Output: CoNLL
``token<TAB>tag``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Literal

import typer


def _read(lines: list[str], conll: bool) -> list[list[str]]:
    if not conll:
        return [line.split() for line in lines if line.strip()]
    sentences: list[list[str]] = [[]]
    for line in lines:
        if line.strip():
            sentences[-1].append(line.split()[0])
        elif sentences[-1]:
            sentences.append([])
    return [s for s in sentences if s]


def _decode(data: bytes, file: Path | None) -> str:
    """The input as text; bytes that are not UTF-8 stop with one line naming line and byte."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        from structkd.errors import InputError

        line = data[: e.start].count(b"\n") + 1
        where = f"{file if file is not None else '<stdin>'}:{line}"
        raise InputError(where, f"not valid UTF-8 (byte 0x{data[e.start]:02x})") from None


def main(
    model: Annotated[
        Path,
        typer.Option(exists=True, file_okay=False, help="A model directory (teacher or student)."),
    ],
    file: Annotated[
        Path | None, typer.Argument(exists=True, dir_okay=False, help="Input; stdin if absent.")
    ] = None,
    conll: Annotated[bool, typer.Option(help="Input is CoNLL columns (token first).")] = False,
    scheme: Annotated[
        Literal["iob2", "iob1", "bioes"], typer.Option(help="Output scheme for span tasks.")
    ] = "iob2",
    device: Annotated[
        str, typer.Option(help="auto (cuda when available, else cpu) or a torch device.")
    ] = "auto",
    threads: Annotated[int, typer.Option(help="torch intra-op threads.")] = 1,
) -> None:
    """Tag text with MODEL and print CoNLL (token, tab, tag; blank line between sentences)."""
    from structkd.pipeline import runtime
    from structkd.pipeline.predictor import Predictor

    settings = runtime.checked(device, threads)
    runtime.setup(settings)

    if file is not None and ".conllu" in file.suffixes:
        from structkd.pipeline.corpus import read_conllu

        sentences = [list(s.tokens) for s in read_conllu(file, column=None)]
    else:
        text = _decode(file.read_bytes() if file is not None else sys.stdin.buffer.read(), file)
        is_conll = conll or (file is not None and file.suffix in {".conll", ".bio", ".tsv"})
        sentences = _read(text.splitlines(), is_conll)
    tagged = Predictor.load(model, scheme=scheme, device=settings.device).tag(sentences)
    for tokens, tags in zip(sentences, tagged, strict=True):
        typer.echo("\n".join(f"{t}\t{g}" for t, g in zip(tokens, tags, strict=True)) + "\n")
