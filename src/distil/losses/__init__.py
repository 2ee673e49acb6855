"""Distillation losses: one small file per family, each loss a pure tensor function plus a thin ``nn.Module``.

``LOSSES`` maps the names used in configs to the pure functions; it is filled here, explicitly. Conventions
(alpha, T^2, reductions, masking, KL direction) are in docs/losses.md.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from distil.losses.attention import AttentionKLLoss, AttentionMSELoss, attention_kl_loss, attention_mse_loss
from distil.losses.combine import combine
from distil.losses.hidden import HiddenCosineLoss, HiddenMSELoss, hidden_cosine_loss, hidden_mse_loss
from distil.losses.logits import SOFT_LOSSES, KDLoss, kd_kl_loss, kd_objective, logits_mse_loss
from distil.losses.minilm import (
    MiniLMAttentionLoss,
    QKVRelationLoss,
    ValueRelationLoss,
    qkv_relation_loss,
    self_attention_distribution_loss,
    value_relation_loss,
)
from distil.losses.relation import RKDAngleLoss, RKDDistanceLoss, rkd_angle_loss, rkd_distance_loss

LOSSES: dict[str, Callable[..., Tensor]] = {
    "kd_kl": kd_kl_loss,
    "logits_mse": logits_mse_loss,
    "hidden_mse": hidden_mse_loss,
    "hidden_cosine": hidden_cosine_loss,
    "attention_mse": attention_mse_loss,
    "attention_kl": attention_kl_loss,
    "minilm_attention": self_attention_distribution_loss,
    "minilm_value_relation": value_relation_loss,
    "minilmv2_qkv_relation": qkv_relation_loss,
    "rkd_distance": rkd_distance_loss,
    "rkd_angle": rkd_angle_loss,
}

__all__ = [
    "LOSSES",
    "SOFT_LOSSES",
    "AttentionKLLoss",
    "AttentionMSELoss",
    "HiddenCosineLoss",
    "HiddenMSELoss",
    "KDLoss",
    "MiniLMAttentionLoss",
    "QKVRelationLoss",
    "RKDAngleLoss",
    "RKDDistanceLoss",
    "ValueRelationLoss",
    "attention_kl_loss",
    "attention_mse_loss",
    "combine",
    "hidden_cosine_loss",
    "hidden_mse_loss",
    "kd_kl_loss",
    "kd_objective",
    "logits_mse_loss",
    "qkv_relation_loss",
    "rkd_angle_loss",
    "rkd_distance_loss",
    "self_attention_distribution_loss",
    "value_relation_loss",
]
