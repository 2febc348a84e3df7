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
if [ $DEV = 1 ]; then extras="[dev]"; else extras=""; fi
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
