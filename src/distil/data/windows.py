"""Extractive QA's windows: a question and its context tokenised into overlapping windows with character offsets,
and the best answer span of an example over all its windows (HF run_qa's post-processing, vectorised).

A window is ``[CLS] question [SEP] context piece [SEP]``. Its labels encode everything the loss needs in one
per-token row the collator pads like a tagger's: -100 outside the context (question, separators, padding) except
[CLS]; 0 on context tokens and [CLS]; +1 on the answer's start token and +2 on its end token (3 when one token is
both). A training window that does not hold the whole answer points both at [CLS] (BERT's SQuAD 2 convention);
evaluation only ever picks spans inside the context.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from distil.errors import DistilError
from distil.losses.logits import IGNORE_INDEX

START, END = 1, 2
"""Bits of a window's label at the answer's first and last token."""


def cut_questions(questions: Sequence[str], tokenizer, max_question_length: int) -> tuple[list[str], int]:
    """Questions without leading spaces (some SQuAD questions have hundreds), each cut to at most
    ``max_question_length`` tokens at a token boundary, and how many were cut."""
    stripped = [str(q).lstrip() for q in questions]
    enc = tokenizer(stripped, add_special_tokens=False, return_offsets_mapping=True)
    out, cut = [], 0
    for question, ids, offsets in zip(stripped, enc["input_ids"], enc["offset_mapping"]):
        if len(ids) > max_question_length:
            question = question[: offsets[max_question_length - 1][1]]
            cut += 1
        out.append(question)
    return out, cut


def check_window_room(max_length: int, doc_stride: int, max_question_length: int, special: int = 3) -> None:
    """A window must leave the context more tokens than the stride: [CLS] question [SEP] context [SEP] (``special``
    tokens: 3 for BERT, 4 for RoBERTa's ``<s> q </s></s> c </s>``)."""
    room = max_length - max_question_length - special
    if room <= 0:
        raise DistilError(
            f"data.max_question_length={max_question_length}: leaves no context in a window of max_length "
            f"{max_length}; lower it below {max_length - special} or raise data.max_length"
        )
    if not 0 <= doc_stride < room:
        raise DistilError(
            f"data.doc_stride={doc_stride}: must be in 0..{room - 1} (below the {room} context tokens a window of "
            f"max_length {max_length} keeps after a question of up to {max_question_length} tokens); lower it or "
            "raise data.max_length"
        )


def tokenize_windows(
    frame, tokenizer, max_length: int, doc_stride: int, max_question_length: int
) -> tuple[dict[str, list], int]:
    """Windows of every question of ``frame`` (columns question|text, context, [answer_texts, answer_starts]).

    Returns:
        (columns, cut questions): input_ids, attention_mask, [token_type_ids], labels (see the module docstring),
        offsets ([start, end] characters into the context per token; [-1, -1] outside it), example (the row of
        ``frame``), context and answers (the example's gold texts) per window.

    Raises:
        DistilError: the window leaves no room for the context (`check_window_room`), or the tokenizer is not a
            fast one (offsets are needed).
    """
    if not getattr(tokenizer, "is_fast", False):
        raise DistilError(
            f"question answering needs a fast tokenizer (character offsets); {type(tokenizer).__name__} is not one"
        )
    check_window_room(max_length, doc_stride, max_question_length, tokenizer.num_special_tokens_to_add(pair=True))
    column = "question" if "question" in frame else "text"
    questions, cut = cut_questions(frame[column].tolist(), tokenizer, max_question_length)
    contexts = [str(c) for c in frame["context"]]
    enc = tokenizer(questions, contexts, truncation="only_second", max_length=max_length, stride=doc_stride,
                    return_overflowing_tokens=True, return_offsets_mapping=True, padding=False)  # fmt: skip
    has_answers = "answer_starts" in frame
    texts = frame["answer_texts"].tolist() if has_answers else [[] for _ in contexts]
    starts = frame["answer_starts"].tolist() if has_answers else [[] for _ in contexts]
    gold = frame["gold_texts"].tolist() if "gold_texts" in frame else texts  # what scoring compares with
    columns: dict[str, list] = {k: [] for k in ("input_ids", "attention_mask", "labels", "offsets", "example")}
    columns.update(context=[], answers=[])
    if "token_type_ids" in enc:
        columns["token_type_ids"] = []
    cls_id = tokenizer.cls_token_id
    for w, example in enumerate(enc["overflow_to_sample_mapping"]):
        ids, sequence = enc["input_ids"][w], enc.sequence_ids(w)
        offsets = [list(o) if s == 1 else [-1, -1] for o, s in zip(enc["offset_mapping"][w], sequence)]
        cls = ids.index(cls_id) if cls_id in ids else 0
        labels = [0 if s == 1 else IGNORE_INDEX for s in sequence]
        labels[cls] = 0
        answer = (
            (int(starts[example][0]), int(starts[example][0]) + len(texts[example][0])) if texts[example] else None
        )
        first, last = _answer_tokens(offsets, answer) if answer else (None, None)
        labels[cls if first is None else first] += START
        labels[cls if last is None else last] += END
        for key in ("input_ids", "attention_mask", "token_type_ids"):
            if key in columns:
                columns[key].append(enc[key][w])
        columns["labels"].append(labels)
        columns["offsets"].append(offsets)
        columns["example"].append(int(example))
        columns["context"].append(contexts[example])
        columns["answers"].append([str(t) for t in gold[example]])
    columns["length"] = [len(ids) for ids in columns["input_ids"]]
    columns["idx"] = list(range(len(columns["input_ids"])))
    return columns, cut


def _answer_tokens(offsets: list[list[int]], answer: tuple[int, int]) -> tuple[int | None, int | None]:
    """(first, last) context token of the character span ``answer`` when the window holds all of it, else Nones."""
    inside = [i for i, (s, _) in enumerate(offsets) if s >= 0]
    if not inside or offsets[inside[0]][0] > answer[0] or offsets[inside[-1]][1] < answer[1]:
        return None, None
    first = max(i for i in inside if offsets[i][0] <= answer[0])
    last = min(i for i in inside if offsets[i][1] >= answer[1])
    return first, max(first, last)


@dataclass
class SpanGold:
    """What scoring a QA split needs beyond its windows' logits (built by `span_gold`).

    Attributes:
        labels: (N, L) per-window labels, padded with -100.
        offsets: (N, L, 2) context character offsets per token, -1 outside the context and past the window.
        example: (N,) the example (question) of each window.
        contexts: (E,) each example's context.
        answers: (E,) each example's gold answer texts.
    """

    labels: np.ndarray
    offsets: np.ndarray
    example: np.ndarray
    contexts: list[str]
    answers: list[list[str]]

    def __len__(self) -> int:
        return len(self.contexts)


def span_gold(columns) -> SpanGold:
    """`SpanGold` of a tokenised QA split (a `datasets.Dataset` or the columns of `tokenize_windows`)."""
    rows = columns["offsets"]
    length = max((len(r) for r in rows), default=0)
    offsets = np.full((len(rows), length, 2), -1, dtype=np.int64)
    labels = np.full((len(rows), length), IGNORE_INDEX, dtype=np.int64)
    for i, (o, y) in enumerate(zip(rows, columns["labels"])):
        offsets[i, : len(o)] = o
        labels[i, : len(y)] = y
    example = np.asarray(columns["example"], dtype=np.int64)
    contexts, answers = {}, {}
    for e, context, gold in zip(example, columns["context"], columns["answers"]):
        contexts.setdefault(int(e), context)
        answers.setdefault(int(e), list(gold))
    if sorted(contexts) != list(range(len(contexts))):
        raise DistilError("question answering: the windows' example numbers are not 0..E-1; re-tokenise the split")
    return SpanGold(labels, offsets, example, [contexts[e] for e in range(len(contexts))],
                    [answers[e] for e in range(len(answers))])  # fmt: skip


def best_spans(
    logits: np.ndarray, offsets: np.ndarray, example: np.ndarray, num_examples: int, max_answer_length: int,
    n_best: int = 20,
) -> list[dict]:  # fmt: skip
    """The best answer of each example over all its windows, as HF run_qa's post-processing picks it.

    In every window the ``n_best`` highest start and end logits among context tokens are paired; a pair counts when
    end >= start and it spans at most ``max_answer_length`` tokens; its score is start + end logit. The example's
    answer is its best pair over all its windows.

    Args:
        logits: (N, L, 2) start and end logits per window (wider or narrower than ``offsets`` is fine).
        offsets: (N, L', 2) context character offsets, -1 outside the context.
        example: (N,) the example of each window.

    Returns:
        Per example {"start", "end" (characters into the context), "score", "start_prob" x "end_prob" as
        "probability" (softmax over the window's context tokens), "window"}; start = end = -1 when no window had a
        valid span.
    """
    width = min(logits.shape[1], offsets.shape[1])
    logits, offsets = np.asarray(logits[:, :width], dtype=np.float32), offsets[:, :width]
    context = offsets[..., 0] >= 0  # (N, L)
    scores = np.where(context[..., None], logits, -np.inf)  # (N, L, 2)
    k = min(n_best, width)
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]  # (N, k, 2) token indices
    start_idx, end_idx = top[..., 0], top[..., 1]  # (N, k) each
    rows = np.arange(len(logits))[:, None]
    s_score, e_score = scores[rows, start_idx, 0], scores[rows, end_idx, 1]  # (N, k)
    pair = s_score[:, :, None] + e_score[:, None, :]  # (N, k, k)
    span = end_idx[:, None, :] - start_idx[:, :, None]  # (N, k, k)
    pair = np.where((span >= 0) & (span < max_answer_length), pair, -np.inf)
    flat = pair.reshape(len(pair), -1).argmax(-1)  # (N,)
    best = pair.reshape(len(pair), -1)[np.arange(len(pair)), flat]  # (N,)
    best_start = start_idx[np.arange(len(pair)), flat // k]
    best_end = end_idx[np.arange(len(pair)), flat % k]
    probs = _context_softmax(scores)  # (N, L, 2)
    out = [{"start": -1, "end": -1, "score": -np.inf, "probability": 0.0, "window": -1} for _ in range(num_examples)]
    for w in np.argsort(-best, kind="stable"):  # best windows first: an example keeps its first (best) one
        e = int(example[w])
        if out[e]["window"] >= 0 or not np.isfinite(best[w]):
            continue
        s, t = int(best_start[w]), int(best_end[w])
        out[e] = {"start": int(offsets[w, s, 0]), "end": int(offsets[w, t, 1]), "score": float(best[w]),
                  "probability": float(probs[w, s, 0] * probs[w, t, 1]), "window": int(w)}  # fmt: skip
    return out


def _context_softmax(scores: np.ndarray) -> np.ndarray:
    """Softmax over the L axis of (N, L, 2) scores that are -inf outside the context (all -inf rows give 0)."""
    finite = np.isfinite(scores)
    peak = np.where(finite, scores, -np.inf).max(1, keepdims=True)  # (N, 1, 2)
    peak = np.where(np.isfinite(peak), peak, 0.0)
    e = np.where(finite, np.exp(np.where(finite, scores, 0.0) - peak), 0.0)
    return e / np.maximum(e.sum(1, keepdims=True), 1e-30)


def answer_texts(spans: list[dict], contexts: Sequence[str]) -> list[str]:
    """The text of each example's best span (empty when it has none)."""
    return [c[s["start"] : s["end"]] if s["start"] >= 0 else "" for s, c in zip(spans, contexts)]
