"""TinyBERT data augmentation: N variants of each sentence with words replaced by plausible neighbours.

Algorithm 1 of Jiao et al. 2020 ("TinyBERT: Distilling BERT for Natural Language Understanding", Findings of
EMNLP 2020, https://arxiv.org/abs/1909.10351): for every word of a sentence a candidate set is built once, then
each of ``num_variants`` variants replaces every word with probability ``replace_prob`` by a uniform pick from
its candidates. Candidates of a word that is one word piece come from a masked LM (mask the word, take the top-K
predictions); those of a word of several pieces come from the K nearest neighbours by cosine similarity in a
word-embedding matrix. The paper uses GloVe for the latter; here it is the teacher's input embedding matrix
(``teacher.get_input_embeddings().weight``), a multi-piece word being the mean of its pieces' embeddings.

No model with a masked-LM head installs offline (../shared/ASSETS.md), so ``method="embedding"`` (every word
gets embedding neighbours) is the default for real data; ``method="mlm"`` takes any ``*ForMaskedLM`` model.

Choices where the paper says nothing, kept deliberately simple:
- A word is a unit of the tokenizer's pre-tokeniser (whitespace and punctuation split); only alphabetic words
  of two letters or more are replaced (no punctuation, numbers, or the "t" of "don't").
- Candidates are whole-word vocabulary tokens: alphabetic, not special, not "##" continuations, never the word
  itself. Tokenizers must therefore be WordPiece (BERT, MiniLM, MPNet); the case of the original word is kept.
- Every sentence yields exactly ``num_variants`` variants; one may equal its source when no word was drawn.
- Randomness comes from ``numpy.random.default_rng([seed, row])``: a row's variants depend only on its text,
  the candidates and the seed, not on the batch size or the other rows.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from distil.config import AugmentationConfig
from distil.errors import DistilError
from distil.io import atomic_dir, sha256_file, write_json
from distil.models.loading import vocabulary_fingerprint

AUGMENT_FORMAT_VERSION = 1
EMBEDDING_CHUNK = 1024  # queries per cosine-similarity matmul: (1024, H) @ (H, ~22k) stays ~90 MB in float32
PROGRESS_MIN_ROWS = 1000


@dataclass
class _Word:
    """One replaceable word of a sentence: its character span and the positions/ids of its word pieces."""

    start: int
    end: int
    positions: list[int]  # indices into the sentence's input_ids ([CLS] is 0)
    ids: tuple[int, ...]


def candidate_vocab(tokenizer, num_rows: int) -> np.ndarray:
    """Which token ids may replace a word: alphabetic, not special, not '##' pieces. Bool (num_rows,)."""
    if not getattr(tokenizer, "is_fast", False):
        raise DistilError(f"augmentation needs a fast tokenizer (word offsets); got {type(tokenizer).__name__}")
    size = len(tokenizer)
    if num_rows < size:
        raise DistilError(
            f"augmentation: the model has {num_rows} vocabulary rows but the tokenizer has {size} "
            f"tokens; use the model that goes with the tokenizer"
        )
    tokens = tokenizer.convert_ids_to_tokens(list(range(size)))
    if not any(t.startswith("##") for t in tokens):
        raise DistilError(
            f"augmentation supports WordPiece tokenizers (BERT, MiniLM, MPNet); "
            f"{type(tokenizer).__name__} has no '##' continuation pieces"
        )
    allowed = np.zeros(num_rows, dtype=bool)
    allowed[:size] = [t.isalpha() for t in tokens]  # '##x', '[unused0]', punctuation and digits are not alphabetic
    allowed[[i for i in tokenizer.all_special_ids if i < num_rows]] = False
    return allowed


def sentence_words(
    text: str, offsets: list[tuple[int, int]], word_ids: list[int | None], input_ids: list[int]
) -> list[_Word]:
    """The replaceable words of one tokenised sentence (alphabetic, two letters or more), in text order."""
    pieces: dict[int, list[int]] = {}
    for pos, word in enumerate(word_ids):
        if word is not None:
            pieces.setdefault(word, []).append(pos)
    words = []
    for positions in pieces.values():
        start, end = offsets[positions[0]][0], offsets[positions[-1]][1]
        surface = text[start:end]
        if len(surface) >= 2 and surface.isalpha():
            words.append(_Word(start, end, positions, tuple(input_ids[p] for p in positions)))
    return words


@torch.inference_mode()
def embedding_candidates(
    words: list[tuple[int, ...]], embedding_matrix: torch.Tensor, allowed: np.ndarray, top_k: int
) -> dict[tuple[int, ...], np.ndarray]:
    """The ``top_k`` allowed tokens nearest (cosine) to each word; a word of several pieces is their mean.

    Args:
        words: distinct words as tuples of token ids.
        embedding_matrix: (V, H) input embeddings.
        allowed: bool (V,), the tokens that may be candidates; a word's own pieces never are.

    Returns:
        {word: token ids (K,)}, nearest first.
    """
    matrix = torch.as_tensor(embedding_matrix).detach().float().cpu()  # (V, H)
    allowed_ids = torch.from_numpy(np.flatnonzero(allowed))  # (A,)
    where = torch.full((matrix.shape[0],), -1, dtype=torch.long)
    where[allowed_ids] = torch.arange(len(allowed_ids))  # token id -> column in the (A,) candidate set
    keys = F.normalize(matrix[allowed_ids], dim=-1)  # (A, H)
    k = min(top_k, len(allowed_ids))
    out: dict[tuple[int, ...], np.ndarray] = {}
    for start in range(0, len(words), EMBEDDING_CHUNK):
        chunk = words[start : start + EMBEDDING_CHUNK]
        queries = torch.stack([matrix[list(ids)].mean(0) for ids in chunk])  # (m, H)
        scores = F.normalize(queries, dim=-1) @ keys.T  # (m, A)
        for row, ids in enumerate(chunk):
            own = where[list(ids)]
            scores[row, own[own >= 0]] = float("-inf")
        top = scores.topk(k, dim=-1)
        for row, ids in enumerate(chunk):
            keep = torch.isfinite(top.values[row])
            out[ids] = allowed_ids[top.indices[row][keep]].numpy()
    return out


@torch.inference_mode()
def mlm_candidates(
    mlm_model,
    windows: list[list[int]],
    queries: list[tuple[int, int]],
    allowed: np.ndarray,
    top_k: int,
    mask_token_id: int,
    pad_token_id: int,
    batch_size: int,
) -> list[np.ndarray]:
    """Top-``top_k`` masked-LM predictions for each masked position, many sentences per forward pass.

    A forward pre-hook on the output embeddings (the vocabulary projection) keeps only the masked position of
    each row, so the (B, L, V) logits are never built: the projection sees (B, 1, H).

    Args:
        windows: token ids of each sentence as the model sees them (with [CLS]/[SEP], at most max_length).
        queries: (sentence, position) pairs; each becomes one row with that position set to [MASK].
        allowed: bool (V,) tokens that may be predicted; the masked word's own id never is.

    Returns:
        one array of token ids (K,) per query, most probable first.
    """
    mlm_model.eval()
    device = next(mlm_model.parameters()).device
    head = mlm_model.get_output_embeddings()
    state: dict[str, torch.Tensor] = {}

    def only_masked(module, args):
        hidden = args[0]  # (B, L, H)
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        return (hidden[rows, state["pos"].to(hidden.device)].unsqueeze(1),) + tuple(args[1:])  # (B, 1, H)

    handle = head.register_forward_pre_hook(only_masked) if head is not None else None
    allowed_t = torch.from_numpy(allowed).to(device)
    k = min(top_k, int(allowed.sum()))
    order = sorted(range(len(queries)), key=lambda q: len(windows[queries[q][0]]))  # similar lengths pad less
    out: list[np.ndarray] = [np.zeros(0, dtype=np.int64)] * len(queries)
    batches = range(0, len(order), batch_size)
    try:
        for start in tqdm(batches, desc="augment: masked LM", unit="batch", disable=len(batches) < 20):
            chunk = order[start : start + batch_size]
            longest = max(len(windows[queries[q][0]]) for q in chunk)
            ids = torch.full((len(chunk), longest), pad_token_id, dtype=torch.long)  # (B, L)
            mask = torch.zeros((len(chunk), longest), dtype=torch.long)  # (B, L)
            for r, q in enumerate(chunk):
                window = windows[queries[q][0]]
                ids[r, : len(window)] = torch.tensor(window)
                mask[r, : len(window)] = 1
            pos = torch.tensor([queries[q][1] for q in chunk])  # (B,)
            rows = torch.arange(len(chunk))
            original = ids[rows, pos].clone()  # (B,)
            ids[rows, pos] = mask_token_id
            state["pos"] = pos
            logits = mlm_model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            logits = logits[:, 0] if handle is not None else logits[rows.to(device), pos.to(device)]  # (B, V)
            logits = logits.float().masked_fill(~allowed_t[: logits.shape[-1]], float("-inf"))
            logits[rows.to(device), original.to(device)] = float("-inf")
            top = logits.topk(k, dim=-1).indices.cpu().numpy()  # (B, K)
            for r, q in enumerate(chunk):
                out[q] = top[r]
    finally:
        if handle is not None:
            handle.remove()
    return out


def _match_case(candidate: str, original: str) -> str:
    if original.isupper():
        return candidate.upper()
    if original[0].isupper():
        return candidate[:1].upper() + candidate[1:]
    return candidate


def _variants(
    text: str,
    words: list[_Word],
    candidates: list[np.ndarray],
    tokens: list[str],
    cfg: AugmentationConfig,
    rng: np.random.Generator,
) -> list[str]:
    """``cfg.num_variants`` copies of ``text``, each word replaced with probability replace_prob by a candidate."""
    highs = np.array([max(len(c), 1) for c in candidates], dtype=np.int64)
    out = []
    for _ in range(cfg.num_variants):
        replace = rng.random(len(words)) < cfg.replace_prob  # drawn for every word, so draws never shift
        picks = rng.integers(0, highs) if len(words) else np.zeros(0, dtype=np.int64)
        parts, last = [], 0
        for word, cands, rep, pick in zip(words, candidates, replace, picks):
            if rep and len(cands):
                parts += [text[last : word.start], _match_case(tokens[int(cands[pick])], text[word.start : word.end])]
                last = word.end
        out.append("".join(parts) + text[last:])
    return out


def _embedding_matrix(mlm_model, embedding_matrix) -> torch.Tensor:
    if embedding_matrix is not None:
        return torch.as_tensor(embedding_matrix)
    if mlm_model is not None:
        return mlm_model.get_input_embeddings().weight
    raise DistilError(
        "augmentation: method 'embedding' needs embedding_matrix (the teacher's input embeddings, "
        "teacher.get_input_embeddings().weight) or an mlm_model"
    )


def _candidates(
    texts: list[str],
    enc,
    words: list[list[_Word]],
    tokenizer,
    cfg: AugmentationConfig,
    mlm_model,
    matrix: torch.Tensor,
    allowed: np.ndarray,
) -> list[list[np.ndarray]]:
    """Candidate token ids for every word of every sentence: masked LM where it applies, embeddings elsewhere."""
    found: dict[tuple[int, int], np.ndarray] = {}
    if cfg.method == "mlm":
        windows = []
        for ids in enc["input_ids"]:
            windows.append(ids if len(ids) <= cfg.max_length else ids[: cfg.max_length - 1] + [ids[-1]])
        queries = [
            (i, w.positions[0])
            for i, ws in enumerate(words)
            for w in ws
            if len(w.positions) == 1 and w.positions[0] < len(windows[i]) - 1
        ]
        tops = mlm_candidates(
            mlm_model,
            windows,
            queries,
            allowed,
            cfg.top_k,
            tokenizer.mask_token_id,
            tokenizer.pad_token_id or 0,
            cfg.batch_size,
        )
        found = {(i, pos): top for (i, pos), top in zip(queries, tops)}
    rest = sorted({w.ids for i, ws in enumerate(words) for w in ws if (i, w.positions[0]) not in found})
    nearest = embedding_candidates(rest, matrix, allowed, cfg.top_k) if rest else {}
    return [[found.get((i, w.positions[0]), nearest.get(w.ids)) for w in ws] for i, ws in enumerate(words)]


def augment_texts(
    texts: list[str],
    tokenizer,
    cfg: AugmentationConfig,
    mlm_model=None,
    embedding_matrix: torch.Tensor | np.ndarray | None = None,
) -> list[tuple[int, str]]:
    """``cfg.num_variants`` augmented variants of every text (TinyBERT, Alg. 1).

    Args:
        texts: the sentences to augment.
        tokenizer: the teacher's fast WordPiece tokenizer.
        cfg: augmentation settings.
        mlm_model: a ``*ForMaskedLM`` model over the same vocabulary; needed for ``method="mlm"``.
        embedding_matrix: (V, H) word-piece embeddings for nearest neighbours, normally the teacher's
            ``get_input_embeddings().weight``; defaults to ``mlm_model``'s input embeddings.

    Returns:
        (source row, variant text) pairs: rows in order, ``num_variants`` per row.

    Raises:
        DistilError: a needed model or matrix is missing, the tokenizer is not fast WordPiece, or the matrix
            is smaller than the vocabulary.
    """
    if cfg.method == "mlm" and mlm_model is None:
        raise DistilError(
            "augmentation: method 'mlm' needs mlm_model (a *ForMaskedLM model); no such model "
            "installs offline, so use method 'embedding' with the teacher's input embeddings"
        )
    matrix = _embedding_matrix(mlm_model, embedding_matrix)
    vocab_rows = matrix.shape[0] if mlm_model is None else max(matrix.shape[0], mlm_model.config.vocab_size)
    allowed = candidate_vocab(tokenizer, vocab_rows)
    allowed[matrix.shape[0] :] = False  # tokens without an embedding row cannot be neighbours
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    texts = [str(t) for t in texts]
    enc = tokenizer(texts, return_offsets_mapping=True, verbose=False)
    words = [
        sentence_words(t, enc["offset_mapping"][i], enc.word_ids(i), enc["input_ids"][i]) for i, t in enumerate(texts)
    ]
    candidates = _candidates(texts, enc, words, tokenizer, cfg, mlm_model, matrix, allowed)
    out: list[tuple[int, str]] = []
    for i in tqdm(range(len(texts)), desc="augment", unit="text", disable=len(texts) < PROGRESS_MIN_ROWS):
        rng = np.random.default_rng([cfg.seed or 0, i])
        out += [(i, v) for v in _variants(texts[i], words[i], candidates[i], tokens, cfg, rng)]
    return out


def augment_frame(
    frame: pd.DataFrame,
    tokenizer,
    cfg: AugmentationConfig,
    mlm_model=None,
    embedding_matrix: torch.Tensor | np.ndarray | None = None,
    text_column: str = "text",
) -> pd.DataFrame:
    """``frame`` followed by ``cfg.num_variants`` augmented copies of each row.

    A variant copies every column of its source row (its label included; TinyBERT trains on the teacher's soft
    labels of the variants anyway) except ``text_column``; a ``text_pair`` column is kept as is. The column
    ``augmented_from`` holds the source row's position for variants and -1 for the originals.
    """
    if text_column not in frame.columns:
        raise DistilError(f"augmentation: column '{text_column}' is missing; columns are {list(frame.columns)}")
    pairs = augment_texts(frame[text_column].astype(str).tolist(), tokenizer, cfg, mlm_model, embedding_matrix)
    source = np.array([i for i, _ in pairs], dtype=np.int64)
    variants = frame.iloc[source].copy()
    variants[text_column] = [text for _, text in pairs]
    out = pd.concat([frame, variants], ignore_index=True)
    out["augmented_from"] = np.concatenate([np.full(len(frame), -1, dtype=np.int64), source])
    return out


def augment_key(frame: pd.DataFrame, tokenizer, cfg: AugmentationConfig, model_hash: str) -> str:
    """Cache key: sha256 of every column's values, the settings (batch size aside), the vocabulary, the model."""
    ignored = ("batch_size", "enabled", "max_source_rows", "mlm_model")  # the model is in model_hash
    settings = {k: v for k, v in asdict(cfg).items() if k not in ignored}
    h = hashlib.sha256(
        json.dumps(
            {
                "v": AUGMENT_FORMAT_VERSION,
                "cfg": settings,
                "vocab": vocabulary_fingerprint(tokenizer),
                "model": model_hash,
                "columns": list(map(str, frame.columns)),
                "rows": len(frame),
            },
            sort_keys=True,
        ).encode()
    )
    for column in frame.columns:
        h.update(json.dumps(frame[column].tolist(), default=str).encode())
    return h.hexdigest()[:32]


def _load_verified(entry: Path, key: str, rows: int) -> tuple[pd.DataFrame | None, str]:
    if not entry.exists():
        return None, "miss"
    try:
        import pyarrow.parquet as pq

        meta = json.loads((entry / "meta.json").read_text())
        data = entry / "augmented.parquet"
        if meta.get("version") != AUGMENT_FORMAT_VERSION or meta.get("key") != key or meta.get("rows") != rows:
            return None, "stale"
        if sha256_file(data) != meta.get("sha256") or pq.ParquetFile(data).metadata.num_rows != rows:
            return None, "corrupt"
        return pd.read_parquet(data), "hit"
    except (OSError, ValueError, KeyError, json.JSONDecodeError):
        return None, "corrupt"


def cached_augment(
    frame: pd.DataFrame,
    tokenizer,
    cfg: AugmentationConfig,
    cache_dir: str | Path,
    model_hash: str,
    mlm_model=None,
    embedding_matrix: torch.Tensor | np.ndarray | None = None,
    text_column: str = "text",
) -> pd.DataFrame:
    """`augment_frame`, computed once and kept in ``<cache_dir>/augmented/<key>/``.

    The entry holds ``augmented.parquet`` and ``meta.json`` (key, row count, sha256 of the parquet file); it is
    written to a temporary directory and renamed into place, and verified on every load: an entry with a wrong
    row count or checksum is deleted and rebuilt, never used.

    Args:
        model_hash: identifies the weights the candidates come from (`distil.engine.teacher_cache.hash_model` of the
            teacher whose embeddings are used, or of the masked LM).

    Returns:
        the augmented frame; ``result.attrs["augment_cache"]`` is {"status": "hit" | "built" | "rebuilt (<why>)",
        "path": entry directory}.
    """
    key = augment_key(frame, tokenizer, cfg, model_hash)
    entry = Path(cache_dir).expanduser() / "augmented" / key
    rows = len(frame) * (1 + cfg.num_variants)
    out, status = _load_verified(entry, key, rows)
    if out is None:
        out = augment_frame(frame, tokenizer, cfg, mlm_model, embedding_matrix, text_column)
        if entry.exists():
            shutil.rmtree(entry)
        with atomic_dir(entry) as tmp:
            out.to_parquet(tmp / "augmented.parquet", index=False)
            write_json(
                tmp / "meta.json",
                {
                    "version": AUGMENT_FORMAT_VERSION,
                    "key": key,
                    "rows": len(out),
                    "sha256": sha256_file(tmp / "augmented.parquet"),
                    "source_rows": len(frame),
                    "config": asdict(cfg),
                    "model": model_hash,
                },
            )
        status = "built" if status == "miss" else f"rebuilt ({status})"
    out.attrs["augment_cache"] = {"status": status, "path": str(entry)}
    return out
