"""BiLSTM-CRF taggers over frozen encoder features (Lample et al. 2016; Wang et al. 2020 §2).

One class serves teachers and student. A teacher adds language-specific trainable word and
character embeddings to the shared features (the paper's teachers have Flair + fastText on top of
M-BERT; these embeddings are that edge here); the multilingual student has none, so it reads only
the shared features and can tag any language the encoder knows.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import nn

from structkd.errors import StructkdError, first_line
from structkd.pipeline.crf import CRF
from structkd.pipeline.labels import LabelSet
from structkd.storage.io import atomic_write, atomic_write_text

PAD, UNK = "<pad>", "<unk>"
MAX_WORD_CHARS = 24


@dataclass(frozen=True)
class TaggerConfig:
    """Everything needed to rebuild a tagger; saved as ``config.json`` beside the weights."""

    feature_dim: int
    n_tags: int
    hidden: int
    dropout: float = 0.3
    words: tuple[str, ...] = ()
    chars: tuple[str, ...] = ()
    word_dim: int = 0
    char_dim: int = 0
    char_hidden: int = 0
    word_dropout: float = 0.05
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def has_lexicon(self) -> bool:
        """True for teachers: they own word and character embeddings of their language."""
        return bool(self.words) and self.word_dim > 0


def build_vocabularies(
    sentences: Iterable[Sequence[str]], min_count: int = 1
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Words seen ``min_count`` times and all characters, each list starting with PAD and UNK."""
    word_counts: Counter[str] = Counter()
    char_set: set[str] = set()
    for tokens in sentences:
        word_counts.update(tokens)
        for token in tokens:
            char_set.update(token)
    words = sorted(w for w, c in word_counts.items() if c >= min_count)
    return (PAD, UNK, *words), (PAD, UNK, *sorted(char_set))


class Tagger(nn.Module):
    """Features (+ word/char embeddings) -> linear -> BiLSTM -> emissions -> CRF.

    Args:
        config: sizes and vocabularies.
        labels: the task's label set; its allowed transitions constrain the CRF.
    """

    def __init__(self, config: TaggerConfig, labels: LabelSet) -> None:
        super().__init__()
        self.config = config
        self.labels = labels
        self.word_index = {w: i for i, w in enumerate(config.words)}
        self.char_index = {c: i for i, c in enumerate(config.chars)}
        in_dim = config.feature_dim
        if config.has_lexicon:
            self.word_embedding = nn.Embedding(len(config.words), config.word_dim, padding_idx=0)
            self.char_embedding = nn.Embedding(len(config.chars), config.char_dim, padding_idx=0)
            self.char_cnn = nn.Conv1d(config.char_dim, config.char_hidden, 3, padding=1)
            in_dim += config.word_dim + config.char_hidden
        self.project = nn.Linear(in_dim, in_dim)
        self.dropout = nn.Dropout(config.dropout)
        self.lstm = nn.LSTM(in_dim, config.hidden, batch_first=True, bidirectional=True)
        self.emission = nn.Linear(2 * config.hidden, config.n_tags)
        allowed, start_allowed, end_allowed = labels.allowed_transitions()
        self.crf = CRF(
            config.n_tags,
            allowed=torch.as_tensor(allowed),
            start_allowed=torch.as_tensor(start_allowed),
            end_allowed=torch.as_tensor(end_allowed),
        )

    @property
    def device(self) -> torch.device:
        """Where the tagger's parameters are (inputs are moved there)."""
        return self.emission.weight.device

    def lexical_ids(self, tokens: Sequence[Sequence[str]], n: int) -> tuple[torch.Tensor, ...]:
        """Word ids ``(batch, n)`` and character ids ``(batch, n, MAX_WORD_CHARS)`` (0 = pad)."""
        words = torch.zeros(len(tokens), n, dtype=torch.long)
        chars = torch.zeros(len(tokens), n, MAX_WORD_CHARS, dtype=torch.long)
        for b, sentence in enumerate(tokens):
            words[b, : len(sentence)] = torch.tensor(
                [self.word_index.get(w, 1) for w in sentence], dtype=torch.long
            )
            for t, word in enumerate(sentence):
                ids = [self.char_index.get(c, 1) for c in word[:MAX_WORD_CHARS]]
                chars[b, t, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return words, chars

    def emissions(
        self,
        features: torch.Tensor,
        mask: torch.Tensor,
        tokens: Sequence[Sequence[str]] | None = None,
    ) -> torch.Tensor:
        """Emission scores.

        Args:
            features: ``(batch, seq_len, feature_dim)`` frozen encoder features.
            mask: ``(batch, seq_len)`` bool, left-aligned.
            tokens: the words, required by teachers (word and character embeddings).

        Returns:
            ``(batch, seq_len, n_tags)`` on the tagger's device (inputs elsewhere are moved).
        """
        features, mask = features.to(self.device), mask.to(self.device)
        parts = [features]
        if self.config.has_lexicon:
            if tokens is None:
                raise StructkdError("a teacher tagger needs the tokens, not only the features")
            words, chars = self.lexical_ids(tokens, features.shape[1])
            if self.training and self.config.word_dropout > 0:  # CPU generator on any device
                drop = torch.rand(words.shape) < self.config.word_dropout
                words = words.masked_fill(drop & (words > 0), 1)
            words, chars = words.to(self.device), chars.to(self.device)
            parts.append(self.word_embedding(words))
            # shape: (batch * seq_len, char_dim, chars)
            flat = self.char_embedding(chars.flatten(0, 1)).transpose(1, 2)
            char_features = self.char_cnn(flat).max(dim=2).values
            parts.append(char_features.view(*words.shape, -1))
        x = self.dropout(torch.relu(self.project(torch.cat(parts, dim=-1))))
        lengths = mask.sum(1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(
            x, lengths, batch_first=True, enforce_sorted=False
        )
        out, _ = self.lstm(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        return self.emission(self.dropout(out))

    def forward(
        self,
        features: torch.Tensor,
        mask: torch.Tensor,
        tokens: Sequence[Sequence[str]] | None = None,
    ) -> torch.Tensor:
        """Same as :meth:`emissions`; what DistributedDataParallel calls."""
        return self.emissions(features, mask, tokens)

    @torch.no_grad()
    def decode(
        self,
        features: torch.Tensor,
        mask: torch.Tensor,
        tokens: Sequence[Sequence[str]] | None = None,
    ) -> list[np.ndarray]:
        """Viterbi label ids per sentence (constrained to the label scheme)."""
        was_training = self.training
        self.eval()
        paths = self.crf.decode(self.emissions(features, mask, tokens), mask.to(self.device))
        paths = paths.cpu()
        self.train(was_training)
        lengths = mask.sum(1).tolist()
        return [paths[b, :n].numpy() for b, n in enumerate(lengths)]


def save_tagger(model: Tagger, directory: Path) -> None:
    """Write ``config.json``, ``model.safetensors`` and ``labels.json`` into ``directory``."""
    config = json.dumps(asdict(model.config), indent=1, ensure_ascii=False)
    atomic_write_text(directory / "config.json", config)
    state = {k: v.cpu().contiguous() for k, v in model.state_dict().items()}
    data = save(state)
    atomic_write(directory / "model.safetensors", lambda f: f.write(data))
    model.labels.save(directory / "labels.json")


def load_tagger(directory: Path) -> Tagger:
    """Load a tagger saved by :func:`save_tagger`.

    Raises:
        StructkdError: a file is missing, unreadable, truncated or does not fit the others (one
            line naming the file).
    """
    config_path, weights = directory / "config.json", directory / "model.safetensors"
    if not config_path.exists():
        raise StructkdError(f"{directory}: not a structkd model (no config.json)")
    try:
        raw = json.loads(config_path.read_text("utf-8"))
        raw["words"], raw["chars"] = tuple(raw["words"]), tuple(raw["chars"])
        config = TaggerConfig(**raw)
    except (ValueError, TypeError, KeyError) as e:  # bad JSON or UTF-8, missing or unknown keys
        raise StructkdError(f"{config_path}: not a valid model config ({first_line(e)})") from None
    model = Tagger(config, LabelSet.load(directory / "labels.json"))
    if not weights.exists():
        raise StructkdError(f"{weights}: not found (the model directory is incomplete)")
    try:
        model.load_state_dict(load_file(str(weights)))
    except (SafetensorError, OSError) as e:
        raise StructkdError(f"{weights}: not a valid safetensors file ({first_line(e)})") from None
    except RuntimeError:  # tensors missing, extra or of other shapes
        raise StructkdError(
            f"{weights}: weights do not fit {config_path} (missing, extra or mis-shaped tensors)"
        ) from None
    model.eval()
    return model
