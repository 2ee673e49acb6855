"""The causal-lm task unit: its cached signal (through the real cache), evaluation reductions and metrics against
hand computations, the on-policy step, and the refusals; on a tiny random Llama."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from transformers import LlamaConfig, LlamaForCausalLM

from distil.config import LossConfig
from distil.data import PadCollator
from distil.engine.distiller import Distiller
from distil.engine.teacher_cache import SoftLabelCache, teacher_logits_to
from distil.errors import DistilError
from distil.losses.topk import causal_lm_kd_objective, topk_of
from distil.models.causal import load_causal_lm
from distil.models.student import student_from_teacher
from distil.options import CausalLMConfig
from distil.tasks import CausalLMTask, task_for_model
from distil.tasks.causal_lm import ARGMAX, FIRST, NLL, TAIL

VOCAB = 64


def tiny_llama(seed: int = 0, layers: int = 2, vocab: int = VOCAB) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=True, pad_token_id=0,
        eos_token_id=1, bos_token_id=None,
    )  # fmt: skip
    return LlamaForCausalLM(config).eval()


def blocks(rows: int = 6, length: int = 12, seed: int = 0) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, VOCAB, (rows, length), generator=g).tolist()
    lengths = [length - (i % 3) for i in range(rows)]  # some rows shorter: per-token padding is exercised
    return Dataset.from_dict({
        "input_ids": [r[:n] for r, n in zip(ids, lengths)],
        "attention_mask": [[1] * n for n in lengths],
        "labels": [r[:n] for r, n in zip(ids, lengths)],
        "idx": list(range(rows)),
        "length": lengths,
    })  # fmt: skip


def cached_signal(task: CausalLMTask, teacher, dataset, tmp_path):
    key = "k" * 32
    return SoftLabelCache(tmp_path).get_or_build(
        key,
        len(dataset),
        lambda path: teacher_logits_to(
            path, teacher, dataset, PadCollator(0), 4, False, per_token=True, signals=task.signals(VOCAB)
        ),
        signal={name: "per_token" for name in task.signal_shapes},
    )


def test_the_cached_signal_is_compact_and_reads_back_as_the_teachers_top_k(tmp_path):
    task = CausalLMTask(CausalLMConfig(top_k=8))
    teacher, data = tiny_llama(), blocks()
    soft = cached_signal(task, teacher, data, tmp_path)
    assert soft.array("topk_ids").data.dtype == np.uint16
    assert soft.array("topk_logprobs").data.dtype == np.float16
    assert task.bytes_per_token(soft) == 8 * 2 + 8 * 2 + 4
    batch = PadCollator(0)([data[i] for i in (4, 1)])
    with torch.inference_mode():
        want = topk_of(teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits, 8)
    got = task.read_cached(soft, batch["idx"], batch["input_ids"].shape[1])
    real = batch["attention_mask"].bool()
    assert torch.equal(got.ids[real], want.ids[real])
    assert torch.allclose(got.logprobs[real], want.logprobs[real], atol=2e-2)  # float16 storage
    assert torch.allclose(got.tail[real], want.tail[real], atol=1e-5)


def test_the_full_vocabulary_cache_gives_the_live_teachers_loss(tmp_path):
    """k = V: the cached top-k loss equals the full-vocabulary loss of the live teacher (up to float16 storage)."""
    task = CausalLMTask(CausalLMConfig(top_k=VOCAB))
    teacher, student, data = tiny_llama(0), tiny_llama(1), blocks()
    soft = cached_signal(task, teacher, data, tmp_path)
    batch = PadCollator(0)([data[i] for i in range(4)])
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    logits = student(**inputs).logits
    cached = task.read_cached(soft, batch["idx"], inputs["input_ids"].shape[1])
    with torch.inference_mode():
        live = teacher(**inputs).logits
    for divergence in ("forward_kl", "reverse_kl", "jsd"):
        a, _ = causal_lm_kd_objective(logits, cached, batch["labels"], 0.0, 2.0, divergence)
        b, _ = causal_lm_kd_objective(logits, live, batch["labels"], 0.0, 2.0, divergence)
        assert a.item() == pytest.approx(b.item(), rel=2e-3), divergence


def test_reduced_outputs_give_perplexity_accuracy_and_fidelity_by_hand():
    task = CausalLMTask(CausalLMConfig(top_k=4))
    torch.manual_seed(0)
    logits = torch.randn(2, 5, VOCAB)
    ids = torch.randint(2, VOCAB, (2, 5))
    gold = ids.numpy().copy()
    gold[0, :2] = -100  # a prompt: its tokens are not scored
    out = task.reducer()(logits, np.arange(2), {"input_ids": ids})
    logp = F.log_softmax(logits, -1)
    nll = -logp[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1)  # (2, 4): position t predicts t + 1
    scored = torch.tensor(gold[:, 1:] != -100)
    want = float(nll[scored].mean())
    metrics = task.metrics(out, gold)
    assert metrics["nll"] == pytest.approx(want, rel=1e-5)
    assert metrics["perplexity"] == pytest.approx(math.exp(want), rel=1e-5)
    assert metrics["tokens"] == int(scored.sum()) == 7
    hits = (logits[:, :-1].argmax(-1) == ids[:, 1:])[scored]
    assert metrics["token_accuracy"] == pytest.approx(float(hits.float().mean()))
    assert np.array_equal(out[..., ARGMAX], logits.argmax(-1).numpy())
    # against itself: full agreement, no divergence; against another model: KL on the teacher's buckets by hand
    same = task.versus_teacher(out, out, gold)
    assert same == {"agreement": 1.0, "kl_to_teacher": pytest.approx(0.0, abs=1e-6)}
    other = torch.randn(2, 5, VOCAB)
    student = task.reducer(out)(other, np.arange(2), {"input_ids": ids})
    top = topk_of(logits, 4)
    s_logp = F.log_softmax(other, -1)
    s_top = s_logp.gather(-1, top.ids)
    s_tail = torch.log1p(-s_top.exp().sum(-1))
    assert np.allclose(student[..., TAIL], s_tail.numpy(), atol=1e-5)
    t = torch.cat([top.logprobs, top.tail[..., None]], -1)
    s = torch.cat([s_top, s_tail[..., None]], -1)
    kl = (t.exp() * (t - s)).sum(-1)[:, :-1][scored]
    assert task.versus_teacher(student, out, gold)["kl_to_teacher"] == pytest.approx(float(kl.mean()), rel=1e-4)
    assert np.array_equal(student[..., FIRST + 4 :], out[..., FIRST + 4 :])  # the teacher's ids were used
    blocks_nll = task.block_nll(out, gold)
    assert blocks_nll[1] == pytest.approx(float(nll[1].mean()), rel=1e-5)
    assert out[..., NLL][:, -1].tolist() == [0.0, 0.0]  # the last position predicts nothing


def test_an_on_policy_batch_is_the_students_own_continuation_scored_by_the_live_teacher(tmp_path):
    task = CausalLMTask(CausalLMConfig(lmbda=1.0, on_policy_prompt=4, on_policy_new_tokens=5, top_k=8))
    teacher, student = tiny_llama(0), tiny_llama(1).train()
    data = blocks(rows=4, length=10)
    soft = cached_signal(task, teacher, data, tmp_path)  # off-policy batches would not need the teacher at all
    seen = []
    teacher.register_forward_hook(
        lambda module, args, kwargs, out: seen.append(kwargs["input_ids"].shape), with_kwargs=True
    )
    distiller = Distiller(LossConfig(alpha=0.5, hidden_weight=1.0), teacher, student, soft, task)
    assert distiller.on_policy == (1.0, 4, 5)
    batch = PadCollator(0)([data[0], data[3]])  # full-length rows (lengths 10)
    labels, idx = batch.pop("labels"), batch.pop("idx")
    got = distiller._on_policy_batch(student, dict(batch), labels, None)
    assert got is not None
    new_inputs, new_labels, _ = got
    assert torch.equal(new_inputs["input_ids"][:, :4], batch["input_ids"][:, :4])  # the prompt is the block's opening
    assert 4 < new_inputs["input_ids"].shape[1] <= 4 + 5 and (new_labels[:, :4] == -100).all()
    assert student.training  # sampled in eval mode, handed back in train mode
    seen.clear()
    total, parts, _ = distiller.compute(student, dict(batch), labels, idx)
    assert seen and seen[-1][1] > 4 and seen[-1][1] != batch["input_ids"].shape[1]  # the teacher read generated text
    assert parts["on_policy"].item() == 1.0 and parts["hidden"].item() >= 0  # hidden terms run on it too
    assert torch.isfinite(total)
    total.backward()
    assert student.model.embed_tokens.weight.grad is not None
    off = Distiller(LossConfig(alpha=0.0), teacher, None, None, CausalLMTask(CausalLMConfig(lmbda=0.0)))
    assert off.on_policy is None and off._on_policy_batch(student, dict(batch), labels, None) is None


def test_on_policy_labels_stop_after_the_first_end_token_and_keep_the_batchs_share(monkeypatch):
    task = CausalLMTask(CausalLMConfig(lmbda=1.0, on_policy_prompt=3, on_policy_new_tokens=4))
    teacher, student = tiny_llama(0), tiny_llama(1).train()
    student.generation_config.eos_token_id = [1, 7]  # two end ids (an instruct model's end of turn and of text)
    distiller = Distiller(LossConfig(alpha=0.0), teacher, None, None, task)
    prompt = torch.tensor([[5, 6, 8], [9, 10, 11]])
    made = torch.tensor([[5, 6, 8, 20, 7, 1, 1], [9, 10, 11, 21, 22, 23, 24]])  # row 0 ends at 7, then padding
    monkeypatch.setattr(student, "generate", lambda **kwargs: made)
    inputs = {"input_ids": torch.cat([prompt, prompt], 1), "attention_mask": torch.ones(2, 6, dtype=torch.long)}
    labels = inputs["input_ids"].clone()  # 2 x 5 shifted labelled tokens
    new_inputs, new_labels, items = distiller._on_policy_batch(student, inputs, labels, 20)
    assert new_labels.tolist() == [[-100, -100, -100, 20, 7, -100, -100], [-100, -100, -100, 21, 22, 23, 24]]
    assert new_inputs["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 0, 0], [1] * 7]
    assert items == round(20 * 6 / 10)  # 6 generated labelled tokens stand in for the batch's 10


def test_the_task_refuses_a_vocabulary_mismatch_and_a_top_k_beyond_the_vocabulary():
    task = CausalLMTask(CausalLMConfig(top_k=8))
    with pytest.raises(DistilError, match="vocabulary"):
        task.adapt_student(tiny_llama(vocab=80), tiny_llama())
    with pytest.raises(DistilError, match=r"causal_lm.top_k=100: larger than the teacher's vocabulary \(64\)"):
        CausalLMTask(CausalLMConfig(top_k=100)).adapt_student(tiny_llama(), tiny_llama())


def test_a_saved_causal_lm_is_recognised_and_a_bad_option_is_refused():
    assert isinstance(task_for_model({"architectures": ["LlamaForCausalLM"]}), CausalLMTask)
    with pytest.raises(Exception, match="divergence"):
        CausalLMConfig(divergence="tvd")
    with pytest.raises(Exception, match="lmbda"):
        CausalLMConfig(lmbda=1.5)


def test_the_signal_readers_store_compact_dtypes():
    task = CausalLMTask(CausalLMConfig(top_k=3))
    readers = task.signals(VOCAB)

    class Out:
        logits = torch.randn(2, 4, VOCAB)

    out = Out()
    top = topk_of(out.logits, 3)
    assert torch.equal(readers["topk_ids"](out).long(), top.ids)
    assert readers["topk_ids"](out).dtype == torch.uint16
    assert readers["topk_logprobs"](out).dtype == torch.float16
    assert torch.allclose(readers["tail"](out), top.tail)


def test_hidden_state_terms_run_on_decoders_and_attention_maps_are_refused_in_one_line():
    """The feature recipes' hidden-state MSE is task-agnostic; attention maps of a rotary (RoPE) decoder are not
    recomputable from its q/k projections, so an attention term is refused before training."""
    teacher = tiny_llama(0, layers=4)
    student = student_from_teacher(teacher, [0, 3]).train()
    distiller = Distiller(LossConfig(alpha=0.0, hidden_weight=1.0), teacher, student, None, CausalLMTask())
    batch = PadCollator(0)([blocks()[i] for i in range(4)])
    labels, idx = batch.pop("labels"), batch.pop("idx")
    with torch.no_grad():
        student.model.layers[1].mlp.down_proj.weight.mul_(3.0)  # the cut student's second layer now differs
    total, parts, _ = distiller.compute(student, batch, labels, idx)
    assert set(parts) == {"ce", "kd", "hidden"} and parts["hidden"].item() > 0
    total.backward()
    assert student.model.layers[0].mlp.up_proj.weight.grad.abs().sum() > 0
    with pytest.raises(DistilError, match="attention_weight"):
        Distiller(LossConfig(alpha=0.0, attention_weight=1.0), teacher, student, None, CausalLMTask())


def test_a_config_student_keeps_the_teachers_family_and_attention_grouping():
    task = CausalLMTask()
    teacher = tiny_llama(0, layers=4)
    spec = type("S", (), {"num_layers": 2, "hidden_size": 16, "num_attention_heads": 2, "intermediate_size": None})
    student = task.student_from_config(teacher.config, spec)
    assert type(student) is type(teacher) and student.config.num_hidden_layers == 2
    assert student.config.vocab_size == VOCAB and student.config.intermediate_size == 32  # the teacher's 2x ratio
    assert student.config.num_key_value_heads == 1  # the teacher's 4 heads : 2 groups
    assert student.lm_head.weight.data_ptr() == student.model.embed_tokens.weight.data_ptr()


def test_a_classifier_folder_is_not_taken_for_a_language_model(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "bert", "architectures": ["BertForSequenceClassification"]}')
    with pytest.raises(DistilError, match="BertForSequenceClassification, not a causal language model"):
        load_causal_lm(tmp_path, tmp_path / "cache")
