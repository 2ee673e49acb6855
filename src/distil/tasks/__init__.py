"""Task units: each task family is one file declaring its data, model, teacher signal, KD term, metric and serving.

`TASKS` is the one registry, filled here explicitly (no registration by import side effect).
"""

from __future__ import annotations

from distil.errors import DistilError
from distil.options import EmbeddingConfig
from distil.tasks.base import Task
from distil.tasks.causal_lm import CausalLMTask
from distil.tasks.classification import ClassificationTask
from distil.tasks.embeddings import EmbeddingTask
from distil.tasks.question_answering import QuestionAnsweringTask
from distil.tasks.token_classification import TokenClassificationTask

TASKS: dict[str, type] = {
    ClassificationTask.name: ClassificationTask,
    TokenClassificationTask.name: TokenClassificationTask,
    QuestionAnsweringTask.name: QuestionAnsweringTask,
    EmbeddingTask.name: EmbeddingTask,
    CausalLMTask.name: CausalLMTask,
}


def get_task(name: str, **options) -> Task:
    """The task registered as ``name``, built with its ``options`` (e.g. label_all_tokens for NER).

    Raises:
        DistilError: no task has that name.
    """
    if name not in TASKS:
        raise DistilError(f"config key 'task': got {name!r}; expected one of {', '.join(TASKS)}")
    return TASKS[name](**options)


def task_for_model(config: dict) -> Task:
    """The task a saved model serves, from its config.json (``architectures``; a distil LSTM's ``per_token``)."""
    names = config.get("architectures") or []
    if "distil_sentence" in config:  # a SentenceEncoder's settings (distil.models.sentence.SENTENCE_KEY)
        length = (config["distil_sentence"] or {}).get("max_seq_length") or EmbeddingConfig.eval_max_length
        return EmbeddingTask(EmbeddingConfig(eval_max_length=int(length)))
    if any(str(n).endswith("ForCausalLM") for n in names):
        return CausalLMTask()
    if any(str(n).endswith("ForQuestionAnswering") for n in names):
        return QuestionAnsweringTask(**config.get("distil_qa", {}))
    if any(str(n).endswith("ForTokenClassification") for n in names) or config.get("per_token"):
        return TokenClassificationTask()
    return ClassificationTask()


def task_of(cfg) -> Task:
    """The task of a `distil.config.RunConfig`, with the options its config sets."""
    if cfg.task == QuestionAnsweringTask.name:
        return QuestionAnsweringTask.from_data_config(cfg.data)
    if cfg.task == EmbeddingTask.name:
        return EmbeddingTask(cfg.embedding)
    if cfg.task == CausalLMTask.name:
        return CausalLMTask(cfg.causal_lm)
    options = {"label_all_tokens": cfg.data.label_all_tokens} if cfg.task == TokenClassificationTask.name else {}
    return get_task(cfg.task, **options)


__all__ = [
    "TASKS",
    "CausalLMTask",
    "ClassificationTask",
    "EmbeddingTask",
    "QuestionAnsweringTask",
    "Task",
    "TokenClassificationTask",
    "get_task",
    "task_for_model",
    "task_of",
]
