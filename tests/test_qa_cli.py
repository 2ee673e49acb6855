"""Question answering end to end through the real CLI on a few hundred real SQuAD questions and a tiny teacher:
teacher -> per-window start/end soft labels -> student + baseline -> EM/F1 report on SQuAD dev and on an extra test
file; then predict and export."""

from __future__ import annotations

import json

import pytest
from conftest import small_run_flags

from distil.cli import main
from distil.data.squad import SQUAD_FILES, squad_dir

pytestmark = pytest.mark.skipif(
    not all((squad_dir() / f).is_file() for f in SQUAD_FILES.values()),
    reason="built-in SQuAD files missing (scripts/setup.sh extracts them)",
)

QA_FLAGS = [
    "--data.max_length", "64", "--data.doc_stride", "16", "--data.max_question_length", "16",
    "--data.max_train_samples", "200", "--data.max_eval_samples", "40", "--data.max_extra_test_samples", "30",
    "--teacher.train.epochs", "1", "--distill.epochs", "1", "--teacher.train.learning_rate", "0.003",
    "--distill.learning_rate", "0.003", "--eval.latency_repeats", "1", "--eval.latency_batch_sizes", "[1]",
]  # fmt: skip


EXTRA_ARTICLES = {
    "Tin": (
        "Tin is a chemical element with the symbol Sn and atomic number 50. It is a silvery metal.",
        [
            ("What is the symbol of tin?", "Sn"),
            ("What is the atomic number of tin?", "50"),
            ("Which colour?", "silvery"),
        ],
    ),
    "Paris": (
        "Paris is the capital of France. The Eiffel Tower was completed in 1889.",
        [("What is the capital of France?", "Paris"), ("When was the Eiffel Tower completed?", "1889")],
    ),
}


def _extra_test_file(path) -> str:
    """A SQuAD JSON file of 5 questions with right offsets and one whose answer misses its offset."""
    data = []
    for title, (context, pairs) in EXTRA_ARTICLES.items():
        qas = [
            {"id": f"{title}-{i}", "question": q, "answers": [{"text": a, "answer_start": context.index(a)}]}
            for i, (q, a) in enumerate(pairs)
        ]
        data.append({"title": title, "paragraphs": [{"context": context, "qas": qas}]})
    off = {"id": "off", "question": "Tin?", "answers": [{"text": "Sn", "answer_start": 0}]}  # "Ti" at offset 0
    data[0]["paragraphs"][0]["qas"].append(off)
    path.write_text(json.dumps({"version": "1.1", "data": data}))
    return str(path)


def _flags(out, cache) -> list[str]:
    flags = small_run_flags(out, cache)
    for key in ("--data.max_train_samples", "--data.max_eval_samples", "--data.max_length"):
        i = flags.index(key)
        del flags[i : i + 2]
    return flags + QA_FLAGS


@pytest.fixture(scope="module")
def qa_run(tmp_path_factory, _tiny_bert_session, tokenizer):
    root = tmp_path_factory.mktemp("qa")
    teacher = root / "tiny-teacher"
    _tiny_bert_session.save_pretrained(teacher)  # a sequence classifier: the run puts a span head on it
    tokenizer.save_pretrained(teacher)
    out = root / "run"
    extra = ["--data.extra_test_sets", f"[{_extra_test_file(root / 'extra.json')}]"]
    assert main(["run", "qa", "--teacher.model", str(teacher), *_flags(out, root / "cache"), *extra]) == 0
    return out


def test_the_report_holds_squad_em_and_f1_on_dev_and_an_extra_test_file(qa_run):
    report = json.loads((qa_run / "report.json").read_text())
    assert report["task"]["name"] == "question-answering" and report["task"]["metric"] == "f1"
    assert report["data"]["splits"] == {"train": 200, "validation": 40, "test": 40}
    extra = str(qa_run.parent / "extra.json")
    assert report["data"]["extra_test_sets"] == {extra: 5}
    assert report["data"]["dropped"] == {extra: {"answers_offset_mismatch": 1, "questions_without_answer": 1}}
    for role in ("teacher", "student", "baseline"):
        for split in ("test", extra):
            scores = report["models"][role][split]
            assert set(scores) == {"f1", "exact_match"} and 0.0 <= scores["exact_match"] <= scores["f1"] <= 1.0
    paired = report["paired"]["test"]
    assert paired["a_only"] + paired["b_only"] <= 40  # one unit per question, not per window
    md = (qa_run / "report.md").read_text()
    assert md.count("| model | F1 | EM | of teacher |") == 1 and "dropped while reading" in md
    assert "questions (exact match) only one of the two gets right" in md
    soft = json.loads((qa_run / "soft_labels.json").read_text())
    assert soft["shape"][1] == 2  # flat (sum of window lengths, start/end)
    saved = json.loads((qa_run / "student" / "config.json").read_text())
    assert saved["distil_qa"] == {"doc_stride": 16, "max_question_length": 16, "max_answer_length": 30,
                                  "max_length": 64}  # fmt: skip


def test_predict_answers_with_a_span_of_the_context(qa_run, capsys):
    context = "The Eiffel Tower was completed in 1889 in Paris. It is 330 metres tall."
    assert main(["predict", str(qa_run / "student"), "--question", "When?", "--context", context, "--json"]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["question"] == "When?" and 0 <= line["start"] < line["end"] <= len(context)
    assert context[line["start"] : line["end"]] == line["answer"] and 0.0 < line["score"] <= 1.0


def test_predict_refuses_half_a_question(qa_run, capsys):
    assert main(["predict", str(qa_run / "student"), "--question", "When?"]) == 2
    assert "--question and --context" in capsys.readouterr().err


def test_export_checks_onnx_and_scores_squad_f1_on_the_test_split(qa_run, tmp_path, capsys):
    out = tmp_path / "exported"
    assert main(["export", str(qa_run / "student"), str(out)]) == 0
    printed = capsys.readouterr().out
    assert "40 test questions" in printed
    figures = json.loads((out / "export.json").read_text())
    variants = figures.get("variants", figures)
    hf = variants["hf"]
    report = json.loads((qa_run / "report.json").read_text())
    assert hf["f1"] == pytest.approx(report["models"]["student"]["test"]["f1"], abs=1e-6)
    assert variants["onnx"]["f1"] == pytest.approx(hf["f1"], abs=0.03)
    from distil.deploy.serving import load_student

    pair = [("When was it completed?", "The Eiffel Tower was completed in 1889 in Paris.")]
    onnx, torch_out = load_student(out / "onnx").predict(pair)[0], load_student(qa_run / "student").predict(pair)[0]
    assert onnx["answer"] == torch_out["answer"]


def test_tinybert_recipe_runs_on_question_answering(tmp_path, _tiny_bert_session, tokenizer):
    teacher = tmp_path / "teacher"
    _tiny_bert_session.save_pretrained(teacher)
    tokenizer.save_pretrained(teacher)
    out = tmp_path / "run"
    flags = _flags(out, tmp_path / "cache")
    flags[flags.index("--data.max_train_samples") + 1] = "64"
    flags[flags.index("--data.max_eval_samples") + 1] = "16"
    args = ["run", "tinybert", "--task", "question-answering", "--data.source", "squad",
            "--data.extra_test_sets", "[]", "--teacher.model", str(teacher), *flags, "--baseline", "false",
            "--student.hidden_size", "32", "--student.num_attention_heads", "4", "--student.intermediate_size", "64",
            "--general_data.max_rows", "64", "--augment.num_variants", "1"]  # fmt: skip
    assert main(args) == 0
    history = json.loads((out / "student" / "training_history.json").read_text())
    assert [s["name"] for s in history["stages"]] == ["general", "task-intermediate", "task-prediction"]
    augmented = history["stages"][1]
    assert augmented["data"] == "train_augmented" and augmented["train_rows"] > 64  # windows of questions + variants
    report = json.loads((out / "report.json").read_text())
    assert report["task"]["name"] == "question-answering" and "f1" in report["models"]["student"]["test"]


def test_a_window_without_room_for_the_context_is_refused_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "qa", "--output_dir", str(out), "--data.doc_stride", "250"]) == 2
    assert "data.doc_stride=250: must be in 0..204" in capsys.readouterr().err
    assert not out.exists()


def test_a_student_with_another_tokenizer_is_refused_before_the_teacher_trains(tmp_path, capsys):
    from transformers import BertTokenizerFast

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "a", "paris"]) + "\n")
    other = tmp_path / "other-tokenizer"
    BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(other)
    out = tmp_path / "run"
    args = ["run", "qa", "--output_dir", str(out), "--student.init", "pretrained", "--student.pretrained", str(other),
            "--student.allow_different_vocab", "true"]  # fmt: skip
    assert main(args) == 2
    assert "cuts rows per tokenizer; use a student with the teacher's vocabulary" in capsys.readouterr().err
    assert not out.exists()
