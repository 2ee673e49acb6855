"""Sum weighted loss parts into one training loss, and return every unweighted part as a float for logging."""

from __future__ import annotations

import math
from collections.abc import Mapping

from torch import Tensor

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
