"""`distil run|teacher|soft-labels|student|eval|tune|predict|generate|index|search|inspect|export`: thin commands.

Every configuration field is a flag named by its dotted path (`--teacher.train.epochs 1`), generated from the
dataclasses in distil.config; flags override the YAML file, which overrides the embedded default.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from distil.config import LossConfig, RunConfig, flag_specs, load_config, parse_flag_value, run_flag_specs, set_dotted
from distil.deploy.export_cli import add_export_parser, run_export_args
from distil.deploy.search import build_index, search
from distil.deploy.serving import load_student
from distil.engine import processes
from distil.engine import stages as pipeline
from distil.engine.inspect import inspect_main
from distil.errors import DistilError
from distil.io import write_json
from distil.models.causal import generate_text, load_causal_lm, load_causal_tokenizer, quantize_int8
from distil.models.packaged import resolve_model
from distil.report.report import run_eval
from distil.tasks import QuestionAnsweringTask
from distil.tune.study import tune_main

CONFIG_COMMANDS = {
    "run": "every stage: teacher -> soft labels -> student (+ baseline) -> evaluation and report",
    "teacher": "fine-tune (or load) the teacher and save it to OUTPUT_DIR/teacher",
    "soft-labels": "compute (or find in the cache) the teacher's logits on the training split",
    "student": "build the student, distil it from the cached soft labels; train the baseline too",
    "eval": "evaluate the saved models and write report.json, report.md and plots",
}


SEVERAL_PROCESSES = ("run", "teacher", "soft-labels", "student")
"""The commands a launcher (torchrun, accelerate launch) may start on several processes."""


def _add_config_flags(parser: argparse.ArgumentParser) -> None:

    parser.add_argument("config", nargs="?", default=None, help="YAML file or recipe name (default: embedded)")
    parser.add_argument("--resume", action="store_true", help="continue an unfinished run from its checkpoints")
    group = parser.add_argument_group("configuration (YAML keys; dotted paths)")
    for key, tp, help_text in run_flag_specs():
        if tp is bool:  # `--overwrite` alone means true; `--overwrite false` also works
            group.add_argument(
                f"--{key}", dest=f"cfg:{key}", default=None, nargs="?", const="true", metavar="BOOL", help=help_text
            )
        else:
            group.add_argument(f"--{key}", dest=f"cfg:{key}", default=None, metavar="V", help=help_text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="distil", description="Knowledge distillation for Transformers.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in CONFIG_COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        _add_config_flags(p)
        if name == "student":
            p.add_argument(
                "--live-teacher",
                action="store_true",
                help="run the teacher every step instead of using cached soft labels",
            )
    p = sub.add_parser(
        "tune",
        help="search the distillation settings (Optuna: tpe, grid, random, nsga2) on validation; test the pick once",
        description="An Optuna study over the config's `tune.space` (dotted config keys); the teacher is trained and "
        "its outputs cached once. Running the same command again continues the study.",
    )
    _add_config_flags(p)
    p.add_argument("--trials", type=int, default=None, help="finished trials the study ends with (tune.trials)")
    p.add_argument("--storage", default=None, help="Optuna storage URL shared by workers (tune.storage)")
    p.add_argument("--study-name", default=None, help="the study's name in the storage (tune.study_name)")
    p.add_argument("--preset", choices=["auto"], default=None, help="auto: search student shapes and recipes too")
    p.add_argument("--max-latency-ms", type=float, default=None, help="preset auto: batch-1 CPU latency budget")
    p.add_argument("--max-params", type=int, default=None, help="preset auto: parameter budget")
    p = sub.add_parser("inspect", help="pre-flight: teacher and student side by side, layer map, which losses can run")
    p.add_argument("teacher", help="teacher model directory or hub name")
    p.add_argument("student", help="student model directory or hub name")
    p.add_argument("--config", default=None, help="YAML file or recipe whose `loss` section is checked")

    for key, _tp, help_text in flag_specs(LossConfig, "loss"):
        p.add_argument(f"--{key}", dest=f"cfg:{key}", default=None, metavar="V", help=help_text)

    add_export_parser(sub)
    p = sub.add_parser(
        "predict",
        help="classify, tag entities, answer questions or embed texts with a saved model (arguments, a file, stdin)",
    )
    p.add_argument("model", help="a saved model directory (student/, teacher/, an export)")
    p.add_argument("texts", nargs="*", help="texts to classify")
    p.add_argument("--file", help="one text per line; a QA model: JSON lines with question and context")
    p.add_argument("--question", help="a QA model: the question (with --context)")
    p.add_argument("--context", help="a QA model: the text holding the answer (with --question)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=None, help="tokens per input (default 128; QA: as trained)")
    p.add_argument("--json", action="store_true", help="print one JSON object per line")
    p = sub.add_parser(
        "generate", help="continue prompts with a causal language model (a causal-lm student, a teacher)"
    )
    p.add_argument("model", help="a causal LM folder (student/, teacher/), a GGUF file, or a packaged name")
    p.add_argument("prompts", nargs="+", metavar="PROMPT", help="texts to continue")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--sample", action="store_true", help="sample (with --temperature, --top-p) instead of greedy")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--int8", action="store_true", help="dynamic int8 Linear layers for CPU (torch)")
    p.add_argument("--cache-dir", default=RunConfig.cache_dir, help="where a GGUF file is dequantised once")
    p.add_argument("--json", action="store_true", help="print one JSON object per prompt")
    p = sub.add_parser("index", help="embed a corpus with a sentence-embedding model into a search index")
    p.add_argument("model", help="a sentence-embedding model directory (an embeddings student, an export)")
    p.add_argument("corpus", help="one text per line (.txt, .txt.gz), or a CSV/TSV/JSONL/Parquet file")
    p.add_argument("--out", required=True, metavar="INDEX", help="the index directory to write (replaced)")
    p.add_argument("--variant", default=None, help="torch, torch-bf16, torch-int8, onnx, onnx-int8 (default: auto)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-length", type=int, default=None, help="tokens per text (default: the model's, else 256)")
    p.add_argument("--text-column", default="text", help="the column holding the texts of a tabular corpus")
    p = sub.add_parser("search", help="the corpus texts nearest to each query, from an index built by `distil index`")
    p.add_argument("index", help="an index directory written by `distil index`")
    p.add_argument("queries", nargs="+", metavar="QUERY", help="query texts")
    p.add_argument("--model", default=None, help="the model that embeds the queries (default: the index's)")
    p.add_argument("--variant", default=None, help="load_student variant (default: the index's)")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--json", action="store_true", help="print one JSON object per query")
    return parser


def _config_from_args(args: argparse.Namespace):

    overrides: dict = {}
    for key, tp, _ in run_flag_specs():
        raw = getattr(args, f"cfg:{key}")
        if raw is not None:
            set_dotted(overrides, key, parse_flag_value(key, raw, tp))
    config = args.config
    if config is None and (args.command != "run" or args.resume):
        # a stage command on an existing run, or --resume, reads that run's resolved config (flags override it)

        saved = Path(overrides.get("output_dir", RunConfig.output_dir)).expanduser() / "config.yaml"
        if saved.is_file():
            print(f"config: {saved} (the run's own)")
            config = str(saved)
    return load_config(config, overrides)


def _tune(args: argparse.Namespace) -> int:
    for flag, key in (("trials", "trials"), ("storage", "storage"), ("study_name", "study_name"), ("preset", "preset"),
                      ("max_latency_ms", "max_latency_ms"), ("max_params", "max_params")):  # fmt: skip
        value = getattr(args, flag)
        if value is not None:
            setattr(args, f"cfg:tune.{key}", str(value))
    cfg = _config_from_args(args)
    report = tune_main(cfg, resume=args.resume)
    if report is not None:
        print(f"\nreport: {cfg.output_path / 'report.md'}")
    return 0


def _prepare(ctx: pipeline.Context, stage: str | None = None) -> None:
    """The checks and the data before a stage; under several processes the main process checks and writes the run
    folder, the others wait, and the data's caches are filled by the main process first."""
    processes.main_only(pipeline.open_run_dir, ctx, stage=stage)
    with processes.main_first():
        ctx.load_data()
    if stage in (None, "teacher") and not ctx.done("student"):
        pipeline.check_models(ctx)
    processes.main_only(pipeline.write_config, ctx)


def run_all(ctx: pipeline.Context) -> dict:
    """`distil run`: every stage in order, skipping those already finished when resuming."""
    _prepare(ctx)
    start = time.perf_counter()
    if not ctx.done("teacher"):
        pipeline.run_teacher(ctx)
    else:
        print(f"teacher: done ({ctx.stage_dir('teacher')})")
    pipeline.run_student(ctx)
    processes.finish()  # several processes: the others end here; evaluation and latency are measured once
    report = run_eval(ctx)
    report["timings"]["total_seconds"] = round(time.perf_counter() - start, 1)
    write_json(ctx.out / "report.json", report)
    return report


def _run_config_command(args: argparse.Namespace) -> int:

    cfg = _config_from_args(args)
    ctx = pipeline.Context(cfg, resume=args.resume)
    if args.command == "run":
        run_all(ctx)
        print(f"\nreport: {cfg.output_path / 'report.md'}")
        return 0
    _prepare(ctx, stage=args.command)
    if args.command == "teacher":
        print(f"teacher saved to {pipeline.run_teacher(ctx)}")
    elif args.command == "soft-labels":
        pipeline.run_soft_labels(ctx)
    elif args.command == "student":
        for name, path in pipeline.run_student(ctx, live_teacher=args.live_teacher).items():
            print(f"{name} saved to {path}")
    elif args.command == "eval":
        run_eval(ctx)
    processes.finish()
    return 0


def _predict(args: argparse.Namespace) -> int:
    import json

    texts = list(args.texts)
    lines = []
    if args.file:
        path = Path(args.file)
        if not path.is_file():
            raise DistilError(f"--file '{args.file}' does not exist")
        lines = [line.rstrip("\n") for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    elif not texts and args.question is None and not sys.stdin.isatty():
        lines = [line.rstrip("\n") for line in sys.stdin if line.strip()]
    predictor = load_student(args.model)
    if isinstance(predictor.task, QuestionAnsweringTask):
        return _answer(predictor, args, lines, json)
    if args.question is not None or args.context is not None:
        raise DistilError(f"--question/--context: '{args.model}' is not a question-answering model; pass texts")
    texts += lines
    if not texts:
        raise DistilError("predict: no texts given; pass them as arguments, with --file, or on stdin")
    for text, result in zip(texts, predictor.predict(texts, batch_size=args.batch_size, max_length=args.max_length)):
        if args.json:
            print(json.dumps({"text": text, **result}))
        elif "entities" in result:  # a token classifier: the text, then one line per entity
            print(text)
            for e in result["entities"]:
                print(f"  {e['type']}\t{e['start']}-{e['end']}\t{e['score']:.4f}\t{e['text']}")
        elif "embedding" in result:  # a sentence encoder: its size and first values (--json prints the vector)
            vector = result["embedding"]
            print(f"{len(vector)}-d\t[{', '.join(f'{x:.4f}' for x in vector[:4])}, ...]\t{text}")
        else:
            print(f"{result['label']}\t{result['score']:.4f}\t{text}")
    return 0


def _answer(predictor, args: argparse.Namespace, lines: list[str], json) -> int:
    """`distil predict` of a QA model: --question/--context, or JSON lines of {"question", "context"}."""
    if (args.question is None) != (args.context is None):
        raise DistilError("--question and --context: a QA model needs both (or JSON lines with --file / stdin)")
    items = [{"question": args.question, "context": args.context}] if args.question is not None else []
    for number, line in enumerate(lines, 1):
        try:
            item = json.loads(line)
        except json.JSONDecodeError:
            item = None
        if not (isinstance(item, dict) and all(isinstance(item.get(k), str) for k in ("question", "context"))):
            where = args.file or "stdin"
            raise DistilError(f"{where} line {number}: expected a JSON object with string 'question' and 'context'")
        items.append(item)
    if not items or args.texts:
        raise DistilError("predict: a QA model reads --question Q --context C, or JSON lines of question/context")
    for item, result in zip(items, predictor.predict(items, batch_size=args.batch_size, max_length=args.max_length)):
        if args.json:
            print(json.dumps({**{k: item[k] for k in ("id", "question") if k in item}, **result}))
        else:
            print(f"{result['answer']}\t{result['start']}-{result['end']}\t{result['score']:.4f}\t{item['question']}")
    return 0


def _generate(args: argparse.Namespace) -> int:
    import json

    if args.max_new_tokens < 1:
        raise DistilError(f"--max-new-tokens {args.max_new_tokens}: must be >= 1")
    if args.temperature <= 0 or not 0 < args.top_p <= 1:
        raise DistilError(
            f"--temperature {args.temperature} / --top-p {args.top_p}: need temperature > 0, 0 < top_p <= 1"
        )
    path = resolve_model(args.model)
    model = load_causal_lm(path, args.cache_dir)
    tokenizer = load_causal_tokenizer(path, args.cache_dir)
    if args.int8:
        model = quantize_int8(model, keep_float=("mlp.down_proj",))  # outlier activations there (measured)
    for prompt in args.prompts:
        text = generate_text(model, tokenizer, prompt, args.max_new_tokens, sample=args.sample,
                             temperature=args.temperature, top_p=args.top_p, seed=args.seed)  # fmt: skip
        print(json.dumps({"prompt": prompt, "completion": text}, ensure_ascii=False) if args.json else prompt + text)
    return 0


def _index(args: argparse.Namespace) -> int:
    meta = build_index(args.model, args.corpus, args.out, variant=args.variant, batch_size=args.batch_size,
                       max_length=args.max_length, text_column=args.text_column)  # fmt: skip
    print(f"indexed {meta['count']} texts ({meta['dim']}-d, model {meta['model']}) into {args.out} "
          f"in {meta['seconds']:.1f} s")  # fmt: skip
    return 0


def _search(args: argparse.Namespace) -> int:
    import json

    results = search(args.index, args.queries, top_k=args.top_k, model=args.model, variant=args.variant,
                     batch_size=args.batch_size)  # fmt: skip
    for query, hits in zip(args.queries, results):
        if args.json:
            print(json.dumps({"query": query, "hits": hits}, ensure_ascii=False))
            continue
        print(query)
        for hit in hits:
            text = " ".join(hit["text"].split())
            text = text if len(text) <= 100 else text[:99] + "…"
            print(f"  {hit['rank']}. {hit['score']:.4f}  {text}")
    return 0


def _inspect(args: argparse.Namespace) -> int:

    overrides: dict = {}
    for key, tp, _ in flag_specs(LossConfig, "loss"):
        raw = getattr(args, f"cfg:{key}")
        if raw is not None:
            set_dotted(overrides, key, parse_flag_value(key, raw, tp))
    cfg = load_config(args.config, overrides)
    stages = {stage.name: stage.loss for stage in cfg.stages} if cfg.stages and not overrides else None
    loss = next(iter(stages.values())) if stages else cfg.loss
    return inspect_main(resolve_model(args.teacher), resolve_model(args.student), loss, stages)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Idle OpenMP threads sleep instead of spinning: on a shared or small CPU machine, spinning threads of two
    # processes starve each other (steps 5-10x slower measured here); alone, the cost is within noise.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import transformers

    transformers.logging.set_verbosity_error()  # load reports and deprecation chatter; our own lines say what ran
    transformers.utils.logging.disable_progress_bar()  # per-tensor "Loading weights" bars; stage bars stay
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    try:
        if processes.launched():
            if args.command not in SEVERAL_PROCESSES:
                raise DistilError(
                    f"distil {args.command} runs in one process; launch it without torchrun or accelerate (under a "
                    f"launcher: {', '.join(SEVERAL_PROCESSES)})"
                )
            processes.start()
        if args.command == "predict":
            return _predict(args)
        if args.command == "index":
            return _index(args)
        if args.command == "generate":
            return _generate(args)
        if args.command == "search":
            return _search(args)
        if args.command == "inspect":
            return _inspect(args)
        if args.command == "tune":
            return _tune(args)
        if args.command == "export":
            return run_export_args(args)
        return _run_config_command(args)
    except DistilError as e:
        print(f"distil: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("distil: interrupted; finished stages are kept, continue with --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
