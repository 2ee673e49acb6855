"""No validation, test or out-of-domain test text is ever trained on: general corpus and augmentation sources."""

import pandas as pd

from distil.config import RunConfig
from distil.data import TaskData, prepare_data, sources
from distil.data.corpus import BUILTIN_UNLABELLED, read_corpus
from distil.data.held_out import held_out_texts, normalise
from distil.engine import stages as pipeline


def _frame(texts, labels=None):
    return pd.DataFrame({"text": texts, "label": labels if labels is not None else [0] * len(texts)})


def test_normalise_ignores_whitespace_and_case():
    assert normalise("  A  Fine\tFilm \n") == normalise("a fine film") == "a fine film"


def test_held_out_texts_take_validation_test_extra_and_pairs_not_train():
    splits = {
        "train": _frame(["trained on"]),
        "validation": _frame(["Val text"]),
        "test": pd.DataFrame({"text": ["test text"], "text_pair": ["Its Pair"], "label": [0]}),
    }
    held = held_out_texts(splits, {"tweets": _frame(["a  tweet"])})
    assert held == {"val text", "test text", "its pair", "a tweet"}


def test_read_corpus_removes_held_out_texts_and_counts_them(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("keep me\nThe TEST   sentence\nalso kept\nthe test sentence\n", encoding="utf-8")
    corpus = read_corpus(str(path), held_out=frozenset({"the test sentence"}))
    assert sorted(corpus.texts) == ["also kept", "keep me"]
    assert corpus.removed_held_out == 2  # both spellings of it
    assert read_corpus(str(path), max_rows=1, held_out=frozenset({"keep me"})).texts[0] != "keep me"


def test_builtin_corpus_drops_a_held_out_article_before_chunking(monkeypatch):
    article = " ".join(f"Sentence number {i} of a long test article." for i in range(20))  # > 60 words: chunked
    for name in list(sources.BUILTIN_SOURCES):
        monkeypatch.setitem(sources.BUILTIN_SOURCES, name, lambda: _frame(["other text"]))
    monkeypatch.setitem(sources.BUILTIN_SOURCES, "bbc-news", lambda: _frame([article, "a news text"]))
    assert any("Sentence number 3" in t for t in read_corpus(BUILTIN_UNLABELLED).texts)
    corpus = read_corpus(BUILTIN_UNLABELLED, held_out=frozenset({normalise(article)}))
    assert not any("Sentence number" in t for t in corpus.texts)  # no chunk of it survives
    assert sorted(corpus.texts) == ["a news text", "other text"] and corpus.removed_held_out == 1


def test_the_default_runs_general_corpus_never_holds_a_text_of_its_test_splits():
    """The real data of the default run (Rotten Tomatoes + the vader out-of-domain sets) against the real
    builtin-unlabelled corpus, which is built from those very sources."""
    cfg = RunConfig()
    data = prepare_data(cfg.data)
    held = held_out_texts(data.splits, data.extra_tests)
    corpus = read_corpus(BUILTIN_UNLABELLED, held_out=held)
    assert corpus.removed_held_out > 10_000  # the test splits are inside the corpus's sources
    assert not held & {normalise(t) for t in corpus.texts}
    for frame in [data.splits["validation"], data.splits["test"], *data.extra_tests.values()]:
        assert not set(frame["text"].map(normalise)) & {normalise(t) for t in corpus.texts}


def test_augmentation_never_augments_a_held_out_text(tokenizer, tiny_bert, tmp_path):
    train = _frame(["a good film", "the test sentence", "a bad film"], [1, 0, 0])
    data = TaskData(
        splits={"train": train, "validation": _frame(["x"]), "test": _frame(["The  Test sentence"])},
        label_names=["0", "1"],
    )
    cfg = RunConfig(cache_dir=str(tmp_path / "cache"))
    cfg.augment.num_variants = 2
    ctx = pipeline.Context(cfg, data=data, tokenizer=tokenizer)
    out = pipeline.augmented_frame(ctx, tiny_bert)
    assert (out["text"] == "the test sentence").sum() == 1  # kept once as a training row, never varied
    assert len(out) == 2 * 3 + 1  # the two clean rows with 2 variants each, plus the leaked row as it is
    assert ctx.data_notes["augment"] == {"source_rows": 2, "removed_held_out": 1, "variants_removed_held_out": 0}
