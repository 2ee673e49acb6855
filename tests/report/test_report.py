"""The report's verdict: an exact paired (McNemar) test of distilled student vs baseline on the same examples."""

import numpy as np
import pytest

from distil.report.report import mcnemar, verdicts


def _pairs(a_only: int, b_only: int, both: int = 50, neither: int = 20) -> tuple[np.ndarray, np.ndarray]:
    a = np.array([True] * a_only + [False] * b_only + [True] * both + [False] * neither)
    b = np.array([False] * a_only + [True] * b_only + [True] * both + [False] * neither)
    return a, b


def test_mcnemar_closed_form():
    # 10 vs 2 discordant: P(X <= 2 | n=12, 1/2) = (1 + 12 + 66) / 4096; two-sided doubles it
    assert mcnemar(*_pairs(10, 2)) == {"a_only": 10, "b_only": 2, "p_value": pytest.approx(2 * 79 / 4096)}
    assert mcnemar(*_pairs(2, 10))["p_value"] == pytest.approx(2 * 79 / 4096)
    assert mcnemar(*_pairs(5, 5))["p_value"] == 1.0  # capped
    assert mcnemar(*_pairs(0, 0)) == {"a_only": 0, "b_only": 0, "p_value": 1.0}  # identical predictions


def _report(paired: dict | None, student: float = 0.85, baseline: float = 0.84) -> dict:
    report = {
        "data": {"splits": {"test": 1000}, "extra_test_sets": {}},
        "models": {"student": {"test": {"accuracy": student}}, "baseline": {"test": {"accuracy": baseline}}},
    }
    if paired is not None:
        report["paired"] = {"test": paired}
    return report


def test_verdict_reads_the_paired_test():
    better = verdicts(_report(mcnemar(*_pairs(30, 10))))[0]
    assert better.endswith(": better") and "30 vs 10" in better and "McNemar p=" in better
    assert verdicts(_report(mcnemar(*_pairs(10, 30)), 0.84, 0.86))[0].endswith(": worse")
    assert verdicts(_report(mcnemar(*_pairs(12, 10))))[0].endswith(": within noise")


def test_a_report_without_paired_results_uses_the_unpaired_rule():
    line = verdicts(_report(None))[0]
    assert "standard error of the difference" in line and line.endswith(": within noise")
    assert verdicts({"data": {}, "models": {"student": {}}}) == []


def test_the_report_names_how_the_student_was_built_and_every_weight_in_use():
    from distil.config import load_config
    from distil.report.report import _loss_summary, _student_summary

    cfg = load_config("tinybert")
    assert _student_summary(cfg.student) == {
        "init": "config", "num_layers": 4, "hidden_size": 312, "num_attention_heads": 12, "intermediate_size": 1200
    }  # fmt: skip
    assert _loss_summary(cfg)["stages"] == ["general", "task-intermediate", "task-prediction"]
    cfg = load_config(None, {"student": {"init": "pretrained", "pretrained": "x"}, "loss": {"hidden_weight": 2.0}})
    assert _student_summary(cfg.student) == {"init": "pretrained", "pretrained": "x", "allow_different_vocab": False}
    loss = _loss_summary(cfg)
    assert loss["hidden_weight"] == 2.0 and loss["layer_map"] == "uniform" and "attention_weight" not in loss


def test_latency_inputs_never_exceed_what_a_model_can_read(tiny_bert):
    from distil.report.evaluate import latency_table

    table = latency_table({"tiny": tiny_bert}, [1], seq_len=4096, repeats=1, rounds=1)  # 128 positions
    assert table["tiny"][1] > 0
