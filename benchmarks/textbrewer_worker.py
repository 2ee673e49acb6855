"""TextBrewer's side of B1, run by b1_training_throughput.py inside benchmarks/.venv-textbrewer.

It imports only torch, transformers, numpy and textbrewer (no distil), loads the same saved teacher and student
the parent built, and answers one JSON command per stdin line, so the parent can interleave it with its own
systems (A B A B):

    {"cmd": "run", "hidden": false, "batches": [[row, ...], ...], "warmup": 2, "dynamic": true}
        -> {"wall": [seconds per measured step, ...], "cpu": [CPU seconds of the process per step, ...]}
    {"cmd": "quit"}

Each "run" builds a fresh GeneralDistiller on a fresh copy of the student and trains it for len(batches) steps on
exactly those rows: padded to the longest row of the batch ("dynamic") or to max_length (TextBrewer's examples
pad every feature to max_seq_length). A step lasts from TextBrewer's request for one batch to its request for the
next, so it includes TextBrewer's own per-step work (loss bookkeeping, TensorBoard scalars). The first `warmup`
steps and the last step (TextBrewer saves a checkpoint after it) are not reported.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _load(setup: dict):
    import numpy as np
    import torch
    from transformers import AutoModelForSequenceClassification

    torch.set_num_threads(setup["threads"])
    data = np.load(setup["data"])
    arrays = {k: torch.from_numpy(data[k]) for k in ("input_ids", "attention_mask", "token_type_ids", "labels")}
    lengths = data["lengths"]
    teacher = AutoModelForSequenceClassification.from_pretrained(setup["teacher_dir"]).eval()
    student = AutoModelForSequenceClassification.from_pretrained(setup["student_dir"])
    return arrays, lengths, teacher, student


class TimedBatches:
    """The planned batches, in order; records the time each one is requested."""

    def __init__(self, arrays: dict, lengths, batches: list[list[int]], dynamic: bool):
        self.arrays, self.lengths, self.batches, self.dynamic = arrays, lengths, batches, dynamic
        self.fetched: list[tuple[float, float]] = []

    def __iter__(self):
        import torch

        for rows in self.batches:
            self.fetched.append((time.perf_counter(), time.process_time()))
            idx = torch.tensor(rows)
            width = int(self.lengths[rows].max()) if self.dynamic else self.arrays["input_ids"].shape[1]
            batch = {k: v[idx, :width] if v.dim() == 2 else v[idx] for k, v in self.arrays.items()}  # (B, L) / (B,)
            yield batch

    def __len__(self) -> int:
        return len(self.batches)


def run(setup: dict, arrays, lengths, teacher, student0, cmd: dict) -> dict:
    import torch
    from textbrewer import DistillationConfig, GeneralDistiller, TrainingConfig
    from transformers import get_linear_schedule_with_warmup

    hidden = bool(cmd["hidden"])
    pairs = setup["hidden_pairs"]  # [(student_layer, teacher_layer)], 0-based encoder layers

    def adaptor_teacher(batch, out):
        result = {"logits": out.logits, "inputs_mask": batch["attention_mask"]}
        if hidden:
            result["hidden"] = out.hidden_states  # (embeddings, layer 0, ...): layer i is index i + 1
        return result

    def adaptor_student(batch, out):
        return {**adaptor_teacher(batch, out), "losses": out.loss}  # out.loss: CE on the hard labels

    matches = (
        [
            {
                "layer_T": t + 1,
                "layer_S": s + 1,
                "feature": "hidden",
                "loss": "hidden_mse",
                "weight": setup["hidden_weight"],
            }
            for s, t in pairs
        ]
        if hidden
        else []
    )
    # kd_loss_type 'ce' is TextBrewer's KL term without the T^2 factor; the cost is the same as distil's.
    distill_config = DistillationConfig(
        temperature=setup["kd_temperature"],
        hard_label_weight=setup["alpha"],
        kd_loss_type="ce",
        kd_loss_weight=1 - setup["alpha"],
        intermediate_matches=matches,
    )
    steps = len(cmd["batches"])
    with tempfile.TemporaryDirectory() as tmp:
        train_config = TrainingConfig(
            device="cpu", log_dir=os.path.join(tmp, "log"), output_dir=os.path.join(tmp, "out"), ckpt_steps=steps
        )
        student = copy.deepcopy(student0).train()
        distiller = GeneralDistiller(
            train_config=train_config,
            distill_config=distill_config,
            model_T=teacher,
            model_S=student,
            adaptor_T=adaptor_teacher,
            adaptor_S=adaptor_student,
        )
        optimizer = torch.optim.AdamW(student.parameters(), lr=setup["learning_rate"], weight_decay=0.01)
        batches = TimedBatches(arrays, lengths, cmd["batches"], dynamic=bool(cmd["dynamic"]))
        extra = {"output_hidden_states": True} if hidden else {}
        with distiller:
            distiller.train(
                optimizer,
                batches,
                num_steps=steps,
                max_grad_norm=1.0,
                scheduler_class=get_linear_schedule_with_warmup,
                scheduler_args={"num_warmup_steps": max(1, steps // 10), "num_training_steps": steps},
                **extra,
            )
    t = batches.fetched
    warmup = int(cmd["warmup"])
    measured = range(warmup, len(t) - 1)
    return {"wall": [t[k + 1][0] - t[k][0] for k in measured], "cpu": [t[k + 1][1] - t[k][1] for k in measured]}


def main() -> int:
    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # library prints go to stderr; stdout carries the protocol
    setup = json.loads(sys.argv[1])
    import logging

    logging.getLogger("Distillation").setLevel(logging.WARNING)
    arrays, lengths, teacher, student = _load(setup)
    import textbrewer

    protocol.write(json.dumps({"ready": True, "textbrewer": textbrewer.__version__}) + "\n")
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd.get("cmd") == "quit":
            break
        protocol.write(json.dumps(run(setup, arrays, lengths, teacher, student, cmd)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
