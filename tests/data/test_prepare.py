import json

import pandas as pd
import pytest

from distil.config import DataConfig
from distil.data import PadCollator, load_source, prepare_data, stratified_split, to_dataset
from distil.errors import DistilError


def _frame(n=60):
    return pd.DataFrame(
        {
            "review": [f"text number {i} is {'good' if i % 3 else 'bad'}" for i in range(n)],
            "y": ["pos" if i % 3 else "neg" for i in range(n)],
        }
    )


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "parquet", "saved"])
def test_file_formats(tmp_path, fmt):
    df = _frame()
    path = tmp_path / f"d.{fmt}"
    if fmt == "csv":
        df.to_csv(path, index=False)
    elif fmt == "tsv":
        df.to_csv(path, sep="\t", index=False)
    elif fmt == "jsonl":
        df.to_json(path, orient="records", lines=True)
    elif fmt == "parquet":
        df.to_parquet(path)
    else:
        from datasets import Dataset, DatasetDict

        path = tmp_path / "saved"
        DatasetDict({"train": Dataset.from_pandas(df), "test": Dataset.from_pandas(df.iloc[:9])}).save_to_disk(path)
    data = prepare_data(DataConfig(source=str(path), text_column="review", label_column="y"))
    assert data.label_names == ["neg", "pos"]
    assert sum(len(v) for k, v in data.splits.items() if k != "test") + len(data.splits["test"]) >= 60
    assert set(data.splits) == {"train", "validation", "test"}
    if fmt == "saved":
        assert len(data.splits["test"]) == 9  # the source's own test split is kept


def test_split_is_stratified_and_deterministic():
    df = pd.DataFrame({"text": [f"t{i}" for i in range(1000)], "label": ["a"] * 700 + ["b"] * 300})
    one = stratified_split(df, {"validation": 0.1, "test": 0.1}, seed=0)
    two = stratified_split(df, {"validation": 0.1, "test": 0.1}, seed=0)
    other = stratified_split(df, {"validation": 0.1, "test": 0.1}, seed=1)
    assert one["test"]["text"].tolist() == two["test"]["text"].tolist()
    assert one["test"]["text"].tolist() != other["test"]["text"].tolist()
    assert (one["test"]["label"] == "a").sum() == 70 and (one["test"]["label"] == "b").sum() == 30
    all_rows = pd.concat(one.values())["text"]
    assert all_rows.is_unique and len(all_rows) == 1000


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(DistilError, match="does not exist"):
        load_source(str(tmp_path / "nope.csv"))
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(DistilError, match="is empty"):
        load_source(str(empty))
    header_only = tmp_path / "header.csv"
    header_only.write_text("text,label\n")
    with pytest.raises(DistilError, match="no rows"):
        prepare_data(DataConfig(source=str(header_only)))


def test_missing_column(tmp_path):
    path = tmp_path / "d.csv"
    _frame().to_csv(path, index=False)
    with pytest.raises(DistilError, match="column 'text' is missing; columns are \\['review', 'y'\\]"):
        prepare_data(DataConfig(source=str(path)))


def test_unknown_label(tmp_path):
    path = tmp_path / "d.csv"
    _frame().to_csv(path, index=False)
    with pytest.raises(DistilError, match="unknown label 'pos'"):
        prepare_data(DataConfig(source=str(path), text_column="review", label_column="y", labels=["neg", "neutral"]))


def test_empty_text_rows_skipped_or_refused(tmp_path):
    df = _frame()
    df.loc[[3, 7], "review"] = ["", "   "]
    df.loc[11, "review"] = None
    path = tmp_path / "d.csv"
    df.to_csv(path, index=False)
    data = prepare_data(DataConfig(source=str(path), text_column="review", label_column="y"))
    assert data.skipped_empty["all"] == 3
    assert sum(len(v) for v in data.splits.values()) == 57
    with pytest.raises(DistilError, match="3 rows have an empty text"):
        prepare_data(DataConfig(source=str(path), text_column="review", label_column="y", empty_text="error"))


def test_int_labels_and_text_pairs(tmp_path):
    rows = [{"a": f"q{i}", "b": f"answer {i}", "label": i % 2} for i in range(40)]
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    data = prepare_data(DataConfig(source=str(path), text_column="a", text_pair_column="b"))
    assert data.label_names == ["0", "1"]
    assert "text_pair" in data.splits["train"]


def test_builtin_rotten_tomatoes_has_no_plot_synopses():
    df = load_source("rotten-tomatoes")
    assert set(df["label"]) == {"fresh", "rotten"}
    assert len(df) == 12808
    data = prepare_data(DataConfig())
    assert abs(len(data.splits["test"]) - 1281) <= 2 and abs(len(data.splits["train"]) - 10246) <= 4


def test_builtin_bbc_news_and_vader():
    bbc = load_source("bbc-news")
    assert len(bbc) == 2225 and bbc["label"].nunique() == 5
    tweets = load_source("vader-tweets")
    assert set(tweets["label"]) == {"positive", "negative"} and 4000 < len(tweets) <= 4200
    data = prepare_data(DataConfig(max_train_samples=50, extra_test_sets=["vader-nyt"]))
    assert set(data.extra_tests["vader-nyt"]["label"]) <= {0, 1}  # positive -> fresh, negative -> rotten


def test_tokenise_and_pad(tokenizer):
    frame = pd.DataFrame({"text": ["a short one", "a much longer sentence than the first one"], "label": [0, 1]})
    ds = to_dataset(frame, tokenizer, max_length=8)
    assert ds["length"] == [5, 8]
    batch = PadCollator(tokenizer.pad_token_id)([ds[0], ds[1]])
    assert batch["input_ids"].shape == (2, 8)
    assert batch["attention_mask"][0].tolist() == [1] * 5 + [0] * 3
    assert batch["idx"].tolist() == [0, 1] and batch["labels"].tolist() == [0, 1]


def _write(tmp_path, rows: list[tuple], name="d.csv"):
    path = tmp_path / name
    pd.DataFrame(rows, columns=["text", "label"]).to_csv(path, index=False)
    return path


def test_too_few_rows_for_a_held_out_split_is_refused(tmp_path):
    path = _write(tmp_path, [(f"t{i}", "pos" if i % 2 else "neg") for i in range(5)], "x.csv")
    with pytest.raises(DistilError) as err:
        prepare_data(DataConfig(source=str(path)))
    message = str(err.value)
    assert message.startswith(f"data '{path}': the validation split is empty (5 rows, validation_fraction 0.1")
    assert message.endswith("give more rows or a larger data.validation_fraction") and "\n" not in message


def test_too_few_rows_for_a_carved_split_of_a_saved_dataset(tmp_path):
    from datasets import Dataset, DatasetDict

    train = pd.DataFrame({"text": ["a", "b", "c", "d"], "label": ["x", "y", "x", "y"]})
    path = tmp_path / "saved"
    DatasetDict({"train": Dataset.from_pandas(train), "validation": Dataset.from_pandas(train)}).save_to_disk(path)
    with pytest.raises(DistilError, match=r"\[train\]': the test split is empty \(4 rows, test_fraction 0.1\)"):
        prepare_data(DataConfig(source=str(path)))


def test_split_keeps_a_training_row_of_every_label():
    df = pd.DataFrame({"text": [f"t{i}" for i in range(22)], "label": ["a"] * 20 + ["rare"] * 2})
    splits = stratified_split(df, {"validation": 0.45, "test": 0.45}, seed=0)
    assert (splits["train"]["label"] == "rare").sum() == 1  # before: both rare rows held out, train had none
    assert sum(len(s) for s in splits.values()) == 22


def test_one_label_in_training_is_refused(tmp_path):
    path = _write(tmp_path, [(f"t{i}", "pos") for i in range(40)])
    expected = (
        f"data '{path}': the train split has one label only ('pos' in column 'label'); a classifier needs at "
        f"least two distinct labels: give examples of another label"
    )
    with pytest.raises(DistilError) as err:
        prepare_data(DataConfig(source=str(path)))
    assert str(err.value) == expected
    with pytest.raises(DistilError, match="one label only"):  # naming a second label that never appears is no help
        prepare_data(DataConfig(source=str(path), labels=["pos", "neg"]))


def test_one_label_after_max_train_samples_names_it(tmp_path):
    path = _write(tmp_path, [(f"t{i}", "pos" if i % 2 else "neg") for i in range(40)])
    with pytest.raises(DistilError, match="one label only .* or a larger data.max_train_samples$"):
        prepare_data(DataConfig(source=str(path), max_train_samples=1))


def test_labels_listed_but_absent_are_fine(tmp_path):
    path = _write(tmp_path, [(f"t{i}", "pos" if i % 2 else "neg") for i in range(40)])
    data = prepare_data(DataConfig(source=str(path), labels=["neg", "pos", "neutral"]))
    assert data.label_names == ["neg", "pos", "neutral"]
    assert set(data.splits["train"]["label"]) == {0, 1}


def test_int_labels_with_an_empty_cell_stay_ints(tmp_path):
    path = tmp_path / "d.csv"
    rows = [f"text {i},{i % 2}" for i in range(40)]
    rows[5] = "text 5,"
    path.write_text("text,label\n" + "\n".join(rows) + "\n")
    data = prepare_data(DataConfig(source=str(path)))
    assert data.label_names == ["0", "1"]  # before: ['0.0', '1.0']
    assert data.skipped_empty["all"] == 1


def test_fractional_labels_are_refused(tmp_path):
    path = _write(tmp_path, [(f"t{i}", [0.25, 3.5][i % 2]) for i in range(40)])
    with pytest.raises(DistilError) as err:
        prepare_data(DataConfig(source=str(path)))
    assert str(err.value) == (
        f"data '{path}': label column 'label' holds fractional numbers (e.g. 0.25); distil trains classifiers: "
        f"give class labels (names or ints) or set data.label_column"
    )


def test_extra_test_set_with_splits_uses_its_test_split(tmp_path):
    from datasets import Dataset, DatasetDict

    path = _write(tmp_path, [(f"t{i}", "pos" if i % 2 else "neg") for i in range(40)])
    extra = pd.DataFrame({"text": ["x", "y"], "label": ["pos", "neg"]})
    with_test, without = tmp_path / "with_test", tmp_path / "without"
    DatasetDict({"train": Dataset.from_pandas(extra), "test": Dataset.from_pandas(extra)}).save_to_disk(with_test)
    DatasetDict({"train": Dataset.from_pandas(extra)}).save_to_disk(without)
    data = prepare_data(DataConfig(source=str(path), extra_test_sets=[str(with_test)]))
    assert data.extra_tests[str(with_test)]["label"].tolist() == [1, 0]
    with pytest.raises(DistilError, match=r"extra_test_sets '.*without': splits \['train'\] have no 'test' split"):
        prepare_data(DataConfig(source=str(path), extra_test_sets=[str(without)]))
