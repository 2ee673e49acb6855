"""Data: sources, splits, tokenisation and batching."""

from distil.data.prepare import (
    TEACHER_PREFIX,
    PadCollator,
    TaskData,
    add_teacher_tokens,
    prepare_data,
    stratified_split,
    to_dataset,
    tokenize_frame,
)
from distil.data.sources import BUILTIN_SOURCES, load_source

__all__ = [
    "BUILTIN_SOURCES",
    "TEACHER_PREFIX",
    "PadCollator",
    "TaskData",
    "add_teacher_tokens",
    "load_source",
    "prepare_data",
    "stratified_split",
    "to_dataset",
    "tokenize_frame",
]
