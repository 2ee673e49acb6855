"""Sentence embeddings end to end through the real CLI: a tiny sentence-transformers teacher on the real built-in
corpus -> cached teacher embeddings -> a new narrow student (2 x 16, with a learned projection to the teacher's 32
dimensions; + the same student untrained as the baseline) -> the report on Lee STS, SQuAD and BBC retrieval and
fidelity; then the student in sentence-transformers, predict and export."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import tiny_sentence_encoder

from distil.cli import main
from distil.data.embedding_sets import gensim_test_data
from distil.data.squad import SQUAD_FILES, squad_dir
from distil.errors import DistilError


def _has_data() -> bool:
    try:
        lee = (gensim_test_data() / "lee.cor").is_file()
    except DistilError:  # gensim not installed
        return False
    return lee and all((squad_dir() / f).is_file() for f in SQUAD_FILES.values())


pytestmark = pytest.mark.skipif(
    not _has_data(),
    reason="built-in SQuAD files or gensim's Lee data missing (scripts/setup.sh installs them)",
)

FLAGS = [
    "--student.init", "config", "--student.num_layers", "2", "--student.hidden_size", "16",
    "--student.num_attention_heads", "2", "--student.intermediate_size", "32",
    "--data.max_train_samples", "192", "--data.max_eval_samples", "30",
    "--data.max_length", "32", "--embedding.max_queries", "20", "--embedding.bbc_articles", "12",
    "--embedding.eval_max_length", "64", "--distill.epochs", "1", "--distill.learning_rate", "0.003",
    "--distill.batch_size", "16", "--eval.latency_repeats", "1", "--eval.latency_batch_sizes", "[1]",
]  # fmt: skip


@pytest.fixture(scope="module")
def emb_run(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("emb")
    teacher = root / "tiny-teacher"
    tiny_sentence_encoder().save_pretrained(teacher)
    tokenizer.save_pretrained(teacher)
    out = root / "run"
    flags = ["--teacher.model", str(teacher), "--output_dir", str(out), "--cache_dir", str(root / "cache")]
    assert main(["run", "embeddings", *flags, *FLAGS]) == 0
    return out


def test_the_report_scores_sts_retrieval_and_fidelity(emb_run):
    report = json.loads((emb_run / "report.json").read_text())
    assert report["task"]["name"] == "embeddings" and report["task"]["headline_set"] == "lee"
    assert report["data"]["splits"] == {"train": 192, "validation": 30, "test": 30}
    assert report["data"]["extra_test_sets"] == {"lee": 50, "squad": 20 + 2_067, "bbc": 24}  # SQuAD dev paragraphs
    for role in ("teacher", "student", "baseline"):
        m = report["models"][role]
        assert -1 <= m["lee"]["spearman"] <= 1 and m["lee"]["pairs"] == 1225
        assert 0 <= m["squad"]["recall_at_1"] <= m["squad"]["recall_at_10"] <= 1 and m["squad"]["queries"] == 20
        assert 0 <= m["test"]["overlap_at_10"] <= 1
    assert report["models"]["teacher"]["test"]["overlap_at_10"] == 1.0
    assert report["models"]["teacher"]["lee"]["cosine_to_teacher"] == pytest.approx(1.0)
    assert set(report["paired"]) == {"squad", "bbc"}  # per-query hits; a correlation has no paired test
    md = (emb_run / "report.md").read_text()
    assert "| model | Lee Spearman | SQuAD R@1 | SQuAD R@10 | BBC R@1 | BBC R@10 | test overlap@10 |" in md
    history = json.loads((emb_run / "baseline" / "training_history.json").read_text())
    assert history["loss"] == "none (untrained)" and "untrained" in report["baseline"]
    teacher = json.loads((emb_run / "teacher" / "training_history.json").read_text())
    assert teacher["fine_tuned"] is False


def test_the_distilled_student_moved_towards_the_teacher(emb_run):
    report = json.loads((emb_run / "report.json").read_text())
    s, b = report["models"]["student"]["test"], report["models"]["baseline"]["test"]
    assert "cosine_to_teacher" not in b  # the untrained baseline keeps its 16 dimensions: no random projection
    assert s["cosine_to_teacher"] > 0.5  # a random 16 -> 32 projection would give about 0
    history = json.loads((emb_run / "student" / "training_history.json").read_text())
    losses = [e["loss_mse"] for e in history["log_history"] if "loss_mse" in e]
    assert len(losses) >= 2 and losses[-1] < losses[0]
    assert (emb_run / "student" / "2_Dense" / "model.safetensors").is_file()  # the projection is kept


def test_the_student_loads_in_sentence_transformers_with_the_same_vectors(emb_run, capsys):
    from sentence_transformers import SentenceTransformer

    texts = ["the market fell", "a fine film"]
    theirs = SentenceTransformer(str(emb_run / "student"), device="cpu").encode(texts)
    capsys.readouterr()
    assert main(["predict", str(emb_run / "student"), *texts, "--json"]) == 0
    ours = np.array([json.loads(line)["embedding"] for line in capsys.readouterr().out.splitlines()])
    assert ours.shape == (2, 32)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    assert main(["predict", str(emb_run / "student"), "the market fell"]) == 0
    assert capsys.readouterr().out.startswith(f"32-d\t[{theirs[0][0]:.4f}, ")


def test_export_scores_every_variant_on_lee(emb_run, tmp_path, capsys):
    out = tmp_path / "exports"
    assert main(["export", str(emb_run / "student"), str(out)]) == 0
    assert "| variant | Lee Spearman |" in capsys.readouterr().out
    results = json.loads((out / "export.json").read_text())
    assert {"hf", "onnx", "onnx-int8"} <= set(results)
    assert results["onnx"]["spearman"] == pytest.approx(results["hf"]["spearman"], abs=1e-3)
    assert results["onnx"]["max_abs_diff"] < 1e-4
