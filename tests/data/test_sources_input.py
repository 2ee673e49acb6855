"""Reading user files: missing-value words, encodings, byte-order marks, malformed rows, JSON types."""

import gzip
import json

import pandas as pd
import pytest

from distil.config import DataConfig
from distil.data import load_source, prepare_data
from distil.errors import DistilError

NA_WORDS = ["None", "NA", "NULL", "N/A", "nan", "null", "n/a", "NaN", "<NA>", "#N/A"]


def _rows(labels: list[str], n: int = 60) -> list[tuple[str, str]]:
    return [(f"review number {i}", labels[i % len(labels)]) for i in range(n)]


@pytest.mark.parametrize("sep, suffix", [(",", "csv"), ("\t", "tsv")])
def test_labels_named_like_missing_values_are_classes(tmp_path, sep, suffix):
    path = tmp_path / f"d.{suffix}"
    pd.DataFrame(_rows(["None", "NA", "positive"]), columns=["text", "label"]).to_csv(path, sep=sep, index=False)
    data = prepare_data(DataConfig(source=str(path)))
    assert data.label_names == ["NA", "None", "positive"]  # before: two classes dropped as empty rows
    assert data.skipped_empty["all"] == 0


def test_every_pandas_missing_word_is_a_value(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,label\n" + "".join(f"{w},{w}\n" for w in NA_WORDS) + 'empty,""\n,empty text\n')
    frame = load_source(str(path))
    assert frame["label"].tolist()[: len(NA_WORDS)] == NA_WORDS
    assert frame["text"].tolist()[: len(NA_WORDS)] == NA_WORDS
    assert frame["label"].isna().tolist()[-2:] == [True, False]  # only a truly empty cell is missing
    assert frame["text"].isna().tolist()[-2:] == [False, True]


def test_json_keeps_its_own_types(tmp_path):
    path = tmp_path / "d.jsonl"
    rows = [{"text": "0.50", "label": "01"}, {"text": "x", "label": "1"}]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    frame = load_source(str(path))
    assert frame["label"].tolist() == ["01", "1"]  # before: 1 and 1, two classes merged
    assert frame["text"].tolist() == ["0.50", "x"]


def test_json_array_with_leading_blank_lines(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('\n\n  [{"text": "a", "label": "x"}, {"text": "b", "label": "y"}]')
    assert load_source(str(path))["text"].tolist() == ["a", "b"]


@pytest.mark.parametrize("name", ["d.csv", "d.csv.gz", "d.tsv", "d.jsonl"])
def test_latin1_file_names_the_byte_and_the_setting(tmp_path, name):
    path = tmp_path / name
    if name.endswith(".jsonl"):
        body = '{"text": "ok", "label": "x"}\n{"text": "caf\u00e9", "label": "y"}\n'
        offset = body.index("\u00e9")
    else:
        sep = "\t" if ".tsv" in name else ","
        body = f"text{sep}label\nok{sep}x\ncaf\u00e9{sep}y\n"
        offset = body.index("\u00e9")
    raw = body.encode("latin-1")
    path.write_bytes(gzip.compress(raw) if name.endswith(".gz") else raw)
    with pytest.raises(DistilError) as err:
        load_source(str(path))
    assert str(err.value) == (
        f"data file '{path}' is not valid utf-8: byte {offset} (line {body[:offset].count(chr(10)) + 1}) is "
        f"b'\\xe9'; set data.encoding (e.g. latin-1 or cp1252)"
    )
    assert load_source(str(path), encoding="latin-1")["text"].tolist() == ["ok", "caf\u00e9"]


def test_encoding_reaches_the_source_and_the_extra_test_sets(tmp_path):
    main, extra = tmp_path / "main.csv", tmp_path / "extra.csv"
    pd.DataFrame(_rows(["caf\u00e9", "th\u00e9"]), columns=["text", "label"]).to_csv(
        main, index=False, encoding="latin-1"
    )
    pd.DataFrame([("un caf\u00e9", "caf\u00e9")], columns=["text", "label"]).to_csv(
        extra, index=False, encoding="latin-1"
    )
    with pytest.raises(DistilError, match="set data.encoding"):
        prepare_data(DataConfig(source=str(main), extra_test_sets=[str(extra)]))
    data = prepare_data(DataConfig(source=str(main), extra_test_sets=[str(extra)], encoding="latin-1"))
    assert data.label_names == ["caf\u00e9", "th\u00e9"]
    assert data.extra_tests[str(extra)]["text"].tolist() == ["un caf\u00e9"]


@pytest.mark.parametrize("suffix", ["csv", "jsonl", "json"])
def test_utf8_byte_order_mark_is_skipped(tmp_path, suffix):
    path = tmp_path / f"excel.{suffix}"
    frame = pd.DataFrame({"text": [f"t{i}" for i in range(40)], "label": [i % 2 for i in range(40)]})
    if suffix == "csv":
        body = frame.to_csv(index=False)
    else:
        body = frame.to_json(orient="records", lines=suffix == "jsonl")
    path.write_bytes(body.encode("utf-8-sig"))
    assert load_source(str(path)).columns.tolist() == ["text", "label"]  # before (JSON): "could not be read"
    assert prepare_data(DataConfig(source=str(path))).label_names == ["0", "1"]


def test_row_with_too_many_fields_says_to_quote(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,label\ngood film,pos\nslow, dull film,neg\n")
    with pytest.raises(DistilError) as err:
        load_source(str(path))
    message = str(err.value)
    assert message.startswith(f"data file '{path}' could not be parsed (") and "line 3" in message
    assert message.endswith("; quote fields that hold the delimiter")
