"""Extractive question answering data (SQuAD format): SQuAD JSON files, tables in the HF squad layout, and the
built-in SQuAD v1.1 dev and SQuAD-Shifts sets, split into train/validation/test by article.

A question is a row with columns ``id``, ``title`` (its article), ``context``, ``question``, ``answer_texts``
(list[str]) and ``answer_starts`` (list[int], character offsets into the context). Answers whose offset does not
point at their text are dropped, and so are questions left without an answer; both are counted in the frame's
``attrs`` and in `TaskData.dropped`. `prepare_qa_data` turns a source into a `distil.data.prepare.TaskData`.

The built-in source ``squad`` reads five files that the ``bigbench==1.0.0`` source archive ships (SQuAD v1.1 dev
with bigbench's 5 removed questions, and SQuAD-Shifts: new-wiki, nyt, reddit, amazon; Miller et al. 2020, "The
Effect of Natural Distribution Shift on Question Answering Models"). `extract_squad` copies them out of the
archive into `squad_dir()`; never pip install bigbench (1.9 GB with TensorFlow).
"""

from __future__ import annotations

import argparse
import codecs
import json
import sys
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from distil.config import DataConfig
from distil.data.prepare import TaskData, refuse_empty_splits, sample_rows
from distil.data.sources import SPLIT_NAMES, _decode_error_message, distil_home, load_source
from distil.errors import DistilError
from distil.io import atomic_path

SQUAD_FILES: dict[str, str] = {
    "squad-dev": "squaddev_v1.1.json",
    "new-wiki": "new_wiki_v1.0.json",
    "nyt": "nyt_v1.0.json",
    "reddit": "reddit_v1.0.json",
    "amazon": "amazon_reviews_v1.0.json",
}
"""Built-in set name -> file name in `squad_dir()` (and in the bigbench archive's squad_shifts folder)."""
IN_DOMAIN = ("squad-dev", "new-wiki")
"""The Wikipedia sets the built-in ``squad`` splits into train/validation/test."""
OUT_OF_DOMAIN = ("nyt", "reddit", "amazon")
"""The built-in ``squad``'s extra test sets unless data.extra_test_sets names others."""
ARCHIVE_DIR = "bigbench/benchmark_tasks/squad_shifts"
"""Folder of the five files in the bigbench source archive, below its top folder ``bigbench-1.0.0``."""
QA_COLUMNS = ["id", "title", "context", "question", "answer_texts", "answer_starts", "gold_texts"]
"""answer_texts/answer_starts: the answers whose offsets match (the training labels); gold_texts: every answer text,
as the official v1.1 script scores against all of them."""
LABEL_NAMES = ["start", "end"]
OFFSET_MISMATCH = "answers_offset_mismatch"
NO_ANSWER = "questions_without_answer"
SETUP_HINT = (
    "run scripts/setup.sh, or: pip download --no-deps --no-binary :all: bigbench==1.0.0 -d DIR && "
    "python -m distil.data.squad DIR/bigbench-1.0.0.tar.gz"
)


def squad_dir() -> Path:
    """Where the built-in squad files live: ``$DISTIL_HOME/squad`` (default ``~/.cache/distil/squad``)."""
    return distil_home() / "squad"


def extract_squad(archive: str | Path, dest: Path | None = None) -> Path:
    """Copy the five SQuAD files of `SQUAD_FILES` out of the bigbench 1.0.0 source archive into ``dest``.

    Reads the archive once, front to back, and takes only those members; each file is checked to be SQuAD JSON
    before it is written atomically. Files already in ``dest`` are kept, so a second call does nothing.

    Args:
        archive: ``bigbench-1.0.0.tar.gz`` (``pip download --no-deps --no-binary :all: bigbench==1.0.0``).
        dest: the folder to fill; default `squad_dir()`.

    Returns:
        ``dest``.

    Raises:
        DistilError: the archive is missing or not a tar archive, lacks one of the members, or a member is not
            SQuAD JSON (an object with a "data" list).
    """
    dest = Path(dest).expanduser() if dest is not None else squad_dir()
    archive = Path(archive).expanduser()
    wanted = {f"{ARCHIVE_DIR}/{name}": name for name in SQUAD_FILES.values() if not (dest / name).is_file()}
    if not wanted:
        return dest
    if not archive.is_file():
        raise DistilError(f"squad archive '{archive}' does not exist; {SETUP_HINT}")
    found = _read_members(archive, set(wanted))
    absent = sorted(set(wanted) - set(found))
    if absent:
        raise DistilError(
            f"squad archive '{archive}' has no member 'bigbench-1.0.0/{absent[0]}'; give bigbench-1.0.0.tar.gz "
            f"({SETUP_HINT})"
        )
    for member, raw in found.items():
        _check_squad_bytes(raw, f"squad archive '{archive}' member '{member}'")
    for member, raw in found.items():
        with atomic_path(dest / wanted[member]) as tmp:
            tmp.write_bytes(raw)
    return dest


def _read_members(archive: Path, wanted: set[str]) -> dict[str, bytes]:
    """The bytes of the members named in ``wanted`` (paths below the archive's top folder), in one pass: a .tar.gz
    has no index, so looking members up by name would decompress it once per lookup."""
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                below_top = member.name.split("/", 1)[-1]  # the top folder is bigbench-1.0.0/
                if below_top in wanted and member.isfile():
                    found[below_top] = tar.extractfile(member).read()
                    if len(found) == len(wanted):
                        break
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DistilError(f"squad archive '{archive}' could not be read ({e}); {SETUP_HINT}") from None
    return found


def _check_squad_bytes(raw: bytes, where: str) -> None:
    """Refuse archive bytes that are not SQuAD JSON (an object with a "data" list)."""
    try:
        document = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DistilError(f"{where} is not JSON ({e}); give bigbench-1.0.0.tar.gz") from None
    _require_data_list(document, where)


def _require_data_list(document: Any, where: str) -> None:
    if not isinstance(document, dict) or not isinstance(document.get("data"), list):
        found = sorted(document) if isinstance(document, dict) else type(document).__name__
        raise DistilError(
            f'{where} has no "data" list (found {found}); give SQuAD JSON: {{"data": [{{"title", "paragraphs": '
            "[...]}]} (a table in the HF squad layout needs .jsonl or .parquet)"
        )


def read_squad_json(path: str | Path, encoding: str = "utf-8") -> pd.DataFrame:
    """Questions of a SQuAD JSON file: {"data": [{"title", "paragraphs": [{"context", "qas": [{"id", "question",
    "answers": [{"text", "answer_start"}]}]}]}]}.

    Args:
        path: the file.
        encoding: its text encoding.

    Returns:
        one row per question with columns `QA_COLUMNS`; ``attrs["dropped_answers"]`` counts answers whose offset
        does not point at their text (or whose text is empty), ``attrs["dropped_questions"]`` questions left
        without an answer. A question without an id gets its row number.

    Raises:
        DistilError: the file is missing, not JSON or not ``encoding``, has no "data" list, an article without a
            "paragraphs" list, a question without "question" or "context" text, an empty context, an answer
            without "text" / an int "answer_start".
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DistilError(f"squad file '{path}' does not exist; check the path")
    try:
        with open(path, encoding="utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding) as f:
            document = json.load(f)
    except UnicodeDecodeError as e:
        raise DistilError(_decode_error_message(path, encoding, e)) from None
    except json.JSONDecodeError as e:
        raise DistilError(
            f"squad file '{path}' is not JSON ({e.msg} at line {e.lineno}); give SQuAD JSON: "
            '{"data": [{"title", "paragraphs": [{"context", "qas": [...]}]}]}'
        ) from None
    _require_data_list(document, f"squad file '{path}'")
    builder = _QuestionBuilder()
    for i, article in enumerate(document["data"]):
        paragraphs = article.get("paragraphs") if isinstance(article, dict) else None
        if not isinstance(paragraphs, list):
            raise DistilError(f"squad file '{path}': article {i} has no \"paragraphs\" list; give SQuAD JSON")
        title = str(article.get("title", f"article {i}"))
        for paragraph in paragraphs:
            if not isinstance(paragraph, dict) or not isinstance(paragraph.get("qas", []), list):
                raise DistilError(f"squad file '{path}': article {i} holds a paragraph without a \"qas\" list")
            for qa in paragraph.get("qas", []):
                qa = qa if isinstance(qa, dict) else {}
                qid = str(qa.get("id", len(builder.rows)))
                answers = qa.get("answers") or []
                texts = [a.get("text") if isinstance(a, dict) else None for a in answers]
                starts = [a.get("answer_start") if isinstance(a, dict) else None for a in answers]
                at = f"squad file '{path}' question '{qid}'"
                builder.add(qid, title, paragraph.get("context"), qa.get("question"), texts, starts, at)
    return builder.frame()


def from_columns(frame: pd.DataFrame, where: str) -> pd.DataFrame:
    """Questions of a table in the HF squad layout (JSONL, Parquet, a saved or hub dataset).

    Args:
        frame: columns ``context``, ``question``, ``answers`` ({"text": [...], "answer_start": [...]}, lists or
            numpy arrays, or that object as a JSON string), and optionally ``id`` and ``title``.
        where: the source, for messages.

    Returns:
        as `read_squad_json`. Without a ``title`` column (or where it is empty) every distinct context is its own
        article; without an ``id`` a question's id is its row number.

    Raises:
        DistilError: a missing column, an ``answers`` cell that is not {"text", "answer_start"} lists of one
            length, and the checks of `read_squad_json`.
    """
    for column in ("context", "question", "answers"):
        if column not in frame.columns:
            raise DistilError(
                f"data '{where}': column '{column}' is missing; columns are {list(frame.columns)}; give the squad "
                f'layout: context, question, answers ({{"text": [...], "answer_start": [...]}}), optional id, title'
            )
    ids = frame["id"].tolist() if "id" in frame.columns else [None] * len(frame)
    titles = frame["title"].tolist() if "title" in frame.columns else [None] * len(frame)
    own_article: dict[str, str] = {}
    builder = _QuestionBuilder()
    for i, (qid, title, context, question, answers) in enumerate(
        zip(ids, titles, frame["context"], frame["question"], frame["answers"])
    ):
        qid = str(i) if _is_missing(qid) else str(qid)
        at = f"data '{where}' row {i + 1} (id '{qid}')"
        texts, starts = _answer_lists(answers, at)
        if _is_missing(title):
            title = own_article.setdefault(str(context), f"context {len(own_article)}")
        builder.add(qid, str(title), context, question, texts, starts, at)
    return builder.frame()


def _is_missing(value: Any) -> bool:
    """True for an absent id or title: None, NaN/NA or an empty string."""
    return value is None or value == "" or (pd.api.types.is_scalar(value) and bool(pd.isna(value)))


def _answer_lists(answers: Any, at: str) -> tuple[list, list]:
    """The text and answer_start lists of one ``answers`` cell."""
    if isinstance(answers, str):
        try:
            answers = json.loads(answers)
        except json.JSONDecodeError:
            answers = None
    lists = [answers.get(key) if isinstance(answers, dict) else None for key in ("text", "answer_start")]
    if not all(isinstance(values, (list, tuple, np.ndarray)) for values in lists) or len(lists[0]) != len(lists[1]):
        raise DistilError(
            f'{at}: column \'answers\' holds {str(answers)[:60]!r}; give {{"text": [...], "answer_start": [...]}} '
            f"with one offset per text (CSV cannot hold it: use JSONL or Parquet)"
        )
    return list(lists[0]), list(lists[1])


class _QuestionBuilder:
    """Checks questions one by one, keeps the answers whose offsets match, and counts what it drops."""

    def __init__(self):
        self.rows: list[tuple] = []
        self.dropped_answers = 0
        self.dropped_questions = 0

    def add(self, qid: str, title: str, context: Any, question: Any, texts: list, starts: list, at: str) -> None:
        for name, value in (("question", question), ("context", context)):
            if not isinstance(value, str):
                raise DistilError(f'{at} has no "{name}" text (found {value!r}); give every question both texts')
            if not value.strip():
                raise DistilError(f"{at} has an empty {name}; give its text or remove the question")
        kept_texts, kept_starts = [], []
        for text, start in zip(texts, starts):
            if not isinstance(text, str):
                raise DistilError(f"{at}: answer text {text!r} is not a string; give each answer's text")
            if not isinstance(start, (int, np.integer)) or isinstance(start, bool):
                raise DistilError(
                    f"{at}: answer_start {start!r} is not an int; give the answer's character offset in the context"
                )
            if text and 0 <= start and context[start : start + len(text)] == text:
                kept_texts.append(text)
                kept_starts.append(int(start))
            else:
                self.dropped_answers += 1
        if not kept_texts:
            self.dropped_questions += 1
            return
        gold = [t for t in texts if isinstance(t, str) and t.strip()]
        self.rows.append((qid, title, context, question, kept_texts, kept_starts, gold))

    def frame(self) -> pd.DataFrame:
        out = pd.DataFrame(self.rows, columns=QA_COLUMNS)
        out.attrs["dropped_answers"] = self.dropped_answers
        out.attrs["dropped_questions"] = self.dropped_questions
        return out


def _dropped(frame: pd.DataFrame) -> dict[str, int]:
    """The frame's drop counts by reason, non-zero ones only."""
    attrs = {OFFSET_MISMATCH: "dropped_answers", NO_ANSWER: "dropped_questions"}
    return {reason: frame.attrs[key] for reason, key in attrs.items() if frame.attrs.get(key)}


def builtin_squad(name: str) -> pd.DataFrame:
    """One built-in set of `SQUAD_FILES` from `squad_dir()`.

    Raises:
        DistilError: an unknown name, or the file is missing (run scripts/setup.sh).
    """
    if name not in SQUAD_FILES:
        raise DistilError(f"built-in squad set '{name}' is unknown; the sets are {', '.join(SQUAD_FILES)}")
    path = squad_dir() / SQUAD_FILES[name]
    if not path.is_file():
        raise DistilError(f"built-in squad data: '{path}' is missing; {SETUP_HINT}")
    return read_squad_json(path)


def _is_squad_json(path: Path) -> bool:
    """True for a SQuAD JSON document; False for HF-layout records in a .json file: a JSON array, or JSON lines
    (HF's Dataset.to_json writes lines even under a .json name)."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            first = f.readline()
    except UnicodeDecodeError:
        return True  # read_squad_json says where
    if first.lstrip().startswith("["):
        return False
    try:
        row = json.loads(first)
    except json.JSONDecodeError:
        return True  # an indented document spans many lines
    return not (isinstance(row, dict) and "data" not in row and "context" in row)


def load_qa_source(source: str, encoding: str = "utf-8") -> pd.DataFrame | dict[str, pd.DataFrame]:
    """Questions of ``source`` (not the built-in ``squad``): one frame, or a dict of frames keyed by split name.

    Args:
        source: a SQuAD JSON file (`read_squad_json`); a JSONL/JSON/Parquet file, a dataset saved with
            save_to_disk or a hub name in the HF squad layout (`from_columns`).
        encoding: text encoding of JSON files.

    Raises:
        DistilError: see `read_squad_json`, `from_columns` and `load_source`.
    """
    path = Path(source).expanduser()
    if path.is_file() and path.suffix.lower() == ".json" and _is_squad_json(path):
        return read_squad_json(path, encoding)
    loaded = load_source(source, encoding)
    if isinstance(loaded, dict):
        return {name: from_columns(frame, f"{source}[{name}]") for name, frame in loaded.items()}
    return from_columns(loaded, source)


def split_articles(frame: pd.DataFrame, fractions: dict[str, float], seed: int) -> dict[str, pd.DataFrame]:
    """Split questions by article (``title``): all questions of an article fall in one split.

    ``fractions`` are shares of the articles (the remainder is 'train'); a positive fraction gets at least one
    article and train keeps at least one. Deterministic under ``seed`` (titles are sorted before the permutation,
    so row order does not matter); each split's questions are shuffled, so its first N questions span articles.
    """
    rng = np.random.default_rng(seed)
    titles = np.array(sorted(set(frame["title"].astype(str))), dtype=object)
    order = rng.permutation(len(titles))
    assigned: dict[str, str] = {}
    start = 0
    for name, fraction in fractions.items():
        n = max(int(round(len(titles) * fraction)), 1 if fraction > 0 else 0)
        n = min(n, max(len(titles) - start - 1, 0))  # train keeps >= 1 article
        assigned.update(dict.fromkeys(titles[order[start : start + n]], name))
        start += n
    assigned.update(dict.fromkeys(titles[order[start:]], "train"))
    split_of = frame["title"].astype(str).map(assigned).to_numpy()
    out = {}
    for name in ["train", *fractions]:
        rows = np.flatnonzero(split_of == name)
        out[name] = frame.iloc[rng.permutation(rows)].reset_index(drop=True)
    return out


def _carve(frame: pd.DataFrame, fractions: dict[str, float], cfg: DataConfig, where: str) -> dict[str, pd.DataFrame]:
    """`split_articles`, refusing a split that comes out empty."""
    splits = split_articles(frame, fractions, cfg.split_seed)
    refuse_empty_splits(splits, fractions, frame["title"].nunique(), where, "articles")
    return splits


def load_qa_splits(cfg: DataConfig) -> tuple[dict[str, pd.DataFrame], dict[str, dict[str, int]]]:
    """The train/validation/test questions of ``cfg.source`` and what reading dropped (held-out splits carved by
    article where the source has none; drops before a split are keyed 'all')."""
    fractions = {"validation": cfg.validation_fraction, "test": cfg.test_fraction}
    if cfg.source == "squad":
        frames = [builtin_squad(name) for name in IN_DOMAIN]
        frame = pd.concat(frames, ignore_index=True)
        for key in ("dropped_answers", "dropped_questions"):
            frame.attrs[key] = sum(f.attrs[key] for f in frames)
        return _carve(frame, fractions, cfg, "squad"), {"all": _dropped(frame)}
    loaded = load_qa_source(cfg.source, cfg.encoding)
    if not isinstance(loaded, dict):
        return _carve(_nonempty(loaded, cfg.source), fractions, cfg, cfg.source), {"all": _dropped(loaded)}
    if "train" not in loaded:
        raise DistilError(f"data '{cfg.source}': splits {sorted(loaded)} have no 'train' split")
    splits = {name: _nonempty(loaded[name], f"{cfg.source}[{name}]") for name in SPLIT_NAMES if name in loaded}
    missing = {name: fraction for name, fraction in fractions.items() if name not in splits}
    if missing:
        splits.update(_carve(splits["train"], missing, cfg, f"{cfg.source}[train]"))
    return splits, {name: _dropped(loaded[name]) for name in SPLIT_NAMES if name in loaded}


def _nonempty(frame: pd.DataFrame, where: str) -> pd.DataFrame:
    """Refuse a source without questions; ``frame`` otherwise."""
    if len(frame) == 0 and frame.attrs.get("dropped_questions", 0):
        raise DistilError(
            f"data '{where}' has no question left: the answers of all {frame.attrs['dropped_questions']} do not "
            f"match their offsets; give answers whose answer_start points at their text in the context"
        )
    if len(frame) == 0:
        raise DistilError(f"data '{where}' has no questions; give a source with questions and answers")
    return frame


def _extra_test(name: str, cfg: DataConfig) -> pd.DataFrame:
    """An extra test set: a built-in name of `SQUAD_FILES`, or a file / saved dataset (its 'test' split)."""
    if name in SQUAD_FILES:
        if cfg.source == "squad" and name in IN_DOMAIN:
            raise DistilError(
                f"data.extra_test_sets '{name}' is split into the built-in squad's train/validation/test; "
                f"choose from {', '.join(OUT_OF_DOMAIN)}"
            )
        return builtin_squad(name)
    if not Path(name).expanduser().exists():
        raise DistilError(
            f"data.extra_test_sets '{name}' is neither a built-in squad set ({', '.join(SQUAD_FILES)}) nor a file; "
            f"give one of those names or a SQuAD JSON / JSONL / Parquet file"
        )
    loaded = load_qa_source(name, cfg.encoding)
    if isinstance(loaded, dict):
        if "test" not in loaded:
            raise DistilError(f"data.extra_test_sets '{name}': splits {sorted(loaded)} have no 'test' split")
        return loaded["test"]
    return loaded


def prepare_qa_data(cfg: DataConfig) -> TaskData:
    """Load, check and split the questions of ``cfg.source`` for extractive question answering.

    ``squad`` (built-in): SQuAD v1.1 dev and new-wiki split by article under ``cfg.split_seed`` (validation and
    test fractions are shares of the articles); extra tests nyt, reddit and amazon unless data.extra_test_sets
    names others. A SQuAD JSON file or an HF-layout table is split by article too; a source with splits keeps them
    (a missing validation or test split is carved from train by article). ``max_train_samples`` /
    ``max_eval_samples`` keep the first N questions of a split, as `prepare_data` does.

    Returns:
        splits and extra tests with columns `QA_COLUMNS` plus ``text`` (the question); label names
        ["start", "end"]; ``dropped``: per split (``all`` when the source was split here) and extra test set,
        answers whose offsets do not match and questions left without one (non-zero counts only).

    Raises:
        DistilError: see `read_squad_json`, `from_columns`, `builtin_squad`; an empty split, an unknown extra
            test set.
    """
    default = OUT_OF_DOMAIN if cfg.source == "squad" else ()
    names = cfg.extra_test_sets if cfg.extra_test_sets is not None else default
    extra = {name: _nonempty(_extra_test(name, cfg), name) for name in names}  # first: a wrong name fails fast
    splits, dropped = load_qa_splits(cfg)
    dropped.update({name: _dropped(frame) for name, frame in extra.items()})
    if cfg.max_train_samples:
        splits["train"] = splits["train"].iloc[: cfg.max_train_samples].reset_index(drop=True)
    if cfg.max_eval_samples:
        for name in ("validation", "test"):
            splits[name] = splits[name].iloc[: cfg.max_eval_samples].reset_index(drop=True)
    return TaskData(
        splits={name: _with_text(splits[name]) for name in SPLIT_NAMES},
        label_names=list(LABEL_NAMES),
        extra_tests={name: _with_text(sample_rows(frame, cfg)) for name, frame in extra.items()},
        dropped={key: counts for key, counts in dropped.items() if counts},
    )


def _with_text(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with a ``text`` column holding the question (what held-out checks and augmentation read)."""
    out = frame[QA_COLUMNS].reset_index(drop=True)
    out["text"] = out["question"]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m distil.data.squad", description="Copy the built-in SQuAD files out of bigbench-1.0.0.tar.gz"
    )
    parser.add_argument("archive", help="bigbench-1.0.0.tar.gz (pip download --no-deps --no-binary :all: ...)")
    parser.add_argument("--dest", type=Path, default=None, help="folder to fill (default: $DISTIL_HOME/squad)")
    args = parser.parse_args(argv)
    try:
        dest = extract_squad(args.archive, args.dest)
    except DistilError as e:
        print(f"distil: {e}", file=sys.stderr)
        return 1
    print(f"squad: {len(SQUAD_FILES)} files ({', '.join(SQUAD_FILES)}) in {dest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
