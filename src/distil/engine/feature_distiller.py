"""Distillation inside the layers: a distiller that runs teacher and student under feature taps.

`FeatureDistiller` is what the trainer asks for the loss when a recipe distils more than the teacher's logits
(TinyBERT, DistilBERT, MiniLM, RKD). It hooks exactly the layers the configured terms read
(:class:`~distil.models.features.FeatureTap`), runs the frozen teacher under ``torch.inference_mode`` and the
student with autograd, and sums the weighted terms of ``LossConfig``:

    L = logits_weight * [alpha * CE + (1 - alpha) * soft]                        (kd_objective; docs/losses.md)
      + embedding_weight      * MSE(E_s W_e, E_t)                                 TinyBERT
      + hidden_weight         * mean over mapped layers of MSE(H_s W_h, H_t)      TinyBERT (the paper sums)
      + hidden_cosine_weight  * (1 - cos) between the last hidden states          DistilBERT
      + attention_weight      * mean over mapped layers of MSE(scores)            TinyBERT (the paper sums)
      + attention_kl_weight   * mean over mapped layers of KL(probabilities)
      + minilm_attention_weight * KL of the MiniLM layer's attention distributions     MiniLM
      + minilm_value_weight   * value-relation KL (v1), or each of the Q-Q, K-K, V-V relation KLs (v2)
      + rkd_distance_weight / rkd_angle_weight * RKD on the first ([CLS]) token of the last hidden states
      + mlm_weight            * the student's masked-LM cross-entropy on ``mlm_labels``   DistilBERT

Layer pairs come from ``map_layers(loss_cfg.layer_map, M, N)``. The MiniLM terms compare the student's last
layer with the teacher layer that the map gives it: the teacher's last layer under ``uniform`` and ``last-k``;
MiniLMv2 distils large teachers from an upper-middle layer, which an explicit list ending in that layer selects.
The learned projections (W_e, W_h, the cosine's) are submodules, so the trainer's optimizer trains them and
``DistillerCheckpointCallback`` keeps them across ``--resume``; they are never part of the saved student.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from transformers import TrainerCallback

from distil.config import FEATURE_WEIGHTS, LossConfig
from distil.engine.compatibility import feature_specs, term_problems, uses_value_v1
from distil.engine.distiller import Distiller, logits_of, split_inputs
from distil.errors import DistilError
from distil.io import atomic_path
from distil.losses import (
    HiddenCosineLoss,
    HiddenMSELoss,
    attention_kl_loss,
    attention_mse_loss,
    combine,
    kd_objective,
    qkv_relation_loss,
    rkd_angle_loss,
    rkd_distance_loss,
    self_attention_distribution_loss,
    value_relation_loss,
)
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
from distil.tasks import Task

DISTILLER_STATE_FILE = "distiller.safetensors"


# ----------------------------------------------------------------------------------------------------------
# the distiller


class FeatureDistiller(nn.Module):
    """Teacher + student feature taps + loss terms -> the distillation loss of one batch.

    Args:
        loss_cfg: weights of every term, the layer map, alpha and the KD temperature (see the module docstring).
        teacher: the frozen teacher (put in eval mode, requires_grad off); it runs live under inference_mode
            whenever a feature term needs it, or when no soft labels are given.
        student: the student being trained; hooks are placed on its modules, so ``compute`` must be given this
            model (or a wrapper that calls it). It is not registered as a submodule (its parameters are the
            trainer's own).
        soft_labels: cached teacher logits of the training rows; when given, the logit term reads them (by the
            batch's ``idx``) instead of the live teacher's logits.

    Raises:
        DistilError: one line naming the first configured term that cannot run (see :func:`term_problems`):
            a non-Transformer student or teacher with a feature weight > 0, head-paired terms with different head
            counts (suggests minilm_relation_heads), bad relation heads, a bad layer map, a student without an MLM
            head for mlm_weight, different label counts for the logit term.
    """

    def __init__(self, loss_cfg: LossConfig, teacher: nn.Module, student: nn.Module, soft_labels=None):
        super().__init__()
        problems = term_problems(loss_cfg, teacher, student)
        if problems:
            name, reason = next(iter(problems.items()))
            raise DistilError(f"loss.{name}={getattr(loss_cfg, name)}: {reason}")
        self.loss_cfg = loss_cfg
        self.soft_labels = soft_labels
        self.teacher = teacher.eval().requires_grad_(False)
        self.terms = nn.ModuleDict()
        self.pairs: list[tuple[int, int]] = []
        self.state_loaded = False
        uses_features = loss_cfg.uses_features
        if uses_features:
            self.pairs = map_layers(loss_cfg.layer_map, model_num_layers(student), model_num_layers(teacher))
            self._build_terms(student)
            self.student_spec, self.teacher_spec = feature_specs(loss_cfg, self.pairs, model_num_layers(teacher))
        else:
            self.student_spec, self.teacher_spec = FeatureSpec(), FeatureSpec()
        self.student_tap = FeatureTap(student, self.student_spec) if uses_features else None
        self.teacher_tap = FeatureTap(teacher, self.teacher_spec) if uses_features else None
        self.teacher_last = model_num_layers(teacher) - 1 if uses_features else -1
        self.weights = self._part_weights()

    def _build_terms(self, student: nn.Module) -> None:
        s_width, t_width = model_hidden_size(student), model_hidden_size(self.teacher)
        if self.loss_cfg.embedding_weight > 0:  # TinyBERT's W_e
            self.terms["embedding"] = HiddenMSELoss(s_width, t_width)
        if self.loss_cfg.hidden_weight > 0:  # TinyBERT's W_h, shared by every mapped layer
            self.terms["hidden"] = HiddenMSELoss(s_width, t_width)
        if self.loss_cfg.hidden_cosine_weight > 0:
            self.terms["hidden_cosine"] = HiddenCosineLoss(s_width, t_width)
        self.student_heads, self.teacher_heads = model_num_heads(student), model_num_heads(self.teacher)

    def _part_weights(self) -> dict[str, float]:
        """Part name -> weight in the total; the names are the keys of the parts ``compute`` returns."""
        cfg = self.loss_cfg
        weights = {"ce": cfg.logits_weight * cfg.alpha, "kd": cfg.logits_weight * (1.0 - cfg.alpha)}
        for name in FEATURE_WEIGHTS:
            if getattr(cfg, name) > 0:
                weights[name.removesuffix("_weight")] = getattr(cfg, name)
        if cfg.minilm_value_weight > 0 and not uses_value_v1(cfg):  # MiniLMv2 sums Q-Q, K-K and V-V relations
            weights["minilm_query"] = weights["minilm_key"] = cfg.minilm_value_weight
        return weights

    def train(self, mode: bool = True) -> FeatureDistiller:
        """Train mode for the projections only; the teacher stays in eval mode (no dropout)."""
        super().train(mode)
        self.teacher.eval()
        return self

    # ---- the loss of one batch

    normalises_by_items = False
    """Its terms are per-batch means (the trainer scales them for accumulation), even for per-token logits."""

    def compute(
        self,
        model: nn.Module,
        inputs: dict[str, Tensor],
        labels: Tensor | None,
        idx: Tensor | None,
        num_items: int | None = None,
    ) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        """Run teacher and student on ``inputs``; return (weighted total, unweighted parts, student logits).

        Args:
            model: the student given at construction (or a wrapper calling it).
            inputs: the model inputs, (B, L) each; ``mlm_labels`` (B, L), -100 = not masked, is taken out and
                used by the MLM term (and restricts a token-level logit term to the masked positions);
                ``teacher_input_ids``/``teacher_attention_mask`` (B, L), when present, are what the teacher reads
                (teacher and student tokenise differently; token-level terms then need equal lengths per row).
            labels: (B,) class labels, or None (then alpha must be 0).
            idx: (B,) training row indices, needed when soft labels are cached.
            num_items: unused (see ``normalises_by_items``).

        Returns:
            ``(total, parts, logits)``: scalar total, {part: unweighted scalar tensor} holding only the
            configured terms ("ce" only when labels are given), and the student's logits (B, C) or (B, L, V).

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
        mask = inputs.get("attention_mask")
        if teacher_inputs is not inputs and self.teacher_tap is not None:
            self._check_aligned(inputs, teacher_inputs)
        teacher_logits, teacher_feats = self._run_teacher(teacher_inputs, idx)
        if self.student_tap is None:
            logits, student_feats = logits_of(model(**inputs)), None
        else:
            with self.student_tap.capture(mask) as student_feats:
                logits = logits_of(model(**inputs))  # (B, C) or (B, L, V)
        parts: dict[str, Tensor] = {}
        if self.loss_cfg.logits_weight > 0:
            parts.update(self._logit_parts(logits, teacher_logits, labels, mask, mlm_labels))
        if student_feats is not None:
            parts.update(self._feature_parts(student_feats, teacher_feats, mask))
        if self.loss_cfg.mlm_weight > 0:
            vocab = logits.shape[-1]
            parts["mlm"] = F.cross_entropy(
                logits.float().reshape(-1, vocab), mlm_labels.reshape(-1).long(), ignore_index=IGNORE_INDEX
            )  # over (B * L) masked tokens
        total, _ = combine(parts, {name: w for name, w in self.weights.items() if name in parts})
        return total, parts, logits

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

    def _run_teacher(self, inputs: dict[str, Tensor], idx: Tensor | None) -> tuple[Tensor | None, Features | None]:
        """(teacher logits or None, teacher Features or None); the teacher runs only when something needs it."""
        cached = None
        if self.soft_labels is not None and self.loss_cfg.logits_weight > 0:
            if idx is None:
                raise DistilError("cached soft labels need the batch's row indices ('idx'); keep the idx column")
            per_token = getattr(self.soft_labels, "signal", {}).get("logits") == "per_token"
            cached = (
                self.soft_labels.lookup(idx, length=inputs["input_ids"].shape[1])
                if per_token
                else self.soft_labels.lookup(idx)
            )  # (B, L, C) cropped to the batch, or (B, C)
        needs_logits = self.loss_cfg.logits_weight > 0 and cached is None
        if self.teacher_spec.is_empty and not needs_logits:
            return cached, None
        with torch.inference_mode():
            if self.teacher_tap is None:
                return logits_of(self.teacher(**inputs)), None
            with self.teacher_tap.capture(inputs.get("attention_mask")) as feats:
                outputs = self.teacher(**inputs)
        return (cached if cached is not None else logits_of(outputs)), feats

    def _logit_parts(
        self,
        logits: Tensor,
        teacher_logits: Tensor,
        labels: Tensor | None,
        mask: Tensor | None,
        mlm_labels: Tensor | None,
    ) -> dict[str, Tensor]:
        token_mask = None
        if logits.dim() == 3:  # token-level logits: MLM's masked positions, a tagger's labelled tokens
            if mlm_labels is not None:
                token_mask = mlm_labels != IGNORE_INDEX
            elif labels is not None and labels.dim() == 2:
                token_mask = labels != IGNORE_INDEX
            else:
                token_mask = mask
        _, parts = kd_objective(
            logits.float(),
            teacher_logits.to(logits.device),
            labels,
            alpha=self.loss_cfg.alpha,
            kd_temperature=self.loss_cfg.kd_temperature,
            soft_loss=self.loss_cfg.soft_loss,
            mask=token_mask,
        )
        return parts

    def _feature_parts(self, s: Features, t: Features, mask: Tensor | None) -> dict[str, Tensor]:
        """Every configured feature term from the student's (s) and teacher's (t) captured Features."""
        cfg, pairs = self.loss_cfg, self.pairs
        s_last, t_minilm = pairs[-1]
        parts: dict[str, Tensor] = {}
        if cfg.embedding_weight > 0:
            parts["embedding"] = self.terms["embedding"](s.embeddings, t.embeddings, mask)
        if cfg.hidden_weight > 0:
            parts["hidden"] = torch.stack(
                [self.terms["hidden"](s.hidden[i], t.hidden[j], mask) for i, j in pairs]
            ).mean()
        if cfg.attention_weight > 0:
            parts["attention"] = torch.stack(
                [attention_mse_loss(s.attention_scores(i), t.attention_scores(j), mask) for i, j in pairs]
            ).mean()
        if cfg.attention_kl_weight > 0:
            parts["attention_kl"] = torch.stack(
                [attention_kl_loss(s.attention_probs(i), t.attention_probs(j), mask) for i, j in pairs]
            ).mean()
        if cfg.minilm_attention_weight > 0:
            parts["minilm_attention"] = self_attention_distribution_loss(
                s.attention_probs(s_last), t.attention_probs(t_minilm), mask
            )
        if cfg.minilm_value_weight > 0:
            parts.update(self._minilm_relation_parts(s, t, s_last, t_minilm, mask))
        if cfg.hidden_cosine_weight > 0:
            parts["hidden_cosine"] = self.terms["hidden_cosine"](s.hidden[s_last], t.hidden[self.teacher_last], mask)
        if cfg.rkd_distance_weight > 0 or cfg.rkd_angle_weight > 0:
            parts.update(self._rkd_parts(s.hidden[s_last][:, 0], t.hidden[self.teacher_last][:, 0]))  # (B, D) [CLS]
        return parts

    def _minilm_relation_parts(
        self, s: Features, t: Features, s_layer: int, t_layer: int, mask: Tensor | None
    ) -> dict[str, Tensor]:
        if uses_value_v1(self.loss_cfg):
            return {
                "minilm_value": value_relation_loss(
                    s.values[s_layer], t.values[t_layer], self.student_heads, self.teacher_heads, mask
                )
            }
        heads = self.loss_cfg.minilm_relation_heads
        sides = {"query": (s.queries, t.queries), "key": (s.keys, t.keys), "value": (s.values, t.values)}
        # (B, L, D_s) and (B, L, D_t) projection outputs; the relations (B, R, L, L) are formed inside the loss
        return {
            f"minilm_{kind}": qkv_relation_loss(student[s_layer], teacher[t_layer], heads, mask)
            for kind, (student, teacher) in sides.items()
        }

    def _rkd_parts(self, student_cls: Tensor, teacher_cls: Tensor) -> dict[str, Tensor]:
        """RKD on (B, D) [CLS] vectors; a batch too small for the term (a last partial batch) contributes 0."""
        parts, batch = {}, student_cls.shape[0]
        zero = student_cls.new_zeros((), dtype=torch.float32)
        if self.loss_cfg.rkd_distance_weight > 0:
            parts["rkd_distance"] = rkd_distance_loss(student_cls, teacher_cls) if batch >= 2 else zero
        if self.loss_cfg.rkd_angle_weight > 0:
            parts["rkd_angle"] = rkd_angle_loss(student_cls, teacher_cls) if batch >= 3 else zero
        return parts

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
    soft_labels=None,
    bf16_teacher: bool = False,
    task: Task | None = None,
) -> nn.Module:
    """The distiller a run needs: logits only -> :class:`~distil.engine.distiller.Distiller`, else
    :class:`FeatureDistiller`.

    With logits only and cached soft labels the teacher is not kept (it never runs, nor moves to the device).
    ``bf16_teacher`` (a bf16 run, where the trainer autocasts the distiller): a live teacher runs from
    `bf16_linear_copy`; the given teacher is left as it is.
    """
    if not loss_cfg.uses_features and soft_labels is not None:
        return Distiller(loss_cfg, soft_labels=soft_labels, task=task)
    if bf16_teacher:
        teacher = bf16_linear_copy(teacher)
    if not loss_cfg.uses_features:
        return Distiller(loss_cfg, teacher=teacher, task=task)
    return FeatureDistiller(loss_cfg, teacher, student, soft_labels=soft_labels)


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


class DistillerCheckpointCallback(TrainerCallback):
    """Saves the distiller's projections into every Trainer checkpoint (``checkpoint-N/distiller.safetensors``).

    On resume, call :func:`load_distiller_state` with the checkpoint folder before ``trainer.train``; this callback
    refuses to start a resumed run (global_step > 0) whose distiller has projections that were not restored.

    Args:
        distiller: the FeatureDistiller given to the trainer.
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
