"""B1: distillation training throughput (samples/s) of distil vs TextBrewer vs the plain loop vs the limit.

Same teacher (all-MiniLM-L6-v2, 6 layers, random 2-class head), same student (teacher layers 0, 2, 4 copied),
same Rotten Tomatoes rows, batch size, max length, optimiser (AdamW lr 1e-4, wd 0.01, clip 1.0, linear schedule)
and loss (0.5 * CE + 0.5 * soft term at T = 2; "+ hidden" adds an MSE on uniformly mapped hidden states, student
layer i <- teacher layer 2i + 1). Systems, timed interleaved round by round (A B C ..., A B C ...):

    distil-cached   (a) DistillationTrainer step, teacher logits from the soft-label cache
    distil-live     (b) DistillationTrainer step, teacher run live every step (logits only)
    distil-hidden   (c) DistillationTrainer step, live teacher, logits + hidden-state MSE
                        (engine.distiller.make_distiller: Distiller, hooks on the mapped layers only)
    student-alone   (f) DistillationTrainer without a distiller: the student's own CE step (the limit)
    plain-*         (d) the design documents' loop by hand: every row padded to max_length, teacher run every
                        step under no_grad, KL + CE written out, fp32
    tb-*            (e) TextBrewer 0.2.1.post1 GeneralDistiller (its own venv, a subprocess answering commands),
                        fp32 (its mixed precision needs apex + CUDA); "-fixed" pads to max_length as TextBrewer's
                        examples do, "-dynamic" gets exactly distil's length-grouped batches

A step is timed from the end of one optimiser step to the end of the next, so data loading, collation and each
framework's own per-step work count; the first --warmup steps of every round are dropped. Samples/s per round =
measured samples / measured seconds; reported: the median over rounds, and ratios taken round by round (so a slow
stretch of the shared machine hits both sides of a ratio) and then medianed.

    python benchmarks/b1_training_throughput.py                   # 5 steps x 3 rounds: ~5 min idle, ~9 loaded
    python benchmarks/b1_training_throughput.py --steps 40 --rounds 5 --all   # 1,280 rows, every system
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import dataclasses
import io
import itertools
import json
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import harness  # first: sets OMP_WAIT_POLICY before torch loads
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import TrainerCallback, get_linear_schedule_with_warmup

from distil.config import DEFAULT_TEACHER, DataConfig, LossConfig, TrainConfig
from distil.data import PadCollator, prepare_data, to_dataset
from distil.engine.distiller import Distiller, make_distiller
from distil.engine.teacher_cache import soft_labels_for
from distil.engine.trainer import DistillationTrainer, EpochLengthGroupedSampler, training_arguments
from distil.models.features import map_layers
from distil.models.loading import load_classifier, load_tokenizer
from distil.models.packaged import resolve_model
from distil.models.student import select_layers, student_from_teacher

ALPHA, KD_TEMPERATURE, HIDDEN_WEIGHT, LEARNING_RATE = 0.5, 2.0, 1.0, 1e-4
DISTIL_KINDS = ("distil-cached", "distil-live", "distil-hidden", "student-alone")
DEFAULT_SYSTEMS = (  # in this order, so that compared systems run next to each other
    "distil-cached:bf16,student-alone:bf16,distil-cached:fp32,student-alone:fp32,distil-live:bf16,plain-logits:fp32,"
    "tb-logits-fixed:fp32,distil-hidden:bf16,distil-hidden:fp32,plain-hidden:fp32,tb-hidden-fixed:fp32"
)
ALL_SYSTEMS = DEFAULT_SYSTEMS + ",distil-live:fp32,tb-logits-dynamic:fp32,tb-hidden-dynamic:fp32"
LABELS = {
    "distil-cached": "(a) distil, cached soft labels",
    "distil-live": "(b) distil, live teacher",
    "distil-hidden": "(c) distil, live teacher + hidden MSE",
    "student-alone": "(f) student alone, CE (the limit)",
    "plain-logits": "(d) plain loop",
    "plain-hidden": "(d) plain loop + hidden MSE",
    "tb-logits-fixed": "(e) TextBrewer, max-length padding",
    "tb-hidden-fixed": "(e) TextBrewer + hidden MSE, max-length padding",
    "tb-logits-dynamic": "(e) TextBrewer, distil's batches",
    "tb-hidden-dynamic": "(e) TextBrewer + hidden MSE, distil's batches",
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--rows",
        type=int,
        default=None,
        help="training rows (default: steps x batch size, so the measured steps cover every row once)",
    )
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--steps", type=int, default=5, help="measured steps per system per round")
    p.add_argument("--warmup", type=int, default=2, help="steps dropped at the start of every round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--systems", default=DEFAULT_SYSTEMS, help="comma-separated KIND:PRECISION list")
    p.add_argument("--all", action="store_true", help="also distil-live fp32 and TextBrewer on distil's batches")
    p.add_argument("--textbrewer-python", default=str(harness.BENCH_DIR / ".venv-textbrewer" / "bin" / "python"))
    p.add_argument("--profile-steps", type=int, default=6, help="0 skips the profile of (a)")
    p.add_argument("--out", type=Path, default=harness.RESULTS_DIR)
    args = p.parse_args(argv)
    if args.all:
        args.systems = ALL_SYSTEMS
    args.rows = args.rows or args.steps * args.batch_size
    if args.rows % args.batch_size:
        p.error(f"--rows {args.rows} must be a multiple of --batch-size {args.batch_size}")
    return args


# ---------------------------------------------------------------------------------------------------- setup


@dataclasses.dataclass
class Bench:
    """Everything the systems share."""

    args: argparse.Namespace
    tokenizer: object
    train: object  # datasets.Dataset from distil.data.to_dataset
    fixed: dict[str, torch.Tensor]  # every row padded to max_length: (N, max_length) each, labels (N,)
    teacher: nn.Module
    student: nn.Module  # the initial student; every round trains a deep copy
    soft_labels: object
    pairs: list[tuple[int, int]]  # (student layer, teacher layer) for the hidden MSE
    work: Path
    soft_label_seconds: float = 0.0


def build(args) -> Bench:
    torch.manual_seed(0)
    teacher_path = resolve_model(DEFAULT_TEACHER)
    tokenizer = load_tokenizer(teacher_path)
    data = prepare_data(DataConfig(max_train_samples=args.rows, max_length=args.max_length))
    train = to_dataset(data.splits["train"], tokenizer, args.max_length)
    frame = data.splits["train"]
    enc = tokenizer(
        frame["text"].tolist(), padding="max_length", truncation=True, max_length=args.max_length, return_tensors="pt"
    )
    fixed = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids")}  # (N, max_length) each
    fixed["labels"] = torch.tensor(frame["label"].to_numpy())  # (N,)
    teacher = load_classifier(teacher_path, num_labels=2, id2label=data.id2label, label2id=data.label2id)
    student = student_from_teacher(teacher, select_layers("every-other", teacher.config.num_hidden_layers)).train()
    work = Path(tempfile.mkdtemp(prefix="b1-", dir=args.out))
    start = time.perf_counter()
    soft = soft_labels_for(
        teacher,
        tokenizer,
        train,
        PadCollator(tokenizer.pad_token_id),
        work / "cache",
        max_length=args.max_length,
        bf16=True,
    )
    soft_seconds = time.perf_counter() - start
    pairs = map_layers("uniform", student.config.num_hidden_layers, teacher.config.num_hidden_layers)
    return Bench(args, tokenizer, train, fixed, teacher.eval(), student, soft, pairs, work, soft_seconds)


# ---------------------------------------------------------------------------------------------------- distil


def hidden_distiller(bench: Bench, student: nn.Module, bf16: bool) -> Distiller:
    """distil's feature distiller for logits + hidden MSE on uniformly mapped layers, the teacher run live (from
    bf16 Linear weights in a bf16 run, as the pipeline does)."""
    loss = LossConfig(alpha=ALPHA, kd_temperature=KD_TEMPERATURE, hidden_weight=HIDDEN_WEIGHT, layer_map="uniform")
    return make_distiller(loss, bench.teacher, student, soft_labels=None, bf16_teacher=bf16)


class StepClock(TrainerCallback):
    """Wall and CPU clocks at train begin and at the end of every optimiser step."""

    def __init__(self):
        self.marks: list[tuple[float, float]] = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.marks = [harness.now()]

    def on_step_end(self, args, state, control, **kwargs):
        self.marks.append(harness.now())


def distil_trainer(bench: Bench, kind: str, bf16: bool, max_steps: int, callbacks=()) -> DistillationTrainer:
    """A DistillationTrainer as distil's pipeline builds it (training_arguments), minus evaluation and saving."""
    a = bench.args
    student = copy.deepcopy(bench.student).train()
    if kind == "distil-cached":
        distiller = Distiller(LossConfig(alpha=ALPHA, kd_temperature=KD_TEMPERATURE), soft_labels=bench.soft_labels)
    elif kind == "distil-live":
        loss = LossConfig(alpha=ALPHA, kd_temperature=KD_TEMPERATURE)
        distiller = make_distiller(loss, bench.teacher, student, soft_labels=None, bf16_teacher=bf16)
    elif kind == "distil-hidden":
        distiller = hidden_distiller(bench, student, bf16)
    else:
        distiller = None
    cfg = TrainConfig(epochs=1, learning_rate=LEARNING_RATE, batch_size=a.batch_size, bf16=bf16)
    targs = training_arguments(cfg, bench.work / "trainer", seed=0, num_train_rows=len(bench.train))
    targs = dataclasses.replace(
        targs,
        max_steps=max_steps,
        eval_strategy="no",
        save_strategy="no",
        load_best_model_at_end=False,
        disable_tqdm=True,
    )
    trainer = DistillationTrainer(
        model=student,
        args=targs,
        train_dataset=bench.train,
        data_collator=PadCollator(bench.tokenizer.pad_token_id),
        distiller=distiller,
        callbacks=list(callbacks),
    )
    return trainer


def run_distil(bench: Bench, kind: str, precision: str, steps: int) -> tuple[list[float], list[float]]:
    clock = StepClock()
    trainer = distil_trainer(bench, kind, precision == "bf16", bench.args.warmup + steps, [clock])
    trainer.train()
    return harness.intervals(clock.marks, bench.args.warmup)


def distil_batch_plan(bench: Bench, num_batches: int) -> list[list[int]]:
    """The row indices of distil's first ``num_batches`` batches (its length-grouped sampler, epoch by epoch)."""
    sampler = EpochLengthGroupedSampler(bench.train["length"], bench.args.batch_size, seed=0)
    rows: list[int] = []
    for epoch in itertools.count():
        if len(rows) >= num_batches * bench.args.batch_size:
            break
        sampler.set_epoch(epoch)
        rows += list(sampler)
    b = bench.args.batch_size
    return [rows[i * b : (i + 1) * b] for i in range(num_batches)]


def random_batch_plan(bench: Bench, num_batches: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    n, b = len(bench.train), bench.args.batch_size
    rows = torch.cat([torch.randperm(n, generator=g) for _ in range(-(-num_batches * b // n))]).tolist()
    return [rows[i * b : (i + 1) * b] for i in range(num_batches)]


# ---------------------------------------------------------------------------------------------------- plain loop


def run_plain(bench: Bench, hidden: bool, steps: int, seed: int) -> tuple[list[float], list[float]]:
    """The textbook loop: max-length padding, teacher forward every step, KL + CE (+ hidden MSE) by hand, fp32."""
    a = bench.args
    student, teacher = copy.deepcopy(bench.student).train(), bench.teacher
    total = a.warmup + steps
    optimizer = torch.optim.AdamW(student.parameters(), lr=LEARNING_RATE, weight_decay=0.01)
    scheduler = get_linear_schedule_with_warmup(optimizer, max(1, total // 10), total)
    marks = [harness.now()]
    for rows in random_batch_plan(bench, total, seed):
        idx = torch.tensor(rows)
        batch = {k: v[idx] for k, v in bench.fixed.items()}  # (B, max_length) each, labels (B,)
        labels = batch.pop("labels")
        with torch.no_grad():
            t_out = teacher(**batch, output_hidden_states=hidden)
        s_out = student(**batch, output_hidden_states=hidden)
        soft = (
            F.kl_div(
                F.log_softmax(s_out.logits / KD_TEMPERATURE, -1),
                F.softmax(t_out.logits / KD_TEMPERATURE, -1),
                reduction="batchmean",
            )
            * KD_TEMPERATURE**2
        )
        loss = ALPHA * F.cross_entropy(s_out.logits, labels) + (1 - ALPHA) * soft
        if hidden:  # hidden_states[0] is the embedding output, so encoder layer i is index i + 1
            loss = loss + HIDDEN_WEIGHT * sum(
                F.mse_loss(s_out.hidden_states[s + 1], t_out.hidden_states[t + 1]) for s, t in bench.pairs
            )
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        marks.append(harness.now())
    return harness.intervals(marks, a.warmup)


# ---------------------------------------------------------------------------------------------------- TextBrewer


class TextBrewerWorker:
    """benchmarks/textbrewer_worker.py running in TextBrewer's own interpreter, fed one command per round."""

    def __init__(self, bench: Bench, python: str):
        a = bench.args
        (bench.work / "teacher").mkdir()
        bench.teacher.save_pretrained(bench.work / "teacher")
        bench.student.save_pretrained(bench.work / "student")
        lengths = np.asarray(bench.train["length"])
        np.savez(bench.work / "data.npz", lengths=lengths, **{k: v.numpy() for k, v in bench.fixed.items()})
        setup = {
            "threads": a.threads,
            "data": str(bench.work / "data.npz"),
            "teacher_dir": str(bench.work / "teacher"),
            "student_dir": str(bench.work / "student"),
            "hidden_pairs": bench.pairs,
            "alpha": ALPHA,
            "kd_temperature": KD_TEMPERATURE,
            "hidden_weight": HIDDEN_WEIGHT,
            "learning_rate": LEARNING_RATE,
        }
        self.proc = subprocess.Popen(
            [python, str(harness.BENCH_DIR / "textbrewer_worker.py"), json.dumps(setup)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            bufsize=1,
        )
        hello = self.proc.stdout.readline()
        if not hello:
            raise RuntimeError(f"TextBrewer worker ({python}) exited with {self.proc.wait()}; run it by hand to see")
        self.version = json.loads(hello)["textbrewer"]

    def run(self, hidden: bool, dynamic: bool, batches: list[list[int]], warmup: int) -> list[float]:
        cmd = {"cmd": "run", "hidden": hidden, "dynamic": dynamic, "batches": batches, "warmup": warmup}
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"TextBrewer worker died (exit {self.proc.wait()})")
        reply = json.loads(line)
        return reply["wall"], reply["cpu"]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=60)


# ---------------------------------------------------------------------------------------------------- profile


PROFILED_PARTS = {  # (file suffix, function) -> what it is; cumulative times, so nested parts overlap
    ("distil/distill.py", "compute_loss"): "compute_loss (forwards + losses)",
    ("distil/distill.py", "teacher_logits"): "  of which: teacher logits (cache lookup or live forward)",
    ("distil/soft_labels.py", "lookup"): "  of which: soft-label lookup (memmap gather)",
    ("distil/feature_distill.py", "_run_teacher"): "  of which: live teacher forward (+ its hooks)",
    ("distil/feature_distill.py", "_feature_parts"): "  of which: feature losses",
    ("distil/models/features.py", "_record"): "  of which: feature hooks recording",
    ("torch/_tensor.py", "backward"): "backward",
    ("torch/optim/adam.py", "step"): "AdamW step",
    ("torch/optim/adamw.py", "step"): "AdamW step",
    ("torch/nn/utils/clip_grad.py", "clip_grad_norm_"): "gradient clipping",
    ("transformers/trainer.py", "get_batch_samples"): "fetch batches (sampler + PadCollator)",
    ("transformers/trainer.py", "_maybe_log_save_evaluate"): "log/save/evaluate hooks",
}


def profile_system(bench: Bench, kind: str, steps: int) -> dict:
    """torch.profiler's operator table and cProfile's Python view of one distil system, bf16."""
    from torch.profiler import ProfilerActivity, profile

    trainer = distil_trainer(bench, kind, True, bench.args.warmup + steps)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        trainer.train()
    ops = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)
    trainer = distil_trainer(bench, kind, True, bench.args.warmup + steps)
    profiler = cProfile.Profile()
    profiler.enable()
    trainer.train()
    profiler.disable()
    stats = pstats.Stats(profiler)
    total = stats.total_tt
    breakdown = {}
    for (file, _line, func), (_cc, _nc, _tt, cum, _callers) in stats.stats.items():
        for (suffix, name), label in PROFILED_PARTS.items():
            if func == name and file.endswith(suffix):
                breakdown[label] = breakdown.get(label, 0.0) + cum
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(15)
    text = out.getvalue()
    return {
        "steps": bench.args.warmup + steps,
        "total_seconds": total,
        "share_of_total": {
            k: round(breakdown[k] / total, 4) for k in dict.fromkeys(PROFILED_PARTS.values()) if k in breakdown
        },
        "torch_profiler_top_ops": ops,
        "cprofile_top_tottime": text[max(0, text.find("   ncalls")) :],
    }


# ---------------------------------------------------------------------------------------------------- main


def main(argv=None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    harness.setup_torch(args.threads)
    info = harness.machine_info(args.threads)
    calibration = harness.Calibration()
    calibration.log("start")
    systems = [tuple(s.split(":")) for s in args.systems.split(",") if s]
    bench = build(args)
    print(
        f"data: {len(bench.train)} rows, mean length {np.mean(bench.train['length']):.1f} tokens; soft labels "
        f"{bench.soft_labels.status} in {bench.soft_label_seconds:.1f}s; hidden pairs {bench.pairs}",
        flush=True,
    )
    worker = TextBrewerWorker(bench, args.textbrewer_python) if any(k.startswith("tb-") for k, _ in systems) else None
    keys = [f"{k}:{p}" for k, p in systems]
    wall = {k: [] for k in keys}  # samples per wall-clock second, one entry per round
    cpu = {k: [] for k in keys}  # samples per CPU second of the process (all its threads), one entry per round
    step_ms = {k: [] for k in keys}
    try:
        for r in range(args.rounds):
            calibration.log(f"round {r + 1}")
            # A B C ... then ... C B A: pairs that are compared sit next to each other in every round.
            for kind, precision in systems if r % 2 == 0 else systems[::-1]:
                key = f"{kind}:{precision}"
                if kind in DISTIL_KINDS:
                    w, c = run_distil(bench, kind, precision, args.steps)
                elif kind.startswith("plain-"):
                    w, c = run_plain(bench, kind == "plain-hidden", args.steps, seed=r)
                else:
                    dynamic = kind.endswith("dynamic")
                    n = args.warmup + args.steps + 1
                    plan = distil_batch_plan(bench, n) if dynamic else random_batch_plan(bench, n, seed=r)
                    w, c = worker.run("hidden" in kind, dynamic, plan, args.warmup)
                wall[key].append(args.batch_size * len(w) / sum(w))
                cpu[key].append(args.batch_size * len(c) / sum(c))
                step_ms[key].append(1000 * harness.median(w))
                print(
                    f"round {r + 1} {key:24s} {wall[key][-1]:6.1f} samples/s, {cpu[key][-1]:6.1f} per CPU-s "
                    f"(median step {step_ms[key][-1]:.0f} ms)",
                    flush=True,
                )
        calibration.log("after rounds")
        profile = {}
        for kind in ("distil-cached", "distil-hidden") if args.profile_steps else ():
            profile[f"{kind}:bf16"] = profile_system(bench, kind, args.profile_steps)
        calibration.log("end")
    finally:
        if worker is not None:
            worker.close()
        shutil.rmtree(bench.work, ignore_errors=True)
    result = summarise(args, info, calibration.summary(), bench, systems, wall, cpu, step_ms, worker, profile)
    write_outputs(result, args.out)
    return 0


def ratio(per_round: dict, a: str, b: str) -> float | None:
    """Median over rounds of rate(a) / rate(b); in each round the pair ran within minutes of each other."""
    if a not in per_round or b not in per_round:
        return None
    return harness.median(x / y for x, y in zip(per_round[a], per_round[b]))


def references(kind: str) -> dict[str, str]:
    """What a system is compared with: the plain loop and TextBrewer with the same loss."""
    loss = "hidden" if "hidden" in kind else "logits"
    return {
        "plain": f"plain-{loss}:fp32",
        "tb_fixed": f"tb-{loss}-fixed:fp32",
        "tb_dynamic": f"tb-{loss}-dynamic:fp32",
    }


def summarise(args, info, calibration, bench, systems, wall, cpu, step_ms, worker, profile) -> dict:
    rows = {}
    for kind, precision in systems:
        key, refs = f"{kind}:{precision}", references(kind)
        compare = kind != "student-alone"
        rows[key] = {
            "system": LABELS[kind],
            "precision": precision,
            "loss": "logits + hidden MSE" if "hidden" in kind else "logits",
            "padding": "max_length"
            if kind.startswith("plain") or kind.endswith("fixed")
            else "dynamic, length-grouped",
            "samples_per_s": harness.median(wall[key]),
            "samples_per_s_rounds": wall[key],
            "samples_per_cpu_s": harness.median(cpu[key]),
            "samples_per_cpu_s_rounds": cpu[key],
            "step_ms": harness.median(step_ms[key]),
            **{f"vs_{name}": ratio(wall, key, ref) if compare else None for name, ref in refs.items()},
            **{f"vs_{name}_cpu": ratio(cpu, key, ref) if compare else None for name, ref in refs.items()},
        }
    checks = {}
    for p in ("bf16", "fp32"):
        pair = (f"student-alone:{p}", f"distil-cached:{p}")
        if ratio(wall, *pair) is not None:
            checks[f"cached KD step / student-alone step ({p}); target <= 1.10"] = (
                ratio(wall, *pair),
                ratio(cpu, *pair),
            )
    for p in ("bf16", "fp32"):
        for other, target in (
            ("tb-hidden-fixed:fp32", 1.5),
            ("tb-hidden-dynamic:fp32", 1.5),
            ("plain-hidden:fp32", 2),
        ):
            pair = (f"distil-hidden:{p}", other)
            if ratio(wall, *pair) is not None:
                checks[f"distil-hidden:{p} / {other}; target >= {target}"] = (ratio(wall, *pair), ratio(cpu, *pair))
    setup = {
        "rows": len(bench.train),
        "mean_tokens": float(np.mean(bench.train["length"])),
        "batch_size": args.batch_size,
        "max_length": args.max_length,
        "steps_per_round": args.steps,
        "warmup_steps": args.warmup,
        "rounds": args.rounds,
        "teacher": DEFAULT_TEACHER,
        "student": "teacher layers [0, 2, 4]",
        "hidden_pairs": bench.pairs,
        "alpha": ALPHA,
        "kd_temperature": KD_TEMPERATURE,
        "textbrewer": worker.version if worker else None,
        "soft_label_build_seconds": bench.soft_label_seconds,
    }
    return {"benchmark": "B1 training throughput", "machine": info, "calibration": calibration, "setup": setup,
            "systems": rows, "checks": checks, "profile": profile}  # fmt: skip


def write_outputs(result: dict, out_dir: Path) -> None:
    f = harness.fmt
    header = ["system", "precision", "padding", "samples/s (min-max)", "step ms", "samples/CPU-s", "vs plain loop",
              "vs TextBrewer fixed", "vs TextBrewer distil's batches"]  # fmt: skip
    table = []
    for row in result["systems"].values():
        rng = row["samples_per_s_rounds"]
        vs = [f"{f(row[f'vs_{n}'], 2)} ({f(row[f'vs_{n}_cpu'], 2)})" if row[f"vs_{n}"] else "" for n in
              ("plain", "tb_fixed", "tb_dynamic")]  # fmt: skip
        table.append([row["system"], row["precision"], row["padding"],
                      f"{f(row['samples_per_s'])} ({f(min(rng))}-{f(max(rng))})", f(row["step_ms"], 0),
                      f(row["samples_per_cpu_s"]), *vs])  # fmt: skip
    checks = [[k, f"{w:.2f}x", f"{c:.2f}x"] for k, (w, c) in result["checks"].items()]
    s = result["setup"]
    intro = (
        f"{s['rows']} Rotten Tomatoes rows (mean {s['mean_tokens']:.1f} tokens), batch {s['batch_size']}, max length "
        f"{s['max_length']}; teacher all-MiniLM-L6-v2 (6 x 384), student = its layers [0, 2, 4]; "
        f"{s['rounds']} interleaved rounds (A B C, C B A, ...) x {s['steps_per_round']} measured steps (after "
        f"{s['warmup_steps']} warm-up); samples/s = median over rounds (min-max); samples/CPU-s counts the CPU time "
        "of the process's threads instead of wall time (less sensitive to other jobs on the machine); ratios = median "
        "of per-round ratios, wall (CPU). TextBrewer "
        f"{s['textbrewer']} runs in its own venv, fp32. Building the cached soft labels took "
        f"{s['soft_label_build_seconds']:.1f} s once (not in the step time).\n"
    )
    md = [
        "## B1 training throughput\n\n",
        intro,
        "\n",
        harness.md_table(header, table),
        "\n",
        harness.md_table(["check", "wall", "CPU time"], checks),
    ]
    prof = result.get("profile") or {}
    if prof:
        parts = [
            k for k in dict.fromkeys(PROFILED_PARTS.values()) if any(k in p["share_of_total"] for p in prof.values())
        ]
        rows = [[k, *[f"{100 * p['share_of_total'][k]:.1f}%" if k in p["share_of_total"] else "" for p in
                      prof.values()]] for k in parts]  # fmt: skip
        md += [
            "\nWhere a bf16 step's wall time goes (cProfile, cumulative; indented parts are inside compute_loss):\n\n",
            harness.md_table(["part", *prof], rows),
        ]
    md.append("\n" + harness.environment_note(result["machine"], result["calibration"]))
    markdown = "".join(md)
    harness.write_results("b1_training_throughput", result, markdown, out_dir)
    if prof:
        text = []
        for k, p in prof.items():
            text.append(f"===== {k}: torch.profiler (self CPU) =====\n{p['torch_profiler_top_ops']}\n")
            text.append(f"===== {k}: cProfile (tottime) =====\n{p['cprofile_top_tottime']}\n")
        (out_dir / "b1_profile.txt").write_text("\n".join(text))
    systems = list(result["systems"].values())
    names = [f"{r['system']} [{r['precision']}]" for r in systems][::-1]
    colors = [{"(a)": "tab:blue", "(b)": "tab:blue", "(c)": "tab:blue", "(f)": "tab:green", "(d)": "tab:gray"}
              .get(n[:3], "tab:orange") for n in names]  # fmt: skip
    fig, _ = harness.new_figure(14, 6)
    fig.clf()
    for i, (metric, label) in enumerate(
        (("samples_per_s", "samples/s (wall)"), ("samples_per_cpu_s", "samples/CPU-s"))
    ):
        ax = fig.add_subplot(1, 2, i + 1)
        values = [r[metric] for r in systems][::-1]
        lo = [v - min(r[f"{metric}_rounds"]) for v, r in zip(values, systems[::-1])]
        hi = [max(r[f"{metric}_rounds"]) - v for v, r in zip(values, systems[::-1])]
        ax.barh(names, values, xerr=[lo, hi], color=colors)
        ax.set_xlabel(f"{label}: median over rounds, bars min-max")
        if i:
            ax.set_yticklabels([])
    fig.suptitle(f"B1: distillation training throughput, batch {s['batch_size']}, 2 CPU threads")
    harness.save_figure(fig, "b1_training_throughput", out_dir)
    print("\n" + markdown)


if __name__ == "__main__":
    sys.exit(main())
