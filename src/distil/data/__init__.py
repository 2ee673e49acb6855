"""Data: sources, splits, tokenisation and batching."""

from distil.data.prepare import PadCollator, TaskData, prepare_data, stratified_split, to_dataset, tokenize_frame
from distil.data.sources import BUILTIN_SOURCES, load_source

__all__ = [
    "BUILTIN_SOURCES",
    "PadCollator",
    "TaskData",
    "load_source",
    "prepare_data",
    "stratified_split",
    "to_dataset",
    "tokenize_frame",
]
