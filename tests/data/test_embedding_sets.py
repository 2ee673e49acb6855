"""Embeddings data: the Lee STS set as gensim ships it, the retrieval sets, and no evaluation text in training."""

from __future__ import annotations

import numpy as np
import pytest

from distil.config import DataConfig
from distil.data.corpus import split_into_chunks
from distil.data.embedding_sets import (
    bbc_articles,
    bbc_retrieval,
    eval_sets,
    gensim_test_data,
    lee_sts,
    prepare_embedding_data,
    squad_retrieval,
)
from distil.data.held_out import normalise
from distil.data.squad import SQUAD_FILES, TEST_SET, TRAIN_SET, read_squad_json, squad_dir
from distil.errors import DistilError
from distil.options import EmbeddingConfig


def _has_gensim() -> bool:
    try:
        return (gensim_test_data() / "lee.cor").is_file()
    except DistilError:
        return False


@pytest.mark.skipif(not _has_gensim(), reason="gensim==4.4.0 not installed (scripts/setup.sh installs it)")
def test_lee_has_50_documents_and_1225_rated_pairs():
    lee = lee_sts()
    assert len(lee) == 50 and set(lee["role"]) == {"doc"}
    ratings = np.asarray(lee["ratings"].tolist())
    assert ratings.shape == (50, 50) and np.allclose(ratings, ratings.T) and np.allclose(np.diag(ratings), 1.0)
    upper = ratings[np.triu_indices(50, 1)]
    assert len(upper) == 1225 and 0.0 <= upper.min() and upper.max() <= 1.0
    assert lee["text"][0].startswith("The national executive of the strife-torn Democrats")


def test_lee_files_missing_say_how_to_get_them(tmp_path):
    with pytest.raises(
        DistilError, match="lee.cor' is missing; run scripts/setup.sh, or: pip install --no-deps gensim"
    ):
        lee_sts(tmp_path)


def test_bbc_retrieval_pairs_each_title_with_its_own_body():
    frame, whole = bbc_retrieval(20, None, seed=0)
    docs, queries = frame[frame.role == "doc"], frame[frame.role == "query"]
    assert len(docs) == len(queries) == 20 == len(whole)
    assert set(queries["key"]) == set(docs["key"])
    articles = {k: (title, body) for k, title, body in bbc_articles()}
    for _, q in queries.iterrows():
        title, body = articles[q["key"]]
        assert q["text"] == title and docs.set_index("key").loc[q["key"], "text"] == body
    assert frame.equals(bbc_retrieval(20, None, seed=0)[0])  # seeded
    big, whole = bbc_retrieval(400, None, seed=0)
    docs, queries = big[big.role == "doc"], big[big.role == "query"]
    assert docs["text"].is_unique and queries["text"].is_unique  # one right document per query
    assert len(whole) == 400
    assert not frame.equals(bbc_retrieval(20, None, seed=1)[0])
    assert len(bbc_retrieval(20, 5, seed=0)[0].query("role == 'query'")) == 5


@pytest.mark.skipif(
    not all((squad_dir() / f).is_file() for f in SQUAD_FILES.values()),
    reason="built-in SQuAD files missing (scripts/setup.sh extracts them)",
)
def test_squad_retrieval_is_over_the_qa_test_articles_only():
    frame = squad_retrieval(None, seed=0)
    docs, queries = frame[frame.role == "doc"], frame[frame.role == "query"]
    assert len(docs) == 2_067 and len(queries) == 10_570  # every paragraph and question of SQuAD v1.1 dev
    dev = read_squad_json(squad_dir() / SQUAD_FILES[TEST_SET])
    train = read_squad_json(squad_dir() / SQUAD_FILES[TRAIN_SET])
    assert set(docs["text"]) == set(dev["context"]) and not set(docs["text"]) & set(train["context"])
    asked_on = set(zip(dev["question"], dev["context"]))
    paragraph = dict(zip(docs["key"], docs["text"]))
    assert all((q, paragraph[k]) in asked_on for q, k in zip(queries["text"], queries["key"]))
    sampled = squad_retrieval(20, seed=0)
    assert len(sampled.query("role == 'query'")) == 20 and sampled.equals(squad_retrieval(20, seed=0))


def test_an_unknown_evaluation_set_is_refused():
    with pytest.raises(DistilError, match="'stsb' is not an embeddings evaluation set; choose from lee, squad, bbc"):
        eval_sets(["stsb"], DataConfig(), EmbeddingConfig())


def test_no_evaluation_text_and_no_chunk_of_a_held_out_article_is_trained_on():
    cfg = DataConfig(source="builtin-unlabelled", extra_test_sets=["bbc"], max_eval_samples=50)
    data = prepare_embedding_data(cfg, EmbeddingConfig(bbc_articles=30))
    train = {normalise(t) for t in data.splits["train"]["text"]}
    held = [normalise(t) for t in data.extra_tests["bbc"]["text"]]
    assert not train & set(held)
    keys = set(data.extra_tests["bbc"]["key"])

    def chunks(articles):
        return {normalise(c) for _, title, body in articles for c in split_into_chunks(f"{title} {body}")}

    held = chunks(a for a in bbc_articles() if a[0] in keys)
    others = chunks(a for a in bbc_articles() if a[0] not in keys)
    assert held and not (train & held) - others  # only a passage another article repeats (a quote) is trained on
    assert data.dropped["train"]["held_out_texts"] >= 30  # the whole articles, left out before chunking
    assert len(data.held_out) == 30  # carried for general distillation and augmentation too
    assert len(data.splits["validation"]) == len(data.splits["test"]) == 50
    sizes = {k: set(v["text"]) for k, v in data.splits.items()}
    assert not sizes["train"] & sizes["test"] and not sizes["validation"] & sizes["test"]


def test_a_corpus_too_small_to_split_is_refused(tmp_path):
    file = tmp_path / "two.txt"
    file.write_text("one text\nanother text\n")
    with pytest.raises(DistilError, match="2 distinct texts are too few"):
        prepare_embedding_data(DataConfig(source=str(file), extra_test_sets=[]), EmbeddingConfig())
