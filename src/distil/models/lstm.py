"""A BiLSTM student (Tang et al. 2019, "Distilling Task-Specific Knowledge from BERT into Simple Neural Networks")
and the small interface every PyTorch student meets.

StudentProtocol: what distil asks of any student model, Transformers or not.
    - ``forward(input_ids, attention_mask=None, **kwargs)``: ``input_ids`` (B, L) long, ``attention_mask``
      (B, L) with 1 for real tokens and 0 for padding (``None``: no padding); extra keyword arguments the model
      does not use (``token_type_ids``, ``labels``, ...) are accepted. Returns an object with ``.logits``
      (B, num_labels), or the logits tensor itself.
    - ``num_labels``: the number of classes.
    - ``save_pretrained(directory)``: writes weights as safetensors plus a ``config.json``.
    - classmethod ``from_pretrained(directory)``: rebuilds the model from that directory.
Every Transformers ``*ForSequenceClassification`` model already meets it.

LSTMClassifier: token embedding -> packed (Bi)LSTM over the real tokens only (lengths from the attention mask)
-> masked mean and max pooling over time, concatenated -> dropout -> linear. Padding never reaches the LSTM or
the pooling, so a row's logits do not depend on how much padding the batch adds.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput, TokenClassifierOutput

from distil.errors import DistilError
from distil.io import atomic_path, write_json

LSTM_MODEL_TYPE = "lstm"


@runtime_checkable
class StudentProtocol(Protocol):
    """The interface distil needs from a student (see the module docstring)."""

    num_labels: int

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Any) -> Any: ...

    def save_pretrained(self, save_directory: str | os.PathLike) -> None: ...

    @classmethod
    def from_pretrained(cls, pretrained_path: str | os.PathLike) -> StudentProtocol: ...


@dataclasses.dataclass
class LSTMConfig:
    """Shape of an :class:`LSTMClassifier`."""

    vocab_size: int
    """Vocabulary size; the teacher's tokenizer's, since the student reads the same token ids."""
    embedding_dim: int = 128
    """Width of the token embeddings."""
    hidden_size: int = 256
    """LSTM hidden width per direction."""
    num_layers: int = 1
    """Stacked LSTM layers."""
    bidirectional: bool = True
    """Run a second LSTM right to left and concatenate."""
    dropout: float = 0.1
    """Dropout on embeddings, between LSTM layers and before the classifier."""
    num_labels: int = 2
    """Number of classes."""
    pad_token_id: int = 0
    """Id of the padding token (its embedding gets no gradient)."""
    id2label: dict[int, str] | None = None
    """Class index -> name; defaults to LABEL_i."""
    label2id: dict[str, int] | None = None
    """Class name -> index; defaults to the inverse of id2label."""
    per_token: bool = False
    """A tagger: logits for every position (B, L, C) from the LSTM states, instead of one pooled (B, C)."""

    def __post_init__(self) -> None:
        for name in ("vocab_size", "embedding_dim", "hidden_size", "num_layers", "num_labels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise DistilError(f"LSTMConfig.{name}: got {value!r}; it must be a positive integer")
        if not 0.0 <= self.dropout < 1.0:
            raise DistilError(f"LSTMConfig.dropout: got {self.dropout!r}; it must be in [0, 1)")
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise DistilError(
                f"LSTMConfig.pad_token_id: got {self.pad_token_id!r}; "
                f"it must be a token id in 0..{self.vocab_size - 1}"
            )
        if self.id2label is None:
            self.id2label = {i: f"LABEL_{i}" for i in range(self.num_labels)}
        self.id2label = {int(i): str(name) for i, name in self.id2label.items()}  # JSON turns keys into strings
        if sorted(self.id2label) != list(range(self.num_labels)):
            raise DistilError(
                f"LSTMConfig.id2label: has indices {sorted(self.id2label)}, expected 0..{self.num_labels - 1} "
                f"for num_labels={self.num_labels}"
            )
        if self.label2id is None:
            self.label2id = {name: i for i, name in self.id2label.items()}
        self.label2id = {str(name): int(i) for name, i in self.label2id.items()}

    def to_json_string(self) -> str:
        """The config as JSON, as a transformers config gives it (the Trainer's TensorBoard callback logs it)."""
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)


class LSTMClassifier(nn.Module):
    """Embedding -> packed (Bi)LSTM -> masked mean+max pooling -> linear.

    Args:
        config: the model's shape.
    """

    def __init__(self, config: LSTMConfig) -> None:
        super().__init__()
        self.config = config
        self.num_labels = config.num_labels
        self.embeddings = nn.Embedding(config.vocab_size, config.embedding_dim, padding_idx=config.pad_token_id)
        self.lstm = nn.LSTM(
            config.embedding_dim,
            config.hidden_size,
            num_layers=config.num_layers,
            bidirectional=config.bidirectional,
            batch_first=True,
            dropout=config.dropout if config.num_layers > 1 else 0.0,  # nn.LSTM drops only between layers
        )
        self.dropout = nn.Dropout(config.dropout)
        pooled = 1 if config.per_token else 2  # a tagger reads each position's state; a classifier mean + max
        self.classifier = nn.Linear(pooled * self._lstm_width, config.num_labels)

    @property
    def _lstm_width(self) -> int:
        return self.config.hidden_size * (2 if self.config.bidirectional else 1)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> SequenceClassifierOutput:
        """Classify a batch of token sequences.

        Args:
            input_ids: (B, L) token ids.
            attention_mask: (B, L), 1 for real tokens and 0 for padding; ``None`` treats every token as real.
                Rows are read left to right up to their length (the mask's sum), i.e. padding on the right.
            labels: (B,) class indices; when given, the cross-entropy loss is returned too.
            **kwargs: ignored (e.g. ``token_type_ids`` from a BERT tokenizer).

        Returns:
            ``SequenceClassifierOutput`` with ``logits`` (B, num_labels) and ``loss`` (scalar) when ``labels``.
        """
        length = input_ids.shape[1]
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        mask = attention_mask.bool()  # (B, L)
        lengths = mask.sum(dim=1).clamp(min=1)  # (B,); an all-padding row reads its first token
        mask = torch.arange(length, device=input_ids.device)[None, :] < lengths[:, None]  # (B, L)
        embedded = self.dropout(self.embeddings(input_ids))  # (B, L, E)
        packed = nn.utils.rnn.pack_padded_sequence(embedded, lengths.cpu(), batch_first=True, enforce_sorted=False)
        outputs, _ = self.lstm(packed)
        states, _ = nn.utils.rnn.pad_packed_sequence(outputs, batch_first=True, total_length=length)  # (B, L, H')
        if self.config.per_token:
            logits = self.classifier(self.dropout(states))  # (B, L, num_labels)
            flat = (logits.flatten(0, 1), labels.flatten()) if labels is not None else None  # (B*L, C), (B*L,)
            loss = None if flat is None else F.cross_entropy(*flat, ignore_index=-100)
            return TokenClassifierOutput(loss=loss, logits=logits)
        keep = mask.unsqueeze(-1)  # (B, L, 1)
        mean = (states * keep).sum(dim=1) / lengths.unsqueeze(-1).to(states.dtype)  # (B, H')
        maxed = states.masked_fill(~keep, torch.finfo(states.dtype).min).amax(dim=1)  # (B, H')
        logits = self.classifier(self.dropout(torch.cat([mean, maxed], dim=-1)))  # (B, num_labels)
        loss = F.cross_entropy(logits, labels.view(-1)) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)

    def reset_classifier(
        self, num_labels: int, id2label: dict[int, str] | None = None, label2id: dict[str, int] | None = None
    ) -> None:
        """Replace the output layer with a freshly initialised one for ``num_labels`` classes.

        Raises:
            DistilError: when the labels are inconsistent (see :class:`LSTMConfig`).
        """
        self.config = dataclasses.replace(self.config, num_labels=num_labels, id2label=id2label, label2id=label2id)
        self.num_labels = num_labels
        old = self.classifier
        self.classifier = nn.Linear(old.in_features, num_labels, device=old.weight.device, dtype=old.weight.dtype)

    @torch.no_grad()
    def init_embeddings_from(self, teacher: nn.Module) -> None:
        """Initialise the token embeddings from a teacher's input embeddings.

        Same width: copied as they are. Narrower student (``embedding_dim`` < teacher width): the teacher's
        embeddings are centred and projected on their top ``embedding_dim`` principal directions (truncated SVD),
        which keeps as much of their variance as ``embedding_dim`` dimensions can.

        Args:
            teacher: a model with ``get_input_embeddings()`` (V, D) and the same vocabulary.

        Raises:
            DistilError: when the vocabulary sizes differ or ``embedding_dim`` exceeds the teacher's width.
        """
        weight = teacher.get_input_embeddings().weight.detach().float()  # (V, D)
        vocab, width = weight.shape
        if vocab != self.config.vocab_size:
            raise DistilError(
                f"init_embeddings_from: the teacher has {vocab} token embeddings, the student's vocab_size is "
                f"{self.config.vocab_size}; build the LSTM with the teacher's vocab_size"
            )
        target = self.config.embedding_dim
        if target > width:
            raise DistilError(
                f"init_embeddings_from: embedding_dim {target} exceeds the teacher's embedding width {width}; "
                f"set embedding_dim <= {width}"
            )
        if target < width:
            centred = weight - weight.mean(dim=0, keepdim=True)  # (V, D)
            _, _, vh = torch.linalg.svd(centred, full_matrices=False)  # vh: (D, D), rows = principal directions
            weight = centred @ vh[:target].T  # (V, E)
        self.embeddings.weight.copy_(weight.to(self.embeddings.weight.dtype))

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        """Write ``model.safetensors`` and ``config.json`` (with ``"distil_model": "lstm"``) to the directory."""
        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {name: tensor.detach().contiguous().cpu() for name, tensor in self.state_dict().items()}
        with atomic_path(directory / "model.safetensors") as tmp:
            save_file(state, str(tmp), metadata={"format": "pt"})
        write_json(directory / "config.json", {"distil_model": LSTM_MODEL_TYPE, **dataclasses.asdict(self.config)})

    @classmethod
    def from_pretrained(cls, pretrained_path: str | os.PathLike) -> LSTMClassifier:
        """Rebuild a model saved by :meth:`save_pretrained`.

        Raises:
            DistilError: when the directory lacks the files or is not an LSTM student.
        """
        directory = Path(pretrained_path)
        config_path, weights_path = directory / "config.json", directory / "model.safetensors"
        for path in (config_path, weights_path):
            if not path.is_file():
                raise DistilError(
                    f"LSTM student {directory}: {path.name} is missing; pass a directory saved by distil"
                )
        fields = json.loads(config_path.read_text(encoding="utf-8"))
        if fields.pop("distil_model", None) != LSTM_MODEL_TYPE:
            raise DistilError(f'LSTM student {directory}: config.json has no "distil_model": "lstm"')
        unknown = sorted(set(fields) - {field.name for field in dataclasses.fields(LSTMConfig)})
        if unknown:
            raise DistilError(f"LSTM student {directory}: config.json has unknown fields {unknown}")
        model = cls(LSTMConfig(**fields))
        model.load_state_dict(load_file(str(weights_path)))
        return model.eval()
