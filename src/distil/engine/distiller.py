"""One distiller: the teacher signal (cached or live), the task's KD term and the feature terms -> the loss of a batch.

The trainer asks the distiller for the loss. The teacher's logits come from the teacher-output cache (by the
batch's row ``idx``) or from the live teacher under ``torch.inference_mode``; the task's KD term
(`distil.tasks`) compares them with the student's. Recipes that distil inside the layers (TinyBERT, DistilBERT,
MiniLM, RKD) add feature terms from one table (`distil.engine.feature_terms`): the distiller hooks exactly the
layers those terms read (:class:`~distil.models.features.FeatureTap`) and sums

    L = logits_weight * (task's KD term: alpha * CE + (1 - alpha) * T^2 * KL)  +  sum_term weight * term

(docs/losses.md). The learned projections are submodules, so the trainer's optimizer trains them and
``DistillerCheckpointCallback`` keeps them across ``--resume``; they are never part of the saved student.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from transformers import GenerationConfig, TrainerCallback

from distil.config import LossConfig
from distil.engine import processes
from distil.engine.compatibility import feature_specs, term_problems
from distil.engine.feature_terms import TermInputs, active_terms, feature_parts, part_weights, term_modules
from distil.engine.teacher_cache import SoftLabels
from distil.errors import DistilError
from distil.io import atomic_path
from distil.losses import combine, kd_objective
from distil.losses.logits import IGNORE_INDEX
from distil.models.features import (
    Features,
    FeatureSpec,
    FeatureTap,
    map_layers,
    model_hidden_size,
    model_num_heads,
    model_num_layers,
)
from distil.models.inference import logits_of, split_inputs
from distil.tasks import ClassificationTask, Task

DISTILLER_STATE_FILE = "distiller.safetensors"


class Distiller(nn.Module):
    """Teacher signal + the task's KD term + feature terms -> the distillation loss of one batch.

    Args:
        loss_cfg: alpha, the KD temperature, the soft loss, and the weight of every feature term and the layer map.
        teacher: the frozen teacher (put in eval mode, requires_grad off); it runs live under inference_mode
            whenever a feature term needs it or no soft labels are given. None with cached soft labels and no
            feature term (it never runs).
        student: the student being trained, needed when a feature term hooks its layers (``compute`` must then be
            given this model or a wrapper calling it); it is not registered as a submodule.
        soft_labels: cached teacher outputs of the training rows; when given, the logit term reads them.
        task: whose KD term compares the logits (default: classification).

    Raises:
        DistilError: one line naming the first configured term that cannot run on this teacher/student pair
            (see :func:`term_problems`).
    """

    def __init__(
        self,
        loss_cfg: LossConfig,
        teacher: nn.Module | None = None,
        student: nn.Module | None = None,
        soft_labels: SoftLabels | None = None,
        task: Task | None = None,
    ):
        super().__init__()
        if soft_labels is None and teacher is None:
            raise ValueError("Distiller needs soft_labels or a teacher")
        task = task or ClassificationTask()
        self.loss_cfg, self.soft_labels = loss_cfg, soft_labels
        self.kd_term = task.kd_term(loss_cfg)
        self.per_token = task.per_token  # the signal has a position axis (B, L, C): looked up at the batch's length
        self.token_loss = task.token_loss  # the KD term is a mean over the accumulated batch's labelled tokens
        self.read_cached = getattr(task, "read_cached", None)  # the task's own view of its cached arrays
        on_policy = getattr(task, "on_policy", None)
        self.on_policy = on_policy() if on_policy is not None and teacher is not None else None
        # GKD trains on-policy batches on the divergence alone: the student's own samples are no gold labels
        self.on_policy_term = task.kd_term(dataclasses.replace(loss_cfg, alpha=0.0)) if self.on_policy else None
        self._coin = torch.Generator().manual_seed(0)  # which batches are on-policy: seeded, resume-independent
        self.teacher = teacher.eval().requires_grad_(False) if teacher is not None else None
        if teacher is not None and student is not None:
            problems = term_problems(loss_cfg, teacher, student)
            if problems:
                name, reason = next(iter(problems.items()))
                raise DistilError(f"loss.{name}={getattr(loss_cfg, name)}: {reason}")
        self.weights = part_weights(loss_cfg)  # feature part -> weight
        self.pairs: list[tuple[int, int]] = []
        self.heads, self.teacher_last = (0, 0), -1
        self.student_spec, self.teacher_spec = FeatureSpec(), FeatureSpec()
        self.student_tap = self.teacher_tap = None
        self.state_loaded = False
        hooks = any(t.needs_features for t in active_terms(loss_cfg).values())
        if hooks and (teacher is None or student is None):
            raise ValueError("feature terms need the teacher and the student")
        if hooks:
            n_teacher = model_num_layers(teacher)
            self.pairs = map_layers(loss_cfg.layer_map, model_num_layers(student), n_teacher)
            self.heads, self.teacher_last = (model_num_heads(student), model_num_heads(teacher)), n_teacher - 1
            self.student_spec, self.teacher_spec = feature_specs(loss_cfg, self.pairs, n_teacher)
            self.student_tap, self.teacher_tap = (
                FeatureTap(student, self.student_spec),
                FeatureTap(teacher, self.teacher_spec),
            )
        widths = (model_hidden_size(student), model_hidden_size(teacher)) if hooks else (0, 0)
        self.terms = term_modules(loss_cfg, *widths) if hooks else nn.ModuleDict()

    @property
    def normalises_by_items(self) -> bool:
        """True when the loss is the accumulated batch's per-token mean (a token task's KD term alone); feature
        terms are per-batch means, which the trainer scales for accumulation."""
        return self.token_loss and not self.weights

    def train(self, mode: bool = True) -> Distiller:
        """Train mode for the projections only; the teacher stays in eval mode (no dropout)."""
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    # ---- the teacher's signal

    def teacher_logits(self, inputs: dict[str, Tensor], idx: Tensor | None) -> Tensor:
        """The teacher's logits of the batch: cached (by ``idx``; per token, cropped or zero-padded to the batch's
        length) or from the live teacher."""
        if self.soft_labels is not None:
            if idx is None:
                raise DistilError("cached soft labels need the batch's row indices ('idx'); keep the idx column")
            if self.read_cached is not None:  # a task's own arrays (a causal LM's top-k and tail)
                return self.read_cached(self.soft_labels, idx, inputs["input_ids"].shape[1])
            if self.per_token:
                return self.soft_labels.lookup(idx, length=inputs["input_ids"].shape[1])  # (B, L, C)
            return self.soft_labels.lookup(idx)  # (B, C)
        with torch.inference_mode():
            return logits_of(self.teacher(**inputs)).float()

    def _run_teacher(
        self, inputs: dict[str, Tensor], idx: Tensor | None, live: bool = False
    ) -> tuple[Tensor | None, Features | None]:
        """(teacher logits or None, teacher Features or None); the teacher runs only when something needs it, or
        always with ``live`` (text the cache has not seen: an on-policy batch)."""
        if live:  # every signal from the live teacher (features too, when a term needs them)
            with torch.inference_mode():
                if self.teacher_tap is None:
                    return logits_of(self.teacher(**inputs)).float(), None
                with self.teacher_tap.capture(inputs.get("attention_mask")) as feats:
                    outputs = self.teacher(**inputs)
            return logits_of(outputs).float(), feats
        wants_logits = self.loss_cfg.logits_weight > 0
        cached = self.teacher_logits(inputs, idx) if wants_logits and self.soft_labels is not None else None
        if self.teacher_tap is None:
            if wants_logits and cached is None:
                return self.teacher_logits(inputs, idx), None
            return cached, None
        with torch.inference_mode():
            with self.teacher_tap.capture(inputs.get("attention_mask")) as feats:
                outputs = self.teacher(**inputs)
        return (cached if cached is not None else logits_of(outputs)), feats

    # ---- the loss of one batch

    def forward(
        self,
        student_logits: Tensor,
        labels: Tensor | None,
        inputs: dict[str, Tensor],
        idx: Tensor | None,
        num_items: int | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The KD term of one batch from the student's logits (the logit-only path)."""
        teacher = self.teacher_logits(inputs, idx).to(student_logits.device)  # (B, C) or (B, L, C)
        return self._kd(student_logits, teacher, labels, num_items, None, inputs.get("attention_mask"))

    def _kd(
        self,
        logits: Tensor,
        teacher_logits: Tensor,
        labels: Tensor | None,
        num_items: int | None,
        mlm_labels: Tensor | None,
        mask: Tensor | None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        teacher_logits = teacher_logits.to(logits.device)
        if logits.dim() == 3 and not self.per_token:  # an MLM head's (B, L, V): the masked positions, or all
            token_mask = mlm_labels != IGNORE_INDEX if mlm_labels is not None else mask
            cfg = self.loss_cfg
            return kd_objective(
                logits.float(), teacher_logits, labels, cfg.alpha, cfg.kd_temperature, cfg.soft_loss, token_mask
            )
        if self.token_loss:  # normalised by the labelled tokens of the whole accumulated batch when known
            items = num_items if self.normalises_by_items else None
            return self.kd_term(logits.float(), teacher_logits, labels, num_items=items)
        return self.kd_term(logits.float(), teacher_logits, labels)  # per example (classes, or QA's spans)

    def compute(
        self,
        model: nn.Module,
        inputs: dict[str, Tensor],
        labels: Tensor | None,
        idx: Tensor | None,
        num_items: int | None = None,
    ) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        """Run teacher (when needed) and student on ``inputs``; return (weighted total, unweighted parts, logits).

        Args:
            model: the student (or a wrapper calling it).
            inputs: the model inputs, (B, L) each; ``mlm_labels`` (B, L), -100 = not masked, is taken out and
                used by the MLM term (and restricts a token-level logit term to the masked positions);
                ``teacher_input_ids``/``teacher_attention_mask`` (B, L), when present, are what the teacher reads.
            labels: (B,) class labels or (B, L) tags (-100 = ignored), or None (then alpha must be 0).
            idx: (B,) training row indices, needed when soft labels are cached.
            num_items: the labelled tokens of the whole accumulated batch (token tasks; see ``normalises_by_items``).

        Returns:
            ``(total, parts, logits)``: scalar total, {part: unweighted scalar} ("ce" only with labels), and the
            student's logits (B, C), (B, L, C) or (B, L, V).

        Raises:
            DistilError: mlm_weight > 0 but no ``mlm_labels``; cached soft labels without ``idx``; any shape error
                a loss raises; a non-finite part (named).
        """
        inputs = dict(inputs)
        mlm_labels = inputs.pop("mlm_labels", None)
        if self.loss_cfg.mlm_weight > 0 and mlm_labels is None:
            raise DistilError(
                "loss.mlm_weight > 0 but the batch has no 'mlm_labels' (B, L); feed masked-LM batches "
                "(token ids to predict, -100 elsewhere) or set mlm_weight to 0"
            )
        inputs, teacher_inputs = split_inputs(inputs)
        on_policy = self._on_policy_batch(model, inputs, labels, num_items)
        if on_policy is not None:  # the student's own continuation, scored by the live teacher
            inputs, labels, num_items = on_policy
            teacher_inputs = inputs
        mask = inputs.get("attention_mask")
        if teacher_inputs is not inputs and self.teacher_tap is not None:
            self._check_aligned(inputs, teacher_inputs)
        teacher_logits, teacher_feats = self._run_teacher(teacher_inputs, idx, live=on_policy is not None)
        if self.student_tap is None:
            logits, student_feats = logits_of(model(**inputs)), None
        else:
            with self.student_tap.capture(mask) as student_feats:
                logits = logits_of(model(**inputs))  # (B, C), (B, L, C) or (B, L, V)
        parts: dict[str, Tensor] = {}
        summed: dict[str, Tensor] = {}
        weights = dict(self.weights)
        if self.loss_cfg.logits_weight > 0 and on_policy is not None:  # the divergence alone (GKD)
            items = num_items if self.normalises_by_items else None
            summed["logits"], kd_parts = self.on_policy_term(logits.float(), teacher_logits, labels, num_items=items)
            weights["logits"] = self.loss_cfg.logits_weight
            parts.update(kd_parts)
        elif self.loss_cfg.logits_weight > 0:
            summed["logits"], kd_parts = self._kd(logits, teacher_logits, labels, num_items, mlm_labels, mask)
            weights["logits"] = self.loss_cfg.logits_weight
            parts.update(kd_parts)
        if self.on_policy is not None and model.training:  # logged mean: the fraction of on-policy batches
            parts["on_policy"] = torch.tensor(float(on_policy is not None))
        x = TermInputs(self.loss_cfg, self.terms, student_feats, teacher_feats, self.pairs, self.teacher_last,
                       self.heads, mask, logits, mlm_labels)  # fmt: skip
        features = feature_parts(x)
        parts.update(features)
        summed.update(features)
        total, _ = combine(summed, {name: w for name, w in weights.items() if name in summed})
        return total, parts, logits

    def _on_policy_batch(
        self, model: nn.Module, inputs: dict[str, Tensor], labels: Tensor | None, num_items: int | None
    ) -> tuple[dict[str, Tensor], Tensor, int | None] | None:
        """With probability ``lmbda`` (GKD's on-policy fraction), the batch the student trains on is its own sampled
        continuation of each row's first ``prompt`` tokens: (inputs, labels with -100 on the prompt and after the
        first end token, num_items rescaled so the batch keeps its share of the accumulated mean); else None.

        Rows shorter than the prompt make the batch stay off-policy (the prompt must be whole in every row); the
        logged ``loss_on_policy`` is the fraction of batches that went on-policy.
        """
        if self.on_policy is None or not model.training or labels is None:
            return None
        lmbda, prompt, new_tokens = self.on_policy
        if float(torch.rand((), generator=self._coin)) >= lmbda:
            return None
        mask = inputs.get("attention_mask")
        if inputs["input_ids"].shape[1] < prompt or (mask is not None and not bool(mask[:, :prompt].all())):
            return None
        lm = getattr(model, "module", model)  # under DDP the Trainer passes the wrapper, which cannot generate
        ends = _end_ids(lm)
        ids = inputs["input_ids"][:, :prompt]  # (B, P)
        sampling = GenerationConfig(  # pure sampling at T = 1, whatever the checkpoint's generation_config says
            do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=new_tokens,
            pad_token_id=ends[0] if ends else 0, eos_token_id=ends or None,
        )  # fmt: skip
        lm.eval()  # no dropout while sampling
        try:
            with torch.no_grad():
                out = lm.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=sampling)
        finally:
            lm.train()
        generated = out[:, prompt:]  # (B, N')
        if ends:  # labelled up to and including the first end token; what follows is padding
            is_end = torch.isin(generated, torch.tensor(ends, device=generated.device)).long()
            after_end = (torch.cumsum(is_end, dim=1) - is_end) > 0
        else:
            after_end = torch.zeros_like(generated, dtype=torch.bool)
        new_mask = torch.cat([torch.ones_like(ids), (~after_end).long()], dim=1)  # (B, P + N')
        new_labels = out.masked_fill(new_mask == 0, IGNORE_INDEX)
        new_labels[:, :prompt] = IGNORE_INDEX
        if num_items is not None:  # this micro-batch keeps the weight its original tokens had in the accumulated mean
            own = max(1, int((labels[:, 1:] != IGNORE_INDEX).sum()))
            num_items = max(1, round(num_items * int((new_labels[:, 1:] != IGNORE_INDEX).sum()) / own))
        return {"input_ids": out, "attention_mask": new_mask}, new_labels, num_items

    @staticmethod
    def _check_aligned(inputs: dict[str, Tensor], teacher_inputs: dict[str, Tensor]) -> None:
        """Token-level terms compare position i of both models: the two tokenisations must line up."""
        s_mask, t_mask = inputs.get("attention_mask"), teacher_inputs.get("attention_mask")
        same = inputs["input_ids"].shape == teacher_inputs["input_ids"].shape and (
            s_mask is None or t_mask is None or bool((s_mask == t_mask).all())
        )
        if not same:
            raise DistilError(
                "token-level loss: a batch's teacher and student tokenisations differ in length "
                f"({tuple(teacher_inputs['input_ids'].shape)} vs {tuple(inputs['input_ids'].shape)}); train "
                "token-level terms on rows whose 'aligned' column is true (the pipeline does this)"
            )

    # ---- projections across --resume

    def state_for_checkpoint(self) -> dict[str, Tensor]:
        """The learned projections (CPU, contiguous), keyed like ``terms.hidden.projection.weight``; {} if none."""
        return {
            f"terms.{name}": tensor.detach().cpu().contiguous().clone()
            for name, tensor in self.terms.state_dict().items()
        }

    def load_checkpoint_state(self, state: dict[str, Tensor]) -> None:
        """Copy projections saved by :meth:`state_for_checkpoint` into this distiller, in place (same device).

        Raises:
            DistilError: missing or unexpected keys, or a shape mismatch (names the tensor); nothing is copied.
        """
        own = {f"terms.{name}": tensor for name, tensor in self.terms.state_dict().items()}
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if missing or unexpected:
            raise DistilError(
                f"distiller state: missing {missing}, unexpected {unexpected}; the checkpoint was "
                "written with other loss settings (weights or model widths)"
            )
        for name, tensor in own.items():
            if tuple(state[name].shape) != tuple(tensor.shape):
                raise DistilError(
                    f"distiller state: {name} has shape {tuple(state[name].shape)} in the checkpoint, "
                    f"{tuple(tensor.shape)} here; the checkpoint was written for other model widths"
                )
        with torch.no_grad():
            for name, tensor in own.items():
                tensor.copy_(state[name])  # state_dict tensors share storage with the parameters
        self.state_loaded = True


def bf16_linear_copy(model: nn.Module) -> nn.Module:
    """A copy of a frozen model whose Linear weights are stored in bf16 (embeddings and norms stay fp32).

    Under bf16 autocast a Linear casts its fp32 weight to bf16 at every call, and caches nothing for a frozen
    weight; storing it in bf16 once gives the same numbers without the per-step casts. Run the copy under autocast
    only (its Linears expect autocast to cast their fp32 inputs).
    """
    copied = copy.deepcopy(model)
    for module in copied.modules():
        if isinstance(module, nn.Linear):
            module.to(torch.bfloat16)
    return copied


def make_distiller(
    loss_cfg: LossConfig,
    teacher: nn.Module,
    student: nn.Module,
    soft_labels: SoftLabels | None = None,
    bf16_teacher: bool = False,
    task: Task | None = None,
) -> Distiller:
    """The distiller a stage needs. With logits only and cached soft labels the teacher is not kept (it never
    runs, nor moves to the device). ``bf16_teacher`` (a bf16 run, where the trainer autocasts the distiller): a
    live teacher runs from `bf16_linear_copy`; the given teacher is left as it is."""
    on_policy = getattr(task, "on_policy", None)
    if not loss_cfg.uses_features and soft_labels is not None and (on_policy is None or on_policy() is None):
        return Distiller(loss_cfg, soft_labels=soft_labels, task=task)
    if bf16_teacher:
        teacher = bf16_linear_copy(teacher)
    return Distiller(loss_cfg, teacher, student if loss_cfg.uses_features else None, soft_labels, task)


# ----------------------------------------------------------------------------------------------------------
# checkpoints


def save_distiller_state(distiller: nn.Module, checkpoint_dir: str | Path) -> Path | None:
    """Write the distiller's projections to ``checkpoint_dir/distiller.safetensors`` (atomically); None if none."""
    state = distiller.state_for_checkpoint() if hasattr(distiller, "state_for_checkpoint") else {}
    if not state:
        return None
    target = Path(checkpoint_dir) / DISTILLER_STATE_FILE
    with atomic_path(target) as tmp:
        save_file(state, str(tmp))
    return target


def load_distiller_state(distiller: nn.Module, checkpoint_dir: str | Path) -> bool:
    """Restore the projections saved in a Trainer checkpoint folder before resuming from it.

    Returns:
        True when state was loaded; False when the distiller has none to restore (logits only, equal widths).

    Raises:
        DistilError: the distiller has projections but the folder has no distiller.safetensors, or it does not fit.
    """
    if not (hasattr(distiller, "load_checkpoint_state") and distiller.state_for_checkpoint()):
        return False
    path = Path(checkpoint_dir) / DISTILLER_STATE_FILE
    if not path.is_file():
        raise DistilError(
            f"resume: {path} is missing, so the learned projections cannot be restored; resume from a "
            "checkpoint written with DistillerCheckpointCallback, or start the stage again"
        )
    distiller.load_checkpoint_state(load_file(str(path)))
    return True


def _end_ids(model: nn.Module) -> list[int]:
    """The token ids that end a generation (the generation config's, else the model config's), as a list."""
    ends = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ends = getattr(model.config, "eos_token_id", None) if ends is None else ends
    if ends is None:
        return []
    return [int(e) for e in ends] if isinstance(ends, (list, tuple)) else [int(ends)]


class DistillerCheckpointCallback(TrainerCallback):
    """Saves the distiller's projections into every Trainer checkpoint (``checkpoint-N/distiller.safetensors``).

    On resume, call :func:`load_distiller_state` with the checkpoint folder before ``trainer.train``; this callback
    refuses to start a resumed run (global_step > 0) whose distiller has projections that were not restored.

    Args:
        distiller: the Distiller given to the trainer.
    """

    def __init__(self, distiller: nn.Module):
        self.distiller = distiller

    def on_train_begin(self, args, state, control, **kwargs):
        has_state = hasattr(self.distiller, "state_for_checkpoint") and self.distiller.state_for_checkpoint()
        if state.global_step > 0 and has_state and not getattr(self.distiller, "state_loaded", False):
            raise DistilError(
                f"resuming at step {state.global_step} without the distiller's learned projections; "
                "call load_distiller_state(distiller, checkpoint_dir) before trainer.train"
            )

    def on_save(self, args, state, control, **kwargs):
        if args.should_save:  # the main process only
            save_distiller_state(self.distiller, Path(args.output_dir) / f"checkpoint-{state.global_step}")


class DistillerSyncCallback(TrainerCallback):
    """Under several processes: the distiller's trainable parameters (projections), which the Trainer's DDP wrapper
    does not hold, start from the main process's values and step on the gradient averaged over the processes, as
    the student's own parameters do; without this each process would learn its own projection."""

    def __init__(self, distiller: nn.Module):
        self.params = [p for p in distiller.parameters() if p.requires_grad]

    def on_train_begin(self, args, state, control, **kwargs):
        processes.broadcast_([p.data for p in self.params])

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        used = torch.tensor([float(p.grad is not None) for p in self.params])
        processes.all_reduce_mean_([used])  # > 0 where some process has a gradient
        synced = [p for p, u in zip(self.params, used.tolist()) if u > 0]  # unused everywhere: no gradient, no step
        for p in synced:
            if p.grad is None:  # used on another process only: this one contributes zero
                p.grad = torch.zeros_like(p)
        processes.all_reduce_mean_([p.grad for p in synced])

    def on_train_end(self, args, state, control, **kwargs):
        """Check that every process ended with the same parameters (one number each, compared on all)."""
        if not self.params:
            return
        mine = float(sum(p.detach().double().sum() for p in self.params))
        sums = processes.gather(mine)
        print(f"distiller: {len(self.params)} trainable tensors, checksum {mine:.8f} on process {processes.rank()}")
        if max(sums) - min(sums) > 1e-6 * max(1.0, abs(mine)):
            raise RuntimeError(f"the distiller's parameters differ between processes: checksums {sums}")
