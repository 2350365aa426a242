"""Shared pytest fixtures."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from e2e_project import one_torch_thread
from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece
from tokenizers.trainers import WordPieceTrainer
from transformers import BertConfig, BertModel, PreTrainedTokenizerFast
from transformers.utils import logging as hf_logging

TINY_CORPUS = [
    "The quick brown fox jumps over the lazy dog near the river bank .",
    "Peter Blackburn visited the European Commission in Brussels on Monday .",
    "Der schnelle braune Fuchs springt über den faulen Hund .",
    "El zorro marrón salta sobre el perro perezoso en Madrid .",
    "De snelle bruine vos springt over de luie hond in Amsterdam .",
    "Germany 's representative to the European Union 's veterinary committee said on Wednesday .",
    "Los precios subieron un 3,5 % en 1999 , según el instituto nacional de estadística .",
    "Ze hebben 12 miljoen euro betaald voor het nieuwe stadion van Ajax .",
]
TINY_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def build_tiny_encoder(out: Path, seed: int = 0) -> Path:
    """Write a tiny random BERT + WordPiece tokenizer as a HF directory; returns ``out``."""
    tok = Tokenizer(WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=False)  # drops control characters
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = WordPieceTrainer(vocab_size=150, special_tokens=TINY_SPECIALS, show_progress=False)
    tok.train_from_iterator(TINY_CORPUS, trainer)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=512,
    )
    fast.save_pretrained(out)
    config = BertConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        pad_token_id=tok.token_to_id("[PAD]"),
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = BertModel(config)
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(out)
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
    return out


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random HF encoder directory, loadable with AutoModel/AutoTokenizer (~0.2 s to build).

    BertModel: 2 layers, hidden 32, 2 heads, FFN 64, 512 positions, random weights (seed 0).
    Tokenizer: fast WordPiece (~150 entries, so most words split into several subwords) trained
    on ``TINY_CORPUS`` (en/de/es/nl sentences) with a BERT normaliser (control characters
    removed, no lowercasing), BERT pre-tokenizer, ``[CLS] $A [SEP]``; specials
    ``[PAD] [UNK] [CLS] [SEP] [MASK]``. Unseen characters become ``[UNK]``; a word of only
    whitespace/control characters tokenises to nothing.
    Use it as ``EncoderConfig(name_or_path=str(tiny_encoder_dir), layer=-1)`` (features are 32-d).
    """
    return build_tiny_encoder(tmp_path_factory.mktemp("tiny_encoder"))


@pytest.fixture(scope="module", name="one_torch_thread")
def one_torch_thread_fixture() -> Iterator[None]:
    """Tiny tensors: extra intra-op threads only add OpenMP barrier waits (seconds when busy)."""
    with one_torch_thread():
        yield
