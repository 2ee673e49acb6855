"""`distil index` / `distil search`: a faiss index of a tiny sentence encoder's embeddings, searched back."""

from __future__ import annotations

import gzip
import json
import shutil

import numpy as np
import pytest
import torch

from distil.cli import main
from distil.deploy.search import build_index, model_fingerprint, read_corpus, search
from distil.errors import DistilError

CORPUS = [
    "the cat sat on the mat",
    "stock markets fell sharply on monday",
    "a recipe for chocolate cake with cherries",
    "the football team won the championship",
    "how to reset a forgotten password",
    "rain is expected over the weekend",
    "the museum opens a new exhibition of paintings",
]


def _save_encoder(path, tokenizer, seed: int):
    from transformers import BertConfig, BertModel

    from distil.models.sentence import SentenceEncoder

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128)  # fmt: skip
    settings = {"pooling": "mean", "normalize": True, "dense": None, "max_seq_length": 64}
    SentenceEncoder(BertModel(cfg), settings).eval().save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory, tokenizer):
    return _save_encoder(tmp_path_factory.mktemp("encoder") / "model", tokenizer, seed=0)


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n".join(CORPUS[:3]) + "\n\n   \n" + "\n".join(CORPUS[3:]) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory, encoder_dir, corpus_file):
    out = tmp_path_factory.mktemp("idx") / "index"
    build_index(encoder_dir, corpus_file, out)
    return out


def test_round_trip_finds_each_text_first(index_dir):
    results = search(index_dir, [CORPUS[4], CORPUS[0]], top_k=3)
    assert len(results) == 2
    for query, hits in zip([CORPUS[4], CORPUS[0]], results):
        assert [h["rank"] for h in hits] == [1, 2, 3]
        assert hits[0]["text"] == query and hits[0]["id"] == CORPUS.index(query)
        assert hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
        scores = [h["score"] for h in hits]
        assert scores == sorted(scores, reverse=True) and scores[1] < 0.9999
        assert all(CORPUS[h["id"]] == h["text"] for h in hits)  # ids are the non-blank lines in order


def test_top_k_is_capped_and_checked(index_dir):
    (hits,) = search(index_dir, ["weather forecast"], top_k=50)
    assert sorted(h["id"] for h in hits) == list(range(len(CORPUS)))
    with pytest.raises(DistilError, match="top_k=0"):
        search(index_dir, ["x"], top_k=0)
    with pytest.raises(DistilError, match="no queries"):
        search(index_dir, [])


def test_index_files_and_metadata(index_dir, encoder_dir):
    import faiss

    assert sorted(p.name for p in index_dir.iterdir()) == ["index.faiss", "index.json", "texts.jsonl"]
    meta = json.loads((index_dir / "index.json").read_text())
    assert meta["format"] == 1 and meta["metric"] == "cosine"
    assert meta["model"] == str(encoder_dir.resolve()) and meta["variant"] == "torch"
    assert meta["fingerprint"] == model_fingerprint(encoder_dir) and len(meta["fingerprint"]) == 16
    assert (meta["dim"], meta["count"], meta["max_length"]) == (32, len(CORPUS), 64)  # max_seq_length of the model
    assert meta["seconds"] >= 0
    rows = [json.loads(line) for line in (index_dir / "texts.jsonl").read_text().splitlines()]
    assert rows == [{"id": i, "text": t} for i, t in enumerate(CORPUS)]
    index = faiss.read_index(str(index_dir / "index.faiss"))
    assert (index.ntotal, index.d) == (len(CORPUS), 32)
    vectors = index.reconstruct_n(0, index.ntotal)  # (N, D), stored unit length
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_fingerprint_follows_weights_and_settings_not_location(encoder_dir, tmp_path, index_dir):
    copy = tmp_path / "copy"
    shutil.copytree(encoder_dir, copy)
    assert model_fingerprint(copy) == model_fingerprint(encoder_dir)
    (hits,) = search(index_dir, [CORPUS[2]], top_k=1, model=copy)  # the same weights elsewhere are accepted
    assert hits[0]["id"] == 2
    config = json.loads((copy / "config.json").read_text())
    config["distil_sentence"]["pooling"] = "cls"
    (copy / "config.json").write_text(json.dumps(config))
    assert model_fingerprint(copy) != model_fingerprint(encoder_dir)


def test_another_model_is_refused_by_fingerprint(index_dir, encoder_dir, tmp_path, tokenizer):
    other = _save_encoder(tmp_path / "other", tokenizer, seed=1)
    with pytest.raises(DistilError) as info:
        search(index_dir, [CORPUS[0]], model=other)
    message = str(info.value)
    expected = (
        f"index '{index_dir}' was built with model '{encoder_dir.resolve()}' (fingerprint "
        f"{model_fingerprint(encoder_dir)}); '{other}' is another model (fingerprint {model_fingerprint(other)}): "
        f"search with the model that built it, or rebuild the index: distil index {other} CORPUS --out {index_dir}"
    )
    assert message == expected and "\n" not in message


def test_classification_model_is_refused(tiny_bert, tokenizer, tmp_path, corpus_file):
    tiny_bert.save_pretrained(tmp_path / "clf")
    tokenizer.save_pretrained(tmp_path / "clf")
    with pytest.raises(DistilError, match="pass a sentence-embedding model") as info:
        build_index(tmp_path / "clf", corpus_file, tmp_path / "index")
    assert "clf" in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "index").exists()


def test_empty_and_malformed_corpora_are_refused(encoder_dir, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n\n", encoding="utf-8")
    with pytest.raises(DistilError, match=r"corpus '.*empty\.txt' has no non-empty text; give a file with one text"):
        build_index(encoder_dir, empty, tmp_path / "index")
    csv = tmp_path / "docs.csv"
    csv.write_text("title,body\na,b\n", encoding="utf-8")
    with pytest.raises(DistilError, match=r"docs\.csv' has no column 'text' \(columns: title, body\)"):
        read_corpus(csv)
    with pytest.raises(DistilError, match="does not exist"):
        read_corpus(tmp_path / "missing.txt")
    assert not (tmp_path / "index").exists()


def test_csv_and_gzip_corpora(encoder_dir, tmp_path):
    import pandas as pd

    csv = tmp_path / "docs.csv"
    pd.DataFrame({"title": ["a", "b", "c", "d"], "body": [CORPUS[0], None, "", CORPUS[1]]}).to_csv(csv, index=False)
    meta = build_index(encoder_dir, csv, tmp_path / "index", text_column="body", max_length=32)
    assert (meta["count"], meta["max_length"]) == (2, 32)
    (hits,) = search(tmp_path / "index", [CORPUS[1]], top_k=2)
    assert [(h["id"], h["text"]) for h in hits][0] == (1, CORPUS[1])
    gz = tmp_path / "corpus.txt.gz"
    with gzip.open(gz, "wt", encoding="utf-8") as f:
        f.write("first line\n\nsecond line\n")
    assert read_corpus(gz) == ["first line", "second line"]


def test_cli_index_and_search(encoder_dir, corpus_file, tmp_path, capsys):
    out = tmp_path / "cli-index"
    assert main(["index", str(encoder_dir), str(corpus_file), "--out", str(out), "--batch-size", "4"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"indexed {len(CORPUS)} texts (32-d, model {encoder_dir.resolve()}) into {out} in ")
    assert line.endswith(" s") and "\n" not in line

    assert main(["search", str(out), CORPUS[3], CORPUS[5], "--top-k", "2", "--json"]) == 0
    objects = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [o["query"] for o in objects] == [CORPUS[3], CORPUS[5]]
    assert [len(o["hits"]) for o in objects] == [2, 2]
    assert objects[0]["hits"][0] == {"rank": 1, "id": 3, "text": CORPUS[3], "score": pytest.approx(1.0, abs=1e-4)}

    assert main(["search", str(out), CORPUS[6], "--top-k", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == CORPUS[6]
    assert lines[1].startswith("  1. 1.0000  ") and lines[1].endswith(CORPUS[6])


def test_cli_bad_index_dir_exits_2(tmp_path, capsys):
    assert main(["search", str(tmp_path / "nowhere"), "query"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("distil: error: index '") and "no index.json; build one with `distil index" in err


def test_a_folder_that_is_not_an_index_is_never_replaced(encoder_dir, corpus_file, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "report.json").write_text("{}")
    with pytest.raises(DistilError, match="exists and is not a search index"):
        build_index(encoder_dir, corpus_file, run)
    assert (run / "report.json").read_text() == "{}"
