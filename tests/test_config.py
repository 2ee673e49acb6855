from pathlib import Path

import pytest
import yaml

from distil.cli import _config_from_args, build_parser, main
from distil.config import (
    ConfigError,
    DataConfig,
    LossConfig,
    RunConfig,
    from_dict,
    load_config,
    parse_flag_value,
    run_flag_specs,
)
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


@pytest.mark.parametrize("text", ["2e-5", "2E-5", "1e+1", "5E1", ".5e-2", "1.5e-4", "3"])
def test_scientific_notation_is_a_number(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(f"distill:\n  warmup_ratio: 0.2\n  epochs: {text}\nloss:\n  kd_temperature: {text}\n")
    assert yaml.safe_load(path.read_text())["distill"]["epochs"] == yaml.safe_load(text)  # YAML 1.1 keeps '2e-5'
    cfg = load_config(str(path))
    assert cfg.distill.epochs == float(text) and isinstance(cfg.distill.epochs, float)
    assert cfg.loss.kd_temperature == float(text)


def test_scientific_notation_on_the_cli():
    args = build_parser().parse_args(
        [
            "run",
            "--distill.learning_rate",
            "2e-5",
            "--teacher.train.learning_rate",
            "3E-5",
            "--teacher.weights",
            "[1e0]",
        ]
    )
    cfg = _config_from_args(args)
    assert cfg.distill.learning_rate == 2e-5 and cfg.teacher.train.learning_rate == 3e-5
    assert cfg.teacher.weights == [1.0]
    assert parse_flag_value("distill.learning_rate", "2e-5", float) == "2e-5"  # the string _coerce accepts


@pytest.mark.parametrize(
    "data, key, fragment",
    [
        ({"distill": {"learning_rate": "nan"}}, "distill.learning_rate", "a number"),
        ({"distill": {"learning_rate": float("nan")}}, "distill.learning_rate", "a number"),
        ({"loss": {"hidden_weight": float("inf")}}, "loss.hidden_weight", "a number"),
        ({"distill": {"learning_rate": "2e-5x"}}, "distill.learning_rate", "a number"),
        ({"distill": {"batch_size": "1e3"}}, "distill.batch_size", "an int"),  # int fields stay strict
        ({"distill": {"batch_size": 1.5}}, "distill.batch_size", "an int"),
    ],
)
def test_non_numbers_and_non_finite_numbers_are_refused(data, key, fragment):
    with pytest.raises(ConfigError) as err:
        from_dict(RunConfig, data)
    assert f"'{key}'" in str(err.value) and fragment in str(err.value)


def test_validation_fraction_zero_is_refused():
    # A source with its own validation split ignores the fraction, so refusing 0 costs nobody anything.
    with pytest.raises(ConfigError, match=r"'data.validation_fraction': got 0.0; expected 0 < x < 0.5"):
        from_dict(RunConfig, {"data": {"validation_fraction": 0}})


def test_cli_refuses_bad_data_config_with_status_2(tmp_path, capsys):
    assert main(["run", "--data.validation_fraction", "0", "--output_dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "'data.validation_fraction'" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "data, key, fragment",
    [
        ({"split_seed": -1}, "data.split_seed", "an int >= 0"),
        ({"label_column": "text"}, "data.label_column", "other than the text columns"),
        ({"text_pair_column": "b", "label_column": "b"}, "data.label_column", "other than the text columns"),
        ({"encoding": "latin-9x"}, "data.encoding", "a codec name"),
    ],
)
def test_data_config_refuses(data, key, fragment):
    with pytest.raises(ConfigError) as err:
        from_dict(RunConfig, {"data": data})
    assert f"'{key}'" in str(err.value) and fragment in str(err.value)


def test_data_encoding_is_a_field_with_help():
    assert DataConfig(encoding="latin-1").encoding == "latin-1"
    help_text = {key: doc for key, _, doc in run_flag_specs()}["data.encoding"]
    assert "latin-1" in help_text


def test_int_label_names_in_yaml_and_on_the_cli(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  labels: [0, 1, 2]\n")
    assert load_config(str(path)).data.labels == ["0", "1", "2"]
    cfg = _config_from_args(build_parser().parse_args(["run", "--data.labels", "[0, 1]"]))
    assert cfg.data.labels == ["0", "1"]


def test_label_names_yaml_reads_as_booleans_say_to_quote_them(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  labels: [yes, no]\n")
    with pytest.raises(
        ConfigError, match=r"'data.labels': got \[True, False\]; expected null or a list of strings \(quote"
    ):
        load_config(str(path))
    path.write_text("data:\n  labels: ['yes', 'no']\n")
    assert load_config(str(path)).data.labels == ["yes", "no"]
