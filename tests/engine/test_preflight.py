"""Everything checkable before training is checked before training: folders, resumed runs, the model pair.

Each bad input ends with exit status 2, one line on stderr, and no teacher trained.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import small_run_flags

from distil.cli import main
from distil.config import RunConfig, dump_yaml, load_config
from distil.engine.preflight import check_same_run, config_differences
from distil.errors import DistilError


@pytest.fixture
def teacher_dir(tiny_teacher_dir):
    return tiny_teacher_dir  # conftest's tiny BERT teacher folder


def _run(teacher, out, cache, *extra) -> list[str]:
    return ["run", "--teacher.model", teacher, *small_run_flags(out, cache), *extra]


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("distil: error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def test_output_dir_under_a_file_is_refused_before_anything_runs(teacher_dir, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert main(_run(teacher_dir, tmp_path / "file" / "run", tmp_path / "cache")) == 2
    err = _one_line_error(capsys)
    assert "config key 'output_dir'" in err and "not a writable directory" in err


def test_cache_dir_under_proc_is_refused_before_the_teacher_trains(teacher_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_run(teacher_dir, out, "/proc/distil-cache")) == 2
    err = _one_line_error(capsys)
    assert "config key 'cache_dir': '/proc/distil-cache' is not a writable directory" in err
    assert not out.exists()


def test_an_immutable_output_dir_is_refused(teacher_dir, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    if subprocess.run(["chattr", "+i", str(locked)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available here")
    try:
        assert main(_run(teacher_dir, locked, tmp_path / "cache")) == 2
        assert "config key 'output_dir'" in _one_line_error(capsys)
    finally:
        subprocess.run(["chattr", "-i", str(locked)], check=True)


def test_a_layer_list_beyond_the_teachers_depth_is_refused_before_the_teacher_trains(teacher_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_run(teacher_dir, out, tmp_path / "cache", "--student.layers", "[0, 9]")) == 2
    err = _one_line_error(capsys)
    assert "teacher layer 9 is out of range; valid layers are 0..3" in err
    assert not out.exists()


def test_a_recipe_term_the_pair_cannot_run_is_refused_before_the_teacher_trains(teacher_dir, tmp_path, capsys):
    out = tmp_path / "run"
    student = [
        "--student.hidden_size",
        "32",
        "--student.num_attention_heads",
        "2",
        "--student.intermediate_size",
        "64",
    ]
    assert (
        main(["run", "tinybert", "--teacher.model", teacher_dir, *small_run_flags(out, tmp_path / "c"), *student]) == 2
    )
    err = _one_line_error(capsys)
    assert "stage 'general': loss.attention_weight cannot run on this teacher/student pair" in err
    assert "2 heads and the teacher 4" in err
    assert not out.exists()


def test_a_failure_before_any_stage_leaves_no_run_behind(teacher_dir, tmp_path, capsys):
    out = tmp_path / "run"
    args = _run(teacher_dir, out, tmp_path / "cache", "--data.source", str(tmp_path / "missing.csv"))
    for _ in range(2):  # the identical command gives the same answer, not "holds an unfinished run"
        assert main(args) == 2
        assert "missing.csv' does not exist" in _one_line_error(capsys)
    assert not out.exists()  # nothing left behind


def _started_run(out: Path, cfg: RunConfig) -> None:
    out.mkdir(parents=True)
    (out / "config.yaml").write_text(dump_yaml(cfg))
    (out / "work" / "teacher").mkdir(parents=True)  # a stage started


def test_resume_with_another_data_source_or_teacher_is_refused(teacher_dir, tmp_path, capsys):
    out = tmp_path / "run"
    cfg = load_config(None, {"output_dir": str(out), "cache_dir": str(tmp_path / "cache")})
    cfg.teacher.model = teacher_dir
    _started_run(out, cfg)
    saved = (out / "config.yaml").read_text()
    flags = ["--output_dir", str(out), "--resume"]
    assert main(["run", *flags, "--data.source", "bbc-news", "--teacher.model", "other/teacher"]) == 2
    err = _one_line_error(capsys)
    assert "data.source 'rotten-tomatoes' -> 'bbc-news'" in err and "teacher.model" in err
    assert (out / "config.yaml").read_text() == saved  # not overwritten
    assert main(["student", *flags, "--student.layers", "[0, 1]"]) == 2
    assert "student.layers 'every-other' -> [0, 1]" in _one_line_error(capsys)
    assert main(["student", "--output_dir", str(out), "--data.max_length", "32"]) == 2  # a stage command reusing
    assert "data.max_length 64 -> 32" in _one_line_error(capsys)  # the teacher may not change its data


def test_keys_that_are_safe_to_change_on_resume():
    saved = RunConfig()
    wanted = load_config(
        None, {"eval": {"latency_repeats": 3}, "cache_dir": "/tmp/elsewhere", "distill": {"eval_batch_size": 8}}
    )
    assert set(config_differences(saved, wanted)) == {"eval.latency_repeats", "cache_dir", "distill.eval_batch_size"}
    check_same_run(saved, wanted, Path("run"), resume=True)  # allowed
    with pytest.raises(DistilError, match="distill.learning_rate 0.0001 -> 0.0002"):
        check_same_run(saved, load_config(None, {"distill": {"learning_rate": 2e-4}}), Path("run"), resume=True)


def test_a_run_folder_with_only_config_yaml_is_not_a_run(teacher_dir, tmp_path, capsys):
    """A folder left by an older distil (config.yaml written before the first stage failed) runs again as is."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text(dump_yaml(RunConfig()))
    args = _run(teacher_dir, out, tmp_path / "cache", "--data.source", str(tmp_path / "missing.csv"))
    assert main(args) == 2
    assert "holds an unfinished run" not in _one_line_error(capsys)


def test_mlm_augmentation_without_a_model_is_refused_before_the_teacher_trains(teacher_dir, tmp_path, capsys):
    out = tmp_path / "run"
    student = [
        "--student.hidden_size",
        "32",
        "--student.num_attention_heads",
        "4",
        "--student.intermediate_size",
        "64",
    ]
    args = ["run", "tinybert", "--teacher.model", teacher_dir, *small_run_flags(out, tmp_path / "c"), *student]
    assert main([*args, "--augment.method", "mlm"]) == 2
    assert "config key 'augment.mlm_model': got None; expected a masked-LM path when method is mlm" in (
        _one_line_error(capsys)
    )
    assert not out.exists()
