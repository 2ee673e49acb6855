"""Feature capture by forward hooks on exactly the layers a loss needs, and the student -> teacher layer map.

Hooks sit on the embedding module, on the chosen encoder layers and on the q/k/v ``nn.Linear`` projections
of the chosen attention modules; nothing else is hooked, ``output_attentions``/``output_hidden_states`` are
never switched on and the attention implementation (eager, SDPA, ...) is left as the model has it.
Attention scores and probabilities are recomputed from the captured queries and keys, which is what makes
them available under SDPA, where transformers returns no attention weights at all.

Example::

    tap = FeatureTap(student, FeatureSpec(hidden_layers=(0, 1), attention_layers=(1,)))
    with tap.capture(batch["attention_mask"]) as feats:
        student(**batch)
    loss = attention_mse(feats.attention_scores(1), teacher_feats.attention_scores(5), ...)
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn
from typing_extensions import Self

from distil.errors import DistilError

# Where the q/k/v projections live inside one encoder layer, per family; the first complete match wins.
QKV_NAME_CANDIDATES: tuple[tuple[str, str, str], ...] = (
    ("attention.self.query", "attention.self.key", "attention.self.value"),  # BERT, MiniLM, RoBERTa, ELECTRA
    ("attention.attn.q", "attention.attn.k", "attention.attn.v"),  # MPNet
    ("attention.q_lin", "attention.k_lin", "attention.v_lin"),  # DistilBERT
)

_NUM_LAYERS_KEYS = ("num_hidden_layers", "n_layers", "n_layer", "num_layers")
_HIDDEN_SIZE_KEYS = ("hidden_size", "dim", "d_model", "n_embd")
_NUM_HEADS_KEYS = ("num_attention_heads", "n_heads", "n_head", "num_heads")


@dataclass
class FeatureSpec:
    """Which intermediate features to capture; layer indices are 0-based encoder layers.

    Args:
        embeddings: capture the embedding module's output, (B, L, D).
        hidden_layers: layers whose output hidden state to capture, (B, L, D) each; layer i is the output of
            encoder layer i, i.e. ``output_hidden_states[i + 1]`` (the embeddings are separate).
        attention_layers: layers whose attention scores/probabilities are needed (hooks their q and k).
        qkv_layers: layers whose queries, keys and values are needed (hooks q, k and v).
    """

    embeddings: bool = False
    hidden_layers: tuple[int, ...] = ()
    attention_layers: tuple[int, ...] = ()
    qkv_layers: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        for name in ("hidden_layers", "attention_layers", "qkv_layers"):
            layers = tuple(getattr(self, name))
            for layer in layers:
                if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
                    raise DistilError(f"FeatureSpec.{name} has {layer!r}: layer indices must be ints >= 0")
            setattr(self, name, tuple(sorted(set(layers))))

    @property
    def is_empty(self) -> bool:
        return not (self.embeddings or self.hidden_layers or self.attention_layers or self.qkv_layers)


# ----------------------------------------------------------------------------------------------------------
# config helpers


def _config_value(model: nn.Module, keys: tuple[str, ...], what: str) -> int:
    config = getattr(model, "config", None)
    if config is None:
        raise DistilError(f"{type(model).__name__} has no .config, so its {what} is unknown: not a transformers model")
    for key in keys:
        value = getattr(config, key, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    raise DistilError(f"{type(model).__name__}'s config has none of {', '.join(keys)}: cannot read its {what}")


def model_num_layers(model: nn.Module) -> int:
    """Number of encoder layers (``num_hidden_layers``; DistilBERT's ``n_layers``)."""
    return _config_value(model, _NUM_LAYERS_KEYS, "number of layers")


def model_hidden_size(model: nn.Module) -> int:
    """Hidden width D (``hidden_size``; DistilBERT's ``dim``)."""
    return _config_value(model, _HIDDEN_SIZE_KEYS, "hidden size")


def model_num_heads(model: nn.Module) -> int:
    """Number of attention heads H (``num_attention_heads``; DistilBERT's ``n_heads``)."""
    return _config_value(model, _NUM_HEADS_KEYS, "number of attention heads")


# ----------------------------------------------------------------------------------------------------------
# locating modules


def encoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The encoder's layer list: the first ``nn.ModuleList`` whose length equals the config's layer count.

    Returns:
        (dotted name, module list), e.g. ("bert.encoder.layer", ModuleList of N layers).

    Raises:
        DistilError: no such list (e.g. ALBERT, which shares one layer), naming the model class.
    """
    num_layers = model_num_layers(model)
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == num_layers:
            return name, module
    raise DistilError(
        f"{type(model).__name__}: found no nn.ModuleList of {num_layers} layers (config layer count); "
        "feature capture needs one module per encoder layer"
    )


def attention_projections(model: nn.Module, layer: int) -> tuple[nn.Module, nn.Linear, nn.Linear, nn.Linear]:
    """The attention module of encoder layer ``layer`` and its q, k, v ``nn.Linear`` projections.

    Raises:
        DistilError: none of :data:`QKV_NAME_CANDIDATES` matches, naming the model class and what was tried.
    """
    _, layers = encoder_layers(model)
    block = layers[layer]
    for names in QKV_NAME_CANDIDATES:
        modules = [_get_submodule_or_none(block, name) for name in names]
        if all(isinstance(m, nn.Linear) for m in modules):
            attention = block.get_submodule(names[0].rpartition(".")[0])
            return attention, modules[0], modules[1], modules[2]
    tried = "; ".join("/".join(names) for names in QKV_NAME_CANDIDATES)
    raise DistilError(
        f"{type(model).__name__} is not supported for attention/q/k/v capture: layer {layer} "
        f"({type(block).__name__}) has none of the q/k/v Linear layouts {tried}"
    )


def _get_submodule_or_none(module: nn.Module, name: str) -> nn.Module | None:
    try:
        return module.get_submodule(name)
    except AttributeError:
        return None


def _embeddings_module(model: nn.Module) -> nn.Module:
    base = getattr(model, "base_model", model)
    embeddings = getattr(base, "embeddings", None)
    if not isinstance(embeddings, nn.Module):
        raise DistilError(f"{type(model).__name__} has no `embeddings` module on its base model: cannot capture them")
    return embeddings


def _relative_position_bias_module(model: nn.Module, layers_name: str) -> nn.Embedding | None:
    """MPNet's shared relative-position bias table (on the encoder, beside its layer list), if the model has one."""
    parent = model.get_submodule(layers_name.rpartition(".")[0]) if "." in layers_name else model
    table = getattr(parent, "relative_attention_bias", None)
    if isinstance(table, nn.Embedding) and table.embedding_dim == model_num_heads(model):
        return table
    return None


# ----------------------------------------------------------------------------------------------------------
# captured features


@dataclass
class Features:
    """What one forward pass inside :meth:`FeatureTap.capture` recorded; all tensors keep their autograd graph.

    Attributes:
        embeddings: embedding output (B, L, D), or None when not requested.
        hidden: layer -> output hidden state (B, L, D).
        queries, keys, values: layer -> output of the q/k/v Linear projection (B, L, D), heads not yet split.
        num_heads: H, from the model config.
        scaling: the factor applied to Q K^T (the attention module's ``scaling``, else 1/sqrt(d_h)).
        attention_mask: the (B, L) padding mask given to ``capture`` (1 = token, 0 = padding), or None.
        position_bias: MPNet's relative-position bias (1, H, L, L) added to every layer's scores, else None.
    """

    num_heads: int
    scaling: float | None = None
    attention_mask: torch.Tensor | None = None
    embeddings: torch.Tensor | None = None
    hidden: dict[int, torch.Tensor] = field(default_factory=dict)
    queries: dict[int, torch.Tensor] = field(default_factory=dict)
    keys: dict[int, torch.Tensor] = field(default_factory=dict)
    values: dict[int, torch.Tensor] = field(default_factory=dict)
    position_bias: torch.Tensor | None = None
    _scores: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        return x.view(batch, length, self.num_heads, width // self.num_heads).transpose(1, 2)  # (B, H, L, d_h)

    def attention_scores(self, layer: int) -> torch.Tensor:
        """Pre-softmax attention scores of ``layer``, recomputed from the captured queries and keys.

        scores = Q_h K_h^T * scaling (+ MPNet's relative-position bias) + additive padding mask, where the mask
        puts ``torch.finfo(dtype).min`` on padded key positions, exactly as transformers' eager attention does.
        This equals the model's own pre-softmax scores in eval mode; it differs where the model adds something
        else inside attention that is not hooked here (none of the supported families do). Losses on scores
        must mask padded positions themselves (their values are ~finfo.min).

        Returns:
            (B, H, L, L) tensor, cached per layer for this capture.

        Raises:
            DistilError: ``layer`` was not in the spec's attention_layers or qkv_layers.
        """
        if layer in self._scores:
            return self._scores[layer]
        if layer not in self.queries or layer not in self.keys:
            raise DistilError(
                f"attention of layer {layer} was not captured; captured layers: {sorted(self.queries)} "
                "(add it to FeatureSpec.attention_layers)"
            )
        query = self._split_heads(self.queries[layer])  # (B, H, L, d_h)
        key = self._split_heads(self.keys[layer])  # (B, H, L, d_h)
        scaling = self.scaling if self.scaling is not None else query.size(-1) ** -0.5
        scores = torch.matmul(query, key.transpose(-1, -2)) * scaling  # (B, H, L, L)
        if self.position_bias is not None:
            scores = scores + self.position_bias.to(scores.dtype)  # (1, H, L, L) broadcast over B
        if self.attention_mask is not None:
            padding = self.attention_mask[:, None, None, :].to(device=scores.device) == 0  # (B, 1, 1, L)
            scores = scores.masked_fill(padding, torch.finfo(scores.dtype).min)
        self._scores[layer] = scores
        return scores

    def attention_probs(self, layer: int) -> torch.Tensor:
        """Attention probabilities of ``layer``: softmax over keys of :meth:`attention_scores`; no dropout.

        Equal (to ~1e-6) to the probabilities eager attention returns with ``output_attentions=True`` in eval
        mode; in train mode the model's own probabilities also pass through attention dropout, these do not.

        Returns:
            (B, H, L, L) tensor whose last dimension sums to 1.
        """
        return torch.softmax(self.attention_scores(layer), dim=-1)


def _plain(tensor: torch.Tensor) -> torch.Tensor:
    """A tensor usable in an autograd-tracked loss: inference-mode tensors (the teacher's) are cloned out."""
    if tensor.is_inference():
        with torch.inference_mode(False):
            return tensor.clone()
    return tensor


def _first_tensor(output) -> torch.Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


# ----------------------------------------------------------------------------------------------------------
# the tap


class FeatureTap:
    """Forward hooks on the modules a :class:`FeatureSpec` needs, and a ``capture`` context that collects them.

    Args:
        model: a transformers encoder (BERT/MiniLM, RoBERTa, MPNet, DistilBERT, with or without a task head).
        spec: what to capture.

    Raises:
        DistilError: a layer index out of range, or the model lacks a module the spec needs (names the class).

    Hooks record only inside ``capture()``; between captures they hold no tensor. Tensors produced under
    ``torch.inference_mode`` (the teacher) are cloned to normal tensors so that losses can use them.
    """

    def __init__(self, model: nn.Module, spec: FeatureSpec):
        self.model = model
        self.spec = spec
        self.num_heads = model_num_heads(model) if (spec.attention_layers or spec.qkv_layers) else 0
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._features: Features | None = None
        self._scaling: float | None = None
        self._targets = self._resolve_targets()

    def _resolve_targets(self) -> list[tuple[nn.Module, str, int]]:
        """(module, kind, layer) for every hook to register; resolves and validates everything up front."""
        spec = self.spec
        targets: list[tuple[nn.Module, str, int]] = []
        if spec.embeddings:
            targets.append((_embeddings_module(self.model), "embeddings", -1))
        if not (spec.hidden_layers or spec.attention_layers or spec.qkv_layers):
            return targets
        layers_name, layers = encoder_layers(self.model)
        for field_name in ("hidden_layers", "attention_layers", "qkv_layers"):
            for layer in getattr(spec, field_name):
                if layer >= len(layers):
                    raise DistilError(
                        f"FeatureSpec.{field_name} has layer {layer}, but {type(self.model).__name__} has "
                        f"{len(layers)} layers (valid 0..{len(layers) - 1})"
                    )
        targets += [(layers[layer], "hidden", layer) for layer in spec.hidden_layers]
        for layer in sorted(set(spec.attention_layers) | set(spec.qkv_layers)):
            attention, query, key, value = attention_projections(self.model, layer)
            scaling = getattr(attention, "scaling", None)
            self._scaling = float(scaling) if isinstance(scaling, (int, float)) else None
            targets += [(query, "queries", layer), (key, "keys", layer)]
            if layer in spec.qkv_layers:
                targets.append((value, "values", layer))
        if spec.attention_layers or spec.qkv_layers:  # scores may be computed from either
            bias_table = _relative_position_bias_module(self.model, layers_name)
            if bias_table is not None:
                targets.append((bias_table, "position_bias", -1))
        return targets

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def attach(self) -> Self:
        """Register the hooks (idempotent)."""
        if not self._handles:
            for module, kind, layer in self._targets:
                hook = functools.partial(self._record, kind, layer)
                self._handles.append(module.register_forward_hook(hook))
        return self

    def detach(self) -> None:
        """Remove every hook this tap registered."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self) -> Self:
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.detach()

    def _record(self, kind: str, layer: int, module: nn.Module, args, output) -> None:
        features = self._features
        if features is None:
            return
        tensor = _plain(_first_tensor(output))
        if kind == "embeddings":
            features.embeddings = tensor
        elif kind == "position_bias":
            features.position_bias = tensor.permute(2, 0, 1).unsqueeze(0)  # (L, L, H) -> (1, H, L, L)
        else:
            getattr(features, kind)[layer] = tensor

    @contextlib.contextmanager
    def capture(self, attention_mask: torch.Tensor | None = None) -> Iterator[Features]:
        """Collect the spec's features from the forward pass run inside the ``with`` block.

        Args:
            attention_mask: the (B, L) padding mask given to the model (1 = token, 0 = padding), or None.

        Yields:
            A :class:`Features`, filled when the block ends. Attaches the hooks for the block if not attached.

        Raises:
            DistilError: ``attention_mask`` is not 2-D; or, at the end of the block, a requested feature was not
                recorded (no forward ran inside it).
        """
        if attention_mask is not None and attention_mask.dim() != 2:
            raise DistilError(f"capture() needs the (B, L) padding mask, got shape {tuple(attention_mask.shape)}")
        attached_here = not self.attached
        self.attach()
        features = Features(num_heads=self.num_heads, scaling=self._scaling, attention_mask=attention_mask)
        self._features = features
        try:
            yield features
            self._check_complete(features)
        finally:
            self._features = None
            if attached_here:
                self.detach()

    def _check_complete(self, features: Features) -> None:
        spec = self.spec
        missing = ["embeddings"] if spec.embeddings and features.embeddings is None else []
        missing += [f"hidden[{i}]" for i in spec.hidden_layers if i not in features.hidden]
        missing += [f"queries[{i}]" for i in (*spec.attention_layers, *spec.qkv_layers) if i not in features.queries]
        missing += [f"values[{i}]" for i in spec.qkv_layers if i not in features.values]
        if missing:
            raise DistilError(
                f"FeatureTap on {type(self.model).__name__} recorded nothing for {', '.join(missing)}: "
                "run the model's forward inside `with tap.capture(...)`"
            )


# ----------------------------------------------------------------------------------------------------------
# layer mapping

LAYER_MAP_STRATEGIES = ("uniform", "last-k")


def map_layers(
    strategy: str | list[int] | tuple[int, ...], num_student_layers: int, num_teacher_layers: int
) -> list[tuple[int, int]]:
    """Pair each student layer with the teacher layer its feature losses imitate (0-based indices).

    Args:
        strategy: "uniform": TinyBERT's g(m) = m * N / M for 1-based student layer m, i.e. 0-based student
            m - 1 <- teacher m * N // M - 1 (the last student layer always takes the last teacher layer);
            "last-k": student layer i <- teacher layer N - M + i (the teacher's last M layers);
            or an explicit list of M teacher layers, one per student layer.
        num_student_layers: M.
        num_teacher_layers: N.

    Returns:
        [(student_layer, teacher_layer), ...] of length M.

    Raises:
        DistilError: unknown strategy, M > N for uniform/last-k, or an explicit list of the wrong length or
            with a layer outside 0..N-1 (the message names it).
    """
    student, teacher = num_student_layers, num_teacher_layers
    if student < 1 or teacher < 1:
        raise DistilError(f"map_layers needs >= 1 layer each; got student {student}, teacher {teacher}")
    if isinstance(strategy, str):
        if strategy not in LAYER_MAP_STRATEGIES:
            raise DistilError(
                f"layer map {strategy!r} is unknown; use one of {', '.join(LAYER_MAP_STRATEGIES)} "
                "or a list of teacher layers"
            )
        if student > teacher:
            raise DistilError(
                f"layer map {strategy!r} needs student layers ({student}) <= teacher layers ({teacher}); "
                "give an explicit list of teacher layers instead"
            )
        if strategy == "uniform":
            return [(m - 1, m * teacher // student - 1) for m in range(1, student + 1)]
        return [(i, teacher - student + i) for i in range(student)]
    layers = list(strategy)
    if len(layers) != student:
        raise DistilError(
            f"layer map {layers} has {len(layers)} teacher layers, but the student has {student}: give one each"
        )
    for i, layer in enumerate(layers):
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < teacher:
            raise DistilError(
                f"layer map entry {i} (student layer {i}) is teacher layer {layer!r}, "
                f"outside the teacher's valid range 0..{teacher - 1}"
            )
    return list(enumerate(layers))
