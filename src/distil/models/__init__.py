"""Teachers and students: loading (safetensors only), building a student from teacher layers, the LSTM student.

Feature capture by forward hooks lives in :mod:`distil.models.features` (import it from there).
"""

from distil.models.loading import (
    check_same_vocabulary,
    count_parameters,
    load_classifier,
    load_tokenizer,
    vocabulary_fingerprint,
)
from distil.models.lstm import LSTMClassifier, LSTMConfig, StudentProtocol
from distil.models.student import (
    LAYER_STRATEGIES,
    copy_tensors,
    find_layer_stack,
    plan_copy,
    select_layers,
    student_from_config,
    student_from_teacher,
)

__all__ = [
    "LAYER_STRATEGIES",
    "LSTMClassifier",
    "LSTMConfig",
    "StudentProtocol",
    "check_same_vocabulary",
    "copy_tensors",
    "count_parameters",
    "find_layer_stack",
    "load_classifier",
    "load_tokenizer",
    "plan_copy",
    "select_layers",
    "student_from_config",
    "student_from_teacher",
    "vocabulary_fingerprint",
]
