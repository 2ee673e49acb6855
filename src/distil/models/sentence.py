"""A sentence encoder as sentence-transformers builds one: a Transformers encoder, pooling, an optional Dense
projection and L2 normalisation, saved in sentence-transformers' folder layout (safetensors only).

`SentenceEncoder` is what the embeddings task trains: its forward returns the sentence embedding as ``logits``
(B, D), so the engine caches, distils, evaluates and exports it as any other task's output. Its settings live in
the encoder's config (``distil_sentence``), so a student cut from the teacher or built from its config keeps the
teacher's pooling. A saved encoder is a sentence-transformers folder::

    config.json, model.safetensors, tokenizer files     the Transformer module (path "")
    modules.json, sentence_bert_config.json             the module list, max_seq_length
    1_Pooling/config.json                               pooling mode
    2_Dense/config.json + model.safetensors              only with a projection
    3_Normalize/                                        only when the embeddings are L2-normalised

so ``SentenceTransformer(path)`` loads it, and distil loads any sentence-transformers folder the same way.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModel, PretrainedConfig
from transformers.utils import ModelOutput

from distil.errors import DistilError

SENTENCE_KEY = "distil_sentence"
"""The config.json key holding a SentenceEncoder's pooling, normalisation and projection settings."""
POOLING_MODES = ("mean", "cls", "max")
_ST_POOLING_KEYS = {
    "mean": "pooling_mode_mean_tokens",
    "cls": "pooling_mode_cls_token",
    "max": "pooling_mode_max_tokens",
}
_ACTIVATIONS = {
    "torch.nn.modules.linear.Identity": nn.Identity,
    "torch.nn.modules.activation.Tanh": nn.Tanh,
}
_ST = "sentence_transformers.models."


@dataclass
class SentenceOutput(ModelOutput):
    """``logits``: the sentence embeddings (B, D)."""

    logits: torch.Tensor | None = None
    hidden_states: tuple | None = None
    attentions: tuple | None = None


def pool(token_embeddings: torch.Tensor, attention_mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Pool (B, L, H) token embeddings into (B, H) over the attended positions, as sentence-transformers does:
    ``mean`` (sum / count, count clamped at 1e-9), ``cls`` (position 0), ``max`` (padding set to -1e9 first)."""
    mask = attention_mask.unsqueeze(-1).to(token_embeddings.dtype)  # (B, L, 1)
    if mode == "mean":
        return (token_embeddings * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    if mode == "cls":
        return token_embeddings[:, 0]
    if mode == "max":
        return token_embeddings.masked_fill(mask == 0, -1e9).max(1).values
    raise DistilError(f"pooling: got {mode!r}; expected one of {', '.join(POOLING_MODES)}")


def default_settings(config: PretrainedConfig) -> dict[str, Any]:
    return {"pooling": "mean", "normalize": False, "dense": None, "max_seq_length": None}


class SentenceEncoder(nn.Module):
    """Encoder + pooling (+ Dense) (+ normalisation) -> one vector per text.

    Args:
        encoder: a Transformers base model (``AutoModel``: BertModel, MPNetModel, ...).
        settings: ``pooling`` (mean/cls/max), ``normalize`` (bool), ``dense`` (None or {"out_features",
            "bias", "activation"}), ``max_seq_length``; stored in ``encoder.config.distil_sentence``.
    """

    labelled: ClassVar[bool] = False
    """Loaded without class labels (`distil.models.loading.load_classifier`)."""

    def __init__(self, encoder: nn.Module, settings: dict[str, Any] | None = None):
        super().__init__()
        self.encoder = encoder
        settings = {**default_settings(encoder.config), **(settings or getattr(encoder.config, SENTENCE_KEY, {}))}
        if settings["pooling"] not in POOLING_MODES:
            raise DistilError(f"pooling: got {settings['pooling']!r}; expected one of {', '.join(POOLING_MODES)}")
        self.dense: nn.Linear | None = None
        self.activation: nn.Module = nn.Identity()
        dense = settings.get("dense")
        if dense:
            self.dense = nn.Linear(
                encoder.config.hidden_size, int(dense["out_features"]), bias=dense.get("bias", True)
            )
            self.activation = _ACTIVATIONS[dense.get("activation", "torch.nn.modules.linear.Identity")]()
        setattr(encoder.config, SENTENCE_KEY, settings)

    # ---- what the engine reads like a Transformers model

    @property
    def config(self) -> PretrainedConfig:
        return self.encoder.config

    @property
    def settings(self) -> dict[str, Any]:
        return getattr(self.config, SENTENCE_KEY)

    @property
    def base_model(self) -> nn.Module:
        return self.encoder

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def embedding_dim(self) -> int:
        return self.dense.out_features if self.dense is not None else self.config.hidden_size

    def set_projection(self, out_features: int) -> None:
        """Add (or replace) a Dense projection to ``out_features`` (xavier-initialised, zero bias): a student whose
        width differs from the teacher's embedding size then compares vectors with it directly."""
        self.dense = nn.Linear(self.config.hidden_size, out_features).to(self.device, self.dtype)
        nn.init.xavier_uniform_(self.dense.weight)
        nn.init.zeros_(self.dense.bias)
        self.activation = nn.Identity()
        dense = {"out_features": out_features, "bias": True, "activation": "torch.nn.modules.linear.Identity"}
        self.settings.update(dense=dense)

    @torch.no_grad()
    def reduce(self, components: torch.Tensor) -> None:
        """Project the output onto ``components`` (d, D) (rows: directions in the current D-d output space): the
        Dense layer becomes ``components @ dense`` (or ``components`` itself without one), so the output is d-d."""
        components = components.to(self.device, self.dtype)
        if components.shape[1] != self.embedding_dim:
            raise DistilError(
                f"embedding reduction: components of size {components.shape[1]}, embeddings of {self.embedding_dim}"
            )
        if not isinstance(self.activation, nn.Identity):
            raise DistilError("embedding reduction: the Dense layer has an activation; only linear maps compose")
        weight = components if self.dense is None else components @ self.dense.weight
        bias = None if self.dense is None or self.dense.bias is None else components @ self.dense.bias
        self.set_projection(components.shape[0])
        self.dense.weight.copy_(weight)
        self.dense.bias.copy_(bias if bias is not None else torch.zeros_like(self.dense.bias))

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: Any = None,
        **kwargs: Any,
    ) -> SentenceOutput:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, **kwargs}
        if token_type_ids is not None and getattr(self.config, "type_vocab_size", 0) > 0:
            inputs["token_type_ids"] = token_type_ids
        out = self.encoder(**inputs)
        tokens = out[0]  # (B, L, H)
        embedding = pool(tokens, attention_mask, self.settings["pooling"])  # (B, H)
        if self.dense is not None:
            embedding = self.activation(self.dense(embedding))  # (B, D)
        if self.settings["normalize"]:
            embedding = F.normalize(embedding, p=2, dim=-1)
        return SentenceOutput(  # token embeddings stay out: the Trainer would gather (N, L, H) arrays
            logits=embedding,
            hidden_states=getattr(out, "hidden_states", None),
            attentions=getattr(out, "attentions", None),
        )

    @torch.inference_mode()
    def encode(self, texts: list[str], tokenizer: Any, batch_size: int = 32, max_length: int | None = None):
        """Embeddings of ``texts`` as a float32 (N, D) array, batched longest-first (the input order is kept)."""
        max_length = max_length or self.settings.get("max_seq_length") or 256
        self.eval()
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out = np.zeros((len(texts), self.embedding_dim), dtype=np.float32)
        for start in range(0, len(texts), batch_size):
            rows = order[start : start + batch_size]
            batch = tokenizer([texts[i] for i in rows], truncation=True, max_length=max_length, padding=True,
                              return_tensors="pt")  # fmt: skip
            batch = {k: v.to(self.device) for k, v in batch.items()}
            out[rows] = self(**batch).logits.float().cpu().numpy()
        return out

    # ---- construction, as the engine builds Transformers models

    @classmethod
    def from_config(cls, config: PretrainedConfig) -> SentenceEncoder:
        """A freshly initialised encoder of ``config`` with the settings it carries (a student of a new shape)."""
        return cls(AutoModel.from_config(config))

    @classmethod
    def _from_config(cls, config: PretrainedConfig, dtype: torch.dtype | None = None) -> SentenceEncoder:
        return cls(AutoModel.from_config(config, dtype=dtype))

    @classmethod
    def from_pretrained(cls, path: str, config: PretrainedConfig | None = None, **kwargs: Any) -> SentenceEncoder:
        """A sentence-transformers folder (modules.json), or a plain Transformers encoder folder (mean pooling
        assumed, said once). Weights are read as safetensors only (``use_safetensors`` is passed on)."""
        kwargs.pop("ignore_mismatched_sizes", None)
        root = Path(path)
        modules = _read_modules(root) if root.is_dir() else None
        if modules is None:
            settings = getattr(config, SENTENCE_KEY, None) if config is not None else None
            if settings is None:
                print(f"distil: {path}: no sentence-transformers pooling config (modules.json); mean pooling assumed",
                      file=sys.stderr)  # fmt: skip
            encoder = AutoModel.from_pretrained(path, config=config, **kwargs)
            return cls(encoder, settings)
        transformer_path = root / modules.get("Transformer", "")
        if config is None or transformer_path != root:
            from transformers import AutoConfig

            config = AutoConfig.from_pretrained(str(transformer_path), local_files_only=True)
        encoder = AutoModel.from_pretrained(str(transformer_path), config=config, **kwargs)
        settings = _settings_from_modules(root, modules, transformer_path)
        model = cls(encoder, settings)
        if "Dense" in modules:
            weights = root / modules["Dense"] / "model.safetensors"
            if not weights.is_file():
                raise DistilError(
                    f"checkpoint {path}: {modules['Dense']}/ holds no model.safetensors; distil never unpickles "
                    "checkpoints: re-save the Dense module with safetensors"
                )
            state = load_file(str(weights))
            model.dense.load_state_dict({k.removeprefix("linear."): v for k, v in state.items()})
        return model

    def save_pretrained(self, save_directory: str | Path, **kwargs: Any) -> None:
        """Write the sentence-transformers layout (the encoder at the root; see the module docstring)."""
        out = Path(save_directory)
        out.mkdir(parents=True, exist_ok=True)
        self.encoder.save_pretrained(out)
        s = self.settings
        pooling = {"word_embedding_dimension": self.config.hidden_size}
        pooling.update({key: s["pooling"] == mode for mode, key in _ST_POOLING_KEYS.items()})
        pooling.update(pooling_mode_mean_sqrt_len_tokens=False, pooling_mode_weightedmean_tokens=False,
                       pooling_mode_lasttoken=False, include_prompt=True)  # fmt: skip
        modules = [_module(0, "", "Transformer"), _module(1, "1_Pooling", "Pooling")]
        _write(out / "1_Pooling" / "config.json", pooling)
        if self.dense is not None:
            modules.append(_module(2, "2_Dense", "Dense"))
            dense = s["dense"]
            _write(out / "2_Dense" / "config.json", {
                "in_features": self.dense.in_features, "out_features": self.dense.out_features,
                "bias": self.dense.bias is not None,
                "activation_function": dense.get("activation", next(iter(_ACTIVATIONS))),
            })  # fmt: skip
            save_file({f"linear.{k}": v.contiguous() for k, v in self.dense.state_dict().items()},
                      str(out / "2_Dense" / "model.safetensors"))  # fmt: skip
        if s["normalize"]:
            modules.append(_module(len(modules), "3_Normalize", "Normalize"))
            (out / "3_Normalize").mkdir(exist_ok=True)
        _write(out / "modules.json", modules)
        _write(out / "sentence_bert_config.json", {"max_seq_length": s.get("max_seq_length") or 256,
                                                  "do_lower_case": False})  # fmt: skip
        _write(out / "config_sentence_transformers.json", {"similarity_fn_name": "cosine", "prompts": {},
                                                          "default_prompt_name": None})  # fmt: skip


def _module(idx: int, path: str, kind: str) -> dict:
    return {"idx": idx, "name": str(idx), "path": path, "type": _ST + kind}


def _write(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


def is_sentence_folder(path: str | Path) -> bool:
    """Whether ``path`` is a sentence-transformers folder (it holds modules.json)."""
    return (Path(path) / "modules.json").is_file()


def _read_modules(root: Path) -> dict[str, str] | None:
    """modules.json as {kind: path} (Transformer, Pooling, Dense, Normalize); None without one."""
    file = root / "modules.json"
    if not file.is_file():
        return None
    out: dict[str, str] = {}
    for entry in json.loads(file.read_text(encoding="utf-8")):
        kind = str(entry.get("type", "")).rsplit(".", 1)[-1]
        if kind not in ("Transformer", "Pooling", "Dense", "Normalize"):
            raise DistilError(
                f"checkpoint {root}: modules.json has a {entry.get('type')!r} module; distil reads Transformer, "
                "Pooling, one Dense and Normalize modules"
            )
        if kind in out:
            raise DistilError(f"checkpoint {root}: modules.json has more than one {kind} module; distil reads one")
        out[kind] = entry.get("path", "")
    if "Transformer" not in out:
        raise DistilError(f"checkpoint {root}: modules.json lists no Transformer module")
    return out


def _settings_from_modules(root: Path, modules: dict[str, str], transformer_path: Path) -> dict[str, Any]:
    settings: dict[str, Any] = {"pooling": "mean", "normalize": "Normalize" in modules, "dense": None}
    if "Pooling" in modules:
        cfg = json.loads((root / modules["Pooling"] / "config.json").read_text(encoding="utf-8"))
        modes = [mode for mode, key in _ST_POOLING_KEYS.items() if cfg.get(key)]
        others = [
            k for k, v in cfg.items() if k.startswith("pooling_mode_") and v and k not in _ST_POOLING_KEYS.values()
        ]
        if len(modes) != 1 or others:
            raise DistilError(
                f"checkpoint {root}: pooling {modes + others}; distil reads exactly one of mean, cls or max pooling"
            )
        settings["pooling"] = modes[0]
    if "Dense" in modules:
        cfg = json.loads((root / modules["Dense"] / "config.json").read_text(encoding="utf-8"))
        activation = cfg.get("activation_function", "torch.nn.modules.linear.Identity")
        if activation not in _ACTIVATIONS:
            raise DistilError(f"checkpoint {root}: Dense activation {activation!r}; distil reads Identity and Tanh")
        settings["dense"] = {
            "out_features": cfg["out_features"],
            "bias": cfg.get("bias", True),
            "activation": activation,
        }
    st_config = transformer_path / "sentence_bert_config.json"
    if st_config.is_file():
        settings["max_seq_length"] = json.loads(st_config.read_text(encoding="utf-8")).get("max_seq_length")
    return settings
