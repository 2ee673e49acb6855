"""The text a stage trains on beyond the task's training split: the general-distillation corpus and TinyBERT's
augmented split, both without any validation/test text (`distil.data.held_out`), both counted for the report."""

from __future__ import annotations

import dataclasses
import hashlib
import time

import numpy as np
import pandas as pd
from transformers import AutoModelForMaskedLM

from distil.config import StageConfig
from distil.data.augment import cached_augment
from distil.data.corpus import read_corpus, tokenize_unlabelled
from distil.data.held_out import is_held_out
from distil.engine import processes
from distil.engine.teacher_cache import hash_model
from distil.errors import DistilError
from distil.models.loading import load_pretrained
from distil.models.packaged import resolve_model

Context = object  # distil.engine.stages.Context (which imports this module)


def stage_dataset(ctx: Context, stage: StageConfig, teacher) -> str:
    """Name of the dataset a stage trains on, preparing it (general text, augmented split) on first use."""
    if stage.data == "general":
        if "general" not in ctx.datasets:
            g = ctx.cfg.general_data
            corpus = read_corpus(g.source, g.text_column, g.max_rows, seed=ctx.cfg.seed, held_out=ctx.held_out())
            ctx.frames["general"] = pd.DataFrame({"text": corpus.texts})
            ctx.datasets["general"] = tokenize_unlabelled(corpus.texts, ctx.tokenizer, g.max_length)
            ctx.data_notes["general"] = {
                "source": g.source,
                "texts": len(corpus.texts),
                "removed_held_out": corpus.removed_held_out,
            }
            print(
                f"general distillation data: {g.source}: {len(corpus.texts)} texts "
                f"({corpus.removed_held_out} validation/test texts removed)"
            )
        return "general"
    if not (stage.augment and ctx.cfg.augment.enabled):
        return "train"
    if "train_augmented" not in ctx.datasets:
        ctx.frames["train_augmented"] = ctx.task.after_augment(augmented_frame(ctx, teacher))
        ctx.datasets["train_augmented"] = ctx.task.tokenize(
            ctx.frames["train_augmented"], ctx.tokenizer, ctx.cfg.data.max_length, "train_augmented"
        )
    return "train_augmented"


def augmented_frame(ctx: Context, teacher):
    """The training split plus TinyBERT variants of (the first max_source_rows of) it, cached on disk."""
    a, frame = ctx.cfg.augment, ctx.data.splits["train"]
    source = frame.iloc[: a.max_source_rows] if a.max_source_rows else frame
    # A training row whose text is also a validation/test text is not augmented (it stays, unaugmented, as part of
    # the user's split); variants that happen to equal a held-out text are dropped.
    leaked = np.asarray(is_held_out(source["text"], ctx.held_out()), dtype=bool)
    unaugmented = source[leaked]
    source = source[~leaked].reset_index(drop=True)
    embeddings = teacher.get_input_embeddings().weight.detach().cpu()
    mlm = load_mlm(a.mlm_model) if a.method == "mlm" else None
    model_hash = hashlib.sha256(embeddings.float().numpy().tobytes()).hexdigest() if mlm is None else hash_model(mlm)
    start = time.perf_counter()
    with processes.main_first():  # several processes: the main one builds the cache entry, the others read it
        out = cached_augment(
            source,
            ctx.tokenizer,
            dataclasses.replace(a, seed=ctx.cfg.seed if a.seed is None else a.seed),
            ctx.cfg.cache_path,
            model_hash,
            mlm_model=mlm,
            embedding_matrix=embeddings,
        )
    info = out.attrs.get("augment_cache", {})
    variant_leaks = np.asarray(is_held_out(out["text"], ctx.held_out()), dtype=bool)
    out = pd.concat([out[~variant_leaks], unaugmented], ignore_index=True)
    if a.max_source_rows and len(frame) > a.max_source_rows:
        out = pd.concat([out, frame.iloc[a.max_source_rows :]], ignore_index=True)
    ctx.data_notes["augment"] = {
        "source_rows": len(source),
        "removed_held_out": int(leaked.sum()),
        "variants_removed_held_out": int(variant_leaks.sum()),
    }
    ctx.timings["augment"] = time.perf_counter() - start
    print(f"augmentation: {info.get('status', '?')}: {len(frame)} -> {len(out)} training rows")
    return out.reset_index(drop=True)


def load_mlm(path_or_name: str):

    try:
        return load_pretrained(AutoModelForMaskedLM, resolve_model(path_or_name))
    except DistilError as e:
        raise DistilError(f"augment.mlm_model: {e}") from None
