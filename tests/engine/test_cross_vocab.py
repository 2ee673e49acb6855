"""A pretrained student whose tokenizer differs from the teacher's (MiniLM student, MPNet teacher): each model reads
its own tokens; token-level losses train on rows both split into the same word pieces."""

import json

import pytest
import torch
from conftest import small_run_flags
from transformers import AutoTokenizer, BertTokenizerFast

from distil.cli import main
from distil.config import LossConfig
from distil.data import PadCollator, add_teacher_tokens, to_dataset
from distil.data.prepare import tokens_align
from distil.engine.distiller import Distiller
from distil.errors import DistilError

TEXTS = ["a good film", "the plot drags , and the ending is a mess", "great"]


def _permuted_tokenizer(directory, tokenizer):
    """The MiniLM word pieces under other ids ([PAD] moved to id 5, a block of ids reversed): same splits."""
    vocab = [t for t, _ in sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])]
    vocab[0], vocab[5] = vocab[5], vocab[0]
    vocab[1000:29000] = vocab[1000:29000][::-1]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    return BertTokenizerFast.from_pretrained(str(directory), do_lower_case=True)


def _word_tokenizer(directory):
    """Whole words only: almost nothing splits like WordPiece."""
    directory.mkdir(parents=True, exist_ok=True)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "film", "good", "bad"]
    (directory / "vocab.txt").write_text("\n".join(words) + "\n", encoding="utf-8")
    return BertTokenizerFast.from_pretrained(str(directory))


@pytest.fixture
def permuted(tmp_path, tokenizer):
    return _permuted_tokenizer(tmp_path / "permuted", tokenizer)


def _frame():
    import pandas as pd

    return pd.DataFrame({"text": TEXTS, "label": [1, 0, 1]})


def test_student_rows_carry_both_tokenisations_and_pad_with_each_pad_id(tokenizer, permuted):
    teacher_ds, student_ds = to_dataset(_frame(), tokenizer, 16), to_dataset(_frame(), permuted, 16)
    both = add_teacher_tokens(student_ds, teacher_ds, permuted, tokenizer)
    assert both["input_ids"] == student_ds["input_ids"] != teacher_ds["input_ids"]
    assert both["teacher_input_ids"] == teacher_ds["input_ids"]
    assert both["aligned"] == [True, True, True]
    batch = PadCollator(permuted.pad_token_id, teacher_pad_token_id=tokenizer.pad_token_id)([both[0], both[1]])
    assert permuted.pad_token_id == 5 and tokenizer.pad_token_id == 0
    assert batch["input_ids"][0, -1] == 5 and batch["teacher_input_ids"][0, -1] == 0
    assert batch["teacher_attention_mask"].tolist() == batch["attention_mask"].tolist()
    assert "aligned" not in batch


def test_word_pieces_decide_alignment_not_lengths(tokenizer, tmp_path):
    words = _word_tokenizer(tmp_path / "words")
    ids_w, ids_t = words("the film plot")["input_ids"], tokenizer("the film plot")["input_ids"]
    assert len(ids_w) == len(ids_t)  # [CLS] the film [UNK] [SEP] vs [CLS] the film plot [SEP]
    assert not tokens_align(words, tokenizer, ids_w, ids_t)
    assert tokens_align(words, tokenizer, words("the film")["input_ids"], tokenizer("the film")["input_ids"])
    with pytest.raises(DistilError, match="different rows"):
        add_teacher_tokens(
            to_dataset(_frame().head(2), words, 16), to_dataset(_frame(), tokenizer, 16), words, tokenizer
        )


def test_token_level_terms_refuse_a_misaligned_batch(make_tiny_bert):
    teacher, student = make_tiny_bert(hidden_size=48), make_tiny_bert()
    distiller = Distiller(LossConfig(hidden_weight=1.0), teacher, student.train())
    inputs = {"input_ids": torch.tensor([[101, 7, 102]]), "attention_mask": torch.ones(1, 3, dtype=torch.long)}
    teacher_inputs = {
        "teacher_input_ids": torch.tensor([[101, 7, 8, 102]]),
        "teacher_attention_mask": torch.ones(1, 4),
    }
    with pytest.raises(DistilError, match="differ in length"):
        distiller.compute(student, {**inputs, **teacher_inputs}, torch.tensor([1]), None)
    total, parts, _ = distiller.compute(
        student, {**inputs, "teacher_input_ids": torch.tensor([[101, 9, 102]])}, torch.tensor([1]), None
    )
    assert set(parts) == {"ce", "kd", "hidden"} and torch.isfinite(total)


def _run_args(teacher_dir, student_dir, out, *extra):
    return [
        "run",
        "--teacher.model",
        str(teacher_dir),
        "--teacher.fine_tune",
        "false",
        "--student.init",
        "pretrained",
        "--student.pretrained",
        str(student_dir),
        "--student.allow_different_vocab",
        *small_run_flags(out, out.parent / "cache"),
        "--data.extra_test_sets",
        "[]",
        "--distill.epochs",
        "1",
        "--baseline",
        "false",
        "--eval.latency_repeats",
        "1",
        "--eval.latency_batch_sizes",
        "[1]",
        *extra,
    ]


def test_a_run_with_two_tokenizers_trains_hidden_states_and_saves_the_students_tokenizer(
    tmp_path, tokenizer, permuted, make_tiny_bert, capsys
):
    teacher_dir, student_dir = tmp_path / "teacher", tmp_path / "student-init"
    make_tiny_bert(hidden_size=48).save_pretrained(teacher_dir)
    tokenizer.save_pretrained(teacher_dir)
    make_tiny_bert().save_pretrained(student_dir)
    permuted.save_pretrained(student_dir)
    out = tmp_path / "run"
    assert main(_run_args(teacher_dir, student_dir, out, "--loss.hidden_weight", "1.0")) == 0
    printed = capsys.readouterr().out
    assert "each reads its own tokens" in printed
    assert "token-level terms with two tokenizers: 64 of 64 rows hold the same word pieces" in printed
    history = json.loads((out / "student" / "training_history.json").read_text())
    assert history["stages"][0]["train_rows"] == 64  # logits from the soft-label cache, hidden states live
    assert any("loss_hidden" in e for e in history["log_history"])
    saved = AutoTokenizer.from_pretrained(out / "student")
    assert saved.get_vocab() == permuted.get_vocab() != tokenizer.get_vocab()
    assert AutoTokenizer.from_pretrained(out / "teacher").get_vocab() == tokenizer.get_vocab()
    report = json.loads((out / "report.json").read_text())
    assert 0.0 <= report["models"]["student"]["test"]["accuracy"] <= 1.0


def test_a_run_whose_tokenizers_never_align_refuses_token_level_terms(tmp_path, tokenizer, make_tiny_bert, capsys):
    teacher_dir, student_dir = tmp_path / "teacher", tmp_path / "student-init"
    make_tiny_bert(hidden_size=48).save_pretrained(teacher_dir)
    tokenizer.save_pretrained(teacher_dir)
    make_tiny_bert().save_pretrained(student_dir)
    _word_tokenizer(student_dir).save_pretrained(student_dir)
    out = tmp_path / "run"
    code = main(_run_args(teacher_dir, student_dir, out, "--loss.hidden_weight", "1.0"))
    err = capsys.readouterr().err
    assert code != 0 and "no training row holds the same word pieces" in err
