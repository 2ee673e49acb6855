"""B5: one causal-LM training step: distil's cached top-k step vs the student alone, distil's live teacher and TRL.

The issue's goals: the cached top-k step is at most 1.10x the student's own step, and at least 2x faster than TRL's
GKD step. Everything follows the causal-lm recipe (src/distil/recipes/causal-lm.yaml, read with load_config):
SmolLM2-135M-Instruct teacher (`smollm2-135m`, 30 x 576), student = its layers [0, 3, 6, 9, 13, 16, 19, 22, 26, 29]
(student_from_teacher), blocks of 256 tokens, batch 8, bf16 autocast, forward KL, alpha 0, T 1, top_k 64. Every
system trains its own deep copy of the same initial student on the same real batches: the first steps x batch
Shakespeare training blocks (read_documents("shakespeare"), split_documents with the recipe's fractions and seed,
the train split packed by tokenize_lm with the teacher's tokenizer; all blocks are full, 256 tokens).

    A  student alone        DistillationTrainer without a distiller: next-token cross-entropy (the baseline's step)
    B  distil cached top-k  DistillationTrainer + make_distiller(soft_labels=...): the teacher's top-64
                            log-probabilities + tail mass of exactly these rows, built once before timing
                            (soft_labels_for into a temporary cache), read from the memory-mapped cache; forward KL
                            over the 64 + 1 buckets. The teacher is not kept (it never runs).
    C  distil live teacher  DistillationTrainer + make_distiller(soft_labels=None, bf16_teacher=True): the teacher
                            (its bf16-Linear copy) runs under inference_mode every step; full-vocabulary forward KL
    D  TRL GKDTrainer       trl.experimental.gkd.GKDTrainer, GKDConfig(lmbda=0, beta=0, temperature=1, seq_kd=False):
                            no generation; the teacher (fp32 weights, under the same bf16 autocast: accelerate
                            wraps its forward) runs under no_grad every step; generalized_jsd_loss at beta 0 =
                            full-vocabulary forward KL, normalised by the batch's labelled tokens, as C

One step is what the Trainer's loop does per optimiser step, minus logging, clipping and the scheduler, for every
system alike: trainer.get_batch_samples (the labelled-token count the loop passes on), trainer.training_step(model,
batch) (forward, loss, backward, under the bf16 autocast that accelerate's prepare puts around the student's
forward), optimizer.step(), model.zero_grad(). Each trainer builds its own AdamW from the same arguments (recipe's
lr 2e-4 and weight decay 0.01, no scheduler step: the rate stays constant) and is prepared as Trainer.train prepares
it (accelerator.prepare(model, optimizer)). Batches are collated once, before timing (PadCollator; all rows full,
so no padding), and given to each trainer as its own collator would: A-C get input_ids, attention_mask, labels
(= input_ids, unshifted) and idx; D gets input_ids, attention_mask and labels (= input_ids). GKD's own collator
(DataCollatorForChatML) would also add `prompts` / `prompt_attention_mask`, read only by on-policy or seq_kd
generation, which lmbda = 0 and seq_kd = False never run, and would put -100 on prompt tokens; a plain-text block
has no prompt, so every next token is trained, as in A-C (the same (B, L) tensors, the same B x (L - 1) labelled
tokens). TRL's defaults that differ from distil's are aligned where they are not part of the method:
gradient_checkpointing False (TRL defaults to True, which recomputes the forward; distil does not checkpoint;
Trainer.train would switch it on, and the JSON records that it is off), report_to [], the same learning rate,
weight decay, batch, max_length and bf16.

Timing: 2 warm-up steps per system, then --rounds rounds of --steps steps, the systems interleaved (A B C D, then
D C B A, ...); a step is timed with perf_counter around it (CPU work is synchronous), with the process's CPU time
beside it. Reported: the median step over all measured steps, tokens/s = batch x length / that, and ratios taken
round by round (median step of X / median step of Y in the same round, minutes apart) and then medianed. The peak
RSS growth of each system's steps (VmHWM after /proc/self/clear_refs reset, minus VmRSS before) is in the table as
well. The first warm-up loss of every system (same initial student, same batch) is shown: C and D compute the same
full-vocabulary forward KL and should agree to bf16 noise.

    .venv/bin/python benchmarks/b5_causal_step.py                 # ~7 min on 2 idle cores (3 rounds x 4 steps)
    .venv/bin/python benchmarks/b5_causal_step.py --systems A,B   # the 1.10x goal alone, ~3 min
    .venv/bin/python benchmarks/b5_causal_step.py --smoke         # tiny random Llama, proves the code path (~20 s)

(Estimate: student step ~4 s, teacher forward ~2 s for 8 x 256 in bf16; A ~4 s, B ~4 s, C ~7 s, D ~8 s a step:
~1.5 min a round, plus warm-up, loading and the soft labels of 32 blocks.) TRL lives beside distil's environment,
without its dependencies (all already in .venv); without it, D is skipped with a note:

    .venv/bin/pip install --no-deps --target benchmarks/.trl-pkgs trl==1.16.0
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import dataclasses
import gc
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import harness  # first: sets OMP_WAIT_POLICY before torch loads
import numpy as np
import torch
from datasets import Dataset

from distil.config import RunConfig, TrainConfig, load_config
from distil.data import PadCollator
from distil.data.lm_text import read_documents, split_documents, tokenize_lm
from distil.engine.distiller import make_distiller
from distil.engine.teacher_cache import soft_labels_for
from distil.engine.trainer import DistillationTrainer, training_arguments
from distil.models.causal import load_causal_lm, load_causal_tokenizer
from distil.models.student import select_layers, student_from_teacher
from distil.tasks.causal_lm import CausalLMTask

TRL_DIR = harness.BENCH_DIR / ".trl-pkgs"
TRL_INSTALL = ".venv/bin/pip install --no-deps --target benchmarks/.trl-pkgs trl==1.16.0"
SYSTEMS = {
    "A": ("student alone", "DistillationTrainer, no distiller: next-token CE (the baseline's step)"),
    "B": ("distil cached top-k", "DistillationTrainer + cached top-k soft labels: forward KL over k + 1 buckets"),
    "C": ("distil live teacher", "DistillationTrainer + live teacher (bf16 Linears): full-vocabulary forward KL"),
    "D": ("TRL GKDTrainer", "GKDTrainer lmbda 0, beta 0: live teacher (fp32 weights, autocast), full-vocab KL"),
}
RATIOS = (("B", "A"), ("C", "A"), ("D", "A"), ("D", "B"), ("D", "C"))
CHECKS = (  # (numerator, denominator, "<=" or ">=", target, what)
    ("B", "A", "<=", 1.10, "cached top-k step / student step"),
    ("D", "B", ">=", 2.0, "TRL GKD step / cached top-k step"),
)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=4, help="measured steps per system per round")
    p.add_argument("--warmup", type=int, default=2, help="steps per system before the first round (not timed)")
    p.add_argument("--batch-size", type=int, default=None, help="default: the recipe's (8)")
    p.add_argument("--max-length", type=int, default=None, help="default: the recipe's (256)")
    p.add_argument("--systems", default="A,B,C,D", help="comma-separated subset of A,B,C,D, timed in this order")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--smoke", action="store_true", help="tiny random Llama, random tokens, 1 round of 2 steps")
    p.add_argument("--out", type=Path, default=harness.RESULTS_DIR)
    args = p.parse_args(argv)
    keys = [s.strip().upper() for s in args.systems.split(",") if s.strip()]
    unknown = [k for k in keys if k not in SYSTEMS]
    if unknown or not keys or len(set(keys)) != len(keys):
        p.error(f"--systems {args.systems!r}: give distinct letters of {','.join(SYSTEMS)}")
    args.systems = keys
    if args.smoke:
        args.rounds, args.steps, args.warmup = 1, 2, 1
        args.batch_size, args.max_length = args.batch_size or 4, args.max_length or 32
    if min(args.rounds, args.steps) < 1 or args.warmup < 0:
        p.error("--rounds and --steps must be >= 1, --warmup >= 0")
    return args


# ---------------------------------------------------------------------------------------------------- setup


@dataclasses.dataclass
class Bench:
    """Everything the systems share."""

    cfg: RunConfig  # the causal-lm recipe
    train_cfg: TrainConfig  # the recipe's distill settings, with --batch-size
    task: CausalLMTask
    teacher: torch.nn.Module | None  # fp32, eval; None once every system is built
    tokenizer: object
    student: torch.nn.Module  # the initial student; every system trains a deep copy
    dataset: Dataset  # the timed blocks: input_ids, attention_mask, labels, idx, length
    batches: list[dict[str, torch.Tensor]]  # steps batches, collated once: (B, L) each, idx (B,)
    collator: PadCollator
    work: Path
    teacher_name: str
    student_layers: list[int]
    data_note: str
    soft_labels: object = None
    soft_label_seconds: float | None = None


def recipe(args) -> tuple[RunConfig, TrainConfig]:
    cfg = load_config("causal-lm")
    cfg.data.max_length = args.max_length or cfg.data.max_length
    train_cfg = dataclasses.replace(cfg.distill, batch_size=args.batch_size or cfg.distill.batch_size)
    return cfg, train_cfg


def shakespeare_blocks(cfg: RunConfig, tokenizer, n_blocks: int) -> tuple[Dataset, str]:
    """The first ``n_blocks`` blocks of the recipe's training split, all full. Packing is sequential, so the first
    documents of the split give the same first blocks as the whole split; only as many are tokenised as needed."""
    d = cfg.data
    frame = read_documents(d.source, d.encoding, d.text_column)
    train = split_documents(frame, d.validation_fraction, d.test_fraction, d.split_seed, d.source)["train"]
    k = 1
    while True:
        blocks = tokenize_lm(train.iloc[:k], tokenizer, d.max_length, "b5")
        full = int(np.sum(np.asarray(blocks["length"]) == d.max_length))
        if full >= n_blocks or k >= len(train):
            break
        k = min(2 * k, len(train))
    if full < n_blocks:
        raise SystemExit(f"{d.source}: {full} full blocks of {d.max_length} tokens, {n_blocks} needed")
    docs = ", ".join(str(x) for x in train["doc"].iloc[:k])
    note = f"the first {n_blocks} blocks of the {d.source} training split (from: {docs})"
    return blocks.select(range(n_blocks)), note


def tiny_tokenizer(vocab_size: int):
    """A word-level tokenizer over ``t0..t{V-1}`` (pad t0, eos t1): what TRL and the cache key need of one."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab_size)}, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="t0", eos_token="t1", unk_token="t0")


def build(args, work: Path) -> Bench:
    cfg, train_cfg = recipe(args)
    task = CausalLMTask(cfg.causal_lm)
    b, length = train_cfg.batch_size, cfg.data.max_length
    n_blocks = args.steps * b
    torch.manual_seed(cfg.seed)
    if args.smoke:
        from transformers import LlamaConfig, LlamaForCausalLM

        vocab = 256
        config = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max(64, length),
                             tie_word_embeddings=True, bos_token_id=1, eos_token_id=1, pad_token_id=0)  # fmt: skip
        teacher = LlamaForCausalLM(config).eval()
        tokenizer = tiny_tokenizer(vocab)
        layers = [0]
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(2, vocab, (n_blocks, length), generator=g).tolist()
        dataset = Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * length] * n_blocks, "labels": ids,
                                     "idx": list(range(n_blocks)), "length": [length] * n_blocks})  # fmt: skip
        teacher_name, note = "tiny random Llama (2 x 32, vocab 256)", f"{n_blocks} random blocks"
    else:
        teacher = load_causal_lm(cfg.teacher.model, cfg.cache_path).eval()
        tokenizer = load_causal_tokenizer(cfg.teacher.model, cfg.cache_path)
        layers = select_layers(cfg.student.layers, teacher.config.num_hidden_layers, cfg.student.num_layers)
        dataset, note = shakespeare_blocks(cfg, tokenizer, n_blocks)
        teacher_name = f"{cfg.teacher.model} ({teacher.config.num_hidden_layers} x {teacher.config.hidden_size})"
    student = student_from_teacher(teacher, layers).train()
    collator = PadCollator(tokenizer.pad_token_id or 0)
    batches = [collator([dataset[i] for i in range(s * b, (s + 1) * b)]) for s in range(args.steps)]
    bench = Bench(cfg, train_cfg, task, teacher, tokenizer, student, dataset, batches, collator, work,
                  teacher_name, list(layers), note)  # fmt: skip
    if "B" in args.systems:
        start = time.perf_counter()
        bench.soft_labels = soft_labels_for(
            teacher,
            tokenizer,
            dataset,
            collator,
            work / "cache",
            max_length=length,
            batch_size=cfg.teacher.soft_label_batch_size,
            bf16=cfg.teacher.train.bf16,
            per_token=task.per_token,
            task=task.name,
            signals=task.signals(teacher.config.vocab_size),
            signal_settings=task.signal_settings(),
        )
        bench.soft_label_seconds = time.perf_counter() - start
    return bench


# ---------------------------------------------------------------------------------------------------- systems


@dataclasses.dataclass
class System:
    key: str
    trainer: object
    model: torch.nn.Module  # the prepared student (accelerate's autocast around its forward)
    inputs: tuple[str, ...]  # the batch keys this trainer's collator would give
    wall: list[list[float]] = dataclasses.field(default_factory=list)  # per round, per step
    cpu: list[list[float]] = dataclasses.field(default_factory=list)
    rss_mib: list[float | None] = dataclasses.field(default_factory=list)  # per round
    warmup_losses: list[float] = dataclasses.field(default_factory=list)
    losses: list[float] = dataclasses.field(default_factory=list)


def import_trl():
    """(GKDConfig, GKDTrainer, version), or None with a printed note when TRL is not installed."""
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    if TRL_DIR.is_dir() and str(TRL_DIR) not in sys.path:
        sys.path.append(str(TRL_DIR))  # after the venv: TRL's dependencies come from distil's environment
    try:
        import trl
        from trl.experimental.gkd import GKDConfig, GKDTrainer
    except ImportError as e:
        print(f"note: TRL is not importable ({e}); system D is skipped. Install it with:\n    {TRL_INSTALL}")
        return None
    return GKDConfig, GKDTrainer, trl.__version__


def prepare(trainer) -> torch.nn.Module:
    """What Trainer.train does before its first step on one process: create the optimizer from the trainer's
    arguments and run accelerate's prepare (bf16 autocast around the model's forward, the optimizer wrapped)."""
    trainer.create_optimizer()
    model, trainer.optimizer = trainer.accelerator.prepare(trainer.model, trainer.optimizer)
    trainer.model_wrapped = model
    trainer.current_gradient_accumulation_steps = 1  # set by the training loop; read by training_step
    return model


def distil_system(bench: Bench, key: str) -> System:
    student = copy.deepcopy(bench.student).train()
    bf16 = bench.train_cfg.bf16
    if key == "A":
        distiller = None
    elif key == "B":
        distiller = make_distiller(bench.cfg.loss, bench.teacher, student, bench.soft_labels, bf16, bench.task)
        assert distiller.teacher is None, "the cached distiller should not keep the teacher"
    else:
        distiller = make_distiller(bench.cfg.loss, bench.teacher, student, None, bf16, bench.task)
    targs = training_arguments(bench.train_cfg, bench.work / f"distil-{key}", bench.cfg.seed, len(bench.dataset),
                               evaluate=False)  # fmt: skip
    targs = dataclasses.replace(targs, save_strategy="no", report_to=[], disable_tqdm=True)
    trainer = DistillationTrainer(
        model=student,
        args=targs,
        train_dataset=bench.dataset,
        data_collator=bench.collator,
        distiller=distiller,
        task=bench.task,
    )
    return System(key, trainer, prepare(trainer), ("input_ids", "attention_mask", "labels", "idx"))


def trl_system(bench: Bench, trl) -> System:
    GKDConfig, GKDTrainer, _ = trl
    student = copy.deepcopy(bench.student).train()
    t, length = bench.train_cfg, bench.cfg.data.max_length
    args = GKDConfig(
        output_dir=str(bench.work / "trl"),
        lmbda=0.0,  # no on-policy generation
        beta=0.0,  # generalized JSD at beta 0 = forward KL(teacher || student)
        temperature=1.0,
        seq_kd=False,
        bf16=t.bf16,
        per_device_train_batch_size=t.batch_size,
        max_length=length,
        learning_rate=t.learning_rate,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        gradient_checkpointing=False,  # TRL's default True recomputes the forward; distil does not checkpoint
        report_to=[],
        use_cpu=not torch.cuda.is_available(),  # as distil's training_arguments
        save_strategy="no",
        disable_tqdm=True,
        seed=bench.cfg.seed,
        dataloader_num_workers=0,
    )
    rows = bench.dataset[: t.batch_size]  # SFTTrainer wants a train_dataset; the steps get the batches below
    tiny = Dataset.from_dict({k: rows[k] for k in ("input_ids", "attention_mask", "labels")})
    # The fp32 teacher itself: GKD's accelerator.prepare_model wraps its forward in place (built last, see main).
    trainer = GKDTrainer(
        model=student, teacher_model=bench.teacher, args=args, train_dataset=tiny, processing_class=bench.tokenizer
    )
    return System("D", trainer, prepare(trainer), ("input_ids", "attention_mask", "labels"))


def optimizer_info(trainer) -> dict:
    opt = getattr(trainer.optimizer, "optimizer", trainer.optimizer)  # inside accelerate's AcceleratedOptimizer
    d = opt.defaults
    return {
        "class": type(opt).__name__,
        "lr": d.get("lr"),
        "betas": list(d.get("betas", ())),
        "eps": d.get("eps"),
        "weight_decay_groups": [g["weight_decay"] for g in opt.param_groups],
        "fused": d.get("fused"),
        "foreach": d.get("foreach"),
        "parameters": sum(p.numel() for g in opt.param_groups for p in g["params"]),
    }


# ---------------------------------------------------------------------------------------------------- timing


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _reset_peak() -> bool:
    """Reset the process's peak RSS (VmHWM) to its current RSS (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _trim() -> None:
    """Hand freed heap back to the OS, so that one system's leftovers do not hide the next one's growth."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def run_step(system: System, batch: dict[str, torch.Tensor]) -> tuple[float, float, float]:
    """(wall s, CPU s, loss) of one optimiser step as the Trainer's loop runs it (no logging, clipping, scheduler)."""
    trainer, model = system.trainer, system.model
    inputs = {k: batch[k] for k in system.inputs}
    start = harness.now()
    _, num_items = trainer.get_batch_samples(iter([inputs]), 1, trainer.args.device)
    loss = trainer.training_step(model, dict(inputs), num_items)
    trainer.optimizer.step()
    model.zero_grad()
    _sync()
    end = harness.now()
    return end[0] - start[0], end[1] - start[1], float(loss)


def run_block(system: System, batches: list, steps: int) -> None:
    """One round of ``steps`` steps of one system, with its peak RSS growth."""
    gc.collect()
    _trim()
    before, peak_ok = _status_kib("VmRSS"), _reset_peak()
    wall, cpu = [], []
    for i in range(steps):
        w, c, loss = run_step(system, batches[i % len(batches)])
        wall.append(w)
        cpu.append(c)
        system.losses.append(loss)
    peak = _status_kib("VmHWM") if peak_ok else None
    system.wall.append(wall)
    system.cpu.append(cpu)
    system.rss_mib.append((peak - before) / 1024 if peak is not None and before is not None else None)


# ---------------------------------------------------------------------------------------------------- results


def per_round_ratio(systems: dict[str, System], a: str, b: str, clock: str = "wall") -> tuple[float, list] | None:
    """Median over rounds of (median step of a / median step of b) in the same round."""
    if a not in systems or b not in systems:
        return None
    ra = [harness.median(x) for x in getattr(systems[a], clock)]
    rb = [harness.median(x) for x in getattr(systems[b], clock)]
    rounds = [x / y for x, y in zip(ra, rb)]
    return harness.median(rounds), rounds


def summarise(args, info, calibration, bench: Bench, systems: dict[str, System], trl_version, build_seconds):
    tokens = float(np.mean([int(b["attention_mask"].sum()) for b in bench.batches]))  # per step
    rows = {}
    for key, s in systems.items():
        flat_wall = [x for r in s.wall for x in r]
        flat_cpu = [x for r in s.cpu for x in r]
        step = harness.median(flat_wall)
        rss = [x for x in s.rss_mib if x is not None]
        rows[key] = {
            "system": SYSTEMS[key][0],
            "what": SYSTEMS[key][1],
            "step_s": step,
            "step_s_rounds": [harness.median(r) for r in s.wall],
            "step_s_all": s.wall,
            "cpu_s": harness.median(flat_cpu),
            "cpu_s_rounds": [harness.median(r) for r in s.cpu],
            "cpu_s_all": s.cpu,
            "tokens_per_s": tokens / step,
            "peak_rss_growth_mib": max(rss) if rss else None,
            "peak_rss_growth_mib_rounds": s.rss_mib,
            "first_loss": s.warmup_losses[0] if s.warmup_losses else (s.losses[0] if s.losses else None),
            "warmup_losses": s.warmup_losses,
            "last_loss": s.losses[-1] if s.losses else None,
            "optimizer": optimizer_info(s.trainer),
        }
    ratios = {}
    for a, b in RATIOS:
        wall, cpu = per_round_ratio(systems, a, b), per_round_ratio(systems, a, b, "cpu")
        if wall is not None:
            ratios[f"{a}/{b}"] = {"wall": wall[0], "wall_rounds": wall[1], "cpu": cpu[0], "cpu_rounds": cpu[1]}
    checks = {}
    for a, b, op, target, what in CHECKS:
        r = ratios.get(f"{a}/{b}")
        if r is not None:
            met = r["wall"] <= target if op == "<=" else r["wall"] >= target
            checks[f"{what} ({a}/{b}) {op} {target}"] = {"wall": r["wall"], "cpu": r["cpu"], "met": bool(met)}
    optimizers = {k: {**v["optimizer"], "parameters": None} for k, v in rows.items()}
    same_optimizer = len({repr(v) for v in optimizers.values()}) <= 1
    if not same_optimizer:
        print(f"warning: the systems' optimizers differ: {optimizers}", flush=True)
    setup = {
        "smoke": args.smoke,
        "teacher": bench.teacher_name,
        "student_layers": bench.student_layers,
        "student_parameters": sum(p.numel() for p in bench.student.parameters()),
        "data": bench.data_note,
        "blocks": len(bench.dataset),
        "batch_size": bench.train_cfg.batch_size,
        "max_length": bench.cfg.data.max_length,
        "tokens_per_step": tokens,
        "bf16": bench.train_cfg.bf16,
        "loss": {
            "alpha": bench.cfg.loss.alpha,
            "kd_temperature": bench.cfg.loss.kd_temperature,
            "divergence": bench.cfg.causal_lm.divergence,
            "top_k": bench.cfg.causal_lm.top_k,
        },
        "learning_rate": bench.train_cfg.learning_rate,
        "weight_decay": bench.train_cfg.weight_decay,
        "same_optimizer": same_optimizer,
        "rounds": args.rounds,
        "steps_per_round": args.steps,
        "warmup_steps": args.warmup,
        "order": "interleaved: " + " ".join(systems) + ", then reversed, alternating",
        "soft_label_build_seconds": bench.soft_label_seconds,
        "soft_label_status": getattr(bench.soft_labels, "status", None),
        "setup_seconds": build_seconds,
        "trl": trl_version,
        "trl_gradient_checkpointing": (
            {
                "args": bool(systems["D"].trainer.args.gradient_checkpointing),
                "model": bool(getattr(systems["D"].model, "is_gradient_checkpointing", False)),
            }
            if "D" in systems
            else None
        ),
    }
    payload = {"benchmark": "B5 causal-LM training step", "machine": info, "calibration": calibration,
               "setup": setup, "systems": rows, "ratios": ratios, "checks": checks}  # fmt: skip
    return payload, markdown(payload)


def markdown(result: dict) -> str:
    f, s, rows = harness.fmt, result["setup"], result["systems"]
    header = ["system", "what one step runs", "step s (round min-max)", "tokens/s", "CPU s/step", "vs student alone",
              "peak RSS +MiB", "first loss"]  # fmt: skip
    table = []
    for key, row in rows.items():
        rng = row["step_s_rounds"]
        vs = result["ratios"].get(f"{key}/A", {}).get("wall") if key != "A" else 1.0
        step = f"{f(row['step_s'], 2)} ({f(min(rng), 2)}-{f(max(rng), 2)})"
        table.append([f"{key}. {row['system']}", row["what"], step, f(row["tokens_per_s"], 0), f(row["cpu_s"], 2),
                      f"{f(vs, 2)}x" if vs is not None else "n/a", f(row["peak_rss_growth_mib"], 0),
                      f(row["first_loss"], 4)])  # fmt: skip
    ratio_rows = [[k, f"{f(v['wall'], 2)}x", f"{f(v['cpu'], 2)}x", ", ".join(f(x, 2) for x in v["wall_rounds"])]
                  for k, v in result["ratios"].items()]  # fmt: skip
    checks = [[k, f"{f(v['wall'], 2)}x", f"{f(v['cpu'], 2)}x", "yes" if v["met"] else "no"]
              for k, v in result["checks"].items()]  # fmt: skip
    soft = (
        f" Building the soft labels of the {s['blocks']} blocks took {s['soft_label_build_seconds']:.1f} s once "
        "(not in the step time)."
        if s["soft_label_build_seconds"] is not None
        else ""
    )
    intro = (
        f"Teacher {s['teacher']}; student = its layers {s['student_layers']} ({s['student_parameters'] / 1e6:.1f}M "
        f"parameters); {s['data']}; batch {s['batch_size']} x {s['max_length']} tokens, bf16 {s['bf16']}, forward "
        f"KL at T {s['loss']['kd_temperature']}, alpha {s['loss']['alpha']}, top_k {s['loss']['top_k']}; AdamW lr "
        f"{s['learning_rate']}, weight decay {s['weight_decay']} (same optimizer in every system: "
        f"{s['same_optimizer']}). One step = get_batch_samples + training_step (forward, loss, backward) + "
        f"optimizer.step + zero_grad. {s['warmup_steps']} warm-up steps per system, then {s['rounds']} rounds x "
        f"{s['steps_per_round']} steps, {s['order']}; step s = median of all measured steps; ratios = median of "
        f"per-round ratios of median steps, wall (CPU time). TRL {s['trl'] or 'not installed'}.{soft} First loss: "
        "the first warm-up step, same initial student and batch in every system (C and D compute the same "
        "full-vocabulary forward KL).\n"
    )
    return "".join([
        "## B5 causal-LM training step" + (" (smoke: tiny random model, not a measurement)" if s["smoke"] else ""),
        "\n\n", intro, "\n", harness.md_table(header, table), "\n",
        harness.md_table(["ratio", "wall", "CPU time", "per round (wall)"], ratio_rows), "\n",
        harness.md_table(["goal", "wall", "CPU time", "met (wall)"], checks) if checks else "", "\n",
        harness.environment_note(result["machine"], result["calibration"]),
    ])  # fmt: skip


# ---------------------------------------------------------------------------------------------------- main


def main(argv=None) -> int:
    args = parse_args(argv)
    harness.setup_torch(args.threads)
    info = harness.machine_info(args.threads)
    calibration = harness.Calibration()
    calibration.log("start")
    trl = import_trl() if "D" in args.systems else None
    if trl is None and "D" in args.systems:
        args.systems = [k for k in args.systems if k != "D"]
    work = Path(tempfile.mkdtemp(prefix="b5-"))
    try:
        start = time.perf_counter()
        bench = build(args, work)
        print(f"data: {bench.data_note}; {len(bench.batches)} batches of {bench.train_cfg.batch_size} x "
              f"{bench.cfg.data.max_length}; soft labels: {getattr(bench.soft_labels, 'status', 'not built')} "
              f"in {bench.soft_label_seconds or 0:.1f}s", flush=True)  # fmt: skip
        systems: dict[str, System] = {}
        for key in sorted(args.systems):  # D last: TRL's accelerate wraps the teacher's forward in place
            systems[key] = trl_system(bench, trl) if key == "D" else distil_system(bench, key)
        systems = {key: systems[key] for key in args.systems}  # timed in the order given
        bench.teacher = None  # held by C (its bf16 copy) and D only
        gc.collect()
        build_seconds = time.perf_counter() - start
        for key, system in systems.items():
            for i in range(args.warmup):
                w, _, loss = run_step(system, bench.batches[i % len(bench.batches)])
                system.warmup_losses.append(loss)
                print(f"warm-up {key} ({SYSTEMS[key][0]}) step {i + 1}: {w:.2f}s, loss {loss:.4f}", flush=True)
        for r in range(args.rounds):
            calibration.log(f"round {r + 1}")
            for key in list(systems) if r % 2 == 0 else list(systems)[::-1]:
                system = systems[key]
                run_block(system, bench.batches, args.steps)
                rss = system.rss_mib[-1]
                print(f"round {r + 1} {key} {SYSTEMS[key][0]:22s} median step {harness.median(system.wall[-1]):.3f}s "
                      f"(CPU {harness.median(system.cpu[-1]):.3f}s), peak RSS "
                      f"{'n/a' if rss is None else f'+{rss:.0f} MiB'}, loss {system.losses[-1]:.4f}",
                      flush=True)  # fmt: skip
        calibration.log("end")
        payload, md = summarise(args, info, calibration.summary(), bench, systems, trl and trl[2], build_seconds)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    name = "b5_causal_step_smoke" if args.smoke else "b5_causal_step"
    json_path, md_path = harness.write_results(name, payload, md, args.out)
    print("\n" + md)
    print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
