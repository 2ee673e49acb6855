from pathlib import Path

import pytest

from distil.cli import _config_from_args, build_parser
from distil.config import ConfigError, DataConfig, LossConfig, RunConfig, from_dict, load_config
from distil.errors import DistilError


def test_embedded_default_is_valid():
    cfg = load_config()
    assert isinstance(cfg, RunConfig)
    assert cfg.data.source == "rotten-tomatoes"
    assert cfg.teacher.train.epochs == 2.0 and cfg.distill.epochs == 2.0
    assert cfg.data.resolved_extra_test_sets == ["vader-tweets", "vader-amazon", "vader-nyt"]
    assert (
        load_config(str(Path(__file__).parents[1] / "configs/default.yaml")) == cfg
    )  # the shipped file spells out the embedded default


def test_yaml_keys_map_onto_fields(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "data:\n  source: bbc-news\n  max_length: 128\nteacher:\n  train:\n    epochs: 1\nloss:\n  alpha: 0.3\n"
    )
    cfg = load_config(str(path))
    assert cfg.data.source == "bbc-news" and cfg.data.max_length == 128
    assert cfg.teacher.train.epochs == 1.0 and isinstance(cfg.teacher.train.epochs, float)
    assert cfg.loss.alpha == 0.3
    assert cfg.teacher.train.learning_rate == 5e-5  # untouched defaults survive the merge


@pytest.mark.parametrize(
    "data, key, fragment",
    [
        ({"data": {"sourec": "x"}}, "data.sourec", "unknown"),
        ({"loss": {"alpha": 1.5}}, "loss.alpha", "[0, 1]"),
        ({"loss": {"kd_temperature": "hot"}}, "loss.kd_temperature", "a number"),
        ({"teacher": {"train": {"batch_size": 0}}}, "teacher.train.batch_size", ">= 1"),
        ({"student": {"layers": "every-third"}}, "student.layers", "every-other"),
        ({"student": {"init": "config"}}, "student.num_layers", "init is config"),
        ({"distill": {"bf16": "yes"}}, "distill.bf16", "true/false"),
        ({"loss": {"soft_loss": "l1"}}, "loss.soft_loss", "'kl'"),
    ],
)
def test_bad_values_name_the_key(data, key, fragment):
    with pytest.raises(DistilError) as err:
        from_dict(RunConfig, data)
    message = str(err.value)
    assert f"'{key}'" in message and fragment in message
    assert "\n" not in message


def test_post_init_names_field():
    with pytest.raises(ConfigError, match="'validation_fraction'"):
        DataConfig(validation_fraction=0.7)
    assert LossConfig(alpha=0.0).alpha == 0.0


def test_cli_flags_override_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("loss:\n  alpha: 0.3\nstudent:\n  layers: [0, 2]\n")
    args = build_parser().parse_args(
        [
            "run",
            str(path),
            "--loss.alpha",
            "0.7",
            "--student.layers",
            "[1, 3]",
            "--teacher.fine_tune",
            "false",
            "--output_dir",
            "x",
        ]
    )
    cfg = _config_from_args(args)
    assert cfg.loss.alpha == 0.7 and cfg.student.layers == [1, 3] and cfg.teacher.fine_tune is False
    assert cfg.output_dir == "x"


def test_string_flag_stays_a_string():
    args = build_parser().parse_args(["run", "--data.source", "123", "--data.labels", "[neg, pos]"])
    cfg = _config_from_args(args)
    assert cfg.data.source == "123" and cfg.data.labels == ["neg", "pos"]


def test_unknown_recipe_or_file():
    with pytest.raises(DistilError, match="no such file and no such recipe"):
        load_config("does-not-exist.yaml")


def test_shipped_example_configs_load():
    from pathlib import Path

    for path in sorted(Path(__file__).parents[1].glob("configs/*.yaml")):
        load_config(str(path))
