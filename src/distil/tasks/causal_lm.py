"""Text generation: a causal language model learns the teacher's next-token distributions.

Sections in the order of `distil.tasks.base.Task`: data -> model -> teacher signal -> KD term -> metric -> serving.
Rows are blocks of text tokens (documents packed and cut at ``data.max_length``) or prompt/completion pairs; labels
follow the Hugging Face convention (unshifted; -100 on prompt tokens and padding). The teacher's signal is cached
per token as its top-k log-probabilities, their token ids and the log of the tail mass (`distil.losses.topk`);
the KD term compares the student with it over those k + 1 buckets, or with a live teacher over the whole
vocabulary. The teacher is used as it is unless ``teacher.fine_tune``; the baseline is the same student trained on
next-token cross-entropy over the same blocks and steps. Evaluation: held-out perplexity, next-token accuracy,
top-1 agreement with the teacher and KL(teacher || model) on its top-k buckets; the report adds generation speed
and side-by-side greedy continuations.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import AutoModelForCausalLM

from distil.config import DataConfig, LossConfig
from distil.data.lm_text import budget_blocks, prepare_lm_data, prompt_openings, tokenize_lm
from distil.data.prepare import TaskData
from distil.errors import DistilError
from distil.losses.topk import CausalLMKDLoss, TopK, topk_of
from distil.models.causal import (
    check_vocabulary,
    generate_text,
    generation_speed,
    load_causal_lm,
    load_causal_tokenizer,
    student_from_causal_config,
)
from distil.options import CausalLMConfig

SIGNAL = ("topk_logprobs", "topk_ids", "tail")
"""The cached arrays per token: (k,) float16 log-probabilities, (k,) token ids, () log tail mass (float32)."""
NLL, ARGMAX, TAIL, FIRST = 0, 1, 2, 3
"""Columns of a reduced evaluation output per position: next-token NLL, argmax id, log tail mass, then k
log-probabilities and the k ids they belong to."""


class CausalLM:
    """`AutoModelForCausalLM`, marked for distil's loaders as a model without class labels."""

    labelled: ClassVar[bool] = False

    @staticmethod
    def from_pretrained(*args, **kwargs):
        return AutoModelForCausalLM.from_pretrained(*args, **kwargs)

    @staticmethod
    def from_config(*args, **kwargs):
        return AutoModelForCausalLM.from_config(*args, **kwargs)


class CausalLMTask:
    """text -> the next token; evaluated by perplexity, agreement with the teacher and generation speed."""

    name: ClassVar[str] = "causal-lm"
    trains_teacher: ClassVar[bool] = True
    """The teacher is fine-tuned on the training text only when ``teacher.fine_tune`` (the recipe uses it as is)."""
    trains_baseline: ClassVar[bool] = True
    """The baseline is the same student trained on next-token cross-entropy alone."""
    validates: ClassVar[bool] = False
    """No validation pass while training (full-vocabulary logits of every validation token would not fit): the
    last weights are kept; the report measures held-out perplexity."""
    one_tokenizer: ClassVar[bool] = True
    """Teacher and student must share the tokenizer: their distributions are over the same token ids."""
    lower_is_better: ClassVar[bool] = True
    """The headline metric (perplexity) is better when lower: retention is teacher / model."""
    shifts_labels: ClassVar[bool] = True
    """Labels are unshifted (the logits at t predict t + 1): the trainer counts labelled tokens as labels[..., 1:]."""

    def __init__(self, options: CausalLMConfig | None = None):
        self.options = options or CausalLMConfig()

    # 1. data

    def prepare(self, cfg: DataConfig) -> TaskData:
        return prepare_lm_data(cfg, self.options.max_train_tokens, self.options.max_eval_tokens)

    def tokenize(self, frame, tokenizer, max_length: int, name: str = ""):
        """Blocks of ``max_length`` tokens (packed documents) or prompt/completion rows, cut to the token budget of
        their split (training: ``max_train_tokens``; evaluation sets: ``max_eval_tokens``)."""
        _check_length(tokenizer, max_length)
        dataset = tokenize_lm(frame, tokenizer, max_length, name)
        key = "max_train_tokens" if name in ("train", "") else "max_eval_tokens"
        return budget_blocks(dataset, getattr(self.options, key), seed=0, key=f"causal_lm.{key}")

    def after_augment(self, frame):
        return frame

    def load_teacher(self, path: str, cache_dir) -> nn.Module:
        """A causal LM folder or a GGUF file (dequantised once into the cache)."""
        return load_causal_lm(path, cache_dir)

    def load_tokenizer(self, path: str, cache_dir):
        """The tokenizer of a causal LM folder or GGUF file."""
        return load_causal_tokenizer(path, cache_dir)

    def prompts(self, frame, tokenizer) -> list[str]:
        """Openings of held-out documents that the report continues with every model."""
        return prompt_openings(frame, tokenizer, self.options.sample_prompts, self.options.speed_prompt_tokens)

    # 2. model

    auto_model_class: ClassVar[type] = CausalLM

    def student_from_config(self, teacher_config, s) -> nn.Module:
        """A fresh, narrower model of the teacher's family (`student.init: config`): its vocabulary, positions and
        rotary settings, grouped-query attention at the teacher's ratio when it divides, tied embeddings kept."""
        hidden = s.hidden_size or teacher_config.hidden_size
        heads = s.num_attention_heads or teacher_config.num_attention_heads
        ffn = s.intermediate_size or round(teacher_config.intermediate_size * hidden / teacher_config.hidden_size)
        return student_from_causal_config(teacher_config, s.num_layers, hidden, heads, ffn)

    def adapt_student(self, student: nn.Module, teacher: nn.Module, untrained: bool = False) -> nn.Module:
        """Refuse a student whose vocabulary differs from the teacher's (their distributions would not align)."""
        check_vocabulary(teacher, student)
        self.signals(teacher.config.vocab_size)  # a top_k beyond the vocabulary is refused before any training
        return student

    def on_policy(self) -> tuple[float, int, int] | None:
        """(lmbda, prompt tokens, new tokens) of GKD's on-policy batches, or None when off (lmbda = 0)."""
        o = self.options
        return (o.lmbda, o.on_policy_prompt, o.on_policy_new_tokens) if o.lmbda > 0 else None

    # 3. teacher signal

    signal_shapes: ClassVar[dict[str, tuple[str, ...]]] = {"topk_logprobs": ("k",), "topk_ids": ("k",), "tail": ()}
    per_token: ClassVar[bool] = True
    token_loss: ClassVar[bool] = True

    def signal_settings(self) -> dict:
        """What shapes the cached signal beyond the teacher and the data: part of the cache key."""
        return {"top_k": self.options.top_k}

    def signals(self, vocab_size: int) -> dict:
        """Readers of the teacher's output for the cache: top-k log-probabilities (float16), ids (uint16 when the
        vocabulary fits, else int32) and the log tail mass (float32), each (B, T, ...)."""
        if self.options.top_k > vocab_size:
            raise DistilError(
                f"causal_lm.top_k={self.options.top_k}: larger than the teacher's vocabulary ({vocab_size}); "
                f"use at most {vocab_size} (= the full distribution)"
            )
        ids_dtype = torch.uint16 if vocab_size <= 65536 else torch.int32
        memo: dict[int, TopK] = {}

        def top(outputs) -> TopK:
            key = id(outputs)
            if key not in memo:
                memo.clear()
                memo[key] = topk_of(outputs.logits, self.options.top_k)
            return memo[key]

        return {
            "topk_logprobs": lambda out: top(out).logprobs.to(torch.float16),
            "topk_ids": lambda out: top(out).ids.to(ids_dtype),
            "tail": lambda out: top(out).tail.float(),
        }

    def read_cached(self, soft_labels, idx: Tensor, length: int) -> TopK:
        """The cached signal of the batch's rows, padded (or cropped) to its length T: a `TopK` (B, T, k)."""
        tail = soft_labels.lookup(idx, "tail", length)  # (B, T); zero beyond each row's end (masked by labels)
        return TopK(
            logprobs=soft_labels.lookup(idx, "topk_logprobs", length),  # (B, T, k)
            ids=soft_labels.lookup(idx, "topk_ids", length).long(),  # (B, T, k)
            tail=tail,
        )

    def bytes_per_token(self, soft_labels) -> float:
        """Stored bytes per cached token (all arrays)."""
        arrays = [soft_labels.array(name).data for name in SIGNAL]
        tokens = max(1, arrays[0].shape[0])
        return sum(a.nbytes for a in arrays) / tokens

    # 4. KD term

    def kd_term(self, loss: LossConfig) -> nn.Module:
        o = self.options
        return CausalLMKDLoss(loss.alpha, loss.kd_temperature, divergence=o.divergence, beta=o.beta)

    # 5. metric

    best_metric: ClassVar[str] = "perplexity"
    report_metrics: ClassVar[tuple[tuple[str, str], ...]] = (
        ("perplexity", "perplexity"),
        ("token_accuracy", "next-token acc"),
    )
    paired_unit: ClassVar[str] = "blocks"
    raw_metrics: ClassVar[tuple[str, ...]] = ("perplexity", "nll", "kl_to_teacher")
    """Metrics shown as they are (not as percentages)."""
    table_columns: ClassVar[tuple[tuple[str, str, str], ...]] = (
        ("test", "perplexity", "test ppl"),
        ("test", "token_accuracy", "next-token acc"),
        ("test", "agreement", "top-1 agree"),
        ("test", "kl_to_teacher", "KL to teacher"),
    )

    def headline_for(self, sets: Sequence[str]) -> tuple[str, str]:
        return "test", "perplexity"

    def set_metric(self, name: str) -> str:
        return "perplexity"

    def table_for(self, sets: Sequence[str]) -> list[tuple[str, str, str]]:
        """The report's columns: test perplexity, accuracy, agreement, KL; each extra set's perplexity."""
        extra = [(name, "perplexity", f"{name} ppl") for name in sets if name != "test"]
        return [*self.table_columns, *extra]

    def gold(self, dataset) -> np.ndarray:
        """(N, Lmax) labels, -100 beyond each row and on prompt tokens (unshifted)."""
        rows = dataset["labels"]
        longest = max(len(r) for r in rows)
        gold = np.full((len(rows), longest), -100, dtype=np.int64)
        for i, row in enumerate(rows):
            gold[i, : len(row)] = row
        return gold

    def reducer(self, reference: np.ndarray | None = None):
        """Per batch, what evaluation keeps of a model's (B, T, V) logits: (B, T, 3 + 2k) float32 columns NLL of the
        next input token, argmax, log tail mass, k log-probabilities and their ids. The ids are the model's own
        top-k, or with ``reference`` (the teacher's reduced output on the same set) the teacher's, so KL to the
        teacher can be computed on the teacher's buckets."""
        k = self.options.top_k

        def reduce(logits: Tensor, rows: np.ndarray, inputs: dict[str, Tensor]) -> np.ndarray:
            logp = F.log_softmax(logits.float(), dim=-1)  # (B, T, V)
            ids = inputs["input_ids"]  # (B, T)
            out = torch.zeros(*ids.shape, 3 + 2 * k)  # (B, T, 3 + 2k)
            out[:, :-1, NLL] = -logp[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1)  # position t predicts t + 1
            out[..., ARGMAX] = logp.argmax(-1).float()
            if reference is None:
                top = topk_of(logits, min(k, logits.shape[-1]))
                chosen, tail = top.ids, top.tail
            else:
                chosen = torch.from_numpy(reference[rows, : ids.shape[1], FIRST + k :]).long()  # (B, T, k)
                kept = torch.zeros_like(logp, dtype=torch.bool).scatter_(-1, chosen, True)
                tail = torch.logsumexp(logp.masked_fill(kept, float("-inf")), dim=-1)  # (B, T)
            out[..., TAIL] = tail
            out[..., FIRST : FIRST + chosen.shape[-1]] = logp.gather(-1, chosen)
            out[..., FIRST + k : FIRST + k + chosen.shape[-1]] = chosen.float()
            return out.numpy()

        return reduce

    def metrics(self, predictions: np.ndarray, gold: np.ndarray, label_names: Sequence[str] | None = None) -> dict:
        """Perplexity (exp of the mean next-token NLL), the mean NLL and next-token accuracy over labelled tokens."""
        mask = _next_mask(gold)  # (N, L - 1)
        count = max(1, int(mask.sum()))
        nll = float(predictions[:, :-1, NLL][mask].sum() / count)
        hits = predictions[:, :-1, ARGMAX][mask] == gold[:, 1:][mask]
        return {
            "perplexity": float(np.exp(nll)),
            "nll": nll,
            "token_accuracy": float(hits.mean()) if hits.size else 0.0,
            "tokens": count,
            "blocks": int(len(gold)),
        }

    def correct(self, predictions: np.ndarray, gold: np.ndarray) -> None:
        """No per-unit right or wrong: perplexity is compared per block by the report's sign test instead."""
        return None

    def block_nll(self, predictions: np.ndarray, gold: np.ndarray) -> np.ndarray:
        """(N,) mean next-token NLL of each block, for a paired comparison of two models on the same blocks."""
        mask = _next_mask(gold)
        sums = np.where(mask, predictions[:, :-1, NLL], 0.0).sum(1)
        return sums / np.maximum(mask.sum(1), 1)

    def versus_teacher(self, predictions: np.ndarray, teacher: np.ndarray, gold: np.ndarray) -> dict[str, float]:
        """Top-1 agreement with the teacher and KL(teacher || model) over the teacher's k + 1 buckets, per token."""
        k = self.options.top_k
        mask = _next_mask(gold)
        full = np.zeros_like(mask, dtype=bool)
        full[:, : mask.shape[1]] = mask
        agree = predictions[:, :-1, ARGMAX][mask] == teacher[:, :-1, ARGMAX][mask]
        t = np.concatenate([teacher[..., FIRST : FIRST + k], teacher[..., TAIL : TAIL + 1]], -1)[:, :-1][mask]
        s = np.concatenate([predictions[..., FIRST : FIRST + k], predictions[..., TAIL : TAIL + 1]], -1)[:, :-1][mask]
        p = np.exp(t)  # (n, k + 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            kl = np.where(p > 0, p * (t - s), 0.0).sum(-1)
        return {
            "agreement": float(agree.mean()) if agree.size else 0.0,
            "kl_to_teacher": float(np.nanmean(kl)) if kl.size else 0.0,
        }

    # 6. serving

    def generation_report(self, models: dict[str, nn.Module], tokenizer, prompts: Sequence[str]) -> dict[str, Any]:
        """Generation speed of each model (batch 1, greedy, KV cache) and their greedy continuations of
        ``prompts`` side by side."""
        o = self.options
        speed = {
            stage: generation_speed(model, len(tokenizer), o.speed_prompt_tokens, o.speed_new_tokens)
            for stage, model in models.items()
        }
        samples = [
            {
                "prompt": prompt,
                "continuations": {
                    stage: generate_text(model, tokenizer, prompt, o.sample_new_tokens)
                    for stage, model in models.items()
                },
            }
            for prompt in prompts
        ]
        return {"speed": speed, "samples": samples}

    def serve(self, predictor, texts, batch_size: int, max_length: int | None) -> list[dict]:
        raise DistilError('a causal-lm model generates text: use `distil generate MODEL "prompt"`')

    def test_evaluator(self, data_cfg: DataConfig, model_labels: list[str], batch_size: int) -> tuple:
        raise DistilError(
            "distil export: a causal-lm model is served from its saved folder (Transformers format, with "
            "`distil generate --int8` for CPU int8); ONNX export of decoders is not built"
        )

    def postprocess(self, logits: np.ndarray, labels: Sequence[str]) -> list[dict]:
        raise DistilError('a causal-lm model generates text: use `distil generate MODEL "prompt"`')


def _next_mask(gold: np.ndarray) -> np.ndarray:
    """(N, L - 1) bool: position t is scored when the token at t + 1 is labelled."""
    return gold[:, 1:] != -100


def _check_length(tokenizer, max_length: int) -> None:
    """A block longer than the model reads is refused before anything is tokenised."""
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < 1_000_000 and max_length > limit:
        raise DistilError(
            f"data.max_length={max_length}: longer than the model's {limit} positions; use at most {limit}"
        )
