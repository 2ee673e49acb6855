"""Build a student from its teacher: pick teacher layers, then copy weights by a layer map and name templates.

A Transformer's parameter names follow one pattern: everything outside the layer stack (embeddings, pooler,
classifier) plus ``<stack>.<i>.<rest>`` for each layer ``i``. The stack's template, e.g.
``"bert.encoder.layer.{}"``, is found generically (:func:`find_layer_stack`); a student with ``M`` layers is
the same class with ``M`` in its config, and its tensor names map onto the teacher's by

    student ``<stack>.<j>.<rest>``  <-  teacher ``<stack>.<layers[j]>.<rest>``
    student ``<name>``              <-  teacher ``<name>``          (every tensor outside the stack)

(:func:`plan_copy`). Every copied tensor is shape-checked and every student tensor must be covered, as in
nanoGPT's ``from_pretrained`` and litgpt's checkpoint conversion.

Layer choices (:func:`select_layers`):
    - ``"every-other"``: teacher layers 0, 2, 4, ... (DistilBERT, Sanh et al. 2019).
    - ``"uniform"``: TinyBERT's map g(m) = m * N / M, 1-indexed (Jiao et al. 2020), i.e. 0-indexed teacher
      layer ``m * N // M - 1`` for m = 1..M; when M does not divide N the quotient is floored.
    - ``"first-k"`` / ``"last-k"``: the first or last M teacher layers.
    - an explicit list of 0-indexed teacher layers, strictly increasing.
"""

from __future__ import annotations

import copy
import itertools
import re
from collections.abc import Sequence

import torch
from torch import nn
from transformers import AutoModelForSequenceClassification, PretrainedConfig, PreTrainedModel

from distil.errors import DistilError

LAYER_STRATEGIES = ("every-other", "uniform", "first-k", "last-k")


def find_layer_stack(model: nn.Module) -> tuple[str, int]:
    """Find the parameter-name template of the model's Transformer layer stack.

    The stack is the ``nn.ModuleList`` whose length equals ``config.num_hidden_layers`` (DistilBERT's
    ``n_layers`` is the same attribute through the config's ``attribute_map``).

    Args:
        model: a Transformers model with a ``config``.

    Returns:
        ``(template, num_layers)``, e.g. ``("bert.encoder.layer.{}", 12)``.

    Raises:
        DistilError: when the config has no layer count, or no (or more than one) matching ``nn.ModuleList``.
    """
    num_layers = _num_layers(getattr(model, "config", None), what=type(model).__name__)
    candidates = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList) and len(module) == num_layers
    ]
    if not candidates:
        raise DistilError(
            f"model {type(model).__name__}: no nn.ModuleList of {num_layers} layers (config.num_hidden_layers) "
            "found; distil builds students only for models with a single Transformer layer stack"
        )
    if len(candidates) > 1:
        raise DistilError(
            f"model {type(model).__name__}: {len(candidates)} layer stacks of {num_layers} layers ({candidates}); "
            "distil builds students only for models with a single Transformer layer stack (encoder-only or "
            "decoder-only)"
        )
    return f"{candidates[0]}.{{}}", num_layers


def select_layers(
    strategy: str | Sequence[int], num_teacher_layers: int, num_student_layers: int | None = None
) -> list[int]:
    """Choose which teacher layers initialise (or supervise) the student's layers.

    Args:
        strategy: ``"every-other"``, ``"uniform"``, ``"first-k"``, ``"last-k"`` (see the module docstring), or
            an explicit list of 0-indexed teacher layers.
        num_teacher_layers: N, the teacher's layer count.
        num_student_layers: M, the student's layer count; required by ``"uniform"``, ``"first-k"`` and
            ``"last-k"``; when given with ``"every-other"`` or a list it must match the implied count.

    Returns:
        M 0-indexed teacher layers, strictly increasing; student layer j corresponds to teacher layer
        ``result[j]``.

    Raises:
        DistilError: for an unknown strategy, a missing or out-of-range student layer count, or a list with a
            layer outside 0..N-1, a repeat, or a decrease.
    """
    n = num_teacher_layers
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise DistilError(f"num_teacher_layers: got {n!r}; it must be a positive integer")
    m = num_student_layers
    if m is not None and (isinstance(m, bool) or not isinstance(m, int) or not 1 <= m <= n):
        raise DistilError(f"num_student_layers: got {m!r} for a teacher with {n} layers; choose an integer in 1..{n}")
    if not isinstance(strategy, str):
        return _validate_layer_list(strategy, n, m)
    if strategy == "every-other":
        return _validate_layer_list(list(range(0, n, 2)), n, m, what="every-other")
    if strategy not in LAYER_STRATEGIES:
        raise DistilError(
            f"layer strategy: got {strategy!r}; choose one of {', '.join(LAYER_STRATEGIES)} "
            "or a list of teacher layers"
        )
    if m is None:
        raise DistilError(f"layer strategy {strategy!r}: needs num_student_layers (1..{n}); it was not given")
    if strategy == "uniform":
        return [k * n // m - 1 for k in range(1, m + 1)]  # TinyBERT g(m) = m*N/M is 1-indexed
    if strategy == "first-k":
        return list(range(m))
    return list(range(n - m, n))  # last-k


def plan_copy(
    teacher_names: Sequence[str], student_names: Sequence[str], template: str, layers: Sequence[int]
) -> list[tuple[str, str]]:
    """Map every student tensor name to its teacher tensor name (no tensors are touched).

    Args:
        teacher_names: the teacher's ``state_dict`` keys.
        student_names: the student's ``state_dict`` keys.
        template: the layer stack's template with a ``{}`` layer slot, e.g. ``"bert.encoder.layer.{}"``.
        layers: teacher layer for each student layer: student layer j <- teacher layer ``layers[j]``.

    Returns:
        ``(teacher_name, student_name)`` pairs, one per student tensor, in the student's order.

    Raises:
        DistilError: when a student tensor has no teacher counterpart, or a teacher tensor that should be copied
            (outside the stack, or in a selected layer) has no place in the student.
    """
    prefix = template.split("{}")[0]
    layer_name = re.compile(re.escape(prefix) + r"(\d+)\.(.+)")
    teacher_set = set(teacher_names)
    plan = []
    for student_name in student_names:
        match = layer_name.fullmatch(student_name)
        if match is None:
            teacher_name = student_name
        else:
            j, rest = int(match.group(1)), match.group(2)
            if j >= len(layers):
                raise DistilError(
                    f"student tensor {student_name}: student layer {j} has no entry in layers {list(layers)}"
                )
            teacher_name = f"{template.format(layers[j])}.{rest}"
        if teacher_name not in teacher_set:
            raise DistilError(
                f"student tensor {student_name}: the teacher has no tensor {teacher_name}; "
                "the student must have the teacher's architecture"
            )
        plan.append((teacher_name, student_name))
    _check_teacher_covered(teacher_names, plan, layer_name, set(layers))
    return plan


def _check_teacher_covered(
    teacher_names: Sequence[str], plan: list[tuple[str, str]], layer_name: re.Pattern, layers: set[int]
) -> None:
    used = {teacher_name for teacher_name, _ in plan}
    for teacher_name in teacher_names:
        match = layer_name.fullmatch(teacher_name)
        wanted = match is None or int(match.group(1)) in layers
        if wanted and teacher_name not in used:
            raise DistilError(
                f"teacher tensor {teacher_name}: it has no place in the student; "
                "the student must have the teacher's architecture"
            )


def copy_tensors(teacher: nn.Module, student: nn.Module, plan: Sequence[tuple[str, str]]) -> None:
    """Copy teacher tensors into the student in place, following ``plan``, checking every shape first.

    Args:
        teacher: the source model.
        student: the destination model (same dtype or not: values are cast on copy).
        plan: ``(teacher_name, student_name)`` pairs from :func:`plan_copy`.

    Raises:
        DistilError: naming the first parameter whose teacher and student shapes differ (nothing is copied).
    """
    teacher_state, student_state = teacher.state_dict(), student.state_dict()
    for teacher_name, student_name in plan:
        t_shape, s_shape = tuple(teacher_state[teacher_name].shape), tuple(student_state[student_name].shape)
        if t_shape != s_shape:
            raise DistilError(
                f"parameter {student_name}: the student's shape {s_shape} differs from the teacher's {t_shape} "
                f"({teacher_name}); the student must keep the teacher's widths to be initialised from it"
            )
    with torch.no_grad():
        for teacher_name, student_name in plan:
            # state_dict tensors share storage with the parameters, so copy_ writes into the student
            student_state[student_name].copy_(teacher_state[teacher_name])


def student_from_teacher(teacher: PreTrainedModel, layers: Sequence[int]) -> PreTrainedModel:
    """Build a shallower copy of ``teacher``: same class and widths, ``len(layers)`` layers taken from it.

    Tensors outside the layer stack (embeddings, pooler, classifier) are copied as they are, teacher layer
    ``layers[j]`` becomes student layer ``j``. The student keeps the teacher's ``id2label``/``label2id``,
    dtype and device, and is returned in training mode. Two attributes record the copy:
    ``student.distil_layer_map`` (``list(layers)``) and ``student.distil_copy_report`` (the
    ``(teacher_name, student_name)`` pairs).

    Args:
        teacher: a Transformers model with a single layer stack (see :func:`find_layer_stack`).
        layers: 0-indexed teacher layers, strictly increasing (see :func:`select_layers`).

    Returns:
        The new student model.

    Raises:
        DistilError: when no layer stack is found, ``layers`` is invalid, or a tensor has no counterpart or a
            different shape.
    """
    template, num_teacher_layers = find_layer_stack(teacher)
    layers = _validate_layer_list(layers, num_teacher_layers, None)
    config = copy.deepcopy(teacher.config)
    _set_num_layers(config, len(layers))
    layer_types = getattr(config, "layer_types", None)
    if isinstance(layer_types, list) and len(layer_types) == num_teacher_layers:
        config.layer_types = [layer_types[i] for i in layers]  # e.g. sliding/full attention per layer
    student = type(teacher)._from_config(config, dtype=teacher.dtype).to(teacher.device)
    plan = plan_copy(list(teacher.state_dict()), list(student.state_dict()), template, layers)
    copy_tensors(teacher, student, plan)
    student.train()
    student.distil_layer_map = list(layers)
    student.distil_copy_report = plan
    return student


def student_from_config(
    teacher_config: PretrainedConfig,
    *,
    num_hidden_layers: int,
    hidden_size: int,
    num_attention_heads: int,
    intermediate_size: int,
    num_labels: int | None = None,
    model_class: type = AutoModelForSequenceClassification,
) -> PreTrainedModel:
    """Build a freshly initialised task model (``model_class``, default a sequence classifier) of the teacher's type
    and vocabulary with a new shape.

    Everything else comes from the teacher's config: vocabulary size, pad id, maximum positions, activation,
    norms, ``id2label``/``label2id`` (unless ``num_labels`` differs). TinyBERT-4 is 4 layers x 312 hidden,
    12 heads, FFN 1200.

    Args:
        teacher_config: the teacher's config.
        num_hidden_layers: student layer count.
        hidden_size: student width; divisible by ``num_attention_heads``.
        num_attention_heads: student attention heads.
        intermediate_size: student feed-forward width.
        num_labels: classes; ``None`` keeps the teacher's labels.

    Returns:
        An ``AutoModelForSequenceClassification`` model with random weights, in training mode.

    Raises:
        DistilError: for a non-positive size, a hidden size not divisible by the head count, or a config without
            a known feed-forward width field.
    """
    config = reshaped_config(
        teacher_config,
        {"num_hidden_layers": num_hidden_layers, "num_labels": num_labels},
        hidden_size,
        num_attention_heads,
        intermediate_size,
    )
    if num_labels is not None and num_labels != config.num_labels:
        config.num_labels = num_labels  # resets id2label/label2id to LABEL_i
    config.architectures = None
    return model_class.from_config(config).train()


def reshaped_config(
    teacher_config: PretrainedConfig,
    counts: dict[str, int | None],
    hidden_size: int,
    num_attention_heads: int,
    intermediate_size: int,
) -> PretrainedConfig:
    """A copy of the teacher's config with a new shape, every size checked first.

    Args:
        teacher_config: the teacher's config (vocabulary, positions, activation, norms are kept).
        counts: the layer count first, under the caller's name for it (e.g. ``{"num_layers": 4}``), then any other
            positive integers the caller needs checked with the same message (``num_labels``; None: not given).
        hidden_size, num_attention_heads, intermediate_size: the new widths (heads divide the width).

    Returns:
        The config with the layer count, widths, ``head_dim`` (when it has one), plain multi-head attention (when it
        has ``num_key_value_heads``) and per-layer ``layer_types`` repeated in the teacher's cycle.

    Raises:
        DistilError: a size that is not a positive integer, heads that do not divide the width, or a config without
            a known feed-forward width field.
    """
    sizes = {**counts, "hidden_size": hidden_size, "num_attention_heads": num_attention_heads,
             "intermediate_size": intermediate_size}  # fmt: skip
    for name, value in sizes.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise DistilError(f"student {name}: got {value!r}; it must be a positive integer")
    if hidden_size % num_attention_heads:
        raise DistilError(
            f"student hidden_size {hidden_size} is not divisible by num_attention_heads {num_attention_heads}; "
            f"choose heads that divide it (e.g. {_divisors_near(hidden_size, num_attention_heads)})"
        )
    num_layers = next(iter(counts.values()))
    config = copy.deepcopy(teacher_config)
    _set_num_layers(config, num_layers)
    config.hidden_size = hidden_size
    config.num_attention_heads = num_attention_heads
    _set_intermediate_size(config, intermediate_size)
    if getattr(config, "head_dim", None) is not None:  # decoder configs store it explicitly
        config.head_dim = hidden_size // num_attention_heads
    if getattr(config, "num_key_value_heads", None) is not None:
        config.num_key_value_heads = num_attention_heads  # plain multi-head attention
    layer_types = getattr(config, "layer_types", None)
    if isinstance(layer_types, list) and layer_types:  # e.g. sliding/full attention, repeated in the teacher's cycle
        config.layer_types = [layer_types[i % len(layer_types)] for i in range(num_layers)]
    return config


def _num_layers(config: PretrainedConfig | None, what: str) -> int:
    num_layers = getattr(config, "num_hidden_layers", None)
    if not isinstance(num_layers, int) or num_layers < 1:
        raise DistilError(
            f"model {what}: its config has no positive num_hidden_layers (got {num_layers!r}); "
            "distil needs a Transformers model with a layer count in its config"
        )
    return num_layers


def _set_num_layers(config: PretrainedConfig, num_layers: int) -> None:
    # DistilBERT calls it n_layers; its attribute_map routes num_hidden_layers there
    config.num_hidden_layers = num_layers
    if getattr(config, "num_hidden_layers", None) != num_layers:
        raise DistilError(f"config {type(config).__name__}: could not set its layer count to {num_layers}")


def _set_intermediate_size(config: PretrainedConfig, intermediate_size: int) -> None:
    for field in ("intermediate_size", "hidden_dim", "ffn_dim"):  # BERT-likes, DistilBERT, others
        if hasattr(config, field):
            setattr(config, field, intermediate_size)
            return
    raise DistilError(
        f"config {type(config).__name__}: no feed-forward width field (intermediate_size, hidden_dim, ffn_dim); "
        "build this student with student_from_teacher instead"
    )


def _divisors_near(hidden_size: int, heads: int) -> str:
    divisors = sorted((d for d in range(1, hidden_size + 1) if hidden_size % d == 0), key=lambda d: abs(d - heads))
    return ", ".join(str(d) for d in sorted(divisors[:3]))


def _validate_layer_list(layers: Sequence[int], n: int, m: int | None, what: str = "layers") -> list[int]:
    if isinstance(layers, (str, bytes)) or not isinstance(layers, Sequence):
        raise DistilError(f"{what}: got {layers!r}; pass a strategy name or a list of teacher layers")
    if not layers:
        raise DistilError(f"{what}: the list is empty; give at least one teacher layer in 0..{n - 1}")
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise DistilError(f"{what}: {layer!r} is not an integer; teacher layers are 0..{n - 1}")
        if not 0 <= layer < n:
            raise DistilError(
                f"{what}: teacher layer {layer} is out of range; valid layers are 0..{n - 1} (the teacher has {n})"
            )
    for previous, layer in itertools.pairwise(layers):
        if layer <= previous:
            kind = "repeated" if layer == previous else "after a larger one"
            raise DistilError(f"{what}: teacher layer {layer} is {kind} in {list(layers)}; list layers increasing")
    if m is not None and len(layers) != m:
        raise DistilError(f"{what}: {list(layers)} gives {len(layers)} student layers, but num_student_layers is {m}")
    return list(layers)
