"""Extractive QA: windows and offsets, the span KD term's closed forms with its masks, SQuAD EM/F1, n-best
post-processing across windows."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from distil.data.windows import best_spans, check_window_room, span_gold, tokenize_windows
from distil.errors import DistilError
from distil.tasks import QuestionAnsweringTask, task_for_model
from distil.tasks.question_answering import SpanKDLoss, normalize_answer, span_targets, squad_scores

CONTEXT = " ".join(f"word{i}" for i in range(60)) + " the answer is Paris . " + " ".join(f"tail{i}" for i in range(20))


def _frame(question: str, context: str, answer: str) -> pd.DataFrame:
    start = context.index(answer)
    return pd.DataFrame(
        {"question": [question], "context": [context], "answer_texts": [[answer]], "answer_starts": [[start]]}
    )


def _windows(tokenizer, frame, max_length=48, stride=16, max_question=8):
    columns, cut = tokenize_windows(frame, tokenizer, max_length, stride, max_question)
    return columns, cut


def _span_text(columns, w) -> str | None:
    """The context text between the window's START and END labels, or None when both point at [CLS]."""
    labels, offsets = columns["labels"][w], columns["offsets"][w]
    start = next(i for i, y in enumerate(labels) if y >= 0 and y & 1)
    end = next(i for i, y in enumerate(labels) if y >= 0 and y & 2)
    if offsets[start][0] < 0:
        assert start == end == 0  # [CLS]
        return None
    return columns["context"][w][offsets[start][0] : offsets[end][1]]


def test_a_long_context_is_split_into_overlapping_windows_and_only_whole_answers_are_labelled(tokenizer):
    columns, cut = _windows(tokenizer, _frame("where is it?", CONTEXT, "Paris"))
    n = len(columns["input_ids"])
    assert n >= 3 and cut == 0 and set(columns["example"]) == {0}
    assert all(len(ids) <= 48 for ids in columns["input_ids"])
    spans = [_span_text(columns, w) for w in range(n)]
    assert "Paris" in spans and spans[0] is None  # the answer sits in a later window; the first points at [CLS]
    # consecutive windows share exactly `stride` context tokens
    first = [o for o in columns["offsets"][0] if o[0] >= 0]
    second = [o for o in columns["offsets"][1] if o[0] >= 0]
    assert first[-16:] == second[:16]
    # the question and the separators are masked (-100); [CLS] and the context are not
    ids, labels = columns["input_ids"][1], columns["labels"][1]
    assert labels[0] >= 0 and ids[0] == tokenizer.cls_token_id
    sep = [i for i, t in enumerate(ids) if t == tokenizer.sep_token_id]
    assert all(labels[i] == -100 for i in sep) and all(labels[i] == -100 for i in range(1, sep[0]))


def test_an_answer_crossing_a_window_edge_is_labelled_only_where_it_is_whole(tokenizer):
    long_answer = "word20 word21 word22 word23 word24 word25 word26 word27 word28 word29"
    columns, _ = _windows(tokenizer, _frame("which words?", CONTEXT, long_answer), max_length=40, stride=24)
    spans = [_span_text(columns, w) for w in range(len(columns["input_ids"]))]
    whole = [s for s in spans if s is not None]
    assert whole and all(s == long_answer for s in whole)
    for w, s in enumerate(spans):  # a window that holds only part of the answer points at [CLS]
        text = " ".join(columns["context"][w][a:b] for a, b in columns["offsets"][w] if a >= 0)
        if s is None:
            assert long_answer.replace(" ", "") not in text.replace(" ", "")


def test_long_questions_are_cut_and_a_too_small_window_is_refused(tokenizer):
    question = "why " * 30 + "?"
    columns, cut = _windows(tokenizer, _frame(question, CONTEXT, "Paris"))
    assert cut == 1
    sep = columns["input_ids"][0].index(tokenizer.sep_token_id)
    assert sep - 1 <= 8  # at most max_question_length question tokens before the first [SEP]
    with pytest.raises(DistilError, match="doc_stride=40: must be in 0..36"):
        check_window_room(48, 40, 8)
    with pytest.raises(DistilError, match="max_question_length=60"):
        check_window_room(48, 4, 60)


def test_span_targets_read_start_and_end_bits():
    labels = torch.tensor([[0, -100, 0, 1, 0, 2, -100], [3, -100, 0, 0, 0, 0, -100]])
    start, end, mask = span_targets(labels)
    assert start.tolist() == [3, 0] and end.tolist() == [5, 0]
    assert mask.tolist()[0] == [True, False, True, True, True, True, False]


def _masked_kl(s, t, mask, temperature):
    p = F.softmax(t[mask] / temperature, -1)
    return float((p * (F.log_softmax(t[mask] / temperature, -1) - F.log_softmax(s[mask] / temperature, -1))).sum())


def test_span_kd_is_the_mean_of_start_and_end_kd_over_context_positions_only():
    torch.manual_seed(0)
    student, teacher = torch.randn(1, 7, 2), torch.randn(1, 7, 2)
    labels = torch.tensor([[0, -100, -100, 1, 0, 2, -100]])
    mask = labels[0] != -100
    loss = SpanKDLoss(alpha=0.0, kd_temperature=2.0)
    total, parts = loss(student, teacher, labels)
    want = 4.0 * (_masked_kl(student[0, :, 0], teacher[0, :, 0], mask, 2.0)
                  + _masked_kl(student[0, :, 1], teacher[0, :, 1], mask, 2.0)) / 2  # fmt: skip
    assert float(total) == pytest.approx(want, rel=1e-5) and float(parts["kd"]) == pytest.approx(want, rel=1e-5)
    # the teacher's (or student's) logits on question/padding positions change nothing
    changed = teacher.clone()
    changed[0, [1, 2, 6]] = 50.0
    assert float(loss(student, changed, labels)[0]) == pytest.approx(float(total), rel=1e-6)


def test_span_cross_entropy_with_alpha_one_or_no_teacher_is_the_gold_positions_ce():
    torch.manual_seed(1)
    student = torch.randn(2, 6, 2)
    labels = torch.tensor([[0, -100, 1, 0, 2, -100], [3, -100, 0, 0, 0, -100]])
    mask = labels != -100
    want = 0.0
    for k, targets in ((0, [2, 0]), (1, [4, 0])):
        logits = student[..., k].masked_fill(~mask, -1e4)
        want += float(F.cross_entropy(logits, torch.tensor(targets))) / 2
    total, parts = SpanKDLoss(alpha=1.0, kd_temperature=3.0)(student, None, labels)
    assert float(total) == pytest.approx(want, rel=1e-5) and set(parts) == {"ce"}
    assert math.isfinite(float(SpanKDLoss(0.5, 2.0)(student, torch.randn(2, 6, 2), labels)[0]))


def test_squad_normalisation_and_scores_follow_the_official_v1_script():
    assert normalize_answer("The  Cat, sat!") == "cat sat"
    assert normalize_answer("an apple a day") == "apple day"
    assert squad_scores("the Denver Broncos", ["Denver Broncos", "Broncos"]) == (1.0, 1.0)
    em, f1 = squad_scores("Denver", ["Denver Broncos"])
    assert em == 0.0 and f1 == pytest.approx(2 * 1.0 * 0.5 / 1.5)
    assert squad_scores("blue red", ["red green", "blue red green"])[1] == pytest.approx(0.8)  # max over golds
    assert squad_scores("", ["x"]) == (0.0, 0.0) and squad_scores("x", []) == (0.0, 0.0)


def test_best_span_is_chosen_over_all_windows_of_an_example_within_the_answer_length():
    offsets = np.full((3, 6, 2), -1)
    for w in range(3):
        for i in range(2, 6):
            offsets[w, i] = [10 * w + 2 * i, 10 * w + 2 * i + 1]  # context tokens 2..5 of each window
    example = np.array([0, 0, 1])
    logits = np.zeros((3, 6, 2), np.float32)
    logits[0, 2, 0], logits[0, 3, 1] = 5, 5  # example 0, window 0: score 10
    logits[1, 4, 0], logits[1, 5, 1] = 6, 6  # example 0, window 1: score 12 -> chosen
    logits[1, 0, :] = 100  # [CLS] / question positions are never picked
    logits[2] = -20.0
    logits[2, 5, 0], logits[2, 2, 1] = 9, 9  # end before start: invalid ...
    logits[2, 3, 0], logits[2, 4, 1] = 1, 1  # ... so the best valid pair wins
    spans = best_spans(logits, offsets, example, 2, max_answer_length=3)
    assert (spans[0]["window"], spans[0]["start"], spans[0]["end"]) == (1, 18, 21)
    assert (spans[1]["start"], spans[1]["end"]) == (26, 29)
    short = best_spans(logits, offsets, example, 2, max_answer_length=1)  # only one-token answers
    assert all(s["start"] >= 0 and (s["end"] - s["start"]) == 1 for s in short)
    assert 0 < spans[0]["probability"] <= 1


def test_oracle_logits_score_one_and_the_paired_unit_is_the_question(tokenizer):
    frames = pd.concat([_frame("where?", CONTEXT, "Paris"), _frame("which?", CONTEXT, "word3 word4")])
    frames["answer_texts"] = [["Paris", "paris ."], ["word3 word4"]]
    columns, _ = _windows(tokenizer, frames.reset_index(drop=True))
    gold = span_gold(columns)
    assert len(gold) == 2 and gold.answers[0] == ["Paris", "paris ."]
    logits = np.zeros(gold.labels.shape + (2,), np.float32)
    labelled = gold.labels >= 0
    logits[..., 0] = np.where(labelled & (gold.labels & 1 > 0) & (gold.offsets[..., 0] >= 0), 10, 0)
    logits[..., 1] = np.where(labelled & (gold.labels & 2 > 0) & (gold.offsets[..., 0] >= 0), 10, 0)
    task = QuestionAnsweringTask(doc_stride=16, max_question_length=8)
    assert task.metrics(logits, gold) == {"f1": 1.0, "exact_match": 1.0}
    assert task.correct(logits, gold).tolist() == [True, True]
    assert task.correct(np.zeros_like(logits), gold).dtype == bool


def test_a_qa_model_config_is_served_by_the_qa_task_with_its_windows():
    task = task_for_model({"architectures": ["BertForQuestionAnswering"], "distil_qa": {"doc_stride": 32}})
    assert isinstance(task, QuestionAnsweringTask) and task.doc_stride == 32
    assert task.per_token and not task.token_loss


def test_span_mse_is_averaged_over_the_context_whatever_the_padding():
    torch.manual_seed(2)
    student, teacher = torch.randn(1, 6, 2), torch.randn(1, 6, 2)
    labels = torch.tensor([[0, -100, 1, 0, 2, -100]])
    loss = SpanKDLoss(alpha=0.0, kd_temperature=1.0, soft_loss="mse")
    padded = (torch.cat([student, torch.zeros(1, 20, 2)], 1), torch.cat([teacher, torch.zeros(1, 20, 2)], 1),
              torch.cat([labels, torch.full((1, 20), -100)], 1))  # fmt: skip
    mask = labels[0] != -100
    want = float(((student[0] - teacher[0])[mask] ** 2).mean())
    assert float(loss(student, teacher, labels)[0]) == pytest.approx(want, rel=1e-5)
    assert float(loss(*padded)[0]) == pytest.approx(want, rel=1e-5)


def test_postprocess_gives_token_positions_and_metrics_refuse_bare_label_ids():
    logits = np.full((1, 6, 2), -5.0, np.float32)
    logits[0, 2, 0], logits[0, 3, 1] = 4.0, 4.0
    task = QuestionAnsweringTask()
    assert task.postprocess(logits, ["start", "end"])[0]["start_token"] == 2
    assert task.postprocess(logits, ["start", "end"])[0]["end_token"] == 3
    with pytest.raises(DistilError, match="need the windows' offsets"):
        task.metrics(logits, np.zeros((1, 6), dtype=np.int64))


def test_scoring_compares_with_every_gold_text_even_one_whose_offset_is_wrong(tokenizer):
    frame = _frame("where?", CONTEXT, "Paris")
    frame["gold_texts"] = [
        ["Paris", "the city of Paris"]
    ]  # the second one's offset did not match: scored, not trained
    columns, _ = _windows(tokenizer, frame)
    assert span_gold(columns).answers == [["Paris", "the city of Paris"]]
