"""Sentence embeddings: one vector per text; the student learns to put texts where the teacher puts them.

Sections in the order of `distil.tasks.base.Task`: data -> model -> teacher signal -> KD term -> metric -> serving.
The model is a `distil.models.sentence.SentenceEncoder` (encoder + pooling [+ Dense] [+ normalisation]) whose
output travels as ``logits`` (B, D), so the teacher cache, the trainer, the report and export treat it as any
task's output. The teacher is used as it is (an embedding model needs no labels); the baseline is the student as
built (the cut model with its pooling), untrained.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distil.config import DataConfig, LossConfig
from distil.data.embedding_sets import EVAL_SETS, lee_sts, prepare_embedding_data
from distil.data.prepare import TaskData, tokenize_frame
from distil.errors import DistilError
from distil.models.sentence import SentenceEncoder
from distil.options import EmbeddingConfig

TOP_K = 10
"""Retrieval cut-off (recall@10, MRR@10, nDCG@10) and neighbour count of overlap@10."""


@dataclass
class EmbeddingGold:
    """What scoring a set of embeddings needs: each row's role (doc / query / text), key (a document's id; a
    query's relevant document) and, for an STS set, the rating matrix of its documents."""

    roles: np.ndarray
    keys: np.ndarray
    ratings: np.ndarray | None = None

    @property
    def kind(self) -> str:
        if self.ratings is not None:
            return "sts"
        return "retrieval" if (self.roles == "query").any() else "texts"


class EmbeddingTask:
    """text -> a vector; evaluated by STS correlation, retrieval and fidelity to the teacher."""

    name: ClassVar[str] = "embeddings"
    trains_teacher: ClassVar[bool] = False
    """The teacher is an embedding model used as it is."""
    trains_baseline: ClassVar[bool] = False
    """The baseline is the student as built, untrained (there are no labels to train it on)."""
    validates: ClassVar[bool] = False
    """No validation pass while training: the last weights are kept (validation scores need the teacher)."""

    def __init__(self, options: EmbeddingConfig | None = None):
        self.options = options or EmbeddingConfig()
        self.truncated: dict[str, int] = {}
        self.components: torch.Tensor | None = None
        """With ``embedding.dim``: the (dim, D) principal directions of the teacher's training embeddings."""
        self.normalize_targets = False

    # 1. data ---------------------------------------------------------------------------------------------------
    def prepare(self, cfg: DataConfig) -> TaskData:
        """Training text without any evaluation text; validation/test texts carved from it; the evaluation sets."""
        return prepare_embedding_data(cfg, self.options)

    def tokenize(self, frame, tokenizer, max_length: int, name: str = ""):
        """input_ids, attention_mask, [token_type_ids], idx, length, and the scoring columns role/key/ratings.
        Evaluation sets of documents read ``embedding.eval_max_length`` tokens per text."""
        from datasets import Dataset

        if name.startswith("extra:"):
            max_length = self.options.eval_max_length
        columns = tokenize_frame(frame[["text"]], tokenizer, max_length)  # ids, mask, [types], idx, length
        columns["role"] = frame["role"].astype(str).tolist()
        columns["key"] = frame["key"].astype(str).tolist()
        if name.startswith("extra:") and frame["ratings"].notna().any():
            columns["ratings"] = [list(map(float, r)) for r in frame["ratings"]]
        self.truncated[name] = int(sum(n >= max_length for n in columns["length"]))
        return Dataset.from_dict(columns)

    def after_augment(self, frame):
        raise DistilError("augmentation: the embeddings task trains on raw text; set augment: false in its stages")

    # 2. model --------------------------------------------------------------------------------------------------
    auto_model_class: ClassVar[type] = SentenceEncoder

    def adapt_student(self, student: SentenceEncoder, teacher: SentenceEncoder, untrained: bool = False):
        """A student whose embedding size differs from the teacher's gets a learned Dense projection to it, so the
        MSE and cosine terms (and a reduction by ``embedding.dim``) compare vectors directly; the relation term
        needs none. ``untrained`` (the baseline): no projection, whose random weights would only distort it."""
        if not isinstance(student, SentenceEncoder):
            raise DistilError(f"embeddings: the student is a {type(student).__name__}; use a Transformers encoder")
        dim = self.options.dim
        if dim is not None and dim >= teacher.embedding_dim:
            raise DistilError(
                f"config key 'embedding.dim': got {dim}; the teacher's embeddings have {teacher.embedding_dim} "
                "dimensions, so a reduction needs fewer"
            )
        needs_same = self.options.mse_weight > 0 or self.options.cosine_weight > 0 or dim is not None
        if needs_same and not untrained and student.embedding_dim != teacher.embedding_dim:
            print(f"student: a Dense projection {student.config.hidden_size} -> {teacher.embedding_dim} is added "
                  "(the teacher's embedding size), trained with it and kept in the saved student")  # fmt: skip
            student.set_projection(teacher.embedding_dim)
        student.settings["normalize"] = self.normalize_targets = bool(teacher.settings["normalize"])
        return student

    @property
    def fits_to_teacher(self) -> bool:
        """Whether students need `fit_to_teacher` (the teacher's training embeddings) before training."""
        return self.options.dim is not None

    def fit_to_teacher(self, student: SentenceEncoder, teacher_embeddings: np.ndarray) -> None:
        """``embedding.dim``: PCA of (up to 20,000 of) the teacher's training embeddings; the student's output is
        projected onto the top ``dim`` directions and the KD term projects the teacher's targets the same way."""
        dim = self.options.dim
        sample = np.asarray(teacher_embeddings[:20000], dtype=np.float64)  # (N, D)
        if student.embedding_dim == dim:  # already reduced (a second task stage, a resumed stage)
            return
        if student.embedding_dim != sample.shape[1]:  # an untrained baseline of another width: left as built
            print(f"baseline: {student.embedding_dim}-d, not reduced (the components live in the teacher's space)")
            return
        if dim >= sample.shape[1]:
            raise DistilError(
                f"config key 'embedding.dim': got {dim}; the teacher's embeddings have {sample.shape[1]} dimensions, "
                "so a reduction needs fewer"
            )
        if self.components is None:
            _, _, vt = np.linalg.svd(sample - sample.mean(0), full_matrices=False)
            self.components = torch.tensor(vt[:dim], dtype=torch.float32)  # (dim, D), applied without centring
        student.reduce(self.components)
        print(f"student: embeddings reduced {sample.shape[1]} -> {dim} (top principal components of the teacher's)")

    # 3. teacher signal -----------------------------------------------------------------------------------------
    signal_shapes: ClassVar[dict[str, tuple[str, ...]]] = {"logits": ("D",)}
    per_token: ClassVar[bool] = False
    token_loss: ClassVar[bool] = False

    # 4. KD term ------------------------------------------------------------------------------------------------
    def kd_term(self, loss: LossConfig) -> nn.Module:
        o = self.options
        return EmbeddingKDLoss(o.mse_weight, o.cosine_weight, o.relation_weight, self.components,
                               self.normalize_targets)  # fmt: skip

    # 5. metric -------------------------------------------------------------------------------------------------
    best_metric: ClassVar[str] = "spearman"
    report_metrics: ClassVar[tuple[tuple[str, str], ...]] = (("spearman", "Spearman"), ("pearson", "Pearson"))
    paired_unit: ClassVar[str] = "queries (hit@10)"
    table_columns: ClassVar[tuple[tuple[str, str, str], ...]] = (
        ("lee", "spearman", "Lee Spearman"),
        ("squad", "recall_at_1", "SQuAD R@1"),
        ("squad", "recall_at_10", "SQuAD R@10"),
        ("bbc", "recall_at_1", "BBC R@1"),
        ("bbc", "recall_at_10", "BBC R@10"),
        ("test", "overlap_at_10", "test overlap@10"),
        ("test", "cosine_to_teacher", "test cos to teacher"),
    )
    """(evaluation set, metric, column title) of the report's table; sets that did not run are left out."""

    def headline_for(self, sets: Sequence[str]) -> tuple[str, str]:
        """(evaluation set, metric) of the report's headline: Lee Spearman, else the first retrieval set's
        recall@10, else fidelity on the test split (whichever the run evaluated)."""
        name = next((s for s in (*EVAL_SETS, "test") if s in sets), "test")
        return name, self.set_metric(name)

    def set_metric(self, name: str) -> str:
        """The number the verdicts compare on evaluation set ``name``."""
        return {"lee": "spearman", "squad": "recall_at_10", "bbc": "recall_at_10"}.get(name, "overlap_at_10")

    def gold(self, dataset) -> EmbeddingGold:
        ratings = np.asarray(dataset["ratings"], dtype=np.float64) if "ratings" in dataset.column_names else None
        return EmbeddingGold(np.asarray(dataset["role"]), np.asarray(dataset["key"]), ratings)

    def metrics(self, predictions: np.ndarray, gold: EmbeddingGold, label_names: Sequence[str] | None = None) -> dict:
        """STS: Spearman and Pearson of the pairs' cosine similarity against the ratings; retrieval: recall@1/10,
        MRR@10, nDCG@10 of each query's relevant document among all documents; plain texts: their count (what
        they measure needs the teacher: `versus_teacher`)."""
        emb = np.asarray(predictions, dtype=np.float64)
        if gold.kind == "sts":
            return sts_metrics(emb, gold.ratings)
        if gold.kind == "retrieval":
            return retrieval_metrics(emb, gold)
        return {"texts": float(len(emb))}

    def correct(self, predictions: np.ndarray, gold: EmbeddingGold) -> np.ndarray | None:
        """Per query of a retrieval set: its relevant document is in the top 10; None for other sets (a
        correlation has no per-unit right or wrong)."""
        if gold.kind != "retrieval":
            return None
        return _ranks(np.asarray(predictions, dtype=np.float64), gold) <= TOP_K

    def versus_teacher(self, predictions: np.ndarray, teacher: np.ndarray, gold: EmbeddingGold) -> dict:
        """Fidelity: overlap@10 (the share of each row's 10 nearest neighbours, among the set's documents or texts,
        that are the teacher's too) and, when the sizes match, the mean cosine to the teacher's embedding."""
        s, t = np.asarray(predictions, dtype=np.float64), np.asarray(teacher, dtype=np.float64)
        out = {"overlap_at_10": neighbour_overlap(s, t, gold)}
        if s.shape == t.shape:
            out["cosine_to_teacher"] = float(np.mean(np.sum(_unit(s) * _unit(t), axis=1)))
        return out

    # 6. serving ------------------------------------------------------------------------------------------------
    def serve(self, predictor, texts, batch_size: int, max_length: int | None) -> list[dict]:
        """{"embedding": [floats]} per text, from any variant (`distil.deploy.serving.Predictor`)."""
        max_length = max_length or self.options.eval_max_length  # a saved model's: its max_seq_length
        return self.postprocess(predictor.logits(texts, batch_size=batch_size, max_length=max_length), [])

    def test_evaluator(self, data_cfg: DataConfig, model_labels: list[str], batch_size: int) -> tuple:
        """(``Predictor -> {"spearman", "pearson", "test_rows"}``, "50 Lee documents"): Lee STS of any exported
        variant, read as in evaluation."""
        lee = lee_sts()
        ratings = np.asarray(lee["ratings"].tolist())
        max_length = self.options.eval_max_length

        def evaluate(predictor) -> dict:
            emb = predictor.logits(lee["text"].tolist(), batch_size=batch_size, max_length=max_length)
            return {**sts_metrics(emb.astype(np.float64), ratings), "test_rows": len(lee)}

        return evaluate, f"{len(lee)} Lee documents ({len(lee) * (len(lee) - 1) // 2} rated pairs)"

    def postprocess(self, logits: np.ndarray, labels: Sequence[str]) -> list[dict]:
        return [{"embedding": [float(x) for x in row]} for row in np.asarray(logits)]


# ---- KD term


class EmbeddingKDLoss(nn.Module):
    """``mse_weight * MSE(s, t) + cosine_weight * mean(1 - cos(s, t)) + relation_weight * MSE(S, T)``.

    s, t: the student's and teacher's embeddings (B, D); S, T: their in-batch cosine-similarity matrices (B, B),
    which compare across widths and are unchanged by any rotation of either space. MSE is a mean over elements
    (sentence-transformers' ``MSELoss``). With ``target_projection`` P (d, D) the teacher's targets are t P^T
    (re-normalised with ``normalize_targets``): a student reduced to d dimensions learns the teacher's top d
    principal directions. Returns (total, {part: unweighted value}).
    """

    def __init__(self, mse_weight: float = 1.0, cosine_weight: float = 0.0, relation_weight: float = 0.0,
                 target_projection: Tensor | None = None, normalize_targets: bool = False):  # fmt: skip
        super().__init__()
        self.weights = {"mse": mse_weight, "cosine": cosine_weight, "relation": relation_weight}
        self.register_buffer("projection", target_projection, persistent=False)
        self.normalize_targets = normalize_targets

    def forward(self, student: Tensor, teacher: Tensor | None, labels: Tensor | None = None, **_) -> tuple:
        if teacher is None:
            raise DistilError("embeddings: a student learns only from a teacher here (the baseline stays untrained)")
        teacher = teacher.to(student.dtype).clone()  # a live teacher's output is an inference tensor
        if self.projection is not None:
            teacher = teacher @ self.projection.to(teacher).T  # (B, d)
            if self.normalize_targets:
                teacher = F.normalize(teacher, dim=-1)
        parts: dict[str, Tensor] = {}
        if (self.weights["mse"] or self.weights["cosine"]) and student.shape != teacher.shape:
            raise DistilError(
                f"embeddings: the student's embeddings are {tuple(student.shape)}, the teacher's "
                f"{tuple(teacher.shape)}; MSE and cosine need one size: give the student a projection, or use "
                "embedding.relation_weight only"
            )
        if self.weights["mse"]:
            parts["mse"] = F.mse_loss(student, teacher)
        if self.weights["cosine"]:
            parts["cosine"] = (1 - F.cosine_similarity(student, teacher, dim=-1)).mean()
        if self.weights["relation"]:
            s, t = F.normalize(student, dim=-1), F.normalize(teacher, dim=-1)
            parts["relation"] = F.mse_loss(s @ s.T, t @ t.T)
        total = sum(self.weights[k] * v for k, v in parts.items())
        return total, parts

    def extra_repr(self) -> str:
        return ", ".join(f"{k}_weight={v:g}" for k, v in self.weights.items())


# ---- metrics


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.clip(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12, None)


def sts_metrics(emb: np.ndarray, ratings: np.ndarray) -> dict[str, float]:
    """Spearman and Pearson correlation of the cosine similarity of every document pair (i < j) with its rating."""
    from scipy.stats import pearsonr, spearmanr

    u = _unit(emb)
    i, j = np.triu_indices(len(u), 1)
    sims = np.sum(u[i] * u[j], axis=1)
    gold = ratings[i, j]
    return {"spearman": float(spearmanr(sims, gold).statistic), "pearson": float(pearsonr(sims, gold).statistic),
            "pairs": float(len(gold))}  # fmt: skip


def _ranks(emb: np.ndarray, gold: EmbeddingGold) -> np.ndarray:
    """1-based rank of each query's relevant document among all documents by cosine (ties count against it)."""
    docs, queries = np.flatnonzero(gold.roles == "doc"), np.flatnonzero(gold.roles == "query")
    doc_keys = gold.keys[docs]
    position = {k: n for n, k in enumerate(doc_keys)}
    missing = [k for k in gold.keys[queries] if k not in position]
    if missing:
        raise DistilError(f"retrieval set: a query's relevant document {missing[0]!r} is not among the documents")
    sims = _unit(emb[queries]) @ _unit(emb[docs]).T  # (Q, Nd)
    relevant = np.array([position[k] for k in gold.keys[queries]])
    target = sims[np.arange(len(queries)), relevant][:, None]
    return np.sum(sims >= target, axis=1)  # documents scoring at least as high as the relevant one, itself included


def retrieval_metrics(emb: np.ndarray, gold: EmbeddingGold) -> dict[str, float]:
    ranks = _ranks(emb, gold)
    hit = ranks <= TOP_K
    return {
        "recall_at_1": float(np.mean(ranks == 1)),
        "recall_at_10": float(np.mean(hit)),
        "mrr_at_10": float(np.mean(np.where(hit, 1.0 / ranks, 0.0))),
        "ndcg_at_10": float(np.mean(np.where(hit, 1.0 / np.log2(ranks + 1), 0.0))),  # one relevant document
        "queries": float(len(ranks)),
        "documents": float(np.sum(gold.roles == "doc")),
    }


def _top_k(emb: np.ndarray, rows: np.ndarray, pool: np.ndarray, k: int) -> list[set]:
    sims = _unit(emb[rows]) @ _unit(emb[pool]).T  # (R, P)
    same = rows[:, None] == pool[None, :]
    sims[same] = -np.inf  # a text is not its own neighbour
    top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    return [set(pool[t]) for t in top]


def neighbour_overlap(student: np.ndarray, teacher: np.ndarray, gold: EmbeddingGold, k: int = TOP_K) -> float:
    """Mean share of the teacher's k nearest neighbours that are also the student's: for a retrieval set, each
    query's top-k documents; otherwise each text's top-k among the set's other texts."""
    if gold.kind == "retrieval":
        rows, pool = np.flatnonzero(gold.roles == "query"), np.flatnonzero(gold.roles == "doc")
    else:
        rows = pool = np.arange(len(student))
    k = min(k, len(pool) - (0 if gold.kind == "retrieval" else 1))
    if k < 1:
        return 1.0
    s, t = _top_k(student, rows, pool, k), _top_k(teacher, rows, pool, k)
    return float(np.mean([len(a & b) / k for a, b in zip(s, t)]))


__all__ = ["EVAL_SETS", "EmbeddingGold", "EmbeddingKDLoss", "EmbeddingTask", "neighbour_overlap", "sts_metrics"]
