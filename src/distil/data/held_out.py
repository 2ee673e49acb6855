"""Texts that must never be trained on: every validation, test and extra test text of a run.

General distillation corpora and augmentation sources are filtered against this set, so a student is never
scored on a sentence it (or its teacher's signal) was trained on. Texts are compared after normalising
whitespace and case (`normalise`); the counts of what was removed go into the report.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import pandas as pd

HELD_OUT_SPLITS = ("validation", "test")


def normalise(text: object) -> str:
    """``text`` with runs of whitespace collapsed to one space, stripped and case-folded."""
    return " ".join(str(text).split()).casefold()


def held_out_texts(splits: Mapping[str, pd.DataFrame], extra_tests: Mapping[str, pd.DataFrame]) -> frozenset[str]:
    """The normalised texts (text pairs' second texts, QA's contexts) of the validation, test and extra test sets.

    Args:
        splits: the run's splits by name (train is ignored).
        extra_tests: the out-of-domain test sets by name.

    Returns:
        a set of normalised texts; empty strings are left out.
    """
    frames = [splits[name] for name in HELD_OUT_SPLITS if name in splits] + list(extra_tests.values())
    out: set[str] = set()
    for frame in frames:
        for column in ("text", "text_pair", "context"):
            if column in frame:
                out.update(normalise(t) for t in frame[column].dropna())
    out.discard("")
    return frozenset(out)


def is_held_out(texts: Iterable[object], held_out: frozenset[str]) -> list[bool]:
    """Per text: whether its normalised form is one of ``held_out``."""
    return [normalise(t) in held_out for t in texts]
