"""Semantic search over a corpus with a sentence-embedding student: `distil index` and `distil search`.

    from distil.deploy.search import build_index, search
    build_index("runs/emb/student", "corpus.txt", "runs/emb/index")     # one text per line (or a text column)
    search("runs/emb/index", ["how do I reset my password"], top_k=5)   # [[{"rank", "id", "text", "score"}, ...]]

An index directory holds::

    index.faiss     a faiss IndexFlatIP of the L2-normalised embeddings (exact search; cosine = inner product),
                    in faiss's own binary format (never pickle)
    texts.jsonl     {"id", "text"} per line; ids are the corpus's non-empty texts in order, 0..N-1
    index.json      format, model (absolute path), variant, fingerprint, dim, count, metric, max_length, seconds

The model is loaded with `distil.deploy.serving.load_student` (a torch folder or an ONNX export). Its fingerprint
(`model_fingerprint`: the weight files and the pooling settings) is stored, so a search with another model, whose
vectors would not be comparable, is refused rather than answered with meaningless neighbours.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from distil.data.sources import load_source
from distil.deploy.serving import load_student
from distil.errors import DistilError
from distil.io import atomic_dir, read_json

INDEX_FORMAT = 1
INDEX_FILE, TEXTS_FILE, META_FILE = "index.faiss", "texts.jsonl", "index.json"
DEFAULT_MAX_LENGTH = 256
EMBED_CHUNK = 1024
"""Texts per `Predictor.logits` call while indexing: the progress bar moves once per chunk."""
_WEIGHT_PATTERNS = ("*.safetensors", "*.onnx", "*.onnx.data")  # model.onnx.data: an export's external weights


# ----------------------------------------------------------------------------------------------- fingerprint


def model_fingerprint(path: str | os.PathLike) -> str:
    """A short id of a model directory's weights: sha256 (hex, first 16 characters) over the sorted relative paths
    and bytes of its weight files (``*.safetensors`` at the root and in sub-folders such as 2_Dense, ``*.onnx``
    and ``*.onnx.data``) and config.json's ``distil_sentence`` settings (pooling, normalisation, projection).

    Raises:
        DistilError: ``path`` is not a directory or holds no weight files.
    """
    root = Path(path)
    if not root.is_dir():
        raise DistilError(f"model '{root}' is not a directory; pass a saved model or export folder")
    files = sorted(
        {f for pattern in _WEIGHT_PATTERNS for f in root.rglob(pattern) if f.is_file()},
        key=lambda f: f.relative_to(root).as_posix(),
    )
    files = [f for f in files if not any(part.startswith(".") for part in f.relative_to(root).parts)]
    if not files:
        raise DistilError(f"model '{root}' holds no *.safetensors or *.onnx weights to fingerprint")
    h = hashlib.sha256()
    for f in files:
        rel = f.relative_to(root).as_posix().encode("utf-8")
        h.update(len(rel).to_bytes(8, "little") + rel)
        h.update(f.stat().st_size.to_bytes(8, "little"))
        with open(f, "rb") as stream:
            while block := stream.read(1 << 22):
                h.update(block)
    settings = _config(root).get("distil_sentence")
    h.update(b"distil_sentence:" + json.dumps(settings, sort_keys=True).encode("utf-8"))
    return h.hexdigest()[:16]


def _config(model_dir: Path) -> dict:
    try:
        config = read_json(model_dir / "config.json")
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


def _default_max_length(model_dir: Path) -> int:
    """config.json's distil_sentence.max_seq_length, else sentence_bert_config.json's, else 256."""
    settings = _config(model_dir).get("distil_sentence") or {}
    value = settings.get("max_seq_length") if isinstance(settings, dict) else None
    if not value and (model_dir / "sentence_bert_config.json").is_file():
        try:
            value = read_json(model_dir / "sentence_bert_config.json").get("max_seq_length")
        except (OSError, ValueError, AttributeError):
            value = None
    return int(value) if value else DEFAULT_MAX_LENGTH


# ----------------------------------------------------------------------------------------------- corpus


def read_corpus(corpus: str | os.PathLike, text_column: str = "text") -> list[str]:
    """The corpus's non-empty texts in order: a ``.txt`` (or ``.txt.gz``) file holds one text per line (blank
    lines skipped); any other file is read by `distil.data.sources.load_source` and its ``text_column`` taken.

    Raises:
        DistilError: the file is missing or unreadable, lacks ``text_column``, or holds no non-empty text.
    """
    path = Path(corpus).expanduser()
    if not path.is_file():
        raise DistilError(f"corpus '{corpus}' does not exist; give a file with one text per line (or a text column)")
    name = path.name.lower()
    if name.endswith((".txt", ".txt.gz")):
        opener = gzip.open if name.endswith(".gz") else open
        try:
            with opener(path, "rt", encoding="utf-8-sig") as f:
                texts = [line.rstrip("\r\n") for line in f]
        except (OSError, UnicodeDecodeError) as e:
            raise DistilError(f"corpus '{corpus}' could not be read as UTF-8 text ({type(e).__name__}: {e})") from None
        texts = [t for t in texts if t.strip()]
    else:
        frame = load_source(str(path))
        if isinstance(frame, dict):  # a dataset saved with save_to_disk: several splits
            raise DistilError(
                f"corpus '{corpus}' holds several splits ({', '.join(frame)}); give one file (CSV, TSV, JSONL, "
                "Parquet or .txt)"
            )
        if text_column not in frame.columns:
            raise DistilError(
                f"corpus '{corpus}' has no column '{text_column}' (columns: {', '.join(map(str, frame.columns))}); "
                "pass the one holding the texts with --text-column"
            )
        texts = [str(t) for t in frame[text_column].tolist() if _present(t) and str(t).strip()]
    if not texts:
        raise DistilError(
            f"corpus '{corpus}' has no non-empty text; give a file with one text per line (or a text column)"
        )
    return texts


def _present(value: Any) -> bool:
    if value is None:
        return False
    try:
        return not bool(np.isnan(value))
    except (TypeError, ValueError):
        return True


# ----------------------------------------------------------------------------------------------- building


def _load_encoder(model: str | os.PathLike, variant: str | None):

    predictor = load_student(model, variant)
    if predictor.task.name != "embeddings":
        raise DistilError(
            f"model '{model}' is a {predictor.task.name} model, not a sentence encoder; pass a sentence-embedding "
            "model (a `distil run embeddings` student or a sentence-transformers folder)"
        )
    return predictor


def _unit(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm, float32 and C-contiguous as faiss wants them (zero rows stay zero)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)  # (N, 1)
    return np.ascontiguousarray(vectors / np.maximum(norms, 1e-12), dtype=np.float32)


def build_index(
    model: str | os.PathLike,
    corpus: str | os.PathLike,
    out: str | os.PathLike,
    *,
    variant: str | None = None,
    batch_size: int = 64,
    max_length: int | None = None,
    text_column: str = "text",
) -> dict:
    """Embed every text of ``corpus`` with ``model`` and write a search index to ``out`` (replaced whole).

    Args:
        model: a sentence-embedding model folder (torch or ONNX export), as `load_student` reads it.
        corpus: ``.txt`` / ``.txt.gz`` (one text per line) or a CSV/TSV/JSONL/Parquet file with ``text_column``.
        out: the index directory.
        variant: the `load_student` variant (None: auto).
        batch_size: texts per forward pass.
        max_length: tokens per text (None: the model's max_seq_length, else 256).
        text_column: the column holding the texts of a tabular corpus.

    Returns:
        index.json's contents.

    Raises:
        DistilError: a bad corpus, a model that is not a sentence encoder, or a bad batch size / max length.
    """
    import faiss
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise DistilError(f"batch_size={batch_size}: must be >= 1")
    if max_length is not None and max_length < 2:
        raise DistilError(f"max_length={max_length}: must be >= 2")
    target = Path(out)
    if target.exists() and (not target.is_dir() or any(target.iterdir())) and not (target / META_FILE).is_file():
        raise DistilError(
            f"--out '{target}' exists and is not a search index (no {META_FILE}); an index replaces its folder "
            "whole: give a new or empty folder, or an existing index"
        )
    texts = read_corpus(corpus, text_column)
    start = time.perf_counter()
    predictor = _load_encoder(model, variant)
    model_dir = Path(predictor.path).resolve()
    max_length = max_length or _default_max_length(model_dir)
    chunks = []
    with tqdm(total=len(texts), desc="index: embedding", unit="text", disable=len(texts) < EMBED_CHUNK) as bar:
        for i in range(0, len(texts), EMBED_CHUNK):
            chunk = texts[i : i + EMBED_CHUNK]
            chunks.append(predictor.logits(chunk, batch_size=batch_size, max_length=max_length))  # (n, D)
            bar.update(len(chunk))
    vectors = _unit(np.concatenate(chunks))  # (N, D)
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    meta = {
        "format": INDEX_FORMAT,
        "model": str(model_dir),
        "variant": predictor.variant,
        "fingerprint": model_fingerprint(model_dir),
        "dim": int(vectors.shape[1]),
        "count": len(texts),
        "metric": "cosine",
        "max_length": int(max_length),
        "seconds": round(time.perf_counter() - start, 2),
    }
    with atomic_dir(out, overwrite=True) as tmp:
        faiss.write_index(index, str(tmp / INDEX_FILE))
        with open(tmp / TEXTS_FILE, "w", encoding="utf-8") as f:
            for i, text in enumerate(texts):
                f.write(json.dumps({"id": i, "text": text}, ensure_ascii=False) + "\n")
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return meta


# ----------------------------------------------------------------------------------------------- searching


def read_index_meta(index_dir: str | os.PathLike) -> dict:
    """index.json of ``index_dir``, checked.

    Raises:
        DistilError: no index.json, or one that is not a distil index of a known format.
    """
    index_dir = Path(index_dir)
    hint = f"build one with `distil index MODEL CORPUS --out {index_dir}`"
    try:
        meta = read_json(index_dir / META_FILE)
    except FileNotFoundError:
        raise DistilError(f"index '{index_dir}': no {META_FILE}; {hint}") from None
    except (OSError, ValueError) as e:
        raise DistilError(f"index '{index_dir}': {META_FILE} is unreadable ({type(e).__name__}); {hint}") from None
    keys = ("format", "model", "fingerprint", "dim", "count")
    if not isinstance(meta, dict) or any(k not in meta for k in keys):
        raise DistilError(f"index '{index_dir}': {META_FILE} is not a distil index (no {'/'.join(keys)}); {hint}")
    if meta["format"] != INDEX_FORMAT:
        raise DistilError(
            f"index '{index_dir}': format {meta['format']!r}; this distil reads format {INDEX_FORMAT}; rebuild it "
            f"with `distil index MODEL CORPUS --out {index_dir}`"
        )
    for name in (INDEX_FILE, TEXTS_FILE):
        if not (index_dir / name).is_file():
            raise DistilError(
                f"index '{index_dir}': {name} is missing; rebuild it: distil index MODEL CORPUS --out {index_dir}"
            )
    return meta


def _read_texts(path: Path) -> list[str]:
    texts = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                texts.append(json.loads(line)["text"])
    return texts


def search(
    index_dir: str | os.PathLike,
    queries: Sequence[str],
    *,
    top_k: int = 5,
    model: str | os.PathLike | None = None,
    variant: str | None = None,
    batch_size: int = 32,
) -> list[list[dict]]:
    """The ``top_k`` nearest corpus texts of each query, by cosine similarity.

    Args:
        index_dir: a directory written by `build_index`.
        queries: the query texts.
        top_k: hits per query (capped at the corpus size).
        model: the model that embeds the queries (None: the one that built the index); it must be that model.
        variant: the `load_student` variant (None: the index's variant for its own model, else auto).
        batch_size: queries per forward pass.

    Returns:
        Per query, a list of {"rank" (1-based), "id", "text", "score" (cosine)}, best first.

    Raises:
        DistilError: no index, no queries, top_k < 1, or a model other than the one that built the index.
    """
    import faiss

    if isinstance(queries, str) or not isinstance(queries, Sequence):
        raise DistilError(f"queries: got {type(queries).__name__}; pass a list of strings (wrap one as [query])")
    if not queries:
        raise DistilError("search: no queries given; pass at least one query text")
    for i, q in enumerate(queries):
        if not isinstance(q, str):
            raise DistilError(f"queries[{i}]: got {type(q).__name__}; expected a string")
    if top_k < 1:
        raise DistilError(f"top_k={top_k}: must be >= 1")
    index_dir = Path(index_dir)
    meta = read_index_meta(index_dir)
    if model is None:
        model, variant = meta["model"], variant or meta.get("variant")
        if not Path(model).exists():
            raise DistilError(
                f"index '{index_dir}' was built with model '{model}', which no longer exists; pass the same model "
                "with --model (model=...), or rebuild the index"
            )
    predictor = _load_encoder(model, variant)
    fingerprint = model_fingerprint(predictor.path)
    if fingerprint != meta["fingerprint"] and Path(predictor.path).resolve() == Path(meta["model"]):
        raise DistilError(
            f"index '{index_dir}' was built with model '{meta['model']}' (fingerprint {meta['fingerprint']}); its "
            f"weights have changed since (fingerprint {fingerprint}): rebuild the index: distil index "
            f"{meta['model']} CORPUS --out {index_dir}"
        )
    if fingerprint != meta["fingerprint"]:
        raise DistilError(
            f"index '{index_dir}' was built with model '{meta['model']}' (fingerprint {meta['fingerprint']}); "
            f"'{model}' is another model (fingerprint {fingerprint}): search with the model that built it, or "
            f"rebuild the index: distil index {model} CORPUS --out {index_dir}"
        )
    max_length = int(meta.get("max_length") or DEFAULT_MAX_LENGTH)
    vectors = _unit(predictor.logits(list(queries), batch_size=batch_size, max_length=max_length))  # (Q, D)
    if vectors.shape[1] != meta["dim"]:
        raise DistilError(
            f"index '{index_dir}' holds {meta['dim']}-d vectors but model '{model}' gives {vectors.shape[1]}-d "
            "query vectors; search with the model that built the index, or rebuild it"
        )
    index = faiss.read_index(str(index_dir / INDEX_FILE))
    texts = _read_texts(index_dir / TEXTS_FILE)
    if index.ntotal != len(texts) or index.d != meta["dim"]:
        raise DistilError(
            f"index '{index_dir}': {INDEX_FILE} holds {index.ntotal} {index.d}-d vectors but {TEXTS_FILE} "
            f"{len(texts)} texts and {META_FILE} dim {meta['dim']}; rebuild it"
        )
    k = min(top_k, index.ntotal)
    scores, ids = index.search(vectors, k)  # (Q, k) each, best first
    return [
        [
            {"rank": rank, "id": int(i), "text": texts[i], "score": float(s)}
            for rank, (i, s) in enumerate(zip(row_ids, row_scores), 1)
            if i >= 0
        ]
        for row_ids, row_scores in zip(ids, scores)
    ]


__all__ = ["build_index", "model_fingerprint", "read_corpus", "read_index_meta", "search"]
