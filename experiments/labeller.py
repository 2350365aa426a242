"""How good are the soft labels a run distils on unlabeled text?

Where the unlabeled text of a zero-shot language is a labelled corpus read without its labels
(``experiments/*-unlabeled.yaml``), its gold labels can score who labels it: the teachers'
mixture (its best path, from the knowledge shards the students read) beside every trained
student of every seed, on the very same sentences. Distilling from the mixture can only pull a
student up on that language where the mixture is the better tagger.

    python experiments/labeller.py udpos-unlabeled     # writes results/<run>/labeller.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import yaml

from structkd.pipeline.corpus import read_corpus
from structkd.pipeline.data import Split, load_split, shard_paths
from structkd.pipeline.evaluation import evaluate_split
from structkd.pipeline.labels import LabelSet
from structkd.pipeline.metrics import headline, score
from structkd.pipeline.models import load_tagger
from structkd.pipeline.prepare import spread
from structkd.pipeline.schemes import to_bioes
from structkd.storage.arrays import read_knowledge
from structkd.storage.schemas import KnowledgeMeta
from structkd.storage.shards import shard_metadata

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import RESULTS, RUNS  # noqa: E402


def gold_split(base: Path, lang: str, spec: dict, scheme: str, labels: LabelSet) -> Split:
    """The prepared unlabeled split of ``lang`` with its corpus' gold label ids put back."""
    split = load_split(
        base / "data" / "prepared" / lang / "unlabeled",
        base / "data" / "features" / lang / "unlabeled",
        lang,
        "unlabeled",
    )
    sentences = spread(read_corpus(spec["path"], format=spec["format"]), spec.get("limit"))
    if [list(s.tokens) for s in sentences] != split.tokens:
        raise SystemExit(f"{spec['path']}: its sentences are not the prepared unlabeled text")
    tags = [labels.encode(to_bioes(s.tags, scheme)) for s in sentences]
    return Split(lang, "unlabeled", scheme, split.sent_ids, split.tokens, tags, split.features)


def mixture_paths(base: Path, split: Split) -> list[np.ndarray]:
    """The best path of the teachers' mixture for every sentence of the text ``split``."""
    paths: list[np.ndarray] = []
    for shard in shard_paths(base / "knowledge" / "unlabeled" / split.lang):
        meta = KnowledgeMeta.from_metadata(shard_metadata(shard))
        table = pq.read_table(shard)
        rows = split.tokens[len(paths) : len(paths) + table.num_rows]
        lengths = np.array([len(tokens) for tokens in rows], np.int64)
        tags = read_knowledge(
            table, ["topk_tags"], lengths=lengths, k=meta.k, n_tags=meta.n_tags, k_out=1
        )["topk_tags"]
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        paths += [tags[offsets[i] : offsets[i + 1]] for i in range(len(lengths))]
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", help="an experiments/<run>.yaml with data.unlabeled")
    name = parser.parse_args().run
    base = RUNS / name / "base"
    params = yaml.safe_load((base / "params.yaml").read_text())
    labels = LabelSet.load(base / "data" / "prepared" / "labels.json")
    found: dict[str, dict[str, list[float]]] = {}
    for lang, spec in params["data"]["unlabeled"].items():
        scheme = params["data"]["zero_shot"][lang]["scheme"]
        split = gold_split(base, lang, spec, scheme, labels)
        mixed = score(split.tags, mixture_paths(base, split), labels, scheme)
        found[lang] = {"teachers' mixture": [headline(mixed)]}
        for model in sorted((RUNS / name).glob("seed-*/models/students/*/metrics.json")):
            student = load_tagger(model.parent)  # a finished student (staging has no metrics)
            found[lang].setdefault(model.parent.name, []).append(
                headline(evaluate_split(student, split))
            )
        print(lang, {who: round(float(np.mean(v)), 2) for who, v in found[lang].items()})
    out = RESULTS / name / "labeller.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(found, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
