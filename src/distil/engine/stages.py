"""The stages of a run, each usable alone: teacher -> teacher outputs -> student (+ baseline); the task unit
(`distil.tasks`) says what differs per task, the run folder (`distil.engine.run_dir`) what is done.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import set_seed

from distil.config import RunConfig, StageConfig, to_dict
from distil.data import PadCollator, TaskData, add_teacher_tokens
from distil.data.held_out import held_out_texts
from distil.engine import processes
from distil.engine.distiller import (
    DISTILLER_STATE_FILE,
    DistillerCheckpointCallback,
    DistillerSyncCallback,
    load_distiller_state,
    make_distiller,
)
from distil.engine.preflight import check_model_pair
from distil.engine.run_dir import (  # noqa: F401  (the run-folder API, re-exported for the stage functions' users)
    MODEL_STAGES,
    check_output_dir,
    load_stage_model,
    open_run_dir,
    open_work_dir,
    previous_history,
    run_started,
    save_stage_model,
    write_config,
)
from distil.engine.stage_data import augmented_frame, load_mlm, stage_dataset  # noqa: F401  (re-exported)
from distil.engine.teacher_cache import soft_labels_for
from distil.engine.teachers import multi_teacher_soft_labels
from distil.engine.trainer import DistillationTrainer, metrics_for, training_arguments
from distil.errors import DistilError
from distil.io import atomic_path, write_json
from distil.models.loading import check_same_vocabulary, load_classifier, load_tokenizer
from distil.models.lstm import LSTMClassifier, LSTMConfig
from distil.models.packaged import resolve_model
from distil.models.student import select_layers, student_from_config, student_from_teacher
from distil.tasks import Task, task_of


@dataclass
class Context:
    """What the stages of one run share: config, data, tokenizer, datasets, timings."""

    cfg: RunConfig
    resume: bool = False
    callbacks: list = field(default_factory=list)
    data: TaskData | None = None
    tokenizer: object = None
    student_tokenizer: object = None
    """The student's own tokenizer when it differs from the teacher's (a pretrained student); None otherwise."""
    datasets: dict = field(default_factory=dict)
    frames: dict = field(default_factory=dict)
    student_datasets: dict = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    data_notes: dict[str, dict] = field(default_factory=dict)
    """What was done to training text beyond the split (general corpus, augmentation), for the report."""
    _held_out: frozenset[str] | None = None
    stage_dirs: dict[str, Path] = field(default_factory=dict)
    """Saved stages that live outside ``out`` (a tuning trial reads the study's one teacher)."""
    roles: dict[str, str] = field(default_factory=dict)
    """The report's names for the saved models, where they differ from `distil.report.report.ROLES`."""

    _task: Task | None = None

    @property
    def task(self) -> Task:
        """The task unit of this run (`task:` in the config)."""
        if self._task is None or self._task.name != self.cfg.task:
            self._task = task_of(self.cfg)
        return self._task

    @property
    def out(self) -> Path:
        return self.cfg.output_path

    def stage_dir(self, stage: str) -> Path:
        return self.stage_dirs.get(stage, self.out / stage)

    def share_data(self, other: Context) -> None:
        """Read the data another context of the same data and teacher already loaded (a tuning trial)."""
        for name in ("data", "tokenizer", "student_tokenizer", "_held_out"):
            setattr(self, name, getattr(other, name))
        self.datasets, self.frames = dict(other.datasets), dict(other.frames)
        self.student_datasets = dict(other.student_datasets)
        mine, theirs = self.cfg, other.cfg
        same = (mine.task, mine.embedding, mine.causal_lm) == (theirs.task, theirs.embedding, theirs.causal_lm)
        if same and other._task is not None:  # the task's state from reading the data (label names, truncation)
            self._task = other._task

    def done(self, stage: str) -> bool:
        return (self.stage_dir(stage) / "config.json").is_file()

    def collator(self, student: bool = False) -> PadCollator:
        """Pads the teacher's datasets, or with ``student`` the student's (which may carry the teacher's tokens)."""
        pad = self.tokenizer.pad_token_id or 0
        if student and self.student_tokenizer is not None:
            return PadCollator(self.student_tokenizer.pad_token_id or 0, teacher_pad_token_id=pad)
        return PadCollator(pad)

    def student_dataset(self, name: str):
        """``datasets[name]`` as the student reads it: the same rows in the student's own tokens, with the
        teacher's tokens beside them, when the two tokenizers differ; otherwise ``datasets[name]`` itself."""
        if self.student_tokenizer is None:
            return self.datasets[name]
        if name not in self.student_datasets:
            max_len = self.cfg.general_data.max_length if name == "general" else self.cfg.data.max_length
            own = self.task.tokenize(self.frames[name], self.student_tokenizer, max_len, name)
            self.student_datasets[name] = add_teacher_tokens(
                own, self.datasets[name], self.student_tokenizer, self.tokenizer
            )
        return self.student_datasets[name]

    def dataset(self, name: str, student: bool):
        """``datasets[name]`` as the student (``student_dataset``) or the teacher reads it."""
        return self.student_dataset(name) if student else self.datasets[name]

    def truncated(self) -> dict[str, int]:
        """Per split, the examples that lost words to max_length (tasks that count them: token classification)."""
        return {k: v for k, v in getattr(self.task, "truncated", {}).items() if v and not k.startswith("train_")}

    def held_out(self) -> frozenset[str]:
        """Normalised texts of the validation, test and extra test sets: never trained on."""
        if self._held_out is None:
            self._held_out = held_out_texts(self.data.splits, self.data.extra_tests) | self.data.held_out
        return self._held_out

    def tokenizer_of(self, stage: str):
        """The tokenizer a saved stage reads."""
        return self.student_tokenizer if stage != "teacher" and self.student_tokenizer is not None else self.tokenizer

    def load_data(self) -> None:
        """Read, split and tokenise the data once per process (the teacher's tokenizer is the run's)."""
        if self.data is not None:
            return
        own_loader = getattr(self.task, "load_tokenizer", None)  # e.g. a causal LM's GGUF file
        teacher_path = resolve_model(self.cfg.teacher.model)
        self.tokenizer = own_loader(teacher_path, self.cfg.cache_path) if own_loader else load_tokenizer(teacher_path)
        s = self.cfg.student
        if s.init == "pretrained":
            own = load_tokenizer(resolve_model(s.pretrained))
            if not check_same_vocabulary(self.tokenizer, own, allow_different=s.allow_different_vocab):
                if getattr(self.task, "one_tokenizer", False):  # rows are windows cut per tokenizer (QA)
                    raise DistilError(
                        f"student.pretrained '{s.pretrained}': its tokenizer differs from the teacher's, and a "
                        f"{self.task.name} run cuts rows per tokenizer; use a student with the teacher's vocabulary"
                    )
                self.student_tokenizer = own
                print(f"student tokenizer ({s.pretrained}) differs from the teacher's: each reads its own tokens")
        self.data = self.task.prepare(self.cfg.data)
        max_len = self.cfg.data.max_length
        for name, frame in {**self.data.splits, **{f"extra:{k}": v for k, v in self.data.extra_tests.items()}}.items():
            self.frames[name] = frame
            self.datasets[name] = self.task.tokenize(frame, self.tokenizer, max_len, name)
        skipped = {k: v for k, v in self.data.skipped_empty.items() if v}
        sizes = ", ".join(f"{k} {len(v)}" for k, v in self.data.splits.items())
        print(
            f"data: {self.cfg.data.source}: {sizes}; labels {self.data.label_names}"
            + (f"; skipped empty rows: {skipped}" if skipped else "")
            + (f"; dropped while reading: {self.data.dropped}" if self.data.dropped else "")
            + (f"; cut at their max_length (QA: questions): {self.truncated()}" if self.truncated() else "")
        )


def check_models(ctx: Context) -> None:
    """Before the teacher trains: the student can be built from it (layer list against its depth, widths, heads)
    and every stage's loss terms can run on the pair. Uses the teacher as it is before fine-tuning (the same
    shapes), so a bad student or recipe costs seconds, not the teacher's training."""
    if any(stage.augment for stage in student_stages(ctx.cfg)) and ctx.cfg.augment.enabled:
        ctx.cfg.augment.check_model()
    if ctx.cfg.teacher.additional and not getattr(ctx.task.auto_model_class, "labelled", True):
        raise DistilError(
            f"teacher.additional: several teachers are combined as class probabilities; the {ctx.task.name} task's "
            "teacher writes vectors: distil one teacher (teacher.additional: [])"
        )
    teacher = load_stage_model(ctx, "teacher") if ctx.done("teacher") else _general_teacher(ctx)
    positions = getattr(teacher.config, "max_position_embeddings", None)
    if isinstance(positions, int) and ctx.cfg.data.max_length > positions:
        raise DistilError(
            f"data.max_length={ctx.cfg.data.max_length}: longer than the teacher reads ({positions} positions); "
            f"use at most {positions}"
        )
    student = build_student(ctx, teacher)
    check_model_pair(student_stages(ctx.cfg), teacher, student)


def _fit(
    ctx: Context,
    stage: str,
    model,
    train_cfg,
    distiller=None,
    train_dataset=None,
    evaluate: bool = True,
    student: bool = True,
) -> dict:
    """Train ``model`` with the Trainer (resuming from the stage's last checkpoint), keep the best on validation.
    ``student``: the model reads the student's datasets (false for the teacher)."""
    evaluate = evaluate and getattr(ctx.task, "validates", True)  # a task without a validation pass keeps the last
    work = ctx.out / "work" / stage
    needs = [DISTILLER_STATE_FILE] if distiller is not None and distiller.state_for_checkpoint() else []
    resume_from = open_work_dir(work, ctx.resume, needs)
    train_dataset = train_dataset if train_dataset is not None else ctx.dataset("train", student)
    args = training_arguments(
        train_cfg,
        work,
        ctx.cfg.seed,
        len(train_dataset),
        evaluate=evaluate,
        best_metric=ctx.task.best_metric,
        lower_is_better=getattr(ctx.task, "lower_is_better", False),
    )
    callbacks = list(ctx.callbacks) + ([DistillerCheckpointCallback(distiller)] if distiller is not None else [])
    if distiller is not None and processes.world() > 1:
        callbacks.append(DistillerSyncCallback(distiller))
    trainer = DistillationTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=ctx.dataset("validation", student),
        data_collator=ctx.collator(student=student),
        compute_metrics=metrics_for(ctx.task, ctx.data.label_names, ctx.dataset("validation", student)),
        distiller=distiller,
        group_by_length=train_cfg.group_by_length,
        task=ctx.task,
        callbacks=callbacks,
    )
    if resume_from:
        print(f"{stage}: resuming from {resume_from}")
        if distiller is not None:
            load_distiller_state(distiller, resume_from)
    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=resume_from)
    seconds = time.perf_counter() - start
    best = trainer.evaluate() if evaluate else {}  # without validation the last weights are kept
    return {
        "train_seconds": seconds,
        "train_steps": result.global_step,
        "train_rows": len(train_dataset),
        "best_validation": best,
        "best_checkpoint": trainer.state.best_model_checkpoint,
        "log_history": trainer.state.log_history,
        "resumed_from": resume_from,
    }


def run_teacher(ctx: Context) -> Path:
    """Stage 1: load the teacher; fine-tune it on the task unless it is used as is; save it to teacher/."""
    cfg = ctx.cfg
    set_seed(cfg.seed)
    teacher = _load_teacher(ctx)
    fine_tune = cfg.teacher.fine_tune and getattr(ctx.task, "trains_teacher", True)
    if cfg.teacher.fine_tune and not fine_tune:
        print(f"teacher: used as it is (a {ctx.task.name} teacher is not fine-tuned; teacher.fine_tune is ignored)")
    history: dict = {"source": cfg.teacher.model, "fine_tuned": fine_tune}
    if fine_tune:
        history.update(_fit(ctx, "teacher", teacher, cfg.teacher.train, student=False))
    ctx.timings["teacher"] = history.get("train_seconds", 0.0)
    return save_stage_model(ctx, "teacher", teacher, history)


def run_soft_labels(ctx: Context, teacher=None, dataset_name: str = "train", kd_temperature: float | None = None):
    """Stage 2: the teacher's logits on a training set, from the cache or computed once (several teachers: each
    from its own cache entry, combined as configured)."""
    cfg = ctx.cfg
    teacher = teacher if teacher is not None else load_stage_model(ctx, "teacher")
    dataset = ctx.datasets[dataset_name]
    common = dict(
        max_length=cfg.data.max_length, batch_size=cfg.teacher.soft_label_batch_size, bf16=cfg.teacher.train.bf16
    )
    start = time.perf_counter()
    if cfg.teacher.additional:
        others = [
            load_classifier(resolve_model(p), auto_class=ctx.task.auto_model_class) for p in cfg.teacher.additional
        ]
        soft = multi_teacher_soft_labels(
            [teacher, *others],
            cfg.teacher.weights,
            ctx.tokenizer,
            dataset,
            ctx.collator(),
            cfg.cache_path,
            how=cfg.teacher.combine,
            kd_temperature=kd_temperature or cfg.loss.kd_temperature,
            **common,
        )
    else:
        signals = getattr(ctx.task, "signals", None)  # a task's own arrays (a causal LM's top-k), else logits
        soft = soft_labels_for(
            teacher,
            ctx.tokenizer,
            dataset,
            ctx.collator(),
            cfg.cache_path,
            per_token=ctx.task.per_token,
            task=ctx.task.name,
            signals=signals(teacher.config.vocab_size) if signals is not None else None,
            signal_settings=ctx.task.signal_settings() if signals is not None else None,
            **common,
        )
    seconds = time.perf_counter() - start
    ctx.timings[f"soft_labels:{dataset_name}"] = seconds
    arrays = getattr(soft, "arrays", None)  # several teachers' combination holds logits alone
    shape = next(iter(arrays.values())).data.shape if arrays else soft.logits.shape  # logits, or a task's first array
    info = {
        "fingerprint": soft.fingerprint,
        "status": soft.status,
        "path": str(soft.path),
        "shape": list(shape),
        "rows": dataset_name,
        "seconds": round(seconds, 2),
        "teachers": 1 + len(cfg.teacher.additional),
    }
    if hasattr(ctx.task, "bytes_per_token"):
        info["bytes_per_token"] = round(ctx.task.bytes_per_token(soft), 1)
    if processes.is_main():
        write_json(ctx.out / "soft_labels.json", info)
    print(f"soft labels: {soft.status} {soft.path} {tuple(shape)} in {seconds:.1f}s")
    return soft


def build_student(ctx: Context, teacher, untrained: bool = False) -> torch.nn.Module:
    """A fresh student as configured (the same one for the distilled run and the baseline); ``untrained``: the
    baseline of a task without labels, which is used as built (no learned parts are added to it)."""
    s, data = ctx.cfg.student, ctx.data
    set_seed(ctx.cfg.seed)
    if s.init == "teacher-layers":
        n = teacher.config.num_hidden_layers
        layers = select_layers(s.layers, n, s.num_layers)
        student = student_from_teacher(teacher, layers)
    elif s.init == "config" and hasattr(ctx.task, "student_from_config"):  # a decoder keeps its family's layout
        student = ctx.task.student_from_config(teacher.config, s)
    elif s.init == "config":
        student = student_from_config(
            teacher.config,
            num_hidden_layers=s.num_layers,
            hidden_size=s.hidden_size or teacher.config.hidden_size,
            num_attention_heads=s.num_attention_heads or teacher.config.num_attention_heads,
            intermediate_size=s.intermediate_size or 4 * (s.hidden_size or teacher.config.hidden_size),
            num_labels=len(data.label_names) or None,
            model_class=ctx.task.auto_model_class,
        )
    elif s.init == "pretrained":
        path = resolve_model(s.pretrained)
        student = load_classifier(
            path,
            num_labels=len(data.label_names),
            id2label=data.id2label,
            label2id=data.label2id,
            auto_class=ctx.task.auto_model_class,
        )
    else:
        student = LSTMClassifier(
            LSTMConfig(
                vocab_size=len(ctx.tokenizer),
                embedding_dim=s.lstm_embedding_dim,
                hidden_size=s.lstm_hidden_size,
                num_layers=s.lstm_num_layers,
                num_labels=len(data.label_names),
                pad_token_id=ctx.tokenizer.pad_token_id or 0,
                id2label=data.id2label,
                label2id=data.label2id,
                per_token=ctx.task.per_token,
            )
        )
    adapt = getattr(ctx.task, "adapt_student", None)  # e.g. a projection to the teacher's embedding size
    return (adapt(student, teacher, untrained=untrained) if adapt is not None else student).train()


def student_stages(cfg: RunConfig) -> list[StageConfig]:
    """The stages that train the student: the configured ones (less skip_stages), or one of `loss` + `distill`."""
    if not cfg.stages:
        return [StageConfig(name="student", loss=cfg.loss, train=cfg.distill)]
    names = [s.name for s in cfg.stages]
    unknown = [n for n in cfg.skip_stages if n not in names]
    if unknown:
        raise DistilError(f"skip_stages: no stage named {unknown[0]!r}; stages are {names}")
    stages = [s for s in cfg.stages if s.name not in cfg.skip_stages]
    if not stages:
        raise DistilError(f"skip_stages {cfg.skip_stages} leaves no stage to run")
    return stages


def _load_teacher(ctx: Context):
    """The configured teacher as it is: with the task's head (new when the checkpoint has none), or through the
    task's own loader (a causal LM's GGUF file, dequantised once into the cache)."""
    path = resolve_model(ctx.cfg.teacher.model)
    own_loader = getattr(ctx.task, "load_teacher", None)
    if own_loader is not None:
        return own_loader(path, ctx.cfg.cache_path)
    data = ctx.data
    return load_classifier(
        path,
        auto_class=ctx.task.auto_model_class,
        num_labels=len(data.label_names),
        id2label=data.id2label,
        label2id=data.label2id,
    )


def _general_teacher(ctx: Context):
    """General distillation learns from the pretrained encoder, before any task fine-tuning (TinyBERT, MiniLM)."""
    return _load_teacher(ctx).eval()


def _train_student(ctx: Context, student, teacher, live_teacher: bool) -> dict:
    """Run every stage on ``student`` in order; a finished non-final stage is kept for --resume."""
    from safetensors.torch import load_model, save_model

    stages = student_stages(ctx.cfg)
    history: dict = {"stages": []}
    for i, stage in enumerate(stages):
        final = i == len(stages) - 1
        work = stage.name if len(stages) > 1 else "student"
        kept = ctx.out / "work" / "stages" / f"{stage.name}.safetensors"
        if not final and ctx.resume and kept.is_file():
            if getattr(ctx.task, "fits_to_teacher", False):  # the kept weights are those of a reduced student
                ctx.task.fit_to_teacher(student, run_soft_labels(ctx, teacher).logits)
            load_model(student, str(kept))
            print(f"stage {stage.name}: done (kept {kept})")
            continue
        stage_teacher = _general_teacher(ctx) if stage.data == "general" else teacher
        dataset = stage_dataset(ctx, stage, teacher)
        soft = None
        if stage.data == "task" and stage.loss.logits_weight > 0 and not live_teacher:
            soft = run_soft_labels(ctx, teacher, dataset, kd_temperature=stage.loss.kd_temperature)
        if stage.data == "task" and getattr(ctx.task, "fits_to_teacher", False):  # e.g. an embedding reduction
            fitted = soft if soft is not None else run_soft_labels(ctx, teacher, dataset)
            ctx.task.fit_to_teacher(student, fitted.logits)
        distiller = make_distiller(
            stage.loss, stage_teacher, student, soft, bf16_teacher=stage.train.bf16, task=ctx.task
        )
        rows = _aligned_rows(ctx, ctx.student_dataset(dataset), distiller)
        print(f"stage {stage.name}: {type(distiller).__name__} on {dataset} ({len(rows)} rows)")
        evaluate = stage.data == "task" and stage.loss.logits_weight > 0 and getattr(ctx.task, "validates", True)
        result = _fit(ctx, work, student, stage.train, distiller, rows, evaluate=evaluate)
        result.update(
            name=stage.name,
            data=dataset,
            teacher_signal="live teacher" if soft is None else "cached soft labels",
            loss=to_dict(stage.loss),
            data_notes=ctx.data_notes.get({"general": "general", "train_augmented": "augment"}.get(dataset, "")),
        )
        history["stages"].append(result)
        if not final:
            if processes.is_main():
                kept.parent.mkdir(parents=True, exist_ok=True)
                with atomic_path(kept) as tmp:
                    save_model(student, str(tmp))
            processes.barrier()
    last = history["stages"][-1] if history["stages"] else {}
    history.update({k: last.get(k) for k in ("best_validation", "log_history")})
    history["train_seconds"] = sum(s["train_seconds"] for s in history["stages"])
    return history


def _aligned_rows(ctx: Context, dataset, distiller):
    """With two tokenizers, token-level terms (a teacher feature tap) train only on rows both split into the same
    word pieces, so position i means the same thing in both models."""
    if ctx.student_tokenizer is None or getattr(distiller, "teacher_tap", None) is None:
        return dataset
    kept = dataset.filter(lambda aligned: aligned, input_columns="aligned")
    print(f"token-level terms with two tokenizers: {len(kept)} of {len(dataset)} rows hold the same word pieces")
    if len(kept) == 0:
        raise DistilError(
            "token-level loss: no training row holds the same word pieces for teacher and student; "
            "use logit losses only (feature weights 0) with this student"
        )
    return kept


def run_student(ctx: Context, live_teacher: bool = False) -> dict[str, Path]:
    """Stage 3: distil the student from the teacher (every configured stage); then the same student without it."""
    cfg = ctx.cfg
    teacher = load_stage_model(ctx, "teacher")
    saved = {}
    redo = cfg.overwrite and not ctx.resume  # `distil student --overwrite` replaces finished students
    if redo or not ctx.done("student"):
        student = build_student(ctx, teacher)  # first: a bad student config fails before any teacher work
        history = {"init": cfg.student.init, "layers": getattr(student, "distil_layer_map", None)}
        history.update(_train_student(ctx, student, teacher, live_teacher), processes=processes.world())
        ctx.timings["student"] = history["train_seconds"]
        saved["student"] = save_stage_model(ctx, "student", student, history)
    if cfg.baseline and (redo or not ctx.done("baseline")):
        untrained = not getattr(ctx.task, "trains_baseline", True)
        student = build_student(ctx, teacher, untrained=untrained)
        if getattr(ctx.task, "fits_to_teacher", False):  # the same reduction as the distilled student's
            ctx.task.fit_to_teacher(student, run_soft_labels(ctx, teacher).logits)
        history = {
            "init": cfg.student.init,
            "layers": getattr(student, "distil_layer_map", None),
            "loss": "cross-entropy on hard labels only (no teacher)",
            "description": baseline_description(
                cfg, ctx.task.best_metric, validates=getattr(ctx.task, "validates", True)
            ),
            "train": to_dict(cfg.distill),
        }
        if not untrained:
            history.update(_fit(ctx, "baseline", student, cfg.distill))
        else:  # no labels to train on: the student as built (an embeddings student: the cut model, its pooling)
            history.update(loss="none (untrained)", train=None, train_seconds=0.0, description=(
                f"the same student ({cfg.student.init}, same initial weights) as built, untrained: what the cut "
                "or new model gives before any distillation"))  # fmt: skip
        ctx.timings["baseline"] = history["train_seconds"]
        saved["baseline"] = save_stage_model(ctx, "baseline", student, history)
    return saved


def baseline_description(cfg: RunConfig, best_metric: str = "accuracy", validates: bool = True) -> str:
    """What the baseline is, in one sentence for the report: the student's own settings, never a stage's."""
    t = cfg.distill
    return (
        f"the same student ({cfg.student.init}, same initial weights) trained with cross-entropy on the training "
        f"split's labels only: no teacher, no general distillation, no augmentation; the student's own `distill` "
        f"settings (epochs {t.epochs:g}, learning rate {t.learning_rate:g}, batch {t.batch_size}, "
        f"warmup {t.warmup_ratio:g}, bf16 {str(t.bf16).lower()}), "
        + (f"best checkpoint on validation {best_metric}" if validates else "last weights (no validation pass)")
    )
