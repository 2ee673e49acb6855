"""B1: distillation training throughput (samples/s) of distil vs TextBrewer vs the plain loop vs the limit.

Same teacher (all-MiniLM-L6-v2, 6 layers, random 2-class head), same student (teacher layers 0, 2, 4 copied),
same Rotten Tomatoes rows, batch size, max length, optimiser (AdamW lr 1e-4, wd 0.01, clip 1.0, linear schedule)
and loss (0.5 * CE + 0.5 * soft term at T = 2; "+ hidden" adds an MSE on uniformly mapped hidden states, student
layer i <- teacher layer 2i + 1). Systems, timed interleaved round by round (A B C ..., A B C ...):

    distil-cached   (a) DistillationTrainer step, teacher logits from the soft-label cache
    distil-live     (b) DistillationTrainer step, teacher run live every step (logits only)
    distil-hidden   (c) DistillationTrainer step, live teacher, logits + hidden-state MSE
                        (distil.feature_distill.make_distiller: FeatureDistiller, hooks on the mapped layers only)
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
from distil.distill import DistillationTrainer, Distiller, EpochLengthGroupedSampler, training_arguments
from distil.feature_distill import make_distiller
from distil.models.features import map_layers
from distil.models.loading import load_classifier, load_tokenizer
from distil.models.packaged import resolve_model
from distil.models.student import select_layers, student_from_teacher
from distil.soft_labels import soft_labels_for

ALPHA, KD_TEMPERATURE, HIDDEN_WEIGHT, LEARNING_RATE = 0.5, 2.0, 1.0, 1e-4
DISTIL_KINDS = ("distil-cached", "distil-live", "distil-hidden", "student-alone")
DEFAULT_SYSTEMS = (
    "distil-cached:bf16,distil-live:bf16,distil-hidden:bf16,student-alone:bf16,"
    "distil-cached:fp32,distil-hidden:fp32,student-alone:fp32,plain-logits:fp32,plain-hidden:fp32,"
    "tb-logits-fixed:fp32,tb-hidden-fixed:fp32"
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


def hidden_distiller(bench: Bench, student: nn.Module) -> Distiller:
    """distil's feature distiller for logits + hidden MSE on uniformly mapped layers, the teacher run live."""
    loss = LossConfig(alpha=ALPHA, kd_temperature=KD_TEMPERATURE, hidden_weight=HIDDEN_WEIGHT, layer_map="uniform")
    return make_distiller(loss, bench.teacher, student, soft_labels=None)


class StepClock(TrainerCallback):
    """perf_counter at train begin and at the end of every optimiser step."""

    def __init__(self):
        self.marks: list[float] = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.marks = [time.perf_counter()]

    def on_step_end(self, args, state, control, **kwargs):
        self.marks.append(time.perf_counter())


def distil_trainer(bench: Bench, kind: str, bf16: bool, max_steps: int, callbacks=()) -> DistillationTrainer:
    """A DistillationTrainer as distil's pipeline builds it (training_arguments), minus evaluation and saving."""
    a = bench.args
    student = copy.deepcopy(bench.student).train()
    if kind == "distil-cached":
        distiller = Distiller(LossConfig(alpha=ALPHA, kd_temperature=KD_TEMPERATURE), soft_labels=bench.soft_labels)
    elif kind == "distil-live":
        distiller = Distiller(LossConfig(alpha=ALPHA, kd_temperature=KD_TEMPERATURE), teacher=bench.teacher)
    elif kind == "distil-hidden":
        distiller = hidden_distiller(bench, student)
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


def run_distil(bench: Bench, kind: str, precision: str, steps: int) -> list[float]:
    clock = StepClock()
    trainer = distil_trainer(bench, kind, precision == "bf16", bench.args.warmup + steps, [clock])
    trainer.train()
    return list(np.diff(clock.marks)[bench.args.warmup :])


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


def run_plain(bench: Bench, hidden: bool, steps: int, seed: int) -> list[float]:
    """The textbook loop: max-length padding, teacher forward every step, KL + CE (+ hidden MSE) by hand, fp32."""
    a = bench.args
    student, teacher = copy.deepcopy(bench.student).train(), bench.teacher
    total = a.warmup + steps
    optimizer = torch.optim.AdamW(student.parameters(), lr=LEARNING_RATE, weight_decay=0.01)
    scheduler = get_linear_schedule_with_warmup(optimizer, max(1, total // 10), total)
    marks = [time.perf_counter()]
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
        marks.append(time.perf_counter())
    return list(np.diff(marks)[a.warmup :])


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
        return json.loads(line)["intervals"]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=60)


# ---------------------------------------------------------------------------------------------------- profile


def profile_cached(bench: Bench, steps: int) -> dict:
    """torch.profiler operator table and cProfile's Python view of (a), distil's cached-soft-label step, bf16."""
    from torch.profiler import ProfilerActivity, profile

    trainer = distil_trainer(bench, "distil-cached", True, bench.args.warmup + steps)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        trainer.train()
    ops = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)
    trainer = distil_trainer(bench, "distil-cached", True, bench.args.warmup + steps)
    profiler = cProfile.Profile()
    profiler.enable()
    trainer.train()
    profiler.disable()
    stats = pstats.Stats(profiler)
    total = stats.total_tt
    wanted = {  # (file suffix, function) -> what it is
        ("distil/distill.py", "compute_loss"): "compute_loss (student forward + loss)",
        ("distil/soft_labels.py", "lookup"): "soft-label lookup (memmap gather)",
        ("distil/data/prepare.py", "__call__"): "PadCollator (padding in Python)",
        ("torch/_tensor.py", "backward"): "backward",
        ("torch/optim/adam.py", "step"): "AdamW step",
        ("torch/optim/adamw.py", "step"): "AdamW step",
        ("torch/nn/utils/clip_grad.py", "clip_grad_norm_"): "gradient clipping",
        ("transformers/trainer.py", "get_batch_samples"): "fetch batches (sampler + collate)",
        ("transformers/trainer.py", "_maybe_log_save_evaluate"): "log/save/evaluate hooks",
    }
    breakdown = {}
    for (file, _line, func), (_cc, _nc, _tt, cum, _callers) in stats.stats.items():
        for (suffix, name), label in wanted.items():
            if func == name and file.endswith(suffix):
                breakdown[label] = breakdown.get(label, 0.0) + cum
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(15)
    text = out.getvalue()
    return {
        "steps": bench.args.warmup + steps,
        "total_seconds": total,
        "share_of_total": {k: round(v / total, 4) for k, v in sorted(breakdown.items(), key=lambda kv: -kv[1])},
        "torch_profiler_top_ops": ops,
        "cprofile_top_tottime": text[text.find("ncalls") - 200 :],
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
    worker = None
    if any(k.startswith("tb-") for k, _ in systems):
        worker = TextBrewerWorker(bench, args.textbrewer_python)
    samples: dict[str, list[float]] = {f"{k}:{p}": [] for k, p in systems}
    step_ms: dict[str, list[float]] = {f"{k}:{p}": [] for k, p in systems}
    per_batch = args.batch_size
    try:
        for r in range(args.rounds):
            calibration.log(f"round {r + 1}")
            order = systems[r % len(systems) :] + systems[: r % len(systems)]  # rotate who goes first
            for kind, precision in order:
                key = f"{kind}:{precision}"
                if kind in DISTIL_KINDS:
                    intervals = run_distil(bench, kind, precision, args.steps)
                elif kind.startswith("plain-"):
                    intervals = run_plain(bench, kind == "plain-hidden", args.steps, seed=r)
                else:
                    dynamic = kind.endswith("dynamic")
                    n = args.warmup + args.steps + 1
                    plan = distil_batch_plan(bench, n) if dynamic else random_batch_plan(bench, n, seed=r)
                    intervals = worker.run("hidden" in kind, dynamic, plan, args.warmup)
                sps = per_batch * len(intervals) / sum(intervals)
                samples[key].append(sps)
                step_ms[key].append(1000 * harness.median(intervals))
                print(
                    f"round {r + 1} {key:26s} {sps:7.1f} samples/s  (median step {step_ms[key][-1]:.0f} ms)",
                    flush=True,
                )
        calibration.log("after rounds")
        profile = profile_cached(bench, args.profile_steps) if args.profile_steps else None
        calibration.log("end")
    finally:
        if worker is not None:
            worker.close()
        shutil.rmtree(bench.work, ignore_errors=True)
    result = summarise(args, info, calibration.summary(), bench, systems, samples, step_ms, worker, profile)
    write_outputs(result)
    return 0


def ratio(samples: dict, a: str, b: str) -> float | None:
    """Median over rounds of samples/s(a) / samples/s(b), each round's pair timed back to back."""
    if a not in samples or b not in samples:
        return None
    return harness.median(x / y for x, y in zip(samples[a], samples[b]))


def summarise(args, info, calibration, bench, systems, samples, step_ms, worker, profile) -> dict:
    rows = {}
    for kind, precision in systems:
        key = f"{kind}:{precision}"
        hidden = "hidden" in kind
        plain = "plain-hidden:fp32" if hidden else "plain-logits:fp32"
        tb_fixed = "tb-hidden-fixed:fp32" if hidden else "tb-logits-fixed:fp32"
        tb_dyn = "tb-hidden-dynamic:fp32" if hidden else "tb-logits-dynamic:fp32"
        rows[key] = {
            "system": LABELS[kind],
            "precision": precision,
            "loss": "logits + hidden MSE" if hidden else "logits",
            "padding": "max_length"
            if kind.startswith("plain") or kind.endswith("fixed")
            else "dynamic, length-grouped",
            "samples_per_s": harness.median(samples[key]),
            "samples_per_s_rounds": samples[key],
            "step_ms": harness.median(step_ms[key]),
            "vs_plain_loop": ratio(samples, key, plain) if kind != "student-alone" else None,
            "vs_textbrewer_fixed": ratio(samples, key, tb_fixed) if kind != "student-alone" else None,
            "vs_textbrewer_dynamic": ratio(samples, key, tb_dyn) if kind != "student-alone" else None,
        }
    checks = {}
    for p in ("bf16", "fp32"):
        r = ratio(samples, f"student-alone:{p}", f"distil-cached:{p}")
        if r is not None:
            checks[f"cached KD step / student-alone step ({p}), target <= 1.10"] = r
    for p in ("bf16", "fp32"):
        for other, target in (
            ("tb-hidden-fixed:fp32", 1.5),
            ("tb-hidden-dynamic:fp32", 1.5),
            ("plain-hidden:fp32", 2.0),
        ):
            r = ratio(samples, f"distil-hidden:{p}", other)
            if r is not None:
                checks[f"distil-hidden:{p} / {other}, target >= {target}"] = r
    return {
        "benchmark": "B1 training throughput",
        "machine": info,
        "calibration": calibration,
        "setup": {
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
        },
        "systems": rows,
        "checks": checks,
        "profile": profile,
    }


def write_outputs(result: dict) -> None:
    f = harness.fmt
    header = [
        "system",
        "precision",
        "padding",
        "samples/s",
        "step ms",
        "vs plain loop",
        "vs TextBrewer (fixed)",
        "vs TextBrewer (distil's batches)",
    ]
    table = []
    for row in result["systems"].values():
        rng = row["samples_per_s_rounds"]
        table.append(
            [
                row["system"],
                row["precision"],
                row["padding"],
                f"{f(row['samples_per_s'])} ({f(min(rng))}-{f(max(rng))})",
                f(row["step_ms"], 0),
                f(row["vs_plain_loop"], 2),
                f(row["vs_textbrewer_fixed"], 2),
                f(row["vs_textbrewer_dynamic"], 2),
            ]
        )
    checks = [[k, f"{v:.2f}x"] for k, v in result["checks"].items()]
    s = result["setup"]
    intro = (
        f"{s['rows']} Rotten Tomatoes rows (mean {s['mean_tokens']:.1f} tokens), batch {s['batch_size']}, max length "
        f"{s['max_length']}; teacher all-MiniLM-L6-v2 (6 x 384), student = its layers [0, 2, 4]; "
        f"{s['rounds']} interleaved rounds x {s['steps_per_round']} measured steps (after {s['warmup_steps']} "
        f"warm-up); samples/s = median over rounds (min-max); ratios = median of per-round ratios. "
        f"TextBrewer {s['textbrewer']} runs in its own venv, fp32. Soft labels for the cached rows took "
        f"{s['soft_label_build_seconds']:.1f} s once (not in the step time).\n"
    )
    md = [
        "## B1 training throughput\n\n",
        intro,
        "\n",
        harness.md_table(header, table),
        "\n",
        harness.md_table(["check", "measured"], checks),
    ]
    prof = result.get("profile")
    if prof:
        md += [
            "\nProfile of (a), bf16, cProfile share of wall time:\n\n",
            harness.md_table(["part", "share"], [[k, f"{100 * v:.1f}%"] for k, v in prof["share_of_total"].items()]),
        ]
    md.append("\n" + harness.environment_note(result["machine"], result["calibration"]))
    markdown = "".join(md)
    harness.write_results("b1_training_throughput", result, markdown)
    if prof:
        (harness.RESULTS_DIR / "b1_profile.txt").write_text(
            prof["torch_profiler_top_ops"] + "\n\n" + prof["cprofile_top_tottime"]
        )
    fig, ax = harness.new_figure(10, 6)
    names = [f"{r['system']} [{r['precision']}]" for r in result["systems"].values()]
    values = [r["samples_per_s"] for r in result["systems"].values()]
    lo = [v - min(r["samples_per_s_rounds"]) for v, r in zip(values, result["systems"].values())]
    hi = [max(r["samples_per_s_rounds"]) - v for v, r in zip(values, result["systems"].values())]
    colors = [
        "tab:blue"
        if n.startswith(("(a)", "(b)", "(c)"))
        else "tab:green"
        if n.startswith("(f)")
        else "tab:gray"
        if n.startswith("(d)")
        else "tab:orange"
        for n in names
    ]
    ax.barh(names[::-1], values[::-1], xerr=[lo[::-1], hi[::-1]], color=colors[::-1])
    ax.set_xlabel("training samples/s (median over rounds; bars: min-max)")
    ax.set_title(f"B1: distillation throughput, batch {s['batch_size']}, 2 CPU threads")
    harness.save_figure(fig, "b1_training_throughput")
    print("\n" + markdown)


if __name__ == "__main__":
    sys.exit(main())
