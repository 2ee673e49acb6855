"""B2: serving latency, throughput and accuracy of the teacher vs its students, per runtime variant.

Every model is exported with distil.deploy.export.export_all and loaded through
distil.deploy.serving.load_student, so each variant is timed exactly as a user would call it (`Predictor.logits`:
tokenise, run, return numpy):

    torch        PyTorch fp32, inference_mode
    torch-bf16   PyTorch under bf16 autocast
    torch-int8   PyTorch dynamic int8 (nn.Linear), quantised on load
    onnx         ONNX Runtime fp32 (CPUExecutionProvider)
    onnx-int8    ONNX Runtime dynamic int8 (quantize_dynamic, QInt8 weights)

at batch 1 and 32, short (16 tokens) and long (128 tokens) inputs: real Rotten Tomatoes snippets joined until
they exceed the length and truncated to it, so every input has exactly that many tokens. Latency p50/p95 per
round (after warm-up), the median over interleaved rounds reported; throughput = batch / p50. The tokeniser alone
is timed too, since it is part of every call.

Models: with --run RUN (default runs/default when it exists) the run's teacher/ and student/ (and baseline/ with
--baseline), each variant scored on the run's test split (distil.deploy.export_cli's evaluator). Without a run: the
all-MiniLM-L6-v2 teacher with a random head and a student cut from its layers [0, 2, 4], untrained (accuracy n/a).
--tiny also times an untrained TinyBERT-4-shaped student (4 x 312, FFN 1200) for the speed it would reach.

    python benchmarks/b2_serving.py --run runs/default                        # ~6 min on 2 cores
    python benchmarks/b2_serving.py --run runs/default --tiny --variants torch,torch-bf16,torch-int8,onnx,onnx-int8
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from functools import partial
from pathlib import Path

import harness  # first: sets OMP_WAIT_POLICY before torch loads
import numpy as np
import torch

from distil.config import DEFAULT_TEACHER, DataConfig
from distil.data import prepare_data
from distil.deploy.export import export_all
from distil.deploy.export_cli import test_split_evaluator
from distil.deploy.serving import load_student
from distil.models.loading import load_classifier, load_tokenizer
from distil.models.packaged import resolve_model
from distil.models.student import select_layers, student_from_config, student_from_teacher

VARIANTS = ("torch", "torch-bf16", "torch-int8", "onnx", "onnx-int8")
DEFAULT_VARIANTS = ("torch", "torch-bf16", "onnx", "onnx-int8")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, default=None, help="a finished run dir with teacher/ and student/")
    p.add_argument("--baseline", action="store_true", help="also serve RUN/baseline")
    p.add_argument("--tiny", action="store_true", help="also time an untrained 4 x 312 student (speed only)")
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS), help=f"any of {', '.join(VARIANTS)}")
    p.add_argument("--batch-sizes", default="1,32")
    p.add_argument("--lengths", default="16,128")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--cell-seconds", type=float, default=0.6, help="time budget per model/variant/cell/round")
    p.add_argument("--min-calls", type=int, default=5)
    p.add_argument("--max-calls", type=int, default=100)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-accuracy", action="store_true", help="skip the test-split evaluation of each variant")
    p.add_argument("--out", type=Path, default=harness.RESULTS_DIR)
    p.add_argument("--keep-exports", action="store_true", help="keep OUT/b2_export and OUT/b2_models afterwards")
    args = p.parse_args(argv)
    if args.run is None and Path("runs/default/report.json").is_file():
        args.run = Path("runs/default")
    return args


def model_dirs(args) -> tuple[dict[str, Path], bool]:
    """{name: saved HF dir} and whether they come from a trained run."""
    if args.run is not None:
        for stage in ("teacher", "student"):
            if not (args.run / stage / "config.json").is_file():
                sys.exit(f"--run {args.run}: no {stage}/ (config.json); finish the run or omit --run")
        dirs = {"teacher": args.run / "teacher", "student": args.run / "student"}
        if args.baseline and (args.run / "baseline" / "config.json").is_file():
            dirs["baseline"] = args.run / "baseline"
        return dirs, True
    root = args.out / "b2_models"
    path = resolve_model(DEFAULT_TEACHER)
    tokenizer = load_tokenizer(path)
    torch.manual_seed(0)
    teacher = load_classifier(path, num_labels=2, id2label={0: "fresh", 1: "rotten"})
    student = student_from_teacher(teacher, select_layers("every-other", teacher.config.num_hidden_layers))
    dirs = {"teacher": root / "teacher", "student": root / "student"}
    for name, model in (("teacher", teacher), ("student", student)):
        model.eval().save_pretrained(dirs[name])
        tokenizer.save_pretrained(dirs[name])
    return dirs, False


def add_tiny(args, dirs: dict[str, Path]) -> None:
    from transformers import AutoConfig

    path = args.out / "b2_models" / "tiny-4x312"
    config = AutoConfig.from_pretrained(dirs["teacher"])
    torch.manual_seed(0)
    tiny = student_from_config(config, num_hidden_layers=4, hidden_size=312, num_attention_heads=12,
                               intermediate_size=1200)  # fmt: skip
    tiny.eval().save_pretrained(path)
    load_tokenizer(str(dirs["teacher"])).save_pretrained(path)
    dirs["tiny-4x312 (untrained)"] = path


def sample_texts(length_tokens: int, count: int, tokenizer) -> list[str]:
    """``count`` texts of real review snippets, each longer than ``length_tokens`` word pieces."""
    frame = prepare_data(DataConfig(max_eval_samples=400)).splits["test"]
    snippets = frame["text"].tolist()
    texts, i = [], 0
    while len(texts) < count:
        parts = []
        while len(tokenizer(" ".join(parts))["input_ids"]) <= length_tokens + 2:
            parts.append(snippets[i % len(snippets)])
            i += 1
        texts.append(" ".join(parts))
    return texts


def time_calls(fn, calls: int, warmup: int = 1) -> tuple[list[float], list[float]]:
    """Wall and process-CPU seconds of ``calls`` calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    wall, cpu = [], []
    for _ in range(calls):
        start = harness.now()
        fn()
        end = harness.now()
        wall.append(end[0] - start[0])
        cpu.append(end[1] - start[1])
    return wall, cpu


def main(argv=None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    harness.setup_torch(args.threads)
    info = harness.machine_info(args.threads)
    calibration = harness.Calibration()
    calibration.log("start")
    dirs, trained = model_dirs(args)
    if args.tiny:
        add_tiny(args, dirs)
    variants = [v for v in args.variants.split(",") if v]
    exports, export_info = {}, {}
    for name, model_dir in dirs.items():
        start = time.perf_counter()
        out = args.out / "b2_export" / name.split(" ")[0]
        figures = export_all(model_dir, out, int8=True, overwrite=True)
        exports[name] = out
        export_info[name] = {
            "seconds": round(time.perf_counter() - start, 1),
            "sizes_bytes": {k: v.get("size_bytes") for k, v in figures.items()},
            "max_abs_diff": {k: v.get("max_abs_diff") for k, v in figures.items()},
        }
        print(f"exported {name} in {export_info[name]['seconds']}s", flush=True)
    predictors = {(m, v): load_student(exports[m], variant=v) for m in dirs for v in variants}
    tokenizer = next(iter(predictors.values())).tokenizer
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    lengths = [int(n) for n in args.lengths.split(",")]
    inputs = {n: sample_texts(n, max(batch_sizes), tokenizer) for n in lengths}
    cells = [(b, n) for n in lengths for b in batch_sizes]
    keys = [("tokenizer", "-")] + list(predictors)
    lat: dict = {(k, c): {"p50": [], "p95": [], "cpu50": []} for k in keys for c in cells}
    calls: dict = {}
    for r in range(args.rounds):
        calibration.log(f"round {r + 1}")
        for b, n in cells:
            texts = inputs[n][:b]
            for key in keys if r % 2 == 0 else keys[::-1]:  # A B C, then C B A
                if key[0] == "tokenizer":
                    fn = partial(tokenizer, texts, padding=True, truncation=True, max_length=n, return_tensors="np")
                else:
                    fn = partial(predictors[key].logits, texts, batch_size=b, max_length=n)
                if (key, b, n) not in calls:  # size the sample from one timed call, once
                    one = time_calls(fn, 1, warmup=1)[0][0]
                    calls[(key, b, n)] = int(
                        np.clip(args.cell_seconds / max(one, 1e-5), args.min_calls, args.max_calls)
                    )
                wall, cpu = time_calls(fn, calls[(key, b, n)])
                lat[(key, (b, n))]["p50"].append(1000 * harness.percentile(wall, 50))
                lat[(key, (b, n))]["p95"].append(1000 * harness.percentile(wall, 95))
                lat[(key, (b, n))]["cpu50"].append(1000 * harness.percentile(cpu, 50))
            print(
                f"round {r + 1} batch {b} len {n}: "
                + ", ".join(f"{m}/{v} {lat[((m, v), (b, n))]['p50'][-1]:.1f}" for m, v in keys),
                flush=True,
            )
    calibration.log("after timing")
    accuracy = evaluate_all(args, dirs, predictors) if trained and not args.no_accuracy else {}
    calibration.log("end")
    result = summarise(args, info, calibration.summary(), dirs, trained, variants, cells, lat, calls, accuracy,
                       export_info)  # fmt: skip
    write_outputs(result, args.out)
    if not args.keep_exports:
        for folder in ("b2_export", "b2_models"):
            shutil.rmtree(args.out / folder, ignore_errors=True)
    return 0


def evaluate_all(args, dirs, predictors) -> dict:
    out = {}
    for name, model_dir in dirs.items():
        if "untrained" in name:
            continue
        evaluate, description = test_split_evaluator(model_dir, args.run, None)
        print(f"accuracy of {name}: {description}", flush=True)
        for (m, v), pred in predictors.items():
            if m == name:
                scores = evaluate(pred)  # a classifier's accuracy, an encoder's Lee Spearman, a reader's F1
                args.metric = next(k for k in ("accuracy", "spearman", "f1") if k in scores)
                out[(m, v)] = scores[args.metric]
    return out


def summarise(args, info, calibration, dirs, trained, variants, cells, lat, calls, accuracy, export_info) -> dict:
    rows = []
    for b, n in cells:
        ref = lat[(("teacher", "torch"), (b, n))]["p50"]  # per round
        for key in [("tokenizer", "-")] + [(m, v) for m in dirs for v in variants]:
            m, v = key
            cell = lat[(key, (b, n))]
            fp32_self, acc = accuracy.get((m, "torch")), accuracy.get(key)
            p50 = harness.median(cell["p50"])
            speedup = harness.median(t / x for t, x in zip(ref, cell["p50"])) if m != "tokenizer" else None
            delta = 100 * (acc - fp32_self) if acc is not None and fp32_self is not None else None
            rows.append(
                {
                    "model": m,
                    "variant": v,
                    "batch": b,
                    "tokens": n,
                    "p50_ms": p50,
                    "p95_ms": harness.median(cell["p95"]),
                    "cpu_ms_p50": harness.median(cell["cpu50"]),
                    "throughput": b / (p50 / 1000),
                    "speedup_vs_teacher_fp32": speedup,
                    "calls_per_round": calls[(key, b, n)],
                    "accuracy": acc,
                    "accuracy_delta_vs_fp32_points": delta,
                }
            )
    checks = {}
    for row in rows:
        student_int8 = row["model"] not in ("teacher", "tokenizer") and row["variant"] in ("onnx-int8", "torch-int8")
        if student_int8 and row["batch"] == 1:
            name = f"{row['model']} {row['variant']}, batch 1, {row['tokens']} tokens: speedup vs teacher fp32"
            checks[f"{name} (target >= 10x)"] = f"{row['speedup_vs_teacher_fp32']:.2f}x"
    for (m, v), acc in accuracy.items():
        if m != "teacher" and v in ("onnx-int8", "torch-int8") and (m, "torch") in accuracy:
            checks[f"{m} {v}: {getattr(args, 'metric', 'accuracy')} change vs its fp32 self (target >= -1 point)"] = (
                f"{100 * (acc - accuracy[(m, 'torch')]):+.2f} points"
            )
    return {"benchmark": "B2 serving", "machine": info, "calibration": calibration,
            "models": {k: str(v) for k, v in dirs.items()}, "trained": trained,
            "run": str(args.run) if args.run else None, "exports": export_info, "rows": rows, "checks": checks,
            "accuracy": {f"{m}/{v}": a for (m, v), a in accuracy.items()},
            "metric": getattr(args, "metric", "accuracy")}  # fmt: skip


def write_outputs(result: dict, out_dir: Path) -> None:
    f = harness.fmt
    header = ["model", "variant", "batch", "tokens", "p50 ms", "p95 ms", "CPU ms p50", "samples/s",
              "speedup vs teacher fp32", f"test {result.get('metric', 'accuracy')}", "vs fp32 self"]  # fmt: skip
    table = []
    for r in result["rows"]:
        acc = f"{100 * r['accuracy']:.2f}%" if r["accuracy"] is not None else "n/a"
        delta = f"{r['accuracy_delta_vs_fp32_points']:+.2f}" if r["accuracy_delta_vs_fp32_points"] is not None else ""
        speed = f"{r['speedup_vs_teacher_fp32']:.2f}x" if r["speedup_vs_teacher_fp32"] is not None else ""
        row = [r["model"], r["variant"], r["batch"], r["tokens"], f(r["p50_ms"], 2), f(r["p95_ms"], 2)]
        row += [f(r["cpu_ms_p50"], 2), f(r["throughput"], 0), speed, acc if r["model"] != "tokenizer" else "", delta]
        table.append(row)
    sizes = [[m, *[f"{(e['sizes_bytes'].get(k) or 0) / 1e6:.1f} MB" for k in ("hf", "onnx", "onnx-int8")],
              f"{e['max_abs_diff'].get('onnx') or 0:.1e}", f"{e['max_abs_diff'].get('onnx-int8') or 0:.1e}"]
             for m, e in result["exports"].items()]  # fmt: skip
    source = (
        f"models from run `{result['run']}`, {result.get('metric', 'accuracy')} on its test split"
        if result["trained"]
        else "untrained models (teacher with a random head, student = its layers [0, 2, 4]): accuracy n/a"
    )
    intro = (
        f"{source}. Latency of `load_student(...).logits(texts)` (tokenisation included), p50/p95 per round, "
        "median over interleaved rounds (A B C, C B A, ...); samples/s = batch / p50; speedup = median of per-round "
        "ratios; CPU ms = process CPU time per call (all threads; ONNX Runtime's threads spin briefly after each "
        "run, which counts here).\n\n"
    )
    md = ["## B2 serving\n\n", intro,
          harness.md_table(header, table), "\n",
          harness.md_table(["model", "hf (safetensors)", "onnx", "onnx int8", "onnx max abs diff",
                            "int8 max abs diff (vs onnx)"], sizes), "\n",
          harness.md_table(["check", "measured"], [[k, v] for k, v in result["checks"].items()]), "\n",
          harness.environment_note(result["machine"], result["calibration"])]  # fmt: skip
    markdown = "".join(md)
    harness.write_results("b2_serving", result, markdown, out_dir)
    rows = [r for r in result["rows"] if r["model"] != "tokenizer"]
    cells = sorted({(r["batch"], r["tokens"]) for r in rows})
    fig, _ = harness.new_figure(12, 6)
    fig.clf()
    for i, (b, n) in enumerate(cells):
        ax = fig.add_subplot(1, len(cells), i + 1)
        sub = [r for r in rows if (r["batch"], r["tokens"]) == (b, n)]
        ax.barh([f"{r['model']}/{r['variant']}" for r in sub][::-1], [r["p50_ms"] for r in sub][::-1],
                color=["tab:orange" if r["model"] == "teacher" else "tab:blue" for r in sub][::-1])  # fmt: skip
        ax.set_title(f"batch {b}, {n} tokens")
        ax.set_xlabel("p50 ms")
        if i:
            ax.set_yticklabels([])
    harness.save_figure(fig, "b2_serving", out_dir)
    print("\n" + markdown)


if __name__ == "__main__":
    sys.exit(main())
