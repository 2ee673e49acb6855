"""The stages of a run, each usable alone: teacher -> soft labels -> student (+ baseline) -> evaluation/report.

Layout of ``output_dir``:
    config.yaml                 the resolved configuration
    teacher/ student/ baseline/ saved models (HF format, safetensors) + training_history.json
    soft_labels.json            which cache entry the student used (fingerprint, status, seconds)
    work/<stage>/               Trainer checkpoints (for --resume) and TensorBoard logs
    report.json report.md plots/  the comparison (written last: its presence marks a finished run)
A stage's directory appears only when the stage completed (written under a temporary name, then renamed).
"""

from __future__ import annotations

import copy
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import set_seed

from distil.config import RunConfig, dump_yaml
from distil.data import PadCollator, TaskData, prepare_data, to_dataset
from distil.distill import DistillationTrainer, Distiller, accuracy_metrics, training_arguments
from distil.errors import DistilError
from distil.io import atomic_dir, read_json, write_json, write_text
from distil.models.loading import check_same_vocabulary, load_classifier, load_tokenizer
from distil.models.lstm import LSTMClassifier, LSTMConfig
from distil.models.packaged import resolve_model
from distil.models.student import select_layers, student_from_config, student_from_teacher
from distil.soft_labels import soft_labels_for

MODEL_STAGES = ("teacher", "student", "baseline")


@dataclass
class Context:
    """What the stages of one run share: config, data, tokenizer, datasets, timings."""

    cfg: RunConfig
    resume: bool = False
    callbacks: list = field(default_factory=list)
    data: TaskData | None = None
    tokenizer: object = None
    datasets: dict = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def out(self) -> Path:
        return self.cfg.output_path

    def stage_dir(self, stage: str) -> Path:
        return self.out / stage

    def done(self, stage: str) -> bool:
        return (self.stage_dir(stage) / "config.json").is_file()

    def collator(self) -> PadCollator:
        pad = self.tokenizer.pad_token_id
        return PadCollator(pad if pad is not None else 0)

    def load_data(self) -> None:
        """Read, split and tokenise the data once per process (the teacher's tokenizer is the run's)."""
        if self.data is not None:
            return
        self.tokenizer = load_tokenizer(resolve_model(self.cfg.teacher.model))
        self.data = prepare_data(self.cfg.data)
        max_len = self.cfg.data.max_length
        for name, frame in {**self.data.splits, **{f"extra:{k}": v for k, v in self.data.extra_tests.items()}}.items():
            self.datasets[name] = to_dataset(frame, self.tokenizer, max_len)
        skipped = {k: v for k, v in self.data.skipped_empty.items() if v}
        sizes = ", ".join(f"{k} {len(v)}" for k, v in self.data.splits.items())
        print(f"data: {self.cfg.data.source}: {sizes}; labels {self.data.label_names}"
              + (f"; skipped empty rows: {skipped}" if skipped else ""))


def check_output_dir(cfg: RunConfig, resume: bool, stage: str | None = None) -> None:
    """Refuse to overwrite a finished run (or stage) unless --overwrite; refuse to mix runs unless --resume."""
    out = cfg.output_path
    if cfg.overwrite and out.exists() and stage is None:
        shutil.rmtree(out)
        return
    if stage is not None:
        if (out / stage / "config.json").is_file() and not cfg.overwrite and not resume:
            raise DistilError(f"output_dir '{out}' already holds a finished {stage}; pass --overwrite to replace it")
        return
    if (out / "report.json").is_file() and not resume:
        raise DistilError(f"output_dir '{out}' already holds a finished run; pass --overwrite to replace it "
                          f"or choose another --output_dir")
    if out.exists() and any(out.iterdir()) and not resume:
        raise DistilError(f"output_dir '{out}' holds an unfinished run; pass --resume to continue it or "
                          f"--overwrite to start over")


def write_config(ctx: Context) -> None:
    write_text(ctx.out / "config.yaml", dump_yaml(ctx.cfg))


def _fit(ctx: Context, stage: str, model, train_cfg, distiller: Distiller | None = None) -> dict:
    """Train ``model`` with the Trainer (resuming from the stage's last checkpoint), keep the best on validation."""
    work = ctx.out / "work" / stage
    if not ctx.resume and work.exists():
        shutil.rmtree(work)
    args = training_arguments(train_cfg, work, ctx.cfg.seed, len(ctx.datasets["train"]))
    trainer = DistillationTrainer(
        model=model, args=args, train_dataset=ctx.datasets["train"], eval_dataset=ctx.datasets["validation"],
        data_collator=ctx.collator(), compute_metrics=accuracy_metrics, distiller=distiller,
        group_by_length=train_cfg.group_by_length, callbacks=list(ctx.callbacks),
    )
    checkpoints = sorted(work.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1])) if work.exists() else []
    resume_from = str(checkpoints[-1]) if ctx.resume and checkpoints else None
    if resume_from:
        print(f"{stage}: resuming from {resume_from}")
    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=resume_from)
    seconds = time.perf_counter() - start
    best = trainer.evaluate()
    return {"train_seconds": seconds, "train_steps": result.global_step, "best_validation": best,
            "best_checkpoint": trainer.state.best_model_checkpoint, "log_history": trainer.state.log_history,
            "resumed_from": resume_from}


def _save_model(ctx: Context, stage: str, model, history: dict) -> Path:
    with atomic_dir(ctx.stage_dir(stage), overwrite=True) as tmp:
        model.save_pretrained(tmp)
        ctx.tokenizer.save_pretrained(tmp)  # every saved model (the LSTM too) carries the tokenizer it reads
        write_json(tmp / "training_history.json", history)
    return ctx.stage_dir(stage)


def run_teacher(ctx: Context) -> Path:
    """Stage 1: load the teacher; fine-tune it on the task unless it is used as is; save it to teacher/."""
    cfg, data = ctx.cfg, ctx.data
    set_seed(cfg.seed)
    teacher = load_classifier(resolve_model(cfg.teacher.model), num_labels=len(data.label_names),
                              id2label=data.id2label, label2id=data.label2id)
    history: dict = {"source": cfg.teacher.model, "fine_tuned": cfg.teacher.fine_tune}
    if cfg.teacher.fine_tune:
        history.update(_fit(ctx, "teacher", teacher, cfg.teacher.train))
    ctx.timings["teacher"] = history.get("train_seconds", 0.0)
    return _save_model(ctx, "teacher", teacher, history)


def load_stage_model(ctx: Context, stage: str):
    if not ctx.done(stage):
        raise DistilError(f"stage '{stage}' has not run in output_dir '{ctx.out}'; run `distil {stage}` "
                          f"(or `distil run`) first")
    return load_classifier(str(ctx.stage_dir(stage))).eval()


def run_soft_labels(ctx: Context, teacher=None):
    """Stage 2: the teacher's logits on the training split, from the cache or computed once."""
    teacher = teacher if teacher is not None else load_stage_model(ctx, "teacher")
    start = time.perf_counter()
    soft = soft_labels_for(teacher, ctx.tokenizer, ctx.datasets["train"], ctx.collator(), ctx.cfg.cache_path,
                           max_length=ctx.cfg.data.max_length, batch_size=ctx.cfg.teacher.soft_label_batch_size,
                           bf16=ctx.cfg.teacher.train.bf16)
    seconds = time.perf_counter() - start
    ctx.timings["soft_labels"] = seconds
    write_json(ctx.out / "soft_labels.json", {"fingerprint": soft.fingerprint, "status": soft.status,
                                              "path": str(soft.path), "shape": list(soft.logits.shape),
                                              "seconds": round(seconds, 2)})
    print(f"soft labels: {soft.status} {soft.path} {tuple(soft.logits.shape)} in {seconds:.1f}s")
    return soft


def build_student(ctx: Context, teacher) -> torch.nn.Module:
    """A fresh student as configured (the same one for the distilled run and the baseline)."""
    s, data = ctx.cfg.student, ctx.data
    set_seed(ctx.cfg.seed)
    if s.init == "teacher-layers":
        n = teacher.config.num_hidden_layers
        layers = select_layers(s.layers, n, s.num_layers)
        student = student_from_teacher(teacher, layers)
    elif s.init == "config":
        student = student_from_config(teacher.config, num_hidden_layers=s.num_layers,
                                      hidden_size=s.hidden_size or teacher.config.hidden_size,
                                      num_attention_heads=s.num_attention_heads or teacher.config.num_attention_heads,
                                      intermediate_size=s.intermediate_size or 4 * (s.hidden_size or
                                                                                    teacher.config.hidden_size),
                                      num_labels=len(data.label_names))
    elif s.init == "pretrained":
        path = resolve_model(s.pretrained)
        check_same_vocabulary(ctx.tokenizer, load_tokenizer(path), allow_different=s.allow_different_vocab)
        student = load_classifier(path, num_labels=len(data.label_names), id2label=data.id2label,
                                  label2id=data.label2id)
    else:
        student = LSTMClassifier(LSTMConfig(
            vocab_size=len(ctx.tokenizer), embedding_dim=s.lstm_embedding_dim, hidden_size=s.lstm_hidden_size,
            num_layers=s.lstm_num_layers, num_labels=len(data.label_names),
            pad_token_id=ctx.tokenizer.pad_token_id or 0, id2label=data.id2label, label2id=data.label2id))
    return student.train()


def run_student(ctx: Context, live_teacher: bool = False) -> dict[str, Path]:
    """Stage 3: distil the student from the teacher's soft labels; then the same student without the teacher."""
    cfg = ctx.cfg
    teacher = load_stage_model(ctx, "teacher")
    saved = {}
    if not ctx.done("student") or cfg.overwrite and not ctx.resume:
        student = build_student(ctx, teacher)  # first: a bad student config fails before any teacher work
        if live_teacher:
            distiller = Distiller(cfg.loss, teacher=teacher)
        else:
            distiller = Distiller(cfg.loss, soft_labels=run_soft_labels(ctx, teacher))
        history = {"init": cfg.student.init, "layers": getattr(student, "distil_layer_map", None),
                   "loss": {"alpha": cfg.loss.alpha, "kd_temperature": cfg.loss.kd_temperature,
                            "soft_loss": cfg.loss.soft_loss},
                   "teacher_signal": "live teacher" if live_teacher else "cached soft labels"}
        history.update(_fit(ctx, "student", student, cfg.distill, distiller))
        ctx.timings["student"] = history["train_seconds"]
        saved["student"] = _save_model(ctx, "student", student, history)
    if cfg.baseline and (not ctx.done("baseline") or cfg.overwrite and not ctx.resume):
        student = build_student(ctx, teacher)
        history = {"init": cfg.student.init, "layers": getattr(student, "distil_layer_map", None),
                   "loss": "cross-entropy on hard labels only (no teacher)"}
        history.update(_fit(ctx, "baseline", student, cfg.distill))
        ctx.timings["baseline"] = history["train_seconds"]
        saved["baseline"] = _save_model(ctx, "baseline", student, history)
    return saved


def run_all(ctx: Context) -> dict:
    """`distil run`: every stage in order, skipping those already finished when resuming."""
    from distil.report import run_eval

    check_output_dir(ctx.cfg, ctx.resume)
    ctx.out.mkdir(parents=True, exist_ok=True)
    write_config(ctx)
    ctx.load_data()
    start = time.perf_counter()
    if not ctx.done("teacher"):
        run_teacher(ctx)
    else:
        print(f"teacher: done ({ctx.stage_dir('teacher')})")
    run_student(ctx)
    report = run_eval(ctx)
    report["timings"]["total_seconds"] = round(time.perf_counter() - start, 1)
    write_json(ctx.out / "report.json", report)
    return report


def previous_history(ctx: Context, stage: str) -> dict:
    path = ctx.stage_dir(stage) / "training_history.json"
    return read_json(path) if path.is_file() else {}


def clone_config(cfg: RunConfig) -> RunConfig:
    return copy.deepcopy(cfg)
