"""Task option sections of the run config: each task family's own knobs, beside the shared ones in `distil.config`.

A section is a dataclass like the others (YAML key = field, CLI flag = dotted path, refusals name the key).
"""

from __future__ import annotations

from dataclasses import dataclass

from distil.dataclass_io import ConfigError


def _check(cond: bool, key: str, value, valid: str) -> None:
    if not cond:
        raise ConfigError(key, value, valid)


@dataclass
class EmbeddingConfig:
    """Sentence embeddings (`task: embeddings`): the KD terms and the evaluation sets' sizes."""

    mse_weight: float = 1.0
    """MSE between the student's and the teacher's embedding, mean over the elements (sentence-transformers'
    model distillation)."""
    cosine_weight: float = 0.0
    """1 - cosine(student embedding, teacher embedding), mean over the batch."""
    relation_weight: float = 0.0
    """MSE between the student's and the teacher's in-batch cosine-similarity matrices (B x B): needs no
    projection when the widths differ."""
    dim: int | None = None
    """Reduce the student's embeddings to this size (e.g. 768 -> 256): a Dense layer set to the top principal
    components of the teacher's training embeddings, and the teacher's targets projected onto the same components
    (sentence-transformers' dimensionality reduction); null: the teacher's size."""
    eval_max_length: int = 256
    """Tokens per text of the evaluation sets (Lee documents, SQuAD paragraphs, BBC article bodies)."""
    max_queries: int | None = 1000
    """Retrieval sets: a seeded sample of at most this many queries (null: every query)."""
    bbc_articles: int = 400
    """BBC News articles held out for title -> body retrieval (seeded by data.split_seed); no text of them is
    trained on."""

    def __post_init__(self):
        for key in ("mse_weight", "cosine_weight", "relation_weight"):
            _check(getattr(self, key) >= 0, key, getattr(self, key), "a number >= 0")
        total = self.mse_weight + self.cosine_weight + self.relation_weight
        _check(total > 0, "mse_weight", self.mse_weight, "a KD term: mse, cosine or relation weight > 0")
        _check(8 <= self.eval_max_length <= 8192, "eval_max_length", self.eval_max_length, "an int in 8..8192")
        _check(self.max_queries is None or self.max_queries >= 1, "max_queries", self.max_queries,
               "null or an int >= 1")  # fmt: skip
        _check(self.dim is None or self.dim >= 2, "dim", self.dim, "null or an int >= 2")
        _check(self.bbc_articles >= 10, "bbc_articles", self.bbc_articles, "an int >= 10")
