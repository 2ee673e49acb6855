"""Task option sections of the run config: each task family's own knobs, beside the shared ones in `distil.config`.

A section is a dataclass like the others (YAML key = field, CLI flag = dotted path, refusals name the key).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from distil.dataclass_io import ConfigError


def _check(cond: bool, key: str, value, valid: str) -> None:
    if not cond:
        raise ConfigError(key, value, valid)


@dataclass
class EmbeddingConfig:
    """Sentence embeddings (`task: embeddings`): the KD terms and the evaluation sets' sizes."""

    mse_weight: float = 1.0
    """MSE between the student's and the teacher's embedding, mean over the elements (sentence-transformers'
    model distillation)."""
    cosine_weight: float = 0.0
    """1 - cosine(student embedding, teacher embedding), mean over the batch."""
    relation_weight: float = 0.0
    """MSE between the student's and the teacher's in-batch cosine-similarity matrices (B x B): needs no
    projection when the widths differ."""
    dim: int | None = None
    """Reduce the student's embeddings to this size (e.g. 768 -> 256): a Dense layer set to the top principal
    components of the teacher's training embeddings, and the teacher's targets projected onto the same components
    (sentence-transformers' dimensionality reduction); null: the teacher's size."""
    eval_max_length: int = 256
    """Tokens per text of the evaluation sets (Lee documents, SQuAD paragraphs, BBC article bodies)."""
    max_queries: int | None = 1000
    """Retrieval sets: a seeded sample of at most this many queries (null: every query)."""
    bbc_articles: int = 400
    """BBC News articles held out for title -> body retrieval (seeded by data.split_seed); no text of them is
    trained on."""

    def __post_init__(self):
        for key in ("mse_weight", "cosine_weight", "relation_weight"):
            _check(getattr(self, key) >= 0, key, getattr(self, key), "a number >= 0")
        total = self.mse_weight + self.cosine_weight + self.relation_weight
        _check(total > 0, "mse_weight", self.mse_weight, "a KD term: mse, cosine or relation weight > 0")
        _check(8 <= self.eval_max_length <= 8192, "eval_max_length", self.eval_max_length, "an int in 8..8192")
        _check(self.max_queries is None or self.max_queries >= 1, "max_queries", self.max_queries,
               "null or an int >= 1")  # fmt: skip
        _check(self.dim is None or self.dim >= 2, "dim", self.dim, "null or an int >= 2")
        _check(self.bbc_articles >= 10, "bbc_articles", self.bbc_articles, "an int >= 10")


DIVERGENCES = ("forward_kl", "reverse_kl", "jsd")


@dataclass
class CausalLMConfig:
    """Text generation (`task: causal-lm`): the teacher's cached top-k signal, the KD divergence, on-policy batches,
    the data budget and the generation samples of the report."""

    top_k: int = 64
    """Next-token log-probabilities the cache keeps per token (the rest is one tail bucket); ids are stored as uint16
    when the vocabulary fits (2 + 2 bytes per kept token)."""
    divergence: str = "forward_kl"
    """forward_kl: KL(teacher || student) (Hinton, DistillKit); reverse_kl: KL(student || teacher) (MiniLLM);
    jsd: generalised Jensen-Shannon with ``beta`` (GKD); all over the top-k buckets plus the tail, docs/losses.md."""
    beta: float = 0.5
    """jsd only: the teacher's weight in the mixture; 0 and 1 are forward and reverse KL (TRL's convention)."""
    lmbda: float = 0.0
    """Fraction of training batches that are on-policy (GKD): the student continues each block's first
    ``on_policy_prompt`` tokens and the live teacher scores the continuation (full vocabulary)."""
    on_policy_prompt: int = 32
    """On-policy batches: prompt tokens kept from each block before the student generates."""
    on_policy_new_tokens: int = 64
    """On-policy batches: tokens the student samples after the prompt."""
    max_train_tokens: int | None = 400_000
    """Training text budget in tokens (a seeded sample of whole training blocks); null: every block."""
    max_eval_tokens: int | None = 40_000
    """Tokens of each evaluation set (validation, test) kept, whole blocks; null: every block."""
    sample_prompts: int = 3
    """Test documents whose opening the report continues with every model (greedy), side by side."""
    sample_new_tokens: int = 48
    """Tokens each model generates for the report's samples."""
    speed_prompt_tokens: int = 32
    """Generation speed: prompt length (batch 1)."""
    speed_new_tokens: int = 128
    """Generation speed: new tokens generated (greedy, batch 1, KV cache)."""

    def __post_init__(self):
        _check(self.top_k >= 1, "top_k", self.top_k, "an int >= 1 (at most the vocabulary size)")
        _check(self.divergence in DIVERGENCES, "divergence", self.divergence, " | ".join(DIVERGENCES))
        _check(0.0 <= self.beta <= 1.0, "beta", self.beta, "a number in [0, 1]")
        _check(0.0 <= self.lmbda <= 1.0, "lmbda", self.lmbda, "a number in [0, 1] (fraction of on-policy batches)")
        for key in ("on_policy_prompt", "on_policy_new_tokens", "sample_new_tokens", "speed_prompt_tokens",
                    "speed_new_tokens"):  # fmt: skip
            _check(getattr(self, key) >= 1, key, getattr(self, key), "an int >= 1")
        _check(self.sample_prompts >= 0, "sample_prompts", self.sample_prompts, "an int >= 0")
        for key in ("max_train_tokens", "max_eval_tokens"):
            value = getattr(self, key)
            _check(value is None or value >= 1, key, value, "null or an int >= 1")


SAMPLERS = ("tpe", "grid", "random", "nsga2")
PRUNERS = ("median", "hyperband", "none")
RECIPE_CHOICES = ("kd", "distilbert", "tinybert", "minilm")


@dataclass
class TuneConfig:
    """`distil tune`: an Optuna study over the run's own fields (dotted keys, as the CLI flags), the teacher
    trained and its outputs cached once for every trial; trials are ranked on validation, the pick is tested once."""

    sampler: str = "tpe"
    """tpe (Bayesian), grid (every combination of `grid:` lists once), random, nsga2 (several objectives)."""
    objectives: list[str] = field(default_factory=list)
    """What the study optimises: validation.<metric> of the task (accuracy, f1, spearman, perplexity...),
    latency_ms.b<batch> or params; empty: [validation.<the task's headline metric>]."""
    space: dict = field(default_factory=dict)
    """Dotted config key -> {low, high[, log, step]} | {choices: [...]} | {grid: [...]}; a stage's field is
    stages.<stage name>.<field> (e.g. stages.task.loss.alpha)."""
    trials: int | None = 20
    """Finished trials the study ends with (pruned ones count); grid with null: every combination."""
    pruner: str = "median"
    """Stop hopeless trials at an evaluation: median (Optuna's MedianPruner), hyperband, none."""
    keep_best: int = 3
    """Finished trials whose student folder is kept (the best by the first objective; the Pareto front with two)."""
    storage: str | None = None
    """Optuna storage URL shared by workers (e.g. postgresql://..., sqlite:////shared/study.db); null: a SQLite
    file in output_dir/tune/."""
    study_name: str | None = None
    """The study's name in the storage; null: distil-<output_dir's folder name>-<crc32 of its full path>."""
    compare_default: bool = True
    """Also train the configuration as written (no tuned values) once, and compare the pick with it on test."""
    preset: str | None = None
    """auto: search student shapes and recipes under max_latency_ms / max_params (two objectives)."""
    max_latency_ms: float | None = None
    """preset auto: the student's batch-1 CPU latency budget (ms, eval.latency_seq_length tokens)."""
    max_params: int | None = None
    """preset auto: the student's parameter budget."""
    recipes: list[str] = field(default_factory=lambda: list(RECIPE_CHOICES))
    """preset auto: the recipes searched (kd, distilbert, tinybert, minilm)."""

    def __post_init__(self):
        _check(self.sampler in SAMPLERS, "sampler", self.sampler, " | ".join(SAMPLERS))
        _check(self.pruner in PRUNERS, "pruner", self.pruner, " | ".join(PRUNERS))
        _check(self.trials is None or self.trials >= 1, "trials", self.trials, "null or an int >= 1")
        _check(self.keep_best >= 1, "keep_best", self.keep_best, "an int >= 1")
        _check(self.preset in (None, "auto"), "preset", self.preset, "null or auto")
        for key in ("max_latency_ms", "max_params"):
            value = getattr(self, key)
            _check(value is None or value > 0, key, value, "null or a number > 0")
        bad = [r for r in self.recipes if r not in RECIPE_CHOICES]
        _check(bool(self.recipes) and not bad, "recipes", self.recipes, f"a non-empty list of {RECIPE_CHOICES}")
        _check(len(self.objectives) <= 2, "objectives", self.objectives, "one or two objectives")


SHARDED = ("nothing yet: sharded training (FSDP, DeepSpeed) needs every process to save a model, and distil saves "
           "from the main process; use DDP (one model per process)")  # fmt: skip
TRAINER_ARGS_OWNED = {
    **dict.fromkeys(("num_train_epochs", "max_steps"), "train.epochs"),
    "learning_rate": "train.learning_rate",
    "per_device_train_batch_size": "train.batch_size",
    "per_device_eval_batch_size": "train.eval_batch_size",
    "gradient_accumulation_steps": "train.gradient_accumulation_steps",
    **dict.fromkeys(("warmup_steps", "warmup_ratio"), "train.warmup_ratio"),
    "weight_decay": "train.weight_decay",
    "max_grad_norm": "train.max_grad_norm",
    "bf16": "train.bf16",
    **dict.fromkeys(("save_steps", "eval_steps", "save_strategy", "eval_strategy"), "train.save_steps"),
    "logging_steps": "train.logging_steps",
    **dict.fromkeys(("seed", "data_seed"), "seed"),
    "output_dir": "output_dir",
    **dict.fromkeys(("metric_for_best_model", "greater_is_better", "load_best_model_at_end", "label_names",
                     "remove_unused_columns"), "the task (set by distil)"),  # fmt: skip
    **dict.fromkeys(("ddp_timeout", "ddp_backend"), "DISTIL_DDP_TIMEOUT (the process group opens before the Trainer)"),
    **dict.fromkeys(("fsdp", "fsdp_config", "deepspeed"), SHARDED),
}  # fmt: skip
"""TrainingArguments that `train.trainer_args` may not set, with what sets them instead."""


def check_trainer_args(args: dict) -> None:
    """Refuse `train.trainer_args` keys that are not TrainingArguments fields or that distil sets itself."""
    import dataclasses  # noqa: PLC0415 - read once, when a config has trainer_args

    from transformers import TrainingArguments  # noqa: PLC0415 - transformers only when a config has trainer_args

    unknown = sorted(set(args) - {f.name for f in dataclasses.fields(TrainingArguments)})
    _check(not unknown, "trainer_args", unknown, "names of transformers.TrainingArguments fields")
    for key in args:
        _check(
            key not in TRAINER_ARGS_OWNED,
            f"trainer_args.{key}",
            args[key],
            f"unset: use {TRAINER_ARGS_OWNED.get(key)}",
        )
