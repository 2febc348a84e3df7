#!/usr/bin/env bash
# One-time set-up on a fresh machine (Python 3.11 + pip + apt). Idempotent: reruns are quick.
#   bash setup.sh         Debian text packages + lctx with the training stack
#   bash setup.sh --dev   also test tools, torch/transformers (parity) and the vLLM venv
set -euo pipefail
cd "$(dirname "$0")"
DEV=0; [ "${1:-}" = "--dev" ] && DEV=1

need_apt=()
command -v bible >/dev/null || need_apt+=(bible-kjv bible-kjv-text)
[ -f /usr/share/wordnet/data.noun ] || need_apt+=(wordnet-base)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "[setup] apt-get install ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
want=(); [ $DEV = 1 ] && want+=(dev)
# A GPU machine gets jax's CUDA plugin (setup.py [cuda]; LCTX_CUDA=cuda13 picks CUDA 13).
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
  want+=("${LCTX_CUDA:-cuda}")
fi
extras=""; [ ${#want[@]} -gt 0 ] && extras="[$(IFS=,; echo "${want[*]}")]"
stamp=".setup-stamp$extras"
if [ ! -f "$stamp" ] || [ setup.py -nt "$stamp" ]; then
  echo "[setup] pip install -e .$extras"
  $PY -m pip install -q -e ".$extras"
  touch "$stamp"
fi

if [ $DEV = 1 ]; then
  bash datagen/vllm_env.sh
fi
echo "[setup] ok"
