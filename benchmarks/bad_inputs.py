"""The catalogue of user mistakes: each bad input through the real CLI, its exit status, the one line it prints,
and what it left on disk. Writes benchmarks/results/bad_inputs.{json,md}.

    .venv/bin/python benchmarks/bad_inputs.py          # ~2 min: nothing trains, every case stops before that
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path

from distil.models.packaged import resolve_model

ROOT = Path(__file__).resolve().parent.parent


class _Payload:
    def __reduce__(self):
        return (Path.touch, (Path("/tmp/distil-unpickled"),))


def _csv(path: Path, rows: list[tuple[str, str]], encoding: str = "utf-8") -> str:
    path.write_bytes(("text,label\n" + "".join(f'"{t}",{lab}\n' for t, lab in rows)).encode(encoding))
    return str(path)


def _tokenizer(path: Path) -> str:
    """A folder holding only a WordPiece tokenizer of 8 words (not the teacher's vocabulary)."""
    from transformers import BertTokenizerFast

    path.mkdir()
    (path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "a", "x"]) + "\n")
    BertTokenizerFast(vocab_file=str(path / "vocab.txt")).save_pretrained(path)
    return str(path)


def _squad(path: Path, context: str) -> str:
    """A SQuAD v1.1 file of one article whose first paragraph has ``context``."""
    qas = [{"id": "q1", "question": "What?", "answers": [{"text": "x", "answer_start": 0}]}]
    path.write_text(json.dumps({"data": [{"title": "t", "paragraphs": [{"context": context, "qas": qas}]}]}))
    return str(path)


def _cases(tmp: Path) -> list[tuple[str, list[str], Path | None]]:
    """(what the user did, distil arguments, folder to list afterwards)."""
    words = ["good", "bad", "fine", "dull", "great", "awful", "nice", "poor"]
    many = [(f"a {w} film number {i}", "pos" if i % 2 else "neg") for i in range(40) for w in words[:1]]
    run = lambda name: ["--output_dir", str(tmp / name), "--cache_dir", str(tmp / "cache")]  # noqa: E731
    (tmp / "a-file").write_text("x")
    locked = tmp / "immutable"
    locked.mkdir()
    subprocess.run(["chattr", "+i", str(locked)], capture_output=True)
    decoy = tmp / "decoy"
    decoy.mkdir()
    (decoy / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    (decoy / "x.safetensors").write_bytes(b"decoy")
    (decoy / "pytorch_model.bin").write_bytes(pickle.dumps(_Payload()))
    bare = tmp / "no-weights"
    bare.mkdir()
    (bare / "config.json").write_text(json.dumps({"model_type": "bert"}))
    resumed = tmp / "resumed"
    (resumed / "work" / "teacher").mkdir(parents=True)
    script = "import sys; from distil.config import dump_yaml, load_config; out = sys.argv[1]; "
    script += "open(out + '/config.yaml', 'w').write(dump_yaml(load_config(None, {'output_dir': out})))"
    subprocess.run([sys.executable, "-c", script, str(resumed)], check=True)
    empty = tmp / "empty.txt"
    empty.write_text("\n  \n")
    minilm = resolve_model("sentence-transformers/all-MiniLM-L6-v2")
    bad_gguf = tmp / "model.gguf"
    bad_gguf.write_bytes(b"not a gguf file at all" * 100)
    mini = ["--teacher.model", minilm, "--student.layers", "[0, 5]"]
    index, other = tmp / "index", tmp / "other-encoder"
    (tmp / "corpus.txt").write_text("a fine film\na dull film\nthe market fell\n")
    subprocess.run([sys.executable, "-m", "distil.cli", "index", minilm, str(tmp / "corpus.txt"), "--out", str(index)],
                   check=True, capture_output=True)  # fmt: skip
    script = "import sys; from distil.models.loading import load_pretrained, load_tokenizer; "
    script += "from distil.models.sentence import SentenceEncoder as S; m = load_pretrained(S, sys.argv[1]); "
    script += "m.set_projection(64); m.save_pretrained(sys.argv[2]); "
    script += "load_tokenizer(sys.argv[1]).save_pretrained(sys.argv[2])"
    subprocess.run([sys.executable, "-c", script, minilm, str(other)], check=True, capture_output=True)
    return [
        ("data file with 5 rows", ["run", "--data.source", _csv(tmp / "five.csv", many[:5]), *run("five")], None),
        ("--data.validation_fraction 0", ["run", "--data.validation_fraction", "0", *run("nofrac")], None),
        (
            "one label in the data",
            ["run", "--data.source", _csv(tmp / "one.csv", [(t, "pos") for t, _ in many]), *run("onelabel")],
            tmp / "onelabel",
        ),  # fmt: skip
        (
            "Latin-1 data file",
            [
                "run",
                "--data.source",
                _csv(tmp / "latin1.csv", [("caf\u00e9 cr\u00e8me", "pos")] + many, "latin-1"),
                *run("latin1"),
            ],
            None,
        ),  # fmt: skip
        (
            "output_dir immutable (chattr +i)",
            ["run", "--output_dir", str(locked), "--cache_dir", str(tmp / "c")],
            None,
        ),
        ("output_dir under /proc", ["run", "--output_dir", "/proc/distil-run"], None),
        ("output_dir under a file", ["run", "--output_dir", str(tmp / "a-file" / "run")], None),
        ("cache_dir under /proc", ["run", "--output_dir", str(tmp / "c1"), "--cache_dir", "/proc/c"], tmp / "c1"),
        (
            "cache_dir under a file",
            ["run", "--output_dir", str(tmp / "c2"), "--cache_dir", str(tmp / "a-file" / "c")],
            tmp / "c2",
        ),  # fmt: skip
        (
            "--student.layers [0, 9] (teacher has 6)",
            ["run", "--student.layers", "[0, 9]", *run("layers")],
            tmp / "layers",
        ),
        (
            "tinybert with a 6-head student",
            ["run", "tinybert", "--student.num_attention_heads", "6", "--student.hidden_size", "300", *run("heads")],
            tmp / "heads",
        ),  # fmt: skip
        (
            "--resume with another data source",
            ["run", "--resume", "--output_dir", str(resumed), "--data.source", "bbc-news"],
            resumed,
        ),  # fmt: skip
        (
            "unreadable data (missing file), twice",
            ["run", "--data.source", str(tmp / "missing.csv"), *run("twice")],
            tmp / "twice",
        ),  # fmt: skip
        ("teacher dir without model.safetensors", ["run", "--teacher.model", str(bare), *run("bare")], None),
        ("predict on a decoy dir (x.safetensors + pytorch_model.bin)", ["predict", str(decoy), "a fine film"], None),
        ("export a decoy dir", ["export", str(decoy), str(tmp / "exported")], None),
        ("QA: --data.doc_stride 300 (window 256)", ["run", "qa", "--data.doc_stride", "300", *run("stride")], None),
        (
            "QA: a SQuAD file with an empty context",
            ["run", "qa", "--data.source", _squad(tmp / "empty.json", ""), *run("emptyctx")],
            tmp / "emptyctx",
        ),  # fmt: skip
        (
            "QA: a student with another tokenizer (an 8-word vocabulary)",
            [
                "run",
                "qa",
                "--student.init",
                "pretrained",
                "--student.pretrained",
                _tokenizer(tmp / "tok8"),
                "--student.allow_different_vocab",
                "true",
                *run("tok"),
            ],
            tmp / "tok",
        ),  # fmt: skip
        (
            "embeddings: an empty corpus file",
            ["run", "embeddings", *mini, "--data.source", str(empty), *run("e0")],
            tmp / "e0",
        ),
        (
            "embeddings: --embedding.dim 1000 (teacher 384-d)",
            ["run", "embeddings", *mini, "--embedding.dim", "1000", *run("edim")],
            tmp / "edim",
        ),
        (
            "embeddings: --data.extra_test_sets [stsb]",
            ["run", "embeddings", *mini, "--data.extra_test_sets", "[stsb]", *run("esets")],
            tmp / "esets",
        ),
        (
            "embeddings with two teachers (teacher.additional)",
            ["run", "embeddings", *mini, "--teacher.additional", f"[{minilm}]", *run("e2t")],
            tmp / "e2t",
        ),
        ("causal-lm: an empty text file", ["run", "causal-lm", "--data.source", str(empty), *run("c0")], tmp / "c0"),
        (
            "causal-lm: a teacher GGUF file that is not one",
            ["run", "causal-lm", "--teacher.model", str(bad_gguf), *run("cg")],
            tmp / "cg",
        ),
        (
            "causal-lm: a student with another vocabulary (MiniLM, 30,522 tokens)",
            ["run", "causal-lm", "--student.init", "pretrained", "--student.pretrained", minilm, *run("cv")],
            tmp / "cv",
        ),
        (
            "causal-lm: --data.max_length 9000 (SmolLM2 reads 8,192 positions)",
            ["run", "causal-lm", "--data.max_length", "9000", *run("cl")],
            tmp / "cl",
        ),
        (
            "causal-lm: --causal_lm.top_k 60000 (vocabulary 49,152)",
            ["run", "causal-lm", "--causal_lm.top_k", "60000", *run("ck")],
            tmp / "ck",
        ),
        (
            "tune: a space key that is not a config field (loss.alpah)",
            ["tune", "configs/tune-2layer.yaml", "--tune.space", "{loss.alpah: {low: 0, high: 1}}", *run("t1")],
            tmp / "t1",
        ),
        (
            "tune: a range with low > high",
            ["tune", "configs/tune-2layer.yaml", "--tune.space", "{loss.alpha: {low: 0.9, high: 0.1}}", *run("t2")],
            tmp / "t2",
        ),
        (
            "tune: a fixed key (data.max_length: every trial shares the data)",
            ["tune", "configs/tune-2layer.yaml", "--tune.space", "{data.max_length: {choices: [32, 64]}}", *run("t3")],
            tmp / "t3",
        ),
        (
            "tune: a choice the config refuses (loss.alpha 1.5)",
            ["tune", "configs/tune-2layer.yaml", "--tune.space", "{loss.alpha: {choices: [0.5, 1.5]}}", *run("t4")],
            tmp / "t4",
        ),
        (
            "tune: an objective a classifier does not produce (validation.f1)",
            ["tune", "configs/tune-2layer.yaml", "--tune.objectives", "[validation.f1]", *run("t5")],
            tmp / "t5",
        ),
        ("tune: --preset auto without a budget", ["tune", "--preset", "auto", *run("t6")], tmp / "t6"),
        ("index an empty corpus", ["index", minilm, str(empty), "--out", str(tmp / "idx0")], tmp / "idx0"),
        ("search an index with another model", ["search", str(index), "a film", "--model", str(other)], None),
        ("search a folder that is not an index", ["search", str(tmp), "a film"], None),
        (
            "--distill.learning_rate 2e-5 --distill.epochs abc",
            ["run", "--distill.learning_rate", "2e-5", "--distill.epochs", "abc", *run("sci")],
            None,
        ),  # fmt: skip
    ]


def _listing(path: Path | None) -> str:
    if path is None or not path.exists():
        return "nothing" if path is not None else "-"
    names = sorted(p.name for p in path.iterdir())
    return ", ".join(names) if names else "(empty folder)"


def main() -> int:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        try:
            for what, args, folder in _cases(tmp):
                runs = 2 if "twice" in what else 1
                for _ in range(runs):
                    done = subprocess.run([sys.executable, "-m", "distil.cli", *args], env=env, cwd=tmp,
                                          capture_output=True, text=True, timeout=600)  # fmt: skip
                err = [line for line in done.stderr.strip().splitlines() if line.strip()]
                rows.append({"input": what, "exit": done.returncode, "lines": len(err),
                             "message": err[-1] if err else "", "left": _listing(folder)})  # fmt: skip
                print(f"{done.returncode}  {what}: {rows[-1]['message']}")
        finally:
            subprocess.run(["chattr", "-i", str(tmp / "immutable")], capture_output=True)
    rows.append({"input": "pickle payload unpickled?", "exit": "", "lines": "",
                 "message": str(Path("/tmp/distil-unpickled").exists()), "left": ""})  # fmt: skip
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "bad_inputs.json").write_text(json.dumps(rows, indent=2) + "\n")
    md = ["| input | exit | stderr lines | the line printed | left on disk |", "|---|---|---|---|---|"]
    md += [
        f"| {r['input']} | {r['exit']} | {r['lines']} | {r['message'].replace('|', '/')} | {r['left']} |" for r in rows
    ]
    (out / "bad_inputs.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
