"""Sum weighted loss parts into one training loss, and return every unweighted part as a float for logging."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

from torch import Tensor, nn

from distil.errors import DistilError


def combine(parts: Mapping[str, Tensor], weights: Mapping[str, float]) -> tuple[Tensor, dict[str, float]]:
    """``total = sum_name weights[name] * parts[name]``, with a finiteness check naming the culprit.

    Args:
        parts: name -> scalar loss tensor (unweighted, attached to the graph).
        weights: name -> weight; every part needs one. A weight naming no part is an error unless it is 0 (a
            switched-off term the caller did not compute).

    Returns:
        ``(total, logged)``: the scalar weighted sum, and ``{name: float(unweighted part)}`` for logging.

    Raises:
        DistilError: no parts, a part without a weight, a non-zero weight without a part, a part that is not a
            scalar, or a part or the total that is nan/inf (the message names the part and its value).

    Example:
        >>> import torch
        >>> total, logged = combine({"ce": torch.tensor(0.7), "kd": torch.tensor(0.2)}, {"ce": 0.5, "kd": 0.5})
        >>> round(float(total), 4), round(logged["kd"], 4)
        (0.45, 0.2)
    """
    if not parts:
        raise DistilError("combine: no loss parts were computed; configure at least one loss term")
    missing = sorted(set(parts) - set(weights))
    if missing:
        raise DistilError(f"combine: parts {missing} have no weight; weights are given for {sorted(weights)}")
    unused = sorted(name for name, weight in weights.items() if name not in parts and weight != 0)
    if unused:
        raise DistilError(
            f"combine: weights {unused} name no computed part (parts: {sorted(parts)}); fix the loss name or set "
            "its weight to 0"
        )
    logged: dict[str, float] = {}
    for name, value in parts.items():
        if value.numel() != 1:
            raise DistilError(f"combine: part {name!r} has shape {tuple(value.shape)}; each part must be a scalar")
        logged[name] = float(value.detach())
        if not math.isfinite(logged[name]):
            raise DistilError(
                f"combine: loss part {name!r} is {logged[name]} (all parts: {logged}); lower the learning rate, "
                "use bf16/fp32 instead of fp16, or check that term's inputs (temperature, masks, projections)"
            )
    total = sum(weights[name] * value.reshape(()) for name, value in parts.items())
    if not math.isfinite(float(total.detach())):
        raise DistilError(
            f"combine: weighted total is {float(total.detach())} (parts: {logged}, weights: "
            f"{dict(weights)}); lower the weights"
        )
    return total, logged


class CombinedLoss(nn.Module):
    """Named, weighted loss terms; holds term modules (and their parameters, e.g. projections) for the optimizer.

    The caller computes each part (``self.compute(name, ...)`` or any other way), then ``self.combine(parts)``
    returns the weighted total and a float per part. There is no catch-all ``forward(**inputs)``: each term takes
    different inputs, and the caller knows them.

    Args:
        terms: name -> (weight >= 0, loss callable). ``nn.Module`` callables are registered as submodules, so
            their parameters (e.g. :class:`~distil.losses.hidden.HiddenMSELoss`'s projection) appear in
            ``self.parameters()``; plain functions are kept as they are.

    Raises:
        DistilError: a negative or non-finite weight, an empty or dotted name, or a term that is not callable.

    Example:
        >>> from distil.losses import HiddenMSELoss, kd_kl_loss
        >>> losses = CombinedLoss({"kd": (1.0, kd_kl_loss), "hidden_mse": (0.5, HiddenMSELoss(32, 64))})
        >>> parts = {"kd": losses.compute("kd", s_logits, t_logits, 2.0),
        ...          "hidden_mse": losses.compute("hidden_mse", s_hidden, t_hidden, mask)}  # doctest: +SKIP
        >>> total, logged = losses.combine(parts)  # doctest: +SKIP
    """

    def __init__(self, terms: Mapping[str, tuple[float, Callable[..., Tensor]]]):
        super().__init__()
        self.weights: dict[str, float] = {}
        self.term_modules = nn.ModuleDict()
        self._functions: dict[str, Callable[..., Tensor]] = {}
        for name, (weight, term) in terms.items():
            if not name or "." in name:
                raise DistilError(f"CombinedLoss: term name {name!r} must be non-empty and contain no '.'")
            if not (isinstance(weight, (int, float)) and math.isfinite(weight) and weight >= 0):
                raise DistilError(f"CombinedLoss: weight of {name!r} is {weight!r}; must be a finite number >= 0")
            if not callable(term):
                raise DistilError(f"CombinedLoss: term {name!r} is {term!r}, not a loss function or module")
            self.weights[name] = float(weight)
            if isinstance(term, nn.Module):
                self.term_modules[name] = term
            else:
                self._functions[name] = term

    def term(self, name: str) -> Callable[..., Tensor]:
        """The loss callable registered under ``name``."""
        if name in self.term_modules:
            return self.term_modules[name]
        if name in self._functions:
            return self._functions[name]
        raise DistilError(f"CombinedLoss: no term named {name!r}; terms are {sorted(self.weights)}")

    def compute(self, name: str, *args, **kwargs) -> Tensor:
        """Call the term ``name`` with the given inputs."""
        return self.term(name)(*args, **kwargs)

    def combine(
        self, parts: Mapping[str, Tensor], weights: Mapping[str, float] | None = None
    ) -> tuple[Tensor, dict[str, float]]:
        """:func:`combine` with this module's weights unless ``weights`` is given."""
        return combine(parts, self.weights if weights is None else weights)

    def forward(self, parts: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        return self.combine(parts)

    def extra_repr(self) -> str:
        return f"weights={self.weights}"
